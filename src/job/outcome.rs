//! What a run produced: [`JobResult`], [`JobError`], and [`IntoJobResult`] for what a job
//! body may return; also how a panic becomes an outcome.
//!
//! A leaf: it imports nothing else of the crate, so events, executors and tasks can all
//! speak of outcomes without depending on each other.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a run produced: its return value as JSON, or what went wrong.
pub type JobResult = Result<serde_json::Value, JobError>;

/// Why a run failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum JobError {
    /// The job returned an error.
    #[error("{message}")]
    Failed {
        /// The error's `Display` text.
        message: String,
    },
    /// The job panicked.
    #[error("job panicked: {message}")]
    Panicked {
        /// The panic message.
        message: String,
    },
    /// A child process exited unsuccessfully or was killed by a signal.
    #[error("process exited with {}: {stderr_tail}", describe_exit(*.code, *.signal))]
    Exited {
        /// Exit code, if it exited.
        code: Option<i32>,
        /// Signal number, if it was killed by one.
        signal: Option<i32>,
        /// The last lines of its stderr.
        stderr_tail: String,
    },
    /// A child process exceeded its own timeout and was stopped (SIGTERM, then SIGKILL if
    /// it was still running after the grace period).
    #[error("timed out after {seconds} s and was stopped")]
    TimedOut {
        /// The timeout, in seconds.
        seconds: f64,
    },
    /// The run could not be started (no such executor or task, bad arguments, ...).
    #[error("could not run: {message}")]
    NotRunnable {
        /// What is wrong.
        message: String,
    },
}

fn describe_exit(code: Option<i32>, signal: Option<i32>) -> String {
    match (code, signal) {
        (Some(c), _) => format!("status {c}"),
        (None, Some(s)) => format!("signal {s}"),
        (None, None) => "unknown status".into(),
    }
}

impl JobError {
    /// A [`JobError::Failed`] with `message`.
    pub fn failed(message: impl fmt::Display) -> Self {
        JobError::Failed {
            message: message.to_string(),
        }
    }

    /// A [`JobError::NotRunnable`] with `message`.
    pub fn not_runnable(message: impl fmt::Display) -> Self {
        JobError::NotRunnable {
            message: message.to_string(),
        }
    }
}

/// What a job body may return: `()`, a value that serialises, or a `Result`.
///
/// `Ok` values become the `retval` of [`Event::JobExecuted`](crate::Event::JobExecuted);
/// `Err` values become [`JobError::Failed`] with the error's `Display` text.
pub trait IntoJobResult {
    /// Converts into a [`JobResult`].
    fn into_job_result(self) -> JobResult;
}

impl IntoJobResult for () {
    fn into_job_result(self) -> JobResult {
        Ok(serde_json::Value::Null)
    }
}

impl<T: Serialize, E: fmt::Display> IntoJobResult for Result<T, E> {
    fn into_job_result(self) -> JobResult {
        match self {
            Ok(v) => serde_json::to_value(v).map_err(JobError::failed),
            Err(e) => Err(JobError::failed(e)),
        }
    }
}

macro_rules! plain_results {
    ($($t:ty),*) => {$(
        impl IntoJobResult for $t {
            fn into_job_result(self) -> JobResult {
                serde_json::to_value(self).map_err(JobError::failed)
            }
        }
    )*};
}
plain_results!(
    bool,
    i8,
    i16,
    i32,
    i64,
    u8,
    u16,
    u32,
    u64,
    usize,
    f32,
    f64,
    String,
    &'static str,
    serde_json::Value
);

/// Turns a job's panic payload into its error.
pub(crate) fn panic_message(payload: Box<dyn std::any::Any + Send>) -> JobError {
    JobError::Panicked {
        message: panic_text(payload),
    }
}

/// The message of a panic payload.
pub(crate) fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}
