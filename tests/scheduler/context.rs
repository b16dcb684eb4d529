//! Jobs that can be stopped (issue 12): the `JobContext` a job body may take, its
//! cancellation (shutdown_now, shutdown_timeout, cancel_run, the job's timeout), timeouts on
//! every executor, and one outcome event per scheduled time throughout.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apsched::clock::TestClock;
use apsched::executor::BlockingExecutor;
use apsched::job::JobRecord;
use apsched::trigger::Interval;
use apsched::{
    Error, Event, EventKind, EventReceiver, JobChanges, JobContext, JobDefaults, RunId, Scheduler,
};
use chrono::{DateTime, TimeZone, Utc};
use tokio::sync::mpsc;
use tokio::time::Instant;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 15, 10, 0, 0).unwrap()
}

fn scheduler(clock: &TestClock) -> Scheduler {
    Scheduler::builder()
        .timezone(chrono_tz::UTC)
        .clock(clock.shared())
        .timeout_grace(Duration::from_secs(2))
        .build()
}

/// The outcome events of runs: exactly one per scheduled time.
fn outcomes(s: &Scheduler) -> EventReceiver {
    s.subscribe(
        EventKind::JOB_EXECUTED
            | EventKind::JOB_ERROR
            | EventKind::JOB_MISSED
            | EventKind::JOB_TIMEOUT,
    )
}

