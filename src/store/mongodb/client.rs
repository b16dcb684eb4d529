//! What every operation of the store needs: the collections (connected on first use), the
//! settings naming them, and the store state (owner, clock, corrupt-job reports); numbering
//! and decoding documents.

use std::time::Duration;

use mongodb::bson::{doc, Document};
use mongodb::options::{ClientOptions, ReturnDocument};
use mongodb::Collection;
use tokio::sync::OnceCell;

use super::document::{fields, int, INCARNATION_SHIFT};
use super::runs::LedgerState;
use crate::error::Result;
use crate::job::JobRecord;
use crate::store::documents::StoreState;
use crate::store::export::UnloadableRecord;

/// The connection side of a [`MongoStore`](super::MongoStore); the job operations are
/// methods of this type (in `claim.rs`) or use it (in the store).
pub(super) struct Client {
    url: String,
    pub(super) database: Option<String>,
    pub(super) collection: String,
    pub(super) timeout: Duration,
    coll: OnceCell<Colls>,
    pub(super) state: StoreState,
    /// The run ledger's in-process state (runs reported as unreadable, pruning).
    pub(super) ledger: LedgerState,
}

/// The jobs collection, its counter collection (`<collection>_counter`, one document
/// `{_id: "incarnation", n}`: how many jobs were ever added) and the run ledger's two
/// collections (`<collection>_runs`, `<collection>_owners`).
pub(super) struct Colls {
    pub(super) jobs: Collection<Document>,
    counter: Collection<Document>,
    /// One document per run (see `runs.rs`).
    pub(super) runs: Collection<Document>,
    /// One document per scheduler: `{_id: scheduler id, alive_until: µs}`.
    pub(super) owners: Collection<Document>,
    /// The database, for the multi-statement `update` command.
    pub(super) db: mongodb::Database,
}

impl Client {
    /// A client for `url` (see [`MongoStore::new`](super::MongoStore::new)).
    pub(super) fn new(url: &str) -> Result<Self> {
        let state = StoreState::new("mongodb");
        if !url.starts_with("mongodb://") && !url.starts_with("mongodb+srv://") {
            return Err(state.msg(format!("not a MongoDB URL: {url}")));
        }
        Ok(Client {
            url: url.to_string(),
            database: None,
            collection: "jobs".into(),
            timeout: Duration::from_secs(5),
            coll: OnceCell::new(),
            state,
            ledger: LedgerState::default(),
        })
    }

    pub(super) async fn coll(&self) -> Result<&Collection<Document>> {
        Ok(&self.colls().await?.jobs)
    }

    /// Every collection of the store (connecting on first use).
    pub(super) async fn colls(&self) -> Result<&Colls> {
        self.coll
            .get_or_try_init(|| async {
                let mut opts = ClientOptions::parse(&self.url)
                    .await
                    .map_err(|e| self.state.err("parsing the MongoDB URL", e))?;
                opts.server_selection_timeout = Some(self.timeout);
                opts.connect_timeout = Some(self.timeout.min(Duration::from_secs(2)));
                opts.app_name.get_or_insert_with(|| "apsched".into());
                // Every write of the store is a compare-and-swap or idempotent, and a lost
                // reply is handled (the claim is reported, its runs dispatched by the next
                // ledger pass). A driver retry of a CAS on a server that does not
                // deduplicate retried writes (SecantusDB) finds the document changed by the
                // first attempt and reports a won claim as lost. `retryWrites=true` in the
                // URL turns them back on.
                opts.retry_writes.get_or_insert(false);
                let client = mongodb::Client::with_options(opts)
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
                    runs: db.collection::<Document>(&format!("{}_runs", self.collection)),
                    owners: db.collection::<Document>(&format!("{}_owners", self.collection)),
                    db,
                })
            })
            .await
    }

    /// The first version of a newly added job: a new incarnation from the counter.
    pub(super) async fn first_version(&self) -> Result<u64> {
        self.first_versions(1).await
    }

    /// The first of `n` consecutive new incarnations (one counter update for a batch):
    /// the batch's `i`-th job gets `first + (i << INCARNATION_SHIFT)`.
    pub(super) async fn first_versions(&self, n: u64) -> Result<u64> {
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

    pub(super) fn decode(&self, d: &Document) -> std::result::Result<JobRecord, UnloadableRecord> {
        let f = fields(d);
        match &f.job {
            Some(job) => self.state.decode(&f.id, job, f.version, f.lease),
            None => self
                .state
                .decode(&f.id, &format!("{d}"), f.version, f.lease)
                .map_err(|mut u| {
                    u.reason = "the document has no 'job' string".into();
                    u
                }),
        }
    }
}
