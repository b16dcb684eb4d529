//! Starting a store outside a scheduler: [`TestContext`] and [`context`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::fixtures::TASKS;
use crate::clock::{Clock, SystemClock};
use crate::event::{EventBus, EventKind, EventReceiver};
use crate::store::StoreContext;
use crate::task::{TaskFn, TaskRegistry};

/// A registry with a task that does nothing under each name (a store only asks whether a
/// name is registered).
fn registry(names: &[&str]) -> Arc<TaskRegistry> {
    let mut tasks = TaskRegistry::new();
    for name in names {
        tasks.insert(*name, TaskFn::from_async(|_: serde_json::Value| async {}));
    }
    Arc::new(tasks)
}

/// A context for starting a store outside a scheduler, with [`TASKS`] registered and the
/// system clock. Use [`TestContext`] to also watch what the store reports or wakes.
pub fn context(alias: &str, scheduler_id: &str, lease: Duration) -> StoreContext {
    TestContext::new(alias, scheduler_id, lease).context()
}

/// A scheduler stand-in for a store under test: builds the [`StoreContext`] to start it with
/// and keeps the ends a scheduler would listen on, the events the store emits
/// ([`subscribe`](Self::subscribe)) and the loop wake-up it notifies
/// ([`wakeup`](Self::wakeup)).
///
/// ```
/// # async fn f() -> apsched::Result<()> {
/// use apsched::event::EventKind;
/// use apsched::store::testing::TestContext;
/// use apsched::store::{JobStore, MemoryStore};
///
/// let ctx = TestContext::new("default", "s1", std::time::Duration::from_secs(30));
/// let errors = ctx.subscribe(EventKind::STORE_ERROR);
/// let store = MemoryStore::new();
/// store.start(ctx.context()).await?;
/// # drop(errors);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct TestContext {
    context: StoreContext,
    events: EventBus,
    wakeup: Arc<Notify>,
}

impl TestContext {
    /// A context named `alias` for the scheduler `scheduler_id` with this `lease`, the
    /// [`TASKS`] of the contract suite and the system clock.
    pub fn new(alias: &str, scheduler_id: &str, lease: Duration) -> Self {
        Self::with(alias, scheduler_id, lease, TASKS, Arc::new(SystemClock))
    }

    /// Like [`new`](Self::new) with the given registered task names and clock (a
    /// [`TestClock`](crate::clock::TestClock) for virtual time).
    pub fn with(
        alias: &str,
        scheduler_id: &str,
        lease: Duration,
        task_names: &[&str],
        clock: Arc<dyn Clock>,
    ) -> Self {
        let tasks = registry(task_names);
        let events = EventBus::new(1024);
        let wakeup = Arc::new(Notify::new());
        TestContext {
            context: StoreContext::new(
                alias,
                scheduler_id,
                lease,
                tasks,
                wakeup.clone(),
                events.clone(),
                clock,
            ),
            events,
            wakeup,
        }
    }

    /// With the run ledger on or off and this retention (the default: on, the default
    /// [`RunRetention`](crate::ledger::RunRetention)).
    pub fn with_ledger(mut self, enabled: bool, retention: crate::ledger::RunRetention) -> Self {
        self.context = self
            .context
            .with_ledger(Arc::new(crate::ledger::LedgerSettings::new(
                enabled, retention,
            )));
        self
    }

    /// The context to pass to [`JobStore::start`](crate::store::JobStore::start).
    pub fn context(&self) -> StoreContext {
        self.context.clone()
    }

    /// The events of the kinds in `mask` that the store emits from now on (corrupt records
    /// are [`EventKind::STORE_ERROR`](crate::event::EventKind::STORE_ERROR)).
    pub fn subscribe(&self, mask: EventKind) -> EventReceiver {
        self.events.subscribe(mask)
    }

    /// What [`StoreContext::wake_scheduler`] notifies: await `notified()` on it to see the
    /// store wake the loop.
    pub fn wakeup(&self) -> Arc<Notify> {
        self.wakeup.clone()
    }
}
