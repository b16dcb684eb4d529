//! The MongoDB store against the contract, plus its own tests. Needs a MongoDB-compatible
//! server on `APSCHED_MONGODB_URL` (default `mongodb://127.0.0.1:27217/`, the SecantusDB
//! that `scripts/services.sh start` runs).

use std::time::Duration;

use ::mongodb::bson::{doc, Document};
use apsched::store::{JobStore, MongoStore};

use crate::{nosql, suite};

fn url() -> String {
    std::env::var("APSCHED_MONGODB_URL").unwrap_or_else(|_| "mongodb://127.0.0.1:27217/".into())
}

async fn client(url: &str) -> ::mongodb::Client {
    let mut opts = ::mongodb::options::ClientOptions::parse(url).await.unwrap();
    opts.server_selection_timeout = Some(Duration::from_secs(3));
    ::mongodb::Client::with_options(opts).unwrap()
}

async fn available() -> bool {
    let check = async {
        client(&url())
            .await
            .database("admin")
            .run_command(doc! { "ping": 1 })
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    suite::service_available("MongoDB", check.await)
}

fn db_name() -> String {
    format!("apsched_test_{}", suite::unique_suffix())
}

async fn drop_db(db: &str) {
    client(&url()).await.database(db).drop().await.unwrap();
}

fn store(db: &str) -> MongoStore {
    MongoStore::new(&url()).unwrap().with_database(db)
}

async fn started(db: &str, collection: &str, id: &str) -> MongoStore {
    let s = store(db).with_collection(collection);
    s.start(suite::context("mongodb", id, Duration::from_secs(30)))
        .await
        .unwrap();
    s
}

/// The suite's corrupt-record hook: a document whose `job` is not JSON, due at
/// `suite::t0()`.
fn write_corrupt() -> suite::WriteCorrupt<MongoStore> {
    Box::new(|store: &MongoStore, id: &str| {
        let db = store
            .database()
            .expect("the tests name the database")
            .to_string();
        let coll = store.collection().to_string();
        let id = id.to_string();
        Box::pin(async move {
            client(&url())
                .await
                .database(&db)
                .collection::<Document>(&coll)
                .insert_one(doc! {
                    "_id": id,
                    "job": "{not json",
                    "next_run_time": suite::t0().timestamp_micros(),
                    "version": 0_i64,
                })
                .await
                .unwrap();
        })
    })
}

#[tokio::test]
async fn mongodb_contract() {
    if !available().await {
        return;
    }
    let db = db_name();
    let n = std::sync::atomic::AtomicUsize::new(0);
    suite::contract(
        || {
            let coll = format!(
                "jobs{}",
                n.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            );
            let db = db.clone();
            async move { started(&db, &coll, "s1").await }
        },
        Some(write_corrupt()),
    )
    .await;
    drop_db(&db).await;
}

#[tokio::test]
async fn mongodb_shared_claims() {
    if !available().await {
        return;
    }
    let db = db_name();
    suite::shared_claims(
        started(&db, "jobs", "a").await,
        started(&db, "jobs", "b").await,
    )
    .await;
    drop_db(&db).await;
}

#[tokio::test]
async fn mongodb_closures_refused() {
    if !available().await {
        return;
    }
    let db = db_name();
    nosql::closures_refused(started(&db, "jobs", "s1").await).await;
    drop_db(&db).await;
}

#[tokio::test]
async fn mongodb_corrupt_records_are_reported_once_and_kept() {
    if !available().await {
        return;
    }
    let db = db_name();
    let ctx = suite::TestContext::new("mongodb", "s1", Duration::from_secs(30));
    let rx = ctx.subscribe(apsched::event::EventKind::STORE_ERROR);
    let s = store(&db);
    s.start(ctx.context()).await.unwrap();
    s.add_job(nosql::task_job("good", "echo", suite::at(0)), false)
        .await
        .unwrap();
    let coll = client(&url())
        .await
        .database(&db)
        .collection::<Document>("jobs");
    let score = suite::at(0).timestamp_micros();
    let unknown = nosql::task_job("unknown_task", "mystery", suite::at(0))
        .to_json()
        .unwrap();
    coll.insert_many([
        doc! { "_id": "bad_json", "job": "{not json", "next_run_time": score, "version": 0_i64 },
        doc! { "_id": "unknown_task", "job": unknown, "next_run_time": score, "version": 0_i64 },
    ])
    .await
    .unwrap();
    let raw = |id: &'static str| {
        let coll = coll.clone();
        async move {
            coll.find_one(doc! { "_id": id })
                .await
                .unwrap()
                .map(|d| d.to_string())
        }
    };
    nosql::corrupt_records(s, rx, raw).await;
    drop_db(&db).await;
}

