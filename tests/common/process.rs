//! Child processes run to completion within a bound: a command that hangs is killed and the test
//! fails with what it printed, instead of the test hanging until CI's limit. Servers the tests
//! start are waited on the same way, by their logs ([`watch_log`]).

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
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

/// A server that exited before its log showed what [`watch_log`] waited for.
#[derive(Debug)]
pub struct Exited {
    /// How it exited.
    pub status: ExitStatus,
    /// Its log from where the wait began, which says why.
    pub log: String,
}

/// Waits until the log file `log` of the server `child`, past its first `skip` bytes (what
/// earlier runs wrote there), shows what `look` looks for, and returns what `look` found in it.
///
/// The log, not an answer on the server's port, says that the server is up: an answer may come
/// from another process that took the port, while the log is the server's own. `look` sees only
/// whole lines, so that it never reads a half-written one. `Err` when the server exits first;
/// past `timeout` it is killed and the call panics with the log (`what` names the server).
/// Blocks: call it from `block_in_place` in async tests.
pub fn watch_log<T>(
    child: &mut Child,
    log: &Path,
    skip: usize,
    timeout: Duration,
    what: &str,
    mut look: impl FnMut(&str) -> Option<T>,
) -> Result<T, Exited> {
    let read = || {
        let bytes = std::fs::read(log).unwrap_or_default();
        String::from_utf8_lossy(bytes.get(skip..).unwrap_or_default()).into_owned()
    };
    let deadline = Instant::now() + timeout;
    loop {
        // Whether it exited is asked before the log is read, so an exit's last words are read.
        let status = child
            .try_wait()
            .unwrap_or_else(|e| panic!("{what}: cannot wait for the process: {e}"));
        let text = read();
        let whole_lines = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
        if let Some(found) = look(whole_lines) {
            return Ok(found);
        }
        if let Some(status) = status {
            return Err(Exited { status, log: text });
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: not up within {timeout:?}; log:\n{}", read());
        }
        std::thread::sleep(POLL);
    }
}

/// The length of the file at `path`, 0 when there is none: where a server's log appended by a
/// new run starts, for [`watch_log`]'s `skip`.
pub fn file_len(path: &Path) -> usize {
    std::fs::metadata(path).map_or(0, |m| usize::try_from(m.len()).expect("a log file fits in memory"))
}

/// All of `file`, from its start.
fn read(mut file: File) -> String {
    let mut bytes = Vec::new();
    file.rewind().expect("rewind");
    file.read_to_end(&mut bytes).expect("read output");
    String::from_utf8_lossy(&bytes).into_owned()
}
