//! Replaying trigger conformance cases (`docs/conformance.md`): shared by the
//! probe (`examples/conformance.rs`, which includes this file with `#[path]`) and the
//! integration test (`tests/triggers.rs`), so the replay rules live in one place. It uses
//! only the public trigger API (serde's [`TriggerSpec`] form and `utc_offset`), so it is not
//! part of the library.
//!
//! Reads only `id`, `kind`, `construct`, `crontab`, `params`, `timezone`, `now`, `policy`
//! and `step_count`; never `expected`, `note` or `contract_rule`. Never panics.

use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use chrono_tz::Tz;
use serde_json::{json, Map, Value};

use apsched::trigger::{utc_offset, Trigger, TriggerSpec};

/// How `prev`/`now` evolve between calls.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Policy {
    /// `prev = r, now = r` (also `raw`).
    Scheduler,
    /// `prev = r, now = r + d`.
    Late(TimeDelta),
    /// `prev = r, now = r - d`.
    Early(TimeDelta),
    /// `prev = r, now = case.now`.
    Fixed,
    /// `prev = None, now = r + 1µs`.
    PrevNone,
}

impl Policy {
    /// Parses `scheduler`, `raw`, `late:S`, `early:S`, `fixed`, `prev_none`.
    pub fn parse(s: &str) -> Result<Policy, String> {
        let secs = |v: &str| -> Result<TimeDelta, String> {
            let f: f64 = v
                .trim()
                .parse()
                .map_err(|_| format!("bad policy seconds '{v}'"))?;
            if !f.is_finite() || f.abs() > 1e12 {
                return Err(format!("bad policy seconds '{v}'"));
            }
            Ok(TimeDelta::microseconds((f * 1e6).round() as i64))
        };
        match s {
            "scheduler" | "raw" => Ok(Policy::Scheduler),
            "fixed" => Ok(Policy::Fixed),
            "prev_none" => Ok(Policy::PrevNone),
            _ => {
                if let Some(v) = s.strip_prefix("late:") {
                    Ok(Policy::Late(secs(v)?))
                } else if let Some(v) = s.strip_prefix("early:") {
                    Ok(Policy::Early(secs(v)?))
                } else {
                    Err(format!("unknown policy '{s}'"))
                }
            }
        }
    }
}

/// Builds a trigger from a case's (or child's) `kind`, `construct`, `crontab`, `params`.
pub fn build_trigger(desc: &Value) -> Result<TriggerSpec, String> {
    let value = to_spec_value(desc, 0)?;
    serde_json::from_value::<TriggerSpec>(value).map_err(|e| e.to_string())
}

/// Turns the probe's `{kind, construct, crontab, params}` into the serde form.
fn to_spec_value(desc: &Value, depth: u32) -> Result<Value, String> {
    if depth > 32 {
        return Err("triggers nested too deeply".into());
    }
    let kind = desc
        .get("kind")
        .and_then(Value::as_str)
        .ok_or("missing 'kind'")?;
    let mut map: Map<String, Value> = match desc.get("params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err("'params' is not an object".into()),
    };
    if let Some(Value::Array(children)) = map.get("triggers").cloned() {
        if kind == "and" || kind == "or" {
            let mut out = Vec::with_capacity(children.len());
            for c in &children {
                out.push(to_spec_value(c, depth + 1)?);
            }
            map.insert("triggers".into(), Value::Array(out));
        }
    }
    match desc.get("construct").and_then(Value::as_str) {
        None | Some("init") => {}
        Some("from_crontab") => {
            let c = desc
                .get("crontab")
                .and_then(Value::as_str)
                .ok_or("from_crontab without a 'crontab' string")?;
            map.insert("crontab".into(), Value::String(c.to_string()));
        }
        Some(other) => return Err(format!("unknown construct '{other}'")),
    }
    map.insert("kind".into(), Value::String(kind.to_string()));
    Ok(Value::Object(map))
}

fn parse_now(v: Option<&Value>) -> Result<DateTime<Utc>, String> {
    let s = v.and_then(Value::as_str).ok_or("missing 'now'")?;
    DateTime::parse_from_rfc3339(s)
        .map(|d| d.with_timezone(&Utc))
        .map_err(|e| format!("bad 'now' '{s}': {e}"))
}

/// The result of replaying one case.
#[derive(Debug, Clone, PartialEq)]
pub struct Replay {
    /// Every non-`None` result, in order.
    pub fire_times: Vec<DateTime<Utc>>,
    /// A call returned `None`.
    pub exhausted: bool,
    /// Building or a call failed.
    pub error: Option<String>,
}

