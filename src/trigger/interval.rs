//! The interval trigger: fires every fixed length of elapsed time.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::tz::{self, IntoTriggerDate, TriggerDate};
use super::Trigger;
use crate::error::TriggerError;

/// Fires every `interval` of elapsed time from `start_date`, as APScheduler's
/// `IntervalTrigger`: the first fire time is `start_date` if it is not in the past, else the
/// first `start_date + k·interval >= now`; later ones are `prev + interval`. Elapsed time
/// drifts across DST in wall-clock terms (`days=1` fires an hour later by the clock after
/// spring forward). Without a `start_date`, the first fire time is one interval after `now`.
///
/// ```
/// use apsched::trigger::{Interval, Trigger};
/// use chrono::{TimeZone, Utc};
///
/// let every = Interval::builder().minutes(10).start_date("2024-01-15 10:10:00").build()?;
/// let now = Utc.with_ymd_and_hms(2024, 1, 15, 10, 25, 0).unwrap();
/// assert_eq!(every.next_fire_time(None, now), Some(Utc.with_ymd_and_hms(2024, 1, 15, 10, 30, 0).unwrap()));
/// assert_eq!(every.to_string(), "interval[0:10:00]");
/// # Ok::<(), apsched::TriggerError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Interval {
    micros: i64,
    timezone: Option<Tz>,
    /// `start_date`, `end_date` and the jitter. Boxed: most intervals have none of them,
    /// and every job holds its trigger, so this keeps every job 48 bytes smaller.
    extras: Option<Box<Extras>>,
}

/// An interval's start, end and jitter.
#[derive(Debug, Clone, PartialEq)]
struct Extras {
    jitter: Option<Duration>,
    start_date: Option<TriggerDate>,
    end_date: Option<TriggerDate>,
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
}

/// Builds an [`Interval`]; the lengths of different units add up (`hours(1).minutes(30)` =
/// 90 minutes), setting one unit twice keeps the last value.
#[derive(Debug, Clone, Default)]
pub struct IntervalBuilder {
    weeks: f64,
    days: f64,
    hours: f64,
    minutes: f64,
    seconds: f64,
    start_date: Option<Result<TriggerDate, TriggerError>>,
    end_date: Option<Result<TriggerDate, TriggerError>>,
    timezone: Option<Tz>,
    jitter: Option<Duration>,
}

impl IntervalBuilder {
    /// Weeks (added to the other lengths).
    pub fn weeks(mut self, n: impl Into<f64>) -> Self {
        self.weeks = n.into();
        self
    }
    /// Days (added to the other lengths).
    pub fn days(mut self, n: impl Into<f64>) -> Self {
        self.days = n.into();
        self
    }
    /// Hours (added to the other lengths).
    pub fn hours(mut self, n: impl Into<f64>) -> Self {
        self.hours = n.into();
        self
    }
    /// Minutes (added to the other lengths).
    pub fn minutes(mut self, n: impl Into<f64>) -> Self {
        self.minutes = n.into();
        self
    }
    /// Seconds (added to the other lengths; fractions allowed, down to a microsecond).
    pub fn seconds(mut self, n: impl Into<f64>) -> Self {
        self.seconds = n.into();
        self
    }
    /// The grid origin and first fire time (a string without offset is wall time in the
    /// trigger's zone).
    pub fn start_date(mut self, date: impl IntoTriggerDate) -> Self {
        self.start_date = Some(date.into_trigger_date("start_date"));
        self
    }
    /// No fire time after this (inclusive).
    pub fn end_date(mut self, date: impl IntoTriggerDate) -> Self {
        self.end_date = Some(date.into_trigger_date("end_date"));
        self
    }
    /// The zone date strings are read in.
    pub fn timezone(mut self, tz: Tz) -> Self {
        self.timezone = Some(tz);
        self
    }
    /// Adds a random delay in `[0, jitter]` to every fire time.
    pub fn jitter(mut self, jitter: Duration) -> Self {
        self.jitter = Some(jitter);
        self
    }

