//! A scheduler inside an axum service: the `Scheduler` handle lives in the app state, routes
//! list, add, pause, resume, run and remove jobs, and shutdown is graceful (the HTTP server stops
//! first, then the scheduler gives running jobs a few seconds and cancels the rest). The
//! `report` job takes a `JobContext`: it has a timeout, and stops when its token is
//! cancelled (by the timeout, or by the shutdown).
//!
//! ```text
//! cargo run --example axum
//! curl localhost:3000/jobs
//! curl -X POST localhost:3000/jobs -H 'content-type: application/json' \
//!      -d '{"id": "greet", "cron": "*/5 * * * * *", "message": "hello"}'
//! curl -X POST localhost:3000/jobs/greet/pause
//! curl -X POST localhost:3000/jobs/greet/resume
//! curl -X POST localhost:3000/jobs/greet/run
//! curl -X DELETE localhost:3000/jobs/greet
//! ```
//! Set `APSCHED_EXAMPLE_ADDR` to listen elsewhere (default 127.0.0.1:3000).
//! `examples/actix.rs` is the same service on actix-web, with jobs in SQLite.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use apsched::trigger::Cron;
use apsched::{Job, JobChanges, JobContext, Scheduler};

#[derive(Deserialize)]
struct NewJob {
    id: String,
    /// A crontab string (5 fields, or 6 with seconds first).
    cron: String,
    message: String,
}

type ApiResult<T> = Result<T, (StatusCode, String)>;

/// Maps scheduler errors to HTTP statuses.
fn api_error(e: apsched::Error) -> (StatusCode, String) {
    let status = match &e {
        apsched::Error::JobLookup(_) => StatusCode::NOT_FOUND,
        apsched::Error::ConflictingId(_) => StatusCode::CONFLICT,
        apsched::Error::Trigger(_) | apsched::Error::InvalidJob { .. } => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, e.to_string())
}

async fn list(State(s): State<Scheduler>) -> ApiResult<Json<Vec<Job>>> {
    s.get_jobs().await.map(Json).map_err(api_error)
}

async fn add(State(s): State<Scheduler>, Json(new): Json<NewJob>) -> ApiResult<Json<Job>> {
    let trigger = Cron::builder()
        .crontab(&new.cron)
        .build()
        .map_err(|e| api_error(e.into()))?;
    let message = new.message;
    s.add_job(move || {
        let message = message.clone();
        async move { println!("{message}") }
    })
    .id(new.id)
    .trigger(trigger)
    .await
    .map(Json)
    .map_err(api_error)
}

async fn pause(State(s): State<Scheduler>, Path(id): Path<String>) -> ApiResult<Json<Job>> {
    s.job(&id).pause().await.map(Json).map_err(api_error)
}

async fn resume(
    State(s): State<Scheduler>,
    Path(id): Path<String>,
) -> ApiResult<Json<Option<Job>>> {
    s.job(&id).resume().await.map(Json).map_err(api_error)
}

/// Runs the job now: its next run time becomes now (a paused job runs and then follows
/// its trigger again, as with APScheduler's `job.modify(next_run_time=now)`).
async fn run(State(s): State<Scheduler>, Path(id): Path<String>) -> ApiResult<Json<Job>> {
    let changes = JobChanges::new().next_run_time(Some(s.clock().now()));
    s.job(&id)
        .modify(changes)
        .await
        .map(Json)
        .map_err(api_error)
}

async fn remove(State(s): State<Scheduler>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    s.job(&id)
        .remove()
        .await
        .map(|()| StatusCode::NO_CONTENT)
        .map_err(api_error)
}

/// A long job that honours cancellation: ten steps of 3 s each, more than its 20 s timeout,
/// so every run is cut short at the timeout (`JOB_TIMEOUT`, not aborted: it stops itself).
async fn report(ctx: JobContext) -> Result<String, String> {
    for step in 1..=10 {
        tokio::select! {
            _ = ctx.cancelled() => {
                println!("report run {} stopped before step {step}", ctx.run_id());
                return Err(format!("cancelled before step {step}"));
            }
            _ = tokio::time::sleep(std::time::Duration::from_secs(3)) => {}
        }
    }
    Ok(format!("report for {}", ctx.scheduled_run_time()))
}

fn app(scheduler: Scheduler) -> Router {
    Router::new()
        .route("/jobs", get(list).post(add))
        .route("/jobs/{id}", axum::routing::delete(remove))
        .route("/jobs/{id}/pause", post(pause))
        .route("/jobs/{id}/resume", post(resume))
        .route("/jobs/{id}/run", post(run))
        .with_state(scheduler)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let scheduler = Scheduler::builder().build();
    scheduler.start().await?;
    scheduler
        .add_job(|| async { println!("heartbeat") })
        .id("heartbeat")
        .trigger(Cron::builder().crontab("*/10 * * * * *").build()?)
        .await?;
    // A job that can be stopped: it works in steps, and stops between two steps once its
    // token is cancelled (past its timeout, or at shutdown).
    scheduler
        .add_job(report)
        .id("report")
        .trigger(Cron::builder().crontab("*/30 * * * * *").build()?)
        .timeout(std::time::Duration::from_secs(20))
        .await?;

    let addr = std::env::var("APSCHED_EXAMPLE_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{addr}");
    axum::serve(listener, app(scheduler.clone()))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    // The server has drained; now give running jobs 5 s, then cancel their tokens.
    scheduler
        .shutdown_timeout(std::time::Duration::from_secs(5))
        .await?;
    Ok(())
}
