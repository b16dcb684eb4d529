//! The Redis store against the contract, plus its own tests. Needs Redis on
//! `APSCHED_REDIS_URL` (default `redis://127.0.0.1:6379/`); see `scripts/services.sh`.

use std::time::Duration;

use apsched::store::{JobStore, RedisStore};

use crate::{nosql, suite};

pub(crate) fn url() -> String {
    std::env::var("APSCHED_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

pub(crate) async fn available() -> bool {
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
pub(crate) async fn cleanup(prefix: &str) {
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

/// The suite's corrupt-record hook: a document that is not JSON, due at `suite::t0()`.
fn write_corrupt() -> suite::WriteCorrupt<RedisStore> {
    Box::new(|store: &RedisStore, id: &str| {
        let p = store.prefix().to_string();
        let id = id.to_string();
        Box::pin(async move {
            let client = ::redis::Client::open(url()).unwrap();
            let mut c = client.get_multiplexed_async_connection().await.unwrap();
            ::redis::pipe()
                .hset(format!("{p}:jobs"), &id, "{not json")
                .zadd(
                    format!("{p}:run_times"),
                    &id,
                    suite::t0().timestamp_micros(),
                )
                .query_async::<()>(&mut c)
                .await
                .unwrap();
        })
    })
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
        Some(write_corrupt()),
    )
    .await;
    let prefix = format!(
        "{base}:{}",
        n.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    suite::bulk_add_all_or_nothing(started(&prefix, "s1").await).await;
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
    let ctx = suite::TestContext::new("redis", "s1", Duration::from_secs(30));
    let rx = ctx.subscribe(apsched::event::EventKind::STORE_ERROR);
    let store = RedisStore::new(&url()).unwrap().with_prefix(&prefix);
    store.start(ctx.context()).await.unwrap();
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

#[tokio::test]
async fn redis_far_future_dates() {
    if !available().await {
        return;
    }
    let prefix = format!("apsched-test:{}", suite::unique_suffix());
    nosql::far_future_dates(started(&prefix, "s1").await).await;
    cleanup(&prefix).await;
}

#[tokio::test]
async fn redis_max_durations() {
    if !available().await {
        return;
    }
    let prefix = format!("apsched-test:{}", suite::unique_suffix());
    let store = RedisStore::new(&url()).unwrap().with_prefix(&prefix);
    store
        .start(suite::context("redis", "s1", Duration::MAX))
        .await
        .unwrap();
    nosql::max_lease(&store).await;
    cleanup(&prefix).await;
    let prefix = format!("apsched-test:{}", suite::unique_suffix());
    let store = RedisStore::new(&url())
        .unwrap()
        .with_prefix(&prefix)
        .with_poll_interval(Some(Duration::MAX))
        .with_response_timeout(Duration::MAX);
    store
        .start(suite::context("redis", "s1", Duration::MAX))
        .await
        .unwrap();
    nosql::max_options(store, Some(Duration::MAX)).await;
    cleanup(&prefix).await;
}

/// Index entries (sorted-set members) that disagree with their jobs, written raw: a due
/// entry whose document is paused, one whose document is due later, one with no job at
/// all, and a document whose JSON names another id. None is deleted, none makes the loop
/// spin: the index is repaired to what the document says (and reported), the orphan entry
/// is dropped (and reported), the misnamed record is a corrupt record (reported, kept).
#[tokio::test]
async fn redis_index_disagreeing_with_document_settles() {
    if !available().await {
        return;
    }
    let prefix = format!("apsched-test:{}", suite::unique_suffix());
    let ctx = suite::TestContext::new("redis", "s1", Duration::from_secs(30));
    let rx = ctx.subscribe(apsched::event::EventKind::STORE_ERROR);
    let store = RedisStore::new(&url()).unwrap().with_prefix(&prefix);
    store.start(ctx.context()).await.unwrap();
    for (id, next) in [("paused", None), ("later", Some(suite::at(600)))] {
        store
            .add_job(suite::interval_job(id, 60, next), false)
            .await
            .unwrap();
    }
    let client = ::redis::Client::open(url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let due = suite::at(0).timestamp_micros();
    let alias = suite::interval_job("other", 60, Some(suite::at(0)))
        .to_json()
        .unwrap();
    let z = format!("{prefix}:run_times");
    ::redis::pipe()
        .zadd(&z, "paused", due)
        .zadd(&z, "later", due)
        .zadd(&z, "ghost", due)
        .hset(format!("{prefix}:jobs"), "alias", alias)
        .zadd(&z, "alias", due)
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    nosql::index_mismatch_settles(
        store,
        rx,
        suite::at(100),
        &[],
        Some(suite::at(600)),
        &[("paused", None), ("later", Some(suite::at(600)))],
        &["alias", "ghost", "later", "paused"],
    )
    .await;
    let (ghost, paused): (Option<f64>, Option<f64>) = ::redis::pipe()
        .zscore(&z, "ghost")
        .zscore(&z, "paused")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!((ghost, paused), (None, None), "stale entries gone");
    cleanup(&prefix).await;
}

/// A job due in year 9999 on Redis 7.0, whose score Redis prints as `2.534...e+17`, written
/// the way the old store wrote it (exact µs score): the store still reads its index.
#[tokio::test]
async fn redis_exponent_scores_are_read() {
    if !available().await {
        return;
    }
    let prefix = format!("apsched-test:{}", suite::unique_suffix());
    let store = started(&prefix, "s1").await;
    let far = chrono::DateTime::parse_from_rfc3339("9999-06-01T00:00:00Z")
        .unwrap()
        .to_utc();
    store
        .add_job(suite::date_job("far", far), false)
        .await
        .unwrap();
    let client = ::redis::Client::open(url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let raw: Vec<String> = ::redis::cmd("ZRANGE")
        .arg(format!("{prefix}:run_times"))
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(raw[0], "far");
    assert_eq!(
        store.next_run_time().await.unwrap(),
        Some(far),
        "score {}",
        raw[1]
    );
    cleanup(&prefix).await;
}

/// Omitted URL parts get redis-cli's / redis-py's defaults: host localhost, port 6379,
/// database 0.
#[tokio::test]
async fn redis_url_defaults() {
    if !available().await || url() != "redis://127.0.0.1:6379/" {
        return;
    }
    for u in [
        "redis://",
        "redis://localhost",
        "redis://127.0.0.1",
        "redis:///0",
    ] {
        let prefix = format!("apsched-test:{}", suite::unique_suffix());
        let store = apsched::store::from_url(u).unwrap_or_else(|e| panic!("{u}: {e}"));
        store
            .start(suite::context("redis", "s1", Duration::from_secs(30)))
            .await
            .unwrap_or_else(|e| panic!("{u}: {e}"));
        // from_url gives the default prefix; use a store of our own for the write.
        drop(store);
        let store = RedisStore::new(u).unwrap().with_prefix(&prefix);
        store
            .start(suite::context("redis", "s1", Duration::from_secs(30)))
            .await
            .unwrap_or_else(|e| panic!("{u}: {e}"));
        store
            .add_job(suite::interval_job("a", 60, Some(suite::at(0))), false)
            .await
            .unwrap();
        let client = ::redis::Client::open(url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let n: usize = ::redis::cmd("HLEN")
            .arg(format!("{prefix}:jobs"))
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(n, 1, "{u} reaches 127.0.0.1:6379 database 0");
        store.shutdown().await.unwrap();
        cleanup(&prefix).await;
    }
}

/// The run ledger's contract, with two schedulers sharing each prefix.
#[tokio::test]
async fn redis_ledger_contract() {
    if !available().await {
        return;
    }
    let base = format!("apsched-test:{}", suite::unique_suffix());
    suite::ledger_contract(
        |ns, ctx| {
            let prefix = format!("{base}:{ns}");
            async move {
                let store = RedisStore::new(&url()).unwrap().with_prefix(prefix);
                store.start(ctx).await.unwrap();
                store
            }
        },
        true,
    )
    .await;
    cleanup(&base).await;
}
