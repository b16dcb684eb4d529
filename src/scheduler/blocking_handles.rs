//! The blocking forms of [`AddJob`], [`JobHandle`] and [`StoreHandle`], for
//! [`BackgroundScheduler`](super::BackgroundScheduler) and the flavours built on it.

use std::future::{Future, IntoFuture};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::runtime::Handle;

use super::{AddJob, JobChanges, JobHandle, StoreHandle};
use crate::error::{Error, Result};
use crate::job::Job;
use crate::trigger::TriggerSpec;

/// Runs `fut` on `runtime` and blocks the calling thread until it ends. The future runs on
/// the runtime's own threads, so this works from plain threads and from inside another
/// runtime alike (where it blocks that runtime's thread for the call: fine for setup code,
/// not for a hot async path, which should `.await` the [`Scheduler`] instead).
pub(super) fn block_on<F>(runtime: &Handle, fut: F) -> Result<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match futures::executor::block_on(runtime.spawn(fut)) {
        Ok(out) => Ok(out),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(Error::State {
            needed: "a running BackgroundScheduler runtime",
            actual: "its runtime is shutting down",
        }),
    }
}

/// [`AddJob`] for a [`BackgroundScheduler`](super::BackgroundScheduler) (and the flavours built on it): the same
/// options, finished with a blocking [`add`](Self::add) instead of `.await`.
#[must_use = "a job is only added by add()"]
pub struct BlockingAddJob {
    add: AddJob,
    runtime: Handle,
}

impl std::fmt::Debug for BlockingAddJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockingAddJob").finish_non_exhaustive()
    }
}

/// The option setters of [`BlockingAddJob`], each forwarding to [`AddJob`]'s.
macro_rules! forward_options {
    ($($(#[$doc:meta])* $name:ident($($arg:ident: $ty:ty),*);)*) => {$(
        $(#[$doc])*
        pub fn $name(self, $($arg: $ty),*) -> Self {
            BlockingAddJob {
                add: self.add.$name($($arg),*),
                runtime: self.runtime,
            }
        }
    )*};
}

impl BlockingAddJob {
    pub(super) fn new(add: AddJob, runtime: Handle) -> Self {
        BlockingAddJob { add, runtime }
    }

    pub(super) fn into_async(self) -> AddJob {
        self.add
    }

    forward_options! {
        /// See [`AddJob::trigger`].
        trigger(trigger: impl Into<TriggerSpec>);
        /// See [`AddJob::id`].
        id(id: impl Into<String>);
        /// See [`AddJob::name`].
        name(name: impl Into<String>);
        /// See [`AddJob::misfire_grace_time`].
        misfire_grace_time(grace: Option<Duration>);
        /// See [`AddJob::coalesce`].
        coalesce(coalesce: bool);
        /// See [`AddJob::max_instances`].
        max_instances(n: u32);
        /// See [`AddJob::paused`].
        paused();
        /// See [`AddJob::next_run_time`].
        next_run_time(t: DateTime<Utc>);
        /// See [`AddJob::store`].
        store(alias: impl Into<String>);
        /// See [`AddJob::executor`].
        executor(alias: impl Into<String>);
        /// See [`AddJob::replace_existing`].
        replace_existing(replace: bool);
        /// See [`AddJob::timeout`].
        timeout(timeout: impl Into<Option<Duration>>);
    }

    /// Adds the job, blocking until it is stored (or, before start, kept aside).
    ///
    /// # Errors
    /// As awaiting an [`AddJob`].
    pub fn add(self) -> Result<Job> {
        block_on(&self.runtime, self.add.into_future())?
    }
}

/// [`JobHandle`] for a [`BackgroundScheduler`](super::BackgroundScheduler): the same operations, blocking.
#[derive(Debug, Clone)]
pub struct BlockingJobHandle {
    job: JobHandle,
    runtime: Handle,
}

impl BlockingJobHandle {
    pub(super) fn new(job: JobHandle, runtime: Handle) -> Self {
        BlockingJobHandle { job, runtime }
    }

    fn call<F, Fut, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce(JobHandle) -> Fut,
        Fut: Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        block_on(&self.runtime, f(self.job.clone()))?
    }

    /// The job's id.
    pub fn id(&self) -> &str {
        self.job.id()
    }

    /// See [`JobHandle::get`].
    ///
    /// # Errors
    /// As [`JobHandle::get`].
    pub fn get(&self) -> Result<Option<Job>> {
        self.call(|j| async move { j.get().await })
    }

    /// See [`JobHandle::modify`].
    ///
    /// # Errors
    /// As [`JobHandle::modify`].
    pub fn modify(&self, changes: JobChanges) -> Result<Job> {
        self.call(|j| async move { j.modify(changes).await })
    }

    /// See [`JobHandle::reschedule`].
    ///
    /// # Errors
    /// As [`JobHandle::reschedule`].
    pub fn reschedule(&self, trigger: impl Into<TriggerSpec>) -> Result<Job> {
        let trigger = trigger.into();
        self.call(|j| async move { j.reschedule(trigger).await })
    }

    /// See [`JobHandle::pause`].
    ///
    /// # Errors
    /// As [`JobHandle::pause`].
    pub fn pause(&self) -> Result<Job> {
        self.call(|j| async move { j.pause().await })
    }

    /// See [`JobHandle::resume`].
    ///
    /// # Errors
    /// As [`JobHandle::resume`].
    pub fn resume(&self) -> Result<Option<Job>> {
        self.call(|j| async move { j.resume().await })
    }

    /// See [`JobHandle::remove`].
    ///
    /// # Errors
    /// As [`JobHandle::remove`].
    pub fn remove(&self) -> Result<()> {
        self.call(|j| async move { j.remove().await })
    }
}

/// [`StoreHandle`] for a [`BackgroundScheduler`](super::BackgroundScheduler): the same operations, blocking.
#[derive(Debug, Clone)]
pub struct BlockingStoreHandle {
    store: StoreHandle,
    runtime: Handle,
}

impl BlockingStoreHandle {
    pub(super) fn new(store: StoreHandle, runtime: Handle) -> Self {
        BlockingStoreHandle { store, runtime }
    }

    fn call<F, Fut, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce(StoreHandle) -> Fut,
        Fut: Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        block_on(&self.runtime, f(self.store.clone()))?
    }

    /// The store's alias.
    pub fn alias(&self) -> &str {
        self.store.alias()
    }

    /// The job `id` of this store only.
    pub fn job(&self, id: impl Into<String>) -> BlockingJobHandle {
        BlockingJobHandle::new(self.store.job(id), self.runtime.clone())
    }

    /// See [`StoreHandle::get_jobs`].
    ///
    /// # Errors
    /// As [`StoreHandle::get_jobs`].
    pub fn get_jobs(&self) -> Result<Vec<Job>> {
        self.call(|s| async move { s.get_jobs().await })
    }

    /// See [`StoreHandle::remove_all_jobs`].
    ///
    /// # Errors
    /// As [`StoreHandle::remove_all_jobs`].
    pub fn remove_all_jobs(&self) -> Result<()> {
        self.call(|s| async move { s.remove_all_jobs().await })
    }

    /// See [`StoreHandle::jobs_table`].
    ///
    /// # Errors
    /// As [`StoreHandle::jobs_table`].
    pub fn jobs_table(&self) -> Result<String> {
        self.call(|s| async move { s.jobs_table().await })
    }
}
