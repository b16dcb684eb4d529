//! Retries and auto-pause (issue 12), on the memory store in virtual time: attempts are
//! runs of the same slot in the ledger, waits follow the backoff, a waiting retry holds its
//! instance, timeouts are retried, and a job pauses after N consecutive failed slots with
//! its reason stored. (Persistence across a restart is tested on PostgreSQL and Redis in
//! the `stores` binary.)

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apsched::clock::TestClock;
use apsched::ledger::{RunFilter, RunRecord, RunState};
use apsched::trigger::Interval;
use apsched::{Event, EventKind, JobContext, RetryPolicy, Scheduler};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 15, 10, 0, 0).unwrap()
}

fn secs(n: i64) -> DateTime<Utc> {
    t0() + TimeDelta::seconds(n)
}

fn scheduler(clock: &TestClock, ledger: bool) -> Scheduler {
    Scheduler::builder()
        .timezone(chrono_tz::UTC)
        .clock(clock.shared())
        .run_ledger(ledger)
        .build()
}

/// The job's runs, oldest first.
async fn runs(s: &Scheduler, id: &str) -> Vec<RunRecord> {
    let mut runs = s.job(id).runs(RunFilter::new().limit(1000)).await.unwrap();
    runs.sort_by_key(|r| (r.scheduled, r.attempt));
    runs
}

/// The (scheduled time, attempt) of every attempt a job body saw.
type Seen = Arc<Mutex<Vec<(DateTime<Utc>, u32)>>>;

/// A job body that fails its first `fails` attempts of every slot (by `ctx.attempt()`),
/// noting each attempt it sees.
fn flaky(
    fails: u32,
    seen: Seen,
) -> impl Fn(JobContext) -> std::future::Ready<Result<u32, String>> + Send + Sync + 'static {
    move |ctx: JobContext| {
        seen.lock()
            .unwrap()
            .push((ctx.scheduled_run_time(), ctx.attempt()));
        std::future::ready(if ctx.attempt() <= fails {
            Err(format!("attempt {} failed", ctx.attempt()))
        } else {
            Ok(ctx.attempt())
        })
    }
}

fn drain(rx: &mut apsched::EventReceiver) -> Vec<Event> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push(e);
    }
    out
}

