//! The `recgw` binary run as a user would (ARCHITECTURE.md §2), bounded (`common/process.rs`),
//! with nothing from the caller's environment that would change what it does — no `RECGW*`
//! settings, no proxy (`recgw report` would send even loopback URLs to `http_proxy`) — and
//! quiet logs. `recgw validate`, whose refusals every experiment feature checks by the line
//! naming file and field, and `recgw report` are run here for every test file.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::gateway::repo;
use super::process::{Finished, run_bounded};

/// How long one `recgw` command gets; the slowest, building a serving snapshot of a test
/// model, takes seconds.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// `recgw ARGS` in the repository, with no `RECGW*` or proxy variables from the caller's
/// environment and quiet logs.
pub fn recgw(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_recgw"));
    command.args(args).current_dir(repo()).env("RUST_LOG", "warn");
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        if name.starts_with("RECGW") || name.to_ascii_lowercase().ends_with("_proxy") {
            command.env_remove(key);
        }
    }
    command
}

/// `recgw validate DIR`, bounded by [`COMMAND_TIMEOUT`].
pub fn validate(dir: &Path) -> Finished {
    run_bounded(
        &mut recgw(&["validate", dir.to_str().expect("utf-8 path")]),
        b"",
        COMMAND_TIMEOUT,
    )
}

/// Its stdout and stderr, one after the other.
pub fn output(finished: &Finished) -> String {
    format!("{}\n{}", finished.stdout, finished.stderr)
}

/// The first line of `text` that names `file`; panics when none does.
pub fn line_naming<'a>(text: &'a str, file: &str) -> &'a str {
    text.lines()
        .find(|l| l.contains(file))
        .unwrap_or_else(|| panic!("no line names {file}: {text}"))
}

/// `recgw validate DIR` refuses the folder with a line naming `file` and `field` (as
/// `…file…: field: …`); `what` says in a failure what the folder holds. Returns the output.
pub fn assert_refused(dir: &Path, file: &str, field: &str, what: &str) -> String {
    let finished = validate(dir);
    let output = output(&finished);
    assert!(!finished.success(), "{what} accepted:\n{output}");
    assert!(
        output
            .lines()
            .any(|l| l.contains(file) && l.contains(&format!(": {field}: "))),
        "{what}: no line names {file} and {field}:\n{output}"
    );
    output
}

/// `recgw validate DIR` accepts the folder; `what` says in a failure what it holds. Returns
/// the output.
pub fn assert_accepted(dir: &Path, what: &str) -> String {
    let finished = validate(dir);
    let output = output(&finished);
    assert!(finished.success(), "{what} refused:\n{output}");
    output
}

/// `recgw report ARGS`, bounded by 30 s.
pub fn report(args: &[&str]) -> Finished {
    let mut command = recgw(&["report"]);
    command.args(args);
    run_bounded(&mut command, b"", Duration::from_secs(30))
}

/// [`report`] from async code, on a blocking thread.
pub async fn report_async(args: Vec<String>) -> Finished {
    tokio::task::spawn_blocking(move || report(&args.iter().map(String::as_str).collect::<Vec<_>>()))
        .await
        .expect("report thread")
}

/// `recgw report EXPERIMENT --url URL [--format F]`, which must succeed; its stdout.
pub fn report_stdout(url: &str, experiment: &str, format: Option<&str>) -> String {
    let mut args = vec![experiment, "--url", url];
    if let Some(format) = format {
        args.extend(["--format", format]);
    }
    report(&args).expect_success(&format!("recgw report {format:?}"))
}
