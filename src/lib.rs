//! # apsched
//!
//! An async-native job scheduler for Tokio, in the spirit of Python's APScheduler.
//!
//! - [`trigger`]: when a job fires (cron, crontab, interval, date, calendar interval, and/or).
//! - [`error`]: what can go wrong, and what to do about it.

#![warn(missing_docs)]

pub mod error;
pub mod trigger;

#[doc(hidden)]
pub mod conformance;

pub use crate::error::{Error, Result, TriggerError};
pub use crate::trigger::{Trigger, TriggerSpec};
