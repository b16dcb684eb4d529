//! The SQL statements a store runs, built once per start from the validated table name.

use super::dialect::Dialect;

/// SQL statements, built once per start from the validated table name.
#[derive(Debug)]
pub(super) struct Statements {
    pub(super) select_due: String,
    pub(super) delete: String,
    pub(super) insert: String,
    pub(super) replace: String,
    pub(super) update_cas: String,
    pub(super) select_version: String,
    pub(super) lookup: String,
    pub(super) all: String,
    pub(super) delete_all: String,
    pub(super) next: String,
    pub(super) notify: Option<String>,
}

impl Statements {
    pub(super) fn new<DB: Dialect>(t: &str) -> Self {
        let p = DB::placeholders;
        // Every row read has these columns, in this order (see `Core::read_row`).
        let cols = "id, doc, version, lease_owner, lease_until, next_run_time";
        Statements {
            select_due: p(&format!(
                "SELECT {cols} FROM {t} WHERE next_run_time <= ? \
                 AND (lease_until IS NULL OR lease_until <= ? OR lease_owner = ?) \
                 ORDER BY next_run_time, id LIMIT ?{}",
                DB::LOCK_SKIP
            )),
            delete: p(&format!("DELETE FROM {t} WHERE id = ?")),
            insert: p(&format!(
                "INSERT INTO {t} (id, next_run_time, paused, doc, version) \
                 VALUES (?, ?, ?, ?, ?)"
            )),
            replace: p(&format!(
                "UPDATE {t} SET next_run_time = ?, paused = ?, doc = ?, version = ?, \
                 lease_owner = NULL, lease_until = NULL WHERE id = ?"
            )),
            update_cas: p(&format!(
                "UPDATE {t} SET next_run_time = ?, paused = ?, doc = ?, version = ? \
                 WHERE id = ? AND version = ?"
            )),
            select_version: p(&format!("SELECT version FROM {t} WHERE id = ?")),
            lookup: p(&format!("SELECT {cols} FROM {t} WHERE id = ?")),
            all: format!("SELECT {cols} FROM {t} ORDER BY paused, next_run_time, id"),
            delete_all: format!("DELETE FROM {t}"),
            // The earliest time this scheduler could claim something: rows free of other
            // leases (or whose lease ends before they are due) at their next run time, and
            // rows leased by another scheduler when that lease ends. Each half walks its
            // own index; one statement, so both halves see the same snapshot (two
            // statements could miss a row whose lease was released in between, and report
            // nothing due at all).
            next: p(&format!(
                "SELECT id, t FROM (SELECT id, next_run_time AS t FROM {t} \
                 WHERE next_run_time IS NOT NULL AND (lease_until IS NULL OR lease_owner = ? \
                 OR lease_until <= next_run_time) ORDER BY next_run_time, id LIMIT ?) AS free \
                 UNION ALL \
                 SELECT id, t FROM (SELECT id, lease_until AS t FROM {t} \
                 WHERE lease_until IS NOT NULL AND next_run_time IS NOT NULL \
                 AND lease_owner <> ? AND lease_until > next_run_time \
                 ORDER BY lease_until, id LIMIT ?) AS leased"
            )),
            notify: DB::notify_sql().map(p),
        }
    }
}
