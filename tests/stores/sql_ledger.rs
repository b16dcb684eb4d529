//! The SQL stores' run ledger (SQLite, PostgreSQL, MySQL/MariaDB): records written by the
//! claim, starting and finishing runs, manual runs, the ledger pass (heartbeats, takeover,
//! promotion, cancel requests, retention), reading with filters, and the faults only SQL
//! can show: a run row of the wrong shape, a claim whose records cannot be written, a
//! schema of version 1 or 2 upgraded in place.
//!
//! Times are the suite's fixed instants (`suite::at`), passed as `now`: nothing sleeps.

#![cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use apsched::event::EventKind;
use apsched::ledger::{RunFilter, RunOutcome, RunRecord, RunRetention, RunState};
use apsched::store::testing::TestContext;
use apsched::store::{JobStore, SqlStore};
use apsched::{Error, Event, Overlap};
use chrono::TimeDelta;

use crate::sql::{Db, TestDb};
use crate::{sql_raw, suite};

const LEASE: Duration = Duration::from_secs(30);

/// A store on `table` started as scheduler `id` (with its test context, to watch events).
async fn start(tdb: &TestDb, table: &str, id: &str) -> (SqlStore, TestContext) {
    start_with(tdb, table, TestContext::new("default", id, LEASE)).await
}

async fn start_with(tdb: &TestDb, table: &str, ctx: TestContext) -> (SqlStore, TestContext) {
    let store = tdb.store_on(table);
    store
        .start(ctx.context())
        .await
        .unwrap_or_else(|e| panic!("{}: start: {e}", tdb.db.name()));
    (store, ctx)
}

/// A job of the suite firing every 10 s from `suite::at(0)`, with this instance limit and
/// overlap policy.
fn job(id: &str, max_instances: u32, overlap: Overlap) -> apsched::job::JobRecord {
    let mut j = suite::interval_job(id, 10, Some(suite::at(0)));
    j.max_instances = max_instances;
    j.overlap = overlap;
    j
}

fn ids(runs: &[RunRecord]) -> Vec<apsched::RunId> {
    runs.iter().map(|r| r.run_id).collect()
}

