//! Retries and auto-pause survive a restart (issue 12), on PostgreSQL and Redis, in real
//! time: a retry waiting when its scheduler stops runs after a restart (the same scheduler
//! id taking back its previous life's runs, or another id taking them over), and a job
//! paused after its failures stays paused, with its reason, in the next scheduler.

use std::time::Duration;

use apsched::job::JobContext;
use apsched::ledger::{RunFilter, RunRecord, RunState};
use apsched::trigger::{Date, Interval};
use apsched::{RetryPolicy, RunId, Scheduler};
use chrono::{DateTime, TimeDelta, Utc};

use crate::multiprocess::store_for;

fn scheduler(url: &str, ns: &str, id: &str) -> Scheduler {
    Scheduler::builder()
        .store("default", store_for(url, ns).unwrap())
        .scheduler_id(id)
        .lease(Duration::from_secs(2))
        .task(
            "flaky",
            |_: serde_json::Value, ctx: JobContext| async move {
                if ctx.attempt() == 1 {
                    Err("the first attempt fails".to_string())
                } else {
                    Ok(ctx.attempt())
                }
            },
        )
        .task("broken", |_: serde_json::Value| async {
            Err::<(), _>("the upstream API answered 503".to_string())
        })
        .task("hang", |_: serde_json::Value| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        })
        .task("nap", |ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        })
        .build()
}

