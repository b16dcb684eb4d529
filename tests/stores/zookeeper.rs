//! The ZooKeeper store against the contract, plus its own tests. Needs ZooKeeper on
//! `APSCHED_ZK_URL` (default `127.0.0.1:2181`, which `scripts/services.sh start` runs).

use std::time::Duration;

use apsched::store::{JobStore, ZooKeeperStore};
use zookeeper_client as zk;

use crate::{nosql, suite};

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
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>> {
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

#[tokio::test]
async fn zookeeper_contract() {
    if !available().await {
        return;
    }
    let base = root();
    let n = std::sync::atomic::AtomicUsize::new(0);
    suite::contract(|| {
        let r = format!(
            "{base}/{}",
            n.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        async move { started(&r, "s1").await }
    })
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
    let ctx = suite::context("zookeeper", "s1", Duration::from_secs(30));
    let rx = ctx.events.subscribe(apsched::event::EventKind::STORE_ERROR);
    let s = ZooKeeperStore::new(&hosts()).unwrap().with_root(&r);
    s.start(ctx).await.unwrap();
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

/// A private ZooKeeper (its own data directory) on a free port, killed with SIGKILL and
/// started again under a running scheduler.
#[tokio::test]
async fn zookeeper_server_restart_mid_run() {
    if !available().await {
        return;
    }
    let dir = std::env::temp_dir().join(format!("apsched-zk-{}", suite::unique_suffix()));
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let port = crate::free_port();
    std::fs::write(
        dir.join("zoo.cfg"),
        format!(
            "tickTime=500\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\n\
             admin.enableServer=false\nminSessionTimeout=1000\nmaxSessionTimeout=60000\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let spawn = {
        let dir = dir.clone();
        move || {
            let child = std::process::Command::new("java")
                .arg("-Xmx128m")
                .arg("-cp")
                .arg(format!("{}:/usr/share/java/zookeeper.jar", dir.display()))
                .arg("org.apache.zookeeper.server.ZooKeeperServerMain")
                .arg(dir.join("zoo.cfg"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("java runs ZooKeeper");
            crate::wait_port(port);
            child
        }
    };
    let child = std::sync::Arc::new(std::sync::Mutex::new(Some(spawn())));
    wait_serving(port).await;
    let store = ZooKeeperStore::new(&format!("127.0.0.1:{port}"))
        .unwrap()
        .with_root("/restart")
        .with_session_timeout(Duration::from_secs(4))
        .with_poll_interval(Some(Duration::from_millis(200)));
    let killer = child.clone();
    let restarter = child.clone();
    nosql::server_restart(
        store,
        || async move {
            if let Some(mut c) = killer.lock().unwrap().take() {
                c.kill().unwrap();
                c.wait().unwrap();
            }
        },
        || async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            *restarter.lock().unwrap() = Some(spawn());
            wait_serving(port).await;
        },
    )
    .await;
    if let Some(mut c) = child.lock().unwrap().take() {
        let _ = c.kill();
        let _ = c.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
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
