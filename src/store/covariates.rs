//! Covariate tables for CUPED (`covariates = "LOCATION"` on an experiment): each user's
//! pre-period clicks and impressions on the experiment's placement, one row per user, as Spark
//! writes them from the gateway's own logs (README "Variance reduction (CUPED)"). Same
//! locations and layout as a model: a committed folder of part files, `name/*` for the newest
//! committed sub-folder, polled for new versions.
//!
//! A user's row is read when the user first enters an arm (off the request path: by the
//! collector of served users, or by the event that enters them first) and then frozen in the
//! user's per-user state, so a newer table version changes nothing already counted. Lookups
//! are a bisection over a mapped file, never a Parquet read: loading a version reads every
//! part file once, sorts the rows by the user's key ([`UserKey`], the hash the per-user state
//! already uses, so a lookup costs no second hash) and writes them, 24 bytes a user, into
//! `models.snapshot_dir` (in memory when snapshots are off). The sort holds the rows in memory
//! once while a version loads: 1.2 GB at 50 million users.
//!
//! File layout (little-endian): magic `RECGWCV1`, rows (u64), xxh3-64 of the rows (u64), the
//! version's length (u64), the version padded to 8 bytes, then per row the key (u128), clicks
//! and impressions (u32 each), sorted by key.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use futures::TryStreamExt;
use memmap2::Mmap;
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use serde::Deserialize;
use xxhash_rust::xxh3::{xxh3_64, xxh3_128};

use super::StoreError;
use super::columns::{Ids, UserKey as ColumnKey};
use super::layout::{Committed, part_files};
use super::reader::ObjectReader;
use crate::feedback::sums::PrePeriod;
use crate::feedback::users::UserKey;

const MAGIC: &[u8; 8] = b"RECGWCV1";
/// Pre-period counts above this are taken as this (winsorised, as CUPED implementations cap
/// outliers): a crawler's millions of impressions would otherwise dominate the regression, and
/// the counting scripts add squares of these counts in Lua numbers, exact only below 2^53.
pub(crate) const PRE_PERIOD_CAP: u32 = 65_535;
const HEADER: usize = 32;
const ROW: usize = 24;

/// Column names of a covariate table, when not `user`, `clicks`, `impressions`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CovariateColumns {
    /// The user id column (text or integer, as in the gateway's logs).
    pub user: Option<String>,
    /// The user's pre-period clicks (an integer column).
    pub clicks: Option<String>,
    /// The user's pre-period impressions (an integer column).
    pub impressions: Option<String>,
}

/// A covariate table as an experiment names it; the registry's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CovariateSpec {
    /// Where the table lives, with a model's location rules.
    pub location: String,
    /// Column-name overrides.
    pub columns: CovariateColumns,
}

/// The rows of a loaded version: mapped from its file, or held when snapshots are off.
enum Rows {
    Mapped(Mmap),
    Held(Vec<u8>),
}

impl Rows {
    /// The file's bytes, wherever they are.
    fn bytes(&self) -> &[u8] {
        match self {
            Rows::Mapped(map) => map,
            Rows::Held(bytes) => bytes,
        }
    }
}

/// One loaded version of a covariate table.
pub(crate) struct CovariateTable {
    /// The version string (folder and marker), as `/ready` shows it.
    version: String,
    /// The file's bytes, the rows from [`CovariateTable::rows_at`].
    rows: Rows,
    /// Where the rows start.
    rows_at: usize,
    /// Rows (users) in the table.
    users: usize,
    /// The file, removed once a newer version replaced this one and no reader holds it.
    path: Option<PathBuf>,
    /// Set when a newer version replaced this one.
    superseded: AtomicBool,
}

impl std::fmt::Debug for CovariateTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CovariateTable")
            .field("version", &self.version)
            .field("users", &self.users)
            .finish_non_exhaustive()
    }
}

