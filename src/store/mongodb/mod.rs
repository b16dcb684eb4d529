//! The MongoDB job store (cargo feature `mongodb`): the store and its [`JobStore`]
//! implementation here; documents as stored and versions in `document`, claims and index
//! repair in `claim`.

mod claim;
mod document;

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use mongodb::bson::{doc, Bson, Document};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, ReturnDocument};
use mongodb::{Client, Collection, IndexModel};
use tokio::sync::OnceCell;

use self::claim::{BoxFut, CONCURRENCY};
use self::document::{fields, is_duplicate_key, next_bson, version_is, INCARNATION_SHIFT};
use super::common::{claimable_at, from_micros_saturating, lease_until, micros_ceil, sort_jobs};
use super::documents::StoreState;
use super::{DueJob, JobStore, StoreContext};
use crate::error::{Error, Result};
use crate::job::{JobRecord, Lease};

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
    url: String,
    database: Option<String>,
    collection: String,
    poll_interval: Option<Duration>,
    timeout: Duration,
    coll: OnceCell<Colls>,
    state: StoreState,
}

/// The jobs collection and its counter collection (`<collection>_counter`, one document
/// `{_id: "incarnation", n}`: how many jobs were ever added).
struct Colls {
    jobs: Collection<Document>,
    counter: Collection<Document>,
}

impl std::fmt::Debug for MongoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoStore")
            .field("database", &self.database)
            .field("collection", &self.collection)
            .field("poll_interval", &self.poll_interval)
            .finish_non_exhaustive()
    }
}

impl MongoStore {
    /// A store on the MongoDB server at `url` (`mongodb://host[:port][/database][?options]`),
    /// in the URL's database (default `apscheduler`), collection `jobs`. Connects when the
    /// scheduler starts.
    pub fn new(url: &str) -> Result<Self> {
        let state = StoreState::new("mongodb");
        if !url.starts_with("mongodb://") && !url.starts_with("mongodb+srv://") {
            return Err(state.msg(format!("not a MongoDB URL: {url}")));
        }
        Ok(MongoStore {
            url: url.to_string(),
            database: None,
            collection: "jobs".into(),
            poll_interval: Some(Duration::from_secs(1)),
            timeout: Duration::from_secs(5),
            coll: OnceCell::new(),
            state,
        })
    }

    /// Uses `database` instead of the URL's (or `apscheduler`).
    pub fn with_database(mut self, database: impl Into<String>) -> Self {
        self.database = Some(database.into());
        self
    }

    /// Uses collection `collection` (default `jobs`).
    pub fn with_collection(mut self, collection: impl Into<String>) -> Self {
        self.collection = collection.into();
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
        self.timeout = timeout;
        self
    }

    /// The collection name.
    pub fn collection(&self) -> &str {
        &self.collection
    }

    /// The database set with [`with_database`](Self::with_database), if any (otherwise
    /// the URL's, or `apscheduler`).
    pub fn database(&self) -> Option<&str> {
        self.database.as_deref()
    }

    async fn coll(&self) -> Result<&Collection<Document>> {
        Ok(&self.colls().await?.jobs)
    }

    async fn colls(&self) -> Result<&Colls> {
        self.coll
            .get_or_try_init(|| async {
                let mut opts = ClientOptions::parse(&self.url)
                    .await
                    .map_err(|e| self.state.err("parsing the MongoDB URL", e))?;
                opts.server_selection_timeout = Some(self.timeout);
                opts.connect_timeout = Some(self.timeout.min(Duration::from_secs(2)));
                opts.app_name.get_or_insert_with(|| "apsched".into());
                let client = Client::with_options(opts)
                    .map_err(|e| self.state.err("creating the MongoDB client", e))?;
                let db = match &self.database {
                    Some(name) => client.database(name),
                    None => client
                        .default_database()
                        .unwrap_or_else(|| client.database("apscheduler")),
                };
                Ok(Colls {
                    jobs: db.collection::<Document>(&self.collection),
                    counter: db.collection::<Document>(&format!("{}_counter", self.collection)),
                })
            })
            .await
    }
}

#[async_trait::async_trait]
impl JobStore for MongoStore {
    async fn start(&self, ctx: StoreContext) -> Result<()> {
        self.state.set_ctx(Some(ctx));
        self.state.forget_all_corrupt();
        let coll = self.coll().await?;
        coll.create_index(
            IndexModel::builder()
                .keys(doc! { "next_run_time": 1, "_id": 1 })
                .build(),
        )
        .await
        .map_err(|e| self.state.err("creating the next_run_time index", e))?;
        Ok(())
    }

