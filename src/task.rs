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

/// A registered task body: takes JSON arguments.
#[derive(Clone)]
pub(crate) enum TaskFn {
    /// Runs as a Tokio task.
    Async(Arc<dyn Fn(serde_json::Value) -> BoxFuture<'static, JobResult> + Send + Sync>),
    /// Runs on a blocking thread.
    Blocking(Arc<dyn Fn(serde_json::Value) -> JobResult + Send + Sync>),
}

impl fmt::Debug for TaskFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskFn::Async(_) => f.write_str("TaskFn::Async"),
            TaskFn::Blocking(_) => f.write_str("TaskFn::Blocking"),
        }
    }
}

impl TaskFn {
    /// Wraps an async task taking deserialisable arguments.
    pub(crate) fn from_async<A, F, Fut, R>(f: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        F: Fn(A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoJobResult,
    {
        TaskFn::Async(Arc::new(move |args| {
            match serde_json::from_value::<A>(args) {
                Ok(a) => {
                    let fut = f(a);
                    Box::pin(async move { fut.await.into_job_result() })
                }
                Err(e) => Box::pin(async move { Err(bad_args(e)) }),
            }
        }))
    }

    /// Wraps a blocking task taking deserialisable arguments.
    pub(crate) fn from_blocking<A, F, R>(f: F) -> Self
    where
        A: DeserializeOwned + 'static,
        F: Fn(A) -> R + Send + Sync + 'static,
        R: IntoJobResult,
    {
        TaskFn::Blocking(Arc::new(move |args| {
            match serde_json::from_value::<A>(args) {
                Ok(a) => f(a).into_job_result(),
                Err(e) => Err(bad_args(e)),
            }
        }))
    }
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
