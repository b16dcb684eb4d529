//! Start, pause, resume, and the three ways to shut down.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{core, Scheduler, SchedulerState};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::executor;
use crate::sync::RwLockExt;
use crate::trigger::Trigger;

/// How long a shutdown waits for the runs in flight.
/// How long shutdown waits for run outcomes to reach a failing store.
const SHUTDOWN_WRITE_PATIENCE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
enum Wait {
    /// Until they finish.
    Finish,
    /// Not at all.
    No,
    /// Until they finish or this much time has passed.
    AtMost(Duration),
}

impl Scheduler {
    /// Starts the scheduler: starts stores, adds the jobs added so far, then runs the loop
    /// on the current Tokio runtime, which becomes the scheduler's runtime (see
    /// [Runtimes](Self#runtimes)).
    ///
    /// # Errors
    /// [`Error::State`] if it is already running, or if it is called outside a Tokio runtime
    /// (only a [`manual`](crate::SchedulerBuilder::manual) scheduler, which has no loop, may be); a
    /// store error if a store cannot start.
    pub async fn start(&self) -> Result<()> {
        self.start_with(SchedulerState::Running).await
    }

    /// Starts the scheduler with job processing paused (resume with [`resume`](Self::resume)).
    pub async fn start_paused(&self) -> Result<()> {
        self.start_with(SchedulerState::Paused).await
    }

    async fn start_with(&self, state: SchedulerState) -> Result<()> {
        let inner = &self.inner;
        if inner.check_started() {
            return Err(Error::State {
                needed: "stopped",
                actual: inner.state().name(),
            });
        }
        let home = tokio::runtime::Handle::try_current().ok();
        if home.is_none() && !inner.manual {
            return Err(Error::State {
                needed: "started inside a Tokio runtime (it runs the loop)",
                actual: "called outside any runtime",
            });
        }
        let executors = inner.executors.read_unpoisoned().clone();
        for (alias, _) in &executors {
            inner.events.emit(Event::ExecutorAdded {
                alias: alias.clone(),
            });
        }
        for (alias, store) in inner.stores() {
            store.start(inner.store_context(&alias)).await?;
            inner.events.emit(Event::JobStoreAdded { alias });
        }
        inner.set_home(home.clone());
        if let Some(home) = &home {
            self.inner.open_writer(home);
            self.inner.open_heartbeat(home);
        }
        inner.state.send_replace(state);
        let pending = std::mem::take(&mut inner.life().pending);
        let now = inner.clock.now();
        for p in pending {
            let mut job = p.job;
            job.next_run_time = match p.next_run_time {
                Some(explicit) => explicit,
                None => job.trigger.next_fire_time(None, now),
            };
            let id = job.id.clone();
            match self
                .store_new_job(job, &id, &p.store, p.replace_existing)
                .await
            {
                Ok(()) => {}
                Err(e) => tracing::error!(job_id = %id, error = %e, "could not add pending job"),
            }
        }
        inner.events.emit(Event::SchedulerStarted);
        if let (Some(home), false) = (&home, inner.manual) {
            let token = CancellationToken::new();
            let handle = home.spawn(core::run_loop(self.inner.clone(), token.clone()));
            inner.life().loop_task = Some((handle, token));
        }
        inner.wakeup();
        Ok(())
    }

    /// Shuts down after the runs in flight finish: stops the loop (no new run starts), waits
    /// for every run in flight, then stops the executors and the stores. Jobs stay in their
    /// stores. APScheduler's `shutdown()` (`wait=True`).
    ///
    /// Called from inside one of this scheduler's jobs, it waits for every other run in
    /// flight but not for the calling one (which cannot end while it waits); the caller's
    /// run finishes after `shutdown` returns.
    ///
    /// # Errors
    /// [`Error::State`] if the scheduler is not running.
    pub async fn shutdown(&self) -> Result<()> {
        self.inner.at_home(self.shutdown_with(Wait::Finish)).await
    }

    /// Shuts down without waiting for the runs in flight: they go on to their end (and
    /// report their outcome events) on their own, but no new run starts. APScheduler's
    /// `shutdown(wait=False)`. The [`JobContext`](crate::JobContext) token of every run in
    /// flight is cancelled, so runs that honour it end early.
    ///
    /// # Errors
    /// [`Error::State`] if the scheduler is not running.
    pub async fn shutdown_now(&self) -> Result<()> {
        self.inner.at_home(self.shutdown_with(Wait::No)).await
    }

    /// Shuts down, waiting at most `timeout` for the runs in flight (like
    /// [`shutdown`](Self::shutdown)), then stops as [`shutdown_now`](Self::shutdown_now)
    /// does, leaving the runs still going to finish on their own: their
    /// [`JobContext`](crate::JobContext) tokens are cancelled when the time is up. The wait
    /// is measured on Tokio's clock (paused time in tests).
    ///
    /// # Errors
    /// [`Error::State`] if the scheduler is not running.
    pub async fn shutdown_timeout(&self, timeout: Duration) -> Result<()> {
        self.inner
            .at_home(self.shutdown_with(Wait::AtMost(timeout)))
            .await
    }

