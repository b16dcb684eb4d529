//! The chaos test (issue 9): three scheduler processes share one PostgreSQL table for 60 s,
//! 100 jobs every second. Each process reaches the database through its own TCP proxy, which
//! cuts all its connections and restores them at random moments; one process is SIGKILLed
//! at a random moment. Afterwards:
//!
//! - no (job, scheduled time) was submitted twice;
//! - every slot was submitted, except in the two windows docs/stores.md ("What sharing
//!   guarantees") names: (1) the killed process's claims from its last claim that reached
//!   its log on (claimed, then killed before starting the runs); (2) claims that committed
//!   while the claimer's call failed (the connection was cut during the commit), of which a
//!   process can have at most as many as it logged failed claims;
//! - a slot submitted by another process than its claimer's is counted and reported: the
//!   run ledger's takeover of claimed runs never started, after the killed process died or
//!   while a process was cut off from the database past its lease (docs/ledger.md).
//!
//! Which claim took which slot comes from the database itself: a trigger records every
//! change of a job's next run time with its transaction and the claimer's
//! `application_name`. So a lost slot is traced to the one claim that advanced the job past
//! it, and judged by who made that claim and whether any of it reached the claimer. No
//! timing thresholds: the verdict is counts and invariants.
//!
//! The processes are the multi-process test's workers (`multiprocess::multiprocess_worker`).

#![cfg(feature = "postgres")]

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use apsched::store::JobStore;
use apsched::store::SqlStore;
use chrono::{DateTime, TimeDelta, Utc};
use rand::Rng;

use crate::multiprocess::{
    add_jobs, failed_claims, finish, kill_busiest, read_logs, spawn_worker, Plan,
};
use crate::sql::{via_proxy, Proxy};
use crate::{sql_raw, suite};

