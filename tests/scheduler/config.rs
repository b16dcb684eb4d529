//! The scheduler built from a config (issue 12): a whole TOML file, environment overrides,
//! every kind of problem reported at once, and the jobs upserted (and pruned) at start.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apsched::clock::TestClock;
use apsched::config::{GraceTime, SchedulerConfig};
use apsched::{Error, Event, EventKind, Scheduler};
use chrono::{DateTime, TimeZone, Utc};

/// Monday 2024-01-15, 02:00 UTC.
fn start_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 15, 2, 0, 0).unwrap()
}

fn at(h: u32, m: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 15, h, m, 0).unwrap()
}

const FULL: &str = r#"
timezone = "UTC"
scheduler_id = "config-test"
lease = 45

[job_defaults]
misfire_grace_time = 30
coalesce = false
max_instances = 3
timeout = 600

[stores.default]
url = "memory://"

[executors.default]
type = "tokio"

[executors.pool]
type = "blocking"
max_workers = 2

[[jobs]]
id = "report"
task = "record"
args = "report"
trigger = "cron"
hour = "3"
minute = "*/30"
day_of_week = "mon-fri"

[[jobs]]
id = "tick"
task = "record"
args = "tick"
executor = "pool"
trigger = "interval"
minutes = 10
max_instances = 1
misfire_grace_time = "none"
timeout = 5

[[jobs]]
id = "once"
task = "record"
args = "once"
name = "One-off"
trigger = "date"
run_date = 2024-01-15T02:45:00

[[jobs]]
id = "noon"
task = "record"
args = "noon"
trigger = "calendarinterval"
days = 1
hour = 12
"#;

type Seen = Arc<Mutex<Vec<String>>>;

/// The builder of a config with the `record` task, which notes its argument.
fn configured(config: &SchedulerConfig, seen: &Seen) -> apsched::config::ConfiguredBuilder {
    let seen = seen.clone();
    Scheduler::from_config(config)
        .expect("valid config")
        .task("record", move |what: String| {
            let seen = seen.clone();
            async move { seen.lock().unwrap().push(what) }
        })
}

