//! One loaded version of a model: its part files' metadata, its shape and its user index, and
//! the point lookup that reads only the pages holding one user.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use futures::{StreamExt, TryStreamExt};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, RowSelection};
use parquet::arrow::async_reader::ParquetRecordBatchStream;
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};

use super::columns::{Ids, Scores, Shape, UserKey, detect, rank_at};
use super::index::{IndexBuilder, UserIndex};
use super::layout::{Committed, part_files};
use super::reader::ObjectReader;
use super::snapshot::{BuildError, ItemId, Snapshot, SnapshotShape, SnapshotWriter};
use super::{ColumnNames, Item, ModelSpec, RankedList, StoreError};

/// Part files' footers are fetched this many at a time: enough to hide HDFS latency, few
/// enough not to open hundreds of connections for a wide Spark output.
const METADATA_CONCURRENCY: usize = 8;

/// Rows decoded per batch while building the index: large batches amortise decoding.
const INDEX_BATCH_ROWS: usize = 64 * 1024;

/// One part file, opened once per version.
#[derive(Debug)]
struct PartFile {
    /// Reader bound to the file (cheap to clone per lookup).
    reader: ObjectReader,
    /// Footer, schema and page index, parsed once.
    meta: ArrowReaderMetadata,
    /// URI for messages.
    uri: String,
}

impl PartFile {
    /// Streams the `roots` columns of this file, optionally one row group and a row selection.
    fn read(
        &self,
        roots: &[usize],
        row_group: Option<usize>,
        selection: Option<RowSelection>,
        batch_rows: usize,
    ) -> Result<ParquetRecordBatchStream<ObjectReader>, StoreError> {
        let mask = ProjectionMask::roots(self.meta.parquet_schema(), roots.iter().copied());
        let mut builder = ParquetRecordBatchStreamBuilder::new_with_metadata(self.reader.clone(), self.meta.clone())
            .with_projection(mask)
            .with_batch_size(batch_rows);
        if let Some(rg) = row_group {
            builder = builder.with_row_groups(vec![rg]);
        }
        if let Some(selection) = selection {
            builder = builder.with_row_selection(selection);
        }
        builder.build().map_err(|source| StoreError::Parquet {
            uri: self.uri.clone(),
            source,
        })
    }
}

/// Positions of the projected columns inside a batch: a projection keeps file order.
#[derive(Debug, Clone)]
struct Projection {
    /// Top-level columns read by a lookup, ascending.
    roots: Vec<usize>,
}

impl Projection {
    fn new(mut roots: Vec<usize>) -> Self {
        roots.sort_unstable();
        roots.dedup();
        Projection { roots }
    }

    fn pos(&self, column: usize) -> usize {
        self.roots.iter().filter(|&&c| c < column).count()
    }
}

/// A loaded, immutable model version. Shared by `Arc`; swapping versions never blocks readers.
#[derive(Debug)]
pub struct LoadedModel {
    /// Folder URI of the version, for messages.
    uri: String,
    /// The version string used in cache keys and responses.
    version: String,
    /// How rows are laid out; `None` for a version mapped from its snapshot at start, which
    /// opened no part file.
    shape: Option<Shape>,
    /// Whether the user column is an integer, so request ids must parse.
    int_users: bool,
    /// Part files in path order (index positions refer to it).
    files: Vec<PartFile>,
    /// Columns a lookup reads.
    projection: Projection,
    /// User → rows, empty for global models.
    index: UserIndex,
    /// The single list of a global model.
    global: Option<RankedList>,
    /// How long loading took, for logs and start-up budgets.
    load_time: Duration,
    /// The mapped snapshot, once built or found: lookups read it instead of the pages.
    snapshot: ArcSwapOption<Snapshot>,
    /// Why this version is not served from a snapshot (being built, too large, off…), for
    /// `/ready`.
    snapshot_note: Mutex<Option<String>>,
}

fn parquet_err(uri: &str) -> impl Fn(parquet::errors::ParquetError) -> StoreError + '_ {
    move |source| StoreError::Parquet {
        uri: uri.to_string(),
        source,
    }
}

fn invalid(uri: &str, message: impl Into<String>) -> StoreError {
    StoreError::Invalid {
        uri: uri.to_string(),
        message: message.into(),
    }
}

