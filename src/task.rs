//! Named tasks: job bodies registered by name, so that persistent jobs can refer to them.
//!
//! A closure cannot be written to a database, so a persistent job names a task registered
//! on the scheduler ([`SchedulerBuilder::task`](crate::SchedulerBuilder::task) or
//! [`blocking_task`](crate::SchedulerBuilder::blocking_task)) and carries its arguments as
//! JSON. Every scheduler process sharing a store registers the same tasks.
//!
//! The registry is the scheduler's own: a store sees it only in
//! [`StoreContext`](crate::store::StoreContext), to ask whether a stored job's task exists.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;

use crate::job::outcome::{IntoJobResult, JobError, JobResult};
use crate::job::{AsyncTaskFn, BlockingTaskFn, JobContext};

/// The body of a task: takes JSON arguments and, if the task asks for one, its run's
/// [`JobContext`] (`None` only where no run exists to describe).
type AsyncBody = Arc<
    dyn Fn(serde_json::Value, Option<JobContext>) -> BoxFuture<'static, JobResult> + Send + Sync,
>;
type BlockingBody = Arc<dyn Fn(serde_json::Value, Option<JobContext>) -> JobResult + Send + Sync>;

/// A registered task body: takes JSON arguments (and its run's context if `context`).
///
/// `pub` only to appear in the [`AsyncTaskFn`](crate::job::AsyncTaskFn) traits' hidden
/// method; this module is private, so it cannot be named outside the crate.
#[derive(Clone)]
#[doc(hidden)]
pub enum TaskFn {
    /// Runs as a Tokio task.
    Async {
        /// The body.
        f: AsyncBody,
        /// Whether it takes a [`JobContext`].
        context: bool,
    },
    /// Runs on a blocking thread.
    Blocking {
        /// The body.
        f: BlockingBody,
        /// Whether it takes a [`JobContext`].
        context: bool,
    },
}

impl fmt::Debug for TaskFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskFn::Async { .. } => f.write_str("TaskFn::Async"),
            TaskFn::Blocking { .. } => f.write_str("TaskFn::Blocking"),
        }
    }
}

impl TaskFn {
    /// Wraps an async task taking deserialisable arguments (with or without a context).
    pub(crate) fn from_async<M>(f: impl AsyncTaskFn<M>) -> Self {
        f.into_task()
    }

    /// Wraps a blocking task taking deserialisable arguments (with or without a context).
    pub(crate) fn from_blocking<M>(f: impl BlockingTaskFn<M>) -> Self {
        f.into_task()
    }

    /// Whether the task takes its run's [`JobContext`].
    pub(crate) fn takes_context(&self) -> bool {
        match self {
            TaskFn::Async { context, .. } | TaskFn::Blocking { context, .. } => *context,
        }
    }

    /// The async form of a task: `f` gets the arguments and the context, and returns `None`
    /// when it needs a context and got none. `context` says whether it reads the context.
    pub(crate) fn from_async_parts<A, F, Fut>(f: F, context: bool) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        F: Fn(A, Option<JobContext>) -> Option<Fut> + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: IntoJobResult,
    {
        TaskFn::Async {
            f: Arc::new(move |args, ctx| match serde_json::from_value::<A>(args) {
                Ok(a) => match f(a, ctx) {
                    Some(fut) => Box::pin(async move { fut.await.into_job_result() }),
                    None => Box::pin(async { Err(no_context()) }),
                },
                Err(e) => Box::pin(async move { Err(bad_args(e)) }),
            }),
            context,
        }
    }

    /// The blocking form of a task (see [`from_async_parts`](Self::from_async_parts)).
    pub(crate) fn from_blocking_parts<A, F, R>(f: F, context: bool) -> Self
    where
        A: DeserializeOwned + 'static,
        F: Fn(A, Option<JobContext>) -> Option<R> + Send + Sync + 'static,
        R: IntoJobResult,
    {
        TaskFn::Blocking {
            f: Arc::new(move |args, ctx| match serde_json::from_value::<A>(args) {
                Ok(a) => f(a, ctx).map_or_else(|| Err(no_context()), R::into_job_result),
                Err(e) => Err(bad_args(e)),
            }),
            context,
        }
    }
}

fn no_context() -> JobError {
    JobError::not_runnable("this task takes a JobContext, and none was given to it")
}

fn bad_args(e: serde_json::Error) -> JobError {
    JobError::not_runnable(format!("the task's arguments do not deserialise: {e}"))
}

/// The tasks registered on a scheduler, by name.
///
/// Register tasks with [`SchedulerBuilder::task`](crate::SchedulerBuilder::task) and
/// [`blocking_task`](crate::SchedulerBuilder::blocking_task); a store reaches this through
/// [`StoreContext`](crate::store::StoreContext) to ask whether a task exists.
#[derive(Debug, Clone, Default)]
pub(crate) struct TaskRegistry {
    tasks: HashMap<String, TaskFn>,
}

impl TaskRegistry {
    /// An empty registry. Public only for building a `StoreContext` by hand in tests.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Registers (or replaces) `name`. Public only for building a `StoreContext` by hand in
    /// tests.
    pub(crate) fn insert(&mut self, name: impl Into<String>, f: TaskFn) {
        self.tasks.insert(name.into(), f);
    }

    /// The task registered as `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&TaskFn> {
        self.tasks.get(name)
    }

    /// Whether `name` is registered.
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.tasks.contains_key(name)
    }
}
