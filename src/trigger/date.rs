//! The date trigger: fires once.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Trigger;
use crate::error::TriggerError;

/// Fires once, at `run_date`.
///
/// Like APScheduler's `DateTrigger`, it returns `run_date` whenever `prev` is `None` (even
/// when it lies in the past, so that a missed one-shot job is judged by misfire rules) and
/// `None` afterwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Date {
    /// The instant to fire at.
    pub run_date: DateTime<Utc>,
}

impl Date {
    /// A trigger firing once at `run_date`.
    pub fn new(run_date: DateTime<Utc>) -> Self {
        Date { run_date }
    }
}

impl Trigger for Date {
    fn try_next_fire_time(
        &self,
        prev: Option<DateTime<Utc>>,
        _now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, TriggerError> {
        Ok(match prev {
            None => Some(self.run_date),
            Some(_) => None,
        })
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "date[{}]", self.run_date.format("%Y-%m-%d %H:%M:%S UTC"))
    }
}
