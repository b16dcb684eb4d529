//! The SQL stores (SQLite, PostgreSQL, MySQL/MariaDB) against the contract, plus their own
//! tests: restart persistence, corrupt rows, fencing and leases, two schedulers on one
//! table, and the databases' targets for the multi-process test (`multiprocess`).
//!
//! Servers: `APSCHED_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`)
//! and `APSCHED_TEST_MYSQL_URL` (default `mysql://root@127.0.0.1:3306/test`). Every test
//! uses its own table (random suffix) and drops it at the end; SQLite uses temp files.

#![cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apsched::job::Callable;
use apsched::store::JobStore;
use apsched::store::SqlStore;
use apsched::trigger::Interval;
use apsched::{Error, Event, EventKind, Scheduler};
use chrono::{DateTime, TimeDelta, Utc};

use crate::{sql_raw, suite};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Db {
    Sqlite,
    Postgres,
    MySql,
}

impl Db {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Db::Sqlite => "sqlite",
            Db::Postgres => "postgres",
            Db::MySql => "mysql",
        }
    }
}

/// One database for one test: a URL and a fresh table name.
pub(crate) struct TestDb {
    pub(crate) db: Db,
    pub(crate) url: String,
    pub(crate) table: String,
    file: Option<PathBuf>,
}

impl TestDb {
    /// A fresh table on `db`, or `None` (skip) if its feature is off or its server is down.
    pub(crate) async fn new(db: Db, test: &str) -> Option<TestDb> {
        let suffix = suite::unique_suffix();
        let (url, file) = match db {
            Db::Sqlite => {
                if !cfg!(feature = "sqlite") {
                    return None;
                }
                let path = std::env::temp_dir().join(format!("apsched_{test}_{suffix}.db"));
                (format!("sqlite://{}", path.display()), Some(path))
            }
            Db::Postgres => {
                if !cfg!(feature = "postgres") {
                    return None;
                }
                let url = std::env::var("APSCHED_TEST_POSTGRES_URL")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
                (url, None)
            }
            Db::MySql => {
                if !cfg!(feature = "mysql") {
                    return None;
                }
                let url = std::env::var("APSCHED_TEST_MYSQL_URL")
                    .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
                (url, None)
            }
        };
        let reachable = SqlStore::connect(&url)
            .await
            .map(|_| ())
            .map_err(|e| format!("{url}: {e}"));
        if !suite::service_available(db.name(), reachable) {
            return None;
        }
        Some(TestDb {
            db,
            url,
            table: format!("t_{test}_{suffix}"),
            file,
        })
    }

    /// A store on this table (not started). `n` distinguishes several tables of one test.
    pub(crate) fn store_on(&self, table: &str) -> SqlStore {
        SqlStore::new(&self.url)
            .expect("valid URL")
            .with_table(table)
            .with_poll_interval(Some(Duration::from_millis(200)))
    }

    pub(crate) fn store(&self) -> SqlStore {
        self.store_on(&self.table)
    }

    /// A started store (scheduler identity `id`, lease `lease`).
    async fn started(&self, table: &str, id: &str, lease: Duration) -> SqlStore {
        let store = self.store_on(table);
        store
            .start(suite::context("default", id, lease))
            .await
            .unwrap_or_else(|e| panic!("{}: start: {e}", self.db.name()));
        store
    }

