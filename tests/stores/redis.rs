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

/// A ledger test job: due at `at(0)`, every hour, one instance, overlap `Skip`.
fn ledger_job(id: &str) -> apsched::job::JobRecord {
    let mut j = suite::interval_job(id, 3600, Some(suite::at(0)));
    j.max_instances = 1;
    j.overlap = apsched::Overlap::Skip;
    j
}

/// The store-error events received so far, as (job id, message).
fn store_errors(rx: &mut apsched::event::EventReceiver) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        if let apsched::event::Event::StoreError {
            job_id: Some(id),
            message,
            ..
        } = ev
        {
            out.push((id, message));
        }
    }
    out
}

async fn raw_conn() -> ::redis::aio::MultiplexedConnection {
    let client = ::redis::Client::open(url()).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

/// A run hash of the wrong shape (written raw) is skipped by `query_runs` and `get_run`,
/// reported once per content, and never changed or deleted.
#[tokio::test]
async fn redis_ledger_unreadable_runs_are_skipped_and_reported() {
    use apsched::ledger::{RunFilter, RunState};
    use apsched::store::JobStore;

    if !available().await {
        return;
    }
    let prefix = format!("apsched-test:{}", suite::unique_suffix());
    let ctx = suite::TestContext::new("redis", "s1", Duration::from_secs(30));
    let mut rx = ctx.subscribe(apsched::event::EventKind::STORE_ERROR);
    let store = RedisStore::new(&url()).unwrap().with_prefix(&prefix);
    store.start(ctx.context()).await.unwrap();
    store.add_job(ledger_job("a"), false).await.unwrap();
    store.tick_runs(suite::at(0)).await.unwrap();
    let good = store.acquire_due_jobs(suite::at(0), 10).await.unwrap()[0].runs[0].clone();

    let mut c = raw_conn().await;
    let bad = "0000000000000000042";
    let key = format!("{prefix}:run:{bad}");
    let score = suite::at(5).timestamp_micros();
    ::redis::pipe()
        .hset_multiple(
            &key,
            &[("job_id", "a"), ("state", "bogus"), ("owner", "s1")],
        )
        .zadd(format!("{prefix}:runs:job:a"), bad, score)
        .zadd(format!("{prefix}:runs:all"), bad, score)
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    let raw = |c: &mut ::redis::aio::MultiplexedConnection| {
        let key = key.clone();
        let mut c = c.clone();
        async move {
            let mut f: Vec<(String, String)> = ::redis::cmd("HGETALL")
                .arg(&key)
                .query_async(&mut c)
                .await
                .unwrap();
            f.sort();
            f
        }
    };
    // A run key that is not a hash at all.
    let not_hash = "0000000000000000043";
    ::redis::pipe()
        .set(format!("{prefix}:run:{not_hash}"), "junk")
        .zadd(format!("{prefix}:runs:job:a"), not_hash, score)
        .zadd(format!("{prefix}:runs:all"), not_hash, score)
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    let before = raw(&mut c).await;
    for _ in 0..3 {
        let runs = store.query_runs(&RunFilter::new().job("a")).await.unwrap();
        assert_eq!(runs, vec![good.clone()], "only the readable run");
        let all = store
            .query_runs(&RunFilter::new().state(RunState::Claimed))
            .await
            .unwrap();
        assert_eq!(all, vec![good.clone()]);
        assert_eq!(
            store
                .get_run(apsched::ledger::RunId::from_raw(42))
                .await
                .unwrap(),
            None
        );
        // Retention passes leave it alone too.
        store.tick_runs(suite::at(1)).await.unwrap();
    }
    let reported = store_errors(&mut rx);
    assert_eq!(reported.len(), 2, "each reported once: {reported:?}");
    let bad_report = reported.iter().find(|(_, m)| m.contains(&key)).unwrap();
    assert_eq!(bad_report.0, "a");
    assert!(
        bad_report.1.contains("'attempt' is missing"),
        "{reported:?}"
    );
    assert!(
        reported
            .iter()
            .any(|(_, m)| m.contains(not_hash) && m.contains("not a hash")),
        "{reported:?}"
    );
    assert_eq!(raw(&mut c).await, before, "kept untouched");
    // A new content is reported again.
    ::redis::cmd("HSET")
        .arg(&key)
        .arg("state")
        .arg("worse")
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    store.query_runs(&RunFilter::new()).await.unwrap();
    assert_eq!(store_errors(&mut rx).len(), 1);
    cleanup(&prefix).await;
}

/// The claim and its run records are one step: a job whose ledger key cannot be written
/// (an operator left a string where its runs index is) is not claimed at all (its next
/// run time does not move, no record is made), is reported once, does not make the loop
/// spin, and is claimed with its records once the key is fixed; the other jobs of the
/// batch are claimed meanwhile.
#[tokio::test]
async fn redis_ledger_claim_and_records_are_one_step() {
    use apsched::ledger::RunFilter;
    use apsched::store::JobStore;

    if !available().await {
        return;
    }
    let prefix = format!("apsched-test:{}", suite::unique_suffix());
    let ctx = suite::TestContext::new("redis", "s1", Duration::from_secs(30));
    let mut rx = ctx.subscribe(apsched::event::EventKind::STORE_ERROR);
    let store = RedisStore::new(&url()).unwrap().with_prefix(&prefix);
    store.start(ctx.context()).await.unwrap();
    for id in ["a", "b", "c"] {
        store.add_job(ledger_job(id), false).await.unwrap();
    }
    let mut c = raw_conn().await;
    let broken = format!("{prefix}:runs:job:a");
    // c's active runs (read before the claim) are not a hash either.
    let broken_c = format!("{prefix}:runs:active:c");
    ::redis::pipe()
        .set(&broken, "not a sorted set")
        .set(&broken_c, "not a hash")
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    let version = store.lookup_job("a").await.unwrap().unwrap().version;

    let due = store.acquire_due_jobs(suite::at(0), 10).await.unwrap();
    assert_eq!(
        due.iter().map(|d| d.job.id.as_str()).collect::<Vec<_>>(),
        ["b"]
    );
    assert_eq!(due[0].runs.len(), 1);
    store.release_jobs(&due).await.unwrap();
    let a = store.lookup_job("a").await.unwrap().unwrap();
    assert_eq!(
        (a.next_run_time, a.version),
        (Some(suite::at(0)), version),
        "the claim of a was not written"
    );
    let members: Vec<String> = ::redis::cmd("ZRANGE")
        .arg(format!("{prefix}:runs:all"))
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(members.len(), 1, "only b's record: {members:?}");
    // Not retried at once (the loop would spin on it): due again a lease later.
    assert!(store
        .acquire_due_jobs(suite::at(1), 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store.next_run_time().await.unwrap(),
        Some(suite::at(30)),
        "a is tried again when the lease has passed"
    );
    let mut reported = store_errors(&mut rx);
    reported.sort();
    assert_eq!(reported.len(), 2, "{reported:?}");
    assert_eq!((reported[0].0.as_str(), reported[1].0.as_str()), ("a", "c"));
    assert!(reported[0].1.contains(&broken), "{reported:?}");
    assert!(reported[1].1.contains(&broken_c), "{reported:?}");

    ::redis::cmd("DEL")
        .arg(&broken)
        .arg(&broken_c)
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    let mut due = store.acquire_due_jobs(suite::at(30), 10).await.unwrap();
    due.sort_by(|x, y| x.job.id.cmp(&y.job.id));
    assert_eq!(
        due.iter().map(|d| d.job.id.as_str()).collect::<Vec<_>>(),
        ["a", "c"]
    );
    let runs = store.query_runs(&RunFilter::new().job("a")).await.unwrap();
    assert_eq!(runs, due[0].runs);
    cleanup(&prefix).await;
}

/// Claims of one scheduler and manual runs of another, racing on jobs with one instance:
/// every job ends with exactly one active run (the overlap rule counted each run the
/// other wrote, or the write was planned again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_ledger_racing_claims_and_manual_runs_count_once() {
    use apsched::ledger::{RunFilter, RunState};
    use apsched::store::JobStore;
    use std::sync::Arc;

    if !available().await {
        return;
    }
    let prefix = format!("apsched-test:{}", suite::unique_suffix());
    let s1 = Arc::new(started(&prefix, "s1").await);
    let s2 = Arc::new(started(&prefix, "s2").await);
    const JOBS: usize = 40;
    let ids: Vec<String> = (0..JOBS).map(|i| format!("j{i}")).collect();
    for id in &ids {
        s1.add_job(ledger_job(id), false).await.unwrap();
    }
    let mut tasks = tokio::task::JoinSet::new();
    {
        let s1 = s1.clone();
        tasks.spawn(async move {
            let mut claimed = 0;
            while claimed < JOBS {
                let due = s1.acquire_due_jobs(suite::at(0), 7).await.unwrap();
                claimed += due.len();
                s1.release_jobs(&due).await.unwrap();
            }
        });
    }
    for chunk in ids.chunks(10) {
        let s2 = s2.clone();
        let chunk = chunk.to_vec();
        tasks.spawn(async move {
            for id in chunk {
                for _ in 0..2 {
                    s2.add_manual_runs(&id, &[suite::at(0)], suite::at(0))
                        .await
                        .unwrap();
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    for id in &ids {
        let runs = s1
            .query_runs(&RunFilter::new().job(id.as_str()))
            .await
            .unwrap();
        assert_eq!(runs.len(), 3, "{id}: one claim and two manual runs");
        let active = runs.iter().filter(|r| r.state.is_active()).count();
        assert_eq!(active, 1, "{id}: {runs:?}");
        assert!(runs
            .iter()
            .all(|r| r.state.is_active() || r.state == RunState::Skipped));
    }
    cleanup(&prefix).await;
}

/// The keys an operator reads (docs/ledger.md): the run hash, the per-job and global
/// indexes, the active runs, the heartbeats and the finished index hold what the schema
/// says.
#[tokio::test]
async fn redis_ledger_keys_as_documented() {
    use apsched::ledger::{RunOutcome, RunState};
    use apsched::store::JobStore;
    use std::collections::HashMap;

    if !available().await {
        return;
    }
    let prefix = format!("apsched-test:{}", suite::unique_suffix());
    let store = started(&prefix, "s1").await;
    store.add_job(ledger_job("a"), false).await.unwrap();
    store.tick_runs(suite::at(0)).await.unwrap();
    let run = store.acquire_due_jobs(suite::at(0), 10).await.unwrap()[0].runs[0].clone();
    store.start_runs(&[run.run_id], suite::at(1)).await.unwrap();
    let m = format!("{:019}", run.run_id.get());
    let us = |secs: i64| suite::at(secs).timestamp_micros() as f64;
    let mut c = raw_conn().await;
    let (fields, job_score, all_score, active, hb, owned): (
        HashMap<String, String>,
        f64,
        f64,
        String,
        f64,
        bool,
    ) = ::redis::pipe()
        .hgetall(format!("{prefix}:run:{m}"))
        .zscore(format!("{prefix}:runs:job:a"), &m)
        .zscore(format!("{prefix}:runs:all"), &m)
        .hget(format!("{prefix}:runs:active:a"), &m)
        .zscore(format!("{prefix}:heartbeats"), "s1")
        .sismember(format!("{prefix}:runs:owned:s1"), &m)
        .query_async(&mut c)
        .await
        .unwrap();
    let field = |k: &str| fields.get(k).map(String::as_str);
    assert_eq!(field("run_id"), Some(run.run_id.to_string().as_str()));
    assert_eq!(field("job_id"), Some("a"));
    assert_eq!(field("state"), Some("started"));
    assert_eq!(field("owner"), Some("s1"));
    assert_eq!(field("scheduled"), Some("2030-01-15T10:00:00Z"));
    assert_eq!(field("started_at"), Some("2030-01-15T10:00:01Z"));
    assert_eq!(field("manual"), Some("0"));
    assert_eq!(field("finished_at"), None);
    assert_eq!((job_score, all_score), (us(0), us(0)));
    assert_eq!(active, "started");
    assert_eq!(hb, us(30), "alive until now + lease");
    assert!(owned);

    store
        .finish_runs(&[
            RunOutcome::new(run.run_id, "a", RunState::Error, suite::at(3)).error("boom"),
        ])
        .await
        .unwrap();
    let (state, error, finished, done, count, active): (
        String,
        String,
        f64,
        f64,
        f64,
        Option<String>,
    ) = ::redis::pipe()
        .hget(format!("{prefix}:run:{m}"), "state")
        .hget(format!("{prefix}:run:{m}"), "error")
        .zscore(format!("{prefix}:runs:finished"), &m)
        .zscore(format!("{prefix}:runs:done:a"), &m)
        .zscore(format!("{prefix}:runs:done_count"), "a")
        .hget(format!("{prefix}:runs:active:a"), &m)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!((state.as_str(), error.as_str()), ("error", "boom"));
    assert_eq!((finished, done, count), (us(3), us(0), 1.0));
    assert_eq!(active, None);
    cleanup(&prefix).await;
}

/// A batch whose records would make one huge script (long backlogs that do not coalesce)
/// is written in several script calls, each job's claim with all its records.
#[tokio::test]
async fn redis_ledger_long_backlogs_are_claimed_whole() {
    use apsched::store::JobStore;

    if !available().await {
        return;
    }
    let prefix = format!("apsched-test:{}", suite::unique_suffix());
    let store = started(&prefix, "s1").await;
    const JOBS: usize = 40;
    for i in 0..JOBS {
        let mut j = suite::interval_job(&format!("j{i}"), 1, Some(suite::at(0)));
        j.coalesce = false;
        j.misfire_grace_time = None;
        j.overlap = apsched::Overlap::AllowAll;
        store.add_job(j, false).await.unwrap();
    }
    let due = store.acquire_due_jobs(suite::at(99), 100).await.unwrap();
    assert_eq!(due.len(), JOBS);
    let mut c = raw_conn().await;
    for d in &due {
        assert_eq!(d.runs.len(), 100, "{}", d.job.id);
        let n: usize = ::redis::cmd("ZCARD")
            .arg(format!("{prefix}:runs:job:{}", d.job.id))
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(n, 100, "{}", d.job.id);
    }
    cleanup(&prefix).await;
}

/// A run marked started and then found too late is recorded `missed` without a start
/// time (as `RunRecord::apply` does).
#[tokio::test]
async fn redis_ledger_missed_runs_never_started() {
    use apsched::ledger::{RunOutcome, RunState};
    use apsched::store::JobStore;

    if !available().await {
        return;
    }
    let prefix = format!("apsched-test:{}", suite::unique_suffix());
    let store = started(&prefix, "s1").await;
    store.add_job(ledger_job("a"), false).await.unwrap();
    store.tick_runs(suite::at(0)).await.unwrap();
    let run = store.acquire_due_jobs(suite::at(0), 10).await.unwrap()[0].runs[0].clone();
    store.start_runs(&[run.run_id], suite::at(1)).await.unwrap();
    store
        .finish_runs(&[
            RunOutcome::new(run.run_id, "a", RunState::Missed, suite::at(2))
                .started_at(Some(suite::at(1)))
                .error("too late"),
        ])
        .await
        .unwrap();
    let mut want = run.clone();
    want.apply(&RunOutcome::new(run.run_id, "a", RunState::Missed, suite::at(2)).error("too late"));
    let got = store.get_run(run.run_id).await.unwrap().unwrap();
    assert_eq!(got, want);
    assert_eq!(got.started_at, None);
    cleanup(&prefix).await;
}

/// Finishing runs applies the per-job retention at once (a storm of runs cannot outgrow
/// the periodic pass's bounded pruning); the newest finished runs stay, active ones too.
#[tokio::test]
async fn redis_ledger_finishing_keeps_the_per_job_retention() {
    use apsched::ledger::{RunOutcome, RunRetention, RunState};
    use apsched::store::JobStore;

    if !available().await {
        return;
    }
    let prefix = format!("apsched-test:{}", suite::unique_suffix());
    let ctx = suite::TestContext::new("redis", "s1", Duration::from_secs(30))
        .with_ledger(true, RunRetention::default().per_job(2));
    let store = RedisStore::new(&url()).unwrap().with_prefix(&prefix);
    store.start(ctx.context()).await.unwrap();
    let mut j = ledger_job("a");
    j.overlap = apsched::Overlap::AllowAll;
    j.next_run_time = Some(suite::at(100_000));
    store.add_job(j, false).await.unwrap();
    let slots: Vec<_> = (0..10).map(|i| suite::at(i * 10)).collect();
    let runs = store
        .add_manual_runs("a", &slots, suite::at(100))
        .await
        .unwrap();
    let outcomes: Vec<RunOutcome> = runs[..9]
        .iter()
        .map(|r| RunOutcome::new(r.run_id, "a", RunState::Executed, suite::at(101)))
        .collect();
    store.finish_runs(&outcomes).await.unwrap();
    assert_eq!(
        suite::runs_by_time(&store, "a").await,
        vec![
            (suite::at(90), RunState::Claimed),
            (suite::at(80), RunState::Executed),
            (suite::at(70), RunState::Executed)
        ]
    );
    let mut c = raw_conn().await;
    let (all, finished, count): (usize, usize, f64) = ::redis::pipe()
        .zcard(format!("{prefix}:runs:all"))
        .zcard(format!("{prefix}:runs:finished"))
        .zscore(format!("{prefix}:runs:done_count"), "a")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!((all, finished, count), (3, 2, 2.0), "indexes follow");
    cleanup(&prefix).await;
}

/// A retry (`add_runs`) sits in the keys as a claimed run does (hash with `attempt` and
/// `retry_at`, the job's and the global index at its scheduled time, the job's active
/// runs, the owner's set, a new stamp for the job); a batch with a key of the wrong type
/// writes none of its records.
#[tokio::test]
async fn redis_ledger_retries_as_documented() {
    use apsched::ledger::{RunOutcome, RunState};
    use apsched::store::JobStore;
    use std::collections::HashMap;

    if !available().await {
        return;
    }
    let prefix = format!("apsched-test:{}", suite::unique_suffix());
    let store = started(&prefix, "s1").await;
    store.add_job(ledger_job("a"), false).await.unwrap();
    store.tick_runs(suite::at(0)).await.unwrap();
    let run = store.acquire_due_jobs(suite::at(0), 10).await.unwrap()[0].runs[0].clone();
    store.start_runs(&[run.run_id], suite::at(1)).await.unwrap();
    let mut c = raw_conn().await;
    let stamp_before: String = ::redis::cmd("HGET")
        .arg(format!("{prefix}:runs:stamps"))
        .arg("a")
        .query_async(&mut c)
        .await
        .unwrap();
    let retry = run.retry("s1", suite::at(2), suite::at(7));
    store.add_runs(std::slice::from_ref(&retry)).await.unwrap();
    store
        .finish_runs(&[RunOutcome::new(
            run.run_id,
            "a",
            RunState::Error,
            suite::at(2),
        )])
        .await
        .unwrap();
    let m = format!("{:019}", retry.run_id.get());
    let us = |secs: i64| suite::at(secs).timestamp_micros() as f64;
    let (fields, job_score, all_score, active, owned, stamp): (
        HashMap<String, String>,
        f64,
        f64,
        String,
        bool,
        String,
    ) = ::redis::pipe()
        .hgetall(format!("{prefix}:run:{m}"))
        .zscore(format!("{prefix}:runs:job:a"), &m)
        .zscore(format!("{prefix}:runs:all"), &m)
        .hget(format!("{prefix}:runs:active:a"), &m)
        .sismember(format!("{prefix}:runs:owned:s1"), &m)
        .hget(format!("{prefix}:runs:stamps"), "a")
        .query_async(&mut c)
        .await
        .unwrap();
    let field = |k: &str| fields.get(k).map(String::as_str);
    assert_eq!(field("state"), Some("claimed"));
    assert_eq!(field("attempt"), Some("2"));
    assert_eq!(field("scheduled"), Some("2030-01-15T10:00:00Z"));
    assert_eq!(field("retry_at"), Some("2030-01-15T10:00:07Z"));
    assert_eq!(field("owner"), Some("s1"));
    assert_eq!((job_score, all_score), (us(0), us(0)));
    assert_eq!(active, "claimed");
    assert!(owned);
    assert_ne!(
        stamp, stamp_before,
        "claims that read the job before plan again"
    );

    // One bad key in the batch: nothing of it is written.
    let broken = format!("{prefix}:runs:active:b");
    ::redis::cmd("SET")
        .arg(&broken)
        .arg("not a hash")
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    let third = retry.retry("s1", suite::at(8), suite::at(9));
    let other = apsched::ledger::RunRecord::claimed("b", suite::at(0), "s1", suite::at(8));
    let err = store
        .add_runs(&[third.clone(), other])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&broken), "{err}");
    assert_eq!(store.get_run(third.run_id).await.unwrap(), None);
    cleanup(&prefix).await;
}
