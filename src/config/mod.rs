//! The whole scheduler as data: stores, executors, job defaults, zone and jobs, read from a
//! TOML file and environment variables (APScheduler's `configure()`). Needs the `config`
//! feature.
//!
//! ```no_run
//! use apsched::config::SchedulerConfig;
//! use apsched::Scheduler;
//!
//! # async fn backup(_: ()) {}
//! # async fn demo() -> apsched::Result<()> {
//! let config = SchedulerConfig::from_toml_file("apsched.toml")?.with_env("APSCHED")?;
//! let scheduler = Scheduler::from_config(&config)?
//!     .task("backup", backup)
//!     .build()? // checks that every job's task is registered
//!     .start()
//!     .await?; // upserts the configured jobs (and prunes, with `prune = true`)
//! # Ok(()) }
//! ```
//!
//! The parts, by concern:
//! - this module: [`SchedulerConfig`] and its sections, as serde types, and reading them;
//! - `env.rs`: environment variables laid over a config;
//! - `error.rs`: [`ConfigError`] and [`ConfigProblem`], and the collector of problems (a leaf:
//!   [`Error`](crate::Error) holds a [`ConfigError`], so it imports nothing of the crate);
//! - `plan.rs`: checking a config (every problem at once) and turning it into a builder and
//!   jobs;
//! - `start.rs`: [`ConfiguredBuilder`] and [`ConfiguredScheduler`], which add the jobs at
//!   start.
//!
//! The file format is described in `docs/config.md` ([`crate::docs::config`]).

mod env;
mod error;
mod plan;
mod start;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use self::error::{ConfigError, ConfigProblem};
pub use self::start::{ConfiguredBuilder, ConfiguredScheduler};
use crate::error::Result;

/// A scheduler described as data. Every field has a default, so an empty file is a valid
/// config (a scheduler with the default store and executor and no jobs).
///
/// It is a plain serde type: read it with [`from_toml_str`](Self::from_toml_str) or
/// [`from_toml_file`](Self::from_toml_file) and lay environment variables over it with
/// [`with_env`](Self::with_env), or embed it in your own configuration and read that with
/// config-rs, figment or any serde format. Values are checked (all at once) by
/// [`check`](Self::check) and [`Scheduler::from_config`](crate::Scheduler::from_config).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct SchedulerConfig {
    /// The IANA zone for triggers without one (`"Europe/London"`). Default: the machine's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// This scheduler's identity in shared stores. Default: `host-pid-random`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduler_id: Option<String>,
    /// How long a claim on a job in a shared store lasts, in seconds. Default 30.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<f64>,
    /// Remove, at start, the jobs of the configured stores that the config does not declare.
    pub prune: bool,
    /// Defaults for the jobs' options.
    pub job_defaults: JobDefaultsConfig,
    /// Job stores by alias (`jobstores` is accepted too, APScheduler's name).
    #[serde(alias = "jobstores")]
    pub stores: BTreeMap<String, StoreConfig>,
    /// Executors by alias.
    pub executors: BTreeMap<String, ExecutorConfig>,
    /// The jobs, each running a registered task.
    pub jobs: Vec<JobConfig>,
}

/// `[job_defaults]`: what a job's unset options default to (APScheduler's `job_defaults`).
/// Unset here means the built-in default ([`JobDefaults`](crate::JobDefaults)).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct JobDefaultsConfig {
    /// How late a run may start and still run. Default 1 s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub misfire_grace_time: Option<GraceTime>,
    /// Run a backlog of due times once. Default `true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coalesce: Option<bool>,
    /// How many runs of one job may be in flight at once. Default 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_instances: Option<u32>,
    /// How long a run may take before it is cancelled (seconds, or `"none"`). Default none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<GraceTime>,
    /// What a run due while `max_instances` runs are active does (`"skip"`, `"buffer_one"`,
    /// `"buffer_all"`, `"cancel_other"`, `"allow_all"`). Default `"skip"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlap: Option<crate::Overlap>,
    /// How failed runs are retried: `{ attempts = 3, delay = 10, backoff = "exponential",
    /// factor = 2, max_delay = 3600, jitter = true }` (seconds; only `attempts` and `delay`
    /// are required). Default: no retries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<crate::RetryPolicy>,
    /// Pause a job after this many consecutive failed scheduled times. Default: never.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause_after_failures: Option<u32>,
}

