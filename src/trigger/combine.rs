//! Combinations: [`And`] (all triggers agree) and [`Or`] (earliest of any).

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::tz;
use super::{Trigger, TriggerSpec};
use crate::error::TriggerError;

/// Rounds of candidate times an [`And`] tries before giving up.
const MAX_ROUNDS: u32 = 10_000;

/// Fires at the earliest instant (from the search start) at which every child fires.
///
/// Each child follows its own sequence of fire times from the same `prev`/`now` (a cron its
/// matching times, an interval its grid, a calendar interval its grid, a date once). Unlike
/// APScheduler 3, which loops forever when the children never agree, the search is bounded
/// and then fails with [`TriggerError::GaveUp`].
///
/// ```
/// use apsched::trigger::{And, Cron, Trigger};
/// use chrono::{TimeZone, Utc};
///
/// let both = And::new(vec![
///     Cron::builder().hour("*/2").build()?.into(),
///     Cron::builder().hour("*/3").build()?.into(),
/// ])?;
/// let now = Utc.with_ymd_and_hms(2024, 1, 15, 10, 20, 30).unwrap();
/// assert_eq!(both.next_fire_time(None, now), Some(Utc.with_ymd_and_hms(2024, 1, 15, 12, 0, 0).unwrap()));
/// # Ok::<(), apsched::TriggerError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct And {
    parts: Box<Parts>,
}

/// Fires at the earliest of its children's next fire times (children get the combination's
/// `prev`, as in APScheduler 3). An `Or` of no triggers is exhausted at once.
///
/// ```
/// use apsched::trigger::{Cron, Or, Trigger};
/// use chrono::{TimeZone, Utc};
///
/// let either = Or::new(vec![
///     Cron::builder().hour(9).build()?.into(),
///     Cron::builder().hour(18).build()?.into(),
/// ]);
/// let now = Utc.with_ymd_and_hms(2024, 1, 15, 10, 0, 0).unwrap();
/// assert_eq!(either.next_fire_time(None, now), Some(Utc.with_ymd_and_hms(2024, 1, 15, 18, 0, 0).unwrap()));
/// # Ok::<(), apsched::TriggerError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Or {
    parts: Box<Parts>,
}

/// A combination's children and jitter. Boxed: combinations are rare, and every job holds
/// its trigger, so the other kinds should not pay for this one's size.
#[derive(Debug, Clone, PartialEq)]
struct Parts {
    triggers: Vec<TriggerSpec>,
    jitter: Option<Duration>,
}

impl Parts {
    fn new(triggers: Vec<TriggerSpec>) -> Box<Self> {
        Box::new(Parts {
            triggers,
            jitter: None,
        })
    }
}

impl And {
    /// All of `triggers` must agree; at least one is required.
    pub fn new(triggers: Vec<TriggerSpec>) -> Result<Self, TriggerError> {
        if triggers.is_empty() {
            return Err(TriggerError::InvalidParam {
                param: "triggers".into(),
                reason: "an 'and' needs at least one trigger (got an empty list)".into(),
            });
        }
        Ok(And {
            parts: Parts::new(triggers),
        })
    }

    /// Adds a random delay in `[0, jitter]` to every fire time.
    pub fn with_jitter(mut self, jitter: Duration) -> Self {
        self.parts.jitter = Some(jitter);
        self
    }

    /// The children.
    pub fn triggers(&self) -> &[TriggerSpec] {
        &self.parts.triggers
    }

    /// Fills every unset zone of the children with `tz` (the scheduler's zone).
    pub(crate) fn with_default_timezone(mut self, tz: Tz) -> Self {
        self.parts.triggers = std::mem::take(&mut self.parts.triggers)
            .into_iter()
            .map(|t| t.with_default_timezone(tz))
            .collect();
        self
    }
}

impl Or {
    /// The earliest of `triggers`.
    pub fn new(triggers: Vec<TriggerSpec>) -> Self {
        Or {
            parts: Parts::new(triggers),
        }
    }

    /// Adds a random delay in `[0, jitter]` to every fire time.
    pub fn with_jitter(mut self, jitter: Duration) -> Self {
        self.parts.jitter = Some(jitter);
        self
    }

    /// The children.
    pub fn triggers(&self) -> &[TriggerSpec] {
        &self.parts.triggers
    }

    /// Fills every unset zone of the children with `tz` (the scheduler's zone).
    pub(crate) fn with_default_timezone(mut self, tz: Tz) -> Self {
        self.parts.triggers = std::mem::take(&mut self.parts.triggers)
            .into_iter()
            .map(|t| t.with_default_timezone(tz))
            .collect();
        self
    }
}