#[tokio::test(start_paused = true)]
async fn a_full_toml_file_builds_a_scheduler_whose_jobs_fire_as_declared() {
    let clock = TestClock::new(start_time());
    let config = SchedulerConfig::from_toml_str(FULL).unwrap();
    let seen = Seen::default();
    let configured = configured(&config, &seen)
        .with_builder(|b| b.clock(clock.shared()))
        .build()
        .unwrap();
    let mut rx = configured.scheduler().subscribe(EventKind::JOB_EXECUTED);
    let s = configured.start().await.unwrap();
    assert_eq!(s.id(), "config-test");
    assert_eq!(s.timezone(), chrono_tz::UTC);

    let report = s.job("report").get().await.unwrap().unwrap();
    assert_eq!(
        (
            report.misfire_grace_time,
            report.coalesce,
            report.max_instances
        ),
        (Some(Duration::from_secs(30)), false, 3),
        "job defaults apply"
    );
    assert_eq!(report.timeout, Some(Duration::from_secs(600)));
    assert_eq!(report.next_run_time, Some(at(3, 0)));
    let tick = s.job("tick").get().await.unwrap().unwrap();
    assert_eq!(
        (
            tick.executor.as_str(),
            tick.misfire_grace_time,
            tick.max_instances
        ),
        ("pool", None, 1),
        "a job's own options win"
    );
    assert_eq!(tick.timeout, Some(Duration::from_secs(5)));
    assert_eq!(s.job("once").get().await.unwrap().unwrap().name, "One-off");
    let noon = s.job("noon").get().await.unwrap().unwrap();
    assert_eq!(noon.next_run_time, Some(at(12, 0)));

    // 02:00 to 03:30: tick every 10 minutes (9), once at 02:45, report at 03:00 and 03:30.
    let mut fired: BTreeMap<String, Vec<DateTime<Utc>>> = BTreeMap::new();
    for _ in 0..12 {
        match rx.recv().await.unwrap() {
            Event::JobExecuted {
                job_id,
                scheduled_run_time,
                ..
            } => fired.entry(job_id).or_default().push(scheduled_run_time),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(fired["report"], [at(3, 0), at(3, 30)]);
    assert_eq!(fired["once"], [at(2, 45)]);
    assert_eq!(
        fired["tick"],
        (1..=9)
            .map(|k| at(2, 0) + chrono::TimeDelta::minutes(10 * k))
            .collect::<Vec<_>>()
    );
    assert!(!fired.contains_key("noon"));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.iter().filter(|w| *w == "tick").count(),
        9,
        "args reach the task"
    );
    assert_eq!(seen.iter().filter(|w| *w == "report").count(), 2);
    s.shutdown().await.unwrap();
}

#[test]
fn environment_variables_override_the_file() {
    let config = SchedulerConfig::from_toml_str(FULL)
        .unwrap()
        .with_vars(
            "APSCHED",
            [
                ("APSCHED__JOB_DEFAULTS__MAX_INSTANCES", "5"),
                ("APSCHED__JOB_DEFAULTS__MISFIRE_GRACE_TIME", "none"),
                ("APSCHED__TIMEZONE", "Europe/Paris"),
                ("APSCHED__SCHEDULER_ID", "1234"),
                ("APSCHED__PRUNE", "true"),
                ("APSCHED__STORES__DEFAULT__URL", "memory://?from-env"),
                ("APSCHED__EXECUTORS__POOL__MAX_WORKERS", "7"),
                ("APSCHED__STORES__EXTRA__URL", "memory://"),
                ("APSCHED__JOBS__0__HOUR", "4"),
                ("APSCHED__JOBS__1__MINUTES", "2.5"),
                ("APSCHED__JOBS__2__RUN_DATE", "2024-01-16 08:00:00"),
                ("OTHER__TIMEZONE", "Asia/Tokyo"),
            ],
        )
        .unwrap();
    assert_eq!(config.timezone.as_deref(), Some("Europe/Paris"));
    assert_eq!(
        config.scheduler_id.as_deref(),
        Some("1234"),
        "a string stays a string"
    );
    assert!(config.prune);
    assert_eq!(config.job_defaults.max_instances, Some(5));
    assert_eq!(
        config.job_defaults.misfire_grace_time,
        Some(GraceTime::Unlimited)
    );
    assert_eq!(
        config.job_defaults.coalesce,
        Some(false),
        "untouched keys stay"
    );
    assert_eq!(config.stores["default"].url, "memory://?from-env");
    assert_eq!(config.stores["extra"].url, "memory://");
    assert_eq!(config.executors["pool"].max_workers, Some(7));
    assert_eq!(config.jobs[0].trigger_args["hour"], serde_json::json!("4"));
    assert_eq!(
        config.jobs[1].trigger_args["minutes"],
        serde_json::json!(2.5)
    );
    assert_eq!(config.jobs.len(), 4);
    config.check().unwrap();

    // Variables that cannot apply are all named.
    let err = SchedulerConfig::from_toml_str(FULL)
        .unwrap()
        .with_vars(
            "APSCHED",
            [
                ("APSCHED__JOBS__9__HOUR", "4"),
                ("APSCHED__JOB_DEFAULTS__MAX_INSTANCES", "many"),
                ("APSCHED__TIMEZONE__NAME", "UTC"),
            ],
        )
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("APSCHED__JOBS__9__HOUR: 'jobs' has 4 entries"),
        "{text}"
    );
    assert!(
        text.contains("APSCHED__TIMEZONE__NAME: 'timezone' is a value"),
        "{text}"
    );
    // A value of the wrong type is the config's own shape error, showing the key.
    let err = SchedulerConfig::from_toml_str(FULL)
        .unwrap()
        .with_vars(
            "APSCHED",
            [("APSCHED__JOB_DEFAULTS__MAX_INSTANCES", "many")],
        )
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("APSCHED__* variables"), "{text}");
    assert!(text.contains("max_instances = \"many\""), "{text}");
}

