//! The two tables' rows, their Arrow schemas and their encoding as Parquet files, and the
//! Hive-style partition (`dt=YYYY-MM-DD/hour=HH`) a row's timestamp falls in.
//!
//! Column names are those GrowthBook's and Eppo's default assignment SQL expect (README,
//! "Exposure logs"): `timestamp`, `user_id`, `experiment_id`, `variation_id`, so a warehouse
//! table over the folder needs no aliases.

use std::sync::Arc;

use arrow_array::{ArrayRef, BooleanArray, Int32Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

/// A row of a log table.
pub(crate) trait Row: Send + 'static {
    /// The table's folder under the log root.
    const TABLE: &'static str;

    /// When it happened, microseconds since the Unix epoch (UTC): the partition it goes to.
    fn timestamp_us(&self) -> i64;

    /// The table's columns.
    fn schema() -> SchemaRef;

    /// `rows` as one batch of [`Row::schema`].
    fn batch(rows: &[Self]) -> Result<RecordBatch, arrow_schema::ArrowError>
    where
        Self: Sized;
}

/// One served recommendation response: what `recommendations_total` counts, one row each.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Exposure {
    /// When it was served.
    pub(crate) timestamp_us: i64,
    /// The user asked for.
    pub(crate) user_id: String,
    /// The covering experiment; `None` (null) on the placement default.
    pub(crate) experiment_id: Option<String>,
    /// The arm served as the response names it: `default` when uncovered, `interleaved` for an
    /// interleave experiment's merged list.
    pub(crate) variation_id: String,
    /// The placement asked for.
    pub(crate) placement: String,
    /// The model that produced the list (the placement default after a fallback).
    pub(crate) model: String,
    /// Its version string.
    pub(crate) model_version: String,
    /// Which tier answered (`local`, `redis`, `snapshot`, `store`, `fallback`).
    pub(crate) source: &'static str,
    /// A QA override: analyses leave these out.
    pub(crate) forced: bool,
    /// The response's `X-Request-Id` (the caller's, or the one the gateway made up), which
    /// joins a row to the access log.
    pub(crate) request_id: String,
}

/// One accepted event, counted for the first time (a retry of a counted event is not logged
/// again).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EventRow {
    /// When the gateway accepted it.
    pub(crate) timestamp_us: i64,
    /// The user of the token's response.
    pub(crate) user_id: String,
    /// The token's experiment; `None` (null) on the placement default.
    pub(crate) experiment_id: Option<String>,
    /// The arm credited: the token's arm, or on an interleaved page the team whose pick the
    /// item was.
    pub(crate) variation_id: String,
    /// `impression` or `click`.
    pub(crate) event_type: &'static str,
    /// The item.
    pub(crate) item_id: String,
    /// The item's place in the list, 0-based: the page's offset plus its place on the page.
    pub(crate) position: u16,
    /// `{token id}:{i|c}{place on the page}`: the key the event was counted under exactly once, so it
    /// is unique across every replica's files (the token id being the first 12 bytes of the
    /// token's HMAC, URL-safe base64).
    pub(crate) event_id: String,
    /// The placement of the token's response: a user's pre-period clicks and impressions on a
    /// placement (CUPED covariates) are counted from this.
    pub(crate) placement: String,
}

/// The timestamp column: microseconds, UTC (Parquet `TIMESTAMP(MICROS, isAdjustedToUTC)`, which
/// Spark reads as `timestamp` and warehouses as a UTC instant).
fn timestamp_field() -> Field {
    Field::new(
        "timestamp",
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        false,
    )
}

fn text(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
}

fn strings<'a>(values: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(values.map(Some).collect::<StringArray>())
}

fn timestamps(values: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from_iter_values(values).with_timezone("UTC"))
}

impl Row for Exposure {
    const TABLE: &'static str = "exposures";

    fn timestamp_us(&self) -> i64 {
        self.timestamp_us
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            timestamp_field(),
            text("user_id", false),
            text("experiment_id", true),
            text("variation_id", false),
            text("placement", false),
            text("model", false),
            text("model_version", false),
            text("source", false),
            Field::new("forced", DataType::Boolean, false),
            text("request_id", false),
        ]))
    }

    fn batch(rows: &[Self]) -> Result<RecordBatch, arrow_schema::ArrowError> {
        let columns: Vec<ArrayRef> = vec![
            timestamps(rows.iter().map(|r| r.timestamp_us)),
            strings(rows.iter().map(|r| r.user_id.as_str())),
            Arc::new(rows.iter().map(|r| r.experiment_id.as_deref()).collect::<StringArray>()),
            strings(rows.iter().map(|r| r.variation_id.as_str())),
            strings(rows.iter().map(|r| r.placement.as_str())),
            strings(rows.iter().map(|r| r.model.as_str())),
            strings(rows.iter().map(|r| r.model_version.as_str())),
            strings(rows.iter().map(|r| r.source)),
            Arc::new(rows.iter().map(|r| Some(r.forced)).collect::<BooleanArray>()),
            strings(rows.iter().map(|r| r.request_id.as_str())),
        ];
        RecordBatch::try_new(Self::schema(), columns)
    }
}

impl Row for EventRow {
    const TABLE: &'static str = "events";

