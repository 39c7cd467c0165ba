//! Writes model folders byte-for-byte in the layout Spark's `df.write.parquet(path)` leaves
//! behind (ARCHITECTURE.md §4), so the store is tested against what a real job produces:
//!
//! ```text
//! als-v2/
//!   part-00000-<job uuid>-c000.snappy.parquet        snappy, root "spark_schema",
//!   .part-00000-<job uuid>-c000.snappy.parquet.crc   Hadoop checksum side file
//!   bucket=1/part-00001-<job uuid>-c000.snappy.parquet   (optional partition folders)
//!   bucket=1/.part-00001-<job uuid>-c000.snappy.parquet.crc
//!   ._SUCCESS.crc
//!   _SUCCESS                                          empty, written last
//! ```
//!
//! Files carry what Spark puts in the footer: `created_by` of parquet-mr, the
//! `org.apache.spark.version` and `org.apache.spark.sql.parquet.row.metadata` (the Catalyst
//! schema as JSON) key-value pairs, and no `ARROW:schema`, so the reader sees only the Parquet
//! schema, as it would with Spark's files.
//!
//! Shapes:
//! - nested, as `ALSModel.recommendForAllUsers(k)`: `user`, `recommendations:
//!   array<struct<item, rating: float>>`;
//! - long: `user, item, rating: double[, rank: int]`, one row per recommended item;
//! - global: `item, rating: double`, one list for everyone.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow_array::builder::OffsetBufferBuilder;
use arrow_array::{
    ArrayRef, Float32Array, Float64Array, Int32Array, Int64Array, ListArray, RecordBatch, StringArray, StructArray,
};
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::ArrowWriterOptions;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

/// What Spark 3.5 (parquet-mr 1.13.1) writes as `created_by`.
const CREATED_BY: &str = "parquet-mr version 1.13.1 (build db4183109d5b734ec5930d870cdae161e408ddba)";
/// Hadoop's `ChecksumFileSystem` default chunk size.
const BYTES_PER_CHECKSUM: usize = 512;

/// Arrow type of an id column; ids are given as text and converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Id {
    /// Spark `integer` (ALS default).
    Int32,
    /// Spark `long`.
    Int64,
    /// Spark `string`.
    Utf8,
}

impl Id {
    fn data_type(self) -> DataType {
        match self {
            Id::Int32 => DataType::Int32,
            Id::Int64 => DataType::Int64,
            Id::Utf8 => DataType::Utf8,
        }
    }