/// A claim writes one record per due time; it round-trips exactly; starting is for the
/// owner only and once; the first terminal outcome wins; unknown ids are ignored; a full
/// job's next time is recorded `skipped`.
async fn claim_start_finish(db: Db) {
    let Some(tdb) = TestDb::new(db, "lg_life").await else {
        return;
    };
    let (a, _) = start(&tdb, &tdb.table, "a").await;
    let (b, _) = start(&tdb, &tdb.table, "b").await;
    assert!(a.keeps_runs());
    a.add_job(job("j", 1, Overlap::Skip), false).await.unwrap();

    let due = a.acquire_due_jobs(suite::at(0), 10).await.unwrap();
    assert_eq!(due.len(), 1);
    let run = due[0].runs[0].clone();
    assert_eq!(due[0].runs.len(), 1);
    assert_eq!(
        (run.state, run.owner.as_str(), run.scheduled),
        (RunState::Claimed, "a", suite::at(0))
    );
    assert_eq!(a.get_run(run.run_id).await.unwrap(), Some(run.clone()));
    assert_eq!(
        a.query_runs(&RunFilter::new().job("j")).await.unwrap(),
        vec![run.clone()]
    );

    // Only the owner starts it, once.
    assert!(b
        .start_runs(&[run.run_id], suite::at(1))
        .await
        .unwrap()
        .is_empty());
    let unknown = apsched::RunId::from_raw(7);
    assert_eq!(
        a.start_runs(&[unknown, run.run_id], suite::at(1))
            .await
            .unwrap(),
        vec![run.run_id]
    );
    assert!(a
        .start_runs(&[run.run_id], suite::at(2))
        .await
        .unwrap()
        .is_empty());
    let started = a.get_run(run.run_id).await.unwrap().unwrap();
    assert_eq!(
        (started.state, started.started_at),
        (RunState::Started, Some(suite::at(1)))
    );

    // Still running at the next time: max_instances 1 and Skip record it skipped.
    let due = a.acquire_due_jobs(suite::at(10), 10).await.unwrap();
    let skipped = &due[0].runs[0];
    assert_eq!(skipped.state, RunState::Skipped);
    assert!(
        skipped.error.as_deref().unwrap().contains("max_instances"),
        "{skipped:?}"
    );
    assert_eq!(
        a.get_run(skipped.run_id).await.unwrap().as_ref(),
        Some(skipped)
    );

    // The outcome, with a return value; a second outcome does not overwrite it.
    let done = RunOutcome::new(run.run_id, "j", RunState::Executed, suite::at(3))
        .output(&serde_json::json!({"rows": 3}));
    let late = RunOutcome::new(run.run_id, "j", RunState::Error, suite::at(4)).error("late");
    let ghost = RunOutcome::new(unknown, "j", RunState::Error, suite::at(4)).error("ghost");
    a.finish_runs(&[done, ghost]).await.unwrap();
    a.finish_runs(&[late]).await.unwrap();
    let mut expected = started.clone();
    expected.state = RunState::Executed;
    expected.finished_at = Some(suite::at(3));
    expected.output = Some(r#"{"rows":3}"#.to_string());
    assert_eq!(a.get_run(run.run_id).await.unwrap(), Some(expected.clone()));
    assert_eq!(expected.duration(), Some(Duration::from_secs(2)));
    assert_eq!(a.get_run(unknown).await.unwrap(), None);

    // Free again: the next time is claimed.
    let due = a.acquire_due_jobs(suite::at(20), 10).await.unwrap();
    assert_eq!(due[0].runs[0].state, RunState::Claimed);
    // Newest first.
    let all = a.query_runs(&RunFilter::new().job("j")).await.unwrap();
    let times: Vec<_> = all.iter().map(|r| r.scheduled).collect();
    assert_eq!(times, [suite::at(20), suite::at(10), suite::at(0)]);
    // Removing the job keeps its history.
    a.remove_job("j").await.unwrap();
    assert_eq!(a.query_runs(&RunFilter::new()).await.unwrap().len(), 3);
    tdb.cleanup(&[]).await;
}

/// Outcomes written in one batch keep their texts whole, whatever the other rows of the
/// batch hold (MySQL builds the batch as a derived table, whose column types come from
/// its rows): a long error and a return value at the size limit next to empty ones.
async fn outcomes_keep_their_text(db: Db) {
    let Some(tdb) = TestDb::new(db, "lg_text").await else {
        return;
    };
    let (a, _) = start(&tdb, &tdb.table, "a").await;
    a.add_job(job("t", 10, Overlap::AllowAll), false)
        .await
        .unwrap();
    let runs = a
        .add_manual_runs(
            "t",
            &[suite::at(1), suite::at(2), suite::at(3)],
            suite::at(3),
        )
        .await
        .unwrap();
    let ids: Vec<_> = runs.iter().map(|r| r.run_id).collect();
    a.start_runs(&ids, suite::at(4)).await.unwrap();
    let long_error = format!("failed: {}", "é".repeat(20_000));
    let big = serde_json::Value::String("x".repeat(apsched::ledger::OUTPUT_LIMIT - 2));
    let outcomes = [
        RunOutcome::new(ids[0], "t", RunState::Executed, suite::at(5)),
        RunOutcome::new(ids[1], "t", RunState::Error, suite::at(6))
            .started_at(Some(suite::at(4) + TimeDelta::microseconds(7)))
            .error(long_error.clone()),
        RunOutcome::new(ids[2], "t", RunState::Executed, suite::at(7)).output(&big),
    ];
    a.finish_runs(&outcomes).await.unwrap();
    let got: Vec<RunRecord> = {
        let mut v = Vec::new();
        for id in &ids {
            v.push(a.get_run(*id).await.unwrap().unwrap());
        }
        v
    };
    assert_eq!(
        (got[0].error.as_deref(), got[0].output.as_deref()),
        (None, None)
    );
    assert_eq!(got[1].error.as_deref(), Some(long_error.as_str()));
    assert_eq!(
        got[1].started_at,
        Some(suite::at(4) + TimeDelta::microseconds(7))
    );
    assert_eq!(
        got[2].output.as_deref().map(str::len),
        Some(apsched::ledger::OUTPUT_LIMIT)
    );
    assert_eq!(got[2].output_as::<serde_json::Value>(), Some(big));
    assert_eq!(got[2].started_at, Some(suite::at(4)));
    tdb.cleanup(&[]).await;
}

/// `query_runs` agrees with `RunFilter::page` (the reference) for every kind of filter.
async fn query_filters(db: Db) {
    let Some(tdb) = TestDb::new(db, "lg_query").await else {
        return;
    };
    let (a, _) = start(&tdb, &tdb.table, "a").await;
    for id in ["x", "y"] {
        a.add_job(job(id, 5, Overlap::AllowAll), false)
            .await
            .unwrap();
    }
    let mut all = Vec::new();
    for t in [0, 10, 20, 30] {
        for d in a.acquire_due_jobs(suite::at(t), 10).await.unwrap() {
            all.extend(d.runs);
        }
    }
    // Manual runs: two at one time (the slot index allows them), one at a scheduled time.
    for (job, t) in [("x", 5), ("x", 5), ("y", 10)] {
        all.extend(
            a.add_manual_runs(job, &[suite::at(t)], suite::at(t))
                .await
                .unwrap(),
        );
    }
    let outcomes: Vec<RunOutcome> = all
        .iter()
        .step_by(3)
        .map(|r| RunOutcome::new(r.run_id, r.job_id.clone(), RunState::Error, suite::at(40)))
        .collect();
    a.finish_runs(&outcomes).await.unwrap();
    let mut fresh = Vec::new();
    for r in &all {
        fresh.push(a.get_run(r.run_id).await.unwrap().unwrap());
    }
    let base = RunFilter::new().limit(1000);
    assert_eq!(a.query_runs(&base).await.unwrap(), base.page(fresh.clone()));
    let filters = [
        RunFilter::new().job("x"),
        RunFilter::new().job("y").limit(2),
        RunFilter::new().state(RunState::Error),
        RunFilter::new()
            .states([RunState::Claimed, RunState::Error])
            .job("x"),
        RunFilter::new().manual(true),
        RunFilter::new()
            .manual(false)
            .since(suite::at(10))
            .until(suite::at(30)),
        RunFilter::new().since(suite::at(5) + TimeDelta::nanoseconds(1)),
        RunFilter::new().until(suite::at(10) + TimeDelta::nanoseconds(1)),
        RunFilter::new().limit(0),
    ];
    for f in filters {
        assert_eq!(
            a.query_runs(&f).await.unwrap(),
            f.page(fresh.clone()),
            "{f:?}"
        );
    }
    // Paging walks every run exactly once, in order.
    let mut paged = Vec::new();
    let mut f = RunFilter::new().limit(3);
    loop {
        let page = a.query_runs(&f).await.unwrap();
        let Some(last) = page.last().cloned() else {
            break;
        };
        paged.extend(page);
        f = RunFilter::new().limit(3).after(&last);
    }
    assert_eq!(paged, base.page(fresh));
    tdb.cleanup(&[]).await;
}

/// Manual runs obey the overlap rule, leave the job's next run time alone, and need the
/// job.
async fn manual_runs(db: Db) {
    let Some(tdb) = TestDb::new(db, "lg_manual").await else {
        return;
    };
    let (a, _) = start(&tdb, &tdb.table, "a").await;
    a.add_job(job("m", 1, Overlap::BufferOne), false)
        .await
        .unwrap();
    let runs = a
        .add_manual_runs(
            "m",
            &[suite::at(-20), suite::at(-10), suite::at(-5)],
            suite::at(-1),
        )
        .await
        .unwrap();
    let shape: Vec<_> = runs.iter().map(|r| (r.manual, r.state, r.queued)).collect();
    assert_eq!(
        shape,
        [
            (true, RunState::Claimed, false),
            (true, RunState::Claimed, true),
            (true, RunState::Skipped, false)
        ]
    );
    for r in &runs {
        assert_eq!(a.get_run(r.run_id).await.unwrap().as_ref(), Some(r));
    }
    let stored = a.lookup_job("m").await.unwrap().unwrap();
    assert_eq!(stored.next_run_time, Some(suite::at(0)));
    let err = a
        .add_manual_runs("nope", &[suite::at(0)], suite::at(0))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::JobLookup(_)), "{err}");
    // The claim counts the manual runs: the job is full and one run is queued.
    let due = a.acquire_due_jobs(suite::at(0), 10).await.unwrap();
    assert_eq!(due[0].runs[0].state, RunState::Skipped);
    tdb.cleanup(&[]).await;
}

