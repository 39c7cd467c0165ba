//! `recgw gen-models`: deterministic model outputs in Spark's exact layout, for the demo
//! folder, benchmarks at 1M users, and anyone trying recgw before their Spark job exists.
//!
//! Layout as Spark's `FileOutputCommitter` leaves it: `part-NNNNN-<uuid>-c000.snappy.parquet`
//! files, a Hadoop `.crc` side file next to each, and an empty `_SUCCESS` written last.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, Float32Array, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow_array::{ListArray, StructArray};
use arrow_buffer::OffsetBuffer;
use arrow_schema::{DataType, Field, Fields, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

/// Which of the three schemas of ARCHITECTURE.md §4 to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GenFormat {
    /// `user int, recommendations array<struct<item int, rating float>>` (Spark ALS).
    Nested,
    /// `user int, item int, rating float, rank int`, one row per recommendation.
    Long,
    /// `item int, rating float`: one list for everyone.
    Global,
    /// `user string, clicks bigint, impressions bigint`: a covariate table for CUPED, each
    /// user's pre-period counts, as the README's PySpark job writes it from the logs.
    Covariates,
}

/// What to generate (also the arguments of `recgw gen-models`).
#[derive(Debug, Clone, clap::Args)]
pub struct GenOptions {
    /// The model folder to (re)create.
    #[arg(long)]
    pub out: PathBuf,
    /// Users `0..users` (ignored by `global`, which is one list in one part file).
    #[arg(long, default_value_t = 2_000)]
    pub users: u32,
    /// Item ids are drawn from `0..items`.
    #[arg(long, default_value_t = 500)]
    pub items: u32,
    /// Recommendations per user (list length of `global`).
    #[arg(long, default_value_t = 20)]
    pub k: u32,
    /// Seed: equal seeds give byte-identical output.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Schema to write.
    #[arg(long, value_enum, default_value_t = GenFormat::Nested)]
    pub format: GenFormat,
    /// Number of part files, like a Spark job's output partitions.
    #[arg(long, default_value_t = 2)]
    pub partitions: u32,
    /// Rows per Parquet row group.
    #[arg(long, default_value_t = 65_536)]
    pub row_group_rows: usize,
}

/// Why generation failed.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    /// Writing the folder failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Encoding Parquet failed.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// The options cannot produce a model.
    #[error("{0}")]
    Options(String),
}

/// SplitMix64: tiny, fast, and fully determined by the seed, which is all demo data needs.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// `k` distinct items for `user`, best first, with descending scores.
fn user_recommendations(seed: u64, user: u32, items: u32, k: u32) -> impl Iterator<Item = (i32, f32)> {
    let mut rng = SplitMix(seed ^ u64::from(user).wrapping_mul(0xA24B_AED4_963E_E407));
    let start = (rng.next() % u64::from(items)) as u32;
    // A stride coprime with `items` visits k distinct items without a seen-set.
    let mut stride = (rng.next() % u64::from(items)) as u32 | 1;
    while gcd(stride, items) != 1 {
        stride += 1;
    }
    let mut score = 4.0 + rng.unit();
    (0..k).map(move |j| {
        let item = ((u64::from(start) + u64::from(j) * u64::from(stride)) % u64::from(items)) as i32;
        let current = score;
        score -= 0.01 + 0.05 * rng.unit();
        (item, current)
    })
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> GenError + '_ {
    move |source| GenError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One user's row of a covariate table: pre-period clicks and impressions on the placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CovariateRow {
    /// The user id, as requests and the logs spell it.
    pub user: String,
    /// Clicks before the experiment.
    pub clicks: i64,
    /// Impressions before the experiment.
    pub impressions: i64,
}

/// The deterministic pre-period of user `user` for `gen-models --format covariates`: users
/// differ in how much they click (a propensity skewed towards 0, mean about 7%) and see 0 to
/// 30 items, so the in-experiment behaviour of a user with the same propensity correlates
/// with it as real users' does.
pub fn covariate_row(seed: u64, user: u32) -> CovariateRow {
    let mut rng = SplitMix(seed ^ u64::from(user).wrapping_mul(0xD6E8_FEB8_6659_FD93));
    let propensity = rng.unit().powi(3) * 0.3;
    let impressions = (rng.next() % 31) as i64;
    let clicks = (0..impressions).filter(|_| rng.unit() < propensity).count() as i64;
    CovariateRow {
        user: user.to_string(),
        clicks,
        impressions,
    }
}

