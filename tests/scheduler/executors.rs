//! Executors: thread-pool bound, child processes (exit status, stderr, timeout, signals, at
//! most N at once), `!Send` futures, panics. These run in real time (threads and child
//! processes do not follow Tokio's paused clock), with short waits.

use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use apsched::executor::{BlockingExecutor, CommandSpec, LocalExecutor, ProcessExecutor};
use apsched::{Error, Event, EventKind, JobError, Scheduler};

async fn next_outcome(rx: &mut apsched::EventReceiver) -> Event {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("an outcome within 30 s")
        .expect("event")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_pool_runs_at_most_max_workers_at_once() {
    let s = Scheduler::builder()
        .executor("default", BlockingExecutor::new(2))
        .build();
    s.start().await.unwrap();
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let mut rx = s.subscribe(EventKind::JOB_EXECUTED);
    for i in 0..8 {
        let (running, peak) = (running.clone(), peak.clone());
        s.add_blocking_job(move || {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(30));
            running.fetch_sub(1, Ordering::SeqCst);
        })
        .id(format!("b{i}"))
        .misfire_grace_time(None)
        .await
        .unwrap();
    }
    for _ in 0..8 {
        next_outcome(&mut rx).await;
    }
    assert_eq!(peak.load(Ordering::SeqCst), 2);
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_job_panic_is_a_job_error() {
    let s = Scheduler::builder()
        .executor("pool", BlockingExecutor::new(1))
        .build();
    s.start().await.unwrap();
    let mut rx = s.subscribe(EventKind::JOB_ERROR);
    s.add_blocking_job(|| -> Result<(), String> { panic!("thread went bang") })
        .executor("pool")
        .await
        .unwrap();
    match next_outcome(&mut rx).await {
        Event::JobError { error, .. } => assert_eq!(
            error,
            JobError::Panicked {
                message: "thread went bang".into()
            }
        ),
        other => panic!("{other:?}"),
    }
    s.shutdown().await.unwrap();
}

fn sh(script: &str) -> CommandSpec {
    CommandSpec::new("sh").arg("-c").arg(script)
}

async fn process_outcome(s: &Scheduler, cmd: CommandSpec) -> Event {
    let mut rx = s.subscribe(EventKind::JOB_EXECUTED | EventKind::JOB_ERROR);
    s.add_command_job(cmd)
        .executor("procs")
        .misfire_grace_time(None)
        .await
        .unwrap();
    next_outcome(&mut rx).await
}

#[tokio::test]
async fn process_executor_reports_exit_status_stderr_and_stdout() {
    let s = Scheduler::builder()
        .executor("procs", ProcessExecutor::new(2))
        .build();
    s.start().await.unwrap();

    match process_outcome(
        &s,
        sh("echo hello; echo from-env=$GREETING").env("GREETING", "hi"),
    )
    .await
    {
        Event::JobExecuted { retval, .. } => assert_eq!(retval, "hello\nfrom-env=hi"),
        other => panic!("{other:?}"),
    }
    match process_outcome(
        &s,
        sh("echo some output; echo line1 >&2; echo 'it broke' >&2; exit 3"),
    )
    .await
    {
        Event::JobError {
            error:
                JobError::Exited {
                    code,
                    signal,
                    stderr_tail,
                },
            ..
        } => {
            assert_eq!((code, signal), (Some(3), None));
            assert_eq!(stderr_tail, "line1\nit broke");
        }
        other => panic!("{other:?}"),
    }
    match process_outcome(&s, sh("kill -9 $$")).await {
        Event::JobError {
            error: JobError::Exited { code, signal, .. },
            ..
        } => assert_eq!((code, signal), (None, Some(9))),
        other => panic!("{other:?}"),
    }
    let dir = std::env::temp_dir();
    match process_outcome(&s, sh("pwd").current_dir(&dir)).await {
        Event::JobExecuted { retval, .. } => assert_eq!(
            std::path::Path::new(retval.as_str().unwrap())
                .canonicalize()
                .unwrap(),
            dir.canonicalize().unwrap()
        ),
        other => panic!("{other:?}"),
    }
    match process_outcome(&s, CommandSpec::new("/nonexistent/program")).await {
        Event::JobError {
            error: JobError::NotRunnable { message },
            ..
        } => assert!(message.contains("could not start"), "{message}"),
        other => panic!("{other:?}"),
    }
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn process_executor_kills_a_child_past_its_timeout() {
    let s = Scheduler::builder()
        .executor("procs", ProcessExecutor::new(1))
        .build();
    s.start().await.unwrap();
    let marker = std::env::temp_dir().join(format!("apsched-timeout-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let script = format!("sleep 2; touch {}", marker.display());
    match process_outcome(&s, sh(&script).timeout(Duration::from_millis(200))).await {
        Event::JobError {
            error: JobError::TimedOut { seconds },
            ..
        } => assert_eq!(seconds, 0.2),
        other => panic!("{other:?}"),
    }
    // The child was killed: it never gets to touch the marker.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!marker.exists(), "the timed-out child kept running");
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn process_executor_runs_at_most_n_children_at_once() {
    let s = Scheduler::builder()
        .executor("procs", ProcessExecutor::new(1))
        .build();
    s.start().await.unwrap();
    // Each child holds a lock directory while it runs; a second child at the same time
    // would fail to create it and exit 9.
    let lock = std::env::temp_dir().join(format!("apsched-lock-{}", std::process::id()));
    let _ = std::fs::remove_dir(&lock);
    let script = format!("mkdir {0} || exit 9; sleep 0.1; rmdir {0}", lock.display());
    let mut rx = s.subscribe(EventKind::JOB_EXECUTED | EventKind::JOB_ERROR);
    for i in 0..4 {
        s.add_command_job(sh(&script))
            .executor("procs")
            .id(format!("p{i}"))
            .misfire_grace_time(None)
            .await
            .unwrap();
    }
    for _ in 0..4 {
        let ev = next_outcome(&mut rx).await;
        assert_eq!(ev.kind(), EventKind::JOB_EXECUTED, "{ev:?}");
    }
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn process_executor_refuses_closures_up_front() {
    let s = Scheduler::builder()
        .executor("procs", ProcessExecutor::new(1))
        .build();
    let err = s.add_job(|| async {}).executor("procs").await.unwrap_err();
    match err {
        Error::InvalidJob { reason, .. } => {
            assert!(
                reason.contains("cannot cross a process boundary"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn local_executor_runs_non_send_futures() {
    let s = Scheduler::builder()
        .executor("local", LocalExecutor::new().unwrap())
        .build();
    s.start().await.unwrap();
    let mut rx = s.subscribe(EventKind::JOB_EXECUTED | EventKind::JOB_ERROR);
    s.add_local_job(|| async {
        // An Rc held across an await: this future is !Send.
        let shared = Rc::new(20);
        tokio::task::yield_now().await;
        *shared + 22
    })
    .await
    .unwrap();
    match next_outcome(&mut rx).await {
        Event::JobExecuted { retval, .. } => assert_eq!(retval, 42),
        other => panic!("{other:?}"),
    }
    // Without a local executor, a !Send job is refused when added.
    let plain = Scheduler::builder().build();
    assert!(matches!(
        plain.add_local_job(|| async {}).await,
        Err(Error::UnknownExecutor(ref a)) if a == "local"
    ));
    assert!(matches!(
        plain.add_local_job(|| async {}).executor("default").await,
        Err(Error::InvalidJob { .. })
    ));
    s.shutdown().await.unwrap();
}
