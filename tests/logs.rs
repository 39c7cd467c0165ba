//! Exposure and event logs (README, "Exposure logs"): a real gateway with `logs.root` on a local
//! folder (or an `hdfs://` name node nobody answers for) under traffic; every file it wrote is
//! read back with the `parquet` crate and with pyarrow (the Python `RECGW_TEST_PYTHON` names,
//! which `scripts/test` makes, else `python3`; the test fails when it has no pyarrow unless
//! `RECGW_SKIP_PYARROW=1`) and compared with what the gateway's own counters say it served and
//! accepted.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arrow_array::{Array, BooleanArray, Int32Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow_schema::{DataType, TimeUnit};
use common::events::post_all_accepted;
use common::gateway::{TestGateway, demo_settings, eventually, sample};
use common::page::{Page, recommend};
use futures::StreamExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use recgw::config::Settings;
use serde_json::{Value, json};

const EXPOSURE_COLUMNS: [&str; 10] = [
    "timestamp",
    "user_id",
    "experiment_id",
    "variation_id",
    "placement",
    "model",
    "model_version",
    "source",
    "forced",
    "request_id",
];
const EVENT_COLUMNS: [&str; 9] = [
    "timestamp",
    "user_id",
    "experiment_id",
    "variation_id",
    "event_type",
    "item_id",
    "position",
    "event_id",
    "placement",
];

/// The demo with logs written under `root` (a local folder) every `interval`.
fn logged(root: &Path, interval: &str) -> Settings {
    let mut settings = demo_settings();
    settings.logs.root = Some(format!("file://{}", root.display()));
    settings.logs.flush_interval = humantime::parse_duration(interval).expect("duration");
    settings
}

/// One row of a log file: its cells as text (`None` for null), and where it was read.
#[derive(Debug, Clone)]
struct Logged {
    /// The file, relative to the table's folder.
    file: PathBuf,
    /// Column → cell.
    cells: BTreeMap<String, Option<String>>,
}

impl Logged {
    fn get(&self, column: &str) -> Option<&str> {
        self.cells
            .get(column)
            .unwrap_or_else(|| panic!("no column {column} in {self:?}"))
            .as_deref()
    }

    fn text(&self, column: &str) -> &str {
        self.get(column)
            .unwrap_or_else(|| panic!("{column} is null in {self:?}"))
    }
}

/// A cell as text, for the column types the logs use.
fn cell(column: &dyn Array, row: usize) -> Option<String> {
    if column.is_null(row) {
        return None;
    }
    let any = column.as_any();
    Some(match column.data_type() {
        DataType::Utf8 => any.downcast_ref::<StringArray>().expect("utf8").value(row).to_string(),
        DataType::Boolean => any.downcast_ref::<BooleanArray>().expect("bool").value(row).to_string(),
        DataType::Int32 => any.downcast_ref::<Int32Array>().expect("int32").value(row).to_string(),
        DataType::Timestamp(TimeUnit::Microsecond, Some(zone)) if zone.as_ref() == "UTC" => any
            .downcast_ref::<TimestampMicrosecondArray>()
            .expect("timestamp")
            .value(row)
            .to_string(),
        other => panic!("unexpected column type {other}"),
    })
}

