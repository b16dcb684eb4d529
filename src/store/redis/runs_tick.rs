//! The run ledger's periodic pass on Redis
//! ([`JobStore::tick_runs`](crate::store::JobStore::tick_runs)): the heartbeat, taking over
//! the runs of schedulers that stopped, promoting queued runs, the runs to cancel, and
//! retention.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;

use super::client::Client;
use super::layout::from_score;
use super::runs_layout::{parse_member, time_score, time_text};
use crate::error::Result;
use crate::job::StoredJob;
use crate::ledger::{RunRecord, RunTick};
use crate::store::common::{lease_until, micros_ceil};
use crate::store::StoreContext;

/// The most finished runs one pass deletes (retention never holds the loop up for long).
const PRUNE_BUDGET: usize = 1000;

/// The most jobs over their retention count one pass looks at.
const PRUNE_JOBS: usize = 64;

/// How long a heartbeat of a scheduler that stopped is kept (after it ran out), so that
/// the error of its abandoned runs can say since when it was silent.
const HEARTBEAT_MEMORY: chrono::TimeDelta = chrono::TimeDelta::days(1);

/// What the start of the pass found (see `TICK_SCRIPT`).
type Scan = (Vec<String>, Vec<String>, Vec<String>);

impl Client {
    /// [`JobStore::tick_runs`](crate::store::JobStore::tick_runs).
    pub(super) async fn tick_runs(&self, now: DateTime<Utc>) -> Result<RunTick> {
        let Some(ctx) = self.state.ctx() else {
            return Ok(RunTick::default());
        };
        let me = ctx.scheduler_id().to_string();
        let rk = self.run_keys();
        let mut conn = self.conn().await?;
        let now_us = micros_ceil(now);
        let forget_before = now
            .checked_sub_signed(HEARTBEAT_MEMORY)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let (owners, cancel, queued_jobs): Scan = self
            .run_scripts
            .tick
            .arg(&rk.base)
            .arg(&me)
            .arg(time_score(lease_until(now, ctx.lease())))
            .arg(time_score(forget_before))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.state.err("recording this scheduler's heartbeat", e))?;

