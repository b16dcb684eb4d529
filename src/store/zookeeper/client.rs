//! What every operation of the store needs: the ensemble and root path, the session
//! (connected on first use, see `session.rs`), the store state (owner, clock, corrupt-job
//! reports) and the watch state; and the paths of the znodes.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use zookeeper_client as zk;

use super::runs::Written;
use super::watch::WatchState;
use crate::store::common::Reported;
use crate::store::documents::StoreState;

/// The connection side of a [`ZooKeeperStore`](super::ZooKeeperStore); the job operations
/// are methods of this type (in `session.rs`, `nodes.rs`, `index.rs` and `claim.rs`) or use
/// it (in the store).
pub(super) struct Client {
    pub(super) hosts: String,
    pub(super) root: String,
    pub(super) session_timeout: Duration,
    /// The session, once connected (see [`Client::session`]).
    pub(super) session: Mutex<Option<zk::Client>>,
    pub(super) state: StoreState,
    pub(super) watch: Arc<WatchState>,
    /// Run records that do not parse, already reported (by run id, with a fingerprint).
    pub(super) bad_runs: Reported,
    /// The active runs this store wrote last, as written (see `runs::Written`).
    pub(super) written: Written,
}

impl Client {
    /// A client of the ensemble `hosts` (see [`ZooKeeperStore::new`](super::ZooKeeperStore::new)).
    pub(super) fn new(hosts: &str) -> Self {
        let hosts = hosts.trim_start_matches("zk://").trim_end_matches('/');
        let hosts = if hosts.is_empty() {
            "localhost:2181"
        } else {
            hosts
        };
        Client {
            hosts: hosts.to_string(),
            root: "/apsched".into(),
            session_timeout: Duration::from_secs(10),
            session: Mutex::new(None),
            state: StoreState::new("zookeeper"),
            watch: Arc::new(WatchState::new()),
            bad_runs: Reported::default(),
            written: Written::default(),
        }
    }

    pub(super) fn jobs_path(&self) -> String {
        format!("{}/jobs", self.root)
    }

    pub(super) fn index_path(&self) -> String {
        format!("{}/index", self.root)
    }

    pub(super) fn job_path(&self, node: &str) -> String {
        format!("{}/jobs/{node}", self.root)
    }

    pub(super) fn idx_path(&self, entry: &str) -> String {
        format!("{}/index/{entry}", self.root)
    }
}
