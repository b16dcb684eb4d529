//! The `metrics` feature: the scheduler's metrics reach whatever recorder is installed.
//!
//! One recorder serves the whole test binary (a recorder is process-wide), so each test
//! reads only the series of its own store alias.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use apsched::clock::TestClock;
use apsched::store::MemoryStore;
use apsched::trigger::Interval;
use apsched::{EventKind, Scheduler};
use chrono::{TimeZone, Utc};
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};

/// Every series by key, with its value: a counter's total, a gauge's value (as bits), a
/// histogram's number of samples. Keyed by the `Key` itself, so that looking a series up
/// again allocates nothing (the allocation test shares this binary and its recorder).
#[derive(Default)]
struct Series(Mutex<HashMap<Key, Arc<Cell>>>);

#[derive(Default)]
struct Cell(AtomicU64);

impl CounterFn for Cell {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::SeqCst);
    }
    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::SeqCst);
    }
}

impl GaugeFn for Cell {
    fn increment(&self, value: f64) {
        self.set(f64::from_bits(self.0.load(Ordering::SeqCst)) + value);
    }
    fn decrement(&self, value: f64) {
        self.set(f64::from_bits(self.0.load(Ordering::SeqCst)) - value);
    }
    fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::SeqCst);
    }
}

impl HistogramFn for Cell {
    fn record(&self, _value: f64) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Series {
    fn cell(&self, key: &Key) -> Arc<Cell> {
        let mut map = self.0.lock().unwrap();
        if let Some(cell) = map.get(key) {
            return cell.clone();
        }
        map.entry(key.clone()).or_default().clone()
    }

    /// The series `name{label=value,...}` (labels sorted).
    fn value(&self, name: &str) -> Option<u64> {
        let map = self.0.lock().unwrap();
        map.iter().find_map(|(key, cell)| {
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            let rendered = format!("{}{{{}}}", key.name(), labels.join(","));
            (rendered == name).then(|| cell.0.load(Ordering::SeqCst))
        })
    }
}

struct TestRecorder(Arc<Series>);

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.0.cell(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.0.cell(key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.0.cell(key))
    }
}

fn series() -> &'static Arc<Series> {
    static SERIES: OnceLock<Arc<Series>> = OnceLock::new();
    SERIES.get_or_init(|| {
        let series = Arc::new(Series::default());
        metrics::set_global_recorder(TestRecorder(series.clone()))
            .expect("no other recorder in this binary");
        series
    })
}

#[tokio::test(start_paused = true)]
async fn loop_metrics_reach_the_recorder() {
    let series = series();
    let clock = TestClock::new(Utc.with_ymd_and_hms(2024, 1, 15, 10, 0, 0).unwrap());
    let s = Scheduler::builder()
        .clock(clock.shared())
        .store("metered", MemoryStore::new())
        .build();
    let mut events = s.subscribe(EventKind::JOB_MAX_INSTANCES);
    s.start().await.unwrap();
    // A job that outlasts its interval: its next due time finds its one instance busy.
    s.add_job(|| async { tokio::time::sleep(Duration::from_secs(90)).await })
        .trigger(Interval::new(Duration::from_secs(60)).unwrap())
        .id("slow")
        .store("metered")
        .await
        .unwrap();
    events.recv().await.unwrap();
    let calls = series
        .value("apsched_store_call_seconds{call=acquire_due_jobs,store=metered}")
        .unwrap_or(0);
    assert!(calls >= 2, "each pass times its claim: {calls}");
    assert!(series
        .value("apsched_store_call_seconds{call=next_run_time,store=metered}")
        .is_some());
    assert!(
        series
            .value("apsched_runs_total{outcome=max_instances}")
            .unwrap_or(0)
            >= 1
    );
    assert_eq!(
        series.value("apsched_due_backlog_seconds{store=metered}"),
        Some(0f64.to_bits()),
        "nothing waits for a next pass"
    );
    assert_eq!(
        series.value("apsched_store_errors_total{call=acquire_due_jobs,store=metered}"),
        None
    );
    // Run series are shared by every scheduler of this binary: they only grow.
    let executed = || {
        series
            .value("apsched_runs_total{outcome=executed}")
            .unwrap_or(0)
    };
    let durations = || {
        series
            .value("apsched_run_duration_seconds{outcome=executed}")
            .unwrap_or(0)
    };
    let (executed_before, durations_before) = (executed(), durations());
    assert!(series.value("apsched_run_lateness_seconds{}").unwrap_or(0) >= 1);
    // The slow run ends 90 s after it started.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(
        executed() > executed_before,
        "the slow run's outcome is counted"
    );
    assert!(durations() > durations_before, "and its duration recorded");
    s.shutdown_now().await.unwrap();
}
