//! `promtool check metrics`, the linter Prometheus ships, run on a `/metrics` exposition: what it
//! accepts without a word is what Prometheus and its conventions accept.
//!
//! Needs `promtool` on PATH (the Debian package `prometheus`; `scripts/test` installs it).

use std::process::Command;
use std::time::Duration;

use super::process::run_bounded;

/// How long promtool gets; it answers in well under a second.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `promtool check metrics` on `exposition`; panics with what it said and the exposition
/// unless it succeeded and said nothing (a warning is a failure too). Blocks: call it from
/// `spawn_blocking` or `block_in_place` in async tests.
pub fn check_metrics(exposition: &str) {
    let finished = run_bounded(
        Command::new("promtool").args(["check", "metrics"]),
        exposition.as_bytes(),
        TIMEOUT,
    );
    let said = format!("{}{}", finished.stdout, finished.stderr);
    assert!(
        finished.success() && said.is_empty(),
        "promtool check metrics ({}):\n{said}\n--- /metrics ---\n{exposition}",
        finished.status
    );
}
