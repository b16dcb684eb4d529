//! The overlap policies across two schedulers sharing a store (issue 11), on PostgreSQL and
//! Redis, in real time: a job taking 1.5 s every second, run by two schedulers (two store
//! connections, two scheduler ids) for the first five slots. `max_instances` (1) is counted
//! in the store, so it holds across them: the ledger's records show whether executed runs
//! ever overlapped, and how the policy ended the rest.

use std::time::Duration;

use apsched::job::JobContext;
use apsched::ledger::{RunFilter, RunRecord, RunState};
use apsched::trigger::Interval;
use apsched::{Overlap, Scheduler};
use chrono::{DateTime, TimeDelta, Utc};

use crate::multiprocess::store_for;

/// The first slot and how many slots are judged.
const SLOTS: i64 = 5;

fn scheduler(url: &str, ns: &str, id: &str) -> Scheduler {
    Scheduler::builder()
        .store("default", store_for(url, ns).unwrap())
        .scheduler_id(id)
        .lease(Duration::from_secs(3))
        .task("slow", |_: serde_json::Value, ctx: JobContext| async move {
            tokio::select! {
                _ = ctx.cancelled() => Err("cancelled".to_string()),
                _ = tokio::time::sleep(Duration::from_millis(1500)) => Ok(()),
            }
        })
        .build()
}

/// Runs the job under `overlap` on two schedulers and returns the records of its first
/// [`SLOTS`] slots, once all are terminal.
async fn run(url: &str, ns: &str, overlap: Overlap) -> Vec<RunRecord> {
    let (a, b) = (scheduler(url, ns, "a"), scheduler(url, ns, "b"));
    a.start().await.unwrap();
    b.start().await.unwrap();
    let first: DateTime<Utc> = DateTime::from_timestamp(Utc::now().timestamp() + 2, 0).unwrap();
    a.add_task_job("slow", serde_json::Value::Null)
        .trigger(
            Interval::builder()
                .seconds(1)
                .start_date(first)
                .build()
                .unwrap(),
        )
        .overlap(overlap)
        .misfire_grace_time(None)
        .id("j")
        .await
        .unwrap();
    let last = first + TimeDelta::seconds(SLOTS - 1);
    let give_up = Utc::now() + TimeDelta::seconds(60);
    let runs = loop {
        let runs: Vec<RunRecord> = a
            .job("j")
            .runs(RunFilter::new().limit(1000))
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.scheduled <= last)
            .collect();
        if runs.len() as i64 == SLOTS && runs.iter().all(|r| r.state.is_terminal()) {
            break runs;
        }
        assert!(
            Utc::now() < give_up,
            "{overlap}: slots not all finished: {runs:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    a.job("j").remove().await.unwrap();
    a.shutdown_now().await.unwrap();
    b.shutdown_now().await.unwrap();
    let mut runs = runs;
    runs.sort_by_key(|r| r.scheduled);
    runs
}

fn count(runs: &[RunRecord], state: RunState) -> usize {
    runs.iter().filter(|r| r.state == state).count()
}

/// Whether two runs that started ever ran at the same time.
fn overlapped(runs: &[RunRecord]) -> bool {
    let mut spans: Vec<_> = runs
        .iter()
        .filter_map(|r| Some((r.started_at?, r.finished_at?)))
        .collect();
    spans.sort();
    spans.windows(2).any(|w| w[1].0 < w[0].1)
}

async fn policies(url: &str, prefix: &str) {
    // Real time: not beside the other tests that run scheduler processes.
    let _turn = crate::multiprocess::PROCESS_TESTS.lock().await;
    let ns: Vec<String> = ["skip", "allow", "one", "all", "cancel"]
        .iter()
        .map(|p| format!("{prefix}{p}"))
        .collect();
    let (skip, allow, buffer_one, buffer_all, cancel) = tokio::join!(
        run(url, &ns[0], Overlap::Skip),
        run(url, &ns[1], Overlap::AllowAll),
        run(url, &ns[2], Overlap::BufferOne),
        run(url, &ns[3], Overlap::BufferAll),
        run(url, &ns[4], Overlap::CancelOther),
    );
    let owners = |runs: &[RunRecord]| {
        let mut o: Vec<_> = runs.iter().map(|r| r.owner.clone()).collect();
        o.sort();
        o.dedup();
        o
    };
    eprintln!(
        "{url}: owners skip {:?} allow {:?} one {:?} all {:?} cancel {:?}",
        owners(&skip),
        owners(&allow),
        owners(&buffer_one),
        owners(&buffer_all),
        owners(&cancel)
    );

    assert!(!overlapped(&skip), "Skip: {skip:#?}");
    assert!(count(&skip, RunState::Skipped) >= 1, "Skip: {skip:#?}");

    assert!(overlapped(&allow), "AllowAll runs overlap: {allow:#?}");
    assert_eq!(
        count(&allow, RunState::Executed),
        SLOTS as usize,
        "{allow:#?}"
    );

    assert!(!overlapped(&buffer_one), "BufferOne: {buffer_one:#?}");
    assert!(
        count(&buffer_one, RunState::Skipped) >= 1,
        "{buffer_one:#?}"
    );

    assert!(!overlapped(&buffer_all), "BufferAll: {buffer_all:#?}");
    assert_eq!(
        count(&buffer_all, RunState::Executed),
        SLOTS as usize,
        "{buffer_all:#?}"
    );

    assert!(!overlapped(&cancel), "CancelOther: {cancel:#?}");
    assert!(count(&cancel, RunState::Cancelled) >= 1, "{cancel:#?}");
    // A run ends on its own when it finishes before the next slot is claimed (on a loaded
    // machine), and is cancelled by that slot's run otherwise.
    assert!(
        cancel
            .iter()
            .all(|r| matches!(r.state, RunState::Cancelled | RunState::Executed)),
        "{cancel:#?}"
    );
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlap_policies_across_schedulers_postgres() {
    let Some(tdb) = crate::sql::TestDb::new(crate::sql::Db::Postgres, "ovl").await else {
        return;
    };
    let prefix = format!("{}_", tdb.table);
    policies(&tdb.url, &prefix).await;
    let tables: Vec<String> = ["skip", "allow", "one", "all", "cancel"]
        .iter()
        .map(|p| format!("{prefix}{p}"))
        .collect();
    tdb.cleanup(&tables).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlap_policies_across_schedulers_redis() {
    if !crate::redis::available().await {
        return;
    }
    let prefix = format!("apsched-test:{}:", crate::suite::unique_suffix());
    policies(&crate::redis::url(), &prefix).await;
    for p in ["skip", "allow", "one", "all", "cancel"] {
        crate::redis::cleanup(&format!("{prefix}{p}")).await;
    }
}