/// The first time `>= t` of `child`'s sequence, given `s0` (an earlier element of it).
fn seq_at_or_after(
    child: &TriggerSpec,
    s0: DateTime<Utc>,
    t: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, TriggerError> {
    match child {
        TriggerSpec::Cron(c) => {
            let Some(before) = t.checked_sub_signed(TimeDelta::microseconds(1)) else {
                return Ok(None);
            };
            c.try_next_fire_time(Some(before), t)
        }
        TriggerSpec::Interval(i) => Ok(i.bounded(i.grid_at_or_after(s0, t))),
        TriggerSpec::Date(_) => Ok(None),
        TriggerSpec::CalendarInterval(c) => c.first_at_or_after(c.origin(s0), t),
        _ => {
            let mut x = s0;
            for _ in 0..MAX_ROUNDS {
                if x >= t {
                    return Ok(Some(x));
                }
                match child.try_next_fire_time(Some(x), x)? {
                    Some(n) if n > x => x = n,
                    _ => return Ok(None),
                }
            }
            Err(TriggerError::GaveUp(format!(
                "and: child {child} did not reach {t} within {MAX_ROUNDS} fire times (check \
                 that the triggers can fire at the same instant)"
            )))
        }
    }
}

impl Trigger for And {
    fn try_next_fire_time(
        &self,
        prev: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, TriggerError> {
        let mut cur = Vec::with_capacity(self.parts.triggers.len());
        for child in &self.parts.triggers {
            match child.try_next_fire_time(prev, now)? {
                Some(t) => cur.push(t),
                None => return Ok(None),
            }
        }
        for _ in 0..MAX_ROUNDS {
            let (Some(&min), Some(&max)) = (cur.iter().min(), cur.iter().max()) else {
                return Ok(None);
            };
            if min == max {
                return Ok(Some(tz::apply_jitter(max, self.parts.jitter)));
            }
            for (child, c) in self.parts.triggers.iter().zip(cur.iter_mut()) {
                if *c < max {
                    match seq_at_or_after(child, *c, max)? {
                        Some(t) => *c = t,
                        None => return Ok(None),
                    }
                }
            }
        }
        Err(TriggerError::GaveUp(format!(
            "{self}: the triggers did not agree on a fire time within {MAX_ROUNDS} candidates \
             (check that they can fire at the same instant)"
        )))
    }
}

impl Trigger for Or {
    fn try_next_fire_time(
        &self,
        prev: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, TriggerError> {
        let mut best: Option<DateTime<Utc>> = None;
        for child in &self.parts.triggers {
            if let Some(t) = child.try_next_fire_time(prev, now)? {
                best = Some(best.map_or(t, |b| b.min(t)));
            }
        }
        Ok(best.map(|t| tz::apply_jitter(t, self.parts.jitter)))
    }
}

fn fmt_list(f: &mut fmt::Formatter<'_>, name: &str, ts: &[TriggerSpec]) -> fmt::Result {
    write!(f, "{name}[")?;
    for (i, t) in ts.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{t}")?;
    }
    f.write_str("]")
}

impl fmt::Display for And {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_list(f, "and", &self.parts.triggers)
    }
}

impl fmt::Display for Or {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_list(f, "or", &self.parts.triggers)
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CombineRaw {
    triggers: Vec<TriggerSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jitter: Option<f64>,
}

fn jitter(j: Option<f64>) -> Result<Option<Duration>, TriggerError> {
    j.map(tz::jitter_from_secs).transpose()
}

impl Serialize for And {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        CombineRaw {
            triggers: self.parts.triggers.clone(),
            jitter: self.parts.jitter.map(|j| j.as_secs_f64()),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for And {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = CombineRaw::deserialize(d)?;
        let build = || -> Result<And, TriggerError> {
            let mut a = And::new(r.triggers)?;
            a.parts.jitter = jitter(r.jitter)?;
            Ok(a)
        };
        build().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Or {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        CombineRaw {
            triggers: self.parts.triggers.clone(),
            jitter: self.parts.jitter.map(|j| j.as_secs_f64()),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Or {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = CombineRaw::deserialize(d)?;
        let build = || -> Result<Or, TriggerError> {
            let mut o = Or::new(r.triggers);
            o.parts.jitter = jitter(r.jitter)?;
            Ok(o)
        };
        build().map_err(serde::de::Error::custom)
    }
}
