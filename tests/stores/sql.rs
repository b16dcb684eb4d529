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
use apsched::store::sql::SqlStore;
use apsched::store::JobStore;
use apsched::trigger::Interval;
use apsched::{Error, Event, EventKind, Scheduler};
use chrono::{DateTime, TimeDelta, Utc};
use futures::future::BoxFuture;

use crate::suite;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Db {
    Sqlite,
    Postgres,
    MySql,
}

impl Db {
    fn name(self) -> &'static str {
        match self {
            Db::Sqlite => "sqlite",
            Db::Postgres => "postgres",
            Db::MySql => "mysql",
        }
    }
}

/// One database for one test: a URL and a fresh table name.
struct TestDb {
    db: Db,
    url: String,
    table: String,
    file: Option<PathBuf>,
}

impl TestDb {
    /// A fresh table on `db`, or `None` (skip) if its feature is off or its server is down.
    async fn new(db: Db, test: &str) -> Option<TestDb> {
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
    fn store_on(&self, table: &str) -> SqlStore {
        SqlStore::lazy(&self.url)
            .expect("valid URL")
            .table(table)
            .poll_interval(Duration::from_millis(200))
    }

    fn store(&self) -> SqlStore {
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
    async fn cleanup(&self, tables: &[String]) {
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
fn write_corrupt<'a>(store: &'a SqlStore, id: &'a str) -> BoxFuture<'a, ()> {
    Box::pin(async move {
        store
            .insert_raw_row(id, Some(suite::t0()), "{this is not json")
            .await
            .unwrap();
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
        suite::contract(
            move || {
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
            },
            Some(write_corrupt),
        )
        .await;
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
            let store = SqlStore::lazy("sqlite::memory:").unwrap();
            store
                .start(suite::context("default", "s1", Duration::from_secs(30)))
                .await
                .unwrap();
            store
        },
        Some(write_corrupt),
    )
    .await;
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
    s1.shutdown(true).await.unwrap();
    drop(s1);
    while rx.try_recv().is_ok() {}

    let (tx2, mut rx2) = tokio::sync::mpsc::unbounded_channel();
    let s2 = scheduler(tdb.store(), "second", tx2);
    s2.start().await.unwrap();
    let job = s2
        .get_job("tick", None)
        .await
        .unwrap()
        .expect("job survived");
    assert_eq!(job.callable, "task record");
    // The job's arguments came back from the database too.
    assert_eq!(recv_n(&mut rx2, 2).await, ["first", "first"]);
    s2.shutdown(true).await.unwrap();
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
        raw.insert_raw_row("garbage", Some(past), "{this is not json")
            .await
            .unwrap();
        let mut ghost = suite::interval_job("ghost", 1, Some(past));
        ghost.callable = Callable::Task {
            name: "not_registered".into(),
            args: serde_json::Value::Null,
        };
        raw.insert_raw_row("ghost", Some(past), &ghost.to_json().unwrap())
            .await
            .unwrap();
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
    while let Some(Ok(ev)) = errors.try_recv() {
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
        .get_jobs(None)
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
    s.shutdown(true).await.unwrap();
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
    a.shutdown(true).await.unwrap();
    b.shutdown(true).await.unwrap();
    let mut slots: Vec<(String, DateTime<Utc>)> = Vec::new();
    let mut per = [0usize; 2];
    for (k, rx) in [&mut ev_a, &mut ev_b].into_iter().enumerate() {
        while let Some(Ok(Event::JobSubmitted {
            job_id,
            scheduled_run_times,
            ..
        })) = rx.try_recv()
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

// ---------------------------------------------------------------------------------------
// Outages

/// A TCP proxy in front of a database server that can be cut and restored, to simulate an
/// outage without touching the shared server.
struct Proxy {
    port: u16,
    up: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
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

    fn set_up(&self, up: bool) {
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
fn via_proxy(url: &str, port: u16) -> (String, String) {
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
    let store = SqlStore::lazy(&url)
        .unwrap()
        .table(&tdb.table)
        .poll_interval(Duration::from_millis(200));
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
    let e = s.get_jobs(None).await.unwrap_err();
    assert!(matches!(e, Error::Store { .. }), "{e}");
    proxy.set_up(true);

    while rx.try_recv().is_ok() {}
    // Back: the job runs again (after the scheduler's backoff), and it is still there.
    tokio::time::timeout(Duration::from_secs(40), rx.recv())
        .await
        .expect("the job runs again after the outage");
    assert!(s.get_job("tick", None).await.unwrap().is_some());
    s.shutdown(true).await.unwrap();
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
        let Ok(store) = SqlStore::lazy(url) else {
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
