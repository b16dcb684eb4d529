//! The standard benchmark scenarios of `benches/SCENARIOS.md`.
//!
//! ```text
//! cargo run --release --example bench -- SCENARIO N [--store URL] [--bulk]
//! ```
//!
//! SCENARIO is `s1` (add), `s2` (storm), `s3` (steady), `s4` (idle) or `s7` (the bare-Tokio
//! floor S2 is compared with). With `--store URL` (S5) jobs are named tasks in that store
//! (`sqlite://bench.db`, `postgres://127.0.0.1/test`, ...; needs the store's feature).
//! With `--bulk`, S1 adds all N jobs with one `Scheduler::add_jobs` call instead of one
//! `add_job` each. `--grace SECS` sets the jobs' misfire grace time (default 1 s, as in
//! APScheduler): raise it when profiling under valgrind, which slows runs past 1 s.
//! Prints exactly one JSON line on stdout.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apsched::trigger::{Date, Interval};
use apsched::{JobDefaults, Scheduler, SchedulerBuilder};
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{json, Map, Value};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: bench s1|s2|s3|s4|s7 N [--store URL] [--bulk] [--no-ledger] [--grace SECS]";
    let scenario = args.first().ok_or(usage)?.to_lowercase();
    let n: usize = args.get(1).ok_or(usage)?.replace('_', "").parse()?;
    let store = args
        .iter()
        .position(|a| a == "--store")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let bulk = args.iter().any(|a| a == "--bulk");
    let ledger = !args.iter().any(|a| a == "--no-ledger");
    LEDGER.store(ledger, std::sync::atomic::Ordering::Relaxed);
    if let Some(i) = args.iter().position(|a| a == "--grace") {
        let secs: f64 = args.get(i + 1).ok_or(usage)?.parse()?;
        GRACE_MS.store((secs * 1000.0) as u64, std::sync::atomic::Ordering::Relaxed);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
        .enable_all()
        .build()?;
    let out = runtime.block_on(async {
        match scenario.as_str() {
            "s1" => s1(n, store.as_deref(), bulk).await,
            "s2" => s2(n, store.as_deref()).await,
            "s3" => s3(n, store.as_deref()).await,
            "s4" => s4(n, store.as_deref()).await,
            "s7" => s7(n).await,
            _ => Err(usage.into()),
        }
    })?;
    let mut line = Map::new();
    line.insert("scenario".into(), json!(scenario));
    line.insert("n".into(), json!(n));
    line.insert("store".into(), json!(store.as_deref().unwrap_or("memory")));
    if bulk {
        line.insert("bulk".into(), json!(true));
    }
    line.insert("ledger".into(), json!(ledger));
    line.extend(out);
    println!("{}", Value::Object(line));
    Ok(())
}

/// What the job bodies record: runs per job, start instants, and (S3) each run's
/// lateness against its due time. Closures and the registered task share this body.
struct Probe {
    runs: Vec<AtomicU32>,
    starts: Mutex<Vec<Instant>>,
    ran: AtomicUsize,
    /// S3: when each job's first run is due; its k-th run is due k seconds later.
    firsts: Mutex<Vec<Option<Instant>>>,
    /// S3: (due instant, lateness in ms) of every run.
    lateness: Mutex<Vec<(Instant, f64)>>,
}

impl Probe {
    fn new(n: usize) -> Arc<Self> {
        Arc::new(Probe {
            runs: (0..n).map(|_| AtomicU32::new(0)).collect(),
            starts: Mutex::new(Vec::with_capacity(n)),
            ran: AtomicUsize::new(0),
            firsts: Mutex::new(vec![None; n]),
            lateness: Mutex::new(Vec::new()),
        })
    }

    fn hit(&self, i: usize) {
        let now = Instant::now();
        let k = self
            .runs
            .get(i)
            .map_or(0, |r| r.fetch_add(1, Ordering::Relaxed));
        self.starts.lock().unwrap().push(now);
        self.ran.fetch_add(1, Ordering::Relaxed);
        if let Some(first) = self.firsts.lock().unwrap().get(i).copied().flatten() {
            let due = first + Duration::from_secs(u64::from(k));
            self.lateness
                .lock()
                .unwrap()
                .push((due, signed_ms(now, due)));
        }
    }
}

/// `t - due` in milliseconds, negative when `t` is early.
fn signed_ms(t: Instant, due: Instant) -> f64 {
    if t >= due {
        (t - due).as_secs_f64() * 1e3
    } else {
        -(due - t).as_secs_f64() * 1e3
    }
}

/// Whether the schedulers keep the run ledger (`--no-ledger` turns it off).
static LEDGER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// The jobs' misfire grace time in milliseconds (`--grace SECS`).
static GRACE_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1000);