    async fn add_job(&self, job: JobRecord, replace_existing: bool) -> Result<()> {
        let json = job.to_json()?;
        let coll = self.coll().await?;
        // Replacing keeps the job's incarnation (its version goes on counting); a new job
        // gets a new one. A few rounds at most: each lost race means another writer added
        // or removed the job in between.
        for _ in 0..8 {
            if replace_existing {
                let r = coll
                    .update_one(
                        doc! { "_id": &job.id },
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
                    .map_err(|e| self.state.err("adding a job", e))?;
                if r.matched_count == 1 {
                    self.state.forget_corrupt(&job.id);
                    return Ok(());
                }
            }
            let d = doc! {
                "_id": &job.id,
                "job": &json,
                "next_run_time": next_bson(job.next_run_time),
                "version": self.first_version().await? as i64,
                "lease_owner": Bson::Null,
                "lease_until": Bson::Null,
            };
            match coll.insert_one(d).await {
                Ok(_) => {
                    self.state.forget_corrupt(&job.id);
                    return Ok(());
                }
                Err(e) if is_duplicate_key(&e) => {
                    if !replace_existing {
                        return Err(Error::ConflictingId(job.id));
                    }
                }
                Err(e) => return Err(self.state.err("adding a job", e)),
            }
        }
        Err(self.state.msg(format!(
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
        let coll = self.coll().await?;
        let first = self.first_versions(jobs.len() as u64).await?;
        let docs = docs.into_iter().enumerate().map(|(i, (json, job))| {
            doc! {
                "_id": &job.id,
                "job": json,
                "next_run_time": next_bson(job.next_run_time),
                "version": first.saturating_add((i as u64) << INCARNATION_SHIFT) as i64,
                "lease_owner": Bson::Null,
                "lease_until": Bson::Null,
            }
        });
        match coll.insert_many(docs).ordered(true).await {
            Ok(_) => {}
            Err(e) => {
                let dup = match &*e.kind {
                    ErrorKind::InsertMany(m) => m
                        .write_errors
                        .iter()
                        .flatten()
                        .find(|w| w.code == 11000)
                        .and_then(|w| jobs.get(w.index)),
                    _ => None,
                };
                return Err(match dup {
                    Some(job) => Error::ConflictingId(job.id.clone()),
                    None => self.state.err("adding jobs", e),
                });
            }
        }
        for job in &jobs {
            self.state.forget_corrupt(&job.id);
        }
        Ok(())
    }

    async fn update_job(&self, mut job: JobRecord) -> Result<JobRecord> {
        let json = job.to_json()?;
        let coll = self.coll().await?;
        let found = coll
            .find_one_and_update(
                doc! { "_id": &job.id, "version": version_is(job.version) },
                doc! { "$set": {
                    "job": json,
                    "next_run_time": next_bson(job.next_run_time),
                    "version": (job.version + 1) as i64,
                    "lease_owner": Bson::Null,
                    "lease_until": Bson::Null,
                } },
            )
            .await
            .map_err(|e| self.state.err("updating a job", e))?;
        if found.is_none() {
            let exists = coll
                .find_one(doc! { "_id": &job.id })
                .projection(doc! { "_id": 1 })
                .await
                .map_err(|e| self.state.err("updating a job", e))?
                .is_some();
            return Err(if exists {
                Error::Fenced(job.id)
            } else {
                Error::JobLookup(job.id)
            });
        }
        self.state.forget_corrupt(&job.id);
        job.version += 1;
        job.lease = None;
        Ok(job)
    }

    async fn remove_job(&self, id: &str) -> Result<()> {
        let r = self
            .coll()
            .await?
            .delete_one(doc! { "_id": id })
            .await
            .map_err(|e| self.state.err("removing a job", e))?;
        self.state.forget_corrupt(id);
        if r.deleted_count == 0 {
            return Err(Error::JobLookup(id.to_string()));
        }
        Ok(())
    }

    async fn remove_all_jobs(&self) -> Result<()> {
        self.coll()
            .await?
            .delete_many(doc! {})
            .await
            .map_err(|e| self.state.err("removing all jobs", e))?;
        self.state.forget_all_corrupt();
        Ok(())
    }

    async fn lookup_job(&self, id: &str) -> Result<Option<JobRecord>> {
        let Some(d) = self
            .coll()
            .await?
            .find_one(doc! { "_id": id })
            .await
            .map_err(|e| self.state.err("looking up a job", e))?
        else {
            return Ok(None);
        };
        match self.decode(&d) {
            Some(job) => Ok(Some(job)),
            None => Err(Error::CorruptJob {
                id: id.to_string(),
                reason: fields(&d)
                    .job
                    .map_or_else(
                        || Err("the document has no 'job' string".to_string()),
                        |j| self.state.check(id, &j).map(|_| ()),
                    )
                    .err()
                    .unwrap_or_else(|| "unreadable".into()),
            }),
        }
    }

    async fn get_all_jobs(&self) -> Result<Vec<JobRecord>> {
        let docs: Vec<Document> = self
            .coll()
            .await?
            .find(doc! {})
            .await
            .map_err(|e| self.state.err("reading all jobs", e))?
            .try_collect()
            .await
            .map_err(|e| self.state.err("reading all jobs", e))?;
        let mut jobs: Vec<JobRecord> = docs.iter().filter_map(|d| self.decode(d)).collect();
        sort_jobs(&mut jobs);
        Ok(jobs)
    }

    async fn next_run_time(&self) -> Result<Option<DateTime<Utc>>> {
        let me = self.state.owner();
        let now = self.state.now();
        let mut cursor = self
            .coll()
            .await?
            .find(doc! {
                "next_run_time": { "$ne": Bson::Null },
                "_id": { "$nin": self.corrupt_filter() },
            })
            .sort(doc! { "next_run_time": 1, "_id": 1 })
            .projection(doc! { "next_run_time": 1, "lease_owner": 1, "lease_until": 1 })
            .batch_size(256)
            .await
            .map_err(|e| self.state.err("reading next run times", e))?;
        let mut best: Option<DateTime<Utc>> = None;
        while let Some(d) = cursor
            .try_next()
            .await
            .map_err(|e| self.state.err("reading next run times", e))?
        {
            let f = fields(&d);
            let Some(next) = f.next.map(from_micros_saturating) else {
                continue;
            };
            if best.is_some_and(|b| b <= next) {
                break;
            }
            let at = claimable_at(next, f.lease.as_ref(), &me, now);
            best = Some(best.map_or(at, |b| b.min(at)));
        }
        Ok(best)
    }

    async fn acquire_due_jobs(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<DueJob>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let me = self.state.owner();
        let now_us = now.timestamp_micros();
        let lease = Lease {
            owner: me.clone(),
            until: lease_until(now, self.state.lease()),
        };
        let coll = self.coll().await?;
        let mut filter = doc! {
            "next_run_time": { "$lte": now_us },
            "_id": { "$nin": self.corrupt_filter() },
        };
        filter.extend(Self::lease_free(&me, now_us));
        let docs: Vec<Document> = coll
            .find(filter)
            .sort(doc! { "next_run_time": 1, "_id": 1 })
            .limit(limit as i64)
            .await
            .map_err(|e| self.state.err("reading due jobs", e))?
            .try_collect()
            .await
            .map_err(|e| self.state.err("reading due jobs", e))?;
        let mut claims = Vec::new();
        for d in &docs {
            let Some(job) = self.decode(d) else { continue };
            let version = job.version;
            let due = DueJob::claim(job, now);
            if due.run_times.is_empty() {
                // The top-level `next_run_time` says due, the document says paused or later.
                // The document is the truth; left alone, every pass would retry the job.
                self.repair_index(coll, d, due.job.next_run_time).await;
            } else {
                claims.push((due, version));
            }
        }
        let mut futs: Vec<BoxFut<'_, (String, Result<Option<DueJob>>)>> = Vec::new();
        let (me, lease) = (&me, &lease);
        for (due, version) in claims {
            futs.push(Box::pin(async move {
                let id = due.job.id.clone();
                (id, self.claim_one(coll, due, version, me, lease).await)
            }));
        }
        let results: Vec<(String, Result<Option<DueJob>>)> = futures::stream::iter(futs)
            .buffered(CONCURRENCY)
            .collect()
            .await;
        self.state.settle_claims(results)
    }

    async fn release_jobs(&self, jobs: &[DueJob]) -> Result<()> {
        // A claim is released only if the job is still at the version the claim wrote and
        // leased by this scheduler: any later write (a management update, another claim, a
        // removal and re-add: versions never repeat) leaves it alone. One round trip.
        let me = self.state.owner();
        let claims: Vec<Document> = jobs
            .iter()
            .filter(|d| !d.removed && d.job.lease.as_ref().is_some_and(|l| l.owner == me))
            .map(|d| doc! { "_id": &d.job.id, "version": d.job.version as i64 })
            .collect();
        if claims.is_empty() {
            return Ok(());
        }
        self.coll()
            .await?
            .update_many(
                doc! { "$or": claims, "lease_owner": &me },
                doc! { "$set": { "lease_owner": Bson::Null, "lease_until": Bson::Null } },
            )
            .await
            .map_err(|e| self.state.err("releasing jobs", e))?;
        Ok(())
    }

    fn poll_interval(&self) -> Option<Duration> {
        self.poll_interval
    }

    fn is_persistent(&self) -> bool {
        true
    }
}
