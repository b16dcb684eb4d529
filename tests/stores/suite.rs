//! The store contract now lives in the library (`apsched::store::testing`, feature
//! `test-util`), where stores written elsewhere can run it too; this module re-exports it
//! for the store modules and adds what only this repository's tests need (skipping or
//! failing when a service is missing, unique names).

#![allow(dead_code)] // each store module uses the part of the suite that applies to it

pub use apsched::store::testing::*;

/// Whether a test needing `service` may run. Without the service it skips with a printed
/// reason, or, under `APSCHED_REQUIRE_SERVICES=1` (CI), fails.
pub fn service_available(service: &str, available: Result<(), String>) -> bool {
    match available {
        Ok(()) => true,
        Err(reason) => {
            if std::env::var("APSCHED_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
                panic!(
                    "{service} is required (APSCHED_REQUIRE_SERVICES=1) but unavailable: {reason}"
                );
            }
            eprintln!("skipping: {service} unavailable: {reason}");
            false
        }
    }
}

/// The runs of `job` in `store` (a first page, newest first) as (scheduled time, state):
/// what the retention and outcome tests compare.
pub async fn runs_by_time(
    store: &impl apsched::store::JobStore,
    job: &str,
) -> Vec<(chrono::DateTime<chrono::Utc>, apsched::ledger::RunState)> {
    store
        .query_runs(&apsched::ledger::RunFilter::new().job(job))
        .await
        .expect("query_runs")
        .iter()
        .map(|r| (r.scheduled, r.state))
        .collect()
}

/// A unique suffix for table names, key prefixes and databases, so runs never collide.
pub fn unique_suffix() -> String {
    format!("{}_{:08x}", std::process::id(), rand_u32())
}

fn rand_u32() -> u32 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u32
}
