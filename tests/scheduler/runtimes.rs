//! One scheduler, its handle used from other runtimes: the shape of an actix-web service,
//! where `main` runs a current-thread runtime and every HTTP worker thread has its own.
//!
//! Each "worker" here is a thread with a current-thread runtime that is dropped as soon as
//! its calls return, so anything a call left on it (a task, a timer) would die with it.
//! These tests use real but short times: paused time belongs to one runtime, and the point
//! here is several.

use std::future::{Future, IntoFuture};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::runtime::{Handle, Id};
use tokio::sync::mpsc;

use apsched::job::JobRecord;
use apsched::store::{DueJob, JobStore, MemoryStore, StoreContext};
use apsched::trigger::Interval;
use apsched::{Event, EventKind, EventReceiver, JobChanges, Scheduler, SchedulerState};

/// Long enough for any step here; reached only when something is broken.
const HANG: Duration = Duration::from_secs(20);

/// Runs `f` on a thread of its own with a current-thread runtime of its own (an actix-web
/// worker), and drops that runtime before returning.
async fn on_worker<F, Fut, T>(s: &Scheduler, f: F) -> T
where
    F: FnOnce(Scheduler) -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let s = s.clone();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let out = rt.block_on(f(s));
        drop(rt);
        out
    });
    // Joined off the scheduler's runtime, which must keep running meanwhile.
    tokio::task::spawn_blocking(move || thread.join().unwrap())
        .await
        .unwrap()
}

