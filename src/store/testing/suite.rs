//! The contract suite: [`contract`], the tests of adding, reading, updating and removing
//! jobs, and [`bulk_add_all_or_nothing`] (the claim tests are in `claims.rs`).

use std::future::Future;
use std::time::Duration;

use futures::future::BoxFuture;

use super::claims::{
    acquire_advances, acquire_backlog, acquire_limit_and_order, acquire_removes_exhausted,
    next_run_time,
};
use super::fixtures::{at, ids, interval_job};
use crate::job::{Callable, JobRecord};
use crate::store::JobStore;
use crate::Error;

/// Writes, bypassing every check, a record under the given id that the store cannot load
/// (a document that is not JSON), due at [`t0`](super::t0). Each store that keeps documents supplies
/// one, writing through its database's own client (apsched's stores do in their tests). A
/// store that keeps records, not documents (the memory store) passes `None`: nothing in it
/// is corrupt. The hook gets the store to read where it keeps its records (a table, a key
/// prefix) and the id.
pub type WriteCorrupt<S> = Box<dyn Fn(&S, &str) -> BoxFuture<'static, ()> + Send + Sync>;

/// Runs every contract test, each on a fresh store from `make`; the corrupt-record tests
/// only if the store supplies `corrupt` (see [`WriteCorrupt`]).
pub async fn contract<F, Fut, S>(make: F, corrupt: Option<WriteCorrupt<S>>)
where
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
    S: JobStore,
{
    stale_reads_fenced_across_incarnations(make().await).await;
    if let Some(write) = corrupt {
        remove_corrupt_record(make().await, &write).await;
    }
    add_lookup_roundtrip(make().await).await;
    ordering(make().await).await;
    conflicting_ids(make().await).await;
    update_and_fencing(make().await).await;
    removal(make().await).await;
    next_run_time(make().await).await;
    acquire_advances(make().await).await;
    acquire_limit_and_order(make().await).await;
    acquire_removes_exhausted(make().await).await;
    acquire_backlog(make().await).await;
    bulk_add(make().await).await;
}

/// `add_jobs`, as every store gives it (the default implementation included): a thousand
/// jobs in one call are all stored with their next run times; a duplicate id inside the
/// batch adds nothing without `replace_existing`, and the last one wins with it; an id
/// already stored is replaced with `replace_existing`.
async fn bulk_add(store: impl JobStore) {
    let batch: Vec<JobRecord> = (0..1000)
        .map(|i| interval_job(&format!("b{i:04}"), 60, Some(at(i % 100))))
        .collect();
    store.add_jobs(batch, false).await.unwrap();
    let all = store.get_all_jobs().await.unwrap();
    assert_eq!(all.len(), 1000);
    for job in &all {
        let i: i64 = job.id[1..].parse().unwrap();
        assert_eq!(job.next_run_time, Some(at(i % 100)), "{}", job.id);
    }
    assert_eq!(store.next_run_time().await.unwrap(), Some(at(0)));

    // A duplicate inside the batch: refused, nothing of the batch added.
    let err = store
        .add_jobs(
            vec![
                interval_job("n1", 60, Some(at(1))),
                interval_job("n2", 60, Some(at(2))),
                interval_job("n1", 60, Some(at(3))),
            ],
            false,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::ConflictingId(ref id) if id == "n1"),
        "{err}"
    );
    assert!(store.lookup_job("n1").await.unwrap().is_none());
    assert!(store.lookup_job("n2").await.unwrap().is_none());

    // With replace_existing: stored jobs are replaced, the last of a duplicate wins.
    let before = store.lookup_job("b0005").await.unwrap().unwrap();
    store
        .add_jobs(
            vec![
                interval_job("b0005", 5, Some(at(500))),
                interval_job("n1", 60, Some(at(1))),
                interval_job("n1", 60, Some(at(7))),
            ],
            true,
        )
        .await
        .unwrap();
    let after = store.lookup_job("b0005").await.unwrap().unwrap();
    assert_eq!(after.next_run_time, Some(at(500)));
    assert_ne!(after.version, before.version);
    assert_eq!(
        store.lookup_job("n1").await.unwrap().unwrap().next_run_time,
        Some(at(7))
    );
    assert_eq!(store.get_all_jobs().await.unwrap().len(), 1001);
    // The replaced job is a new incarnation: a writer holding the old version is fenced.
    let err = store.update_job(before).await.unwrap_err();
    assert!(matches!(err, Error::Fenced(_)), "{err}");
    store.add_jobs(Vec::new(), false).await.unwrap();
}

