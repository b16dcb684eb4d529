//! # apsched
//!
//! An async-native job scheduler for Tokio, in the spirit of Python's APScheduler: schedule
//! async closures, blocking closures, commands and named tasks on cron, interval, date and
//! calendar triggers; keep them in memory or in a database shared by several processes; get
//! told what happened through events.
//!
//! ```
//! use apsched::{Scheduler, trigger::Cron};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> apsched::Result<()> {
//! let scheduler = Scheduler::builder().build();
//! scheduler.start().await?;
//! scheduler
//!     .add_job(|| async { println!("every weekday at 9:30") })
//!     .trigger(Cron::builder().day_of_week("mon-fri").hour("9").minute("30").build()?)
//!     .id("standup")
//!     .await?;
//! scheduler.shutdown(true).await?;
//! # Ok(())
//! # }
//! ```
//!
//! ## Contents
//! - [`scheduler`](crate::Scheduler): the handle, its builder and flavours
//!   ([`Scheduler`], [`BackgroundScheduler`], [`BlockingScheduler`], [`LocalScheduler`]).
//! - [`trigger`]: when a job fires (cron, crontab, interval, date, calendar interval, and/or).
//! - [`job`]: jobs, their options and results.
//! - [`store`]: where jobs live (memory; SQL, Redis, MongoDB, ZooKeeper behind features).
//! - [`executor`]: where runs happen (Tokio tasks, thread pool, child processes, `LocalSet`).
//! - [`event`]: what happened, as a broadcast channel with masks.
//! - [`clock`]: real and virtual time.
//! - [`task`]: named tasks for persistent jobs; [`worker`]: running them in child processes.
//! - [`error`]: what can go wrong, and what to do about it.

#![warn(missing_docs)]

pub mod clock;
pub mod error;
pub mod event;
pub mod executor;
pub mod job;
mod scheduler;
pub mod store;
pub mod task;
pub mod trigger;
pub mod worker;

#[doc(hidden)]
pub mod conformance;

pub use crate::error::{Error, Result, TriggerError};
pub use crate::event::{Event, EventKind, EventReceiver};
pub use crate::job::{IntoJobResult, Job, JobDefaults, JobError};
pub use crate::scheduler::{
    AddJob, BackgroundScheduler, BlockingScheduler, JobChanges, ListenerId, LocalScheduler,
    Scheduler, SchedulerBuilder, SchedulerState,
};
pub use crate::trigger::{Trigger, TriggerSpec};
pub use crate::worker::worker_main;
