//! What a run of a job invokes ([`Callable`]), and its serialisable form for persistent
//! stores ([`StoredCallable`]).

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures::future::{BoxFuture, LocalBoxFuture};
use serde::{Deserialize, Serialize};

use crate::executor::process::command::CommandSpec;
use crate::job::context::JobContext;
use crate::job::outcome::{IntoJobResult, JobResult};

/// An async job body.
pub type AsyncFn = Arc<dyn Fn() -> BoxFuture<'static, JobResult> + Send + Sync>;
/// A blocking job body (runs on a thread pool).
pub type BlockingFn = Arc<dyn Fn() -> JobResult + Send + Sync>;
/// A job body whose future is `!Send` (runs on the local executor's `LocalSet`).
pub type LocalFn = Arc<dyn Fn() -> LocalBoxFuture<'static, JobResult> + Send + Sync>;

/// An async job body taking its run's [`JobContext`].
pub type AsyncContextFn = Arc<dyn Fn(JobContext) -> BoxFuture<'static, JobResult> + Send + Sync>;
/// A blocking job body taking its run's [`JobContext`].
pub type BlockingContextFn = Arc<dyn Fn(JobContext) -> JobResult + Send + Sync>;
/// A `!Send` job body taking its run's [`JobContext`].
pub type LocalContextFn =
    Arc<dyn Fn(JobContext) -> LocalBoxFuture<'static, JobResult> + Send + Sync>;

/// What a run of a job invokes.
#[derive(Clone)]
#[non_exhaustive]
pub enum Callable {
    /// An async closure (in-process; memory store only).
    Async(AsyncFn),
    /// A blocking closure (in-process; memory store only).
    Blocking(BlockingFn),
    /// A closure producing a `!Send` future (in-process; memory store only).
    Local(LocalFn),
    /// An async closure taking its run's [`JobContext`].
    AsyncWithContext(AsyncContextFn),
    /// A blocking closure taking its run's [`JobContext`].
    BlockingWithContext(BlockingContextFn),
    /// A closure taking its run's [`JobContext`] and producing a `!Send` future.
    LocalWithContext(LocalContextFn),
    /// An external command run in a child process (persistable). Boxed to keep every job's
    /// callable small.
    Command(Box<CommandSpec>),
    /// A task registered by name with JSON arguments (persistable).
    Task {
        /// The registered task name.
        name: String,
        /// Its arguments.
        args: serde_json::Value,
    },
}

impl Callable {
    /// Wraps an async closure.
    pub fn from_async<F, Fut, R>(f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoJobResult,
    {
        Callable::Async(Arc::new(move || {
            let fut = f();
            Box::pin(async move { fut.await.into_job_result() })
        }))
    }

    /// Wraps a blocking closure.
    pub fn from_blocking<F, R>(f: F) -> Self
    where
        F: Fn() -> R + Send + Sync + 'static,
        R: IntoJobResult,
    {
        Callable::Blocking(Arc::new(move || f().into_job_result()))
    }

    /// Wraps a closure whose future is `!Send`.
    pub fn from_local<F, Fut, R>(f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + 'static,
        R: IntoJobResult,
    {
        Callable::Local(Arc::new(move || {
            let fut = f();
            Box::pin(async move { fut.await.into_job_result() })
        }))
    }

    /// Wraps an async closure taking its run's [`JobContext`].
    pub fn from_async_with_context<F, Fut, R>(f: F) -> Self
    where
        F: Fn(JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoJobResult,
    {
        Callable::AsyncWithContext(Arc::new(move |ctx| {
            let fut = f(ctx);
            Box::pin(async move { fut.await.into_job_result() })
        }))
    }

    /// Wraps a blocking closure taking its run's [`JobContext`].
    pub fn from_blocking_with_context<F, R>(f: F) -> Self
    where
        F: Fn(JobContext) -> R + Send + Sync + 'static,
        R: IntoJobResult,
    {
        Callable::BlockingWithContext(Arc::new(move |ctx| f(ctx).into_job_result()))
    }

    /// Wraps a closure taking its run's [`JobContext`] whose future is `!Send`.
    pub fn from_local_with_context<F, Fut, R>(f: F) -> Self
    where
        F: Fn(JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + 'static,
        R: IntoJobResult,
    {
        Callable::LocalWithContext(Arc::new(move |ctx| {
            let fut = f(ctx);
            Box::pin(async move { fut.await.into_job_result() })
        }))
    }

    /// Whether the body takes a [`JobContext`] (for a task: whether the registered task
    /// does, which only the scheduler's registry knows, so `false` here).
    pub(crate) fn takes_context(&self) -> bool {
        matches!(
            self,
            Callable::AsyncWithContext(_)
                | Callable::BlockingWithContext(_)
                | Callable::LocalWithContext(_)
        )
    }

    /// Whether the body's future is `!Send` (only a local executor runs it).
    pub(crate) fn is_local(&self) -> bool {
        matches!(self, Callable::Local(_) | Callable::LocalWithContext(_))
    }

    /// A short description, for tables and logs.
    pub fn describe(&self) -> String {
        match self {
            Callable::Async(_) => "<async fn>".into(),
            Callable::Blocking(_) => "<blocking fn>".into(),
            Callable::Local(_) => "<local fn>".into(),
            Callable::AsyncWithContext(_) => "<async fn(JobContext)>".into(),
            Callable::BlockingWithContext(_) => "<blocking fn(JobContext)>".into(),
            Callable::LocalWithContext(_) => "<local fn(JobContext)>".into(),
            Callable::Command(c) => c.to_string(),
            Callable::Task { name, .. } => format!("task {name}"),
        }
    }

    /// Whether this callable can be written to a persistent store.
    pub fn is_persistable(&self) -> bool {
        matches!(self, Callable::Command(_) | Callable::Task { .. })
    }
}

impl fmt::Debug for Callable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// The serialisable form of a persistable [`Callable`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum StoredCallable {
    /// A registered task.
    Task {
        /// Task name.
        name: String,
        /// Arguments.
        #[serde(default)]
        args: serde_json::Value,
    },
    /// An external command.
    Command(CommandSpec),
}

impl TryFrom<&Callable> for StoredCallable {
    type Error = String;
    fn try_from(c: &Callable) -> Result<Self, String> {
        match c {
            Callable::Task { name, args } => Ok(StoredCallable::Task {
                name: name.clone(),
                args: args.clone(),
            }),
            Callable::Command(cmd) => Ok(StoredCallable::Command((**cmd).clone())),
            _ => Err(
                "a closure cannot be stored in a persistent job store; register a task \
                 (SchedulerBuilder::task) and add the job with Scheduler::add_task_job, or use \
                 the memory store"
                    .into(),
            ),
        }
    }
}

impl From<StoredCallable> for Callable {
    fn from(s: StoredCallable) -> Self {
        match s {
            StoredCallable::Task { name, args } => Callable::Task { name, args },
            StoredCallable::Command(c) => Callable::Command(Box::new(c)),
        }
    }
}
