//! The ZooKeeper store against the contract, plus its own tests. Needs ZooKeeper on
//! `APSCHED_ZK_URL` (default `127.0.0.1:2181`, which `scripts/services.sh start` runs).

use std::time::Duration;

use apsched::store::{JobStore, ZooKeeperStore};
use chrono::Utc;
use futures::FutureExt;
use zookeeper_client as zk;

use crate::{nosql, suite};

mod ledger;

fn hosts() -> String {
    std::env::var("APSCHED_ZK_URL").unwrap_or_else(|_| "127.0.0.1:2181".into())
}

async fn connect(hosts: &str) -> Result<zk::Client, String> {
    tokio::time::timeout(
        Duration::from_secs(5),
        zk::Client::connector()
            .with_fail_eagerly()
            .with_connection_timeout(Duration::from_secs(2))
            .connect(hosts),
    )
    .await
    .map_err(|_| "connection timed out".to_string())?
    .map_err(|e| e.to_string())
}

async fn available() -> bool {
    suite::service_available("ZooKeeper", connect(&hosts()).await.map(|_| ()))
}

/// Deletes `path` and everything under it.
async fn cleanup(path: &str) {
    let c = connect(&hosts()).await.unwrap();
    delete_tree(&c, path).await;
}

fn delete_tree<'a>(
    c: &'a zk::Client,
    path: &'a str,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
    Box::pin(async move {
        if let Ok(children) = c.list_children(path).await {
            for ch in children {
                delete_tree(c, &format!("{path}/{ch}")).await;
            }
        }
        let _ = c.delete(path, None).await;
    })
}

fn root() -> String {
    format!("/apsched-test/{}", suite::unique_suffix())
}

async fn started(root: &str, id: &str) -> ZooKeeperStore {
    let s = ZooKeeperStore::new(&hosts()).unwrap().with_root(root);
    s.start(suite::context("zookeeper", id, Duration::from_secs(30)))
        .await
        .unwrap();
    s
}

/// The suite's corrupt-record hook: a job znode that is not JSON, with an index entry due
/// at `suite::t0()`.
fn write_corrupt() -> suite::WriteCorrupt<ZooKeeperStore> {
    Box::new(|store: &ZooKeeperStore, id: &str| {
        let r = store.root().to_string();
        let id = id.to_string();
        Box::pin(async move {
            let c = connect(&hosts()).await.unwrap();
            let t = suite::t0().timestamp_micros();
            let opts = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
            c.create(&format!("{r}/jobs/j-{id}"), b"{not json", &opts)
                .await
                .unwrap();
            c.create(&format!("{r}/index/{t:020}~j-{id}"), &[], &opts)
                .await
                .unwrap();
        })
    })
}

#[tokio::test]
async fn zookeeper_contract() {
    if !available().await {
        return;
    }
    let base = root();
    let n = std::sync::atomic::AtomicUsize::new(0);
    suite::contract(
        || {
            let r = format!(
                "{base}/{}",
                n.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            );
            async move { started(&r, "s1").await }
        },
        Some(write_corrupt()),
    )
    .await;
    cleanup(&base).await;
}

#[tokio::test]
async fn zookeeper_shared_claims() {
    if !available().await {
        return;
    }
    let r = root();
    suite::shared_claims(started(&r, "a").await, started(&r, "b").await).await;
    cleanup(&r).await;
}

#[tokio::test]
async fn zookeeper_closures_refused() {
    if !available().await {
        return;
    }
    let r = root();
    nosql::closures_refused(started(&r, "s1").await).await;
    cleanup(&r).await;
}

