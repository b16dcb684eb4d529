//! Every scenario of `tests/data/scheduler_scenarios.json` (recorded from APScheduler
//! 3.11) replayed step by step on a manual scheduler with a test clock: the same events in
//! the same order, the same next run times, the same executor queue.
//!
//! `process` = one pass of the loop ([`Scheduler::process_due_jobs`]); `run_next` = the
//! executor starts its oldest queued run, which a [`QueueExecutor`] does on demand.
//!
//! Deliberate difference (see the corpus README): `unknown-executor` — apsched refuses the
//! alias at `add_job` instead of deleting the job later; its test asserts that.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apsched::clock::TestClock;
use apsched::event::TryRecvError;
use apsched::executor::{Executor, JobRun};
use apsched::job::JobDefaults;
use apsched::{Error, Event, EventKind, EventReceiver, JobChanges, Scheduler, TriggerSpec};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

/// An executor that queues submissions and starts them only when told to.
#[derive(Clone, Default)]
pub struct QueueExecutor {
    queue: Arc<Mutex<VecDeque<JobRun>>>,
}

impl QueueExecutor {
    /// Starts the oldest queued submission and runs it to completion.
    pub async fn run_next(&self) {
        let run = self.queue.lock().unwrap().pop_front();
        run.expect("run_next with an empty executor queue")
            .run()
            .await;
    }

    /// The queue as `[{"job_id", "run_times"}]`.
    pub fn snapshot(&self) -> Value {
        Value::Array(
            self.queue
                .lock()
                .unwrap()
                .iter()
                .map(|r| json!({"job_id": r.job_id, "run_times": r.run_times.iter().map(iso).collect::<Vec<_>>()}))
                .collect(),
        )
    }
}

#[async_trait::async_trait]
impl Executor for QueueExecutor {
    fn kind(&self) -> &'static str {
        "queue"
    }
    fn submit(&self, run: JobRun) {
        self.queue.lock().unwrap().push_back(run);
    }
    async fn shutdown(&self, _wait: bool) {}
}

fn iso(t: &DateTime<Utc>) -> String {
    t.to_rfc3339()
}

fn parse_time(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("bad time {s}: {e}"))
        .with_timezone(&Utc)
}

fn corpus() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/scheduler_scenarios.json"
    );
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("the scenario corpus {path} is needed: {e}"));
    serde_json::from_str(&text).expect("corpus parses")
}

/// Our event in the corpus' shape (codes, ids, stores, times; values as the job produced).
fn event_json(ev: &Event) -> Value {
    let code = ev.kind().name();
    match ev {
        Event::SchedulerStarted
        | Event::SchedulerShutdown
        | Event::SchedulerPaused
        | Event::SchedulerResumed => json!({"code": code, "alias": null}),
        Event::AllJobsRemoved { store } => json!({"code": code, "alias": store}),
        Event::ExecutorAdded { alias }
        | Event::ExecutorRemoved { alias }
        | Event::JobStoreAdded { alias }
        | Event::JobStoreRemoved { alias } => json!({"code": code, "alias": alias}),
        Event::JobAdded { job_id, store }
        | Event::JobRemoved { job_id, store }
        | Event::JobModified { job_id, store } => {
            json!({"code": code, "job_id": job_id, "jobstore": store})
        }
        Event::JobSubmitted {
            job_id,
            store,
            scheduled_run_times,
            ..
        }
        | Event::JobMaxInstances {
            job_id,
            store,
            scheduled_run_times,
            ..
        } => json!({"code": code, "job_id": job_id, "jobstore": store,
                    "scheduled_run_times": scheduled_run_times.iter().map(iso).collect::<Vec<_>>()}),
        Event::JobExecuted {
            job_id,
            store,
            scheduled_run_time,
            retval,
            ..
        } => json!({"code": code, "job_id": job_id, "jobstore": store,
                    "scheduled_run_time": iso(scheduled_run_time), "retval": retval}),
        Event::JobError {
            job_id,
            store,
            scheduled_run_time,
            error,
            ..
        } => json!({"code": code, "job_id": job_id, "jobstore": store,
                    "scheduled_run_time": iso(scheduled_run_time),
                    "exception": {"message": error.to_string()}}),
        Event::JobMissed {
            job_id,
            store,
            scheduled_run_time,
            ..
        } => json!({"code": code, "job_id": job_id, "jobstore": store,
                    "scheduled_run_time": iso(scheduled_run_time)}),
        other => json!({"code": code, "other": format!("{other:?}")}),
    }
}

