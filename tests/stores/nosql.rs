//! Store-specific scenarios shared by the Redis, MongoDB and ZooKeeper tests: corrupt
//! records, closures refused, restart persistence and a server restart under a running
//! scheduler. Each store module supplies the store factory and the raw-write hooks.

#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apsched::event::{Event, EventKind};
use apsched::job::{Callable, JobRecord};
use apsched::store::JobStore;
use apsched::trigger::Interval;
use apsched::{Error, Scheduler};
use futures::future::BoxFuture;

use crate::suite;

/// A job record in the suite's shape whose task is `task`.
pub fn task_job(id: &str, task: &str, next: chrono::DateTime<chrono::Utc>) -> JobRecord {
    let mut j = suite::interval_job(id, 60, Some(next));
    j.callable = Callable::Task {
        name: task.into(),
        args: serde_json::json!(null),
    };
    j
}

/// A closure job cannot go into a persistent store.
pub async fn closures_refused(store: impl JobStore) {
    assert!(store.is_persistent());
    let mut job = suite::interval_job("closure", 60, Some(suite::at(0)));
    job.callable = Callable::from_async(|| async {});
    let err = store.add_job(job, false).await.unwrap_err();
    assert!(matches!(err, Error::InvalidJob { .. }), "{err}");
    assert!(store.lookup_job("closure").await.unwrap().is_none());
}

/// Corrupt records: `bad_json` holds an unparseable document and `unknown_task` names a task
/// that is not registered (both written raw by the caller, due at `suite::at(0)`), and `good`
/// is a normal job due at `suite::at(0)`. They are reported once each, never claimed, skipped
/// by `get_all_jobs` and `next_run_time`, and left untouched (`raw` reads them back).
pub async fn corrupt_records<S, R, RF>(store: S, mut rx: apsched::event::EventReceiver, raw: R)
where
    S: JobStore,
    R: Fn(&'static str) -> RF,
    RF: Future<Output = Option<String>>,
{
    let before_bad = raw("bad_json").await.expect("bad_json was written");
    let before_unknown = raw("unknown_task").await.expect("unknown_task was written");

    let all = store.get_all_jobs().await.unwrap();
    assert_eq!(
        all.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
        ["good"]
    );
    for _ in 0..3 {
        let due = store.acquire_due_jobs(suite::at(100), 100).await.unwrap();
        assert!(
            due.iter().all(|d| d.job.id == "good"),
            "only the good job is claimed: {:?}",
            due.iter().map(|d| &d.job.id).collect::<Vec<_>>()
        );
        store.release_jobs(&due).await.unwrap();
    }
    // The good job moved on to at(120); the corrupt ones do not keep next_run_time at at(0).
    assert_eq!(store.next_run_time().await.unwrap(), Some(suite::at(120)));
    assert!(matches!(
        store.lookup_job("bad_json").await,
        Err(Error::CorruptJob { .. })
    ));

    let mut reported = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        if let Event::StoreError {
            job_id: Some(id),
            message,
            ..
        } = ev
        {
            reported.push((id, message));
        }
    }
    reported.sort();
    let ids: Vec<&str> = reported.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        ids,
        ["bad_json", "unknown_task"],
        "each reported once: {reported:?}"
    );
    assert!(
        reported[1].1.contains("no task named 'mystery'"),
        "{reported:?}"
    );

    assert_eq!(raw("bad_json").await.as_deref(), Some(before_bad.as_str()));
    assert_eq!(
        raw("unknown_task").await.as_deref(),
        Some(before_unknown.as_str())
    );
}

/// A scheduler with a `tick` task counting its runs in `count`.
pub fn scheduler_with<S: JobStore>(store: S, id: &str, count: Arc<AtomicUsize>) -> Scheduler {
    Scheduler::builder()
        .store("default", store)
        .scheduler_id(id)
        .lease(Duration::from_secs(3))
        .task("tick", move |_: serde_json::Value| {
            let count = count.clone();
            async move {
                count.fetch_add(1, Ordering::SeqCst);
            }
        })
        .build()
}

/// Waits (real time) until `count` reaches `n`; panics after `secs`.
pub async fn wait_count(count: &AtomicUsize, n: usize, secs: u64, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while count.load(Ordering::SeqCst) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {} runs after {secs} s, expected {n}",
            count.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Restart persistence: a job added by one scheduler is there for the next one on the same
/// store, and keeps running.
pub async fn restart_persistence<S, F, Fut>(make: F)
where
    S: JobStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    let count = Arc::new(AtomicUsize::new(0));
    let s1 = scheduler_with(make().await, "first", count.clone());
    s1.start().await.unwrap();
    s1.add_task_job("tick", ())
        .id("persisted")
        .trigger(Interval::new(Duration::from_millis(500)).unwrap())
        .await
        .unwrap();
    wait_count(&count, 1, 10, "first scheduler").await;
    s1.shutdown().await.unwrap();
    drop(s1);

    let count2 = Arc::new(AtomicUsize::new(0));
    let s2 = scheduler_with(make().await, "second", count2.clone());
    s2.start().await.unwrap();
    let job = s2
        .job("persisted")
        .get()
        .await
        .unwrap()
        .expect("job survived the restart");
    assert_eq!(job.callable, "task tick");
    wait_count(&count2, 2, 10, "second scheduler").await;
    s2.remove_all_jobs().await.unwrap();
    s2.shutdown().await.unwrap();
}

