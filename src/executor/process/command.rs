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
    /// Stop the child (and what it started) after this long: SIGTERM, then SIGKILL after a
    /// grace period (see [`CommandSpec::run`]).
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
    /// The child runs in a process group of its own, and the signals below go to that
    /// group: what the child starts stops with it. Past its [`timeout`](Self::timeout) the
    /// child is sent SIGTERM, so that it can clean up, and SIGKILL if it is still running
    /// 5 s later; either way it is reaped before this returns. When it exits, what it left
    /// running in its group is sent SIGTERM, and killed if it still holds the child's
    /// output open 5 s later. (On the
    /// [`ProcessExecutor`](crate::executor::ProcessExecutor) the grace is the scheduler's
    /// [`timeout_grace`](crate::SchedulerBuilder::timeout_grace) instead. Other platforms
    /// than Unix have no process groups and no SIGTERM: the child alone is killed at once.)
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
    /// child's group gets SIGTERM, then SIGKILL after `grace`, and the run is
    /// [`JobError::TimedOut`].
    pub timeout: Option<Duration>,
    /// How long a child past its own timeout has between SIGTERM and SIGKILL; and how
    /// long what an exited child left may hold its output open.
    pub grace: Duration,
    /// The run's token: once it is cancelled the child's group gets SIGTERM. Killing it
    /// after the grace is left to the run's supervisor, which drops this future (and so
    /// kills the group).
    pub token: Option<&'a CancellationToken>,
}

impl Stop<'_> {
    /// Only the child's own `timeout`, with the default grace, no token.
    #[cfg(test)]
    fn after(timeout: Option<Duration>) -> Self {
        Self::after_with_grace(timeout, DEFAULT_KILL_GRACE)
    }

    /// Only the child's own `timeout`, with `grace`, no token.
    #[cfg(test)]
    fn after_with_grace(timeout: Option<Duration>, grace: Duration) -> Self {
        Stop {
            timeout,
            grace,
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
    // A run dropped while its child runs must not leave the child behind (its group is
    // killed too, by `Group`'s drop; this reaps the child).
    .kill_on_drop(true);
    // The child leads a process group of its own, so that stopping it stops what it
    // started too: a shell's commands, a pipeline, a worker's helpers.
    #[cfg(unix)]
    cmd.process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| JobError::not_runnable(format!("could not start '{program}': {e}")))?;
    let mut group = Group::of(child.id());
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
    let outcome = supervise(&mut child, &group, io, program, stop).await;
    // It ended here, not by being dropped: nothing more to kill.
    group.disarm();
    outcome
}