/// The corpus' event with times normalised to our rendering and Python-only details
/// (exception type names) dropped.
fn normalise_expected(ev: &Value) -> Value {
    let mut ev = ev.clone();
    let obj = ev.as_object_mut().unwrap();
    if let Some(t) = obj.get("scheduled_run_time").and_then(Value::as_str) {
        obj.insert("scheduled_run_time".into(), json!(iso(&parse_time(t))));
    }
    if let Some(ts) = obj.get("scheduled_run_times").and_then(Value::as_array) {
        let ts: Vec<String> = ts
            .iter()
            .map(|t| iso(&parse_time(t.as_str().unwrap())))
            .collect();
        obj.insert("scheduled_run_times".into(), json!(ts));
    }
    if let Some(exc) = obj.get_mut("exception").and_then(Value::as_object_mut) {
        exc.remove("type");
    }
    ev
}

fn drain(rx: &mut EventReceiver) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(ev) => out.push(event_json(&ev)),
            Err(TryRecvError::Empty) => return out,
            Err(e) => panic!("a scenario's receiver does not lag or close: {e}"),
        }
    }
}

fn defaults(v: &Value) -> JobDefaults {
    let mut d = JobDefaults::default();
    if let Some(c) = v.get("coalesce") {
        d.coalesce = c.as_bool().unwrap();
    }
    if let Some(g) = v.get("misfire_grace_time") {
        d.misfire_grace_time = g.as_f64().map(Duration::from_secs_f64);
    }
    if let Some(m) = v.get("max_instances") {
        d.max_instances = m.as_u64().unwrap() as u32;
    }
    d
}

/// The job body named by the corpus' `func`: `ok` returns "ok", `fail` raises "boom".
async fn body(fail: bool) -> Result<&'static str, String> {
    if fail {
        Err("boom".to_string())
    } else {
        Ok("ok")
    }
}

async fn add_job(
    scheduler: &Scheduler,
    action: &Value,
    day: &str,
) -> apsched::Result<apsched::Job> {
    let fail = action.get("func").and_then(Value::as_str) == Some("fail");
    let trigger: TriggerSpec =
        serde_json::from_value(action["trigger"].clone()).expect("trigger parses");
    let mut add = scheduler
        .add_job(move || body(fail))
        .id(action["id"].as_str().unwrap())
        .trigger(trigger);
    let empty = json!({});
    let options = action.get("options").unwrap_or(&empty);
    if let Some(g) = options.get("misfire_grace_time") {
        add = add.misfire_grace_time(g.as_f64().map(Duration::from_secs_f64));
    }
    if let Some(c) = options.get("coalesce") {
        add = add.coalesce(c.as_bool().unwrap());
    }
    if let Some(m) = options.get("max_instances") {
        add = add.max_instances(m.as_u64().unwrap() as u32);
    }
    if let Some(e) = options.get("executor") {
        add = add.executor(e.as_str().unwrap());
    }
    if let Some(r) = options.get("replace_existing") {
        add = add.replace_existing(r.as_bool().unwrap());
    }
    if let Some(n) = options.get("next_run_time") {
        add = match n.as_str() {
            // The corpus writes a wall time of the scenario's day (UTC).
            Some(hms) => add.next_run_time(parse_time(&format!("{day}T{hms}+00:00"))),
            None => add.paused(),
        };
    }
    add.await
}

