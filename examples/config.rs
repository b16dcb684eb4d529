//! A scheduler configured from a file: `examples/apsched.toml` (stores, executors, job
//! defaults, jobs), with environment variables laid over it, as APScheduler's `configure()`.
//!
//! Run it with `cargo run --example config --features config`; it prints the jobs and their
//! runs for a few seconds and stops. Try `APSCHED__JOBS__0__SECONDS=0.5` (a faster
//! heartbeat) or `APSCHED__JOBS__1__SECOND=25` (an hour out of range: the error lists it with
//! its path, and nothing starts).

use std::time::Duration;

use apsched::config::SchedulerConfig;
use apsched::Scheduler;
use serde::Deserialize;

/// The `report` task's arguments, from the job's `args` table.
#[derive(Deserialize)]
struct Report {
    title: String,
    lines: usize,
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        // A config error lists every problem, one per line.
        eprintln!("{e}");
        std::process::exit(1);
    }
}

async fn run() -> apsched::Result<()> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/apsched.toml");
    let config = SchedulerConfig::from_toml_file(path)?.with_env("APSCHED")?;

    let scheduler = Scheduler::from_config(&config)?
        .task("say", |what: String| async move {
            println!("[{}] {what}", chrono::Utc::now().format("%H:%M:%S%.3f"));
        })
        .blocking_task("report", |r: Report| {
            println!("report '{}': {} lines, on a pool thread", r.title, r.lines);
        })
        .build()?
        .start()
        .await?;

    print!("{}", scheduler.jobs_table().await?);
    tokio::time::sleep(Duration::from_secs(4)).await;
    scheduler.shutdown().await?;
    println!("stopped");
    Ok(())
}