    fn array(self, ids: &[String]) -> ArrayRef {
        match self {
            Id::Int32 => Arc::new(Int32Array::from_iter_values(
                ids.iter()
                    .map(|s| s.parse::<i32>().unwrap_or_else(|_| panic!("{s:?} is no int32"))),
            )),
            Id::Int64 => Arc::new(Int64Array::from_iter_values(
                ids.iter()
                    .map(|s| s.parse::<i64>().unwrap_or_else(|_| panic!("{s:?} is no int64"))),
            )),
            Id::Utf8 => Arc::new(StringArray::from_iter_values(ids)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Nested,
    Long,
    Global,
}

#[derive(Debug, Clone)]
enum Rows {
    /// `(user, [(item, score)])`: one row per user (nested) or per item (long).
    Lists(Vec<(String, Vec<(String, f32)>)>),
    /// `(item, score)` of a global model.
    Items(Vec<(String, f32)>),
    /// A part file holding only the schema, as Spark writes for an empty partition.
    Empty,
}

#[derive(Debug, Clone)]
struct Part {
    /// `key=value` folder(s) under the model folder, e.g. `bucket=0`.
    partition: Option<String>,
    rows: Rows,
}

/// A model output to write, built up part file by part file.
#[derive(Debug, Clone)]
pub struct SparkOutput {
    shape: Shape,
    rank: bool,
    user: Id,
    item: Id,
    /// user, items (list column), item, score.
    names: [String; 4],
    extra: Option<String>,
    row_group_rows: Option<usize>,
    parts: Vec<Part>,
}

/// What a write left on disk.
#[derive(Debug, Clone)]
pub struct Written {
    /// The model folder.
    pub dir: PathBuf,
    /// The part files written by this call, in order.
    pub parts: Vec<PathBuf>,
}

impl SparkOutput {
    fn with_shape(shape: Shape) -> Self {
        SparkOutput {
            shape,
            rank: false,
            user: Id::Int32,
            item: Id::Int32,
            names: ["user", "recommendations", "item", "rating"].map(String::from),
            extra: None,
            row_group_rows: None,
            parts: Vec::new(),
        }
    }

    /// `ALSModel.recommendForAllUsers(k)`: `user: int, recommendations: array<struct<item: int,
    /// rating: float>>`.
    pub fn nested() -> Self {
        Self::with_shape(Shape::Nested)
    }

    /// One row per `(user, item, rating: double)`.
    pub fn long() -> Self {
        Self::with_shape(Shape::Long)
    }

    /// `(item, rating: double)` rows, no user column.
    pub fn global() -> Self {
        Self::with_shape(Shape::Global)
    }

    /// Adds an int32 `rank` column (long and global): a user's items are ranked 1, 2, … in the
    /// order they are given, counting on across part files.
    pub fn with_rank(mut self) -> Self {
        self.rank = true;
        self
    }

    /// Type of the user column.
    pub fn user_id(mut self, id: Id) -> Self {
        self.user = id;
        self
    }

    /// Type of the item column (or struct field).
    pub fn item_id(mut self, id: Id) -> Self {
        self.item = id;
        self
    }

    /// Column names: user, list column (nested only), item, score.
    pub fn names(mut self, user: &str, items: &str, item: &str, score: &str) -> Self {
        self.names = [user, items, item, score].map(String::from);
        self
    }

    /// Adds a second top-level int64 column `name` (e.g. a run id a job carries along), which
    /// makes the user column ambiguous without `columns.user`.
    pub fn extra_column(mut self, name: &str) -> Self {
        self.extra = Some(name.to_string());
        self
    }

    /// Maximum rows per row group (Spark cuts by bytes; tests cut by rows).
    pub fn row_group_rows(mut self, rows: usize) -> Self {
        self.row_group_rows = Some(rows);
        self
    }

    /// A part file directly in the model folder holding `rows` of `(user, [(item, score)])`.
    pub fn part<U: ToString, I: ToString>(self, rows: Vec<(U, Vec<(I, f32)>)>) -> Self {
        self.push(None, lists(rows))
    }

    /// A part file in the partition folder `partition` (e.g. `bucket=0`).
    pub fn part_in<U: ToString, I: ToString>(self, partition: &str, rows: Vec<(U, Vec<(I, f32)>)>) -> Self {
        self.push(Some(partition), lists(rows))
    }

    /// A part file of a global model.
    pub fn items<I: ToString>(self, items: Vec<(I, f32)>) -> Self {
        let items = items.into_iter().map(|(i, s)| (i.to_string(), s)).collect();
        self.push(None, Rows::Items(items))
    }

    /// A part file with the schema and no row group.
    pub fn empty_part(self) -> Self {
        self.push(None, Rows::Empty)
    }

    fn push(mut self, partition: Option<&str>, rows: Rows) -> Self {
        match (&rows, self.shape) {
            (Rows::Lists(_), Shape::Global) => panic!("a global model takes items(), not part()"),
            (Rows::Items(_), Shape::Nested | Shape::Long) => panic!("items() is for global models"),
            _ => {}
        }
        self.parts.push(Part {
            partition: partition.map(String::from),
            rows,
        });
        self
    }

    /// Like `mode("overwrite")`: removes `dir`, writes every part file, then commits.
    pub fn write(&self, dir: &Path) -> Written {
        if dir.exists() {
            fs::remove_dir_all(dir).expect("remove old output");
        }
        let written = self.write_parts(dir);
        commit(dir);
        written
    }

    /// The part files without `_SUCCESS`: a job still running, or one that died.
    pub fn write_uncommitted(&self, dir: &Path) -> Written {
        if dir.exists() {
            fs::remove_dir_all(dir).expect("remove old output");
        }
        self.write_parts(dir)
    }

    /// Like `mode("append")`: adds part files of a new job next to the existing ones and
    /// commits again (a new `_SUCCESS`).
    pub fn append(&self, dir: &Path) -> Written {
        let written = self.write_parts(dir);
        commit(dir);
        written
    }

    fn write_parts(&self, dir: &Path) -> Written {
        fs::create_dir_all(dir).expect("create model folder");
        let job = uuid();
        let schema = self.schema();
        let mut next_rank = std::collections::HashMap::<String, i32>::new();
        let mut parts = Vec::new();
        for (n, part) in self.parts.iter().enumerate() {
            let folder = match &part.partition {
                Some(p) => dir.join(p),
                None => dir.to_path_buf(),
            };
            fs::create_dir_all(&folder).expect("create partition folder");
            let path = folder.join(format!("part-{n:05}-{job}-c000.snappy.parquet"));
            let batch = self.batch(&schema, &part.rows, &mut next_rank);
            self.write_file(&path, &schema, batch.as_ref());
            parts.push(path);
        }
        Written {
            dir: dir.to_path_buf(),
            parts,
        }
    }

    fn schema(&self) -> SchemaRef {
        let [user, items, item, score] = &self.names;
        let mut fields = Vec::new();
        match self.shape {
            Shape::Nested => {
                fields.push(Field::new(user, self.user.data_type(), false));
                fields.push(Field::new(items, list_type(self.item, item, score), true));
            }
            Shape::Long | Shape::Global => {
                if self.shape == Shape::Long {
                    fields.push(Field::new(user, self.user.data_type(), true));
                }
                fields.push(Field::new(item, self.item.data_type(), true));
                fields.push(Field::new(score, DataType::Float64, true));
                if self.rank {
                    fields.push(Field::new("rank", DataType::Int32, false));
                }
            }
        }
        if let Some(extra) = &self.extra {
            fields.push(Field::new(extra, DataType::Int64, false));
        }
        Arc::new(Schema::new(fields))
    }

    fn batch(
        &self,
        schema: &SchemaRef,
        rows: &Rows,
        next_rank: &mut std::collections::HashMap<String, i32>,
    ) -> Option<RecordBatch> {
        let mut columns: Vec<ArrayRef> = Vec::new();
        let len = match (self.shape, rows) {
            (_, Rows::Empty) => return None,
            (Shape::Nested, Rows::Lists(rows)) => {
                let users: Vec<String> = rows.iter().map(|(u, _)| u.clone()).collect();
                columns.push(self.user.array(&users));
                let DataType::List(element) = schema.field(1).data_type() else {
                    unreachable!("nested schema has a list column")
                };
                let DataType::Struct(struct_fields) = element.data_type() else {
                    unreachable!("the list holds structs")
                };
                let mut offsets = OffsetBufferBuilder::<i32>::new(rows.len());
                let mut item_ids = Vec::new();
                let mut scores = Vec::new();
                for (_, list) in rows {
                    offsets.push_length(list.len());
                    for (item, score) in list {
                        item_ids.push(item.clone());
                        scores.push(*score);
                    }
                }
                let entries = StructArray::new(
                    struct_fields.clone(),
                    vec![self.item.array(&item_ids), Arc::new(Float32Array::from(scores))],
                    None,
                );
                let list = ListArray::try_new(Arc::clone(element), offsets.finish(), Arc::new(entries), None)
                    .expect("list array");
                columns.push(Arc::new(list));
                rows.len()
            }
            (Shape::Long, Rows::Lists(rows)) => {
                let (mut users, mut items, mut scores, mut ranks) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                for (user, list) in rows {
                    for (item, score) in list {
                        let rank = next_rank.entry(user.clone()).or_insert(0);
                        *rank += 1;
                        users.push(user.clone());
                        items.push(item.clone());
                        scores.push(f64::from(*score));
                        ranks.push(*rank);
                    }
                }
                columns.push(self.user.array(&users));
                columns.push(self.item.array(&items));
                columns.push(Arc::new(Float64Array::from(scores)));
                if self.rank {
                    columns.push(Arc::new(Int32Array::from(ranks)));
                }
                users.len()
            }
            (Shape::Global, Rows::Items(rows)) => {
                let items: Vec<String> = rows.iter().map(|(i, _)| i.clone()).collect();
                columns.push(self.item.array(&items));
                columns.push(Arc::new(Float64Array::from_iter_values(
                    rows.iter().map(|(_, s)| f64::from(*s)),
                )));
                if self.rank {
                    columns.push(Arc::new(Int32Array::from_iter_values(1..=rows.len() as i32)));
                }
                rows.len()
            }
            _ => unreachable!("checked in push"),
        };
        if self.extra.is_some() {
            columns.push(Arc::new(Int64Array::from(vec![20_261_101; len])));
        }
        Some(RecordBatch::try_new(Arc::clone(schema), columns).expect("batch matches schema"))
    }

    fn write_file(&self, path: &Path, schema: &SchemaRef, batch: Option<&RecordBatch>) {
        let properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_created_by(CREATED_BY.to_string())
            .set_max_row_group_row_count(self.row_group_rows)
            .set_key_value_metadata(Some(vec![
                KeyValue::new("org.apache.spark.version".to_string(), "3.5.1".to_string()),
                KeyValue::new(
                    "org.apache.spark.sql.parquet.row.metadata".to_string(),
                    spark_schema_json(schema),
                ),
            ]))
            .build();
        let options = ArrowWriterOptions::new()
            .with_properties(properties)
            .with_skip_arrow_metadata(true)
            .with_schema_root("spark_schema".to_string());
        let file = File::create(path).expect("create part file");
        let mut writer = ArrowWriter::try_new_with_options(file, Arc::clone(schema), options).expect("writer");
        if let Some(batch) = batch {
            writer.write(batch).expect("write batch");
        }
        writer.close().expect("close part file");
        write_crc(path);
    }
}

fn lists<U: ToString, I: ToString>(rows: Vec<(U, Vec<(I, f32)>)>) -> Rows {
    Rows::Lists(
        rows.into_iter()
            .map(|(u, list)| {
                (
                    u.to_string(),
                    list.into_iter().map(|(i, s)| (i.to_string(), s)).collect(),
                )
            })
            .collect(),
    )
}

/// `array<struct<item, score: float>>` as Spark's Parquet writer lays it out (3-level list
/// with a `list` repeated group and an `element` field).
fn list_type(item_type: Id, item: &str, score: &str) -> DataType {
    let entry = Fields::from(vec![
        Field::new(item, item_type.data_type(), true),
        Field::new(score, DataType::Float32, true),
    ]);
    DataType::List(Arc::new(Field::new("element", DataType::Struct(entry), true)))
}

/// The Catalyst schema JSON Spark stores under `org.apache.spark.sql.parquet.row.metadata`.
fn spark_schema_json(schema: &Schema) -> String {
    fn data_type(dt: &DataType) -> serde_json::Value {
        match dt {
            DataType::Int32 => "integer".into(),
            DataType::Int64 => "long".into(),
            DataType::Utf8 => "string".into(),
            DataType::Float32 => "float".into(),
            DataType::Float64 => "double".into(),
            DataType::List(element) => serde_json::json!({
                "type": "array",
                "elementType": data_type(element.data_type()),
                "containsNull": element.is_nullable(),
            }),
            DataType::Struct(fields) => struct_type(fields),
            other => panic!("no Spark type for {other}"),
        }
    }
    fn struct_type(fields: &Fields) -> serde_json::Value {
        let fields: Vec<serde_json::Value> = fields
            .iter()
            .map(|f| {
                serde_json::json!({
                    "name": f.name(),
                    "type": data_type(f.data_type()),
                    "nullable": f.is_nullable(),
                    "metadata": {},
                })
            })
            .collect();
        serde_json::json!({ "type": "struct", "fields": fields })
    }
    struct_type(schema.fields()).to_string()
}

/// Writes (or recreates) `_SUCCESS`, after its checksum file, as the committer's last step.
/// Every commit gets a later mtime than the previous one, so the marker's etag changes even
/// when the file system reuses the inode within one clock tick.
pub fn commit(dir: &Path) {
    static LAST_MICROS: AtomicU64 = AtomicU64::new(0);
    let marker = dir.join("_SUCCESS");
    if marker.exists() {
        fs::remove_file(&marker).expect("remove old _SUCCESS");
    }
    fs::write(dir.join("._SUCCESS.crc"), hadoop_crc(&[])).expect("write ._SUCCESS.crc");
    let file = File::create(&marker).expect("create _SUCCESS");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_micros() as u64;
    let stamp = LAST_MICROS
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| Some(now.max(last + 1_000)))
        .map(|last| now.max(last + 1_000))
        .expect("update");
    file.set_modified(UNIX_EPOCH + Duration::from_micros(stamp))
        .expect("set _SUCCESS mtime");
}

/// Writes `.<name>.crc` next to `path`, as Hadoop's `ChecksumFileSystem` does.
pub fn write_crc(path: &Path) {
    let data = fs::read(path).expect("read file to checksum");
    let name = path.file_name().expect("file name").to_string_lossy();
    fs::write(path.with_file_name(format!(".{name}.crc")), hadoop_crc(&data)).expect("write .crc");
}

/// Hadoop checksum file: `crc\0`, big-endian bytesPerChecksum, then a big-endian CRC32 of each
/// 512-byte chunk.
pub fn hadoop_crc(data: &[u8]) -> Vec<u8> {
    let mut out = b"crc\0".to_vec();
    out.extend_from_slice(&(BYTES_PER_CHECKSUM as i32).to_be_bytes());
    for chunk in data.chunks(BYTES_PER_CHECKSUM) {
        out.extend_from_slice(&crc32(chunk).to_be_bytes());
    }
    out
}

/// Bitwise CRC-32 (IEEE 802.3, reflected), what Hadoop's `DataChecksum.Type.CRC32` computes.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A random-looking v4 UUID (Spark names every part file of a job with one job UUID).
fn uuid() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_nanos() as u64
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ u64::from(std::process::id()) << 32;
    let (a, b) = (splitmix(seed), splitmix(seed ^ 0xD1B5_4A32_D192_ED03));
    let bits = (u128::from(a) << 64 | u128::from(b)) & !(0xF << 76) & !(0x3 << 62);
    let bits = bits | (0x4 << 76) | (0x2 << 62);
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}
