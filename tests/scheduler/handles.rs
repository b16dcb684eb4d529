//! The 0.2 management API: job and store handles, the three shutdowns, a `'static` AddJob.

use std::future::IntoFuture;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use apsched::clock::TestClock;
use apsched::store::MemoryStore;
use apsched::trigger::Interval;
use apsched::{Error, Event, EventKind, JobChanges, Scheduler, SchedulerState};
use chrono::{TimeZone, Utc};

fn scheduler(clock: &TestClock) -> Scheduler {
    Scheduler::builder()
        .timezone(chrono_tz::UTC)
        .clock(clock.shared())
        .store("default", MemoryStore::new())
        .store("other", MemoryStore::new())
        .build()
}

fn clock() -> TestClock {
    TestClock::new(Utc.with_ymd_and_hms(2024, 1, 15, 10, 0, 0).unwrap())
}

fn hourly() -> Interval {
    Interval::new(Duration::from_secs(3600)).unwrap()
}

#[tokio::test(start_paused = true)]
async fn job_handles_find_by_id_across_stores_or_in_one() {
    let clock = clock();
    let s = scheduler(&clock);
    s.start().await.unwrap();
    for store in ["default", "other"] {
        s.add_job(|| async {})
            .trigger(hourly())
            .id("same")
            .name(store)
            .store(store)
            .await
            .unwrap();
    }
    // Without a store: the first store that has the id, in the order stores were added.
    let first = s.job("same").get().await.unwrap().unwrap();
    assert_eq!(first.store, "default");
    // In one store: only that one.
    let other = s.store("other").job("same");
    assert_eq!(other.store(), Some("other"));
    let paused = other.pause().await.unwrap();
    assert_eq!(
        (paused.store.as_str(), paused.next_run_time),
        ("other", None)
    );
    assert!(s
        .job("same")
        .get()
        .await
        .unwrap()
        .unwrap()
        .next_run_time
        .is_some());
    let renamed = other
        .modify(JobChanges::new().name("renamed"))
        .await
        .unwrap();
    assert_eq!(renamed.name, "renamed");
    assert!(other
        .resume()
        .await
        .unwrap()
        .unwrap()
        .next_run_time
        .is_some());
    other
        .reschedule(Interval::new(Duration::from_secs(60)).unwrap())
        .await
        .unwrap();
    assert_eq!(s.store("other").get_jobs().await.unwrap().len(), 1);
    assert_eq!(s.get_jobs().await.unwrap().len(), 2);
    other.remove().await.unwrap();
    assert!(other.get().await.unwrap().is_none());
    assert!(matches!(other.remove().await, Err(Error::JobLookup(_))));
    assert_eq!(s.job("same").get().await.unwrap().unwrap().store, "default");
    let table = s.jobs_table().await.unwrap();
    assert!(
        table.contains("Jobstore other:") && table.contains("No scheduled jobs"),
        "{table}"
    );
    s.store("default").remove_all_jobs().await.unwrap();
    assert!(s.get_jobs().await.unwrap().is_empty());
    // A store the scheduler does not have is an error of each call, not a panic.
    let err = s.store("nope").job("same").get().await.unwrap_err();
    assert!(
        matches!(err, Error::UnknownStore(ref a) if a == "nope"),
        "{err}"
    );
    s.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn job_handles_work_before_start() {
    let clock = clock();
    let s = scheduler(&clock);
    s.add_job(|| async {})
        .trigger(hourly())
        .id("early")
        .await
        .unwrap();
    let job = s.job("early");
    assert!(job.get().await.unwrap().unwrap().pending);
    job.pause().await.unwrap();
    s.start().await.unwrap();
    let stored = job.get().await.unwrap().unwrap();
    assert!(!stored.pending && stored.next_run_time.is_none());
    s.shutdown().await.unwrap();
}

/// An AddJob owns its scheduler handle, so it can be moved to another task.
#[tokio::test(start_paused = true)]
async fn add_job_future_is_static() {
    let clock = clock();
    let s = scheduler(&clock);
    s.start().await.unwrap();
    let adding = s.add_job(|| async {}).trigger(hourly()).id("spawned");
    drop(s.clone());
    let job = tokio::spawn(adding.into_future()).await.unwrap().unwrap();
    assert_eq!(job.id, "spawned");
    assert!(s.job("spawned").get().await.unwrap().is_some());
    s.shutdown().await.unwrap();
}

/// A job that runs until told to stop, and the flag that tells whether it finished.
fn long_job(
    s: &Scheduler,
    secs: u64,
) -> (
    Arc<AtomicBool>,
    impl std::future::Future<Output = apsched::Result<apsched::Job>>,
) {
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let add = s
        .add_job(move || {
            let d = d.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(secs)).await;
                d.store(true, Ordering::SeqCst);
            }
        })
        .id("long")
        .into_future();
    (done, add)
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_runs_in_flight() {
    let clock = clock();
    let s = scheduler(&clock);
    let mut submitted = s.subscribe(EventKind::JOB_SUBMITTED);
    s.start().await.unwrap();
    let (done, add) = long_job(&s, 600);
    add.await.unwrap();
    submitted.recv().await.unwrap();
    s.shutdown().await.unwrap();
    assert!(
        done.load(Ordering::SeqCst),
        "shutdown returned before the run ended"
    );
    assert_eq!(s.state(), SchedulerState::Stopped);
}

