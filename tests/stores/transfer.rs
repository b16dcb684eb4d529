//! Export and import (APScheduler's `export_jobs`/`import_jobs`): jobs move between any two
//! stores and an export of an import is the same document again.

use std::time::Duration;

use apsched::executor::CommandSpec;
use apsched::store::{ExportedJob, JobExport, MemoryStore, SqlStore};
use apsched::trigger::{Cron, Date, Interval};
use apsched::{Error, Scheduler};
use chrono::{TimeDelta, Utc};

use crate::suite;

/// The stored form of each exportable job, by id, as JSON (the store alias aside).
fn jobs_json(export: &JobExport) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = export
        .jobs
        .iter()
        .filter_map(|e| match e {
            ExportedJob::Job { job, .. } => {
                Some((job.id.clone(), serde_json::to_string(job).unwrap()))
            }
            _ => None,
        })
        .collect();
    out.sort();
    out
}

fn builder() -> apsched::SchedulerBuilder {
    Scheduler::builder()
        .timezone(chrono_tz::UTC)
        .task("report", |n: u32| async move { n })
}

/// Adds one job of each stored kind, plus a closure, to the store `alias`.
async fn add_jobs(s: &Scheduler, alias: &str) {
    let in_an_hour = Utc::now() + TimeDelta::hours(1);
    s.add_task_job("report", 1)
        .trigger(
            Cron::builder()
                .crontab("0 9 * * 1-5")
                .timezone(chrono_tz::Europe::Paris)
                .build()
                .unwrap(),
        )
        .id("cron")
        .name("weekday report")
        .max_instances(3)
        .misfire_grace_time(None)
        .store(alias)
        .await
        .unwrap();
    s.add_task_job("report", 2)
        .trigger(Interval::new(Duration::from_secs(90)).unwrap())
        .id("paused")
        .paused()
        .coalesce(false)
        .store(alias)
        .await
        .unwrap();
    s.add_task_job("report", 3)
        .trigger(Date::at(in_an_hour, None).unwrap())
        .id("once")
        .store(alias)
        .await
        .unwrap();
    s.add_command_job(CommandSpec::new("echo").arg("hi"))
        .trigger(Interval::new(Duration::from_secs(3600)).unwrap())
        .id("command")
        .store(alias)
        .await
        .unwrap();
}

#[tokio::test]
async fn memory_to_sqlite_to_memory_round_trips_exactly() {
    let path = std::env::temp_dir().join(format!("apsched_transfer_{}.db", suite::unique_suffix()));
    let s = builder()
        .store("sql", SqlStore::sqlite(&path).unwrap())
        .store("copy", MemoryStore::new())
        .build();
    s.start().await.unwrap();
    add_jobs(&s, "default").await;
    s.add_job(|| async {})
        .trigger(Interval::new(Duration::from_secs(3600)).unwrap())
        .id("closure")
        .await
        .unwrap();

    let first = s.store("default").export_jobs().await.unwrap();
    assert!(first.jobs.iter().any(|e| matches!(e,
        ExportedJob::NotExportable { id, .. } if id == "closure")));
    // Through JSON, as a file would carry it.
    let read = JobExport::from_json(&first.to_json().unwrap()).unwrap();
    let report = s.store("sql").import_jobs(&read, false).await.unwrap();
    let mut imported = report.imported.clone();
    imported.sort();
    assert_eq!(imported, ["command", "cron", "once", "paused"]);
    assert_eq!(report.skipped.len(), 1, "{:?}", report.skipped);
    assert_eq!(report.skipped[0].0, "closure");

    let second = s.store("sql").export_jobs().await.unwrap();
    assert_eq!(jobs_json(&second), jobs_json(&first));
    // The imported jobs are live jobs of the new store, next run times kept.
    let paused = s.store("sql").job("paused").get().await.unwrap().unwrap();
    assert_eq!(paused.next_run_time, None);
    let cron = s.store("sql").job("cron").get().await.unwrap().unwrap();
    let original = s.store("default").job("cron").get().await.unwrap().unwrap();
    assert_eq!(cron.next_run_time, original.next_run_time);
    assert_eq!((cron.max_instances, cron.misfire_grace_time), (3, None));

    s.store("copy").import_jobs(&second, false).await.unwrap();
    let third = s.store("copy").export_jobs().await.unwrap();
    assert_eq!(jobs_json(&third), jobs_json(&first));

    // Importing again: ids the store has are refused as a whole unless replaced.
    let err = s
        .store("sql")
        .import_jobs(&second, false)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ConflictingId(_)), "{err}");
    s.store("sql").import_jobs(&second, true).await.unwrap();
    assert_eq!(s.store("sql").get_jobs().await.unwrap().len(), 4);

    // The whole scheduler's export holds every store's jobs.
    assert_eq!(s.export_jobs().await.unwrap().jobs.len(), 5 + 4 + 4);
    s.shutdown().await.unwrap();
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn jobs_this_scheduler_cannot_run_are_skipped_with_the_reason() {
    let source = builder()
        .executor("pool", apsched::executor::BlockingExecutor::new(2))
        .build();
    source.start().await.unwrap();
    add_jobs(&source, "default").await;
    source
        .job("cron")
        .modify(apsched::JobChanges::new().executor("pool"))
        .await
        .unwrap();
    let export = source.export_jobs().await.unwrap();
    source.shutdown().await.unwrap();

    // No "report" task and no "pool" executor here.
    let target = Scheduler::builder().build();
    target.start().await.unwrap();
    let report = target
        .store("default")
        .import_jobs(&export, false)
        .await
        .unwrap();
    assert_eq!(report.imported, ["command"]);
    let reasons: Vec<&str> = report.skipped.iter().map(|(_, r)| r.as_str()).collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("no executor named 'pool'")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("task 'report' is not registered")),
        "{reasons:?}"
    );
    assert_eq!(target.get_jobs().await.unwrap().len(), 1);
    target.shutdown().await.unwrap();
}

