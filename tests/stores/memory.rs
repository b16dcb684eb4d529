//! The memory store against the contract.

use apsched::store::{JobStore, MemoryStore};

use crate::suite;

/// A memory store started by scheduler `s1` (so it keeps a ledger).
async fn started() -> MemoryStore {
    let store = MemoryStore::new();
    store
        .start(suite::context(
            "default",
            "s1",
            std::time::Duration::from_secs(30),
        ))
        .await
        .unwrap();
    store
}

#[tokio::test]
async fn memory_store_contract() {
    suite::contract(|| async { started().await }, None).await;
    suite::bulk_add_all_or_nothing(MemoryStore::new()).await;
}

/// A million jobs: adding and claiming stay cheap (the ordered index, not a scan).
#[tokio::test]
async fn memory_store_many_jobs() {
    let store = MemoryStore::new();
    const N: i64 = 200_000;
    for i in 0..N {
        store
            .add_job(
                suite::interval_job(&format!("j{i}"), 3600, Some(suite::at(i % 1000))),
                false,
            )
            .await
            .unwrap();
    }
    assert_eq!(store.len(), N as usize);
    let due = store.acquire_due_jobs(suite::at(0), 10_000).await.unwrap();
    assert_eq!(due.len(), (N / 1000) as usize);
    assert_eq!(store.next_run_time().await.unwrap(), Some(suite::at(1)));
}

/// The run ledger's contract (one scheduler: a memory store is not shared).
#[tokio::test]
async fn memory_store_ledger_contract() {
    suite::ledger_contract(
        |_namespace, ctx| async move {
            let store = MemoryStore::new();
            store.start(ctx).await.unwrap();
            store
        },
        false,
    )
    .await;
}

/// The memory store indexes a claim's records later than it makes them (its journal): a
/// run claimed and not yet indexed still counts against `max_instances` at the job's next
/// claim, starts in whatever order its ids come, and is seen by every read.
#[tokio::test]
async fn memory_store_claimed_runs_count_before_they_are_indexed() {
    use apsched::ledger::{RunFilter, RunState};

    let store = started().await;
    for id in ["a", "b"] {
        let mut job = suite::interval_job(id, 1, Some(suite::at(0)));
        job.max_instances = 1;
        store.add_job(job, false).await.unwrap();
    }
    let first = store.acquire_due_jobs(suite::at(0), 10).await.unwrap();
    let ids: Vec<_> = first
        .iter()
        .flat_map(|d| &d.runs)
        .map(|r| r.run_id)
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(first
        .iter()
        .flat_map(|d| &d.runs)
        .all(|r| r.state == RunState::Claimed));
    store.release_jobs(&first).await.unwrap();

    // Started in the reverse of the claim's order.
    let reversed: Vec<_> = ids.iter().rev().copied().collect();
    let started = store.start_runs(&reversed, suite::at(0)).await.unwrap();
    assert_eq!(started, reversed);

    // Both jobs are due again while their first runs are active: max_instances (1) skips.
    let second = store.acquire_due_jobs(suite::at(1), 10).await.unwrap();
    assert_eq!(second.len(), 2);
    for due in &second {
        assert_eq!(due.runs.len(), 1);
        assert_eq!(due.runs[0].state, RunState::Skipped, "{:?}", due.runs[0]);
    }
    store.release_jobs(&second).await.unwrap();

    let runs = store.query_runs(&RunFilter::new()).await.unwrap();
    assert_eq!(runs.len(), 4);
    for id in &ids {
        let run = store.get_run(*id).await.unwrap().unwrap();
        assert_eq!(run.state, RunState::Started);
        assert_eq!(run.owner, "s1");
    }
}

/// A claim hands out the store's own copy of the job (no clone per claim). A copy still
/// held from an earlier claim is a snapshot: the next claim, and an update, leave it as
/// it was.
#[tokio::test]
async fn memory_store_claims_share_the_job_without_changing_held_copies() {
    let store = MemoryStore::new();
    store
        .add_job(suite::interval_job("j", 60, Some(suite::at(0))), false)
        .await
        .unwrap();
    let first = store.acquire_due_jobs(suite::at(0), 10).await.unwrap();
    let stored = store.lookup_job("j").await.unwrap().unwrap();
    assert_eq!(first[0].job.next_run_time, Some(suite::at(60)));
    assert_eq!(first[0].job.version, stored.version);

    // Claimed again while the first claim's copy is held: the held copy does not move.
    let second = store.acquire_due_jobs(suite::at(60), 10).await.unwrap();
    assert_eq!(second[0].job.next_run_time, Some(suite::at(120)));
    assert_eq!(first[0].job.next_run_time, Some(suite::at(60)));
    assert!(second[0].job.version > first[0].job.version);

    // Updated while the second claim's copy is held: the same.
    let before = second[0].job.max_instances;
    let mut changed = store.lookup_job("j").await.unwrap().unwrap();
    changed.max_instances = before + 5;
    store.update_job(changed).await.unwrap();
    assert_eq!(second[0].job.max_instances, before);
    assert_eq!(
        store.lookup_job("j").await.unwrap().unwrap().max_instances,
        before + 5
    );
}

/// The ids of claimed jobs, sorted.
fn claimed(due: &[apsched::store::DueJob]) -> Vec<&str> {
    let mut ids: Vec<&str> = due.iter().map(|d| d.job.id.as_str()).collect();
    ids.sort_unstable();
    ids
}

