//! External commands as job bodies.

use std::fmt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::job::outcome::{JobError, JobResult};

/// How much of a child's stdout (as the return value) and stderr (in errors) is kept.
pub(crate) const TAIL_BYTES: usize = 4096;

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
    /// Stop the child after this long: SIGTERM, then SIGKILL after a grace period (see
    /// [`CommandSpec::run`]).
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

    /// Stops the child if it runs longer than `timeout`: SIGTERM, then SIGKILL if it is
    /// still running after a grace period (see [`run`](Self::run)).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Runs the command to completion. Success returns its stdout (the last 4 KiB, as a
    /// string); failure is [`JobError::Exited`] or [`JobError::TimedOut`].
    ///
    /// Past its [`timeout`](Self::timeout) the child is sent SIGTERM, so that it can clean
    /// up, and SIGKILL if it is still running 5 s later; either way it is reaped before
    /// this returns. (On the [`ProcessExecutor`](crate::executor::ProcessExecutor) the grace
    /// is the scheduler's [`timeout_grace`](crate::SchedulerBuilder::timeout_grace)
    /// instead. Other platforms than Unix have no SIGTERM: the child is killed at once.)
    pub async fn run(&self) -> JobResult {
        self.run_with(None, DEFAULT_KILL_GRACE).await
    }

    /// [`run`](Self::run), with `grace` between SIGTERM and SIGKILL past the command's own
    /// timeout, and the child sent SIGTERM as soon as `token` (the run's) is cancelled.
    pub(crate) async fn run_with(
        &self,
        token: Option<&CancellationToken>,
        grace: Duration,
    ) -> JobResult {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(dir) = &self.current_dir {
            cmd.current_dir(dir);
        }
        let stop = Stop {
            timeout: self.timeout,
            grace,
            token,
        };
        let output = run_child(cmd, &self.program, None, stop, TAIL_BYTES).await?;
        if output.status.success() {
            Ok(serde_json::Value::String(tail(&output.stdout)))
        } else {
            Err(exit_error(&output))
        }
    }
}

/// How long a child past its own timeout has between SIGTERM and SIGKILL when it is run
/// outside a process executor ([`CommandSpec::run`]); the same as the scheduler's default
/// [`timeout_grace`](crate::SchedulerBuilder::timeout_grace).
pub(crate) const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(5);

/// When a child is stopped before it ends on its own.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stop<'a> {
    /// Its own limit (`CommandSpec::timeout`, the worker mode's timeout): once past it the
    /// child gets SIGTERM, then SIGKILL after `grace`, and the run is
    /// [`JobError::TimedOut`].
    pub timeout: Option<Duration>,
    /// How long a child past its own timeout has between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// The run's token: once it is cancelled the child gets SIGTERM. Killing it after the
    /// grace is left to the run's supervisor, which drops this future (`kill_on_drop`).
    pub token: Option<&'a CancellationToken>,
}

impl Stop<'_> {
    /// Only the child's own `timeout`, with the default grace, no token.
    #[cfg(test)]
    fn after(timeout: Option<Duration>) -> Self {
        Stop {
            timeout,
            grace: DEFAULT_KILL_GRACE,
            token: None,
        }
    }
}

/// What a finished child left: its status and the tails of its output.
#[derive(Debug)]
pub(crate) struct ChildOutput {
    pub status: ExitStatus,
    /// The last `stdout_limit` bytes of stdout.
    pub stdout: Vec<u8>,
    /// The last [`TAIL_BYTES`] of stderr.
    pub stderr: Vec<u8>,
}

