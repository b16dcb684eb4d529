//! A job that can be stopped and retried: it takes a `JobContext`, honours its cancellation
//! token, has a timeout, retries with exponential backoff, and is paused after too many
//! failed runs in a row. Every attempt is in the run ledger.
//!
//! Run it with `cargo run --example resilient`: about ten seconds of output, then it stops.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use apsched::ledger::RunFilter;
use apsched::trigger::Interval;
use apsched::{Event, EventKind, JobContext, RetryPolicy, Scheduler};

/// A pretend upstream that fails every other call.
static CALLS: AtomicU32 = AtomicU32::new(0);

/// Imports a few pages from the upstream, stopping cleanly when asked to.
async fn import(ctx: JobContext) -> Result<u32, String> {
    println!(
        "  import of {} starts (attempt {}, run {})",
        ctx.scheduled_run_time().format("%H:%M:%S"),
        ctx.attempt(),
        ctx.run_id()
    );
    let mut pages = 0;
    for _ in 0..3 {
        tokio::select! {
            // The token is cancelled by the timeout, cancel_run, or shutdown_now.
            _ = ctx.cancelled() => return Err(format!("stopped after {pages} pages")),
            _ = tokio::time::sleep(Duration::from_millis(100)) => pages += 1,
        }
    }
    if CALLS.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
        return Err("the upstream answered 503".into());
    }
    Ok(pages)
}

#[tokio::main]
async fn main() -> apsched::Result<()> {
    let scheduler = Scheduler::builder().build();
    let hung = Arc::new(AtomicU32::new(0));
    scheduler.add_listener(
        EventKind::JOB_EXECUTED
            | EventKind::JOB_ERROR
            | EventKind::JOB_TIMEOUT
            | EventKind::JOB_RETRYING
            | EventKind::JOB_AUTO_PAUSED,
        |event| async move {
            match event {
                Event::JobExecuted { job_id, retval, .. } => println!("{job_id}: done, {retval}"),
                Event::JobError { job_id, error, .. } => println!("{job_id}: failed: {error}"),
                Event::JobTimeout { job_id, .. } => println!("{job_id}: timed out"),
                Event::JobRetrying {
                    job_id,
                    attempt,
                    retry_at,
                    ..
                } => println!(
                    "{job_id}: attempt {attempt} at {}",
                    retry_at.format("%H:%M:%S%.3f")
                ),
                Event::JobAutoPaused { job_id, reason, .. } => println!("{job_id}: {reason}"),
                _ => {}
            }
        },
    );
    scheduler.start().await?;

    // Every 3 seconds; a failed run is tried again after about 0.5 s, then 1 s (3 attempts
    // in all); a run may take 2 s; three failed runs in a row pause the job.
    scheduler
        .add_job(import)
        .trigger(Interval::new(Duration::from_secs(3))?)
        .timeout(Duration::from_secs(2))
        .retry(RetryPolicy::exponential(3, Duration::from_millis(500)))
        .pause_after_failures(3)
        .id("import")
        .await?;

    // A job that hangs: its timeout cancels its token, it stops, and it is retried.
    let counter = hung.clone();
    scheduler
        .add_job(move |ctx: JobContext| {
            let counter = counter.clone();
            async move {
                if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                    ctx.cancelled().await; // waits for ever, until the timeout
                    return Err("gave up when cancelled".to_string());
                }
                Ok("fine the second time")
            }
        })
        .timeout(Duration::from_millis(700))
        .retry(RetryPolicy::fixed(2, Duration::from_millis(300)).jitter(false))
        .id("hangs-once")
        .await?;

    tokio::time::sleep(Duration::from_secs(10)).await;

    println!("\nThe ledger of import (newest first):");
    for run in scheduler
        .job("import")
        .runs(RunFilter::new().limit(20))
        .await?
    {
        println!(
            "  {} attempt {} {:9} {}",
            run.scheduled.format("%H:%M:%S"),
            run.attempt,
            run.state,
            run.error.as_deref().unwrap_or("")
        );
    }
    scheduler.shutdown().await
}
