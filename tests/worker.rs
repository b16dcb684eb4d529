//! Worker mode: the process executor runs registered tasks in children that re-execute this
//! very binary. `main` starts with `worker_main`, as a user's program would.

use std::time::Duration;

use apsched::executor::ProcessExecutor;
use apsched::{Event, EventKind, JobContext, JobError, Scheduler, SchedulerBuilder};

fn tasks(builder: SchedulerBuilder) -> SchedulerBuilder {
    builder
        .task("double", |n: i64| async move { n * 2 })
        .blocking_task("pid", |_: ()| std::process::id())
        .blocking_task("fail", |reason: String| Err::<(), _>(reason))
        .blocking_task("panic", |_: ()| -> () { panic!("worker panicked") })
        .blocking_task("abort", |_: ()| -> () { std::process::abort() })
        .blocking_task("slow", |_: ()| std::thread::sleep(Duration::from_secs(20)))
        .blocking_task("whoami", |_: (), ctx: JobContext| {
            format!(
                "{} {} {}",
                ctx.job_id(),
                ctx.name(),
                ctx.scheduled_run_time()
            )
        })
}

async fn outcome(s: &Scheduler, task: &str, args: serde_json::Value) -> Event {
    let mut rx = s.subscribe(EventKind::JOB_EXECUTED | EventKind::JOB_ERROR);
    s.add_task_job(task, args)
        .executor("workers")
        .misfire_grace_time(None)
        .await
        .expect("job added");
    tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("an outcome within 60 s")
        .expect("event")
}

fn check(name: &str, ok: bool, detail: impl std::fmt::Debug, results: &mut Vec<(String, bool)>) {
    if !ok {
        eprintln!("FAILED {name}: {detail:?}");
    } else {
        println!("test {name} ... ok");
    }
    results.push((name.to_string(), ok));
}

fn main() {
    apsched::worker_main(|| tasks(Scheduler::builder()));

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let results = runtime.block_on(async {
        let mut results = Vec::new();
        let s = tasks(Scheduler::builder())
            .executor(
                "workers",
                ProcessExecutor::new(2).tasks_in_worker_mode(Some(Duration::from_secs(2))),
            )
            .build();
        s.start().await.expect("start");

        let ev = outcome(&s, "double", serde_json::json!(21)).await;
        check(
            "worker_returns_the_task_value",
            matches!(&ev, Event::JobExecuted { retval, .. } if *retval == 42),
            &ev,
            &mut results,
        );
        let ev = outcome(&s, "pid", serde_json::json!(null)).await;
        check(
            "worker_runs_in_another_process",
            matches!(&ev, Event::JobExecuted { retval, .. }
                if retval.as_u64().is_some_and(|p| p != u64::from(std::process::id()))),
            &ev,
            &mut results,
        );
        let ev = outcome(&s, "fail", serde_json::json!("disk full")).await;
        check(
            "worker_task_error_is_a_job_error",
            matches!(&ev, Event::JobError { error: JobError::Failed { message }, .. }
                if message == "disk full"),
            &ev,
            &mut results,
        );
        let ev = outcome(&s, "panic", serde_json::json!(null)).await;
        check(
            "worker_panic_is_reported",
            matches!(&ev, Event::JobError { error: JobError::Panicked { message }, .. }
                if message == "worker panicked"),
            &ev,
            &mut results,
        );
        let ev = outcome(&s, "abort", serde_json::json!(null)).await;
        check(
            "worker_crash_is_an_exit_with_its_signal",
            matches!(
                &ev,
                Event::JobError {
                    error: JobError::Exited {
                        signal: Some(6),
                        ..
                    },
                    ..
                }
            ),
            &ev,
            &mut results,
        );
        let ev = outcome(&s, "slow", serde_json::json!(null)).await;
        check(
            "worker_past_its_timeout_is_killed",
            matches!(
                &ev,
                Event::JobError {
                    error: JobError::TimedOut { .. },
                    ..
                }
            ),
            &ev,
            &mut results,
        );
        let ev = outcome(&s, "whoami", serde_json::json!(null)).await;
        check(
            "worker_task_gets_its_run_context",
            matches!(&ev, Event::JobExecuted { job_id, scheduled_run_time, retval, .. }
                if *retval == format!("{job_id} {job_id} {scheduled_run_time}")),
            &ev,
            &mut results,
        );
        let ev = outcome(&s, "double", serde_json::json!("not a number")).await;
        check(
            "worker_bad_arguments_are_reported",
            matches!(&ev, Event::JobError { error: JobError::NotRunnable { message }, .. }
                if message.contains("do not deserialise")),
            &ev,
            &mut results,
        );
        let plain = Scheduler::builder()
            .task("double", |n: i64| async move { n * 2 })
            .executor("procs", ProcessExecutor::new(1))
            .build();
        let refused = plain
            .add_task_job("double", 1)
            .executor("procs")
            .await
            .err();
        check(
            "tasks_need_worker_mode_enabled",
            matches!(&refused, Some(apsched::Error::InvalidJob { reason, .. })
                if reason.contains("tasks_in_worker_mode")),
            &refused,
            &mut results,
        );
        s.shutdown().await.expect("shutdown");
        results
    });
    let failed = results.iter().filter(|(_, ok)| !ok).count();
    println!("{} passed, {failed} failed", results.len() - failed);
    if failed > 0 {
        std::process::exit(1);
    }
}
