//! The `recgw serve` binary as a child process, for what only the real process shows: its
//! signal handling, and every line it writes (stderr and stdout alike, into one log file the
//! tests read).

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use super::gateway::{READY_TIMEOUT, Reply, eventually, http_client, repo, send};
use super::process::watch_log;

/// The `recgw serve` child process; killed on drop if still running.
pub struct Process {
    /// The process.
    pub child: Child,
    /// Its JSON log (stderr, with stdout appended to the same file), which the tests read and
    /// failures show.
    log: PathBuf,
    /// Where it listens, as its `recgw listening` line says: it is told port 0, so that it picks
    /// a port no other process can take first.
    addr: SocketAddr,
}

impl Process {
    /// `recgw serve` with JSON logs at `info` into `log`, configured further by `configure`
    /// (arguments, settings in the environment, which must listen on port 0, or another
    /// `RUST_LOG`); returns once it listens. Call it on the multi-threaded runtime: it waits in
    /// `block_in_place`.
    pub fn serve(log: PathBuf, configure: impl FnOnce(&mut Command) -> &mut Command) -> Process {
        let mut command = Command::new(env!("CARGO_BIN_EXE_recgw"));
        command.env("RUST_LOG", "info");
        // Appending, so that the two streams sharing the file never write over each other.
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        configure(&mut command)
            .arg("serve")
            .env("RUST_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup log file"))
            .stderr(file);
        let mut child = command.spawn().expect("run recgw serve");
        let addr = tokio::task::block_in_place(|| {
            watch_log(&mut child, &log, 0, READY_TIMEOUT, "recgw serve", listening_addr)
        })
        .unwrap_or_else(|exited| panic!("recgw exited with {} before listening:\n{}", exited.status, exited.log));
        Process { child, log, addr }
    }

    /// `http://addr`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `recgw serve` over the repository's demo `experiments/` and `models/` (read by pages,
    /// without serving snapshots), with the settings and variables `env` on top, logging into
    /// `dir/recgw.log`; see [`Process::serve`].
    pub fn demo(dir: &Path, env: &[(&str, &str)]) -> Process {
        Process::serve(dir.join("recgw.log"), |command| {
            command
                .env("RECGW__SERVER__LISTEN", "127.0.0.1:0")
                .env("RECGW__EXPERIMENTS__DIR", repo().join("experiments"))
                .env("RECGW__MODELS__ROOT", repo().join("models"))
                .env("RECGW__MODELS__SNAPSHOT_MAX_BYTES", "0")
                .envs(env.iter().copied())
        })
    }

    /// `GET path`, through the harness's [`send`] (so the answer is checked against
    /// `openapi.yaml`).
    pub async fn get(&self, path: &str) -> Reply {
        send(
            &http_client(),
            Method::GET,
            &format!("{}{path}", self.base()),
            &[],
            None,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", self.log()))
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until its log has a JSON line whose message is `message`; returns the line.
    pub async fn logged(&self, message: &str) -> Value {
        eventually(READY_TIMEOUT, &format!("a {message:?} line"), async || {
            let log = self.log();
            log.lines()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .find(|line| line["fields"]["message"] == message)
                .ok_or(log)
        })
        .await
    }

    /// Sends it SIGTERM, as an orchestrator stopping it does.
    pub fn sigterm(&self) {
        let pid = self.child.id().to_string();
        let kill = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(kill.success(), "kill -TERM {pid}");
    }

    /// Its exit status, within 15 s of `since` (the SIGTERM).
    pub async fn exit(&mut self, since: Instant) -> ExitStatus {
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                since.elapsed() < Duration::from_secs(15),
                "recgw still running 15 s after SIGTERM:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The address of the `recgw listening` line of a JSON log, which the gateway writes once it is
/// bound (to the port it picked, when told port 0).
fn listening_addr(log: &str) -> Option<SocketAddr> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["fields"]["message"] == "recgw listening")
        .and_then(|line| line["fields"]["addr"].as_str()?.parse().ok())
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