#[tokio::test(start_paused = true)]
async fn a_failed_run_is_retried_with_backoff_as_runs_of_the_same_slot() {
    let clock = TestClock::new(t0());
    let s = scheduler(&clock, true);
    let mut events =
        s.subscribe(EventKind::JOB_ERROR | EventKind::JOB_EXECUTED | EventKind::JOB_RETRYING);
    s.start().await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    s.add_job(flaky(2, seen.clone()))
        .id("sync")
        .trigger(Interval::new(Duration::from_secs(3600)).unwrap())
        .next_run_time(t0())
        .retry(RetryPolicy::exponential(4, Duration::from_secs(10)).jitter(false))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;

    // Attempts 1 and 2 failed, 3 ran 10 s and then 20 s later; all for the 10:00 slot.
    assert_eq!(*seen.lock().unwrap(), vec![(t0(), 1), (t0(), 2), (t0(), 3)]);
    let runs = runs(&s, "sync").await;
    assert_eq!(
        runs.iter()
            .map(|r| (r.scheduled, r.attempt, r.state))
            .collect::<Vec<_>>(),
        vec![
            (t0(), 1, RunState::Error),
            (t0(), 2, RunState::Error),
            (t0(), 3, RunState::Executed)
        ]
    );
    assert_eq!(runs[1].retry_at, Some(secs(10)));
    assert_eq!(runs[2].retry_at, Some(secs(30)));
    assert_eq!(runs[1].started_at, Some(secs(10)));
    assert_eq!(runs[2].started_at, Some(secs(30)));
    assert_eq!(runs[2].output_as::<u32>(), Some(3));
    assert!(runs[0]
        .error
        .as_deref()
        .unwrap()
        .contains("attempt 1 failed"));

    // Each failure is a JOB_ERROR followed by a JOB_RETRYING naming the next attempt.
    let events = drain(&mut events);
    let kinds: Vec<EventKind> = events.iter().map(Event::kind).collect();
    assert_eq!(
        kinds,
        vec![
            EventKind::JOB_ERROR,
            EventKind::JOB_RETRYING,
            EventKind::JOB_ERROR,
            EventKind::JOB_RETRYING,
            EventKind::JOB_EXECUTED
        ]
    );
    let Event::JobRetrying {
        attempt,
        retry_at,
        run_id,
        next_run_id,
        error,
        ..
    } = &events[1]
    else {
        unreachable!()
    };
    assert_eq!((*attempt, *retry_at), (2, secs(10)));
    assert_eq!(*run_id, Some(runs[0].run_id));
    assert_eq!(*next_run_id, Some(runs[1].run_id));
    assert!(error.contains("attempt 1 failed"));
    s.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn retries_end_with_the_last_attempt() {
    let clock = TestClock::new(t0());
    let s = scheduler(&clock, true);
    s.start().await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    s.add_job(flaky(u32::MAX, seen.clone()))
        .id("doomed")
        .trigger(Interval::new(Duration::from_secs(3600)).unwrap())
        .next_run_time(t0())
        .retry(RetryPolicy::fixed(3, Duration::from_secs(5)).jitter(false))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(600)).await;
    let runs = runs(&s, "doomed").await;
    assert_eq!(
        runs.iter()
            .map(|r| (r.attempt, r.state, r.started_at))
            .collect::<Vec<_>>(),
        vec![
            (1, RunState::Error, Some(t0())),
            (2, RunState::Error, Some(secs(5))),
            (3, RunState::Error, Some(secs(10)))
        ]
    );
    s.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_waiting_retry_holds_its_instance() {
    let clock = TestClock::new(t0());
    let s = scheduler(&clock, true);
    let mut events = s.subscribe(EventKind::JOB_MAX_INSTANCES);
    s.start().await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    s.add_job(flaky(1, seen.clone()))
        .id("every10")
        .trigger(Interval::new(Duration::from_secs(10)).unwrap())
        .next_run_time(t0())
        .retry(RetryPolicy::fixed(2, Duration::from_secs(25)).jitter(false))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(26)).await;
    // The 10:00 run failed; its retry waits until 10:00:25, so 10:00:10 and 10:00:20 find
    // the job's one instance taken.
    let skipped: Vec<DateTime<Utc>> = drain(&mut events)
        .into_iter()
        .flat_map(|e| match e {
            Event::JobMaxInstances {
                scheduled_run_times,
                ..
            } => scheduled_run_times,
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(skipped, vec![secs(10), secs(20)]);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, vec![(t0(), 1), (t0(), 2)]);
    s.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_run_is_retried() {
    let clock = TestClock::new(t0());
    let s = scheduler(&clock, true);
    s.start().await.unwrap();
    s.add_job(|ctx: JobContext| async move {
        if ctx.attempt() == 1 {
            // Hangs until cancelled by the timeout.
            ctx.cancelled().await;
            Err("gave up".to_string())
        } else {
            Ok(ctx.attempt())
        }
    })
    .id("slow")
    .trigger(Interval::new(Duration::from_secs(3600)).unwrap())
    .next_run_time(t0())
    .timeout(Duration::from_secs(2))
    .retry(RetryPolicy::fixed(2, Duration::from_secs(5)).jitter(false))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let runs = runs(&s, "slow").await;
    assert_eq!(
        runs.iter()
            .map(|r| (r.attempt, r.state))
            .collect::<Vec<_>>(),
        vec![(1, RunState::TimedOut), (2, RunState::Executed)]
    );
    assert!(runs[0].error.as_deref().unwrap().contains("timed out"));
    assert_eq!(runs[1].retry_at, Some(secs(7)));
    s.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn retries_work_without_the_ledger() {
    let clock = TestClock::new(t0());
    let s = scheduler(&clock, false);
    let mut events = s.subscribe(EventKind::JOB_RETRYING | EventKind::JOB_EXECUTED);
    s.start().await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    s.add_job(flaky(1, seen.clone()))
        .id("noledger")
        .trigger(Interval::new(Duration::from_secs(3600)).unwrap())
        .next_run_time(t0())
        .retry(RetryPolicy::fixed(3, Duration::from_secs(5)).jitter(false))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(*seen.lock().unwrap(), vec![(t0(), 1), (t0(), 2)]);
    let kinds: Vec<EventKind> = drain(&mut events).iter().map(Event::kind).collect();
    assert_eq!(
        kinds,
        vec![EventKind::JOB_RETRYING, EventKind::JOB_EXECUTED]
    );
    s.shutdown().await.unwrap();
}

/// A job body that fails while `failing` is set.
fn switchable(
    failing: Arc<AtomicU32>,
) -> impl Fn() -> std::future::Ready<Result<(), String>> + Send + Sync + 'static {
    move || {
        std::future::ready(if failing.load(Ordering::SeqCst) > 0 {
            Err("the upstream API answered 503".to_string())
        } else {
            Ok(())
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_job_pauses_after_n_consecutive_failures_with_its_reason() {
    let clock = TestClock::new(t0());
    let s = scheduler(&clock, true);
    let mut paused = s.subscribe(EventKind::JOB_AUTO_PAUSED);
    s.start().await.unwrap();
    let failing = Arc::new(AtomicU32::new(1));
    s.add_job(switchable(failing.clone()))
        .id("fetch")
        .trigger(Interval::new(Duration::from_secs(60)).unwrap())
        .next_run_time(t0())
        .pause_after_failures(3)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(600)).await;
    // 10:00, 10:01 and 10:02 failed; then the job is paused and runs no more.
    let runs = runs(&s, "fetch").await;
    assert_eq!(runs.len(), 3, "{runs:?}");
    let job = s.job("fetch").get().await.unwrap().unwrap();
    assert!(job.is_paused());
    assert_eq!(job.consecutive_failures, 3);
    assert_eq!(
        job.paused_reason.as_deref(),
        Some("paused after 3 consecutive failures: the upstream API answered 503")
    );
    assert!(job.to_string().contains("paused: paused after 3"), "{job}");
    let events = drain(&mut paused);
    assert_eq!(events.len(), 1);
    let Event::JobAutoPaused {
        job_id, failures, ..
    } = &events[0]
    else {
        unreachable!()
    };
    assert_eq!((job_id.as_str(), *failures), ("fetch", 3));

    // Resumed, the reason goes and the count starts again: two more failures do not pause.
    let job = s.job("fetch").resume().await.unwrap().unwrap();
    assert_eq!((job.paused_reason, job.consecutive_failures), (None, 0));
    tokio::time::sleep(Duration::from_secs(150)).await;
    let job = s.job("fetch").get().await.unwrap().unwrap();
    assert!(!job.is_paused());
    assert_eq!(job.consecutive_failures, 2);
    // A success sets the count back to zero.
    failing.store(0, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        s.job("fetch")
            .get()
            .await
            .unwrap()
            .unwrap()
            .consecutive_failures,
        0
    );
    s.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_slot_fails_only_when_its_last_attempt_fails() {
    let clock = TestClock::new(t0());
    let s = scheduler(&clock, true);
    s.start().await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    // Every slot's first attempt fails and its retry succeeds: never paused.
    s.add_job(flaky(1, seen.clone()))
        .id("flaky")
        .trigger(Interval::new(Duration::from_secs(60)).unwrap())
        .next_run_time(t0())
        .retry(RetryPolicy::fixed(2, Duration::from_secs(5)).jitter(false))
        .pause_after_failures(2)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(300)).await;
    let job = s.job("flaky").get().await.unwrap().unwrap();
    assert!(!job.is_paused(), "{job}");
    assert_eq!(seen.lock().unwrap().len(), 10);
    s.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn invalid_failure_options_are_refused() {
    let clock = TestClock::new(t0());
    let s = scheduler(&clock, true);
    let err = s
        .add_job(|| async {})
        .retry(RetryPolicy::fixed(1, Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("at least 2"), "{err}");
    let err = s
        .add_job(|| async {})
        .pause_after_failures(0)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("pause_after_failures"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_one_shot_job_is_kept_until_its_retries_end() {
    let clock = TestClock::new(t0());
    let s = scheduler(&clock, true);
    s.start().await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    s.add_job(flaky(1, seen.clone()))
        .id("once")
        .trigger(apsched::trigger::Date::at(t0(), None).unwrap())
        .retry(RetryPolicy::fixed(3, Duration::from_secs(20)).jitter(false))
        .await
        .unwrap();
    s.add_job(flaky(0, seen.clone()))
        .id("fine")
        .trigger(apsched::trigger::Date::at(t0(), None).unwrap())
        .retry(RetryPolicy::fixed(3, Duration::from_secs(20)).jitter(false))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Its trigger has ended, but its retry still needs it: kept, paused, saying why.
    let kept = s
        .job("once")
        .get()
        .await
        .unwrap()
        .expect("kept for its retry");
    assert!(kept.is_paused());
    assert_eq!(
        kept.paused_reason.as_deref(),
        Some(apsched::job::KEPT_FOR_RETRIES)
    );
    // A one-shot job that succeeded at once is removed as usual.
    assert!(s.job("fine").get().await.unwrap().is_none());
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(seen.lock().unwrap().contains(&(t0(), 2)));
    assert!(
        s.job("once").get().await.unwrap().is_none(),
        "removed after its retry"
    );
    let runs = runs(&s, "once").await;
    assert_eq!(
        runs.iter()
            .map(|r| (r.attempt, r.state))
            .collect::<Vec<_>>(),
        vec![(1, RunState::Error), (2, RunState::Executed)]
    );
    s.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_retry_whose_time_went_by_while_stopped_is_missed_beyond_the_grace_time() {
    let clock = TestClock::new(t0());
    let s = scheduler(&clock, true);
    let mut missed = s.subscribe(EventKind::JOB_MISSED);
    s.start().await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    s.add_job(flaky(u32::MAX, seen.clone()))
        .id("late")
        .trigger(Interval::new(Duration::from_secs(3600)).unwrap())
        .next_run_time(t0())
        .misfire_grace_time(Some(Duration::from_secs(5)))
        .retry(RetryPolicy::fixed(3, Duration::from_secs(10)).jitter(false))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    s.shutdown().await.unwrap();
    // Stopped past the retry's time (10:00:10) and its grace time: at the next start it is
    // recorded missed, not run.
    tokio::time::sleep(Duration::from_secs(60)).await;
    s.start().await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(*seen.lock().unwrap(), vec![(t0(), 1)]);
    let runs = runs(&s, "late").await;
    assert_eq!(
        runs.iter()
            .map(|r| (r.attempt, r.state))
            .collect::<Vec<_>>(),
        vec![(1, RunState::Error), (2, RunState::Missed)]
    );
    assert!(runs[1]
        .error
        .as_deref()
        .unwrap()
        .contains("misfire_grace_time"));
    assert_eq!(drain(&mut missed).len(), 1);
    s.shutdown().await.unwrap();
}