#[tokio::test]
async fn zookeeper_corrupt_records_are_reported_once_and_kept() {
    if !available().await {
        return;
    }
    let r = root();
    let ctx = suite::TestContext::new("zookeeper", "s1", Duration::from_secs(30));
    let rx = ctx.subscribe(apsched::event::EventKind::STORE_ERROR);
    let s = ZooKeeperStore::new(&hosts()).unwrap().with_root(&r);
    s.start(ctx.context()).await.unwrap();
    s.add_job(nosql::task_job("good", "echo", suite::at(0)), false)
        .await
        .unwrap();
    let c = connect(&hosts()).await.unwrap();
    let t = suite::at(0).timestamp_micros();
    let unknown = serde_json::json!({
        "job": nosql::task_job("unknown_task", "mystery", suite::at(0)).to_json().unwrap(),
        "next_run_time": t,
    })
    .to_string();
    let opts = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    for (node, data) in [
        ("j-bad_json", "{not json".to_string()),
        ("j-unknown_task", unknown),
    ] {
        c.create(&format!("{r}/jobs/{node}"), data.as_bytes(), &opts)
            .await
            .unwrap();
        c.create(&format!("{r}/index/{t:020}~{node}"), &[], &opts)
            .await
            .unwrap();
    }
    let raw = |id: &'static str| {
        let c = c.clone();
        let path = format!("{r}/jobs/j-{id}");
        async move {
            c.get_data(&path)
                .await
                .ok()
                .map(|(d, stat)| format!("{} v{}", String::from_utf8_lossy(&d), stat.version))
        }
    };
    nosql::corrupt_records(s, rx, raw).await;
    cleanup(&r).await;
}

#[tokio::test]
async fn zookeeper_restart_persistence() {
    if !available().await {
        return;
    }
    let r = root();
    nosql::restart_persistence(|| {
        let r = r.clone();
        async move { ZooKeeperStore::new(&hosts()).unwrap().with_root(r) }
    })
    .await;
    cleanup(&r).await;
}

/// Scheduler A's store is idle (no jobs: its loop would sleep until the 30 s fallback poll);
/// another store on the same root adds a job due now, and A's wake-up fires through the
/// watch. Then the same with a real scheduler A, which runs the job.
#[tokio::test]
async fn zookeeper_watch_wakes_idle_scheduler() {
    if !available().await {
        return;
    }
    let r = root();
    let ctx = suite::TestContext::new("zookeeper", "a", Duration::from_secs(30));
    let wakeup = ctx.wakeup();
    let a = ZooKeeperStore::new(&hosts()).unwrap().with_root(&r);
    a.start(ctx.context()).await.unwrap();
    assert_eq!(
        a.poll_interval(),
        Some(Duration::from_secs(30)),
        "the watch is armed when start returns, so only the long fallback poll is left"
    );
    // What A's loop asks on each pass: nothing to wait for.
    assert_eq!(a.next_run_time().await.unwrap(), None);
    // Only a wake-up caused by B's change counts.
    let _ = wakeup.notified().now_or_never();

    let b = started(&r, "b").await;
    b.add_job(nosql::task_job("due_now", "echo", Utc::now()), false)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), wakeup.notified())
        .await
        .expect("A is woken by the watch when B adds a job");
    let due = a.acquire_due_jobs(Utc::now(), 10).await.unwrap();
    assert_eq!(due.len(), 1, "A sees and claims B's job");

    // A now plans to look again in an hour (the job repeats every minute, leased by A for
    // 30 s; its next slot is what A reports). B's job due now still wakes A at once.
    a.release_jobs(&due).await.unwrap();
    let planned = a.next_run_time().await.unwrap().expect("A has a job");
    assert!(planned > Utc::now());
    let _ = wakeup.notified().now_or_never();
    b.add_job(nosql::task_job("due_now_too", "echo", Utc::now()), false)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), wakeup.notified())
        .await
        .expect("A is woken for a job due before its planned wake-up");
    a.shutdown().await.unwrap();
    b.remove_all_jobs().await.unwrap();

    // End to end: an idle scheduler runs a job another process added, long before its poll.
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let s = nosql::scheduler_with(
        ZooKeeperStore::new(&hosts()).unwrap().with_root(&r),
        "a",
        count.clone(),
    );
    s.start().await.unwrap();
    // Let A's loop make its first pass (an empty store) and go to sleep.
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.add_job(nosql::task_job("tick_now", "tick", Utc::now()), false)
        .await
        .unwrap();
    nosql::wait_count(&count, 1, 5, "idle scheduler woken by the watch").await;
    s.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    cleanup(&r).await;
}

