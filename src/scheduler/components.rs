//! Executors and stores added and removed while the scheduler exists.

use std::sync::Arc;

use super::Scheduler;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::executor::{self, Executor};
use crate::store::JobStore;
use crate::sync::RwLockExt;

impl Scheduler {
    /// Adds an executor under `alias`.
    ///
    /// # Errors
    /// [`Error::AliasInUse`] if the alias is taken.
    pub fn add_executor(&self, alias: impl Into<String>, executor: impl Executor) -> Result<()> {
        let alias = alias.into();
        {
            let mut executors = self.inner.executors.write_unpoisoned();
            if executors.iter().any(|(a, _)| *a == alias) {
                return Err(Error::AliasInUse(alias));
            }
            executors.push((alias.clone(), Arc::new(executor)));
        }
        self.inner.events.emit(Event::ExecutorAdded { alias });
        Ok(())
    }

    /// Removes an executor (after letting its runs in flight finish). Jobs that name it stay
    /// in their stores and are reported with a [`Event::JobError`] each time they come due.
    ///
    /// Called from inside one of this scheduler's jobs, it does not wait for the runs in
    /// flight (the caller's may be one of them); they finish on their own.
    pub async fn remove_executor(&self, alias: &str) -> Result<()> {
        self.inner
            .at_home(self.remove_executor_at_home(alias))
            .await
    }

    async fn remove_executor_at_home(&self, alias: &str) -> Result<()> {
        let removed = {
            let mut executors = self.inner.executors.write_unpoisoned();
            let i = executors
                .iter()
                .position(|(a, _)| a == alias)
                .ok_or_else(|| Error::UnknownExecutor(alias.to_string()))?;
            executors.remove(i).1
        };
        removed
            .shutdown(!executor::inside_run_of(&self.inner.instances))
            .await;
        self.inner.events.emit(Event::ExecutorRemoved {
            alias: alias.to_string(),
        });
        Ok(())
    }

    /// Adds a job store under `alias` (started at once if the scheduler runs).
    ///
    /// # Errors
    /// [`Error::AliasInUse`] if the alias is taken; the store's error if it cannot start.
    pub async fn add_store(&self, alias: impl Into<String>, store: impl JobStore) -> Result<()> {
        self.inner
            .at_home(self.add_store_at_home(alias.into(), store))
            .await
    }

    async fn add_store_at_home(&self, alias: String, store: impl JobStore) -> Result<()> {
        if self.inner.store(&alias).is_ok() {
            return Err(Error::AliasInUse(alias));
        }
        let store: Arc<dyn JobStore> = Arc::new(store);
        if self.inner.check_started() {
            store.start(self.inner.store_context(&alias)).await?;
        }
        {
            let mut stores = self.inner.stores.write_unpoisoned();
            if stores.iter().any(|(a, _)| *a == alias) {
                return Err(Error::AliasInUse(alias));
            }
            stores.push((alias.clone(), store));
        }
        self.inner.events.emit(Event::JobStoreAdded { alias });
        self.inner.wakeup();
        Ok(())
    }

    /// Removes a job store (its jobs stay in it, but this scheduler no longer runs them).
    pub async fn remove_store(&self, alias: &str) -> Result<()> {
        self.inner.at_home(self.remove_store_at_home(alias)).await
    }

    async fn remove_store_at_home(&self, alias: &str) -> Result<()> {
        let removed = {
            let mut stores = self.inner.stores.write_unpoisoned();
            let i = stores
                .iter()
                .position(|(a, _)| a == alias)
                .ok_or_else(|| Error::UnknownStore(alias.to_string()))?;
            stores.remove(i).1
        };
        if let Err(e) = removed.shutdown().await {
            tracing::warn!(store = %alias, error = %e, "store shutdown failed");
        }
        self.inner.events.emit(Event::JobStoreRemoved {
            alias: alias.to_string(),
        });
        Ok(())
    }
}
