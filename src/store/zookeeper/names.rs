//! Znode names: job ids percent-encoded into node names, and index entries named by the
//! job's next run time.

use zookeeper_client as zk;

use super::envelope::{document_next, Envelope};
use crate::store::common::micros_ceil;

pub(super) fn encode(id: &str) -> String {
    let mut out = String::with_capacity(id.len() + 2);
    out.push_str("j-");
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(super) fn decode_name(name: &str) -> Option<String> {
    let s = name.strip_prefix("j-")?;
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            out.push(u8::from_str_radix(s.get(i + 1..i + 3)?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

pub(super) fn index_name(next_us: i64, node: &str) -> String {
    format!("{:020}~{node}", next_us.max(0))
}

pub(super) fn parse_index(name: &str) -> Option<(i64, &str)> {
    let (t, node) = name.split_once('~')?;
    Some((t.parse().ok()?, node))
}

pub(super) fn persistent() -> zk::CreateOptions<'static> {
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())
}

/// The index entries a stored job may have: the one its envelope names and the one its
/// JSON document names (they differ only in a record written by hand).
pub(super) fn entries_of(node: &str, data: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(env) = serde_json::from_slice::<Envelope>(data) {
        if let Some(t) = env.next_run_time {
            out.push(index_name(t, node));
        }
        if let Some(t) = document_next(&env) {
            let e = index_name(micros_ceil(t), node);
            if !out.contains(&e) {
                out.push(e);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for id in ["a", "job/with/slashes", "..", "50%~off", "ünï", ""] {
            let n = encode(id);
            assert!(!n.contains('/') && !n.contains('~'), "{n}");
            assert_eq!(decode_name(&n).as_deref(), Some(id));
        }
    }
}
