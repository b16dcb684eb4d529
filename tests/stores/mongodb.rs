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
        None,
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
    let ctx = suite::context("mongodb", "s1", Duration::from_secs(30));
    let rx = ctx.events.subscribe(apsched::event::EventKind::STORE_ERROR);
    let s = store(&db);
    s.start(ctx).await.unwrap();
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