    async fn shutdown_with(&self, wait: Wait) -> Result<()> {
        // Called from a run, waiting for every run would wait for the caller itself.
        let inside_job = executor::inside_run_of(&self.inner.instances);
        // Once begun, a shutdown finishes even if its caller's task is dropped (a job that
        // shuts its scheduler down is itself stopped by it; a local executor's runtime
        // goes away with its executor): on the scheduler's runtime, in a task of its own.
        match self.inner.home() {
            Some(home) if !self.inner.manual => {
                let this = self.clone();
                home.spawn(async move { this.shutdown_steps(wait, inside_job).await })
                    .await
                    .unwrap_or_else(|e| {
                        Err(Error::State {
                            needed: "a shutdown that completes",
                            actual: if e.is_panic() {
                                "panicked"
                            } else {
                                "cancelled"
                            },
                        })
                    })
            }
            _ => self.shutdown_steps(wait, inside_job).await,
        }
    }

    async fn shutdown_steps(&self, wait: Wait, inside_job: bool) -> Result<()> {
        let inner = &self.inner;
        if !inner.check_started() {
            return Err(Error::State {
                needed: "running",
                actual: "stopped",
            });
        }
        let task = inner.life().loop_task.take();
        if let Some((handle, token)) = task {
            token.cancel();
            if let Err(e) = handle.await {
                // The loop is supervised, so this is a bug; never swallow it silently.
                tracing::error!(error = %e, "the scheduler loop ended abnormally");
                inner.events.emit(Event::SchedulerError {
                    message: format!("the scheduler loop ended abnormally: {e}"),
                });
            }
        }
        let executors = inner.executors.read_unpoisoned().clone();
        let drain = async {
            if inside_job {
                for (_, ex) in &executors {
                    ex.shutdown(false).await;
                }
                // Every run but the caller's own.
                inner.instances.wait_until_at_most(1).await;
            } else {
                for (_, ex) in &executors {
                    ex.shutdown(true).await;
                }
            }
        };
        match wait {
            Wait::Finish => drain.await,
            Wait::No => inner.run_context.runs.cancel_all(),
            Wait::AtMost(timeout) => {
                if tokio::time::timeout(timeout, drain).await.is_err() {
                    tracing::warn!(
                        ?timeout,
                        "shutdown: runs still in flight after the timeout are cancelled and \
                         go on on their own"
                    );
                    inner.run_context.runs.cancel_all();
                }
            }
        }
        // Closes every executor (again, after a wait: closing twice is a no-op), so that no
        // run starts once shutdown returns.
        for (_, ex) in &executors {
            ex.shutdown(false).await;
        }
        // The outcomes of the runs that ended are written before the stores close.
        inner.close_writer(SHUTDOWN_WRITE_PATIENCE).await;
        // Alive until every outcome is written: only now may others take over what is left.
        inner.close_heartbeat();
        for (alias, store) in inner.stores() {
            if let Err(e) = store.shutdown().await {
                tracing::warn!(store = %alias, error = %e, "store shutdown failed");
            }
        }
        inner.set_home(None);
        inner.state.send_replace(SchedulerState::Stopped);
        inner.events.emit(Event::SchedulerShutdown);
        Ok(())
    }

    /// Cancels the [`JobContext`](crate::JobContext) token of the run `run_id` (see
    /// [`JobContext::run_id`](crate::JobContext::run_id)). Returns `false` if no such run is
    /// in flight (it ended, or never existed). The run decides how to honour it; the
    /// scheduled time's outcome is whatever the run then returns.
    ///
    /// ```
    /// # use apsched::{JobContext, Scheduler};
    /// # async fn demo(scheduler: Scheduler) -> apsched::Result<()> {
    /// let (tx, rx) = tokio::sync::oneshot::channel();
    /// let tx = std::sync::Mutex::new(Some(tx));
    /// scheduler
    ///     .add_job(move |ctx: JobContext| {
    ///         if let Some(tx) = tx.lock().unwrap().take() {
    ///             let _ = tx.send(ctx.run_id());
    ///         }
    ///         async move { ctx.cancelled().await }
    ///     })
    ///     .await?;
    /// let run_id = rx.await.expect("the job ran");
    /// assert!(scheduler.cancel_run(run_id));
    /// # Ok(()) }
    /// ```
    pub fn cancel_run(&self, run_id: crate::RunId) -> bool {
        self.inner.run_context.runs.cancel(run_id)
    }

    /// Waits until the scheduler is shut down (from any handle).
    pub async fn wait_for_shutdown(&self) {
        let mut rx = self.inner.state.subscribe();
        let _ = rx.wait_for(|s| *s == SchedulerState::Stopped).await;
    }

    /// Pauses job processing: no job is submitted until [`resume`](Self::resume). Due times
    /// that pass meanwhile are handled by the misfire and coalesce rules on resume. Runs in
    /// flight go on, and the scheduler's heartbeat in shared stores too: the other
    /// schedulers sharing them do not take its runs over while it is paused.
    pub fn pause(&self) -> Result<()> {
        match self.state() {
            SchedulerState::Running => {
                self.inner.state.send_replace(SchedulerState::Paused);
                self.inner.events.emit(Event::SchedulerPaused);
                Ok(())
            }
            other => Err(Error::State {
                needed: "running",
                actual: other.name(),
            }),
        }
    }

    /// Resumes job processing after [`pause`](Self::pause).
    pub fn resume(&self) -> Result<()> {
        match self.state() {
            SchedulerState::Paused => {
                self.inner.state.send_replace(SchedulerState::Running);
                self.inner.events.emit(Event::SchedulerResumed);
                self.inner.wakeup();
                Ok(())
            }
            other => Err(Error::State {
                needed: "paused",
                actual: other.name(),
            }),
        }
    }
}
