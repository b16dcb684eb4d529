//! Events as a channel ([`Scheduler::subscribe`]) or as a listener task
//! ([`Scheduler::add_listener`]).

use std::future::Future;

use super::Scheduler;
use crate::event::{Event, EventKind, EventReceiver, RecvError};

/// Identifies a listener added with [`Scheduler::add_listener`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenerId(u64);

impl Scheduler {
    /// Events matching `mask`, from now on.
    pub fn subscribe(&self, mask: EventKind) -> EventReceiver {
        self.inner.events.subscribe(mask)
    }

    /// Runs `f` for each event matching `mask`, on a task of its own: a slow listener
    /// delays no job (it only falls behind, and past the event capacity loses events).
    ///
    /// The task runs on the scheduler's runtime, whichever runtime this is called from. A
    /// listener added while the scheduler is stopped starts with it (events emitted
    /// meanwhile wait for it, up to the event capacity).
    pub fn add_listener<F, Fut>(&self, mask: EventKind, f: F) -> ListenerId
    where
        F: Fn(Event) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut rx = self.subscribe(mask);
        let listener = Box::pin(async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => f(ev).await,
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!("event listener fell behind and lost {n} events")
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        });
        ListenerId(self.inner.spawn_listener(listener))
    }

    /// Stops a listener added with [`add_listener`](Self::add_listener).
    pub fn remove_listener(&self, id: ListenerId) -> bool {
        let mut life = self.inner.life();
        match life.listeners.remove(&id.0) {
            Some(h) => {
                h.abort();
                true
            }
            None => life.waiting_listeners.remove(&id.0).is_some(),
        }
    }
}