impl Drop for CovariateTable {
    fn drop(&mut self) {
        if let (true, Some(path)) = (self.superseded.load(Ordering::Relaxed), &self.path) {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl CovariateTable {
    /// The user's pre-period row, `None` when the table has none for them.
    pub(crate) fn get(&self, user: UserKey) -> Option<PrePeriod> {
        let rows = &self.rows.bytes()[self.rows_at..];
        let key_at = |row: usize| u128::from_le_bytes(word(rows, row * ROW));
        let wanted = user.raw();
        let (mut lo, mut hi) = (0, self.users);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match key_at(mid).cmp(&wanted) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => {
                    let at = mid * ROW + 16;
                    return Some(PrePeriod {
                        clicks: u64::from(u32::from_le_bytes(word(rows, at))),
                        impressions: u64::from(u32::from_le_bytes(word(rows, at + 4))),
                    });
                }
            }
        }
        None
    }

    /// The version string.
    pub(crate) fn version(&self) -> &str {
        &self.version
    }

    /// Users with a row.
    pub(crate) fn users(&self) -> usize {
        self.users
    }

    /// Whether the rows are read from a mapped file (else from memory).
    pub(crate) fn mapped(&self) -> bool {
        matches!(self.rows, Rows::Mapped(_))
    }

    /// Lets the file go once no reader holds this version.
    pub(crate) fn supersede(&self) {
        self.superseded.store(true, Ordering::Relaxed);
    }

    /// A table checked and laid out in `bytes` (the file's), or what is wrong with them.
    fn from_bytes(rows: Rows, version: &str, path: Option<PathBuf>) -> Result<Self, String> {
        let bytes = rows.bytes();
        if bytes.len() < HEADER || &bytes[..8] != MAGIC {
            return Err("not a covariate table file".into());
        }
        let [users, checksum, length] = [8, 16, 24].map(|at| u64::from_le_bytes(word(bytes, at)) as usize);
        let rows_at = HEADER + length.div_ceil(8) * 8;
        if bytes.get(HEADER..HEADER + length) != Some(version.as_bytes()) {
            return Err("written for another version".into());
        }
        if bytes.len() != rows_at + users * ROW {
            return Err(format!("{} bytes, {} expected", bytes.len(), rows_at + users * ROW));
        }
        if xxh3_64(&bytes[rows_at..]) as usize != checksum {
            return Err("checksum mismatch".into());
        }
        Ok(CovariateTable {
            version: version.to_string(),
            rows,
            rows_at,
            users,
            path,
            superseded: AtomicBool::new(false),
        })
    }

    /// Maps the file at `path` if it is a whole table of `version`.
    fn open(path: &Path, version: &str) -> Result<Self, String> {
        let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
        // SAFETY: the file is written under a temporary name and renamed into place, never
        // modified afterwards; one altered by someone else fails the length and checksum
        // checks before any lookup reads it.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| e.to_string())?;
        Self::from_bytes(Rows::Mapped(map), version, Some(path.to_path_buf()))
    }
}

fn word<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}

/// The file of `version` of `spec` in `dir`.
fn path_for(dir: &Path, spec: &CovariateSpec, version: &str) -> PathBuf {
    let name = xxh3_128(format!("covariates\0{}\0{:?}\0{version}", spec.location, spec.columns).as_bytes());
    dir.join(format!("{name:032x}.cov"))
}

