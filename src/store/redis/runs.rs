//! The run ledger's write path on Redis: what the claim reads and writes for its run
//! records, starting and finishing runs, manual runs and retries. The periodic pass is in
//! `runs_tick.rs`, reading runs in `runs_query.rs`, the keys in `runs_layout.rs` and the
//! scripts in `runs_scripts.rs`.
//!
//! # Consistency with concurrent claims
//! The overlap rule counts a job's active runs, read before the claim script runs. Each
//! job has a stamp (`P:runs:stamps`), renewed by every script that gives the job an active
//! run or changes how one counts (a claim or manual run adding one, a start, a
//! promotion). The claim script and the manual-run script write only if the stamp is
//! still the one read with the active runs; otherwise the caller reads and plans again.
//! Runs that finish in between need no new stamp: counting them once more is safe.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use redis::{ScriptInvocation, Value};

use super::client::Client;
use super::layout::parse_version;
use super::runs_layout::{
    active_value, member, parse_member, run_fields, time_score, time_text, RunKeys,
};
use crate::error::{Error, Result};
use crate::job::RunId;
use crate::ledger::{plan_manual_runs, ActiveRuns, RunOutcome, RunRecord, RunState};
use crate::store::common::Reported;
use crate::sync::MutexExt;

/// How often a manual run is planned again when the job's runs keep changing under it.
const MANUAL_ATTEMPTS: usize = 16;

/// The ledger's state in one store: jobs whose ledger keys cannot be written (skipped by
/// the claim until a retry time), and unreadable runs already reported.
#[derive(Debug, Default)]
pub(super) struct RunsState {
    /// Job id → when the claim may try it again.
    blocked: Mutex<HashMap<String, DateTime<Utc>>>,
    /// Run key → fingerprint of the unreadable content reported.
    pub(super) reported: Reported,
    /// Job id → fingerprint of the unwritable-keys message reported.
    reported_blocked: Reported,
}

impl RunsState {
    /// When `job_id` may be claimed again, if its ledger keys were found unwritable.
    pub(super) fn blocked_until(&self, job_id: &str) -> Option<DateTime<Utc>> {
        let blocked = self.blocked.lock_unpoisoned();
        if blocked.is_empty() {
            return None;
        }
        blocked.get(job_id).copied()
    }

    /// Whether the claim skips `job_id` at `now`.
    pub(super) fn is_blocked(&self, job_id: &str, now: DateTime<Utc>) -> bool {
        self.blocked_until(job_id).is_some_and(|t| now < t)
    }

    /// Skips `job_id` in claims until `until`. Returns whether `message` is new for it
    /// (the caller reports it then).
    pub(super) fn block(&self, job_id: &str, until: DateTime<Utc>, message: &str) -> bool {
        self.blocked
            .lock_unpoisoned()
            .insert(job_id.to_string(), until);
        self.reported_blocked
            .note(job_id, crate::store::common::fingerprint(message, 0))
    }

    /// Claims `job_id` normally again (its claim was written).
    pub(super) fn unblock(&self, job_id: &str) {
        let mut blocked = self.blocked.lock_unpoisoned();
        if !blocked.is_empty() && blocked.remove(job_id).is_some() {
            self.reported_blocked.forget(job_id);
        }
    }
}

/// What a claim needs of a job's runs: its active runs and the stamp they were read with.
#[derive(Debug, Clone, Default)]
pub(super) struct ActiveRead {
    pub(super) active: ActiveRuns,
    /// `''` when the job has no stamp (no active runs).
    pub(super) stamp: String,
}

/// The active runs of a job from its `P:runs:active:<job>` hash.
fn parse_active(map: HashMap<String, String>) -> ActiveRuns {
    let mut active = ActiveRuns::new();
    for (m, v) in map {
        let Some(id) = parse_member(&m) else {
            continue;
        };
        let (state, queued) = match v.as_str() {
            "queued" => (RunState::Claimed, true),
            "started" => (RunState::Started, false),
            // Anything else counts as a running instance: over-counting is safe.
            _ => (RunState::Claimed, false),
        };
        active.push(id, state, queued);
    }
    active
}

