//! MySQL 8 and MariaDB 10.6+: claims with `FOR UPDATE SKIP LOCKED` under READ COMMITTED
//! (no gap locks, so concurrent claimers do not deadlock on the next-run-time index).

use std::str::FromStr;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{Executor, MySql, Pool};

use super::batch::list;
use super::dialect::Dialect;
use super::url::bad_url;
use crate::error::Result;

impl Dialect for MySql {
    const LABEL: &'static str = "MySQL";
    const LOCK_SKIP: &'static str = " FOR UPDATE SKIP LOCKED";
    const LOCK: &'static str = " FOR UPDATE";
    const UPDATE_RETURNING: bool = false;
    // The no-op update only swallows duplicate keys (INSERT IGNORE would turn other
    // errors into warnings too).
    const KEEP_EXISTING: &'static str = " ON DUPLICATE KEY UPDATE run_id = run_id";
    const BEGIN: Option<&'static str> = None;
    const POLLS: bool = true;
    const DEFAULT_POOL_SIZE: u32 = 5;

    fn pool(opts: MySqlConnectOptions, size: u32) -> Pool<MySql> {
        MySqlPoolOptions::new()
            .max_connections(size)
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                        .await?;
                    Ok(())
                })
            })
            .connect_lazy_with(opts)
    }

    fn rows_affected(r: &sqlx::mysql::MySqlQueryResult) -> u64 {
        r.rows_affected()
    }

    fn migrations(t: &str) -> Vec<Vec<String>> {
        // Indexes inline: MySQL 8 has no CREATE INDEX IF NOT EXISTS.
        vec![
            vec![format!(
                "CREATE TABLE IF NOT EXISTS {t} (\
             id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY, \
             next_run_time BIGINT NULL, paused BOOLEAN NOT NULL DEFAULT FALSE, \
             doc LONGTEXT NOT NULL, version BIGINT NOT NULL DEFAULT 0, \
             lease_owner VARCHAR(255) NULL, lease_until BIGINT NULL, \
             INDEX {t}_next (next_run_time, id), INDEX {t}_lease (lease_until)\
             ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
            )],
            vec![
                // The run ledger: as on PostgreSQL (see there), with the index on active runs
                // led by the state (MySQL has no partial indexes).
                format!(
                    "CREATE TABLE IF NOT EXISTS {t}_runs (run_id BIGINT NOT NULL PRIMARY KEY, \
                 job_id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, \
                 scheduled BIGINT NOT NULL, slot SMALLINT NULL, \
                 owner VARCHAR(255) NOT NULL, manual BOOLEAN NOT NULL, attempt BIGINT NOT NULL, \
                 state VARCHAR(16) NOT NULL, queued BOOLEAN NOT NULL DEFAULT FALSE, \
                 cancel_requested BOOLEAN NOT NULL DEFAULT FALSE, submitted_at BIGINT NOT NULL, \
                 started_at BIGINT NULL, finished_at BIGINT NULL, error MEDIUMTEXT NULL, \
                 output MEDIUMTEXT NULL, \
                 UNIQUE INDEX {t}_runs_slot (job_id, scheduled, slot), \
                 INDEX {t}_runs_act (state, job_id), INDEX {t}_runs_time (scheduled, run_id)\
                 ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {t}_owners (\
                 scheduler_id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL \
                 PRIMARY KEY, alive_until BIGINT NOT NULL) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
                ),
            ],
            vec![
                // Retries: as on PostgreSQL (see there). MySQL 8 has no `ADD COLUMN IF NOT
                // EXISTS`: a second run fails with a duplicate column, which the migration
                // takes as done (`Dialect::already_applied`).
                format!("ALTER TABLE {t}_runs ADD COLUMN retry_at BIGINT NULL"),
                format!("ALTER TABLE {t}_runs MODIFY COLUMN slot BIGINT NULL"),
            ],
        ]
    }

    fn heartbeat(owners: &str) -> String {
        format!(
            "INSERT INTO {owners} (scheduler_id, alive_until) VALUES (?, ?) \
             ON DUPLICATE KEY UPDATE alive_until = VALUES(alive_until)"
        )
    }

    fn finish_many(runs: &str, rows: usize) -> String {
        // No `VALUES` table on both MySQL and MariaDB: a derived table of SELECTs. The
        // casts give its columns their types (an id compared as text or a double would
        // match the wrong run).
        let first = "SELECT CAST(? AS SIGNED) AS id, CAST(? AS CHAR) AS state, \
                     CAST(? AS SIGNED) AS started, CAST(? AS SIGNED) AS finished, ? AS error, \
                     ? AS output";
        let more = " UNION ALL SELECT CAST(? AS SIGNED), ?, CAST(? AS SIGNED), \
                    CAST(? AS SIGNED), ?, ?";
        format!(
            "UPDATE {runs} r JOIN ({first}{}) v ON r.run_id = v.id \
             SET r.state = v.state, r.started_at = COALESCE(v.started, r.started_at), \
             r.finished_at = v.finished, r.error = v.error, r.output = v.output, \
             r.queued = FALSE WHERE r.state IN ('claimed', 'started')",
            more.repeat(rows.saturating_sub(1))
        )
    }

    fn claim_many(t: &str, rows: usize) -> String {
        // The rows exist and are locked by this transaction: the upsert always updates.
        format!(
            "INSERT INTO {t} (id, next_run_time, paused, doc, version, lease_owner, lease_until) \
             VALUES {} ON DUPLICATE KEY UPDATE next_run_time = VALUES(next_run_time), \
             paused = VALUES(paused), doc = VALUES(doc), version = VALUES(version), \
             lease_owner = VALUES(lease_owner), lease_until = VALUES(lease_until)",
            list(rows, "(?, ?, ?, ?, ?, ?, ?)")
        )
    }

    fn lock_conflict(e: &dyn sqlx::error::DatabaseError) -> bool {
        // SQLSTATE 40001: deadlock victim; 1205 (HY000): lock wait timeout.
        matches!(e.code().as_deref(), Some("40001")) || e.message().contains("Lock wait timeout")
    }
}