/// The next event for `job_id`, skipping others.
async fn next_for(rx: &mut EventReceiver, job_id: &str) -> Event {
    tokio::time::timeout(HANG, async {
        loop {
            let ev = rx.recv().await.unwrap();
            if ev.job_id() == Some(job_id) {
                return ev;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no event for {job_id}"))
}

fn every(ms: u64) -> Interval {
    Interval::new(Duration::from_millis(ms)).unwrap()
}

fn assert_send<T: Send>(_: &T) {}

#[tokio::test]
async fn handle_methods_work_from_other_runtimes() {
    let s = Scheduler::builder().build();
    s.start().await.unwrap();
    let home = Handle::current().id();
    // Every handle future can be awaited in a handler that must be Send (axum, tokio::spawn).
    assert_send(&s.get_jobs());
    assert_send(&s.job("x").pause());
    assert_send(&s.shutdown());
    assert_send(&s.add_job(|| async {}).into_future());

    // Worker 1 adds a listener and a job, then its runtime is gone.
    let (heard_tx, mut heard) = mpsc::unbounded_channel();
    let ran_on: Arc<Mutex<Vec<Id>>> = Arc::default();
    let ran = ran_on.clone();
    on_worker(&s, move |s| async move {
        s.add_listener(EventKind::JOB_EXECUTED, move |ev| {
            let tx = heard_tx.clone();
            async move {
                let _ = tx.send(ev.job_id().map(str::to_string));
            }
        });
        s.add_job(move || {
            let ran = ran.clone();
            async move { ran.lock().unwrap().push(Handle::current().id()) }
        })
        .id("tick")
        .trigger(every(20))
        .await
        .unwrap();
    })
    .await;
    // The job fires and the listener hears it, both on the scheduler's runtime.
    let heard_first = tokio::time::timeout(HANG, heard.recv()).await;
    assert_eq!(
        heard_first.expect("the listener died with the worker's runtime"),
        Some(Some("tick".to_string()))
    );
    assert!(ran_on.lock().unwrap().iter().all(|id| *id == home));

    // Worker 2 subscribes and pauses; the receiver it made works here.
    let mut modified = on_worker(&s, |s| async move {
        let rx = s.subscribe(EventKind::JOB_MODIFIED | EventKind::JOB_REMOVED);
        assert!(s.job("tick").pause().await.unwrap().is_paused());
        rx
    })
    .await;
    assert!(matches!(
        next_for(&mut modified, "tick").await,
        Event::JobModified { .. }
    ));

    // Worker 3 reads, resumes and modifies; the job fires again after the resume.
    let runs_before = ran_on.lock().unwrap().len();
    on_worker(&s, |s| async move {
        assert!(s.job("tick").get().await.unwrap().unwrap().is_paused());
        assert!(s.job("tick").resume().await.unwrap().is_some());
        let job = s
            .job("tick")
            .modify(JobChanges::new().name("ticker"))
            .await
            .unwrap();
        assert_eq!(job.name, "ticker");
    })
    .await;
    tokio::time::timeout(HANG, async {
        while ran_on.lock().unwrap().len() <= runs_before {
            heard.recv().await.unwrap();
        }
    })
    .await
    .expect("the resumed job did not fire");

    // Worker 4 removes it.
    on_worker(&s, |s| async move { s.job("tick").remove().await.unwrap() }).await;
    loop {
        if let Event::JobRemoved { .. } = next_for(&mut modified, "tick").await {
            break;
        }
    }
    assert!(s.get_jobs().await.unwrap().is_empty());

    // Worker 5 shuts down while a job it did not add is running: shutdown(true) waits for it.
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let done = Arc::new(Mutex::new(false));
    let done2 = done.clone();
    s.add_job(move || {
        let (started_tx, done) = (started_tx.clone(), done2.clone());
        async move {
            let _ = started_tx.send(());
            tokio::time::sleep(Duration::from_millis(100)).await;
            *done.lock().unwrap() = true;
        }
    })
    .id("slow")
    .await
    .unwrap();
    tokio::time::timeout(HANG, started.recv()).await.unwrap();
    let finished_first = on_worker(&s, move |s| async move {
        s.shutdown().await.unwrap();
        let finished = *done.lock().unwrap();
        finished
    })
    .await;
    assert!(
        finished_first,
        "shutdown(true) returned before the job ended"
    );
    assert_eq!(s.state(), SchedulerState::Stopped);
}

/// A memory store that notes the runtime of every call, and whose `start` spawns a task
/// that must live as long as the store (as the PostgreSQL LISTEN and Redis pub/sub tasks do).
struct SpyStore {
    inner: MemoryStore,
    calls: Arc<Mutex<Vec<Option<Id>>>>,
    /// Taken by the task `start` spawns; it answers each ping with its runtime.
    pings: Mutex<Option<mpsc::UnboundedReceiver<tokio::sync::oneshot::Sender<Id>>>>,
}

impl SpyStore {
    fn note(&self) {
        let id = Handle::try_current().ok().map(|h| h.id());
        self.calls.lock().unwrap().push(id);
    }
}

#[async_trait::async_trait]
impl JobStore for SpyStore {
    async fn start(&self, ctx: StoreContext) -> apsched::Result<()> {
        self.note();
        if let Some(mut pings) = self.pings.lock().unwrap().take() {
            tokio::spawn(async move {
                while let Some(reply) = pings.recv().await {
                    let _ = reply.send(Handle::current().id());
                }
            });
        }
        self.inner.start(ctx).await
    }
    async fn shutdown(&self) -> apsched::Result<()> {
        self.note();
        self.inner.shutdown().await
    }
    async fn add_job(&self, job: JobRecord, replace_existing: bool) -> apsched::Result<()> {
        self.note();
        self.inner.add_job(job, replace_existing).await
    }
    async fn update_job(&self, job: JobRecord) -> apsched::Result<JobRecord> {
        self.note();
        self.inner.update_job(job).await
    }
    async fn remove_job(&self, id: &str) -> apsched::Result<()> {
        self.note();
        self.inner.remove_job(id).await
    }
    async fn remove_all_jobs(&self) -> apsched::Result<()> {
        self.note();
        self.inner.remove_all_jobs().await
    }
    async fn lookup_job(&self, id: &str) -> apsched::Result<Option<JobRecord>> {
        self.note();
        self.inner.lookup_job(id).await
    }
    async fn get_all_jobs(&self) -> apsched::Result<Vec<JobRecord>> {
        self.note();
        self.inner.get_all_jobs().await
    }
    async fn next_run_time(&self) -> apsched::Result<Option<DateTime<Utc>>> {
        self.note();
        self.inner.next_run_time().await
    }
    async fn acquire_due_jobs(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> apsched::Result<Vec<DueJob>> {
        self.note();
        self.inner.acquire_due_jobs(now, limit).await
    }
}

#[tokio::test]
async fn store_calls_from_other_runtimes_run_in_the_schedulers_runtime() {
    let s = Scheduler::builder().build();
    s.start().await.unwrap();
    let home = Handle::current().id();
    let calls: Arc<Mutex<Vec<Option<Id>>>> = Arc::default();
    let (ping, pings) = mpsc::unbounded_channel();
    let store = SpyStore {
        inner: MemoryStore::new(),
        calls: calls.clone(),
        pings: Mutex::new(Some(pings)),
    };
    let mut executed = s.subscribe(EventKind::JOB_EXECUTED);
    on_worker(&s, move |s| async move {
        s.add_store("spy", store).await.unwrap();
        s.add_job(|| async {})
            .id("in-spy")
            .store("spy")
            .trigger(every(20))
            .await
            .unwrap();
        s.job("in-spy").pause().await.unwrap();
        s.job("in-spy").resume().await.unwrap();
        assert_eq!(s.store("spy").get_jobs().await.unwrap().len(), 1);
    })
    .await;
    // What the store's start spawned outlives the worker that added the store.
    let (reply, answer) = tokio::sync::oneshot::channel();
    ping.send(reply)
        .expect("the store's task died with the worker's runtime");
    let answered_on = tokio::time::timeout(HANG, answer).await.unwrap();
    assert_eq!(answered_on.ok(), Some(home));
    next_for(&mut executed, "in-spy").await;
    on_worker(&s, |s| async move {
        s.remove_store("spy").await.unwrap();
        s.shutdown().await.unwrap();
    })
    .await;
    let calls = calls.lock().unwrap();
    assert!(calls.len() > 6, "{calls:?}");
    assert!(
        calls.iter().all(|id| *id == Some(home)),
        "store calls outside the scheduler's runtime: {calls:?}"
    );
}

#[tokio::test]
async fn runs_submitted_from_another_runtime_live_on_the_schedulers_runtime() {
    // A manual scheduler: the caller of process_due_jobs submits the runs.
    let s = Scheduler::builder().manual().build();
    s.start().await.unwrap();
    let home = Handle::current().id();
    let release = Arc::new(tokio::sync::Notify::new());
    let (ran_on_tx, mut ran_on) = mpsc::unbounded_channel();
    let r = release.clone();
    s.add_job(move || {
        let (release, ran_on_tx) = (r.clone(), ran_on_tx.clone());
        async move {
            release.notified().await;
            let _ = ran_on_tx.send(Handle::current().id());
        }
    })
    .id("waits")
    .await
    .unwrap();
    let mut executed = s.subscribe(EventKind::JOB_EXECUTED);
    on_worker(&s, |s| async move {
        s.process_due_jobs().await;
    })
    .await;
    // The worker's runtime is gone; the run it submitted is not.
    release.notify_one();
    next_for(&mut executed, "waits").await;
    assert_eq!(ran_on.recv().await, Some(home));
    s.shutdown().await.unwrap();
}

#[test]
fn listeners_can_be_added_from_a_thread_without_a_runtime() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let s = Scheduler::builder().build();
    let (tx, heard) = std::sync::mpsc::channel();
    // Added while stopped and outside any runtime: it starts with the scheduler, and hears
    // what start emitted before its task began (EXECUTOR_ADDED comes first).
    s.add_listener(
        EventKind::EXECUTOR_ADDED | EventKind::SCHEDULER_STARTED,
        move |ev| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(ev.kind());
            }
        },
    );
    rt.block_on(s.start()).unwrap();
    assert_eq!(heard.recv_timeout(HANG), Ok(EventKind::EXECUTOR_ADDED));
    assert_eq!(heard.recv_timeout(HANG), Ok(EventKind::SCHEDULER_STARTED));
    let (tx, heard) = std::sync::mpsc::channel();
    let id = s.add_listener(EventKind::JOB_EXECUTED, move |ev| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(ev.job_id().map(str::to_string));
        }
    });
    rt.block_on(s.add_job(|| async {}).id("once").into_future())
        .unwrap();
    assert_eq!(heard.recv_timeout(HANG), Ok(Some("once".to_string())));
    assert!(s.remove_listener(id));
    rt.block_on(s.shutdown()).unwrap();
}

