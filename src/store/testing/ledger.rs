//! The run ledger's contract: [`ledger_contract`]. Every test opens fresh stores on a new
//! namespace through the factory, as one or two schedulers (`s1`, `s2`) with a 30 s lease,
//! and drives them with explicit times (never the clock), so leases expire on demand.

use std::future::Future;
use std::time::Duration;

use super::context::TestContext;
use super::fixtures::{at, interval_job};
use crate::job::{JobRecord, Overlap, RunId};
use crate::ledger::{RunFilter, RunOutcome, RunRecord, RunRetention, RunState};
use crate::store::{JobStore, StoreContext};

/// The lease every ledger test uses.
const LEASE: Duration = Duration::from_secs(30);

/// Runs every ledger test. `open(namespace, ctx)` returns a store on `namespace` (a fresh
/// name per test, shared by the stores opened with it: a table suffix, key prefix or
/// collection name), started with `ctx`. With `shared` false (a store that cannot be
/// shared between schedulers, like the memory store) the tests with two schedulers are
/// left out; each test then opens one store per namespace.
///
/// The namespaces are `ledger_<test>_<random>`: remove what they leave once the suite is
/// done (drop the tables, delete the keys).
pub async fn ledger_contract<F, Fut, S>(open: F, shared: bool)
where
    F: Fn(String, StoreContext) -> Fut,
    Fut: Future<Output = S>,
    S: JobStore,
{
    let h = Harness { open: &open };
    claim_records_runs(&h).await;
    start_and_finish(&h).await;
    coalesced_times_are_missed(&h).await;
    ledger_off_records_nothing(&h).await;
    overlap_in_one_scheduler(&h).await;
    manual_runs(&h).await;
    queries_and_paging(&h).await;
    retention(&h).await;
    runs_outlive_their_job(&h).await;
    super::ledger_retries::retries_are_runs_of_the_same_slot(&h).await;
    if shared {
        super::ledger_shared::overlap_across_schedulers(&h).await;
        super::ledger_shared::promotion_across_schedulers(&h).await;
        super::ledger_shared::cancel_other_across_schedulers(&h).await;
        super::ledger_shared::takeover(&h).await;
        super::ledger_retries::retries_are_taken_over(&h).await;
    }
}

pub(super) struct Harness<'a, F> {
    open: &'a F,
}

/// The suite's store factory, `open(namespace, ctx)`, as one bound: every test names
/// `F: OpenStore` and its store `F::Store`, instead of three bounds each.
pub(super) trait OpenStore {
    /// The store it opens.
    type Store: JobStore;
    /// Opens a store on `ns`, started with `ctx`.
    fn open(&self, ns: String, ctx: StoreContext) -> impl Future<Output = Self::Store>;
}

impl<F, Fut> OpenStore for F
where
    F: Fn(String, StoreContext) -> Fut,
    Fut: Future,
    Fut::Output: JobStore,
{
    type Store = Fut::Output;

    fn open(&self, ns: String, ctx: StoreContext) -> impl Future<Output = Self::Store> {
        self(ns, ctx)
    }
}

impl<F: OpenStore> Harness<'_, F> {
    pub(super) fn namespace(test: &str) -> String {
        format!("ledger_{test}_{:06x}", rand::random::<u32>() & 0xff_ffff)
    }

    pub(super) async fn store(&self, ns: &str, scheduler: &str) -> F::Store {
        self.store_with(ns, scheduler, true, RunRetention::default())
            .await
    }

    async fn store_with(
        &self,
        ns: &str,
        scheduler: &str,
        ledger: bool,
        retention: RunRetention,
    ) -> F::Store {
        let ctx = TestContext::new("default", scheduler, LEASE).with_ledger(ledger, retention);
        self.open.open(ns.to_string(), ctx.context()).await
    }
}

/// A job due at `at(0)`, every `every` seconds, with `max_instances` and `overlap`.
pub(super) fn job(id: &str, every: u64, max_instances: u32, overlap: Overlap) -> JobRecord {
    let mut j = interval_job(id, every, Some(at(0)));
    j.max_instances = max_instances;
    j.overlap = overlap;
    j.coalesce = true;
    j.misfire_grace_time = None;
    j
}

pub(super) async fn runs_of(store: &impl JobStore, job: &str) -> Vec<RunRecord> {
    store
        .query_runs(&RunFilter::new().job(job).limit(10_000))
        .await
        .expect("query_runs")
}

pub(super) fn states(runs: &[RunRecord]) -> Vec<RunState> {
    runs.iter().map(|r| r.state).collect()
}

