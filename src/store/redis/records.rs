//! Reading job records in batches, and repairing index entries that disagree with their
//! document.

use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;

use super::client::Client;
use super::layout::{from_score, score};
use crate::error::Result;

/// What a repaired index entry should say: the job's version and next run time, or `None`
/// when the job is gone.
pub(super) type IndexFix = Option<(u64, Option<DateTime<Utc>>)>;

impl Client {
    /// Reads documents, versions and leases of `ids` in one round trip.
    #[allow(clippy::type_complexity)]
    pub(super) async fn fetch(
        &self,
        conn: &mut ConnectionManager,
        ids: &[String],
    ) -> Result<(
        Vec<Option<String>>,
        Vec<Option<String>>,
        Vec<Option<String>>,
    )> {
        let k = self.keys();
        redis::pipe()
            .cmd("HMGET")
            .arg(&k.jobs)
            .arg(ids)
            .cmd("HMGET")
            .arg(&k.versions)
            .arg(ids)
            .cmd("HMGET")
            .arg(&k.leases)
            .arg(ids)
            .query_async(conn)
            .await
            .map_err(|e| self.state.err("reading jobs", e))
    }
}

impl Client {
    /// Puts `id`'s index entry (found at score `was`) where its document says, or removes
    /// it when the job is gone (`fix` = `None`), and reports what it did. Failures are
    /// reported, not returned: the claims of the pass stand, and the next pass tries again.
    pub(super) async fn repair(
        &self,
        conn: &mut ConnectionManager,
        id: &str,
        was: f64,
        fix: IndexFix,
    ) {
        let k = self.keys();
        let (version, next) = match fix {
            Some((v, next)) => (v.to_string(), score(next)),
            None => (String::new(), String::new()),
        };
        let r: redis::RedisResult<i64> = self
            .scripts
            .repair
            .key(&k.jobs)
            .key(&k.versions)
            .key(&k.run_times)
            .arg(id)
            .arg(&version)
            .arg(&next)
            .invoke_async(conn)
            .await;
        let was = from_score(was);
        match (r, fix) {
            (Ok(1), None) => self.state.report(
                id,
                format!(
                    "index entry {} (due {was}) has no job: removed",
                    k.run_times
                ),
            ),
            (Ok(1), Some((_, next))) => self.state.report(
                id,
                format!(
                    "index entry {} said due {was}, the job's document says {}: index repaired",
                    k.run_times,
                    next.map_or_else(|| "paused".to_string(), |t| t.to_rfc3339())
                ),
            ),
            // Changed meanwhile by another writer, which also wrote the index.
            (Ok(_), _) => {}
            (Err(e), _) => self.state.report(
                id,
                format!("repairing the index entry {}: {e}", k.run_times),
            ),
        }
    }
}
