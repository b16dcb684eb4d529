//! Heap allocations per run (issue 16): the whole path of a due job on the memory store
//! with the Tokio executor, claim to finished run, counted by a global allocator that
//! counts only on the measuring thread (the other tests of this binary run on other threads
//! and are not counted).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use apsched::clock::TestClock;
use apsched::trigger::Interval;
use apsched::{EventKind, Scheduler};
use chrono::{TimeZone, Utc};

/// Counts allocations (and reallocations) made on a thread while it is measuring.
struct Counting;

thread_local! {
    static MEASURING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

fn count() {
    // `try_with`: the allocator also runs while a thread's locals are being torn down.
    if MEASURING.try_with(Cell::get).unwrap_or(false) {
        let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
    }
}

// SAFETY: every call is passed on to the system allocator unchanged; counting only touches
// const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Allocations made on this thread while `fut` runs.
async fn allocations<F: std::future::Future>(fut: F) -> (usize, F::Output) {
    ALLOCS.with(|a| a.set(0));
    MEASURING.with(|m| m.set(true));
    let out = fut.await;
    MEASURING.with(|m| m.set(false));
    (ALLOCS.with(Cell::get), out)
}

/// Due jobs per pass: enough that the pass's own allocations (its batch vector, the memory
/// store's index nodes) are a small share of each run's.
const JOBS: usize = 1000;

/// Allocations per run, listened to or not: a pass over [`JOBS`] due interval jobs and
/// their runs to the end, on this test's current-thread runtime (so every run is spawned
/// and polled on the measuring thread). Measured on the second round, once the maps and
/// buffers of the first have reached their size.
async fn allocations_per_run(listening: bool, ledger: bool) -> f64 {
    let t0 = Utc.with_ymd_and_hms(2024, 1, 15, 10, 0, 0).unwrap();
    let clock = TestClock::new(t0);
    let scheduler = Scheduler::builder()
        .timezone(chrono_tz::UTC)
        .clock(clock.shared())
        .run_ledger(ledger)
        .manual()
        .build();
    let _rx = listening.then(|| scheduler.subscribe(EventKind::ALL));
    let ran = Arc::new(AtomicUsize::new(0));
    scheduler.start().await.unwrap();
    for i in 0..JOBS {
        let ran = ran.clone();
        scheduler
            .add_job(move || {
                let ran = ran.clone();
                async move {
                    ran.fetch_add(1, Ordering::Relaxed);
                }
            })
            .trigger(Interval::new(Duration::from_secs(3600)).unwrap())
            .next_run_time(t0)
            .id(format!("job{i}"))
            .await
            .unwrap();
    }
    let mut per_run = 0.0;
    for round in 1..=2 {
        let (n, ()) = allocations(async {
            scheduler.process_due_jobs().await;
            while ran.load(Ordering::Relaxed) < round * JOBS {
                tokio::task::yield_now().await;
            }
        })
        .await;
        per_run = n as f64 / JOBS as f64;
        clock.advance(Duration::from_secs(3600)).await;
    }
    scheduler.shutdown().await.unwrap();
    per_run
}

/// The run path allocates a fixed, small number of times per run, and nothing for events
/// nobody listens to.
///
/// Measured 4.19 per run (Rust 1.94, Tokio 1.54): 4 per run plus 0.19 of per-pass work
/// (the claimed batch, the memory store's index nodes) spread over 1000 runs. The 4:
/// - the memory store's claim (`src/store/memory/mod.rs`), 1: the due times `job::advance`
///   lists (`DueJob::run_times`), which the run then keeps. The claimed job is the store's
///   own copy, shared (`DueJob::claim_shared`), not a clone;
/// - handing the run over (`scheduler/core.rs`), 1: the run's `Arc<str>` job id (shared
///   with the `max_instances` count);
/// - the spawn, 1: the task (its future is guarded by `executor::tokio`'s size test);
/// - the job body, 1: the boxed future an `AsyncFn` returns.
///
/// Listened to, each run adds its events: `JOB_SUBMITTED` (job id, store, due times, run
/// ids) and `JOB_EXECUTED` (job id, store), 5 allocations.
///
/// That is with the run ledger off. With it on (the default), measured 4.25: the same 4.
/// The claim's list of records replaces the run's job id, which the run shares with its
/// records (`RunRecord::job_id`, the memory store's key), as their owner is the scheduler's
/// one shared id: no string is copied per run. The run's ids are inline in the run. The
/// memory store's own copy of a record goes into a slab when the store's journal is
/// settled, by the next call that reads or writes runs, usually the writing of outcomes
/// after the runs: not on the run path, and with no allocation per record.
#[tokio::test(start_paused = true)]
async fn allocations_per_run_stay_few() {
    let quiet = allocations_per_run(false, false).await;
    let listened = allocations_per_run(true, false).await;
    let recorded = allocations_per_run(false, true).await;
    eprintln!("allocations per run: {quiet} quiet, {listened} listened to, {recorded} recorded");
    // With the `metrics` feature and a recorder installed (this binary's metrics test
    // installs one, in whatever order the tests run), the recorder's handling of a run's
    // series adds one; the series themselves have static keys and allocate nothing.
    let bound = 4.2 + if cfg!(feature = "metrics") { 1.0 } else { 0.0 };
    assert!(
        quiet <= bound,
        "{quiet} allocations per run (the bound is {bound}): see what was added to the run path"
    );
    let ledger_bound = bound + 0.1;
    assert!(
        recorded <= ledger_bound,
        "{recorded} allocations per run with the run ledger (the bound is {ledger_bound}): \
         see what was added to the run path"
    );
    assert!(
        listened - quiet >= 4.99,
        "{listened} allocations per run with a listener, {quiet} without: events must be \
         built only when someone listens"
    );
}
