//! Triggers: when does a job fire next?
//!
//! Every trigger answers one stateless question, as in APScheduler 3:
//! [`Trigger::next_fire_time`]`(prev, now)`. Persistence therefore only needs the trigger's
//! parameters, which [`TriggerSpec`] serialises in a tagged JSON form using APScheduler's
//! parameter names:
//!
//! ```
//! use apsched::trigger::{Cron, TriggerSpec};
//!
//! let spec: TriggerSpec = serde_json::from_str(r#"{"kind":"cron","hour":2,"minute":"30","timezone":"America/New_York"}"#)?;
//! assert_eq!(
//!     serde_json::to_string(&spec)?,
//!     r#"{"kind":"cron","hour":"2","minute":"30","timezone":"America/New_York"}"#
//! );
//! assert_eq!(spec.to_string(), "cron[hour='2', minute='30']");
//! # Ok::<(), serde_json::Error>(())
//! ```
//!
//! The triggers: [`Cron`] (field form and crontab strings), [`Interval`], [`Date`],
//! [`CalendarInterval`], [`And`], [`Or`]. Date strings, zones and the DST rules live in one
//! place (`tz.rs`); see `docs/triggers.md` for the rules with worked examples.

mod calendar_interval;
mod combine;
mod cron;
mod date;
mod interval;
#[cfg(test)]
mod tests;
mod tz;
mod tzdb;

use std::fmt;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

pub use self::calendar_interval::{CalendarInterval, CalendarIntervalBuilder};
pub use self::combine::{And, Or};
pub use self::cron::field::{CronField, FieldKind};
pub use self::cron::{Cron, CronBuilder};
pub use self::date::Date;
pub use self::interval::{Interval, IntervalBuilder};
pub use self::tz::{tzdb_version, utc_offset, IntoTriggerDate, TriggerDate};
use crate::error::TriggerError;

/// Answers "when does this fire next?".
///
/// Implementations are stateless: the answer depends only on the trigger's parameters,
/// `prev` (the previous fire time, `None` before the first) and `now`.
pub trait Trigger: fmt::Debug + fmt::Display + Send + Sync {
    /// The next fire time, or `Ok(None)` when the trigger is exhausted, or an error when the
    /// evaluation gave up (e.g. an `and` whose children never agree).
    fn try_next_fire_time(
        &self,
        prev: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, TriggerError>;

    /// The next fire time, or `None` when the trigger is exhausted or gave up.
    fn next_fire_time(
        &self,
        prev: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        self.try_next_fire_time(prev, now).ok().flatten()
    }

    /// The fire times from `from` on, as a scheduler would see them (each call passes the
    /// previous result as both `prev` and `now`). Use `.take(n)` for the next `n`.
    ///
    /// ```
    /// use apsched::trigger::{Interval, Trigger};
    /// use chrono::{TimeZone, Utc};
    ///
    /// let t = Interval::builder().hours(1).start_date("2024-01-01 00:00:00").build()?;
    /// let from = Utc.with_ymd_and_hms(2024, 1, 1, 0, 30, 0).unwrap();
    /// let hours: Vec<u32> = t.fire_times(from).take(3).map(|d| chrono::Timelike::hour(&d)).collect();
    /// assert_eq!(hours, [1, 2, 3]);
    /// # Ok::<(), apsched::TriggerError>(())
    /// ```
    fn fire_times(&self, from: DateTime<Utc>) -> FireTimes<'_, Self>
    where
        Self: Sized,
    {
        FireTimes {
            trigger: self,
            prev: None,
            now: from,
            done: false,
        }
    }
}

/// Iterator over a trigger's fire times; see [`Trigger::fire_times`]. Ends when the trigger
/// is exhausted, gives up, or stops moving forward.
#[derive(Debug)]
pub struct FireTimes<'a, T: ?Sized> {
    trigger: &'a T,
    prev: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    done: bool,
}

impl<T: Trigger + ?Sized> Iterator for FireTimes<'_, T> {
    type Item = DateTime<Utc>;

    fn next(&mut self) -> Option<DateTime<Utc>> {
        if self.done {
            return None;
        }
        match self.trigger.try_next_fire_time(self.prev, self.now) {
            Ok(Some(t)) if self.prev.is_none_or(|p| t > p) => {
                self.prev = Some(t);
                self.now = t;
                Some(t)
            }
            _ => {
                self.done = true;
                None
            }
        }
    }
}

