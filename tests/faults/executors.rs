//! Child processes under faults (item 19): a child that floods its output. Real processes,
//! real time. (That only a bounded tail is held while reading, and that the timeout covers a
//! child that never reads its input, are unit tests of `run_child` in
//! `src/executor/command.rs`.)

use std::time::Duration;

use apsched::executor::{CommandSpec, ProcessExecutor};
use apsched::{Event, EventKind, JobError, Scheduler};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item19_a_child_flooding_stderr_keeps_only_a_bounded_tail() {
    let s = Scheduler::builder()
        .executor("procs", ProcessExecutor::new(1))
        .build();
    s.start().await.unwrap();
    let mut rx = s.subscribe(EventKind::JOB_EXECUTED | EventKind::JOB_ERROR);
    // 50 MB of stderr, then a last line and a failure.
    let script = "head -c 50000000 /dev/zero | tr '\\0' x >&2; echo; echo the-end >&2; exit 3";
    s.add_command_job(CommandSpec::new("sh").arg("-c").arg(script))
        .executor("procs")
        .misfire_grace_time(None)
        .await
        .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(120), rx.recv())
        .await
        .expect("an outcome")
        .unwrap();
    match ev {
        Event::JobError {
            error: JobError::Exited {
                code, stderr_tail, ..
            },
            ..
        } => {
            assert_eq!(code, Some(3));
            assert!(
                stderr_tail.ends_with("the-end"),
                "{}",
                &stderr_tail[stderr_tail.len().saturating_sub(40)..]
            );
            assert!(stderr_tail.len() <= 4096);
        }
        other => panic!("{other:?}"),
    }
    s.shutdown().await.unwrap();
}
