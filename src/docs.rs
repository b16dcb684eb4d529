//! The guide: the pages of the repository's `docs/` folder, one module each, so that
//! rustdoc (and docs.rs) renders them next to the API they describe.
//!
//! - [`scheduling`]: the scheduler, jobs, options and the loop's rules
//! - [`triggers`]: every trigger, DST rules, differences from APScheduler
//! - [`executors`]: where runs happen
//! - [`events`]: what the scheduler tells you
//! - [`stores`]: choosing a store, sharing and failover, outages
//! - [`ledger`]: what ran: the run ledger, its guarantees, run now, backfill, overlap
//!   policies, and each store's schema
//! - [`custom_store`]: writing your own store, the store contract and its test suite
//! - [`embedding`]: axum, actix-web, `#[tokio::main]` and plain `fn main` programs
//! - [`conformance`]: the trigger conformance probe against APScheduler
//! - [`config`]: the whole scheduler from a TOML file and environment variables (`config`
//!   feature)
//!
//! The pages link to each other with reference-style links (`[text][label]`) whose labels
//! each page defines at its end as relative `.md` paths, for GitHub. Each module below defines
//! the same labels first, as intra-doc links to the sibling modules; in Markdown the first
//! definition of a label wins, so the links work in both places.
//!
//! Their code blocks are fragments (they assume a `scheduler` in scope), so they are not
//! compiled as doctests (the module is left out under `cfg(doctest)`); the examples, the
//! README quickstart on the crate root and the tests are what compile.

// Labels for docs/scheduling.md's links to its sibling pages.
#[doc = "[triggers]: crate::docs::triggers"]
#[doc = "[executors]: crate::docs::executors"]
#[doc = "[executors-shutdown]: crate::docs::executors#shutdown"]
#[doc = "[executors-timeouts]: crate::docs::executors#timeouts"]
#[doc = "[events]: crate::docs::events"]
#[doc = "[stores]: crate::docs::stores"]
#[doc = "[stores-adding-many]: crate::docs::stores#adding-many-jobs-at-once"]
#[doc = "[embedding]: crate::docs::embedding"]
#[doc = ""]
#[doc = include_str!("../docs/scheduling.md")]
pub mod scheduling {}

#[doc = "[conformance]: crate::docs::conformance"]
#[doc = ""]
#[doc = include_str!("../docs/triggers.md")]
pub mod triggers {}

#[doc = "[scheduling-timeouts]: crate::docs::scheduling#timeouts"]
#[doc = ""]
#[doc = include_str!("../docs/executors.md")]
pub mod executors {}

#[doc = "[scheduling-loop]: crate::docs::scheduling#the-loop"]
#[doc = "[scheduling-timeouts]: crate::docs::scheduling#timeouts"]
#[doc = "[embedding]: crate::docs::embedding"]
#[doc = ""]
#[doc = include_str!("../docs/events.md")]
pub mod events {}

#[doc = "[custom-store]: crate::docs::custom_store"]
#[doc = "[ledger]: crate::docs::ledger"]
#[doc = ""]
#[doc = include_str!("../docs/stores.md")]
pub mod stores {}

#[doc = "[custom-store]: crate::docs::custom_store"]
#[doc = ""]
#[doc = include_str!("../docs/ledger.md")]
pub mod ledger {}

#[doc = "[stores]: crate::docs::stores"]
#[doc = ""]
#[doc = include_str!("../docs/custom_store.md")]
pub mod custom_store {}

#[doc = "[triggers]: crate::docs::triggers"]
#[doc = ""]
#[doc = include_str!("../docs/embedding.md")]
pub mod embedding {}

#[doc = include_str!("../docs/conformance.md")]
pub mod conformance {}

#[doc = "[triggers]: crate::docs::triggers"]
#[doc = ""]
#[doc = include_str!("../docs/config.md")]
pub mod config {}
