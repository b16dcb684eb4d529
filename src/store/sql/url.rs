//! Reading SQL store URLs: apsched's own parameters (the pool size), the schemes this build
//! has, and the error for a URL the driver cannot parse. A leaf of the SQL store.

use crate::error::{Error, Result};

/// The URL parameters that set the pool size (apsched's, so they are taken out before the
/// driver sees the URL).
const POOL_SIZE_PARAMS: [&str; 2] = ["pool_size", "max_connections"];

/// `url` without its pool-size parameter, and the size it gave.
pub(super) fn take_pool_size(url: &str) -> Result<(String, Option<u32>)> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), None));
    };
    let mut size = None;
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !POOL_SIZE_PARAMS.contains(&key) {
            kept.push(pair);
            continue;
        }
        match value.parse::<u32>() {
            Ok(n) if n >= 1 => size = Some(n),
            _ => {
                return Err(Error::InvalidStoreUrl {
                    url: url.to_string(),
                    reason: format!("{key} must be a whole number of connections, at least 1"),
                })
            }
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, size))
}

/// A URL the driver could not parse.
pub(super) fn bad_url(url: &str, e: &sqlx::Error) -> Error {
    Error::InvalidStoreUrl {
        url: url.to_string(),
        reason: e.to_string(),
    }
}

/// The URL schemes of the SQL databases this build has (their cargo features).
pub(super) fn enabled_schemes() -> String {
    let schemes: &[&str] = &[
        #[cfg(feature = "sqlite")]
        "sqlite",
        #[cfg(feature = "postgres")]
        "postgres",
        #[cfg(feature = "mysql")]
        "mysql",
    ];
    schemes.join(", ")
}