/// A private ZooKeeper (its own data directory) on a free port, for tests that kill it.
async fn private_zk() -> std::sync::Arc<nosql::PrivateServer> {
    nosql::PrivateServer::start(
        "zk",
        |dir, port| {
            std::fs::create_dir_all(dir.join("data")).unwrap();
            std::fs::write(
                dir.join("zoo.cfg"),
                format!(
                    "tickTime=500\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\n\
                     admin.enableServer=false\nminSessionTimeout=1000\nmaxSessionTimeout=60000\n",
                    dir.join("data").display()
                ),
            )
            .unwrap();
            let mut c = std::process::Command::new("java");
            c.arg("-Xmx128m")
                .arg("-cp")
                .arg(format!("{}:/usr/share/java/zookeeper.jar", dir.display()))
                .arg("org.apache.zookeeper.server.ZooKeeperServerMain")
                .arg(dir.join("zoo.cfg"));
            c
        },
        Some(|port| Box::pin(wait_serving(port))),
    )
    .await
}

fn private_hosts(zk: &nosql::PrivateServer) -> String {
    format!("127.0.0.1:{}", zk.port())
}

/// A private ZooKeeper killed with SIGKILL and started again under a running scheduler.
#[tokio::test]
async fn zookeeper_server_restart_mid_run() {
    if !available().await {
        return;
    }
    let zk = private_zk().await;
    let store = ZooKeeperStore::new(&private_hosts(&zk))
        .unwrap()
        .with_root("/restart")
        .with_session_timeout(Duration::from_secs(4))
        .with_poll_interval(Some(Duration::from_millis(200)));
    nosql::server_restart(store, &zk).await;
}

/// The watch survives an outage longer than the session timeout: once the server is back,
/// the watcher opens a new session, re-arms the watch, and other stores' adds wake this one
/// again.
#[tokio::test]
async fn zookeeper_watch_rearmed_after_outage() {
    if !available().await {
        return;
    }
    let zk = private_zk().await;
    let ctx = suite::TestContext::new("zookeeper", "a", Duration::from_secs(30));
    let wakeup = ctx.wakeup();
    let a = ZooKeeperStore::new(&private_hosts(&zk))
        .unwrap()
        .with_root("/watch")
        .with_session_timeout(Duration::from_secs(2));
    a.start(ctx.context()).await.unwrap();
    let long_poll = Some(Duration::from_secs(30));
    assert_eq!(a.poll_interval(), long_poll, "watch armed");

    zk.kill();
    // The session expires while the server is away.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        a.poll_interval(),
        Some(Duration::from_secs(1)),
        "while the watch is down the store polls every second"
    );
    zk.bring_back().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while a.poll_interval() != long_poll {
        assert!(
            tokio::time::Instant::now() < deadline,
            "watch not re-armed 60 s after the server came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The loop would look at the store now (and the re-arm itself wakes it once).
    assert_eq!(a.next_run_time().await.unwrap(), None);
    let _ = wakeup.notified().now_or_never();

    let b = ZooKeeperStore::new(&private_hosts(&zk))
        .unwrap()
        .with_root("/watch");
    b.start(suite::context("zookeeper", "b", Duration::from_secs(30)))
        .await
        .unwrap();
    b.add_job(nosql::task_job("after_outage", "echo", Utc::now()), false)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), wakeup.notified())
        .await
        .expect("A is woken through the re-armed watch");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// Waits until the ZooKeeper on `port` accepts sessions (its port opens a little earlier).
async fn wait_serving(port: u16) {
    for _ in 0..100 {
        if connect(&format!("127.0.0.1:{port}")).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("ZooKeeper on 127.0.0.1:{port} does not accept sessions");
}

#[tokio::test]
async fn zookeeper_far_future_dates() {
    if !available().await {
        return;
    }
    let r = root();
    nosql::far_future_dates(started(&r, "s1").await).await;
    cleanup(&r).await;
}

#[tokio::test]
async fn zookeeper_max_durations() {
    if !available().await {
        return;
    }
    let r = root();
    let s = ZooKeeperStore::new(&hosts()).unwrap().with_root(&r);
    s.start(suite::context("zookeeper", "s1", Duration::MAX))
        .await
        .unwrap();
    nosql::max_lease(&s).await;
    cleanup(&r).await;
    let r = root();
    let s = ZooKeeperStore::new(&hosts())
        .unwrap()
        .with_root(&r)
        .with_poll_interval(Some(Duration::MAX))
        .with_session_timeout(Duration::MAX);
    s.start(suite::context("zookeeper", "s1", Duration::MAX))
        .await
        .unwrap();
    // The watch is armed: the configured (long) poll interval applies.
    nosql::max_options(s, Some(Duration::MAX)).await;
    cleanup(&r).await;
}

fn open() -> zk::CreateOptions<'static> {
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())
}

