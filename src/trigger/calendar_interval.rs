//! The calendar-interval trigger: every N years/months/weeks/days at a wall-clock time.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Datelike, Days, NaiveDate, NaiveTime, Timelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::tz::{self, IntoTriggerDate, TriggerDate};
use super::Trigger;
use crate::error::TriggerError;

/// Most grid steps walked in one call before giving up with an error.
const MAX_STEPS: u32 = 200_000;

/// Fires on the dates `start_date, step(start_date), ...` at a fixed wall-clock time of day
/// (APScheduler 4's `CalendarIntervalTrigger`). A step adds `years`/`months` keeping the day
/// of month (skipping months that lack it), then `weeks`/`days`. The time of day is kept
/// across DST: a non-existent one moves forward by the gap (the day is not skipped), an
/// ambiguous one fires at its first occurrence.
///
/// The first fire time (no `prev`) is never before `now`: the first grid time `>= now`.
/// With a `prev`, it is the next grid time after `prev`'s date. Without `start_date` the
/// grid starts on `now`'s date (or `prev`'s).
///
/// ```
/// use apsched::trigger::{CalendarInterval, Trigger};
/// use chrono::{TimeZone, Utc};
///
/// let monthly = CalendarInterval::builder().months(1).hour(9).start_date("2024-01-31").build()?;
/// let now = Utc.with_ymd_and_hms(2024, 2, 1, 0, 0, 0).unwrap();
/// let times: Vec<_> = monthly.fire_times(now).take(2).collect();
/// // February has no 31st, so it is skipped:
/// assert_eq!(times[0], Utc.with_ymd_and_hms(2024, 3, 31, 9, 0, 0).unwrap());
/// assert_eq!(times[1], Utc.with_ymd_and_hms(2024, 5, 31, 9, 0, 0).unwrap());
/// # Ok::<(), apsched::TriggerError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalendarInterval {
    /// Boxed: calendar intervals are rare, and every job holds its trigger, so the other
    /// kinds should not pay for this one's size.
    spec: Box<Spec>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Spec {
    years: u32,
    months: u32,
    weeks: u32,
    days: u32,
    time: NaiveTime,
    start_date: Option<NaiveDate>,
    end_date: Option<NaiveDate>,
    timezone: Option<Tz>,
    jitter: Option<Duration>,
}

/// Builds a [`CalendarInterval`].
#[derive(Debug, Clone, Default)]
pub struct CalendarIntervalBuilder {
    years: u32,
    months: u32,
    weeks: u32,
    days: u32,
    hour: u32,
    minute: u32,
    second: u32,
    start_date: Option<Result<TriggerDate, TriggerError>>,
    end_date: Option<Result<TriggerDate, TriggerError>>,
    timezone: Option<Tz>,
    jitter: Option<Duration>,
}

impl CalendarIntervalBuilder {
    /// Years per step.
    pub fn years(mut self, n: u32) -> Self {
        self.years = n;
        self
    }
    /// Months per step.
    pub fn months(mut self, n: u32) -> Self {
        self.months = n;
        self
    }
    /// Weeks per step.
    pub fn weeks(mut self, n: u32) -> Self {
        self.weeks = n;
        self
    }
    /// Days per step.
    pub fn days(mut self, n: u32) -> Self {
        self.days = n;
        self
    }
    /// Hour of the fire time (0–23, default 0).
    pub fn hour(mut self, n: u32) -> Self {
        self.hour = n;
        self
    }
    /// Minute of the fire time (0–59, default 0).
    pub fn minute(mut self, n: u32) -> Self {
        self.minute = n;
        self
    }
    /// Second of the fire time (0–59, default 0).
    pub fn second(mut self, n: u32) -> Self {
        self.second = n;
        self
    }
    /// The first date of the grid (`YYYY-MM-DD` or a `NaiveDate`).
    pub fn start_date(mut self, date: impl IntoTriggerDate) -> Self {
        self.start_date = Some(date.into_trigger_date("start_date"));
        self
    }
    /// The last date a fire time may fall on (inclusive).
    pub fn end_date(mut self, date: impl IntoTriggerDate) -> Self {
        self.end_date = Some(date.into_trigger_date("end_date"));
        self
    }
    /// The zone of the wall-clock time.
    pub fn timezone(mut self, tz: Tz) -> Self {
        self.timezone = Some(tz);
        self
    }
    /// Adds a random delay in `[0, jitter]` to every fire time.
    pub fn jitter(mut self, jitter: Duration) -> Self {
        self.jitter = Some(jitter);
        self
    }

