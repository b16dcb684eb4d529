//! Triggers: when does a job fire next?
//!
//! Every trigger answers one stateless question, as in APScheduler 3:
//! [`Trigger::next_fire_time`]`(prev, now)`. Persistence therefore only needs the trigger's
//! parameters, which [`TriggerSpec`] serialises in a tagged JSON form using APScheduler's
//! parameter names.
//!
//! (Skeleton: the cron, crontab, calendar-interval and and/or triggers land with the trigger
//! module; `date` and `interval` are here so the scheduler core builds on the contract.)

mod date;
mod interval;

use std::fmt;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

pub use self::date::Date;
pub use self::interval::Interval;
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
}

/// Any built-in trigger, in the serialisable form stores and config files use.
///
/// Serialises as `{"kind": "cron", "hour": "2", ...}` with APScheduler's parameter names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
#[non_exhaustive]
pub enum TriggerSpec {
    /// Fires once.
    Date(Date),
    /// Fires every fixed length of elapsed time.
    Interval(Interval),
}

impl TriggerSpec {
    /// The trigger with every zone left unset filled in with `tz` (the scheduler's zone).
    pub fn with_default_timezone(self, tz: Tz) -> Self {
        match self {
            TriggerSpec::Date(t) => TriggerSpec::Date(t),
            TriggerSpec::Interval(t) => TriggerSpec::Interval(t.with_default_timezone(tz)),
        }
    }

    fn as_trigger(&self) -> &dyn Trigger {
        match self {
            TriggerSpec::Date(t) => t,
            TriggerSpec::Interval(t) => t,
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

impl From<Date> for TriggerSpec {
    fn from(t: Date) -> Self {
        TriggerSpec::Date(t)
    }
}

impl From<Interval> for TriggerSpec {
    fn from(t: Interval) -> Self {
        TriggerSpec::Interval(t)
    }
}
