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
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::MutexGuard;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tokio::runtime::Handle;

use super::Inner;
use crate::sync::MutexExt;

/// The scheduler's runtime as a number, readable without a lock: every handle call asks
/// "am I already home?", and a mutex plus two `Handle` clones per call showed up in the add
/// path (S1). 0 = no home (before start, after shutdown).
#[derive(Debug, Default)]
pub(super) struct HomeId(AtomicU64);

impl HomeId {
    fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    fn set(&self, home: Option<&Handle>) {
        self.0
            .store(home.map_or(0, runtime_bits), Ordering::Release);
    }
}

/// A runtime's [`Id`](tokio::runtime::Id) as a non-zero number. The id is `Copy + Eq + Hash`
/// but offers no integer; its `Hash` writes its `u64`, which this hasher keeps as it is.
/// Should a later Tokio hash it differently, the bytes are folded FNV-style (distinct ids
/// then collide only by a 2⁻⁶⁴ chance), and `runtime_bits_follow_the_runtime_id` checks it.
fn runtime_bits(handle: &Handle) -> u64 {
    #[derive(Default)]
    struct Bits(u64);
    impl Hasher for Bits {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for &b in bytes {
                self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        fn write_u64(&mut self, n: u64) {
            self.0 = n;
        }
    }
    let mut bits = Bits::default();
    handle.id().hash(&mut bits);
    bits.finish().max(1)
}

/// The runtime the caller is polled on, as [`runtime_bits`]; 0 for none. Tokio lends no
/// reference to the current handle, so this costs one reference-count increment and
/// decrement (no lock).
fn current_runtime_bits() -> u64 {
    Handle::try_current().map_or(0, |current| runtime_bits(&current))
}

pin_project_lite::pin_project! {
    /// [`Inner::at_home`]'s future: `fut`, polled inside home's context when the caller is
    /// away from home. Where it is polled is decided at its first poll, as for an `async fn`.
    #[must_use = "futures do nothing unless polled"]
    pub(crate) struct AtHome<'a, F> {
        inner: &'a Inner,
        place: Place,
        #[pin]
        fut: F,
    }
}

/// Where an [`AtHome`] polls its future.
enum Place {
    /// Not polled yet.
    Unknown,
    /// On the scheduler's runtime, or the scheduler has none: a plain poll.
    Here,
    /// Away: every poll enters home's context.
    Away(Handle),
}

impl<F: Future> Future for AtHome<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if let Place::Unknown = this.place {
            *this.place = this.inner.place();
        }
        match this.place {
            // Entered only for the duration of one poll: the guard never crosses an await.
            Place::Away(home) => {
                let _home = home.enter();
                this.fut.poll(cx)
            }
            _ => this.fut.poll(cx),
        }
    }
}

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
        let mut slot = self.home_slot();
        self.home_id.set(home.as_ref());
        *slot = home.clone();
        drop(slot);
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
    pub(crate) fn at_home<F: Future>(&self, fut: F) -> AtHome<'_, F> {
        AtHome {
            inner: self,
            place: Place::Unknown,
            fut,
        }
    }

    /// Where to poll a handle call's future now. The common cases (home, or no home yet)
    /// read one atomic and the current runtime's id; only a caller away from home takes
    /// the lock, for home's `Handle`.
    fn place(&self) -> Place {
        let home = self.home_id.get();
        if home == 0 || home == current_runtime_bits() {
            return Place::Here;
        }
        match self.home() {
            Some(home) => Place::Away(home),
            // Shut down meanwhile.
            None => Place::Here,
        }
    }
}

#[cfg(test)]
mod home_tests {
    use super::{current_runtime_bits, runtime_bits};

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    /// The lock-free check tells runtimes apart exactly as `Handle::id` does.
    #[test]
    fn runtime_bits_follow_the_runtime_id() {
        let (a, b) = (runtime(), runtime());
        assert_eq!(runtime_bits(a.handle()), runtime_bits(&a.handle().clone()));
        assert_ne!(runtime_bits(a.handle()), runtime_bits(b.handle()));
        assert_ne!(runtime_bits(a.handle()), 0);
        assert_eq!(current_runtime_bits(), 0);
        let here = a.block_on(async { current_runtime_bits() });
        assert_eq!(here, runtime_bits(a.handle()));
        let _b = b.enter();
        assert_eq!(current_runtime_bits(), runtime_bits(b.handle()));
    }
}
