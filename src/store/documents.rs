//! The state of a store that keeps jobs as JSON documents (Redis, MongoDB, ZooKeeper): its
//! scheduler context, decoding stored documents, reporting corrupt records once, and
//! turning driver errors into [`Error::Store`]. What SQL shares with them is in
//! [`common`](super::common).

use std::sync::RwLock;

use chrono::{DateTime, Utc};

use super::common::{fingerprint, Reported};
use super::export::UnloadableRecord;
use super::StoreContext;
use crate::error::Error;
use crate::job::{JobRecord, Lease, StoredCallable, StoredJob};
use crate::sync::RwLockExt;

/// The scheduler context of a started store, and the corrupt records it has reported.
#[derive(Debug)]
pub(crate) struct StoreState {
    default_alias: &'static str,
    ctx: RwLock<Option<StoreContext>>,
    /// Corrupt records already reported (a fingerprint of the document and version).
    corrupt: Reported,
}

impl StoreState {
    pub(crate) fn new(default_alias: &'static str) -> Self {
        StoreState {
            default_alias,
            ctx: RwLock::new(None),
            corrupt: Reported::default(),
        }
    }

    pub(crate) fn set_ctx(&self, ctx: Option<StoreContext>) {
        *self.ctx.write_unpoisoned() = ctx;
    }

    pub(crate) fn ctx(&self) -> Option<StoreContext> {
        self.ctx.read_unpoisoned().clone()
    }

    /// The store's alias (its kind before it is started).
    pub(crate) fn alias(&self) -> String {
        self.ctx
            .read_unpoisoned()
            .as_ref()
            .map_or_else(|| self.default_alias.to_string(), |c| c.alias().to_string())
    }

    /// This scheduler's identity (empty before start).
    pub(crate) fn owner(&self) -> String {
        self.ctx
            .read_unpoisoned()
            .as_ref()
            .map_or_else(String::new, |c| c.scheduler_id().to_string())
    }

    /// The lease length (30 s before start).
    pub(crate) fn lease(&self) -> std::time::Duration {
        self.ctx
            .read_unpoisoned()
            .as_ref()
            .map_or(std::time::Duration::from_secs(30), |c| c.lease())
    }

    /// The scheduler's clock (the system clock before start).
    pub(crate) fn now(&self) -> DateTime<Utc> {
        self.ctx().map_or_else(Utc::now, |c| c.now())
    }

    /// An [`Error::Store`] for a failed driver call.
    pub(crate) fn err<E>(&self, doing: &str, e: E) -> Error
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        Error::Store {
            store: self.alias(),
            message: format!("{doing}: {e}"),
            source: Some(Box::new(e)),
        }
    }

    /// An [`Error::Store`] without an underlying error.
    #[cfg(any(feature = "mongodb", feature = "zookeeper"))]
    pub(crate) fn msg(&self, message: impl Into<String>) -> Error {
        Error::Store {
            store: self.alias(),
            message: message.into(),
            source: None,
        }
    }

    /// Parses a stored document and checks that it names `id` and that its task is
    /// registered. A record that fails is reported (once per distinct content) and returned
    /// as stored, with the reason.
    pub(crate) fn decode(
        &self,
        id: &str,
        doc: &str,
        version: u64,
        lease: Option<Lease>,
    ) -> std::result::Result<JobRecord, UnloadableRecord> {
        match self.check(id, doc) {
            Ok(stored) => {
                self.forget_corrupt(id);
                Ok(JobRecord::from_stored(stored, version, lease))
            }
            Err(reason) => {
                self.report_corrupt(id, fingerprint(doc, version), &reason);
                Err(UnloadableRecord::new(id, doc, reason))
            }
        }
    }

    /// Like [`decode`](Self::decode) but returns the reason instead of reporting it.
    pub(crate) fn check(&self, id: &str, doc: &str) -> Result<StoredJob, String> {
        let stored: StoredJob = serde_json::from_str(doc).map_err(|e| e.to_string())?;
        if stored.id != id {
            // Claims and writes address the record by its key: one whose JSON names another
            // id could never be claimed, only retried on every pass.
            return Err(format!("its JSON names another id ('{}')", stored.id));
        }
        if let StoredCallable::Task { name, .. } = &stored.callable {
            if let Some(ctx) = self.ctx() {
                if !ctx.has_task(name) {
                    return Err(format!(
                        "no task named '{name}' is registered with this scheduler"
                    ));
                }
            }
        }
        Ok(stored)
    }

    /// Whether `id` is a known corrupt record (skipped by `next_run_time`).
    #[cfg(any(feature = "redis", feature = "zookeeper"))]
    pub(crate) fn is_corrupt(&self, id: &str) -> bool {
        self.corrupt.contains(id)
    }

    /// The ids of the known corrupt records.
    #[cfg(feature = "mongodb")]
    pub(crate) fn corrupt_ids(&self) -> Vec<String> {
        self.corrupt.ids()
    }

    /// Whether `id` was reported with exactly this content already.
    #[cfg(any(feature = "redis", feature = "zookeeper"))]
    pub(crate) fn is_known_corrupt(&self, id: &str, doc: &str, version: u64) -> bool {
        self.corrupt.is_known(id, fingerprint(doc, version))
    }

    /// Forgets a corrupt record (it was rewritten or removed).
    pub(crate) fn forget_corrupt(&self, id: &str) {
        self.corrupt.forget(id);
    }

    /// Forgets every corrupt record.
    pub(crate) fn forget_all_corrupt(&self) {
        self.corrupt.clear();
    }

    /// Reports a record the store repaired or could not handle (a `STORE_ERROR` event with
    /// the job id, and a `tracing` warning): an index entry that disagreed with its document,
    /// or a claim whose write failed.
    pub(crate) fn report(&self, id: &str, message: String) {
        match self.ctx() {
            Some(ctx) => ctx.report_problem(id, &message),
            None => tracing::warn!(store = %self.alias(), job_id = %id, "{message}"),
        }
    }

    /// Settles a batch of claims written one by one (MongoDB, ZooKeeper): the won ones are
    /// returned, and each failed one is reported and stays due for a later pass. One claim
    /// that fails must not take the others with it: they are written, so they run now or
    /// never. Only when nothing was won is the first error returned, so that the loop
    /// retries with its backoff.
    #[cfg(any(feature = "mongodb", feature = "zookeeper"))]
    pub(crate) fn settle_claims(
        &self,
        results: Vec<(String, crate::error::Result<Option<super::DueJob>>)>,
    ) -> crate::error::Result<Vec<super::DueJob>> {
        let mut won = Vec::new();
        let mut failed = Vec::new();
        for (id, r) in results {
            match r {
                Ok(Some(d)) => won.push(d),
                Ok(None) => {}
                Err(e) => failed.push((id, e)),
            }
        }
        if won.is_empty() && !failed.is_empty() {
            return Err(failed.swap_remove(0).1);
        }
        for (id, e) in failed {
            self.report(&id, e.to_string());
        }
        Ok(won)
    }

    fn report_corrupt(&self, id: &str, fp: u64, reason: &str) {
        if !self.corrupt.note(id, fp) {
            return;
        }
        match self.ctx() {
            Some(ctx) => ctx.report_corrupt(id, reason),
            None => {
                tracing::error!(store = %self.alias(), job_id = %id, %reason, "stored job could not be loaded; it is kept untouched and skipped")
            }
        }
    }
}
