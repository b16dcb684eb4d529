//! Finding and claiming due jobs: the earliest time a job can be claimed, the claim itself
//! (due-run rule in Rust, compare-and-swap in one Lua script) and releasing leases.

use chrono::{DateTime, Utc};
use redis::AsyncCommands;

use super::client::Client;
use super::layout::{from_score, parse_lease, parse_version, score, score_of, EXACT_SCORES};
use super::records::IndexFix;
use crate::error::Result;
use crate::job::{Lease, StoredJob};
use crate::store::common::{claimable_at, held_by_other, lease_until, micros_ceil};
use crate::store::DueJob;

/// How many sorted-set entries are read per round trip when scanning for due jobs.
const PAGE: usize = 256;

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
            let last = from_score(page[page.len() - 1].1);
            for ((id, s), l) in page.iter().zip(leases) {
                if self.state.is_corrupt(id) {
                    continue;
                }
                let next = exact.remove(id.as_str()).unwrap_or_else(|| from_score(*s));
                let at = claimable_at(next, parse_lease(l).as_ref(), &me, now);
                best = Some(best.map_or(at, |b| b.min(at)));
            }
            // Entries further on are due no earlier than `last`.
            if page.len() < PAGE || best.is_some_and(|b| b <= last) {
                return Ok(best);
            }
            offset += PAGE as isize;
        }
    }

    /// [`JobStore::acquire_due_jobs`](crate::store::JobStore::acquire_due_jobs).
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
        let lease_until = lease_until(now, self.state.lease());
        let lease_value = format!("{} {me}", micros_ceil(lease_until));
        let mut conn = self.conn().await?;
        let page = limit.clamp(16, 1024);
        let mut offset = 0usize;
        let mut claims: Vec<(DueJob, u64)> = Vec::new();
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
            let (docs, versions, leases) = self.fetch(&mut conn, &ids).await?;
            for ((((id, s), doc), v), l) in entries.iter().zip(docs).zip(versions).zip(leases) {
                if claims.len() >= limit {
                    break;
                }
                let Some(doc) = doc else {
                    repairs.push((id.clone(), *s, None));
                    continue;
                };
                let version = parse_version(v);
                let lease = parse_lease(l);
                if held_by_other(lease.as_ref(), &me, now)
                    || self.state.is_known_corrupt(id, &doc, version)
                {
                    continue;
                }
                let Ok(job) = self.state.decode(id, &doc, version, lease) else {
                    continue;
                };
                let mut due = DueJob::claim(job, now);
                if due.run_times.is_empty() {
                    // The index says due, the document says paused or later. The document is
                    // the truth; left alone, the entry would make every pass retry it.
                    let next = due.job.next_run_time;
                    if next.map(|t| score_of(micros_ceil(t))) != Some(*s) {
                        repairs.push((id.clone(), *s, Some((version, next))));
                    }
                    continue;
                }
                due.job.lease = Some(Lease {
                    owner: me.clone(),
                    until: lease_until,
                });
                claims.push((due, version));
            }
            if entries.len() < page {
                break;
            }
            offset += page;
        }
        let won = if claims.is_empty() {
            Vec::new()
        } else {
            let mut inv = self.scripts.claim.prepare_invoke();
            inv.key(&k.jobs)
                .key(&k.versions)
                .key(&k.leases)
                .key(&k.run_times)
                .key(&k.version_seq)
                .arg(now_us)
                .arg(&me)
                .arg(&lease_value);
            for (due, version) in &claims {
                inv.arg(&due.job.id).arg(version.to_string());
                if due.removed {
                    inv.arg("d").arg("").arg("");
                } else {
                    inv.arg("u")
                        .arg(due.job.to_json()?)
                        .arg(score(due.job.next_run_time));
                }
            }
            let won: Vec<i64> = inv
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.state.err("claiming due jobs", e))?;
            claims
                .into_iter()
                .zip(won)
                .filter(|(_, w)| *w != 0)
                .map(|((mut d, _), w)| {
                    d.job.version = w.max(0) as u64;
                    d
                })
                .collect()
        };
        for (id, s, fix) in repairs {
            self.repair(&mut conn, &id, s, fix).await;
        }
        Ok(won)
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