/// Days since 1970-01-01 of `YYYY-MM-DD`, counted month by month (independently of the
/// gateway's arithmetic).
fn days_of(date: &str) -> i64 {
    let parts: Vec<i64> = date.split('-').map(|p| p.parse().expect("number")).collect();
    let [year, month, day] = parts[..] else {
        panic!("not a date: {date}")
    };
    let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let mut days = 0;
    for y in 1970..year {
        days += if leap(y) { 366 } else { 365 };
    }
    let lengths = [
        31,
        if leap(year) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    days += lengths[..(month - 1) as usize].iter().sum::<i64>();
    days + day - 1
}

/// Every row of `table` under `root`, checking the layout on the way: only
/// `{table}/dt=YYYY-MM-DD/hour=HH/part-*.parquet` files (no temporary file left), the schema's
/// columns in order, and each row's timestamp inside its file's partition.
fn read_table(root: &Path, table: &str, columns: &[&str]) -> Vec<Logged> {
    let mut rows = Vec::new();
    let base = root.join(table);
    if !base.exists() {
        return rows;
    }
    for dt in std::fs::read_dir(&base).expect("read table") {
        let dt = dt.expect("entry");
        let dt_name = dt.file_name().into_string().expect("utf-8");
        let date = dt_name
            .strip_prefix("dt=")
            .unwrap_or_else(|| panic!("{table}/{dt_name} is not a dt= partition"));
        assert_eq!(date.len(), 10, "{dt_name}");
        for hour in std::fs::read_dir(dt.path()).expect("read dt") {
            let hour = hour.expect("entry");
            let hour_name = hour.file_name().into_string().expect("utf-8");
            let hh = hour_name
                .strip_prefix("hour=")
                .unwrap_or_else(|| panic!("{table}/{dt_name}/{hour_name} is not an hour= partition"));
            assert_eq!(hh.len(), 2, "{hour_name}");
            let hh: i64 = hh.parse().expect("hour");
            let (from, to) = {
                let start = (days_of(date) * 86_400 + hh * 3_600) * 1_000_000;
                (start, start + 3_600 * 1_000_000)
            };
            for file in std::fs::read_dir(hour.path()).expect("read hour") {
                let file = file.expect("entry");
                let name = file.file_name().into_string().expect("utf-8");
                assert!(
                    name.starts_with("part-") && name.ends_with(".parquet") && !name.contains('#'),
                    "only committed part files are left: {table}/{dt_name}/{hour_name}/{name}"
                );
                let relative = PathBuf::from(&dt_name).join(&hour_name).join(&name);
                let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(file.path()).expect("open"))
                    .unwrap_or_else(|e| panic!("{}: not a Parquet file: {e}", relative.display()))
                    .build()
                    .expect("reader");
                for batch in reader {
                    let batch: RecordBatch = batch.expect("batch");
                    let names: Vec<&str> = batch.schema_ref().fields().iter().map(|f| f.name().as_str()).collect();
                    assert_eq!(names, columns, "{}", relative.display());
                    for row in 0..batch.num_rows() {
                        let cells = columns
                            .iter()
                            .enumerate()
                            .map(|(i, c)| (c.to_string(), cell(batch.column(i), row)))
                            .collect();
                        let logged = Logged {
                            file: relative.clone(),
                            cells,
                        };
                        let at: i64 = logged.text("timestamp").parse().expect("micros");
                        assert!(
                            (from..to).contains(&at),
                            "a row at {at} µs in {}: partitions follow the row's hour",
                            relative.display()
                        );
                        rows.push(logged);
                    }
                }
            }
        }
    }
    rows
}

/// Every sample of `name` in an exposition: labels → value.
fn samples(text: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, labels) = series.split_once('{').unwrap_or((series, ""));
        if metric != name {
            continue;
        }
        let labels = labels
            .trim_end_matches('}')
            .split(',')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once('=').expect("label");
                (k.to_string(), v.trim_matches('"').to_string())
            })
            .collect();
        out.push((labels, value.parse().expect("value")));
    }
    out
}

/// `(placement, experiment, arm)` → `recommendations_total`, leaving out zeros.
fn recommendations_per_arm(metrics: &str) -> BTreeMap<(String, String, String), u64> {
    samples(metrics, "recommendations_total")
        .into_iter()
        .filter(|(_, v)| *v > 0.0)
        .map(|(l, v)| {
            (
                (l["placement"].clone(), l["experiment"].clone(), l["arm"].clone()),
                v as u64,
            )
        })
        .collect()
}

/// `(experiment, arm, type)` → accepted events counted, from `impressions_total` and
/// `clicks_total` (summed over placements), leaving out zeros.
fn events_per_arm(metrics: &str) -> BTreeMap<(String, String, String), u64> {
    let mut out = BTreeMap::new();
    for (family, kind) in [("impressions_total", "impression"), ("clicks_total", "click")] {
        for (l, v) in samples(metrics, family) {
            if v > 0.0 {
                *out.entry((l["experiment"].clone(), l["arm"].clone(), kind.to_string()))
                    .or_default() += v as u64;
            }
        }
    }
    out
}

