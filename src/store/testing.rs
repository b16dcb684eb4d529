//! The store contract as a test suite, for stores written outside apsched as well as its
//! own (feature `test-util`).
//!
//! [`contract`] runs every test of the [`JobStore`] contract, each against a fresh, empty,
//! started store from a factory you give; [`shared_claims`] checks that two stores on one
//! backend (two schedulers) never claim the same run; [`bulk_add_all_or_nothing`] is for
//! stores that promise an all-or-nothing [`JobStore::add_jobs`]. [`TestContext`] starts a
//! store outside a scheduler. The guide's page "Writing your own store"
//! ([`crate::docs::custom_store`]) walks through an example.
//!
//! The tests assert with `assert!`/`panic!`, as tests in a test harness do: call them from
//! `#[tokio::test]` functions. Every job they write names the task `echo` (see [`TASKS`]),
//! so a store that checks tasks must be started with a context that has it.
//!
//! ```
//! # async fn f() {
//! use apsched::store::testing::{self, context};
//! use apsched::store::{JobStore, MemoryStore};
//! use std::time::Duration;
//!
//! testing::contract(
//!     || async {
//!         let store = MemoryStore::new();
//!         store.start(context("default", "s1", Duration::from_secs(30))).await.unwrap();
//!         store
//!     },
//!     None,
//! )
//! .await;
//! # }
//! # tokio::runtime::Runtime::new().unwrap().block_on(f());
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use futures::future::BoxFuture;
use tokio::sync::Notify;

use super::{JobStore, StoreContext};
use crate::clock::{Clock, SystemClock};
use crate::event::{EventBus, EventKind, EventReceiver};
use crate::job::{Callable, JobRecord};
use crate::task::{TaskFn, TaskRegistry};
use crate::trigger::{Date, Interval, TriggerSpec};
use crate::Error;

/// A fixed instant the contract tests use as "now".
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 1, 15, 10, 0, 0).unwrap()
}

/// `t0 + secs`.
pub fn at(secs: i64) -> DateTime<Utc> {
    t0() + TimeDelta::seconds(secs)
}

/// The tasks every suite job refers to: `noop` and `echo`.
pub const TASKS: &[&str] = &["noop", "echo"];

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

    /// The context to pass to [`JobStore::start`].
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

/// A persistable job (task `echo`) firing every `every_secs` from `next`.
pub fn interval_job(id: &str, every_secs: u64, next: Option<DateTime<Utc>>) -> JobRecord {
    job(
        id,
        Interval::new(Duration::from_secs(every_secs))
            .unwrap()
            .into(),
        next,
    )
}

/// A persistable one-shot job at `when`.
pub fn date_job(id: &str, when: DateTime<Utc>) -> JobRecord {
    let date = Date::at(when, None).expect("a UTC instant is a valid run date");
    job(id, date.into(), Some(when))
}

fn job(id: &str, trigger: TriggerSpec, next: Option<DateTime<Utc>>) -> JobRecord {
    JobRecord {
        id: id.to_string(),
        name: Some(format!("job {id}")),
        callable: Callable::Task {
            name: "echo".into(),
            args: serde_json::json!({"id": id, "n": [1, 2, 3]}),
        },
        trigger,
        executor: "default".into(),
        misfire_grace_time: Some(Duration::from_secs(30)),
        coalesce: false,
        max_instances: 2,
        timeout: None,
        next_run_time: next,
        version: 0,
        lease: None,
    }
}

fn ids(jobs: &[JobRecord]) -> Vec<&str> {
    jobs.iter().map(|j| j.id.as_str()).collect()
}

/// Writes, bypassing every check, a record under the given id that the store cannot load
/// (a document that is not JSON), due at [`t0`]. Each store that keeps documents supplies
/// one, writing through its database's own client (apsched's stores do in their tests). A
/// store that keeps records, not documents (the memory store) passes `None`: nothing in it
/// is corrupt. The hook gets the store to read where it keeps its records (a table, a key
/// prefix) and the id.
pub type WriteCorrupt<S> = Box<dyn Fn(&S, &str) -> BoxFuture<'static, ()> + Send + Sync>;