/// Runs a child to completion with piped stdout/stderr, `stdin` written to it (or
/// `/dev/null`), stopped as `stop` says.
///
/// The timeout covers the whole run: writing the input, reading the output and waiting, so
/// a child that never reads its input cannot hold its slot forever. Input and output move
/// concurrently (a child that writes before it reads cannot deadlock against us), and only
/// the last `stdout_limit` bytes of stdout and [`TAIL_BYTES`] of stderr are kept while
/// reading, so a chatty child cannot exhaust memory.
pub(crate) async fn run_child(
    mut cmd: tokio::process::Command,
    program: &str,
    stdin: Option<Vec<u8>>,
    stop: Stop<'_>,
    stdout_limit: usize,
) -> Result<ChildOutput, JobError> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    // A run dropped while its child runs must not leave the child behind.
    .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| JobError::not_runnable(format!("could not start '{program}': {e}")))?;
    let pid = child.id();
    let (pipe_in, pipe_out, pipe_err) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let io = async {
        let write = async {
            if let (Some(input), Some(mut pipe)) = (stdin, pipe_in) {
                // A child that exits without reading its input is not an error here; its
                // exit status tells what happened.
                let _ = pipe.write_all(&input).await;
            }
        };
        let (_, out, err) = tokio::join!(
            write,
            read_tail(pipe_out, stdout_limit),
            read_tail(pipe_err, TAIL_BYTES)
        );
        (out, err)
    };
    // The pipes and the exit are awaited apart, so that past the timeout only the exit is
    // waited for while the output is still read (a child writing as it cleans up must not
    // die of a closed pipe). The child is signalled only while its exit is unknown: once
    // `wait` has reaped it, its pid may belong to another process.
    let mut io = std::pin::pin!(io);
    let (mut output, mut exit) = (None, None);
    let expired = async {
        match stop.timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let cancelled = async {
        match stop.token {
            Some(token) => token.cancelled().await,
            None => std::future::pending().await,
        }
    };
    let (mut expired, mut cancelled) = (std::pin::pin!(expired), std::pin::pin!(cancelled));
    // Whether the run's cancellation was seen, and whether the child was sent SIGTERM.
    let (mut cancel_seen, mut terminated) = (false, false);
    loop {
        if exit.is_some() && output.is_some() {
            break;
        }
        tokio::select! {
            biased;
            status = child.wait(), if exit.is_none() => exit = Some(status),
            out = &mut io, if output.is_none() => output = Some(out),
            () = &mut expired => break,
            () = &mut cancelled, if !cancel_seen && exit.is_none() => {
                cancel_seen = true;
                terminated = terminate(pid);
            }
        }
    }
    let (mut exit, mut output) = match (exit, output) {
        (Some(status), Some((stdout, stderr))) => {
            let status = status
                .map_err(|e| JobError::not_runnable(format!("waiting for '{program}': {e}")))?;
            return Ok(ChildOutput {
                status,
                stdout,
                stderr,
            });
        }
        unfinished => unfinished,
    };
    // Past its own timeout.
    if exit.is_none() && (terminated || terminate(pid)) {
        // Its grace: it ends on SIGTERM, or is killed below.
        let grace = tokio::time::sleep(stop.grace);
        let mut grace = std::pin::pin!(grace);
        loop {
            tokio::select! {
                biased;
                status = child.wait() => {
                    exit = Some(status);
                    break;
                }
                out = &mut io, if output.is_none() => output = Some(out),
                () = &mut grace => break,
            }
        }
    }
    if exit.is_none() {
        // Kill and reap it.
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    Err(JobError::TimedOut {
        seconds: stop.timeout.unwrap_or_default().as_secs_f64(),
    })
}

/// Asks child `pid` to stop (SIGTERM). Call only while the child is not reaped, so that the
/// pid is still its. Returns whether the request was sent.
#[cfg(unix)]
fn terminate(pid: Option<u32>) -> bool {
    let Some(pid) = pid.and_then(|p| libc::pid_t::try_from(p).ok()) else {
        return false;
    };
    // SAFETY: `kill` takes plain integers and touches no memory of ours; the caller
    // guarantees the pid is still our unreaped child's.
    unsafe { libc::kill(pid, libc::SIGTERM) == 0 }
}

/// Other platforms have no SIGTERM: the child is killed when its grace would start.
#[cfg(not(unix))]
fn terminate(_pid: Option<u32>) -> bool {
    false
}

/// Reads `pipe` to its end, keeping only its last `limit` bytes.
async fn read_tail(pipe: Option<impl AsyncRead + Unpin>, limit: usize) -> Vec<u8> {
    let Some(mut pipe) = pipe else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    let mut chunk = vec![0u8; 8192];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&chunk[..n]);
                // Trim only once the excess is as large as the limit: amortised O(1) a byte.
                if kept.len() > limit.saturating_mul(2).max(chunk.len()) {
                    kept.drain(..kept.len() - limit);
                }
            }
        }
    }
    if kept.len() > limit {
        kept.drain(..kept.len() - limit);
    }
    kept
}

/// The error for a child that did not exit successfully.
pub(crate) fn exit_error(output: &ChildOutput) -> JobError {
    #[cfg(unix)]
    let signal = std::os::unix::process::ExitStatusExt::signal(&output.status);
    #[cfg(not(unix))]
    let signal = None;
    JobError::Exited {
        code: output.status.code(),
        signal,
        stderr_tail: tail(&output.stderr),
    }
}

/// The last [`TAIL_BYTES`] of `bytes` as (lossy) UTF-8, trimmed.
pub(crate) fn tail(bytes: &[u8]) -> String {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{run_child, Stop, TAIL_BYTES};
    use crate::job::outcome::JobError;

    /// Issue 9, item 19: a child that never reads its (large) input is still killed at its
    /// timeout; before, the input was written before the timeout started and the write
    /// blocked forever once the pipe was full.
    #[tokio::test]
    async fn item19_the_timeout_covers_a_child_that_never_reads_its_input() {
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c").arg("sleep 30");
        let input = vec![b'x'; 8 << 20];
        let run = run_child(
            cmd,
            "sh",
            Some(input),
            Stop::after(Some(Duration::from_millis(300))),
            TAIL_BYTES,
        );
        let result = tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .expect("run_child hung past its timeout");
        assert!(
            matches!(result, Err(JobError::TimedOut { seconds }) if seconds == 0.3),
            "{result:?}"
        );
    }

    /// Output is read as it comes and only its tail is kept: 50 MB of output never sit in
    /// memory (the buffers' capacity shows the most they ever held).
    #[tokio::test]
    async fn item19_only_the_tail_of_the_output_is_kept() {
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c").arg(
            "head -c 50000000 /dev/zero | tr '\\0' a; echo; echo last; \
             head -c 50000000 /dev/zero | tr '\\0' b >&2; echo oops >&2",
        );
        let out = run_child(cmd, "sh", None, Stop::after(None), 100)
            .await
            .unwrap();
        assert_eq!(out.stdout.len(), 100);
        assert!(out.stdout.ends_with(b"a\nlast\n"));
        assert_eq!(out.stderr.len(), TAIL_BYTES);
        assert!(out.stderr.ends_with(b"boops\n"));
        assert!(
            out.stdout.capacity() <= 64 << 10,
            "{}",
            out.stdout.capacity()
        );
        assert!(
            out.stderr.capacity() <= 64 << 10,
            "{}",
            out.stderr.capacity()
        );
    }
}