    /// Checks the parameters: the interval must be longer than zero, `end_date` not before
    /// `start_date`.
    pub fn build(self) -> Result<Interval, TriggerError> {
        let parts = [
            ("weeks", self.weeks, 604_800e6),
            ("days", self.days, 86_400e6),
            ("hours", self.hours, 3_600e6),
            ("minutes", self.minutes, 60e6),
            ("seconds", self.seconds, 1e6),
        ];
        let mut total = 0f64;
        for (name, v, unit) in parts {
            if !v.is_finite() {
                return Err(TriggerError::InvalidParam {
                    param: name.into(),
                    reason: format!("{v} is not a finite number"),
                });
            }
            total += v * unit;
        }
        let micros = total.round();
        if !micros.is_finite() || micros.abs() > 1e17 {
            return Err(TriggerError::InvalidParam {
                param: "interval".into(),
                reason: format!(
                    "{} seconds is too long (at most 100000000000 seconds, about 3,170 years)",
                    total / 1e6
                ),
            });
        }
        Interval::from_parts(
            micros as i64,
            self.start_date.transpose()?,
            self.end_date.transpose()?,
            self.timezone,
            self.jitter,
        )
    }
}

impl Interval {
    /// Fires every `every`, starting one interval after it is first asked (no `start_date`).
    pub fn new(every: Duration) -> Result<Self, TriggerError> {
        let micros = i64::try_from(every.as_micros()).map_err(|_| TriggerError::InvalidParam {
            param: "interval".into(),
            reason: format!(
                "{every:?} is too long (at most {} seconds, about 292,000 years)",
                i64::MAX / 1_000_000
            ),
        })?;
        Interval::from_parts(micros, None, None, None, None)
    }

    /// A builder with APScheduler's parameters.
    pub fn builder() -> IntervalBuilder {
        IntervalBuilder::default()
    }

    fn from_parts(
        micros: i64,
        start_date: Option<TriggerDate>,
        end_date: Option<TriggerDate>,
        timezone: Option<Tz>,
        jitter: Option<Duration>,
    ) -> Result<Self, TriggerError> {
        if micros <= 0 {
            return Err(TriggerError::InvalidParam {
                param: "interval".into(),
                reason: "must be longer than zero (give weeks, days, hours, minutes or seconds)"
                    .into(),
            });
        }
        let extras = (start_date.is_some() || end_date.is_some() || jitter.is_some()).then(|| {
            Box::new(Extras {
                jitter,
                start_date,
                end_date,
                start: None,
                end: None,
            })
        });
        let mut t = Interval {
            micros,
            timezone,
            extras,
        };
        t.resolve_dates()?;
        if let (Some(s), Some(e)) = (t.start(), t.end()) {
            if e < s {
                let show = |d: Option<TriggerDate>| d.map(|d| d.to_string()).unwrap_or_default();
                return Err(TriggerError::InvalidParam {
                    param: "end_date".into(),
                    reason: format!(
                        "'{}' is before start_date '{}' (give an end_date at or after the start_date)",
                        show(t.end_date()),
                        show(t.start_date())
                    ),
                });
            }
        }
        Ok(t)
    }

    fn resolve_dates(&mut self) -> Result<(), TriggerError> {
        let tz = self.timezone.unwrap_or(Tz::UTC);
        if let Some(d) = &mut self.extras {
            (d.start, d.end) = TriggerDate::resolve_bounds(d.start_date, d.end_date, tz)?;
        }
        Ok(())
    }

    fn start_date(&self) -> Option<TriggerDate> {
        self.extras.as_ref().and_then(|d| d.start_date)
    }

    fn end_date(&self) -> Option<TriggerDate> {
        self.extras.as_ref().and_then(|d| d.end_date)
    }

    /// `start_date` resolved.
    fn start(&self) -> Option<DateTime<Utc>> {
        self.extras.as_ref().and_then(|d| d.start)
    }

    /// `end_date` resolved.
    fn end(&self) -> Option<DateTime<Utc>> {
        self.extras.as_ref().and_then(|d| d.end)
    }

    fn jitter(&self) -> Option<Duration> {
        self.extras.as_ref().and_then(|d| d.jitter)
    }

    /// The length of the interval.
    pub fn interval(&self) -> TimeDelta {
        TimeDelta::microseconds(self.micros)
    }

    /// The zone given, if any.
    pub fn timezone(&self) -> Option<Tz> {
        self.timezone
    }

    /// The trigger with its zone set to `tz` (date strings are re-read in it).
    pub fn with_timezone(mut self, tz: Tz) -> Self {
        self.timezone = Some(tz);
        let _ = self.resolve_dates();
        self
    }

    /// The first time of the grid through `origin` that is `>= t` (for `and`).
    pub(crate) fn grid_at_or_after(
        &self,
        origin: DateTime<Utc>,
        t: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        if origin >= t {
            return Some(origin);
        }
        let behind = i128::from((t - origin).num_microseconds()?);
        let step = i128::from(self.micros);
        let k = (behind + step - 1) / step;
        let add = i64::try_from(k * step).ok()?;
        origin.checked_add_signed(TimeDelta::microseconds(add))
    }

