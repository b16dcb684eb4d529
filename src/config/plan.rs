//! Checking a config and turning it into a [`SchedulerBuilder`] and the jobs to add.
//!
//! Every section is checked even after a problem is found, so one error lists them all. The
//! trigger parameters are read by [`TriggerSpec`]'s own serde form (APScheduler's names), so
//! the trigger builders' checks and messages are the ones a config gets.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::time::Duration;

use chrono_tz::Tz;

use super::error::Problems;
use super::{ExecutorConfig, GraceTime, JobConfig, SchedulerConfig};
use crate::error::Result;
use crate::executor::{BlockingExecutor, ProcessExecutor, TokioExecutor};
use crate::job::JobDefaults;
use crate::trigger::TriggerSpec;
use crate::{Scheduler, SchedulerBuilder};

/// The parameters of each trigger kind, as the serde forms name them.
const TRIGGERS: &[(&str, &[&str])] = &[
    (
        "cron",
        &[
            "year",
            "month",
            "day",
            "week",
            "day_of_week",
            "hour",
            "minute",
            "second",
            "crontab",
            "start_date",
            "end_date",
            "timezone",
            "jitter",
        ],
    ),
    (
        "interval",
        &[
            "weeks",
            "days",
            "hours",
            "minutes",
            "seconds",
            "start_date",
            "end_date",
            "timezone",
            "jitter",
        ],
    ),
    ("date", &["run_date", "timezone"]),
    (
        "calendarinterval",
        &[
            "years",
            "months",
            "weeks",
            "days",
            "hour",
            "minute",
            "second",
            "start_date",
            "end_date",
            "timezone",
            "jitter",
        ],
    ),
];

/// A checked config: the builder (zone, defaults, stores, executors) and the jobs.
pub(super) struct Plan {
    pub(super) builder: SchedulerBuilder,
    pub(super) jobs: Vec<PlannedJob>,
    /// With `prune = true`, the stores the config declares (the only ones pruned).
    pub(super) prune: Option<Vec<String>>,
}

/// One `[[jobs]]` entry, checked.
pub(super) struct PlannedJob {
    /// Its index in `jobs`, for messages.
    pub(super) index: usize,
    pub(super) task: String,
    pub(super) args: serde_json::Value,
    pub(super) id: String,
    pub(super) name: Option<String>,
    pub(super) trigger: TriggerSpec,
    pub(super) store: String,
    pub(super) executor: Option<String>,
    pub(super) misfire_grace_time: Option<Option<Duration>>,
    pub(super) coalesce: Option<bool>,
    pub(super) max_instances: Option<u32>,
    pub(super) timeout: Option<Option<Duration>>,
    pub(super) overlap: Option<crate::Overlap>,
    pub(super) retry: Option<crate::RetryPolicy>,
    pub(super) pause_after_failures: Option<u32>,
}

impl Plan {
    pub(super) fn new(config: &SchedulerConfig) -> Result<Plan> {
        let mut problems = Problems::default();
        let mut builder = Scheduler::builder();

        if let Some(name) = &config.timezone {
            match Tz::from_str(name.trim()) {
                Ok(tz) => builder = builder.timezone(tz),
                Err(_) => problems.push("timezone", not_a_zone(name)),
            }
        }
        if let Some(id) = &config.scheduler_id {
            if id.trim().is_empty() {
                problems.push("scheduler_id", "must not be empty");
            } else {
                builder = builder.scheduler_id(id.clone());
            }
        }
        if let Some(secs) = config.lease {
            match seconds(secs) {
                Ok(lease) => builder = builder.lease(lease),
                Err(m) => problems.push("lease", m),
            }
        }
        builder = builder.job_defaults(job_defaults(config, &mut problems));

        for (alias, store) in &config.stores {
            match crate::store::from_url(&store.url) {
                Ok(s) => builder = builder.store(alias.clone(), s),
                Err(e) => problems.push(format!("stores.{alias}.url"), e.to_string()),
            }
        }
        for (alias, executor) in &config.executors {
            builder = add_executor(builder, alias, executor, &mut problems);
        }

        let mut jobs = Vec::with_capacity(config.jobs.len());
        let mut ids: HashMap<&str, usize> = HashMap::new();
        for (index, job) in config.jobs.iter().enumerate() {
            let id = job.job_id();
            if let Some(first) = ids.insert(id, index) {
                ids.insert(id, first);
                problems.push(
                    format!("jobs[{index}].id"),
                    format!(
                        "'{id}' is already the id of jobs[{first}] (ids must be unique; a job \
                         without an id takes its task's name)"
                    ),
                );
            }
            if let Some(planned) = plan_job(config, index, job, &mut problems) {
                jobs.push(planned);
            }
        }
        problems.into_result()?;
        Ok(Plan {
            builder,
            jobs,
            prune: config
                .prune
                .then(|| config.stores.keys().cloned().collect()),
        })
    }
}

