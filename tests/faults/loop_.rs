//! The loop under faults: dead, slow and panicking stores, extreme values, clock jumps, long
//! backlogs, event order and missing executors (items 1, 2, 5, 6, 7, 8).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apsched::clock::{Clock, TestClock};
use apsched::executor::TokioExecutor;
use apsched::job::{Callable, JobRecord};
use apsched::store::{DueJob, JobStore, MemoryStore};
use apsched::trigger::{Date, Interval};
use apsched::{Error, Event, EventKind, JobError, Scheduler};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};

use super::{drain, every, recording_job, start_time};

/// A store whose every call takes `delay` and then fails (or panics), like a database whose
/// driver times out.
struct BrokenStore {
    delay: Duration,
    panics: bool,
    calls: AtomicUsize,
}

impl BrokenStore {
    fn dead(delay: Duration) -> Self {
        BrokenStore {
            delay,
            panics: false,
            calls: AtomicUsize::new(0),
        }
    }
    fn panicking() -> Self {
        BrokenStore {
            delay: Duration::ZERO,
            panics: true,
            calls: AtomicUsize::new(0),
        }
    }
    async fn fail<T>(&self) -> apsched::Result<T> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        if self.panics {
            panic!("the store's driver panicked");
        }
        Err(Error::Store {
            store: "broken".into(),
            message: "connection timed out".into(),
            source: None,
        })
    }
}

#[async_trait::async_trait]
impl JobStore for BrokenStore {
    async fn add_job(&self, _: JobRecord, _: bool) -> apsched::Result<()> {
        self.fail().await
    }
    async fn update_job(&self, _: JobRecord) -> apsched::Result<JobRecord> {
        self.fail().await
    }
    async fn remove_job(&self, _: &str) -> apsched::Result<()> {
        self.fail().await
    }
    async fn remove_all_jobs(&self) -> apsched::Result<()> {
        self.fail().await
    }
    async fn lookup_job(&self, _: &str) -> apsched::Result<Option<JobRecord>> {
        self.fail().await
    }
    async fn get_all_jobs(&self) -> apsched::Result<Vec<JobRecord>> {
        self.fail().await
    }
    async fn next_run_time(&self) -> apsched::Result<Option<DateTime<Utc>>> {
        self.fail().await
    }
    async fn acquire_due_jobs(&self, _: DateTime<Utc>, _: usize) -> apsched::Result<Vec<DueJob>> {
        self.fail().await
    }
}

fn builder(clock: &TestClock) -> apsched::SchedulerBuilder {
    Scheduler::builder()
        .timezone(chrono_tz::UTC)
        .clock(clock.shared())
}

/// Runs for two virtual minutes and checks that the every-10-s job `tick` ran all 12 times,
/// each exactly on time, with no MISSED.
async fn twelve_runs_on_time(s: &Scheduler, clock: &TestClock) {
    let mut missed = s.subscribe(EventKind::JOB_MISSED);
    let starts = recording_job(s, clock, "tick", every(10)).await;
    tokio::time::sleep(Duration::from_secs(125)).await;
    let starts = starts.lock().unwrap().clone();
    let expected: Vec<_> = (1..=12)
        .map(|k| start_time() + TimeDelta::seconds(10 * k))
        .collect();
    assert_eq!(starts, expected, "runs of the memory store's job");
    assert!(drain(&mut missed).is_empty(), "no run may be missed");
}

