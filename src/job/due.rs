//! The due-run rule: which fire times of a job are due now, and its next run time.
//!
//! Every store applies it when it claims a due job, through
//! [`DueJob::claim`](crate::store::DueJob::claim), so all stores agree on it.

use chrono::{DateTime, Utc};

use crate::error::TriggerError;
use crate::job::outcome::panic_text;
use crate::job::record::JobRecord;
use crate::trigger::Trigger;

/// The outcome of [`advance`]: the runs now due and the job's new next run time.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Advance {
    /// The fire times `<= now` listed in this pass, in order (before coalescing). See
    /// [`advance`] for how a long backlog is cut.
    pub run_times: Vec<DateTime<Utc>>,
    /// The job's next run time: the trigger's next fire time after the last run time
    /// (`None` = exhausted), or, when a backlog is handed over in parts, the next due time
    /// still `<= now`.
    pub next_run_time: Option<DateTime<Utc>>,
    /// Set when the trigger gave up; the job is then paused, not removed.
    pub trigger_error: Option<TriggerError>,
    /// The oldest of the due times skipped without being listed (a long backlog of a job that
    /// does not coalesce, beyond its grace time): they were missed.
    pub skipped_from: Option<DateTime<Utc>>,
}

/// At most this many run times are listed for one job in one pass. A longer backlog that
/// must run in full (no coalescing, no grace limit, or a trigger that can only be walked) is
/// handed over in parts, one per pass: the job stays due until it is caught up.
pub(crate) const MAX_BACKLOG: usize = 10_000;

/// A backlog longer than this many due times is not walked time by time when the trigger
/// can skip ahead (interval, cron): only the times that can still matter are computed.
///
/// So claiming a due job ([`DueJob::claim`](crate::store::DueJob::claim)) is bounded work,
/// whatever the backlog (an every-second job resumed after a month is 2.6 M due times):
/// after this many times, a coalescing job needs only its latest due time, and a job that
/// does not coalesce only the times within its grace time (the older ones are missed, and
/// summarised in [`DueJob::skipped_from`](crate::store::DueJob::skipped_from)). A trigger
/// that cannot skip ahead is walked at most 10 000 times per claim; the job then stays due
/// until it is caught up (a coalescing job still runs once).
pub const WALK_BEFORE_SKIP: usize = 1_000;

/// The due-run rule (APScheduler 3's `_get_run_times` + next-time computation).
///
/// Lists every fire time from `job.next_run_time` up to `now`, then computes the next fire
/// time from the last of them. Sets `job.next_run_time` to it (or to `None` when the
/// trigger is exhausted or gave up). Stores call this while claiming a due job so that
/// claiming and advancing are one atomic step.
///
/// The work is bounded, whatever the backlog (an every-second job resumed after a month is
/// 2.6 M due times). After [`WALK_BEFORE_SKIP`] times, interval and cron triggers skip
/// ahead: a coalescing job needs only its latest due time (found by searching back from
/// `now` in doubling windows), and a job that does not coalesce needs only the times within
/// its grace time (the older ones would be missed; they are summarised in
/// [`Advance::skipped_from`]). Otherwise at most [`MAX_BACKLOG`] times are listed per pass
/// and the job stays due for the next pass (a coalescing job submits nothing until it is
/// caught up, so it still runs once).
pub(crate) fn advance(job: &mut JobRecord, now: DateTime<Utc>) -> Advance {
    let mut run_times = Vec::new();
    let mut trigger_error = None;
    let mut skipped_from = None;
    let mut tried_skip = false;
    let mut next = job.next_run_time;
    while let Some(t) = next {
        if t > now {
            break;
        }
        if run_times.len() == WALK_BEFORE_SKIP && !tried_skip {
            tried_skip = true;
            match skip_ahead(job, t, now) {
                None => {}
                Some(Ok(to)) => {
                    if !job.coalesce && to != Some(t) {
                        skipped_from = Some(t);
                    }
                    next = to;
                    continue;
                }
                Some(Err(e)) => {
                    trigger_error = Some(e);
                    next = None;
                    break;
                }
            }
        }
        if run_times.len() == MAX_BACKLOG {
            // Hand the rest over in the next pass. A coalescing job submits once, when it
            // is caught up.
            if job.coalesce {
                run_times.clear();
            }
            break;
        }
        run_times.push(t);
        next = match guarded(|| job.trigger.try_next_fire_time(Some(t), now)) {
            Ok(Some(n)) if n <= t => {
                // A trigger must move forward; pausing the job beats looping forever.
                trigger_error = Some(TriggerError::GaveUp(format!(
                    "the trigger returned {n}, not after its previous fire time {t}"
                )));
                None
            }
            Ok(n) => n,
            Err(e) => {
                trigger_error = Some(e);
                None
            }
        };
    }
    // `next` is now the first fire time after `now` (or None): what APScheduler computes as
    // `trigger.get_next_fire_time(run_times[-1], now)`.
    job.next_run_time = next;
    Advance {
        run_times,
        next_run_time: next,
        trigger_error,
        skipped_from,
    }
}

/// Where a long backlog starting at the due time `t` can jump to: `None` when it must be
/// walked (the trigger cannot skip, or every due time must run).
fn skip_ahead(
    job: &JobRecord,
    t: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Option<Result<Option<DateTime<Utc>>, TriggerError>> {
    if job.coalesce {
        // The latest due time is all that runs: search windows ending at `now`, doubling,
        // until one holds a fire time.
        let mut window = chrono::TimeDelta::seconds(1);
        loop {
            let from = now.checked_sub_signed(window)?;
            if from <= t {
                return None;
            }
            match guarded(|| job.trigger.first_fire_at_or_after(t, from).transpose()).transpose()? {
                Ok(Some(c)) if c <= now => return Some(Ok(Some(c))),
                Ok(_) => window = window.checked_mul(2)?,
                Err(e) => return Some(Err(e)),
            }
        }
    }
    // Only the times within the grace time can still run.
    let grace = chrono::TimeDelta::from_std(job.misfire_grace_time?).ok()?;
    let from = now.checked_sub_signed(grace)?;
    if from <= t {
        return None;
    }
    guarded(|| job.trigger.first_fire_at_or_after(t, from).transpose()).transpose()
}

/// Evaluates a trigger, turning a panic into [`TriggerError::GaveUp`]: a claim runs inside
/// a store's lock or transaction, where a panic would lose the job or take the store down.
fn guarded<T>(
    eval: impl FnOnce() -> Result<Option<T>, TriggerError>,
) -> Result<Option<T>, TriggerError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(eval)).unwrap_or_else(|payload| {
        Err(TriggerError::GaveUp(format!(
            "the trigger panicked: {}",
            panic_text(payload)
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::guarded;
    use crate::error::TriggerError;

    /// A trigger that panics while a job is claimed gives up instead of unwinding through
    /// the store's lock or transaction.
    #[test]
    fn a_panicking_trigger_gives_up() {
        let r: Result<Option<()>, TriggerError> = guarded(|| panic!("bad trigger"));
        match r {
            Err(TriggerError::GaveUp(m)) => assert!(m.contains("bad trigger"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
