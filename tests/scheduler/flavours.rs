//! The flavours that own a runtime: usable from plain (non-async) code.

use std::time::Duration;

use apsched::{
    BackgroundScheduler, BlockingScheduler, Error, Event, EventKind, LocalScheduler, Scheduler,
    SchedulerState,
};

#[test]
fn background_scheduler_from_plain_code() {
    let bg = BackgroundScheduler::new(Scheduler::builder()).unwrap();
    let mut rx = bg.subscribe(EventKind::JOB_EXECUTED);
    let (tx, seen) = std::sync::mpsc::channel();
    bg.add_listener(EventKind::JOB_ADDED, move |ev| {
        let _ = tx.send(ev.job_id().map(str::to_string));
        async {}
    });
    bg.start().unwrap();
    assert_eq!(bg.state(), SchedulerState::Running);
    bg.add_blocking_job(|| "from a thread")
        .id("t")
        .add()
        .unwrap();
    match rx.blocking_recv().unwrap() {
        Event::JobExecuted { retval, .. } => assert_eq!(retval, "from a thread"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        seen.recv_timeout(Duration::from_secs(10))
            .unwrap()
            .as_deref(),
        Some("t")
    );
    bg.add_job(|| async {})
        .id("later")
        .trigger(apsched::trigger::Interval::new(Duration::from_secs(3600)).unwrap())
        .add()
        .unwrap();
    assert_eq!(bg.get_jobs().unwrap().len(), 1);
    bg.job("later").pause().unwrap();
    assert!(bg.job("later").get().unwrap().unwrap().is_paused());
    bg.job("later").remove().unwrap();
    bg.shutdown().unwrap();
    assert_eq!(bg.state(), SchedulerState::Stopped);
}

/// A BackgroundScheduler owns its runtime, so it works when built, used and dropped inside
/// another runtime too (a test harness, a service that also has sync parts).
#[tokio::test(flavor = "current_thread")]
async fn background_scheduler_inside_a_runtime() {
    let bg = BackgroundScheduler::new(Scheduler::builder()).unwrap();
    let mut rx = bg.subscribe(EventKind::JOB_EXECUTED);
    bg.start().unwrap();
    bg.add_blocking_job(|| 7).id("seven").add().unwrap();
    // The run happens on the scheduler's own threads while this runtime waits.
    match rx.recv().await.unwrap() {
        Event::JobExecuted { retval, .. } => assert_eq!(retval, 7),
        other => panic!("{other:?}"),
    }
    // The blocking API takes the same job forms, a job context included.
    bg.add_blocking_job(|ctx: apsched::JobContext| ctx.job_id().to_string())
        .id("ctx")
        .timeout(Duration::from_secs(60))
        .add()
        .unwrap();
    match rx.recv().await.unwrap() {
        Event::JobExecuted { retval, .. } => assert_eq!(retval, "ctx"),
        other => panic!("{other:?}"),
    }
    let id = bg.add_listener(EventKind::ALL, |_| async {});
    assert!(bg.remove_listener(id));
    assert!(!bg.remove_listener(id), "a listener is removed once");
    let err = bg.store("nope").get_jobs().unwrap_err();
    assert!(matches!(err, Error::UnknownStore(_)), "{err}");
    bg.shutdown_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(bg.state(), SchedulerState::Stopped);
}

/// Dropping a running BackgroundScheduler from plain code stops it first.
#[test]
fn dropping_a_running_background_scheduler() {
    let bg = BackgroundScheduler::new(Scheduler::builder()).unwrap();
    bg.start().unwrap();
    let handle = bg.scheduler().clone();
    drop(bg);
    assert_eq!(handle.state(), SchedulerState::Stopped);
}

/// Dropping a running BackgroundScheduler inside async code neither blocks nor panics: it
/// stops on a thread of its own.
#[tokio::test(flavor = "current_thread")]
async fn dropping_a_running_background_scheduler_inside_a_runtime() {
    let bg = BackgroundScheduler::new(Scheduler::builder()).unwrap();
    bg.start().unwrap();
    let handle = bg.scheduler().clone();
    bg.add_job(|| async {})
        .trigger(apsched::trigger::Interval::new(Duration::from_secs(1)).unwrap())
        .add()
        .unwrap();
    drop(bg);
    // The drop thread stops the scheduler (shutdown_now) before its runtime.
    tokio::time::timeout(Duration::from_secs(30), handle.wait_for_shutdown())
        .await
        .expect("the dropped scheduler stops");
    assert_eq!(handle.state(), SchedulerState::Stopped);
}

#[test]
fn blocking_scheduler_runs_until_a_job_shuts_it_down() {
    let scheduler = BlockingScheduler::new(Scheduler::builder()).unwrap();
    let handle = scheduler.scheduler().clone();
    scheduler
        .add_job(move || {
            let handle = handle.clone();
            async move {
                // Shutting down from inside a job: not waiting for this very job.
                tokio::spawn(async move { handle.shutdown_now().await });
            }
        })
        .add()
        .unwrap();
    scheduler.run().unwrap();
    assert_eq!(scheduler.scheduler().state(), SchedulerState::Stopped);
}

#[test]
fn local_scheduler_runs_non_send_jobs() {
    let scheduler = LocalScheduler::new(Scheduler::builder()).unwrap();
    let handle = scheduler.scheduler().clone();
    let mut rx = handle.subscribe(EventKind::JOB_EXECUTED);
    let h = handle.clone();
    scheduler
        .add_local_job(move || {
            let h = h.clone();
            async move {
                let cell = std::rc::Rc::new(std::cell::RefCell::new(1));
                tokio::task::yield_now().await;
                *cell.borrow_mut() += 1;
                tokio::spawn(async move { h.shutdown_now().await });
                let v = *cell.borrow();
                v
            }
        })
        .add()
        .unwrap();
    scheduler.run().unwrap();
    match rx.try_recv() {
        Ok(Event::JobExecuted { retval, .. }) => assert_eq!(retval, 2),
        other => panic!("{other:?}"),
    }
}
