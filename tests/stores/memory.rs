//! The memory store against the contract.

use apsched::store::{JobStore, MemoryStore};

use crate::suite;

#[tokio::test]
async fn memory_store_contract() {
    suite::contract(
        || async {
            let store = MemoryStore::new();
            store
                .start(suite::context(
                    "default",
                    "s1",
                    std::time::Duration::from_secs(30),
                ))
                .await
                .unwrap();
            store
        },
        None,
    )
    .await;
    suite::bulk_add_all_or_nothing(MemoryStore::new()).await;
}

/// A million jobs: adding and claiming stay cheap (the ordered index, not a scan).
#[tokio::test]
async fn memory_store_many_jobs() {
    let store = MemoryStore::new();
    const N: i64 = 200_000;
    for i in 0..N {
        store
            .add_job(
                suite::interval_job(&format!("j{i}"), 3600, Some(suite::at(i % 1000))),
                false,
            )
            .await
            .unwrap();
    }
    assert_eq!(store.len(), N as usize);
    let due = store.acquire_due_jobs(suite::at(0), 10_000).await.unwrap();
    assert_eq!(due.len(), (N / 1000) as usize);
    assert_eq!(store.next_run_time().await.unwrap(), Some(suite::at(1)));
}

/// The run ledger's contract (one scheduler: a memory store is not shared).
#[tokio::test]
async fn memory_store_ledger_contract() {
    suite::ledger_contract(
        |_namespace, ctx| async move {
            let store = MemoryStore::new();
            store.start(ctx).await.unwrap();
            store
        },
        false,
    )
    .await;
}
