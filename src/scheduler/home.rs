//! The scheduler's runtime ("home"): the Tokio runtime `start` was called on (a
//! [`BackgroundScheduler`](super::BackgroundScheduler)'s own runtime). The loop, the
//! listeners and every run live there, whichever runtime a handle method is called from.
//!
//! A handle is used from other runtimes in real services: each actix-web worker thread has
//! a current-thread runtime of its own. Anything spawned there, and any timer or socket
//! created there, dies with that worker's runtime. So handle methods that reach stores or
//! executors are polled *inside* home's context ([`Inner::at_home`]): what they spawn or
//! open belongs to home, while the caller still awaits them as usual (no task hop, so
//! cancellation and task-locals behave as for any future).

use std::future::Future;
use std::sync::MutexGuard;

use futures::future::BoxFuture;
use tokio::runtime::Handle;

use super::Inner;
use crate::sync::MutexExt;

impl Inner {
    fn home_slot(&self) -> MutexGuard<'_, Option<Handle>> {
        self.home.lock_unpoisoned()
    }

    /// The scheduler's runtime, while it runs.
    pub(super) fn home(&self) -> Option<Handle> {
        self.home_slot().clone()
    }

    /// Records (or, at shutdown, forgets) the scheduler's runtime, and starts the listeners
    /// that were waiting for one.
    pub(super) fn set_home(&self, home: Option<Handle>) {
        *self.home_slot() = home.clone();
        let Some(home) = home else { return };
        let mut life = self.life();
        let waiting: Vec<_> = life.waiting_listeners.drain().collect();
        for (id, listener) in waiting {
            life.listeners.insert(id, home.spawn(listener));
        }
    }

    /// Runs a listener on the scheduler's runtime; before start (or after shutdown) it waits
    /// for the next start. Returns its id.
    pub(super) fn spawn_listener(&self, listener: BoxFuture<'static, ()>) -> u64 {
        // Lock order: home, then life (as in `set_home`).
        let home = self.home_slot();
        let mut life = self.life();
        life.next_listener += 1;
        let id = life.next_listener;
        match home.as_ref() {
            Some(home) => {
                life.listeners.insert(id, home.spawn(listener));
            }
            None => {
                life.waiting_listeners.insert(id, listener);
            }
        }
        id
    }

    /// Polls `fut` inside the scheduler's runtime context when the caller is on another
    /// runtime (or on none), so that whatever it spawns, and the timers and connections it
    /// creates, belong to the scheduler's runtime and outlive the caller's. On the
    /// scheduler's own runtime, or before start, it is just `fut.await`.
    pub(crate) async fn at_home<F: Future>(&self, fut: F) -> F::Output {
        let home = self
            .home()
            .filter(|home| Handle::try_current().map_or(true, |current| current.id() != home.id()));
        let Some(home) = home else {
            return fut.await;
        };
        let mut fut = std::pin::pin!(fut);
        std::future::poll_fn(move |cx| {
            // Entered only for the duration of one poll: the guard never crosses an await.
            let _home = home.enter();
            fut.as_mut().poll(cx)
        })
        .await
    }
}
