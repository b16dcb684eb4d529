//! The multi-process test, for every store that several processes can share: several
//! scheduler processes run the same jobs from one store; the busiest is SIGKILLed mid-run.
//! No (job, scheduled time) may be submitted twice, and every slot outside the failover
//! window (from just before the kill to the end of the dead process's leases) must be
//! submitted. The run ledger must account for every slot of the test: exactly one record
//! each, every record terminal once the survivors have taken over, `executed` unless the
//! killed process had started it (`abandoned`). (`chaos` runs the same workers on PostgreSQL with connection cuts too.)
//!
//! One parent test, [`multiprocess_shared_store`], runs one [`Plan`] per store (each store
//! module says how to reach its server and clean up, in a [`Target`]). The processes are
//! this test binary re-executed on [`multiprocess_worker`] with `APSCHED_MP_*` variables;
//! without them that test does nothing.
//!
//! Built to tolerate a slow store rather than to race it: the jobs neither coalesce nor
//! expire (`coalesce = false`, `misfire_grace_time = None`), so a slot claimed late still
//! runs; slots are judged by their scheduled times; the jobs end at the end of the run and
//! the parent waits until every slot has been claimed and the logs have gone quiet before it
//! stops the processes; and the margin before the kill grows with the lateness measured at
//! the kill (a process that runs `n` seconds behind can lose slots `n` seconds old).

use std::collections::HashMap;
use std::future::Future;
use std::io::Write as _;
use std::path::Path;
use std::pin::Pin;
use std::process::Stdio;
use std::time::Duration;

use apsched::event::{Event, EventKind};
use apsched::job::Callable;
use apsched::ledger::{RunFilter, RunRecord, RunState};
use apsched::store::JobStore;
use apsched::trigger::Interval;
use apsched::Scheduler;
use chrono::{DateTime, TimeDelta, Utc};

use crate::suite;

/// The shape of one run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Names the store in the output.
    pub label: String,
    /// Store URL (`postgres://…`, `redis://…`, `mongodb://host/db`, …).
    pub url: String,
    /// The table / key prefix / collection the processes share (see [`store_for`]).
    pub namespace: String,
    /// Number of scheduler processes.
    pub processes: usize,
    /// Number of jobs, each firing every second.
    pub jobs: usize,
    /// Seconds of firing: slots `first + 0 s` to `first + (secs - 1) s`.
    pub secs: i64,
    /// The busiest process is SIGKILLed this many seconds after the first slot.
    pub kill_at: i64,
    /// Lease length.
    pub lease_secs: u64,
}

/// One store's run: its plan, and what to do afterwards (drop the table, delete the keys),
/// pass or fail.
pub struct Target {
    pub plan: Plan,
    pub cleanup: Pin<Box<dyn Future<Output = ()> + Send>>,
}

/// The store for `url` with its jobs under `namespace`: [`apsched::store::from_url`], plus
/// the namespace option of the stores whose URL cannot carry one.
pub fn store_for(url: &str, namespace: &str) -> apsched::Result<Box<dyn JobStore>> {
    let scheme = url.split_once("://").map_or(url, |(s, _)| s);
    let _ = namespace;
    Ok(match scheme {
        #[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
        "sqlite" | "postgres" | "postgresql" | "mysql" | "mariadb" => {
            Box::new(apsched::store::SqlStore::new(url)?.with_table(namespace))
        }
        #[cfg(feature = "redis")]
        "redis" | "rediss" => {
            Box::new(apsched::store::RedisStore::new(url)?.with_prefix(namespace))
        }
        #[cfg(feature = "mongodb")]
        "mongodb" | "mongodb+srv" => {
            Box::new(apsched::store::MongoStore::new(url)?.with_collection(namespace))
        }
        // The others name their namespace in the URL (`zk://host/root`), if they have one.
        _ => apsched::store::from_url(url)?,
    })
}

