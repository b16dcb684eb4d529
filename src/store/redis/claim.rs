//! Finding and claiming due jobs: the earliest time a job can be claimed, the claim itself
//! (due-run rule in Rust, compare-and-swap in one Lua script) and releasing leases.

use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use redis::AsyncCommands;

use super::client::Client;
use super::layout::{from_score, parse_lease, parse_version, score, score_of, EXACT_SCORES};
use super::records::IndexFix;
use super::runs::{push_planned, ActiveRead, ClaimRead};
use crate::error::Result;
use crate::job::{Lease, StoredJob};
use crate::store::common::{claimable_at, held_by_other, lease_until, micros_ceil};
use crate::store::{DueJob, StoreContext};

/// How many sorted-set entries are read per round trip when scanning for due jobs.
const PAGE: usize = 256;

/// How many times one pass writes claims whose jobs' active runs changed under them.
const CLAIM_ROUNDS: usize = 4;

/// A claim prepared in Rust: the claimed job with its planned runs, the version it was
/// read at, and the stamp of its active runs as read (`None` without a ledger).
struct Claim {
    due: DueJob,
    version: u64,
    stamp: Option<String>,
}

/// One candidate as read: document, version, lease, active runs.
type Candidate = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<ActiveRead>,
);

/// What a candidate turned out to be.
// Short-lived (moved into the batch at once): boxing the claim would cost an allocation
// per claimed job on the hot path for nothing.
#[allow(clippy::large_enum_variant)]
enum Prepared {
    /// Due and claimable: write it.
    Claim(Claim),
    /// Its index entry has no job.
    Gone,
    /// Its document is not due (version, next run time): the index disagrees.
    NotDue(u64, Option<DateTime<Utc>>),
    /// Held by another scheduler, corrupt or blocked: leave it.
    Skip,
}

/// About how many arguments one claim script call takes at most (a batch of 1024 jobs with
/// one record each takes about 40 000); a job's claim is never split.
const SCRIPT_ARGS: usize = 64 * 1024;

/// Splits `claims` into script calls of about [`SCRIPT_ARGS`] arguments each.
fn script_chunks(claims: Vec<Claim>) -> Vec<Vec<Claim>> {
    let mut chunks = vec![Vec::new()];
    let mut args = 0;
    for c in claims {
        // Per job 8 arguments; per record 6 and its field/value pairs (about 24).
        let n = 8 + c.due.runs.len() * 30 + c.due.cancel.len();
        if args + n > SCRIPT_ARGS && args > 0 {
            chunks.push(Vec::new());
            args = 0;
        }
        args += n;
        if let Some(last) = chunks.last_mut() {
            last.push(c);
        }
    }
    chunks
}

/// The candidates of a read, one per id.
fn aligned((docs, versions, leases, runs): ClaimRead) -> impl Iterator<Item = Candidate> {
    let runs: Box<dyn Iterator<Item = Option<ActiveRead>> + Send> = match runs {
        Some(r) => Box::new(r.into_iter().map(Some)),
        None => Box::new(std::iter::repeat_with(|| None)),
    };
    docs.into_iter()
        .zip(versions)
        .zip(leases)
        .zip(runs)
        .map(|(((d, v), l), r)| (d, v, l, r))
}

impl Client {
    /// [`JobStore::next_run_time`](crate::store::JobStore::next_run_time): pages through the
    /// index and the leases until nothing further on can be earlier.
    pub(super) async fn next_run_time(&self) -> Result<Option<DateTime<Utc>>> {
        let k = self.keys();
        let me = self.state.owner();
        let now = self.state.now();
        let mut conn = self.conn().await?;
        let mut offset = 0isize;
        let mut best: Option<DateTime<Utc>> = None;
        loop {
            let page: Vec<(String, f64)> = conn
                .zrange_withscores(&k.run_times, offset, offset + PAGE as isize - 1)
                .await
                .map_err(|e| self.state.err("reading next run times", e))?;
            if page.is_empty() {
                return Ok(best);
            }
            let ids: Vec<&str> = page.iter().map(|(id, _)| id.as_str()).collect();
            // Scores beyond 2^53 µs are rounded up; those jobs' documents have the exact time.
            let inexact: Vec<&str> = page
                .iter()
                .filter(|(_, s)| *s >= EXACT_SCORES)
                .map(|(id, _)| id.as_str())
                .collect();
            let mut pipe = redis::pipe();
            pipe.cmd("HMGET").arg(&k.leases).arg(&ids);
            if !inexact.is_empty() {
                pipe.cmd("HMGET").arg(&k.jobs).arg(&inexact);
            }
            let mut read: Vec<Vec<Option<String>>> = pipe
                .query_async(&mut conn)
                .await
                .map_err(|e| self.state.err("reading leases", e))?;
            let docs = if inexact.is_empty() {
                Vec::new()
            } else {
                read.pop().unwrap_or_default()
            };
            let leases = read.pop().unwrap_or_default();
            let mut exact: std::collections::HashMap<&str, DateTime<Utc>> = inexact
                .iter()
                .zip(docs)
                .filter_map(|(id, doc)| {
                    let stored: StoredJob = serde_json::from_str(&doc?).ok()?;
                    Some((*id, stored.next_run_time?))
                })
                .collect();
            // `page` is not empty (checked above).
            let Some(last) = page.last().map(|(_, s)| from_score(*s)) else {
                return Ok(best);
            };
            for ((id, s), l) in page.iter().zip(leases) {
                if self.state.is_corrupt(id) {
                    continue;
                }
                let next = exact.remove(id.as_str()).unwrap_or_else(|| from_score(*s));
                let mut at = claimable_at(next, parse_lease(l).as_ref(), &me, now);
                if let Some(retry) = self.runs.blocked_until(id) {
                    at = at.max(retry);
                }
                best = Some(best.map_or(at, |b| b.min(at)));
            }
            // Entries further on are due no earlier than `last`.
            if page.len() < PAGE || best.is_some_and(|b| b <= last) {
                return Ok(best);
            }
            offset += PAGE as isize;
        }
    }

