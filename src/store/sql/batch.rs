//! Multi-row statements: how many rows one statement writes, and its placeholder list. A
//! leaf: every other file of the SQL store may use it.

/// Rows written per statement when claiming or releasing a batch (7 parameters a row
/// stays well below every database's limit).
pub(super) const BATCH: usize = 500;

/// `n` copies of `item`, comma-separated: the placeholders of a batch statement.
pub(super) fn list(n: usize, item: &str) -> String {
    vec![item; n].join(", ")
}
