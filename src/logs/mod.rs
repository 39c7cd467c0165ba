//! Exposure and event logs written as Parquet (README, "Exposure logs"): with `logs.root` set,
//! every served response becomes a row of `exposures/` and every event counted for the first
//! time a row of `events/`, so analysts can run GrowthBook's or Eppo's assignment SQL, or a
//! Spark job, over the same facts the gateway counted.
//!
//! **Off the request path.** A request pushes its row into a bounded in-memory buffer — one
//! short lock, no I/O, never a wait — and a background task writes what accumulated every
//! `logs.flush_interval`. A full buffer drops the row and counts it
//! (`logs_dropped_rows_total{table}`): a request is never slowed nor failed by its log.
//!
//! **Files.** Each flush writes, per table and per hour its rows fall in,
//! `{root}/{table}/dt=YYYY-MM-DD/hour=HH/part-{name}-{seq:08}.parquet`, where `name` is
//! `logs.replica_id` (if set) and a random run id drawn at each start, and `seq` counts this
//! process's files: names never collide between replicas, nor between runs of one replica.
//! A file is put under a hidden name (`.part-….parquet.tmp`, which Spark, Hive and pyarrow skip)
//! and then renamed into place, so a reader lists only whole files. (The object store's put is
//! itself atomic — the local store writes a temporary file and renames it, the HDFS one writes
//! `.{name}.tmp.N` and renames it — but the local store's temporary name, `{name}#N`, is not
//! hidden from readers; the extra rename makes both stores look alike.)
//!
//! **Failures.** A file that could not be written (the root unreachable, unwritable, or slower
//! than `logs.write_timeout`) stays in memory, encoded, and is written again at the next interval
//! under the *same* name: a write whose outcome was unknown (it timed out after renaming) is
//! overwritten by the retry, never duplicated. Rows held this way count against
//! `logs.max_buffered_rows` like buffered ones, so an outage past what the bound holds drops
//! new rows (counted, alerted on by `RecgwLogRowsDropped`) rather than grow memory.
//!
//! **Shutdown** writes what is buffered ([`LogWriter::drain`]) after the last request, within
//! `server.shutdown_grace`.

mod table;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

pub(crate) use table::{EventRow, Exposure};
use table::{Hour, Row};

use crate::config::LogSettings;
use crate::metrics::{LogCounters, Metrics};
use crate::store::{Locator, Place, StoreError};

/// How long [`LogWriter::drain`] waits between tries.
const DRAIN_RETRY: Duration = Duration::from_millis(100);

/// Microseconds since the Unix epoch, now.
pub(crate) fn now_us() -> i64 {
    let since = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
}

/// The rows of one table that are in memory, buffered or encoded and waiting to be written:
/// what the bound limits and `logs_pending_rows` shows.
#[derive(Debug)]
struct Held {
    /// Rows in memory now.
    rows: AtomicUsize,
    /// `logs.max_buffered_rows`.
    bound: usize,
    /// The table's metric handles.
    counters: LogCounters,
}

impl Held {
    /// Takes a place for one row; `false` (and the row counted as dropped) when the table holds
    /// its bound already.
    fn admit(&self) -> bool {
        if self.rows.fetch_add(1, Ordering::Relaxed) >= self.bound {
            self.rows.fetch_sub(1, Ordering::Relaxed);
            self.counters.dropped.inc();
            return false;
        }
        self.counters.pending.inc();
        true
    }

    /// `rows` left memory, written (or lost, when `written` is false).
    fn release(&self, rows: usize, written: bool) {
        self.rows.fetch_sub(rows, Ordering::Relaxed);
        self.counters.pending.sub(rows as i64);
        if written {
            self.counters.written.inc_by(rows as u64);
        } else {
            self.counters.dropped.inc_by(rows as u64);
        }
    }
}

/// Rows of one table pushed by requests since the last flush.
#[derive(Debug)]
struct Buffer<R> {
    /// The rows; the lock is held for a push or a swap, never across I/O.
    rows: Mutex<Vec<R>>,
    /// What the table holds in memory, shared with its files waiting to be written.
    held: Arc<Held>,
}

impl<R: Row> Buffer<R> {
    fn new(bound: usize, counters: LogCounters) -> Self {
        Buffer {
            rows: Mutex::new(Vec::new()),
            held: Arc::new(Held {
                rows: AtomicUsize::new(0),
                bound,
                counters,
            }),
        }
    }

