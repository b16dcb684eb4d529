//! S2 (storm) on a persistent store, for scenario S5 of `shared/bench/SCENARIOS.md`.
//!
//! ```text
//! cargo run --release --example bench_store --features sqlite,postgres,mysql -- s2 2000 --store URL
//! ```
//!
//! `examples/bench.rs` adds the storm's jobs paused and reschedules them to T afterwards,
//! which on a database costs two more durable writes per job, more than its 1 s head start
//! allows. Here T is chosen from the measured add rate instead: the first jobs are added
//! paused while the rate is measured, T = now + 1 s + (the rest × 1.5 × that rate), the rest
//! are added due at T, and the first few are rescheduled to T. Prints one JSON line with the
//! keys of `bench.rs`.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apsched::trigger::{Date, Interval};
use apsched::Scheduler;
use chrono::{TimeDelta, Utc};
use serde_json::{json, Map, Value};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Probe {
    runs: Vec<AtomicU32>,
    starts: Mutex<Vec<Instant>>,
    ran: AtomicUsize,
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: bench_store s2|s2i N --store URL";
    // `s2i`: the same storm with jobs repeating every hour (first due at T), so claiming
    // rewrites each row instead of deleting it.
    let repeating = match args.first().map(String::as_str) {
        Some("s2") => false,
        Some("s2i") => true,
        _ => return Err(usage.into()),
    };
    let n: usize = args.get(1).ok_or(usage)?.replace('_', "").parse()?;
    let url = args
        .iter()
        .position(|a| a == "--store")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .ok_or(usage)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let out = rt.block_on(storm(n, &url, repeating))?;
    let mut line = Map::new();
    line.insert(
        "scenario".into(),
        json!(if repeating { "s2i" } else { "s2" }),
    );
    line.insert("n".into(), json!(n));
    line.insert("store".into(), json!(url));
    line.extend(out);
    println!("{}", Value::Object(line));
    Ok(())
}

async fn storm(n: usize, url: &str, repeating: bool) -> Result<Map<String, Value>, BoxError> {
    let probe = Arc::new(Probe {
        runs: (0..n).map(|_| AtomicU32::new(0)).collect(),
        starts: Mutex::new(Vec::with_capacity(n)),
        ran: AtomicUsize::new(0),
    });
    let p = probe.clone();
    let s = Scheduler::builder()
        .task("bench", move |i: usize| {
            let p = p.clone();
            async move {
                let now = Instant::now();
                if let Some(r) = p.runs.get(i) {
                    r.fetch_add(1, Ordering::Relaxed);
                }
                p.starts.lock().unwrap().push(now);
                p.ran.fetch_add(1, Ordering::Relaxed);
            }
        })
        .store("default", apsched::store::from_url(url)?)
        .build();
    s.start().await?;
    s.remove_all_jobs(None).await?;
    let cpu0 = cpu_seconds();

    let probe_jobs = n.min(50);
    let t = Instant::now();
    for i in 0..probe_jobs {
        s.add_task_job("bench", i)
            .id(format!("job{i}"))
            .paused()
            .await?;
    }
    let per_add = t.elapsed().as_secs_f64() / probe_jobs.max(1) as f64;
    let head = 1.0 + (n - probe_jobs) as f64 * per_add * 1.5 + probe_jobs as f64 * per_add * 3.0;
    let due_utc = Utc::now() + TimeDelta::milliseconds((head * 1e3) as i64);
    let due = Instant::now() + Duration::from_secs_f64(head);
    for i in probe_jobs..n {
        let job = s.add_task_job("bench", i).id(format!("job{i}"));
        if repeating {
            job.trigger(Interval::new(Duration::from_secs(3600))?)
                .next_run_time(due_utc)
                .await?;
        } else {
            job.trigger(Date::new(due_utc)).await?;
        }
    }
    let add_total = t.elapsed().as_secs_f64();
    for i in 0..probe_jobs {
        let id = format!("job{i}");
        if repeating {
            let changes = apsched::JobChanges::new()
                .trigger(Interval::new(Duration::from_secs(3600))?)
                .next_run_time(Some(due_utc));
            s.modify_job(&id, changes, None).await?;
        } else {
            s.reschedule_job(&id, Date::new(due_utc), None).await?;
        }
    }
    if Instant::now() > due {
        return Err("adding took longer than the head start".into());
    }
    let deadline = due + Duration::from_secs(60);
    while probe.ran.load(Ordering::Relaxed) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ran = probe.ran.load(Ordering::Relaxed);
    let duplicated: usize = probe
        .runs
        .iter()
        .map(|r| r.load(Ordering::Relaxed).saturating_sub(1) as usize)
        .sum();
    let mut starts = probe.starts.lock().unwrap().clone();
    starts.sort();
    let ms = |t: Instant| {
        if t >= due {
            (t - due).as_secs_f64() * 1e3
        } else {
            -((due - t).as_secs_f64() * 1e3)
        }
    };
    let mut out = Map::new();
    out.insert("ran".into(), json!(ran));
    out.insert(
        "lost".into(),
        json!(n.saturating_sub(ran - duplicated.min(ran))),
    );
    out.insert("duplicated".into(), json!(duplicated));
    out.insert("add_total_s".into(), json!(add_total));
    out.insert("add_us_per_job".into(), json!(add_total * 1e6 / n as f64));
    if let (Some(&first), Some(&last)) = (starts.first(), starts.last()) {
        out.insert("time_to_all_ms".into(), json!(ms(last)));
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
    let lateness: Vec<f64> = starts.iter().map(|&t| ms(t)).collect();
    let pct = |p: f64| {
        if lateness.is_empty() {
            0.0
        } else {
            lateness[((lateness.len() as f64 - 1.0) * p).round() as usize]
        }
    };
    out.insert("lateness_p50_ms".into(), json!(pct(0.5)));
    out.insert("lateness_p99_ms".into(), json!(pct(0.99)));
    out.insert("lateness_max_ms".into(), json!(pct(1.0)));
    out.insert("cpu_s".into(), json!(cpu_seconds() - cpu0));
    s.remove_all_jobs(None).await?;
    s.shutdown(false).await?;
    Ok(out)
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}