/// A scheduler without a live heartbeat loses its runs to the next ledger pass of
/// another: claimed ones are dispatched there, started ones abandoned; a live one keeps
/// its runs, and no run is taken twice.
async fn takeover(db: Db) {
    let Some(tdb) = TestDb::new(db, "lg_take").await else {
        return;
    };
    let (a, _) = start(&tdb, &tdb.table, "a").await;
    let (b, _) = start(&tdb, &tdb.table, "b").await;
    let (c, _) = start(&tdb, &tdb.table, "c").await;
    for id in ["p", "q"] {
        a.add_job(job(id, 1, Overlap::Skip), false).await.unwrap();
    }
    assert_eq!(a.tick_runs(suite::at(0)).await.unwrap(), Default::default());
    let due = a.acquire_due_jobs(suite::at(0), 10).await.unwrap();
    let runs: Vec<RunRecord> = due.iter().flat_map(|d| d.runs.clone()).collect();
    let (p, q) = (&runs[0], &runs[1]);
    a.start_runs(&[p.run_id], suite::at(1)).await.unwrap();

    // `a` is alive until at(30).
    let tick = b.tick_runs(suite::at(29)).await.unwrap();
    assert!(
        tick.dispatch.is_empty() && tick.abandoned.is_empty(),
        "{tick:?}"
    );

    let tick = b.tick_runs(suite::at(31)).await.unwrap();
    assert_eq!(ids(&tick.dispatch), [q.run_id]);
    assert_eq!(tick.dispatch[0].owner, "b");
    assert_eq!(ids(&tick.abandoned), [p.run_id]);
    let abandoned = &tick.abandoned[0];
    assert_eq!(abandoned.state, RunState::Abandoned);
    assert_eq!(abandoned.finished_at, Some(suite::at(31)));
    let why = abandoned.error.as_deref().unwrap();
    assert!(
        why.contains("scheduler a stopped") && why.contains("outcome is unknown"),
        "{why}"
    );
    assert_eq!(b.get_run(p.run_id).await.unwrap().as_ref(), Some(abandoned));
    assert_eq!(
        b.get_run(q.run_id).await.unwrap().as_ref(),
        Some(&tick.dispatch[0])
    );
    // Taken once: another taker finds nothing; `a`'s late outcome does not undo it.
    let again = c.tick_runs(suite::at(32)).await.unwrap();
    assert!(
        again.dispatch.is_empty() && again.abandoned.is_empty(),
        "{again:?}"
    );
    a.finish_runs(&[RunOutcome::new(
        p.run_id,
        "p",
        RunState::Executed,
        suite::at(33),
    )])
    .await
    .unwrap();
    assert_eq!(
        b.get_run(p.run_id).await.unwrap().unwrap().state,
        RunState::Abandoned
    );
    // `a` can no longer start what `b` took; `b` can.
    assert!(a
        .start_runs(&[q.run_id], suite::at(34))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        b.start_runs(&[q.run_id], suite::at(34)).await.unwrap(),
        [q.run_id]
    );
    // A scheduler that never recorded a heartbeat is dead too.
    let (d, _) = start(&tdb, &tdb.table, "d").await;
    let due = d.acquire_due_jobs(suite::at(40), 10).await.unwrap();
    let r = due
        .iter()
        .flat_map(|d| d.runs.iter())
        .find(|r| r.job_id == "p")
        .unwrap();
    d.start_runs(&[r.run_id], suite::at(40)).await.unwrap();
    let tick = b.tick_runs(suite::at(41)).await.unwrap();
    assert_eq!(ids(&tick.abandoned), [r.run_id]);
    assert!(
        tick.abandoned[0]
            .error
            .as_deref()
            .unwrap()
            .contains("no heartbeat recorded"),
        "{tick:?}"
    );
    // Heartbeats a day old are forgotten (`a`'s); live ones stay.
    b.tick_runs(suite::at(31 + 86_400)).await.unwrap();
    let owners = format!(
        "SELECT scheduler_id FROM {}_owners ORDER BY scheduler_id",
        tdb.table
    );
    assert_eq!(sql_raw::query_text(&tdb.url, &owners).await, ["b", "c"]);
    tdb.cleanup(&[]).await;
}