#[test]
fn with_env_reads_the_process_environment() {
    // A prefix of this test's own: the variables of other tests cannot interfere.
    std::env::set_var("APSCHED_CFG_TEST__JOB_DEFAULTS__MAX_INSTANCES", "3");
    let config = SchedulerConfig::default()
        .with_env("APSCHED_CFG_TEST")
        .unwrap();
    assert_eq!(config.job_defaults.max_instances, Some(3));
}

fn problems(err: Error) -> Vec<String> {
    match err {
        Error::Config(e) => e.problems().iter().map(|p| p.to_string()).collect(),
        other => panic!("expected a config error, got {other}"),
    }
}

#[test]
fn every_problem_is_reported_at_once_with_its_path() {
    let config = SchedulerConfig::from_toml_str(
        r#"
        timezone = "Mars/Olympus"
        lease = 0
        [job_defaults]
        max_instances = 0
        timeout = 0
        [stores.default]
        url = "ftp://example.com"
        [executors.gpu]
        type = "cuda"
        [executors.procs]
        type = "process"
        [executors.pool]
        type = "blocking"
        max_workers = 0

        [[jobs]]
        id = "a"
        task = "t"
        trigger = "cron"
        hour = "3"
        [[jobs]]
        task = "t"
        trigger = "interval"
        minutes = 1
        store = "nowhere"
        executor = "turbo"
        [[jobs]]
        id = "a"
        task = "t"
        trigger = "cron"
        hours = "3"
        [[jobs]]
        id = "d"
        task = "t"
        trigger = "cron"
        hour = "25"
        [[jobs]]
        id = "e"
        task = "t"
        [[jobs]]
        id = "f"
        task = "t"
        trigger = "weekly"
        [[jobs]]
        id = "g"
        task = "t"
        trigger = "interval"
        executor = "procs"
        minutes = 5
        misfire_grace_time = 0
        [[jobs]]
        id = "h"
        task = "t"
        trigger = "date"
        run_date = "tomorrow"
        [[jobs]]
        id = "i"
        trigger = "interval"
        seconds = 10
        "#,
    )
    .unwrap();
    let got = problems(Scheduler::from_config(&config).map(|_| ()).unwrap_err());
    let expected = [
        "timezone: 'Mars/Olympus' is not a known IANA time zone",
        "lease: 0 is not a number of seconds above zero",
        "job_defaults.max_instances: must be at least 1",
        "job_defaults.timeout: 0 is not a number of seconds above zero",
        "stores.default.url: cannot open store 'ftp://example.com'",
        "executors.gpu.type: 'cuda' is not an executor type (tokio, blocking or process)",
        "executors.pool.max_workers: must be at least 1",
        "jobs[1].store: no store named 'nowhere'",
        "jobs[1].executor: no executor named 'turbo'",
        "jobs[2].id: 'a' is already the id of jobs[0]",
        "jobs[2].trigger.hours: not an option of a job or a parameter of a cron trigger",
        "jobs[3].trigger.hour: '25'",
        "jobs[4].trigger: missing",
        "jobs[5].trigger: 'weekly' is not a trigger",
        "jobs[6].executor: 'procs' is a process executor without worker_mode = true",
        "jobs[6].misfire_grace_time: 0 is not a number of seconds above zero",
        "jobs[7].trigger.run_date:",
        "jobs[8].task: missing",
    ];
    for e in expected {
        assert!(
            got.iter().any(|p| p.starts_with(e)),
            "missing {e:?} in:\n{}",
            got.join("\n")
        );
    }
    assert_eq!(got.len(), expected.len(), "{}", got.join("\n"));
    assert!(got.iter().any(|p| p.contains("out of range")), "{got:?}");
    // check() is the same check.
    assert_eq!(problems(config.check().unwrap_err()), got);
}