/// Adds one new run's arguments (see `runs_scripts.rs`).
pub(super) fn push_run(inv: &mut ScriptInvocation<'_>, r: &RunRecord) {
    let fields = run_fields(r);
    inv.arg(member(r.run_id))
        .arg(time_score(r.scheduled))
        .arg(active_value(r.state, false))
        .arg(if r.queued { "1" } else { "0" })
        .arg(r.finished_at.map_or_else(String::new, time_score))
        .arg(fields.len());
    for (k, v) in fields {
        inv.arg(k).arg(v);
    }
}

/// Adds a claim's (or manual request's) runs and the runs it flags for cancellation.
pub(super) fn push_planned(inv: &mut ScriptInvocation<'_>, runs: &[RunRecord], cancel: &[RunId]) {
    inv.arg(runs.len());
    for r in runs {
        push_run(inv, r);
    }
    inv.arg(cancel.len());
    for id in cancel {
        inv.arg(member(*id));
    }
}

/// Converts one pipeline reply.
fn take<T: redis::FromRedisValue>(v: Option<Value>) -> redis::RedisResult<T> {
    Ok(redis::from_redis_value(v.unwrap_or(Value::Nil))?)
}

/// What the claim reads of a batch of jobs: documents, versions, leases and, with the
/// ledger, each job's active runs.
pub(super) type ClaimRead = (
    Vec<Option<String>>,
    Vec<Option<String>>,
    Vec<Option<String>>,
    Option<Vec<ActiveRead>>,
);

impl Client {
    pub(super) fn run_keys(&self) -> RunKeys {
        RunKeys::new(&self.prefix)
    }

    /// Reads documents, versions, leases and (when `with_runs`) the active runs and
    /// stamps of `ids` in one round trip.
    pub(super) async fn fetch_for_claim(
        &self,
        conn: &mut ConnectionManager,
        ids: &[String],
        with_runs: bool,
    ) -> Result<ClaimRead> {
        let k = self.keys();
        let rk = self.run_keys();
        let mut pipe = redis::pipe();
        // One job's unreadable ledger key must not fail the read of the others: replies are
        // checked one by one (that job's claim script then refuses it, naming the key).
        pipe.ignore_errors();
        pipe.cmd("HMGET").arg(&k.jobs).arg(ids);
        pipe.cmd("HMGET").arg(&k.versions).arg(ids);
        pipe.cmd("HMGET").arg(&k.leases).arg(ids);
        if with_runs {
            pipe.cmd("HMGET").arg(rk.stamps()).arg(ids);
            for id in ids {
                pipe.hgetall(rk.active(id));
            }
        }
        let read = async {
            let vals: Vec<Value> = pipe.query_async(conn).await?;
            let mut vals = vals.into_iter();
            let docs = take(vals.next())?;
            let versions = take(vals.next())?;
            let leases = take(vals.next())?;
            let runs = if with_runs {
                let stamps: Vec<Option<String>> = take(vals.next())?;
                let mut runs = Vec::with_capacity(ids.len());
                for stamp in stamps {
                    let active: HashMap<String, String> = take(vals.next()).unwrap_or_default();
                    runs.push(ActiveRead {
                        active: parse_active(active),
                        stamp: stamp.unwrap_or_default(),
                    });
                }
                Some(runs)
            } else {
                None
            };
            redis::RedisResult::Ok((docs, versions, leases, runs))
        };
        read.await.map_err(|e| self.state.err("reading jobs", e))
    }

