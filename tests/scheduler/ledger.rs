//! The run ledger seen from the scheduler (issue 11), on the memory store in virtual time:
//! every run's record and outcome, run now, backfill, the overlap policies, events joined to
//! records by run id, reading and aggregates. (The store side, every store, is the ledger
//! contract in the `stores` binary; across processes, its multi-process test.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use apsched::clock::TestClock;
use apsched::ledger::{RunFilter, RunRecord, RunState};
use apsched::trigger::{Cron, Interval};
use apsched::{Error, Event, EventKind, JobContext, Overlap, Scheduler};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 15, 10, 0, 0).unwrap()
}

fn secs(n: i64) -> DateTime<Utc> {
    t0() + TimeDelta::seconds(n)
}

fn scheduler(clock: &TestClock) -> Scheduler {
    Scheduler::builder()
        .timezone(chrono_tz::UTC)
        .clock(clock.shared())
        .build()
}

/// Waits (in virtual time) until job `id` has `n` finished runs, and returns its runs
/// oldest first.
async fn finished_runs(s: &Scheduler, id: &str, n: usize) -> Vec<RunRecord> {
    for _ in 0..10_000 {
        let mut runs = s.job(id).runs(RunFilter::new().limit(1000)).await.unwrap();
        if runs.iter().filter(|r| r.state.is_terminal()).count() >= n {
            runs.reverse();
            return runs;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("job {id} never had {n} finished runs");
}

#[tokio::test(start_paused = true)]
async fn every_run_is_recorded_with_its_outcome() {
    let clock = TestClock::new(t0());
    let s = scheduler(&clock);
    let mut events =
        s.subscribe(EventKind::JOB_EXECUTED | EventKind::JOB_ERROR | EventKind::JOB_SUBMITTED);
    s.start().await.unwrap();
    let n = Arc::new(AtomicUsize::new(0));
    let counter = n.clone();
    s.add_job(move || {
        let counter = counter.clone();
        async move {
            let i = counter.fetch_add(1, Ordering::SeqCst);
            if i == 1 {
                Err(format!("run {i} failed"))
            } else {
                Ok(serde_json::json!({"run": i}))
            }
        }
    })
    .trigger(Interval::new(Duration::from_secs(60)).unwrap())
    .next_run_time(t0())
    .id("report")
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(150)).await;
    let runs = finished_runs(&s, "report", 3).await;
    assert_eq!(
        runs.iter()
            .map(|r| (r.scheduled, r.state))
            .collect::<Vec<_>>(),
        vec![
            (secs(0), RunState::Executed),
            (secs(60), RunState::Error),
            (secs(120), RunState::Executed)
        ]
    );
    assert_eq!(runs[0].output.as_deref(), Some(r#"{"run":0}"#));
    assert_eq!(
        runs[2].output_as::<serde_json::Value>(),
        Some(serde_json::json!({"run": 2}))
    );
    assert!(
        runs[1].error.as_deref().unwrap().contains("run 1 failed"),
        "{:?}",
        runs[1]
    );
    for r in &runs {
        assert_eq!(r.owner, s.id());
        assert!(!r.manual);
        assert_eq!(r.attempt, 1);
        assert_eq!(r.lateness(), Some(Duration::ZERO));
        assert!(r.finished_at.is_some());
    }
    // The events carry the records' run ids.
    let mut submitted = Vec::new();
    let mut ended = Vec::new();
    while let Ok(ev) = events.try_recv() {
        match ev {
            Event::JobSubmitted { run_ids, .. } => submitted.extend(run_ids),
            other => ended.push(other.run_id().expect("an outcome event names its run")),
        }
    }
    let ids: Vec<_> = runs.iter().map(|r| r.run_id).collect();
    assert_eq!(submitted, ids);
    assert_eq!(ended, ids);
    assert_eq!(s.run(ids[1]).await.unwrap().unwrap().state, RunState::Error);
    s.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn run_now_does_not_move_the_schedule_and_returns_the_result() {
    let clock = TestClock::new(t0());
    let s = scheduler(&clock);
    s.start().await.unwrap();
    s.add_job(|ctx: JobContext| async move {
        assert!(ctx.is_manual());
        Ok::<_, String>(ctx.run_id().get() % 1000)
    })
    .trigger(Cron::builder().hour("3").build().unwrap())
    .id("export")
    .await
    .unwrap();
    let before = s.job("export").get().await.unwrap().unwrap().next_run_time;
    let run = s.job("export").run_now().await.unwrap();
    assert_eq!(run.created().state, RunState::Claimed);
    assert!(run.created().manual);
    let done = run.outcome().await.unwrap();
    assert_eq!(done.state, RunState::Executed);
    assert_eq!(
        run.output::<u64>().await.unwrap(),
        Some(run.run_id().get() % 1000)
    );
    assert_eq!(
        s.job("export").get().await.unwrap().unwrap().next_run_time,
        before
    );
    let manual = s.runs(RunFilter::new().manual(true)).await.unwrap();
    assert_eq!(manual.len(), 1);
    // Unknown jobs and a stopped scheduler are clear errors.
    assert!(matches!(
        s.job("nope").run_now().await,
        Err(Error::JobLookup(_))
    ));
    s.shutdown().await.unwrap();
    assert!(matches!(
        s.job("export").run_now().await,
        Err(Error::State { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn run_now_obeys_max_instances_and_the_overlap_policy() {
    let clock = TestClock::new(t0());
    let s = scheduler(&clock);
    let mut max = s.subscribe(EventKind::JOB_MAX_INSTANCES);
    s.start().await.unwrap();
    for (id, overlap) in [("skip", Overlap::Skip), ("buffer", Overlap::BufferOne)] {
        s.add_job(|| async { tokio::time::sleep(Duration::from_secs(30)).await })
            .trigger(Cron::builder().hour("3").build().unwrap())
            .overlap(overlap)
            .id(id)
            .await
            .unwrap();
    }
    let first = s.job("skip").run_now().await.unwrap();
    let second = s.job("skip").run_now().await.unwrap();
    assert_eq!(first.created().state, RunState::Claimed);
    assert_eq!(second.created().state, RunState::Skipped);
    assert_eq!(second.outcome().await.unwrap().state, RunState::Skipped);
    assert!(
        matches!(max.recv().await.unwrap(), Event::JobMaxInstances { run_ids, .. } if run_ids == vec![second.run_id()])
    );

    let a = s.job("buffer").run_now().await.unwrap();
    let b = s.job("buffer").run_now().await.unwrap();
    let c = s.job("buffer").run_now().await.unwrap();
    assert!(b.created().queued, "BufferOne queues one run");
    assert_eq!(c.created().state, RunState::Skipped, "and skips the next");
    let a_done = a.outcome().await.unwrap();
    let b_done = b.outcome().await.unwrap();
    assert_eq!(
        (a_done.state, b_done.state),
        (RunState::Executed, RunState::Executed)
    );
    assert!(
        b_done.started_at.unwrap() >= a_done.finished_at.unwrap(),
        "the queued run waited for the first"
    );
    s.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn overlap_policies_on_a_job_longer_than_its_interval() {
    // A job taking 25 s every 10 s, for 60 s: how many runs start, and how they end.
    async fn run(overlap: Overlap) -> Vec<RunRecord> {
        let clock = TestClock::new(t0());
        let s = scheduler(&clock);
        s.start().await.unwrap();
        s.add_job(|ctx: JobContext| async move {
            tokio::select! {
                _ = ctx.cancelled() => Err("stopped".to_string()),
                _ = tokio::time::sleep(Duration::from_secs(25)) => Ok(()),
            }
        })
        .trigger(
            Interval::builder()
                .seconds(10)
                .end_date(secs(50))
                .build()
                .unwrap(),
        )
        .next_run_time(t0())
        .overlap(overlap)
        .misfire_grace_time(None)
        .id("long")
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_secs(400)).await;
        let runs = finished_runs(&s, "long", 6).await;
        s.shutdown().await.unwrap();
        runs
    }
    let count = |runs: &[RunRecord], st| runs.iter().filter(|r| r.state == st).count();

    let skip = run(Overlap::Skip).await;
    assert_eq!(skip.len(), 6, "one record per slot");
    assert_eq!(
        (
            count(&skip, RunState::Executed),
            count(&skip, RunState::Skipped)
        ),
        (2, 4)
    );

    let all = run(Overlap::AllowAll).await;
    assert_eq!(count(&all, RunState::Executed), 6, "{all:#?}");

    let buffer_all = run(Overlap::BufferAll).await;
    assert_eq!(count(&buffer_all, RunState::Executed), 6, "{buffer_all:#?}");
    // One at a time: each starts when the one before has finished.
    for w in buffer_all.windows(2) {
        assert!(
            w[1].started_at.unwrap() >= w[0].finished_at.unwrap(),
            "{w:?}"
        );
    }

    let buffer_one = run(Overlap::BufferOne).await;
    assert_eq!(
        count(&buffer_one, RunState::Executed) + count(&buffer_one, RunState::Skipped),
        6
    );
    assert!(count(&buffer_one, RunState::Skipped) >= 1);

    let cancel = run(Overlap::CancelOther).await;
    assert_eq!(count(&cancel, RunState::Cancelled), 5, "{cancel:?}");
    assert_eq!(cancel.last().unwrap().state, RunState::Executed);
}

#[tokio::test(start_paused = true)]
async fn missed_runs_and_coalesced_slots_are_recorded() {
    let clock = TestClock::new(t0());
    let s = scheduler(&clock);
    s.add_job(|| async {})
        .trigger(Interval::new(Duration::from_secs(10)).unwrap())
        .next_run_time(t0())
        .id("late")
        .await
        .unwrap();
    // The scheduler starts 35 s late: three slots were missed and coalesced into the last.
    clock.advance(Duration::from_secs(35)).await;
    s.start().await.unwrap();
    let runs = finished_runs(&s, "late", 4).await;
    let states: Vec<_> = runs.iter().map(|r| r.state).collect();
    assert_eq!(
        states,
        vec![
            RunState::Missed,
            RunState::Missed,
            RunState::Missed,
            RunState::Missed
        ],
        "{runs:?}"
    );
    assert!(runs[..3]
        .iter()
        .all(|r| r.error.as_deref().unwrap().contains("coalesced")));
    assert!(
        runs[3]
            .error
            .as_deref()
            .unwrap()
            .contains("misfire_grace_time"),
        "{:?}",
        runs[3]
    );
    assert_eq!(runs[3].started_at, None);
    s.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn backfill_runs_every_slot_of_a_past_window() {
    let clock = TestClock::new(t0());
    let s = scheduler(&clock);
    s.start().await.unwrap();
    s.add_job(|ctx: JobContext| async move { ctx.scheduled_run_time().to_rfc3339() })
        .trigger(Cron::builder().minute("*/15").build().unwrap())
        .overlap(Overlap::BufferAll)
        .id("rollup")
        .await
        .unwrap();
    let from = t0() - TimeDelta::hours(1);
    let handles = s
        .job("rollup")
        .backfill(from, t0() - TimeDelta::seconds(1))
        .await
        .unwrap();
    assert_eq!(handles.len(), 4);
    let mut outs = Vec::new();
    for h in &handles {
        let r = h.outcome().await.unwrap();
        assert_eq!((r.state, r.manual), (RunState::Executed, true));
        outs.push(h.output::<String>().await.unwrap().unwrap());
    }
    assert_eq!(
        outs,
        (0..4)
            .map(|i| (from + TimeDelta::minutes(15 * i)).to_rfc3339())
            .collect::<Vec<_>>()
    );
    assert!(matches!(
        s.job("rollup").backfill(t0(), from).await,
        Err(Error::InvalidJob { .. })
    ));
    assert!(s.job("rollup").backfill(from, from).await.unwrap().len() == 1);
    s.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn paging_and_aggregates() {
    let clock = TestClock::new(t0());
    let s = scheduler(&clock);
    s.start().await.unwrap();
    let n = Arc::new(AtomicUsize::new(0));
    let counter = n.clone();
    s.add_job(move || {
        let counter = counter.clone();
        async move {
            let i = counter.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(i as u64 % 5 + 1)).await;
            if i >= 7 {
                Err("failing now")
            } else {
                Ok(())
            }
        }
    })
    .trigger(Interval::new(Duration::from_secs(60)).unwrap())
    .next_run_time(t0())
    .id("job")
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(9 * 60 + 30)).await;
    finished_runs(&s, "job", 10).await;
    let mut pages = Vec::new();
    let mut filter = RunFilter::new().limit(4);
    loop {
        let page = s.job("job").runs(filter.clone()).await.unwrap();
        if page.is_empty() {
            break;
        }
        filter = filter.after(page.last().unwrap());
        pages.push(page);
    }
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![4, 4, 2]
    );
    assert_eq!(pages[0][0].scheduled, secs(540), "newest first");
    let errors = s
        .runs(RunFilter::new().state(RunState::Error))
        .await
        .unwrap();
    assert_eq!(errors.len(), 3);
    let stats = s.job("job").run_stats().await.unwrap();
    assert_eq!(stats.runs, 10);
    assert_eq!(stats.last_outcome, Some(RunState::Error));
    assert_eq!(stats.consecutive_failures, 3);
    assert_eq!(stats.duration_p50, Some(Duration::from_secs(3)));
    assert_eq!(stats.duration_p99, Some(Duration::from_secs(5)));
    assert_eq!(stats.lateness_p99, Some(Duration::ZERO));
    s.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn timeouts_and_cancel_run_are_recorded() {
    let clock = TestClock::new(t0());
    let s = scheduler(&clock);
    s.start().await.unwrap();
    s.add_job(|ctx: JobContext| async move {
        ctx.cancelled().await;
        Err::<(), _>("stopped")
    })
    .trigger(Cron::builder().hour("3").build().unwrap())
    .id("stoppable")
    .await
    .unwrap();
    s.add_job(|| async { tokio::time::sleep(Duration::from_secs(600)).await })
        .trigger(Cron::builder().hour("3").build().unwrap())
        .timeout(Duration::from_secs(5))
        .id("slow")
        .await
        .unwrap();
    let run = s.job("stoppable").run_now().await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(
        s.cancel_run(run.run_id()),
        "the ledger's run id cancels the run"
    );
    let done = run.outcome().await.unwrap();
    assert_eq!(done.state, RunState::Cancelled);
    assert!(done.error.unwrap().contains("stopped"));
    let slow = s
        .job("slow")
        .run_now()
        .await
        .unwrap()
        .outcome()
        .await
        .unwrap();
    assert_eq!(slow.state, RunState::TimedOut);
    assert!(slow.error.unwrap().contains("timed out after 5s"));
    s.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_ledger_can_be_turned_off() {
    let clock = TestClock::new(t0());
    let s = Scheduler::builder()
        .timezone(chrono_tz::UTC)
        .clock(clock.shared())
        .run_ledger(false)
        .build();
    let mut rx = s.subscribe(EventKind::JOB_EXECUTED);
    s.start().await.unwrap();
    s.add_job(|| async {}).id("plain").await.unwrap();
    assert!(matches!(
        rx.recv().await.unwrap(),
        Event::JobExecuted { run_id: None, .. }
    ));
    assert!(s.runs(RunFilter::new()).await.unwrap().is_empty());
    assert!(matches!(
        s.job("plain").run_now().await,
        Err(Error::JobLookup(_)) | Err(Error::Unsupported(_))
    ));
    s.add_job(|| async {})
        .trigger(Cron::builder().hour("3").build().unwrap())
        .id("later")
        .await
        .unwrap();
    assert!(matches!(
        s.job("later").run_now().await,
        Err(Error::Unsupported(_))
    ));
    s.shutdown().await.unwrap();
}

/// A store shared with other schedulers, as far as the scheduler can tell (a memory store
/// underneath, ledger included), that records its heartbeats, whose next heartbeat can be
/// made to hang (a dead connection), and whose next claim can lose its reply (written, then
/// the connection cut: the scheduler gets an error).
#[derive(Default)]
struct HeartbeatStore {
    jobs: apsched::store::MemoryStore,
    beats: Arc<std::sync::Mutex<Vec<DateTime<Utc>>>>,
    hang_next: Arc<std::sync::atomic::AtomicBool>,
    lose_next_claim: Arc<std::sync::atomic::AtomicBool>,
}

#[async_trait::async_trait]
impl apsched::store::JobStore for HeartbeatStore {
    async fn start(&self, ctx: apsched::store::StoreContext) -> apsched::Result<()> {
        self.jobs.start(ctx).await
    }
    async fn add_job(&self, job: apsched::job::JobRecord, replace: bool) -> apsched::Result<()> {
        self.jobs.add_job(job, replace).await
    }
    async fn update_job(
        &self,
        job: apsched::job::JobRecord,
    ) -> apsched::Result<apsched::job::JobRecord> {
        self.jobs.update_job(job).await
    }
    async fn remove_job(&self, id: &str) -> apsched::Result<()> {
        self.jobs.remove_job(id).await
    }
    async fn remove_all_jobs(&self) -> apsched::Result<()> {
        self.jobs.remove_all_jobs().await
    }
    async fn lookup_job(&self, id: &str) -> apsched::Result<Option<apsched::job::JobRecord>> {
        self.jobs.lookup_job(id).await
    }
    async fn get_all_jobs(&self) -> apsched::Result<Vec<apsched::job::JobRecord>> {
        self.jobs.get_all_jobs().await
    }
    async fn next_run_time(&self) -> apsched::Result<Option<DateTime<Utc>>> {
        self.jobs.next_run_time().await
    }
    async fn acquire_due_jobs(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> apsched::Result<Vec<apsched::store::DueJob>> {
        let due = self.jobs.acquire_due_jobs(now, limit).await?;
        if !due.is_empty() && self.lose_next_claim.swap(false, Ordering::SeqCst) {
            return Err(Error::Store {
                store: "shared".into(),
                message: "connection reset before the claim's reply".into(),
                source: None,
            });
        }
        Ok(due)
    }
    fn keeps_runs(&self) -> bool {
        true
    }
    async fn start_runs(
        &self,
        ids: &[apsched::RunId],
        now: DateTime<Utc>,
    ) -> apsched::Result<Vec<apsched::RunId>> {
        self.jobs.start_runs(ids, now).await
    }
    async fn finish_runs(&self, outcomes: &[apsched::ledger::RunOutcome]) -> apsched::Result<()> {
        self.jobs.finish_runs(outcomes).await
    }
    async fn tick_runs(&self, now: DateTime<Utc>) -> apsched::Result<apsched::ledger::RunTick> {
        self.jobs.tick_runs(now).await
    }
    async fn query_runs(&self, filter: &RunFilter) -> apsched::Result<Vec<RunRecord>> {
        self.jobs.query_runs(filter).await
    }
    async fn get_run(&self, id: apsched::RunId) -> apsched::Result<Option<RunRecord>> {
        self.jobs.get_run(id).await
    }
    async fn heartbeat(&self, now: DateTime<Utc>) -> apsched::Result<()> {
        if self.hang_next.swap(false, Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.beats.lock().unwrap().push(now);
        Ok(())
    }
    fn is_persistent(&self) -> bool {
        true
    }
}

/// The heartbeat has a task of its own: every third of the lease while the scheduler runs,
/// and while it is paused (the loop makes no pass then); a heartbeat that never answers is
/// given up after a lease and the next ones go on; after shutdown there are none.
#[tokio::test(start_paused = true)]
async fn the_heartbeat_goes_on_while_paused_and_past_a_hung_write() {
    let clock = TestClock::new(t0());
    let beats: Arc<std::sync::Mutex<Vec<DateTime<Utc>>>> = Arc::default();
    let hang_next: Arc<std::sync::atomic::AtomicBool> = Arc::default();
    let s = Scheduler::builder()
        .timezone(chrono_tz::UTC)
        .clock(clock.shared())
        .lease(Duration::from_secs(3))
        .store(
            "shared",
            HeartbeatStore {
                beats: beats.clone(),
                hang_next: hang_next.clone(),
                ..HeartbeatStore::default()
            },
        )
        .build();
    s.start().await.unwrap();
    s.pause().unwrap();
    // Slept, not advanced at once: paused time then moves from timer to timer.
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    let seen: Vec<DateTime<Utc>> = std::mem::take(&mut *beats.lock().unwrap());
    assert_eq!(
        seen,
        (0..=10).map(secs).collect::<Vec<_>>(),
        "one heartbeat a second (a third of the lease), paused or not"
    );
    // The heartbeat at 11 s hangs; it is given up at 14 s and the next one is at 15 s.
    hang_next.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(*beats.lock().unwrap(), vec![secs(15), secs(16)]);
    s.shutdown().await.unwrap();
    beats.lock().unwrap().clear();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(
        beats.lock().unwrap().is_empty(),
        "no heartbeat after shutdown"
    );
}

/// A claim written by the store whose reply was lost (the connection cut after the write)
/// leaves a claimed run of this live scheduler that nobody else takes over (its heartbeat
/// goes on): its ledger pass takes it back once it is a lease old, and it runs once.
#[tokio::test(start_paused = true)]
async fn a_claim_whose_reply_was_lost_still_runs_once() {
    let clock = TestClock::new(t0());
    let store = HeartbeatStore::default();
    store.lose_next_claim.store(true, Ordering::SeqCst);
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let s = Scheduler::builder()
        .timezone(chrono_tz::UTC)
        .clock(clock.shared())
        .lease(Duration::from_secs(3))
        .store("shared", store)
        .task("count", move |_: serde_json::Value, _: JobContext| {
            let r = r.clone();
            async move {
                r.fetch_add(1, Ordering::SeqCst);
            }
        })
        .build();
    s.start().await.unwrap();
    s.add_task_job("count", serde_json::Value::Null)
        .trigger(Interval::new(Duration::from_secs(3600)).unwrap())
        .next_run_time(t0())
        .misfire_grace_time(None)
        .store("shared")
        .id("j")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        ran.load(Ordering::SeqCst),
        1,
        "the lost claim's run ran once"
    );
    let runs = s.job("j").runs(RunFilter::new()).await.unwrap();
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0].state, RunState::Executed, "{runs:#?}");
    assert!(
        runs[0].started_at >= Some(t0() + TimeDelta::seconds(3)),
        "taken back a lease after its claim: {runs:#?}"
    );
    s.shutdown().await.unwrap();
}