/// Index entries (`R/index`) that disagree with their jobs, written raw: a due entry whose
/// job is paused, one whose job is due later, one with no job, a job whose envelope copy of
/// the time says due while its document says later, and a job whose JSON names another id.
/// None is deleted and none makes the loop spin.
#[tokio::test]
async fn zookeeper_index_disagreeing_with_document_settles() {
    if !available().await {
        return;
    }
    let r = root();
    let ctx = suite::TestContext::new("zookeeper", "s1", Duration::from_secs(30));
    let rx = ctx.subscribe(apsched::event::EventKind::STORE_ERROR);
    let s = ZooKeeperStore::new(&hosts()).unwrap().with_root(&r);
    s.start(ctx.context()).await.unwrap();
    for (id, next) in [("paused", None), ("later", Some(suite::at(600)))] {
        s.add_job(suite::interval_job(id, 60, next), false)
            .await
            .unwrap();
    }
    let c = connect(&hosts()).await.unwrap();
    let t = suite::at(0).timestamp_micros();
    let envelope = |json_id: &str, env_next: i64| {
        serde_json::json!({
            "job": suite::interval_job(json_id, 60, Some(suite::at(600))).to_json().unwrap(),
            "next_run_time": env_next,
        })
        .to_string()
    };
    for (node, data) in [
        ("j-envcopy", envelope("envcopy", t)),
        ("j-alias", envelope("other", t)),
    ] {
        c.create(&format!("{r}/jobs/{node}"), data.as_bytes(), &open())
            .await
            .unwrap();
    }
    for node in ["j-paused", "j-later", "j-ghost", "j-envcopy", "j-alias"] {
        c.create(&format!("{r}/index/{t:020}~{node}"), &[], &open())
            .await
            .unwrap();
    }
    nosql::index_mismatch_settles(
        s,
        rx,
        suite::at(100),
        &[],
        Some(suite::at(600)),
        &[
            ("paused", None),
            ("later", Some(suite::at(600))),
            ("envcopy", Some(suite::at(600))),
        ],
        &["alias", "envcopy", "ghost", "later", "paused"],
    )
    .await;
    let mut left = c.list_children(&format!("{r}/index")).await.unwrap();
    left.sort();
    let at600 = suite::at(600).timestamp_micros();
    assert_eq!(
        left,
        [
            format!("{t:020}~j-alias"),
            format!("{at600:020}~j-envcopy"),
            format!("{at600:020}~j-later"),
        ],
        "stale entries gone, the corrupt record's left alone"
    );
    cleanup(&r).await;
}