#[tokio::test(start_paused = true)]
async fn shutdown_now_does_not_wait_and_the_run_still_reports() {
    let clock = clock();
    let s = scheduler(&clock);
    let mut events = s.subscribe(EventKind::JOB_SUBMITTED | EventKind::JOB_EXECUTED);
    s.start().await.unwrap();
    let (done, add) = long_job(&s, 600);
    add.await.unwrap();
    assert!(matches!(
        events.recv().await.unwrap(),
        Event::JobSubmitted { .. }
    ));
    s.shutdown_now().await.unwrap();
    assert!(!done.load(Ordering::SeqCst));
    assert_eq!(s.state(), SchedulerState::Stopped);
    // The run goes on to its end and reports its outcome.
    assert!(matches!(
        events.recv().await.unwrap(),
        Event::JobExecuted { .. }
    ));
    assert!(done.load(Ordering::SeqCst));
}

#[tokio::test(start_paused = true)]
async fn shutdown_timeout_waits_at_most_the_timeout() {
    let clock = clock();
    let s = scheduler(&clock);
    let mut submitted = s.subscribe(EventKind::JOB_SUBMITTED);
    s.start().await.unwrap();
    let (done, add) = long_job(&s, 3600);
    add.await.unwrap();
    submitted.recv().await.unwrap();
    let before = tokio::time::Instant::now();
    s.shutdown_timeout(Duration::from_secs(10)).await.unwrap();
    assert_eq!(before.elapsed(), Duration::from_secs(10));
    assert!(!done.load(Ordering::SeqCst));
    assert_eq!(s.state(), SchedulerState::Stopped);
}

#[tokio::test(start_paused = true)]
async fn shutdown_timeout_returns_when_the_runs_end() {
    let clock = clock();
    let s = scheduler(&clock);
    let mut submitted = s.subscribe(EventKind::JOB_SUBMITTED);
    s.start().await.unwrap();
    let (done, add) = long_job(&s, 5);
    add.await.unwrap();
    submitted.recv().await.unwrap();
    let before = tokio::time::Instant::now();
    s.shutdown_timeout(Duration::from_secs(60)).await.unwrap();
    assert!(done.load(Ordering::SeqCst));
    assert_eq!(before.elapsed(), Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn shutting_down_a_stopped_scheduler_is_a_state_error() {
    let clock = clock();
    let s = scheduler(&clock);
    for result in [
        s.shutdown().await,
        s.shutdown_now().await,
        s.shutdown_timeout(Duration::from_secs(1)).await,
    ] {
        assert!(matches!(result, Err(Error::State { .. })), "{result:?}");
    }
}