/// `add_jobs` on a store that promises all or nothing (memory, SQL): a batch with one id
/// already stored fails with that id and adds nothing, even when it spans several
/// statements; nothing stored is changed.
pub async fn bulk_add_all_or_nothing(store: impl JobStore) {
    store
        .add_job(interval_job("x0700", 60, Some(at(60))), false)
        .await
        .unwrap();
    let batch: Vec<JobRecord> = (0..1200)
        .map(|i| interval_job(&format!("x{i:04}"), 60, Some(at(i))))
        .collect();
    let err = store.add_jobs(batch, false).await.unwrap_err();
    assert!(
        matches!(err, Error::ConflictingId(ref id) if id == "x0700"),
        "{err}"
    );
    let all = store.get_all_jobs().await.unwrap();
    assert_eq!(ids(&all), ["x0700"]);
    assert_eq!(all[0].next_run_time, Some(at(60)));
}

/// A job comes back from the store as it went in.
async fn add_lookup_roundtrip(store: impl JobStore) {
    let job = interval_job("a", 60, Some(at(60)));
    store.add_job(job.clone(), false).await.unwrap();
    let back = store
        .lookup_job("a")
        .await
        .unwrap()
        .expect("job a is stored");
    assert_eq!(back.id, "a");
    assert_eq!(back.name.as_deref(), Some("job a"));
    assert_eq!(back.trigger, job.trigger);
    assert_eq!(back.executor, "default");
    assert_eq!(back.misfire_grace_time, Some(Duration::from_secs(30)));
    assert!(!back.coalesce);
    assert_eq!(back.max_instances, 2);
    assert_eq!(back.next_run_time, Some(at(60)));
    match &back.callable {
        Callable::Task { name, args } => {
            assert_eq!(name, "echo");
            assert_eq!(args, &serde_json::json!({"id": "a", "n": [1, 2, 3]}));
        }
        other => panic!("callable changed: {other:?}"),
    }
    assert!(store.lookup_job("nope").await.unwrap().is_none());
}

/// Jobs list by next run time, paused last, ties by id.
async fn ordering(store: impl JobStore) {
    for (id, next) in [
        ("p2", None),
        ("c", Some(at(30))),
        ("b", Some(at(10))),
        ("a", Some(at(30))),
        ("p1", None),
    ] {
        store
            .add_job(interval_job(id, 60, next), false)
            .await
            .unwrap();
    }
    let all = store.get_all_jobs().await.unwrap();
    assert_eq!(ids(&all), ["b", "a", "c", "p1", "p2"]);
}

/// A second job with the same id is refused unless replacing.
async fn conflicting_ids(store: impl JobStore) {
    store
        .add_job(interval_job("a", 60, Some(at(60))), false)
        .await
        .unwrap();
    let err = store
        .add_job(interval_job("a", 5, Some(at(5))), false)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::ConflictingId(ref id) if id == "a"),
        "{err}"
    );
    assert_eq!(
        store.lookup_job("a").await.unwrap().unwrap().next_run_time,
        Some(at(60))
    );
    store
        .add_job(interval_job("a", 5, Some(at(5))), true)
        .await
        .unwrap();
    assert_eq!(
        store.lookup_job("a").await.unwrap().unwrap().next_run_time,
        Some(at(5))
    );
    assert_eq!(store.get_all_jobs().await.unwrap().len(), 1);
}

/// Updates are compare-and-swap on the version.
async fn update_and_fencing(store: impl JobStore) {
    store
        .add_job(interval_job("a", 60, Some(at(60))), false)
        .await
        .unwrap();
    let read = store.lookup_job("a").await.unwrap().unwrap();
    let mut changed = read.clone();
    changed.name = Some("renamed".into());
    changed.next_run_time = None;
    let stored = store.update_job(changed).await.unwrap();
    assert!(stored.version > read.version, "update bumps the version");
    let back = store.lookup_job("a").await.unwrap().unwrap();
    assert_eq!(back.name.as_deref(), Some("renamed"));
    assert_eq!(back.next_run_time, None);
    assert_eq!(back.version, stored.version);

    // A writer holding the old version is refused, and the newer state stays.
    let mut stale = read.clone();
    stale.name = Some("stale".into());
    let err = store.update_job(stale).await.unwrap_err();
    assert!(matches!(err, Error::Fenced(_)), "{err}");
    assert_eq!(
        store
            .lookup_job("a")
            .await
            .unwrap()
            .unwrap()
            .name
            .as_deref(),
        Some("renamed")
    );

    let err = store
        .update_job(interval_job("ghost", 60, None))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::JobLookup(_)), "{err}");
}