/// One committed change of a job's next run time, from the audit table.
struct Change {
    tx: i64,
    process: Option<usize>,
    job: String,
    /// µs; the change took every slot from `old` up to (not including) `new`, or every
    /// slot from `old` on if the claim removed the exhausted job.
    old: i64,
    new: Option<i64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_postgres() {
    let Some(target) = crate::sql::chaos_target().await else {
        return;
    };
    let plan = target.plan.clone();
    let _turn = crate::multiprocess::PROCESS_TESTS.lock().await;
    let dir = std::env::temp_dir().join(format!("apsched-chaos-{}", suite::unique_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let result = run(&plan, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    target.cleanup.await;
    match result {
        Ok(report) => eprintln!("{report}"),
        Err(report) => panic!("{report}"),
    }
}

/// The audit table and its trigger on the job table (names derived from the table's).
fn audit_sql(t: &str) -> [String; 3] {
    [
        format!(
            "CREATE TABLE {t}_audit (seq BIGSERIAL PRIMARY KEY, tx BIGINT NOT NULL, \
             app TEXT NOT NULL, id TEXT NOT NULL, old_nrt BIGINT, new_nrt BIGINT, \
             deleted BOOLEAN NOT NULL)"
        ),
        format!(
            "CREATE OR REPLACE FUNCTION {t}_audit_fn() RETURNS trigger AS $$ BEGIN \
             IF TG_OP = 'DELETE' THEN \
               INSERT INTO {t}_audit (tx, app, id, old_nrt, new_nrt, deleted) VALUES \
               (txid_current(), current_setting('application_name'), OLD.id, \
                OLD.next_run_time, NULL, TRUE); \
               RETURN OLD; \
             END IF; \
             IF OLD.next_run_time IS DISTINCT FROM NEW.next_run_time THEN \
               INSERT INTO {t}_audit (tx, app, id, old_nrt, new_nrt, deleted) VALUES \
               (txid_current(), current_setting('application_name'), NEW.id, \
                OLD.next_run_time, NEW.next_run_time, FALSE); \
             END IF; \
             RETURN NEW; END $$ LANGUAGE plpgsql"
        ),
        format!(
            "CREATE TRIGGER {t}_audit_tr AFTER UPDATE OR DELETE ON {t} FOR EACH ROW \
             EXECUTE FUNCTION {t}_audit_fn()"
        ),
    ]
}

async fn run(plan: &Plan, dir: &Path) -> Result<String, String> {
    let t = plan.namespace.as_str();
    let lease = Duration::from_secs(plan.lease_secs);
    // The parent's own store: straight to the server, never cut.
    let store = SqlStore::new(&plan.url).unwrap().with_table(t);
    store
        .start(suite::context("default", "parent", lease))
        .await
        .map_err(|e| format!("start: {e}"))?;
    for sql in audit_sql(t) {
        sql_raw::execute(&plan.url, &sql).await;
    }
    let result = run_with_audit(plan, dir, &store).await;
    sql_raw::execute(&plan.url, &format!("DROP TABLE IF EXISTS {t}_audit")).await;
    let _ = store.drop_tables().await;
    sql_raw::execute(
        &plan.url,
        &format!("DROP FUNCTION IF EXISTS {t}_audit_fn()"),
    )
    .await;
    result
}

async fn run_with_audit(plan: &Plan, dir: &Path, store: &SqlStore) -> Result<String, String> {
    let t = plan.namespace.as_str();
    let app = |p: usize| format!("{t}_w{p}");
    let first = DateTime::from_timestamp(Utc::now().timestamp() + 3, 0).unwrap();
    let end = first + TimeDelta::seconds(plan.secs);
    add_jobs(store, plan, first)
        .await
        .map_err(|e| format!("adding the jobs: {e}"))?;

    // One proxy per process, so that each is cut on its own.
    let (_, upstream) = via_proxy(&plan.url, 0);
    let mut proxies = Vec::new();
    let mut children = Vec::new();
    for p in 0..plan.processes {
        let proxy = Proxy::start(upstream.clone()).await;
        let (url, _) = via_proxy(&plan.url, proxy.port);
        let sep = if url.contains('?') { '&' } else { '?' };
        let url = format!("{url}{sep}application_name={}", app(p));
        proxies.push(proxy);
        children.push(spawn_worker(plan, &url, p, dir)?);
    }

    // The chaos: each proxy, independently, stays up 0.5–4 s, then down 0.1–2 s, until the
    // end; one process is killed at a random moment between +15 s and +45 s.
    let chaos_until = end;
    let cutters: Vec<_> = proxies
        .into_iter()
        .map(|proxy| {
            tokio::spawn(async move {
                let mut cuts = 0usize;
                loop {
                    let (up, down) = {
                        let mut rng = rand::rng();
                        (rng.random_range(500..4000), rng.random_range(100..2000))
                    };
                    tokio::time::sleep(Duration::from_millis(up)).await;
                    if Utc::now() >= chaos_until {
                        break;
                    }
                    proxy.set_up(false);
                    cuts += 1;
                    tokio::time::sleep(Duration::from_millis(down)).await;
                    proxy.set_up(true);
                }
                (proxy, cuts)
            })
        })
        .collect();

    let kill_at = first + TimeDelta::milliseconds(rand::rng().random_range(15_000..45_000));
    tokio::time::sleep((kill_at - Utc::now()).to_std().unwrap_or_default()).await;
    let (victim, killed_at) = kill_busiest(&mut children, dir).await;

    let mut proxies = Vec::new();
    let mut cuts = 0;
    for c in cutters {
        let (proxy, n) = c.await.unwrap();
        proxy.set_up(true);
        cuts += n;
        proxies.push(proxy);
    }

    finish(store, end, &mut children, victim, dir).await?;
    drop(proxies);

    // What the database committed.
    let rows = sql_raw::query_text(
        &plan.url,
        &format!(
            "SELECT concat_ws(' ', tx, app, id, old_nrt, COALESCE(new_nrt, -1)) \
             FROM {t}_audit ORDER BY seq"
        ),
    )
    .await;
    let changes: Vec<Change> = rows
        .iter()
        .filter_map(|r| {
            let f: Vec<&str> = r.split(' ').collect();
            let [tx, app_name, job, old, new] = f[..] else {
                return None;
            };
            Some(Change {
                tx: tx.parse().ok()?,
                process: (0..plan.processes).find(|&p| app(p) == app_name),
                job: job.to_string(),
                old: old.parse().ok()?,
                new: new.parse().ok().filter(|&n: &i64| n >= 0),
            })
        })
        .collect();
    judge(plan, dir, &changes, first, victim, killed_at, cuts)
}

/// The verdict: `Ok(report)` or `Err(report + problems)`.
fn judge(
    plan: &Plan,
    dir: &Path,
    changes: &[Change],
    first: DateTime<Utc>,
    victim: usize,
    killed_at: DateTime<Utc>,
    cuts: usize,
) -> Result<String, String> {
    let lines = read_logs(dir, plan.processes);
    let failed = failed_claims(dir, plan.processes);
    // (job, slot ms) -> the processes that submitted it, and when they logged it.
    let mut runs: HashMap<(&str, i64), Vec<(usize, i64)>> = HashMap::new();
    for l in &lines {
        runs.entry((&l.job, l.scheduled))
            .or_default()
            .push((l.process, l.logged));
    }
    let duplicates: Vec<_> = runs.iter().filter(|(_, p)| p.len() > 1).collect();

    // Claims (transactions), in commit order, with how many of their slots were submitted.
    let mut by_job: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut claim_order: BTreeMap<i64, usize> = BTreeMap::new(); // tx -> first seq
    for (i, c) in changes.iter().enumerate() {
        by_job.entry(&c.job).or_default().push(i);
        claim_order.entry(c.tx).or_insert(i);
    }
    let slots_of = |c: &Change| {
        (0..plan.secs)
            .map(|s| first + TimeDelta::seconds(s))
            .filter(|t| {
                let us = t.timestamp_micros();
                us >= c.old && c.new.is_none_or(|n| us < n)
            })
            .collect::<Vec<_>>()
    };
    // Claims with a slot submitted by anyone, and by the claimer itself.
    let mut submitted_in: HashMap<i64, usize> = HashMap::new();
    let mut reached_claimer = std::collections::HashSet::new();
    let mut problems = Vec::new();
    // Slots started by another process than their claimer's: the run ledger's takeover of
    // an owner whose heartbeat lapsed, dead (the victim, after the kill) or cut off from the
    // database for longer than its lease. Not a duplicate: the claimer's start of a run
    // taken over is refused by the store (the duplicate check above would see it).
    let (mut from_killed, mut from_cut_off) = (0, 0);
    let killed_ms = killed_at.timestamp_millis();
    for c in changes {
        for t in slots_of(c) {
            let Some(ps) = runs.get(&(c.job.as_str(), t.timestamp_millis())) else {
                continue;
            };
            *submitted_in.entry(c.tx).or_default() += 1;
            match c.process {
                Some(p) if ps.iter().any(|&(q, _)| q == p) => {
                    reached_claimer.insert(c.tx);
                }
                Some(p) if p == victim && ps.iter().all(|&(_, logged)| logged >= killed_ms) => {
                    from_killed += 1;
                }
                Some(_) => from_cut_off += 1,
                None => {}
            }
        }
    }
    // The victim's last claim that reached its log: from there on its claims may be lost.
    let victim_last = changes
        .iter()
        .filter(|c| c.process == Some(victim) && reached_claimer.contains(&c.tx))
        .map(|c| claim_order[&c.tx])
        .max();

    let (mut lost_killed, mut unexplained) = (0, Vec::new());
    let mut orphan_claims: Vec<std::collections::HashSet<i64>> =
        vec![Default::default(); plan.processes];
    let mut total = 0;
    for i in 0..plan.jobs {
        let job = format!("mp{i:04}");
        for s in 0..plan.secs {
            total += 1;
            let t = first + TimeDelta::seconds(s);
            if runs.contains_key(&(job.as_str(), t.timestamp_millis())) {
                continue;
            }
            let us = t.timestamp_micros();
            let claim = by_job.get(job.as_str()).and_then(|ix| {
                ix.iter()
                    .map(|&i| &changes[i])
                    .find(|c| us >= c.old && c.new.is_none_or(|n| us < n))
            });
            let Some(c) = claim else {
                unexplained.push(format!("{job}@+{s}s: never claimed"));
                continue;
            };
            let Some(p) = c.process else {
                unexplained.push(format!("{job}@+{s}s: claimed by an unknown connection"));
                continue;
            };
            let reached = submitted_in.contains_key(&c.tx);
            if p == victim && victim_last.is_none_or(|last| claim_order[&c.tx] >= last) {
                lost_killed += 1; // window 1
            } else if !reached {
                orphan_claims[p].insert(c.tx); // window 2, if p logged a failed claim for it
            } else {
                unexplained.push(format!(
                    "{job}@+{s}s: claimed by w{p} in a claim whose other slots ran"
                ));
            }
        }
    }
    let lost_cut: usize = changes
        .iter()
        .filter(|c| c.process.is_some_and(|p| orphan_claims[p].contains(&c.tx)))
        .map(|c| slots_of(c).len())
        .sum();
    for p in 0..plan.processes {
        if orphan_claims[p].len() > failed[p] {
            problems.push(format!(
                "w{p}: {} committed claims never reached it, but only {} of its claims failed",
                orphan_claims[p].len(),
                failed[p]
            ));
        }
    }
    if !duplicates.is_empty() {
        problems.push(format!(
            "slots submitted twice, e.g. {:?}",
            &duplicates[..duplicates.len().min(5)]
        ));
    }
    if !unexplained.is_empty() {
        problems.push(format!(
            "{} slots lost outside the documented windows, e.g. {:?}",
            unexplained.len(),
            &unexplained[..unexplained.len().min(5)]
        ));
    }
    let report = format!(
        "{}: {} jobs x {} s on {} processes, {cuts} connection cuts, w{victim} killed at \
         +{:.1} s; {total} slots, {} submitted ({from_killed} of the killed process's claims \
         and {from_cut_off} of a process cut off past its lease by the process that took its \
         runs over), {} duplicates; lost: {lost_killed} in the \
         killed process's last claims, {lost_cut} in {} claims committed while their call \
         failed (failed claims per process: {failed:?}), {} elsewhere",
        plan.label,
        plan.jobs,
        plan.secs,
        plan.processes,
        (killed_at - first).num_milliseconds() as f64 / 1000.0,
        runs.len(),
        duplicates.len(),
        orphan_claims.iter().map(|o| o.len()).sum::<usize>(),
        unexplained.len(),
    );
    if problems.is_empty() {
        Ok(report)
    } else {
        Err(format!("{report}\n  {}", problems.join("\n  ")))
    }
}

/// The verdict itself, on made-up logs and claims: 2 jobs x 3 slots, w0 killed.
#[test]
fn judging_lost_slots() {
    let plan = Plan {
        label: "judge".into(),
        url: String::new(),
        namespace: String::new(),
        processes: 2,
        jobs: 2,
        secs: 3,
        kill_at: 0,
        lease_secs: 3,
    };
    let first = DateTime::from_timestamp(1_000, 0).unwrap();
    let us = |s: i64| (first + TimeDelta::seconds(s)).timestamp_micros();
    let ms = |s: i64| (first + TimeDelta::seconds(s)).timestamp_millis();
    // Each job is claimed slot by slot: tx = 10 * slot + job; slot 2 removes the job.
    let claims = |who: &dyn Fn(i64, usize) -> usize| -> Vec<Change> {
        let mut v = Vec::new();
        for s in 0..3 {
            for j in 0..2 {
                v.push(Change {
                    tx: 10 * s + j as i64,
                    process: Some(who(s, j)),
                    job: format!("mp{j:04}"),
                    old: us(s),
                    new: (s < 2).then(|| us(s + 1)),
                });
            }
        }
        v
    };
    // The verdict with w0 killed at `killed_at`.
    let verdict_killed_at = |changes: &[Change], logs: [&str; 2], killed_at| {
        let dir = std::env::temp_dir().join(format!("apsched-judge-{}", suite::unique_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        for (p, log) in logs.iter().enumerate() {
            std::fs::write(dir.join(format!("w{p}.log")), log).unwrap();
        }
        let r = judge(&plan, &dir, changes, first, 0, killed_at, 0);
        let _ = std::fs::remove_dir_all(&dir);
        r
    };
    let verdict = |changes: &[Change], logs: [&str; 2]| verdict_killed_at(changes, logs, first);
    let line = |job: usize, s: i64, p: usize| format!("mp{job:04} {} w{p} 0\n", ms(s));
    let logs_of = |p: usize, slots: &[(usize, i64)]| -> String {
        slots.iter().map(|&(j, s)| line(j, s, p)).collect()
    };

    // w0 claims slot 0 and 1, w1 slot 2; everything ran: fine.
    let changes = claims(&|s, _| usize::from(s == 2));
    let w0 = logs_of(0, &[(0, 0), (1, 0), (0, 1), (1, 1)]);
    let w1 = logs_of(1, &[(0, 2), (1, 2)]);
    assert!(verdict(&changes, [&w0, &w1]).is_ok());

    // Window 1: w0 (killed) never ran its last claims: fine.
    let w0_cut = logs_of(0, &[(0, 0), (1, 0), (0, 1)]);
    assert!(verdict(&changes, [&w0_cut, &w1]).is_ok());
    // ...but an earlier claim of w0 that did not run, after a later one did: lost.
    let w0_hole = logs_of(0, &[(1, 0), (0, 1), (1, 1)]);
    let r = verdict(&changes, [&w0_hole, &w1]);
    assert!(
        r.as_ref()
            .is_err_and(|e| e.contains("claims never reached")),
        "{r:?}"
    );
    // ...unless w0 had a failed claim to account for it (window 2).
    let w0_hole_failed = format!("{w0_hole}!error claim\n");
    assert!(verdict(&changes, [&w0_hole_failed, &w1]).is_ok());

    // Window 2 for a survivor: w1's claim of job 1 at slot 2 never reached it.
    let w1_cut = logs_of(1, &[(0, 2)]);
    let r = verdict(&changes, [&w0, &w1_cut]);
    assert!(
        r.as_ref()
            .is_err_and(|e| e.contains("w1: 1 committed claims")),
        "{r:?}"
    );
    let w1_cut_failed = format!("{w1_cut}!error claim\n");
    assert!(verdict(&changes, [&w0, &w1_cut_failed]).is_ok());

    // A claim of both jobs in one transaction of which only one ran: lost, whatever failed.
    let mut one_tx = claims(&|s, _| usize::from(s == 2));
    for c in one_tx.iter_mut().filter(|c| c.old == us(2)) {
        c.tx = 99;
    }
    let r = verdict(&one_tx, [&w0, &w1_cut_failed]);
    assert!(
        r.as_ref().is_err_and(|e| e.contains("other slots ran")),
        "{r:?}"
    );

    // w0 (killed at +1 s) claimed slot 1; w1 took its runs over and ran them after the
    // kill, or before it (w0 was cut off from the database past its lease): fine, and
    // reported.
    let w0_killed = logs_of(0, &[(0, 0), (1, 0)]);
    let kill = first + TimeDelta::seconds(1);
    // w1's log with slot 1 of both jobs logged `offset_ms` after the kill.
    let w1_took_at = |offset_ms: i64| {
        let at = kill.timestamp_millis() + offset_ms;
        let took: String = (0..2)
            .map(|job| format!("mp{job:04} {} w1 {at}\n", ms(1)))
            .collect();
        format!("{took}{w1}")
    };
    for (offset_ms, counts) in [
        (500, "(2 of the killed process's claims and 0 of"),
        (-500, "(0 of the killed process's claims and 2 of"),
    ] {
        let r = verdict_killed_at(&changes, [&w0_killed, &w1_took_at(offset_ms)], kill);
        assert!(r.as_ref().is_ok_and(|r| r.contains(counts)), "{r:?}");
    }

    // A slot run by both: a duplicate.
    let w1_dup = format!("{w1}{}", line(0, 1, 1));
    let r = verdict(&changes, [&w0, &w1_dup]);
    assert!(
        r.as_ref().is_err_and(|e| e.contains("submitted twice")),
        "{r:?}"
    );
}