    /// Drops the test's tables (and the SQLite file).
    pub(crate) async fn cleanup(&self, tables: &[String]) {
        for t in tables.iter().chain(std::iter::once(&self.table)) {
            if let Err(e) = self.store_on(t).drop_tables().await {
                eprintln!("{}: could not drop {t}: {e}", self.db.name());
            }
        }
        if let Some(f) = &self.file {
            for ext in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{ext}", f.display()));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The contract

/// The suite's corrupt-record hook: a row whose document is not JSON.
fn write_corrupt(url: &str) -> suite::WriteCorrupt<SqlStore> {
    let url = url.to_string();
    Box::new(move |store: &SqlStore, id: &str| {
        let (url, table, id) = (url.clone(), store.table().to_string(), id.to_string());
        Box::pin(async move {
            sql_raw::insert_row(&url, &table, &id, Some(suite::t0()), "{this is not json").await;
        })
    })
}

async fn contract(db: Db) {
    let Some(tdb) = TestDb::new(db, "contract").await else {
        return;
    };
    let tables = Arc::new(Mutex::new(Vec::<String>::new()));
    let n = Arc::new(Mutex::new(0));
    {
        let tdb = &tdb;
        let tables = tables.clone();
        let make = move || {
            let tables = tables.clone();
            let n = n.clone();
            async move {
                let t = {
                    let mut n = n.lock().unwrap();
                    *n += 1;
                    format!("{}_{}", tdb.table, *n)
                };
                tables.lock().unwrap().push(t.clone());
                tdb.started(&t, "s1", Duration::from_secs(30)).await
            }
        };
        suite::contract(make.clone(), Some(write_corrupt(&tdb.url))).await;
        suite::bulk_add_all_or_nothing(make().await).await;
    }
    let shared = format!("{}_shared", tdb.table);
    tables.lock().unwrap().push(shared.clone());
    let a = tdb.started(&shared, "a", Duration::from_secs(30)).await;
    let b = tdb.started(&shared, "b", Duration::from_secs(30)).await;
    suite::shared_claims(a, b).await;
    let tables = tables.lock().unwrap().clone();
    tdb.cleanup(&tables).await;
}

#[tokio::test]
async fn sqlite_contract() {
    contract(Db::Sqlite).await;
}

/// `sqlite::memory:`: one private in-memory database per store (one connection, kept).
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_in_memory_contract() {
    suite::contract(
        || async {
            let store = SqlStore::new("sqlite::memory:").unwrap();
            store
                .start(suite::context("default", "s1", Duration::from_secs(30)))
                .await
                .unwrap();
            store
        },
        // A private in-memory database has no other way in than the store itself; the
        // file-backed `sqlite_contract` covers corrupt rows on SQLite.
        None,
    )
    .await;
    let store = SqlStore::new("sqlite::memory:").unwrap();
    store
        .start(suite::context("default", "s1", Duration::from_secs(30)))
        .await
        .unwrap();
    suite::bulk_add_all_or_nothing(store).await;
}

#[tokio::test]
async fn postgres_contract() {
    contract(Db::Postgres).await;
}

#[tokio::test]
async fn mysql_contract() {
    contract(Db::MySql).await;
}

// ---------------------------------------------------------------------------------------
// Store-specific behaviour

#[tokio::test]
async fn invalid_table_names_never_reach_sql() {
    let Some(tdb) = TestDb::new(Db::Sqlite, "badname").await else {
        return;
    };
    for bad in ["jobs; DROP TABLE x", "1jobs", "a-b", ""] {
        let store = tdb.store_on(bad);
        let err = store
            .start(suite::context("default", "s", Duration::from_secs(30)))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Store { ref message, .. } if message.contains("invalid table name")),
            "{bad:?}: {err}"
        );
    }
    let err = SqlStore::connect("oracle://x").await.unwrap_err();
    assert!(matches!(err, Error::InvalidStoreUrl { .. }), "{err}");
    tdb.cleanup(&[]).await;
}

/// Closures cannot be stored; the error says what to do instead.
#[tokio::test]
async fn closures_are_refused() {
    let Some(tdb) = TestDb::new(Db::Sqlite, "closure").await else {
        return;
    };
    let store = tdb.started(&tdb.table, "s", Duration::from_secs(30)).await;
    assert!(store.is_persistent());
    let mut job = suite::interval_job("c", 60, Some(suite::at(0)));
    job.callable = Callable::from_async(|| async {});
    let err = store.add_job(job, false).await.unwrap_err();
    assert!(matches!(err, Error::InvalidJob { .. }), "{err}");
    tdb.cleanup(&[]).await;
}

/// A claimed job carries a lease: another scheduler cannot claim it until the lease ends
/// (and `next_run_time` tells it when that is), a stale write is fenced, and after release
/// anyone may claim it again.
async fn leases_and_fencing(db: Db) {
    let Some(tdb) = TestDb::new(db, "lease").await else {
        return;
    };
    let lease = Duration::from_secs(30);
    let a = tdb.started(&tdb.table, "a", lease).await;
    let b = tdb.started(&tdb.table, "b", lease).await;
    a.add_job(suite::interval_job("j", 10, Some(suite::at(0))), false)
        .await
        .unwrap();
    let read = b.lookup_job("j").await.unwrap().unwrap();

    let due = a.acquire_due_jobs(suite::at(0), 10).await.unwrap();
    assert_eq!(due.len(), 1);
    let lease_until = suite::at(30);
    assert_eq!(due[0].job.lease.as_ref().unwrap().owner, "a");
    // Not released (as if `a` died): `b` may not claim the next slot before the lease ends.
    assert!(b
        .acquire_due_jobs(suite::at(10), 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(b.next_run_time().await.unwrap(), Some(lease_until));
    // `a` itself sees the job at its next run time.
    assert_eq!(a.next_run_time().await.unwrap(), Some(suite::at(10)));
    // A write based on the version read before the claim is refused.
    let mut stale = read.clone();
    stale.name = Some("stale".into());
    let err = b.update_job(stale).await.unwrap_err();
    assert!(matches!(err, Error::Fenced(_)), "{err}");

    // After the lease ends, `b` takes over and gets the whole backlog.
    let due_b = b.acquire_due_jobs(suite::at(30), 10).await.unwrap();
    assert_eq!(due_b.len(), 1);
    assert_eq!(
        due_b[0].run_times,
        vec![suite::at(10), suite::at(20), suite::at(30)]
    );
    // `a`'s release of its old claim is fenced: it does not clear `b`'s lease.
    a.release_jobs(&due).await.unwrap();
    assert!(a
        .acquire_due_jobs(suite::at(40), 10)
        .await
        .unwrap()
        .is_empty());
    b.release_jobs(&due_b).await.unwrap();
    assert_eq!(
        a.acquire_due_jobs(suite::at(40), 10).await.unwrap().len(),
        1
    );
    tdb.cleanup(&[]).await;
}

#[tokio::test]
async fn sqlite_leases_and_fencing() {
    leases_and_fencing(Db::Sqlite).await;
}

#[tokio::test]
async fn postgres_leases_and_fencing() {
    leases_and_fencing(Db::Postgres).await;
}

#[tokio::test]
async fn mysql_leases_and_fencing() {
    leases_and_fencing(Db::MySql).await;
}

/// A task job the scheduler runs every `every`, recording into a channel.
fn scheduler(
    store: SqlStore,
    id: &str,
    tx: tokio::sync::mpsc::UnboundedSender<String>,
) -> Scheduler {
    Scheduler::builder()
        .store("default", store)
        .scheduler_id(id)
        .lease(Duration::from_secs(3))
        .task("record", move |who: String| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(who);
            }
        })
        .task("noop", |_: serde_json::Value| async {})
        .build()
}

async fn recv_n(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(s)) => got.push(s),
            _ => panic!("only {} of {n} runs arrived", got.len()),
        }
    }
    got
}