    /// [`JobStore::acquire_due_jobs`](crate::store::JobStore::acquire_due_jobs): reads the
    /// due candidates (with their active runs when the scheduler keeps a ledger), claims
    /// and plans their runs in Rust, and writes claims and run records with one script.
    /// Jobs whose active runs changed between the read and the script are read, planned
    /// and written again (a few rounds; the rest stay due for the next pass).
    pub(super) async fn acquire_due_jobs(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<DueJob>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let k = self.keys();
        let me = self.state.owner();
        let ctx = self.state.ctx().filter(|c| c.keeps_runs());
        let lease_until = lease_until(now, self.state.lease());
        let mut conn = self.conn().await?;
        let page = limit.clamp(16, 1024);
        let mut offset = 0usize;
        let mut claims: Vec<Claim> = Vec::new();
        // Index entries that disagree with their job: (id, None) for an entry without a
        // job, (id, Some((version, next))) for a job whose document is not due.
        let mut repairs: Vec<(String, f64, IndexFix)> = Vec::new();
        let now_us = now.timestamp_micros();
        // Scores are rounded up (`score_of`), so the bound is too: a job due at `now` is found.
        let bound = score_of(now_us).to_string();
        while claims.len() < limit {
            let entries: Vec<(String, f64)> = redis::cmd("ZRANGE")
                .arg(&k.run_times)
                .arg("-inf")
                .arg(&bound)
                .arg("BYSCORE")
                .arg("LIMIT")
                .arg(offset)
                .arg(page)
                .arg("WITHSCORES")
                .query_async(&mut conn)
                .await
                .map_err(|e| self.state.err("reading due jobs", e))?;
            if entries.is_empty() {
                break;
            }
            let ids: Vec<String> = entries.iter().map(|(id, _)| id.clone()).collect();
            let read = self.fetch_for_claim(&mut conn, &ids, ctx.is_some()).await?;
            for ((id, s), candidate) in entries.iter().zip(aligned(read)) {
                if claims.len() >= limit {
                    break;
                }
                match self.prepare_claim(id, candidate, now, &me, lease_until, ctx.as_ref()) {
                    Prepared::Claim(c) => claims.push(c),
                    Prepared::Gone => repairs.push((id.clone(), *s, None)),
                    Prepared::NotDue(version, next) => {
                        // The index says due, the document says paused or later. The
                        // document is the truth; left alone, the entry would make every pass
                        // retry it.
                        if next.map(|t| score_of(micros_ceil(t))) != Some(*s) {
                            repairs.push((id.clone(), *s, Some((version, next))));
                        }
                    }
                    Prepared::Skip => {}
                }
            }
            if entries.len() < page {
                break;
            }
            offset += page;
        }
        let mut won = Vec::with_capacity(claims.len());
        for round in 1..=CLAIM_ROUNDS {
            if claims.is_empty() {
                break;
            }
            let mut stale = Vec::new();
            // Each job's claim and records are one script; a batch with a long backlog of
            // records is split so that no script call grows without bound.
            for chunk in script_chunks(claims) {
                let first = chunk
                    .first()
                    .map(|c| c.due.job.id.clone())
                    .unwrap_or_default();
                match self
                    .write_claims(&mut conn, chunk, now, &me, lease_until)
                    .await
                {
                    Ok((w, s)) => {
                        won.extend(w);
                        stale.extend(s);
                    }
                    Err(e) if won.is_empty() => return Err(e),
                    Err(e) => {
                        // The claims won so far are written: they must run. The failed
                        // chunk's jobs stay due for the next pass.
                        self.state.report(&first, e.to_string());
                        return Ok(won);
                    }
                }
            }
            if stale.is_empty() || round == CLAIM_ROUNDS {
                break;
            }
            // Their active runs changed since the read: read and plan them again.
            let ids: Vec<String> = stale.iter().map(|c| c.due.job.id.clone()).collect();
            let read = self.fetch_for_claim(&mut conn, &ids, ctx.is_some()).await?;
            claims = ids
                .iter()
                .zip(aligned(read))
                .filter_map(|(id, candidate)| {
                    match self.prepare_claim(id, candidate, now, &me, lease_until, ctx.as_ref()) {
                        Prepared::Claim(c) => Some(c),
                        _ => None,
                    }
                })
                .collect();
        }
        for (id, s, fix) in repairs {
            self.repair(&mut conn, &id, s, fix).await;
        }
        Ok(won)
    }

