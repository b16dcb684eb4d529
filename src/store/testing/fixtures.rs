//! The fixtures of the suite: its fixed "now", its tasks and its jobs. A leaf.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};

use crate::job::{Callable, JobRecord};
use crate::trigger::{Date, Interval, TriggerSpec};

/// A fixed instant the contract tests use as "now".
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 1, 15, 10, 0, 0).unwrap()
}

/// `t0 + secs`.
pub fn at(secs: i64) -> DateTime<Utc> {
    t0() + TimeDelta::seconds(secs)
}

/// The tasks every suite job refers to: `noop` and `echo`.
pub const TASKS: &[&str] = &["noop", "echo"];

/// A persistable job (task `echo`) firing every `every_secs` from `next`.
pub fn interval_job(id: &str, every_secs: u64, next: Option<DateTime<Utc>>) -> JobRecord {
    job(
        id,
        Interval::new(Duration::from_secs(every_secs))
            .unwrap()
            .into(),
        next,
    )
}

/// A persistable one-shot job at `when`.
pub fn date_job(id: &str, when: DateTime<Utc>) -> JobRecord {
    let date = Date::at(when, None).expect("a UTC instant is a valid run date");
    job(id, date.into(), Some(when))
}

fn job(id: &str, trigger: TriggerSpec, next: Option<DateTime<Utc>>) -> JobRecord {
    JobRecord {
        id: id.to_string(),
        name: Some(format!("job {id}")),
        callable: Callable::Task {
            name: "echo".into(),
            args: serde_json::json!({"id": id, "n": [1, 2, 3]}),
        },
        trigger,
        executor: "default".into(),
        misfire_grace_time: Some(Duration::from_secs(30)),
        coalesce: false,
        max_instances: 2,
        timeout: None,
        overlap: crate::Overlap::Skip,
        retry: None,
        pause_after_failures: None,
        paused_reason: None,
        consecutive_failures: 0,
        next_run_time: next,
        version: 0,
        lease: None,
    }
}

/// The ids of `jobs`, in order.
pub(super) fn ids(jobs: &[JobRecord]) -> Vec<&str> {
    jobs.iter().map(|j| j.id.as_str()).collect()
}