/// Builds the command that starts a private server in its directory on its port.
type ServerCommand = Box<dyn Fn(&Path, u16) -> Command + Send + Sync>;

/// A server process of the test's own (a temp directory, a free port on 127.0.0.1), for
/// tests that kill it with SIGKILL and start it again; killed and cleaned up when dropped.
pub struct PrivateServer {
    dir: PathBuf,
    port: u16,
    command: ServerCommand,
    /// What "up" means beyond an open port (ZooKeeper must also accept sessions).
    ready: Option<fn(u16) -> BoxFuture<'static, ()>>,
    child: Mutex<Option<Child>>,
}

impl PrivateServer {
    /// Starts the server `command(dir, port)` builds and waits until it is up.
    pub async fn start(
        name: &str,
        command: impl Fn(&Path, u16) -> Command + Send + Sync + 'static,
        ready: Option<fn(u16) -> BoxFuture<'static, ()>>,
    ) -> Arc<PrivateServer> {
        let dir = std::env::temp_dir().join(format!("apsched-{name}-{}", suite::unique_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let server = Arc::new(PrivateServer {
            dir,
            port: crate::free_port(),
            command: Box::new(command),
            ready,
            child: Mutex::new(None),
        });
        server.bring_back().await;
        server
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills it with SIGKILL.
    pub fn kill(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it (again) and waits until it is up.
    pub async fn bring_back(&self) {
        let child = (self.command)(&self.dir, self.port)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the private server starts");
        *self.child.lock().unwrap() = Some(child);
        crate::wait_port(self.port);
        if let Some(ready) = self.ready {
            ready(self.port).await;
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The server goes away under a running scheduler and comes back 2 s later: the scheduler
/// reports store errors meanwhile, loses no job, and runs it again by itself afterwards.
pub async fn server_restart<S: JobStore>(store: S, server: &PrivateServer) {
    let count = Arc::new(AtomicUsize::new(0));
    let s = scheduler_with(store, "survivor", count.clone());
    let mut errors = s.subscribe(EventKind::STORE_ERROR);
    s.start().await.unwrap();
    s.add_task_job("tick", ())
        .id("steady")
        .trigger(Interval::new(Duration::from_millis(300)).unwrap())
        .await
        .unwrap();
    wait_count(&count, 2, 10, "before the outage").await;

    server.kill();
    // Real time is what this test is about: the loop must see the outage.
    tokio::time::timeout(Duration::from_secs(20), errors.recv())
        .await
        .expect("a STORE_ERROR event during the outage")
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.bring_back().await;

    let after = count.load(Ordering::SeqCst);
    wait_count(&count, after + 3, 60, "after the server came back").await;
    assert!(
        s.job("steady").get().await.unwrap().is_some(),
        "job still stored"
    );
    s.remove_all_jobs().await.unwrap();
    s.shutdown().await.unwrap();
}

/// The `STORE_ERROR` events waiting in `rx`, as (job id, message), sorted.
pub fn store_errors(rx: &mut apsched::event::EventReceiver) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        if let Event::StoreError {
            job_id, message, ..
        } = ev
        {
            out.push((job_id.unwrap_or_default(), message));
        }
    }
    out.sort();
    out
}

/// Year 9999 (the last µs of it, which a double cannot hold exactly) next to a job every
/// 10 s: the near job keeps being claimed, the far one keeps its exact time, and it is
/// claimed exactly when it comes due.
pub async fn far_future_dates(store: impl JobStore) {
    use chrono::{TimeDelta, TimeZone, Utc};
    let far =
        Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap() + TimeDelta::microseconds(999_999);
    store
        .add_job(suite::date_job("far", far), false)
        .await
        .unwrap();
    store
        .add_job(suite::interval_job("near", 10, Some(suite::at(0))), false)
        .await
        .unwrap();
    assert_eq!(store.next_run_time().await.unwrap(), Some(suite::at(0)));
    for pass in 0..3 {
        let due = store
            .acquire_due_jobs(suite::at(pass * 10), 100)
            .await
            .unwrap();
        let ids: Vec<&str> = due.iter().map(|d| d.job.id.as_str()).collect();
        assert_eq!(ids, ["near"], "pass {pass}");
        store.release_jobs(&due).await.unwrap();
    }
    assert_eq!(store.next_run_time().await.unwrap(), Some(suite::at(30)));
    let all = store.get_all_jobs().await.unwrap();
    let ids: Vec<(&str, _)> = all
        .iter()
        .map(|j| (j.id.as_str(), j.next_run_time))
        .collect();
    assert_eq!(ids, [("near", Some(suite::at(30))), ("far", Some(far))]);

    store.remove_job("near").await.unwrap();
    assert_eq!(
        store.next_run_time().await.unwrap(),
        Some(far),
        "exact, not rounded"
    );
    let just_before = far - TimeDelta::microseconds(1);
    assert!(store
        .acquire_due_jobs(just_before, 100)
        .await
        .unwrap()
        .is_empty());
    let due = store.acquire_due_jobs(far, 100).await.unwrap();
    assert_eq!(due.len(), 1, "the far job is claimed when it comes due");
    assert_eq!(due[0].run_times, vec![far]);
    assert!(due[0].removed);
    store.release_jobs(&due).await.unwrap();
    assert_eq!(store.next_run_time().await.unwrap(), None);
}

/// `Duration::MAX` as the lease: claims, releases and the next run time work (the lease
/// saturates at the latest representable time instead of overflowing).
pub async fn max_lease<S: JobStore>(store: &S) {
    store
        .add_job(suite::interval_job("a", 10, Some(suite::at(0))), false)
        .await
        .unwrap();
    let due = store.acquire_due_jobs(suite::at(0), 10).await.unwrap();
    assert_eq!(due.len(), 1);
    store.release_jobs(&due).await.unwrap();
    assert_eq!(store.next_run_time().await.unwrap(), Some(suite::at(10)));
    let due = store.acquire_due_jobs(suite::at(10), 10).await.unwrap();
    assert_eq!(due.len(), 1);
    // Not released: the claim holds "forever" for other schedulers, and for this one the
    // job is still claimable at its time.
    assert_eq!(store.next_run_time().await.unwrap(), Some(suite::at(20)));
}

/// A store with every duration option at `Duration::MAX` (started by the caller) works:
/// claims, releases, next run times, and its poll interval is what was asked for. (The
/// scheduler loop's own arithmetic with such a poll interval is the loop's business.)
pub async fn max_options(store: impl JobStore, poll: Option<Duration>) {
    max_lease(&store).await;
    assert_eq!(store.poll_interval(), poll);
}

/// After one claim pass over index entries that disagree with their jobs: the pass claims
/// exactly `claimed`, a second pass at the same time claims nothing, `next_run_time` is
/// `next` (not a past time the loop would spin on), every job in `kept` is still stored with
/// that next run time, and each of `reported` got a `STORE_ERROR` event.
pub async fn index_mismatch_settles(
    store: impl JobStore,
    mut rx: apsched::event::EventReceiver,
    now: chrono::DateTime<chrono::Utc>,
    claimed: &[&str],
    next: Option<chrono::DateTime<chrono::Utc>>,
    kept: &[(&str, Option<chrono::DateTime<chrono::Utc>>)],
    reported: &[&str],
) {
    let due = store.acquire_due_jobs(now, 100).await.unwrap();
    let mut ids: Vec<&str> = due.iter().map(|d| d.job.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, claimed, "claimed by the first pass");
    store.release_jobs(&due).await.unwrap();
    assert_eq!(
        store.next_run_time().await.unwrap(),
        next,
        "repaired next run time"
    );
    for pass in 0..3 {
        let due = store.acquire_due_jobs(now, 100).await.unwrap();
        assert!(
            due.is_empty(),
            "pass {pass} claims nothing more: {:?}",
            due.iter().map(|d| &d.job.id).collect::<Vec<_>>()
        );
        assert_eq!(store.next_run_time().await.unwrap(), next, "pass {pass}");
    }
    for (id, at) in kept {
        let job = store.lookup_job(id).await.unwrap();
        assert_eq!(
            job.map(|j| j.next_run_time),
            Some(*at),
            "job {id} is kept with its document's next run time"
        );
    }
    let errors = store_errors(&mut rx);
    let ids: Vec<&str> = errors.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, reported, "reported once each: {errors:?}");
}

/// A scheduler on `store`, whose job `victim` (task `tick`, due now, added and made
/// unclaimable by the caller) fails every claim: a job beside it, every 300 ms, keeps
/// running, and the failures are reported with the victim's id.
pub async fn won_claims_run<S: JobStore>(store: S) {
    let count = Arc::new(AtomicUsize::new(0));
    let s = scheduler_with(store, "runner", count.clone());
    let mut errors = s.subscribe(EventKind::STORE_ERROR);
    s.start().await.unwrap();
    s.add_task_job("tick", ())
        .id("steady")
        .trigger(Interval::new(Duration::from_millis(300)).unwrap())
        .await
        .unwrap();
    wait_count(&count, 3, 20, "a job beside one whose claims fail").await;
    let victim_reported = async {
        loop {
            if let Ok(Event::StoreError {
                job_id: Some(id), ..
            }) = errors.recv().await
            {
                if id == "victim" {
                    return;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), victim_reported)
        .await
        .expect("the victim's failed claims are reported");
    s.shutdown().await.unwrap();
}
