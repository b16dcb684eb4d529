//! The store contract as a test suite, for stores written outside apsched as well as its
//! own (feature `test-util`).
//!
//! [`contract`] runs every test of the [`JobStore`](super::JobStore) contract, each against a fresh, empty,
//! started store from a factory you give; [`shared_claims`] checks that two stores on one
//! backend (two schedulers) never claim the same run; [`bulk_add_all_or_nothing`] is for
//! stores that promise an all-or-nothing [`JobStore::add_jobs`](super::JobStore::add_jobs). [`TestContext`] starts a
//! store outside a scheduler. The guide's page "Writing your own store"
//! ([`crate::docs::custom_store`]) walks through an example.
//!
//! The tests assert with `assert!`/`panic!`, as tests in a test harness do: call them from
//! `#[tokio::test]` functions. Every job they write names the task `echo` (see [`TASKS`]),
//! so a store that checks tasks must be started with a context that has it.
//!
//! ```
//! # async fn f() {
//! use apsched::store::testing::{self, context};
//! use apsched::store::{JobStore, MemoryStore};
//! use std::time::Duration;
//!
//! testing::contract(
//!     || async {
//!         let store = MemoryStore::new();
//!         store.start(context("default", "s1", Duration::from_secs(30))).await.unwrap();
//!         store
//!     },
//!     None,
//! )
//! .await;
//! # }
//! # tokio::runtime::Runtime::new().unwrap().block_on(f());
//! ```
//!
//! The files are layered: `fixtures.rs` (the suite's "now", tasks and jobs) is a leaf;
//! `context.rs` ([`TestContext`], [`context`]) uses it; `claims.rs` (the claim tests and
//! [`shared_claims`]) uses the fixtures, `suite.rs` ([`contract`] and the other tests) uses
//! the fixtures and the claim tests; this module only re-exports.

mod claims;
mod context;
mod fixtures;
mod ledger;
mod ledger_retries;
mod ledger_shared;
mod suite;

pub use self::claims::shared_claims;
pub use self::context::{context, TestContext};
pub use self::fixtures::{at, date_job, interval_job, t0, TASKS};
pub use self::ledger::ledger_contract;
pub use self::suite::{bulk_add_all_or_nothing, contract, WriteCorrupt};
