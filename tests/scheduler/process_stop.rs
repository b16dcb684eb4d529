//! How the process executor stops a child (issue 12, "Timeouts"): SIGTERM first, so that it
//! can clean up, then SIGKILL if it is still running after the grace period; for the job's
//! timeout, `cancel_run` and the command's own timeout. Real child processes in real time:
//! every wait is bounded by a guard far above what the run should take, and a grace of 60 s
//! shows that a child ending on SIGTERM ends its run without waiting for the grace.

use std::path::{Path, PathBuf};
use std::time::Duration;

use apsched::executor::{CommandSpec, ProcessExecutor};
use apsched::ledger::RunFilter;
use apsched::{Event, EventKind, JobError, Scheduler};

fn sh(script: &str) -> CommandSpec {
    CommandSpec::new("sh").arg("-c").arg(script)
}

/// A scheduler with a one-child process executor `"procs"` and this timeout grace, started.
async fn scheduler(grace: Duration) -> Scheduler {
    let s = Scheduler::builder()
        .executor("procs", ProcessExecutor::new(1))
        .timeout_grace(grace)
        .build();
    s.start().await.unwrap();
    s
}

/// A fresh path in the temp directory for this test's files.
fn temp(test: &str, what: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("apsched-{test}-{what}-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// A child that traps SIGTERM: on it, writes `stopped` to `marker` and exits 0. It writes
/// `ready` once the trap is set. (The loop of short sleeps: a shell runs a trap only
/// between commands.)
fn cleans_up(marker: &Path, ready: &Path) -> CommandSpec {
    sh(&format!(
        "trap 'echo stopped > {}; exit 0' TERM; : > {}; while :; do sleep 0.05; done",
        marker.display(),
        ready.display()
    ))
}

/// A child that ignores SIGTERM (the ignored signal stays ignored through `exec`) and runs
/// 30 s, after writing its pid to `pidfile`.
fn ignores_term(pidfile: &Path) -> CommandSpec {
    sh(&format!(
        "echo $$ > {}; trap '' TERM; exec sleep 30",
        pidfile.display()
    ))
}

async fn next(rx: &mut apsched::EventReceiver) -> Event {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("an outcome within 20 s (a grace of 60 s would not end before that)")
        .expect("event")
}

fn outcomes(s: &Scheduler) -> apsched::EventReceiver {
    s.subscribe(EventKind::JOB_EXECUTED | EventKind::JOB_ERROR | EventKind::JOB_TIMEOUT)
}

/// Whether process `pid` is gone: killed and reaped (a zombie still answers signal 0).
fn reaped(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// Waits (at most 10 s) for process `pid` to be reaped; a child dropped by its run is
/// reaped by Tokio in the background.
async fn until_reaped(pid: i32) -> bool {
    for _ in 0..500 {
        if reaped(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

fn pid_in(pidfile: &Path) -> i32 {
    std::fs::read_to_string(pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn past_the_job_timeout_a_child_gets_sigterm_and_its_exit_ends_the_run() {
    let s = scheduler(Duration::from_secs(60)).await;
    let mut rx = outcomes(&s);
    let (marker, ready) = (temp("jt-term", "marker"), temp("jt-term", "ready"));
    s.add_command_job(cleans_up(&marker, &ready))
        .executor("procs")
        .timeout(Duration::from_millis(500))
        .misfire_grace_time(None)
        .await
        .unwrap();
    match next(&mut rx).await {
        Event::JobTimeout {
            timeout, aborted, ..
        } => assert_eq!((timeout, aborted), (Duration::from_millis(500), false)),
        other => panic!("{other:?}"),
    }
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "stopped\n");
    s.shutdown().await.unwrap();
    let _ = (std::fs::remove_file(marker), std::fs::remove_file(ready));
}

#[tokio::test]
async fn past_the_job_timeout_a_child_ignoring_sigterm_is_killed_after_the_grace() {
    let s = scheduler(Duration::from_millis(300)).await;
    let mut rx = outcomes(&s);
    let pidfile = temp("jt-kill", "pid");
    s.add_command_job(ignores_term(&pidfile))
        .executor("procs")
        .timeout(Duration::from_millis(300))
        .misfire_grace_time(None)
        .await
        .unwrap();
    match next(&mut rx).await {
        Event::JobTimeout { aborted, .. } => assert!(aborted),
        other => panic!("{other:?}"),
    }
    let pid = pid_in(&pidfile);
    assert!(until_reaped(pid).await, "child {pid} still there");
    s.shutdown().await.unwrap();
    let _ = std::fs::remove_file(pidfile);
}

#[tokio::test]
async fn cancel_run_sends_sigterm_to_the_child() {
    let s = scheduler(Duration::from_secs(60)).await;
    let mut rx = outcomes(&s);
    let (marker, ready) = (temp("cancel", "marker"), temp("cancel", "ready"));
    // The job's timeout makes the run cancellable; it is far away.
    s.add_command_job(cleans_up(&marker, &ready))
        .id("child")
        .executor("procs")
        .timeout(Duration::from_secs(60))
        .misfire_grace_time(None)
        .await
        .unwrap();
    // Cancelled before its trap is set, the shell would just die of SIGTERM.
    for _ in 0..1000 {
        if ready.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ready.exists(), "the child never started");
    let runs = s.job("child").runs(RunFilter::new()).await.unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert!(s.cancel_run(runs[0].run_id));
    match next(&mut rx).await {
        // The child exited 0 on SIGTERM: its run's result (the ledger has it cancelled).
        Event::JobExecuted { .. } => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "stopped\n");
    s.shutdown().await.unwrap();
    let _ = (std::fs::remove_file(marker), std::fs::remove_file(ready));
}

#[tokio::test]
async fn past_its_own_timeout_a_command_gets_sigterm_first() {
    let s = scheduler(Duration::from_secs(60)).await;
    let mut rx = outcomes(&s);
    let (marker, ready) = (temp("own-term", "marker"), temp("own-term", "ready"));
    s.add_command_job(cleans_up(&marker, &ready).timeout(Duration::from_millis(500)))
        .executor("procs")
        .misfire_grace_time(None)
        .await
        .unwrap();
    match next(&mut rx).await {
        Event::JobError {
            error: JobError::TimedOut { seconds },
            ..
        } => assert_eq!(seconds, 0.5),
        other => panic!("{other:?}"),
    }
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "stopped\n");
    s.shutdown().await.unwrap();
    let _ = (std::fs::remove_file(marker), std::fs::remove_file(ready));
}

#[tokio::test]
async fn past_its_own_timeout_a_command_ignoring_sigterm_is_killed_and_reaped() {
    let s = scheduler(Duration::from_millis(300)).await;
    let mut rx = outcomes(&s);
    let pidfile = temp("own-kill", "pid");
    s.add_command_job(ignores_term(&pidfile).timeout(Duration::from_millis(300)))
        .executor("procs")
        .misfire_grace_time(None)
        .await
        .unwrap();
    match next(&mut rx).await {
        Event::JobError {
            error: JobError::TimedOut { seconds },
            ..
        } => assert_eq!(seconds, 0.3),
        other => panic!("{other:?}"),
    }
    // Reaped before the outcome: the command's own timeout waits for the child.
    let pid = pid_in(&pidfile);
    assert!(reaped(pid), "child {pid} still there");
    s.shutdown().await.unwrap();
    let _ = std::fs::remove_file(pidfile);
}