/// Held by each test that runs scheduler processes for a while (this one and `chaos`), so
/// that they take turns: on a 2-core machine, one's processes would starve the other's
/// (the MongoDB test server above all), and a slow store shows as lost slots in the
/// failover-window arithmetic here.
pub static PROCESS_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Every store whose server is there, at once: the SQL databases side by side, and beside
/// them the other stores one after another (the MongoDB test server is a Python process
/// that a second concurrent run would starve).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiprocess_shared_store() {
    #![allow(unused_mut)] // nothing is added without a store feature
    let _turn = PROCESS_TESTS.lock().await;
    let mut side_by_side: Vec<Target> = Vec::new();
    let mut one_by_one: Vec<Target> = Vec::new();
    #[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
    side_by_side.extend(crate::sql::multiprocess_targets().await);
    #[cfg(feature = "redis")]
    one_by_one.extend(crate::redis::multiprocess_target().await);
    #[cfg(feature = "mongodb")]
    one_by_one.extend(crate::mongodb::multiprocess_target().await);
    #[cfg(feature = "zookeeper")]
    one_by_one.extend(crate::zookeeper::multiprocess_target().await);

    let mut tasks: Vec<tokio::task::JoinHandle<Vec<Result<String, String>>>> = side_by_side
        .into_iter()
        .map(|t| tokio::spawn(async move { vec![run_target(t).await] }))
        .collect();
    tasks.push(tokio::spawn(async move {
        let mut results = Vec::new();
        for t in one_by_one {
            results.push(run_target(t).await);
        }
        results
    }));
    let mut failures = Vec::new();
    for task in tasks {
        for result in task.await.unwrap() {
            match result {
                Ok(report) => eprintln!("{report}"),
                Err(report) => {
                    eprintln!("FAILED {report}");
                    failures.push(report);
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Runs one target and cleans up after it, whatever happened.
async fn run_target(target: Target) -> Result<String, String> {
    let label = target.plan.label.clone();
    let result = tokio::spawn(run(target.plan)).await;
    target.cleanup.await;
    result.unwrap_or_else(|e| Err(format!("{label}: {e}")))
}

/// The jobs: `plan.jobs` of them, every second from `first`, the last slot at
/// `first + (secs - 1) s`.
pub async fn add_jobs(
    store: &dyn JobStore,
    plan: &Plan,
    first: DateTime<Utc>,
) -> apsched::Result<()> {
    let last = first + TimeDelta::seconds(plan.secs - 1);
    for i in 0..plan.jobs {
        let mut job = suite::interval_job(&format!("mp{i:04}"), 1, Some(first));
        job.trigger = Interval::builder()
            .seconds(1)
            .end_date(last + TimeDelta::milliseconds(500))
            .build()
            .unwrap()
            .into();
        job.callable = Callable::Task {
            name: "noop".into(),
            args: serde_json::Value::Null,
        };
        // A slot claimed late still runs, once: a slow store shows as lateness, not loss.
        job.misfire_grace_time = None;
        job.coalesce = false;
        job.max_instances = 100;
        store.add_job(job, false).await?;
    }
    Ok(())
}

/// One logged submission: `job scheduled_ms process logged_ms`.
pub struct Line {
    pub job: String,
    pub scheduled: i64,
    pub process: usize,
    pub logged: i64,
}

pub fn read_logs(dir: &Path, processes: usize) -> Vec<Line> {
    let mut lines = Vec::new();
    for p in 0..processes {
        let text = std::fs::read_to_string(dir.join(format!("w{p}.log"))).unwrap_or_default();
        for line in text.lines() {
            let parts: Vec<&str> = line.split(' ').collect();
            let [job, scheduled, _, logged] = parts[..] else {
                continue; // the line being written when the process was killed
            };
            let (Ok(scheduled), Ok(logged)) = (scheduled.parse(), logged.parse()) else {
                continue;
            };
            lines.push(Line {
                job: job.to_string(),
                scheduled,
                process: p,
                logged,
            });
        }
    }
    lines
}

/// How many failed claims each process logged (`!error claim` lines): calls that may have
/// committed a claim the process never heard of. (Used by the PostgreSQL chaos test.)
#[cfg(feature = "postgres")]
pub fn failed_claims(dir: &Path, processes: usize) -> Vec<usize> {
    (0..processes)
        .map(|p| {
            std::fs::read_to_string(dir.join(format!("w{p}.log")))
                .unwrap_or_default()
                .lines()
                .filter(|l| l.starts_with("!error claim"))
                .count()
        })
        .collect()
}

fn log_bytes(dir: &Path, processes: usize) -> u64 {
    (0..processes)
        .map(|p| std::fs::metadata(dir.join(format!("w{p}.log"))).map_or(0, |m| m.len()))
        .sum()
}

/// Starts worker `p` of `plan` ([`multiprocess_worker`]) on the store at `url`, logging to
/// `dir/w{p}.log` (and its errors to `dir/w{p}.err`). Closing its stdin stops it (so does
/// the parent's death).
pub fn spawn_worker(
    plan: &Plan,
    url: &str,
    p: usize,
    dir: &Path,
) -> Result<tokio::process::Child, String> {
    tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "multiprocess::multiprocess_worker",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("APSCHED_MP_URL", url)
        .env("APSCHED_MP_NAMESPACE", &plan.namespace)
        .env("APSCHED_MP_ID", format!("w{p}"))
        .env("APSCHED_MP_LOG", dir.join(format!("w{p}.log")))
        .env("APSCHED_MP_LEASE", plan.lease_secs.to_string())
        .stdin(Stdio::piped())
        // Its libtest summary would only clutter the output.
        .stdout(Stdio::null())
        // Its store errors go to a file, shown if it fails.
        .stderr(
            std::fs::File::create(dir.join(format!("w{p}.err")))
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::inherit()),
        )
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("spawning a scheduler process: {e}"))
}

/// SIGKILLs the busiest worker (most submissions so far), so that the kill hits one holding
/// claims; returns which, and when.
pub async fn kill_busiest(
    children: &mut [tokio::process::Child],
    dir: &Path,
) -> (usize, DateTime<Utc>) {
    let so_far = read_logs(dir, children.len());
    let victim = (0..children.len())
        .max_by_key(|&p| so_far.iter().filter(|l| l.process == p).count())
        .unwrap();
    let killed_at = Utc::now();
    children[victim].start_kill().unwrap();
    children[victim].wait().await.unwrap();
    (victim, killed_at)
}

/// Waits until every slot has been claimed (no job is left: the last claim of each job
/// removes it) and the workers' logs have gone quiet, then stops the survivors. Returns
/// when the last slot was claimed.
pub async fn finish(
    store: &dyn JobStore,
    end: DateTime<Utc>,
    children: &mut [tokio::process::Child],
    victim: usize,
    dir: &Path,
) -> Result<DateTime<Utc>, String> {
    let give_up = end + TimeDelta::seconds(60);
    loop {
        match store.next_run_time().await {
            Ok(None) => break,
            Ok(Some(_)) | Err(_) if Utc::now() > give_up => {
                return Err("slots still unclaimed 60 s after the end".into());
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    let all_claimed = Utc::now();
    // The survivors take over the killed process's runs once its heartbeat has lapsed:
    // wait until the ledger holds no active run (its outcomes written).
    let active = RunFilter::new()
        .states([RunState::Claimed, RunState::Started])
        .limit(20);
    loop {
        match store.query_runs(&active).await {
            Ok(runs) if runs.is_empty() => break,
            stuck if Utc::now() > give_up + TimeDelta::seconds(30) => {
                return Err(format!(
                    "runs still active in the ledger 90 s after the end (w{victim} was \
                     killed; up to 20 shown): {stuck:#?}"
                ));
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    let (mut size, mut quiet_since) = (log_bytes(dir, children.len()), Utc::now());
    while Utc::now() - quiet_since < TimeDelta::seconds(1) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = log_bytes(dir, children.len());
        if now != size {
            (size, quiet_since) = (now, Utc::now());
        }
    }
    for (p, c) in children.iter_mut().enumerate() {
        if p == victim {
            continue;
        }
        drop(c.stdin.take());
        let status = tokio::time::timeout(Duration::from_secs(60), c.wait())
            .await
            .map_err(|_| format!("w{p} did not stop"))?
            .unwrap();
        if !status.success() {
            let err = std::fs::read_to_string(dir.join(format!("w{p}.err"))).unwrap_or_default();
            let tail: Vec<&str> = err.lines().rev().take(10).collect();
            return Err(format!("w{p} failed: {status}; its last words: {tail:?}"));
        }
    }
    Ok(all_claimed)
}

/// Runs one plan: adds the jobs, starts the processes, kills the busiest, waits until every
/// slot has been claimed, stops the others and checks the logs. `Ok(report)` or
/// `Err(report)`.
pub async fn run(plan: Plan) -> Result<String, String> {
    let label = plan.label.as_str();
    let dir = std::env::temp_dir().join(format!("apsched-mp-{label}-{}", suite::unique_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let result = run_in(&plan, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result.map_err(|e| format!("{label}: {e}"))
}

async fn run_in(plan: &Plan, dir: &Path) -> Result<String, String> {
    let lease = Duration::from_secs(plan.lease_secs);
    let store = store_for(&plan.url, &plan.namespace).map_err(|e| e.to_string())?;
    store
        .start(suite::context("default", "parent", lease))
        .await
        .map_err(|e| format!("start: {e}"))?;
    let now = Utc::now();
    let first = DateTime::from_timestamp(now.timestamp() + 3, 0).unwrap();
    let end = first + TimeDelta::seconds(plan.secs);
    add_jobs(&store, plan, first)
        .await
        .map_err(|e| format!("adding the jobs: {e}"))?;

    let mut children = Vec::new();
    for p in 0..plan.processes {
        children.push(spawn_worker(plan, &plan.url, p, dir)?);
    }

    let kill_at = first + TimeDelta::seconds(plan.kill_at);
    tokio::time::sleep((kill_at - Utc::now()).to_std().unwrap_or_default()).await;
    let (victim, killed_at) = kill_busiest(&mut children, dir).await;
    let all_claimed = finish(&*store, end, &mut children, victim, dir).await?;
    let records = store
        .query_runs(&RunFilter::new().limit(usize::MAX))
        .await
        .map_err(|e| format!("reading the ledger: {e}"))?;
    drop(store);
    let ledger = check_ledger(plan, first, &records, &format!("w{victim}"));

    let lines = read_logs(dir, plan.processes);
    // (job, slot) -> processes that submitted it.
    let mut runs: HashMap<(&str, i64), Vec<usize>> = HashMap::new();
    for l in &lines {
        runs.entry((&l.job, l.scheduled))
            .or_default()
            .push(l.process);
    }
    let duplicates: Vec<_> = runs.iter().filter(|(_, p)| p.len() > 1).collect();
    // The dead process can only have lost slots it had claimed and not yet logged: slots
    // due by the kill, up to as late as the processes were running then.
    let k = killed_at.timestamp_millis();
    let lateness = lines
        .iter()
        .filter(|l| l.logged > k - 2000 && l.logged <= k)
        .map(|l| l.logged - l.scheduled)
        .max()
        .map_or(lease, |ms| Duration::from_millis(ms.max(0) as u64));
    let lateness = TimeDelta::from_std(lateness).unwrap();
    let window_start = killed_at - TimeDelta::seconds(1) - lateness;
    let window_end = killed_at + TimeDelta::from_std(lease).unwrap() + TimeDelta::seconds(1);
    let (mut expected, mut missing, mut in_window, mut window_missing) = (0, 0, 0, 0);
    let mut missing_examples = Vec::new();
    for s in 0..plan.secs {
        let t = first + TimeDelta::seconds(s);
        for i in 0..plan.jobs {
            let job = format!("mp{i:04}");
            let ran = runs.contains_key(&(job.as_str(), t.timestamp_millis()));
            if t < window_start || t > window_end {
                expected += 1;
                if !ran {
                    missing += 1;
                    if missing_examples.len() < 5 {
                        missing_examples.push(format!("{job}@+{s}s"));
                    }
                }
            } else {
                in_window += 1;
                window_missing += usize::from(!ran);
            }
        }
    }
    let per_process: Vec<usize> = (0..plan.processes)
        .map(|p| runs.values().filter(|v| v.contains(&p)).count())
        .collect();
    let secs = |t: DateTime<Utc>| (t - first).num_milliseconds() as f64 / 1000.0;
    let report = format!(
        "{}: {} jobs x {} s on {} processes, killed w{victim} at +{:.1} s; {} slots submitted \
         (per process {per_process:?}), {} duplicates; lateness at the kill {} ms, failover \
         window +{:.1} s to +{:.1} s; {expected} slots outside it ({missing} missing), \
         {in_window} inside ({window_missing} missing); every slot claimed {:.1} s after the last was due",
        plan.label,
        plan.jobs,
        plan.secs,
        plan.processes,
        secs(killed_at),
        runs.len(),
        duplicates.len(),
        lateness.num_milliseconds(),
        secs(window_start),
        secs(window_end),
        (all_claimed - (end - TimeDelta::seconds(1))).num_milliseconds() as f64 / 1000.0,
    );
    let report = format!("{report}; ledger: {}", ledger.summary);
    let mut problems = ledger.problems;
    if !duplicates.is_empty() {
        problems.push(format!(
            "slots submitted twice, e.g. {:?}",
            &duplicates[..duplicates.len().min(5)]
        ));
    }
    if missing > 0 {
        problems.push(format!(
            "slots outside the failover window never submitted, e.g. {missing_examples:?}"
        ));
    }
    // No check that every survivor submitted something: claims are a race (SKIP LOCKED lets
    // one process take whole batches), so an idle survivor is legitimate. The takeover is
    // proven by the slots after the failover window, which only survivors can have run.
    if problems.is_empty() {
        Ok(report)
    } else {
        Err(format!("{report}\n  {}", problems.join("\n  ")))
    }
}

/// What the ledger check found: a summary, and what is wrong.
struct LedgerCheck {
    summary: String,
    problems: Vec<String>,
}

/// The ledger's accounting of the test's slots: exactly one scheduled (not manual) record
/// per (job, slot), each terminal, each `executed` or, for a run the killed process had
/// started, `abandoned` (only the killed process's runs can be).
fn check_ledger(
    plan: &Plan,
    first: DateTime<Utc>,
    records: &[RunRecord],
    victim: &str,
) -> LedgerCheck {
    let mut by_slot: HashMap<(&str, DateTime<Utc>), Vec<&RunRecord>> = HashMap::new();
    for r in records.iter().filter(|r| !r.manual) {
        by_slot
            .entry((r.job_id.as_str(), r.scheduled))
            .or_default()
            .push(r);
    }
    let mut problems = Vec::new();
    let (mut missing, mut executed, mut abandoned) = (Vec::new(), 0, 0);
    for s in 0..plan.secs {
        let t = first + TimeDelta::seconds(s);
        for i in 0..plan.jobs {
            let job = format!("mp{i:04}");
            if !by_slot.contains_key(&(job.as_str(), t)) && missing.len() < 5 {
                missing.push(format!("{job}@+{s}s"));
            }
        }
    }
    let expected = plan.secs as usize * plan.jobs;
    if by_slot.len() != expected || !missing.is_empty() {
        problems.push(format!(
            "the ledger has records for {} slots of {expected}; without one, e.g. {missing:?}",
            by_slot.len()
        ));
    }
    let twice: Vec<_> = by_slot
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(k, _)| *k)
        .collect();
    if !twice.is_empty() {
        problems.push(format!(
            "slots with two records, e.g. {:?}",
            &twice[..twice.len().min(5)]
        ));
    }
    for r in records {
        match r.state {
            RunState::Executed => executed += 1,
            RunState::Abandoned if r.owner == victim => abandoned += 1,
            other => {
                if problems.len() < 10 {
                    problems.push(format!(
                        "run {} of {} at {} is {other} (owner {}, error {:?})",
                        r.run_id, r.job_id, r.scheduled, r.owner, r.error
                    ));
                }
            }
        }
    }
    LedgerCheck {
        summary: format!(
            "{} records, {executed} executed, {abandoned} abandoned",
            records.len()
        ),
        problems,
    }
}

/// A scheduler process (only when started by [`run`] or the chaos test): runs the shared
/// jobs and appends `job scheduled_ms process logged_ms` for every submitted slot to its
/// log (and `!error claim|other` for every store error), until its stdin closes.
#[test]
fn multiprocess_worker() {
    let Ok(url) = std::env::var("APSCHED_MP_URL") else {
        return;
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(worker(url));
}

async fn worker(url: String) {
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} not set"));
    let id = var("APSCHED_MP_ID");
    let lease = Duration::from_secs(var("APSCHED_MP_LEASE").parse().unwrap());
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(var("APSCHED_MP_LOG"))
        .unwrap();
    let store = store_for(&url, &var("APSCHED_MP_NAMESPACE")).unwrap();
    let s = Scheduler::builder()
        .store("default", store)
        .scheduler_id(id.clone())
        .lease(lease)
        .event_capacity(1 << 16)
        .task("noop", |_: serde_json::Value| async {})
        .build();
    let mut events = s.subscribe(EventKind::JOB_SUBMITTED | EventKind::STORE_ERROR);
    s.start().await.unwrap();
    let (stop_tx, mut stop) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        let _ = stop_tx.send(());
    });
    loop {
        tokio::select! {
            _ = &mut stop => break,
            ev = events.recv() => match ev {
                Ok(Event::JobSubmitted { job_id, scheduled_run_times, .. }) => {
                    let logged = Utc::now().timestamp_millis();
                    let mut lines = String::new();
                    for t in scheduled_run_times {
                        lines.push_str(&format!("{job_id} {} {id} {logged}\n", t.timestamp_millis()));
                    }
                    // One write per event, unbuffered: a SIGKILL loses at most this one.
                    log.write_all(lines.as_bytes()).unwrap();
                }
                Ok(Event::StoreError { message, .. }) => {
                    // A failed claim may have committed unheard (a cut connection, a
                    // timeout): logged for the chaos test's accounting.
                    let kind = if message.contains("claim") || message.contains("timed out") {
                        "claim"
                    } else {
                        "other"
                    };
                    log.write_all(format!("!error {kind}\n").as_bytes()).unwrap();
                    eprintln!("{id}: store error: {message}");
                }
                Ok(_) => {}
                Err(e) => panic!("{id}: events: {e}"),
            }
        }
    }
    s.shutdown_now().await.unwrap();
}