#[test]
fn unregistered_tasks_are_reported_at_build_and_nothing_is_built() {
    let config = SchedulerConfig::from_toml_str(FULL).unwrap();
    let err = Scheduler::from_config(&config)
        .unwrap()
        .task("other", |(): ()| async {})
        .build()
        .unwrap_err();
    let got = problems(err);
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(got[0].starts_with("jobs[0].task: no task named 'record' is registered"));
    assert!(got[3].starts_with("jobs[3].task:"));
}

#[test]
fn shape_errors_name_the_line() {
    let err = SchedulerConfig::from_toml_str("[job_defaults]\ncoalesce = \"yes\"\n").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("line 2"), "{text}");
    assert!(text.contains("coalesce"), "{text}");
    // APScheduler's name for the stores is accepted.
    let config = SchedulerConfig::from_toml_str("[jobstores.main]\nurl = \"memory://\"").unwrap();
    assert_eq!(config.stores["main"].url, "memory://");
    let err = SchedulerConfig::from_toml_str("jobstore = 1").unwrap_err();
    assert!(
        err.to_string().contains("unknown field `jobstore`"),
        "{err}"
    );
    let err = SchedulerConfig::from_toml_file("/nonexistent/apsched.toml").unwrap_err();
    assert!(
        err.to_string()
            .contains("/nonexistent/apsched.toml: cannot be read"),
        "{err}"
    );
}

#[cfg(feature = "sqlite")]
mod persistent {
    use super::*;
    use apsched::trigger::FieldKind;
    use apsched::TriggerSpec;