#[tokio::test(start_paused = true)]
async fn item1_a_dead_store_delays_no_other_stores_job() {
    let clock = TestClock::new(start_time());
    let dead = Arc::new(BrokenStore::dead(Duration::from_secs(5)));
    let s = builder(&clock).build();
    s.start().await.unwrap();
    s.add_store("dead", shared(&dead)).await.unwrap();
    twelve_runs_on_time(&s, &clock).await;
    // The dead store was retried all along (with backoff), not given up.
    assert!(dead.calls.load(Ordering::SeqCst) >= 3);
    s.shutdown_now().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn item2_a_panicking_store_pass_is_reported_and_the_loop_goes_on() {
    let clock = TestClock::new(start_time());
    let broken = Arc::new(BrokenStore::panicking());
    let s = builder(&clock).build();
    let mut errors = s.subscribe(EventKind::STORE_ERROR);
    s.start().await.unwrap();
    s.add_store("broken", shared(&broken)).await.unwrap();
    twelve_runs_on_time(&s, &clock).await;
    let errors = drain(&mut errors);
    match errors.first() {
        Some(Event::StoreError { store, message, .. }) => {
            assert_eq!(store, "broken");
            assert!(message.contains("panicked"), "{message}");
            assert!(message.contains("the store's driver panicked"), "{message}");
        }
        other => panic!("expected a STORE_ERROR, got {other:?}"),
    }
    // Backoff: a panic per pass does not spin (0.5 s doubling up to 30 s over 2 minutes).
    assert!(
        errors.len() <= 12,
        "{} errors: the loop spins",
        errors.len()
    );
    assert_eq!(s.state(), apsched::SchedulerState::Running);
    s.shutdown_now().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn item2_poll_interval_of_duration_max_does_not_kill_the_loop() {
    let clock = TestClock::new(start_time());
    let s = builder(&clock).build();
    s.start().await.unwrap();
    let polled = Shared {
        store: Arc::new(MemoryStore::new()),
        poll: Some(Duration::MAX),
    };
    s.add_store("polled", polled).await.unwrap();
    twelve_runs_on_time(&s, &clock).await;
    s.shutdown_now().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn item2_lease_of_duration_max_does_not_kill_the_loop() {
    let clock = TestClock::new(start_time());
    let s = builder(&clock).lease(Duration::MAX).build();
    s.start().await.unwrap();
    twelve_runs_on_time(&s, &clock).await;
    s.shutdown_now().await.unwrap();
}

/// The SQL store with `lease(Duration::MAX)`: whatever the store does with it, a failure
/// (or panic) stays its own and the memory store's job keeps running. Real time: SQLite
/// works on its own threads, which Tokio's paused clock would outrun.
#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item2_lease_of_duration_max_with_a_sql_store_keeps_other_jobs_running() {
    let s = Scheduler::builder()
        .lease(Duration::MAX)
        .task("noop", |_: ()| async {})
        .build();
    let mut rx = s.subscribe(EventKind::JOB_EXECUTED | EventKind::STORE_ERROR);
    s.start().await.unwrap();
    let sql = apsched::store::SqlStore::sqlite(":memory:").unwrap();
    s.add_store("sql", sql).await.unwrap();
    s.add_task_job("noop", ())
        .id("stored")
        .store("sql")
        .await
        .unwrap();
    s.add_job(|| async {})
        .id("mem")
        .trigger(Interval::new(Duration::from_millis(100)).unwrap())
        .await
        .unwrap();
    let mut memory_runs = 0;
    while memory_runs < 5 {
        let ev = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("the memory store's job keeps running")
            .unwrap();
        match &ev {
            Event::JobExecuted { job_id, .. } if job_id == "mem" => memory_runs += 1,
            Event::StoreError { store, message, .. } => {
                assert_eq!(store, "sql", "{message}");
            }
            _ => {}
        }
    }
    assert_eq!(s.state(), apsched::SchedulerState::Running);
    s.shutdown_now().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn item2_year_9999_dates_and_huge_intervals_do_not_stop_other_jobs() {
    let clock = TestClock::new(start_time());
    let s = builder(&clock).build();
    let mut removed = s.subscribe(EventKind::JOB_REMOVED);
    s.start().await.unwrap();
    let end_of_9999 = Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap();
    s.add_job(|| async {})
        .id("far")
        .trigger(Date::at(end_of_9999, None).unwrap())
        .await
        .unwrap();
    // The last instant chrono can represent, as an explicit next run time.
    s.add_job(|| async {})
        .id("last")
        .trigger(every(60))
        .next_run_time(DateTime::<Utc>::MAX_UTC)
        .await
        .unwrap();
    // Interval::new(Duration::MAX) is a clear error, not a panic.
    assert!(matches!(
        Interval::new(Duration::MAX),
        Err(apsched::TriggerError::InvalidParam { .. })
    ));
    // An interval of 285 000 years: its second fire time is beyond chrono's range.
    let huge = Interval::new(Duration::from_secs(9_000_000_000_000)).unwrap();
    s.add_job(|| async {})
        .id("huge")
        .trigger(huge)
        .next_run_time(start_time() + TimeDelta::seconds(5))
        .await
        .unwrap();
    twelve_runs_on_time(&s, &clock).await;
    let far = s.job("far").get().await.unwrap().unwrap();
    assert_eq!(far.next_run_time, Some(end_of_9999));
    // `huge` ran once and, with no fire time left that chrono can hold, was removed.
    assert!(matches!(removed.try_recv(), Ok(Event::JobRemoved { job_id, .. }) if job_id == "huge"));
    s.shutdown_now().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn item5_a_wall_clock_jump_is_noticed_within_one_slice() {
    let clock = TestClock::new(start_time()).with_max_sleep(Duration::from_secs(1));
    let s = builder(&clock).build();
    s.start().await.unwrap();
    let mut rx = s.subscribe(EventKind::JOB_EXECUTED | EventKind::JOB_MISSED);
    let starts = recording_job(&s, &clock, "hourly", every(3600)).await;
    // The loop now sleeps towards 11:00. The wall clock jumps there (a resume from suspend,
    // or a clock step) while Tokio's monotonic time stands still.
    tokio::time::sleep(Duration::from_millis(300)).await;
    clock.jump(Duration::from_secs(3600) - Duration::from_millis(300));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let due = start_time() + TimeDelta::hours(1);
    let starts = starts.lock().unwrap().clone();
    assert_eq!(starts.len(), 1, "the run came due by the wall clock");
    assert!(
        starts[0] - due <= TimeDelta::seconds(1),
        "late by {}",
        starts[0] - due
    );
    match rx.recv().await.unwrap() {
        Event::JobExecuted {
            scheduled_run_time, ..
        } => assert_eq!(scheduled_run_time, due),
        other => panic!("{other:?}"),
    }
    s.shutdown_now().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn item5_the_system_clock_is_reread_every_second() {
    assert_eq!(
        apsched::clock::SystemClock.max_sleep(),
        Duration::from_secs(1)
    );
}

fn record(trigger: Interval, first: DateTime<Utc>, coalesce: bool) -> JobRecord {
    let mut job = JobRecord::new("backlog", Callable::from_async(|| async {}), trigger);
    job.coalesce = coalesce;
    job.next_run_time = Some(first);
    job
}

/// The case: every second, resumed after 30 days, coalescing: one claim yields the
/// latest due time and the next one, without walking 2.6 M times.
#[test]
fn item6_a_month_of_every_second_backlog_coalesces_in_bounded_work() {
    let now = start_time() + TimeDelta::milliseconds(500);
    let job = record(every(1), start_time() - TimeDelta::days(30), true);
    let due = DueJob::claim(job, now);
    assert_eq!(due.run_times.last(), Some(&start_time()));
    assert!(due.run_times.len() <= apsched::job::WALK_BEFORE_SKIP + 2);
    assert_eq!(
        due.job.next_run_time,
        Some(start_time() + TimeDelta::seconds(1))
    );
    assert_eq!(
        due.skipped_from, None,
        "a coalescing job misses nothing it would run"
    );
}

/// A backlog that cannot be walked at all (3·10¹³ due times): only the runs within the grace
/// time are listed; the skipped ones are summarised. Before the fix this never returned.
#[test]
fn item6_a_thousand_years_of_every_millisecond_backlog_is_bounded() {
    let now = start_time();
    let ms = Interval::new(Duration::from_millis(1)).unwrap();
    let job = record(ms, now - TimeDelta::days(365_000), false);
    let first = job.next_run_time.unwrap();
    let due = DueJob::claim(job, now);
    let walked = apsched::job::WALK_BEFORE_SKIP;
    // The first times are walked as APScheduler would; then only the last second (the grace
    // time) of 1 ms runs: 1001 times from now - 1 s to now.
    assert_eq!(due.run_times.len(), walked + 1001);
    assert_eq!(due.run_times[walked], now - TimeDelta::seconds(1));
    assert_eq!(due.run_times.last(), Some(&now));
    assert_eq!(
        due.skipped_from,
        Some(first + TimeDelta::milliseconds(walked as i64))
    );
    assert_eq!(
        due.job.next_run_time,
        Some(now + TimeDelta::milliseconds(1))
    );
}

/// Through the scheduler: the skipped times are one JOB_MISSED, the runs within grace are
/// submitted, and the job carries on.
#[tokio::test(start_paused = true)]
async fn item6_skipped_backlog_is_reported_as_missed() {
    let clock = TestClock::new(start_time());
    let s = builder(&clock).manual().build();
    s.start().await.unwrap();
    let mut rx = s.subscribe(EventKind::JOB_MISSED | EventKind::JOB_SUBMITTED);
    s.add_job(|| async {})
        .id("backlog")
        .trigger(every(1))
        .coalesce(false)
        .max_instances(1)
        .next_run_time(start_time() - TimeDelta::days(30))
        .await
        .unwrap();
    s.process_due_jobs().await;
    let events = drain(&mut rx);
    let skipped = start_time() - TimeDelta::days(30)
        + TimeDelta::seconds(apsched::job::WALK_BEFORE_SKIP as i64);
    assert!(
        matches!(&events[0], Event::JobMissed { scheduled_run_time, .. } if *scheduled_run_time == skipped),
        "{:?}",
        events.first()
    );
    match &events[1] {
        Event::JobSubmitted {
            scheduled_run_times,
            ..
        } => {
            assert_eq!(
                scheduled_run_times.len(),
                apsched::job::WALK_BEFORE_SKIP + 2
            );
            assert_eq!(scheduled_run_times.last(), Some(&start_time()));
        }
        other => panic!("{other:?}"),
    }
    let job = s.job("backlog").get().await.unwrap().unwrap();
    assert_eq!(
        job.next_run_time,
        Some(start_time() + TimeDelta::seconds(1))
    );
}

/// An executor that keeps runs until told to drop them (like a pool whose runtime went away).
#[derive(Clone, Default)]
struct DroppingExecutor {
    held: Arc<Mutex<Vec<apsched::executor::JobRun>>>,
}

#[async_trait::async_trait]
impl apsched::executor::Executor for DroppingExecutor {
    fn kind(&self) -> &'static str {
        "dropping"
    }
    fn submit(&self, run: apsched::executor::JobRun) {
        self.held.lock().unwrap().push(run);
    }
    async fn shutdown(&self, _wait: bool) {
        self.held.lock().unwrap().clear();
    }
}

#[tokio::test(start_paused = true)]
async fn item7_every_submitted_run_gets_exactly_one_outcome_even_when_dropped() {
    let clock = TestClock::new(start_time());
    let dropping = DroppingExecutor::default();
    let s = builder(&clock)
        .executor("dropping", dropping.clone())
        .build();
    let mut rx = s.subscribe(
        EventKind::JOB_SUBMITTED
            | EventKind::JOB_EXECUTED
            | EventKind::JOB_ERROR
            | EventKind::JOB_MISSED,
    );
    s.start().await.unwrap();
    s.add_job(|| async {})
        .id("held")
        .executor("dropping")
        .trigger(every(10))
        .coalesce(false)
        .max_instances(3)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(25)).await;
    s.shutdown_now().await.unwrap();
    let events = drain(&mut rx);
    let submitted: usize = events
        .iter()
        .map(|e| match e {
            Event::JobSubmitted {
                scheduled_run_times,
                ..
            } => scheduled_run_times.len(),
            _ => 0,
        })
        .sum();
    let outcomes: Vec<&Event> = events
        .iter()
        .filter(|e| e.kind() != EventKind::JOB_SUBMITTED)
        .collect();
    assert_eq!(submitted, 2);
    assert_eq!(outcomes.len(), submitted, "{events:?}");
    for ev in outcomes {
        match ev {
            Event::JobError {
                error: JobError::NotRunnable { message },
                ..
            } => assert!(message.contains("dropped"), "{message}"),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item7_a_shut_down_local_executor_still_reports_an_outcome() {
    let local = apsched::executor::LocalExecutor::new().unwrap();
    apsched::executor::Executor::shutdown(&local, true).await;
    let s = Scheduler::builder().executor("local", local).build();
    let mut rx =
        s.subscribe(EventKind::JOB_SUBMITTED | EventKind::JOB_ERROR | EventKind::JOB_EXECUTED);
    s.start().await.unwrap();
    s.add_local_job(|| async {}).id("l").await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.kind(), EventKind::JOB_SUBMITTED, "{first:?}");
    let outcome = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an outcome for the submitted run")
        .unwrap();
    assert_eq!(outcome.kind(), EventKind::JOB_ERROR, "{outcome:?}");
    s.shutdown_now().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn item7_events_of_jobs_due_together_come_in_apschedulers_order() {
    let clock = TestClock::new(start_time());
    let s = builder(&clock)
        .executor("default", TokioExecutor::new())
        .manual()
        .build();
    s.start().await.unwrap();
    let due = start_time() + TimeDelta::seconds(10);
    // `a` goes on; `b` fires once. Both are due at the same time (processed a, then b).
    s.add_job(|| async {})
        .id("a")
        .trigger(every(10))
        .await
        .unwrap();
    s.add_job(|| async {})
        .id("b")
        .trigger(Date::at(due, None).unwrap())
        .await
        .unwrap();
    let mut rx = s.subscribe(EventKind::ALL);
    clock.set(due).await;
    s.process_due_jobs().await;
    let codes: Vec<(String, &'static str)> = drain(&mut rx)
        .iter()
        .filter(|e| e.kind() != EventKind::JOB_EXECUTED)
        .map(|e| (e.job_id().unwrap_or("").to_string(), e.kind().name()))
        .collect();
    assert_eq!(
        codes,
        [
            ("b".to_string(), "EVENT_JOB_REMOVED"),
            ("a".to_string(), "EVENT_JOB_SUBMITTED"),
            ("b".to_string(), "EVENT_JOB_SUBMITTED"),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn item8_a_one_shot_job_whose_executor_is_missing_is_kept() {
    let clock = TestClock::new(start_time());
    let s = builder(&clock)
        .executor("gone", TokioExecutor::new())
        .manual()
        .build();
    s.start().await.unwrap();
    let due = start_time() + TimeDelta::seconds(10);
    s.add_job(|| async {})
        .id("once")
        .executor("gone")
        .trigger(Date::at(due, None).unwrap())
        .await
        .unwrap();
    s.remove_executor("gone").await.unwrap();
    let mut rx = s.subscribe(EventKind::ALL);
    clock.set(due).await;
    s.process_due_jobs().await;
    let events = drain(&mut rx);
    assert!(
        !events.iter().any(|e| e.kind() == EventKind::JOB_REMOVED),
        "{events:?}"
    );
    match events.as_slice() {
        [Event::JobError {
            error: JobError::NotRunnable { message },
            ..
        }] => assert!(message.contains("kept"), "{message}"),
        other => panic!("{other:?}"),
    }
    let kept = s.job("once").get().await.unwrap().expect("the job is kept");
    assert!(
        kept.is_paused(),
        "kept paused, so it does not come due again at once"
    );
    assert_eq!(
        s.process_due_jobs().await,
        None,
        "nothing left due: no spin"
    );
}

/// Shares one store between the test and the scheduler, with the poll interval it asks for.
struct Shared<S> {
    store: Arc<S>,
    poll: Option<Duration>,
}

fn shared<S>(store: &Arc<S>) -> Shared<S> {
    Shared {
        store: store.clone(),
        poll: None,
    }
}

#[async_trait::async_trait]
impl<S: JobStore> JobStore for Shared<S> {
    fn poll_interval(&self) -> Option<Duration> {
        self.poll
    }
    async fn add_job(&self, job: JobRecord, replace: bool) -> apsched::Result<()> {
        self.store.add_job(job, replace).await
    }
    async fn update_job(&self, job: JobRecord) -> apsched::Result<JobRecord> {
        self.store.update_job(job).await
    }
    async fn remove_job(&self, id: &str) -> apsched::Result<()> {
        self.store.remove_job(id).await
    }
    async fn remove_all_jobs(&self) -> apsched::Result<()> {
        self.store.remove_all_jobs().await
    }
    async fn lookup_job(&self, id: &str) -> apsched::Result<Option<JobRecord>> {
        self.store.lookup_job(id).await
    }
    async fn get_all_jobs(&self) -> apsched::Result<Vec<JobRecord>> {
        self.store.get_all_jobs().await
    }
    async fn next_run_time(&self) -> apsched::Result<Option<DateTime<Utc>>> {
        self.store.next_run_time().await
    }
    async fn acquire_due_jobs(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> apsched::Result<Vec<DueJob>> {
        self.store.acquire_due_jobs(now, limit).await
    }
}

/// A clock that panics once when told to: a panic outside any store's pass.
#[derive(Debug)]
struct PanickyClock {
    inner: TestClock,
    panic_next: std::sync::atomic::AtomicBool,
}

impl Clock for PanickyClock {
    fn now(&self) -> DateTime<Utc> {
        if self.panic_next.swap(false, Ordering::SeqCst) {
            panic!("the clock broke");
        }
        self.inner.now()
    }
    fn max_sleep(&self) -> Duration {
        self.inner.max_sleep()
    }
}

#[tokio::test(start_paused = true)]
async fn item2_a_panic_in_the_loop_itself_is_reported_and_the_loop_restarts() {
    let test_clock = TestClock::new(start_time());
    let clock = Arc::new(PanickyClock {
        inner: test_clock.clone(),
        panic_next: std::sync::atomic::AtomicBool::new(false),
    });
    let s = Scheduler::builder()
        .timezone(chrono_tz::UTC)
        .clock(clock.clone())
        .build();
    let mut errors = s.subscribe(EventKind::SCHEDULER_ERROR);
    s.start().await.unwrap();
    let starts = recording_job(&s, &test_clock, "hourly", every(3600)).await;
    // The loop sleeps towards 11:00 in slices; the clock panics at the next reading.
    tokio::time::sleep(Duration::from_secs(600)).await;
    clock.panic_next.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3600)).await;
    match errors.try_recv() {
        Ok(Event::SchedulerError { message }) => {
            assert!(message.contains("the clock broke"), "{message}")
        }
        other => panic!("expected a SCHEDULER_ERROR, got {other:?}"),
    }
    assert_eq!(
        *starts.lock().unwrap(),
        [start_time() + TimeDelta::hours(1)],
        "the restarted loop runs the job on time"
    );
    s.shutdown_now().await.unwrap();
}
