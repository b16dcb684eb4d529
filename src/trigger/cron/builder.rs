//! [`CronBuilder`]: the parameters of a [`Cron`], checked and compiled in one place.

use std::time::Duration;

use chrono_tz::Tz;

use super::expr::parse_field;
use super::field::{CronField, FieldKind};
use super::schedule::{self, DayRule, Schedule};
use super::Cron;
use crate::error::TriggerError;
use crate::trigger::tz::{IntoTriggerDate, TriggerDate};

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

    /// Sets any field by kind (for the serde form; users call the named setters).
    pub(crate) fn field(mut self, kind: FieldKind, value: impl Into<CronField>) -> Self {
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
                        reason:
                            "a crontab string cannot be combined with cron fields (give either the \
                                 crontab or the field setters)"
                                .into(),
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
                        "'{}' is before start_date '{}' (give an end_date at or after the start_date)",
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
