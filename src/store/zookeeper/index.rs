//! The index (`R/index`): listing it, and healing entries that disagree with their job.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use zookeeper_client as zk;

use super::client::Client;
use super::envelope::{document_next, Envelope};
use super::names::{decode_name, entries_of, index_name, parse_index, persistent};
use super::nodes::{JobOp, Node};
use super::watch::Listing;
use crate::error::Result;
use crate::store::common::{from_micros_saturating, micros_ceil};
use crate::sync::MutexExt;

impl Client {
    /// The index entries, sorted: the saved listing while the watch says nothing changed
    /// (see [`WatchState::listing`]), else a fresh one.
    pub(super) async fn index(&self, c: &zk::Client) -> Result<Listing> {
        let armed = self.watch.armed.load(Ordering::SeqCst);
        let seen = self.watch.changes.load(Ordering::SeqCst);
        if armed {
            let saved = self.watch.listing.lock_unpoisoned();
            if let Some((at, listing)) = saved.as_ref() {
                if *at == seen {
                    return Ok(listing.clone());
                }
            }
        }
        let mut entries: Vec<(i64, String)> = self
            .call("listing the index", c.list_children(&self.index_path()))
            .await?
            .iter()
            .filter_map(|e| parse_index(e).map(|(t, n)| (t, n.to_string())))
            .collect();
        entries.sort();
        let entries = Arc::new(entries);
        if armed {
            *self.watch.listing.lock_unpoisoned() = Some((seen, entries.clone()));
        }
        Ok(entries)
    }

    /// Gives every unpaused job the index entry its document names, creating the missing
    /// ones: a job without its entry would never fire (left by an older apsched, whose
    /// repair path was not atomic, or by hand). Lists the jobs and the index once; run at
    /// start.
    pub(super) async fn heal_index(&self, c: &zk::Client) -> Result<()> {
        let names = self
            .call("listing jobs", c.list_children(&self.jobs_path()))
            .await?;
        let entries: std::collections::HashSet<String> = self
            .call("listing the index", c.list_children(&self.index_path()))
            .await?
            .into_iter()
            .collect();
        for n in self.read_nodes(c, &names).await? {
            let Some(next) = serde_json::from_slice::<Envelope>(&n.data)
                .ok()
                .and_then(|env| document_next(&env))
            else {
                continue;
            };
            let want = index_name(micros_ceil(next), &n.name);
            if entries.contains(&want) {
                continue;
            }
            let id = decode_name(&n.name).unwrap_or_else(|| n.name.clone());
            match self
                .write_job(
                    c,
                    &n.name,
                    n.version,
                    JobOp::Check,
                    Vec::new(),
                    Some(want),
                    "repairing the index",
                )
                .await
            {
                Ok(Some(w)) if w.index_changed => self.state.report(
                    &id,
                    format!(
                        "the job had no index entry for its next run time {}: created",
                        next.to_rfc3339()
                    ),
                ),
                Ok(_) => {}
                Err(e) => self.state.report(&id, e.to_string()),
            }
        }
        Ok(())
    }

    /// Removes the index entry `entry` of a job znode that does not exist, in one `multi`
    /// that creates and deletes the job znode first, so it fails (and changes nothing) if
    /// the job was added meanwhile. Whether it removed the entry.
    pub(super) async fn drop_orphan(
        &self,
        c: &zk::Client,
        node: &str,
        entry: &str,
    ) -> Result<bool> {
        let mut w = c.new_multi_writer();
        let path = self.job_path(node);
        let bad = |e| self.state.err("removing an index entry without a job", e);
        w.add_create(&path, &[], &persistent()).map_err(bad)?;
        w.add_delete(&path, Some(0)).map_err(bad)?;
        w.add_delete(&self.idx_path(entry), None).map_err(bad)?;
        let committed = tokio::time::timeout(self.session_timeout, w.commit()).await;
        self.watch.changed();
        match committed {
            Ok(Ok(_)) => Ok(true),
            // The job exists after all, or the entry is gone already.
            Ok(Err(zk::MultiWriteError::OperationFailed {
                source: zk::Error::NodeExists | zk::Error::NoNode,
                ..
            })) => Ok(false),
            Ok(Err(e)) => Err(bad(zk::Error::from(e))),
            Err(_) => Err(self
                .state
                .msg("removing an index entry without a job: timed out")),
        }
    }

    /// Repairs an index entry `entry` (due at `was`) that disagrees with its job: puts the
    /// job's index where its document says, or drops the entry if the job is gone. Reports
    /// what it changed; failures are reported, not returned (the claims of the pass stand).
    pub(super) async fn repair(&self, c: &zk::Client, entry: &str, was: i64, node: Option<&Node>) {
        let node_name = parse_index(entry).map_or("", |(_, n)| n);
        let id = decode_name(node_name).unwrap_or_else(|| node_name.to_string());
        let r = match node {
            None => self
                .drop_orphan(c, node_name, entry)
                .await
                .map(|d| d.then(|| format!("index entry {entry} has no job: removed"))),
            Some(n) => {
                let next = serde_json::from_slice::<Envelope>(&n.data)
                    .ok()
                    .and_then(|env| document_next(&env));
                let mut stale = entries_of(&n.name, &n.data);
                if !stale.iter().any(|e| e == entry) {
                    stale.push(entry.to_string());
                }
                let want = next.map(|t| index_name(micros_ceil(t), &n.name));
                self.write_job(
                    c,
                    &n.name,
                    n.version,
                    JobOp::Check,
                    stale,
                    want,
                    "repairing an index entry",
                )
                .await
                .map(|w| {
                    w.filter(|w| w.index_changed).map(|_| {
                        format!(
                            "index entry said due {}, the job's document says {}: index repaired",
                            from_micros_saturating(was),
                            next.map_or_else(|| "paused".to_string(), |t| t.to_rfc3339())
                        )
                    })
                })
            }
        };
        match r {
            Ok(Some(what)) => self.state.report(&id, what),
            Ok(None) => {}
            Err(e) => self.state.report(&id, e.to_string()),
        }
    }
}
