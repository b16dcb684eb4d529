//! Straight to the database through sqlx, bypassing the store: for rows no store would
//! write (documents that are not JSON, values of another type, copies that disagree) and
//! for reading what the database holds. Each call opens a connection of its own.

#![cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]

use chrono::{DateTime, Utc};
use sqlx::AssertSqlSafe;

/// Runs `$body` with `$pool` bound to a one-connection pool on the database at `$url`
/// (whatever its kind), and closes the pool after.
macro_rules! on_pool {
    (@on $db:ty, $url:expr, $pool:ident => $body:expr) => {{
        let $pool = sqlx::pool::PoolOptions::<$db>::new()
            .max_connections(1)
            .connect($url)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", $url));
        let r = $body;
        $pool.close().await;
        r
    }};
    ($url:expr, $pool:ident => $body:expr) => {{
        let url: &str = $url;
        match url.split_once(':').map_or("", |(s, _)| s) {
            #[cfg(feature = "sqlite")]
            "sqlite" => on_pool!(@on sqlx::Sqlite, url, $pool => $body),
            #[cfg(feature = "postgres")]
            "postgres" | "postgresql" => on_pool!(@on sqlx::Postgres, url, $pool => $body),
            #[cfg(feature = "mysql")]
            "mysql" | "mariadb" => on_pool!(@on sqlx::MySql, url, $pool => $body),
            other => panic!("not an SQL URL this build has a driver for: {other}"),
        }
    }};
}

/// Runs one statement as is; the number of rows it changed (PostgreSQL: or selected).
pub async fn execute(url: &str, sql: &str) -> u64 {
    on_pool!(url, pool => sqlx::query(AssertSqlSafe(sql.to_string()))
        .execute(&pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .rows_affected())
}

/// Runs one query as is and returns its first column, which must be text.
pub async fn query_text(url: &str, sql: &str) -> Vec<String> {
    on_pool!(url, pool => sqlx::query_scalar::<_, String>(AssertSqlSafe(sql.to_string()))
        .fetch_all(&pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}")))
}

/// Writes a row into the store's `table` as is, bypassing every check: `doc` as the
/// document, `next` (in µs, rounded up as the store writes it) as the `next_run_time`
/// column, version 0.
pub async fn insert_row(url: &str, table: &str, id: &str, next: Option<DateTime<Utc>>, doc: &str) {
    let values = if url.starts_with("postgres") {
        "($1, $2, $3, $4, 0)"
    } else {
        "(?, ?, ?, ?, 0)"
    };
    let sql =
        format!("INSERT INTO {table} (id, next_run_time, paused, doc, version) VALUES {values}");
    let next_us = next.map(|t| {
        let us = t.timestamp_micros();
        if t.timestamp_subsec_nanos().is_multiple_of(1000) {
            us
        } else {
            us + 1
        }
    });
    on_pool!(url, pool => sqlx::query(AssertSqlSafe(sql.clone()))
        .bind(id)
        .bind(next_us)
        .bind(next.is_none())
        .bind(doc)
        .execute(&pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .rows_affected());
}

/// Inserts a row into `table` with the SQL literals `values` for its columns after the id
/// (`next_run_time, doc, version, lease_owner, lease_until`), as is: values of any type.
pub async fn insert_values(url: &str, table: &str, id: &str, values: &str) -> u64 {
    let sql = format!(
        "INSERT INTO {table} (id, next_run_time, doc, version, lease_owner, lease_until) \
         VALUES ('{id}', {values})"
    );
    execute(url, &sql).await
}
