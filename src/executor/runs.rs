//! The runs in flight that can observe cancellation, by [`RunId`]: what
//! [`Scheduler::cancel_run`](crate::Scheduler::cancel_run) and the shutdowns that do not
//! wait reach. Only runs that take a [`JobContext`](crate::JobContext) or have a timeout
//! are registered, so a plain run pays nothing for it.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

use crate::job::RunId;
use crate::sync::MutexExt;

/// The cancellation tokens of the registered runs in flight.
#[derive(Debug, Default)]
pub(crate) struct RunRegistry {
    runs: Mutex<HashMap<RunId, CancellationToken, crate::job::RunIdState>>,
}

impl RunRegistry {
    /// Registers run `id`; it stays registered until the returned guard is dropped.
    pub(crate) fn register(&self, id: RunId) -> Registered<'_> {
        let token = CancellationToken::new();
        self.runs.lock_unpoisoned().insert(id, token.clone());
        Registered {
            registry: self,
            id,
            token,
        }
    }

    /// Cancels the token of run `id`; `false` if no such run is in flight.
    pub(crate) fn cancel(&self, id: RunId) -> bool {
        let token = self.runs.lock_unpoisoned().get(&id).cloned();
        token.inspect(CancellationToken::cancel).is_some()
    }

    /// Cancels every registered run's token.
    pub(crate) fn cancel_all(&self) {
        let tokens: Vec<_> = self.runs.lock_unpoisoned().values().cloned().collect();
        for token in tokens {
            token.cancel();
        }
    }
}

/// A registered run: its id and token; unregisters it when dropped.
pub(crate) struct Registered<'a> {
    registry: &'a RunRegistry,
    pub(crate) id: RunId,
    pub(crate) token: CancellationToken,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.registry.runs.lock_unpoisoned().remove(&self.id);
    }
}