impl LoadedModel {
    /// Loads a committed folder: footers and page indexes of every part file, the shape, and
    /// the user index (reading the user column only) or, for global models, the one list.
    pub(crate) async fn load(committed: Committed, names: &ColumnNames) -> Result<Self, StoreError> {
        let started = Instant::now();
        let folder = committed.folder;
        let uri = folder.uri_of(&folder.path);
        let parts = part_files(&folder).await?;
        if parts.len() > usize::from(u16::MAX) {
            return Err(invalid(
                &uri,
                format!("{} part files; at most {} are supported", parts.len(), u16::MAX),
            ));
        }
        let files: Vec<PartFile> = futures::stream::iter(parts)
            .map(|meta| {
                let uri = folder.uri_of(&meta.location);
                let folder = &folder;
                async move {
                    let mut reader = ObjectReader::open(folder, meta.location, meta.size).await?;
                    let meta = reader.load_metadata().await.map_err(parquet_err(&uri))?;
                    Ok::<_, StoreError>(PartFile { reader, meta, uri })
                }
            })
            .buffered(METADATA_CONCURRENCY)
            .try_collect()
            .await?;

        let schema = files[0].meta.schema().clone();
        let shape = detect(&schema, names).map_err(|message| invalid(&files[0].uri, message))?;
        for file in &files[1..] {
            if file.meta.schema().fields() != schema.fields() {
                return Err(invalid(
                    &file.uri,
                    format!(
                        "schema {:?} differs from {}'s",
                        file.meta.schema().fields(),
                        files[0].uri
                    ),
                ));
            }
        }
        let roots = match shape {
            Shape::Nested { user, items, .. } => vec![user, items],
            Shape::Long {
                user,
                item,
                score,
                rank,
            } => [Some(user), Some(item), Some(score), rank]
                .into_iter()
                .flatten()
                .collect(),
            Shape::Global { item, score, rank } => [Some(item), Some(score), rank].into_iter().flatten().collect(),
        };
        let int_users = shape.user().is_some_and(|u| Ids::is_int(schema.field(u).data_type()));
        let mut model = LoadedModel {
            uri,
            version: committed.version,
            shape: Some(shape),
            int_users,
            files,
            projection: Projection::new(roots),
            index: UserIndex::default(),
            global: None,
            load_time: Duration::ZERO,
            snapshot: ArcSwapOption::empty(),
            snapshot_note: Mutex::new(None),
        };
        match shape.user() {
            Some(user) => model.index = model.build_index(user).await?,
            None => model.global = Some(model.read_global().await?),
        }
        model.load_time = started.elapsed();
        Ok(model)
    }

    async fn build_index(&self, user: usize) -> Result<UserIndex, StoreError> {
        let rows: i64 = self
            .files
            .iter()
            .map(|f| f.meta.metadata().file_metadata().num_rows())
            .sum();
        let mut builder = IndexBuilder::with_capacity(usize::try_from(rows).unwrap_or(0));
        for (file_no, file) in self.files.iter().enumerate() {
            let row_groups = file.meta.metadata().row_groups();
            if row_groups.len() > usize::from(u16::MAX) {
                return Err(invalid(&file.uri, "more than 65535 row groups"));
            }
            for (rg, group) in row_groups.iter().enumerate() {
                if group.num_rows() > i64::from(u32::MAX) {
                    return Err(invalid(&file.uri, "a row group of more than 2^32 rows"));
                }
                let mut stream = file.read(&[user], Some(rg), None, INDEX_BATCH_ROWS)?;
                let mut row = 0u32;
                while let Some(batch) = stream.try_next().await.map_err(parquet_err(&file.uri))? {
                    let ids = Ids::new(batch.column(0).as_ref()).map_err(|m| invalid(&file.uri, m))?;
                    for i in 0..batch.num_rows() {
                        if let Some(key) = ids.key(i) {
                            // Both casts are bounded by the checks above.
                            builder.push(key.hash64(), file_no as u16, rg as u16, row);
                        }
                        row += 1;
                    }
                }
            }
        }
        Ok(builder.finish())
    }

    async fn read_global(&self) -> Result<RankedList, StoreError> {
        let mut rows = Vec::new();
        for file in &self.files {
            let mut stream = file.read(&self.projection.roots, None, None, INDEX_BATCH_ROWS)?;
            while let Some(batch) = stream.try_next().await.map_err(parquet_err(&file.uri))? {
                self.collect_rows(&batch, None, &mut rows)
                    .map_err(|m| invalid(&file.uri, m))?;
            }
        }
        Ok(ranked(rows, self.has_rank()))
    }

    fn has_rank(&self) -> bool {
        matches!(
            self.shape,
            Some(Shape::Long { rank: Some(_), .. } | Shape::Global { rank: Some(_), .. })
        )
    }