/// An integer count column, of either width; nulls and negatives are refused, counts above
/// [`PRE_PERIOD_CAP`] capped.
enum Counts<'a> {
    I32(&'a arrow_array::Int32Array),
    I64(&'a arrow_array::Int64Array),
}

impl<'a> Counts<'a> {
    fn new(array: &'a dyn Array, name: &str) -> Result<Self, String> {
        Ok(match array.data_type() {
            DataType::Int32 => Counts::I32(array.as_primitive::<Int32Type>()),
            DataType::Int64 => Counts::I64(array.as_primitive::<Int64Type>()),
            other => return Err(format!("column {name:?} has type {other}; an integer column is needed")),
        })
    }

    fn at(&self, row: usize, name: &str) -> Result<u32, String> {
        let value = match self {
            Counts::I32(a) => a.is_valid(row).then(|| i64::from(a.value(row))),
            Counts::I64(a) => a.is_valid(row).then(|| a.value(row)),
        };
        match value {
            None => Err(format!("column {name:?} holds a null")),
            Some(v) if v < 0 => Err(format!("column {name:?} holds {v}: counts are not negative")),
            Some(v) => Ok(u32::try_from(v).unwrap_or(u32::MAX).min(PRE_PERIOD_CAP)),
        }
    }
}

/// Reads every row of a committed table: `(user key, clicks, impressions)`, sorted by key.
/// Checks the shape (the three columns, integer counts, text or integer users) and that no
/// user has two rows.
pub(crate) async fn read_rows(
    committed: &Committed,
    columns: &CovariateColumns,
) -> Result<Vec<(u128, u32, u32)>, StoreError> {
    let folder = &committed.folder;
    let folder_uri = folder.uri_of(&folder.path);
    let names = [
        columns.user.as_deref().unwrap_or("user"),
        columns.clicks.as_deref().unwrap_or("clicks"),
        columns.impressions.as_deref().unwrap_or("impressions"),
    ];
    let mut rows = Vec::new();
    for part in part_files(folder).await? {
        let uri = folder.uri_of(&part.location);
        let invalid = |message: String| StoreError::Invalid {
            uri: uri.clone(),
            message,
        };
        let parquet = |source| StoreError::Parquet {
            uri: uri.clone(),
            source,
        };
        let mut reader = ObjectReader::open(folder, part.location.clone(), part.size).await?;
        let meta = reader.load_metadata().await.map_err(parquet)?;
        let schema = meta.schema().clone();
        let mut roots = Vec::with_capacity(3);
        for name in names {
            let Some((index, _)) = schema.column_with_name(name) else {
                let found: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                return Err(invalid(format!(
                    "no column {name:?} (columns: {found:?}); a covariate table has user, clicks and impressions \
                     (rename with covariate_columns)"
                )));
            };
            roots.push(index);
        }
        let mask = ProjectionMask::roots(meta.parquet_schema(), roots.iter().copied());
        let mut stream = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, meta)
            .with_projection(mask)
            .build()
            .map_err(parquet)?;
        while let Some(batch) = stream.try_next().await.map_err(parquet)? {
            read_batch(&batch, &names, &mut rows).map_err(invalid)?;
        }
    }
    rows.sort_unstable_by_key(|row| row.0);
    if rows.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(StoreError::Invalid {
            uri: folder_uri,
            message: "a user has two rows: the table must hold one row per user".into(),
        });
    }
    Ok(rows)
}

/// Adds one batch's rows to `rows`.
fn read_batch(batch: &RecordBatch, names: &[&str; 3], rows: &mut Vec<(u128, u32, u32)>) -> Result<(), String> {
    let column = |name: &str| batch.column_by_name(name).ok_or_else(|| format!("no column {name:?}"));
    let users = Ids::new(column(names[0])?.as_ref()).map_err(|e| format!("column {:?}: {e}", names[0]))?;
    let clicks = Counts::new(column(names[1])?.as_ref(), names[1])?;
    let impressions = Counts::new(column(names[2])?.as_ref(), names[2])?;
    let mut text = String::new();
    for row in 0..batch.num_rows() {
        let key = match users.key(row) {
            None => return Err(format!("column {:?} holds a null", names[0])),
            Some(ColumnKey::Text(user)) => UserKey::of(user),
            Some(ColumnKey::Int(user)) => {
                // An integer user is the request id spelled in decimal, as the logs write it.
                text.clear();
                let _ = std::fmt::Write::write_fmt(&mut text, format_args!("{user}"));
                UserKey::of(&text)
            }
        };
        rows.push((key.raw(), clicks.at(row, names[1])?, impressions.at(row, names[2])?));
    }
    Ok(())
}

/// Reads the committed version of `spec` under `root` as the gateway would and says how many
/// users it holds, or what is wrong with it (`recgw validate`).
pub(crate) async fn check(root: &str, spec: &CovariateSpec) -> Result<usize, String> {
    let locator = super::location::Locator::new(root).map_err(|e| e.to_string())?;
    let committed = super::layout::committed_at(&locator, &spec.location)
        .await
        .map_err(|e| e.to_string())??;
    read_rows(&committed, &spec.columns)
        .await
        .map(|rows| rows.len())
        .map_err(|e| e.to_string())
}