/// Runs every contract test, each on a fresh store from `make`; the corrupt-record tests
/// only if the store supplies `corrupt` (see [`WriteCorrupt`]).
pub async fn contract<F, Fut, S>(make: F, corrupt: Option<WriteCorrupt<S>>)
where
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
    S: JobStore,
{
    stale_reads_fenced_across_incarnations(make().await).await;
    if let Some(write) = corrupt {
        remove_corrupt_record(make().await, &write).await;
    }
    add_lookup_roundtrip(make().await).await;
    ordering(make().await).await;
    conflicting_ids(make().await).await;
    update_and_fencing(make().await).await;
    removal(make().await).await;
    next_run_time(make().await).await;
    acquire_advances(make().await).await;
    acquire_limit_and_order(make().await).await;
    acquire_removes_exhausted(make().await).await;
    acquire_backlog(make().await).await;
    bulk_add(make().await).await;
}

/// `add_jobs`, as every store gives it (the default implementation included): a thousand
/// jobs in one call are all stored with their next run times; a duplicate id inside the
/// batch adds nothing without `replace_existing`, and the last one wins with it; an id
/// already stored is replaced with `replace_existing`.
async fn bulk_add(store: impl JobStore) {
    let batch: Vec<JobRecord> = (0..1000)
        .map(|i| interval_job(&format!("b{i:04}"), 60, Some(at(i % 100))))
        .collect();
    store.add_jobs(batch, false).await.unwrap();
    let all = store.get_all_jobs().await.unwrap();
    assert_eq!(all.len(), 1000);
    for job in &all {
        let i: i64 = job.id[1..].parse().unwrap();
        assert_eq!(job.next_run_time, Some(at(i % 100)), "{}", job.id);
    }
    assert_eq!(store.next_run_time().await.unwrap(), Some(at(0)));

    // A duplicate inside the batch: refused, nothing of the batch added.
    let err = store
        .add_jobs(
            vec![
                interval_job("n1", 60, Some(at(1))),
                interval_job("n2", 60, Some(at(2))),
                interval_job("n1", 60, Some(at(3))),
            ],
            false,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::ConflictingId(ref id) if id == "n1"),
        "{err}"
    );
    assert!(store.lookup_job("n1").await.unwrap().is_none());
    assert!(store.lookup_job("n2").await.unwrap().is_none());

    // With replace_existing: stored jobs are replaced, the last of a duplicate wins.
    let before = store.lookup_job("b0005").await.unwrap().unwrap();
    store
        .add_jobs(
            vec![
                interval_job("b0005", 5, Some(at(500))),
                interval_job("n1", 60, Some(at(1))),
                interval_job("n1", 60, Some(at(7))),
            ],
            true,
        )
        .await
        .unwrap();
    let after = store.lookup_job("b0005").await.unwrap().unwrap();
    assert_eq!(after.next_run_time, Some(at(500)));
    assert_ne!(after.version, before.version);
    assert_eq!(
        store.lookup_job("n1").await.unwrap().unwrap().next_run_time,
        Some(at(7))
    );
    assert_eq!(store.get_all_jobs().await.unwrap().len(), 1001);
    // The replaced job is a new incarnation: a writer holding the old version is fenced.
    let err = store.update_job(before).await.unwrap_err();
    assert!(matches!(err, Error::Fenced(_)), "{err}");
    store.add_jobs(Vec::new(), false).await.unwrap();
}