    /// Appends `(rank, score, id)` of the flat rows of `batch` (long and global shapes) whose
    /// user is `only` (every row when `None`).
    fn collect_rows(
        &self,
        batch: &RecordBatch,
        only: Option<UserKey<'_>>,
        out: &mut Vec<(Option<i64>, f32, Box<str>)>,
    ) -> Result<(), String> {
        let (user, item, score, rank) = match self.shape {
            Some(Shape::Long {
                user,
                item,
                score,
                rank,
            }) => (Some(user), item, score, rank),
            Some(Shape::Global { item, score, rank }) => (None, item, score, rank),
            _ => return Err("not a flat model".into()),
        };
        let p = &self.projection;
        let users = user.map(|u| Ids::new(batch.column(p.pos(u)).as_ref())).transpose()?;
        let items = Ids::new(batch.column(p.pos(item)).as_ref())?;
        let scores = Scores::new(batch.column(p.pos(score)).as_ref())?;
        let ranks = rank.map(|r| batch.column(p.pos(r)));
        for i in 0..batch.num_rows() {
            if let (Some(users), Some(key)) = (&users, only)
                && users.key(i) != Some(key)
            {
                continue;
            }
            if let (Some(id), Some(score)) = (items.text(i), scores.at(i)) {
                out.push((rank_at(ranks, i), score, id));
            }
        }
        Ok(())
    }

    /// The one list of a global model (no user column), which every user gets.
    pub(crate) fn global_list(&self) -> Option<RankedList> {
        self.global.clone()
    }

    /// The ranked list of `user`, `None` when the model does not hold the user.
    pub async fn lookup(&self, user: &str) -> Result<Option<RankedList>, StoreError> {
        if let Some(global) = &self.global {
            return Ok(Some(Arc::clone(global)));
        }
        if let Some(snapshot) = self.snapshot.load().as_ref() {
            return Ok(snapshot.lookup(user));
        }
        let Some(key) = UserKey::of_request(user, self.int_users) else {
            return Ok(None);
        };
        let runs = self.index.find(key.hash64());
        let mut flat = Vec::new();
        for group in runs.chunk_by(|a, b| a.file == b.file && a.row_group == b.row_group) {
            let file = &self.files[usize::from(group[0].file)];
            let rg = usize::from(group[0].row_group);
            let rg_rows = usize::try_from(file.meta.metadata().row_group(rg).num_rows()).unwrap_or(0);
            let ranges = group.iter().map(|l| l.row as usize..(l.row + l.len) as usize);
            let selection = RowSelection::from_consecutive_ranges(ranges, rg_rows);
            let mut stream = file.read(&self.projection.roots, Some(rg), Some(selection), 1024)?;
            while let Some(batch) = stream.try_next().await.map_err(parquet_err(&file.uri))? {
                if let Some(Shape::Nested {
                    user,
                    items,
                    item,
                    score,
                }) = self.shape
                {
                    if let Some(list) = self
                        .nested_list(&batch, key, (user, items, item, score))
                        .map_err(|m| invalid(&file.uri, m))?
                    {
                        return Ok(Some(list));
                    }
                } else {
                    self.collect_rows(&batch, Some(key), &mut flat)
                        .map_err(|m| invalid(&file.uri, m))?;
                }
            }
        }
        Ok((!flat.is_empty()).then(|| ranked(flat, self.has_rank())))
    }

    /// The list of the row of `batch` whose user is `key`, for the nested shape.
    fn nested_list(
        &self,
        batch: &RecordBatch,
        key: UserKey<'_>,
        (user, items, item, score): (usize, usize, usize, usize),
    ) -> Result<Option<RankedList>, String> {
        let p = &self.projection;
        let users = Ids::new(batch.column(p.pos(user)).as_ref())?;
        let Some(row) = (0..batch.num_rows()).find(|&i| users.key(i) == Some(key)) else {
            return Ok(None);
        };
        let entries = nested_entries(batch.column(p.pos(items)), row)?;
        let entries = entries.as_struct();
        let ids = Ids::new(entries.column(item).as_ref())?;
        let scores = Scores::new(entries.column(score).as_ref())?;
        let list: Vec<Item> = (0..entries.len())
            .filter(|&i| entries.is_valid(i))
            .filter_map(|i| Some((ids.text(i)?, scores.at(i)?)))
            .enumerate()
            .map(|(rank, (id, score))| Item {
                id,
                score,
                rank: rank as u32 + 1,
            })
            .collect();
        Ok(Some(list.into()))
    }

