//! A scheduler inside an actix-web service: the `Scheduler` handle lives in `web::Data`,
//! routes list, add, pause, resume, run and remove jobs, a job writes into the app state
//! that a route reads, and shutdown is graceful (the HTTP server stops first, then the
//! scheduler lets running jobs finish). Jobs are kept in SQLite, so they survive a restart.
//!
//! ```text
//! cargo run --example actix --features sqlite
//! curl 127.0.0.1:8080/jobs
//! curl -X POST 127.0.0.1:8080/jobs -H 'content-type: application/json' -d '{"id": "hello",
//!      "task": "greet", "args": {"name": "world"}, "trigger": {"kind": "interval", "seconds": 5}}'
//! curl -X POST 127.0.0.1:8080/jobs/hello/pause
//! curl -X POST 127.0.0.1:8080/jobs/hello/resume
//! curl -X POST 127.0.0.1:8080/jobs/hello/run
//! curl 127.0.0.1:8080/greetings
//! curl -X DELETE 127.0.0.1:8080/jobs/hello
//! ```
//! `trigger` is any trigger's JSON form (`{"kind": "cron", "minute": "*/2"}`, `{"kind":
//! "date", "run_date": "2030-01-01T09:00:00"}`, ...; see docs/triggers.md). Ctrl-C stops the
//! server, then waits for running jobs. `APSCHED_EXAMPLE_ADDR` sets the address (default
//! 127.0.0.1:8080), `APSCHED_EXAMPLE_DB` the SQLite file (default `apsched-actix.db` in the
//! temporary directory).
//!
//! `#[actix_web::main]` runs a current-thread runtime and every HTTP worker thread has one
//! of its own. The scheduler runs on the runtime it is started on (here `main`'s); handlers
//! call it from their workers' runtimes, and what they add runs on the scheduler's runtime.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, App, HttpResponse, HttpServer, ResponseError};
use serde::Deserialize;

use apsched::store::JobStore;
use apsched::trigger::{Interval, TriggerSpec};
use apsched::{Job, JobChanges, Scheduler};

/// What the `greet` task writes and `GET /greetings` reads: runs per name.
#[derive(Debug, Default)]
pub struct Greetings(Mutex<BTreeMap<String, u64>>);

impl Greetings {
    /// Runs so far, per name.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The `greet` task's arguments, as stored with the job.
#[derive(Debug, Deserialize)]
struct Greet {
    name: String,
    /// How long the greeting takes (to see shutdown wait for a running job).
    #[serde(default)]
    work_ms: u64,
}

/// The scheduler with the tasks that jobs can name. The `greet` task calls back into the
/// app state: it counts its runs in `greetings`, which a route serves.
pub fn scheduler(store: impl JobStore, greetings: web::Data<Greetings>) -> Scheduler {
    Scheduler::builder()
        .store("default", store)
        .task("greet", move |greet: Greet| {
            let greetings = greetings.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(greet.work_ms)).await;
                println!("hello, {}", greet.name);
                let mut counts = greetings.0.lock().unwrap_or_else(|e| e.into_inner());
                *counts.entry(greet.name).or_default() += 1;
            }
        })
        .build()
}

/// `POST /jobs`: a registered task and its arguments, and a trigger in its JSON form (no
/// trigger: run once, now).
#[derive(Debug, Deserialize)]
struct NewJob {
    id: String,
    task: String,
    #[serde(default)]
    args: serde_json::Value,
    trigger: Option<TriggerSpec>,
}

