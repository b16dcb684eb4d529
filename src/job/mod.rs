//! Jobs: what to run, when, and with which options.
//!
//! [`Job`] is the read-only view the scheduler hands out (`get_job`, `get_jobs`), with the
//! options every job has ([`JobDefaults`]); [`JobRecord`] is what a store keeps, and
//! [`Callable`] what a run invokes; a run's outcome is a [`JobResult`]. The due-run rule
//! every store applies when it claims a due job is
//! [`DueJob::claim`](crate::store::DueJob::claim).

mod callable;
mod context;
mod defaults;
mod due;
mod job_fn;
pub(crate) mod opt_secs;
pub(crate) mod outcome;
mod overlap;
mod record;
mod retry;
mod view;

pub use self::callable::{
    AsyncContextFn, AsyncFn, BlockingContextFn, BlockingFn, Callable, LocalContextFn, LocalFn,
    StoredCallable,
};
pub use self::context::{JobContext, RunId};
pub(crate) use self::context::{JobIdState, RunIdState};
pub use self::defaults::JobDefaults;
pub(crate) use self::due::advance;
pub use self::due::WALK_BEFORE_SKIP;
pub use self::job_fn::{AsyncJobFn, AsyncTaskFn, BlockingJobFn, BlockingTaskFn, LocalJobFn};
pub use self::outcome::{IntoJobResult, JobError, JobResult};
pub use self::overlap::Overlap;
pub(crate) use self::record::{executor_alias, DEFAULT_EXECUTOR};
pub use self::record::{JobRecord, Lease, StoredJob, KEPT_FOR_RETRIES};
pub use self::retry::{Backoff, RetryPolicy};
pub use self::view::Job;
