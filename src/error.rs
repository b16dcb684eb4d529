//! The crate's error types.
//!
//! [`TriggerError`] is what building or evaluating a trigger can fail with; [`Error`] is
//! everything else a scheduler call can return. Both say what went wrong and, where there is
//! one, what to do about it.

/// A trigger could not be built, parsed or evaluated.
///
/// Every message names the field or parameter, the value given, why it is wrong and what is
/// allowed, e.g. `day_of_week: 'foo' is not a weekday (mon, tue, wed, thu, fri, sat, sun)` or
/// `month: '13' is out of range: 13 is above the maximum 12 (allowed: 1-12)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TriggerError {
    /// A cron field expression is invalid.
    #[error("{field}: '{expr}' {reason}")]
    InvalidField {
        /// The field name (`day_of_week`, `hour`, ...).
        field: String,
        /// The expression as given.
        expr: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A parameter other than a cron field is invalid (a date, an interval, a zone, ...).
    #[error("{param}: {reason}")]
    InvalidParam {
        /// The parameter name (`start_date`, `seconds`, `timezone`, ...).
        param: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A crontab string could not be parsed.
    #[error("invalid crontab '{expr}': {reason}")]
    InvalidCrontab {
        /// The crontab string as given.
        expr: String,
        /// Why it is invalid.
        reason: String,
    },
    /// Evaluating the trigger gave up (e.g. an `and` whose children never agree).
    #[error("trigger evaluation gave up: {0}")]
    GaveUp(String),
}

/// Everything a scheduler, store or executor call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A trigger was invalid or could not be evaluated.
    #[error(transparent)]
    Trigger(#[from] TriggerError),
    /// `add_job` with an id that already exists and `replace_existing` not set.
    #[error("a job with id '{0}' already exists (set replace_existing to overwrite it)")]
    ConflictingId(String),
    /// No job with this id (in the named store, if one was given).
    #[error("no job with id '{0}' (get_jobs lists the jobs; a job whose trigger has no fire time left is removed)")]
    JobLookup(String),
    /// No store with this alias is configured.
    #[error("no job store named '{0}' (add it with add_store or the builder)")]
    UnknownStore(String),
    /// No executor with this alias is configured.
    #[error("no executor named '{0}' (add it with add_executor or the builder)")]
    UnknownExecutor(String),
    /// A store or executor alias is already taken.
    #[error(
        "the alias '{0}' is already in use (pick another alias, or remove the existing one first)"
    )]
    AliasInUse(String),
    /// The operation does not fit the scheduler's current state.
    #[error("scheduler is {actual}, but this needs it to be {needed}")]
    State {
        /// The state the operation needs.
        needed: &'static str,
        /// The state the scheduler is in.
        actual: &'static str,
    },
    /// A job cannot go where it was asked to (e.g. a closure job in a persistent store).
    #[error("job '{id}': {reason}")]
    InvalidJob {
        /// The job id.
        id: String,
        /// What is wrong and what to do instead.
        reason: String,
    },
    /// A store URL names no store this build can open.
    #[error("cannot open store '{url}': {reason}")]
    InvalidStoreUrl {
        /// The URL as given.
        url: String,
        /// Why, and what to do.
        reason: String,
    },
    /// A named task is not registered with the scheduler.
    #[error("no task named '{0}' is registered (register it with SchedulerBuilder::task)")]
    UnknownTask(String),
    /// A job store failed; the message says which store and what it was doing.
    #[error("job store '{store}': {message}")]
    Store {
        /// The store alias.
        store: String,
        /// What failed.
        message: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A stored job record could not be read (corrupt or from an unknown task); it was kept.
    #[error("stored job '{id}' could not be loaded and was left untouched: {reason} (fix or remove the record in the store)")]
    CorruptJob {
        /// The job id.
        id: String,
        /// Why it could not be loaded.
        reason: String,
    },
    /// A write was refused because another scheduler changed the job since it was read.
    #[error("job '{0}' was changed by another scheduler since it was read; the write was refused (read the job again and retry)")]
    Fenced(String),
    /// The store or scheduler cannot do this (a custom store without a run ledger asked for
    /// runs, a run ledger turned off).
    #[error("not supported: {0}")]
    Unsupported(String),
    /// No run with this id is in the ledger (it may have been pruned by the retention).
    #[error("no run with id {0} in the ledger (finished runs are pruned per RunRetention)")]
    RunLookup(crate::RunId),
    /// (De)serialising a job's arguments, result or trigger failed.
    #[error("serialisation failed: {0} (task arguments and results must be JSON-serialisable)")]
    Serde(#[from] serde_json::Error),
    /// A scheduler config is invalid: every problem, each with its path (`config` feature).
    #[cfg(feature = "config")]
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// An I/O error (e.g. spawning a child process).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Error {
    /// A store's run ledger was used before a scheduler started the store (its identity
    /// comes with the start).
    pub(crate) fn store_not_started() -> Error {
        Error::State {
            needed: "started (a store records runs once a scheduler starts it)",
            actual: "not started",
        }
    }
}

/// `Result` with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