/// `add_jobs` on a store that promises all or nothing (memory, SQL): a batch with one id
/// already stored fails with that id and adds nothing, even when it spans several
/// statements; nothing stored is changed.
pub async fn bulk_add_all_or_nothing(store: impl JobStore) {
    store
        .add_job(interval_job("x0700", 60, Some(at(60))), false)
        .await
        .unwrap();
    let batch: Vec<JobRecord> = (0..1200)
        .map(|i| interval_job(&format!("x{i:04}"), 60, Some(at(i))))
        .collect();
    let err = store.add_jobs(batch, false).await.unwrap_err();
    assert!(
        matches!(err, Error::ConflictingId(ref id) if id == "x0700"),
        "{err}"
    );
    let all = store.get_all_jobs().await.unwrap();
    assert_eq!(ids(&all), ["x0700"]);
    assert_eq!(all[0].next_run_time, Some(at(60)));
}

/// A job comes back from the store as it went in.
async fn add_lookup_roundtrip(store: impl JobStore) {
    let job = interval_job("a", 60, Some(at(60)));
    store.add_job(job.clone(), false).await.unwrap();
    let back = store
        .lookup_job("a")
        .await
        .unwrap()
        .expect("job a is stored");
    assert_eq!(back.id, "a");
    assert_eq!(back.name.as_deref(), Some("job a"));
    assert_eq!(back.trigger, job.trigger);
    assert_eq!(back.executor, "default");
    assert_eq!(back.misfire_grace_time, Some(Duration::from_secs(30)));
    assert!(!back.coalesce);
    assert_eq!(back.max_instances, 2);
    assert_eq!(back.next_run_time, Some(at(60)));
    match &back.callable {
        Callable::Task { name, args } => {
            assert_eq!(name, "echo");
            assert_eq!(args, &serde_json::json!({"id": "a", "n": [1, 2, 3]}));
        }
        other => panic!("callable changed: {other:?}"),
    }
    assert!(store.lookup_job("nope").await.unwrap().is_none());
}

/// Jobs list by next run time, paused last, ties by id.
async fn ordering(store: impl JobStore) {
    for (id, next) in [
        ("p2", None),
        ("c", Some(at(30))),
        ("b", Some(at(10))),
        ("a", Some(at(30))),
        ("p1", None),
    ] {
        store
            .add_job(interval_job(id, 60, next), false)
            .await
            .unwrap();
    }
    let all = store.get_all_jobs().await.unwrap();
    assert_eq!(ids(&all), ["b", "a", "c", "p1", "p2"]);
}

/// A second job with the same id is refused unless replacing.
async fn conflicting_ids(store: impl JobStore) {
    store
        .add_job(interval_job("a", 60, Some(at(60))), false)
        .await
        .unwrap();
    let err = store
        .add_job(interval_job("a", 5, Some(at(5))), false)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::ConflictingId(ref id) if id == "a"),
        "{err}"
    );
    assert_eq!(
        store.lookup_job("a").await.unwrap().unwrap().next_run_time,
        Some(at(60))
    );
    store
        .add_job(interval_job("a", 5, Some(at(5))), true)
        .await
        .unwrap();
    assert_eq!(
        store.lookup_job("a").await.unwrap().unwrap().next_run_time,
        Some(at(5))
    );
    assert_eq!(store.get_all_jobs().await.unwrap().len(), 1);
}

/// Updates are compare-and-swap on the version.
async fn update_and_fencing(store: impl JobStore) {
    store
        .add_job(interval_job("a", 60, Some(at(60))), false)
        .await
        .unwrap();
    let read = store.lookup_job("a").await.unwrap().unwrap();
    let mut changed = read.clone();
    changed.name = Some("renamed".into());
    changed.next_run_time = None;
    let stored = store.update_job(changed).await.unwrap();
    assert!(stored.version > read.version, "update bumps the version");
    let back = store.lookup_job("a").await.unwrap().unwrap();
    assert_eq!(back.name.as_deref(), Some("renamed"));
    assert_eq!(back.next_run_time, None);
    assert_eq!(back.version, stored.version);

    // A writer holding the old version is refused, and the newer state stays.
    let mut stale = read.clone();
    stale.name = Some("stale".into());
    let err = store.update_job(stale).await.unwrap_err();
    assert!(matches!(err, Error::Fenced(_)), "{err}");
    assert_eq!(
        store
            .lookup_job("a")
            .await
            .unwrap()
            .unwrap()
            .name
            .as_deref(),
        Some("renamed")
    );

    let err = store
        .update_job(interval_job("ghost", 60, None))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::JobLookup(_)), "{err}");
}

