//! The MongoDB job store (cargo feature `mongodb`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use mongodb::bson::{doc, Bson, Document};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, ReturnDocument};
use mongodb::{Client, Collection, IndexModel};
use tokio::sync::OnceCell;

use super::common::{claimable_at, from_micros_saturating, lease_until, micros_ceil, sort_jobs};
use super::documents::StoreState;
use super::{DueJob, JobStore, StoreContext};
use crate::error::{Error, Result};
use crate::job::{JobRecord, Lease};

type BoxFut<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// How many claims are in flight at once.
const CONCURRENCY: usize = 16;

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

/// The fields of a stored document, read leniently (a corrupt document still has an id).
struct Fields {
    id: String,
    job: Option<String>,
    /// 0 for a document without a version (see [`version_is`]).
    version: u64,
    lease: Option<Lease>,
    next: Option<i64>,
}

fn int(d: &Document, key: &str) -> Option<i64> {
    match d.get(key)? {
        Bson::Int64(v) => Some(*v),
        Bson::Int32(v) => Some(i64::from(*v)),
        Bson::Double(v) => Some(*v as i64),
        _ => None,
    }
}

fn fields(d: &Document) -> Fields {
    let id = match d.get("_id") {
        Some(Bson::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let lease = match (d.get_str("lease_owner").ok(), int(d, "lease_until")) {
        (Some(owner), Some(until)) => Some(Lease {
            owner: owner.to_string(),
            until: from_micros_saturating(until),
        }),
        _ => None,
    };
    Fields {
        id,
        job: d.get_str("job").ok().map(str::to_string),
        version: int(d, "version").unwrap_or(0).max(0) as u64,
        lease,
        next: int(d, "next_run_time"),
    }
}

/// The filter on `version` matching a document read as version `v`. A document written
/// without a version (by hand, or by another tool) reads as version 0 and matches it, so it
/// can be claimed and updated (which gives it a version) instead of never matching.
fn version_is(v: u64) -> Bson {
    if v == 0 {
        doc! { "$in": [0_i64, Bson::Null] }.into()
    } else {
        Bson::Int64(v as i64)
    }
}

/// Versions of a new job start at `incarnation << INCARNATION_SHIFT` and count writes in
/// the low bits, so a job removed and added again under the same id never repeats a
/// version (no ABA: a write based on a read of the old job is fenced).
const INCARNATION_SHIFT: u32 = 32;

fn next_bson(t: Option<DateTime<Utc>>) -> Bson {
    t.map_or(Bson::Null, |t| Bson::Int64(micros_ceil(t)))
}

fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    matches!(&*e.kind, ErrorKind::Write(WriteFailure::WriteError(w)) if w.code == 11000)
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

    /// The first version of a newly added job: a new incarnation from the counter.
    async fn first_version(&self) -> Result<u64> {
        self.first_versions(1).await
    }

    /// The first of `n` consecutive new incarnations (one counter update for a batch):
    /// the batch's `i`-th job gets `first + (i << INCARNATION_SHIFT)`.
    async fn first_versions(&self, n: u64) -> Result<u64> {
        let counter = &self.colls().await?.counter;
        let d = counter
            .find_one_and_update(
                doc! { "_id": "incarnation" },
                doc! { "$inc": { "n": n.max(1) as i64 } },
            )
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await
            .map_err(|e| self.state.err("numbering a new job", e))?;
        let last = d.as_ref().and_then(|d| int(d, "n")).unwrap_or(1).max(1) as u64;
        let first = last.saturating_sub(n.max(1) - 1).max(1);
        Ok(first << INCARNATION_SHIFT)
    }

    fn decode(&self, d: &Document) -> Option<JobRecord> {
        let f = fields(d);
        match &f.job {
            Some(job) => self.state.decode(&f.id, job, f.version, f.lease),
            None => self
                .state
                .decode(&f.id, &format!("{d}"), f.version, f.lease),
        }
    }

    fn corrupt_filter(&self) -> Bson {
        Bson::Array(
            self.state
                .corrupt_ids()
                .into_iter()
                .map(Bson::String)
                .collect(),
        )
    }

    /// `{ $or: [lease free, expired, or own] }` at `now_us`.
    fn lease_free(me: &str, now_us: i64) -> Document {
        doc! { "$or": [
            { "lease_until": Bson::Null },
            { "lease_until": { "$lte": now_us } },
            { "lease_owner": me },
        ] }
    }

    /// Sets the top-level `next_run_time` of the document `d` to `next`, what its job
    /// document says (if nobody wrote it since it was read), and reports the repair. A
    /// failure is reported, not returned: the claims of the pass stand, the next pass retries.
    async fn repair_index(
        &self,
        coll: &Collection<Document>,
        d: &Document,
        next: Option<DateTime<Utc>>,
    ) {
        let f = fields(d);
        let r = coll
            .update_one(
                doc! { "_id": &f.id, "version": version_is(f.version) },
                doc! { "$set": { "next_run_time": next_bson(next) } },
            )
            .await;
        let was = f.next.map(from_micros_saturating);
        match r {
            Ok(r) if r.modified_count == 1 => self.state.report(
                &f.id,
                format!(
                    "next_run_time said due {}, the job's document says {}: repaired",
                    was.map_or_else(|| "never".to_string(), |t| t.to_rfc3339()),
                    next.map_or_else(|| "paused".to_string(), |t| t.to_rfc3339())
                ),
            ),
            // Written meanwhile by another writer, which set both copies.
            Ok(_) => {}
            Err(e) => self
                .state
                .report(&f.id, format!("repairing next_run_time: {e}")),
        }
    }

    async fn claim_one(
        &self,
        coll: &Collection<Document>,
        mut due: DueJob,
        version: u64,
        me: &str,
        lease: &Lease,
    ) -> Result<Option<DueJob>> {
        // The version alone fences the write: every claim and every other write bumps it,
        // and the candidate was read with a free lease, so an unchanged version means the
        // lease is still free too.
        let filter = doc! { "_id": &due.job.id, "version": version_is(version) };
        let won = if due.removed {
            coll.delete_one(filter)
                .await
                .map_err(|e| self.state.err("claiming a due job", e))?
                .deleted_count
                == 1
        } else {
            let update = doc! { "$set": {
                "job": due.job.to_json()?,
                "next_run_time": next_bson(due.job.next_run_time),
                "version": (version + 1) as i64,
                "lease_owner": me,
                "lease_until": micros_ceil(lease.until),
            } };
            coll.update_one(filter, update)
                .await
                .map_err(|e| self.state.err("claiming a due job", e))?
                .modified_count
                == 1
        };
        Ok(won.then(|| {
            due.job.version = version + 1;
            due.job.lease = Some(lease.clone());
            due
        }))
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