    /// The version string (resolved folder and marker tag).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The folder URI of this version.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// `nested`, `long` or `global`.
    pub fn shape(&self) -> &'static str {
        match (&self.shape, self.snapshot.load().as_ref()) {
            (Some(shape), _) => shape.name(),
            (None, Some(snapshot)) => snapshot.shape().name(),
            (None, None) => "unknown",
        }
    }

    /// Where lookups are answered from: `snapshot` (the mapped file), `pages` (page-index reads
    /// of the part files) or `memory` (a global list).
    pub(crate) fn serving(&self) -> &'static str {
        if self.global.is_some() {
            "memory"
        } else if self.snapshot.load().is_some() {
            "snapshot"
        } else {
            "pages"
        }
    }

    /// Why lookups are not answered from a snapshot, when they are not.
    pub(crate) fn snapshot_note(&self) -> Option<String> {
        self.snapshot_note.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Size of the snapshot file, when one is mapped.
    pub(crate) fn snapshot_bytes(&self) -> Option<usize> {
        self.snapshot.load().as_ref().map(|s| s.file_bytes())
    }

    /// Distinct items the model recommends from, known once its snapshot is mapped (page
    /// reads never see the whole catalogue).
    pub(crate) fn catalogue_items(&self) -> Option<usize> {
        self.snapshot.load().as_ref().map(|s| s.items())
    }

    /// The mapped snapshot, for the cache to read without its Redis tier.
    pub(crate) fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.snapshot.load_full()
    }

    pub(crate) fn set_snapshot_note(&self, note: Option<String>) {
        *self.snapshot_note.lock().unwrap_or_else(|p| p.into_inner()) = note;
    }

    /// The version `version` of the model at `uri` served from its snapshot alone.
    pub(crate) fn from_snapshot(uri: String, version: String, snapshot: Arc<Snapshot>, load_time: Duration) -> Self {
        LoadedModel {
            uri,
            version,
            shape: None,
            int_users: false,
            files: Vec::new(),
            projection: Projection::new(Vec::new()),
            index: UserIndex::default(),
            global: None,
            load_time,
            snapshot: ArcSwapOption::from(Some(snapshot)),
            snapshot_note: Mutex::new(None),
        }
    }

    /// Lets lookups read `snapshot` from now on.
    pub(crate) fn use_snapshot(&self, snapshot: Arc<Snapshot>) {
        self.snapshot.store(Some(snapshot));
        self.set_snapshot_note(None);
    }

    /// Marks this version's snapshot file for deletion once no request uses the version.
    pub(crate) fn supersede(&self) {
        if let Some(snapshot) = self.snapshot.load().as_ref() {
            snapshot.supersede();
        }
    }

    /// Writes the snapshot of this version into `dir` by one sequential read of every part
    /// file, in bounded memory: a nested row is written as it is read; the rows of a long
    /// model's user are held until the index says all of them were seen (Spark writes them
    /// together, so few are held at once).
    pub(crate) async fn build_snapshot(
        &self,
        dir: &Path,
        max_bytes: u64,
        spec: &ModelSpec,
    ) -> Result<Arc<Snapshot>, BuildError> {
        let model = |e: StoreError| BuildError::Model(e.to_string());
        let (shape, snapshot_shape) = match self.shape {
            Some(shape @ Shape::Nested { .. }) => (shape, SnapshotShape::Nested),
            Some(shape @ Shape::Long { .. }) => (shape, SnapshotShape::Long),
            _ => return Err(BuildError::Model("only per-user models have snapshots".into())),
        };
        let mut writer = SnapshotWriter::create(dir, max_bytes, spec, &self.version)?;
        // Long models: per user hash, its fingerprint, rows seen and (rank, score, item) kept.
        let mut open: HashMap<u64, OpenUser> = HashMap::new();
        let mut list: Vec<(u32, f32)> = Vec::new();
        let by_rank = self.has_rank();
        let p = &self.projection;
        for file in &self.files {
            let mut stream = file.read(&p.roots, None, None, INDEX_BATCH_ROWS).map_err(model)?;
            while let Some(batch) = stream.try_next().await.map_err(parquet_err(&file.uri)).map_err(model)? {
                let bad = |m: String| BuildError::Model(format!("{}: {m}", file.uri));
                match shape {
                    Shape::Nested {
                        user,
                        items,
                        item,
                        score,
                    } => {
                        let users = Ids::new(batch.column(p.pos(user)).as_ref()).map_err(bad)?;
                        let lists = batch.column(p.pos(items));
                        for row in 0..batch.num_rows() {
                            let Some(key) = users.key(row) else { continue };
                            let entries = nested_entries(lists, row).map_err(bad)?;
                            let entries = entries.as_struct();
                            let ids = Ids::new(entries.column(item).as_ref()).map_err(bad)?;
                            let scores = Scores::new(entries.column(score).as_ref()).map_err(bad)?;
                            list.clear();
                            for i in (0..entries.len()).filter(|&i| entries.is_valid(i)) {
                                if let (Some(id), Some(score)) = (ids.key(i), scores.at(i)) {
                                    list.push((writer.number(item_id(id)), score));
                                }
                            }
                            writer.push(key.hash64(), &list)?;
                        }
                    }
                    Shape::Long {
                        user,
                        item,
                        score,
                        rank,
                    } => {
                        let users = Ids::new(batch.column(p.pos(user)).as_ref()).map_err(bad)?;
                        let ids = Ids::new(batch.column(p.pos(item)).as_ref()).map_err(bad)?;
                        let scores = Scores::new(batch.column(p.pos(score)).as_ref()).map_err(bad)?;
                        let ranks = rank.map(|r| batch.column(p.pos(r)));
                        for row in 0..batch.num_rows() {
                            let Some(key) = users.key(row) else { continue };
                            let hash = key.hash64();
                            let user = open.entry(hash).or_insert_with(|| OpenUser {
                                fingerprint: key.fingerprint(),
                                left: self.index.find(hash).iter().map(|l| l.len as usize).sum(),
                                rows: Vec::new(),
                            });
                            if user.fingerprint != key.fingerprint() {
                                return Err(BuildError::Model("two users share a key hash".into()));
                            }
                            if let (Some(id), Some(score)) = (ids.key(row), scores.at(row)) {
                                user.rows.push((rank_at(ranks, row), score, writer.number(item_id(id))));
                            }
                            user.left = user.left.saturating_sub(1);
                            if user.left == 0
                                && let Some(mut done) = open.remove(&hash)
                            {
                                rank_order(&mut done.rows, by_rank);
                                list.clear();
                                list.extend(done.rows.iter().map(|(_, score, number)| (*number, *score)));
                                writer.push(hash, &list)?;
                            }
                        }
                    }
                    Shape::Global { .. } => {}
                }
            }
        }
        if !open.is_empty() {
            return Err(BuildError::Model(format!(
                "{} users' rows did not match the index",
                open.len()
            )));
        }
        writer.finish(snapshot_shape, self.int_users)
    }

    /// Distinct users indexed (0 for global models).
    pub fn indexed_users(&self) -> usize {
        self.snapshot.load().as_ref().map_or(self.index.users(), |s| s.users())
    }

    /// Heap bytes of the user index.
    pub fn index_bytes(&self) -> usize {
        self.index.heap_bytes()
    }

    /// Part files in this version.
    pub fn part_files(&self) -> usize {
        self.files.len()
    }

    /// Time spent loading this version.
    pub(crate) fn load_time(&self) -> Duration {
        self.load_time
    }
}

