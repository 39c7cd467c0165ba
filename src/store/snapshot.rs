//! Serving snapshots: each loaded version of a per-user model converted once, by a sequential
//! read of its part files, into an immutable indexed file on the serving node, memory-mapped and
//! swapped in atomically — the approach of LinkedIn's Voldemort read-only stores and Spotify's
//! Sparkey. A lookup is a bisection over the mapped user index and a slice read: no Parquet
//! decoding and no I/O call of ours (pages of a recently written file are in the page cache;
//! the kernel brings back any that were evicted).
//!
//! Layout (little-endian), 8 bytes per (user, item) and 16 per user plus the item dictionary:
//!
//! | at | what |
//! | --- | --- |
//! | 0 | magic `RECGWSN1`, format 1 (u32), shape (u32: 1 nested, 2 long), integer user ids (u32), version length (u32) |
//! | 24 | users, entries, items, dictionary bytes (u64 each), xxh3-64 of everything after the header (u64) |
//! | 64 | the version string, padded to 8 bytes |
//! | body | entries: item number (u32) and score (f32), each user's in rank order |
//! | | users: key hash (u64), first entry (u32), entries (u32), sorted by hash |
//! | | dictionary: `items + 1` byte offsets (u64), then the item ids' UTF-8 bytes |
//!
//! A file is written under a temporary name and renamed, so a reader never sees half of one.
//! Its name is a hash of the model's location and version, so a restarted replica finds the
//! snapshot of the version it serves, checks the header's version and the checksum, and maps it
//! without reading the model again. A version's file is deleted when a newer version has
//! replaced it and no request holds it any more.
//!
//! The checksum finds damage, not forgery (it is not keyed), and a mapped file that shrinks
//! under the gateway kills it with SIGBUS at the next lookup past the new end. So the folder
//! must be this process's alone ([`private_dir`]), and files are written read-only.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fs::File;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use memmap2::Mmap;
use xxhash_rust::xxh3::{Xxh3, xxh3_64, xxh3_64_with_seed, xxh3_128};

use super::columns::UserKey;
use super::{Item, ModelSpec, RankedList};

const MAGIC: &[u8; 8] = b"RECGWSN1";
const FORMAT: u32 = 1;
const HEADER: usize = 64;
const ENTRY: usize = 8;
const USER: usize = 16;
/// Integer item ids below this are numbered through an array (16 MiB at most).
const SMALL_IDS: i64 = 1 << 22;

/// Where snapshots go and how large one may be.
#[derive(Debug, Clone)]
pub struct SnapshotSettings {
    /// The folder of snapshot files (`models.snapshot_dir`), or why snapshots are off (the
    /// folder could not be created or written, or is not private: see [`private_dir`]), which
    /// `/ready` shows for every model.
    pub dir: Result<PathBuf, String>,
    /// A model whose snapshot would be larger is served by page reads (`models.snapshot_max_bytes`).
    pub max_bytes: u64,
}

impl Default for SnapshotSettings {
    /// Snapshots off: what a registry built without [`SnapshotSettings`] does.
    fn default() -> Self {
        SnapshotSettings {
            dir: Err("no snapshot folder was given".into()),
            max_bytes: 0,
        }
    }
}

/// Permission bits of a snapshot file once written: readable by its owner only, and writable by
/// no one, so no tool of the service's own user replaces a mapped file in place by mistake.
pub(crate) const FILE_MODE: u32 = 0o400;

/// The effective user id of this process: who must own the snapshot folder.
pub(crate) fn process_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// `dir`, created (mode 0700, as are missing parents) if missing, when it is fit for
/// snapshots: owned by this process's user, with no permission for group or others, and
/// writable. Otherwise why not, and snapshots are off: another user who can write there can
/// plant a file that passes the unkeyed checksum, to be served, or truncate a mapped one,
/// which kills the gateway with SIGBUS; one who can read there reads every user's lists.
pub(crate) fn private_dir(dir: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let shown = dir.display();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {shown}: {e}"))?;
    let meta = std::fs::metadata(dir).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let uid = process_uid();
    if meta.uid() != uid {
        return Err(format!(
            "{shown} is owned by uid {}, not by this process's uid {uid}",
            meta.uid()
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{shown} has mode {mode:03o}: group and others must have no permission on it (chmod 700)"
        ));
    }
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| format!("cannot write in {shown}: {e}"))?;
    Ok(dir.to_path_buf())
}

