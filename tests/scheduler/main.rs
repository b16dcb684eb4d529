//! The scheduler test binary: recorded APScheduler scenarios replayed in virtual time, and
//! the behaviour of the loop, executors, events and flavours.

mod behaviour;
mod executors;
mod flavours;
mod scenarios;
