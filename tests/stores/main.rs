//! The store test binary: the generic store contract (`suite`) run against every store, plus
//! each store family's own tests. One binary for all stores keeps link time down.
//!
//! Stores whose server is missing skip with a printed reason, unless
//! `APSCHED_REQUIRE_SERVICES=1` (as in CI): then they fail.

mod suite;

mod memory;

#[cfg(any(feature = "redis", feature = "mongodb", feature = "zookeeper"))]
mod nosql;

#[cfg(feature = "redis")]
mod redis;

#[cfg(any(feature = "redis", feature = "mongodb"))]
mod multiprocess;