/// Stop a scheduler, start a new one on the same database: the job is still there and keeps
/// running.
async fn restart_persistence(db: Db) {
    let Some(tdb) = TestDb::new(db, "restart").await else {
        return;
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let s1 = scheduler(tdb.store(), "first", tx.clone());
    s1.start().await.unwrap();
    s1.add_task_job("record", "first")
        .trigger(Interval::new(Duration::from_millis(300)).unwrap())
        .id("tick")
        .await
        .unwrap();
    recv_n(&mut rx, 2).await;
    s1.shutdown().await.unwrap();
    drop(s1);
    while rx.try_recv().is_ok() {}

    let (tx2, mut rx2) = tokio::sync::mpsc::unbounded_channel();
    let s2 = scheduler(tdb.store(), "second", tx2);
    s2.start().await.unwrap();
    let job = s2.job("tick").get().await.unwrap().expect("job survived");
    assert_eq!(job.callable, "task record");
    // The job's arguments came back from the database too.
    assert_eq!(recv_n(&mut rx2, 2).await, ["first", "first"]);
    s2.shutdown().await.unwrap();
    tdb.cleanup(&[]).await;
}

#[tokio::test]
async fn sqlite_restart_persistence() {
    restart_persistence(Db::Sqlite).await;
}

#[tokio::test]
async fn postgres_restart_persistence() {
    restart_persistence(Db::Postgres).await;
}

#[tokio::test]
async fn mysql_restart_persistence() {
    restart_persistence(Db::MySql).await;
}

/// A row that does not parse and a row naming an unregistered task are reported once each,
/// kept untouched, not reported as due forever, and the other jobs still run.
async fn corrupt_rows(db: Db) {
    let Some(tdb) = TestDb::new(db, "corrupt").await else {
        return;
    };
    let past = Utc::now() - TimeDelta::seconds(5);
    {
        // Write the bad rows through a store started like any other.
        let raw = tdb
            .started(&tdb.table, "writer", Duration::from_secs(3))
            .await;
        sql_raw::insert_row(
            &tdb.url,
            raw.table(),
            "garbage",
            Some(past),
            "{this is not json",
        )
        .await;
        let mut ghost = suite::interval_job("ghost", 1, Some(past));
        ghost.callable = Callable::Task {
            name: "not_registered".into(),
            args: serde_json::Value::Null,
        };
        let ghost = ghost.to_json().unwrap();
        sql_raw::insert_row(&tdb.url, raw.table(), "ghost", Some(past), &ghost).await;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let s = scheduler(tdb.store(), "reader", tx);
    let mut errors = s.subscribe(EventKind::STORE_ERROR);
    s.start().await.unwrap();
    s.add_task_job("record", "good")
        .trigger(Interval::new(Duration::from_millis(200)).unwrap())
        .id("good")
        .await
        .unwrap();
    recv_n(&mut rx, 5).await;

    let mut reported: HashMap<String, usize> = HashMap::new();
    while let Ok(ev) = errors.try_recv() {
        if let Event::StoreError {
            job_id: Some(id),
            message,
            ..
        } = ev
        {
            assert!(message.contains("untouched"), "{message}");
            *reported.entry(id).or_default() += 1;
        }
    }
    assert_eq!(reported.get("garbage"), Some(&1), "{reported:?}");
    assert_eq!(reported.get("ghost"), Some(&1), "{reported:?}");
    assert_eq!(reported.len(), 2, "{reported:?}");

    // Kept: listing skips them, looking them up says why they cannot be loaded.
    let ids: Vec<String> = s
        .get_jobs()
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(ids, ["good"]);
    let store = tdb
        .started(&tdb.table, "checker", Duration::from_secs(3))
        .await;
    for id in ["garbage", "ghost"] {
        let err = store.lookup_job(id).await.unwrap_err();
        assert!(matches!(err, Error::CorruptJob { .. }), "{err}");
    }
    // Not due forever: the next run time is the good job's, in the future.
    let next = store.next_run_time().await.unwrap().expect("good job");
    assert!(next > past + TimeDelta::seconds(4), "{next}");
    s.shutdown().await.unwrap();
    tdb.cleanup(&[]).await;
}

#[tokio::test]
async fn sqlite_corrupt_rows() {
    corrupt_rows(Db::Sqlite).await;
}

#[tokio::test]
async fn postgres_corrupt_rows() {
    corrupt_rows(Db::Postgres).await;
}

#[tokio::test]
async fn mysql_corrupt_rows() {
    corrupt_rows(Db::MySql).await;
}

/// Two schedulers in this process share one table: each scheduled time of each job is
/// submitted by exactly one of them.
async fn two_schedulers(db: Db) {
    let Some(tdb) = TestDb::new(db, "two").await else {
        return;
    };
    const JOBS: usize = 20;
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let a = scheduler(tdb.store(), "a", tx.clone());
    let b = scheduler(tdb.store(), "b", tx);
    let mut ev_a = a.subscribe(EventKind::JOB_SUBMITTED);
    let mut ev_b = b.subscribe(EventKind::JOB_SUBMITTED);
    a.start().await.unwrap();
    b.start().await.unwrap();
    let start = Utc::now() + TimeDelta::milliseconds(500);
    for i in 0..JOBS {
        a.add_task_job("noop", ())
            .trigger(Interval::new(Duration::from_millis(250)).unwrap())
            .next_run_time(start)
            .coalesce(false)
            .misfire_grace_time(None)
            .id(format!("j{i:02}"))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(2600)).await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    let mut slots: Vec<(String, DateTime<Utc>)> = Vec::new();
    let mut per = [0usize; 2];
    for (k, rx) in [&mut ev_a, &mut ev_b].into_iter().enumerate() {
        while let Ok(Event::JobSubmitted {
            job_id,
            scheduled_run_times,
            ..
        }) = rx.try_recv()
        {
            per[k] += scheduled_run_times.len();
            slots.extend(scheduled_run_times.into_iter().map(|t| (job_id.clone(), t)));
        }
    }
    let unique: HashSet<_> = slots.iter().cloned().collect();
    assert_eq!(unique.len(), slots.len(), "a slot was submitted twice");
    // Every slot from the start to 2 s later was submitted.
    for i in 0..JOBS {
        for k in 0..8 {
            let t = start + TimeDelta::milliseconds(250 * k);
            assert!(
                unique.contains(&(format!("j{i:02}"), t)),
                "j{i:02} at {t} missing"
            );
        }
    }
    eprintln!("{}: submissions a={} b={}", db.name(), per[0], per[1]);
    tdb.cleanup(&[]).await;
}

#[tokio::test]
async fn sqlite_two_schedulers() {
    two_schedulers(Db::Sqlite).await;
}

#[tokio::test]
async fn postgres_two_schedulers() {
    two_schedulers(Db::Postgres).await;
}

#[tokio::test]
async fn mysql_two_schedulers() {
    two_schedulers(Db::MySql).await;
}

// ---------------------------------------------------------------------------------------
// Several processes

/// The multi-process test's targets (see `multiprocess`): one table on each database that
/// is there; 3 processes, 500 jobs every second for 20 s, the busiest killed at 8 s.
pub async fn multiprocess_targets() -> Vec<crate::multiprocess::Target> {
    let mut targets = Vec::new();
    for db in [Db::Postgres, Db::MySql, Db::Sqlite] {
        let Some(tdb) = TestDb::new(db, "mp").await else {
            continue;
        };
        targets.push(crate::multiprocess::Target {
            plan: crate::multiprocess::Plan {
                label: db.name().into(),
                url: tdb.url.clone(),
                namespace: tdb.table.clone(),
                processes: 3,
                jobs: 500,
                secs: 20,
                kill_at: 8,
                lease_secs: 3,
            },
            cleanup: Box::pin(async move { tdb.cleanup(&[]).await }),
        });
    }
    targets
}

/// The chaos test's database (see `chaos`): a fresh table on PostgreSQL, if it is there.
#[cfg(feature = "postgres")]
pub async fn chaos_target() -> Option<crate::multiprocess::Target> {
    let tdb = TestDb::new(Db::Postgres, "chaos").await?;
    Some(crate::multiprocess::Target {
        plan: crate::multiprocess::Plan {
            label: "postgres chaos".into(),
            url: tdb.url.clone(),
            namespace: tdb.table.clone(),
            processes: 3,
            jobs: 100,
            secs: 60,
            kill_at: 0, // chosen at random by the chaos test
            lease_secs: 3,
        },
        cleanup: Box::pin(async move { tdb.cleanup(&[]).await }),
    })
}

// ---------------------------------------------------------------------------------------
// Outages

/// A TCP proxy in front of a database server that can be cut and restored, to simulate an
/// outage without touching the shared server.
pub struct Proxy {
    pub port: u16,
    up: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: String) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (up2, conns2) = (up.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection closed
                }
                let upstream = upstream.clone();
                conns2.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                }));
            }
        });
        Proxy {
            port,
            up,
            conns,
            accept,
        }
    }

    /// Up: accepts and forwards connections. Down: drops every open connection and refuses
    /// new ones.
    pub fn set_up(&self, up: bool) {
        self.up.store(up, std::sync::atomic::Ordering::SeqCst);
        if !up {
            for c in self.conns.lock().unwrap().drain(..) {
                c.abort();
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.set_up(false);
    }
}

/// `url` with its host:port replaced by the proxy's; also returns the original host:port.
pub fn via_proxy(url: &str, port: u16) -> (String, String) {
    let start = url
        .find('@')
        .map_or_else(|| url.find("://").unwrap() + 3, |i| i + 1);
    let end = url[start..].find('/').map_or(url.len(), |i| start + i);
    let upstream = url[start..end].to_string();
    let proxied = format!("{}127.0.0.1:{port}{}", &url[..start], &url[end..]);
    (proxied, upstream)
}

/// The database goes away: the scheduler reports store errors, deletes nothing, and when
/// the database comes back the job runs again.
async fn outage(db: Db) {
    let Some(tdb) = TestDb::new(db, "outage").await else {
        return;
    };
    let (_, upstream) = via_proxy(&tdb.url, 0);
    let proxy = Proxy::start(upstream).await;
    let (url, _) = via_proxy(&tdb.url, proxy.port);
    let store = SqlStore::new(&url)
        .unwrap()
        .with_table(&tdb.table)
        .with_poll_interval(Some(Duration::from_millis(200)));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let s = scheduler(store, "outage", tx);
    let mut errors = s.subscribe(EventKind::STORE_ERROR);
    s.start().await.unwrap();
    s.add_task_job("record", "x")
        .trigger(Interval::new(Duration::from_millis(300)).unwrap())
        .id("tick")
        .await
        .unwrap();
    recv_n(&mut rx, 2).await;

    proxy.set_up(false);
    let err = tokio::time::timeout(Duration::from_secs(15), errors.recv())
        .await
        .expect("a store error is reported during the outage")
        .unwrap();
    assert!(matches!(err, Event::StoreError { .. }), "{err:?}");
    // Management calls fail with a store error too, rather than hanging or panicking.
    let e = s.get_jobs().await.unwrap_err();
    assert!(matches!(e, Error::Store { .. }), "{e}");
    proxy.set_up(true);

    while rx.try_recv().is_ok() {}
    // Back: the job runs again (after the scheduler's backoff), and it is still there.
    tokio::time::timeout(Duration::from_secs(40), rx.recv())
        .await
        .expect("the job runs again after the outage");
    assert!(s.job("tick").get().await.unwrap().is_some());
    s.shutdown().await.unwrap();
    drop(proxy);
    tdb.cleanup(&[]).await;
}

#[tokio::test]
async fn postgres_outage() {
    outage(Db::Postgres).await;
}

#[tokio::test]
async fn mysql_outage() {
    outage(Db::MySql).await;
}

/// A server that is not there: starting fails with a store error, quickly, no panic.
#[tokio::test]
async fn unreachable_server_is_a_store_error() {
    async fn check(url: &str) {
        let Ok(store) = SqlStore::new(url) else {
            return; // feature off
        };
        let t = std::time::Instant::now();
        let err = store
            .start(suite::context("default", "s", Duration::from_secs(30)))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Store { .. }), "{url}: {err}");
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{url}: took {:?}",
            t.elapsed()
        );
        // Before a successful start, every call says the store is not started.
        let err = store.lookup_job("x").await.unwrap_err();
        assert!(matches!(err, Error::Store { .. }), "{url}: {err}");
    }
    // The pool gives up after its acquire timeout (5 s): both at once.
    tokio::join!(
        check("postgres://postgres@127.0.0.1:1/test"),
        check("mysql://root@127.0.0.1:1/test")
    );
}