#[test]
fn a_blocked_scheduler_runtime_holds_runs_until_it_runs_again() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = Scheduler::builder().build();
    rt.block_on(s.start()).unwrap();
    let mut executed = s.subscribe(EventKind::JOB_EXECUTED);
    // The scheduler's runtime is not driven now (its thread does other things); calls
    // from another runtime still return.
    let s2 = s.clone();
    std::thread::spawn(move || {
        let worker = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        worker.block_on(async {
            s2.add_job(|| async {}).id("later").await.unwrap();
            assert_eq!(s2.get_jobs().await.unwrap().len(), 1);
        });
    })
    .join()
    .unwrap();
    // Driven again, it runs the job.
    rt.block_on(async {
        next_for(&mut executed, "later").await;
        s.shutdown().await.unwrap();
    });
}

#[test]
fn start_outside_a_runtime_is_an_error_except_for_a_manual_scheduler() {
    let s = Scheduler::builder().build();
    assert!(matches!(
        futures::executor::block_on(s.start()),
        Err(apsched::Error::State { .. })
    ));
    assert_eq!(s.state(), SchedulerState::Stopped);
    let manual = Scheduler::builder().manual().build();
    futures::executor::block_on(manual.start()).unwrap();
    futures::executor::block_on(manual.shutdown()).unwrap();
}

