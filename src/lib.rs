// The crate root is the guide: the README (its quickstart compiles as a doctest), then a
// table of contents. The README links to the pages of docs/ with reference-style links; the
// definitions here come first, so on docs.rs they win over the README's relative ones (which
// serve GitHub) and point at the `docs` modules that render the same pages.
#![doc = "[stores-sharing]: crate::docs::stores#what-sharing-guarantees"]
#![doc = "[scheduling]: crate::docs::scheduling"]
#![doc = "[triggers]: crate::docs::triggers"]
#![doc = "[executors]: crate::docs::executors"]
#![doc = "[events]: crate::docs::events"]
#![doc = "[stores]: crate::docs::stores"]
#![doc = "[ledger]: crate::docs::ledger"]
#![doc = "[custom-store]: crate::docs::custom_store"]
#![doc = "[embedding]: crate::docs::embedding"]
#![doc = "[conformance]: crate::docs::conformance"]
#![doc = "[config]: crate::docs::config"]
#![doc = ""]
#![doc = include_str!("../README.md")]
//!
//! ## Contents
//!
//! The guide, page by page, is in [`docs`]. The API:
//! - [`Scheduler`]: the handle, its builder ([`SchedulerBuilder`]) and flavours
//!   ([`BackgroundScheduler`], [`BlockingScheduler`], [`LocalScheduler`]).
//! - [`trigger`]: when a job fires (cron, crontab, interval, date, calendar interval, and/or).
//! - [`job`]: jobs, their options and results.
//! - [`store`]: where jobs live (memory; SQL, Redis, MongoDB, ZooKeeper behind features).
//! - [`executor`]: where runs happen (Tokio tasks, thread pool, child processes, `LocalSet`).
//! - [`ledger`]: what ran: one record per (job, scheduled time), run now, backfill.
//! - [`event`]: what happened, as a broadcast channel with masks.
//! - [`clock`]: real and virtual time.
//! - named tasks for persistent jobs: [`SchedulerBuilder::task`]; [`worker_main`]: running
//!   them in child processes.
//! - [`error`]: what can go wrong, and what to do about it.
//! - `config` (feature `config`): the whole scheduler from a TOML file and environment
//!   variables.

// docs.rs builds with `--cfg docsrs` (Cargo.toml) on nightly, where `doc_cfg` marks each
// feature-gated item with the feature it needs. (`doc_auto_cfg`, the older name, is removed
// from current nightlies and would fail the build.) Off on stable.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

pub mod clock;
#[cfg(feature = "config")]
pub mod config;
// The guide's pages; their code blocks are fragments, not doctests (see the module).
#[cfg(not(doctest))]
pub mod docs;
pub mod error;
pub mod event;
pub mod executor;
pub mod job;
pub mod ledger;
mod scheduler;
mod stats;
pub mod store;
mod sync;
mod task;
pub mod trigger;

pub use crate::error::{Error, Result, TriggerError};
pub use crate::event::{Event, EventKind, EventReceiver};
pub use crate::executor::process::worker::worker_main;
pub use crate::job::{
    Backoff, IntoJobResult, Job, JobContext, JobDefaults, JobError, Overlap, RetryPolicy, RunId,
};
pub use crate::scheduler::{
    AddJob, BackgroundScheduler, BlockingAddJob, BlockingJobHandle, BlockingScheduler,
    BlockingStoreHandle, JobChanges, JobHandle, ListenerId, LocalScheduler, RunHandle, Scheduler,
    SchedulerBuilder, SchedulerState, StoreHandle,
};
pub use crate::trigger::{Trigger, TriggerSpec};
/// The shared string of run records' job and scheduler ids ([`ledger::RunRecord::job_id`]),
/// re-exported so that code naming it needs no dependency of its own.
pub use arcstr::ArcStr;
