//! The APScheduler program every user knows, in Rust:
//!
//! ```python
//! scheduler = BackgroundScheduler(jobstores={'default': MemoryJobStore()},
//!     executors={'default': ThreadPoolExecutor(10), 'processpool': ProcessPoolExecutor(10)},
//!     job_defaults={'coalesce': False, 'max_instances': 3})
//! job = scheduler.add_job(my_job, trigger='cron', minute='*/2', id='my_job_id', name='job_name',
//!     misfire_grace_time=10, coalesce=True, max_instances=10, next_run_time=None,
//!     jobstore='default', executor='default', replace_existing=False)
//! scheduler.add_listener(handle_jobsubmission, mask=EVENT_JOB_SUBMITTED)
//! scheduler.start(); ...; scheduler.shutdown()
//! ```
//!
//! Run it with `cargo run --example quickstart`. It prints each run and event for a few
//! seconds and stops; `cargo run --example quickstart -- --run-on` keeps going until Ctrl-C.

use std::time::Duration;

use apsched::executor::{BlockingExecutor, CommandSpec, ProcessExecutor};
use apsched::store::MemoryStore;
use apsched::trigger::Cron;
use apsched::{BackgroundScheduler, Event, EventKind, JobDefaults, Scheduler};

fn my_job() -> String {
    let now = chrono::Local::now().format("%H:%M:%S");
    println!("[{now}] my_job runs on a pool thread");
    format!("done at {now}")
}

fn main() -> apsched::Result<()> {
    let scheduler = BackgroundScheduler::new(
        Scheduler::builder()
            .store("default", MemoryStore::new())
            .executor("default", BlockingExecutor::new(10))
            .executor("processpool", ProcessExecutor::new(10))
            .job_defaults(JobDefaults::default().coalesce(false).max_instances(3)),
    )?;

    // `next_run_time=None` in the Python call: the job is added paused.
    let job = scheduler
        .add_blocking_job(my_job)
        .trigger(Cron::builder().minute("*/2").build()?)
        .id("my_job_id")
        .name("job_name")
        .misfire_grace_time(Some(Duration::from_secs(10)))
        .coalesce(true)
        .max_instances(10)
        .paused()
        .store("default")
        .executor("default")
        .replace_existing(false)
        .add()?;
    println!("added {job}");

    // Something to watch during the demo: every 2 seconds, in-process and in a child.
    scheduler
        .add_blocking_job(my_job)
        .trigger(Cron::builder().second("*/2").build()?)
        .id("every_2s")
        .add()?;
    scheduler
        .add_command_job(CommandSpec::new("echo").arg("hello from a child process"))
        .trigger(Cron::builder().second("1/3").build()?)
        .id("child")
        .executor("processpool")
        .add()?;

    // Listeners run as tasks on the scheduler's runtime, as with the async Scheduler.
    scheduler.add_listener(EventKind::JOB_SUBMITTED, |event| async move {
        if let Event::JobSubmitted {
            job_id,
            scheduled_run_times,
            ..
        } = event
        {
            println!("submitted {job_id} for {scheduled_run_times:?}");
        }
    });
    scheduler.add_listener(
        EventKind::JOB_EXECUTED | EventKind::JOB_ERROR | EventKind::JOB_MISSED,
        |event| async move { println!("event: {event:?}") },
    );

    scheduler.start()?;
    scheduler.job("my_job_id").resume()?;
    print!("{}", scheduler.jobs_table()?);

    if std::env::args().any(|a| a == "--run-on") {
        println!("running until Ctrl-C");
        scheduler.block_on(async {
            let _ = tokio::signal::ctrl_c().await;
        })?;
    } else {
        std::thread::sleep(Duration::from_secs(7));
    }
    scheduler.shutdown()?;
    println!("shut down");
    Ok(())
}