/// The connect options of a `mysql://` URL. What the URL leaves out is taken as the `mysql`
/// client takes it (sqlx would use `root` and `localhost:3306` instead): the user is the
/// operating-system user, the host `MYSQL_HOST`, the port `MYSQL_TCP_PORT` and the
/// password `MYSQL_PWD` when those are set.
pub(super) fn options(url: &str) -> Result<MySqlConnectOptions> {
    let url = url.replacen("mariadb://", "mysql://", 1);
    let opts = MySqlConnectOptions::from_str(&url).map_err(|e| bad_url(&url, &e))?;
    Ok(client_defaults(opts, &Given::of(&url), |k| {
        std::env::var(k).ok()
    }))
}

/// Which parts of the authority a URL spells out.
#[derive(Debug, Default, PartialEq)]
struct Given {
    user: bool,
    password: bool,
    host: bool,
    port: bool,
}

impl Given {
    fn of(url: &str) -> Given {
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        // `[::1]:3306`: the port follows the bracket.
        let port_part = hostport.rsplit_once(']').map_or(hostport, |(_, p)| p);
        Given {
            user: userinfo.is_some_and(|u| !u.split(':').next().unwrap_or("").is_empty()),
            password: userinfo.is_some_and(|u| u.contains(':')),
            host: !hostport.is_empty() && !hostport.starts_with(':'),
            port: port_part.contains(':'),
        }
    }
}

/// Fills in what the URL left out, the way the `mysql` client does (`env` reads a variable).
fn client_defaults(
    mut opts: MySqlConnectOptions,
    given: &Given,
    env: impl Fn(&str) -> Option<String>,
) -> MySqlConnectOptions {
    if !given.user {
        if let Ok(user) = whoami::username() {
            opts = opts.username(&user);
        }
    }
    if !given.password {
        if let Some(pwd) = env("MYSQL_PWD") {
            opts = opts.password(&pwd);
        }
    }
    if !given.host {
        if let Some(host) = env("MYSQL_HOST") {
            opts = opts.host(&host);
        }
    }
    if !given.port {
        if let Some(port) = env("MYSQL_TCP_PORT").and_then(|p| p.parse().ok()) {
            opts = opts.port(port);
        }
    }
    opts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_parts_are_given() {
        let all = Given {
            user: true,
            password: true,
            host: true,
            port: true,
        };
        assert_eq!(Given::of("mysql://u:p@h:1/db"), all);
        assert_eq!(
            Given::of("mysql://h/db"),
            Given {
                host: true,
                ..Given::default()
            }
        );
        assert_eq!(Given::of("mysql:///db"), Given::default());
        assert_eq!(
            Given::of("mysql://u@[::1]:3306/db?x=y"),
            Given {
                user: true,
                host: true,
                port: true,
                ..Given::default()
            }
        );
        assert_eq!(
            Given::of("mysql://:pw@h"),
            Given {
                password: true,
                host: true,
                ..Given::default()
            }
        );
    }

    #[test]
    fn left_out_parts_come_from_the_client_environment() {
        let env = |k: &str| match k {
            "MYSQL_HOST" => Some("db.example".to_string()),
            "MYSQL_TCP_PORT" => Some("3307".to_string()),
            "MYSQL_PWD" => Some("secret".to_string()),
            _ => None,
        };
        let url = "mysql:///test";
        let opts = client_defaults(
            MySqlConnectOptions::from_str(url).unwrap(),
            &Given::of(url),
            env,
        );
        assert_eq!(opts.get_host(), "db.example");
        assert_eq!(opts.get_port(), 3307);
        assert_eq!(opts.get_username(), whoami::username().unwrap());
        // What the URL says wins.
        let url = "mysql://app@h:3306/test";
        let opts = client_defaults(
            MySqlConnectOptions::from_str(url).unwrap(),
            &Given::of(url),
            env,
        );
        assert_eq!(
            (opts.get_host(), opts.get_port(), opts.get_username()),
            ("h", 3306, "app")
        );
    }
}
