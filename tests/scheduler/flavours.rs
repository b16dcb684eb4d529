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
    })
    .unwrap();
    bg.start().unwrap();
    assert_eq!(bg.state(), SchedulerState::Running);
    bg.scheduler()
        .add_blocking_job(|| "from a thread")
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
    bg.scheduler()
        .add_job(|| async {})
        .id("later")
        .trigger(apsched::trigger::Interval::new(Duration::from_secs(3600)).unwrap())
        .add()
        .unwrap();
    assert_eq!(bg.get_jobs(None).unwrap().len(), 1);
    bg.pause_job("later", None).unwrap();
    assert!(bg.get_job("later", None).unwrap().unwrap().is_paused());
    bg.remove_job("later", None).unwrap();
    bg.shutdown(true).unwrap();
    assert_eq!(bg.state(), SchedulerState::Stopped);
}

#[tokio::test]
async fn blocking_calls_inside_async_code_are_an_error_not_a_panic() {
    let s = Scheduler::builder().build();
    let err = s.add_job(|| async {}).add().unwrap_err();
    assert!(matches!(err, Error::State { .. }), "{err}");
}

#[test]
fn blocking_scheduler_runs_until_a_job_shuts_it_down() {
    let scheduler = BlockingScheduler::new(Scheduler::builder()).unwrap();
    let handle = scheduler.scheduler().clone();
    scheduler
        .scheduler()
        .add_job(move || {
            let handle = handle.clone();
            async move {
                // Shutting down from inside a job: not waiting for this very job.
                tokio::spawn(async move { handle.shutdown(false).await });
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
        .scheduler()
        .add_local_job(move || {
            let h = h.clone();
            async move {
                let cell = std::rc::Rc::new(std::cell::RefCell::new(1));
                tokio::task::yield_now().await;
                *cell.borrow_mut() += 1;
                tokio::spawn(async move { h.shutdown(false).await });
                let v = *cell.borrow();
                v
            }
        })
        .add()
        .unwrap();
    scheduler.run().unwrap();
    match rx.try_recv() {
        Some(Ok(Event::JobExecuted { retval, .. })) => assert_eq!(retval, 2),
        other => panic!("{other:?}"),
    }
}