/// ABA: a job removed and added again (or replaced) under the same id is a new job. A
/// write based on a read of the old one, or on a claim of it, is fenced, however many writes
/// the new one has gone through; a release of an old claim leaves the new job alone.
async fn stale_reads_fenced_across_incarnations(store: impl JobStore) {
    let fenced = |r: crate::Result<JobRecord>, what: &str| match r {
        Err(Error::Fenced(id)) => assert_eq!(id, "a"),
        Ok(j) => panic!(
            "{what}: a stale write overwrote the new job (version {})",
            j.version
        ),
        Err(e) => panic!("{what}: expected Fenced, got {e}"),
    };
    let stale = |j: &JobRecord| {
        let mut j = j.clone();
        j.name = Some("stale".into());
        j.next_run_time = Some(at(5));
        j
    };
    store
        .add_job(interval_job("a", 60, Some(at(0))), false)
        .await
        .unwrap();
    let read = store.lookup_job("a").await.unwrap().unwrap();
    let old_claim = store.acquire_due_jobs(at(0), 10).await.unwrap();
    assert_eq!(old_claim.len(), 1);
    let claimed = old_claim[0].job.clone();
    store.release_jobs(&old_claim).await.unwrap();

    store.remove_job("a").await.unwrap();
    store
        .add_job(interval_job("a", 60, Some(at(0))), false)
        .await
        .unwrap();
    fenced(
        store.update_job(stale(&read)).await,
        "read, remove, re-add, update",
    );
    // The new job goes through a claim too: its write count now equals the old claim's.
    let new_claim = store.acquire_due_jobs(at(0), 10).await.unwrap();
    assert_eq!(new_claim.len(), 1);
    fenced(
        store.update_job(stale(&claimed)).await,
        "claim, remove, re-add, claim, update with the first claim",
    );
    let before = store.lookup_job("a").await.unwrap().unwrap();
    store.release_jobs(&old_claim).await.unwrap();
    let after = store.lookup_job("a").await.unwrap().unwrap();
    assert_eq!(
        after.version, before.version,
        "an old release wrote the new job"
    );
    assert_eq!(
        after.lease, before.lease,
        "an old release freed the new claim"
    );
    assert_eq!(after.next_run_time, Some(at(60)));
    store.release_jobs(&new_claim).await.unwrap();

    // Replacing is a new job as well.
    let read = store.lookup_job("a").await.unwrap().unwrap();
    store
        .add_job(interval_job("a", 60, Some(at(0))), true)
        .await
        .unwrap();
    fenced(
        store.update_job(stale(&read)).await,
        "read, replace, update",
    );
    let now = store.lookup_job("a").await.unwrap().unwrap();
    assert_eq!(now.name.as_deref(), Some("job a"));
    assert_eq!(now.next_run_time, Some(at(0)));
}

