//! The store test binary: the generic store contract (`suite`) run against every store, plus
//! each store family's own tests. One binary for all stores keeps link time down.
//!
//! Stores whose server is missing skip with a printed reason, unless
//! `APSCHED_REQUIRE_SERVICES=1` (as in CI): then they fail.

mod suite;

mod multiprocess;

mod chaos;

mod memory;

mod custom;

#[cfg(any(feature = "postgres", feature = "redis"))]
mod overlap;

#[cfg(any(feature = "postgres", feature = "redis"))]
mod failures;

#[cfg(any(feature = "redis", feature = "mongodb", feature = "zookeeper"))]
mod nosql;
mod sql;
mod sql_ledger;
mod sql_raw;

#[cfg(feature = "sqlite")]
mod transfer;

#[cfg(feature = "redis")]
mod redis;

#[cfg(feature = "mongodb")]
mod mongodb;

#[cfg(feature = "zookeeper")]
mod zookeeper;

/// A free TCP port on 127.0.0.1 (for private server instances).
#[cfg(any(feature = "redis", feature = "mongodb", feature = "zookeeper"))]
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something listens on 127.0.0.1:`port`.
#[cfg(any(feature = "redis", feature = "mongodb", feature = "zookeeper"))]
pub fn wait_port(port: u16) {
    for _ in 0..400 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("nothing listens on 127.0.0.1:{port}");
}