/// A job body that reports its context once it runs, then waits for its token and returns
/// `"cancelled"`.
fn waits_for_cancel(
    started: mpsc::UnboundedSender<JobContext>,
) -> impl Fn(JobContext) -> std::pin::Pin<Box<dyn std::future::Future<Output = &'static str> + Send>>
       + Send
       + Sync
       + 'static {
    move |ctx: JobContext| {
        let started = started.clone();
        Box::pin(async move {
            let _ = started.send(ctx.clone());
            ctx.cancelled().await;
            "cancelled"
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_context_describes_its_run() {
    let clock = TestClock::new(t0());
    let s = scheduler(&clock);
    let mut rx = outcomes(&s);
    s.start().await.unwrap();
    let (tx, mut seen) = mpsc::unbounded_channel();
    s.add_job(move |ctx: JobContext| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(ctx);
        }
    })
    .trigger(Interval::new(Duration::from_secs(60)).unwrap())
    .next_run_time(t0())
    .id("ctx")
    .name("with context")
    .await
    .unwrap();
    let first = seen.recv().await.unwrap();
    assert_eq!(first.job_id(), "ctx");
    assert_eq!(first.name(), "with context");
    assert_eq!(first.scheduled_run_time(), t0());
    assert_eq!(first.attempt(), 1);
    assert!(!first.is_manual());
    assert!(!first.is_cancelled());
    assert_eq!(first.scheduler().id(), s.id());
    assert!(matches!(
        rx.recv().await.unwrap(),
        Event::JobExecuted { .. }
    ));
    clock.advance(Duration::from_secs(60)).await;
    let second = seen.recv().await.unwrap();
    assert_eq!(
        second.scheduled_run_time(),
        t0() + chrono::Duration::seconds(60)
    );
    assert_ne!(first.run_id(), second.run_id(), "each run has its own id");
    // The run is over: its id no longer cancels anything.
    assert!(matches!(
        rx.recv().await.unwrap(),
        Event::JobExecuted { .. }
    ));
    assert!(!s.cancel_run(second.run_id()));
    // Zero-argument jobs run as before, next to jobs taking a context.
    s.add_job(|| async { 7 }).id("plain").await.unwrap();
    assert!(matches!(
        rx.recv().await.unwrap(),
        Event::JobExecuted { retval, .. } if retval == 7
    ));
    s.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_name_defaults_to_the_id_and_tasks_get_a_context_too() {
    let clock = TestClock::new(t0());
    let s = Scheduler::builder()
        .timezone(chrono_tz::UTC)
        .clock(clock.shared())
        .task("whoami", |n: u32, ctx: JobContext| async move {
            format!("{n} {}", ctx.name())
        })
        .blocking_task("blocking_whoami", |n: u32, ctx: JobContext| {
            format!("{n} {}", ctx.job_id())
        })
        .build();
    let mut rx = outcomes(&s);
    s.start().await.unwrap();
    s.add_task_job("whoami", 1).id("task").await.unwrap();
    assert!(matches!(
        rx.recv().await.unwrap(),
        Event::JobExecuted { retval, .. } if retval == "1 task"
    ));
    s.add_task_job("blocking_whoami", 2)
        .id("blocking_task")
        .await
        .unwrap();
    assert!(matches!(
        rx.recv().await.unwrap(),
        Event::JobExecuted { retval, .. } if retval == "2 blocking_task"
    ));
    s.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn shutdown_now_cancels_the_runs_in_flight() {
    let clock = TestClock::new(t0());
    let s = scheduler(&clock);
    let mut rx = outcomes(&s);
    s.start().await.unwrap();
    let (tx, mut started) = mpsc::unbounded_channel();
    s.add_job(waits_for_cancel(tx)).id("w").await.unwrap();
    let ctx = started.recv().await.unwrap();
    assert!(!ctx.is_cancelled());
    s.shutdown_now().await.unwrap();
    assert!(ctx.is_cancelled());
    assert!(matches!(
        rx.recv().await.unwrap(),
        Event::JobExecuted { retval, .. } if retval == "cancelled"
    ));
}

#[tokio::test(start_paused = true)]
async fn shutdown_timeout_cancels_the_runs_left_when_its_time_is_up() {
    let clock = TestClock::new(t0());
    let s = scheduler(&clock);
    let mut rx = outcomes(&s);
    s.start().await.unwrap();
    let (tx, mut started) = mpsc::unbounded_channel();
    s.add_job(waits_for_cancel(tx)).id("w").await.unwrap();
    let ctx = started.recv().await.unwrap();
    let begun = Instant::now();
    s.shutdown_timeout(Duration::from_secs(10)).await.unwrap();
    assert_eq!(begun.elapsed(), Duration::from_secs(10), "it waited first");
    assert!(ctx.is_cancelled());
    assert!(matches!(
        rx.recv().await.unwrap(),
        Event::JobExecuted { retval, .. } if retval == "cancelled"
    ));
}

#[tokio::test(start_paused = true)]
async fn shutdown_with_waiting_does_not_cancel() {
    let clock = TestClock::new(t0());
    let s = scheduler(&clock);
    s.start().await.unwrap();
    let (tx, mut started) = mpsc::unbounded_channel();
    s.add_job(move |ctx: JobContext| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(ctx.clone());
            tokio::time::sleep(Duration::from_secs(5)).await;
            ctx.is_cancelled()
        }
    })
    .id("w")
    .await
    .unwrap();
    let ctx = started.recv().await.unwrap();
    s.shutdown().await.unwrap();
    assert!(!ctx.is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn cancel_run_cancels_one_run_and_reports_runs_that_ended() {
    let clock = TestClock::new(t0());
    let s = scheduler(&clock);
    let mut rx = outcomes(&s);
    s.start().await.unwrap();
    let (tx, mut started) = mpsc::unbounded_channel();
    s.add_job(waits_for_cancel(tx.clone()))
        .id("a")
        .await
        .unwrap();
    s.add_job(waits_for_cancel(tx)).id("b").await.unwrap();
    let first = started.recv().await.unwrap();
    let second = started.recv().await.unwrap();
    assert!(s.cancel_run(first.run_id()));
    assert!(first.is_cancelled());
    assert!(!second.is_cancelled(), "only that run");
    match rx.recv().await.unwrap() {
        Event::JobExecuted { job_id, retval, .. } => {
            assert_eq!(
                (job_id.as_str(), retval),
                (first.job_id(), "cancelled".into())
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(!s.cancel_run(first.run_id()), "that run has ended");
    let never = {
        let (tx, mut rx) = mpsc::unbounded_channel();
        s.add_job(move |ctx: JobContext| {
            let _ = tx.send(ctx.run_id());
            async {}
        })
        .await
        .unwrap();
        rx.recv().await.unwrap()
    };
    assert!(!s.cancel_run(never));
    s.shutdown_now().await.unwrap();
}

/// Runs on a current-thread runtime in paused time: an async body that honours its token
/// ends at the timeout; the outcome is the timeout, not what it returned.
#[tokio::test(start_paused = true)]
async fn a_timeout_cancels_a_run_that_honours_its_token() {
    let clock = TestClock::new(t0());
    let s = scheduler(&clock);
    let mut rx = outcomes(&s);
    s.start().await.unwrap();
    let begun = Instant::now();
    s.add_job(|ctx: JobContext| async move {
        tokio::select! {
            _ = ctx.cancelled() => Err("cancelled"),
            _ = tokio::time::sleep(Duration::from_secs(3600)) => Ok("finished"),
        }
    })
    .timeout(Duration::from_secs(10))
    .id("honours")
    .await
    .unwrap();
    match rx.recv().await.unwrap() {
        Event::JobTimeout {
            job_id,
            scheduled_run_time,
            timeout,
            aborted,
            ..
        } => {
            assert_eq!(job_id, "honours");
            assert_eq!(scheduled_run_time, t0());
            assert_eq!(timeout, Duration::from_secs(10));
            assert!(!aborted, "it ended within the grace period");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(begun.elapsed(), Duration::from_secs(10));
    // One outcome for the scheduled time: nothing else follows.
    clock.advance(Duration::from_secs(60)).await;
    assert!(rx.try_recv().is_err());
    s.shutdown().await.unwrap();
}

/// Dropped when the body is dropped: shows that an async body was aborted.
struct Dropped(Arc<AtomicBool>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn a_run_that_ignores_its_timeout_is_aborted_after_the_grace() {
    let clock = TestClock::new(t0());
    let s = scheduler(&clock);
    let mut rx = outcomes(&s);
    s.start().await.unwrap();
    let dropped = Arc::new(AtomicBool::new(false));
    let d = dropped.clone();
    let begun = Instant::now();
    // A zero-argument body: a timeout needs no context.
    s.add_job(move || {
        let guard = Dropped(d.clone());
        async move {
            let _guard = guard;
            tokio::time::sleep(Duration::from_secs(3600)).await;
            "finished"
        }
    })
    .timeout(Duration::from_secs(10))
    .id("ignores")
    .await
    .unwrap();
    assert!(matches!(
        rx.recv().await.unwrap(),
        Event::JobTimeout { aborted: true, .. }
    ));
    assert_eq!(begun.elapsed(), Duration::from_secs(12), "timeout + grace");
    assert!(dropped.load(Ordering::SeqCst), "the body was dropped");
    clock.advance(Duration::from_secs(3600)).await;
    assert!(rx.try_recv().is_err(), "one outcome per scheduled time");
    s.shutdown().await.unwrap();
}

/// A blocking body cannot be stopped: at the timeout and grace the run is reported as timed
/// out and its instance slot freed (the next run starts instead of being refused for
/// `max_instances`); the thread finishes later and reports nothing.
#[tokio::test(start_paused = true)]
async fn a_blocking_run_past_its_timeout_frees_its_slot_and_reports_once() {
    let clock = TestClock::new(t0());
    let s = Scheduler::builder()
        .timezone(chrono_tz::UTC)
        .clock(clock.shared())
        .timeout_grace(Duration::from_secs(1))
        .executor("default", BlockingExecutor::new(4))
        .build();
    let mut rx = s.subscribe(
        EventKind::JOB_EXECUTED
            | EventKind::JOB_ERROR
            | EventKind::JOB_MISSED
            | EventKind::JOB_TIMEOUT
            | EventKind::JOB_MAX_INSTANCES,
    );
    s.start().await.unwrap();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let released = Mutex::new(released);
    let (finished, mut thread_done) = mpsc::unbounded_channel::<bool>();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    s.add_blocking_job(move |ctx: JobContext| {
        if c.fetch_add(1, Ordering::SeqCst) == 0 {
            // The first run ignores its token and blocks until the test lets it go.
            let _ = released.lock().unwrap().recv();
            let _ = finished.send(ctx.is_cancelled());
        }
        "done"
    })
    .trigger(Interval::new(Duration::from_secs(60)).unwrap())
    .next_run_time(t0())
    .timeout(Duration::from_secs(5))
    .misfire_grace_time(None)
    .id("stuck")
    .await
    .unwrap();
    // Paused time does not move on its own while a blocking thread runs: move it.
    while calls.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    // In small steps, so that the supervisor sets its grace timer before time passes it.
    let begun = Instant::now();
    let event = loop {
        clock.advance(Duration::from_millis(250)).await;
        if let Ok(event) = rx.try_recv() {
            break event;
        }
        assert!(begun.elapsed() < Duration::from_secs(60), "no outcome");
    };
    // Timeout + grace, seen within a step or two.
    let elapsed = begun.elapsed();
    assert!(
        elapsed >= Duration::from_secs(6) && elapsed <= Duration::from_secs(7),
        "{elapsed:?}"
    );
    match event {
        Event::JobTimeout {
            scheduled_run_time,
            aborted,
            ..
        } => {
            assert_eq!(scheduled_run_time, t0());
            assert!(aborted, "the thread was still going");
        }
        other => panic!("{other:?}"),
    }
    // The slot is free: the next due time runs (max_instances is 1).
    clock.set(t0() + chrono::Duration::seconds(60)).await;
    match rx.recv().await.unwrap() {
        Event::JobExecuted {
            scheduled_run_time, ..
        } => assert_eq!(scheduled_run_time, t0() + chrono::Duration::seconds(60)),
        other => panic!("{other:?}"),
    }
    // The abandoned thread finishes later; its result is discarded.
    release.send(()).unwrap();
    assert!(
        thread_done.recv().await.unwrap(),
        "its token was cancelled at the timeout"
    );
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(
        rx.try_recv().is_err(),
        "no second outcome for the first time"
    );
    s.shutdown_now().await.unwrap();
}

/// A command job's timeout stops the child: `sleep` ends on the SIGTERM it gets at the
/// timeout, within the grace period (real processes, real time: short timeouts). A child
/// ignoring SIGTERM is killed after the grace: tests/scheduler/process_stop.rs.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_job_past_its_timeout_is_stopped() {
    use apsched::executor::{CommandSpec, ProcessExecutor};
    let s = Scheduler::builder()
        .timezone(chrono_tz::UTC)
        .timeout_grace(Duration::from_millis(100))
        .executor("processes", ProcessExecutor::new(1))
        .build();
    let mut rx = outcomes(&s);
    s.start().await.unwrap();
    let begun = std::time::Instant::now();
    s.add_command_job(CommandSpec::new("sleep").arg("30"))
        .executor("processes")
        .timeout(Duration::from_millis(300))
        .id("sleeper")
        .await
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("the timeout fired")
        .unwrap();
    assert!(
        matches!(event, Event::JobTimeout { aborted: false, .. }),
        "{event:?}"
    );
    assert!(
        begun.elapsed() < Duration::from_secs(10),
        "the child was stopped"
    );
    s.shutdown().await.unwrap();
    assert!(
        begun.elapsed() < Duration::from_secs(10),
        "nothing waits for the child"
    );
}

#[tokio::test(start_paused = true)]
async fn timeouts_come_from_the_defaults_can_be_changed_and_zero_is_refused() {
    let clock = TestClock::new(t0());
    let s = Scheduler::builder()
        .timezone(chrono_tz::UTC)
        .clock(clock.shared())
        .job_defaults(JobDefaults::default().timeout(Some(Duration::from_secs(30))))
        .build();
    s.start().await.unwrap();
    let job = s.add_job(|| async {}).paused().id("d").await.unwrap();
    assert_eq!(job.timeout, Some(Duration::from_secs(30)));
    let none = s
        .add_job(|| async {})
        .paused()
        .timeout(None)
        .id("n")
        .await
        .unwrap();
    assert_eq!(none.timeout, None);
    let changed = s
        .job("d")
        .modify(JobChanges::new().timeout(Some(Duration::from_secs(5))))
        .await
        .unwrap();
    assert_eq!(changed.timeout, Some(Duration::from_secs(5)));
    assert!(matches!(
        s.add_job(|| async {}).timeout(Duration::ZERO).await,
        Err(Error::InvalidJob { .. })
    ));
    assert!(matches!(
        s.job("d")
            .modify(JobChanges::new().timeout(Some(Duration::ZERO)))
            .await,
        Err(Error::InvalidJob { .. })
    ));
    s.shutdown().await.unwrap();
}

#[test]
fn a_timeout_is_stored_with_the_job_and_older_documents_load() {
    let mut job = JobRecord::new(
        "t",
        apsched::job::Callable::Task {
            name: "echo".into(),
            args: serde_json::Value::Null,
        },
        Interval::new(Duration::from_secs(60)).unwrap(),
    );
    job.timeout = Some(Duration::from_millis(1500));
    let json = job.to_json().unwrap();
    let back = JobRecord::from_json(&json, 1, None).unwrap();
    assert_eq!(back.timeout, Some(Duration::from_millis(1500)));
    // A document written before timeouts existed has no such field.
    let mut doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    doc.as_object_mut().unwrap().remove("timeout");
    let old = JobRecord::from_json(&doc.to_string(), 1, None).unwrap();
    assert_eq!(old.timeout, None);
    doc["timeout"] = 0.into();
    assert!(JobRecord::from_json(&doc.to_string(), 1, None).is_err());
}

#[test]
fn run_ids_are_numbers_that_print() {
    fn id_of(ctx: &JobContext) -> RunId {
        ctx.run_id()
    }
    let _ = id_of;
    assert!(EventKind::ALL.contains(EventKind::JOB_TIMEOUT));
    assert_eq!(EventKind::JOB_TIMEOUT.bits(), 1 << 19);
    assert_eq!(EventKind::JOB_TIMEOUT.name(), "EVENT_JOB_TIMEOUT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_job_gets_its_context_and_its_timeout() {
    use apsched::executor::LocalExecutor;
    let s = Scheduler::builder()
        .timezone(chrono_tz::UTC)
        .timeout_grace(Duration::from_millis(50))
        .executor("local", LocalExecutor::new().unwrap())
        .build();
    let mut rx = outcomes(&s);
    s.start().await.unwrap();
    s.add_local_job(|ctx: JobContext| async move {
        // `!Send` across the await.
        let name = std::rc::Rc::new(ctx.job_id().to_string());
        tokio::task::yield_now().await;
        name.to_string()
    })
    .id("local")
    .await
    .unwrap();
    assert!(matches!(
        rx.recv().await.unwrap(),
        Event::JobExecuted { retval, .. } if retval == "local"
    ));
    s.add_local_job(|| async {
        let _rc = std::rc::Rc::new(());
        std::future::pending::<()>().await
    })
    .timeout(Duration::from_millis(50))
    .id("stuck")
    .await
    .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(event, Event::JobTimeout { aborted: true, .. }),
        "{event:?}"
    );
    s.shutdown().await.unwrap();
}

/// The same in real time, on a real thread: a blocking body sleeping 2 s with a 200 ms
/// timeout and a 100 ms grace is reported timed out (aborted) and its slot freed, while
/// its thread sleeps on (the run after it finishes first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_blocking_thread_past_its_timeout_is_abandoned_in_real_time() {
    let s = Scheduler::builder()
        .timezone(chrono_tz::UTC)
        .timeout_grace(Duration::from_millis(100))
        .executor("default", BlockingExecutor::new(2))
        .build();
    let mut rx = s.subscribe(EventKind::JOB_TIMEOUT | EventKind::JOB_EXECUTED);
    s.start().await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    s.add_blocking_job(move || {
        if c.fetch_add(1, Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_secs(2));
            return "slow";
        }
        "quick"
    })
    .trigger(Interval::new(Duration::from_secs(3600)).unwrap())
    .next_run_time(Utc::now())
    .timeout(Duration::from_millis(200))
    .id("sleepy")
    .await
    .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("an outcome long before the thread wakes")
        .unwrap();
    let Event::JobTimeout { aborted, .. } = event else {
        panic!("expected a timeout, got {event:?}")
    };
    assert!(aborted);
    // Its instance is free: a run now starts (and finishes) beside the sleeping thread.
    s.job("sleepy").run_now().await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("the next run is not held up by the abandoned thread")
        .unwrap();
    assert!(
        matches!(&event, Event::JobExecuted { retval, .. } if retval == "quick"),
        "{event:?}"
    );
    s.shutdown_now().await.unwrap();
}