/// CancelOther: the claim flags the running instance and queues the new run; the owner's
/// ledger pass returns the flag; once the running one finished, the queued one is
/// promoted (to the scheduler of the pass).
async fn queue_cancel_promote(db: Db) {
    let Some(tdb) = TestDb::new(db, "lg_queue").await else {
        return;
    };
    let (a, _) = start(&tdb, &tdb.table, "a").await;
    let (b, _) = start(&tdb, &tdb.table, "b").await;
    a.add_job(job("c", 1, Overlap::CancelOther), false)
        .await
        .unwrap();
    a.tick_runs(suite::at(0)).await.unwrap();
    b.tick_runs(suite::at(0)).await.unwrap();
    let first = a.acquire_due_jobs(suite::at(0), 10).await.unwrap()[0].runs[0].clone();
    a.start_runs(&[first.run_id], suite::at(0)).await.unwrap();
    let due = a.acquire_due_jobs(suite::at(10), 10).await.unwrap();
    assert_eq!(due[0].cancel, [first.run_id]);
    let second = due[0].runs[0].clone();
    assert!(
        second.state == RunState::Claimed && second.queued,
        "{second:?}"
    );
    assert!(
        a.get_run(first.run_id)
            .await
            .unwrap()
            .unwrap()
            .cancel_requested
    );

    let tick = a.tick_runs(suite::at(11)).await.unwrap();
    assert_eq!(tick.cancel, [first.run_id]);
    assert!(tick.promoted.is_empty(), "still running: {tick:?}");
    assert!(b.tick_runs(suite::at(11)).await.unwrap().cancel.is_empty());

    a.finish_runs(&[
        RunOutcome::new(first.run_id, "c", RunState::Cancelled, suite::at(12)).error("cancelled"),
    ])
    .await
    .unwrap();
    let tick = b.tick_runs(suite::at(13)).await.unwrap();
    assert_eq!(ids(&tick.promoted), [second.run_id]);
    let promoted = &tick.promoted[0];
    assert!(!promoted.queued && promoted.owner == "b", "{promoted:?}");
    assert_eq!(
        b.get_run(second.run_id).await.unwrap().as_ref(),
        Some(promoted)
    );
    assert!(a
        .tick_runs(suite::at(14))
        .await
        .unwrap()
        .promoted
        .is_empty());
    tdb.cleanup(&[]).await;
}