// ---------------------------------------------------------------------------------------
// Rows no store would write

/// A started store (identity `s1`) and a receiver of its STORE_ERROR events.
async fn started_with_events(tdb: &TestDb) -> (SqlStore, apsched::event::EventReceiver) {
    let ctx = suite::TestContext::new("default", "s1", Duration::from_secs(30));
    let events = ctx.subscribe(EventKind::STORE_ERROR);
    let store = tdb.store();
    store.start(ctx.context()).await.unwrap();
    (store, events)
}

/// How many STORE_ERROR events each job id got.
fn reports(events: &mut apsched::event::EventReceiver) -> HashMap<String, usize> {
    let mut reported = HashMap::new();
    while let Ok(ev) = events.try_recv() {
        if let Event::StoreError {
            job_id: Some(id), ..
        } = ev
        {
            *reported.entry(id).or_default() += 1;
        }
    }
    reported
}

fn sorted_ids(due: &[apsched::store::DueJob]) -> Vec<String> {
    let mut ids: Vec<String> = due.iter().map(|d| d.job.id.clone()).collect();
    ids.sort();
    ids
}

/// Issue 9 item 11: the `next_run_time` column and the document's copy disagree. The column
/// is the truth (every query selects by it): a due column with a paused or a future document
/// runs at the column's time (not deleted, not selected again on every pass), a paused
/// column with a due document stays paused, a document naming another id is a corrupt
/// record. Each is reported once, nothing is deleted, a claim rewrites the document, and a
/// loop's passes find nothing due before the next real run time (no spin, no writes).
async fn copies_disagree(db: Db) {
    let Some(tdb) = TestDb::new(db, "copies").await else {
        return;
    };
    let (store, mut events) = started_with_events(&tdb).await;
    let doc = |id: &str, next: Option<DateTime<Utc>>| {
        suite::interval_job(id, 60, next).to_json().unwrap()
    };
    let at = suite::at;
    for (id, column, document) in [
        ("paused_doc", Some(at(0)), doc("paused_doc", None)),
        ("future_doc", Some(at(0)), doc("future_doc", Some(at(3600)))),
        ("paused_column", None, doc("paused_column", Some(at(0)))),
        ("other_id", Some(at(0)), doc("someone_else", Some(at(0)))),
    ] {
        sql_raw::insert_row(&tdb.url, store.table(), id, column, &document).await;
    }
    store
        .add_job(suite::interval_job("good", 60, Some(at(0))), false)
        .await
        .unwrap();

    // One pass, as the loop makes it: the earliest time, then a claim at that time.
    assert_eq!(store.next_run_time().await.unwrap(), Some(at(0)));
    let due = store.acquire_due_jobs(at(0), 100).await.unwrap();
    assert_eq!(sorted_ids(&due), ["future_doc", "good", "paused_doc"]);
    for d in &due {
        assert_eq!(d.run_times, vec![at(0)], "{}", d.job.id);
        assert!(!d.removed, "{} deleted", d.job.id);
        assert_eq!(d.job.next_run_time, Some(at(60)), "{}", d.job.id);
    }
    store.release_jobs(&due).await.unwrap();

    // Further passes before at(60): nothing due, nothing claimed, nothing written.
    let before = row_versions(&store).await;
    for pass in 0..5 {
        assert_eq!(
            store.next_run_time().await.unwrap(),
            Some(at(60)),
            "pass {pass}"
        );
        assert!(store
            .acquire_due_jobs(at(30), 100)
            .await
            .unwrap()
            .is_empty());
    }
    assert_eq!(row_versions(&store).await, before, "a pass wrote a row");

    // Kept, none deleted; the paused column keeps the job paused.
    let all: Vec<String> = store
        .get_all_jobs()
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(all, ["future_doc", "good", "paused_doc", "paused_column"]);
    assert_eq!(
        store
            .lookup_job("paused_column")
            .await
            .unwrap()
            .unwrap()
            .next_run_time,
        None
    );
    let err = store.lookup_job("other_id").await.unwrap_err();
    assert!(matches!(err, Error::CorruptJob { .. }), "{err}");

    // Reported once each, however often they were read.
    let reported = reports(&mut events);
    let expected: HashMap<String, usize> =
        ["paused_doc", "future_doc", "paused_column", "other_id"]
            .into_iter()
            .map(|id| (id.to_string(), 1))
            .collect();
    assert_eq!(reported, expected);

    // Repaired: another scheduler reading the table finds only the rows never written since.
    let (other, mut other_events) = {
        let ctx = suite::TestContext::new("default", "s2", Duration::from_secs(30));
        let events = ctx.subscribe(EventKind::STORE_ERROR);
        let other = tdb.store();
        other.start(ctx.context()).await.unwrap();
        (other, events)
    };
    assert_eq!(other.get_all_jobs().await.unwrap().len(), 4);
    let mut reported: Vec<String> = reports(&mut other_events).into_keys().collect();
    reported.sort();
    assert_eq!(reported, ["other_id", "paused_column"]);
    tdb.cleanup(&[]).await;
}