fn not_a_zone(name: &str) -> String {
    format!("'{name}' is not a known IANA time zone (e.g. 'Europe/London', 'UTC')")
}

/// A positive, finite number of seconds.
fn seconds(secs: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{secs} is not a number of seconds above zero"))
}

/// A grace time: `Some(d)` for seconds (above zero), `None` for any lateness.
fn grace(g: GraceTime) -> Result<Option<Duration>, String> {
    match g {
        GraceTime::Seconds(s) => seconds(s).map(Some),
        GraceTime::Unlimited => Ok(None),
    }
}

fn job_defaults(config: &SchedulerConfig, problems: &mut Problems) -> JobDefaults {
    let given = &config.job_defaults;
    let mut defaults = JobDefaults::default();
    if let Some(g) = given.misfire_grace_time {
        match grace(g) {
            Ok(g) => defaults = defaults.misfire_grace_time(g),
            Err(m) => problems.push("job_defaults.misfire_grace_time", m),
        }
    }
    if let Some(c) = given.coalesce {
        defaults = defaults.coalesce(c);
    }
    match given.max_instances {
        Some(0) => problems.push("job_defaults.max_instances", "must be at least 1"),
        Some(n) => defaults = defaults.max_instances(n),
        None => {}
    }
    if let Some(t) = given.timeout {
        match grace(t) {
            Ok(t) => defaults = defaults.timeout(t),
            Err(m) => problems.push("job_defaults.timeout", m),
        }
    }
    if let Some(o) = given.overlap {
        defaults = defaults.overlap(o);
    }
    if failure_options(
        "job_defaults",
        given.retry,
        given.pause_after_failures,
        problems,
    ) {
        defaults = defaults
            .retry(given.retry)
            .pause_after_failures(given.pause_after_failures);
    }
    defaults
}

/// Checks a retry policy and an auto-pause count at `at` (`job_defaults` or `jobs[i]`);
/// `true` when both are usable.
fn failure_options(
    at: &str,
    retry: Option<crate::RetryPolicy>,
    pause_after: Option<u32>,
    problems: &mut Problems,
) -> bool {
    let before = problems.0.len();
    if let Some(Err(m)) = retry.map(|r| r.check()) {
        problems.push(format!("{at}.retry"), m);
    }
    if pause_after == Some(0) {
        problems.push(format!("{at}.pause_after_failures"), "must be at least 1");
    }
    problems.0.len() == before
}

const EXECUTOR_TYPES: &str = "tokio, blocking or process";

fn add_executor(
    builder: SchedulerBuilder,
    alias: &str,
    e: &ExecutorConfig,
    problems: &mut Problems,
) -> SchedulerBuilder {
    let at = |key: &str| format!("executors.{alias}.{key}");
    let workers = |problems: &mut Problems| match e.max_workers {
        Some(0) => {
            problems.push(at("max_workers"), "must be at least 1");
            None
        }
        Some(n) => Some(n),
        // APScheduler's pools default to 10 workers.
        None => Some(10),
    };
    let only_process = |problems: &mut Problems| {
        if e.worker_mode {
            problems.push(
                at("worker_mode"),
                "only a process executor has a worker mode",
            );
        }
        if e.worker_timeout.is_some() {
            problems.push(
                at("worker_timeout"),
                "only a process executor has a worker mode",
            );
        }
    };
    match e.kind.as_str() {
        "tokio" => {
            only_process(problems);
            if e.max_workers.is_some() {
                problems.push(
                    at("max_workers"),
                    "a tokio executor has no workers to count (blocking and process do)",
                );
            }
            builder.executor(alias, TokioExecutor::new())
        }
        "blocking" => {
            only_process(problems);
            match workers(problems) {
                Some(n) => builder.executor(alias, BlockingExecutor::new(n)),
                None => builder,
            }
        }
        "process" => {
            let timeout = match e.worker_timeout {
                Some(_) if !e.worker_mode => {
                    problems.push(at("worker_timeout"), "needs worker_mode = true");
                    None
                }
                Some(secs) => match seconds(secs) {
                    Ok(d) => Some(d),
                    Err(m) => {
                        problems.push(at("worker_timeout"), m);
                        None
                    }
                },
                None => None,
            };
            match workers(problems) {
                Some(n) if e.worker_mode => {
                    builder.executor(alias, ProcessExecutor::new(n).tasks_in_worker_mode(timeout))
                }
                Some(n) => builder.executor(alias, ProcessExecutor::new(n)),
                None => builder,
            }
        }
        other => {
            problems.push(
                at("type"),
                format!("'{other}' is not an executor type ({EXECUTOR_TYPES})"),
            );
            builder
        }
    }
}