#[tokio::test]
async fn mongodb_restart_persistence() {
    if !available().await {
        return;
    }
    let db = db_name();
    nosql::restart_persistence(|| {
        let db = db.clone();
        async move { store(&db) }
    })
    .await;
    drop_db(&db).await;
}

/// A private SecantusDB with on-disk storage on a free port, killed with SIGKILL and
/// started again under a running scheduler.
#[tokio::test]
async fn mongodb_server_restart_mid_run() {
    if !available().await {
        return;
    }
    let services = std::env::var("APSCHED_SERVICES_DIR")
        .unwrap_or_else(|_| "/var/tmp/apsched-services".into());
    let server = std::path::Path::new(&services).join("venv/bin/secantusd-py");
    if !suite::service_available(
        "secantusd-py",
        if server.exists() {
            Ok(())
        } else {
            Err(format!(
                "{} missing (scripts/services.sh start)",
                server.display()
            ))
        },
    ) {
        return;
    }
    let server = nosql::PrivateServer::start(
        "mongo",
        move |dir, port| {
            let mut c = std::process::Command::new(&server);
            c.args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .arg("--storage-path")
                .arg(dir)
                .arg("--sync-on-commit")
                .args(["--log-level", "ERROR"]);
            c
        },
        None,
    )
    .await;
    let store = MongoStore::new(&format!("mongodb://127.0.0.1:{}/restart", server.port()))
        .unwrap()
        .with_timeout(Duration::from_secs(1))
        .with_poll_interval(Some(Duration::from_millis(200)));
    nosql::server_restart(store, &server).await;
}

/// The multi-process test's target (see `multiprocess`): 3 processes on one collection, 20
/// jobs every second for 12 s, the busiest killed at 5 s. (20, not the 200 of the Redis run:
/// the test server, SecantusDB, is a Python process that manages a few hundred conditional
/// updates a second; a real MongoDB takes far more.)
pub async fn multiprocess_target() -> Option<crate::multiprocess::Target> {
    if !available().await {
        return None;
    }
    let db = db_name();
    Some(crate::multiprocess::Target {
        plan: crate::multiprocess::Plan {
            label: "mongodb".into(),
            url: format!("{}/{db}", url().trim_end_matches('/')),
            namespace: "mp".into(),
            processes: 3,
            jobs: 20,
            secs: 12,
            kill_at: 5,
            lease_secs: 3,
        },
        cleanup: Box::pin(async move { drop_db(&db).await }),
    })
}

#[tokio::test]
async fn mongodb_far_future_dates() {
    if !available().await {
        return;
    }
    let db = db_name();
    nosql::far_future_dates(started(&db, "jobs", "s1").await).await;
    drop_db(&db).await;
}

#[tokio::test]
async fn mongodb_max_durations() {
    if !available().await {
        return;
    }
    let db = db_name();
    let s = store(&db);
    s.start(suite::context("mongodb", "s1", Duration::MAX))
        .await
        .unwrap();
    nosql::max_lease(&s).await;
    let s = store(&db)
        .with_collection("run")
        .with_timeout(Duration::MAX)
        .with_poll_interval(Some(Duration::MAX));
    s.start(suite::context("mongodb", "s1", Duration::MAX))
        .await
        .unwrap();
    nosql::max_options(s, Some(Duration::MAX)).await;
    drop_db(&db).await;
}