/// ABA: a job removed and added again (or replaced) under the same id is a new job. A
/// write based on a read of the old one, or on a claim of it, is fenced, however many writes
/// the new one has gone through; a release of an old claim leaves the new job alone.
async fn stale_reads_fenced_across_incarnations(store: impl JobStore) {
    let fenced = |r: crate::Result<JobRecord>, what: &str| match r {
        Err(Error::Fenced(id)) => assert_eq!(id, "a"),
        Ok(j) => panic!(
            "{what}: a stale write overwrote the new job (version {})",
            j.version
        ),
        Err(e) => panic!("{what}: expected Fenced, got {e}"),
    };
    let stale = |j: &JobRecord| {
        let mut j = j.clone();
        j.name = Some("stale".into());
        j.next_run_time = Some(at(5));
        j
    };
    store
        .add_job(interval_job("a", 60, Some(at(0))), false)
        .await
        .unwrap();
    let read = store.lookup_job("a").await.unwrap().unwrap();
    let old_claim = store.acquire_due_jobs(at(0), 10).await.unwrap();
    assert_eq!(old_claim.len(), 1);
    let claimed = old_claim[0].job.clone();
    store.release_jobs(&old_claim).await.unwrap();

    store.remove_job("a").await.unwrap();
    store
        .add_job(interval_job("a", 60, Some(at(0))), false)
        .await
        .unwrap();
    fenced(
        store.update_job(stale(&read)).await,
        "read, remove, re-add, update",
    );
    // The new job goes through a claim too: its write count now equals the old claim's.
    let new_claim = store.acquire_due_jobs(at(0), 10).await.unwrap();
    assert_eq!(new_claim.len(), 1);
    fenced(
        store.update_job(stale(&claimed)).await,
        "claim, remove, re-add, claim, update with the first claim",
    );
    let before = store.lookup_job("a").await.unwrap().unwrap();
    store.release_jobs(&old_claim).await.unwrap();
    let after = store.lookup_job("a").await.unwrap().unwrap();
    assert_eq!(
        after.version, before.version,
        "an old release wrote the new job"
    );
    assert_eq!(
        after.lease, before.lease,
        "an old release freed the new claim"
    );
    assert_eq!(after.next_run_time, Some(at(60)));
    store.release_jobs(&new_claim).await.unwrap();

    // Replacing is a new job as well.
    let read = store.lookup_job("a").await.unwrap().unwrap();
    store
        .add_job(interval_job("a", 60, Some(at(0))), true)
        .await
        .unwrap();
    fenced(
        store.update_job(stale(&read)).await,
        "read, replace, update",
    );
    let now = store.lookup_job("a").await.unwrap().unwrap();
    assert_eq!(now.name.as_deref(), Some("job a"));
    assert_eq!(now.next_run_time, Some(at(0)));
}

/// A record the store cannot load is removed by `remove_job`, the way docs/stores.md gives
/// to recover from one; the id is then free for a new job, which runs normally.
async fn remove_corrupt_record<S: JobStore>(store: S, write: &WriteCorrupt<S>) {
    store
        .add_job(interval_job("good", 60, Some(at(0))), false)
        .await
        .unwrap();
    write(&store, "bad").await;
    // The store has met the record (and reported it) before it is removed.
    assert_eq!(ids(&store.get_all_jobs().await.unwrap()), ["good"]);
    let err = store.lookup_job("bad").await.unwrap_err();
    assert!(
        matches!(err, Error::CorruptJob { ref id, .. } if id == "bad"),
        "{err}"
    );
    // An export keeps it, as stored and flagged, after the jobs that load.
    let exported = store.export_records().await.unwrap();
    assert_eq!(exported.len(), 2, "an export drops no record");
    assert!(matches!(&exported[0], Ok(job) if job.id == "good"));
    match &exported[1] {
        Err(bad) => {
            assert_eq!(bad.id, "bad");
            assert!(!bad.reason.is_empty());
        }
        Ok(job) => panic!("the corrupt record loaded: {job:?}"),
    }
    let due = store.acquire_due_jobs(at(0), 10).await.unwrap();
    assert_eq!(
        due.iter().map(|d| d.job.id.as_str()).collect::<Vec<_>>(),
        ["good"]
    );
    store.release_jobs(&due).await.unwrap();

    store
        .remove_job("bad")
        .await
        .unwrap_or_else(|e| panic!("remove_job on a corrupt record: {e}"));
    assert!(store.lookup_job("bad").await.unwrap().is_none());
    let err = store.remove_job("bad").await.unwrap_err();
    assert!(matches!(err, Error::JobLookup(_)), "{err}");
    assert_eq!(ids(&store.get_all_jobs().await.unwrap()), ["good"]);

    store
        .add_job(interval_job("bad", 60, Some(at(0))), false)
        .await
        .unwrap();
    let due = store.acquire_due_jobs(at(0), 10).await.unwrap();
    assert_eq!(
        due.iter().map(|d| d.job.id.as_str()).collect::<Vec<_>>(),
        ["bad"]
    );
    store.release_jobs(&due).await.unwrap();
}

/// Removal of one job and of all jobs.
async fn removal(store: impl JobStore) {
    for id in ["a", "b", "c"] {
        store
            .add_job(interval_job(id, 60, Some(at(60))), false)
            .await
            .unwrap();
    }
    store.remove_job("b").await.unwrap();
    assert_eq!(ids(&store.get_all_jobs().await.unwrap()), ["a", "c"]);
    let err = store.remove_job("b").await.unwrap_err();
    assert!(matches!(err, Error::JobLookup(_)), "{err}");
    store.remove_all_jobs().await.unwrap();
    assert!(store.get_all_jobs().await.unwrap().is_empty());
    assert_eq!(store.next_run_time().await.unwrap(), None);
}