/// Polls the runs of job `j` until `done` holds (real time, at most 30 s).
async fn wait_runs(
    s: &Scheduler,
    what: &str,
    done: impl Fn(&[RunRecord]) -> bool,
) -> Vec<RunRecord> {
    let give_up = Utc::now() + TimeDelta::seconds(30);
    loop {
        let mut runs = s.job("j").runs(RunFilter::new().limit(100)).await.unwrap();
        runs.sort_by_key(|r| (r.scheduled, r.attempt));
        if done(&runs) {
            return runs;
        }
        assert!(Utc::now() < give_up, "{what}: {runs:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The id of job `j`'s run once `s` has started it.
async fn started_run(s: &Scheduler) -> RunId {
    let is_started = |r: &RunRecord| r.state == RunState::Started;
    let runs = wait_runs(s, "the run never started", |r| r.iter().any(is_started)).await;
    runs.into_iter()
        .find(is_started)
        .map(|r| r.run_id)
        .expect("wait_runs returns once a run has started")
}

/// A one-shot job fails its first attempt; its retry (3 s later) is waiting when its
/// scheduler stops. The next scheduler (`next_id`) runs it at its time.
async fn retry_after_restart(url: &str, ns: &str, next_id: &str) {
    let a = scheduler(url, ns, "a");
    a.start().await.unwrap();
    let first: DateTime<Utc> = DateTime::from_timestamp(Utc::now().timestamp() + 1, 0).unwrap();
    a.add_task_job("flaky", serde_json::Value::Null)
        .trigger(Date::at(first, None).unwrap())
        .retry(RetryPolicy::fixed(2, Duration::from_secs(3)).jitter(false))
        .misfire_grace_time(Some(Duration::from_secs(60)))
        .id("j")
        .await
        .unwrap();
    // The writer records the retry before the failed attempt's outcome (a crash between
    // them leaves the attempt `started`, never a failure without its retry): wait for both.
    let runs = wait_runs(&a, "the retry is never recorded", |r| {
        r.iter().any(|r| r.attempt == 2) && r.first().is_some_and(|r| r.state.is_terminal())
    })
    .await;
    let retry_at = runs[1].retry_at.expect("a retry has its time");
    assert_eq!(
        (runs[0].state, runs[1].state, runs[1].owner.as_str()),
        (RunState::Error, RunState::Claimed, "a")
    );
    a.shutdown().await.unwrap();

    let b = scheduler(url, ns, next_id);
    b.start().await.unwrap();
    let runs = wait_runs(&b, "the retry never ran after the restart", |r| {
        r.len() == 2 && r[1].state.is_terminal()
    })
    .await;
    let retry = &runs[1];
    assert_eq!(
        (retry.attempt, retry.state, retry.owner.as_str()),
        (2, RunState::Executed, next_id),
        "{runs:#?}"
    );
    assert_eq!(retry.scheduled, first);
    assert!(retry.started_at.unwrap() >= retry_at, "{retry:#?}");
    assert_eq!(retry.output_as::<u32>(), Some(2));
    // The job was kept for its retry only: it is gone now.
    for _ in 0..50 {
        if b.job("j").get().await.unwrap().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(b.job("j").get().await.unwrap().is_none());
    b.shutdown().await.unwrap();
}

/// A job failing every second pauses after two failures; the next scheduler finds it
/// paused with its reason and its count, and it runs no more until resumed.
async fn pause_after_restart(url: &str, ns: &str) {
    let a = scheduler(url, ns, "a");
    a.start().await.unwrap();
    a.add_task_job("broken", serde_json::Value::Null)
        .trigger(Interval::new(Duration::from_secs(1)).unwrap())
        .pause_after_failures(2)
        .misfire_grace_time(None)
        .id("j")
        .await
        .unwrap();
    let give_up = Utc::now() + TimeDelta::seconds(30);
    while !a.job("j").get().await.unwrap().unwrap().is_paused() {
        assert!(Utc::now() < give_up, "never paused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.shutdown().await.unwrap();

    let b = scheduler(url, ns, "b");
    b.start().await.unwrap();
    let job = b.job("j").get().await.unwrap().unwrap();
    assert!(job.is_paused());
    assert_eq!(job.consecutive_failures, 2);
    assert_eq!(
        job.paused_reason.as_deref(),
        Some("paused after 2 consecutive failures: the upstream API answered 503")
    );
    let before = b.job("j").runs(RunFilter::new()).await.unwrap().len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        b.job("j").runs(RunFilter::new()).await.unwrap().len(),
        before,
        "a paused job does not run"
    );
    let resumed = b.job("j").resume().await.unwrap().unwrap();
    assert_eq!(
        (resumed.paused_reason, resumed.consecutive_failures),
        (None, 0)
    );
    b.job("j").remove().await.unwrap();
    b.shutdown_now().await.unwrap();
}

async fn all(url: &str, prefix: &str) {
    // Real time: not beside the other tests that run schedulers for a while.
    let _turn = crate::multiprocess::PROCESS_TESTS.lock().await;
    let ns = NAMESPACES.map(|n| format!("{prefix}{n}"));
    tokio::join!(
        retry_after_restart(url, &ns[0], "a"),
        retry_after_restart(url, &ns[1], "b"),
        pause_after_restart(url, &ns[2]),
    );
}

const NAMESPACES: [&str; 3] = ["same", "other", "pause"];

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_auto_pause_survive_a_restart_postgres() {
    let Some(tdb) = crate::sql::TestDb::new(crate::sql::Db::Postgres, "fail").await else {
        return;
    };
    let prefix = format!("{}_", tdb.table);
    all(&tdb.url, &prefix).await;
    let tables: Vec<String> = NAMESPACES.iter().map(|p| format!("{prefix}{p}")).collect();
    tdb.cleanup(&tables).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_auto_pause_survive_a_restart_redis() {
    if !crate::redis::available().await {
        return;
    }
    let prefix = format!("apsched-test:{}:", crate::suite::unique_suffix());
    all(&crate::redis::url(), &prefix).await;
    for p in NAMESPACES {
        crate::redis::cleanup(&format!("{prefix}{p}")).await;
    }
}

/// A scheduler that dies mid-run (its runtime dropped: no outcome written, no shutdown) and
/// comes back under the same id takes back its previous life's runs at its first ledger
/// pass: the started one is `abandoned`, as another scheduler would have marked it (none
/// would, while the id's heartbeat is alive again).
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_back_under_its_id_abandons_its_previous_lifes_runs_postgres() {
    let Some(tdb) = crate::sql::TestDb::new(crate::sql::Db::Postgres, "life").await else {
        return;
    };
    let ns = format!("{}_life", tdb.table);
    let doomed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let a = scheduler(&tdb.url, &ns, "a");
    let (url, ns2) = (tdb.url.clone(), ns.clone());
    let a2 = a.clone();
    doomed
        .spawn(async move {
            a2.start().await.unwrap();
            a2.add_task_job("hang", serde_json::Value::Null)
                .trigger(Interval::new(Duration::from_secs(3600)).unwrap())
                .next_run_time(Utc::now())
                .id("j")
                .await
                .unwrap();
        })
        .await
        .unwrap();
    let run_id = started_run(&a).await;
    // The process "dies": its tasks are dropped where they stand.
    doomed.shutdown_background();
    drop(a);

    let b = scheduler(&url, &ns2, "a");
    b.start().await.unwrap();
    let runs = wait_runs(&b, "the previous life's run was never abandoned", |r| {
        r.iter()
            .any(|r| r.run_id == run_id && r.state == RunState::Abandoned)
    })
    .await;
    let run = runs.iter().find(|r| r.run_id == run_id).unwrap();
    assert!(
        run.error
            .as_deref()
            .unwrap()
            .contains("scheduler a stopped"),
        "{run:#?}"
    );
    b.job("j").remove().await.unwrap();
    b.shutdown().await.unwrap();
    tdb.cleanup(&[ns2]).await;
}

/// A scheduler that is paused, or that waits at shutdown for its run in flight, is alive:
/// its heartbeat goes on without the loop's passes, so another scheduler sharing the store
/// (whose ledger passes, every third of the 2 s lease, would take over a lapsed one's runs)
/// never marks its started run `abandoned`, and the run ends `executed`, by its owner.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_or_draining_scheduler_keeps_its_runs_postgres() {
    let Some(tdb) = crate::sql::TestDb::new(crate::sql::Db::Postgres, "alive").await else {
        return;
    };
    let ns = format!("{}_alive", tdb.table);
    let a = scheduler(&tdb.url, &ns, "a");
    a.start().await.unwrap();
    a.add_task_job("nap", 8000)
        .trigger(Date::at(Utc::now(), None).unwrap())
        .id("j")
        .await
        .unwrap();
    let run_id = started_run(&a).await;
    a.pause().unwrap();
    // `b` starts once `a` has started the run, so that the run is `a`'s.
    let b = scheduler(&tdb.url, &ns, "b");
    b.start().await.unwrap();
    // Twice the lease of pause: a lapsed heartbeat would have been noticed by now.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let run = b.run(run_id).await.unwrap().expect("the run is recorded");
    assert_eq!(run.state, RunState::Started, "paused: {run:#?}");
    // Shutdown waits for the run, about 4 s more: longer than the lease again.
    a.shutdown().await.unwrap();
    let run = b.run(run_id).await.unwrap().expect("the run is recorded");
    assert_eq!(run.state, RunState::Executed, "after the drain: {run:#?}");
    assert_eq!(run.owner, "a");
    b.shutdown().await.unwrap();
    tdb.cleanup(&[ns]).await;
}
