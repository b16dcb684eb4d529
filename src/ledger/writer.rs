//! [`RunWriter`]: how runs hand their outcomes to the ledger. A run's outcome is sent on a
//! channel (never awaited by the run) and one task per scheduler writes them to the stores
//! in batches, so a storm of runs costs one store write per batch, not one per run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};

use super::{LedgerSettings, RunOutcome};
use crate::job::RunId;
use crate::store::JobStore;
use crate::sync::MutexExt;

/// Most outcomes written in one store call.
const BATCH: usize = 1024;
/// First retry delay after a failed write; doubles up to [`MAX_RETRY`].
const MIN_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(10);

type Item = (Arc<str>, RunOutcome);

/// What the writer needs from its scheduler.
pub(crate) trait WriterHooks: Send + Sync + 'static {
    /// The store `alias`, if it is still configured.
    fn store(&self, alias: &str) -> Option<Arc<dyn JobStore>>;
    /// Writing to `alias` failed (it is retried).
    fn failed(&self, alias: &str, error: &crate::Error);
    /// Outcomes were written to `alias`.
    fn written(&self, alias: &str);
    /// The next attempts of failed runs were written to `alias`: they wait for their time.
    fn retries(&self, alias: &str, runs: Vec<super::RunRecord>);
}

/// The sending side, shared by every run of a scheduler, and the waiters of run handles.
#[derive(Debug, Default)]
pub(crate) struct RunWriter {
    tx: Mutex<Option<mpsc::UnboundedSender<Item>>>,
    /// Run handles waiting for an outcome to be written.
    waiters: Mutex<HashMap<RunId, Arc<Notify>, crate::job::RunIdState>>,
}

impl RunWriter {
    /// Starts the writing task; it ends when [`close`](Self::close) is called and
    /// everything sent before has been written (or given up on).
    pub(crate) fn open(
        self: &Arc<Self>,
        ledger: Arc<LedgerSettings>,
        hooks: impl WriterHooks,
        runtime: &tokio::runtime::Handle,
    ) -> tokio::task::JoinHandle<()> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.tx.lock_unpoisoned() = Some(tx);
        let this = self.clone();
        runtime.spawn(async move { this.write_all(rx, ledger, hooks).await })
    }

    /// Stops accepting outcomes; the task writes what it has and ends.
    pub(crate) fn close(&self) {
        self.tx.lock_unpoisoned().take();
    }

    /// Sends one outcome (dropped with a warning if the writer is closed: the scheduler is
    /// shutting down, and the run stays `started` in the store, which a later scheduler
    /// marks abandoned).
    pub(crate) fn send(&self, store: Arc<str>, outcome: RunOutcome) {
        let tx = self.tx.lock_unpoisoned();
        match tx.as_ref() {
            Some(tx) if tx.send((store, outcome)).is_ok() => {}
            _ => {
                tracing::warn!("the run ledger's writer is closed; a run's outcome is not recorded")
            }
        }
    }

    /// A notification for when run `id`'s outcome has been written.
    pub(crate) fn waiter(&self, id: RunId) -> Arc<Notify> {
        self.waiters
            .lock_unpoisoned()
            .entry(id)
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone()
    }

    /// Forgets a waiter (its handle is gone).
    pub(crate) fn forget(&self, id: RunId) {
        self.waiters.lock_unpoisoned().remove(&id);
    }

    async fn write_all(
        &self,
        mut rx: mpsc::UnboundedReceiver<Item>,
        ledger: Arc<LedgerSettings>,
        hooks: impl WriterHooks,
    ) {
        let mut batch: Vec<Item> = Vec::new();
        // Each store's outcomes of a batch. Kept from batch to batch, so that grouping a
        // storm's outcomes does not grow a vector of large items every time.
        let mut by_store: Vec<(Arc<str>, Vec<RunOutcome>)> = Vec::new();
        loop {
            if rx.recv_many(&mut batch, BATCH).await == 0 {
                return;
            }
            if batch.len() < BATCH {
                // In a storm of runs, outcomes arrive one by one: letting the runs queued
                // behind this task send theirs first makes one store write (and one ledger
                // pass) cover many of them, not a few each.
                tokio::task::yield_now().await;
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(item) => batch.push(item),
                        Err(_) => break,
                    }
                }
            }
            // Group by store, keeping each store's order. A store no longer written to
            // keeps an empty group.
            for (store, outcome) in batch.drain(..) {
                match by_store.iter_mut().find(|(s, _)| *s == store) {
                    Some((_, v)) => v.push(outcome),
                    None => by_store.push((store, vec![outcome])),
                }
            }
            for (alias, outcomes) in by_store.iter_mut().filter(|(_, v)| !v.is_empty()) {
                let retries: Vec<super::RunRecord> = outcomes
                    .iter()
                    .filter_map(|o| o.retry.as_deref().cloned())
                    .collect();
                if !retries.is_empty() {
                    // The retries first: a crash after them leaves the failed attempts
                    // `started` (later abandoned), never a failure without its retry.
                    let added = self
                        .write_with(alias, &hooks, |store| {
                            let retries = retries.clone();
                            async move {
                                match store.add_runs(&retries).await {
                                    Ok(()) => Ok(Some(retries)),
                                    // A store that cannot keep retries (a custom store
                                    // written before them): the runs are not retried,
                                    // rather than their outcomes never written.
                                    Err(crate::Error::Unsupported(what)) => {
                                        tracing::error!(%what, "this store cannot keep retries; failed runs are not retried");
                                        Ok(None)
                                    }
                                    Err(e) => Err(e),
                                }
                            }
                        })
                        .await
                        .flatten();
                    if let Some(retries) = added {
                        hooks.retries(alias, retries);
                    }
                }
                self.write(alias, outcomes, &hooks).await;
                ledger.written(outcomes.iter().map(|o| o.run_id));
                self.wake(outcomes);
                hooks.written(alias);
                outcomes.clear();
            }
        }
    }

    /// Writes one store's batch, retrying with backoff while the store fails (the outcomes
    /// exist only here until written). Gives up when the store is no longer configured.
    async fn write(&self, alias: &str, outcomes: &[RunOutcome], hooks: &impl WriterHooks) {
        self.write_with(alias, hooks, |store| async move {
            store.finish_runs(outcomes).await
        })
        .await;
    }

    /// Runs one store write, retrying with backoff while the store fails. `None` when the
    /// store is no longer configured.
    async fn write_with<T, F, Fut>(
        &self,
        alias: &str,
        hooks: &impl WriterHooks,
        write: F,
    ) -> Option<T>
    where
        F: Fn(Arc<dyn JobStore>) -> Fut,
        Fut: std::future::Future<Output = crate::Result<T>>,
    {
        let mut delay = MIN_RETRY;
        loop {
            let store = hooks.store(alias)?;
            match write(store).await {
                Ok(v) => return Some(v),
                Err(e) => {
                    hooks.failed(alias, &e);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY);
                }
            }
        }
    }

    fn wake(&self, outcomes: &[RunOutcome]) {
        let waiters = self.waiters.lock_unpoisoned();
        if waiters.is_empty() {
            return;
        }
        for o in outcomes {
            if let Some(n) = waiters.get(&o.run_id) {
                n.notify_waiters();
                n.notify_one();
            }
        }
    }
}