/// Writes a covariate table of `rows` in Spark's layout into `out` (replacing it), spread
/// over `partitions` part files: `user string, clicks bigint, impressions bigint`.
pub fn write_covariates(out: &Path, rows: &[CovariateRow], partitions: u32, seed: u64) -> Result<(), GenError> {
    let schema = schema(GenFormat::Covariates);
    let per_part = rows.len().div_ceil(partitions.max(1) as usize).max(1);
    let chunks: Vec<&[CovariateRow]> = rows.chunks(per_part).collect();
    spark_folder(
        out,
        seed,
        65_536,
        partitions.max(1),
        &schema,
        |part, writer| match chunks.get(part as usize) {
            Some(rows) => Ok(writer.write(&covariate_batch(&schema, rows)?)?),
            None => Ok(()),
        },
    )
}

fn covariate_batch(schema: &Arc<Schema>, rows: &[CovariateRow]) -> Result<RecordBatch, GenError> {
    let users: StringArray = rows.iter().map(|r| Some(r.user.as_str())).collect();
    let clicks: Int64Array = rows.iter().map(|r| r.clicks).collect();
    let impressions: Int64Array = rows.iter().map(|r| r.impressions).collect();
    let columns: Vec<ArrayRef> = vec![Arc::new(users), Arc::new(clicks), Arc::new(impressions)];
    RecordBatch::try_new(Arc::clone(schema), columns).map_err(|e| GenError::Options(e.to_string()))
}

/// Writes the model folder described by `opts`, replacing any previous content.
pub fn generate(opts: &GenOptions) -> Result<(), GenError> {
    if opts.items == 0 || opts.k == 0 || opts.k > opts.items || opts.partitions == 0 {
        return Err(GenError::Options(
            "need items > 0, 0 < k <= items and partitions > 0".into(),
        ));
    }
    // A global list is one small table: Spark would coalesce it into a single part file.
    let partitions = if opts.format == GenFormat::Global {
        1
    } else {
        opts.partitions
    };
    let per_part = opts.users.div_ceil(partitions).max(1);
    let schema = schema(opts.format);
    spark_folder(
        &opts.out,
        opts.seed,
        opts.row_group_rows,
        partitions,
        &schema,
        |part, writer| {
            let users = (part * per_part).min(opts.users)..((part + 1) * per_part).min(opts.users);
            if opts.format == GenFormat::Global {
                writer.write(&batch(opts, &schema, 0..0)?)?;
            } else {
                // Users are encoded a block at a time so 1M users never sit in memory at once.
                for start in users.clone().step_by(16_384) {
                    let end = (start + 16_384).min(users.end);
                    writer.write(&batch(opts, &schema, start..end)?)?;
                }
            }
            Ok(())
        },
    )
}

/// Recreates `out` as a Spark job's output: `partitions` part files named by a job id drawn
/// from `seed`, each filled by `fill`, a `.crc` beside each, and `_SUCCESS` last.
fn spark_folder(
    out: &Path,
    seed: u64,
    row_group_rows: usize,
    partitions: u32,
    schema: &Arc<Schema>,
    mut fill: impl FnMut(u32, &mut ArrowWriter<fs::File>) -> Result<(), GenError>,
) -> Result<(), GenError> {
    if out.exists() {
        fs::remove_dir_all(out).map_err(io_err(out))?;
    }
    fs::create_dir_all(out).map_err(io_err(out))?;
    let mut ids = SplitMix(seed ^ 0x5EED);
    let job_uuid = format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        ids.next() as u32,
        ids.next() as u16,
        ids.next() as u16,
        ids.next() as u16,
        ids.next() & 0xFFFF_FFFF_FFFF
    );
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(row_group_rows))
        .build();
    for part in 0..partitions {
        let name = format!("part-{part:05}-{job_uuid}-c000.snappy.parquet");
        let path = out.join(&name);
        let file = fs::File::create(&path).map_err(io_err(&path))?;
        let mut writer = ArrowWriter::try_new(file, Arc::clone(schema), Some(props.clone()))?;
        fill(part, &mut writer)?;
        writer.close()?;
        write_crc(out, &name)?;
    }
    let success = out.join("_SUCCESS");
    fs::write(&success, b"").map_err(io_err(&success))?;
    write_crc(out, "_SUCCESS")
}

fn schema(format: GenFormat) -> Arc<Schema> {
    let rating = Field::new("rating", DataType::Float32, true);
    Arc::new(match format {
        GenFormat::Nested => Schema::new(vec![
            Field::new("user", DataType::Int32, false),
            Field::new("recommendations", DataType::List(element()), true),
        ]),
        GenFormat::Long => Schema::new(vec![
            Field::new("user", DataType::Int32, false),
            Field::new("item", DataType::Int32, false),
            rating,
            Field::new("rank", DataType::Int32, false),
        ]),
        GenFormat::Global => Schema::new(vec![Field::new("item", DataType::Int32, false), rating]),
        GenFormat::Covariates => Schema::new(vec![
            Field::new("user", DataType::Utf8, true),
            Field::new("clicks", DataType::Int64, false),
            Field::new("impressions", DataType::Int64, false),
        ]),
    })
}