        let (dispatch, abandoned) = self.take_over(&mut conn, &me, now, now_us, &owners).await?;
        let promoted = if queued_jobs.is_empty() {
            Vec::new()
        } else {
            self.promote(&mut conn, &ctx, &queued_jobs).await?
        };
        let tick = RunTick {
            promoted: self
                .read_runs(&mut conn, &promoted)
                .await?
                .into_iter()
                .flatten()
                .collect(),
            dispatch: self
                .read_runs(&mut conn, &dispatch)
                .await?
                .into_iter()
                .flatten()
                .collect(),
            abandoned: self
                .read_runs(&mut conn, &abandoned)
                .await?
                .into_iter()
                .flatten()
                .collect(),
            cancel: cancel.iter().filter_map(|m| parse_member(m)).collect(),
        };
        self.prune(&mut conn, &ctx, now).await?;
        Ok(tick)
    }

    /// [`JobStore::heartbeat`](crate::store::JobStore::heartbeat): this scheduler is alive
    /// until `now + lease` (its score in `P:heartbeats`; the pass's script writes it too).
    pub(super) async fn heartbeat(&self, now: DateTime<Utc>) -> Result<()> {
        let Some(ctx) = self.state.ctx() else {
            return Ok(());
        };
        let mut conn = self.conn().await?;
        let _: i64 = redis::cmd("ZADD")
            .arg(&self.run_keys().heartbeats)
            .arg(time_score(lease_until(now, ctx.lease())))
            .arg(ctx.scheduler_id())
            .query_async(&mut conn)
            .await
            .map_err(|e| self.state.err("recording this scheduler's heartbeat", e))?;
        Ok(())
    }

    /// Takes over the runs of the schedulers in `owners` (pairs of id and heartbeat score)
    /// that are not alive at `now`. Returns the members to dispatch and the members
    /// abandoned.
    async fn take_over(
        &self,
        conn: &mut ConnectionManager,
        me: &str,
        now: DateTime<Utc>,
        now_us: i64,
        owners: &[String],
    ) -> Result<(Vec<String>, Vec<String>)> {
        let dead: Vec<(&String, &String)> = owners
            .chunks_exact(2)
            .map(|p| (&p[0], &p[1]))
            .filter(|(o, s)| {
                o.as_str() != me
                    && (s.is_empty() || s.parse::<f64>().is_ok_and(|s| s < now_us as f64))
            })
            .collect();
        if dead.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let mut inv = self.run_scripts.takeover.prepare_invoke();
        inv.arg(&self.run_keys().base)
            .arg(me)
            .arg(time_score(now))
            .arg(time_text(now));
        for (o, s) in dead {
            let alive_until =
                (!s.is_empty()).then(|| s.parse::<f64>().map(from_score).unwrap_or(now));
            inv.arg(o)
                .arg(s)
                .arg(crate::ledger::abandoned_error(o, alive_until));
        }
        inv.invoke_async(conn).await.map_err(|e| {
            self.state
                .err("taking over the runs of stopped schedulers", e)
        })
    }

    /// Promotes the oldest queued runs of `jobs` that have a free instance. Returns the
    /// members promoted.
    async fn promote(
        &self,
        conn: &mut ConnectionManager,
        ctx: &StoreContext,
        jobs: &[String],
    ) -> Result<Vec<String>> {
        let k = self.keys();
        let rk = self.run_keys();
        let mut pipe = redis::pipe();
        // A job whose active runs cannot be read is left out, not the whole pass.
        pipe.ignore_errors();
        pipe.cmd("HMGET").arg(&k.jobs).arg(jobs);
        pipe.cmd("HMGET").arg(rk.stamps()).arg(jobs);
        for j in jobs {
            pipe.hgetall(rk.active(j));
        }
        let mut read: Vec<redis::Value> = pipe
            .query_async(conn)
            .await
            .map_err(|e| self.state.err("reading queued runs", e))?;
        let actives = read.split_off(2.min(read.len()));
        let mut read = read.into_iter();
        let parse = |v: Option<redis::Value>| -> Result<Vec<Option<String>>> {
            redis::from_redis_value(v.unwrap_or(redis::Value::Nil))
                .map_err(|e| self.state.err("reading queued runs", e))
        };
        let docs = parse(read.next())?;
        let stamps = parse(read.next())?;
        // Per job: its stamp, how many instances are free, its queued members.
        let mut plans: Vec<(&String, String, usize, Vec<String>)> = Vec::new();
        for (((job, doc), stamp), active) in jobs.iter().zip(docs).zip(stamps).zip(actives) {
            let Ok(active) = redis::from_redis_value::<HashMap<String, String>>(active) else {
                continue;
            };
            let max = doc
                .and_then(|d| serde_json::from_str::<StoredJob>(&d).ok())
                .map_or(1, |j| j.max_instances) as usize;
            let mut queued = Vec::new();
            let mut running = 0;
            for (m, v) in active {
                if v == "queued" {
                    queued.push(m);
                } else if !parse_member(&m).is_some_and(|id| ctx.is_finishing(id)) {
                    running += 1;
                }
            }
            let free = max.saturating_sub(running);
            // A job without queued runs is passed with none, so that it leaves the set.
            if queued.is_empty() || free > 0 {
                plans.push((job, stamp.unwrap_or_default(), free, queued));
            }
        }
        // The queue's order: scheduled time, submission time, run id.
        let mut to_order: Vec<String> = Vec::new();
        for (_, _, free, queued) in &plans {
            if queued.len() > *free {
                to_order.extend(queued.iter().cloned());
            }
        }
        let order: HashMap<String, RunRecord> = to_order
            .iter()
            .cloned()
            .zip(self.read_runs(conn, &to_order).await?)
            .filter_map(|(m, r)| Some((m, r?)))
            .collect();
        let mut inv = self.run_scripts.promote.prepare_invoke();
        inv.arg(&rk.base).arg(ctx.scheduler_id());
        for (job, stamp, free, mut queued) in plans {
            if queued.len() > free {
                // Runs that did not parse were reported; they are not promoted.
                queued.retain(|m| order.contains_key(m));
                queued.sort_by_key(|m| {
                    let r = &order[m];
                    (r.scheduled, r.submitted_at, r.run_id)
                });
                queued.truncate(free);
            }
            inv.arg(job).arg(stamp).arg(queued.len());
            for m in queued {
                inv.arg(m);
            }
        }
        inv.invoke_async(conn)
            .await
            .map_err(|e| self.state.err("promoting queued runs", e))
    }

    /// Deletes finished runs beyond the retention: the oldest of the jobs with more than
    /// `per_job` finished runs, and those finished before the age limit; at most
    /// [`PRUNE_BUDGET`] per pass.
    async fn prune(
        &self,
        conn: &mut ConnectionManager,
        ctx: &StoreContext,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let retention = ctx.run_retention();
        let rk = self.run_keys();
        let mut pipe = redis::pipe();
        pipe.cmd("ZRANGE")
            .arg(&rk.done_count)
            .arg(format!("({}", retention.per_job))
            .arg("+inf")
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg(0)
            .arg(PRUNE_JOBS)
            .arg("WITHSCORES");
        let cutoff = retention.cutoff(now);
        if let Some(c) = cutoff {
            // Exclusive of the rounded-up cutoff: only runs finished before it.
            pipe.cmd("ZRANGE")
                .arg(&rk.finished)
                .arg("-inf")
                .arg(format!("({}", time_score(c)))
                .arg("BYSCORE")
                .arg("LIMIT")
                .arg(0)
                .arg(PRUNE_BUDGET);
        }
        let err = |e| self.state.err("reading runs beyond the retention", e);
        let (over, old): (Vec<(String, f64)>, Vec<String>) = if cutoff.is_some() {
            pipe.query_async(&mut *conn).await.map_err(err)?
        } else {
            let (over,): (Vec<(String, f64)>,) = pipe.query_async(&mut *conn).await.map_err(err)?;
            (over, Vec::new())
        };
        // (member, job) pairs; the age limit's runs come with their job unknown.
        let mut doomed: Vec<(String, String)> = Vec::new();
        let mut budget = PRUNE_BUDGET;
        if !over.is_empty() {
            let mut pipe = redis::pipe();
            let mut asked = Vec::new();
            for (job, count) in &over {
                let excess = (*count as usize)
                    .saturating_sub(retention.per_job)
                    .min(budget);
                if excess == 0 {
                    break;
                }
                budget -= excess;
                pipe.cmd("ZRANGE").arg(rk.done(job)).arg(0).arg(excess - 1);
                asked.push(job);
            }
            let lists: Vec<Vec<String>> = pipe
                .query_async(&mut *conn)
                .await
                .map_err(|e| self.state.err("reading runs beyond the retention", e))?;
            for (job, list) in asked.into_iter().zip(lists) {
                doomed.extend(list.into_iter().map(|m| (m, job.clone())));
            }
        }
        doomed.extend(old.into_iter().take(budget).map(|m| (m, String::new())));
        if doomed.is_empty() {
            return Ok(());
        }
        let mut inv = self.run_scripts.prune.prepare_invoke();
        inv.arg(&rk.base);
        for (m, job) in &doomed {
            inv.arg(m).arg(job);
        }
        let _: i64 = inv
            .invoke_async(conn)
            .await
            .map_err(|e| self.state.err("deleting runs beyond the retention", e))?;
        Ok(())
    }
}
