//! The trigger conformance probe (`docs/conformance.md`).
//!
//! ```text
//! cargo run --release --example conformance -- INPUT.json
//! ```
//!
//! Prints one JSON object on stdout and exits 0; never panics on any input. The replay logic
//! is `tests/conformance/mod.rs`, shared with `tests/triggers.rs`.

use std::io::Write;

use serde_json::{json, Value};

#[path = "../tests/conformance/mod.rs"]
mod conformance;

fn main() {
    let output = match std::env::args().nth(1) {
        None => json!({"cases": [], "invalid": [], "error": "usage: conformance INPUT.json"}),
        Some(path) => match std::fs::read_to_string(&path) {
            Err(e) => {
                json!({"cases": [], "invalid": [], "error": format!("cannot read {path}: {e}")})
            }
            Ok(text) => match serde_json::from_str::<Value>(&text) {
                Err(e) => {
                    json!({"cases": [], "invalid": [], "error": format!("{path} is not JSON: {e}")})
                }
                Ok(input) => conformance::run_input(&input),
            },
        },
    };
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{output}");
    let _ = stdout.flush();
}
