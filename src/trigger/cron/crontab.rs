//! Crontab strings: parsed by the `croner` crate, then translated into the same compiled
//! schedule as the field form, so fire times obey the same DST rules.
//!
//! Meaning is crontab's: 5 fields (minute hour day month weekday) or 6 with seconds first;
//! weekday 0 and 7 = Sunday; when both day-of-month and day-of-week are restricted (neither
//! is `*` or `?`), a day matches if **either** matches; `@yearly`, `@annually`, `@monthly`,
//! `@weekly`, `@daily`, `@hourly`; `L` (last day / last weekday `5L`), `W` (nearest weekday),
//! `#` (`5#2` = second Friday), `?`.
//!
//! Stricter than croner: an empty list element (`1,,2`) and a step larger than the range it
//! steps over (`*/60`) are errors (see [`strict`]).

use croner::parser::{CronParser, Seconds, Year};

use super::expr::{step_beyond_range, MONTHS, WEEKDAYS};
use super::field::FieldKind;
use super::schedule::{CrontabDays, DayRule, Schedule};
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

/// The fields of a 5-field crontab, with the values each allows (for messages).
const FIVE: [(FieldKind, &str); 5] = [
    (FieldKind::Minute, "0-59"),
    (FieldKind::Hour, "0-23"),
    (FieldKind::Day, "1-31, L, W"),
    (FieldKind::Month, "1-12 or jan-dec"),
    (
        FieldKind::DayOfWeek,
        "0-7 or sun-sat (0 and 7 = Sunday), L, #",
    ),
];

/// The fields of `expr` with their kinds, or why their number is wrong.
fn fields(expr: &str) -> Result<Vec<(&str, FieldKind, &'static str)>, String> {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    let kinds: Vec<(FieldKind, &str)> = match fields.len() {
        5 => FIVE.to_vec(),
        6 => std::iter::once((FieldKind::Second, "0-59"))
            .chain(FIVE)
            .collect(),
        n => {
            return Err(format!(
                "has {n} fields; a crontab has 5 (minute hour day month day_of_week) or 6 \
                 (second first)"
            ))
        }
    };
    Ok(fields
        .into_iter()
        .zip(kinds)
        .map(|(f, (k, allowed))| (f, k, allowed))
        .collect())
}

fn field_error(kind: FieldKind, field: &str, why: &str, allowed: &str) -> String {
    format!(
        "{}: '{field}' is invalid ({why}; allowed: {allowed})",
        kind.name()
    )
}

/// What croner reads leniently but a crontab must not say, since a typo would become a
/// schedule nobody meant: an empty element of a list (`1,,2`, `5,`), and a step larger than
/// the range it steps over (`*/60` minutes would fire at :00 only), the field form's rule.
/// `*` (and `?`) step over the field's whole range: 0-59, 0-23, 1-31, 1-12, and 0-6 for
/// weekdays (`*/7` would be Sundays only).
fn strict(expr: &str) -> Option<String> {
    let fields = fields(expr).ok()?;
    fields.into_iter().find_map(|(field, kind, allowed)| {
        let why = field.split(',').find_map(|part| {
            if part.is_empty() {
                return Some("an empty list element (a stray comma?)".to_string());
            }
            let (base, step) = part.split_once('/')?;
            // Malformed steps and bases are croner's to report.
            let step: u32 = step.parse().ok()?;
            let range = match base {
                "*" | "?" => kind.max() - kind.min(),
                _ => {
                    let (a, b) = base.split_once('-')?;
                    let (a, b) = (value(kind, a)?, value(kind, b)?);
                    b.checked_sub(a)?
                }
            };
            step_beyond_range(step, range)
        })?;
        Some(field_error(kind, field, &why, allowed))
    })
}

/// A number, or a month or weekday name (crontab numbering: `sun` = 0).
fn value(kind: FieldKind, s: &str) -> Option<u32> {
    if let Ok(n) = s.parse() {
        return Some(n);
    }
    let s = s.to_ascii_lowercase();
    let at = |names: &[&str]| names.iter().position(|n| *n == s);
    match kind {
        FieldKind::Month => at(&MONTHS).map(|i| i as u32 + 1),
        FieldKind::DayOfWeek => at(&WEEKDAYS).map(|i| (i as u32 + 1) % 7),
        _ => None,
    }
}

/// Names the field that makes `expr` invalid, with its allowed values: croner's own
/// messages ("Number out of bounds") do not say which field they mean.
fn diagnose(parser: &CronParser, expr: &str) -> Option<String> {
    if expr.starts_with('@') {
        return Some(format!(
            "'{expr}' is not one of @yearly, @annually, @monthly, @weekly, @daily, @hourly"
        ));
    }
    let fields = match fields(expr) {
        Ok(f) => f,
        Err(why) => return Some(why),
    };
    fields
        .iter()
        .enumerate()
        .find_map(|(i, (field, kind, allowed))| {
            let alone: Vec<&str> = (0..fields.len())
                .map(|j| if j == i { *field } else { "*" })
                .collect();
            parser.parse(&alone.join(" ")).err().map(|e| {
                let why = e.to_string();
                let why = why.strip_prefix("Component error: ").unwrap_or(&why);
                field_error(*kind, field, why, allowed)
            })
        })
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
    // `@` macros are croner's alone (`fields` sees one field and `strict` passes them).
    if let Some(why) = strict(trimmed) {
        return Err(bad(expr, why));
    }
    let parser = CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build();
    let parsed = parser.parse(trimmed).map_err(|e| {
        bad(
            expr,
            diagnose(&parser, trimmed).unwrap_or_else(|| e.to_string()),
        )
    })?;
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
    let empty = [
        ("hour", schedule.hours == 0),
        ("minute", schedule.minutes == 0),
        ("second", schedule.seconds == 0),
        ("month", schedule.months == 0),
    ];
    if let Some((field, _)) = empty.iter().find(|(_, empty)| *empty) {
        return Err(bad(
            expr,
            format!("{field}: matches no value (give at least one value in its range)"),
        ));
    }
    Ok((schedule, p.hours.from_wildcard))
}
