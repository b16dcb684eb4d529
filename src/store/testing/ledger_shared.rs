//! The run ledger's contract between two schedulers sharing one store (part of
//! [`ledger_contract`](super::ledger_contract), for shared stores): `max_instances` and the
//! overlap policies across schedulers, promotion of queued runs, `CancelOther`, and the
//! takeover of a dead scheduler's runs (which its heartbeat alone holds off).

use super::fixtures::at;
use super::ledger::{claim, executed, job, states, Harness, OpenStore};
use crate::job::Overlap;
use crate::ledger::{RunOutcome, RunRecord, RunState};
use crate::store::JobStore;

/// Two schedulers sharing a fresh namespace for `test`, and job `a` (every 10 s, one
/// instance, `overlap`) whose first run s1 has claimed and started at 0: the start of
/// each overlap case.
async fn one_running<F: OpenStore>(
    h: &Harness<'_, F>,
    test: &str,
    overlap: Overlap,
) -> (F::Store, F::Store, RunRecord) {
    let ns = Harness::<F>::namespace(test);
    let s1 = h.store(&ns, "s1").await;
    let s2 = h.store(&ns, "s2").await;
    s1.add_job(job("a", 10, 1, overlap), false).await.unwrap();
    let first = claim(&s1, at(0)).await.remove(0);
    s1.start_runs(&[first.run_id], at(0)).await.unwrap();
    (s1, s2, first)
}

/// `max_instances` and the policies hold across two schedulers sharing the store.
pub(super) async fn overlap_across_schedulers<F: OpenStore>(h: &Harness<'_, F>) {
    let (s1, s2, first) = one_running(h, "overlap2", Overlap::Skip).await;
    // s2 claims the next slot while s1's run is still going: skipped.
    let second = claim(&s2, at(10)).await;
    assert_eq!(
        states(&second),
        vec![RunState::Skipped],
        "max_instances holds across schedulers"
    );
    assert_eq!(second[0].owner, "s2");
    // Once s1's run has finished, s2 runs the next slot.
    s1.finish_runs(&[executed(&first, at(15))]).await.unwrap();
    let third = claim(&s2, at(20)).await;
    assert_eq!(states(&third), vec![RunState::Claimed]);
    // A manual run from s1 sees s2's claimed run as active too.
    let manual = s1.add_manual_runs("a", &[at(21)], at(21)).await.unwrap();
    assert_eq!(states(&manual), vec![RunState::Skipped]);
}

/// A queued run is promoted by whichever scheduler's pass sees a free instance.
pub(super) async fn promotion_across_schedulers<F: OpenStore>(h: &Harness<'_, F>) {
    let (s1, s2, first) = one_running(h, "promote", Overlap::BufferAll).await;
    let queued = claim(&s2, at(10)).await.remove(0);
    assert!(queued.queued && queued.state == RunState::Claimed);
    // Nothing to promote while the instance is busy; s2 cannot start a queued run.
    assert!(s2.tick_runs(at(11)).await.unwrap().promoted.is_empty());
    s1.finish_runs(&[executed(&first, at(12))]).await.unwrap();
    let tick = s1.tick_runs(at(13)).await.unwrap();
    assert_eq!(
        tick.promoted.iter().map(|r| r.run_id).collect::<Vec<_>>(),
        vec![queued.run_id]
    );
    assert!(
        tick.dispatch.is_empty(),
        "a promoted run is not a taken-over one"
    );
    let promoted = &tick.promoted[0];
    assert_eq!((promoted.owner.as_str(), promoted.queued), ("s1", false));
    // Promoted once only.
    assert!(s2.tick_runs(at(14)).await.unwrap().promoted.is_empty());
    assert_eq!(
        s1.start_runs(&[queued.run_id], at(14)).await.unwrap(),
        vec![queued.run_id]
    );
}