/// Loads a committed version: mapped from its file in `dir` when one is there and intact (a
/// restart), else read from the table and written there (held in memory when `dir` is
/// `None`). Blocking: run it off the runtime's workers.
pub(crate) fn load(
    committed: &Committed,
    spec: &CovariateSpec,
    dir: Option<&Path>,
    runtime: &tokio::runtime::Handle,
) -> Result<CovariateTable, StoreError> {
    let version = committed.version.as_str();
    let uri = committed.folder.uri_of(&committed.folder.path);
    let path = dir.map(|dir| path_for(dir, spec, version));
    if let Some(path) = &path
        && let Ok(table) = CovariateTable::open(path, version)
    {
        return Ok(table);
    }
    let rows = runtime.block_on(read_rows(committed, &spec.columns))?;
    let mut bytes = Vec::with_capacity(HEADER + version.len() + 8 + rows.len() * ROW);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(rows.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&[0; 8]);
    bytes.extend_from_slice(&(version.len() as u64).to_le_bytes());
    bytes.extend_from_slice(version.as_bytes());
    bytes.resize(HEADER + version.len().div_ceil(8) * 8, 0);
    let rows_at = bytes.len();
    for (key, clicks, impressions) in rows {
        bytes.extend_from_slice(&key.to_le_bytes());
        bytes.extend_from_slice(&clicks.to_le_bytes());
        bytes.extend_from_slice(&impressions.to_le_bytes());
    }
    let checksum = xxh3_64(&bytes[rows_at..]);
    bytes[16..24].copy_from_slice(&checksum.to_le_bytes());
    let unusable = |message: String| StoreError::Invalid {
        uri: uri.clone(),
        message,
    };
    let Some(path) = path else {
        return CovariateTable::from_bytes(Rows::Held(bytes), version, None).map_err(unusable);
    };
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    // Read-only once written, as a model's snapshot (`snapshot::FILE_MODE`).
    let written = std::fs::File::create(&tmp)
        .and_then(|mut file| {
            file.write_all(&bytes)?;
            file.sync_all()?;
            file.set_permissions(std::fs::Permissions::from_mode(super::snapshot::FILE_MODE))
        })
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        tracing::warn!(path = %path.display(), error = %e, "cannot write the covariate table's file; held in memory");
        return CovariateTable::from_bytes(Rows::Held(bytes), version, None).map_err(unusable);
    }
    drop(bytes);
    CovariateTable::open(&path, version).map_err(unusable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::{CovariateRow, write_covariates};

    fn row(user: &str, clicks: i64, impressions: i64) -> CovariateRow {
        CovariateRow {
            user: user.to_string(),
            clicks,
            impressions,
        }
    }

    fn spec(location: &str) -> CovariateSpec {
        CovariateSpec {
            location: location.to_string(),
            columns: CovariateColumns::default(),
        }
    }

    /// Loads `location` under `root` as the registry does (on a blocking thread), into `dir`.
    async fn load_from(root: &Path, location: &str, dir: Option<&Path>) -> Result<CovariateTable, StoreError> {
        let locator = super::super::location::Locator::new(root.to_str().expect("utf-8")).expect("root");
        let committed = super::super::layout::committed_at(&locator, location)
            .await
            .expect("storage")
            .expect("committed");
        let (spec, dir, runtime) = (
            spec(location),
            dir.map(Path::to_path_buf),
            tokio::runtime::Handle::current(),
        );
        tokio::task::spawn_blocking(move || load(&committed, &spec, dir.as_deref(), &runtime))
            .await
            .expect("load task")
    }

    /// Every user's row is found, in a mapped file or in memory alike; absent users have none;
    /// counts past the cap are capped.
    #[tokio::test(flavor = "multi_thread")]
    async fn rows_are_found_by_user_mapped_or_held() {
        let root = tempfile::tempdir().expect("tempdir");
        let snapshots = tempfile::tempdir().expect("tempdir");
        let mut rows: Vec<CovariateRow> = (0..500).map(|u| row(&format!("u{u}"), u % 7, u % 30)).collect();
        rows.push(row("crawler", 10, 1_000_000));
        write_covariates(&root.path().join("pre"), &rows, 3, 7).expect("table");
        for dir in [Some(snapshots.path()), None] {
            let table = load_from(root.path(), "pre", dir).await.expect("loads");
            assert_eq!(table.users(), 501);
            assert_eq!(table.mapped(), dir.is_some());
            for u in 0..500 {
                let want = PrePeriod {
                    clicks: u % 7,
                    impressions: u % 30,
                };
                assert_eq!(table.get(UserKey::of(&format!("u{u}"))), Some(want), "u{u}");
            }
            assert_eq!(table.get(UserKey::of("u500")), None);
            let capped = table.get(UserKey::of("crawler")).expect("row");
            assert_eq!(capped.impressions, u64::from(PRE_PERIOD_CAP));
        }
    }

    /// A restart maps the file it wrote without reading the table again; a file that does not
    /// check out is rebuilt rather than served.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_written_file_is_mapped_again_and_a_damaged_one_rebuilt() {
        let root = tempfile::tempdir().expect("tempdir");
        let snapshots = tempfile::tempdir().expect("tempdir");
        write_covariates(&root.path().join("pre"), &[row("a", 1, 2), row("b", 3, 4)], 1, 1).expect("table");
        let first = load_from(root.path(), "pre", Some(snapshots.path()))
            .await
            .expect("loads");
        let (file, version) = (first.path.clone().expect("a file"), first.version().to_string());
        assert!(CovariateTable::open(&file, &version).is_ok(), "mapped again as written");
        let mode = std::fs::metadata(&file).expect("file").permissions().mode() & 0o777;
        assert_eq!(mode, super::super::snapshot::FILE_MODE, "written read-only");
        drop(first);
        // Damage one row: the checksum no longer matches.
        let mut bytes = std::fs::read(&file).expect("file");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        // The file is read-only (as the gateway leaves it); another process damages it anyway.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::write(&file, &bytes).expect("damaged");
        assert_eq!(
            CovariateTable::open(&file, &version).map(|_| ()),
            Err("checksum mismatch".to_string())
        );
        let again = load_from(root.path(), "pre", Some(snapshots.path()))
            .await
            .expect("rebuilt");
        assert_eq!(
            again.get(UserKey::of("a")),
            Some(PrePeriod {
                clicks: 1,
                impressions: 2
            })
        );
        assert_eq!(
            again.get(UserKey::of("b")),
            Some(PrePeriod {
                clicks: 3,
                impressions: 4
            })
        );
    }

    /// What is not a covariate table is refused with the reason: a user with two rows, a
    /// negative count, a missing column.
    #[tokio::test(flavor = "multi_thread")]
    async fn tables_that_are_not_one_row_per_user_are_refused() {
        let root = tempfile::tempdir().expect("tempdir");
        let cases = [
            (vec![row("a", 1, 2), row("a", 0, 1)], "two rows"),
            (vec![row("a", -1, 2)], "not negative"),
        ];
        for (rows, reason) in cases {
            write_covariates(&root.path().join("bad"), &rows, 1, 1).expect("table");
            let error = load_from(root.path(), "bad", None)
                .await
                .expect_err("refused")
                .to_string();
            assert!(error.contains(reason), "{error}");
        }
        write_covariates(&root.path().join("renamed"), &[row("a", 1, 2)], 1, 1).expect("table");
        let locator = super::super::location::Locator::new(root.path().to_str().expect("utf-8")).expect("root");
        let committed = super::super::layout::committed_at(&locator, "renamed")
            .await
            .expect("storage")
            .expect("committed");
        let columns = CovariateColumns {
            clicks: Some("pre_clicks".into()),
            ..CovariateColumns::default()
        };
        let error = read_rows(&committed, &columns).await.expect_err("refused").to_string();
        assert!(error.contains("no column \"pre_clicks\""), "{error}");
    }
}
