//! The scheduler test binary: recorded APScheduler scenarios replayed in virtual time, and
//! the behaviour of the loop, executors, events and flavours, and the handle used from other
//! runtimes.

mod allocs;
mod behaviour;
mod bulk;
#[cfg(feature = "config")]
mod config;
mod context;
mod executors;
mod flavours;
mod handles;
mod ledger;
#[cfg(feature = "metrics")]
mod metrics;
#[cfg(unix)]
mod process_stop;
mod real_time;
mod retries;
mod runtimes;
mod scenarios;
mod spans;
