//! Parsing field expressions (APScheduler's syntax, strictly) and compiling them to sets.
//!
//! Each comma-separated part is one of: `*`, `*/n`, `a`, `a-b`, `a-b/n`, `a/n` (`a`, `b`
//! numbers, or names for `month` and `day_of_week`), and for `day` also `last`, `xth y`
//! (`1st`..`5th` + weekday) and `last y`.

use super::field::FieldKind;
use crate::error::TriggerError;

pub(crate) const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
pub(crate) const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const NTHS: [&str; 6] = ["1st", "2nd", "3rd", "4th", "5th", "last"];

/// One compiled part of a field expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expr {
    /// `first..=last` stepping by `step` from `first` (for `day`, `last` is clipped to the
    /// month's length).
    Range { first: u32, last: u32, step: u32 },
    /// `last`: the month's last day.
    LastDay,
    /// `xth y` (`nth` 0..=4) or `last y` (`nth` 5); `weekday` 0 = Monday.
    Nth { nth: u8, weekday: u32 },
}

impl Expr {
    /// The values of a fixed-range field (not `day`, not `year`) as a bit mask.
    fn mask(self) -> u64 {
        match self {
            Expr::Range { first, last, step } => step_mask(first, last, step),
            _ => 0,
        }
    }

    /// The first year `>= y` this part allows.
    pub(crate) fn next_year(self, y: i32) -> Option<i32> {
        let Expr::Range { first, last, step } = self else {
            return None;
        };
        let (first, last, step) = (first as i32, last as i32, step as i32);
        if y > last {
            return None;
        }
        if y <= first {
            return Some(first);
        }
        let k = (y - first + step - 1) / step;
        let v = first + k * step;
        (v <= last).then_some(v)
    }

    /// The days of the month this part allows, as a mask over bits `1..=dim`; `wd1` is the
    /// weekday (0 = Monday) of the 1st.
    pub(crate) fn day_mask(self, dim: u32, wd1: u32) -> u64 {
        match self {
            Expr::Range { first, last, step } => step_mask(first, last.min(dim), step),
            Expr::LastDay => 1 << dim,
            Expr::Nth { nth, weekday } => {
                let mut first_hit = weekday as i32 - wd1 as i32 + 1;
                if first_hit <= 0 {
                    first_hit += 7;
                }
                let first_hit = first_hit as u32;
                let target = if nth < 5 {
                    first_hit + u32::from(nth) * 7
                } else {
                    first_hit + ((dim - first_hit) / 7) * 7
                };
                if target <= dim {
                    1 << target
                } else {
                    0
                }
            }
        }
    }
}

/// APScheduler's step rule, for the field form and crontab strings alike: a step larger than
/// the range it steps over matches only the range's first value (`*/60` minutes = `0`), so it
/// is a typo, not a schedule. Returns the reason (`a step (60) higher than ...`).
pub(crate) fn step_beyond_range(step: u32, range: u32) -> Option<String> {
    (step > range).then(|| format!("a step ({step}) higher than the range it steps over ({range})"))
}

/// Bits `first, first+step, ... <= last`.
pub(crate) fn step_mask(first: u32, last: u32, step: u32) -> u64 {
    let mut m = 0u64;
    if step == 0 || last > 63 {
        return m;
    }
    let mut v = first;
    while v <= last {
        m |= 1 << v;
        v += step;
    }
    m
}

/// A parsed field: its parts, and whether it was exactly `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParsedField {
    pub exprs: Vec<Expr>,
    pub is_star: bool,
}

impl ParsedField {
    /// Union of the parts as a mask (fixed-range fields).
    pub(crate) fn mask(&self) -> u64 {
        self.exprs.iter().fold(0, |m, e| m | e.mask())
    }
}

fn err(field: FieldKind, expr: &str, reason: impl Into<String>) -> TriggerError {
    TriggerError::InvalidField {
        field: field.name().into(),
        expr: expr.into(),
        reason: reason.into(),
    }
}

fn expected(field: FieldKind) -> &'static str {
    match field {
        FieldKind::Day => {
            "is not a valid day expression (expected *, */n, a, a-b, a-b/n, a/n, last, \
             or 1st..5th/last followed by a weekday)"
        }
        FieldKind::Month => {
            "is not a valid month expression (expected *, */n, a, a-b, a-b/n or a/n with \
             numbers 1-12 or jan-dec)"
        }
        FieldKind::DayOfWeek => {
            "is not a valid weekday expression (expected *, */n, a, a-b, a-b/n or a/n with \
             numbers 0-6 or mon-sun)"
        }
        FieldKind::Year => {
            "is not a valid year expression (expected *, */n, a, a-b, a-b/n or a/n with \
             numbers 1970-9999)"
        }
        FieldKind::Week => {
            "is not a valid week expression (expected *, */n, a, a-b, a-b/n or a/n with \
             numbers 1-53)"
        }
        FieldKind::Hour => {
            "is not a valid hour expression (expected *, */n, a, a-b, a-b/n or a/n with \
             numbers 0-23)"
        }
        FieldKind::Minute | FieldKind::Second => {
            "is not a valid expression (expected *, */n, a, a-b, a-b/n or a/n with numbers \
             0-59)"
        }
    }
}