/// How rows were laid out in the model a snapshot came from, for `/ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SnapshotShape {
    /// One row per user with a list of items.
    Nested,
    /// One row per (user, item).
    Long,
}

impl SnapshotShape {
    fn code(self) -> u32 {
        match self {
            SnapshotShape::Nested => 1,
            SnapshotShape::Long => 2,
        }
    }

    /// `nested` or `long`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            SnapshotShape::Nested => "nested",
            SnapshotShape::Long => "long",
        }
    }
}

/// The file of `version` of the model `spec` in `dir`: named after its location, its column
/// overrides (two arms reading one folder with other columns get other lists) and version.
pub(crate) fn path_for(dir: &Path, spec: &ModelSpec, version: &str) -> PathBuf {
    let name = xxh3_128(format!("{}\0{:?}\0{version}", spec.location, spec.columns).as_bytes());
    dir.join(format!("{name:032x}.snap"))
}

/// A mapped, checked snapshot.
pub(crate) struct Snapshot {
    /// The file's bytes.
    map: Mmap,
    /// The file, deleted on drop once `superseded`.
    path: PathBuf,
    /// Set when a newer version replaced this one: its file is not needed after the last
    /// request using it. (A process that stops leaves its files for its restart.)
    superseded: AtomicBool,
    /// Shape of the model it came from.
    shape: SnapshotShape,
    /// Whether request ids must parse as integers.
    int_users: bool,
    /// Section starts and counts.
    users: usize,
    entries_at: usize,
    users_at: usize,
    offsets_at: usize,
    bytes_at: usize,
    items: usize,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("path", &self.path)
            .field("users", &self.users)
            .field("bytes", &self.map.len())
            .finish_non_exhaustive()
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        if self.superseded.load(Ordering::Relaxed)
            && let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot delete an old snapshot");
        }
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

fn padded(n: usize) -> usize {
    n.div_ceil(8) * 8
}

