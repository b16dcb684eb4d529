//! How many runs of each job are in flight, for `max_instances` (shared by all executors).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::sync::MutexExt;

/// Counts the runs of each job in flight, for `max_instances` (shared by all executors).
#[derive(Debug, Default)]
pub(crate) struct Instances {
    running: Mutex<HashMap<arcstr::ArcStr, u32, crate::job::JobIdState>>,
    /// Runs in flight, all jobs together.
    total: AtomicUsize,
    /// Notified when a run ends while someone waits (`waiting` > 0).
    ended: ::tokio::sync::Notify,
    /// Callers of [`wait_until_at_most`](Self::wait_until_at_most) in progress: a run that
    /// ends while nobody waits skips `ended` (notifying takes its lock, once per run).
    waiting: AtomicUsize,
}

impl Instances {
    /// Takes a slot for `job_id` unless `max` are already taken. A refused job leaves no
    /// entry behind.
    pub fn try_acquire(
        self: &Arc<Self>,
        job_id: &arcstr::ArcStr,
        max: u32,
    ) -> Option<InstanceSlot> {
        let mut running = self.running.lock_unpoisoned();
        // One lookup (the id hashed once), not a get and an insert.
        match running.entry(job_id.clone()) {
            Entry::Occupied(mut n) if *n.get() < max => *n.get_mut() += 1,
            Entry::Vacant(slot) if max > 0 => {
                slot.insert(1);
            }
            _ => return None,
        }
        self.total.fetch_add(1, Ordering::SeqCst);
        Some(InstanceSlot {
            instances: self.clone(),
        })
    }

    /// How many jobs have a run in flight (one entry per job).
    #[cfg(test)]
    pub fn jobs_in_flight(&self) -> usize {
        self.running.lock_unpoisoned().len()
    }

    /// Waits until at most `n` runs are in flight.
    pub async fn wait_until_at_most(&self, n: usize) {
        // Counted before `total` is read (both sides SeqCst), so a run ending after that
        // read sees this waiter and notifies.
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        loop {
            let ended = self.ended.notified();
            ::tokio::pin!(ended);
            ended.as_mut().enable();
            if self.total.load(Ordering::SeqCst) <= n {
                return;
            }
            ended.await;
        }
    }
}

/// Uncounts a waiter however its wait ends (returned, or its future dropped).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One of a job's `max_instances` slots. It does not keep the job id: the run holding it
/// does, and every run's task is 16 bytes smaller for not holding it twice. So it is given
/// back with [`release`](Self::release), which the run's `Drop` calls, not by dropping it.
#[derive(Debug)]
#[must_use = "a slot is given back only by release()"]
pub(crate) struct InstanceSlot {
    instances: Arc<Instances>,
}

impl InstanceSlot {
    /// The counts this slot belongs to: one per scheduler.
    pub fn instances(&self) -> &Arc<Instances> {
        &self.instances
    }
}

impl InstanceSlot {
    /// Gives the slot of `job_id` (the id it was taken for) back.
    pub fn release(self, job_id: &arcstr::ArcStr) {
        let mut running = self.instances.running.lock_unpoisoned();
        if let Entry::Occupied(mut n) = running.entry(job_id.clone()) {
            *n.get_mut() -= 1;
            if *n.get() == 0 {
                n.remove();
            }
        }
        drop(running);
        self.instances.total.fetch_sub(1, Ordering::SeqCst);
        if self.instances.waiting.load(Ordering::SeqCst) > 0 {
            self.instances.ended.notify_waiters();
        }
    }
}

#[cfg(test)]
mod instance_tests {
    use std::sync::Arc;

    /// A job refused for `max_instances` (0, from a bad record) leaves no entry behind.
    #[test]
    fn a_refused_slot_leaves_no_entry() {
        let instances = Arc::new(super::Instances::default());
        for i in 0..100 {
            let id = arcstr::ArcStr::from(format!("job{i}"));
            assert!(instances.try_acquire(&id, 0).is_none());
        }
        assert_eq!(instances.jobs_in_flight(), 0);
    }
}