/// Parses a whole field expression (comma-separated parts).
pub(crate) fn parse_field(field: FieldKind, text: &str) -> Result<ParsedField, TriggerError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(err(field, text, "is empty"));
    }
    let mut exprs = Vec::new();
    for part in trimmed.split(',') {
        exprs.push(parse_part(field, part.trim())?);
    }
    Ok(ParsedField {
        exprs,
        is_star: trimmed == "*",
    })
}

fn parse_part(field: FieldKind, part: &str) -> Result<Expr, TriggerError> {
    if part.is_empty() {
        return Err(err(field, part, "is empty (a stray comma?)"));
    }
    let lower = part.to_ascii_lowercase();
    if field == FieldKind::Day {
        if lower == "last" {
            return Ok(Expr::LastDay);
        }
        if let Some((nth, rest)) = lower.split_once(' ') {
            let nth_i = NTHS.iter().position(|n| *n == nth);
            let wd = WEEKDAYS.iter().position(|w| *w == rest.trim_start());
            return match (nth_i, wd) {
                (Some(n), Some(w)) => Ok(Expr::Nth {
                    nth: n as u8,
                    weekday: w as u32,
                }),
                _ => Err(err(field, part, expected(field))),
            };
        }
    }
    let (body, step) = match lower.split_once('/') {
        Some((b, s)) => {
            let step = parse_num(s).ok_or_else(|| err(field, part, expected(field)))?;
            if step == 0 {
                return Err(err(
                    field,
                    part,
                    "has a step of 0 (the step must be at least 1)",
                ));
            }
            (b, Some(step))
        }
        None => (lower.as_str(), None),
    };
    let (min, max) = (field.min(), field.max());
    if body == "*" {
        let step = step.unwrap_or(1);
        if let Some(why) = step_beyond_range(step, max - min) {
            return Err(err(field, part, format!("has {why}")));
        }
        return Ok(Expr::Range {
            first: min,
            last: max,
            step,
        });
    }
    let (a, b) = match body.split_once('-') {
        Some((a, b)) => (a, Some(b)),
        None => (body, None),
    };
    let first = parse_value(field, a, part)?;
    let last = match b {
        Some(b) => {
            let v = parse_value(field, b, part)?;
            if v.1 != first.1 {
                return Err(err(field, part, "mixes a number and a name in one range (write both ends as numbers or both as names)"));
            }
            Some(v.0)
        }
        None => None,
    };
    let first = first.0;
    if first < min {
        return Err(err(
            field,
            part,
            format!("is out of range: {first} is below the minimum {min} (allowed: {min}-{max})"),
        ));
    }
    if let Some(l) = last {
        if l > max {
            return Err(err(
                field,
                part,
                format!("is out of range: {l} is above the maximum {max} (allowed: {min}-{max})"),
            ));
        }
        if first > l {
            return Err(err(
                field,
                part,
                format!(
                    "is an inverted range: {first} is higher than {l} (write the lower value \
                     first, or split a range that wraps around in two: {first}-{max},{min}-{l})"
                ),
            ));
        }
    }
    if first > max {
        return Err(err(
            field,
            part,
            format!("is out of range: {first} is above the maximum {max} (allowed: {min}-{max})"),
        ));
    }
    let last_v = match (last, step) {
        (Some(l), _) => l,
        (None, Some(_)) => max,
        (None, None) => first,
    };
    if let Some(why) = step.and_then(|s| step_beyond_range(s, last_v - first)) {
        return Err(err(field, part, format!("has {why}")));
    }
    Ok(Expr::Range {
        first,
        last: last_v,
        step: step.unwrap_or(1),
    })
}

/// A number or (for month / day_of_week) a name; the flag says it was a name.
fn parse_value(field: FieldKind, s: &str, part: &str) -> Result<(u32, bool), TriggerError> {
    if let Some(n) = parse_num(s) {
        return Ok((n, false));
    }
    if !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()) {
        return Err(err(
            field,
            part,
            format!(
                "is out of range: {s} is above the maximum {} (allowed: {}-{})",
                field.max(),
                field.min(),
                field.max()
            ),
        ));
    }
    match field {
        FieldKind::DayOfWeek => match WEEKDAYS.iter().position(|w| *w == s) {
            Some(i) => Ok((i as u32, true)),
            None if s.bytes().all(|c| c.is_ascii_alphabetic()) && !s.is_empty() => Err(err(
                field,
                part,
                "is not a weekday (mon, tue, wed, thu, fri, sat, sun)",
            )),
            None => Err(err(field, part, expected(field))),
        },
        FieldKind::Month => match MONTHS.iter().position(|m| *m == s) {
            Some(i) => Ok((i as u32 + 1, true)),
            None if s.bytes().all(|c| c.is_ascii_alphabetic()) && !s.is_empty() => {
                Err(err(field, part, "is not a month (jan ... dec)"))
            }
            None => Err(err(field, part, expected(field))),
        },
        _ => Err(err(field, part, expected(field))),
    }
}

/// Plain decimal digits (at most 9, so no overflow).
fn parse_num(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 9 || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}