fn jobs_json(jobs: &[apsched::Job]) -> Value {
    Value::Array(
        jobs.iter()
            .map(|j| {
                if j.pending {
                    json!({"id": j.id, "pending": true})
                } else {
                    json!({"id": j.id, "next_run_time": j.next_run_time.as_ref().map(iso)})
                }
            })
            .collect(),
    )
}

fn normalise_jobs(v: &Value) -> Value {
    Value::Array(
        v.as_array()
            .unwrap()
            .iter()
            .map(|j| match j.get("next_run_time") {
                Some(Value::String(t)) => {
                    json!({"id": j["id"], "next_run_time": iso(&parse_time(t))})
                }
                _ => j.clone(),
            })
            .collect(),
    )
}

fn raised_kind(e: &Error) -> &'static str {
    match e {
        Error::ConflictingId(_) => "ConflictingIdError",
        Error::JobLookup(_) => "JobLookupError",
        Error::InvalidJob { .. } => "TypeError",
        Error::UnknownExecutor(_) => "KeyError",
        _ => "other",
    }
}

/// Replays one scenario and asserts every step.
async fn replay(id: &str) {
    let corpus = corpus();
    let scenario = corpus["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no scenario {id}"));
    let actions = scenario["actions"].as_array().unwrap();
    let first_at = parse_time(actions[0]["at"].as_str().unwrap());
    let day = first_at.format("%Y-%m-%d").to_string();
    let clock = TestClock::new(first_at);
    let executor = QueueExecutor::default();
    let scheduler = Scheduler::builder()
        .timezone(chrono_tz::UTC)
        .clock(clock.shared())
        .executor("default", executor.clone())
        .job_defaults(defaults(&scenario["job_defaults"]))
        .manual()
        .build();
    let mut rx = scheduler.subscribe(EventKind::ALL);

    for (step, action) in actions.iter().enumerate() {
        let op = action["op"].as_str().unwrap();
        let ctx = format!("scenario {id}, step {step} ({op})");
        clock.set(parse_time(action["at"].as_str().unwrap())).await;
        let job_id = action.get("id").and_then(Value::as_str).unwrap_or("");
        let result: apsched::Result<()> = match op {
            "add_job" => add_job(&scheduler, action, &day).await.map(drop),
            "start" => scheduler.start().await,
            "process" => {
                let wait = scheduler.process_due_jobs().await;
                let expected = action["wait_seconds"].as_f64();
                assert_eq!(
                    wait.map(|d| d.as_secs_f64()),
                    expected,
                    "{ctx}: wait_seconds"
                );
                Ok(())
            }
            "run_next" => {
                executor.run_next().await;
                Ok(())
            }
            "pause_job" => scheduler.job(job_id).pause().await.map(drop),
            "resume_job" => scheduler.job(job_id).resume().await.map(drop),
            "remove_job" => scheduler.job(job_id).remove().await,
            "remove_all_jobs" => scheduler.remove_all_jobs().await,
            "reschedule_job" => {
                let trigger: TriggerSpec =
                    serde_json::from_value(action["trigger"].clone()).unwrap();
                scheduler.job(job_id).reschedule(trigger).await.map(drop)
            }
            "modify_job" => {
                let mut changes = JobChanges::new();
                if let Some(name) = action["changes"].get("name").and_then(Value::as_str) {
                    changes = changes.name(name);
                }
                scheduler.job(job_id).modify(changes).await.map(drop)
            }
            "pause" => scheduler.pause(),
            "resume" => scheduler.resume(),
            other => panic!("{ctx}: unknown op {other}"),
        };
        match (action.get("raised"), result) {
            (None, Ok(())) => {}
            (None, Err(e)) => panic!("{ctx}: unexpected error {e}"),
            (Some(raised), Ok(())) => panic!("{ctx}: expected {raised}, got success"),
            (Some(raised), Err(e)) => assert_eq!(
                raised["type"].as_str().unwrap(),
                raised_kind(&e),
                "{ctx}: error kind ({e})"
            ),
        }
        let expected_events: Vec<Value> = action["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(normalise_expected)
            .collect();
        assert_eq!(drain(&mut rx), expected_events, "{ctx}: events");
        let jobs = scheduler.get_jobs().await.unwrap();
        assert_eq!(
            jobs_json(&jobs),
            normalise_jobs(&action["jobs"]),
            "{ctx}: jobs"
        );
        if let Some(queue) = action.get("executor_queue").filter(|q| !q.is_null()) {
            let expected: Vec<Value> = queue
                .as_array()
                .unwrap()
                .iter()
                .map(|q| {
                    let ts: Vec<String> = q["run_times"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|t| iso(&parse_time(t.as_str().unwrap())))
                        .collect();
                    json!({"job_id": q["job_id"], "run_times": ts})
                })
                .collect();
            assert_eq!(executor.snapshot(), Value::Array(expected), "{ctx}: queue");
        }
    }
}