/// One claim of a batch fails on the server (job `victim`'s znode is made read-only): the
/// other claims are still returned and advanced, the failure is reported, and the victim
/// stays due (claimed once the fault is gone).
#[tokio::test]
async fn zookeeper_partial_batch_failure_keeps_won_claims() {
    if !available().await {
        return;
    }
    let r = root();
    let ctx = suite::TestContext::new("zookeeper", "s1", Duration::from_secs(30));
    let mut rx = ctx.subscribe(apsched::event::EventKind::STORE_ERROR);
    let s = ZooKeeperStore::new(&hosts()).unwrap().with_root(&r);
    s.start(ctx.context()).await.unwrap();
    for id in ["a", "b", "victim", "z"] {
        s.add_job(suite::interval_job(id, 60, Some(suite::at(0))), false)
            .await
            .unwrap();
    }
    let c = connect(&hosts()).await.unwrap();
    let victim = format!("{r}/jobs/j-victim");
    let read_only = [zk::Acl::new(
        zk::Permission::READ | zk::Permission::ADMIN,
        zk::AuthId::anyone(),
    )];
    c.set_acl(&victim, &read_only, None).await.unwrap();
    let due = s.acquire_due_jobs(suite::at(0), 100).await.unwrap();
    let mut ids: Vec<&str> = due.iter().map(|d| d.job.id.as_str()).collect();
    ids.sort();
    assert_eq!(
        ids,
        ["a", "b", "z"],
        "the claims that were written are returned"
    );
    s.release_jobs(&due).await.unwrap();
    let errors = nosql::store_errors(&mut rx);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, "victim");
    for id in ["a", "b", "z"] {
        let j = s.lookup_job(id).await.unwrap().unwrap();
        assert_eq!(j.next_run_time, Some(suite::at(60)), "{id} advanced");
    }
    assert_eq!(
        s.next_run_time().await.unwrap(),
        Some(suite::at(0)),
        "victim still due"
    );
    assert!(s.acquire_due_jobs(suite::at(0), 100).await.is_err());
    c.set_acl(&victim, &zk::Acls::anyone_all(), None)
        .await
        .unwrap();
    let due = s.acquire_due_jobs(suite::at(0), 100).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].job.id, "victim");
    s.shutdown().await.unwrap();
    cleanup(&r).await;

    // End to end: the won claims run.
    let r = root();
    let s = started(&r, "setup").await;
    s.add_job(nosql::task_job("victim", "tick", Utc::now()), false)
        .await
        .unwrap();
    c.set_acl(&format!("{r}/jobs/j-victim"), &read_only, None)
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    nosql::won_claims_run(ZooKeeperStore::new(&hosts()).unwrap().with_root(&r)).await;
    cleanup(&r).await;
}

/// A write that cannot create its new index entry (`R/index` refuses creates) fails as a
/// whole instead of leaving the job rescheduled without an entry; and a job left without
/// its entry (by hand here; by the old non-atomic repair path before) gets it back when a
/// store starts, and fires.
#[tokio::test]
async fn zookeeper_index_writes_are_atomic_and_heal() {
    if !available().await {
        return;
    }
    let r = root();
    let s = started(&r, "s1").await;
    s.add_job(suite::interval_job("a", 60, Some(suite::at(0))), false)
        .await
        .unwrap();
    let c = connect(&hosts()).await.unwrap();
    let t0 = suite::at(0).timestamp_micros();
    c.delete(&format!("{r}/index/{t0:020}~j-a"), None)
        .await
        .unwrap();
    let no_create = [zk::Acl::new(
        zk::Permission::READ
            | zk::Permission::WRITE
            | zk::Permission::DELETE
            | zk::Permission::ADMIN,
        zk::AuthId::anyone(),
    )];
    let index = format!("{r}/index");
    c.set_acl(&index, &no_create, None).await.unwrap();
    let read = s.lookup_job("a").await.unwrap().unwrap();
    let mut moved = read.clone();
    moved.next_run_time = Some(suite::at(60));
    let r1 = s.update_job(moved).await;
    c.set_acl(&index, &zk::Acls::anyone_all(), None)
        .await
        .unwrap();
    let after = s.lookup_job("a").await.unwrap().unwrap();
    match r1 {
        Ok(_) => panic!("the update reported success without writing its index entry"),
        Err(e) => {
            assert!(matches!(e, apsched::Error::Store { .. }), "{e}");
            assert_eq!(after.version, read.version, "nothing written");
            assert_eq!(after.next_run_time, Some(suite::at(0)));
        }
    }
    s.shutdown().await.unwrap();

    let ctx = suite::TestContext::new("zookeeper", "s2", Duration::from_secs(30));
    let mut rx = ctx.subscribe(apsched::event::EventKind::STORE_ERROR);
    let s2 = ZooKeeperStore::new(&hosts()).unwrap().with_root(&r);
    s2.start(ctx.context()).await.unwrap();
    assert_eq!(s2.next_run_time().await.unwrap(), Some(suite::at(0)));
    let due = s2.acquire_due_jobs(suite::at(0), 10).await.unwrap();
    assert_eq!(due.len(), 1, "the healed job fires");
    let errors = nosql::store_errors(&mut rx);
    assert_eq!(errors.len(), 1, "the repair is reported: {errors:?}");
    s2.shutdown().await.unwrap();
    cleanup(&r).await;
}

