//! The loop's behaviour with the real loop task, in virtual time (Tokio's paused clock):
//! hours of schedule run in milliseconds.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apsched::clock::{Clock, TestClock};
use apsched::executor::TokioExecutor;
use apsched::trigger::{Date, Interval};
use apsched::{Error, Event, EventKind, JobError, Scheduler, SchedulerState};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};

fn start_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 15, 10, 0, 0).unwrap()
}

fn every(secs: u64) -> Interval {
    Interval::new(Duration::from_secs(secs)).unwrap()
}

fn scheduler(clock: &TestClock) -> Scheduler {
    Scheduler::builder()
        .timezone(chrono_tz::UTC)
        .clock(clock.shared())
        .build()
}

/// Collects `n` events of `mask`.
async fn collect(rx: &mut apsched::EventReceiver, n: usize) -> Vec<Event> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.push(rx.recv().await.expect("event"));
    }
    out
}

#[tokio::test(start_paused = true)]
async fn interval_job_runs_exactly_on_time_for_a_day() {
    let clock = TestClock::new(start_time());
    let s = scheduler(&clock);
    s.start().await.unwrap();
    let starts = Arc::new(Mutex::new(Vec::new()));
    let (c, st) = (clock.clone(), starts.clone());
    s.add_job(move || {
        let (c, st) = (c.clone(), st.clone());
        async move { st.lock().unwrap().push(c.now()) }
    })
    .trigger(every(60))
    .id("minutely")
    .await
    .unwrap();
    let mut rx = s.subscribe(EventKind::JOB_EXECUTED);
    let runs = collect(&mut rx, 24 * 60).await;
    let starts = starts.lock().unwrap().clone();
    for (k, ev) in runs.iter().enumerate() {
        let expected = start_time() + TimeDelta::minutes(k as i64 + 1);
        match ev {
            Event::JobExecuted {
                scheduled_run_time, ..
            } => assert_eq!(*scheduled_run_time, expected),
            other => panic!("{other:?}"),
        }
        assert_eq!(starts[k], expected, "run {k} started late");
    }
    s.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn slow_listener_delays_no_job() {
    let clock = TestClock::new(start_time());
    let s = scheduler(&clock);
    // A listener that takes 30 s per event: 3 events per run, runs every 10 s.
    let seen = Arc::new(AtomicUsize::new(0));
    let seen2 = seen.clone();
    s.add_listener(EventKind::ALL, move |_| {
        let seen = seen2.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    s.start().await.unwrap();
    let starts = Arc::new(Mutex::new(Vec::new()));
    let (c, st) = (clock.clone(), starts.clone());
    s.add_job(move || {
        let (c, st) = (c.clone(), st.clone());
        async move { st.lock().unwrap().push(c.now()) }
    })
    .trigger(every(10))
    .await
    .unwrap();
    let mut rx = s.subscribe(EventKind::JOB_EXECUTED);
    collect(&mut rx, 100).await;
    let starts = starts.lock().unwrap().clone();
    for (k, t) in starts.iter().take(100).enumerate() {
        assert_eq!(*t, start_time() + TimeDelta::seconds(10 * (k as i64 + 1)));
    }
    // The listener is far behind, but it is running.
    assert!(seen.load(Ordering::SeqCst) > 0);
    s.shutdown_now().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn panicking_job_is_an_error_event_and_the_loop_lives_on() {
    let clock = TestClock::new(start_time());
    let s = scheduler(&clock);
    s.start().await.unwrap();
    let mut rx = s.subscribe(EventKind::JOB_ERROR | EventKind::JOB_EXECUTED);
    s.add_job(|| async {
        if true {
            panic!("kaboom");
        }
    })
    .trigger(every(5))
    .id("bad")
    .await
    .unwrap();
    s.add_job(|| async { 7 })
        .trigger(every(5))
        .id("good")
        .await
        .unwrap();
    let events = collect(&mut rx, 6).await;
    let errors: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::JobError { job_id, error, .. } => Some((job_id.clone(), error.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(errors.len(), 3);
    for (id, err) in errors {
        assert_eq!(id, "bad");
        assert_eq!(
            err,
            JobError::Panicked {
                message: "kaboom".into()
            }
        );
    }
    assert!(events.iter().any(|e| matches!(e,
        Event::JobExecuted { job_id, retval, .. } if job_id == "good" && *retval == 7)));
    s.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn max_instances_drops_runs_but_keeps_the_schedule() {
    let clock = TestClock::new(start_time());
    let s = scheduler(&clock);
    s.start().await.unwrap();
    let mut rx = s.subscribe(EventKind::JOB_SUBMITTED | EventKind::JOB_MAX_INSTANCES);
    // Takes 25 s, fires every 10 s, one instance at a time.
    s.add_job(|| async { tokio::time::sleep(Duration::from_secs(25)).await })
        .trigger(every(10))
        .await
        .unwrap();
    let kinds: Vec<EventKind> = collect(&mut rx, 9).await.iter().map(Event::kind).collect();
    use EventKind as K;
    assert_eq!(
        kinds,
        [
            K::JOB_SUBMITTED,     // 10 s
            K::JOB_MAX_INSTANCES, // 20 s
            K::JOB_MAX_INSTANCES, // 30 s (the first run ends at 35 s)
            K::JOB_SUBMITTED,     // 40 s
            K::JOB_MAX_INSTANCES,
            K::JOB_MAX_INSTANCES,
            K::JOB_SUBMITTED, // 70 s
            K::JOB_MAX_INSTANCES,
            K::JOB_MAX_INSTANCES,
        ]
    );
    s.shutdown_now().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn removed_executor_keeps_job_and_reports_each_time() {
    let clock = TestClock::new(start_time());
    let s = scheduler(&clock);
    s.add_executor("extra", TokioExecutor::new()).unwrap();
    s.start().await.unwrap();
    s.add_job(|| async {})
        .trigger(every(60))
        .executor("extra")
        .id("orphan")
        .await
        .unwrap();
    s.remove_executor("extra").await.unwrap();
    let mut rx = s.subscribe(EventKind::JOB_ERROR);
    for k in 1..=3 {
        match rx.recv().await.unwrap() {
            Event::JobError {
                job_id,
                scheduled_run_time,
                error: JobError::NotRunnable { message },
                ..
            } => {
                assert_eq!(job_id, "orphan");
                assert_eq!(scheduled_run_time, start_time() + TimeDelta::minutes(k));
                assert!(message.contains("no executor named 'extra'"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
    let job = s.job("orphan").get().await.unwrap().expect("job kept");
    assert_eq!(
        job.next_run_time,
        Some(start_time() + TimeDelta::minutes(4))
    );
    s.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn adding_a_job_wakes_an_idle_loop() {
    let clock = TestClock::new(start_time());
    let s = scheduler(&clock);
    s.start().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3600)).await; // idle, no jobs
    let mut rx = s.subscribe(EventKind::JOB_EXECUTED);
    let added_at = clock.now();
    s.add_job(|| async { "now" }).await.unwrap(); // no trigger: run once, now
    match rx.recv().await.unwrap() {
        Event::JobExecuted {
            scheduled_run_time,
            retval,
            ..
        } => {
            assert_eq!(scheduled_run_time, added_at);
            assert_eq!(retval, "now");
        }
        other => panic!("{other:?}"),
    }
    // A one-shot job is gone after its run.
    assert!(s.get_jobs().await.unwrap().is_empty());
    s.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn shutdown_with_wait_lets_running_jobs_finish() {
    let clock = TestClock::new(start_time());
    let s = scheduler(&clock);
    s.start().await.unwrap();
    let done = Arc::new(AtomicUsize::new(0));
    let d = done.clone();
    let mut rx = s.subscribe(EventKind::JOB_SUBMITTED);
    s.add_job(move || {
        let d = d.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(120)).await;
            d.fetch_add(1, Ordering::SeqCst);
        }
    })
    .await
    .unwrap();
    rx.recv().await.unwrap();
    tokio::task::yield_now().await;
    s.shutdown().await.unwrap();
    assert_eq!(done.load(Ordering::SeqCst), 1);
    assert_eq!(s.state(), SchedulerState::Stopped);
}

#[tokio::test(start_paused = true)]
async fn states_and_lifecycle_errors() {
    let clock = TestClock::new(start_time());
    let s = scheduler(&clock);
    let mut rx = s.subscribe(EventKind::ALL);
    assert_eq!(s.state(), SchedulerState::Stopped);
    assert!(matches!(s.shutdown().await, Err(Error::State { .. })));
    assert!(matches!(s.pause(), Err(Error::State { .. })));
    s.start_paused().await.unwrap();
    assert_eq!(s.state(), SchedulerState::Paused);
    assert!(matches!(s.start().await, Err(Error::State { .. })));
    s.resume().unwrap();
    s.pause().unwrap();
    s.resume().unwrap();
    s.shutdown().await.unwrap();
    let mut kinds = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        kinds.push(ev.kind());
    }
    use EventKind as K;
    assert_eq!(
        kinds,
        [
            K::EXECUTOR_ADDED,
            K::JOBSTORE_ADDED,
            K::SCHEDULER_STARTED,
            K::SCHEDULER_RESUMED,
            K::SCHEDULER_PAUSED,
            K::SCHEDULER_RESUMED,
            K::SCHEDULER_SHUTDOWN
        ]
    );
    // A stopped scheduler can start again.
    s.start().await.unwrap();
    s.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn pending_jobs_show_in_listings_until_start() {
    let clock = TestClock::new(start_time());
    let s = scheduler(&clock);
    s.add_job(|| async {})
        .trigger(every(90))
        .id("p")
        .name("nightly report")
        .await
        .unwrap();
    let job = s.job("p").get().await.unwrap().unwrap();
    assert!(job.pending);
    assert_eq!(job.name, "nightly report");
    let table = s.jobs_table().await.unwrap();
    assert!(
        table.contains("nightly report") && table.contains("pending"),
        "{table}"
    );
    s.start().await.unwrap();
    let job = s.job("p").get().await.unwrap().unwrap();
    assert!(!job.pending);
    assert_eq!(
        job.next_run_time,
        Some(start_time() + TimeDelta::seconds(90))
    );
    let table = s.jobs_table().await.unwrap();
    assert!(
        table.contains("Jobstore default:")
            && table.contains("next run at: 2024-01-15 10:01:30 UTC"),
        "{table}"
    );
    s.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn task_jobs_run_registered_tasks_with_their_arguments() {
    let clock = TestClock::new(start_time());
    let s = Scheduler::builder()
        .clock(clock.shared())
        .task(
            "add",
            |(a, b): (i64, i64)| async move { Ok::<_, String>(a + b) },
        )
        .blocking_task("shout", |s: String| s.to_uppercase())
        .build();
    s.start().await.unwrap();
    let mut rx = s.subscribe(EventKind::JOB_EXECUTED | EventKind::JOB_ERROR);
    s.add_task_job("add", (2, 3)).id("sum").await.unwrap();
    s.add_task_job("shout", "hi").id("loud").await.unwrap();
    s.add_task_job("add", "not a pair").id("bad").await.unwrap();
    let mut got = collect(&mut rx, 3).await;
    got.sort_by_key(|e| e.job_id().unwrap().to_string());
    match &got[0] {
        Event::JobError { error, .. } => {
            assert!(
                error.to_string().contains("arguments do not deserialise"),
                "{error}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(&got[1], Event::JobExecuted { retval, .. } if *retval == "HI"));
    assert!(matches!(&got[2], Event::JobExecuted { retval, .. } if *retval == 5));
    let err = s.add_task_job("nope", ()).await.unwrap_err();
    assert!(
        matches!(err, Error::UnknownTask(ref n) if n == "nope"),
        "{err}"
    );
    s.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_lagging_subscriber_is_told_how_many_events_it_lost() {
    let clock = TestClock::new(start_time());
    let s = Scheduler::builder()
        .clock(clock.shared())
        .event_capacity(4)
        .build();
    let mut rx = s.subscribe(EventKind::ALL);
    s.start().await.unwrap();
    for i in 0..10 {
        s.add_job(|| async {})
            .trigger(Date::at(start_time() + TimeDelta::days(1), None).unwrap())
            .id(format!("j{i}"))
            .await
            .unwrap();
    }
    assert!(matches!(
        rx.recv().await,
        Err(apsched::event::RecvError::Lagged(n)) if n > 0
    ));
    // It then resumes with the newest events.
    assert!(rx.recv().await.is_ok());
    s.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn stores_and_executors_can_be_added_and_removed() {
    let clock = TestClock::new(start_time());
    let s = scheduler(&clock);
    s.start().await.unwrap();
    let mut rx = s.subscribe(EventKind::ALL);
    s.add_store("archive", apsched::store::MemoryStore::new())
        .await
        .unwrap();
    assert!(matches!(
        s.add_store("archive", apsched::store::MemoryStore::new())
            .await,
        Err(Error::AliasInUse(_))
    ));
    s.add_job(|| async {})
        .trigger(every(60))
        .id("a")
        .store("archive")
        .await
        .unwrap();
    assert_eq!(s.store("archive").get_jobs().await.unwrap().len(), 1);
    assert!(s.store("default").get_jobs().await.unwrap().is_empty());
    assert!(matches!(
        s.add_job(|| async {}).store("nope").await,
        Err(Error::UnknownStore(_))
    ));
    s.store("archive").remove_all_jobs().await.unwrap();
    s.remove_store("archive").await.unwrap();
    s.add_executor("more", TokioExecutor::new()).unwrap();
    s.remove_executor("more").await.unwrap();
    let mut kinds = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        kinds.push(ev.kind());
    }
    use EventKind as K;
    assert_eq!(
        kinds,
        [
            K::JOBSTORE_ADDED,
            K::JOB_ADDED,
            K::ALL_JOBS_REMOVED,
            K::JOBSTORE_REMOVED,
            K::EXECUTOR_ADDED,
            K::EXECUTOR_REMOVED
        ]
    );
    s.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn modify_changes_options_and_validates_them() {
    let clock = TestClock::new(start_time());
    let s = scheduler(&clock);
    s.start().await.unwrap();
    s.add_job(|| async {})
        .trigger(every(60))
        .id("j")
        .await
        .unwrap();
    let job = s
        .job("j")
        .modify(
            apsched::JobChanges::new()
                .name("renamed")
                .coalesce(false)
                .max_instances(4)
                .misfire_grace_time(None),
        )
        .await
        .unwrap();
    assert_eq!(
        (
            job.name.as_str(),
            job.coalesce,
            job.max_instances,
            job.misfire_grace_time
        ),
        ("renamed", false, 4, None)
    );
    assert!(matches!(
        s.job("j")
            .modify(apsched::JobChanges::new().max_instances(0))
            .await,
        Err(Error::InvalidJob { .. })
    ));
    assert!(matches!(
        s.job("j")
            .modify(apsched::JobChanges::new().executor("nope"))
            .await,
        Err(Error::UnknownExecutor(_))
    ));
    assert!(matches!(
        s.job("zzz").modify(apsched::JobChanges::new()).await,
        Err(Error::JobLookup(_))
    ));
    let paused = s.job("j").pause().await.unwrap();
    assert!(paused.is_paused());
    let resumed = s.job("j").resume().await.unwrap().unwrap();
    assert_eq!(
        resumed.next_run_time,
        Some(clock.now() + TimeDelta::seconds(60))
    );
    s.shutdown().await.unwrap();
}

/// Scheduled times of the next `n` JOB_EXECUTED events.
async fn executed_times(rx: &mut apsched::EventReceiver, n: usize) -> Vec<DateTime<Utc>> {
    collect(rx, n)
        .await
        .into_iter()
        .map(|e| match e {
            Event::JobExecuted {
                scheduled_run_time, ..
            } => scheduled_run_time,
            other => panic!("{other:?}"),
        })
        .collect()
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

#[tokio::test(start_paused = true)]
async fn a_month_of_hourly_cron_runs_in_virtual_time() {
    let clock = TestClock::new(utc("2024-01-01T00:00:00Z"));
    let s = scheduler(&clock);
    s.start().await.unwrap();
    let mut rx = s.subscribe(EventKind::JOB_EXECUTED);
    s.add_job(|| async {})
        .trigger(
            apsched::trigger::Cron::builder()
                .minute("0")
                .end_date("2024-01-31 23:59:59")
                .build()
                .unwrap(),
        )
        .id("hourly")
        .await
        .unwrap();
    // `now` is inclusive: added at 00:00 sharp, the first run is 00:00.
    let times = executed_times(&mut rx, 31 * 24).await;
    for (k, t) in times.iter().enumerate() {
        assert_eq!(*t, utc("2024-01-01T00:00:00Z") + TimeDelta::hours(k as i64));
    }
    // The trigger is exhausted after 2024-01-31 23:00: the job is removed.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(s.get_jobs().await.unwrap().is_empty());
    s.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn dst_spring_forward_shifts_the_missing_time_forward() {
    // New York, 2024-03-10: 02:00 EST jumps to 03:00 EDT; 02:30 does not exist that day.
    let clock = TestClock::new(utc("2024-03-09T00:00:00Z"));
    let s = scheduler(&clock);
    s.start().await.unwrap();
    let mut rx = s.subscribe(EventKind::JOB_EXECUTED);
    s.add_job(|| async {})
        .trigger(
            apsched::trigger::Cron::builder()
                .hour("2")
                .minute("30")
                .timezone(chrono_tz::America::New_York)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        executed_times(&mut rx, 3).await,
        [
            utc("2024-03-09T07:30:00Z"), // 02:30 EST
            utc("2024-03-10T07:30:00Z"), // 03:30 EDT: shifted by the gap, once
            utc("2024-03-11T06:30:00Z"), // 02:30 EDT
        ]
    );
    s.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn dst_fall_back_fires_once_unless_the_hour_is_a_wildcard() {
    // New York, 2024-11-03: 02:00 EDT falls back to 01:00 EST; 01:30 happens twice.
    let clock = TestClock::new(utc("2024-11-03T04:00:00Z"));
    let s = scheduler(&clock);
    s.start().await.unwrap();
    let mut rx = s.subscribe(EventKind::JOB_EXECUTED);
    let ny = chrono_tz::America::New_York;
    s.add_job(|| async {})
        .id("daily-0130")
        .trigger(
            apsched::trigger::Cron::builder()
                .hour("1")
                .minute("30")
                .timezone(ny)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    s.add_job(|| async {})
        .id("hourly-at-30")
        .trigger(
            apsched::trigger::Cron::builder()
                .minute("30")
                .end_date("2024-11-03 02:59:59")
                .timezone(ny)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    let mut got: Vec<(String, DateTime<Utc>)> = collect(&mut rx, 4)
        .await
        .into_iter()
        .map(|e| match e {
            Event::JobExecuted {
                job_id,
                scheduled_run_time,
                ..
            } => (job_id, scheduled_run_time),
            other => panic!("{other:?}"),
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("daily-0130".into(), utc("2024-11-03T05:30:00Z")), // first 01:30 only
            ("hourly-at-30".into(), utc("2024-11-03T04:30:00Z")), // 00:30 EDT
            ("hourly-at-30".into(), utc("2024-11-03T05:30:00Z")), // 01:30 EDT
            ("hourly-at-30".into(), utc("2024-11-03T06:30:00Z")), // 01:30 EST, again
        ]
    );
    // The daily job's next run is the next day's 01:30 EST.
    let job = s.job("daily-0130").get().await.unwrap().unwrap();
    assert_eq!(job.next_run_time, Some(utc("2024-11-04T06:30:00Z")));
    s.shutdown().await.unwrap();
}
