//! [`RetryPolicy`]: how a failed run of a job is tried again, and [`Backoff`], how long it
//! waits first.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How the wait before a retry grows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Backoff {
    /// The same delay before every retry.
    Fixed,
    /// The delay is multiplied by the policy's `factor` after every failed attempt (the
    /// default: 2, so 10 s, 20 s, 40 s, …), up to its `max_delay`.
    #[default]
    Exponential,
}

/// How a failed run is retried: up to `attempts` attempts at the same scheduled time, with a
/// growing, optionally jittered, wait between them.
///
/// A run fails when it returns an error, panics, exits non-zero (commands) or times out. A
/// run that is cancelled, missed or skipped is not retried. Each attempt is a run of its own
/// in the run ledger (same job and scheduled time, `attempt` 2, 3, …, see
/// [`JobContext::attempt`](crate::JobContext::attempt)), and a retry waiting for its time
/// holds its instance slot, so `max_instances` counts it. The waiting retry is a run record
/// in the store: if the scheduler stops, the retry runs after a restart (or on another
/// scheduler sharing the store), under the job's misfire rules measured from the retry's
/// time.
///
/// Stored with the job as `{"attempts": 3, "delay": 10.0, "backoff": "exponential",
/// "factor": 2, "max_delay": 3600.0, "jitter": true}` (seconds).
///
/// ```
/// use std::time::Duration;
/// use apsched::RetryPolicy;
/// // Three attempts in all: the first, then retries after about 10 s and 20 s.
/// let retry = RetryPolicy::exponential(3, Duration::from_secs(10)).jitter(false);
/// assert_eq!(retry.delay_after(1), Duration::from_secs(10));
/// assert_eq!(retry.delay_after(2), Duration::from_secs(20));
/// // A fixed wait, capped.
/// let fixed = RetryPolicy::fixed(5, Duration::from_secs(60));
/// assert_eq!(fixed.delay_after(4), Duration::from_secs(60));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 2: one attempt is no retry).
    #[serde(deserialize_with = "attempts")]
    pub attempts: u32,
    /// The wait before the first retry.
    #[serde(with = "secs")]
    pub delay: Duration,
    /// How the wait grows.
    #[serde(default)]
    pub backoff: Backoff,
    /// The multiplier of [`Backoff::Exponential`] (default 2).
    #[serde(default = "default_factor")]
    pub factor: u32,
    /// The longest wait (default 1 hour).
    #[serde(default = "default_max_delay", with = "secs")]
    pub max_delay: Duration,
    /// Whether each wait is drawn at random between half of it and all of it, so replicas
    /// of a failing service do not retry in lockstep (default `true`).
    #[serde(default = "default_jitter")]
    pub jitter: bool,
}

fn default_factor() -> u32 {
    2
}

fn default_max_delay() -> Duration {
    Duration::from_secs(3600)
}

fn default_jitter() -> bool {
    true
}

impl RetryPolicy {
    /// `attempts` attempts in all, waiting `delay` before the first retry and doubling the
    /// wait after each (up to one hour), with jitter.
    pub fn exponential(attempts: u32, delay: Duration) -> Self {
        RetryPolicy {
            attempts,
            delay,
            backoff: Backoff::Exponential,
            factor: default_factor(),
            max_delay: default_max_delay(),
            jitter: default_jitter(),
        }
    }

    /// `attempts` attempts in all, waiting `delay` before every retry, with jitter.
    pub fn fixed(attempts: u32, delay: Duration) -> Self {
        RetryPolicy {
            backoff: Backoff::Fixed,
            ..RetryPolicy::exponential(attempts, delay)
        }
    }

    /// Sets the multiplier of an exponential backoff.
    #[must_use]
    pub fn factor(mut self, factor: u32) -> Self {
        self.factor = factor;
        self
    }

    /// Sets the longest wait.
    #[must_use]
    pub fn max_delay(mut self, max: Duration) -> Self {
        self.max_delay = max;
        self
    }

    /// Sets whether waits are jittered (drawn between half and all of the computed wait).
    #[must_use]
    pub fn jitter(mut self, jitter: bool) -> Self {
        self.jitter = jitter;
        self
    }

    /// Why this policy cannot be used, if it cannot (checked by `add_job`, `modify_job`
    /// and when a stored job is loaded).
    pub fn check(&self) -> Result<(), String> {
        if self.attempts < 2 {
            return Err(format!(
                "retry attempts must be at least 2 (the first attempt and one retry), not {}",
                self.attempts
            ));
        }
        if self.backoff == Backoff::Exponential && self.factor == 0 {
            return Err("retry factor must be at least 1".into());
        }
        Ok(())
    }

    /// Whether a run that failed at attempt `attempt` (1 for the first) is tried again.
    pub fn retries_after(&self, attempt: u32) -> bool {
        attempt < self.attempts
    }

    /// The wait before the retry that follows failed attempt `attempt` (1 for the first),
    /// before jitter: `delay`, grown by the backoff, at most `max_delay`.
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let grown = match self.backoff {
            Backoff::Fixed => self.delay,
            Backoff::Exponential => {
                let steps = attempt.saturating_sub(1).min(64);
                let factor = f64::from(self.factor.max(1)).powi(steps as i32);
                Duration::try_from_secs_f64(self.delay.as_secs_f64() * factor)
                    .unwrap_or(self.max_delay)
            }
        };
        grown.min(self.max_delay)
    }

    /// [`delay_after`](Self::delay_after) with the jitter applied: a random wait between
    /// half of it and all of it when `jitter` is on.
    pub fn jittered_delay_after(&self, attempt: u32) -> Duration {
        let delay = self.delay_after(attempt);
        if !self.jitter || delay.is_zero() {
            return delay;
        }
        delay.mul_f64(rand::random_range(0.5..=1.0))
    }
}

fn attempts<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    match u32::deserialize(d)? {
        n if n < 2 => Err(serde::de::Error::custom(
            "retry attempts must be at least 2 (the first attempt and one retry)",
        )),
        n => Ok(n),
    }
}

/// Serde helper: a `Duration` as seconds (float).
mod secs {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Duration::try_from_secs_f64(f64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_waits_grow_to_the_cap() {
        let p = RetryPolicy::exponential(10, Duration::from_secs(1))
            .jitter(false)
            .max_delay(Duration::from_secs(5));
        let waits: Vec<u64> = (1..6).map(|a| p.delay_after(a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 5, 5]);
        assert_eq!(p.delay_after(u32::MAX), Duration::from_secs(5));
        assert!(p.retries_after(9) && !p.retries_after(10));
    }

    #[test]
    fn jitter_stays_between_half_and_all() {
        let p = RetryPolicy::fixed(3, Duration::from_secs(10));
        for _ in 0..100 {
            let d = p.jittered_delay_after(1);
            assert!(d >= Duration::from_secs(5) && d <= Duration::from_secs(10));
        }
    }

    #[test]
    fn stored_form_round_trips_and_checks() {
        let p = RetryPolicy::fixed(3, Duration::from_millis(1500)).factor(3);
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<RetryPolicy>(&json).unwrap(), p);
        let short: RetryPolicy = serde_json::from_str(r#"{"attempts": 4, "delay": 2}"#).unwrap();
        assert_eq!(short.backoff, Backoff::Exponential);
        assert!(short.jitter && short.factor == 2);
        let bad = serde_json::from_str::<RetryPolicy>(r#"{"attempts": 1, "delay": 2}"#);
        assert!(bad.unwrap_err().to_string().contains("at least 2"));
        assert!(RetryPolicy::fixed(1, Duration::ZERO).check().is_err());
    }
}