/// Retention keeps the newest finished runs of each job and deletes those finished too
/// long ago; active runs and rows of unknown states are never deleted.
async fn retention(db: Db) {
    let Some(tdb) = TestDb::new(db, "lg_keep").await else {
        return;
    };
    let ctx = TestContext::new("default", "a", LEASE).with_ledger(
        true,
        RunRetention::default()
            .per_job(2)
            .max_age(Some(Duration::from_secs(86_400))),
    );
    let (a, _) = start_with(&tdb, &tdb.table, ctx).await;
    for id in ["r1", "r2"] {
        a.add_job(job(id, 10, Overlap::AllowAll), false)
            .await
            .unwrap();
    }
    let mut runs = Vec::new();
    for t in 0..5 {
        for d in a.acquire_due_jobs(suite::at(t * 10), 10).await.unwrap() {
            runs.extend(d.runs);
        }
    }
    // All but r1's newest finish; r1's newest stays active.
    let active = runs.iter().rfind(|r| r.job_id == "r1").unwrap().clone();
    let outcomes: Vec<RunOutcome> = runs
        .iter()
        .filter(|r| r.run_id != active.run_id)
        .map(|r| {
            RunOutcome::new(
                r.run_id,
                r.job_id.clone(),
                RunState::Executed,
                suite::at(50),
            )
        })
        .collect();
    a.finish_runs(&outcomes).await.unwrap();
    a.tick_runs(suite::at(60)).await.unwrap();
    let kept = |job: &'static str| suite::runs_by_time(&a, job);
    let at = suite::at;
    assert_eq!(
        kept("r1").await,
        [
            (at(40), RunState::Claimed),
            (at(30), RunState::Executed),
            (at(20), RunState::Executed)
        ]
    );
    assert_eq!(
        kept("r2").await,
        [(at(40), RunState::Executed), (at(30), RunState::Executed)]
    );
    // A day after they finished, only the active run is left.
    a.tick_runs(suite::at(50 + 86_401)).await.unwrap();
    assert_eq!(kept("r1").await, [(at(40), RunState::Claimed)]);
    assert!(kept("r2").await.is_empty());
    tdb.cleanup(&[]).await;
}