#[tokio::test]
async fn import_before_start_keeps_the_jobs_aside() {
    let source = builder().build();
    source.start().await.unwrap();
    add_jobs(&source, "default").await;
    let export = source.export_jobs().await.unwrap();
    source.shutdown().await.unwrap();

    let target = builder().build();
    let report = target
        .store("default")
        .import_jobs(&export, false)
        .await
        .unwrap();
    assert_eq!(report.imported.len(), 4);
    assert!(target.job("cron").get().await.unwrap().unwrap().pending);
    // An export before start holds the pending jobs as they will be stored.
    assert_eq!(
        jobs_json(&target.export_jobs().await.unwrap()),
        jobs_json(&export)
    );
    target.start().await.unwrap();
    assert_eq!(
        jobs_json(&target.export_jobs().await.unwrap()),
        jobs_json(&export)
    );
    target.shutdown().await.unwrap();
}

/// Redis → PostgreSQL, with a Redis record that does not load: exported as stored and
/// flagged, skipped by the import, the rest identical.
#[cfg(all(feature = "redis", feature = "postgres"))]
#[tokio::test]
async fn redis_to_postgres_keeps_unloadable_records_flagged() {
    if !crate::redis::available().await {
        return;
    }
    let pg = std::env::var("APSCHED_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let reachable = SqlStore::connect(&pg)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    if !suite::service_available("postgres", reachable) {
        return;
    }
    let suffix = suite::unique_suffix();
    let prefix = format!("apsched_transfer_{suffix}");
    let table = format!("t_transfer_{suffix}");
    let s = builder()
        .store(
            "redis",
            apsched::store::RedisStore::new(&crate::redis::url())
                .unwrap()
                .with_prefix(&prefix),
        )
        .store("pg", SqlStore::new(&pg).unwrap().with_table(&table))
        .build();
    s.start().await.unwrap();
    add_jobs(&s, "redis").await;
    let client = ::redis::Client::open(crate::redis::url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    ::redis::cmd("HSET")
        .arg(format!("{prefix}:jobs"))
        .arg("broken")
        .arg("{not json")
        .query_async::<()>(&mut c)
        .await
        .unwrap();

    let export = s.store("redis").export_jobs().await.unwrap();
    let broken = export.jobs.iter().find(|e| e.id() == "broken").unwrap();
    assert!(
        matches!(broken, ExportedJob::Unloadable { raw, store, .. }
            if raw == "{not json" && store == "redis"),
        "{broken:?}"
    );
    let report = s.store("pg").import_jobs(&export, false).await.unwrap();
    assert_eq!(report.imported.len(), 4, "{report:?}");
    assert_eq!(report.skipped.len(), 1);
    assert_eq!(report.skipped[0].0, "broken");
    let copied = s.store("pg").export_jobs().await.unwrap();
    assert_eq!(jobs_json(&copied), jobs_json(&export));

    s.shutdown().await.unwrap();
    crate::redis::cleanup(&prefix).await;
    let store = SqlStore::new(&pg).unwrap().with_table(&table);
    store.drop_tables().await.unwrap();
}