impl Snapshot {
    /// The snapshot of `version` left at `path` by an earlier run: `Ok(None)` when there is no
    /// file, the error when there is one that does not check out, which is deleted (it is never
    /// served, and is rebuilt). It reads the whole file, up to `models.snapshot_max_bytes`: run
    /// it on a blocking thread, not a runtime worker.
    pub(crate) fn open_existing(path: &Path, version: &str) -> Result<Option<Snapshot>, String> {
        match Snapshot::open(path, version) {
            Ok(snapshot) => Ok(Some(snapshot)),
            Err(_) if !path.exists() => Ok(None),
            Err(problem) => {
                if let Err(e) = std::fs::remove_file(path)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(path = %path.display(), error = %e, "cannot delete an unusable snapshot");
                }
                Err(problem)
            }
        }
    }

    /// Maps the file at `path` if it is a whole, intact snapshot of `version`; the error says
    /// what is wrong with it otherwise (nothing is served from such a file).
    fn open(path: &Path, version: &str) -> Result<Snapshot, String> {
        let file = File::open(path).map_err(|e| e.to_string())?;
        // SAFETY: the file is only ever written under a temporary name and renamed into
        // place, never modified afterwards; a file truncated or altered by someone else is
        // caught by the length and checksum checks below before any lookup reads it.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| e.to_string())?;
        let bytes = &map[..];
        if bytes.len() < HEADER || &bytes[..8] != MAGIC {
            return Err("not a recgw snapshot".into());
        }
        if u32_at(bytes, 8) != FORMAT {
            return Err(format!(
                "snapshot format {} (this build reads {FORMAT})",
                u32_at(bytes, 8)
            ));
        }
        let shape = match u32_at(bytes, 12) {
            1 => SnapshotShape::Nested,
            2 => SnapshotShape::Long,
            other => return Err(format!("unknown shape {other}")),
        };
        let int_users = u32_at(bytes, 16) == 1;
        let version_len = u32_at(bytes, 20) as usize;
        let [users, entries, items, dict_bytes, checksum] = [24, 32, 40, 48, 56].map(|at| u64_at(bytes, at));
        let size = |n: u64| usize::try_from(n).map_err(|_| "section too large for this machine".to_string());
        let (users, entries, items, dict_bytes) = (size(users)?, size(entries)?, size(items)?, size(dict_bytes)?);
        let body = HEADER + padded(version_len);
        let entries_at = body;
        let users_at = entries_at + entries * ENTRY;
        let offsets_at = users_at + users * USER;
        let bytes_at = offsets_at + (items + 1) * 8;
        if bytes.len() != bytes_at + dict_bytes {
            return Err(format!(
                "{} bytes where the header says {}: truncated or overwritten",
                bytes.len(),
                bytes_at + dict_bytes
            ));
        }
        if bytes.get(HEADER..HEADER + version_len) != Some(version.as_bytes()) {
            return Err("the snapshot of another version".into());
        }
        if xxh3_64(&bytes[body..]) != checksum {
            return Err("checksum mismatch: the file is corrupt".into());
        }
        Ok(Snapshot {
            map,
            path: path.to_path_buf(),
            superseded: AtomicBool::new(false),
            shape,
            int_users,
            users,
            entries_at,
            users_at,
            offsets_at,
            bytes_at,
            items,
        })
    }

    /// The list of `user`, `None` when the model does not hold the user.
    pub(crate) fn lookup(&self, user: &str) -> Option<RankedList> {
        let hash = UserKey::of_request(user, self.int_users)?.hash64();
        let bytes = &self.map[..];
        let user_hash = |i: usize| u64_at(bytes, self.users_at + i * USER);
        let (mut lo, mut hi) = (0, self.users);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if user_hash(mid) < hash {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo == self.users || user_hash(lo) != hash {
            return None;
        }
        let record = self.users_at + lo * USER;
        let first = u32_at(bytes, record + 8) as usize;
        let len = u32_at(bytes, record + 12) as usize;
        let list: Vec<Item> = (0..len)
            .map(|i| {
                let at = self.entries_at + (first + i) * ENTRY;
                let item = (u32_at(bytes, at) as usize).min(self.items.saturating_sub(1));
                let start = u64_at(bytes, self.offsets_at + item * 8) as usize;
                let end = u64_at(bytes, self.offsets_at + (item + 1) * 8) as usize;
                // The checksum vouches for the bytes; a dictionary of valid UTF-8 was written.
                let id = std::str::from_utf8(&bytes[self.bytes_at + start..self.bytes_at + end]).unwrap_or_default();
                Item {
                    id: id.into(),
                    score: f32::from_bits(u32_at(bytes, at + 4)),
                    rank: i as u32 + 1,
                }
            })
            .collect();
        Some(list.into())
    }

    /// Distinct items in the dictionary: the catalogue the model can recommend from.
    pub(crate) fn items(&self) -> usize {
        self.items
    }

    /// Users in the snapshot.
    pub(crate) fn users(&self) -> usize {
        self.users
    }

    /// Size of the file.
    pub(crate) fn file_bytes(&self) -> usize {
        self.map.len()
    }

    /// The shape of the model it came from.
    pub(crate) fn shape(&self) -> SnapshotShape {
        self.shape
    }

    /// Marks the file for deletion once the last request using this version is done.
    pub(crate) fn supersede(&self) {
        self.superseded.store(true, Ordering::Relaxed);
    }
}

/// Why a snapshot was not built; the model is then served by page reads.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BuildError {
    /// The snapshot would exceed `models.snapshot_max_bytes`.
    #[error("a snapshot would exceed models.snapshot_max_bytes ({0} bytes)")]
    TooLarge(u64),
    /// Writing the file failed (disk full, folder read-only or gone).
    #[error("cannot write the snapshot {path}: {source}")]
    Io {
        /// The file being written.
        path: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The model cannot be served from a snapshot (e.g. two users share a key hash), or reading
    /// it failed.
    #[error("{0}")]
    Model(String),
}

/// The body written so far, hashed as it goes.
struct Body {
    /// The temporary file.
    out: BufWriter<File>,
    /// Checksum of the body.
    hasher: Xxh3,
}

impl Body {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.hasher.update(bytes);
        self.out.write_all(bytes)
    }
}

/// An item id as the dictionary keys it: integer ids are not turned into text to be interned.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ItemId<'a> {
    /// An integer column.
    Int(i64),
    /// A string column.
    Text(&'a str),
}