/// The due index keys jobs by integer nanoseconds: the store still orders and claims them
/// by their exact times, within a microsecond too.
#[tokio::test]
async fn memory_store_jobs_due_within_one_microsecond_keep_their_order() {
    let store = MemoryStore::new();
    let ns = |n| suite::at(0) + chrono::TimeDelta::nanoseconds(n);
    // "a" sorts first by id but is due 800 ns after "b".
    store
        .add_job(suite::date_job("a", ns(900)), false)
        .await
        .unwrap();
    store
        .add_job(suite::date_job("b", ns(100)), false)
        .await
        .unwrap();
    assert_eq!(store.next_run_time().await.unwrap(), Some(ns(100)));
    let due = store.acquire_due_jobs(ns(500), 10).await.unwrap();
    assert_eq!(claimed(&due), ["b"]);
    assert_eq!(store.next_run_time().await.unwrap(), Some(ns(900)));
}

/// Times beyond what the index's nanoseconds hold (after 2262) share one key: the store
/// still reports the earliest of them, lists them in time order and does not claim them
/// early.
#[tokio::test]
async fn memory_store_far_future_jobs_keep_their_time_order() {
    use chrono::TimeZone;
    let store = MemoryStore::new();
    let y = |year| chrono::Utc.with_ymd_and_hms(year, 1, 1, 0, 0, 0).unwrap();
    for (id, year) in [("a", 9999), ("b", 3000), ("c", 2500)] {
        store
            .add_job(suite::date_job(id, y(year)), false)
            .await
            .unwrap();
    }
    assert_eq!(store.next_run_time().await.unwrap(), Some(y(2500)));
    let listed = store.get_all_jobs().await.unwrap();
    let listed: Vec<&str> = listed.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(listed, ["c", "b", "a"]);
    assert!(store
        .acquire_due_jobs(y(2400), 10)
        .await
        .unwrap()
        .is_empty());
    let due = store.acquire_due_jobs(y(3000), 10).await.unwrap();
    assert_eq!(claimed(&due), ["b", "c"]);
    assert_eq!(store.next_run_time().await.unwrap(), Some(y(9999)));
    store
        .add_job(suite::date_job("d", y(2030)), false)
        .await
        .unwrap();
    assert_eq!(store.next_run_time().await.unwrap(), Some(y(2030)));
}

/// A run finished right after its claim, its record still in the journal (a storm's
/// runs), counts for the job's retention at once, like any finished run.
#[tokio::test]
async fn memory_store_runs_finished_before_they_are_indexed_keep_the_retention() {
    use apsched::ledger::{RunOutcome, RunRetention, RunState};
    use apsched::store::testing::TestContext;

    let store = MemoryStore::new();
    let keep = RunRetention::default().per_job(2);
    let ctx = TestContext::new("default", "s1", std::time::Duration::from_secs(30))
        .with_ledger(true, keep);
    store.start(ctx.context()).await.unwrap();
    let mut job = suite::interval_job("a", 1, Some(suite::at(0)));
    job.max_instances = 10;
    store.add_job(job, false).await.unwrap();
    for k in 0..5 {
        let due = store.acquire_due_jobs(suite::at(k), 10).await.unwrap();
        let run = due[0].runs[0].clone();
        store.release_jobs(&due).await.unwrap();
        assert_eq!(
            store.start_runs(&[run.run_id], suite::at(k)).await.unwrap(),
            vec![run.run_id]
        );
        let done = RunOutcome::new(run.run_id, "a", RunState::Executed, suite::at(k));
        store.finish_runs(&[done]).await.unwrap();
    }
    assert_eq!(
        suite::runs_by_time(&store, "a").await,
        vec![
            (suite::at(4), RunState::Executed),
            (suite::at(3), RunState::Executed)
        ],
        "the newest two finished runs are kept"
    );
}

/// Outcomes in any order, some twice, some for runs already indexed: each run gets the
/// first outcome written for it, once.
#[tokio::test]
async fn memory_store_outcomes_in_any_order_finish_each_run_once() {
    use apsched::ledger::{RunFilter, RunOutcome, RunState};

    let store = started().await;
    for i in 0..300 {
        store
            .add_job(suite::date_job(&format!("j{i}"), suite::at(0)), false)
            .await
            .unwrap();
    }
    let due = store.acquire_due_jobs(suite::at(0), 1000).await.unwrap();
    let runs: Vec<_> = due.iter().flat_map(|d| d.runs.clone()).collect();
    assert_eq!(runs.len(), 300);
    store.release_jobs(&due).await.unwrap();
    let ids: Vec<_> = runs.iter().map(|r| r.run_id).collect();
    assert_eq!(
        store.start_runs(&ids, suite::at(0)).await.unwrap().len(),
        300
    );
    let outcome = |r: &apsched::ledger::RunRecord, state| {
        RunOutcome::new(r.run_id, r.job_id.clone(), state, suite::at(1))
    };
    // The last 100 first, newest first (far from where the journal's order would look),
    // then the first 200 in order, each followed by a later, conflicting outcome.
    let mut first: Vec<RunOutcome> = runs[200..]
        .iter()
        .rev()
        .map(|r| outcome(r, RunState::Executed))
        .collect();
    for r in &runs[..200] {
        first.push(outcome(r, RunState::Executed));
        first.push(outcome(r, RunState::Error));
    }
    store.finish_runs(&first).await.unwrap();
    // Written again (a retried write): nothing changes.
    let again: Vec<_> = runs.iter().map(|r| outcome(r, RunState::Missed)).collect();
    store.finish_runs(&again).await.unwrap();
    let all = store
        .query_runs(&RunFilter::new().limit(1000))
        .await
        .unwrap();
    assert_eq!(all.len(), 300);
    assert!(
        all.iter().all(|r| r.state == RunState::Executed
            && r.finished_at == Some(suite::at(1))
            && r.started_at == Some(suite::at(0))),
        "{:?}",
        all.iter().find(|r| r.state != RunState::Executed)
    );
}
