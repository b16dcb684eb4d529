//! The claim tests of the suite: next run times, claiming due jobs (advancing, limits,
//! exhausted triggers, backlogs) and [`shared_claims`] between two stores.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::fixtures::{at, date_job, interval_job};
use crate::store::JobStore;

/// The earliest next run time of unpaused jobs.
pub(super) async fn next_run_time(store: impl JobStore) {
    assert_eq!(store.next_run_time().await.unwrap(), None);
    store
        .add_job(interval_job("paused", 60, None), false)
        .await
        .unwrap();
    assert_eq!(store.next_run_time().await.unwrap(), None);
    store
        .add_job(interval_job("later", 60, Some(at(90))), false)
        .await
        .unwrap();
    store
        .add_job(interval_job("sooner", 60, Some(at(30))), false)
        .await
        .unwrap();
    assert_eq!(store.next_run_time().await.unwrap(), Some(at(30)));
}

/// Claiming a due job advances it in the same step; it is not claimed again for that time.
pub(super) async fn acquire_advances(store: impl JobStore) {
    store
        .add_job(interval_job("a", 60, Some(at(0))), false)
        .await
        .unwrap();
    store
        .add_job(interval_job("future", 60, Some(at(600))), false)
        .await
        .unwrap();
    assert!(store
        .acquire_due_jobs(at(-1), 100)
        .await
        .unwrap()
        .is_empty());

    let due = store.acquire_due_jobs(at(0), 100).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].job.id, "a");
    assert_eq!(due[0].run_times, vec![at(0)]);
    assert!(!due[0].removed);
    assert_eq!(due[0].job.next_run_time, Some(at(60)));
    store.release_jobs(&due).await.unwrap();

    assert_eq!(
        store.lookup_job("a").await.unwrap().unwrap().next_run_time,
        Some(at(60))
    );
    assert!(store.acquire_due_jobs(at(0), 100).await.unwrap().is_empty());
    assert_eq!(store.next_run_time().await.unwrap(), Some(at(60)));

    // A later claim works on the advanced state.
    let due = store.acquire_due_jobs(at(60), 100).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].run_times, vec![at(60)]);
    store.release_jobs(&due).await.unwrap();
}

/// At most `limit` jobs per claim, oldest first; the rest on the next claim.
pub(super) async fn acquire_limit_and_order(store: impl JobStore) {
    for (i, id) in ["e", "d", "c", "b", "a"].iter().enumerate() {
        store
            .add_job(interval_job(id, 3600, Some(at(i as i64))), false)
            .await
            .unwrap();
    }
    let first = store.acquire_due_jobs(at(10), 2).await.unwrap();
    assert_eq!(
        first.iter().map(|d| d.job.id.as_str()).collect::<Vec<_>>(),
        ["e", "d"]
    );
    store.release_jobs(&first).await.unwrap();
    let rest = store.acquire_due_jobs(at(10), 100).await.unwrap();
    assert_eq!(
        rest.iter().map(|d| d.job.id.as_str()).collect::<Vec<_>>(),
        ["c", "b", "a"]
    );
    store.release_jobs(&rest).await.unwrap();
}

/// A trigger with no fire time left: the claim removes the job and says so.
pub(super) async fn acquire_removes_exhausted(store: impl JobStore) {
    store.add_job(date_job("once", at(5)), false).await.unwrap();
    let due = store.acquire_due_jobs(at(10), 100).await.unwrap();
    assert_eq!(due.len(), 1);
    assert!(due[0].removed);
    assert_eq!(due[0].run_times, vec![at(5)]);
    store.release_jobs(&due).await.unwrap();
    assert!(store.lookup_job("once").await.unwrap().is_none());
    assert_eq!(store.next_run_time().await.unwrap(), None);
}

/// After downtime every missed time is listed (coalescing is the scheduler's business).
pub(super) async fn acquire_backlog(store: impl JobStore) {
    store
        .add_job(interval_job("a", 10, Some(at(0))), false)
        .await
        .unwrap();
    let due = store.acquire_due_jobs(at(35), 100).await.unwrap();
    assert_eq!(due[0].run_times, vec![at(0), at(10), at(20), at(30)]);
    assert_eq!(due[0].job.next_run_time, Some(at(40)));
    store.release_jobs(&due).await.unwrap();
}

/// Two stores on one backend (two scheduler identities) never claim the same slot, and a
/// claim by one is visible to the other.
pub async fn shared_claims(a: impl JobStore, b: impl JobStore) {
    let a = Arc::new(a);
    let b = Arc::new(b);
    const JOBS: usize = 50;
    for i in 0..JOBS {
        a.add_job(interval_job(&format!("j{i:03}"), 10, Some(at(0))), false)
            .await
            .unwrap();
    }
    let mut claimed = Vec::new();
    for round in 0..3 {
        let now = at(round * 10);
        let (ra, rb) = tokio::join!(a.acquire_due_jobs(now, 20), b.acquire_due_jobs(now, 20));
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        a.release_jobs(&ra).await.unwrap();
        b.release_jobs(&rb).await.unwrap();
        // Whatever is left for this round is claimed by either, in further passes.
        let mut got: Vec<(String, DateTime<Utc>)> = ra
            .iter()
            .chain(rb.iter())
            .flat_map(|d| d.run_times.iter().map(move |t| (d.job.id.clone(), *t)))
            .collect();
        loop {
            let (ra, rb) = tokio::join!(a.acquire_due_jobs(now, 20), b.acquire_due_jobs(now, 20));
            let (ra, rb) = (ra.unwrap(), rb.unwrap());
            if ra.is_empty() && rb.is_empty() {
                break;
            }
            a.release_jobs(&ra).await.unwrap();
            b.release_jobs(&rb).await.unwrap();
            got.extend(
                ra.iter()
                    .chain(rb.iter())
                    .flat_map(|d| d.run_times.iter().map(move |t| (d.job.id.clone(), *t))),
            );
        }
        assert_eq!(got.len(), JOBS, "round {round}: every job claimed once");
        claimed.extend(got);
    }
    let mut unique = claimed.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), claimed.len(), "no (job, time) claimed twice");
    assert_eq!(unique.len(), JOBS * 3);
}