/// A record the store cannot load is removed by `remove_job`, the way docs/stores.md gives
/// to recover from one; the id is then free for a new job, which runs normally.
async fn remove_corrupt_record<S: JobStore>(store: S, write: &WriteCorrupt<S>) {
    store
        .add_job(interval_job("good", 60, Some(at(0))), false)
        .await
        .unwrap();
    write(&store, "bad").await;
    // The store has met the record (and reported it) before it is removed.
    assert_eq!(ids(&store.get_all_jobs().await.unwrap()), ["good"]);
    let err = store.lookup_job("bad").await.unwrap_err();
    assert!(
        matches!(err, Error::CorruptJob { ref id, .. } if id == "bad"),
        "{err}"
    );
    let due = store.acquire_due_jobs(at(0), 10).await.unwrap();
    assert_eq!(
        due.iter().map(|d| d.job.id.as_str()).collect::<Vec<_>>(),
        ["good"]
    );
    store.release_jobs(&due).await.unwrap();

    store
        .remove_job("bad")
        .await
        .unwrap_or_else(|e| panic!("remove_job on a corrupt record: {e}"));
    assert!(store.lookup_job("bad").await.unwrap().is_none());
    let err = store.remove_job("bad").await.unwrap_err();
    assert!(matches!(err, Error::JobLookup(_)), "{err}");
    assert_eq!(ids(&store.get_all_jobs().await.unwrap()), ["good"]);

    store
        .add_job(interval_job("bad", 60, Some(at(0))), false)
        .await
        .unwrap();
    let due = store.acquire_due_jobs(at(0), 10).await.unwrap();
    assert_eq!(
        due.iter().map(|d| d.job.id.as_str()).collect::<Vec<_>>(),
        ["bad"]
    );
    store.release_jobs(&due).await.unwrap();
}

/// Removal of one job and of all jobs.
async fn removal(store: impl JobStore) {
    for id in ["a", "b", "c"] {
        store
            .add_job(interval_job(id, 60, Some(at(60))), false)
            .await
            .unwrap();
    }
    store.remove_job("b").await.unwrap();
    assert_eq!(ids(&store.get_all_jobs().await.unwrap()), ["a", "c"]);
    let err = store.remove_job("b").await.unwrap_err();
    assert!(matches!(err, Error::JobLookup(_)), "{err}");
    store.remove_all_jobs().await.unwrap();
    assert!(store.get_all_jobs().await.unwrap().is_empty());
    assert_eq!(store.next_run_time().await.unwrap(), None);
}

/// The earliest next run time of unpaused jobs.
async fn next_run_time(store: impl JobStore) {
    assert_eq!(store.next_run_time().await.unwrap(), None);
    store
        .add_job(interval_job("paused", 60, None), false)
        .await
        .unwrap();
    assert_eq!(store.next_run_time().await.unwrap(), None);
    store
        .add_job(interval_job("later", 60, Some(at(90))), false)
        .await
        .unwrap();
    store
        .add_job(interval_job("sooner", 60, Some(at(30))), false)
        .await
        .unwrap();
    assert_eq!(store.next_run_time().await.unwrap(), Some(at(30)));
}

/// Claiming a due job advances it in the same step; it is not claimed again for that time.
async fn acquire_advances(store: impl JobStore) {
    store
        .add_job(interval_job("a", 60, Some(at(0))), false)
        .await
        .unwrap();
    store
        .add_job(interval_job("future", 60, Some(at(600))), false)
        .await
        .unwrap();
    assert!(store
        .acquire_due_jobs(at(-1), 100)
        .await
        .unwrap()
        .is_empty());

    let due = store.acquire_due_jobs(at(0), 100).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].job.id, "a");
    assert_eq!(due[0].run_times, vec![at(0)]);
    assert!(!due[0].removed);
    assert_eq!(due[0].job.next_run_time, Some(at(60)));
    store.release_jobs(&due).await.unwrap();

    assert_eq!(
        store.lookup_job("a").await.unwrap().unwrap().next_run_time,
        Some(at(60))
    );
    assert!(store.acquire_due_jobs(at(0), 100).await.unwrap().is_empty());
    assert_eq!(store.next_run_time().await.unwrap(), Some(at(60)));

    // A later claim works on the advanced state.
    let due = store.acquire_due_jobs(at(60), 100).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].run_times, vec![at(60)]);
    store.release_jobs(&due).await.unwrap();
}

