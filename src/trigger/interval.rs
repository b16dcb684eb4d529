//! The interval trigger: fires every fixed length of elapsed time.

use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::Trigger;
use crate::error::TriggerError;

/// Fires every `interval` of elapsed time, starting at `start_date`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// Length of the interval, in seconds.
    pub seconds: f64,
    /// The first fire time (the grid origin).
    pub start_date: Option<DateTime<Utc>>,
    /// No fire time after this.
    pub end_date: Option<DateTime<Utc>>,
    /// Zone used to read date strings; elapsed time does not depend on it.
    pub timezone: Option<Tz>,
}

impl Interval {
    /// Fires every `every`, starting one interval from when it is first asked.
    pub fn new(every: std::time::Duration) -> Result<Self, TriggerError> {
        if every.is_zero() {
            return Err(TriggerError::InvalidParam {
                param: "interval".into(),
                reason: "must be longer than zero".into(),
            });
        }
        Ok(Interval {
            seconds: every.as_secs_f64(),
            start_date: None,
            end_date: None,
            timezone: None,
        })
    }

    /// Fill in the zone if none was given.
    pub fn with_default_timezone(mut self, tz: Tz) -> Self {
        self.timezone.get_or_insert(tz);
        self
    }

    fn step(&self) -> TimeDelta {
        TimeDelta::microseconds((self.seconds * 1e6).round() as i64)
    }
}

impl Trigger for Interval {
    fn try_next_fire_time(
        &self,
        prev: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, TriggerError> {
        let step = self.step();
        let next = match prev {
            Some(p) => p + step,
            None => {
                let start = self.start_date.unwrap_or(now + step);
                if start >= now {
                    start
                } else {
                    let behind = (now - start).num_microseconds().unwrap_or(i64::MAX);
                    let k = (behind + step.num_microseconds().unwrap_or(1) - 1)
                        / step.num_microseconds().unwrap_or(1);
                    start + TimeDelta::microseconds(k * step.num_microseconds().unwrap_or(1))
                }
            }
        };
        Ok(match self.end_date {
            Some(end) if next > end => None,
            _ => Some(next),
        })
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "interval[{}s]", self.seconds)
    }
}