/// Sorts flat `(rank, score, item)` rows by their rank column when there is one, else by score,
/// best first; ties keep file order. Lookups and snapshots rank alike through it.
fn rank_order<T>(rows: &mut [(Option<i64>, f32, T)], by_rank: bool) {
    if by_rank {
        rows.sort_by_key(|(rank, _, _)| rank.unwrap_or(i64::MAX));
    } else {
        rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    }
}

/// The `list<struct<item, score>>` entries of row `row` of a nested model's list column.
fn nested_entries(lists: &ArrayRef, row: usize) -> Result<ArrayRef, String> {
    Ok(match lists.data_type() {
        DataType::List(_) => lists.as_list::<i32>().value(row),
        DataType::LargeList(_) => lists.as_list::<i64>().value(row),
        other => return Err(format!("recommendations column has type {other}")),
    })
}

/// A user of a long model whose rows are not all read yet.
struct OpenUser {
    /// Tells this user from another whose hash collides.
    fingerprint: u64,
    /// Rows of the user still to come, from the index.
    left: usize,
    /// `(rank, score, item number)` of the rows read.
    rows: Vec<(Option<i64>, f32, u32)>,
}

/// A dictionary key for an item id value.
fn item_id(id: UserKey<'_>) -> ItemId<'_> {
    match id {
        UserKey::Int(v) => ItemId::Int(v),
        UserKey::Text(s) => ItemId::Text(s),
    }
}

/// The ranked list of flat rows, in [`rank_order`].
fn ranked(mut rows: Vec<(Option<i64>, f32, Box<str>)>, by_rank: bool) -> RankedList {
    rank_order(&mut rows, by_rank);
    rows.into_iter()
        .enumerate()
        .map(|(i, (_, score, id))| Item {
            id,
            score,
            rank: i as u32 + 1,
        })
        .collect::<Vec<_>>()
        .into()
}
