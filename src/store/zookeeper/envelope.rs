//! The data of a job znode: the envelope around the JSON document, with copies of its next
//! run time and lease. A leaf of the ZooKeeper store.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::job::{Lease, StoredJob};
use crate::store::common::from_micros_saturating;

/// The data of a job znode.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Envelope {
    pub(super) job: String,
    pub(super) next_run_time: Option<i64>,
    #[serde(default)]
    pub(super) lease_owner: Option<String>,
    #[serde(default)]
    pub(super) lease_until: Option<i64>,
}

impl Envelope {
    pub(super) fn lease(&self) -> Option<Lease> {
        match (&self.lease_owner, self.lease_until) {
            (Some(owner), Some(until)) => Some(Lease {
                owner: owner.clone(),
                until: from_micros_saturating(until),
            }),
            _ => None,
        }
    }
}

/// The next run time the envelope's JSON document says (the truth; the envelope's own
/// `next_run_time` and the index entry are copies).
pub(super) fn document_next(env: &Envelope) -> Option<DateTime<Utc>> {
    serde_json::from_str::<StoredJob>(&env.job)
        .ok()?
        .next_run_time
}
