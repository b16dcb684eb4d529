//! The compiled wall-clock schedule and its search: the first wall-clock time `>=` a given one
//! that matches every field. Zones and DST are handled one level up (`cron/mod.rs`).
//!
//! The search jumps by field (year → month → day mask → time of day) and never scans day by
//! day. It is bounded: years stop at 9999, and a year of the 400-year Gregorian cycle found
//! empty is never examined again, so an unsatisfiable combination (`week=1, month=6`) ends
//! after at most 400 year evaluations.

use chrono::{Datelike, NaiveDate, NaiveDateTime, NaiveTime, Timelike};

use super::expr::Expr;
use crate::trigger::tz::{days_in_month, weekday0};

/// Highest year searched (APScheduler's maximum).
pub(crate) const MAX_YEAR: i32 = 9999;

/// How days are matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DayRule {
    /// APScheduler field form: day AND week AND day_of_week.
    Fields {
        /// `None` = every day.
        dom: Option<Vec<Expr>>,
        /// ISO weeks (bits 1..=53); `None` = every week.
        weeks: Option<u64>,
        /// Weekdays (bit 0 = Monday); `None` = every weekday.
        dows: Option<u8>,
    },
    /// Crontab: day-of-month OR day-of-week when both are restricted.
    Crontab(CrontabDays),
}

/// Crontab day matching (translated from croner's parse).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct CrontabDays {
    /// Plain days of month (bits 1..=31).
    pub dom: u64,
    /// `L`: last day of month.
    pub dom_last: bool,
    /// `LW`: last weekday (Mon-Fri) of month.
    pub dom_last_weekday: bool,
    /// `nW`: the weekday nearest to day n (bits 1..=31).
    pub dom_nearest: u64,
    /// Plain weekdays (bit 0 = Monday).
    pub dow: u8,
    /// `d#n`: weekdays per occurrence (index 0 = first).
    pub dow_nth: [u8; 5],
    /// `dL`: last occurrence of the weekday in the month.
    pub dow_last: u8,
    /// The day-of-month field was `*` (or `?`).
    pub star_dom: bool,
    /// The day-of-week field was `*` (or `?`).
    pub star_dow: bool,
}

/// A compiled cron schedule in wall-clock time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Schedule {
    /// `None` = every year.
    pub years: Option<Vec<Expr>>,
    /// Bits 1..=12.
    pub months: u16,
    pub days: DayRule,
    /// Bits 0..=23.
    pub hours: u32,
    /// Bits 0..=59.
    pub minutes: u64,
    /// Bits 0..=59.
    pub seconds: u64,
    /// Found unsatisfiable when compiled (e.g. `day=31, month=feb`, `week=1, month=6`).
    pub never: bool,
}

/// Lowest set bit `>= from`.
#[inline]
fn next_bit(mask: u64, from: u32) -> Option<u32> {
    if from >= 64 {
        return None;
    }
    let m = mask & (!0u64 << from);
    (m != 0).then(|| m.trailing_zeros())
}

/// Bits `1..=dim` for days whose weekday (0 = Monday) is in `dows`.
fn weekday_mask(dows: u8, dim: u32, wd1: u32) -> u64 {
    let mut m = 0u64;
    for k in 0..7u32 {
        if dows & (1 << ((wd1 + k) % 7)) != 0 {
            let mut d = 1 + k;
            while d <= dim {
                m |= 1 << d;
                d += 7;
            }
        }
    }
    m
}

impl Schedule {
    fn next_year(&self, y: i32) -> Option<i32> {
        let next = match &self.years {
            None => Some(y),
            Some(exprs) => exprs.iter().filter_map(|e| e.next_year(y)).min(),
        };
        next.filter(|&n| n <= MAX_YEAR)
    }

