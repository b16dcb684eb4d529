//! Environment variables laid over a config (`APSCHED__JOB_DEFAULTS__MAX_INSTANCES=3`).
//!
//! The config is written out as a TOML table, each variable sets one key of it, and the
//! result is read back like a file: one reading path, so the shape errors read the same.

use super::error::{ConfigError, Problems};
use super::SchedulerConfig;
use crate::error::Result;

pub(super) fn overlay<K, V>(
    config: &SchedulerConfig,
    prefix: &str,
    vars: impl IntoIterator<Item = (K, V)>,
) -> Result<SchedulerConfig>
where
    K: AsRef<str>,
    V: AsRef<str>,
{
    let head = format!("{prefix}__");
    // Sorted, so the problems (and which of two spellings of one key wins) do not depend on
    // the order the environment lists its variables in.
    let mut vars: Vec<(String, String)> = vars
        .into_iter()
        .filter_map(|(k, v)| {
            let k = k.as_ref();
            k.strip_prefix(&head)
                .map(|_| (k.to_string(), v.as_ref().to_string()))
        })
        .collect();
    vars.sort();
    if vars.is_empty() {
        // Nothing to lay over: no round trip through TOML (which has no null, for one).
        return Ok(config.clone());
    }
    let mut table = toml::Table::try_from(config)
        .map_err(|e| ConfigError::one("config", format!("cannot be written as TOML: {e}")))?;
    let mut problems = Problems::default();
    for (name, value) in &vars {
        let keys: Vec<&str> = name[head.len()..].split("__").collect();
        if let Err(message) = set(&mut table, &keys, value) {
            problems.push(name.as_str(), message);
        }
    }
    problems.into_result()?;
    let text = toml::to_string(&table)
        .map_err(|e| ConfigError::one("config", format!("cannot be written as TOML: {e}")))?;
    SchedulerConfig::parse(&text, &format!("config with {prefix}__* variables"))
}

/// Sets the key at `keys` (nested tables; array entries by index) to `raw`.
fn set(table: &mut toml::Table, keys: &[&str], raw: &str) -> Result<(), String> {
    let (last, parents) = keys.split_last().ok_or("no key after the prefix")?;
    if keys.iter().any(|k| k.is_empty()) {
        return Err("empty key segment (a triple underscore, or a trailing __?)".into());
    }
    let mut node = table;
    for (depth, key) in parents.iter().enumerate() {
        let name = existing_key(node, key);
        let next = node
            .entry(name.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        node = match next {
            toml::Value::Table(t) => t,
            toml::Value::Array(items) => {
                return set_in_array(items, &name, &keys[depth + 1..], raw);
            }
            _ => return Err(format!("'{name}' is a value, not a table")),
        };
    }
    let name = existing_key(node, last);
    let value = coerce(node.get(&name), raw);
    node.insert(name, value);
    Ok(())
}

/// `keys[0]` indexes `items` (the array `name`); the rest is set inside that entry.
fn set_in_array(
    items: &mut [toml::Value],
    name: &str,
    keys: &[&str],
    raw: &str,
) -> Result<(), String> {
    let index: usize = keys[0].parse().map_err(|_| {
        format!(
            "'{name}' is an array: the next key must be an index, not '{}'",
            keys[0]
        )
    })?;
    let len = items.len();
    let item = items.get_mut(index).ok_or_else(|| {
        format!("'{name}' has {len} entries, so there is no entry {index} (indexes start at 0)")
    })?;
    match (item, &keys[1..]) {
        (toml::Value::Table(t), rest) if !rest.is_empty() => set(t, rest, raw),
        (item, []) => {
            *item = coerce(Some(item), raw);
            Ok(())
        }
        _ => Err(format!("entry {index} of '{name}' is a value, not a table")),
    }
}

/// The key of `table` equal to `key` without regard to case, else `key` lower-cased.
fn existing_key(table: &toml::Table, key: &str) -> String {
    table
        .keys()
        .find(|k| k.eq_ignore_ascii_case(key))
        .cloned()
        .unwrap_or_else(|| key.to_ascii_lowercase())
}

/// The variable's text as a TOML value: a string where the config has a string (`"1234"`
/// stays a string), else read as TOML if it is TOML (`3`, `2.5`, `true`, `[1, 2]`), else a
/// string. Whether the value fits its key is for the config's own reading to say (some keys
/// take a number or a word, like `misfire_grace_time = "none"`).
fn coerce(old: Option<&toml::Value>, raw: &str) -> toml::Value {
    if let Some(toml::Value::String(_)) = old {
        return toml::Value::String(raw.to_string());
    }
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}