/// The same, counted from log rows (`none` for a null experiment, as the metrics label it).
fn exposure_rows_per_arm(rows: &[Logged]) -> BTreeMap<(String, String, String), u64> {
    let mut out = BTreeMap::new();
    for row in rows {
        let key = (
            row.text("placement").to_string(),
            row.get("experiment_id").unwrap_or("none").to_string(),
            row.text("variation_id").to_string(),
        );
        *out.entry(key).or_default() += 1;
    }
    out
}

fn event_rows_per_arm(rows: &[Logged]) -> BTreeMap<(String, String, String), u64> {
    let mut out = BTreeMap::new();
    for row in rows {
        let key = (
            row.get("experiment_id").unwrap_or("none").to_string(),
            row.text("variation_id").to_string(),
            row.text("event_type").to_string(),
        );
        *out.entry(key).or_default() += 1;
    }
    out
}

/// Asserts no value of `column` appears twice across every file of a table.
fn assert_unique(rows: &[Logged], column: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
    for row in rows {
        let value = row.text(column).to_string();
        if let Some(before) = seen.insert(value.clone(), row.file.clone()) {
            panic!(
                "{column} {value} is in {} and in {}",
                before.display(),
                row.file.display()
            );
        }
    }
    seen.into_keys().collect()
}

