//! The MongoDB job store (cargo feature `mongodb`).
//!
//! The files are layered; each imports only from the layers below it:
//! 1. `document.rs`: job documents as stored (lenient field reading, version filters and
//!    numbering, stored values): a leaf;
//! 2. `client.rs`: `Client`, what every operation needs (collections, settings, store
//!    state), numbering new jobs and decoding documents;
//! 3. `runs.rs`: run records as documents of `<collection>_runs` and the operations on
//!    that collection alone; `pending.rs`: ledger writes made atomic with a claim through
//!    the job document (ops in its `pending` array, tombstones), and applying them;
//! 4. `claim.rs`: next run time, claiming (conditional updates, many in flight, with the
//!    claim's run records), index repair and releasing, as operations of `Client`;
//!    `ledger.rs`: manual runs and the ledger's periodic pass;
//! 5. this module: [`MongoStore`], its settings and its [`JobStore`] impl (adding, updating,
//!    removing and reading jobs here; the claim in `claim.rs`).

mod claim;
mod client;
mod document;
mod ledger;
mod pending;
mod runs;

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::error::ErrorKind;
use mongodb::options::IndexOptions;
use mongodb::IndexModel;

use self::client::Client;
use self::document::{is_duplicate_key, next_bson, version_is, INCARNATION_SHIFT};
use super::{DueJob, JobStore, StoreContext};
use crate::error::{Error, Result};
use crate::job::{JobRecord, RunId};
use crate::ledger::{RunFilter, RunOutcome, RunRecord, RunTick};
use crate::store::common::{export_order, loaded};
use crate::store::export::UnloadableRecord;

/// Keeps jobs in a MongoDB collection; several schedulers (processes) may share it. See the
/// sections below for the document layout and the claim protocol.
///
/// ```no_run
/// # fn f() -> apsched::Result<()> {
/// use apsched::store::MongoStore;
/// let store = MongoStore::new("mongodb://127.0.0.1:27017/myapp")?.with_collection("jobs");
/// # Ok(()) }
/// ```
///
/// # Data layout
/// One document per job in one collection (default database `apscheduler` unless the URL
/// names one, collection `jobs`), indexed on `next_run_time`:
///
/// ```text
/// { _id: "<job id>",
///   job: "<JSON document (StoredJob)>",
///   next_run_time: <µs since epoch, Int64> | null (paused),
///   version: <Int64: incarnation << 32, incremented by every write>,
///   lease_owner: "<scheduler id>" | null,
///   lease_until: <µs since epoch, Int64> | null }
/// ```
///
/// `<collection>_counter` holds `{ _id: "incarnation", n }`: each added job takes a new
/// incarnation, so versions never repeat across remove and re-add.
///
/// # Run ledger
/// `<collection>_runs` holds one document per run (`_id`: the run id, Int64; every
/// [`RunRecord`] field under its own name, times as µs since the epoch in Int64, `state`
/// as its lowercase name), indexed on `(job_id, scheduled desc, _id desc)`,
/// `(state, scheduled desc)` and `finished_at`. `<collection>_owners` holds one heartbeat
/// per scheduler: `{ _id: "<scheduler id>", alive_until: <µs> }`.
///
/// Without multi-document transactions, a claim writes its run records into the job
/// document it updates (an op in the array `pending`, next to `ledger_seq`, which manual
/// runs, retries and promotions out of the queue bump so that they serialise with
/// claims), then copies them to `<collection>_runs` with `_id` = run id (idempotent) and
/// pulls the op. A crash in between leaves the op in the job document, and the next ledger
/// pass, query or removal of the job writes it. Retries ([`JobStore::add_runs`]) go the
/// same way, in an update conditional on `ledger_seq` alone. A claim that removes its job
/// (an exhausted trigger) leaves a tombstone (`removed: true`) holding the op until it is
/// written; readers treat it as no job. Removing a job keeps its runs; the retention prunes
/// them.
///
/// # Claiming
/// [`JobStore::acquire_due_jobs`] finds due documents whose lease is free, expired or its
/// own, applies the due-run rule ([`DueJob::claim`]) in Rust, and writes each result back
/// with a single-document conditional update (`updateOne`, or `deleteOne` for an exhausted
/// trigger) filtered on `_id` and the `version` it read: the same atomic compare-and-swap
/// as `findOneAndUpdate`, without shipping the document back. A document modified in
/// between (by a claim, which always bumps the version, or any other write) no longer
/// matches, so two schedulers never claim the same slot. Only standard MongoDB operations
/// are used (no transactions, no change streams): other schedulers' changes are picked up
/// by polling ([`MongoStore::with_poll_interval`], default 1 s).
pub struct MongoStore {
    client: Client,
    poll_interval: Option<Duration>,
}