/// The list element as Spark names it (`element`, a nullable struct).
fn element() -> Arc<Field> {
    Arc::new(Field::new("element", DataType::Struct(rec_fields()), true))
}

fn rec_fields() -> Fields {
    Fields::from(vec![
        Field::new("item", DataType::Int32, true),
        Field::new("rating", DataType::Float32, true),
    ])
}

fn batch(opts: &GenOptions, schema: &Arc<Schema>, users: std::ops::Range<u32>) -> Result<RecordBatch, GenError> {
    let columns: Vec<ArrayRef> = match opts.format {
        GenFormat::Covariates => {
            let rows: Vec<CovariateRow> = users.map(|user| covariate_row(opts.seed, user)).collect();
            return covariate_batch(schema, &rows);
        }
        GenFormat::Nested => {
            let (mut items, mut scores) = (Vec::new(), Vec::new());
            for user in users.clone() {
                for (item, score) in user_recommendations(opts.seed, user, opts.items, opts.k) {
                    items.push(item);
                    scores.push(score);
                }
            }
            let entries = StructArray::new(
                rec_fields(),
                vec![Arc::new(Int32Array::from(items)), Arc::new(Float32Array::from(scores))],
                None,
            );
            let lengths = std::iter::repeat_n(opts.k as usize, users.len());
            let lists = ListArray::new(element(), OffsetBuffer::from_lengths(lengths), Arc::new(entries), None);
            let user_ids: Int32Array = users.map(|u| u as i32).collect();
            vec![Arc::new(user_ids), Arc::new(lists)]
        }
        GenFormat::Long => {
            let (mut u, mut i, mut s, mut r) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for user in users {
                for (rank, (item, score)) in user_recommendations(opts.seed, user, opts.items, opts.k).enumerate() {
                    u.push(user as i32);
                    i.push(item);
                    s.push(score);
                    r.push(rank as i32 + 1);
                }
            }
            vec![
                Arc::new(Int32Array::from(u)),
                Arc::new(Int32Array::from(i)),
                Arc::new(Float32Array::from(s)),
                Arc::new(Int32Array::from(r)),
            ]
        }
        GenFormat::Global => {
            // Popularity falls off like a Zipf law, as item counts do in practice.
            let (items, scores): (Vec<i32>, Vec<f32>) = user_recommendations(opts.seed, 0, opts.items, opts.k)
                .enumerate()
                .map(|(rank, (item, _))| (item, 1000.0 / (rank as f32 + 1.0)))
                .unzip();
            vec![Arc::new(Int32Array::from(items)), Arc::new(Float32Array::from(scores))]
        }
    };
    RecordBatch::try_new(Arc::clone(schema), columns).map_err(|e| GenError::Options(e.to_string()))
}

/// Hadoop's `ChecksumFileSystem` side file: magic, bytes per checksum, then a CRC-32 per chunk.
fn write_crc(dir: &Path, name: &str) -> Result<(), GenError> {
    const BYTES_PER_CHECKSUM: usize = 512;
    let data_path = dir.join(name);
    let data = fs::read(&data_path).map_err(io_err(&data_path))?;
    let mut out = b"crc\0".to_vec();
    out.extend_from_slice(&(BYTES_PER_CHECKSUM as i32).to_be_bytes());
    for chunk in data.chunks(BYTES_PER_CHECKSUM) {
        out.extend_from_slice(&crc32(chunk).to_be_bytes());
    }
    let crc_path = dir.join(format!(".{name}.crc"));
    fs::write(&crc_path, out).map_err(io_err(&crc_path))
}

/// CRC-32 (IEEE), bitwise: side files are written once per part, so speed does not matter.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn recommendations_are_distinct_and_descending() {
        let recs: Vec<(i32, f32)> = user_recommendations(7, 42, 100, 50).collect();
        let mut items: Vec<i32> = recs.iter().map(|r| r.0).collect();
        items.sort_unstable();
        items.dedup();
        assert_eq!(items.len(), 50);
        assert!(recs.windows(2).all(|w| w[0].1 > w[1].1));
        assert_eq!(recs, user_recommendations(7, 42, 100, 50).collect::<Vec<_>>());
    }
}