    /// Applies the due-run rule to one candidate as read, and plans its runs.
    fn prepare_claim(
        &self,
        id: &str,
        (doc, v, l, active): Candidate,
        now: DateTime<Utc>,
        me: &str,
        lease_until: DateTime<Utc>,
        ctx: Option<&StoreContext>,
    ) -> Prepared {
        let Some(doc) = doc else {
            return Prepared::Gone;
        };
        let version = parse_version(v);
        let lease = parse_lease(l);
        if held_by_other(lease.as_ref(), me, now)
            || self.state.is_known_corrupt(id, &doc, version)
            || self.runs.is_blocked(id, now)
        {
            return Prepared::Skip;
        }
        let Ok(job) = self.state.decode(id, &doc, version, lease) else {
            return Prepared::Skip;
        };
        let mut due = DueJob::claim(job, now);
        if due.run_times.is_empty() {
            return Prepared::NotDue(version, due.job.next_run_time);
        }
        due.job_mut().lease = Some(Lease {
            owner: me.to_string(),
            until: lease_until,
        });
        let stamp = match (ctx, active) {
            (Some(ctx), Some(read)) => {
                due.plan_runs(ctx, now, &read.active);
                Some(read.stamp)
            }
            _ => None,
        };
        Prepared::Claim(Claim {
            due,
            version,
            stamp,
        })
    }

    /// Writes `claims` with one script. Returns the jobs won and the claims to plan again
    /// (their active runs changed since the read); claims lost to another scheduler are
    /// dropped, and claims whose ledger keys cannot be written are reported and left due
    /// (skipped until a lease from now, so the loop does not spin on them).
    async fn write_claims(
        &self,
        conn: &mut ConnectionManager,
        claims: Vec<Claim>,
        now: DateTime<Utc>,
        me: &str,
        lease_until: DateTime<Utc>,
    ) -> Result<(Vec<DueJob>, Vec<Claim>)> {
        let k = self.keys();
        let ledger = claims.iter().any(|c| c.stamp.is_some());
        let mut inv = self.scripts.claim.prepare_invoke();
        inv.key(&k.jobs)
            .key(&k.versions)
            .key(&k.leases)
            .key(&k.run_times)
            .key(&k.version_seq)
            .arg(now.timestamp_micros())
            .arg(me)
            .arg(format!("{} {me}", micros_ceil(lease_until)))
            .arg(&self.run_keys().base)
            .arg(if ledger { "1" } else { "0" });
        for c in &claims {
            let due = &c.due;
            inv.arg(&due.job.id).arg(c.version.to_string());
            if due.removed {
                inv.arg("d").arg("").arg("");
            } else {
                inv.arg("u")
                    .arg(due.job.to_json()?)
                    .arg(score(due.job.next_run_time));
            }
            match &c.stamp {
                Some(stamp) => {
                    inv.arg(stamp);
                    push_planned(&mut inv, &due.runs, &due.cancel);
                }
                None => {
                    inv.arg("-").arg(0).arg(0);
                }
            }
        }
        let results: Vec<redis::Value> = inv
            .invoke_async(conn)
            .await
            .map_err(|e| self.state.err("claiming due jobs", e))?;
        let mut won = Vec::with_capacity(claims.len());
        let mut stale = Vec::new();
        for (mut c, r) in claims.into_iter().zip(results) {
            match r {
                redis::Value::Int(v) if v > 0 => {
                    self.runs.unblock(&c.due.job.id);
                    c.due.job_mut().version = v as u64;
                    won.push(c.due);
                }
                redis::Value::Int(-1) => stale.push(c),
                redis::Value::Int(_) => {}
                other => {
                    let why = redis::from_redis_value::<String>(other)
                        .unwrap_or_else(|e| format!("unexpected reply: {e}"));
                    let id = &c.due.job.id;
                    let retry = lease_until.max(now);
                    let message = format!(
                        "job '{id}' was not claimed, so that its run records and its claim stay \
                         one step: {why}; it is tried again at {retry}"
                    );
                    if self.runs.block(id, retry, &why) {
                        self.state.report(id, message);
                    }
                }
            }
        }
        Ok((won, stale))
    }

    /// [`JobStore::release_jobs`](crate::store::JobStore::release_jobs).
    pub(super) async fn release_jobs(&self, jobs: &[DueJob]) -> Result<()> {
        let jobs: Vec<&DueJob> = jobs.iter().filter(|d| !d.removed).collect();
        if jobs.is_empty() {
            return Ok(());
        }
        let k = self.keys();
        let mut conn = self.conn().await?;
        let mut inv = self.scripts.release.prepare_invoke();
        inv.key(&k.versions).key(&k.leases).arg(self.state.owner());
        for d in jobs {
            inv.arg(&d.job.id).arg(d.job.version.to_string());
        }
        let _: i64 = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.state.err("releasing jobs", e))?;
        Ok(())
    }
}