/// Documents whose top-level `next_run_time` (the indexed copy) disagrees with the job
/// document, written raw: due but the document is paused, due but the document says later,
/// a document without `version`, and one whose JSON names another id. None is deleted and
/// none makes the loop spin.
#[tokio::test]
async fn mongodb_index_disagreeing_with_document_settles() {
    if !available().await {
        return;
    }
    let db = db_name();
    let ctx = suite::TestContext::new("mongodb", "s1", Duration::from_secs(30));
    let rx = ctx.subscribe(apsched::event::EventKind::STORE_ERROR);
    let s = store(&db);
    s.start(ctx.context()).await.unwrap();
    let coll = client(&url())
        .await
        .database(&db)
        .collection::<Document>("jobs");
    let due = suite::at(0).timestamp_micros();
    let json = |id: &str, next| suite::interval_job(id, 60, next).to_json().unwrap();
    coll.insert_many([
        doc! { "_id": "paused", "job": json("paused", None), "next_run_time": due, "version": 5_i64 },
        doc! { "_id": "later", "job": json("later", Some(suite::at(600))), "next_run_time": due, "version": 5_i64 },
        doc! { "_id": "noversion", "job": json("noversion", Some(suite::at(0))), "next_run_time": due },
        doc! { "_id": "alias", "job": json("other", Some(suite::at(0))), "next_run_time": due, "version": 5_i64 },
    ])
    .await
    .unwrap();
    nosql::index_mismatch_settles(
        s,
        rx,
        suite::at(100),
        &["noversion"],
        Some(suite::at(120)),
        &[
            ("paused", None),
            ("later", Some(suite::at(600))),
            ("noversion", Some(suite::at(120))),
        ],
        &["alias", "later", "paused"],
    )
    .await;
    drop_db(&db).await;
}

/// One claim of a batch fails on the server (a validator refuses the write for job
/// `victim`): the other claims of the batch are still returned and advanced, the failure is
/// reported, and the victim stays due (claimed once the fault is gone).
#[tokio::test]
async fn mongodb_partial_batch_failure_keeps_won_claims() {
    if !available().await {
        return;
    }
    let db = db_name();
    let ctx = suite::TestContext::new("mongodb", "s1", Duration::from_secs(30));
    let mut rx = ctx.subscribe(apsched::event::EventKind::STORE_ERROR);
    let s = store(&db);
    s.start(ctx.context()).await.unwrap();
    for id in ["a", "b", "victim", "z"] {
        s.add_job(suite::interval_job(id, 60, Some(suite::at(0))), false)
            .await
            .unwrap();
    }
    let database = client(&url()).await.database(&db);
    database
        .run_command(doc! {
            "collMod": "jobs",
            "validator": { "$or": [ { "_id": { "$ne": "victim" } }, { "lease_owner": null } ] },
        })
        .await
        .unwrap();
    let due = s.acquire_due_jobs(suite::at(0), 100).await.unwrap();
    let mut ids: Vec<&str> = due.iter().map(|d| d.job.id.as_str()).collect();
    ids.sort();
    assert_eq!(
        ids,
        ["a", "b", "z"],
        "the claims that were written are returned"
    );
    s.release_jobs(&due).await.unwrap();
    let errors = nosql::store_errors(&mut rx);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, "victim");
    for id in ["a", "b", "z"] {
        let j = s.lookup_job(id).await.unwrap().unwrap();
        assert_eq!(j.next_run_time, Some(suite::at(60)), "{id} advanced");
    }
    let victim = s.lookup_job("victim").await.unwrap().unwrap();
    assert_eq!(victim.next_run_time, Some(suite::at(0)), "victim still due");
    // Alone, the failing claim is an error of the pass (the loop backs off).
    assert!(s.acquire_due_jobs(suite::at(0), 100).await.is_err());
    database
        .run_command(doc! { "collMod": "jobs", "validator": {} })
        .await
        .unwrap();
    let due = s.acquire_due_jobs(suite::at(0), 100).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].job.id, "victim");

    // End to end: the won claims run.
    let s = store(&db).with_collection("run");
    s.start(suite::context("mongodb", "setup", Duration::from_secs(30)))
        .await
        .unwrap();
    s.add_job(nosql::task_job("victim", "tick", chrono::Utc::now()), false)
        .await
        .unwrap();
    database
        .run_command(doc! {
            "collMod": "run",
            "validator": { "$or": [ { "_id": { "$ne": "victim" } }, { "lease_owner": null } ] },
        })
        .await
        .unwrap();
    nosql::won_claims_run(store(&db).with_collection("run")).await;
    drop_db(&db).await;
}