    /// A fresh directory for an SQLite file, removed on drop.
    struct TempDir(std::path::PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos();
            let dir = std::env::temp_dir().join(format!(
                "apsched-config-{tag}-{}-{nanos}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn url(&self) -> String {
            format!("sqlite://{}", self.0.join("jobs.db").display())
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn config(url: &str, prune: bool, jobs: &[(&str, &str)]) -> SchedulerConfig {
        let mut text =
            format!("timezone = \"UTC\"\nprune = {prune}\n[stores.db]\nurl = \"{url}\"\n");
        for (id, hour) in jobs {
            text.push_str(&format!(
                "[[jobs]]\nid = \"{id}\"\ntask = \"record\"\nargs = \"{id}\"\nstore = \"db\"\n\
                 trigger = \"cron\"\nhour = \"{hour}\"\n"
            ));
        }
        SchedulerConfig::from_toml_str(&text).unwrap()
    }

    async fn start(config: &SchedulerConfig) -> Scheduler {
        configured(config, &Seen::default())
            .build()
            .unwrap()
            .start()
            .await
            .unwrap()
    }

    fn hour_of(job: &apsched::Job) -> String {
        match &job.trigger {
            TriggerSpec::Cron(c) => c.field(FieldKind::Hour).unwrap().to_string(),
            other => panic!("{other:?}"),
        }
    }

    async fn ids(s: &Scheduler) -> Vec<String> {
        let mut ids: Vec<String> = s
            .store("db")
            .get_jobs()
            .await
            .unwrap()
            .into_iter()
            .map(|j| j.id)
            .collect();
        ids.sort();
        ids
    }

    #[tokio::test]
    async fn a_second_start_with_a_changed_schedule_changes_the_stored_job() {
        let dir = TempDir::new("upsert");
        let s = start(&config(&dir.url(), false, &[("nightly", "3")])).await;
        let job = s.store("db").job("nightly").get().await.unwrap().unwrap();
        assert_eq!(hour_of(&job), "3");
        s.shutdown().await.unwrap();

        // The same config again: no conflict, the job is the same.
        let s = start(&config(&dir.url(), false, &[("nightly", "3")])).await;
        assert_eq!(ids(&s).await, ["nightly"]);
        s.shutdown().await.unwrap();

        // A deploy that moves the job to 04:00.
        let s = start(&config(&dir.url(), false, &[("nightly", "4")])).await;
        let job = s.store("db").job("nightly").get().await.unwrap().unwrap();
        assert_eq!(hour_of(&job), "4");
        assert_eq!(
            job.next_run_time.map(|t| t.format("%H:%M").to_string()),
            Some("04:00".into())
        );
        assert_eq!(ids(&s).await, ["nightly"]);
        s.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn jobs_no_longer_configured_are_removed_only_with_prune() {
        let dir = TempDir::new("prune");
        let s = start(&config(&dir.url(), false, &[("a", "1"), ("b", "2")])).await;
        // A job added in code to the same store.
        s.add_task_job("record", "manual")
            .id("manual")
            .store("db")
            .trigger(apsched::trigger::Cron::builder().hour(5).build().unwrap())
            .await
            .unwrap();
        s.shutdown().await.unwrap();

        // `b` leaves the config; without prune it stays, and so does `manual`.
        let s = start(&config(&dir.url(), false, &[("a", "1")])).await;
        assert_eq!(ids(&s).await, ["a", "b", "manual"]);
        s.shutdown().await.unwrap();

        // With prune, every job of the store the config does not declare goes.
        let s = start(&config(&dir.url(), true, &[("a", "1"), ("c", "6")])).await;
        assert_eq!(ids(&s).await, ["a", "c"]);
        s.shutdown().await.unwrap();
    }
}

/// Retries, auto-pause and the overlap policy are configured like the other job options:
/// in `[job_defaults]` and per job; bad values are problems with their paths.
#[tokio::test(start_paused = true)]
async fn failure_options_and_overlap_come_from_the_config() {
    let config = SchedulerConfig::from_toml_str(
        r#"
        [job_defaults]
        retry = { attempts = 3, delay = 10 }
        pause_after_failures = 5
        overlap = "buffer_one"
        [[jobs]]
        id = "defaults"
        task = "record"
        args = "x"
        trigger = "interval"
        hours = 1
        [[jobs]]
        id = "own"
        task = "record"
        args = "y"
        trigger = "interval"
        hours = 1
        retry = { attempts = 4, delay = 1.5, backoff = "fixed", jitter = false }
        pause_after_failures = 2
        overlap = "allow_all"
        "#,
    )
    .unwrap();
    let clock = TestClock::new(start_time());
    let s = configured(&config, &Seen::default())
        .with_builder(|b| b.clock(clock.shared()))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let d = s.job("defaults").get().await.unwrap().unwrap();
    let retry = d.retry.unwrap();
    assert_eq!((retry.attempts, retry.delay), (3, Duration::from_secs(10)));
    assert_eq!(retry.backoff, apsched::Backoff::Exponential);
    assert_eq!(d.pause_after_failures, Some(5));
    assert_eq!(d.overlap, apsched::Overlap::BufferOne);
    let own = s.job("own").get().await.unwrap().unwrap();
    assert_eq!(
        own.retry,
        Some(apsched::RetryPolicy::fixed(4, Duration::from_millis(1500)).jitter(false))
    );
    assert_eq!(own.pause_after_failures, Some(2));
    assert_eq!(own.overlap, apsched::Overlap::AllowAll);
    s.shutdown().await.unwrap();

    let bad = SchedulerConfig::from_toml_str(
        r#"
        [job_defaults]
        pause_after_failures = 0
        [[jobs]]
        id = "a"
        task = "record"
        trigger = "interval"
        hours = 1
        retry = { attempts = 3, delay = 1, factor = 0 }
        "#,
    )
    .unwrap();
    let got = problems(Scheduler::from_config(&bad).map(|_| ()).unwrap_err());
    assert_eq!(
        got,
        vec![
            "job_defaults.pause_after_failures: must be at least 1".to_string(),
            "jobs[0].retry: retry factor must be at least 1".to_string(),
        ]
    );
}