    /// Checks the parameters.
    pub fn build(self) -> Result<CalendarInterval, TriggerError> {
        if self.years == 0 && self.months == 0 && self.weeks == 0 && self.days == 0 {
            return Err(TriggerError::InvalidParam {
                param: "interval".into(),
                reason: "must be longer than zero (give years, months, weeks or days)".into(),
            });
        }
        for (param, n, max) in [
            ("years", self.years, 10_000),
            ("months", self.months, 120_000),
            ("weeks", self.weeks, 600_000),
            ("days", self.days, 4_000_000),
        ] {
            if n > max {
                return Err(TriggerError::InvalidParam {
                    param: param.into(),
                    reason: format!("{n} is too long a step (at most {max})"),
                });
            }
        }
        let time =
            NaiveTime::from_hms_opt(self.hour, self.minute, self.second).ok_or_else(|| {
                TriggerError::InvalidParam {
                    param: "hour/minute/second".into(),
                    reason: format!(
                        "{:02}:{:02}:{:02} is not a valid time of day (hour 0-23, minute 0-59, \
                         second 0-59)",
                        self.hour, self.minute, self.second
                    ),
                }
            })?;
        let start_date = self
            .start_date
            .transpose()?
            .map(|d| as_date("start_date", d))
            .transpose()?;
        let end_date = self
            .end_date
            .transpose()?
            .map(|d| as_date("end_date", d))
            .transpose()?;
        if let (Some(s), Some(e)) = (start_date, end_date) {
            if e < s {
                return Err(TriggerError::InvalidParam {
                    param: "end_date".into(),
                    reason: format!(
                        "'{e}' is before start_date '{s}' (give an end_date at or after the \
                         start_date)"
                    ),
                });
            }
        }
        let spec = Box::new(Spec {
            years: self.years,
            months: self.months,
            weeks: self.weeks,
            days: self.days,
            time,
            start_date,
            end_date,
            timezone: self.timezone,
            jitter: self.jitter,
        });
        Ok(CalendarInterval { spec })
    }
}

fn as_date(param: &str, d: TriggerDate) -> Result<NaiveDate, TriggerError> {
    match d {
        TriggerDate::Local(n) if n.time() == NaiveTime::MIN => Ok(n.date()),
        other => Err(TriggerError::InvalidParam {
            param: param.into(),
            reason: format!("'{other}' is not a date (expected YYYY-MM-DD)"),
        }),
    }
}

impl CalendarInterval {
    /// A builder with APScheduler 4's parameters.
    pub fn builder() -> CalendarIntervalBuilder {
        CalendarIntervalBuilder::default()
    }

    /// The zone given, if any.
    pub fn timezone(&self) -> Option<Tz> {
        self.spec.timezone
    }

    /// The trigger with its zone set to `tz`.
    pub fn with_timezone(mut self, tz: Tz) -> Self {
        self.spec.timezone = Some(tz);
        self
    }

    fn tz(&self) -> Tz {
        self.spec.timezone.unwrap_or(Tz::UTC)
    }

    /// The next grid date after `d`.
    fn step(&self, d: NaiveDate) -> Option<NaiveDate> {
        let mut next = d;
        if self.spec.years > 0 || self.spec.months > 0 {
            let (mut y, mut m) = (d.year(), d.month0());
            let mut found = None;
            for _ in 0..400 {
                let total = m.checked_add(self.spec.months)?;
                y = y.checked_add(i32::try_from(self.spec.years + total / 12).ok()?)?;
                m = total % 12;
                if y > 9999 {
                    return None;
                }
                if let Some(nd) = NaiveDate::from_ymd_opt(y, m + 1, d.day()) {
                    found = Some(nd);
                    break;
                }
            }
            next = found?;
        }
        let add = u64::from(self.spec.days) + 7 * u64::from(self.spec.weeks);
        next.checked_add_days(Days::new(add))
    }

    /// Days per step when the step is a whole number of days (no years/months).
    fn day_step(&self) -> Option<u64> {
        (self.spec.years == 0 && self.spec.months == 0)
            .then(|| u64::from(self.spec.days) + 7 * u64::from(self.spec.weeks))
    }

    fn fire_at(&self, d: NaiveDate) -> Option<DateTime<Utc>> {
        tz::resolve_local(self.tz(), d.and_time(self.spec.time))
    }

    fn gave_up() -> TriggerError {
        TriggerError::GaveUp(format!(
            "calendarinterval: more than {MAX_STEPS} steps from start_date (give a start_date \
             closer to now, or a longer step)"
        ))
    }