    /// [`JobStore::start_runs`](crate::store::JobStore::start_runs): one script.
    pub(super) async fn start_runs(
        &self,
        run_ids: &[RunId],
        now: DateTime<Utc>,
    ) -> Result<Vec<RunId>> {
        if run_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = self.run_scripts.start.prepare_invoke();
        inv.arg(&self.run_keys().base)
            .arg(self.state.owner())
            .arg(time_text(now));
        for id in run_ids {
            inv.arg(member(*id));
        }
        let mut conn = self.conn().await?;
        let started: Vec<String> = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.state.err("starting runs", e))?;
        Ok(started.iter().filter_map(|m| parse_member(m)).collect())
    }

    /// [`JobStore::finish_runs`](crate::store::JobStore::finish_runs): one script.
    pub(super) async fn finish_runs(&self, outcomes: &[RunOutcome]) -> Result<()> {
        // An outcome names a terminal state; anything else is not an outcome to record.
        let outcomes: Vec<&RunOutcome> =
            outcomes.iter().filter(|o| o.state.is_terminal()).collect();
        if outcomes.is_empty() {
            return Ok(());
        }
        let keep = self
            .state
            .ctx()
            .map(|c| c.run_retention())
            .unwrap_or_default()
            .per_job;
        let mut inv = self.run_scripts.finish.prepare_invoke();
        inv.arg(&self.run_keys().base).arg(keep);
        let flag = |b: bool| if b { '1' } else { '0' };
        for o in outcomes {
            let has: String = [
                flag(o.started_at.is_some()),
                flag(o.error.is_some()),
                flag(o.output.is_some()),
            ]
            .iter()
            .collect();
            inv.arg(member(o.run_id))
                .arg(o.state.as_str())
                .arg(time_text(o.finished_at))
                .arg(time_score(o.finished_at))
                .arg(has)
                .arg(o.started_at.map_or_else(String::new, time_text))
                .arg(o.error.as_deref().unwrap_or(""))
                .arg(o.output.as_deref().unwrap_or(""));
        }
        let mut conn = self.conn().await?;
        let _: i64 = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.state.err("recording run outcomes", e))?;
        Ok(())
    }

    /// [`JobStore::add_runs`](crate::store::JobStore::add_runs): one script, which
    /// writes each record as the claim writes one and keeps any already stored (by run id,
    /// or for a scheduled run by job, scheduled time and attempt).
    pub(super) async fn add_runs(&self, runs: &[RunRecord]) -> Result<()> {
        if runs.is_empty() {
            return Ok(());
        }
        let mut inv = self.run_scripts.add.prepare_invoke();
        inv.arg(&self.run_keys().base);
        for r in runs {
            let slot = if r.manual {
                String::new()
            } else {
                time_text(r.scheduled)
            };
            inv.arg(r.job_id.as_bytes())
                .arg(r.owner.as_bytes())
                .arg(slot)
                .arg(r.attempt.to_string());
            push_run(&mut inv, r);
        }
        let mut conn = self.conn().await?;
        let _: i64 = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.state.err("recording retries", e))?;
        Ok(())
    }

    /// [`JobStore::add_manual_runs`](crate::store::JobStore::add_manual_runs): reads the
    /// job and its active runs, plans, and writes with one script that checks that
    /// neither changed (planning again when one did).
    pub(super) async fn add_manual_runs(
        &self,
        job_id: &str,
        slots: &[DateTime<Utc>],
        now: DateTime<Utc>,
    ) -> Result<Vec<RunRecord>> {
        let Some(ctx) = self.state.ctx() else {
            return Err(Error::store_not_started());
        };
        let k = self.keys();
        let rk = self.run_keys();
        let mut conn = self.conn().await?;
        for _ in 0..MANUAL_ATTEMPTS {
            let (doc, version, stamp, active): (
                Option<String>,
                Option<String>,
                Option<String>,
                HashMap<String, String>,
            ) = redis::pipe()
                .hget(&k.jobs, job_id)
                .hget(&k.versions, job_id)
                .hget(rk.stamps(), job_id)
                .hgetall(rk.active(job_id))
                .query_async(&mut conn)
                .await
                .map_err(|e| self.state.err("reading a job's runs", e))?;
            let Some(doc) = doc else {
                return Err(Error::JobLookup(job_id.to_string()));
            };
            let version = parse_version(version);
            let job = self
                .state
                .decode(job_id, &doc, version, None)
                .map_err(|u| Error::CorruptJob {
                    id: job_id.to_string(),
                    reason: u.reason,
                })?;
            let (runs, cancel) = plan_manual_runs(&job, slots, &ctx, now, &parse_active(active));
            let mut inv = self.run_scripts.manual.prepare_invoke();
            inv.key(&k.jobs)
                .key(&k.versions)
                .arg(&rk.base)
                .arg(ctx.scheduler_id())
                .arg(job_id)
                .arg(version.to_string())
                .arg(stamp.unwrap_or_default());
            push_planned(&mut inv, &runs, &cancel);
            let r: i64 = inv
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.state.err("recording manual runs", e))?;
            match r {
                1 => return Ok(runs),
                0 => return Err(Error::JobLookup(job_id.to_string())),
                // The job or its runs changed since they were read: plan again.
                _ => continue,
            }
        }
        Err(Error::Store {
            store: self.state.alias(),
            message: format!(
                "job '{job_id}' kept changing while its manual runs were planned \
                 ({MANUAL_ATTEMPTS} attempts); try again"
            ),
            source: None,
        })
    }
}