    /// The first fire time of the sequence after `prev` that is at or after `from`, found by
    /// arithmetic instead of a walk (what the loop uses to skip a long backlog).
    pub(crate) fn first_at_or_after(
        &self,
        prev: DateTime<Utc>,
        from: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let first = prev.checked_add_signed(TimeDelta::microseconds(self.micros))?;
        let next = self.bounded(self.grid_at_or_after(first, from))?;
        Some(tz::apply_jitter(next, self.jitter()))
    }

    pub(crate) fn bounded(&self, t: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
        let t = t?;
        match self.end() {
            Some(end) if t > end => None,
            _ => Some(t),
        }
    }
}

impl Trigger for Interval {
    fn try_next_fire_time(
        &self,
        prev: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, TriggerError> {
        let step = TimeDelta::microseconds(self.micros);
        let next = match prev {
            Some(p) => p.checked_add_signed(step),
            None => match self.start() {
                Some(s) => self.grid_at_or_after(s, now),
                None => now.checked_add_signed(step),
            },
        };
        Ok(self
            .bounded(next)
            .map(|t| tz::apply_jitter(t, self.jitter())))
    }
}

/// Python's `timedelta` form: `0:10:00`, `1 day, 2:00:00`, `0:00:00.500000`.
fn fmt_timedelta(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let us = micros.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let rest = secs.rem_euclid(86_400);
    let mut s = String::new();
    if days != 0 {
        let plural = if days.abs() == 1 { "" } else { "s" };
        s.push_str(&format!("{days} day{plural}, "));
    }
    s.push_str(&format!(
        "{}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    ));
    if us != 0 {
        s.push_str(&format!(".{us:06}"));
    }
    s
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "interval[{}]", fmt_timedelta(self.micros))
    }
}

/// The serde form: APScheduler's parameter names.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IntervalRaw {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    weeks: Option<serde_json::Number>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    days: Option<serde_json::Number>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hours: Option<serde_json::Number>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    minutes: Option<serde_json::Number>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seconds: Option<serde_json::Number>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    start_date: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    end_date: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timezone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jitter: Option<f64>,
}

fn num(n: Option<serde_json::Number>) -> f64 {
    n.and_then(|n| n.as_f64()).unwrap_or(0.0)
}

impl TryFrom<IntervalRaw> for Interval {
    type Error = TriggerError;

    fn try_from(r: IntervalRaw) -> Result<Self, TriggerError> {
        let mut b = Interval::builder()
            .weeks(num(r.weeks))
            .days(num(r.days))
            .hours(num(r.hours))
            .minutes(num(r.minutes))
            .seconds(num(r.seconds));
        if let Some(s) = r.start_date {
            b = b.start_date(s);
        }
        if let Some(s) = r.end_date {
            b = b.end_date(s);
        }
        if let Some(z) = r.timezone {
            b = b.timezone(tz::parse_tz("timezone", &z)?);
        }
        if let Some(j) = r.jitter {
            b = b.jitter(tz::jitter_from_secs(j)?);
        }
        b.build()
    }
}

impl From<&Interval> for IntervalRaw {
    fn from(t: &Interval) -> Self {
        let mut rest = t.micros;
        let mut take = |unit: i64| {
            let n = rest / unit;
            rest %= unit;
            (n != 0).then(|| serde_json::Number::from(n))
        };
        let weeks = take(604_800_000_000);
        let days = take(86_400_000_000);
        let hours = take(3_600_000_000);
        let minutes = take(60_000_000);
        let seconds = (rest != 0).then(|| {
            if rest % 1_000_000 == 0 {
                serde_json::Number::from(rest / 1_000_000)
            } else {
                serde_json::Number::from_f64(rest as f64 / 1e6).unwrap_or_else(|| 0.into())
            }
        });
        IntervalRaw {
            weeks,
            days,
            hours,
            minutes,
            seconds,
            start_date: t.start_date().map(|d| d.to_string()),
            end_date: t.end_date().map(|d| d.to_string()),
            timezone: t.timezone.map(|z| z.name().to_string()),
            jitter: t.jitter().map(|j| j.as_secs_f64()),
        }
    }
}

impl Serialize for Interval {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        IntervalRaw::from(self).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Interval::try_from(IntervalRaw::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}