/// The versions of the loadable rows of `copies_disagree`.
async fn row_versions(store: &SqlStore) -> Vec<u64> {
    let mut v = Vec::new();
    for id in ["good", "paused_doc", "future_doc", "paused_column"] {
        v.push(store.lookup_job(id).await.unwrap().unwrap().version);
    }
    v
}

#[tokio::test]
async fn sqlite_copies_disagree() {
    copies_disagree(Db::Sqlite).await;
}

#[tokio::test]
async fn postgres_copies_disagree() {
    copies_disagree(Db::Postgres).await;
}

#[tokio::test]
async fn mysql_copies_disagree() {
    copies_disagree(Db::MySql).await;
}

/// Issue 9 item 13: SQLite keeps any storage class in any column. Rows whose document is a
/// BLOB, whose version is text, whose next run time is REAL or text, or whose lease owner is
/// a BLOB are corrupt records: reported once each, kept, skipped by listing, claiming and
/// the next run time, removable; the good job runs on.
#[tokio::test]
async fn sqlite_unexpected_storage_types() {
    let Some(tdb) = TestDb::new(Db::Sqlite, "types").await else {
        return;
    };
    let (store, mut events) = started_with_events(&tdb).await;
    let at = suite::at;
    store
        .add_job(suite::interval_job("good", 60, Some(at(0))), false)
        .await
        .unwrap();
    let us = at(0).timestamp_micros();
    let doc = |id: &str| suite::interval_job(id, 60, Some(at(0))).to_json().unwrap();
    let bad = [
        (
            "blob_doc",
            format!("{us}, CAST('{}' AS BLOB), 0, NULL, NULL", doc("blob_doc")),
        ),
        (
            "text_version",
            format!("{us}, '{}', 'abc', NULL, NULL", doc("text_version")),
        ),
        (
            "real_time",
            format!("{us}.5, '{}', 0, NULL, NULL", doc("real_time")),
        ),
        (
            "text_time",
            format!("'soon', '{}', 0, NULL, NULL", doc("text_time")),
        ),
        (
            "blob_owner",
            format!("{us}, '{}', 0, X'00ff', 5", doc("blob_owner")),
        ),
    ];
    for (id, values) in &bad {
        assert_eq!(
            sql_raw::insert_values(&tdb.url, store.table(), id, values).await,
            1
        );
    }

    let all = store.get_all_jobs().await.unwrap();
    assert_eq!(
        all.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
        ["good"]
    );
    assert_eq!(store.next_run_time().await.unwrap(), Some(at(0)));
    for pass in 0..3 {
        let due = store.acquire_due_jobs(at(pass * 60), 100).await.unwrap();
        assert_eq!(sorted_ids(&due), ["good"], "pass {pass}");
        store.release_jobs(&due).await.unwrap();
        assert_eq!(
            store.next_run_time().await.unwrap(),
            Some(at(pass * 60 + 60))
        );
    }
    for (id, _) in &bad {
        let err = store.lookup_job(id).await.unwrap_err();
        assert!(matches!(err, Error::CorruptJob { .. }), "{id}: {err}");
    }
    let reported = reports(&mut events);
    for (id, _) in &bad {
        assert_eq!(reported.get(*id), Some(&1), "{id}: {reported:?}");
    }
    assert_eq!(reported.len(), bad.len(), "{reported:?}");
    // Removable, the documented way out.
    for (id, _) in &bad {
        store.remove_job(id).await.unwrap();
    }
    assert_eq!(store.get_all_jobs().await.unwrap().len(), 1);
    tdb.cleanup(&[]).await;
}