/// A scheduled slot keeps its one record: the job removed and added again claims the same
/// time without a second record (and without failing the claim); manual runs at that time
/// are still recorded.
async fn one_record_per_slot(db: Db) {
    let Some(tdb) = TestDb::new(db, "lg_slot").await else {
        return;
    };
    let (a, _) = start(&tdb, &tdb.table, "a").await;
    a.add_job(job("s", 1, Overlap::AllowAll), false)
        .await
        .unwrap();
    let first = a.acquire_due_jobs(suite::at(0), 10).await.unwrap()[0].runs[0].clone();
    a.add_job(job("s", 1, Overlap::AllowAll), true)
        .await
        .unwrap();
    let again = a.acquire_due_jobs(suite::at(0), 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        a.lookup_job("s").await.unwrap().unwrap().next_run_time,
        Some(suite::at(10))
    );
    assert_eq!(
        a.query_runs(&RunFilter::new().job("s")).await.unwrap(),
        std::slice::from_ref(&first)
    );
    // The duplicate's record does not exist, so it cannot be started.
    let dup = again[0].runs[0].run_id;
    assert!(a.start_runs(&[dup], suite::at(1)).await.unwrap().is_empty());
    a.add_manual_runs("s", &[suite::at(0)], suite::at(2))
        .await
        .unwrap();
    assert_eq!(
        a.query_runs(&RunFilter::new().job("s").manual(true))
            .await
            .unwrap()
            .len(),
        1
    );
    tdb.cleanup(&[]).await;
}

/// A run row no store would write (an unknown state) is skipped by `query_runs` and
/// `get_run`, reported once, and left in the table.
async fn unreadable_run(db: Db) {
    let Some(tdb) = TestDb::new(db, "lg_bad").await else {
        return;
    };
    let (a, ctx) = start(&tdb, &tdb.table, "a").await;
    let mut errors = ctx.subscribe(EventKind::STORE_ERROR);
    a.add_job(job("g", 1, Overlap::Skip), false).await.unwrap();
    let good = a.acquire_due_jobs(suite::at(0), 10).await.unwrap()[0].runs[0].clone();
    let us = (suite::at(5)).timestamp_micros();
    sql_raw::execute(
        &tdb.url,
        &format!(
            "INSERT INTO {}_runs (run_id, job_id, scheduled, slot, owner, manual, attempt, \
             state, queued, cancel_requested, submitted_at) \
             VALUES (42, 'g', {us}, 1, 'a', FALSE, 1, 'bogus', FALSE, FALSE, {us})",
            tdb.table
        ),
    )
    .await;
    for _ in 0..2 {
        let runs = a.query_runs(&RunFilter::new().job("g")).await.unwrap();
        assert_eq!(runs, std::slice::from_ref(&good));
        // A page of one: the bad row's place is taken by the next one.
        let runs = a.query_runs(&RunFilter::new().limit(1)).await.unwrap();
        assert_eq!(runs, std::slice::from_ref(&good));
    }
    assert_eq!(a.get_run(apsched::RunId::from_raw(42)).await.unwrap(), None);
    let mut reports = Vec::new();
    while let Ok(ev) = errors.try_recv() {
        if let Event::StoreError {
            job_id, message, ..
        } = ev
        {
            reports.push((job_id, message));
        }
    }
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].0.as_deref(), Some("g"));
    assert!(
        reports[0].1.contains("run 42") && reports[0].1.contains("bogus"),
        "{reports:?}"
    );
    // Kept, and retention leaves it alone too.
    a.tick_runs(suite::at(10 * 86_400)).await.unwrap();
    let state = format!("SELECT state FROM {}_runs WHERE run_id = 42", tdb.table);
    assert_eq!(sql_raw::query_text(&tdb.url, &state).await, ["bogus"]);
    tdb.cleanup(&[]).await;
}

/// The claim and its records are one transaction: when the records cannot be written,
/// the job's next run time does not move and no record exists; once they can, the same
/// slot is claimed and recorded.
async fn claim_and_records_are_atomic(db: Db) {
    let Some(tdb) = TestDb::new(db, "lg_atomic").await else {
        return;
    };
    let (a, _) = start(&tdb, &tdb.table, "a").await;
    a.add_job(job("boom", 1, Overlap::Skip), false)
        .await
        .unwrap();
    let t = &tdb.table;
    let (block, unblock) = match db {
        Db::Sqlite => (
            format!(
                "CREATE TRIGGER {t}_boom BEFORE INSERT ON {t}_runs WHEN NEW.job_id = 'boom' \
                 BEGIN SELECT RAISE(ABORT, 'no records for boom'); END"
            ),
            format!("DROP TRIGGER {t}_boom"),
        ),
        Db::Postgres | Db::MySql => (
            format!("ALTER TABLE {t}_runs ADD CONSTRAINT {t}_boom CHECK (job_id <> 'boom')"),
            format!("ALTER TABLE {t}_runs DROP CONSTRAINT {t}_boom"),
        ),
    };
    sql_raw::execute(&tdb.url, &block).await;
    let err = a.acquire_due_jobs(suite::at(0), 10).await.unwrap_err();
    assert!(matches!(err, Error::Store { .. }), "{err}");
    let stored = a.lookup_job("boom").await.unwrap().unwrap();
    assert_eq!(stored.next_run_time, Some(suite::at(0)));
    assert!(stored.lease.is_none(), "{stored:?}");
    assert!(a.query_runs(&RunFilter::new()).await.unwrap().is_empty());

    sql_raw::execute(&tdb.url, &unblock).await;
    let due = a.acquire_due_jobs(suite::at(0), 10).await.unwrap();
    assert_eq!(due[0].run_times, [suite::at(0)]);
    assert_eq!(a.query_runs(&RunFilter::new()).await.unwrap(), due[0].runs);
    tdb.cleanup(&[]).await;
}

