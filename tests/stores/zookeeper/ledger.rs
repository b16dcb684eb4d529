//! The ZooKeeper store's run ledger: records written with the claim, starts and outcomes,
//! overlap policies across two schedulers, takeover, promotion, pruning, and its faults
//! (a record of the wrong shape; a claim whose records cannot be written).

use std::time::Duration;

use apsched::ledger::{RunFilter, RunOutcome, RunRetention, RunState};
use apsched::store::{JobStore, ZooKeeperStore};
use apsched::Overlap;
use zookeeper_client as zk;

use super::{available, cleanup, connect, hosts, open, root};
use crate::suite;

async fn ledger_store(
    root: &str,
    id: &str,
    retention: RunRetention,
) -> (ZooKeeperStore, suite::TestContext) {
    let ctx = suite::TestContext::new("zookeeper", id, Duration::from_secs(30))
        .with_ledger(true, retention);
    let s = ZooKeeperStore::new(&hosts()).unwrap().with_root(root);
    s.start(ctx.context()).await.unwrap();
    (s, ctx)
}

fn job(id: &str, max: u32, overlap: Overlap) -> apsched::job::JobRecord {
    let mut j = suite::interval_job(id, 60, Some(suite::at(0)));
    j.max_instances = max;
    j.overlap = overlap;
    j
}

/// A claim writes its record in the same step; it reads back equal; start and finish
/// move it; queries page newest first; an unknown outcome id is ignored.
#[tokio::test]
async fn zookeeper_ledger_claim_start_finish_query() {
    if !available().await {
        return;
    }
    let r = root();
    let (s, _ctx) = ledger_store(&r, "s1", RunRetention::default()).await;
    assert!(s.keeps_runs());
    s.add_job(job("a", 1, Overlap::Skip), false).await.unwrap();
    s.tick_runs(suite::at(0)).await.unwrap();
    let due = s.acquire_due_jobs(suite::at(0), 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].runs.len(), 1);
    let run = due[0].runs[0].clone();
    assert_eq!(run.state, RunState::Claimed);
    assert_eq!(run.owner, "s1");
    assert_eq!(s.get_run(run.run_id).await.unwrap(), Some(run.clone()));

    // A second claim while the first run holds the one instance is skipped.
    let due2 = s.acquire_due_jobs(suite::at(60), 10).await.unwrap();
    assert_eq!(due2[0].runs.len(), 1);
    assert_eq!(due2[0].runs[0].state, RunState::Skipped);

    let now = suite::at(61);
    assert_eq!(
        s.start_runs(&[run.run_id, due2[0].runs[0].run_id], now)
            .await
            .unwrap(),
        vec![run.run_id]
    );
    let mut expect = run.clone();
    expect.state = RunState::Started;
    expect.started_at = Some(now);
    assert_eq!(s.get_run(run.run_id).await.unwrap(), Some(expect.clone()));

    let done = RunOutcome::new(run.run_id, "a", RunState::Executed, suite::at(62))
        .output(&serde_json::json!({"ok": true}));
    let ghost = RunOutcome::new(apsched::RunId::from_raw(7), "a", RunState::Error, now);
    s.finish_runs(&[done.clone(), ghost]).await.unwrap();
    expect.apply(&done);
    assert_eq!(s.get_run(run.run_id).await.unwrap(), Some(expect.clone()));
    // The first terminal state wins.
    s.finish_runs(&[RunOutcome::new(run.run_id, "a", RunState::Error, now)])
        .await
        .unwrap();
    assert_eq!(s.get_run(run.run_id).await.unwrap(), Some(expect.clone()));

    let all = s.query_runs(&RunFilter::new().job("a")).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].scheduled, suite::at(60), "newest first");
    let page = s.query_runs(&RunFilter::new().limit(1)).await.unwrap();
    assert_eq!(page.len(), 1);
    let next = s
        .query_runs(&RunFilter::new().after(&page[0]))
        .await
        .unwrap();
    assert_eq!(next, vec![expect.clone()]);
    let executed = s
        .query_runs(&RunFilter::new().state(RunState::Executed))
        .await
        .unwrap();
    assert_eq!(executed, vec![expect]);
    assert!(s
        .query_runs(&RunFilter::new().job("nobody"))
        .await
        .unwrap()
        .is_empty());
    // Removing the job keeps its history.
    s.remove_job("a").await.unwrap();
    assert_eq!(
        s.query_runs(&RunFilter::new().job("a"))
            .await
            .unwrap()
            .len(),
        2
    );
    s.shutdown().await.unwrap();
    cleanup(&r).await;
}

