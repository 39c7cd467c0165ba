//! Child processes run to completion within a bound: a command that hangs is killed and the test
//! fails with what it printed, instead of the test hanging until CI's limit.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How often a bounded run looks whether the child has finished.
const POLL: Duration = Duration::from_millis(20);

/// What a finished child did.
#[derive(Debug)]
pub struct Finished {
    /// How it exited.
    pub status: ExitStatus,
    /// Its standard output, lossily UTF-8.
    pub stdout: String,
    /// Its standard error, lossily UTF-8.
    pub stderr: String,
}

impl Finished {
    /// Whether it exited with status 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Its stdout; panics with both outputs unless it succeeded.
    pub fn expect_success(self, what: &str) -> String {
        assert!(
            self.success(),
            "{what} exited with {}:\n{}\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self.stdout
    }
}

/// Runs `command` with `stdin` as its whole standard input and waits at most `timeout` for it
/// to exit; past that it is killed and the call panics with what it printed.
///
/// Output goes to temporary files rather than pipes, so a child printing more than a pipe
/// holds cannot block while it is waited for; stdin is written from a thread for the same
/// reason.
pub fn run_bounded(command: &mut Command, stdin: &[u8], timeout: Duration) -> Finished {
    try_run_bounded(command, stdin, timeout).unwrap_or_else(|e| panic!("{e}"))
}

/// [`run_bounded`], with `Err` when the command cannot be started (not installed, say), for the
/// callers that have another way when it cannot.
pub fn try_run_bounded(command: &mut Command, stdin: &[u8], timeout: Duration) -> Result<Finished, String> {
    let out = tempfile::tempfile().expect("temp file for stdout");
    let err = tempfile::tempfile().expect("temp file for stderr");
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(out.try_clone().expect("dup"))
        .stderr(err.try_clone().expect("dup"))
        .spawn()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_vec();
    // A child that exits without reading all of it makes the write fail; its exit says why.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(POLL);
    };
    writer.join().expect("stdin writer");
    let (stdout, stderr) = (read(out), read(err));
    match status {
        Some(status) => Ok(Finished { status, stdout, stderr }),
        None => panic!("{command:?} did not finish within {timeout:?}:\n{stdout}\n{stderr}"),
    }
}

/// All of `file`, from its start.
fn read(mut file: File) -> String {
    let mut bytes = Vec::new();
    file.rewind().expect("rewind");
    file.read_to_end(&mut bytes).expect("read output");
    String::from_utf8_lossy(&bytes).into_owned()
}