/// A URL without a database uses the documented default database `apscheduler` (the
/// port, when left out, is the driver's 27017).
#[tokio::test]
async fn mongodb_url_defaults() {
    if !available().await {
        return;
    }
    let base = url();
    let no_db = base.trim_end_matches('/');
    let coll = format!("jobs_{}", suite::unique_suffix());
    for u in [no_db.to_string(), format!("{no_db}/")] {
        let s = MongoStore::new(&u).unwrap().with_collection(&coll);
        s.start(suite::context("mongodb", "s1", Duration::from_secs(30)))
            .await
            .unwrap();
        s.add_job(suite::interval_job("a", 60, None), false)
            .await
            .unwrap();
        let raw = client(&base)
            .await
            .database("apscheduler")
            .collection::<Document>(&coll);
        assert_eq!(raw.count_documents(doc! {}).await.unwrap(), 1, "{u}");
        raw.drop().await.unwrap();
        client(&base)
            .await
            .database("apscheduler")
            .collection::<Document>(&format!("{coll}_counter"))
            .drop()
            .await
            .unwrap();
    }
    assert!(apsched::store::from_url("mongodb://127.0.0.1").is_ok());
}

/// `add_jobs` without `replace_existing` is one ordered `insert_many`: on an id already
/// stored it fails with that id, the jobs before it stay added (as documented), those
/// after it are not, and the stored job is untouched.
#[tokio::test]
async fn mongodb_bulk_add_stops_at_a_stored_id() {
    if !available().await {
        return;
    }
    let db = db_name();
    let store = started(&db, "jobs", "s1").await;
    store
        .add_job(suite::interval_job("x0700", 60, Some(suite::at(60))), false)
        .await
        .unwrap();
    let batch: Vec<_> = (0..1200)
        .map(|i| suite::interval_job(&format!("x{i:04}"), 60, Some(suite::at(i))))
        .collect();
    let err = store.add_jobs(batch, false).await.unwrap_err();
    assert!(
        matches!(err, apsched::Error::ConflictingId(ref id) if id == "x0700"),
        "{err}"
    );
    let all = store.get_all_jobs().await.unwrap();
    assert_eq!(all.len(), 701);
    assert!(store.lookup_job("x0699").await.unwrap().is_some());
    assert!(store.lookup_job("x0701").await.unwrap().is_none());
    let kept = store.lookup_job("x0700").await.unwrap().unwrap();
    assert_eq!(kept.next_run_time, Some(suite::at(60)));
    // Every added job is its own incarnation.
    let mut versions: Vec<u64> = all.iter().map(|j| j.version).collect();
    versions.sort_unstable();
    versions.dedup();
    assert_eq!(versions.len(), 701);
    drop_db(&db).await;
}

/// The run ledger's contract, with two schedulers sharing each collection.
#[tokio::test]
async fn mongodb_ledger_contract() {
    if !available().await {
        return;
    }
    let db = db_name();
    suite::ledger_contract(
        |namespace, ctx| {
            let db = db.clone();
            async move {
                let s = store(&db).with_collection(namespace);
                s.start(ctx).await.unwrap();
                s
            }
        },
        true,
    )
    .await;
    drop_db(&db).await;
}

/// A store for the ledger's own tests, started as `scheduler` with `ctx`'s events.
async fn ledger_store(db: &str, scheduler: &str) -> (MongoStore, apsched::event::EventReceiver) {
    let ctx = suite::TestContext::new("mongodb", scheduler, Duration::from_secs(30));
    let rx = ctx.subscribe(apsched::event::EventKind::STORE_ERROR);
    let s = store(db);
    s.start(ctx.context()).await.unwrap();
    (s, rx)
}