/// Manual runs obey max_instances across two schedulers: many concurrent `run_now`s of a
/// job with one instance make exactly one run that holds it; the rest are skipped.
#[tokio::test]
async fn zookeeper_ledger_manual_runs_are_serialised() {
    if !available().await {
        return;
    }
    let r = root();
    let (a, _ca) = ledger_store(&r, "a", RunRetention::default()).await;
    let (b, _cb) = ledger_store(&r, "b", RunRetention::default()).await;
    a.add_job(job("m", 1, Overlap::Skip), false).await.unwrap();
    let now = suite::at(0);
    let slots = [now];
    let tasks = (0..8).map(|i| {
        let s = if i % 2 == 0 { &a } else { &b };
        s.add_manual_runs("m", &slots, now)
    });
    let made: Vec<_> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .flat_map(Result::unwrap)
        .collect();
    assert_eq!(made.len(), 8);
    let holding = made.iter().filter(|r| r.state == RunState::Claimed).count();
    assert_eq!(holding, 1, "{made:?}");
    assert!(made.iter().all(|r| r.manual));
    // A claim of the job sees the manual run holding the instance.
    let due = b.acquire_due_jobs(now, 10).await.unwrap();
    assert_eq!(due[0].runs[0].state, RunState::Skipped);
    // The job's schedule did not move for the manual runs.
    assert!(matches!(
        a.add_manual_runs("nobody", &[now], now).await,
        Err(apsched::Error::JobLookup(_))
    ));
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    cleanup(&r).await;
}

/// BufferOne queues one run; when the running one finishes, the pass promotes it.
/// CancelOther flags the started run, and its owner's pass reports it.
#[tokio::test]
async fn zookeeper_ledger_queue_promotion_and_cancel() {
    if !available().await {
        return;
    }
    let r = root();
    let (s, _c) = ledger_store(&r, "s1", RunRetention::default()).await;
    s.tick_runs(suite::at(0)).await.unwrap();
    s.add_job(job("q", 1, Overlap::BufferOne), false)
        .await
        .unwrap();
    let due = s.acquire_due_jobs(suite::at(0), 10).await.unwrap();
    let first = due[0].runs[0].clone();
    s.start_runs(&[first.run_id], suite::at(0)).await.unwrap();
    let manual = s
        .add_manual_runs("q", &[suite::at(1), suite::at(2)], suite::at(2))
        .await
        .unwrap();
    assert_eq!(manual.len(), 2);
    assert!(manual[0].queued && manual[0].state == RunState::Claimed);
    assert_eq!(manual[1].state, RunState::Skipped);
    let tick = s.tick_runs(suite::at(3)).await.unwrap();
    assert!(tick.promoted.is_empty(), "no free instance yet");
    s.finish_runs(&[RunOutcome::new(
        first.run_id,
        "q",
        RunState::Executed,
        suite::at(4),
    )])
    .await
    .unwrap();
    let tick = s.tick_runs(suite::at(5)).await.unwrap();
    assert_eq!(tick.promoted.len(), 1);
    assert_eq!(tick.promoted[0].run_id, manual[0].run_id);
    assert!(!tick.promoted[0].queued);
    assert_eq!(
        s.get_run(manual[0].run_id).await.unwrap(),
        Some(tick.promoted[0].clone())
    );
    assert!(s.tick_runs(suite::at(6)).await.unwrap().promoted.is_empty());

    // CancelOther: a new run asks the started one to stop.
    s.add_job(job("c", 1, Overlap::CancelOther), false)
        .await
        .unwrap();
    let due = s.acquire_due_jobs(suite::at(0), 10).await.unwrap();
    let running = due.iter().find(|d| d.job.id == "c").unwrap().runs[0].clone();
    s.start_runs(&[running.run_id], suite::at(0)).await.unwrap();
    let next = s
        .add_manual_runs("c", &[suite::at(7)], suite::at(7))
        .await
        .unwrap();
    assert!(next[0].queued);
    assert!(
        s.get_run(running.run_id)
            .await
            .unwrap()
            .unwrap()
            .cancel_requested
    );
    let tick = s.tick_runs(suite::at(8)).await.unwrap();
    assert_eq!(tick.cancel, vec![running.run_id]);
    s.shutdown().await.unwrap();
    cleanup(&r).await;
}