/// The hasher of the item dictionary, which looks up every item of the model (50M for a 1M × 50
/// model; std's SipHash took half of a conversion). Keys come from the model, not from
/// clients, so no collision flooding needs keyed hashing: integers are mixed by one
/// multiplication, text by xxh3.
#[derive(Default)]
struct ItemHasher(u64);

impl Hasher for ItemHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxh3_64_with_seed(bytes, self.0);
    }

    fn write_u8(&mut self, byte: u8) {
        self.write_u64(u64::from(byte));
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
    }

    fn write_i64(&mut self, v: i64) {
        self.write_u64(v as u64);
    }
}

/// The error of an I/O step on the temporary file `tmp`.
fn io_error(tmp: &Path) -> impl Fn(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: tmp.display().to_string(),
        source,
    }
}

/// Writes one snapshot file from users pushed in any order.
pub(crate) struct SnapshotWriter {
    /// The body so far; taken when the file is finished.
    body: Option<Body>,
    /// `(hash, first entry, entries)` per user, sorted when the file is finished.
    users: Vec<(u64, u32, u32)>,
    /// Entries written.
    entries: u64,
    /// Item numbers by id (one map per id type, so integer ids are not formatted to be looked
    /// up), and the ids' bytes and their end offsets in number order.
    ints: HashMap<i64, u32, BuildHasherDefault<ItemHasher>>,
    /// Numbers of integer ids below [`SMALL_IDS`] (what ALS models hold), by id: a lookup is one
    /// array read where a hash map probe missed the cache on nearly every item.
    small: Vec<u32>,
    texts: HashMap<Box<str>, u32, BuildHasherDefault<ItemHasher>>,
    dict: Vec<u8>,
    offsets: Vec<u64>,
    /// One user's entries, reused.
    scratch: Vec<u8>,
    /// Where it goes, and the name it has until it is whole.
    path: PathBuf,
    tmp: PathBuf,
    /// `models.snapshot_max_bytes`.
    max_bytes: u64,
    /// Version string, written in the header.
    version: String,
}

impl SnapshotWriter {
    /// Starts the snapshot of `version` of the model `spec` in `dir`.
    pub(crate) fn create(dir: &Path, max_bytes: u64, spec: &ModelSpec, version: &str) -> Result<Self, BuildError> {
        let path = path_for(dir, spec, version);
        // Unique per writer, so two gateways of one process building one version (tests do)
        // never write into the same file; the last rename wins, and both files are whole.
        static WRITERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let writer = WRITERS.fetch_add(1, Ordering::Relaxed);
        let tmp = path.with_extension(format!("tmp-{}-{writer}", std::process::id()));
        let out = {
            let io = io_error(&tmp);
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(&io)?;
            let mut out = BufWriter::with_capacity(1 << 20, file);
            out.write_all(&vec![0u8; HEADER + padded(version.len())]).map_err(&io)?;
            out
        };
        Ok(SnapshotWriter {
            body: Some(Body {
                out,
                hasher: Xxh3::new(),
            }),
            users: Vec::new(),
            entries: 0,
            ints: HashMap::default(),
            small: Vec::new(),
            texts: HashMap::default(),
            dict: Vec::new(),
            offsets: vec![0],
            scratch: Vec::new(),
            path,
            tmp,
            max_bytes,
            version: version.to_string(),
        })
    }

    /// The size the file would have now.
    fn size(&self) -> u64 {
        (HEADER + padded(self.version.len())) as u64
            + self.entries * ENTRY as u64
            + (self.users.len() * USER) as u64
            + (self.offsets.len() * 8) as u64
            + self.dict.len() as u64
    }

