//! Odd calls: shutdown and executor removal from inside a job, management calls before
//! `start()`, and option validation (items 3, 4, 9).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use apsched::clock::TestClock;
use apsched::executor::{BlockingExecutor, LocalExecutor, ProcessExecutor};
use apsched::job::JobRecord;
use apsched::{BlockingScheduler, Error, Event, EventKind, JobChanges, Scheduler, SchedulerState};
use chrono::TimeDelta;

use super::{drain, every, start_time};

/// A one-shot report from inside a job: `send` may be called from every run, the first wins.
fn report<T: Send + 'static>() -> (
    impl Fn(T) + Clone + Send + Sync + 'static,
    tokio::sync::oneshot::Receiver<T>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = Arc::new(std::sync::Mutex::new(Some(tx)));
    let send = move |v: T| {
        if let Some(tx) = tx.lock().unwrap().take() {
            let _ = tx.send(v);
        }
    };
    (send, rx)
}

/// Guards against a hang: a deadlock shows up as a failure, not a stuck test run.
async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("{what} hung"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item3_shutdown_wait_from_inside_an_async_job_returns_after_the_other_runs() {
    let s = Scheduler::builder().build();
    s.start().await.unwrap();
    let other_done = Arc::new(AtomicBool::new(false));
    let done = other_done.clone();
    s.add_job(move || {
        let done = done.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            done.store(true, Ordering::SeqCst);
        }
    })
    .id("slow")
    .await
    .unwrap();
    let (h, seen) = (s.clone(), other_done.clone());
    let (send, rx) = report();
    s.add_job(move || {
        let (h, seen, send) = (h.clone(), seen.clone(), send.clone());
        async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let result = h.shutdown().await;
            // shutdown(true) waited for the other run, not for this one.
            send((result.is_ok(), seen.load(Ordering::SeqCst)));
        }
    })
    .id("stopper")
    .await
    .unwrap();
    let (ok, other_finished) = within("shutdown from inside a job", rx).await.unwrap();
    assert!(ok);
    assert!(
        other_finished,
        "shutdown(true) must still wait for the other runs"
    );
    assert_eq!(s.state(), SchedulerState::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item3_shutdown_wait_from_inside_a_blocking_job_returns() {
    let s = Scheduler::builder()
        .executor("pool", BlockingExecutor::new(2))
        .build();
    s.start().await.unwrap();
    let h = s.clone();
    let (send, rx) = report();
    s.add_blocking_job(move || {
        send(
            tokio::runtime::Handle::current()
                .block_on(h.shutdown())
                .is_ok(),
        )
    })
    .executor("pool")
    .await
    .unwrap();
    assert!(within("shutdown from inside a blocking job", rx)
        .await
        .unwrap());
    assert_eq!(s.state(), SchedulerState::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item3_shutdown_wait_from_inside_a_local_job_returns() {
    let s = Scheduler::builder()
        .executor("local", LocalExecutor::new().unwrap())
        .build();
    s.start().await.unwrap();
    let h = s.clone();
    let (send, rx) = report();
    s.add_local_job(move || {
        let (h, send) = (h.clone(), send.clone());
        async move { send(h.shutdown().await.is_ok()) }
    })
    .await
    .unwrap();
    assert!(within("shutdown from inside a local job", rx)
        .await
        .unwrap());
    assert_eq!(s.state(), SchedulerState::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item3_remove_executor_from_inside_its_own_job_returns() {
    let s = Scheduler::builder()
        .executor("mine", apsched::executor::TokioExecutor::new())
        .build();
    let mut rx_events = s.subscribe(EventKind::EXECUTOR_REMOVED);
    s.start().await.unwrap();
    let h = s.clone();
    let (send, rx) = report();
    s.add_job(move || {
        let (h, send) = (h.clone(), send.clone());
        async move { send(h.remove_executor("mine").await.is_ok()) }
    })
    .executor("mine")
    .await
    .unwrap();
    assert!(within("remove_executor from inside its job", rx)
        .await
        .unwrap());
    assert!(
        matches!(rx_events.recv().await, Ok(Event::ExecutorRemoved { alias }) if alias == "mine")
    );
    s.shutdown().await.unwrap();
}

#[test]
fn item3_blocking_scheduler_run_returns_when_a_job_shuts_it_down_with_wait() {
    let scheduler = BlockingScheduler::new(Scheduler::builder()).unwrap();
    let handle = scheduler.scheduler().clone();
    scheduler
        .add_job(move || {
            let handle = handle.clone();
            async move { handle.shutdown().await.map(|_| ()) }
        })
        .add()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let result = scheduler.run();
        let _ = tx.send((result.is_ok(), scheduler.scheduler().state()));
    });
    let (ok, state) = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("BlockingScheduler::run returns");
    assert!(ok);
    assert_eq!(state, SchedulerState::Stopped);
}

fn virtual_scheduler(clock: &TestClock) -> Scheduler {
    Scheduler::builder()
        .timezone(chrono_tz::UTC)
        .clock(clock.shared())
        .build()
}

#[tokio::test(start_paused = true)]
async fn item4_pause_before_start_is_kept() {
    let clock = TestClock::new(start_time());
    let s = virtual_scheduler(&clock);
    let mut rx = s.subscribe(EventKind::ALL);
    s.add_job(|| async {})
        .id("p")
        .trigger(every(10))
        .await
        .unwrap();
    s.job("p").pause().await.unwrap();
    s.start().await.unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let events = drain(&mut rx);
    assert!(
        !events.iter().any(|e| e.kind() == EventKind::JOB_SUBMITTED),
        "a job paused before start must not run: {events:?}"
    );
    assert!(events.iter().any(|e| e.kind() == EventKind::JOB_MODIFIED));
    let job = s.job("p").get().await.unwrap().unwrap();
    assert!(job.is_paused());
    // Resuming it after start runs it.
    s.job("p").resume().await.unwrap();
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert!(drain(&mut rx)
        .iter()
        .any(|e| e.kind() == EventKind::JOB_EXECUTED));
    s.shutdown_now().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn item4_every_management_call_before_start_works_and_emits_its_event() {
    let clock = TestClock::new(start_time());
    let s = virtual_scheduler(&clock);
    let mut rx = s.subscribe(EventKind::JOB_MODIFIED | EventKind::JOB_REMOVED);
    for id in ["a", "b", "c", "d"] {
        s.add_job(|| async {})
            .id(id)
            .trigger(every(10))
            .await
            .unwrap();
    }
    let modified = s
        .job("a")
        .modify(JobChanges::new().name("renamed").max_instances(2))
        .await
        .unwrap();
    assert_eq!(
        (modified.name.as_str(), modified.max_instances),
        ("renamed", 2)
    );
    s.job("b").pause().await.unwrap();
    s.job("b").resume().await.unwrap();
    s.job("c").reschedule(every(30)).await.unwrap();
    s.job("d").remove().await.unwrap();
    assert!(matches!(
        s.job("d").remove().await,
        Err(Error::JobLookup(_))
    ));
    let codes: Vec<(String, &str)> = drain(&mut rx)
        .iter()
        .map(|e| (e.job_id().unwrap().to_string(), e.kind().name()))
        .collect();
    assert_eq!(
        codes,
        [
            ("a".to_string(), "EVENT_JOB_MODIFIED"),
            ("b".to_string(), "EVENT_JOB_MODIFIED"),
            ("b".to_string(), "EVENT_JOB_MODIFIED"),
            ("c".to_string(), "EVENT_JOB_MODIFIED"),
            ("d".to_string(), "EVENT_JOB_REMOVED"),
        ]
    );
    let ids: Vec<String> = s
        .get_jobs()
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(ids, ["a", "b", "c"]);
    assert_eq!(s.job("a").get().await.unwrap().unwrap().name, "renamed");
    assert!(s.job("d").get().await.unwrap().is_none());
    s.start().await.unwrap();
    let job = |id: &'static str| {
        let s = s.clone();
        async move { s.job(id).get().await.unwrap().unwrap() }
    };
    assert_eq!(job("a").await.max_instances, 2);
    // b: paused then resumed before start, so it runs; c: rescheduled to every 30 s.
    assert_eq!(
        job("b").await.next_run_time,
        Some(start_time() + TimeDelta::seconds(10))
    );
    assert_eq!(
        job("c").await.next_run_time,
        Some(start_time() + TimeDelta::seconds(30))
    );
    s.shutdown_now().await.unwrap();
}

#[tokio::test]
async fn item9_stored_zero_max_instances_or_grace_is_a_corrupt_record() {
    let good = r#"{"id":"j","callable":{"type":"task","name":"t","args":null},
        "trigger":{"kind":"interval","seconds":10},"executor":"default",
        "misfire_grace_time":1.0,"coalesce":true,"max_instances":1,"next_run_time":null}"#;
    assert!(JobRecord::from_json(good, 0, None).is_ok());
    let zero_instances = good.replace(r#""max_instances":1"#, r#""max_instances":0"#);
    let err = JobRecord::from_json(&zero_instances, 0, None).unwrap_err();
    assert!(err.contains("max_instances must be at least 1"), "{err}");
    let zero_grace = good.replace(r#""misfire_grace_time":1.0"#, r#""misfire_grace_time":0"#);
    let err = JobRecord::from_json(&zero_grace, 0, None).unwrap_err();
    assert!(err.contains("misfire_grace_time"), "{err}");
    let any_lateness = good.replace(
        r#""misfire_grace_time":1.0"#,
        r#""misfire_grace_time":null"#,
    );
    assert!(JobRecord::from_json(&any_lateness, 0, None).is_ok());
}

#[tokio::test]
async fn item9_add_and_modify_validate_options_and_the_executor() {
    let s = Scheduler::builder()
        .executor("procs", ProcessExecutor::new(1))
        .build();
    let zero = s.add_job(|| async {}).max_instances(0).await.unwrap_err();
    assert!(matches!(zero, Error::InvalidJob { .. }), "{zero}");
    let zero = s
        .add_job(|| async {})
        .misfire_grace_time(Some(Duration::ZERO))
        .await
        .unwrap_err();
    assert!(matches!(zero, Error::InvalidJob { .. }), "{zero}");
    s.start().await.unwrap();
    s.add_job(|| async {})
        .id("closure")
        .trigger(every(60))
        .await
        .unwrap();
    let err = s
        .job("closure")
        .modify(JobChanges::new().max_instances(0))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidJob { .. }), "{err}");
    // A closure cannot move to the process executor: the same check as add_job.
    let err = s
        .job("closure")
        .modify(JobChanges::new().executor("procs"))
        .await
        .unwrap_err();
    match err {
        Error::InvalidJob { reason, .. } => {
            assert!(
                reason.contains("cannot cross a process boundary"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        s.job("closure").get().await.unwrap().unwrap().executor,
        "default"
    );
    s.shutdown_now().await.unwrap();
}

/// End to end on a real store: a row whose options the scheduler refuses is reported with
/// STORE_ERROR and kept untouched, and never runs; the other jobs do.
#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item9_a_stored_row_with_zero_max_instances_is_reported_and_kept() {
    use apsched::store::JobStore;
    use apsched::store::SqlStore;

    let path = std::env::temp_dir().join(format!("apsched-item9-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let past = chrono::Utc::now() - TimeDelta::seconds(5);
    let doc = |id: &str, max_instances: u32| {
        format!(
            r#"{{"id":"{id}","callable":{{"type":"task","name":"noop","args":null}},
            "trigger":{{"kind":"interval","seconds":1}},"executor":"default",
            "misfire_grace_time":null,"coalesce":true,"max_instances":{max_instances},
            "next_run_time":"{}"}}"#,
            past.to_rfc3339()
        )
    };
    {
        // The contract suite's context registers `noop` among its tasks.
        let writer = SqlStore::sqlite(&path).unwrap();
        writer
            .start(apsched::store::testing::context(
                "default",
                "writer",
                Duration::from_secs(3),
            ))
            .await
            .unwrap();
        writer.shutdown().await.unwrap();
        // Rows no store would write, straight through the driver: the column holds the
        // time in µs rounded up, as the store writes it.
        let past_us = past.timestamp_micros()
            + i64::from(!past.timestamp_subsec_nanos().is_multiple_of(1000));
        let db = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        for (id, max_instances) in [("zero", 0), ("fine", 1)] {
            sqlx::query(
                "INSERT INTO apsched_jobs (id, next_run_time, paused, doc, version) \
                 VALUES (?, ?, FALSE, ?, 0)",
            )
            .bind(id)
            .bind(past_us)
            .bind(doc(id, max_instances))
            .execute(&db)
            .await
            .unwrap();
        }
        db.close().await;
    }
    let s = Scheduler::builder()
        .store("default", SqlStore::sqlite(&path).unwrap())
        .task("noop", |_: serde_json::Value| async {})
        .build();
    let mut rx = s.subscribe(EventKind::STORE_ERROR | EventKind::JOB_SUBMITTED);
    s.start().await.unwrap();
    let (mut reported, mut fine_runs) = (None, 0);
    while reported.is_none() || fine_runs < 2 {
        let ev = within("events", rx.recv()).await.unwrap();
        match ev {
            Event::StoreError {
                job_id: Some(id),
                message,
                ..
            } => {
                assert_eq!(id, "zero");
                reported = Some(message);
            }
            Event::JobSubmitted { job_id, .. } => {
                assert_eq!(job_id, "fine", "the refused row never runs");
                fine_runs += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    let message = reported.unwrap();
    assert!(
        message.contains("max_instances must be at least 1"),
        "{message}"
    );
    // Kept, untouched: the store still holds it (and says why it cannot be loaded).
    let ids: Vec<String> = s
        .get_jobs()
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(ids, ["fine"]);
    assert!(matches!(
        s.job("zero").get().await,
        Err(Error::CorruptJob { .. })
    ));
    s.shutdown_now().await.unwrap();
    let _ = std::fs::remove_file(&path);
}
