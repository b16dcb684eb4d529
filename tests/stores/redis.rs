//! The Redis store against the contract, plus its own tests. Needs Redis on
//! `APSCHED_REDIS_URL` (default `redis://127.0.0.1:6379/`); see `scripts/services.sh`.

use std::time::Duration;

use apsched::store::{JobStore, RedisStore};

use crate::{nosql, suite};

fn url() -> String {
    std::env::var("APSCHED_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

async fn available() -> bool {
    let check = async {
        let client = ::redis::Client::open(url()).map_err(|e| e.to_string())?;
        let mut c = tokio::time::timeout(
            Duration::from_secs(3),
            client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| "connection timed out".to_string())?
        .map_err(|e| e.to_string())?;
        ::redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    };
    suite::service_available("Redis", check.await)
}

/// Deletes every key under `prefix:`.
async fn cleanup(prefix: &str) {
    let client = ::redis::Client::open(url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut c)
        .await
        .unwrap();
    if !keys.is_empty() {
        ::redis::cmd("DEL")
            .arg(&keys)
            .query_async::<()>(&mut c)
            .await
            .unwrap();
    }
}

async fn started(prefix: &str, id: &str) -> RedisStore {
    let store = RedisStore::new(&url()).unwrap().with_prefix(prefix);
    store
        .start(suite::context("redis", id, Duration::from_secs(30)))
        .await
        .unwrap();
    store
}

#[tokio::test]
async fn redis_contract() {
    if !available().await {
        return;
    }
    let base = format!("apsched-test:{}", suite::unique_suffix());
    let n = std::sync::atomic::AtomicUsize::new(0);
    suite::contract(
        || {
            let prefix = format!(
                "{base}:{}",
                n.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            );
            async move { started(&prefix, "s1").await }
        },
        None,
    )
    .await;
    for i in 0..n.load(std::sync::atomic::Ordering::SeqCst) {
        cleanup(&format!("{base}:{i}")).await;
    }
}

#[tokio::test]
async fn redis_shared_claims() {
    if !available().await {
        return;
    }
    let prefix = format!("apsched-test:{}", suite::unique_suffix());
    suite::shared_claims(started(&prefix, "a").await, started(&prefix, "b").await).await;
    cleanup(&prefix).await;
}

#[tokio::test]
async fn redis_closures_refused() {
    if !available().await {
        return;
    }
    let prefix = format!("apsched-test:{}", suite::unique_suffix());
    nosql::closures_refused(started(&prefix, "s1").await).await;
    cleanup(&prefix).await;
}

#[tokio::test]
async fn redis_corrupt_records_are_reported_once_and_kept() {
    if !available().await {
        return;
    }
    let prefix = format!("apsched-test:{}", suite::unique_suffix());
    let ctx = suite::context("redis", "s1", Duration::from_secs(30));
    let rx = ctx.events.subscribe(apsched::event::EventKind::STORE_ERROR);
    let store = RedisStore::new(&url()).unwrap().with_prefix(&prefix);
    store.start(ctx).await.unwrap();
    store
        .add_job(nosql::task_job("good", "echo", suite::at(0)), false)
        .await
        .unwrap();

    let client = ::redis::Client::open(url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let unknown = nosql::task_job("unknown_task", "mystery", suite::at(0))
        .to_json()
        .unwrap();
    let score = suite::at(0).timestamp_micros();
    ::redis::pipe()
        .hset(format!("{prefix}:jobs"), "bad_json", "{not json")
        .hset(format!("{prefix}:jobs"), "unknown_task", unknown)
        .zadd(format!("{prefix}:run_times"), "bad_json", score)
        .zadd(format!("{prefix}:run_times"), "unknown_task", score)
        .query_async::<()>(&mut c)
        .await
        .unwrap();

    let raw = |id: &'static str| {
        let mut c = c.clone();
        let prefix = prefix.clone();
        async move {
            let (doc, score): (Option<String>, Option<i64>) = ::redis::pipe()
                .hget(format!("{prefix}:jobs"), id)
                .zscore(format!("{prefix}:run_times"), id)
                .query_async(&mut c)
                .await
                .unwrap();
            doc.map(|d| format!("{d} @ {score:?}"))
        }
    };
    nosql::corrupt_records(store, rx, raw).await;
    cleanup(&prefix).await;
}

#[tokio::test]
async fn redis_restart_persistence() {
    if !available().await {
        return;
    }
    let prefix = format!("apsched-test:{}", suite::unique_suffix());
    nosql::restart_persistence(|| {
        let p = prefix.clone();
        async move { RedisStore::new(&url()).unwrap().with_prefix(p) }
    })
    .await;
    cleanup(&prefix).await;
}

/// A private redis-server (append-only file, so it keeps its data across a kill) on a free
/// port, killed with SIGKILL and started again under a running scheduler.
#[tokio::test]
async fn redis_server_restart_mid_run() {
    if !available().await {
        return;
    }
    let server = nosql::PrivateServer::start(
        "redis",
        |dir, port| {
            let mut c = std::process::Command::new("redis-server");
            c.args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(dir);
            c
        },
        None,
    )
    .await;
    let store = RedisStore::new(&format!("redis://127.0.0.1:{}/", server.port()))
        .unwrap()
        .with_prefix("restart")
        .with_response_timeout(Duration::from_secs(1));
    nosql::server_restart(store, &server).await;
}

/// The multi-process test's target (see `multiprocess`): 3 processes on one prefix, 200
/// jobs every second for 12 s, the busiest killed at 5 s.
pub async fn multiprocess_target() -> Option<crate::multiprocess::Target> {
    if !available().await {
        return None;
    }
    let prefix = format!("apsched-test:{}", suite::unique_suffix());
    Some(crate::multiprocess::Target {
        plan: crate::multiprocess::Plan {
            label: "redis".into(),
            url: url(),
            namespace: prefix.clone(),
            processes: 3,
            jobs: 200,
            secs: 12,
            kill_at: 5,
            lease_secs: 3,
        },
        cleanup: Box::pin(async move { cleanup(&prefix).await }),
    })
}
