//! The shapes a job body may have: with or without a [`JobContext`] argument, chosen by the
//! closure's arity (as axum chooses a handler's extractors). One trait per kind of body
//! ([`AsyncJobFn`], [`BlockingJobFn`], [`LocalJobFn`], and for registered tasks
//! [`AsyncTaskFn`], [`BlockingTaskFn`]); the marker type `M` is inferred and names the
//! shape (`fn() -> Fut` or `fn(JobContext) -> Fut`), so callers never write it.

use std::future::Future;

use serde::de::DeserializeOwned;

use crate::job::callable::Callable;
use crate::job::context::JobContext;
use crate::job::outcome::IntoJobResult;
use crate::task::TaskFn;

/// An async job body for [`Scheduler::add_job`](crate::Scheduler::add_job): a closure
/// `Fn() -> impl Future` or `Fn(JobContext) -> impl Future` (`Send`), whose output is any
/// [`IntoJobResult`].
///
/// ```
/// # use apsched::{JobContext, Scheduler};
/// # async fn demo(scheduler: Scheduler) -> apsched::Result<()> {
/// scheduler.add_job(|| async { println!("no context") }).await?;
/// scheduler
///     .add_job(|ctx: JobContext| async move { println!("run {} of {}", ctx.run_id(), ctx.job_id()) })
///     .await?;
/// # Ok(()) }
/// ```
pub trait AsyncJobFn<M>: Send + Sync + 'static {
    /// The callable a job with this body holds.
    fn into_callable(self) -> Callable;
}

impl<F, Fut> AsyncJobFn<fn() -> Fut> for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: IntoJobResult,
{
    fn into_callable(self) -> Callable {
        Callable::from_async(self)
    }
}

impl<F, Fut> AsyncJobFn<fn(JobContext) -> Fut> for F
where
    F: Fn(JobContext) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: IntoJobResult,
{
    fn into_callable(self) -> Callable {
        Callable::from_async_with_context(self)
    }
}

/// A blocking job body for [`Scheduler::add_blocking_job`](crate::Scheduler::add_blocking_job):
/// `Fn() -> R` or `Fn(JobContext) -> R`. A blocking body that wants to stop early checks
/// [`JobContext::is_cancelled`] between steps: a thread cannot be interrupted.
///
/// ```
/// # use apsched::{JobContext, Scheduler};
/// # async fn demo(scheduler: Scheduler) -> apsched::Result<()> {
/// scheduler
///     .add_blocking_job(|ctx: JobContext| {
///         for _step in 0..10 {
///             if ctx.is_cancelled() {
///                 return Err("cancelled");
///             }
///             std::thread::sleep(std::time::Duration::from_millis(1));
///         }
///         Ok(())
///     })
///     .await?;
/// # Ok(()) }
/// ```
pub trait BlockingJobFn<M>: Send + Sync + 'static {
    /// The callable a job with this body holds.
    fn into_callable(self) -> Callable;
}

impl<F, R> BlockingJobFn<fn() -> R> for F
where
    F: Fn() -> R + Send + Sync + 'static,
    R: IntoJobResult,
{
    fn into_callable(self) -> Callable {
        Callable::from_blocking(self)
    }
}

impl<F, R> BlockingJobFn<fn(JobContext) -> R> for F
where
    F: Fn(JobContext) -> R + Send + Sync + 'static,
    R: IntoJobResult,
{
    fn into_callable(self) -> Callable {
        Callable::from_blocking_with_context(self)
    }
}

/// A job body whose future is `!Send`, for
/// [`Scheduler::add_local_job`](crate::Scheduler::add_local_job): `Fn() -> impl Future` or
/// `Fn(JobContext) -> impl Future`.
pub trait LocalJobFn<M>: Send + Sync + 'static {
    /// The callable a job with this body holds.
    fn into_callable(self) -> Callable;
}

impl<F, Fut> LocalJobFn<fn() -> Fut> for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future + 'static,
    Fut::Output: IntoJobResult,
{
    fn into_callable(self) -> Callable {
        Callable::from_local(self)
    }
}

impl<F, Fut> LocalJobFn<fn(JobContext) -> Fut> for F
where
    F: Fn(JobContext) -> Fut + Send + Sync + 'static,
    Fut: Future + 'static,
    Fut::Output: IntoJobResult,
{
    fn into_callable(self) -> Callable {
        Callable::from_local_with_context(self)
    }
}

/// An async registered task for [`SchedulerBuilder::task`](crate::SchedulerBuilder::task):
/// `Fn(A) -> impl Future` or `Fn(A, JobContext) -> impl Future`, where `A` deserialises from
/// the job's JSON arguments.
///
/// ```
/// # use apsched::{JobContext, Scheduler};
/// let builder = Scheduler::builder()
///     .task("plain", |n: u32| async move { n + 1 })
///     .task("with_context", |n: u32, ctx: JobContext| async move {
///         format!("{n} for job {}", ctx.job_id())
///     });
/// ```
pub trait AsyncTaskFn<M>: Send + Sync + 'static {
    /// The registered form.
    #[doc(hidden)]
    fn into_task(self) -> TaskFn;
}

impl<F, A, Fut> AsyncTaskFn<fn(A) -> Fut> for F
where
    A: DeserializeOwned + Send + 'static,
    F: Fn(A) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: IntoJobResult,
{
    fn into_task(self) -> TaskFn {
        TaskFn::from_async_parts(move |a: A, _| Some(self(a)), false)
    }
}

impl<F, A, Fut> AsyncTaskFn<fn(A, JobContext) -> Fut> for F
where
    A: DeserializeOwned + Send + 'static,
    F: Fn(A, JobContext) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: IntoJobResult,
{
    fn into_task(self) -> TaskFn {
        TaskFn::from_async_parts(
            move |a: A, ctx: Option<JobContext>| ctx.map(|c| self(a, c)),
            true,
        )
    }
}

/// A blocking registered task for
/// [`SchedulerBuilder::blocking_task`](crate::SchedulerBuilder::blocking_task): `Fn(A) -> R`
/// or `Fn(A, JobContext) -> R`.
pub trait BlockingTaskFn<M>: Send + Sync + 'static {
    /// The registered form.
    #[doc(hidden)]
    fn into_task(self) -> TaskFn;
}

impl<F, A, R> BlockingTaskFn<fn(A) -> R> for F
where
    A: DeserializeOwned + 'static,
    F: Fn(A) -> R + Send + Sync + 'static,
    R: IntoJobResult,
{
    fn into_task(self) -> TaskFn {
        TaskFn::from_blocking_parts(move |a: A, _| Some(self(a)), false)
    }
}

impl<F, A, R> BlockingTaskFn<fn(A, JobContext) -> R> for F
where
    A: DeserializeOwned + 'static,
    F: Fn(A, JobContext) -> R + Send + Sync + 'static,
    R: IntoJobResult,
{
    fn into_task(self) -> TaskFn {
        TaskFn::from_blocking_parts(
            move |a: A, ctx: Option<JobContext>| ctx.map(|c| self(a, c)),
            true,
        )
    }
}
