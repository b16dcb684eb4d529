//! Child processes under faults (item 19): a child that floods its output, a child that
//! never reads its input. Real processes, real time.

use std::time::Duration;

use apsched::executor::{CommandSpec, ProcessExecutor};
use apsched::{Event, EventKind, JobError, Scheduler};

/// The process's peak resident set so far, in KiB (Linux).
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item19_a_child_flooding_stderr_keeps_only_a_bounded_tail() {
    let s = Scheduler::builder()
        .executor("procs", ProcessExecutor::new(1))
        .build();
    s.start().await.unwrap();
    let mut rx = s.subscribe(EventKind::JOB_EXECUTED | EventKind::JOB_ERROR);
    let before = peak_rss_kib();
    // 300 MB of stderr, then a last line and a failure.
    let script = "head -c 300000000 /dev/zero | tr '\\0' x >&2; echo; echo the-end >&2; exit 3";
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
    // The 300 MB were never held: the peak grew by far less than the output.
    if let (Some(before), Some(after)) = (before, peak_rss_kib()) {
        assert!(
            after - before < 100_000,
            "peak RSS grew by {} KiB",
            after - before
        );
    }
    s.shutdown(true).await.unwrap();
}
