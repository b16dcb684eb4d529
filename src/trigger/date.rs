//! The date trigger: fires once.

use std::fmt;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::tz::{self, IntoTriggerDate, TriggerDate};
use super::Trigger;
use crate::error::TriggerError;

/// Fires once, at `run_date`.
///
/// Like APScheduler's `DateTrigger`, it returns `run_date` whenever `prev` is `None` (even
/// when it lies in the past, so that a missed one-shot job is judged by misfire rules) and
/// `None` afterwards. A date string without offset is wall time in the trigger's zone (a
/// non-existent one moves forward by the DST gap, an ambiguous one means its first
/// occurrence).
///
/// ```
/// use apsched::trigger::{Date, Trigger};
/// use chrono::{TimeZone, Utc};
///
/// let once = Date::at("2024-01-15 09:00:00", Some(chrono_tz::America::New_York))?;
/// let at = Utc.with_ymd_and_hms(2024, 1, 15, 14, 0, 0).unwrap();
/// assert_eq!(once.next_fire_time(None, Utc::now()), Some(at));
/// assert_eq!(once.next_fire_time(Some(at), at), None);
/// assert_eq!(once.to_string(), "date[2024-01-15 09:00:00 EST]");
/// # Ok::<(), apsched::TriggerError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Date {
    /// The date as given; it always resolves in the trigger's zone (checked by
    /// [`at`](Self::at), kept by [`with_timezone`](Self::with_timezone)). The instant is
    /// not kept beside it: every job holds its trigger, and resolving is cheap.
    run: TriggerDate,
    timezone: Option<Tz>,
}

impl Date {
    /// A trigger firing once at `run_date`: an instant (`DateTime<Utc>` or any chrono
    /// `DateTime`), a wall-clock time (`NaiveDateTime`, `NaiveDate`) read in `timezone`, a
    /// [`TriggerDate`], or a date string (see [`TriggerDate`] for the forms; one without
    /// offset is read in `timezone`). `timezone` unset means the scheduler's zone, else UTC.
    ///
    /// Fails when the string is not a date-time or the wall time is outside the supported
    /// range; an instant never fails.
    ///
    /// ```
    /// use apsched::trigger::Date;
    /// use chrono::{NaiveDate, TimeDelta, Utc};
    ///
    /// let in_an_hour = Date::at(Utc::now() + TimeDelta::hours(1), None)?;
    /// let ny = chrono_tz::America::New_York;
    /// let wall = NaiveDate::from_ymd_opt(2024, 1, 15).unwrap().and_hms_opt(9, 0, 0).unwrap();
    /// assert_eq!(Date::at(wall, Some(ny))?, Date::at("2024-01-15 09:00:00", Some(ny))?);
    /// assert!(Date::at("next tuesday", None).is_err());
    /// # Ok::<(), apsched::TriggerError>(())
    /// ```
    pub fn at(run_date: impl IntoTriggerDate, timezone: Option<Tz>) -> Result<Self, TriggerError> {
        let run = run_date.into_trigger_date("run_date")?;
        run.resolve_param(timezone.unwrap_or(Tz::UTC), "run_date")?;
        Ok(Date { run, timezone })
    }

    /// The instant it fires at.
    pub fn run_date(&self) -> DateTime<Utc> {
        // Always resolves (see `run`); the end of time would only ever delay it.
        self.run
            .resolve(self.timezone.unwrap_or(Tz::UTC))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// The zone given, if any.
    pub fn timezone(&self) -> Option<Tz> {
        self.timezone
    }

    /// The trigger with its zone set to `tz` (a date string is re-read in it).
    pub fn with_timezone(mut self, tz: Tz) -> Self {
        if self.run.resolve(tz).is_none() {
            // Out of range in `tz`: it keeps the instant it had.
            self.run = TriggerDate::Fixed(self.run_date().fixed_offset());
        }
        self.timezone = Some(tz);
        self
    }
}

impl Trigger for Date {
    fn try_next_fire_time(
        &self,
        prev: Option<DateTime<Utc>>,
        _now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, TriggerError> {
        Ok(match prev {
            None => Some(self.run_date()),
            Some(_) => None,
        })
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tz = self.timezone.unwrap_or(Tz::UTC);
        write!(f, "date[{}]", tz::display_instant(self.run_date(), tz))
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DateRaw {
    run_date: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timezone: Option<String>,
}

impl Serialize for Date {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        DateRaw {
            run_date: self.run.to_string(),
            timezone: self.timezone.map(|z| z.name().to_string()),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Date {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = DateRaw::deserialize(d)?;
        let build = || -> Result<Date, TriggerError> {
            let tz = raw
                .timezone
                .as_deref()
                .map(|z| tz::parse_tz("timezone", z))
                .transpose()?;
            Date::at(raw.run_date.as_str(), tz)
        };
        build().map_err(serde::de::Error::custom)
    }
}