fn builder(store: Option<&str>, probe: &Arc<Probe>) -> SchedulerBuilder {
    let p = probe.clone();
    let ledger = LEDGER.load(std::sync::atomic::Ordering::Relaxed);
    let grace = Duration::from_millis(GRACE_MS.load(std::sync::atomic::Ordering::Relaxed));
    let b = Scheduler::builder()
        .run_ledger(ledger)
        .job_defaults(JobDefaults::default().misfire_grace_time(Some(grace)))
        .task("bench", move |i: usize| {
            let p = p.clone();
            async move { p.hit(i) }
        });
    match store {
        None => b,
        Some(url) => b.store("default", connect(url)),
    }
}

fn connect(url: &str) -> Box<dyn apsched::store::JobStore> {
    apsched::store::from_url(url).unwrap_or_else(|e| panic!("{e}"))
}

/// The job body: a closure in memory, the registered task in a persistent store.
fn add(s: &Scheduler, store: Option<&str>, probe: &Arc<Probe>, i: usize) -> apsched::AddJob {
    match store {
        Some(_) => s.add_task_job("bench", i),
        None => {
            let p = probe.clone();
            s.add_job(move || {
                let p = p.clone();
                async move { p.hit(i) }
            })
        }
    }
    .id(format!("job{i}"))
}