impl std::fmt::Debug for MongoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoStore")
            .field("database", &self.client.database)
            .field("collection", &self.client.collection)
            .field("poll_interval", &self.poll_interval)
            .finish_non_exhaustive()
    }
}

impl MongoStore {
    /// A store on the MongoDB server at `url` (`mongodb://host[:port][/database][?options]`),
    /// in the URL's database (default `apscheduler`), collection `jobs`. Connects when the
    /// scheduler starts.
    pub fn new(url: &str) -> Result<Self> {
        Ok(MongoStore {
            client: Client::new(url)?,
            poll_interval: Some(Duration::from_secs(1)),
        })
    }

    /// Uses `database` instead of the URL's (or `apscheduler`).
    pub fn with_database(mut self, database: impl Into<String>) -> Self {
        self.client.database = Some(database.into());
        self
    }

    /// Uses collection `collection` (default `jobs`).
    pub fn with_collection(mut self, collection: impl Into<String>) -> Self {
        self.client.collection = collection.into();
        self
    }

    /// How often the scheduler looks for jobs other schedulers added or changed (default
    /// 1 s; `None` when this scheduler is the only writer).
    pub fn with_poll_interval(mut self, interval: Option<Duration>) -> Self {
        self.poll_interval = interval;
        self
    }

    /// How long an operation waits for a reachable server before failing with a store
    /// error (server selection and connect timeouts; default 5 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.client.timeout = timeout;
        self
    }

    /// The collection name.
    pub fn collection(&self) -> &str {
        &self.client.collection
    }

    /// The database set with [`with_database`](Self::with_database), if any (otherwise
    /// the URL's, or `apscheduler`).
    pub fn database(&self) -> Option<&str> {
        self.client.database.as_deref()
    }
}

