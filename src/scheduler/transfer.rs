//! Exporting jobs to a [`JobExport`] and importing one into a store (APScheduler's
//! `export_jobs`/`import_jobs`).

use super::{add, Pending, Scheduler};
use crate::error::Result;
use crate::job::{Callable, JobRecord};
use crate::store::{ExportedJob, ImportReport, JobExport};
use crate::trigger::Trigger;

impl Scheduler {
    /// Every job of every store as a [`JobExport`], store by store (jobs added before start
    /// included); records a store cannot load are exported as stored, flagged, never dropped.
    ///
    /// ```
    /// # async fn demo(scheduler: apsched::Scheduler) -> apsched::Result<()> {
    /// let json = scheduler.export_jobs().await?.to_json()?;
    /// let export = apsched::store::JobExport::from_json(&json)?;
    /// let report = scheduler.store("sql").import_jobs(&export, true).await?;
    /// println!("imported {:?}, skipped {:?}", report.imported, report.skipped);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// A store's error if it cannot be read.
    pub async fn export_jobs(&self) -> Result<JobExport> {
        self.inner.at_home(self.export_in(None)).await
    }

    /// The export of one store, or of all.
    pub(super) async fn export_in(&self, store: Option<&str>) -> Result<JobExport> {
        // A pending job is exported with the next run time it would get at start.
        let now = self.inner.clock.now();
        let mut jobs: Vec<ExportedJob> = self
            .inner
            .life()
            .pending
            .iter()
            .filter(|p| store.is_none_or(|s| s == p.store))
            .map(|p| {
                let mut job = p.job.clone();
                job.next_run_time = match p.next_run_time {
                    Some(explicit) => explicit,
                    None => job.trigger.next_fire_time(None, now),
                };
                ExportedJob::from_store(&p.store, Ok(job))
            })
            .collect();
        if self.inner.check_started() {
            let stores = self.inner.stores_in(store)?;
            for (alias, s) in stores {
                let records = s.export_records().await?;
                jobs.extend(
                    records
                        .into_iter()
                        .map(|r| ExportedJob::from_store(&alias, r)),
                );
            }
        }
        Ok(JobExport::new(jobs))
    }

    /// Imports the jobs of `export` into the store `alias` (see
    /// [`StoreHandle::import_jobs`](crate::StoreHandle::import_jobs)).
    pub(super) async fn import_into(
        &self,
        alias: &str,
        export: &JobExport,
        replace_existing: bool,
    ) -> Result<ImportReport> {
        let inner = &self.inner;
        let store = inner.store(alias)?;
        let mut report = ImportReport::default();
        let mut pending = Vec::new();
        for entry in &export.jobs {
            let job = match entry {
                ExportedJob::Job { job, .. } => job,
                ExportedJob::Unloadable { id, reason, .. } => {
                    report
                        .skipped
                        .push((id.clone(), format!("its store could not load it: {reason}")));
                    continue;
                }
                ExportedJob::NotExportable { id, reason, .. } => {
                    report.skipped.push((id.clone(), reason.clone()));
                    continue;
                }
            };
            let record = JobRecord::from_stored((**job).clone(), 0, None);
            if let Err(reason) = self.importable(&record) {
                report.skipped.push((record.id.clone(), reason));
                continue;
            }
            if store.is_persistent() && !record.callable.is_persistable() {
                report.skipped.push((
                    record.id.clone(),
                    format!("store '{alias}' is persistent and cannot keep this job"),
                ));
                continue;
            }
            let next = record.next_run_time;
            report.imported.push(record.id.clone());
            pending.push(Pending {
                job: record,
                store: alias.to_string().into(),
                replace_existing,
                // The exported next run time, kept as it was (paused stays paused).
                next_run_time: Some(next),
            });
        }
        inner.at_home(self.add_prepared(pending)).await?;
        Ok(report)
    }

    /// Why this scheduler cannot run an imported job, if it cannot: the checks `add_job`
    /// makes (options, executor) and a registered task.
    fn importable(&self, record: &JobRecord) -> std::result::Result<(), String> {
        add::validate_options(
            &record.id,
            Some(record.misfire_grace_time),
            Some(record.max_instances),
        )
        .map_err(|e| e.to_string())?;
        let executor = self
            .inner
            .executor(&record.executor)
            .ok_or_else(|| format!("no executor named '{}' in this scheduler", record.executor))?;
        executor
            .check(&record.callable)
            .map_err(|reason| format!("executor '{}': {reason}", record.executor))?;
        if let Callable::Task { name, .. } = &record.callable {
            if !self.inner.tasks.contains(name) {
                return Err(format!(
                    "task '{name}' is not registered (register it with SchedulerBuilder::task)"
                ));
            }
        }
        Ok(())
    }
}
