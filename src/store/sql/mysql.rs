//! MySQL 8 and MariaDB 10.6+: claims with `FOR UPDATE SKIP LOCKED` under READ COMMITTED
//! (no gap locks, so concurrent claimers do not deadlock on the next-run-time index).

use std::str::FromStr;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{Executor, MySql, Pool};

use super::{bad_url, Dialect};
use crate::error::Result;

impl Dialect for MySql {
    const LABEL: &'static str = "MySQL";
    const LOCK_SKIP: &'static str = " FOR UPDATE SKIP LOCKED";
    const BEGIN: Option<&'static str> = None;
    const POLLS: bool = true;

    fn rows_affected(r: &sqlx::mysql::MySqlQueryResult) -> u64 {
        r.rows_affected()
    }

    fn migrations(t: &str) -> Vec<Vec<String>> {
        // Indexes inline: MySQL 8 has no CREATE INDEX IF NOT EXISTS.
        vec![vec![format!(
            "CREATE TABLE IF NOT EXISTS {t} (\
             id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY, \
             next_run_time BIGINT NULL, paused BOOLEAN NOT NULL DEFAULT FALSE, \
             doc LONGTEXT NOT NULL, version BIGINT NOT NULL DEFAULT 0, \
             lease_owner VARCHAR(255) NULL, lease_until BIGINT NULL, \
             INDEX {t}_next (next_run_time, id), INDEX {t}_lease (lease_until)\
             ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
        )]]
    }

    fn claim_many(t: &str, rows: usize) -> String {
        // The rows exist and are locked by this transaction: the upsert always updates.
        format!(
            "INSERT INTO {t} (id, next_run_time, paused, doc, version, lease_owner, lease_until) \
             VALUES {} ON DUPLICATE KEY UPDATE next_run_time = VALUES(next_run_time), \
             paused = VALUES(paused), doc = VALUES(doc), version = VALUES(version), \
             lease_owner = VALUES(lease_owner), lease_until = VALUES(lease_until)",
            super::list(rows, "(?, ?, ?, ?, ?, ?, ?)")
        )
    }

    fn lock_conflict(e: &dyn sqlx::error::DatabaseError) -> bool {
        // SQLSTATE 40001: deadlock victim; 1205 (HY000): lock wait timeout.
        matches!(e.code().as_deref(), Some("40001")) || e.message().contains("Lock wait timeout")
    }
}

/// A lazily connecting pool from a `mysql://` URL.
pub(super) fn pool(url: &str) -> Result<Pool<MySql>> {
    let url = url.replacen("mariadb://", "mysql://", 1);
    let opts = MySqlConnectOptions::from_str(&url).map_err(|e| bad_url(&url, &e))?;
    Ok(MySqlPoolOptions::new()
        .max_connections(5)
        .acquire_timeout(Duration::from_secs(5))
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                    .await?;
                Ok(())
            })
        })
        .connect_lazy_with(opts))
}