    /// Jumps a pure day grid from `origin` close to (but not past) `target`.
    fn jump(&self, origin: NaiveDate, target: NaiveDate) -> NaiveDate {
        if let Some(step) = self.day_step() {
            let gap = (target - origin).num_days() - 2;
            if gap > 0 && step > 0 {
                let k = gap as u64 / step;
                if let Some(d) = origin.checked_add_days(Days::new(k * step)) {
                    return d;
                }
            }
        }
        origin
    }

    /// The first grid time `>= t` of the grid starting at `origin`.
    pub(crate) fn first_at_or_after(
        &self,
        origin: NaiveDate,
        t: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, TriggerError> {
        let Some(target) = tz::local_naive(t, self.tz()).map(|n| n.date()) else {
            return Ok(None);
        };
        let mut d = self.jump(origin, target);
        for _ in 0..MAX_STEPS {
            if self.spec.end_date.is_some_and(|e| d > e) {
                return Ok(None);
            }
            if let Some(at) = self.fire_at(d) {
                if at >= t {
                    return Ok(Some(at));
                }
            }
            match self.step(d) {
                Some(n) => d = n,
                None => return Ok(None),
            }
        }
        Err(Self::gave_up())
    }

    fn next_after_date(&self, prev_date: NaiveDate) -> Result<Option<DateTime<Utc>>, TriggerError> {
        let mut d = match self.spec.start_date {
            Some(s) => self.jump(s, prev_date),
            None => match self.step(prev_date) {
                Some(d) => d,
                None => return Ok(None),
            },
        };
        for _ in 0..MAX_STEPS {
            if d > prev_date {
                if self.spec.end_date.is_some_and(|e| d > e) {
                    return Ok(None);
                }
                return Ok(self.fire_at(d));
            }
            match self.step(d) {
                Some(n) => d = n,
                None => return Ok(None),
            }
        }
        Err(Self::gave_up())
    }

    /// The origin of the grid when asked without `prev`.
    pub(crate) fn origin(&self, now: DateTime<Utc>) -> NaiveDate {
        self.spec
            .start_date
            .unwrap_or_else(|| tz::local_naive(now, self.tz()).map_or(NaiveDate::MAX, |n| n.date()))
    }
}

impl Trigger for CalendarInterval {
    fn try_next_fire_time(
        &self,
        prev: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, TriggerError> {
        let next = match prev {
            None => self.first_at_or_after(self.origin(now), now)?,
            Some(p) => match tz::local_naive(p, self.tz()) {
                Some(local) => self.next_after_date(local.date())?,
                None => None,
            },
        };
        Ok(next.map(|t| tz::apply_jitter(t, self.spec.jitter)))
    }
}

impl fmt::Display for CalendarInterval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("calendarinterval[")?;
        for (name, v) in [
            ("years", self.spec.years),
            ("months", self.spec.months),
            ("weeks", self.spec.weeks),
            ("days", self.spec.days),
        ] {
            if v != 0 {
                write!(f, "{name}={v}, ")?;
            }
        }
        write!(f, "time={}]", self.spec.time.format("%H:%M:%S"))
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CalendarIntervalRaw {
    #[serde(default, skip_serializing_if = "is_zero")]
    years: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    months: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    weeks: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    days: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    hour: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    minute: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    second: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    start_date: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    end_date: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timezone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jitter: Option<f64>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl Serialize for CalendarInterval {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        CalendarIntervalRaw {
            years: self.spec.years,
            months: self.spec.months,
            weeks: self.spec.weeks,
            days: self.spec.days,
            hour: self.spec.time.hour(),
            minute: self.spec.time.minute(),
            second: self.spec.time.second(),
            start_date: self.spec.start_date.map(|d| d.to_string()),
            end_date: self.spec.end_date.map(|d| d.to_string()),
            timezone: self.spec.timezone.map(|z| z.name().to_string()),
            jitter: self.spec.jitter.map(|j| j.as_secs_f64()),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for CalendarInterval {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = CalendarIntervalRaw::deserialize(d)?;
        let build = || -> Result<CalendarInterval, TriggerError> {
            let mut b = CalendarInterval::builder()
                .years(r.years)
                .months(r.months)
                .weeks(r.weeks)
                .days(r.days)
                .hour(r.hour)
                .minute(r.minute)
                .second(r.second);
            if let Some(s) = &r.start_date {
                b = b.start_date(s);
            }
            if let Some(s) = &r.end_date {
                b = b.end_date(s);
            }
            if let Some(z) = &r.timezone {
                b = b.timezone(tz::parse_tz("timezone", z)?);
            }
            if let Some(j) = r.jitter {
                b = b.jitter(tz::jitter_from_secs(j)?);
            }
            b.build()
        };
        build().map_err(serde::de::Error::custom)
    }
}