/// At most `limit` jobs per claim, oldest first; the rest on the next claim.
async fn acquire_limit_and_order(store: impl JobStore) {
    for (i, id) in ["e", "d", "c", "b", "a"].iter().enumerate() {
        store
            .add_job(interval_job(id, 3600, Some(at(i as i64))), false)
            .await
            .unwrap();
    }
    let first = store.acquire_due_jobs(at(10), 2).await.unwrap();
    assert_eq!(
        first.iter().map(|d| d.job.id.as_str()).collect::<Vec<_>>(),
        ["e", "d"]
    );
    store.release_jobs(&first).await.unwrap();
    let rest = store.acquire_due_jobs(at(10), 100).await.unwrap();
    assert_eq!(
        rest.iter().map(|d| d.job.id.as_str()).collect::<Vec<_>>(),
        ["c", "b", "a"]
    );
    store.release_jobs(&rest).await.unwrap();
}

/// A trigger with no fire time left: the claim removes the job and says so.
async fn acquire_removes_exhausted(store: impl JobStore) {
    store.add_job(date_job("once", at(5)), false).await.unwrap();
    let due = store.acquire_due_jobs(at(10), 100).await.unwrap();
    assert_eq!(due.len(), 1);
    assert!(due[0].removed);
    assert_eq!(due[0].run_times, vec![at(5)]);
    store.release_jobs(&due).await.unwrap();
    assert!(store.lookup_job("once").await.unwrap().is_none());
    assert_eq!(store.next_run_time().await.unwrap(), None);
}

/// After downtime every missed time is listed (coalescing is the scheduler's business).
async fn acquire_backlog(store: impl JobStore) {
    store
        .add_job(interval_job("a", 10, Some(at(0))), false)
        .await
        .unwrap();
    let due = store.acquire_due_jobs(at(35), 100).await.unwrap();
    assert_eq!(due[0].run_times, vec![at(0), at(10), at(20), at(30)]);
    assert_eq!(due[0].job.next_run_time, Some(at(40)));
    store.release_jobs(&due).await.unwrap();
}

/// Two stores on one backend (two scheduler identities) never claim the same slot, and a
/// claim by one is visible to the other.
pub async fn shared_claims(a: impl JobStore, b: impl JobStore) {
    let a = Arc::new(a);
    let b = Arc::new(b);
    const JOBS: usize = 50;
    for i in 0..JOBS {
        a.add_job(interval_job(&format!("j{i:03}"), 10, Some(at(0))), false)
            .await
            .unwrap();
    }
    let mut claimed = Vec::new();
    for round in 0..3 {
        let now = at(round * 10);
        let (ra, rb) = tokio::join!(a.acquire_due_jobs(now, 20), b.acquire_due_jobs(now, 20));
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        a.release_jobs(&ra).await.unwrap();
        b.release_jobs(&rb).await.unwrap();
        // Whatever is left for this round is claimed by either, in further passes.
        let mut got: Vec<(String, DateTime<Utc>)> = ra
            .iter()
            .chain(rb.iter())
            .flat_map(|d| d.run_times.iter().map(move |t| (d.job.id.clone(), *t)))
            .collect();
        loop {
            let (ra, rb) = tokio::join!(a.acquire_due_jobs(now, 20), b.acquire_due_jobs(now, 20));
            let (ra, rb) = (ra.unwrap(), rb.unwrap());
            if ra.is_empty() && rb.is_empty() {
                break;
            }
            a.release_jobs(&ra).await.unwrap();
            b.release_jobs(&rb).await.unwrap();
            got.extend(
                ra.iter()
                    .chain(rb.iter())
                    .flat_map(|d| d.run_times.iter().map(move |t| (d.job.id.clone(), *t))),
            );
        }
        assert_eq!(got.len(), JOBS, "round {round}: every job claimed once");
        claimed.extend(got);
    }
    let mut unique = claimed.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), claimed.len(), "no (job, time) claimed twice");
    assert_eq!(unique.len(), JOBS * 3);
}
