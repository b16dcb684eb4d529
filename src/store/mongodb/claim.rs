//! Claiming due jobs (one `find_one_and_update` per job, many in flight), and repairing
//! index fields that disagree with their document.

use super::*;

pub(super) type BoxFut<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// How many claims are in flight at once.
pub(super) const CONCURRENCY: usize = 16;

impl MongoStore {
    pub(super) fn corrupt_filter(&self) -> Bson {
        Bson::Array(
            self.state
                .corrupt_ids()
                .into_iter()
                .map(Bson::String)
                .collect(),
        )
    }

    /// `{ $or: [lease free, expired, or own] }` at `now_us`.
    pub(super) fn lease_free(me: &str, now_us: i64) -> Document {
        doc! { "$or": [
            { "lease_until": Bson::Null },
            { "lease_until": { "$lte": now_us } },
            { "lease_owner": me },
        ] }
    }

    /// Sets the top-level `next_run_time` of the document `d` to `next`, what its job
    /// document says (if nobody wrote it since it was read), and reports the repair. A
    /// failure is reported, not returned: the claims of the pass stand, the next pass retries.
    pub(super) async fn repair_index(
        &self,
        coll: &Collection<Document>,
        d: &Document,
        next: Option<DateTime<Utc>>,
    ) {
        let f = fields(d);
        let r = coll
            .update_one(
                doc! { "_id": &f.id, "version": version_is(f.version) },
                doc! { "$set": { "next_run_time": next_bson(next) } },
            )
            .await;
        let was = f.next.map(from_micros_saturating);
        match r {
            Ok(r) if r.modified_count == 1 => self.state.report(
                &f.id,
                format!(
                    "next_run_time said due {}, the job's document says {}: repaired",
                    was.map_or_else(|| "never".to_string(), |t| t.to_rfc3339()),
                    next.map_or_else(|| "paused".to_string(), |t| t.to_rfc3339())
                ),
            ),
            // Written meanwhile by another writer, which set both copies.
            Ok(_) => {}
            Err(e) => self
                .state
                .report(&f.id, format!("repairing next_run_time: {e}")),
        }
    }

    pub(super) async fn claim_one(
        &self,
        coll: &Collection<Document>,
        mut due: DueJob,
        version: u64,
        me: &str,
        lease: &Lease,
    ) -> Result<Option<DueJob>> {
        // The version alone fences the write: every claim and every other write bumps it,
        // and the candidate was read with a free lease, so an unchanged version means the
        // lease is still free too.
        let filter = doc! { "_id": &due.job.id, "version": version_is(version) };
        let won = if due.removed {
            coll.delete_one(filter)
                .await
                .map_err(|e| self.state.err("claiming a due job", e))?
                .deleted_count
                == 1
        } else {
            let update = doc! { "$set": {
                "job": due.job.to_json()?,
                "next_run_time": next_bson(due.job.next_run_time),
                "version": (version + 1) as i64,
                "lease_owner": me,
                "lease_until": micros_ceil(lease.until),
            } };
            coll.update_one(filter, update)
                .await
                .map_err(|e| self.state.err("claiming a due job", e))?
                .modified_count
                == 1
        };
        Ok(won.then(|| {
            due.job.version = version + 1;
            due.job.lease = Some(lease.clone());
            due
        }))
    }
}