/// A table of schema version 1 (before the ledger) gets the ledger's tables when a store
/// of this version starts on it, its jobs untouched.
async fn upgrade_from_version_1(db: Db) {
    let Some(tdb) = TestDb::new(db, "lg_upgrade").await else {
        return;
    };
    let t = &tdb.table;
    {
        let (a, _) = start(&tdb, t, "a").await;
        a.add_job(job("old", 1, Overlap::Skip), false)
            .await
            .unwrap();
    }
    for sql in [
        format!("DROP TABLE {t}_runs"),
        format!("DROP TABLE {t}_owners"),
        format!("DELETE FROM {t}_schema WHERE version >= 2"),
    ] {
        sql_raw::execute(&tdb.url, &sql).await;
    }
    let (a, _) = start(&tdb, t, "a").await;
    assert!(a.lookup_job("old").await.unwrap().is_some());
    let due = a.acquire_due_jobs(suite::at(0), 10).await.unwrap();
    assert_eq!(a.query_runs(&RunFilter::new()).await.unwrap(), due[0].runs);
    assert_eq!(schema_versions(&tdb).await, ["1", "2", "3"]);
    tdb.cleanup(&[]).await;
}

/// The schema versions recorded for `tdb`'s table, oldest first.
async fn schema_versions(tdb: &TestDb) -> Vec<String> {
    let t = &tdb.table;
    let versions = if tdb.db == Db::Postgres {
        format!("SELECT version::text FROM {t}_schema ORDER BY version")
    } else {
        format!("SELECT CAST(version AS CHAR) FROM {t}_schema ORDER BY version")
    };
    sql_raw::query_text(&tdb.url, &versions).await
}

/// A table of schema version 2 (the ledger before retries) with runs in it gets
/// `retry_at`, and `slot` becomes the attempt, when a store of this version starts on it:
/// its runs read back as they were, and retries of them can be added (once per attempt,
/// whatever the attempt). A start that added the column but stopped before recording the
/// version is finished by the next one.
async fn upgrade_from_version_2(db: Db) {
    let Some(tdb) = TestDb::new(db, "lg_upgrade2").await else {
        return;
    };
    let t = &tdb.table;
    let first = {
        let (a, _) = start(&tdb, t, "a").await;
        a.add_job(job("old", 1, Overlap::Skip), false)
            .await
            .unwrap();
        let first = a.acquire_due_jobs(suite::at(0), 10).await.unwrap()[0].runs[0].clone();
        a.start_runs(&[first.run_id], suite::at(1)).await.unwrap();
        a.get_run(first.run_id).await.unwrap().unwrap()
    };
    // Back to the tables of version 2.
    let mut downgrade = vec![format!("ALTER TABLE {t}_runs DROP COLUMN retry_at")];
    downgrade.extend(match db {
        Db::Postgres => Some(format!(
            "ALTER TABLE {t}_runs ALTER COLUMN slot TYPE SMALLINT"
        )),
        Db::MySql => Some(format!(
            "ALTER TABLE {t}_runs MODIFY COLUMN slot SMALLINT NULL"
        )),
        Db::Sqlite => None,
    });
    downgrade.push(format!("DELETE FROM {t}_schema WHERE version = 3"));
    for sql in &downgrade {
        sql_raw::execute(&tdb.url, sql).await;
    }
    assert_eq!(schema_versions(&tdb).await, ["1", "2"]);
    let (a, _) = start(&tdb, t, "a").await;
    assert_eq!(schema_versions(&tdb).await, ["1", "2", "3"]);
    assert_eq!(a.get_run(first.run_id).await.unwrap(), Some(first.clone()));
    // A retry of the old run, written twice; a second attempt 2 of the slot is not added.
    let retry = first.retry("a", suite::at(2), suite::at(7));
    a.add_runs(std::slice::from_ref(&retry)).await.unwrap();
    a.add_runs(std::slice::from_ref(&retry)).await.unwrap();
    a.add_runs(&[first.retry("a", suite::at(2), suite::at(9))])
        .await
        .unwrap();
    assert_eq!(a.get_run(retry.run_id).await.unwrap(), Some(retry.clone()));
    // An attempt beyond a SMALLINT (a policy retrying for ever) has a slot of its own.
    let mut late = retry.retry("a", suite::at(3), suite::at(8));
    late.attempt = 40_000;
    a.add_runs(std::slice::from_ref(&late)).await.unwrap();
    assert_eq!(a.get_run(late.run_id).await.unwrap(), Some(late.clone()));
    let runs = a.query_runs(&RunFilter::new().job("old")).await.unwrap();
    let mut attempts: Vec<u32> = runs.iter().map(|r| r.attempt).collect();
    attempts.sort_unstable();
    assert_eq!(attempts, [1, 2, 40_000], "{runs:?}");
    // The column exists but the version was not recorded (a start stopped in between):
    // the next start applies version 3 again without failing.
    sql_raw::execute(
        &tdb.url,
        &format!("DELETE FROM {t}_schema WHERE version = 3"),
    )
    .await;
    let (b, _) = start(&tdb, t, "b").await;
    assert_eq!(schema_versions(&tdb).await, ["1", "2", "3"]);
    assert_eq!(b.get_run(late.run_id).await.unwrap(), Some(late));
    tdb.cleanup(&[]).await;
}