    /// The number of an item id, adding it to the dictionary on first sight.
    pub(crate) fn number(&mut self, id: ItemId<'_>) -> u32 {
        let next = (self.offsets.len() - 1) as u32;
        match id {
            ItemId::Int(v) if (0..SMALL_IDS).contains(&v) => {
                let slot = v as usize;
                if slot >= self.small.len() {
                    self.small.resize((slot + 1).next_power_of_two(), u32::MAX);
                }
                if self.small[slot] != u32::MAX {
                    return self.small[slot];
                }
                self.small[slot] = next;
                // Writing to a Vec cannot fail.
                let _ = write!(self.dict, "{v}");
            }
            ItemId::Int(v) => match self.ints.entry(v) {
                Entry::Occupied(number) => return *number.get(),
                Entry::Vacant(slot) => {
                    slot.insert(next);
                    // Writing to a Vec cannot fail.
                    let _ = write!(self.dict, "{v}");
                }
            },
            ItemId::Text(s) => {
                if let Some(&n) = self.texts.get(s) {
                    return n;
                }
                self.texts.insert(s.into(), next);
                self.dict.extend_from_slice(s.as_bytes());
            }
        }
        self.offsets.push(self.dict.len() as u64);
        next
    }

    /// Adds the whole ranked list (item numbers and scores, best first) of the user hashing to
    /// `hash`.
    pub(crate) fn push(&mut self, hash: u64, items: &[(u32, f32)]) -> Result<(), BuildError> {
        let first = u32::try_from(self.entries).map_err(|_| BuildError::Model("more than 2^32 entries".into()))?;
        let len = u32::try_from(items.len()).map_err(|_| BuildError::Model("a list of more than 2^32 items".into()))?;
        let mut chunk = std::mem::take(&mut self.scratch);
        chunk.clear();
        for (number, score) in items {
            chunk.extend_from_slice(&number.to_le_bytes());
            chunk.extend_from_slice(&score.to_bits().to_le_bytes());
        }
        if let Some(body) = self.body.as_mut() {
            body.write(&chunk).map_err(io_error(&self.tmp))?;
        }
        self.scratch = chunk;
        self.entries += u64::from(len);
        self.users.push((hash, first, len));
        if self.size() > self.max_bytes {
            return Err(BuildError::TooLarge(self.max_bytes));
        }
        Ok(())
    }

    /// Writes the user index, the dictionary and the header, renames the file into place and
    /// maps it. Two users sharing a hash cannot be told apart by the index: such a model is
    /// served by page reads (about one model in 10^7 of a million users).
    pub(crate) fn finish(mut self, shape: SnapshotShape, int_users: bool) -> Result<Arc<Snapshot>, BuildError> {
        self.users.sort_unstable_by_key(|u| u.0);
        if self.users.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(BuildError::Model(
                "two users share a key hash (or a user has two rows)".into(),
            ));
        }
        let io = io_error(&self.tmp);
        let Some(mut body) = self.body.take() else {
            return Err(BuildError::Model("snapshot already finished".into()));
        };
        let mut section = Vec::with_capacity(self.users.len() * USER);
        for (hash, first, len) in &self.users {
            section.extend_from_slice(&hash.to_le_bytes());
            section.extend_from_slice(&first.to_le_bytes());
            section.extend_from_slice(&len.to_le_bytes());
        }
        let offsets: Vec<u8> = self.offsets.iter().flat_map(|o| o.to_le_bytes()).collect();
        for part in [&section[..], &offsets[..], &self.dict[..]] {
            body.write(part).map_err(&io)?;
        }
        let mut header = Vec::with_capacity(HEADER + padded(self.version.len()));
        header.extend_from_slice(MAGIC);
        for word in [FORMAT, shape.code(), u32::from(int_users), self.version.len() as u32] {
            header.extend_from_slice(&word.to_le_bytes());
        }
        let items = (self.offsets.len() - 1) as u64;
        for word in [
            self.users.len() as u64,
            self.entries,
            items,
            self.dict.len() as u64,
            body.hasher.digest(),
        ] {
            header.extend_from_slice(&word.to_le_bytes());
        }
        header.extend_from_slice(self.version.as_bytes());
        header.resize(HEADER + padded(self.version.len()), 0);
        let mut file = body.out.into_inner().map_err(|e| io(e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(&io)?;
        file.write_all(&header).map_err(&io)?;
        file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
            .map_err(&io)?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path).map_err(&io)?;
        Snapshot::open(&self.path, &self.version)
            .map(Arc::new)
            .map_err(|message| BuildError::Model(format!("the snapshot just written does not read back: {message}")))
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        // A finished file was renamed away; an abandoned one is removed.
        let _ = std::fs::remove_file(&self.tmp);
    }
}
