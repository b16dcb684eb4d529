//! The run ledger's contract for retries (part of [`ledger_contract`](super::ledger_contract)):
//! [`JobStore::add_runs`] and the takeover of a dead scheduler's waiting retry.

use super::fixtures::at;
use super::ledger::{claim, executed, job, runs_of, states, Harness, OpenStore};
use crate::job::Overlap;
use crate::ledger::{RunOutcome, RunState};
use crate::store::JobStore;

/// A retry ([`JobStore::add_runs`]): the next attempt at the same scheduled time, stored as
/// written (attempt, `retry_at`, manual flag), idempotent, holding its instance until it
/// is started and finished like any run.
pub(super) async fn retries_are_runs_of_the_same_slot<F: OpenStore>(h: &Harness<'_, F>) {
    let ns = Harness::<F>::namespace("retry");
    let store = h.store(&ns, "s1").await;
    store
        .add_job(job("a", 10, 1, Overlap::Skip), false)
        .await
        .unwrap();
    let first = claim(&store, at(0)).await.remove(0);
    store.start_runs(&[first.run_id], at(1)).await.unwrap();
    let retry = first.retry("s1", at(2), at(7));
    assert_eq!((retry.attempt, retry.due_at()), (2, at(7)));
    store.add_runs(std::slice::from_ref(&retry)).await.unwrap();
    store
        .finish_runs(&[RunOutcome::new(first.run_id, "a", RunState::Error, at(2)).error("boom")])
        .await
        .unwrap();
    // Written twice (a write retried after an unknown outcome), kept once; a copy with a
    // new id for the same slot and attempt is not added either.
    store.add_runs(std::slice::from_ref(&retry)).await.unwrap();
    let mut copy = first.retry("s1", at(2), at(8));
    copy.attempt = 2;
    store.add_runs(&[copy]).await.unwrap();
    let runs = runs_of(&store, "a").await;
    assert_eq!(runs.len(), 2, "{runs:?}");
    let got = store.get_run(retry.run_id).await.unwrap().unwrap();
    assert_eq!(got, retry, "a retry reads back as written");
    assert_eq!(got.scheduled, first.scheduled);
    // Waiting, it holds the job's one instance: the next due time is skipped.
    let next = claim(&store, at(10)).await;
    assert_eq!(states(&next), vec![RunState::Skipped], "{next:?}");
    // It starts and finishes like any run.
    assert_eq!(
        store.start_runs(&[retry.run_id], at(7)).await.unwrap(),
        vec![retry.run_id]
    );
    store.finish_runs(&[executed(&retry, at(8))]).await.unwrap();
    let done = store.get_run(retry.run_id).await.unwrap().unwrap();
    assert_eq!(
        (done.state, done.attempt, done.retry_at),
        (RunState::Executed, 2, Some(at(7)))
    );
    // A manual run's retry stays manual.
    let manual = store.add_manual_runs("a", &[at(20)], at(20)).await.unwrap();
    let manual_retry = manual[0].retry("s1", at(21), at(30));
    store
        .add_runs(std::slice::from_ref(&manual_retry))
        .await
        .unwrap();
    let got = store.get_run(manual_retry.run_id).await.unwrap().unwrap();
    assert!(
        got.manual && got.attempt == 2 && got.retry_at == Some(at(30)),
        "{got:?}"
    );
}

/// A dead scheduler's waiting retry is taken over like any claimed run, keeping its time
/// (the taker starts it when it is due, under the misfire rules).
pub(super) async fn retries_are_taken_over<F: OpenStore>(h: &Harness<'_, F>) {
    let ns = Harness::<F>::namespace("retry_takeover");
    let s1 = h.store(&ns, "s1").await;
    let s2 = h.store(&ns, "s2").await;
    s1.add_job(job("a", 100, 1, Overlap::Skip), false)
        .await
        .unwrap();
    let first = claim(&s1, at(0)).await.remove(0);
    s1.start_runs(&[first.run_id], at(1)).await.unwrap();
    let retry = first.retry("s1", at(2), at(50));
    s1.add_runs(std::slice::from_ref(&retry)).await.unwrap();
    s1.finish_runs(&[RunOutcome::new(first.run_id, "a", RunState::Error, at(2))])
        .await
        .unwrap();
    s2.tick_runs(at(2)).await.unwrap();
    // s1 stops; past its lease s2 takes the retry over, with its time.
    let tick = s2.tick_runs(at(40)).await.unwrap();
    assert_eq!(tick.dispatch.len(), 1, "{tick:?}");
    let taken = &tick.dispatch[0];
    assert_eq!(
        (
            taken.run_id,
            taken.owner.as_str(),
            taken.attempt,
            taken.retry_at
        ),
        (retry.run_id, "s2", 2, Some(at(50)))
    );
    assert_eq!(
        s2.start_runs(&[retry.run_id], at(50)).await.unwrap(),
        vec![retry.run_id]
    );
}