/// Through a scheduler: `run_now` of a job due tomorrow makes a manual run that executes
/// with its return value, without moving the job; the job's runs list it.
async fn scheduler_run_now(db: Db) {
    let Some(tdb) = TestDb::new(db, "lg_sched").await else {
        return;
    };
    let s = apsched::Scheduler::builder()
        .store("default", tdb.store())
        .scheduler_id("sched")
        .task("double", |n: i64| async move { Ok::<i64, String>(n * 2) })
        .build();
    s.start().await.unwrap();
    let tomorrow = chrono::Utc::now() + TimeDelta::days(1);
    s.add_task_job("double", 21)
        .trigger(apsched::trigger::Date::at(tomorrow, None).unwrap())
        .id("d")
        .await
        .unwrap();
    let run = s.job("d").run_now().await.unwrap();
    let done = tokio::time::timeout(Duration::from_secs(10), run.outcome())
        .await
        .expect("the run ends")
        .unwrap();
    assert_eq!(done.state, RunState::Executed, "{done:?}");
    assert!(done.manual);
    assert_eq!(done.output_as::<i64>(), Some(42));
    let runs = s.job("d").runs(RunFilter::new()).await.unwrap();
    assert_eq!(runs, [done]);
    let job = s.job("d").get().await.unwrap().unwrap();
    assert_eq!(
        job.next_run_time.map(|t| t.timestamp_micros()),
        Some(tomorrow.timestamp_micros())
    );
    s.shutdown().await.unwrap();
    tdb.cleanup(&[]).await;
}

/// The ledger contract of `apsched::store::testing`, each namespace a table of its own
/// (shared by the schedulers the suite opens on it).
async fn ledger_contract(db: Db) {
    let Some(tdb) = TestDb::new(db, "lg_contract").await else {
        return;
    };
    let tables = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let (tdb, tables) = (&tdb, tables.clone());
        suite::ledger_contract(
            move |namespace: String, ctx| {
                let store = tdb.store_on(&namespace);
                let mut seen = tables.lock().unwrap();
                if !seen.contains(&namespace) {
                    seen.push(namespace);
                }
                async move {
                    store.start(ctx).await.expect("start");
                    store
                }
            },
            true,
        )
        .await;
    }
    let tables = tables.lock().unwrap().clone();
    tdb.cleanup(&tables).await;
}

macro_rules! on_every_db {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Db::Sqlite).await;
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Db::Postgres).await;
            })*
        }
        mod mysql {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Db::MySql).await;
            })*
        }
    };
}

on_every_db!(
    ledger_contract,
    scheduler_run_now,
    claim_start_finish,
    outcomes_keep_their_text,
    query_filters,
    manual_runs,
    takeover,
    queue_cancel_promote,
    retention,
    one_record_per_slot,
    unreadable_run,
    claim_and_records_are_atomic,
    upgrade_from_version_1,
    upgrade_from_version_2,
);
