//! Crontab strings: parsed by the `croner` crate, then translated into the same compiled
//! schedule as the field form, so fire times obey the same DST rules.
//!
//! Meaning is crontab's: 5 fields (minute hour day month weekday) or 6 with seconds first;
//! weekday 0 and 7 = Sunday; when both day-of-month and day-of-week are restricted (neither
//! is `*` or `?`), a day matches if **either** matches; `@yearly`, `@annually`, `@monthly`,
//! `@weekly`, `@daily`, `@hourly`; `L` (last day / last weekday `5L`), `W` (nearest weekday),
//! `#` (`5#2` = second Friday), `?`.

use croner::parser::{CronParser, Seconds, Year};

use super::cron::schedule::{CrontabDays, DayRule, Schedule};
use crate::error::TriggerError;

// Bit flags of croner's components (stable in croner 4).
const ALL_BIT: u8 = 1;
const NTH_BITS: [u8; 5] = [1 << 1, 1 << 2, 1 << 3, 1 << 4, 1 << 5];
const LAST_BIT: u8 = 1 << 6;
const CLOSEST_WEEKDAY_BIT: u8 = 1 << 7;

fn bad(expr: &str, reason: impl Into<String>) -> TriggerError {
    TriggerError::InvalidCrontab {
        expr: expr.into(),
        reason: reason.into(),
    }
}

/// Compiles a crontab string; the flag says whether the hour field is `*`.
pub(crate) fn compile(expr: &str) -> Result<(Schedule, bool), TriggerError> {
    let trimmed = expr.trim();
    if trimmed.is_empty() {
        return Err(bad(expr, "is empty"));
    }
    if !trimmed.is_ascii() {
        return Err(bad(expr, "contains non-ASCII characters"));
    }
    let parser = CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build();
    let parsed = parser
        .parse(trimmed)
        .map_err(|e| bad(expr, e.to_string()))?;
    let p = &parsed.pattern;
    let bits = |c: &croner::CronComponent, lo: u16, hi: u16, bit: u8| -> u64 {
        (lo..=hi).fold(0u64, |m, v| {
            if c.is_bit_set(v, bit).unwrap_or(false) {
                m | (1 << v)
            } else {
                m
            }
        })
    };
    // croner numbers weekdays 0 = Sunday; ours are 0 = Monday.
    let weekdays = |bit: u8| -> u8 {
        (0u16..=6).fold(0u8, |m, v| {
            if p.days_of_week.is_bit_set(v, bit).unwrap_or(false) {
                m | (1 << ((v + 6) % 7))
            } else {
                m
            }
        })
    };
    let days = CrontabDays {
        dom: bits(&p.days, 1, 31, ALL_BIT),
        dom_last: p.days.is_feature_enabled(LAST_BIT)
            && !p.days.is_feature_enabled(CLOSEST_WEEKDAY_BIT),
        dom_last_weekday: p.days.is_feature_enabled(LAST_BIT)
            && p.days.is_feature_enabled(CLOSEST_WEEKDAY_BIT),
        dom_nearest: bits(&p.days, 1, 31, CLOSEST_WEEKDAY_BIT),
        dow: weekdays(ALL_BIT),
        dow_nth: NTH_BITS.map(weekdays),
        dow_last: weekdays(LAST_BIT),
        star_dom: p.is_dom_wildcard(),
        star_dow: p.is_dow_wildcard(),
    };
    let schedule = Schedule {
        years: None,
        months: bits(&p.months, 1, 12, ALL_BIT) as u16,
        days: DayRule::Crontab(days),
        hours: bits(&p.hours, 0, 23, ALL_BIT) as u32,
        minutes: bits(&p.minutes, 0, 59, ALL_BIT),
        seconds: bits(&p.seconds, 0, 59, ALL_BIT),
        never: false,
    };
    if schedule.hours == 0 || schedule.minutes == 0 || schedule.seconds == 0 || schedule.months == 0
    {
        return Err(bad(expr, "a field matches no value"));
    }
    Ok((schedule, p.hours.from_wildcard))
}