/// A scheduler error as an HTTP response (its message as the body).
#[derive(Debug)]
struct ApiError(apsched::Error);

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl From<apsched::Error> for ApiError {
    fn from(e: apsched::Error) -> Self {
        ApiError(e)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match &self.0 {
            apsched::Error::JobLookup(_) => StatusCode::NOT_FOUND,
            apsched::Error::ConflictingId(_) => StatusCode::CONFLICT,
            apsched::Error::Trigger(_)
            | apsched::Error::InvalidJob { .. }
            | apsched::Error::UnknownTask(_) => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

async fn list(s: web::Data<Scheduler>) -> ApiResult<web::Json<Vec<Job>>> {
    Ok(web::Json(s.get_jobs().await?))
}

async fn add(s: web::Data<Scheduler>, new: web::Json<NewJob>) -> ApiResult<HttpResponse> {
    let NewJob {
        id,
        task,
        args,
        trigger,
    } = new.into_inner();
    let mut job = s.add_task_job(task, args).id(id);
    if let Some(trigger) = trigger {
        job = job.trigger(trigger);
    }
    let job = job.await?;
    Ok(HttpResponse::Created().json(job))
}

async fn pause(s: web::Data<Scheduler>, id: web::Path<String>) -> ApiResult<web::Json<Job>> {
    Ok(web::Json(s.job(id.into_inner()).pause().await?))
}

/// `null` when the job's trigger had no fire time left (the job is then removed).
async fn resume(
    s: web::Data<Scheduler>,
    id: web::Path<String>,
) -> ApiResult<web::Json<Option<Job>>> {
    Ok(web::Json(s.job(id.into_inner()).resume().await?))
}

/// Runs the job now: its next run time becomes now (a paused job runs and then follows
/// its trigger again, as with APScheduler's `job.modify(next_run_time=now)`).
async fn run(s: web::Data<Scheduler>, id: web::Path<String>) -> ApiResult<web::Json<Job>> {
    let now = s.clock().now();
    let changes = JobChanges::new().next_run_time(Some(now));
    Ok(web::Json(s.job(id.into_inner()).modify(changes).await?))
}

async fn remove(s: web::Data<Scheduler>, id: web::Path<String>) -> ApiResult<HttpResponse> {
    s.job(id.into_inner()).remove().await?;
    Ok(HttpResponse::NoContent().finish())
}

async fn greetings(g: web::Data<Greetings>) -> web::Json<BTreeMap<String, u64>> {
    web::Json(g.counts())
}

/// The routes; the app needs `web::Data<Scheduler>` and `web::Data<Greetings>`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/jobs", web::get().to(list))
        .route("/jobs", web::post().to(add))
        .route("/jobs/{id}", web::delete().to(remove))
        .route("/jobs/{id}/pause", web::post().to(pause))
        .route("/jobs/{id}/resume", web::post().to(resume))
        .route("/jobs/{id}/run", web::post().to(run))
        .route("/greetings", web::get().to(greetings));
}

/// The HTTP server: every worker builds the same app around the shared handles.
pub fn server(
    listener: std::net::TcpListener,
    scheduler: web::Data<Scheduler>,
    greetings: web::Data<Greetings>,
) -> std::io::Result<actix_web::dev::Server> {
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(scheduler.clone())
            .app_data(greetings.clone())
            .configure(routes)
    })
    .listen(listener)?
    .run())
}

#[actix_web::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let db = std::env::var_os("APSCHED_EXAMPLE_DB")
        .map_or_else(|| std::env::temp_dir().join("apsched-actix.db"), Into::into);
    let greetings = web::Data::new(Greetings::default());
    let scheduler = scheduler(apsched::store::SqlStore::sqlite(&db)?, greetings.clone());
    scheduler.start().await?;
    scheduler
        .add_task_job("greet", serde_json::json!({ "name": "heartbeat" }))
        .id("heartbeat")
        .trigger(Interval::new(Duration::from_secs(10))?)
        .replace_existing(true)
        .await?;

    let addr = std::env::var("APSCHED_EXAMPLE_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let listener = std::net::TcpListener::bind(&addr)?;
    println!("listening on http://{addr}; jobs in {}", db.display());
    // actix-web handles Ctrl-C and SIGTERM: it stops accepting, lets the requests in
    // flight finish, and then `await` returns.
    server(listener, web::Data::new(scheduler.clone()), greetings)?.await?;
    println!("HTTP server stopped; waiting for running jobs");
    scheduler.shutdown().await?;
    println!("scheduler stopped; the jobs stay in {}", db.display());
    Ok(())
}