/// A `misfire_grace_time` or a `timeout`: a number of seconds, or `"none"` (any lateness, no
/// timeout: APScheduler's `None`, which TOML cannot write).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GraceTime {
    /// At most this many seconds late (must be more than zero).
    Seconds(f64),
    /// Any lateness.
    Unlimited,
}

impl Serialize for GraceTime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            GraceTime::Seconds(x) => s.serialize_f64(*x),
            GraceTime::Unlimited => s.serialize_str("none"),
        }
    }
}

impl<'de> Deserialize<'de> for GraceTime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = GraceTime;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of seconds or \"none\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<GraceTime, E> {
                Ok(GraceTime::Seconds(v as f64))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<GraceTime, E> {
                Ok(GraceTime::Seconds(v as f64))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<GraceTime, E> {
                Ok(GraceTime::Seconds(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<GraceTime, E> {
                match v {
                    "none" | "None" | "unlimited" => Ok(GraceTime::Unlimited),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `[stores.<alias>]`: a job store, named by URL (see [`store::from_url`](crate::store::from_url)
/// for the schemes and the cargo feature each needs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct StoreConfig {
    /// `memory://`, `sqlite://jobs.db`, `postgres://user@host/db`, `redis://host/`, ...
    pub url: String,
}

impl StoreConfig {
    /// A store at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        StoreConfig { url: url.into() }
    }
}

/// `[executors.<alias>]`: an executor and its size.
///
/// | `type` | executor | options |
/// |---|---|---|
/// | `tokio` | [`TokioExecutor`](crate::executor::TokioExecutor) | — |
/// | `blocking` | [`BlockingExecutor`](crate::executor::BlockingExecutor) | `max_workers` (default 10) |
/// | `process` | [`ProcessExecutor`](crate::executor::ProcessExecutor) | `max_workers` (default 10), `worker_mode`, `worker_timeout` |
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ExecutorConfig {
    /// `tokio`, `blocking` or `process`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Threads (`blocking`) or child processes (`process`) at once, at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_workers: Option<usize>,
    /// `process` only: run registered tasks in child processes that re-execute this binary
    /// (whose `main` must start with [`worker_main`](crate::worker_main)). Configured jobs
    /// run tasks, so a `process` executor that runs them needs this.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub worker_mode: bool,
    /// `process` with `worker_mode` only: stop a worker that runs longer, in seconds
    /// (SIGTERM, then SIGKILL after the scheduler's timeout grace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_timeout: Option<f64>,
}

impl ExecutorConfig {
    /// An executor of `kind` (`tokio`, `blocking`, `process`) with its default options.
    pub fn new(kind: impl Into<String>) -> Self {
        ExecutorConfig {
            kind: kind.into(),
            max_workers: None,
            worker_mode: false,
            worker_timeout: None,
        }
    }
}

/// `[[jobs]]`: a job running a registered task, with its trigger's parameters next to its
/// options, under APScheduler's names:
///
/// ```toml
/// [[jobs]]
/// id = "nightly-backup"
/// task = "backup"
/// args = { path = "/var/db" }
/// trigger = "cron"
/// hour = 3
/// minute = "*/5"
/// day_of_week = "mon-fri"
/// ```
///
/// `trigger` is `cron`, `interval`, `date` or `calendarinterval`; every key that is not a
/// job option is a parameter of that trigger (see `docs/config.md`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JobConfig {
    /// The registered task to run (see [`SchedulerBuilder::task`](crate::SchedulerBuilder::task)).
    /// Required (a job without one is reported with the other problems).
    #[serde(default)]
    pub task: String,
    /// The job id: what an upsert at the next start matches on. Default: the task name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// A readable name. Default: the id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The task's arguments, deserialised into its argument type. Default: none (`()`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<serde_json::Value>,
    /// `cron`, `interval`, `date` or `calendarinterval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// The store alias. Default `"default"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// The executor alias. Default `"default"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<String>,
    /// Overrides `job_defaults.misfire_grace_time`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub misfire_grace_time: Option<GraceTime>,
    /// Overrides `job_defaults.coalesce`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coalesce: Option<bool>,
    /// Overrides `job_defaults.max_instances`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_instances: Option<u32>,
    /// Overrides `job_defaults.timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<GraceTime>,
    /// Overrides `job_defaults.overlap`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap: Option<crate::Overlap>,
    /// Overrides `job_defaults.retry`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<crate::RetryPolicy>,
    /// Overrides `job_defaults.pause_after_failures`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_after_failures: Option<u32>,
    /// The trigger's parameters (`hour`, `minutes`, `run_date`, `timezone`, ...): every
    /// other key of the job.
    #[serde(flatten)]
    pub trigger_args: BTreeMap<String, serde_json::Value>,
}

impl JobConfig {
    /// The job's id: `id`, else the task name.
    pub fn job_id(&self) -> &str {
        self.id.as_deref().unwrap_or(&self.task)
    }

    /// The job's store alias: `store`, else `"default"`.
    pub fn store_alias(&self) -> &str {
        self.store.as_deref().unwrap_or("default")
    }
}

impl SchedulerConfig {
    /// Reads a config from TOML text.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) for text that is not TOML or does not have the config's shape
    /// (the message shows the line). Values are checked later, all at once
    /// ([`check`](Self::check)).
    pub fn from_toml_str(text: &str) -> Result<Self> {
        Self::parse(text, "config")
    }

    /// Reads a config from a TOML file.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) naming the file if it cannot be read or parsed.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let where_ = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::one(where_.clone(), format!("cannot be read: {e}")))?;
        Self::parse(&text, &where_)
    }

    fn parse(text: &str, where_: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| {
            let message = e.to_string();
            ConfigError::one(where_, message.trim_end().to_string()).into()
        })
    }

    /// Lays the environment variables that start with `prefix` and `__` over this config,
    /// nested keys separated by a double underscore, as config-rs and figment do:
    /// `APSCHED__JOB_DEFAULTS__MAX_INSTANCES=3`, `APSCHED__STORES__DEFAULT__URL=sqlite://x.db`,
    /// `APSCHED__JOBS__0__HOUR=4` (an array entry by index). See [`with_vars`](Self::with_vars).
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) naming each variable that cannot apply.
    pub fn with_env(self, prefix: &str) -> Result<Self> {
        self.with_vars(prefix, std::env::vars())
    }

    /// [`with_env`](Self::with_env) with the variables given (for tests, or another source).
    ///
    /// Key segments match the config's keys without regard to case (and are lower-cased
    /// when new). A value replaces one of the same type (`"3"` stays a string where the
    /// config has a string, and must be a number where it has a number); a new value is read
    /// as a TOML value if it is one (`3`, `true`, `[1, 2]`, `"quoted"`), else as a string.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) naming each variable that cannot apply, or the shape error of the
    /// result.
    pub fn with_vars<K, V>(
        self,
        prefix: &str,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        env::overlay(&self, prefix, vars)
    }

    /// Checks every value that can be checked without the tasks: zone, lease, job defaults,
    /// store URLs, executor types and sizes, and each job (trigger parameters, store and
    /// executor aliases, options, duplicate ids). [`Scheduler::from_config`] runs it too.
    ///
    /// [`Scheduler::from_config`]: crate::Scheduler::from_config
    ///
    /// # Errors
    /// One [`Error::Config`](crate::Error::Config) listing every problem with its path.
    pub fn check(&self) -> Result<()> {
        plan::Plan::new(self).map(|_| ())
    }
}