/// Claims what is due at `now` (after a heartbeat, as the loop does) and returns the
/// records the claim created.
pub(super) async fn claim(
    store: &impl JobStore,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<RunRecord> {
    store.tick_runs(now).await.expect("tick_runs");
    let due = store.acquire_due_jobs(now, 100).await.expect("acquire");
    // As the loop does once the runs are handed over: the job's lease goes.
    store.release_jobs(&due).await.expect("release_jobs");
    due.into_iter().flat_map(|d| d.runs).collect()
}

pub(super) fn executed(run: &RunRecord, at_: chrono::DateTime<chrono::Utc>) -> RunOutcome {
    RunOutcome::new(run.run_id, run.job_id.clone(), RunState::Executed, at_)
}

/// A claim creates one `claimed` record per due time it submits, owned by the claimer,
/// readable by id and by job, in the same step (the records come back with the claim).
async fn claim_records_runs<F: OpenStore>(h: &Harness<'_, F>) {
    let ns = Harness::<F>::namespace("claim");
    let store = h.store(&ns, "s1").await;
    assert!(store.keeps_runs());
    store
        .add_job(job("a", 10, 1, Overlap::Skip), false)
        .await
        .unwrap();
    let made = claim(&store, at(0)).await;
    assert_eq!(made.len(), 1, "one record for the one due time: {made:?}");
    let run = &made[0];
    assert_eq!(
        (run.job_id.as_str(), run.scheduled, run.owner.as_str()),
        ("a", at(0), "s1")
    );
    assert_eq!(
        (run.state, run.manual, run.attempt, run.queued),
        (RunState::Claimed, false, 1, false)
    );
    assert_eq!(run.submitted_at, at(0));
    assert_eq!(store.get_run(run.run_id).await.unwrap().as_ref(), Some(run));
    assert_eq!(runs_of(&store, "a").await, vec![run.clone()]);
    // The next claim is the next slot: its own record.
    let next = claim(&store, at(10)).await;
    assert_eq!(next.len(), 1);
    assert_ne!(next[0].run_id, run.run_id);
    assert_eq!(store.get_run(RunId::from_raw(12345)).await.unwrap(), None);
}

/// `start_runs` starts only claimed runs of this scheduler; `finish_runs` writes the first
/// terminal outcome and ignores later ones and unknown ids.
async fn start_and_finish<F: OpenStore>(h: &Harness<'_, F>) {
    let ns = Harness::<F>::namespace("finish");
    let store = h.store(&ns, "s1").await;
    store
        .add_job(job("a", 10, 5, Overlap::Skip), false)
        .await
        .unwrap();
    let run = claim(&store, at(0)).await.remove(0);
    let started = store.start_runs(&[run.run_id], at(1)).await.unwrap();
    assert_eq!(started, vec![run.run_id]);
    // Starting twice starts nothing.
    assert!(store
        .start_runs(&[run.run_id], at(2))
        .await
        .unwrap()
        .is_empty());
    let got = store.get_run(run.run_id).await.unwrap().unwrap();
    assert_eq!(
        (got.state, got.started_at),
        (RunState::Started, Some(at(1)))
    );
    assert_eq!(got.lateness(), Some(Duration::from_secs(1)));

    let out = executed(&run, at(4)).output(&serde_json::json!({"rows": 42}));
    store
        .finish_runs(&[
            out,
            RunOutcome::new(RunId::from_raw(7), "gone", RunState::Error, at(4)),
        ])
        .await
        .unwrap();
    let done = store.get_run(run.run_id).await.unwrap().unwrap();
    assert_eq!(done.state, RunState::Executed);
    assert_eq!(done.finished_at, Some(at(4)));
    assert_eq!(done.duration(), Some(Duration::from_secs(3)));
    assert_eq!(
        done.output_as::<serde_json::Value>(),
        Some(serde_json::json!({"rows": 42}))
    );
    // A later outcome does not overwrite the first.
    store
        .finish_runs(&[RunOutcome::new(run.run_id, "a", RunState::Error, at(5)).error("late")])
        .await
        .unwrap();
    assert_eq!(store.get_run(run.run_id).await.unwrap().unwrap(), done);

    // An error outcome keeps its text; a missed run never started.
    let second = claim(&store, at(10)).await.remove(0);
    store
        .finish_runs(&[
            RunOutcome::new(second.run_id, "a", RunState::Missed, at(12)).error("too late"),
        ])
        .await
        .unwrap();
    let missed = store.get_run(second.run_id).await.unwrap().unwrap();
    assert_eq!(
        (missed.state, missed.started_at, missed.error.as_deref()),
        (RunState::Missed, None, Some("too late"))
    );
}

/// With `coalesce`, a backlog's earlier times are recorded `missed`, the last `claimed`.
async fn coalesced_times_are_missed<F: OpenStore>(h: &Harness<'_, F>) {
    let ns = Harness::<F>::namespace("coalesce");
    let store = h.store(&ns, "s1").await;
    store
        .add_job(job("a", 10, 1, Overlap::Skip), false)
        .await
        .unwrap();
    let mut made = claim(&store, at(25)).await;
    made.sort_by_key(|r| r.scheduled);
    assert_eq!(
        made.iter()
            .map(|r| (r.scheduled, r.state))
            .collect::<Vec<_>>(),
        vec![
            (at(0), RunState::Missed),
            (at(10), RunState::Missed),
            (at(20), RunState::Claimed)
        ]
    );
    assert_eq!(runs_of(&store, "a").await.len(), 3);
}

/// A scheduler with the ledger off makes no records.
async fn ledger_off_records_nothing<F: OpenStore>(h: &Harness<'_, F>) {
    let ns = Harness::<F>::namespace("off");
    let store = h
        .store_with(&ns, "s1", false, RunRetention::default())
        .await;
    store
        .add_job(job("a", 10, 1, Overlap::Skip), false)
        .await
        .unwrap();
    let due = store.acquire_due_jobs(at(0), 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert!(due[0].runs.is_empty());
    assert!(runs_of(&store, "a").await.is_empty());
}

/// The overlap policies, in one scheduler: a job with one instance started, another time
/// comes due.
async fn overlap_in_one_scheduler<F: OpenStore>(h: &Harness<'_, F>) {
    let cases = [
        (
            Overlap::Skip,
            vec![(RunState::Skipped, false), (RunState::Skipped, false)],
        ),
        (
            Overlap::AllowAll,
            vec![(RunState::Claimed, false), (RunState::Claimed, false)],
        ),
        (
            Overlap::BufferOne,
            vec![(RunState::Claimed, true), (RunState::Skipped, false)],
        ),
        (
            Overlap::BufferAll,
            vec![(RunState::Claimed, true), (RunState::Claimed, true)],
        ),
    ];
    for (policy, want) in cases {
        let store = h.store(&Harness::<F>::namespace("overlap1"), "s1").await;
        let base = 0;
        store.add_job(job("a", 10, 1, policy), false).await.unwrap();
        let first = claim(&store, at(base)).await;
        assert_eq!(first.len(), 1, "{policy}");
        store
            .start_runs(&[first[0].run_id], at(base))
            .await
            .unwrap();
        let second = claim(&store, at(base + 10)).await;
        let third = claim(&store, at(base + 20)).await;
        let got: Vec<(RunState, bool)> = second
            .iter()
            .chain(&third)
            .map(|r| (r.state, r.queued))
            .collect();
        assert_eq!(got, want, "{policy}");
        for r in second.iter().chain(&third) {
            if r.state == RunState::Skipped {
                assert!(
                    r.error
                        .as_deref()
                        .is_some_and(|e| e.contains("max_instances")),
                    "{r:?}"
                );
                assert!(r.finished_at.is_some());
            }
        }
    }
}

/// Manual runs: recorded `manual`, under the overlap rule, without moving the job.
async fn manual_runs<F: OpenStore>(h: &Harness<'_, F>) {
    let ns = Harness::<F>::namespace("manual");
    let store = h.store(&ns, "s1").await;
    store.tick_runs(at(0)).await.unwrap();
    let mut j = job("a", 3600, 1, Overlap::Skip);
    j.next_run_time = Some(at(3600));
    store.add_job(j, false).await.unwrap();
    let made = store.add_manual_runs("a", &[at(5)], at(5)).await.unwrap();
    assert_eq!(made.len(), 1);
    assert_eq!(
        (made[0].state, made[0].manual, made[0].scheduled),
        (RunState::Claimed, true, at(5))
    );
    assert_eq!(
        store.lookup_job("a").await.unwrap().unwrap().next_run_time,
        Some(at(3600))
    );
    // One instance is taken: a second manual run is skipped.
    let again = store.add_manual_runs("a", &[at(6)], at(6)).await.unwrap();
    assert_eq!(again[0].state, RunState::Skipped);
    // Several at once (a backfill) apply the rule one by one.
    let mut b = job("b", 10, 2, Overlap::Skip);
    b.next_run_time = Some(at(3600));
    store.add_job(b, false).await.unwrap();
    let backfill = store
        .add_manual_runs("b", &[at(0), at(10), at(20)], at(30))
        .await
        .unwrap();
    assert_eq!(
        states(&backfill),
        vec![RunState::Claimed, RunState::Claimed, RunState::Skipped]
    );
    assert!(matches!(
        store.add_manual_runs("nope", &[at(0)], at(0)).await,
        Err(crate::Error::JobLookup(_))
    ));
    let manual = store
        .query_runs(&RunFilter::new().manual(true).limit(100))
        .await
        .unwrap();
    assert_eq!(manual.len(), 5);
}

/// Filters and pages agree with [`RunFilter::matches`] and the newest-first order.
async fn queries_and_paging<F: OpenStore>(h: &Harness<'_, F>) {
    let ns = Harness::<F>::namespace("query");
    let store = h.store(&ns, "s1").await;
    store.tick_runs(at(0)).await.unwrap();
    for id in ["a", "b"] {
        let mut j = job(id, 10, 100, Overlap::AllowAll);
        j.next_run_time = Some(at(100_000));
        store.add_job(j, false).await.unwrap();
    }
    let slots: Vec<_> = (0..12).map(|i| at(i * 10)).collect();
    let mut all = store.add_manual_runs("a", &slots, at(200)).await.unwrap();
    all.extend(
        store
            .add_manual_runs("b", &slots[..5], at(200))
            .await
            .unwrap(),
    );
    // A few outcomes, so states differ.
    let outcomes: Vec<RunOutcome> = all
        .iter()
        .step_by(3)
        .map(|r| {
            RunOutcome::new(r.run_id, r.job_id.clone(), RunState::Error, at(300)).error("boom")
        })
        .collect();
    store.finish_runs(&outcomes).await.unwrap();
    let mut current = Vec::new();
    for r in &all {
        current.push(store.get_run(r.run_id).await.unwrap().expect("kept"));
    }
    let filters = [
        RunFilter::new().limit(1000),
        RunFilter::new().job("a").limit(5),
        RunFilter::new().job("b").limit(100),
        RunFilter::new().state(RunState::Error).limit(100),
        RunFilter::new()
            .states([RunState::Claimed, RunState::Error])
            .job("a")
            .limit(3),
        RunFilter::new().since(at(30)).until(at(80)).limit(100),
        RunFilter::new().manual(false).limit(100),
    ];
    for f in filters {
        assert_eq!(
            store.query_runs(&f).await.unwrap(),
            f.page(current.clone()),
            "{f:?}"
        );
    }
    // Paging through job a, 5 at a time, sees each run once, newest first.
    let mut seen = Vec::new();
    let mut f = RunFilter::new().job("a").limit(5);
    loop {
        let page = store.query_runs(&f).await.unwrap();
        if page.is_empty() {
            break;
        }
        f = f.after(page.last().unwrap());
        seen.extend(page);
    }
    assert_eq!(seen.len(), 12);
    assert!(seen
        .windows(2)
        .all(|w| (w[0].scheduled, w[0].run_id) > (w[1].scheduled, w[1].run_id)));
}

/// The periodic pass prunes finished runs beyond the retention, never active ones.
async fn retention<F: OpenStore>(h: &Harness<'_, F>) {
    let ns = Harness::<F>::namespace("retention");
    let keep = RunRetention::default()
        .per_job(3)
        .max_age(Some(Duration::from_secs(3600)));
    let store = h.store_with(&ns, "s1", true, keep).await;
    store.tick_runs(at(0)).await.unwrap();
    let mut j = job("a", 10, 100, Overlap::AllowAll);
    j.next_run_time = Some(at(100_000));
    store.add_job(j, false).await.unwrap();
    let slots: Vec<_> = (0..8).map(|i| at(i * 10)).collect();
    let runs = store.add_manual_runs("a", &slots, at(100)).await.unwrap();
    // Six finish, two stay active.
    let outcomes: Vec<RunOutcome> = runs[..6].iter().map(|r| executed(r, at(100))).collect();
    store.finish_runs(&outcomes).await.unwrap();
    store.tick_runs(at(101)).await.unwrap();
    let kept = runs_of(&store, "a").await;
    assert_eq!(
        kept.iter().filter(|r| r.state.is_terminal()).count(),
        3,
        "the newest 3 finished runs are kept: {kept:?}"
    );
    assert_eq!(kept.iter().filter(|r| r.state.is_active()).count(), 2);
    // The kept finished ones are the newest.
    assert!(kept
        .iter()
        .filter(|r| r.state.is_terminal())
        .all(|r| r.scheduled >= at(30)));
    // Past the age limit, the rest of the finished ones go.
    store.tick_runs(at(100 + 3601)).await.unwrap();
    let kept = runs_of(&store, "a").await;
    assert_eq!(states(&kept), vec![RunState::Claimed, RunState::Claimed]);
}

/// Removing a job keeps its runs (the history outlives it).
async fn runs_outlive_their_job<F: OpenStore>(h: &Harness<'_, F>) {
    let ns = Harness::<F>::namespace("outlive");
    let store = h.store(&ns, "s1").await;
    store
        .add_job(job("a", 10, 1, Overlap::Skip), false)
        .await
        .unwrap();
    let run = claim(&store, at(0)).await.remove(0);
    store.remove_job("a").await.unwrap();
    assert_eq!(
        store.get_run(run.run_id).await.unwrap().map(|r| r.run_id),
        Some(run.run_id)
    );
    assert_eq!(runs_of(&store, "a").await.len(), 1);
}