/// One round of mixed traffic for users `from..from + n`: the `home` experiment (known and cold
/// users, a QA override), the `feed` interleave experiment and the `default` placement.
async fn requests(gw: &TestGateway, from: usize, n: usize) -> Vec<Page> {
    let mut asked: Vec<(String, Option<&'static str>)> = Vec::new();
    for i in from..from + n {
        let placement = match i % 4 {
            0 | 1 => Some("home"),
            2 => Some("feed"),
            _ => None,
        };
        asked.push((i.to_string(), placement));
        if i % 10 == 0 {
            asked.push((format!("cold-{i}"), Some("home")));
        }
    }
    asked.push(("qa-user-1".into(), Some("home")));
    futures::stream::iter(asked)
        .map(|(user, placement)| async move {
            // No placement: the `default` one.
            let query = match placement {
                Some(p) => format!("placement={p}&limit=5"),
                None => "limit=5".to_string(),
            };
            let page = recommend(gw, &user, &query).await;
            assert!(page.request_id.is_some(), "X-Request-Id: {}", page.body);
            page
        })
        .buffer_unordered(8)
        .collect()
        .await
}

/// Impressions of every item of every page and a click on each page's first item, in batches;
/// returns how many were accepted. Each click is also sent twice more with its `event_id`: once
/// in a later batch (a retry: accepted, not counted again) — those are returned apart.
async fn events(gw: &TestGateway, served: &[Page]) -> (u64, u64) {
    let mut batch = Vec::new();
    let mut retries = Vec::new();
    for (n, s) in served.iter().enumerate() {
        for item in &s.items {
            batch.push(json!({"type": "impression", "tracking_token": s.token, "item_id": item}));
        }
        if let Some(first) = s.items.first() {
            let click =
                json!({"type": "click", "tracking_token": s.token, "item_id": first, "event_id": format!("c-{n}")});
            batch.push(click.clone());
            if n % 3 == 0 {
                retries.push(click);
            }
        }
    }
    post_all_accepted(gw, &batch, 200).await;
    post_all_accepted(gw, &retries, 200).await;
    (batch.len() as u64, retries.len() as u64)
}

/// Set to `1` to skip the pyarrow check on a machine without pyarrow; the test fails otherwise
/// rather than pass unseen (`scripts/test` makes a Python with it).
const SKIP_PYARROW: &str = "RECGW_SKIP_PYARROW";

/// What a Python with pyarrow (`RECGW_TEST_PYTHON`, else `python3`) reads of the tables under
/// `root`, or `None` (said on stderr) when it has no pyarrow and [`SKIP_PYARROW`] is `1`; panics
/// when it has none otherwise.
fn pyarrow_counts(root: &Path) -> Option<Value> {
    let python = std::env::var("RECGW_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let has = std::process::Command::new(&python)
        .args(["-c", "import pyarrow"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has {
        let why = format!("`{python} -c 'import pyarrow'` fails");
        assert!(
            std::env::var(SKIP_PYARROW).is_ok_and(|v| v == "1"),
            "{why}: run scripts/test, which makes a Python with pyarrow, or set RECGW_TEST_PYTHON to one, \
             or set {SKIP_PYARROW}=1 to skip the pyarrow check"
        );
        eprintln!("{why}: the pyarrow check is SKIPPED ({SKIP_PYARROW}=1)");
        return None;
    }
    let script = r#"
import json, sys
import pyarrow.dataset as ds
out = {}
for table in ["exposures", "events"]:
    data = ds.dataset(sys.argv[1] + "/" + table, format="parquet", partitioning="hive").to_table()
    counts = {}
    key = ["experiment_id", "variation_id"] + (["event_type"] if table == "events" else ["placement"])
    for row in data.select(key).to_pylist():
        k = "|".join(row[c] or "none" for c in key)
        counts[k] = counts.get(k, 0) + 1
    out[table] = {
        "rows": data.num_rows,
        "columns": data.schema.names,
        "timestamp": str(data.schema.field("timestamp").type),
        "counts": counts,
    }
print(json.dumps(out))
"#;
    let output = std::process::Command::new(&python)
        .args(["-c", script, root.to_str().expect("utf-8")])
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "pyarrow could not read the logs: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(serde_json::from_slice(&output.stdout).expect("JSON from the pyarrow script"))
}

/// The part files of a table under `root`, by path relative to it.
fn part_files(root: &Path) -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let entry = entry.expect("entry");
            if entry.file_type().expect("type").is_dir() {
                walk(&entry.path(), root, out);
            } else {
                out.push(
                    entry
                        .path()
                        .strip_prefix(root)
                        .expect("under root")
                        .display()
                        .to_string(),
                );
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exposure_rows_equal_recommendations_per_arm_and_event_rows_equal_accepted_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("logs");
    let gw = TestGateway::launch_ready(&logged(&root, "200ms")).await;

    let mut served = Vec::new();
    let (mut accepted, mut retried) = (0, 0);
    // Rounds a few flush intervals apart, so the rows are spread over several files.
    for round in 0..4 {
        let page = requests(&gw, 1 + round * 100, 100).await;
        let (a, r) = events(&gw, &page).await;
        accepted += a;
        retried += r;
        served.extend(page);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let metrics = gw.metrics().await;
    let recommended = recommendations_per_arm(&metrics);
    let counted = events_per_arm(&metrics);
    let total: u64 = recommended.values().sum();
    assert_eq!(total, served.len() as u64, "every request is a counted response");
    assert_eq!(
        counted.values().sum::<u64>(),
        accepted,
        "every accepted event of the first sends was counted"
    );
    assert!(retried > 0, "retries were accepted (and not counted again)");
    // The periodic flush writes them, before any shutdown.
    eventually(Duration::from_secs(10), "every row written", async || {
        let text = gw.metrics().await;
        let written = |table| sample(&text, "logs_written_rows_total", &[("table", table)]);
        let pending = |table| sample(&text, "logs_pending_rows", &[("table", table)]);
        match (
            written("exposures"),
            written("events"),
            pending("exposures"),
            pending("events"),
        ) {
            (e, v, 0.0, 0.0) if e == total as f64 && v == accepted as f64 => Ok(()),
            got => Err(format!("written, pending: {got:?}")),
        }
    })
    .await;
    let final_metrics = gw.metrics().await;
    let exposition = final_metrics.clone();
    tokio::task::spawn_blocking(move || common::promtool::check_metrics(&exposition))
        .await
        .expect("promtool accepts /metrics with the log families");
    for table in ["exposures", "events"] {
        assert_eq!(
            sample(&final_metrics, "logs_dropped_rows_total", &[("table", table)]),
            0.0
        );
        assert_eq!(
            sample(&final_metrics, "logs_write_failures_total", &[("table", table)]),
            0.0
        );
    }
    gw.stop().await;

    let exposures = read_table(&root, "exposures", &EXPOSURE_COLUMNS);
    let logged_events = read_table(&root, "events", &EVENT_COLUMNS);
    assert_eq!(exposure_rows_per_arm(&exposures), recommended, "exposure rows per arm");
    assert_eq!(
        event_rows_per_arm(&logged_events),
        counted,
        "event rows per arm and type"
    );
    let request_ids = assert_unique(&exposures, "request_id");
    let asked: BTreeSet<String> = served
        .iter()
        .map(|s| s.request_id.clone().expect("X-Request-Id"))
        .collect();
    assert_eq!(request_ids, asked, "one exposure row per response, by its X-Request-Id");
    assert_unique(&logged_events, "event_id");

    let files: BTreeSet<&PathBuf> = exposures.iter().map(|r| &r.file).collect();
    assert!(
        files.len() > 1,
        "rows of several intervals are in several files: {files:?}"
    );
    // Rows say what the responses said.
    let forced: Vec<&Logged> = exposures.iter().filter(|r| r.text("user_id") == "qa-user-1").collect();
    assert_eq!(forced.len(), 4);
    assert!(
        forced
            .iter()
            .all(|r| r.text("forced") == "true" && r.text("variation_id") == "treatment")
    );
    assert!(
        exposures
            .iter()
            .any(|r| r.text("variation_id") == "interleaved" && r.text("placement") == "feed")
    );
    assert!(
        exposures
            .iter()
            .any(|r| r.get("experiment_id").is_none() && r.text("variation_id") == "default"),
        "the default placement's responses have no experiment"
    );
    assert!(
        exposures
            .iter()
            .any(|r| r.text("source") == "fallback" && r.text("user_id").starts_with("cold-"))
    );
    assert!(
        logged_events
            .iter()
            .filter(|r| r.text("event_type") == "click")
            .all(|r| r.text("position") == "0"),
        "clicks were on each page's first item, position 0"
    );
    assert!(
        logged_events.iter().any(|r| r.text("position") == "4"),
        "positions are 0-based"
    );
    eprintln!(
        "{} exposure rows, {} event rows in {} exposure files; per arm: {recommended:?}",
        exposures.len(),
        logged_events.len(),
        files.len()
    );

    if let Some(read) = pyarrow_counts(&root) {
        assert_eq!(read["exposures"]["rows"], exposures.len(), "{read}");
        assert_eq!(read["events"]["rows"], logged_events.len(), "{read}");
        assert_eq!(read["exposures"]["timestamp"], "timestamp[us, tz=UTC]", "{read}");
        let columns: Vec<&str> = read["exposures"]["columns"]
            .as_array()
            .expect("columns")
            .iter()
            .map(|c| c.as_str().expect("name"))
            .collect();
        let mut expected = EXPOSURE_COLUMNS.to_vec();
        expected.extend(["dt", "hour"]);
        assert_eq!(columns, expected, "hive partitions add dt and hour");
        for ((placement, experiment, arm), n) in &recommended {
            assert_eq!(
                read["exposures"]["counts"][format!("{experiment}|{arm}|{placement}")],
                *n,
                "{read}"
            );
        }
        for ((experiment, arm, kind), n) in &counted {
            assert_eq!(
                read["events"]["counts"][format!("{experiment}|{arm}|{kind}")],
                *n,
                "{read}"
            );
        }
        eprintln!("pyarrow read the same rows: {}", read["exposures"]["rows"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_log_root_loses_nothing_once_it_is_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("logs");
    std::fs::create_dir_all(&root).expect("mkdir");
    // A regular file where each table's folder goes: no write under it can succeed, whoever the
    // tests run as (chmod does not stop root).
    for table in ["exposures", "events"] {
        std::fs::write(root.join(table), b"in the way").expect("block");
    }
    let gw = TestGateway::launch_ready(&logged(&root, "100ms")).await;
    let before = requests(&gw, 1, 60).await;
    let (mut accepted, _) = events(&gw, &before).await;
    let failing = eventually(Duration::from_secs(10), "writes fail and rows wait", async || {
        let text = gw.metrics().await;
        let failures = |t| sample(&text, "logs_write_failures_total", &[("table", t)]);
        let pending = |t| sample(&text, "logs_pending_rows", &[("table", t)]);
        if failures("exposures") >= 2.0 && failures("events") >= 1.0 && pending("exposures") == before.len() as f64 {
            Ok(text)
        } else {
            Err(format!(
                "failures {} {}, pending {} {}",
                failures("exposures"),
                failures("events"),
                pending("exposures"),
                pending("events")
            ))
        }
    })
    .await;
    assert_eq!(
        sample(&failing, "logs_written_rows_total", &[("table", "exposures")]),
        0.0
    );
    // Traffic goes on while the root is unwritable.
    let during = requests(&gw, 100, 60).await;
    let (a, _) = events(&gw, &during).await;
    accepted += a;
    for table in ["exposures", "events"] {
        std::fs::remove_file(root.join(table)).expect("unblock");
    }
    let after = requests(&gw, 200, 40).await;
    let (a, _) = events(&gw, &after).await;
    accepted += a;
    let total = (before.len() + during.len() + after.len()) as f64;
    eventually(Duration::from_secs(10), "every waiting row written", async || {
        let text = gw.metrics().await;
        let written = |t| sample(&text, "logs_written_rows_total", &[("table", t)]);
        match (written("exposures"), written("events")) {
            (e, v) if e == total && v == accepted as f64 => Ok(()),
            got => Err(format!("{got:?} of {total}, {accepted}")),
        }
    })
    .await;
    let metrics = gw.metrics().await;
    let failures = sample(&metrics, "logs_write_failures_total", &[("table", "exposures")]);
    assert_eq!(
        sample(&metrics, "logs_dropped_rows_total", &[("table", "exposures")]),
        0.0
    );
    assert_eq!(sample(&metrics, "logs_dropped_rows_total", &[("table", "events")]), 0.0);
    gw.stop().await;

    let exposures = read_table(&root, "exposures", &EXPOSURE_COLUMNS);
    let logged_events = read_table(&root, "events", &EVENT_COLUMNS);
    assert_eq!(exposure_rows_per_arm(&exposures), recommendations_per_arm(&metrics));
    assert_eq!(event_rows_per_arm(&logged_events), events_per_arm(&metrics));
    assert_unique(&exposures, "request_id");
    assert_unique(&logged_events, "event_id");
    eprintln!(
        "{failures} failed exposure writes while the root was blocked; {} exposure rows and {} event rows written after",
        exposures.len(),
        logged_events.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_past_the_bound_are_dropped_and_counted_and_requests_never_fail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("logs");
    std::fs::create_dir_all(&root).expect("mkdir");
    std::fs::write(root.join("exposures"), b"in the way").expect("block");
    let mut settings = logged(&root, "100ms");
    settings.logs.max_buffered_rows = 10;
    let gw = TestGateway::launch_ready(&settings).await;
    for user in 0..25 {
        recommend(&gw, &user.to_string(), "placement=home&limit=5").await;
    }
    let text = gw.metrics().await;
    assert_eq!(sample(&text, "logs_pending_rows", &[("table", "exposures")]), 10.0);
    assert_eq!(
        sample(&text, "logs_dropped_rows_total", &[("table", "exposures")]),
        15.0
    );
    std::fs::remove_file(root.join("exposures")).expect("unblock");
    eventually(Duration::from_secs(10), "the 10 held rows written", async || {
        let text = gw.metrics().await;
        match sample(&text, "logs_written_rows_total", &[("table", "exposures")]) {
            10.0 => Ok(()),
            n => Err(format!("{n}")),
        }
    })
    .await;
    gw.stop().await;
    let rows = read_table(&root, "exposures", &EXPOSURE_COLUMNS);
    assert_eq!(rows.len(), 10);
    let users: BTreeSet<&str> = rows.iter().map(|r| r.text("user_id")).collect();
    let first: BTreeSet<String> = (0..10).map(|u| u.to_string()).collect();
    assert_eq!(
        users,
        first.iter().map(String::as_str).collect(),
        "the first rows are kept, later ones dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_writes_what_is_buffered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("logs");
    // No periodic flush within the test: only the shutdown drain writes.
    let gw = TestGateway::launch_ready(&logged(&root, "1h")).await;
    let served = requests(&gw, 1, 40).await;
    let (accepted, _) = events(&gw, &served).await;
    let metrics = gw.metrics().await;
    assert!(part_files(&root).is_empty(), "nothing written before shutdown");
    gw.stop().await;
    let exposures = read_table(&root, "exposures", &EXPOSURE_COLUMNS);
    let logged_events = read_table(&root, "events", &EVENT_COLUMNS);
    assert_eq!(exposures.len(), served.len());
    assert_eq!(logged_events.len() as u64, accepted);
    assert_eq!(exposure_rows_per_arm(&exposures), recommendations_per_arm(&metrics));
    let files = part_files(&root);
    assert_eq!(files.len(), 2, "one file per table for the one interval: {files:?}");
}

/// Latencies of `n` sequential requests, sorted.
async fn latencies(gw: &TestGateway, users: std::ops::Range<usize>) -> Vec<Duration> {
    let mut out = Vec::new();
    for user in users {
        let started = Instant::now();
        let reply = gw.get(&format!("/recommendations/{user}?placement=home")).await;
        out.push(started.elapsed());
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    out.sort();
    out
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_hdfs_log_root_never_slows_a_request() {
    // Held for the whole test: no other process can start listening there meanwhile.
    let closed = common::ports::ClosedPort::hold();
    let port = closed.port();
    let mut off = demo_settings();
    off.server.shutdown_grace = Duration::from_secs(1);
    let mut on = off.clone();
    on.logs.root = Some(format!("hdfs://127.0.0.1:{port}/recgw/logs"));
    on.logs.flush_interval = Duration::from_millis(50);
    // The HDFS client retries a name node it cannot reach with backoff for minutes; the
    // flusher gives up on a write after this (30 s by default) and counts it failed.
    on.logs.write_timeout = Duration::from_millis(300);
    let without = TestGateway::launch_ready(&off).await;
    let with = TestGateway::launch_ready(&on).await;
    // Warm both (models, local cache tiers) on the same users, then measure them in turns.
    latencies(&without, 0..200).await;
    latencies(&with, 0..200).await;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for round in 0..5 {
        let users = round * 40..round * 40 + 40;
        a.extend(latencies(&without, users.clone()).await);
        b.extend(latencies(&with, users).await);
    }
    a.sort();
    b.sort();
    let text = with.metrics().await;
    let failures = sample(&text, "logs_write_failures_total", &[("table", "exposures")]);
    let pending = sample(&text, "logs_pending_rows", &[("table", "exposures")]);
    eprintln!(
        "logs off: p50 {:?} p99 {:?}; hdfs log root unreachable: p50 {:?} p99 {:?}; {failures} failed writes, {pending} rows waiting",
        quantile(&a, 0.5),
        quantile(&a, 0.99),
        quantile(&b, 0.5),
        quantile(&b, 0.99)
    );
    assert!(
        failures >= 1.0,
        "the unreachable root was tried and the failure counted"
    );
    assert_eq!(pending, 400.0, "every response's row waits");
    assert_eq!(sample(&text, "logs_written_rows_total", &[("table", "exposures")]), 0.0);
    assert_eq!(sample(&text, "logs_dropped_rows_total", &[("table", "exposures")]), 0.0);
    // Generous bounds for a shared 2-core machine: a request that waited on a write would take
    // at least the connection attempt, retried every 50 ms.
    let slack = Duration::from_millis(5);
    assert!(
        quantile(&b, 0.5) <= quantile(&a, 0.5) * 2 + slack,
        "median with an unreachable log root {:?}, without logs {:?}",
        quantile(&b, 0.5),
        quantile(&a, 0.5)
    );
    assert!(
        quantile(&b, 0.99) <= quantile(&a, 0.99) * 3 + slack * 4,
        "p99 with an unreachable log root {:?}, without logs {:?}",
        quantile(&b, 0.99),
        quantile(&a, 0.99)
    );
    without.stop().await;
    // The drain gives up within server.shutdown_grace rather than hold the exit.
    let stopping = with.stop().await;
    assert!(
        stopping < Duration::from_secs(5),
        "stopped in {stopping:?} with rows it could not write"
    );
}
