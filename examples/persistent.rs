//! A job that survives a restart, on the default SQLite file (`apsched.db` in the current
//! directory).
//!
//! ```text
//! cargo run --example persistent --features sqlite     # run 1: adds the job, runs it
//! cargo run --example persistent --features sqlite     # run 2: finds it, it continues
//! cargo run --example persistent --features sqlite -- --reset   # removes the file's jobs
//! ```
//!
//! A persistent job names a registered task (a closure cannot be written to a database);
//! every process that opens the store registers the same tasks.

use std::time::Duration;

use apsched::store::SqlStore;
use apsched::trigger::Interval;
use apsched::{Event, EventKind, Scheduler};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Heartbeat {
    message: String,
}

#[tokio::main]
async fn main() -> apsched::Result<()> {
    let reset = std::env::args().any(|a| a == "--reset");
    let scheduler = Scheduler::builder()
        .store("default", SqlStore::sqlite(SqlStore::DEFAULT_SQLITE_FILE)?)
        .task("heartbeat", |hb: Heartbeat| async move {
            println!(
                "  {} heartbeat: {}",
                chrono::Utc::now().format("%H:%M:%S"),
                hb.message
            );
        })
        .build();
    let mut events = scheduler.subscribe(EventKind::STORE_ERROR);
    scheduler.start().await?;

    if reset {
        scheduler.remove_all_jobs().await?;
        println!("removed every job from apsched.db");
        return scheduler.shutdown_now().await;
    }

    match scheduler.job("heartbeat").get().await? {
        Some(job) => println!("found the job from an earlier run: {job}"),
        None => {
            let job = scheduler
                .add_task_job(
                    "heartbeat",
                    Heartbeat {
                        message: "added by the first run, still beating".into(),
                    },
                )
                .trigger(Interval::new(Duration::from_secs(1))?)
                .id("heartbeat")
                .await?;
            println!("first run: added {job} to apsched.db");
        }
    }
    println!("running for 3.5 s; run me again and the job continues");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    while let Ok(Event::StoreError { message, .. }) = events.try_recv() {
        eprintln!("store error: {message}");
    }
    scheduler.shutdown().await?;
    println!("stopped; the job stays in apsched.db (--reset removes it)");
    Ok(())
}