macro_rules! scenarios {
    ($($name:ident => $id:literal),* $(,)?) => {$(
        #[tokio::test(start_paused = true)]
        async fn $name() {
            replay($id).await;
        }
    )*
    /// Every scenario in the corpus has a test here (but the one that deliberately differs).
    #[test]
    fn every_scenario_has_a_test() {
        let mut covered = vec![$($id),*];
        covered.push("unknown-executor");
        let corpus = corpus();
        for s in corpus["scenarios"].as_array().unwrap() {
            let id = s["id"].as_str().unwrap();
            assert!(covered.contains(&id), "scenario {id} has no test");
        }
    }
    };
}

scenarios! {
    on_time => "on-time",
    start_half_second_late => "start-half-second-late",
    start_exactly_grace => "start-exactly-grace",
    executor_starts_late => "executor-starts-late",
    downtime_coalesce_true => "downtime-coalesce-true",
    downtime_coalesce_true_too_late => "downtime-coalesce-true-too-late",
    downtime_coalesce_false => "downtime-coalesce-false",
    downtime_coalesce_false_grace_none => "downtime-coalesce-false-grace-none",
    downtime_grace_large => "downtime-grace-large",
    max_instances_1 => "max-instances-1",
    max_instances_2 => "max-instances-2",
    date_in_past => "date-in-past",
    date_in_past_grace_none => "date-in-past-grace-none",
    interval_downtime => "interval-downtime",
    cron_end_date_removal => "cron-end-date-removal",
    add_paused => "add-paused",
    pause_resume_skips => "pause-resume-skips",
    add_exhausted_trigger => "add-exhausted-trigger",
    reschedule => "reschedule",
    job_raises => "job-raises",
    lifecycle_events => "lifecycle-events",
    replace_existing => "replace-existing",
    scheduler_paused => "scheduler-paused",
    explicit_next_run_time => "explicit-next-run-time",
    two_jobs_ordering => "two-jobs-ordering",
    misfire_grace_zero_invalid => "misfire-grace-zero-invalid",
}

/// `unknown-executor`, deliberately different: APScheduler accepts the alias and deletes the
/// job when it comes due; apsched refuses the alias up front and never deletes a job for a
/// missing executor (see `behaviour::removed_executor_keeps_job`).
#[tokio::test(start_paused = true)]
async fn unknown_executor() {
    let scheduler = Scheduler::builder().manual().build();
    let err = scheduler
        .add_job(|| async {})
        .id("u")
        .executor("nope")
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::UnknownExecutor(ref a) if a == "nope"),
        "{err}"
    );
    assert!(err.to_string().contains("add_executor"), "{err}");
    assert!(scheduler.get_jobs().await.unwrap().is_empty());
}