impl MongoStore {
    /// The run ledger's indexes: the sparse index finding job documents with pending run
    /// records, and on the runs collection, a job's runs newest first, runs by state, and
    /// finished runs by age (for pruning).
    async fn create_ledger_indexes(&self) -> Result<()> {
        let colls = self.client.colls().await?;
        let err = |e| {
            self.client
                .state
                .err("creating the run ledger's indexes", e)
        };
        colls
            .jobs
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "pending._id": 1 })
                    .options(IndexOptions::builder().sparse(true).build())
                    .build(),
            )
            .await
            .map_err(err)?;
        colls
            .runs
            .create_indexes([
                IndexModel::builder()
                    .keys(doc! { "job_id": 1, "scheduled": -1, "_id": -1 })
                    .build(),
                IndexModel::builder()
                    .keys(doc! { "state": 1, "scheduled": -1 })
                    .build(),
                IndexModel::builder()
                    .keys(doc! { "finished_at": 1 })
                    .build(),
            ])
            .await
            .map_err(err)?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl JobStore for MongoStore {
    async fn start(&self, ctx: StoreContext) -> Result<()> {
        self.client.state.set_ctx(Some(ctx));
        self.client.state.forget_all_corrupt();
        let coll = self.client.coll().await?;
        coll.create_index(
            IndexModel::builder()
                .keys(doc! { "next_run_time": 1, "_id": 1 })
                .build(),
        )
        .await
        .map_err(|e| self.client.state.err("creating the next_run_time index", e))?;
        self.create_ledger_indexes().await
    }

    async fn add_job(&self, job: JobRecord, replace_existing: bool) -> Result<()> {
        let json = job.to_json()?;
        let coll = self.client.coll().await?;
        // Replacing keeps the job's incarnation (its version goes on counting); a new job
        // gets a new one. A few rounds at most: each lost race means another writer added
        // or removed the job in between.
        for _ in 0..8 {
            if replace_existing {
                let r = coll
                    .update_one(
                        doc! { "_id": &job.id, "removed": { "$ne": true } },
                        doc! {
                            "$set": {
                                "job": &json,
                                "next_run_time": next_bson(job.next_run_time),
                                "lease_owner": Bson::Null,
                                "lease_until": Bson::Null,
                            },
                            "$inc": { "version": 1_i64 },
                        },
                    )
                    .await
                    .map_err(|e| self.client.state.err("adding a job", e))?;
                if r.matched_count == 1 {
                    self.client.state.forget_corrupt(&job.id);
                    return Ok(());
                }
            }
            let d = doc! {
                "_id": &job.id,
                "job": &json,
                "next_run_time": next_bson(job.next_run_time),
                "version": self.client.first_version().await? as i64,
                "lease_owner": Bson::Null,
                "lease_until": Bson::Null,
            };
            match coll.insert_one(d).await {
                Ok(_) => {
                    self.client.state.forget_corrupt(&job.id);
                    return Ok(());
                }
                Err(e) if is_duplicate_key(&e) => {
                    // A tombstone (a removed job whose last runs are being recorded) is no
                    // job: record its runs, delete it, and add this one.
                    if !self.client.settle_tombstone(&job.id).await? && !replace_existing {
                        return Err(Error::ConflictingId(job.id));
                    }
                }
                Err(e) => return Err(self.client.state.err("adding a job", e)),
            }
        }
        Err(self.client.state.msg(format!(
            "adding job '{}': other writers kept adding and removing it",
            job.id
        )))
    }

    /// Without `replace_existing`: one ordered `insert_many` (new incarnations from one
    /// counter update). Not all or nothing: on an id already stored, the jobs before it stay
    /// added, as with one `add_job` each. With `replace_existing`: one `add_job` each.
    async fn add_jobs(&self, jobs: Vec<JobRecord>, replace_existing: bool) -> Result<()> {
        let jobs = super::dedupe_batch(jobs, replace_existing)?;
        if jobs.is_empty() {
            return Ok(());
        }
        if replace_existing {
            for job in jobs {
                self.add_job(job, true).await?;
            }
            return Ok(());
        }
        let mut docs = Vec::with_capacity(jobs.len());
        for job in &jobs {
            docs.push((job.to_json()?, job));
        }
        let coll = self.client.coll().await?;
        let first = self.client.first_versions(jobs.len() as u64).await?;
        let docs: Vec<Document> = docs
            .into_iter()
            .enumerate()
            .map(|(i, (json, job))| {
                doc! {
                    "_id": &job.id,
                    "job": json,
                    "next_run_time": next_bson(job.next_run_time),
                    "version": first.saturating_add((i as u64) << INCARNATION_SHIFT) as i64,
                    "lease_owner": Bson::Null,
                    "lease_until": Bson::Null,
                }
            })
            .collect();
        // From `start` on; a tombstone in the way is settled and the rest inserted again.
        let mut start = 0;
        while start < docs.len() {
            let Err(e) = coll.insert_many(&docs[start..]).ordered(true).await else {
                break;
            };
            let dup = match &*e.kind {
                ErrorKind::InsertMany(m) => m
                    .write_errors
                    .iter()
                    .flatten()
                    .find(|w| w.code == 11000)
                    .map(|w| start + w.index),
                _ => None,
            };
            // The index comes from the server: one outside the batch is its error as such.
            let Some((at, dup_job)) = dup.and_then(|at| Some((at, jobs.get(at)?))) else {
                return Err(self.client.state.err("adding jobs", e));
            };
            if !self.client.settle_tombstone(&dup_job.id).await? {
                return Err(Error::ConflictingId(dup_job.id.clone()));
            }
            start = at;
        }
        for job in &jobs {
            self.client.state.forget_corrupt(&job.id);
        }
        Ok(())
    }

    async fn update_job(&self, mut job: JobRecord) -> Result<JobRecord> {
        let json = job.to_json()?;
        let coll = self.client.coll().await?;
        let found = coll
            .find_one_and_update(
                doc! { "_id": &job.id, "version": version_is(job.version), "removed": { "$ne": true } },
                doc! { "$set": {
                    "job": json,
                    "next_run_time": next_bson(job.next_run_time),
                    "version": (job.version + 1) as i64,
                    "lease_owner": Bson::Null,
                    "lease_until": Bson::Null,
                } },
            )
            .await
            .map_err(|e| self.client.state.err("updating a job", e))?;
        if found.is_none() {
            let exists = coll
                .find_one(doc! { "_id": &job.id, "removed": { "$ne": true } })
                .projection(doc! { "_id": 1 })
                .await
                .map_err(|e| self.client.state.err("updating a job", e))?
                .is_some();
            return Err(if exists {
                Error::Fenced(job.id)
            } else {
                Error::JobLookup(job.id)
            });
        }
        self.client.state.forget_corrupt(&job.id);
        job.version += 1;
        job.lease = None;
        Ok(job)
    }

    /// The job's runs stay (retention prunes them); run records still in its document are
    /// written before it goes.
    async fn remove_job(&self, id: &str) -> Result<()> {
        // Records still in the document are written first; if that fails, the job stays.
        self.client.settle_pending(doc! { "_id": id }).await?;
        let removed = self
            .client
            .coll()
            .await?
            .find_one_and_delete(doc! { "_id": id, "removed": { "$ne": true } })
            .await
            .map_err(|e| self.client.state.err("removing a job", e))?;
        self.client.state.forget_corrupt(id);
        match removed {
            // Ops pushed since the settle are their live writers' to copy too: a failure
            // here is reported, the removal stands.
            Some(d) => {
                if let Err(e) = self.client.apply_pending(std::slice::from_ref(&d)).await {
                    self.client.state.report(id, e.to_string());
                }
                Ok(())
            }
            None => {
                self.client.settle_tombstone(id).await?;
                Err(Error::JobLookup(id.to_string()))
            }
        }
    }

    async fn remove_all_jobs(&self) -> Result<()> {
        // Run records still in job documents are written first.
        self.client.settle_pending(doc! {}).await?;
        self.client
            .coll()
            .await?
            .delete_many(doc! {})
            .await
            .map_err(|e| self.client.state.err("removing all jobs", e))?;
        self.client.state.forget_all_corrupt();
        Ok(())
    }

    async fn lookup_job(&self, id: &str) -> Result<Option<JobRecord>> {
        let Some(d) = self
            .client
            .coll()
            .await?
            .find_one(doc! { "_id": id })
            .await
            .map_err(|e| self.client.state.err("looking up a job", e))?
        else {
            return Ok(None);
        };
        if pending::is_tombstone(&d) {
            self.client.settle_tombstone(id).await?;
            return Ok(None);
        }
        match self.client.decode(&d) {
            Ok(job) => Ok(Some(job)),
            Err(u) => Err(Error::CorruptJob {
                id: id.to_string(),
                reason: u.reason,
            }),
        }
    }

    async fn get_all_jobs(&self) -> Result<Vec<JobRecord>> {
        Ok(loaded(self.export_records().await?))
    }

    async fn export_records(
        &self,
    ) -> Result<Vec<std::result::Result<JobRecord, UnloadableRecord>>> {
        let docs: Vec<Document> = self
            .client
            .coll()
            .await?
            .find(pending::not_tombstone())
            .await
            .map_err(|e| self.client.state.err("reading all jobs", e))?
            .try_collect()
            .await
            .map_err(|e| self.client.state.err("reading all jobs", e))?;
        Ok(export_order(
            docs.iter().map(|d| self.client.decode(d)).collect(),
        ))
    }

    async fn next_run_time(&self) -> Result<Option<DateTime<Utc>>> {
        self.client.next_run_time().await
    }

    async fn acquire_due_jobs(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<DueJob>> {
        self.client.acquire_due_jobs(now, limit).await
    }

    async fn release_jobs(&self, jobs: &[DueJob]) -> Result<()> {
        self.client.release_jobs(jobs).await
    }

    fn keeps_runs(&self) -> bool {
        true
    }

    async fn start_runs(&self, run_ids: &[RunId], now: DateTime<Utc>) -> Result<Vec<RunId>> {
        self.client.start_runs(run_ids, now).await
    }

    async fn finish_runs(&self, outcomes: &[RunOutcome]) -> Result<()> {
        self.client.finish_runs(outcomes).await
    }

    async fn add_runs(&self, runs: &[RunRecord]) -> Result<()> {
        self.client.add_runs(runs).await
    }

    async fn add_manual_runs(
        &self,
        job_id: &str,
        slots: &[DateTime<Utc>],
        now: DateTime<Utc>,
    ) -> Result<Vec<RunRecord>> {
        self.client.add_manual_runs(job_id, slots, now).await
    }

    async fn tick_runs(&self, now: DateTime<Utc>) -> Result<RunTick> {
        self.client.tick_runs(now).await
    }

    async fn heartbeat(&self, now: DateTime<Utc>) -> Result<()> {
        self.client.heartbeat(now).await
    }

    /// Run records a crash left in job documents (of the job asked for, or of any job) are
    /// written first.
    async fn query_runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>> {
        let pending = match &filter.job_id {
            Some(job) => doc! { "_id": job },
            None => doc! {},
        };
        self.client.settle_pending(pending).await?;
        self.client.query_runs(filter).await
    }

    async fn get_run(&self, run_id: RunId) -> Result<Option<RunRecord>> {
        self.client
            .settle_pending(doc! { "pending.runs._id": runs::id_bson(run_id) })
            .await?;
        self.client.get_run(run_id).await
    }

    fn poll_interval(&self) -> Option<Duration> {
        self.poll_interval
    }

    fn is_persistent(&self) -> bool {
        true
    }
}