/// Issue 9 item 13 on the servers: the schema allows NULL in `next_run_time`,
/// `lease_owner` and `lease_until`. An owner without an expiry is no lease, an expiry
/// without an owner holds the job until it passes; a document that is JSON `null`, a number or empty is a corrupt
/// record. Nothing fails the whole store.
async fn odd_but_allowed_values(db: Db) {
    let Some(tdb) = TestDb::new(db, "odd").await else {
        return;
    };
    let (store, mut events) = started_with_events(&tdb).await;
    let at = suite::at;
    let us = at(0).timestamp_micros();
    let doc = |id: &str| suite::interval_job(id, 60, Some(at(0))).to_json().unwrap();
    let rows = [
        (
            "owner_only",
            format!("{us}, '{}', 0, 'ghost', NULL", doc("owner_only")),
        ),
        (
            "until_only",
            format!(
                "{us}, '{}', 0, NULL, {}",
                doc("until_only"),
                us + 60_000_000
            ),
        ),
        ("null_doc", format!("{us}, 'null', 0, NULL, NULL")),
        ("number_doc", format!("{us}, '42', 0, NULL, NULL")),
        ("empty_doc", format!("{us}, '', 0, NULL, NULL")),
    ];
    for (id, values) in &rows {
        sql_raw::insert_values(&tdb.url, store.table(), id, values).await;
    }
    let ids: Vec<String> = store
        .get_all_jobs()
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(ids, ["owner_only", "until_only"]);
    // An expiry without an owner holds the job until then, like any lease of another.
    let due = store.acquire_due_jobs(at(0), 100).await.unwrap();
    assert_eq!(sorted_ids(&due), ["owner_only"]);
    store.release_jobs(&due).await.unwrap();
    assert_eq!(store.next_run_time().await.unwrap(), Some(at(60)));
    let due = store.acquire_due_jobs(at(60), 100).await.unwrap();
    assert_eq!(sorted_ids(&due), ["owner_only", "until_only"]);
    store.release_jobs(&due).await.unwrap();
    let mut reported: Vec<String> = reports(&mut events).into_keys().collect();
    reported.sort();
    assert_eq!(reported, ["empty_doc", "null_doc", "number_doc"]);
    tdb.cleanup(&[]).await;
}