    /// The matching days of a month, as bits `1..=dim`.
    pub(crate) fn day_mask(&self, year: i32, month: u32) -> u64 {
        let dim = days_in_month(year, month);
        let all = ((1u64 << (dim + 1)) - 1) & !1;
        let Some(first) = NaiveDate::from_ymd_opt(year, month, 1) else {
            return 0;
        };
        let wd1 = weekday0(first);
        match &self.days {
            DayRule::Fields { dom, weeks, dows } => {
                let mut mask = match dom {
                    None => all,
                    Some(exprs) => exprs.iter().fold(0, |m, e| m | e.day_mask(dim, wd1)) & all,
                };
                if let (Some(d), true) = (dows, mask != 0) {
                    mask &= weekday_mask(*d, dim, wd1);
                }
                if let (Some(w), true) = (weeks, mask != 0) {
                    mask &= week_mask(*w, first, dim, wd1);
                }
                mask
            }
            DayRule::Crontab(c) => crontab_mask(c, dim, wd1, all),
        }
    }

    /// First `(h, m, s) >= from` allowed by the time fields.
    #[inline]
    fn next_time(&self, h0: u32, m0: u32, s0: u32) -> Option<(u32, u32, u32)> {
        let mut h = next_bit(u64::from(self.hours), h0)?;
        let (mut mfrom, mut sfrom) = if h == h0 { (m0, s0) } else { (0, 0) };
        loop {
            if let Some(m) = next_bit(self.minutes, mfrom) {
                let sf = if m == mfrom { sfrom } else { 0 };
                if let Some(s) = next_bit(self.seconds, sf) {
                    return Some((h, m, s));
                }
                if let Some(m2) = next_bit(self.minutes, m + 1) {
                    let s = next_bit(self.seconds, 0)?;
                    return Some((h, m2, s));
                }
            }
            h = next_bit(u64::from(self.hours), h + 1)?;
            mfrom = 0;
            sfrom = 0;
        }
    }

    /// The first wall time `>= from` matching every field, or `None` (none up to year 9999).
    pub(crate) fn next_match(&self, from: NaiveDateTime) -> Option<NaiveDateTime> {
        if self.never {
            return None;
        }
        let mut y = from.year();
        let (mut mo, mut d) = (from.month(), from.day());
        let (mut h0, mut m0, mut s0) = (from.hour(), from.minute(), from.second());
        if from.nanosecond() > 0 {
            // Callers pass whole seconds; be safe anyway.
            s0 += 1;
        }
        let mut empty = [0u64; 7]; // 400 bits: year residues mod 400 found empty
        let mut empty_count = 0u32;
        loop {
            let ny = self.next_year(y)?;
            if ny != y {
                y = ny;
                (mo, d, h0, m0, s0) = (1, 1, 0, 0, 0);
            }
            let full = mo == 1 && d == 1 && h0 == 0 && m0 == 0 && s0 == 0;
            let r = y.rem_euclid(400) as usize;
            if full && empty[r / 64] & (1 << (r % 64)) != 0 {
                y = y.checked_add(1)?;
                continue;
            }
            let mut month = mo;
            while let Some(m) = next_bit(u64::from(self.months), month) {
                if m > 12 {
                    break;
                }
                let start_day = if m == mo { d } else { 1 };
                let mut mask = self.day_mask(y, m) & (!0u64 << start_day);
                while mask != 0 {
                    let day = mask.trailing_zeros();
                    let t = if m == mo && day == d {
                        self.next_time(h0, m0, s0)
                    } else {
                        self.next_time(0, 0, 0)
                    };
                    if let Some((hh, mm, ss)) = t {
                        let date = NaiveDate::from_ymd_opt(y, m, day)?;
                        return Some(date.and_time(NaiveTime::from_hms_opt(hh, mm, ss)?));
                    }
                    mask &= mask - 1;
                }
                month = m + 1;
            }
            if full {
                empty[r / 64] |= 1 << (r % 64);
                empty_count += 1;
                if empty_count >= 400 {
                    return None;
                }
            }
            y = y.checked_add(1)?;
            (mo, d, h0, m0, s0) = (1, 1, 0, 0, 0);
        }
    }
}