/// Replays `trigger` for `steps` calls under `policy`.
pub fn replay(trigger: &dyn Trigger, now: DateTime<Utc>, policy: Policy, steps: u64) -> Replay {
    let mut out = Replay {
        fire_times: Vec::new(),
        exhausted: false,
        error: None,
    };
    let (mut prev, mut cur_now) = (None, now);
    for _ in 0..steps {
        match trigger.try_next_fire_time(prev, cur_now) {
            Err(e) => {
                out.error = Some(e.to_string());
                break;
            }
            Ok(None) => {
                out.exhausted = true;
                break;
            }
            Ok(Some(r)) => {
                out.fire_times.push(r);
                let next = match policy {
                    Policy::Scheduler => Some((Some(r), r)),
                    Policy::Late(d) => r.checked_add_signed(d).map(|n| (Some(r), n)),
                    Policy::Early(d) => r.checked_sub_signed(d).map(|n| (Some(r), n)),
                    Policy::Fixed => Some((Some(r), now)),
                    Policy::PrevNone => r
                        .checked_add_signed(TimeDelta::microseconds(1))
                        .map(|n| (None, n)),
                };
                match next {
                    Some((p, n)) => (prev, cur_now) = (p, n),
                    None => {
                        out.error = Some("time out of range".into());
                        break;
                    }
                }
            }
        }
    }
    out
}

/// Replays one case object (without reading `expected`).
pub fn run_case(case: &Value) -> Replay {
    let fail = |e: String| Replay {
        fire_times: Vec::new(),
        exhausted: false,
        error: Some(e),
    };
    let trigger = match build_trigger(case) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let now = match parse_now(case.get("now")) {
        Ok(n) => n,
        Err(e) => return fail(e),
    };
    let policy = match Policy::parse(
        case.get("policy")
            .and_then(Value::as_str)
            .unwrap_or("scheduler"),
    ) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let steps = case
        .get("step_count")
        .and_then(Value::as_u64)
        .or_else(|| {
            case.get("steps")
                .and_then(Value::as_array)
                .map(|a| a.len() as u64)
        })
        .unwrap_or(1)
        .min(100_000);
    replay(&trigger, now, policy, steps)
}

/// Checks one invalid input: `(rejected, message)`.
pub fn run_invalid(case: &Value) -> (bool, String) {
    let trigger = match build_trigger(case) {
        Ok(t) => t,
        Err(e) => return (true, e),
    };
    let now = match parse_now(case.get("now")) {
        Ok(n) => n,
        Err(e) => return (true, e),
    };
    match trigger.try_next_fire_time(None, now) {
        Err(e) => (true, e.to_string()),
        Ok(_) => (false, format!("accepted as {trigger}")),
    }
}

/// Renders an instant as wall time in `tz` with its offset.
pub fn render(t: DateTime<Utc>, tz: Tz) -> String {
    // The triggers' zone database, not chrono-tz's tables (which stop at 2099).
    let offset = utc_offset(tz, t);
    match t.naive_utc().checked_add_offset(offset) {
        Some(_) => t
            .with_timezone(&offset)
            .to_rfc3339_opts(SecondsFormat::AutoSi, false),
        None => t.to_rfc3339_opts(SecondsFormat::AutoSi, false),
    }
}

fn case_tz(case: &Value) -> Tz {
    case.get("timezone")
        .and_then(Value::as_str)
        .and_then(|z| Tz::from_str(z).ok())
        .unwrap_or(Tz::UTC)
}

/// Runs a whole probe input and returns the output object.
pub fn run_input(input: &Value) -> Value {
    let mut cases = Vec::new();
    for case in input
        .get("cases")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let id = case.get("id").cloned().unwrap_or(Value::Null);
        let tz = case_tz(case);
        let r = guarded(|| run_case(case)).unwrap_or_else(|e| Replay {
            fire_times: Vec::new(),
            exhausted: false,
            error: Some(e),
        });
        cases.push(json!({
            "id": id,
            "fire_times": r.fire_times.iter().map(|t| render(*t, tz)).collect::<Vec<_>>(),
            "exhausted": r.exhausted,
            "error": r.error,
        }));
    }
    let mut invalid = Vec::new();
    for case in input
        .get("invalid")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let id = case.get("id").cloned().unwrap_or(Value::Null);
        let (rejected, message) = guarded(|| run_invalid(case)).unwrap_or_else(|e| (true, e));
        invalid.push(json!({"id": id, "rejected": rejected, "message": message}));
    }
    json!({"cases": cases, "invalid": invalid})
}

/// Runs `f`, turning a panic (a bug) into an error message instead of aborting the probe.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(|_| "internal error: the trigger panicked (a bug; please report it)".to_string())
}