#[tokio::test]
async fn sqlite_odd_but_allowed_values() {
    odd_but_allowed_values(Db::Sqlite).await;
}

#[tokio::test]
async fn postgres_odd_but_allowed_values() {
    odd_but_allowed_values(Db::Postgres).await;
}

#[tokio::test]
async fn mysql_odd_but_allowed_values() {
    odd_but_allowed_values(Db::MySql).await;
}

// ---------------------------------------------------------------------------------------
// Connections

/// `url` with `params` added to its query.
fn with_params(url: &str, params: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{params}")
}

/// Issue 9 item 17: the pool size is the user's (URL parameter or builder), and the
/// PostgreSQL listener has a connection of its own: a store with a pool of one connection
/// serves many concurrent calls, and on PostgreSQL is still woken by other schedulers.
async fn pool_of_one(db: Db) {
    let Some(tdb) = TestDb::new(db, "pool").await else {
        return;
    };
    let app = format!("apsched_pool_{}", suite::unique_suffix());
    let store = match db {
        // The URL parameter (and a name to find its connections by)...
        Db::Postgres => SqlStore::new(&with_params(
            &tdb.url,
            &format!("pool_size=1&application_name={app}"),
        ))
        .unwrap(),
        Db::MySql => SqlStore::new(&with_params(&tdb.url, "max_connections=1")).unwrap(),
        // ...and the builder.
        Db::Sqlite => SqlStore::new(&tdb.url).unwrap().with_pool_size(1),
    }
    .with_table(&tdb.table);
    let ctx = suite::TestContext::new("default", "s1", Duration::from_secs(30));
    let wakeup = ctx.wakeup();
    store.start(ctx.context()).await.unwrap();
    let store = Arc::new(store);
    let mut calls = tokio::task::JoinSet::<apsched::Result<()>>::new();
    for i in 0..20 {
        let store = store.clone();
        calls.spawn(async move {
            let id = format!("j{i:02}");
            store
                .add_job(suite::interval_job(&id, 60, Some(suite::at(0))), false)
                .await?;
            store.lookup_job(&id).await?;
            store.get_all_jobs().await?;
            store.next_run_time().await?;
            let due = store.acquire_due_jobs(suite::at(0), 5).await?;
            store.release_jobs(&due).await?;
            Ok(())
        });
    }
    while let Some(r) = calls.join_next().await {
        r.unwrap().unwrap();
    }
    assert_eq!(store.get_all_jobs().await.unwrap().len(), 20);

    if db == Db::Postgres {
        let other = tdb
            .started(&tdb.table, "other", Duration::from_secs(30))
            .await;
        let count = format!(
            "SELECT 1 FROM pg_stat_activity WHERE application_name = '{app}' AND pid <> \
             pg_backend_pid()"
        );
        // The pool's one connection and the listener's: wait for the listener to be there.
        let mut n = 0;
        for _ in 0..200 {
            n = sql_raw::execute(&tdb.url, &count).await;
            if n >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(n, 2, "connections of a store with pool_size=1");
        // Drain the wake-up the listener gives when it (re)connects, then: another
        // scheduler's change wakes this one.
        let _ = tokio::time::timeout(Duration::from_millis(200), wakeup.notified()).await;
        let woken = wakeup.notified();
        other
            .add_job(suite::interval_job("from_other", 60, None), false)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(30), woken)
            .await
            .expect("the listener wakes the store's scheduler");
        assert_eq!(sql_raw::execute(&tdb.url, &count).await, 2);
    }
    // A pool size of 0 or garbage is refused, saying why.
    for bad in ["pool_size=0", "max_connections=many"] {
        let err = SqlStore::new(&with_params(&tdb.url, bad)).unwrap_err();
        assert!(
            matches!(err, Error::InvalidStoreUrl { ref reason, .. } if reason.contains("at least 1")),
            "{bad}: {err}"
        );
    }
    tdb.cleanup(&[]).await;
}

