//! Reading the run ledger on Redis: records by member (skipping and reporting the ones that
//! do not parse), [`JobStore::query_runs`](crate::store::JobStore::query_runs) over the
//! scheduled-time indexes, and [`JobStore::get_run`](crate::store::JobStore::get_run).

use std::collections::HashMap;

use redis::aio::ConnectionManager;

use super::client::Client;
use super::runs_layout::{member, run_from_fields, time_score};
use crate::error::Result;
use crate::job::RunId;
use crate::ledger::{RunFilter, RunRecord};
use crate::store::common::fingerprint;

/// The most index entries read per round trip when paging through runs.
const PAGE: usize = 512;

impl Client {
    /// The records of `members`, in order, in one round trip. A run that is gone is left
    /// out; one that does not parse is reported (once per content) and left out, never
    /// changed.
    pub(super) async fn read_runs(
        &self,
        conn: &mut ConnectionManager,
        members: &[String],
    ) -> Result<Vec<Option<RunRecord>>> {
        if members.is_empty() {
            return Ok(Vec::new());
        }
        let rk = self.run_keys();
        let mut pipe = redis::pipe();
        // A key of the wrong type is one unreadable run, not a failed read.
        pipe.ignore_errors();
        for m in members {
            pipe.hgetall(rk.run(m));
        }
        let replies: Vec<redis::Value> = pipe
            .query_async(conn)
            .await
            .map_err(|e| self.state.err("reading runs", e))?;
        Ok(members
            .iter()
            .zip(replies)
            .map(|(m, reply)| {
                let f = redis::from_redis_value::<HashMap<String, String>>(reply)
                    .map_err(|e| e.to_string());
                self.parse_run(m, f)
            })
            .collect())
    }

    /// One run's hash as a record; `None` (reported once per content) when it does not
    /// parse or is not a hash, `None` (silently) when it is gone.
    fn parse_run(
        &self,
        m: &str,
        f: std::result::Result<HashMap<String, String>, String>,
    ) -> Option<RunRecord> {
        let key = self.run_keys().run(m);
        // (reason, fingerprint of the content, job id if known)
        let failed = match f {
            Ok(f) if f.is_empty() => return None,
            Ok(f) => match run_from_fields(m, &f) {
                Ok(r) => {
                    self.runs.reported.forget(&key);
                    return Some(r);
                }
                Err(reason) => {
                    let mut content: Vec<(&String, &String)> = f.iter().collect();
                    content.sort_unstable();
                    let job = f.get("job_id").cloned().unwrap_or_default();
                    (reason, fingerprint(&format!("{content:?}"), 0), job)
                }
            },
            Err(e) => {
                let reason = format!("it is not a hash: {e}");
                let fp = fingerprint(&reason, 1);
                (reason, fp, String::new())
            }
        };
        let (reason, fp, job) = failed;
        if self.runs.reported.note(&key, fp) {
            self.state.report(
                &job,
                format!(
                    "run record {key} cannot be read ({reason}); it is kept untouched and \
                     skipped: fix or delete it"
                ),
            );
        }
        None
    }

    /// [`JobStore::query_runs`](crate::store::JobStore::query_runs): pages through the
    /// job's index (or the index of all runs) newest first, between the scores the
    /// filter's times allow, until the page is full and nothing further on can belong to
    /// it; the rest of the filter is applied to the records read.
    pub(super) async fn query_runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>> {
        if filter.limit == 0 {
            return Ok(Vec::new());
        }
        let rk = self.run_keys();
        let index = filter
            .job_id
            .as_deref()
            .map_or_else(|| rk.all.clone(), |j| rk.job(j));
        // Scores are rounded up to whole µs, so inclusive bounds on rounded times keep every
        // run the exact filter keeps (it is applied below).
        let upper = [filter.to, filter.before.map(|(t, _)| t)]
            .into_iter()
            .flatten()
            .min();
        let max = upper.map_or_else(|| "+inf".to_string(), time_score);
        let min = filter.from.map_or_else(|| "-inf".to_string(), time_score);
        let batch = filter.limit.saturating_add(1).clamp(16, PAGE);
        let mut conn = self.conn().await?;
        // Matching runs with their scores, in index order (scores not increasing).
        let mut found: Vec<(f64, RunRecord)> = Vec::new();
        let mut offset = 0usize;
        loop {
            let entries: Vec<(String, f64)> = redis::cmd("ZRANGE")
                .arg(&index)
                .arg(&max)
                .arg(&min)
                .arg("BYSCORE")
                .arg("REV")
                .arg("LIMIT")
                .arg(offset)
                .arg(batch)
                .arg("WITHSCORES")
                .query_async(&mut conn)
                .await
                .map_err(|e| self.state.err("reading the runs index", e))?;
            let members: Vec<String> = entries.iter().map(|(m, _)| m.clone()).collect();
            let records = self.read_runs(&mut conn, &members).await?;
            for ((_, score), r) in entries.iter().zip(records) {
                if let Some(r) = r.filter(|r| filter.matches(r)) {
                    found.push((*score, r));
                }
            }
            // Once the page is full, entries with a lower score than its last run's are
            // older than every run on it.
            let last = entries.last().map(|(_, s)| *s);
            let full_below = found
                .get(filter.limit - 1)
                .is_some_and(|(s, _)| last.is_some_and(|l| l < *s));
            if entries.len() < batch || full_below {
                break;
            }
            offset += entries.len();
        }
        Ok(filter.page(found.into_iter().map(|(_, r)| r).collect()))
    }

    /// [`JobStore::get_run`](crate::store::JobStore::get_run).
    pub(super) async fn get_run(&self, run_id: RunId) -> Result<Option<RunRecord>> {
        let mut conn = self.conn().await?;
        let mut runs = self.read_runs(&mut conn, &[member(run_id)]).await?;
        Ok(runs.pop().flatten())
    }
}