/// Run documents of the wrong shape, written raw, are skipped by `query_runs` with one
/// report each (not one per query), and kept; `get_run` says what is wrong with one.
#[tokio::test]
async fn mongodb_ledger_unreadable_runs_are_skipped_and_kept() {
    if !available().await {
        return;
    }
    let db = db_name();
    let (s, mut rx) = ledger_store(&db, "s1").await;
    s.add_job(suite::interval_job("a", 60, Some(suite::at(0))), false)
        .await
        .unwrap();
    s.tick_runs(suite::at(0)).await.unwrap();
    let due = s.acquire_due_jobs(suite::at(0), 10).await.unwrap();
    let good = due[0].runs[0].clone();
    let runs = client(&url())
        .await
        .database(&db)
        .collection::<Document>("jobs_runs");
    runs.insert_many([
        doc! { "_id": 42_i64, "job_id": "a", "scheduled": "yesterday", "state": "claimed",
        "owner": "x", "attempt": 1_i64, "submitted_at": suite::at(5).timestamp_micros() },
        doc! { "_id": 43_i64, "job_id": "a", "scheduled": suite::at(5).timestamp_micros(),
        "state": "finished", "owner": "x", "attempt": 1_i64,
        "submitted_at": suite::at(5).timestamp_micros() },
    ])
    .await
    .unwrap();
    for _ in 0..2 {
        let got = s
            .query_runs(&apsched::ledger::RunFilter::new().job("a"))
            .await
            .unwrap();
        assert_eq!(got, vec![good.clone()]);
    }
    let errors = nosql::store_errors(&mut rx);
    assert_eq!(errors.len(), 2, "one report per bad document: {errors:?}");
    assert!(errors
        .iter()
        .all(|(job, m)| job == "a" && m.contains("cannot be read")));
    assert!(
        errors.iter().any(|(_, m)| m.contains("'scheduled'")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|(_, m)| m.contains("not a run state")),
        "{errors:?}"
    );
    assert_eq!(
        runs.count_documents(doc! {}).await.unwrap(),
        3,
        "nothing deleted"
    );
    let err = s
        .get_run(apsched::RunId::from_raw(42))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot be read"), "{err}");
    // Retention never deletes them either.
    s.tick_runs(suite::at(100 * 86_400)).await.unwrap();
    assert_eq!(
        runs.count_documents(doc! { "_id": { "$in": [42_i64, 43_i64] } })
            .await
            .unwrap(),
        2
    );
    drop_db(&db).await;
}

/// The claim and its records are one step: when copying the records to the runs
/// collection fails (a validator refuses them), the claim stands with its records kept in
/// the job document, and the next reader writes them; when the claim's own write fails,
/// there is no record and the job does not advance. A job removed by its claim (a date
/// trigger) is a tombstone holding its records until they are written.
#[tokio::test]
async fn mongodb_ledger_claim_and_records_are_one_step() {
    if !available().await {
        return;
    }
    let db = db_name();
    let (s, mut rx) = ledger_store(&db, "s1").await;
    let database = client(&url()).await.database(&db);
    let jobs = database.collection::<Document>("jobs");
    s.add_job(suite::interval_job("a", 60, Some(suite::at(0))), false)
        .await
        .unwrap();
    s.add_job(suite::date_job("once", suite::at(0)), false)
        .await
        .unwrap();
    s.tick_runs(suite::at(0)).await.unwrap();
    database
        .run_command(doc! { "collMod": "jobs_runs", "validator": { "job_id": "nobody" } })
        .await
        .unwrap();
    let due = s.acquire_due_jobs(suite::at(0), 10).await.unwrap();
    assert_eq!(due.len(), 2, "the claims stand");
    let mut records: Vec<_> = due.iter().flat_map(|d| d.runs.clone()).collect();
    records.sort_by(|x, y| x.job_id.cmp(&y.job_id));
    assert!(
        !nosql::store_errors(&mut rx).is_empty(),
        "the failed copy is reported"
    );
    let a = jobs.find_one(doc! { "_id": "a" }).await.unwrap().unwrap();
    assert_eq!(a.get_array("pending").unwrap().len(), 1, "{a}");
    let once = jobs
        .find_one(doc! { "_id": "once" })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(once.get_bool("removed"), Ok(true), "{once}");
    // Removing the job would lose the records it holds: refused while they cannot be
    // written.
    assert!(s.remove_job("a").await.is_err());
    assert!(s.lookup_job("a").await.unwrap().is_some());
    // A tombstone is no job.
    let all: Vec<String> = s
        .get_all_jobs()
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(all, ["a"]);
    // The fault goes; the next writer or reader writes the records: adding a job where the
    // tombstone is, then a query.
    database
        .run_command(doc! { "collMod": "jobs_runs", "validator": {} })
        .await
        .unwrap();
    s.add_job(suite::date_job("once", suite::at(120)), false)
        .await
        .unwrap();
    let once = jobs
        .find_one(doc! { "_id": "once" })
        .await
        .unwrap()
        .unwrap();
    assert!(
        once.get("removed").is_none(),
        "the new job, not the tombstone: {once}"
    );
    let mut got = s
        .query_runs(&apsched::ledger::RunFilter::new())
        .await
        .unwrap();
    got.sort_by(|x, y| x.job_id.cmp(&y.job_id));
    assert_eq!(got, records);
    let a = jobs.find_one(doc! { "_id": "a" }).await.unwrap().unwrap();
    assert!(a.get_array("pending").unwrap().is_empty(), "{a}");
    // The records are the claim's own: the runs start.
    let ids: Vec<_> = records.iter().map(|r| r.run_id).collect();
    let mut started = s.start_runs(&ids, suite::at(1)).await.unwrap();
    started.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(started, want);

    // The claim's own write fails: no record, no advance.
    database
        .run_command(doc! {
            "collMod": "jobs",
            "validator": { "$or": [ { "_id": { "$ne": "a" } }, { "lease_owner": null } ] },
        })
        .await
        .unwrap();
    assert!(s.acquire_due_jobs(suite::at(60), 10).await.is_err());
    assert_eq!(
        s.lookup_job("a").await.unwrap().unwrap().next_run_time,
        Some(suite::at(60))
    );
    let runs = s
        .query_runs(&apsched::ledger::RunFilter::new().job("a"))
        .await
        .unwrap();
    assert_eq!(runs.len(), 1, "only the first claim's record: {runs:?}");
    drop_db(&db).await;
}

