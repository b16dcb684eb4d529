//! The store's ZooKeeper session: connecting (and reconnecting after the session is lost),
//! and calls bounded by the session timeout.

use std::time::Duration;

use zookeeper_client as zk;

use super::client::Client;
use super::names::persistent;
use crate::error::Result;

impl Client {
    /// The session, connecting (and creating the root paths) when there is none or the
    /// last one expired.
    pub(super) async fn session(&self) -> Result<zk::Client> {
        let mut guard = self.session.lock().await;
        if let Some(c) = guard.as_ref() {
            if !matches!(
                c.state(),
                zk::SessionState::Expired | zk::SessionState::Closed | zk::SessionState::AuthFailed
            ) {
                return Ok(c.clone());
            }
        }
        let connect = zk::Client::connector()
            .with_session_timeout(self.session_timeout)
            .with_connection_timeout(Duration::from_secs(2))
            .with_fail_eagerly()
            .connect(&self.hosts);
        let c = tokio::time::timeout(self.session_timeout, connect)
            .await
            .map_err(|_| {
                self.state
                    .msg(format!("connecting to {}: timed out", self.hosts))
            })?
            .map_err(|e| self.state.err("connecting", e))?;
        for p in [
            self.jobs_path(),
            self.index_path(),
            self.runs_path(),
            self.history_root(),
            self.active_root(),
            self.owners_path(),
        ] {
            match c.mkdir(&p, &persistent()).await {
                Ok(()) | Err(zk::Error::NodeExists) => {}
                Err(e) => return Err(self.state.err("creating the root path", e)),
            }
        }
        *guard = Some(c.clone());
        Ok(c)
    }

    /// Wraps a call so that it fails (instead of waiting forever) while the server is away.
    pub(super) async fn call<T, F>(&self, doing: &str, f: F) -> Result<T>
    where
        F: std::future::Future<Output = std::result::Result<T, zk::Error>>,
    {
        match tokio::time::timeout(self.session_timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if matches!(e, zk::Error::SessionExpired | zk::Error::ClientClosed) {
                    *self.session.lock().await = None;
                }
                Err(self.state.err(doing, e))
            }
            Err(_) => Err(self.state.msg(format!("{doing}: timed out"))),
        }
    }
}