/// `CancelOther` flags the running instance for its owner and queues the new run.
pub(super) async fn cancel_other_across_schedulers<F: OpenStore>(h: &Harness<'_, F>) {
    let (s1, s2, first) = one_running(h, "cancel", Overlap::CancelOther).await;
    let next = claim(&s2, at(10)).await.remove(0);
    assert!(
        next.queued,
        "the new run waits for the cancelled one to end"
    );
    let tick = s1.tick_runs(at(11)).await.unwrap();
    assert_eq!(
        tick.cancel,
        vec![first.run_id],
        "s1 is asked to cancel its run"
    );
    assert!(s2.tick_runs(at(11)).await.unwrap().cancel.is_empty());
    assert!(
        s1.get_run(first.run_id)
            .await
            .unwrap()
            .unwrap()
            .cancel_requested
    );
    s1.finish_runs(&[RunOutcome::new(
        first.run_id,
        "a",
        RunState::Cancelled,
        at(12),
    )])
    .await
    .unwrap();
    let tick = s2.tick_runs(at(13)).await.unwrap();
    assert_eq!(
        tick.promoted.iter().map(|r| r.run_id).collect::<Vec<_>>(),
        vec![next.run_id]
    );
}

/// A dead scheduler's runs: the claimed ones are taken over (and started once), the
/// started ones abandoned; the dead one can neither start nor overwrite them. Its
/// [`JobStore::heartbeat`] alone keeps it alive.
pub(super) async fn takeover<F: OpenStore>(h: &Harness<'_, F>) {
    let ns = Harness::<F>::namespace("takeover");
    let s1 = h.store(&ns, "s1").await;
    let s2 = h.store(&ns, "s2").await;
    s1.add_job(job("a", 10, 5, Overlap::Skip), false)
        .await
        .unwrap();
    s1.add_job(job("b", 10, 5, Overlap::Skip), false)
        .await
        .unwrap();
    let made = claim(&s1, at(0)).await;
    assert_eq!(made.len(), 2);
    let of = |id: &str| {
        made.iter()
            .find(|r| r.job_id == id)
            .expect("one run per job")
    };
    let (a, b) = (of("a"), of("b"));
    s1.start_runs(&[a.run_id], at(1)).await.unwrap();
    s2.tick_runs(at(1)).await.unwrap();
    // s1 is alive (its heartbeat runs to at(30)): nothing to take.
    let tick = s2.tick_runs(at(20)).await.unwrap();
    assert!(
        tick.dispatch.is_empty() && tick.abandoned.is_empty() && tick.promoted.is_empty(),
        "{tick:?}"
    );
    // A heartbeat alone (no pass) keeps s1 alive: at(25) + the lease runs to at(55).
    s1.heartbeat(at(25)).await.expect("heartbeat");
    let tick = s2.tick_runs(at(40)).await.unwrap();
    assert!(
        tick.dispatch.is_empty() && tick.abandoned.is_empty(),
        "taken over while its heartbeat was alive: {tick:?}"
    );
    // s1 stops; past its lease s2 takes over.
    let tick = s2.tick_runs(at(56)).await.unwrap();
    assert_eq!(
        tick.dispatch.iter().map(|r| r.run_id).collect::<Vec<_>>(),
        vec![b.run_id]
    );
    assert_eq!(tick.dispatch[0].owner, "s2");
    assert_eq!(
        tick.abandoned.iter().map(|r| r.run_id).collect::<Vec<_>>(),
        vec![a.run_id]
    );
    let abandoned = s2.get_run(a.run_id).await.unwrap().unwrap();
    assert_eq!(abandoned.state, RunState::Abandoned);
    assert_eq!(abandoned.finished_at, Some(at(56)));
    assert!(
        abandoned.error.as_deref().is_some_and(|e| e.contains("s1")),
        "{abandoned:?}"
    );
    // Taken once: another pass takes nothing.
    let again = s2.tick_runs(at(57)).await.unwrap();
    assert!(again.dispatch.is_empty() && again.abandoned.is_empty());
    // The dead scheduler cannot start the run it lost, nor overwrite the abandoned one.
    assert!(s1.start_runs(&[b.run_id], at(58)).await.unwrap().is_empty());
    assert_eq!(
        s2.start_runs(&[b.run_id], at(58)).await.unwrap(),
        vec![b.run_id]
    );
    s1.finish_runs(&[executed(a, at(59))]).await.unwrap();
    assert_eq!(
        s2.get_run(a.run_id).await.unwrap().unwrap().state,
        RunState::Abandoned
    );
}