/// A crash between a claim and the copy of its records, simulated by writing the job
/// document the claim leaves (an op in `pending`) raw: the next pass of any scheduler
/// writes the record, and takes it over since its owner is gone.
#[tokio::test]
async fn mongodb_ledger_records_left_by_a_crash_are_recovered() {
    if !available().await {
        return;
    }
    let db = db_name();
    let (s, _rx) = ledger_store(&db, "s2").await;
    let jobs = client(&url())
        .await
        .database(&db)
        .collection::<Document>("jobs");
    s.add_job(suite::interval_job("a", 60, Some(suite::at(60))), false)
        .await
        .unwrap();
    let t = suite::at(0).timestamp_micros();
    let run = doc! {
        "_id": 777_i64, "job_id": "a", "scheduled": t, "owner": "crashed", "manual": false,
        "attempt": 1_i64, "state": "claimed", "queued": false, "cancel_requested": false,
        "submitted_at": t, "started_at": null, "finished_at": null, "error": null, "output": null,
    };
    jobs.update_one(
        doc! { "_id": "a" },
        doc! { "$push": { "pending": { "_id": 1_i64, "runs": [run], "cancel": [], "promote": [], "owner": "crashed" } } },
    )
    .await
    .unwrap();
    let tick = s.tick_runs(suite::at(1)).await.unwrap();
    assert_eq!(
        tick.dispatch
            .iter()
            .map(|r| r.run_id.get())
            .collect::<Vec<_>>(),
        [777],
        "{tick:?}"
    );
    assert_eq!(tick.dispatch[0].owner, "s2");
    let a = jobs.find_one(doc! { "_id": "a" }).await.unwrap().unwrap();
    assert!(a.get_array("pending").unwrap().is_empty(), "{a}");
    drop_db(&db).await;
}

/// Two schedulers taking over a dead one's runs at once: each run is taken by exactly one.
#[tokio::test]
async fn mongodb_ledger_takeover_races_take_each_run_once() {
    if !available().await {
        return;
    }
    let db = db_name();
    let (s1, _) = ledger_store(&db, "s1").await;
    let (s2, _) = ledger_store(&db, "s2").await;
    let (s3, _) = ledger_store(&db, "s3").await;
    let mut jobs = Vec::new();
    for i in 0..20 {
        let mut j = suite::interval_job(&format!("j{i:02}"), 60, Some(suite::at(0)));
        j.max_instances = 5;
        jobs.push(j);
    }
    s1.add_jobs(jobs, false).await.unwrap();
    s1.tick_runs(suite::at(0)).await.unwrap();
    let due = s1.acquire_due_jobs(suite::at(0), 100).await.unwrap();
    let runs: Vec<_> = due.iter().flat_map(|d| d.runs.clone()).collect();
    assert_eq!(runs.len(), 20);
    let started: Vec<_> = runs.iter().step_by(2).map(|r| r.run_id).collect();
    s1.start_runs(&started, suite::at(1)).await.unwrap();
    let (t2, t3) = tokio::join!(s2.tick_runs(suite::at(31)), s3.tick_runs(suite::at(31)));
    let (t2, t3) = (t2.unwrap(), t3.unwrap());
    let mut dispatched: Vec<_> = t2
        .dispatch
        .iter()
        .chain(&t3.dispatch)
        .map(|r| r.run_id)
        .collect();
    let mut abandoned: Vec<_> = t2
        .abandoned
        .iter()
        .chain(&t3.abandoned)
        .map(|r| r.run_id)
        .collect();
    dispatched.sort();
    abandoned.sort();
    let mut want_started = started.clone();
    want_started.sort();
    let mut want_claimed: Vec<_> = runs.iter().skip(1).step_by(2).map(|r| r.run_id).collect();
    want_claimed.sort();
    assert_eq!(abandoned, want_started);
    assert_eq!(dispatched, want_claimed);
    drop_db(&db).await;
}