/// Any built-in trigger, in the serialisable form stores and config files use.
///
/// Serialises as `{"kind": "cron", "hour": "2", ...}` with APScheduler's parameter names;
/// deserialising validates, so an invalid stored trigger is an error, never a panic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
#[non_exhaustive]
pub enum TriggerSpec {
    /// Cron (field form or crontab string). Boxed: a cron is large, and every job holds a
    /// `TriggerSpec`, so the other kinds should not pay for its size.
    Cron(Box<Cron>),
    /// Fires every fixed length of elapsed time.
    Interval(Interval),
    /// Fires once.
    Date(Date),
    /// Every N years/months/weeks/days at a wall-clock time.
    CalendarInterval(CalendarInterval),
    /// All children agree.
    And(And),
    /// Earliest of the children.
    Or(Or),
}

impl TriggerSpec {
    /// The trigger with every zone left unset filled in with `tz` (the scheduler's zone, when
    /// a job is added or its trigger replaced), recursively. A zone still unset when evaluated
    /// means UTC.
    pub(crate) fn with_default_timezone(self, tz: Tz) -> Self {
        if self.timezone().is_some() {
            return self;
        }
        match self {
            TriggerSpec::Cron(t) => TriggerSpec::Cron(Box::new(t.with_timezone(tz))),
            TriggerSpec::Interval(t) => TriggerSpec::Interval(t.with_timezone(tz)),
            TriggerSpec::Date(t) => TriggerSpec::Date(t.with_timezone(tz)),
            TriggerSpec::CalendarInterval(t) => TriggerSpec::CalendarInterval(t.with_timezone(tz)),
            TriggerSpec::And(t) => TriggerSpec::And(t.with_default_timezone(tz)),
            TriggerSpec::Or(t) => TriggerSpec::Or(t.with_default_timezone(tz)),
        }
    }

    /// The trigger's own zone, if set (`None` for `and`/`or`, whose children carry theirs).
    pub fn timezone(&self) -> Option<Tz> {
        match self {
            TriggerSpec::Cron(t) => t.timezone(),
            TriggerSpec::Interval(t) => t.timezone(),
            TriggerSpec::Date(t) => t.timezone(),
            TriggerSpec::CalendarInterval(t) => t.timezone(),
            TriggerSpec::And(_) | TriggerSpec::Or(_) => None,
        }
    }

    /// The first fire time of the sequence that follows `prev` which is at or after `from`,
    /// without walking the times in between; `None` for kinds that can only be walked
    /// (date, calendar interval, and/or). The loop uses it to skip a long backlog.
    pub(crate) fn first_fire_at_or_after(
        &self,
        prev: DateTime<Utc>,
        from: DateTime<Utc>,
    ) -> Option<Result<Option<DateTime<Utc>>, TriggerError>> {
        match self {
            TriggerSpec::Interval(t) => Some(Ok(t.first_at_or_after(prev, from))),
            // A cron's next time depends on `prev` only through "after prev": searching
            // after `from - 1µs` finds the first time at or after `from`.
            TriggerSpec::Cron(t) => {
                let after = from
                    .checked_sub_signed(chrono::TimeDelta::microseconds(1))
                    .unwrap_or(from)
                    .max(prev);
                Some(t.try_next_fire_time(Some(after), from.max(after)))
            }
            _ => None,
        }
    }

    fn as_trigger(&self) -> &dyn Trigger {
        match self {
            TriggerSpec::Cron(t) => &**t,
            TriggerSpec::Interval(t) => t,
            TriggerSpec::Date(t) => t,
            TriggerSpec::CalendarInterval(t) => t,
            TriggerSpec::And(t) => t,
            TriggerSpec::Or(t) => t,
        }
    }
}

impl Trigger for TriggerSpec {
    fn try_next_fire_time(
        &self,
        prev: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, TriggerError> {
        self.as_trigger().try_next_fire_time(prev, now)
    }
}

impl fmt::Display for TriggerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_trigger(), f)
    }
}

macro_rules! spec_from {
    ($($t:ident),*) => {$(
        impl From<$t> for TriggerSpec {
            fn from(t: $t) -> Self {
                TriggerSpec::$t(t)
            }
        }
    )*};
}
spec_from!(Interval, Date, CalendarInterval, And, Or);

impl From<Cron> for TriggerSpec {
    fn from(t: Cron) -> Self {
        TriggerSpec::Cron(Box::new(t))
    }
}
