//! The next fire instant of a [`Cron`]: the compiled wall-clock schedule searched across the
//! zone's offset changes, with the DST rules (a wall time in a gap moves forward by the gap;
//! one in an overlap fires once, at its first occurrence, unless the hour field is `*`).

use chrono::NaiveDateTime;
use chrono_tz::Tz;

use super::Cron;
use crate::trigger::tz;

/// How far around an instant to look for a zone transition (longer than any DST gap).
const WINDOW_SECS: i64 = 25 * 3600;

/// More than any change of UTC offset (Samoa's 24 hours): a wall time read with the offset
/// of a stretch at least this far from the stretch's ends can have no other reading.
const UNIQUE_MARGIN_SECS: i64 = 2 * 86_400;

impl Cron {
    /// The first fire instant `>= s` (a whole second), without bounds or jitter.
    pub(super) fn next_instant(&self, s: NaiveDateTime) -> Option<NaiveDateTime> {
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