/// Retention across schedulers: runs finished by one scheduler are pruned by another's
/// pass (its sweep over the jobs), down to the newest `per_job` finished ones.
#[tokio::test]
async fn mongodb_ledger_prunes_runs_finished_elsewhere() {
    if !available().await {
        return;
    }
    let db = db_name();
    let (s1, _) = ledger_store(&db, "s1").await;
    let ctx = suite::TestContext::new("mongodb", "s2", Duration::from_secs(30))
        .with_ledger(true, apsched::ledger::RunRetention::default().per_job(2));
    let s2 = store(&db);
    s2.start(ctx.context()).await.unwrap();
    let mut j = suite::interval_job("a", 10, Some(suite::at(100_000)));
    j.max_instances = 100;
    j.overlap = apsched::Overlap::AllowAll;
    s1.add_job(j, false).await.unwrap();
    let slots: Vec<_> = (0..6).map(|i| suite::at(i * 10)).collect();
    let runs = s1
        .add_manual_runs("a", &slots, suite::at(60))
        .await
        .unwrap();
    let outcomes: Vec<_> = runs
        .iter()
        .map(|r| {
            apsched::ledger::RunOutcome::new(
                r.run_id,
                "a",
                apsched::ledger::RunState::Executed,
                suite::at(61),
            )
        })
        .collect();
    s1.finish_runs(&outcomes).await.unwrap();
    s2.tick_runs(suite::at(62)).await.unwrap();
    let kept = s2
        .query_runs(&apsched::ledger::RunFilter::new().job("a"))
        .await
        .unwrap();
    let kept: Vec<_> = kept.iter().map(|r| r.scheduled).collect();
    assert_eq!(kept, [suite::at(50), suite::at(40)]);
    drop_db(&db).await;
}

/// A claim that won on the server while its reply was lost (simulated: a claimed run of
/// this scheduler written raw) is dispatched by the next pass; the runs a claim returned
/// are not dispatched again.
#[tokio::test]
async fn mongodb_ledger_claims_whose_reply_was_lost_are_dispatched() {
    if !available().await {
        return;
    }
    let db = db_name();
    let (s, _rx) = ledger_store(&db, "s1").await;
    s.add_job(suite::interval_job("a", 60, Some(suite::at(0))), false)
        .await
        .unwrap();
    s.tick_runs(suite::at(0)).await.unwrap();
    let due = s.acquire_due_jobs(suite::at(0), 10).await.unwrap();
    assert_eq!(due[0].runs.len(), 1);
    assert!(s.tick_runs(suite::at(1)).await.unwrap().dispatch.is_empty());
    let t = suite::at(0).timestamp_micros();
    client(&url())
        .await
        .database(&db)
        .collection::<Document>("jobs_runs")
        .insert_one(doc! {
            "_id": 888_i64, "job_id": "b", "scheduled": t, "owner": "s1", "manual": false,
            "attempt": 1_i64, "state": "claimed", "queued": false, "cancel_requested": false,
            "submitted_at": t,
        })
        .await
        .unwrap();
    let tick = s.tick_runs(suite::at(2)).await.unwrap();
    assert_eq!(
        tick.dispatch
            .iter()
            .map(|r| r.run_id.get())
            .collect::<Vec<_>>(),
        [888]
    );
    // Once.
    assert!(s.tick_runs(suite::at(3)).await.unwrap().dispatch.is_empty());
    drop_db(&db).await;
}

