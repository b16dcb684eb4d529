//! The cron trigger: APScheduler 3's field form, and crontab strings.
//!
//! * [`field`]: field names, ranges, and [`CronField`] (the value a field is given);
//! * `expr` (private): parsing field expressions;
//! * `schedule` (private): the compiled wall-clock schedule and its bounded search;
//! * this file: [`Cron`], its builder, the DST rules, serde and `Display`.

pub(crate) mod expr;
pub mod field;
pub(crate) mod schedule;

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use self::expr::parse_field;
use self::field::{CronField, FieldKind};
use self::schedule::{DayRule, Schedule};
use super::tz::{self, IntoTriggerDate, TriggerDate};
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

/// Builds a [`Cron`]; every setter is checked in [`CronBuilder::build`].
#[derive(Debug, Clone, Default)]
pub struct CronBuilder {
    fields: [Option<CronField>; 8],
    crontab: Option<String>,
    start_date: Option<Result<TriggerDate, TriggerError>>,
    end_date: Option<Result<TriggerDate, TriggerError>>,
    timezone: Option<Tz>,
    jitter: Option<Duration>,
}

macro_rules! field_setters {
    ($($(#[$doc:meta])* $name:ident => $kind:expr;)*) => {$(
        $(#[$doc])*
        pub fn $name(mut self, value: impl Into<CronField>) -> Self {
            self.fields[$kind.index()] = Some(value.into());
            self
        }
    )*};
}

impl CronBuilder {
    field_setters! {
        /// `year`: 4-digit year (`*/n` counts from 1970).
        year => FieldKind::Year;
        /// `month`: 1–12 or `jan`–`dec`.
        month => FieldKind::Month;
        /// `day` of month: 1–31, `last`, `xth y` (`2nd fri`), `last y` (`last sun`).
        day => FieldKind::Day;
        /// ISO `week`: 1–53.
        week => FieldKind::Week;
        /// `day_of_week`: 0–6 (0 = Monday) or `mon`–`sun`.
        day_of_week => FieldKind::DayOfWeek;
        /// `hour`: 0–23.
        hour => FieldKind::Hour;
        /// `minute`: 0–59.
        minute => FieldKind::Minute;
        /// `second`: 0–59.
        second => FieldKind::Second;
    }

    /// Sets any field by kind.
    pub fn field(mut self, kind: FieldKind, value: impl Into<CronField>) -> Self {
        self.fields[kind.index()] = Some(value.into());
        self
    }

    /// Uses a crontab string (`"0 9 * * 1-5"`, `"*/10 * * * * *"`, `"@daily"`) instead of
    /// fields, with crontab meaning (see `docs/triggers.md`). It cannot be combined with the
    /// field setters; the other setters (zone, dates, jitter) apply as in the field form.
    ///
    /// ```
    /// use apsched::trigger::Cron;
    ///
    /// let weekdays = Cron::builder()
    ///     .crontab("0 9 * * 1-5")
    ///     .timezone(chrono_tz::Europe::London)
    ///     .end_date("2030-01-01")
    ///     .build()?;
    /// assert_eq!(weekdays.crontab(), Some("0 9 * * 1-5"));
    /// # Ok::<(), apsched::TriggerError>(())
    /// ```
    pub fn crontab(mut self, expr: impl Into<String>) -> Self {
        self.crontab = Some(expr.into());
        self
    }

    /// No fire time before this (inclusive). A string without offset is wall time in the
    /// trigger's zone.
    pub fn start_date(mut self, date: impl IntoTriggerDate) -> Self {
        self.start_date = Some(date.into_trigger_date("start_date"));
        self
    }

    /// No fire time after this (inclusive).
    pub fn end_date(mut self, date: impl IntoTriggerDate) -> Self {
        self.end_date = Some(date.into_trigger_date("end_date"));
        self
    }

    /// The zone whose wall clock the fields describe (default: the scheduler's zone, else UTC).
    pub fn timezone(mut self, tz: Tz) -> Self {
        self.timezone = Some(tz);
        self
    }

    /// Adds a random delay in `[0, jitter]` to every fire time.
    pub fn jitter(mut self, jitter: Duration) -> Self {
        self.jitter = Some(jitter);
        self
    }

    /// Checks every parameter and compiles the trigger.
    pub fn build(self) -> Result<Cron, TriggerError> {
        let start_date = self.start_date.transpose()?;
        let end_date = self.end_date.transpose()?;
        let (schedule, hour_star) = match &self.crontab {
            Some(expr) => {
                if self.fields.iter().any(Option::is_some) {
                    return Err(TriggerError::InvalidCrontab {
                        expr: expr.clone(),
                        reason: "a crontab string cannot be combined with cron fields".into(),
                    });
                }
                super::crontab::compile(expr)?
            }
            None => compile_fields(&self.fields)?,
        };
        let mut cron = Cron {
            fields: Box::new(self.fields),
            crontab: self.crontab,
            start_date,
            end_date,
            timezone: self.timezone,
            jitter: self.jitter,
            schedule,
            hour_star,
            start: None,
            end: None,
        };
        cron.resolve_dates()?;
        if let (Some(s), Some(e)) = (cron.start, cron.end) {
            if e < s {
                return Err(TriggerError::InvalidParam {
                    param: "end_date".into(),
                    reason: format!(
                        "'{}' is before start_date '{}'",
                        fmt_opt(&cron.end_date),
                        fmt_opt(&cron.start_date)
                    ),
                });
            }
        }
        Ok(cron)
    }
}

fn fmt_opt(d: &Option<TriggerDate>) -> String {
    d.map(|d| d.to_string()).unwrap_or_default()
}

/// Applies APScheduler's default filling and compiles the fields.
fn compile_fields(fields: &[Option<CronField>; 8]) -> Result<(Schedule, bool), TriggerError> {
    let last_given = fields.iter().rposition(Option::is_some);
    let mut parsed = Vec::with_capacity(8);
    for (i, kind) in FieldKind::ALL.iter().enumerate() {
        let text = match (&fields[i], last_given) {
            (Some(f), _) => f.as_str(),
            (None, Some(last)) if i > last => kind.default_expr(),
            _ => "*",
        };
        parsed.push(parse_field(*kind, text)?);
    }
    let p = |k: FieldKind| &parsed[k.index()];
    let months = p(FieldKind::Month).mask() as u16;
    let dom = (!p(FieldKind::Day).is_star).then(|| p(FieldKind::Day).exprs.clone());
    let weeks = (!p(FieldKind::Week).is_star).then(|| p(FieldKind::Week).mask());
    let never = !schedule::may_match(months, dom.as_deref(), weeks);
    let schedule = Schedule {
        years: (!p(FieldKind::Year).is_star).then(|| p(FieldKind::Year).exprs.clone()),
        months,
        days: DayRule::Fields {
            dom,
            weeks,
            dows: (!p(FieldKind::DayOfWeek).is_star).then(|| p(FieldKind::DayOfWeek).mask() as u8),
        },
        hours: p(FieldKind::Hour).mask() as u32,
        minutes: p(FieldKind::Minute).mask(),
        seconds: p(FieldKind::Second).mask(),
        never,
    };
    Ok((schedule, p(FieldKind::Hour).is_star))
}

/// How far around an instant to look for a zone transition (longer than any DST gap).
const WINDOW_SECS: i64 = 25 * 3600;

/// More than any change of UTC offset (Samoa's 24 hours): a wall time read with the offset
/// of a stretch at least this far from the stretch's ends can have no other reading.
const UNIQUE_MARGIN_SECS: i64 = 2 * 86_400;

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

    /// The trigger with its zone set to `tz` if none was given.
    pub fn with_default_timezone(self, tz: Tz) -> Self {
        if self.timezone.is_some() {
            self
        } else {
            self.with_timezone(tz)
        }
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
        let tz = self.tz();
        self.start = self
            .start_date
            .map(|d| d.resolve_param(tz, "start_date"))
            .transpose()?;
        self.end = self
            .end_date
            .map(|d| d.resolve_param(tz, "end_date"))
            .transpose()?;
        Ok(())
    }

    /// The first fire instant `>= s` (a whole second), without bounds or jitter.
    fn next_instant(&self, s: NaiveDateTime) -> Option<NaiveDateTime> {
        let tz = self.tz();
        let mut s = s;
        let mut force_slow = false;
        for _ in 0..256 {
            let span = tz::span(tz, s, WINDOW_SECS);
            let o = span.offset;
            let wall = tz::shift(s, i64::from(o))?;
            let quiet = !force_slow && span.holds(s.and_utc().timestamp(), WINDOW_SECS);
            if quiet {
                let m = self.schedule.next_match(wall)?;
                // Well inside the stretch of offset `o`, a wall time exists once, with `o`
                // (no other offset is two days away); elsewhere ask the zone.
                let instant = tz::shift(m, -i64::from(o));
                let margin =
                    |i: &NaiveDateTime| span.holds(i.and_utc().timestamp(), UNIQUE_MARGIN_SECS);
                if let Some(instant) = instant.filter(margin) {
                    return Some(instant);
                }
                match tz::unique_instant(tz, m) {
                    Some(instant) => return Some(instant),
                    None => {
                        // Near a transition: continue carefully from half a day before it.
                        let approx = tz::shift(m, -i64::from(o) - 12 * 3600)?;
                        if approx > s {
                            s = approx;
                        }
                        force_slow = true;
                        continue;
                    }
                }
            }
            force_slow = false;
            match self.slow_step(tz, s)? {
                Ok(found) => return Some(found),
                Err(next_s) => s = next_s,
            }
        }
        None
    }

    /// One segment of constant offset around `s`. `Ok(instant)` when a fire time is in it,
    /// `Err(next start)` to continue, `None` when nothing ever matches again.
    fn slow_step(&self, tz: Tz, s: NaiveDateTime) -> Option<Result<NaiveDateTime, NaiveDateTime>> {
        let o = tz::offset_at(tz, s);
        let prev = tz::shift(s, -WINDOW_SECS).and_then(|lo| tz::transition_in(tz, lo, s));
        let ahead = tz::shift(s, WINDOW_SECS);
        let next = ahead.and_then(|hi| tz::transition_in(tz, s, hi));
        let seg_end = match (next, ahead) {
            (Some(t), _) => t.at,
            (None, Some(a)) => a,
            (None, None) => NaiveDateTime::MAX,
        };
        let mut best: Option<NaiveDateTime> = None;
        // Wall times of this segment.
        let mut lo = tz::shift(s, i64::from(o))?;
        if let Some(t) = prev {
            if t.before > t.after && !self.hour_star {
                // Second pass of an overlap: its wall times already fired in the first.
                if let Some(end_overlap) = tz::shift(t.at, i64::from(t.before)) {
                    lo = lo.max(end_overlap);
                }
            }
        }
        let hi = tz::shift(seg_end, i64::from(o)).unwrap_or(NaiveDateTime::MAX);
        let first = self.schedule.next_match(lo);
        if let Some(m) = first {
            if m < hi {
                best = tz::shift(m, -i64::from(o));
            }
        }
        // Wall times of a gap just before `s`, shifted forward by the gap.
        if let Some(t) = prev {
            let gap = i64::from(t.after) - i64::from(t.before);
            if gap > 0 && tz::shift(t.at, gap).is_some_and(|end| s < end) {
                let lo2 = tz::shift(s, i64::from(t.before))?;
                let hi2 = tz::shift(t.at, i64::from(t.after))?;
                if let Some(m) = self.schedule.next_match(lo2) {
                    if m < hi2 {
                        if let Some(c) = tz::shift(m, -i64::from(t.before)) {
                            best = Some(best.map_or(c, |b| b.min(c)));
                        }
                    }
                }
            }
        }
        if let Some(b) = best {
            return Some(Ok(b));
        }
        first?;
        if seg_end == NaiveDateTime::MAX {
            return None;
        }
        Some(Err(seg_end))
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

/// The serde form: APScheduler's parameter names; field values as strings.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CronRaw {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    year: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    month: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    day: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    week: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    day_of_week: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hour: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    minute: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    second: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crontab: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    start_date: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    end_date: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timezone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jitter: Option<f64>,
}

/// A field value from JSON: a string or a non-negative integer.
fn field_value(kind: FieldKind, v: serde_json::Value) -> Result<CronField, TriggerError> {
    match v {
        serde_json::Value::String(s) => Ok(CronField(s)),
        serde_json::Value::Number(n) if n.is_u64() || n.is_i64() => Ok(CronField(n.to_string())),
        other => Err(TriggerError::InvalidField {
            field: kind.name().into(),
            expr: other.to_string(),
            reason: "is not a string or an integer".into(),
        }),
    }
}

impl TryFrom<CronRaw> for Cron {
    type Error = TriggerError;

    fn try_from(raw: CronRaw) -> Result<Self, Self::Error> {
        let mut b = Cron::builder();
        let values = [
            raw.year,
            raw.month,
            raw.day,
            raw.week,
            raw.day_of_week,
            raw.hour,
            raw.minute,
            raw.second,
        ];
        for (kind, v) in FieldKind::ALL.into_iter().zip(values) {
            if let Some(v) = v {
                b = b.field(kind, field_value(kind, v)?);
            }
        }
        if let Some(c) = raw.crontab {
            b = b.crontab(c);
        }
        if let Some(s) = raw.start_date {
            b = b.start_date(s);
        }
        if let Some(s) = raw.end_date {
            b = b.end_date(s);
        }
        if let Some(z) = raw.timezone {
            b = b.timezone(tz::parse_tz("timezone", &z)?);
        }
        if let Some(j) = raw.jitter {
            b = b.jitter(tz::jitter_from_secs(j)?);
        }
        b.build()
    }
}

impl From<&Cron> for CronRaw {
    fn from(c: &Cron) -> Self {
        let v = |k: FieldKind| {
            c.fields[k.index()]
                .as_ref()
                .map(|f| serde_json::Value::String(f.0.clone()))
        };
        CronRaw {
            year: v(FieldKind::Year),
            month: v(FieldKind::Month),
            day: v(FieldKind::Day),
            week: v(FieldKind::Week),
            day_of_week: v(FieldKind::DayOfWeek),
            hour: v(FieldKind::Hour),
            minute: v(FieldKind::Minute),
            second: v(FieldKind::Second),
            crontab: c.crontab.clone(),
            start_date: c.start_date.map(|d| d.to_string()),
            end_date: c.end_date.map(|d| d.to_string()),
            timezone: c.timezone.map(|z| z.name().to_string()),
            jitter: c.jitter.map(|j| j.as_secs_f64()),
        }
    }
}

impl Serialize for Cron {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        CronRaw::from(self).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Cron {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = CronRaw::deserialize(d)?;
        Cron::try_from(raw).map_err(serde::de::Error::custom)
    }
}