fn plan_job(
    config: &SchedulerConfig,
    index: usize,
    job: &JobConfig,
    problems: &mut Problems,
) -> Option<PlannedJob> {
    let at = |key: &str| format!("jobs[{index}].{key}");
    let before = problems.0.len();
    if job.task.trim().is_empty() {
        problems.push(at("task"), "missing: name the registered task the job runs");
    }
    if job.id.as_deref().is_some_and(|id| id.trim().is_empty()) {
        problems.push(at("id"), "must not be empty");
    }
    let store = job.store_alias();
    if store != "default" && !config.stores.contains_key(store) {
        problems.push(
            at("store"),
            format!(
                "no store named '{store}' ({})",
                known("stores", &config.stores)
            ),
        );
    }
    if let Some(alias) = job.executor.as_deref() {
        match config.executors.get(alias) {
            None if alias != "default" => problems.push(
                at("executor"),
                format!(
                    "no executor named '{alias}' ({})",
                    known("executors", &config.executors)
                ),
            ),
            Some(e) if e.kind == "process" && !e.worker_mode => problems.push(
                at("executor"),
                format!(
                    "'{alias}' is a process executor without worker_mode = true; a configured \
                     job runs a task, which a process executor runs only in worker mode"
                ),
            ),
            _ => {}
        }
    }
    let misfire_grace_time = match job.misfire_grace_time.map(grace).transpose() {
        Ok(g) => g,
        Err(m) => {
            problems.push(at("misfire_grace_time"), m);
            None
        }
    };
    if job.max_instances == Some(0) {
        problems.push(at("max_instances"), "must be at least 1");
    }
    let timeout = match job.timeout.map(grace).transpose() {
        Ok(t) => t,
        Err(m) => {
            problems.push(at("timeout"), m);
            None
        }
    };
    failure_options(
        &format!("jobs[{index}]"),
        job.retry,
        job.pause_after_failures,
        problems,
    );
    let trigger = trigger(index, job, problems);
    if problems.0.len() > before {
        return None;
    }
    Some(PlannedJob {
        index,
        task: job.task.clone(),
        args: job.args.clone().map(untoml).unwrap_or_default(),
        id: job.job_id().to_string(),
        name: job.name.clone(),
        trigger: trigger?,
        store: store.to_string(),
        executor: job.executor.clone(),
        misfire_grace_time,
        coalesce: job.coalesce,
        max_instances: job.max_instances,
        timeout,
        overlap: job.overlap,
        retry: job.retry,
        pause_after_failures: job.pause_after_failures,
    })
}

/// "configured: a, b; or "default"" for a message about an unknown alias.
fn known<V>(what: &str, map: &BTreeMap<String, V>) -> String {
    let mut names: Vec<&str> = map.keys().map(String::as_str).collect();
    if !names.contains(&"default") {
        names.push("default");
    }
    format!("the {what} are: {}", names.join(", "))
}

/// The job's trigger, from `trigger` and the job's other keys.
fn trigger(index: usize, job: &JobConfig, problems: &mut Problems) -> Option<TriggerSpec> {
    let at = format!("jobs[{index}].trigger");
    let kinds = || {
        TRIGGERS
            .iter()
            .map(|(k, _)| *k)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(kind) = job.trigger.as_deref() else {
        problems.push(at, format!("missing: give one of {}", kinds()));
        return None;
    };
    let kind = kind.to_ascii_lowercase();
    let Some((_, params)) = TRIGGERS.iter().find(|(k, _)| *k == kind) else {
        problems.push(at, format!("'{kind}' is not a trigger ({})", kinds()));
        return None;
    };
    let mut unknown = false;
    for key in job.trigger_args.keys() {
        if !params.contains(&key.as_str()) {
            unknown = true;
            problems.push(
                format!("{at}.{key}"),
                format!(
                    "not an option of a job or a parameter of a {kind} trigger (its parameters: \
                     {})",
                    params.join(", ")
                ),
            );
        }
    }
    if unknown {
        return None;
    }
    let mut spec = serde_json::Map::new();
    spec.insert("kind".into(), kind.into());
    for (k, v) in &job.trigger_args {
        spec.insert(k.clone(), untoml(v.clone()));
    }
    match serde_json::from_value::<TriggerSpec>(serde_json::Value::Object(spec)) {
        Ok(t) => Some(t),
        Err(e) => {
            // The trigger's messages start with the parameter they are about
            // (`hour: '25' is out of range ...`): that goes into the path.
            let message = e.to_string();
            match message.split_once(": ") {
                Some((param, rest)) if params.contains(&param) || param == "interval" => {
                    problems.push(format!("{at}.{param}"), rest)
                }
                _ => problems.push(at, message),
            }
            None
        }
    }
}

/// A TOML date-time, which serde hands over as a one-key map, as its text; everything else
/// as it is.
fn untoml(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(mut m) => {
            if m.len() == 1 {
                if let Some(Value::String(s)) = m.get("$__toml_private_datetime") {
                    return Value::String(s.clone());
                }
            }
            for v in m.values_mut() {
                *v = untoml(std::mem::take(v));
            }
            Value::Object(m)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(untoml).collect()),
        other => other,
    }
}