/// Whether the field-form month/day/week combination can ever match (a quick, conservative
/// check made once when compiling; `false` means it never can).
pub(crate) fn may_match(months: u16, dom: Option<&[Expr]>, weeks: Option<u64>) -> bool {
    const MAX_DAYS: [u32; 13] = [0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if let Some(exprs) = dom {
        let plain_min = exprs.iter().try_fold(u32::MAX, |m, e| match e {
            Expr::Range { first, .. } => Some(m.min(*first)),
            _ => None,
        });
        if let Some(min_day) = plain_min {
            let ok =
                (1..=12u32).any(|mo| months & (1 << mo) != 0 && MAX_DAYS[mo as usize] >= min_day);
            if !ok {
                return false;
            }
        }
    }
    if let Some(w) = weeks {
        // ISO week `wk` covers days of year 7wk-9 ..= 7wk+3 (Monday..Sunday around its
        // Thursday); widen by a day for leap years.
        const CUM: [i32; 12] = [31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334, 365];
        let month_of = |doy: i32| -> u32 {
            if doy < 1 {
                12
            } else if doy > 365 {
                1
            } else {
                CUM.iter()
                    .position(|&c| doy <= c)
                    .map_or(12, |i| i as u32 + 1)
            }
        };
        let mut reachable = 0u16;
        for wk in 1..=53i32 {
            if w & (1 << wk) != 0 {
                for doy in (7 * wk - 10)..=(7 * wk + 4) {
                    reachable |= 1 << month_of(doy);
                }
            }
        }
        if reachable & months == 0 {
            return false;
        }
    }
    true
}

/// Bits `1..=dim` for days whose ISO week is in `weeks`.
fn week_mask(weeks: u64, first: NaiveDate, dim: u32, wd1: u32) -> u64 {
    let mut m = 0u64;
    let mut start = 1u32;
    let mut date = first;
    while start <= dim {
        let end = (start + 6 - if start == 1 { wd1 } else { 0 }).min(dim);
        let wk = date.iso_week().week();
        if weeks & (1 << wk) != 0 {
            for dd in start..=end {
                m |= 1 << dd;
            }
        }
        let next = end + 1;
        match date.checked_add_days(chrono::Days::new(u64::from(next - start))) {
            Some(nd) => date = nd,
            None => break,
        }
        start = next;
    }
    m
}

fn crontab_mask(c: &CrontabDays, dim: u32, wd1: u32, all: u64) -> u64 {
    let wd_of = |day: u32| (wd1 + day - 1) % 7;
    let mut dom = c.dom & all;
    if c.dom_last_weekday {
        let last = match wd_of(dim) {
            5 => dim - 1,
            6 => dim - 2,
            _ => dim,
        };
        dom |= 1 << last;
    } else if c.dom_last {
        dom |= 1 << dim;
    }
    let mut near = c.dom_nearest & all;
    while near != 0 {
        let p = near.trailing_zeros();
        near &= near - 1;
        let target = match wd_of(p) {
            5 if p > 1 => p - 1,
            5 => p + 2,
            6 if p < dim => p + 1,
            6 => p - 2,
            _ => p,
        };
        dom |= 1 << target;
    }
    let mut dow = weekday_mask(c.dow, dim, wd1);
    for (n, wds) in c.dow_nth.iter().enumerate() {
        for w in 0..7u32 {
            if wds & (1 << w) != 0 {
                let first_hit = (w + 7 - wd1) % 7 + 1;
                let day = first_hit + 7 * n as u32;
                if day <= dim {
                    dow |= 1 << day;
                }
            }
        }
    }
    for w in 0..7u32 {
        if c.dow_last & (1 << w) != 0 {
            let first_hit = (w + 7 - wd1) % 7 + 1;
            dow |= 1 << (first_hit + ((dim - first_hit) / 7) * 7);
        }
    }
    match (c.star_dom, c.star_dow) {
        (true, true) => all,
        (false, true) => dom,
        (true, false) => dow,
        (false, false) => dom | dow,
    }
}