fn status_bytes(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn lateness_figures(out: &mut Map<String, Value>, mut lateness_ms: Vec<f64>) {
    lateness_ms.sort_by(|a, b| a.total_cmp(b));
    out.insert(
        "lateness_p50_ms".into(),
        json!(percentile(&lateness_ms, 0.5)),
    );
    out.insert(
        "lateness_p99_ms".into(),
        json!(percentile(&lateness_ms, 0.99)),
    );
    out.insert(
        "lateness_max_ms".into(),
        json!(lateness_ms.last().copied().unwrap_or(0.0)),
    );
}

async fn s1(n: usize, store: Option<&str>, bulk: bool) -> Result<Map<String, Value>, BoxError> {
    let probe = Probe::new(0);
    let s = builder(store, &probe).build();
    s.start().await?;
    let rss_before = status_bytes("VmRSS:");
    let every = Interval::new(Duration::from_secs(3600))?;
    let t = Instant::now();
    if bulk {
        s.add_jobs((0..n).map(|i| add(&s, store, &probe, i).trigger(every.clone())))
            .await?;
    } else {
        for i in 0..n {
            add(&s, store, &probe, i).trigger(every.clone()).await?;
        }
    }
    let total = t.elapsed().as_secs_f64();
    let rss_after = status_bytes("VmRSS:");
    let mut out = Map::new();
    out.insert("add_total_s".into(), json!(total));
    out.insert("add_us_per_job".into(), json!(total * 1e6 / n as f64));
    out.insert("vm_hwm_bytes".into(), json!(status_bytes("VmHWM:")));
    out.insert(
        "rss_delta_per_job_bytes".into(),
        json!((rss_after.saturating_sub(rss_before)) as f64 / n as f64),
    );
    if store.is_some() {
        s.remove_all_jobs().await?;
    }
    s.shutdown_now().await?;
    Ok(out)
}

/// Maps a UTC instant of the scheduler's clock to the monotonic clock.
fn instant_of(t: DateTime<Utc>, anchor_utc: DateTime<Utc>, anchor: Instant) -> Instant {
    match (t - anchor_utc).to_std() {
        Ok(d) => anchor + d,
        Err(_) => anchor - (anchor_utc - t).to_std().unwrap_or_default(),
    }
}

fn storm_figures(out: &mut Map<String, Value>, probe: &Probe, n: usize, due: Instant, ran: usize) {
    let duplicated = probe
        .runs
        .iter()
        .map(|r| r.load(Ordering::Relaxed).saturating_sub(1) as usize)
        .sum::<usize>();
    let mut starts = probe.starts.lock().unwrap().clone();
    starts.sort();
    let signed_ms = |t: Instant| signed_ms(t, due);
    out.insert("ran".into(), json!(ran));
    out.insert(
        "lost".into(),
        json!(n.saturating_sub(ran - duplicated.min(ran))),
    );
    out.insert("duplicated".into(), json!(duplicated));
    if let (Some(&first), Some(&last)) = (starts.first(), starts.last()) {
        out.insert("time_to_all_ms".into(), json!(signed_ms(last)));
        let spread = (last - first).as_secs_f64();
        out.insert(
            "throughput_per_s".into(),
            json!(if spread > 0.0 {
                ran as f64 / spread
            } else {
                0.0
            }),
        );
    }
    lateness_figures(out, starts.iter().map(|&t| signed_ms(t)).collect());
}

async fn wait_for(probe: &Probe, n: usize, deadline: Instant) -> usize {
    while probe.ran.load(Ordering::Relaxed) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Let stragglers (duplicates) show up.
    tokio::time::sleep(Duration::from_millis(100)).await;
    probe.ran.load(Ordering::Relaxed)
}

async fn s2(n: usize, store: Option<&str>) -> Result<Map<String, Value>, BoxError> {
    let probe = Probe::new(n);
    let s = builder(store, &probe).build();
    s.start().await?;
    // T = start + 2 s, or, when adding takes longer (a database store: one durable write
    // per job), the end of the adds + 1 s. T must be known before the jobs are added, so the
    // first jobs are added paused while the add rate is measured, the rest are added due at
    // T estimated from that rate, and the first ones are then given T.
    let start = Instant::now();
    let sample = (n / 20).clamp(1, 200).min(n);
    for i in 0..sample {
        add(&s, store, &probe, i).paused().await?;
    }
    let per_add = start.elapsed().as_secs_f64() / sample as f64;
    // A generous margin: some stores' write latency drifts well past the sample's.
    let rest = (n - sample) as f64 * per_add * 3.0 + sample as f64 * per_add * 3.0;
    let head = Duration::from_secs(2)
        .saturating_sub(start.elapsed())
        .max(Duration::from_secs_f64(rest + 1.0));
    let due = Instant::now() + head;
    let due_utc = Utc::now() + TimeDelta::from_std(head)?;
    for i in sample..n {
        add(&s, store, &probe, i)
            .trigger(Date::at(due_utc, None)?)
            .await?;
    }
    for i in 0..sample {
        s.job(format!("job{i}"))
            .reschedule(Date::at(due_utc, None)?)
            .await?;
    }
    let add_total = start.elapsed().as_secs_f64();
    if Instant::now() > due {
        return Err("adding took longer than the estimated head start".into());
    }
    let ran = wait_for(&probe, n, due + Duration::from_secs(30)).await;
    let mut out = Map::new();
    out.insert("add_total_s".into(), json!(add_total));
    out.insert("add_us_per_job".into(), json!(add_total * 1e6 / n as f64));
    storm_figures(&mut out, &probe, n, due, ran);
    if store.is_some() {
        s.remove_all_jobs().await?;
    }
    s.shutdown_now().await?;
    Ok(out)
}

async fn s3(n: usize, store: Option<&str>) -> Result<Map<String, Value>, BoxError> {
    let probe = Probe::new(n);
    let s = builder(store, &probe).build();
    s.start().await?;
    let (anchor_utc, anchor) = (Utc::now(), Instant::now());
    let every = Interval::new(Duration::from_secs(1))?;
    for i in 0..n {
        let job = add(&s, store, &probe, i).trigger(every.clone()).await?;
        if let Some(t) = job.next_run_time {
            probe.firsts.lock().unwrap()[i] = Some(instant_of(t, anchor_utc, anchor));
        }
    }
    // The window: the 10 s after the last add. A slot belongs to it by its due time; runs
    // of slots due near its end start a little after it, so wait a moment before counting.
    let window_start = Instant::now();
    let window_end = window_start + Duration::from_secs(10);
    let cpu0 = cpu_seconds();
    tokio::time::sleep_until(window_end.into()).await;
    let cpu = cpu_seconds() - cpu0;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let in_window: Vec<f64> = probe
        .lateness
        .lock()
        .unwrap()
        .iter()
        .filter(|(due, _)| *due > window_start && *due <= window_end)
        .map(|(_, l)| *l)
        .collect();
    let mut out = Map::new();
    out.insert("slots_expected".into(), json!(n * 10));
    out.insert("slots_fired".into(), json!(in_window.len()));
    out.insert("cpu_s".into(), json!(cpu));
    lateness_figures(&mut out, in_window);
    if store.is_some() {
        s.remove_all_jobs().await?;
    }
    s.shutdown_now().await?;
    Ok(out)
}

async fn s4(n: usize, store: Option<&str>) -> Result<Map<String, Value>, BoxError> {
    let probe = Probe::new(0);
    let s = builder(store, &probe).build();
    s.start().await?;
    let tomorrow = Date::at(Utc::now() + TimeDelta::days(1), None)?;
    for i in 0..n {
        add(&s, store, &probe, i).trigger(tomorrow.clone()).await?;
    }
    let cpu0 = cpu_seconds();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut out = Map::new();
    out.insert("cpu_s".into(), json!(cpu_seconds() - cpu0));
    if store.is_some() {
        s.remove_all_jobs().await?;
    }
    s.shutdown_now().await?;
    Ok(out)
}

/// The floor: sleep until T, spawn N trivial tasks. No scheduler.
async fn s7(n: usize) -> Result<Map<String, Value>, BoxError> {
    let probe = Probe::new(n);
    let due = Instant::now() + Duration::from_secs(2);
    tokio::time::sleep_until(due.into()).await;
    for i in 0..n {
        let p = probe.clone();
        tokio::spawn(async move { p.hit(i) });
    }
    let ran = wait_for(&probe, n, due + Duration::from_secs(30)).await;
    let mut out = Map::new();
    storm_figures(&mut out, &probe, n, due, ran);
    Ok(out)
}
