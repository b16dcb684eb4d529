//! `Scheduler::add_jobs`: many jobs to one store in one store call.

use std::time::Duration;

use apsched::clock::TestClock;
use apsched::store::MemoryStore;
use apsched::trigger::Interval;
use apsched::{Error, Event, EventKind, Scheduler};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};

fn start_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 15, 10, 0, 0).unwrap()
}

fn scheduler(clock: &TestClock) -> Scheduler {
    Scheduler::builder()
        .clock(clock.shared())
        .task("echo", |n: u32| async move { Ok::<_, String>(n) })
        .store("other", MemoryStore::new())
        .build()
}

fn hourly() -> Interval {
    Interval::new(Duration::from_secs(3600)).unwrap()
}

/// Jobs built with the `AddJob` options and the job defaults, stored with their first run
/// times, one JOB_ADDED each; the loop then runs them.
#[tokio::test(start_paused = true)]
async fn add_jobs_stores_every_job_and_emits_job_added_for_each() {
    let clock = TestClock::new(start_time());
    let s = scheduler(&clock);
    s.start().await.unwrap();
    let mut added = s.subscribe(EventKind::JOB_ADDED);
    let jobs = (0..100).map(|i| {
        s.add_task_job("echo", i)
            .trigger(hourly())
            .id(format!("j{i:03}"))
            .max_instances(3)
    });
    let views = s.add_jobs(jobs).await.unwrap();
    assert_eq!(views.len(), 100);
    let stored = s.store("default").get_jobs().await.unwrap();
    assert_eq!(stored.len(), 100);
    for job in &stored {
        assert_eq!(job.next_run_time, Some(start_time() + TimeDelta::hours(1)));
        assert_eq!(job.max_instances, 3);
        assert!(!job.pending);
    }
    let mut ids = Vec::new();
    for _ in 0..100 {
        match added.recv().await.unwrap() {
            Event::JobAdded { job_id, store } => {
                assert_eq!(store, "default");
                ids.push(job_id);
            }
            other => panic!("{other:?}"),
        }
    }
    ids.sort();
    assert_eq!(ids.first().map(String::as_str), Some("j000"));
    assert_eq!(ids.last().map(String::as_str), Some("j099"));

    let mut executed = s.subscribe(EventKind::JOB_EXECUTED);
    for _ in 0..100 {
        executed.recv().await.unwrap();
    }
    s.shutdown().await.unwrap();
}

/// A duplicate id in the batch or a mix of stores fails before anything is written.
#[tokio::test(start_paused = true)]
async fn add_jobs_checks_the_whole_batch_first() {
    let clock = TestClock::new(start_time());
    let s = scheduler(&clock);
    s.start().await.unwrap();
    let err = s
        .add_jobs([
            s.add_task_job("echo", 1).id("a"),
            s.add_task_job("echo", 2).id("b"),
            s.add_task_job("echo", 3).id("a"),
        ])
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::ConflictingId(ref id) if id == "a"),
        "{err}"
    );
    let err = s
        .add_jobs([
            s.add_task_job("echo", 1).id("c"),
            s.add_task_job("echo", 2).id("d").store("other"),
        ])
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidJob { ref id, .. } if id == "d"),
        "{err}"
    );
    let err = s
        .add_jobs([
            s.add_task_job("echo", 1).id("e"),
            s.add_task_job("nope", 2).id("f"),
        ])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownTask(_)), "{err}");
    assert!(s.get_jobs().await.unwrap().is_empty());

    // With replace_existing the stored job is replaced.
    s.add_task_job("echo", 1)
        .id("a")
        .trigger(hourly())
        .await
        .unwrap();
    s.add_jobs([s
        .add_task_job("echo", 2)
        .id("a")
        .next_run_time(start_time() + TimeDelta::minutes(5))
        .trigger(hourly())
        .replace_existing(true)])
        .await
        .unwrap();
    let a = s.job("a").get().await.unwrap().unwrap();
    assert_eq!(a.next_run_time, Some(start_time() + TimeDelta::minutes(5)));
    assert!(s.add_jobs([]).await.unwrap().is_empty());
    s.shutdown().await.unwrap();
}

/// Before start the jobs are kept aside (pending) and enter their store on start.
#[tokio::test(start_paused = true)]
async fn add_jobs_before_start_are_pending() {
    let clock = TestClock::new(start_time());
    let s = scheduler(&clock);
    s.add_task_job("echo", 0).id("p0").await.unwrap();
    let err = s
        .add_jobs([
            s.add_task_job("echo", 1).id("p1"),
            s.add_task_job("echo", 0).id("p0"),
        ])
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::ConflictingId(ref id) if id == "p0"),
        "{err}"
    );
    let views = s
        .add_jobs((1..=3).map(|i| {
            s.add_task_job("echo", i)
                .id(format!("p{i}"))
                .trigger(hourly())
        }))
        .await
        .unwrap();
    assert!(views.iter().all(|j| j.pending));
    assert_eq!(s.get_jobs().await.unwrap().len(), 4);
    s.start().await.unwrap();
    let jobs = s.get_jobs().await.unwrap();
    assert_eq!(jobs.len(), 4);
    assert!(jobs.iter().all(|j| !j.pending));
    let p2 = s.job("p2").get().await.unwrap().unwrap();
    assert_eq!(p2.next_run_time, Some(start_time() + TimeDelta::hours(1)));
    s.shutdown().await.unwrap();
}