/// A scheduler stops heartbeating: the next scheduler's pass takes its claimed run (to
/// dispatch) and marks its started run abandoned; a live owner's runs are left alone.
#[tokio::test]
async fn zookeeper_ledger_takeover() {
    if !available().await {
        return;
    }
    let r = root();
    let (a, _ca) = ledger_store(&r, "a", RunRetention::default()).await;
    let (b, _cb) = ledger_store(&r, "b", RunRetention::default()).await;
    a.tick_runs(suite::at(0)).await.unwrap();
    a.add_job(job("x", 5, Overlap::Skip), false).await.unwrap();
    a.add_job(job("y", 5, Overlap::Skip), false).await.unwrap();
    let due = a.acquire_due_jobs(suite::at(0), 10).await.unwrap();
    let runs: Vec<_> = due.iter().map(|d| d.runs[0].clone()).collect();
    a.start_runs(&[runs[0].run_id], suite::at(0)).await.unwrap();

    // a is alive until at(30).
    let tick = b.tick_runs(suite::at(10)).await.unwrap();
    assert!(tick.dispatch.is_empty() && tick.abandoned.is_empty());

    let tick = b.tick_runs(suite::at(40)).await.unwrap();
    assert_eq!(tick.dispatch.len(), 1);
    assert_eq!(tick.dispatch[0].run_id, runs[1].run_id);
    assert_eq!(tick.dispatch[0].owner, "b");
    assert_eq!(tick.abandoned.len(), 1);
    let abandoned = &tick.abandoned[0];
    assert_eq!(abandoned.run_id, runs[0].run_id);
    assert_eq!(abandoned.state, RunState::Abandoned);
    assert_eq!(abandoned.finished_at, Some(suite::at(40)));
    assert!(abandoned
        .error
        .as_deref()
        .unwrap()
        .contains("its scheduler a stopped"));
    assert_eq!(
        b.get_run(abandoned.run_id).await.unwrap().as_ref(),
        Some(abandoned)
    );
    // a comes back: its start of the taken run changes nothing, its outcome is refused.
    assert!(a
        .start_runs(&[runs[1].run_id], suite::at(41))
        .await
        .unwrap()
        .is_empty());
    a.finish_runs(&[RunOutcome::new(
        runs[0].run_id,
        "x",
        RunState::Executed,
        suite::at(42),
    )])
    .await
    .unwrap();
    assert_eq!(
        a.get_run(runs[0].run_id).await.unwrap().unwrap().state,
        RunState::Abandoned
    );
    // Nothing is taken twice.
    let tick = b.tick_runs(suite::at(50)).await.unwrap();
    assert!(tick.dispatch.is_empty() && tick.abandoned.is_empty());
    assert_eq!(
        b.start_runs(&[runs[1].run_id], suite::at(51))
            .await
            .unwrap(),
        vec![runs[1].run_id]
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    cleanup(&r).await;
}

/// The pass keeps the newest `per_job` finished runs of each job and none older than the
/// age limit; active runs stay.
#[tokio::test]
async fn zookeeper_ledger_prunes() {
    if !available().await {
        return;
    }
    let r = root();
    let retention = RunRetention::default()
        .per_job(2)
        .max_age(Some(Duration::from_secs(3600)));
    let (s, _c) = ledger_store(&r, "s1", retention).await;
    s.tick_runs(suite::at(0)).await.unwrap();
    s.add_job(job("p", 10, Overlap::Skip), false).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        let due = s.acquire_due_jobs(suite::at(60 * i), 10).await.unwrap();
        ids.push(due[0].runs[0].run_id);
    }
    let outcomes: Vec<_> = ids[..4]
        .iter()
        .enumerate()
        .map(|(i, id)| RunOutcome::new(*id, "p", RunState::Executed, suite::at(60 * i as i64 + 1)))
        .collect();
    s.finish_runs(&outcomes).await.unwrap();
    s.tick_runs(suite::at(300)).await.unwrap();
    let left: Vec<_> = s
        .query_runs(&RunFilter::new().job("p"))
        .await
        .unwrap()
        .iter()
        .map(|r| r.run_id)
        .collect();
    assert_eq!(
        left,
        vec![ids[4], ids[3], ids[2]],
        "active + newest 2 finished"
    );
    // An hour later the finished ones are too old; the active one stays.
    s.tick_runs(suite::at(3600 + 200)).await.unwrap();
    let left: Vec<_> = s
        .query_runs(&RunFilter::new().job("p"))
        .await
        .unwrap()
        .iter()
        .map(|r| r.run_id)
        .collect();
    assert_eq!(left, vec![ids[4]]);
    s.shutdown().await.unwrap();
    cleanup(&r).await;
}