#[tokio::test]
async fn sqlite_pool_of_one() {
    pool_of_one(Db::Sqlite).await;
}

#[tokio::test]
async fn postgres_pool_of_one() {
    pool_of_one(Db::Postgres).await;
}

#[tokio::test]
async fn mysql_pool_of_one() {
    pool_of_one(Db::MySql).await;
}

/// Issue 9 item 18: a URL without a user connects as libpq and the mysql client would:
/// `PGUSER`, else the operating-system user (here `root`, a role the test server has).
/// Before, sqlx's stub answered "anonymous" and PostgreSQL refused the role.
#[tokio::test]
async fn urls_without_a_user() {
    for (db, url) in [
        (Db::Postgres, "postgres://127.0.0.1/test"),
        (Db::MySql, "mysql://127.0.0.1/test"),
    ] {
        if TestDb::new(db, "nouser").await.is_none() {
            continue;
        }
        let store = SqlStore::connect(url)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"))
            .with_table(format!("t_nouser_{}", suite::unique_suffix()));
        store
            .start(suite::context("default", "s", Duration::from_secs(30)))
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        store
            .add_job(suite::interval_job("a", 60, Some(suite::at(0))), false)
            .await
            .unwrap();
        assert!(store.lookup_job("a").await.unwrap().is_some());
        store.drop_tables().await.unwrap();
    }
}

/// `poll_interval(Duration::MAX)` and a `Duration::MAX` lease: the store's time arithmetic
/// saturates (the lease ends at the last representable instant), nothing panics, and the
/// lease still holds off another scheduler until released.
async fn extreme_durations(db: Db) {
    let Some(tdb) = TestDb::new(db, "maxdur").await else {
        return;
    };
    let a = tdb.store().with_poll_interval(Some(Duration::MAX));
    a.start(suite::context("default", "a", Duration::MAX))
        .await
        .unwrap();
    assert_eq!(JobStore::poll_interval(&a), Some(Duration::MAX));
    let b = tdb.started(&tdb.table, "b", Duration::from_secs(30)).await;
    a.add_job(suite::interval_job("j", 60, Some(suite::at(0))), false)
        .await
        .unwrap();
    let due = a.acquire_due_jobs(suite::at(0), 10).await.unwrap();
    assert_eq!(due.len(), 1);
    let until = due[0].job.lease.as_ref().unwrap().until;
    assert!(
        until.timestamp() > suite::at(0).timestamp() + 1_000_000_000,
        "{until}"
    );
    assert_eq!(a.next_run_time().await.unwrap(), Some(suite::at(60)));
    // Another scheduler's next look is when the lease ends (kept to the µs).
    assert_eq!(
        b.next_run_time().await.unwrap().unwrap().timestamp_micros(),
        until.timestamp_micros()
    );
    assert!(b
        .acquire_due_jobs(suite::at(60), 10)
        .await
        .unwrap()
        .is_empty());
    a.release_jobs(&due).await.unwrap();
    assert_eq!(
        b.acquire_due_jobs(suite::at(60), 10).await.unwrap().len(),
        1
    );
    tdb.cleanup(&[]).await;
}

#[tokio::test]
async fn sqlite_extreme_durations() {
    extreme_durations(Db::Sqlite).await;
}

#[tokio::test]
async fn postgres_extreme_durations() {
    extreme_durations(Db::Postgres).await;
}

#[tokio::test]
async fn mysql_extreme_durations() {
    extreme_durations(Db::MySql).await;
}