/// Omitted URL parts get the ZooKeeper client's defaults: port 2181, host `localhost`
/// (`zk://` alone), root `/apsched` (`zk://host/`).
#[tokio::test]
async fn zookeeper_url_defaults() {
    if !available().await || hosts() != "127.0.0.1:2181" {
        return;
    }
    for u in ["zk://", "zk://127.0.0.1", "zk://localhost/"] {
        let s = apsched::store::from_url(u).unwrap_or_else(|e| panic!("{u}: {e}"));
        s.start(suite::context("zookeeper", "s1", Duration::from_secs(30)))
            .await
            .unwrap_or_else(|e| panic!("{u}: {e}"));
        s.shutdown().await.unwrap();
    }
    let r = root();
    let s = ZooKeeperStore::new("127.0.0.1").unwrap().with_root(&r);
    assert_eq!(ZooKeeperStore::new("").unwrap().root(), "/apsched");
    s.start(suite::context("zookeeper", "s1", Duration::from_secs(30)))
        .await
        .unwrap();
    s.add_job(suite::interval_job("a", 60, None), false)
        .await
        .unwrap();
    let c = connect(&hosts()).await.unwrap();
    assert!(c.get_data(&format!("{r}/jobs/j-a")).await.is_ok());
    s.shutdown().await.unwrap();
    cleanup(&r).await;
}

/// While the watch is armed and reports no change, passes reuse the last listing of
/// `R/index` instead of listing every entry again; any change makes the next pass list
/// afresh. Shown by making `R/index` unlistable (no READ; ACL changes fire no watch event):
/// idle passes still work from the saved listing, and the first pass after another store
/// adds a job lists (and meets the refusal).
#[tokio::test]
async fn zookeeper_idle_passes_reuse_the_index_listing() {
    if !available().await {
        return;
    }
    let r = root();
    let ctx = suite::TestContext::new("zookeeper", "a", Duration::from_secs(30));
    let wakeup = ctx.wakeup();
    let a = ZooKeeperStore::new(&hosts()).unwrap().with_root(&r);
    a.start(ctx.context()).await.unwrap();
    a.add_job(
        suite::interval_job("later", 60, Some(suite::at(600))),
        false,
    )
    .await
    .unwrap();
    // B starts now: its start (healing, arming its watch) needs to read the index.
    let b = started(&r, "b").await;
    assert_eq!(a.next_run_time().await.unwrap(), Some(suite::at(600)));
    let c = connect(&hosts()).await.unwrap();
    let index = format!("{r}/index");
    let unlistable = [zk::Acl::new(
        zk::Permission::WRITE
            | zk::Permission::CREATE
            | zk::Permission::DELETE
            | zk::Permission::ADMIN,
        zk::AuthId::anyone(),
    )];
    c.set_acl(&index, &unlistable, None).await.unwrap();
    assert!(
        c.list_children(&index).await.is_err(),
        "the index is unlistable"
    );
    let _ = wakeup.notified().now_or_never();
    for _ in 0..3 {
        assert_eq!(a.next_run_time().await.unwrap(), Some(suite::at(600)));
        assert!(a
            .acquire_due_jobs(suite::at(0), 10)
            .await
            .unwrap()
            .is_empty());
    }

    b.add_job(
        suite::interval_job("sooner", 60, Some(suite::at(100))),
        false,
    )
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(5), wakeup.notified())
        .await
        .expect("A is woken by the watch");
    assert!(
        a.next_run_time().await.is_err(),
        "after a change the index is listed again"
    );
    c.set_acl(&index, &zk::Acls::anyone_all(), None)
        .await
        .unwrap();
    assert_eq!(a.next_run_time().await.unwrap(), Some(suite::at(100)));
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    cleanup(&r).await;
}

/// The multi-process test's ZooKeeper run (see `multiprocess.rs`): fewer jobs, as each
/// claim is a round trip per job.
pub async fn multiprocess_target() -> Option<crate::multiprocess::Target> {
    if !available().await {
        return None;
    }
    let r = root();
    Some(crate::multiprocess::Target {
        plan: crate::multiprocess::Plan {
            label: "zookeeper".into(),
            url: format!("zk://{}{r}", hosts()),
            namespace: r.clone(),
            processes: 3,
            jobs: 50,
            secs: 12,
            kill_at: 5,
            lease_secs: 3,
        },
        cleanup: Box::pin(async move { cleanup(&r).await }),
    })
}