/// A record of the wrong shape, written raw: queries skip it and report it once, and it
/// stays in place.
#[tokio::test]
async fn zookeeper_ledger_bad_record_is_skipped_and_kept() {
    if !available().await {
        return;
    }
    let r = root();
    let (s, ctx) = ledger_store(&r, "s1", RunRetention::default()).await;
    let mut rx = ctx.subscribe(apsched::event::EventKind::STORE_ERROR);
    s.add_job(job("a", 1, Overlap::Skip), false).await.unwrap();
    let due = s.acquire_due_jobs(suite::at(0), 10).await.unwrap();
    let good = due[0].runs[0].clone();
    let c = connect(&hosts()).await.unwrap();
    let bad = format!("{r}/runs/{:020}", 99);
    c.create(&bad, br#"{"run_id": 99, "state": 3}"#, &open())
        .await
        .unwrap();
    let t = suite::at(30).timestamp_micros();
    c.create(&format!("{r}/history/j-a/{t:020}~{:020}", 99), &[], &open())
        .await
        .unwrap();
    for _ in 0..2 {
        let runs = s.query_runs(&RunFilter::new().job("a")).await.unwrap();
        assert_eq!(runs, vec![good.clone()]);
    }
    let errors = crate::nosql::store_errors(&mut rx);
    assert_eq!(errors.len(), 1, "reported once: {errors:?}");
    assert_eq!(errors[0].0, "a");
    assert!(c.get_data(&bad).await.is_ok(), "kept");
    s.shutdown().await.unwrap();
    cleanup(&r).await;
}

/// The claim and its records are one `multi`: when the records cannot be written (`R/runs`
/// refuses creates), the claim fails as a whole and the job's next run time stays.
#[tokio::test]
async fn zookeeper_ledger_claim_and_records_are_atomic() {
    if !available().await {
        return;
    }
    let r = root();
    let (s, _c) = ledger_store(&r, "s1", RunRetention::default()).await;
    s.add_job(job("a", 1, Overlap::Skip), false).await.unwrap();
    let c = connect(&hosts()).await.unwrap();
    let runs = format!("{r}/runs");
    let no_create = [zk::Acl::new(
        zk::Permission::READ
            | zk::Permission::WRITE
            | zk::Permission::DELETE
            | zk::Permission::ADMIN,
        zk::AuthId::anyone(),
    )];
    c.set_acl(&runs, &no_create, None).await.unwrap();
    assert!(s.acquire_due_jobs(suite::at(0), 10).await.is_err());
    let j = s.lookup_job("a").await.unwrap().unwrap();
    assert_eq!(j.next_run_time, Some(suite::at(0)), "not advanced");
    assert!(c.list_children(&runs).await.unwrap().is_empty());
    c.set_acl(&runs, &zk::Acls::anyone_all(), None)
        .await
        .unwrap();
    let due = s.acquire_due_jobs(suite::at(0), 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert!(s.get_run(due[0].runs[0].run_id).await.unwrap().is_some());
    s.shutdown().await.unwrap();
    cleanup(&r).await;
}

/// The run ledger's contract, every namespace a root of its own under one base (removed
/// at the end), shared by the stores opened with it.
#[tokio::test]
async fn zookeeper_ledger_contract() {
    if !available().await {
        return;
    }
    let base = root();
    suite::ledger_contract(
        |namespace, ctx| {
            let r = format!("{base}/{namespace}");
            async move {
                let s = ZooKeeperStore::new(&hosts()).unwrap().with_root(r);
                s.start(ctx).await.unwrap();
                s
            }
        },
        true,
    )
    .await;
    cleanup(&base).await;
}

/// Claims of one scheduler and manual runs of another, at the same time on one job with
/// one instance: the job's ledger lock serialises them, so exactly one run holds the
/// instance, whichever wins.
#[tokio::test]
async fn zookeeper_ledger_claims_and_manual_runs_are_serialised() {
    if !available().await {
        return;
    }
    let r = root();
    let (a, _ca) = ledger_store(&r, "a", RunRetention::default()).await;
    let (b, _cb) = ledger_store(&r, "b", RunRetention::default()).await;
    let ids: Vec<String> = (0..6).map(|i| format!("j{i}")).collect();
    for id in &ids {
        a.add_job(job(id, 1, Overlap::Skip), false).await.unwrap();
    }
    let now = suite::at(0);
    let slots = [now];
    let manual = futures::future::join_all(ids.iter().map(|id| a.add_manual_runs(id, &slots, now)));
    let (made, due) = tokio::join!(manual, b.acquire_due_jobs(now, 100));
    let due = due.unwrap();
    assert_eq!(due.len(), ids.len(), "every job claimed once");
    for m in made {
        m.unwrap();
    }
    for id in &ids {
        let runs = a
            .query_runs(&RunFilter::new().job(id.as_str()))
            .await
            .unwrap();
        assert_eq!(runs.len(), 2, "{runs:?}");
        let holding = runs.iter().filter(|r| r.state == RunState::Claimed).count();
        assert_eq!(holding, 1, "{runs:?}");
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    cleanup(&r).await;
}

/// A marker left behind by hand (its run finished) would hold the job's one instance for
/// ever: the pass removes it. Heartbeats expired for over a day are removed too.
#[tokio::test]
async fn zookeeper_ledger_pass_removes_stale_markers_and_heartbeats() {
    if !available().await {
        return;
    }
    let r = root();
    let (s, _c) = ledger_store(&r, "s1", RunRetention::default()).await;
    s.add_job(job("a", 1, Overlap::Skip), false).await.unwrap();
    s.tick_runs(suite::at(0)).await.unwrap();
    let first = s.acquire_due_jobs(suite::at(0), 10).await.unwrap()[0].runs[0].clone();
    s.finish_runs(&[RunOutcome::new(
        first.run_id,
        "a",
        RunState::Executed,
        suite::at(1),
    )])
    .await
    .unwrap();
    let c = connect(&hosts()).await.unwrap();
    let marker = format!("{r}/active/j-a/{:020}~r", first.run_id.get());
    c.create(&marker, &[], &open()).await.unwrap();
    let old = format!("{r}/owners/s-gone");
    c.create(&old, br#"{"alive_until": 0}"#, &open())
        .await
        .unwrap();
    let due = s.acquire_due_jobs(suite::at(60), 10).await.unwrap();
    assert_eq!(
        due[0].runs[0].state,
        RunState::Skipped,
        "the stale marker counts"
    );
    s.tick_runs(suite::at(61)).await.unwrap();
    assert!(c.get_data(&marker).await.is_err(), "marker removed");
    assert!(c.get_data(&old).await.is_err(), "old heartbeat removed");
    let due = s.acquire_due_jobs(suite::at(120), 10).await.unwrap();
    assert_eq!(due[0].runs[0].state, RunState::Claimed);
    s.shutdown().await.unwrap();
    cleanup(&r).await;
}

/// Starting and finishing the runs a store claimed itself is one `multi` each, without
/// reading the records first (it knows what it wrote and the version): shown with a record
/// nobody may read. A store that did not write it reads it, and fails.
#[tokio::test]
async fn zookeeper_ledger_start_and_finish_need_no_read() {
    if !available().await {
        return;
    }
    let r = root();
    let (s, _c) = ledger_store(&r, "s1", RunRetention::default()).await;
    s.add_job(job("a", 1, Overlap::Skip), false).await.unwrap();
    let run = s.acquire_due_jobs(suite::at(0), 10).await.unwrap()[0].runs[0].clone();
    let c = connect(&hosts()).await.unwrap();
    let path = format!("{r}/runs/{:020}", run.run_id.get());
    let unreadable = [zk::Acl::new(
        zk::Permission::WRITE | zk::Permission::DELETE | zk::Permission::ADMIN,
        zk::AuthId::anyone(),
    )];
    c.set_acl(&path, &unreadable, None).await.unwrap();
    let (other, _c2) = ledger_store(&r, "s1", RunRetention::default()).await;
    assert!(
        other.start_runs(&[run.run_id], suite::at(1)).await.is_err(),
        "a store that did not write the record must read it"
    );
    assert_eq!(
        s.start_runs(&[run.run_id], suite::at(1)).await.unwrap(),
        vec![run.run_id]
    );
    s.finish_runs(&[RunOutcome::new(
        run.run_id,
        "a",
        RunState::Executed,
        suite::at(2),
    )])
    .await
    .unwrap();
    c.set_acl(&path, &zk::Acls::anyone_all(), None)
        .await
        .unwrap();
    let stored = s.get_run(run.run_id).await.unwrap().unwrap();
    assert_eq!(stored.state, RunState::Executed);
    assert_eq!(stored.started_at, Some(suite::at(1)));
    assert!(c
        .list_children(&format!("{r}/active/j-a"))
        .await
        .unwrap()
        .is_empty());
    s.shutdown().await.unwrap();
    other.shutdown().await.unwrap();
    cleanup(&r).await;
}

/// End to end: a scheduler on ZooKeeper records its scheduled runs and a `run_now`, and
/// `run_now`'s handle gets the outcome with the task's return value.
#[tokio::test]
async fn zookeeper_ledger_scheduler_records_runs() {
    if !available().await {
        return;
    }
    let r = root();
    let store = ZooKeeperStore::new(&hosts()).unwrap().with_root(&r);
    let s = apsched::Scheduler::builder()
        .store("default", store)
        .scheduler_id("e2e")
        .lease(Duration::from_secs(3))
        .task("answer", |_: serde_json::Value| async {
            Ok::<_, String>(42)
        })
        .build();
    s.start().await.unwrap();
    s.add_task_job("answer", ())
        .id("q")
        .trigger(apsched::trigger::Interval::new(Duration::from_secs(3600)).unwrap())
        .await
        .unwrap();
    let run = s.job("q").run_now().await.unwrap();
    let done = tokio::time::timeout(Duration::from_secs(10), run.outcome())
        .await
        .expect("the outcome arrives")
        .unwrap();
    assert_eq!(done.state, RunState::Executed);
    assert!(done.manual);
    assert_eq!(run.output::<u32>().await.unwrap(), Some(42));
    let runs = s.job("q").runs(RunFilter::new()).await.unwrap();
    assert!(runs.iter().any(|x| x.run_id == done.run_id), "{runs:?}");
    s.shutdown().await.unwrap();
    cleanup(&r).await;
}

/// A retry ([`JobStore::add_runs`]) is written under the job's ledger lock (its data version
/// moves, so a claim that read it before plans again) with a marker holding an instance;
/// two schedulers writing the same slot's retry at once store it once, and a repeat writes
/// nothing.
#[tokio::test]
async fn zookeeper_ledger_retries_take_the_lock_once_per_slot() {
    if !available().await {
        return;
    }
    let r = root();
    let (a, _ca) = ledger_store(&r, "a", RunRetention::default()).await;
    let (b, _cb) = ledger_store(&r, "b", RunRetention::default()).await;
    a.add_job(job("j", 1, Overlap::Skip), false).await.unwrap();
    a.tick_runs(suite::at(0)).await.unwrap();
    let first = a.acquire_due_jobs(suite::at(0), 10).await.unwrap()[0].runs[0].clone();
    a.start_runs(&[first.run_id], suite::at(1)).await.unwrap();
    let c = connect(&hosts()).await.unwrap();
    let lock = format!("{r}/active/j-j");
    let before = data_version(&c, &lock).await;
    let retry = first.retry("a", suite::at(2), suite::at(30));
    let mut copy = first.retry("b", suite::at(2), suite::at(31));
    copy.attempt = retry.attempt;
    let (x, y) = tokio::join!(
        a.add_runs(std::slice::from_ref(&retry)),
        b.add_runs(std::slice::from_ref(&copy))
    );
    x.unwrap();
    y.unwrap();
    let runs = a.query_runs(&RunFilter::new().job("j")).await.unwrap();
    assert_eq!(runs.len(), 2, "one retry for the slot: {runs:?}");
    let stored = runs.iter().find(|r| r.attempt == 2).unwrap().clone();
    assert!(stored == retry || stored == copy, "{stored:?}");
    assert_eq!(
        data_version(&c, &lock).await,
        before + 1,
        "one write, under the lock"
    );
    let marker = format!("{r}/active/j-j/{:020}~r", stored.run_id.get());
    assert!(c.get_data(&marker).await.is_ok(), "it holds an instance");
    let (data, _) = c
        .get_data(&format!("{r}/runs/{:020}", stored.run_id.get()))
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&data).contains("\"retry_at\""),
        "the record carries its time"
    );
    a.add_runs(&[retry, copy]).await.unwrap();
    assert_eq!(
        data_version(&c, &lock).await,
        before + 1,
        "a repeat writes nothing"
    );
    a.finish_runs(&[RunOutcome::new(
        first.run_id,
        "j",
        RunState::Error,
        suite::at(2),
    )])
    .await
    .unwrap();
    let due = b.acquire_due_jobs(suite::at(60), 10).await.unwrap();
    assert_eq!(
        due[0].runs[0].state,
        RunState::Skipped,
        "the retry holds the instance"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    cleanup(&r).await;
}

async fn data_version(c: &zk::Client, path: &str) -> i32 {
    c.get_data(path).await.unwrap().1.version
}
