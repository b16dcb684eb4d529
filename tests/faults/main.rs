//! The fault suite (issue 9): what a slow or dead store, a panic, an odd call or a clock jump
//! does to the scheduler. Each test is named after the item it proves (`itemN_...`) and runs
//! in virtual time (Tokio's paused clock with a `TestClock`) unless it needs real threads or
//! child processes.

mod calls;
mod executors;
mod loop_;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use apsched::clock::{Clock, TestClock};
use apsched::event::TryRecvError;
use apsched::trigger::Interval;
use apsched::{Event, EventReceiver, Scheduler};
use chrono::{DateTime, TimeZone, Utc};

pub fn start_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 15, 10, 0, 0).unwrap()
}

pub fn every(secs: u64) -> Interval {
    Interval::new(Duration::from_secs(secs)).unwrap()
}

/// Every event buffered in `rx` now.
pub fn drain(rx: &mut EventReceiver) -> Vec<Event> {
    let mut out = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(ev) => out.push(ev),
            Err(TryRecvError::Empty) => return out,
            Err(e) => panic!("{e}"),
        }
    }
}

/// Adds a job that records the clock reading at each start; returns the record.
pub async fn recording_job(
    s: &Scheduler,
    clock: &TestClock,
    id: &str,
    trigger: Interval,
) -> Arc<Mutex<Vec<DateTime<Utc>>>> {
    let starts = Arc::new(Mutex::new(Vec::new()));
    let (c, st) = (clock.clone(), starts.clone());
    s.add_job(move || {
        let (c, st) = (c.clone(), st.clone());
        async move { st.lock().unwrap().push(c.now()) }
    })
    .trigger(trigger)
    .id(id)
    .await
    .unwrap();
    starts
}
