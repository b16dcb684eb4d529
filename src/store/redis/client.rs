//! What every operation of the store needs: the Redis client and its shared connection, the
//! key prefix, the scripts and the store state (owner, clock, corrupt-job reports, the run
//! ledger's state).

use std::sync::Mutex;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::layout::{with_default_host, Keys};
use super::runs::RunsState;
use super::runs_scripts::RunScripts;
use super::scripts::Scripts;
use crate::error::Result;
use crate::store::documents::StoreState;
use crate::sync::MutexExt;

/// The connection side of a [`RedisStore`](super::RedisStore); the job operations are
/// methods of this type (in `records.rs` and `claim.rs`) or use it (in the store).
pub(super) struct Client {
    pub(super) redis: redis::Client,
    pub(super) prefix: String,
    pub(super) response_timeout: Duration,
    conn: Mutex<Option<ConnectionManager>>,
    pub(super) state: StoreState,
    pub(super) scripts: Scripts,
    /// The run ledger's scripts.
    pub(super) run_scripts: RunScripts,
    /// The run ledger's state (blocked claims, unreadable runs reported).
    pub(super) runs: RunsState,
}

impl Client {
    /// A client of the server at `url` (see [`RedisStore::new`](super::RedisStore::new)).
    pub(super) fn new(url: &str) -> Result<Self> {
        let state = StoreState::new("redis");
        let redis = redis::Client::open(with_default_host(url).as_ref())
            .map_err(|e| state.err("invalid Redis URL", e))?;
        Ok(Client {
            redis,
            prefix: "apsched".into(),
            response_timeout: Duration::from_secs(5),
            conn: Mutex::new(None),
            state,
            scripts: Scripts::new(),
            run_scripts: RunScripts::new(),
            runs: RunsState::default(),
        })
    }

    pub(super) fn keys(&self) -> Keys {
        Keys::new(&self.prefix)
    }

    pub(super) async fn conn(&self) -> Result<ConnectionManager> {
        if let Some(c) = self.conn.lock_unpoisoned().clone() {
            return Ok(c);
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(self.response_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let c = self
            .redis
            .get_connection_manager_with_config(config)
            .await
            .map_err(|e| self.state.err("connecting", e))?;
        *self.conn.lock_unpoisoned() = Some(c.clone());
        Ok(c)
    }
}