    fn timestamp_us(&self) -> i64 {
        self.timestamp_us
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            timestamp_field(),
            text("user_id", false),
            text("experiment_id", true),
            text("variation_id", false),
            text("event_type", false),
            text("item_id", false),
            Field::new("position", DataType::Int32, false),
            text("event_id", false),
            text("placement", false),
        ]))
    }

    fn batch(rows: &[Self]) -> Result<RecordBatch, arrow_schema::ArrowError> {
        let columns: Vec<ArrayRef> = vec![
            timestamps(rows.iter().map(|r| r.timestamp_us)),
            strings(rows.iter().map(|r| r.user_id.as_str())),
            Arc::new(rows.iter().map(|r| r.experiment_id.as_deref()).collect::<StringArray>()),
            strings(rows.iter().map(|r| r.variation_id.as_str())),
            strings(rows.iter().map(|r| r.event_type)),
            strings(rows.iter().map(|r| r.item_id.as_str())),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| i32::from(r.position)))),
            strings(rows.iter().map(|r| r.event_id.as_str())),
            strings(rows.iter().map(|r| r.placement.as_str())),
        ];
        RecordBatch::try_new(Self::schema(), columns)
    }
}

/// `rows` as a whole Parquet file (row groups of the writer's default size, 1 Mi rows), snappy-compressed (what Spark writes by
/// default, so every engine that reads Spark's tables reads these).
pub(crate) fn encode<R: Row>(rows: &[R]) -> Result<Vec<u8>, parquet::errors::ParquetError> {
    let batch = R::batch(rows)?;
    let properties = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
    let mut writer = ArrowWriter::try_new(Vec::new(), R::schema(), Some(properties))?;
    writer.write(&batch)?;
    writer.into_inner()
}

/// The hour a row belongs to: days since 1970-01-01 and the hour of that day, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Hour {
    /// Days since the Unix epoch.
    days: i64,
    /// 0-23.
    hour: u8,
}

impl Hour {
    /// The hour `timestamp_us` (microseconds since the epoch) falls in.
    pub(crate) fn of(timestamp_us: i64) -> Hour {
        let seconds = timestamp_us.div_euclid(1_000_000);
        Hour {
            days: seconds.div_euclid(86_400),
            // At most 23.
            hour: (seconds.rem_euclid(86_400) / 3_600) as u8,
        }
    }

    /// The partition folders: `dt=YYYY-MM-DD` and `hour=HH` (two digits, as Hive and Spark
    /// jobs write them; Spark's discovery reads `hour` as an integer either way).
    pub(crate) fn folders(self) -> [String; 2] {
        [
            format!("dt={}", crate::calendar::date(self.days)),
            format!("hour={:02}", self.hour),
        ]
    }
}

#[cfg(test)]
mod tests {
    use arrow_array::Array;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    use super::*;

    #[test]
    fn hours_name_their_partition_folders() {
        // 2026-12-01T20:59:59.999999Z and the next microsecond.
        let last = (20_788 * 86_400 + 20 * 3_600 + 3_599) * 1_000_000 + 999_999;
        assert_eq!(Hour::of(last).folders(), ["dt=2026-12-01", "hour=20"]);
        assert_eq!(Hour::of(last + 1).folders(), ["dt=2026-12-01", "hour=21"]);
        let midnight = 20_789 * 86_400 * 1_000_000;
        assert_eq!(Hour::of(midnight - 1).folders(), ["dt=2026-12-01", "hour=23"]);
        assert_eq!(Hour::of(midnight).folders(), ["dt=2026-12-02", "hour=00"]);
    }

    #[test]
    fn encoded_files_read_back_with_their_columns() {
        let rows = vec![
            Exposure {
                timestamp_us: 1_764_619_200_000_000,
                user_id: "42".into(),
                experiment_id: Some("home-als-rank".into()),
                variation_id: "control".into(),
                placement: "home".into(),
                model: "als-v1".into(),
                model_version: "v1".into(),
                source: "local",
                forced: false,
                request_id: "r-1".into(),
            },
            Exposure {
                timestamp_us: 1,
                user_id: "7".into(),
                experiment_id: None,
                variation_id: "default".into(),
                placement: "default".into(),
                model: "popular".into(),
                model_version: "p".into(),
                source: "fallback",
                forced: true,
                request_id: "r-2".into(),
            },
        ];
        let bytes = encode(&rows).expect("encodes");
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
            .expect("a Parquet file")
            .build()
            .expect("reader");
        let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().expect("batches");
        assert_eq!(batches.len(), 1);
        let batch = &batches[0];
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.schema(), Exposure::schema());
        let names: Vec<&str> = batch.schema_ref().fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            [
                "timestamp",
                "user_id",
                "experiment_id",
                "variation_id",
                "placement",
                "model",
                "model_version",
                "source",
                "forced",
                "request_id"
            ]
        );
        let experiment = batch.column(2).as_any().downcast_ref::<StringArray>().expect("text");
        assert_eq!(experiment.value(0), "home-als-rank");
        assert!(experiment.is_null(1), "the placement default has no experiment");

        let events = [EventRow {
            timestamp_us: 5,
            user_id: "42".into(),
            experiment_id: Some("e".into()),
            variation_id: "treatment".into(),
            event_type: "click",
            item_id: "9".into(),
            position: 3,
            event_id: "AAAA:c3".into(),
            placement: "home".into(),
        }];
        let bytes = encode(&events).expect("encodes");
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes)).expect("a Parquet file");
        assert_eq!(reader.schema().as_ref(), EventRow::schema().as_ref());
    }
}