/// The actix-web example's own app (`examples/actix.rs`), driven through its routes.
#[cfg(feature = "sqlite")]
#[allow(dead_code)] // the example's `main`
#[path = "../../examples/actix.rs"]
mod actix_example;

#[cfg(feature = "sqlite")]
mod actix {
    use actix_web::http::StatusCode;
    use actix_web::{test, web, App};
    use serde_json::{json, Value};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::actix_example as example;
    use super::*;
    use apsched::store::SqlStore;

    /// A fresh SQLite file, removed on drop.
    struct TempDb(std::path::PathBuf);

    impl TempDb {
        fn new() -> Self {
            let name = format!("apsched-actix-{}.db", rand_suffix());
            TempDb(std::env::temp_dir().join(name))
        }
    }

    impl Drop for TempDb {
        fn drop(&mut self) {
            for ext in ["", "-wal", "-shm"] {
                let mut p = self.0.clone().into_os_string();
                p.push(ext);
                let _ = std::fs::remove_file(p);
            }
        }
    }

    fn rand_suffix() -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        format!("{}-{nanos}", std::process::id())
    }

    fn started(db: &TempDb) -> (Scheduler, web::Data<example::Greetings>) {
        let greetings = web::Data::new(example::Greetings::default());
        let store = SqlStore::sqlite(&db.0).unwrap();
        (example::scheduler(store, greetings.clone()), greetings)
    }

    #[actix_web::test]
    async fn every_route_of_the_example_app() {
        let db = TempDb::new();
        let (s, greetings) = started(&db);
        s.start().await.unwrap();
        let mut executed = s.subscribe(EventKind::JOB_EXECUTED);
        let app = test::init_service(
            App::new()
                .app_data(web::Data::new(s.clone()))
                .app_data(greetings.clone())
                .configure(example::routes),
        )
        .await;
        let call = |method: &str, uri: &str, body: Option<Value>| {
            let req = match method {
                "GET" => test::TestRequest::get(),
                "POST" => test::TestRequest::post(),
                _ => test::TestRequest::delete(),
            }
            .uri(uri);
            let req = match body {
                Some(b) => req.set_json(b),
                None => req,
            };
            req.to_request()
        };
        let json_of = |bytes: web::Bytes| serde_json::from_slice::<Value>(&bytes).unwrap();

        // Add: a task and a trigger in its JSON form.
        let new = json!({"id": "hello", "task": "greet", "args": {"name": "world"},
                         "trigger": {"kind": "interval", "hours": 1}});
        let resp = test::call_service(&app, call("POST", "/jobs", Some(new.clone()))).await;
        assert_eq!(resp.status(), StatusCode::CREATED);
        let job = json_of(test::read_body(resp).await);
        assert_eq!(job["trigger"]["kind"], "interval");
        assert!(job["next_run_time"].is_string());
        let resp = test::call_service(&app, call("POST", "/jobs", Some(new))).await;
        assert_eq!(resp.status(), StatusCode::CONFLICT);
        let unknown = json!({"id": "x", "task": "nope"});
        let resp = test::call_service(&app, call("POST", "/jobs", Some(unknown))).await;
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);

        // List.
        let resp = test::call_service(&app, call("GET", "/jobs", None)).await;
        let jobs = json_of(test::read_body(resp).await);
        assert_eq!(jobs.as_array().unwrap().len(), 1);
        assert_eq!(jobs[0]["id"], "hello");

        // Pause, then run now: it fires and the task writes into the app state.
        let resp = test::call_service(&app, call("POST", "/jobs/hello/pause", None)).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(json_of(test::read_body(resp).await)["next_run_time"].is_null());
        let resp = test::call_service(&app, call("POST", "/jobs/hello/run", None)).await;
        assert_eq!(resp.status(), StatusCode::OK);
        next_for(&mut executed, "hello").await;
        let resp = test::call_service(&app, call("GET", "/greetings", None)).await;
        assert_eq!(json_of(test::read_body(resp).await), json!({"world": 1}));

        // Resume: it has a next run time again.
        let resp = test::call_service(&app, call("POST", "/jobs/hello/pause", None)).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let resp = test::call_service(&app, call("POST", "/jobs/hello/resume", None)).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(json_of(test::read_body(resp).await)["next_run_time"].is_string());

        // Remove.
        let resp = test::call_service(&app, call("DELETE", "/jobs/hello", None)).await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        let resp = test::call_service(&app, call("POST", "/jobs/hello/pause", None)).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        s.shutdown().await.unwrap();
    }

    /// One HTTP/1.1 request on a fresh connection; the status and the body.
    async fn http(
        addr: std::net::SocketAddr,
        method: &str,
        path: &str,
        body: Value,
    ) -> (u16, Value) {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        conn.read_to_string(&mut response).await.unwrap();
        let status = response[9..12].parse().unwrap();
        let (_, body) = response.split_once("\r\n\r\n").unwrap();
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    /// The example's server with its worker threads, each with its own runtime: jobs added
    /// through them run on the scheduler's runtime, and the shutdown order of the example
    /// (server, then scheduler waiting for running jobs) loses no run.
    #[actix_web::test]
    async fn the_example_server_on_its_workers() {
        let db = TempDb::new();
        let (s, greetings) = started(&db);
        s.start().await.unwrap();
        let mut events = s.subscribe(EventKind::JOB_EXECUTED | EventKind::JOB_SUBMITTED);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server =
            example::server(listener, web::Data::new(s.clone()), greetings.clone()).unwrap();
        let handle = server.handle();
        let serving = actix_web::rt::spawn(server);

        let new = json!({"id": "hi", "task": "greet", "args": {"name": "workers"},
                         "trigger": {"kind": "interval", "seconds": 3600}});
        assert_eq!(http(addr, "POST", "/jobs", new).await.0, 201);
        assert_eq!(http(addr, "POST", "/jobs/hi/run", Value::Null).await.0, 200);
        loop {
            if let Event::JobExecuted { .. } = next_for(&mut events, "hi").await {
                break;
            }
        }
        let (status, counts) = http(addr, "GET", "/greetings", Value::Null).await;
        assert_eq!((status, counts), (200, json!({"workers": 1})));
        assert_eq!(
            http(addr, "POST", "/jobs/hi/pause", Value::Null).await.0,
            200
        );
        assert_eq!(
            http(addr, "POST", "/jobs/hi/resume", Value::Null).await.0,
            200
        );
        let (_, jobs) = http(addr, "GET", "/jobs", Value::Null).await;
        assert_eq!(jobs[0]["id"], "hi");

        // A job still running when the server stops: the scheduler waits for it.
        let slow = json!({"id": "slow", "task": "greet", "args": {"name": "slow", "work_ms": 100}});
        assert_eq!(http(addr, "POST", "/jobs", slow).await.0, 201);
        loop {
            if let Event::JobSubmitted { .. } = next_for(&mut events, "slow").await {
                break;
            }
        }
        handle.stop(true).await;
        serving.await.unwrap().unwrap();
        s.shutdown().await.unwrap();
        assert_eq!(greetings.counts().get("slow"), Some(&1));
    }
}
