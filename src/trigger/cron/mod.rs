//! The cron trigger: APScheduler 3's field form, and crontab strings.
//!
//! * this file: [`Cron`], its getters, [`Trigger`] and `Display`;
//! * `builder`: [`CronBuilder`], checking and compiling the parameters;
//! * `field`: field names, ranges, and [`CronField`] (the value a field is given);
//! * `expr`: parsing field expressions;
//! * `crontab`: crontab strings, compiled into the same schedule as the fields;
//! * `schedule`: the compiled wall-clock schedule and its bounded search;
//! * `search`: the next fire instant across the zone's transitions (the DST rules);
//! * `serde_form`: the serialised form, APScheduler's parameter names.

mod builder;
mod crontab;
mod expr;
pub(crate) mod field;
mod schedule;
mod search;
mod serde_form;

pub use self::builder::CronBuilder;

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;

use self::field::{CronField, FieldKind};
use self::schedule::Schedule;
use super::tz::{self, TriggerDate};
use super::Trigger;
use crate::error::TriggerError;

/// Fires when the wall-clock time in its zone matches every field, as APScheduler 3's
/// `CronTrigger` does, with the project's DST rules (see `docs/triggers.md`).
///
/// Field form (APScheduler semantics: `day_of_week` 0 = Monday, `day` AND `day_of_week`, ISO
/// `week`, fields less significant than the least significant one given default to their
/// minimum and the others to `*`):
///
/// ```
/// use apsched::trigger::{Cron, Trigger};
/// use chrono::{TimeZone, Utc};
///
/// let cron = Cron::builder().day_of_week("mon-fri").hour(9).minute("*/30").build()?;
/// let now = Utc.with_ymd_and_hms(2024, 1, 13, 12, 0, 0).unwrap(); // a Saturday
/// let next = cron.next_fire_time(None, now).unwrap();
/// assert_eq!(next, Utc.with_ymd_and_hms(2024, 1, 15, 9, 0, 0).unwrap());
/// assert_eq!(cron.to_string(), "cron[day_of_week='mon-fri', hour='9', minute='*/30']");
/// # Ok::<(), apsched::TriggerError>(())
/// ```
///
/// Crontab strings ([`CronBuilder::crontab`], the same builder, so a zone, dates and jitter
/// are set the same way) follow crontab (0 and 7 = Sunday; day-of-month OR day-of-week when
/// both are restricted), with 6 fields (seconds first), `@daily` etc., `L`, `W`, `#`, `?`:
///
/// ```
/// use apsched::trigger::{Cron, Trigger};
/// use chrono::{TimeZone, Utc};
///
/// let cron = Cron::builder().crontab("0 0 13 * 5").build()?; // every 13th and every Friday
/// let now = Utc.with_ymd_and_hms(2024, 9, 1, 0, 0, 0).unwrap();
/// let times: Vec<_> = cron.fire_times(now).take(2).collect();
/// assert_eq!(times[0], Utc.with_ymd_and_hms(2024, 9, 6, 0, 0, 0).unwrap()); // Friday
/// assert_eq!(times[1], Utc.with_ymd_and_hms(2024, 9, 13, 0, 0, 0).unwrap()); // the 13th
/// # Ok::<(), apsched::TriggerError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Cron {
    fields: Box<[Option<CronField>; 8]>,
    crontab: Option<String>,
    start_date: Option<TriggerDate>,
    end_date: Option<TriggerDate>,
    timezone: Option<Tz>,
    jitter: Option<Duration>,
    schedule: Schedule,
    /// The hour field is exactly `*` after default filling: follow real time in overlaps.
    hour_star: bool,
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
}

impl Cron {
    /// A builder: for the field form, or a crontab string ([`CronBuilder::crontab`]).
    pub fn builder() -> CronBuilder {
        CronBuilder::default()
    }

    /// The trigger with its zone set to `tz`.
    pub fn with_timezone(mut self, tz: Tz) -> Self {
        self.timezone = Some(tz);
        let _ = self.resolve_dates();
        self
    }

    /// The zone given, if any.
    pub fn timezone(&self) -> Option<Tz> {
        self.timezone
    }

    /// The expression given to a field (`None` when not given).
    pub fn field(&self, kind: FieldKind) -> Option<&CronField> {
        self.fields[kind.index()].as_ref()
    }

    /// The crontab string, when built from one.
    pub fn crontab(&self) -> Option<&str> {
        self.crontab.as_deref()
    }

    /// `start_date` as given.
    pub fn start_date(&self) -> Option<TriggerDate> {
        self.start_date
    }

    /// `end_date` as given.
    pub fn end_date(&self) -> Option<TriggerDate> {
        self.end_date
    }

    /// The jitter, if any.
    pub fn jitter(&self) -> Option<Duration> {
        self.jitter
    }

    fn tz(&self) -> Tz {
        self.timezone.unwrap_or(Tz::UTC)
    }

    fn resolve_dates(&mut self) -> Result<(), TriggerError> {
        (self.start, self.end) =
            TriggerDate::resolve_bounds(self.start_date, self.end_date, self.tz())?;
        Ok(())
    }
}

impl Trigger for Cron {
    fn try_next_fire_time(
        &self,
        prev: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, TriggerError> {
        let start = match prev {
            Some(p) if now < p => now,
            Some(p) => match p.checked_add_signed(TimeDelta::microseconds(1)) {
                Some(x) => x,
                None => return Ok(None),
            },
            None => match self.start {
                Some(s) if s > now => s,
                _ => now,
            },
        };
        let Some(start) = tz::ceil_second(start) else {
            return Ok(None);
        };
        let Some(next) = self.next_instant(start.naive_utc()) else {
            return Ok(None);
        };
        let next = next.and_utc();
        if let Some(end) = self.end {
            if next > end {
                return Ok(None);
            }
            return Ok(Some(tz::apply_jitter(next, self.jitter).min(end)));
        }
        Ok(Some(tz::apply_jitter(next, self.jitter)))
    }
}

impl fmt::Display for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("cron[")?;
        let mut sep = "";
        if let Some(c) = &self.crontab {
            write!(f, "crontab='{c}'")?;
            sep = ", ";
        }
        for kind in FieldKind::ALL {
            if let Some(v) = &self.fields[kind.index()] {
                write!(f, "{sep}{}='{}'", kind.name(), v)?;
                sep = ", ";
            }
        }
        f.write_str("]")
    }
}