/// A retry ([`JobStore::add_runs`]) goes through its job document: `ledger_seq` moves (so a
/// claim that read the job before fails and reads again) and, while its copy to the runs
/// collection fails, the claim counts it from the document. Two schedulers writing the
/// same slot's retry at once store it once; a repeat writes nothing; the ledger pass does
/// not take it for a claim whose reply was lost (the scheduler waits for it itself).
#[tokio::test]
async fn mongodb_ledger_retries_go_through_the_job_document() {
    if !available().await {
        return;
    }
    let db = db_name();
    let (s1, mut rx) = ledger_store(&db, "s1").await;
    let (s2, _) = ledger_store(&db, "s2").await;
    let database = client(&url()).await.database(&db);
    let jobs = database.collection::<Document>("jobs");
    let seq = |d: &Document| d.get_i64("ledger_seq").unwrap_or(0);
    let mut j = suite::interval_job("a", 60, Some(suite::at(0)));
    j.max_instances = 1;
    j.overlap = apsched::Overlap::Skip;
    s1.add_job(j, false).await.unwrap();
    s1.tick_runs(suite::at(0)).await.unwrap();
    let first = s1.acquire_due_jobs(suite::at(0), 10).await.unwrap()[0].runs[0].clone();
    s1.start_runs(&[first.run_id], suite::at(1)).await.unwrap();
    let retry = first.retry("s1", suite::at(2), suite::at(30));
    let mut copy = first.retry("s2", suite::at(2), suite::at(31));
    copy.attempt = retry.attempt;
    let (x, y) = tokio::join!(
        s1.add_runs(std::slice::from_ref(&retry)),
        s2.add_runs(std::slice::from_ref(&copy))
    );
    x.unwrap();
    y.unwrap();
    let runs = s1
        .query_runs(&apsched::ledger::RunFilter::new().job("a"))
        .await
        .unwrap();
    assert_eq!(runs.len(), 2, "one retry for the slot: {runs:?}");
    let a = jobs.find_one(doc! { "_id": "a" }).await.unwrap().unwrap();
    assert_eq!(seq(&a), 1, "one write, through the job document: {a}");
    assert!(a.get_array("pending").unwrap().is_empty(), "{a}");
    s1.add_runs(&[retry.clone(), copy.clone()]).await.unwrap();
    let a = jobs.find_one(doc! { "_id": "a" }).await.unwrap().unwrap();
    assert_eq!(seq(&a), 1, "a repeat writes nothing: {a}");
    let stored = runs.iter().find(|r| r.attempt == 2).unwrap();
    let owner = if stored.owner == "s1" { &s1 } else { &s2 };
    let tick = owner.tick_runs(suite::at(3)).await.unwrap();
    assert!(tick.dispatch.is_empty(), "{tick:?}");
    let raw = database
        .collection::<Document>("jobs_runs")
        .find_one(doc! { "attempt": 2_i64 })
        .await
        .unwrap()
        .unwrap();
    assert!(
        [suite::at(30), suite::at(31)]
            .map(|t| t.timestamp_micros())
            .contains(&raw.get_i64("retry_at").unwrap()),
        "retry_at in µs: {raw}"
    );

    // A retry whose copy fails stays in the job document, where claims count it.
    s1.finish_runs(&[apsched::ledger::RunOutcome::new(
        first.run_id,
        "a",
        apsched::ledger::RunState::Error,
        suite::at(2),
    )])
    .await
    .unwrap();
    let later = stored.retry("s1", suite::at(3), suite::at(40));
    // The stored retry fails too: only the new one can hold the instance.
    s1.finish_runs(&[apsched::ledger::RunOutcome::new(
        stored.run_id,
        "a",
        apsched::ledger::RunState::Error,
        suite::at(3),
    )])
    .await
    .unwrap();
    database
        .run_command(doc! { "collMod": "jobs_runs", "validator": { "job_id": "nobody" } })
        .await
        .unwrap();
    s1.add_runs(std::slice::from_ref(&later)).await.unwrap();
    assert!(
        !nosql::store_errors(&mut rx).is_empty(),
        "the failed copy is reported"
    );
    let a = jobs.find_one(doc! { "_id": "a" }).await.unwrap().unwrap();
    assert_eq!(a.get_array("pending").unwrap().len(), 1, "{a}");
    let due = s2.acquire_due_jobs(suite::at(60), 10).await.unwrap();
    assert_eq!(
        due[0].runs[0].state,
        apsched::ledger::RunState::Skipped,
        "the retry in the job document holds the instance"
    );
    database
        .run_command(doc! { "collMod": "jobs_runs", "validator": {} })
        .await
        .unwrap();
    assert_eq!(s1.get_run(later.run_id).await.unwrap(), Some(later));
    drop_db(&db).await;
}