/// Waits for `child` and its output `io`, stopping its `group` as `stop` says: the body of
/// [`run_child`].
async fn supervise(
    child: &mut tokio::process::Child,
    group: &Group,
    io: impl std::future::Future<Output = (Vec<u8>, Vec<u8>)>,
    program: &str,
    stop: Stop<'_>,
) -> Result<ChildOutput, JobError> {
    // The pipes and the exit are awaited apart, so that past the timeout only the exit is
    // waited for while the output is still read (a child writing as it cleans up must not
    // die of a closed pipe).
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
    // Whether the run's cancellation was seen, and whether the group was sent SIGTERM.
    let (mut cancel_seen, mut terminated) = (false, false);
    loop {
        if exit.is_some() && output.is_some() {
            break;
        }
        tokio::select! {
            biased;
            status = child.wait(), if exit.is_none() => {
                exit = Some(status);
                // What it started and left running is stopped with it. Those that still
                // hold its output open get the grace to end, then are killed: the run
                // ends with the child, not with the last process holding a pipe.
                if group.terminate() && output.is_none() {
                    output = Some(drain(&mut io, group, stop.grace).await);
                }
            }
            out = &mut io, if output.is_none() => output = Some(out),
            () = &mut expired, if exit.is_none() => break,
            () = &mut cancelled, if !cancel_seen && exit.is_none() => {
                cancel_seen = true;
                terminated = group.terminate();
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
    if exit.is_none() && (terminated || group.terminate()) {
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
    // Kill what is left of the group, and reap the child.
    group.kill();
    if exit.is_none() {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    Err(JobError::TimedOut {
        seconds: stop.timeout.unwrap_or_default().as_secs_f64(),
    })
}

/// The output of a child that has exited while processes it left (already sent SIGTERM)
/// hold its pipes open: what `io` reads once they end within `grace`, or once they are
/// killed and end within another `grace` (none if something outside the group still
/// holds them).
async fn drain(
    io: &mut std::pin::Pin<&mut impl std::future::Future<Output = (Vec<u8>, Vec<u8>)>>,
    group: &Group,
    grace: Duration,
) -> (Vec<u8>, Vec<u8>) {
    if let Ok(out) = tokio::time::timeout(grace, io.as_mut()).await {
        return out;
    }
    group.kill();
    tokio::time::timeout(grace, io.as_mut())
        .await
        .unwrap_or_default()
}

/// A child's process group: the child leads one of its own, so a signal to the group
/// reaches the processes it started as well. Dropped while armed (the run was dropped: past
/// the job's timeout grace, or by a shutdown that does not wait), it kills the group.
///
/// A group can be signalled after its leader was reaped, while any member lives: the
/// kernel does not reuse a pid that is still a group's id. Once every member is gone the id
/// could come back only after the pid counter wraps around; the group is signalled within
/// moments of its leader's exit.
#[derive(Debug)]
struct Group {
    /// The group's id (the child's pid); `None` if it is not known.
    id: Option<i32>,
    armed: bool,
}

impl Group {
    fn of(pid: Option<u32>) -> Self {
        Group {
            // Never 0 or 1, which `kill` would read as "our own group" and "init's".
            id: pid.and_then(|p| i32::try_from(p).ok()).filter(|&p| p > 1),
            armed: true,
        }
    }

    /// Asks every process of the group to stop (SIGTERM). Returns whether any was there
    /// to ask.
    fn terminate(&self) -> bool {
        self.signal(Signal::Term)
    }

    /// Kills every process of the group (SIGKILL).
    fn kill(&self) {
        self.signal(Signal::Kill);
    }

    /// The run ended without being dropped: dropping this kills nothing.
    fn disarm(&mut self) {
        self.armed = false;
    }

    #[cfg(unix)]
    fn signal(&self, signal: Signal) -> bool {
        let Some(id) = self.id else {
            return false;
        };
        let signal = match signal {
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
        };
        // SAFETY: `kill` takes plain integers and touches no memory of ours; a negative
        // pid names the process group (see the type's note on the id's reuse).
        unsafe { libc::kill(-id, signal) == 0 }
    }

    /// Other platforms have no process groups nor SIGTERM: the child alone is killed
    /// (`kill_on_drop`, `start_kill`) when its grace would start.
    #[cfg(not(unix))]
    fn signal(&self, _signal: Signal) -> bool {
        false
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if self.armed {
            self.kill();
        }
    }
}

/// The two signals a run's processes get.
#[derive(Debug, Clone, Copy)]
enum Signal {
    Term,
    Kill,
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

    use std::path::PathBuf;

    use super::{run_child, Stop, TAIL_BYTES};
    use crate::job::outcome::JobError;

    /// `sh -c script`, where `script` may write a pid to `$PIDFILE`, and that file (in a
    /// directory of the test's own).
    fn sh_with_pidfile(test: &str, script: &str) -> (tokio::process::Command, PathBuf) {
        let dir = std::env::temp_dir().join(format!("apsched-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("pid");
        let _ = std::fs::remove_file(&pidfile);
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c").arg(script).env("PIDFILE", &pidfile);
        (cmd, pidfile)
    }

    /// The pid written to `pidfile`, once it is there.
    async fn read_pid(pidfile: &PathBuf) -> i32 {
        for _ in 0..2000 {
            let text = std::fs::read_to_string(pidfile).unwrap_or_default();
            if let Ok(pid) = text.trim().parse() {
                return pid;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("no pid in {}", pidfile.display());
    }

    /// Asserts that the process whose pid the command wrote to `pidfile` has stopped
    /// (`what` says what went wrong otherwise).
    async fn assert_stopped(pidfile: &PathBuf, what: &str) {
        let pid = read_pid(pidfile).await;
        assert!(!still_running(pid).await, "{what} (pid {pid})");
    }

    /// Whether `pid` runs (a zombie does not), after giving a signal sent to it a moment
    /// to land.
    async fn still_running(pid: i32) -> bool {
        for _ in 0..500 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The state follows the parenthesised command name.
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().next());
            if matches!(state, None | Some("Z") | Some("X")) {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// A shell's own commands are stopped with it at its timeout: the signals go to the
    /// child's process group, not to the shell alone (whose `sleep` lived on before).
    #[tokio::test]
    async fn a_timeout_stops_what_the_command_started() {
        let (cmd, pidfile) = sh_with_pidfile("timeout", "sleep 30 & echo $! > \"$PIDFILE\"; wait");
        let stop = Stop::after_with_grace(Some(Duration::from_millis(300)), Duration::from_secs(1));
        let run = run_child(cmd, "sh", None, stop, TAIL_BYTES);
        let result = tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .expect("run_child hung past its timeout");
        assert!(
            matches!(result, Err(JobError::TimedOut { .. })),
            "{result:?}"
        );
        assert_stopped(&pidfile, "the shell's sleep outlived the timeout").await;
    }

    /// A command that exits while something it started holds its output open ends its run
    /// (with its output) instead of waiting for that process, which is stopped: before, the
    /// run lasted as long as the `sleep`.
    #[tokio::test]
    async fn a_run_ends_when_its_command_exits_and_what_it_left_is_stopped() {
        let (cmd, pidfile) =
            sh_with_pidfile("leftover", "sleep 30 & echo $! > \"$PIDFILE\"; echo done");
        let stop = Stop::after_with_grace(None, Duration::from_millis(300));
        let run = run_child(cmd, "sh", None, stop, TAIL_BYTES);
        let out = tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .expect("the run waited for the process the command left")
            .unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, b"done\n");
        assert_stopped(&pidfile, "the leftover sleep still runs").await;

        // One that does not hold the output is asked to stop (SIGTERM) all the same.
        let (cmd, pidfile) = sh_with_pidfile(
            "detached",
            "sleep 30 > /dev/null 2>&1 & echo $! > \"$PIDFILE\"",
        );
        let out = run_child(cmd, "sh", None, Stop::after(None), TAIL_BYTES)
            .await
            .unwrap();
        assert!(out.status.success());
        assert_stopped(&pidfile, "the leftover sleep still runs").await;
    }

    /// A run dropped mid-way (its supervisor's grace is over, a shutdown that does not
    /// wait) kills the child's whole group, not only the child.
    #[tokio::test]
    async fn dropping_a_run_kills_what_the_command_started() {
        let (cmd, pidfile) = sh_with_pidfile("dropped", "sleep 30 & echo $! > \"$PIDFILE\"; wait");
        let run = run_child(cmd, "sh", None, Stop::after(None), TAIL_BYTES);
        let pid = tokio::select! {
            result = run => panic!("the run ended on its own: {result:?}"),
            pid = read_pid(&pidfile) => pid,
        };
        assert!(
            !still_running(pid).await,
            "the shell's sleep ({pid}) outlived its run"
        );
    }

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