    fn push(&self, row: R) {
        if self.held.admit() {
            self.rows.lock().unwrap_or_else(|p| p.into_inner()).push(row);
        }
    }

    fn take(&self) -> Vec<R> {
        std::mem::take(&mut *self.rows.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// An encoded file waiting to be written, under the name it keeps until it is.
#[derive(Debug)]
struct File {
    /// Its table.
    table: &'static str,
    /// Where it goes.
    path: Path,
    /// The hidden name it is put under before the rename.
    temporary: Path,
    /// The whole Parquet file.
    bytes: bytes::Bytes,
    /// Rows in it.
    rows: usize,
    /// Its table's count of rows in memory.
    held: Arc<Held>,
}

/// What the flusher owns: its file sequence and the files not yet written, oldest first.
#[derive(Debug, Default)]
struct Unwritten {
    /// The sequence number of the next file.
    seq: u64,
    /// Encoded files waiting, in the order they were sealed.
    files: VecDeque<File>,
    /// Whether the last write failed, so an outage is logged when it starts and when it ends,
    /// not at every interval.
    failing: bool,
}

/// The exposure and event logs of this replica.
#[derive(Debug)]
pub(crate) struct LogWriter {
    /// The log root: its store and folder.
    root: Place,
    /// `{replica_id}-{run}` or `{run}`: what makes this process's file names its own.
    name: String,
    /// `logs.flush_interval`.
    flush_interval: Duration,
    /// `logs.write_timeout`: how long one file's put and rename may take.
    write_timeout: Duration,
    /// Rows of `exposures/`.
    exposures: Buffer<Exposure>,
    /// Rows of `events/`.
    events: Buffer<EventRow>,
    /// The flusher's state; a tokio lock, since a flush holds it across writes (the periodic
    /// task and the shutdown drain take turns).
    unwritten: tokio::sync::Mutex<Unwritten>,
}

/// A random run id, 8 hex digits, drawn once per process.
fn run_id() -> String {
    let random = getrandom::u32().unwrap_or_else(|_| std::process::id() ^ (now_us() as u32));
    format!("{random:08x}")
}

impl LogWriter {
    /// The logs `settings` ask for, `None` when `logs.root` is not set. Resolving the root
    /// contacts nothing, so an unreachable `hdfs://` root does not delay start-up.
    pub(crate) fn new(settings: &LogSettings, metrics: &Metrics) -> Result<Option<Arc<LogWriter>>, StoreError> {
        let Some(root) = settings.root() else {
            return Ok(None);
        };
        // Log files are the only record of what they hold: sync them before counting them
        // written (models are re-readable from their source, so they need not be synced).
        let locator = Locator::with_local(root, object_store::local::LocalFileSystem::new().with_fsync(true))?;
        let run = run_id();
        let name = match settings.replica_id.as_str() {
            "" => run,
            replica => format!("{replica}-{run}"),
        };
        let bound = settings.max_buffered_rows;
        let writer = LogWriter {
            root: locator.root().clone(),
            flush_interval: settings.flush_interval,
            write_timeout: settings.write_timeout,
            exposures: Buffer::new(bound, metrics.logs.table(Exposure::TABLE)),
            events: Buffer::new(bound, metrics.logs.table(EventRow::TABLE)),
            unwritten: tokio::sync::Mutex::new(Unwritten::default()),
            name,
        };
        tracing::info!(
            root = %writer.root.uri_of(&writer.root.path),
            files = %format!("part-{}-*.parquet", writer.name),
            "writing exposure and event logs"
        );
        Ok(Some(Arc::new(writer)))
    }

    /// Buffers an exposure row (or drops and counts it when the buffer is full).
    pub(crate) fn exposure(&self, row: Exposure) {
        self.exposures.push(row);
    }

    /// Buffers an event row (or drops and counts it when the buffer is full).
    pub(crate) fn event(&self, row: EventRow) {
        self.events.push(row);
    }

    /// Writes everything buffered and every file waiting; `true` when nothing is left in
    /// memory. A failed write leaves its file (and those after it) for the next flush.
    pub(crate) async fn flush(&self) -> bool {
        let mut unwritten = self.unwritten.lock().await;
        self.seal(&self.exposures, &mut unwritten).await;
        self.seal(&self.events, &mut unwritten).await;
        self.write(&mut unwritten).await
    }

    /// Encodes what `buffer` holds into files, one per hour its rows fall in, on a blocking
    /// thread (a large interval's file takes a while to compress).
    async fn seal<R: Row>(&self, buffer: &Buffer<R>, unwritten: &mut Unwritten) {
        let rows = buffer.take();
        if rows.is_empty() {
            return;
        }
        let mut by_hour: BTreeMap<Hour, Vec<R>> = BTreeMap::new();
        for row in rows {
            by_hour.entry(Hour::of(row.timestamp_us())).or_default().push(row);
        }
        for (hour, rows) in by_hour {
            let count = rows.len();
            let seq = unwritten.seq;
            unwritten.seq += 1;
            let [dt, hour] = hour.folders();
            let folder = self
                .root
                .path
                .clone()
                .join(R::TABLE)
                .join(dt.as_str())
                .join(hour.as_str());
            let file_name = format!("part-{}-{seq:08}.parquet", self.name);
            let encoded = match tokio::task::spawn_blocking(move || table::encode(&rows)).await {
                Ok(encoded) => encoded.map_err(|e| e.to_string()),
                Err(panicked) => Err(panicked.to_string()),
            };
            match encoded {
                Ok(bytes) => unwritten.files.push_back(File {
                    table: R::TABLE,
                    temporary: folder.clone().join(format!(".{file_name}.tmp").as_str()),
                    path: folder.join(file_name.as_str()),
                    bytes: bytes.into(),
                    rows: count,
                    held: Arc::clone(&buffer.held),
                }),
                // Not expected (the rows are built to the schema): counted as dropped, since
                // they can never be written.
                Err(error) => {
                    tracing::error!(table = R::TABLE, rows = count, %error, "log rows could not be encoded; dropped");
                    buffer.held.release(count, false);
                }
            }
        }
    }

    /// Writes the waiting files, oldest first; after a table's file fails, that table's later
    /// files wait too (they would fail alike), and the other table's are still tried (a table
    /// folder may be unwritable on its own). `true` when every file was written.
    async fn write(&self, unwritten: &mut Unwritten) -> bool {
        let mut failed: Vec<&'static str> = Vec::new();
        let mut kept = VecDeque::new();
        while let Some(file) = unwritten.files.pop_front() {
            if failed.contains(&file.table) {
                kept.push_back(file);
                continue;
            }
            let outcome = match tokio::time::timeout(self.write_timeout, self.put(&file)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!(
                    "no answer within logs.write_timeout ({:?})",
                    self.write_timeout
                )),
            };
            match outcome {
                Ok(()) => file.held.release(file.rows, true),
                Err(error) => {
                    file.held.counters.write_failures.inc();
                    if failed.is_empty() && !unwritten.failing {
                        let uri = self.root.uri_of(&file.path);
                        tracing::warn!(file = %uri, %error, "log file could not be written; kept in memory and tried again every logs.flush_interval");
                    } else {
                        tracing::debug!(table = file.table, %error, "log file still not written");
                    }
                    failed.push(file.table);
                    kept.push_back(file);
                }
            }
        }
        unwritten.files = kept;
        let written = failed.is_empty();
        if written && std::mem::take(&mut unwritten.failing) {
            tracing::info!(root = %self.root.uri_of(&self.root.path), "log root writable again: every waiting log file is written");
        }
        unwritten.failing |= !written;
        written
    }

    /// Puts `file` under its hidden name, then renames it into place (replacing a copy an
    /// earlier try may have left).
    async fn put(&self, file: &File) -> object_store::Result<()> {
        let store: &dyn ObjectStore = &*self.root.store;
        store
            .put(&file.temporary, PutPayload::from_bytes(file.bytes.clone()))
            .await?;
        store.rename(&file.temporary, &file.path).await
    }

    /// Flushes every `logs.flush_interval` (the first after one interval).
    pub(crate) fn spawn_flushing(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let writer = Arc::downgrade(self);
        let interval = self.flush_interval;
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(writer) = writer.upgrade() else {
                    return;
                };
                writer.flush().await;
            }
        })
    }

    /// At shutdown, after the last request: flushes until nothing is left in memory or
    /// `deadline` passes (then says how many rows are lost); `true` when everything was
    /// written. Waits for a flush under way rather than cut it.
    pub(crate) async fn drain(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            match tokio::time::timeout_at(deadline, self.flush()).await {
                Ok(true) => return true,
                Ok(false) if tokio::time::Instant::now() + DRAIN_RETRY < deadline => {
                    tokio::time::sleep(DRAIN_RETRY).await;
                }
                _ => {
                    let lost = [&self.exposures.held, &self.events.held].map(|held| held.rows.load(Ordering::Relaxed));
                    tracing::error!(
                        exposures = lost[0],
                        events = lost[1],
                        "exposure and event log rows could not be written before exit"
                    );
                    return false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposure(timestamp_us: i64, request_id: &str) -> Exposure {
        Exposure {
            timestamp_us,
            user_id: "42".into(),
            experiment_id: None,
            variation_id: "default".into(),
            placement: "home".into(),
            model: "popular".into(),
            model_version: "v".into(),
            source: "local",
            forced: false,
            request_id: request_id.into(),
        }
    }

    /// Every file under `dir`, relative to it.
    fn files(dir: &std::path::Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(folder) = stack.pop() {
            for entry in std::fs::read_dir(&folder).expect("read dir") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    out.push(path.strip_prefix(dir).expect("under").display().to_string());
                }
            }
        }
        out.sort();
        out
    }

    #[tokio::test]
    async fn rows_of_two_hours_go_to_two_partitions_and_a_failed_file_keeps_its_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = LogSettings {
            root: Some(dir.path().display().to_string()),
            replica_id: "pod-1".into(),
            ..LogSettings::default()
        };
        let metrics = Metrics::new();
        let logs = LogWriter::new(&settings, &metrics).expect("root").expect("on");
        // 2026-12-01T20:59:59Z and 21:00:00Z.
        let nine_pm = (20_788 * 86_400 + 21 * 3_600) * 1_000_000;
        logs.exposure(exposure(nine_pm - 1_000_000, "a"));
        logs.exposure(exposure(nine_pm, "b"));
        logs.exposure(exposure(nine_pm + 1, "c"));
        assert!(logs.flush().await);
        let name = &logs.name;
        assert_eq!(
            files(dir.path()),
            [
                format!("exposures/dt=2026-12-01/hour=20/part-{name}-00000000.parquet"),
                format!("exposures/dt=2026-12-01/hour=21/part-{name}-00000001.parquet"),
            ]
        );
        assert!(name.starts_with("pod-1-") && name.len() == "pod-1-".len() + 8, "{name}");

        // The events folder is a file: the events file fails, the exposures file is written.
        std::fs::write(dir.path().join("events"), b"in the way").expect("block");
        logs.event(EventRow {
            timestamp_us: nine_pm,
            user_id: "42".into(),
            experiment_id: None,
            variation_id: "default".into(),
            event_type: "click",
            item_id: "7".into(),
            position: 0,
            event_id: "t:c0".into(),
            placement: "home".into(),
        });
        logs.exposure(exposure(nine_pm, "d"));
        assert!(!logs.flush().await, "the events file failed");
        assert!(!logs.flush().await, "and fails again");
        let counters = metrics.logs.table("events");
        assert_eq!(counters.write_failures.get(), 2);
        assert_eq!(counters.pending.get(), 1);
        assert_eq!(metrics.logs.table("exposures").written.get(), 4);
        std::fs::remove_file(dir.path().join("events")).expect("unblock");
        assert!(logs.flush().await);
        assert_eq!(counters.pending.get(), 0);
        assert_eq!(counters.written.get(), 1);
        let all = files(dir.path());
        // A flush seals exposures before events: the failed flush sealed exposures 2 and
        // events 3, which kept its name through the retries.
        assert!(
            all.contains(&format!("events/dt=2026-12-01/hour=21/part-{name}-00000003.parquet")),
            "{all:?}"
        );
        assert!(
            all.contains(&format!("exposures/dt=2026-12-01/hour=21/part-{name}-00000002.parquet")),
            "{all:?}"
        );
        assert_eq!(all.len(), 4, "no temporary file left, nothing written twice: {all:?}");
    }

    #[tokio::test]
    async fn a_full_buffer_drops_and_counts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = LogSettings {
            root: Some(format!("file://{}", dir.path().display())),
            max_buffered_rows: 2,
            ..LogSettings::default()
        };
        let metrics = Metrics::new();
        let logs = LogWriter::new(&settings, &metrics).expect("root").expect("on");
        for id in ["a", "b", "c"] {
            logs.exposure(exposure(0, id));
        }
        let counters = metrics.logs.table("exposures");
        assert_eq!((counters.pending.get(), counters.dropped.get()), (2, 1));
        assert!(logs.flush().await);
        assert_eq!((counters.pending.get(), counters.written.get()), (0, 2));
        logs.exposure(exposure(0, "d"));
        assert_eq!(counters.pending.get(), 1, "written rows free their place");
    }
}
