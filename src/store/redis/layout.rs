//! How jobs sit in Redis: the keys under the prefix, and leases, versions and next run
//! times as stored values and sorted-set scores.

use chrono::{DateTime, Utc};

use crate::job::Lease;
use crate::store::common::{from_micros_saturating, micros_ceil};

/// The keys of one prefix (see the data layout of [`RedisStore`](super::RedisStore)).
pub(super) struct Keys {
    pub(super) jobs: String,
    pub(super) versions: String,
    pub(super) leases: String,
    pub(super) run_times: String,
    pub(super) channel: String,
    pub(super) version_seq: String,
}

impl Keys {
    /// The keys under `p`.
    pub(super) fn new(p: &str) -> Self {
        Keys {
            jobs: format!("{p}:jobs"),
            versions: format!("{p}:versions"),
            leases: format!("{p}:leases"),
            run_times: format!("{p}:run_times"),
            channel: format!("{p}:wakeup"),
            version_seq: format!("{p}:version_seq"),
        }
    }
}

pub(super) fn parse_lease(v: Option<String>) -> Option<Lease> {
    let v = v?;
    let (until, owner) = v.split_once(' ')?;
    Some(Lease {
        owner: owner.to_string(),
        until: from_micros_saturating(until.parse().ok()?),
    })
}

pub(super) fn parse_version(v: Option<String>) -> u64 {
    v.and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Redis keeps sorted-set scores as doubles, exact for whole µs only up to 2^53 µs (about
/// year 2255). The score of a time is its µs rounded *up* to a double, so a score never says a
/// job is due before its document does; the document keeps the exact time, the score is
/// only an index.
pub(super) fn score_of(us: i64) -> f64 {
    let f = us as f64;
    // `as` rounds to nearest; step up when that went below.
    if (f as i64) < us {
        f.next_up()
    } else {
        f
    }
}

/// Scores at or above this are not exact µs (see [`score_of`]).
pub(super) const EXACT_SCORES: f64 = (1u64 << 53) as f64;

/// The score argument for a next run time (`''` = paused). Rust prints a double in full
/// decimal digits, which Redis parses back to the same double.
pub(super) fn score(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(String::new, |t| score_of(micros_ceil(t)).to_string())
}

/// The time a score stands for (rounded up to whole µs for scores beyond [`EXACT_SCORES`]).
pub(super) fn from_score(s: f64) -> DateTime<Utc> {
    from_micros_saturating(s as i64)
}

/// `url` with `localhost` as its host when it names none (`redis://`, `redis:///1`,
/// `redis://:password@`), as redis-cli and redis-py do; the driver would refuse it.
pub(super) fn with_default_host(url: &str) -> std::borrow::Cow<'_, str> {
    let Some((scheme @ ("redis" | "rediss"), rest)) = url.split_once("://") else {
        // Not a TCP URL (`redis+unix://` has no host).
        return url.into();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.is_empty() || authority.ends_with('@') {
        format!("{scheme}://{authority}localhost{tail}").into()
    } else {
        url.into()
    }
}
