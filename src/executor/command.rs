//! External commands as job bodies.

use std::fmt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::job::{JobError, JobResult};

/// How much of a child's stdout (as the return value) and stderr (in errors) is kept.
const TAIL_BYTES: usize = 4096;

/// An external command to run as a job: program, arguments, environment, working
/// directory and timeout. Serialisable, so command jobs can live in persistent stores.
///
/// ```
/// use std::time::Duration;
/// use apsched::executor::CommandSpec;
///
/// let cmd = CommandSpec::new("pg_dump")
///     .arg("--file=/backups/db.sql")
///     .env("PGDATABASE", "app")
///     .timeout(Duration::from_secs(600));
/// assert_eq!(cmd.to_string(), "pg_dump --file=/backups/db.sql");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandSpec {
    /// The program to run (looked up on `PATH` when it has no slash).
    pub program: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory (the scheduler's when `None`).
    #[serde(default)]
    pub current_dir: Option<PathBuf>,
    /// Kill the child after this long.
    #[serde(default, with = "crate::job::opt_secs")]
    pub timeout: Option<Duration>,
}

impl CommandSpec {
    /// A command running `program` with no arguments.
    pub fn new(program: impl Into<String>) -> Self {
        CommandSpec {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            current_dir: None,
            timeout: None,
        }
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable for the child.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Runs the child in `dir`.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.current_dir = Some(dir.into());
        self
    }

    /// Kills the child if it runs longer than `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Runs the command to completion. Success returns its stdout (the last 4 KiB, as a
    /// string); failure is [`JobError::Exited`] or [`JobError::TimedOut`].
    pub async fn run(&self) -> JobResult {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A timed-out (dropped) run must not leave its child behind.
            .kill_on_drop(true);
        if let Some(dir) = &self.current_dir {
            cmd.current_dir(dir);
        }
        let child = cmd.spawn().map_err(|e| {
            JobError::not_runnable(format!("could not start '{}': {e}", self.program))
        })?;
        let output = match self.timeout {
            Some(t) => match tokio::time::timeout(t, child.wait_with_output()).await {
                Ok(out) => out,
                Err(_) => {
                    return Err(JobError::TimedOut {
                        seconds: t.as_secs_f64(),
                    })
                }
            },
            None => child.wait_with_output().await,
        }
        .map_err(|e| JobError::not_runnable(format!("waiting for '{}': {e}", self.program)))?;
        if output.status.success() {
            Ok(serde_json::Value::String(tail(&output.stdout)))
        } else {
            #[cfg(unix)]
            let signal = std::os::unix::process::ExitStatusExt::signal(&output.status);
            #[cfg(not(unix))]
            let signal = None;
            Err(JobError::Exited {
                code: output.status.code(),
                signal,
                stderr_tail: tail(&output.stderr),
            })
        }
    }
}

/// The last [`TAIL_BYTES`] of `bytes` as (lossy) UTF-8, trimmed.
fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(TAIL_BYTES);
    String::from_utf8_lossy(&bytes[start..]).trim().to_string()
}

impl fmt::Display for CommandSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.program)?;
        for a in &self.args {
            write!(f, " {a}")?;
        }
        Ok(())
    }
}
