//! The store against model folders written in Spark's exact on-disk layout (see
//! `common/spark.rs`): detection of the three shapes, point lookups, `_SUCCESS` handling,
//! version swaps, failed loads and `/*` locations, through the public API only.

mod common;

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::spark::{Id, SparkOutput, commit};
use recgw::store::{ColumnNames, Item, LoadedModel, ModelRegistry, ModelSpec, ModelStatus, SnapshotSettings};

/// The two ways a loaded version answers lookups; every test here runs on both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Serving {
    /// Page-index reads of the part files.
    Pages,
    /// The version's serving snapshot, built at load and mapped.
    Snapshot,
}

/// Runs the store test `$name(serving)` as `$name::pages` and `$name::snapshot`.
macro_rules! both_paths {
    ($name:ident) => {
        mod $name {
            use super::Serving;

            #[tokio::test]
            async fn pages() {
                super::$name(Serving::Pages).await;
            }

            #[tokio::test]
            async fn snapshot() {
                super::$name(Serving::Snapshot).await;
            }
        }
    };
}

fn spec(location: &str) -> ModelSpec {
    ModelSpec::new(location, ColumnNames::default())
}

fn columns(user: &str, items: &str, item: &str, score: &str) -> ColumnNames {
    let name = |s: &str| (!s.is_empty()).then(|| s.to_string());
    ColumnNames {
        user: name(user),
        items: name(items),
        item: name(item),
        score: name(score),
    }
}

/// A registry over `root`; with snapshots, they go to `root/_snapshots` (hidden from model
/// listings, as every `_` name is).
fn registry(serving: Serving, root: &Path, specs: &[ModelSpec]) -> ModelRegistry {
    let registry = ModelRegistry::new(
        root.to_str().expect("utf-8 temp path"),
        specs.iter().cloned(),
        recgw::metrics::Metrics::new(),
    )
    .expect("registry");
    match serving {
        Serving::Pages => registry,
        Serving::Snapshot => {
            let dir = root.join("_snapshots");
            std::fs::create_dir_all(&dir).expect("snapshot folder");
            registry.with_snapshots(SnapshotSettings {
                dir: Ok(dir),
                max_bytes: 1 << 30,
            })
        }
    }
}

fn status_of(registry: &ModelRegistry, location: &str) -> ModelStatus {
    let mut found: Vec<ModelStatus> = registry
        .status()
        .into_iter()
        .filter(|s| s.location == location)
        .collect();
    assert_eq!(found.len(), 1, "one status for {location}");
    found.remove(0)
}

/// Refreshes and returns the serving version, failing with the status error if none loaded.
/// A per-user model of a registry with snapshots must then be served from its snapshot.
async fn load(serving: Serving, registry: &ModelRegistry, spec: &ModelSpec) -> Arc<LoadedModel> {
    registry.refresh().await;
    let model = match registry.get(spec) {
        Some(model) => model,
        None => panic!(
            "{} not loaded: {:?}",
            spec.location,
            status_of(registry, &spec.location)
        ),
    };
    let status = status_of(registry, &spec.location);
    let expected = match (model.shape(), serving) {
        ("global", _) => "memory",
        (_, Serving::Snapshot) => "snapshot",
        (_, Serving::Pages) => "pages",
    };
    assert_eq!(status.serving, Some(expected), "{}: {status:?}", spec.location);
    model
}

/// The list of `user` as `(id, score, rank)`, `None` when the model does not hold the user.
async fn lookup(model: &LoadedModel, user: &str) -> Option<Vec<(String, f32, u32)>> {
    let list = model
        .lookup(user)
        .await
        .unwrap_or_else(|e| panic!("lookup {user:?}: {e}"))?;
    Some(
        list.iter()
            .map(|Item { id, score, rank }| (id.to_string(), *score, *rank))
            .collect(),
    )
}

/// `(id, score)` pairs ranked 1, 2, … in the given order.
fn ranked(items: &[(&str, f32)]) -> Option<Vec<(String, f32, u32)>> {
    Some(
        items
            .iter()
            .zip(1..)
            .map(|((id, score), rank)| (id.to_string(), *score, rank))
            .collect(),
    )
}

async fn nested_int32_spark_defaults(serving: Serving) {
    let root = tempfile::tempdir().expect("tempdir");
    SparkOutput::nested()
        .part(vec![
            (1, vec![(101, 4.5), (205, 4.25), (17, 3.0)]),
            (2, vec![(205, 5.0), (101, 1.5), (300, 0.5)]),
            (-7, vec![(1, 2.0), (2, 1.0), (3, 0.75)]),
        ])
        .write(&root.path().join("als-v1"));
    let spec = spec("als-v1");
    let registry = registry(serving, root.path(), std::slice::from_ref(&spec));
    let model = load(serving, &registry, &spec).await;

    assert_eq!(model.shape(), "nested");
    assert!(model.version().starts_with("als-v1@"), "{}", model.version());
    assert_eq!(
        lookup(&model, "1").await,
        ranked(&[("101", 4.5), ("205", 4.25), ("17", 3.0)])
    );
    assert_eq!(
        lookup(&model, "2").await,
        ranked(&[("205", 5.0), ("101", 1.5), ("300", 0.5)])
    );
    assert_eq!(
        lookup(&model, "-7").await,
        ranked(&[("1", 2.0), ("2", 1.0), ("3", 0.75)])
    );
    assert_eq!(lookup(&model, "3").await, None, "unknown user");
    assert_eq!(
        lookup(&model, "user-1").await,
        None,
        "non-numeric id against an int model"
    );
    assert_eq!(lookup(&model, "").await, None);
    assert_eq!(lookup(&model, "99999999999").await, None, "out of int32 range");

    let status = status_of(&registry, "als-v1");
    assert_eq!(status.version.as_deref(), Some(model.version()));
    assert_eq!(status.shape, Some("nested"));
    assert_eq!(status.users, 3);
    assert_eq!(status.error, None);
    assert!(registry.all_loaded());
}

async fn nested_int64_renamed_columns_with_and_without_overrides(serving: Serving) {
    let root = tempfile::tempdir().expect("tempdir");
    let big = 9_000_000_000_i64;
    SparkOutput::nested()
        .user_id(Id::Int64)
        .item_id(Id::Int64)
        .names("userId", "recommendations", "movieId", "rating")
        .part(vec![
            (big, vec![(big + 1, 0.9), (5, 0.8)]),
            (42, vec![(7, 0.7), (big, 0.6)]),
        ])
        .part(vec![(43, vec![(8, 0.5)])])
        .write(&root.path().join("movies"));
    let detected = spec("movies");
    let named = ModelSpec::new("movies", columns("userId", "recommendations", "movieId", "rating"));
    let registry = registry(serving, root.path(), &[detected.clone(), named.clone()]);
    registry.refresh().await;

    for spec in [&detected, &named] {
        let model = registry.get(spec).expect("loaded");
        assert_eq!(model.shape(), "nested");
        assert_eq!(model.part_files(), 2);
        assert_eq!(
            lookup(&model, "9000000000").await,
            ranked(&[("9000000001", 0.9), ("5", 0.8)])
        );
        assert_eq!(lookup(&model, "42").await, ranked(&[("7", 0.7), ("9000000000", 0.6)]));
        assert_eq!(lookup(&model, "43").await, ranked(&[("8", 0.5)]));
        assert_eq!(lookup(&model, "44").await, None);
        assert_eq!(lookup(&model, "movie-42").await, None);
    }
}

async fn nested_string_ids(serving: Serving) {
    let root = tempfile::tempdir().expect("tempdir");
    SparkOutput::nested()
        .user_id(Id::Utf8)
        .item_id(Id::Utf8)
        .names("userId", "recs", "movieId", "rating")
        .part(vec![
            ("user-7f3a", vec![("tt0111161", 0.98), ("tt0068646", 0.97)]),
            ("42", vec![("tt0468569", 0.5)]),
            ("qa@example.com", vec![("a", 0.25), ("b", 0.125), ("c", 0.0625)]),
        ])
        .write(&root.path().join("str"));
    let spec = spec("str");
    let registry = registry(serving, root.path(), std::slice::from_ref(&spec));
    let model = load(serving, &registry, &spec).await;

    assert_eq!(
        lookup(&model, "user-7f3a").await,
        ranked(&[("tt0111161", 0.98), ("tt0068646", 0.97)])
    );
    assert_eq!(lookup(&model, "42").await, ranked(&[("tt0468569", 0.5)]));
    assert_eq!(
        lookup(&model, "qa@example.com").await,
        ranked(&[("a", 0.25), ("b", 0.125), ("c", 0.0625)])
    );
    assert_eq!(lookup(&model, "USER-7F3A").await, None, "ids are case-sensitive");
    assert_eq!(lookup(&model, "042").await, None, "text ids are not numbers");
}

async fn ambiguous_columns_need_overrides_and_wrong_overrides_are_reported(serving: Serving) {
    let root = tempfile::tempdir().expect("tempdir");
    SparkOutput::nested()
        .names("userId", "recommendations", "movieId", "rating")
        .extra_column("runId")
        .part(vec![(5, vec![(50, 0.5), (51, 0.25)]), (6, vec![(60, 1.0)])])
        .write(&root.path().join("extra"));
    let detected = spec("extra");
    let named = ModelSpec::new("extra", columns("userId", "", "", ""));
    let wrong = ModelSpec::new("extra", columns("userId", "", "itemId", ""));
    let registry = registry(serving, root.path(), &[detected.clone(), named.clone(), wrong.clone()]);
    registry.refresh().await;

    let model = registry.get(&named).expect("loads once the user column is named");
    assert_eq!(lookup(&model, "5").await, ranked(&[("50", 0.5), ("51", 0.25)]));
    assert_eq!(lookup(&model, "6").await, ranked(&[("60", 1.0)]));
    assert_eq!(lookup(&model, "20261101").await, None, "the run id is not a user");

    assert!(registry.get(&detected).is_none(), "two int64/int32 columns: ambiguous");
    assert!(registry.get(&wrong).is_none(), "no struct field itemId");
    assert!(!registry.all_loaded());
    let errors: Vec<String> = registry
        .status()
        .into_iter()
        .filter_map(|s| s.error)
        .collect::<Vec<_>>();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("userId") && e.contains("runId") && e.contains("columns")),
        "the ambiguity names both candidates and the fix: {errors:?}"
    );
    assert!(errors.iter().any(|e| e.contains("\"itemId\"")), "{errors:?}");
    assert!(
        errors.iter().all(|e| e.contains("part-00000-")),
        "errors name the file: {errors:?}"
    );
}

async fn long_model_with_three_id_columns_needs_user_and_item_named(serving: Serving) {
    let root = tempfile::tempdir().expect("tempdir");
    SparkOutput::long()
        .names("customer", "", "sku", "score")
        .extra_column("runId")
        .part(vec![(5, vec![(50, 0.5), (51, 0.75)]), (6, vec![(60, 0.1)])])
        .write(&root.path().join("long-extra"));
    let detected = spec("long-extra");
    let named = ModelSpec::new("long-extra", columns("customer", "", "sku", ""));
    let registry = registry(serving, root.path(), &[detected.clone(), named.clone()]);
    registry.refresh().await;

    let model = registry.get(&named).expect("loads with user and item named");
    assert_eq!(model.shape(), "long");
    assert_eq!(lookup(&model, "5").await, ranked(&[("51", 0.75), ("50", 0.5)]));
    assert_eq!(lookup(&model, "6").await, ranked(&[("60", 0.1)]));
    assert_eq!(lookup(&model, "50").await, None, "items are not users");

    assert!(registry.get(&detected).is_none());
    let error = registry.status().into_iter().find_map(|s| s.error).expect("reported");
    assert!(
        error.contains("columns.user") && error.contains("customer") && error.contains("runId"),
        "{error}"
    );
}

async fn long_without_rank_orders_by_score_across_part_files(serving: Serving) {
    let root = tempfile::tempdir().expect("tempdir");
    SparkOutput::long()
        .part(vec![
            (1, vec![(10, 0.5), (11, 0.9)]),
            (2, vec![(20, 0.1), (21, 0.3)]),
            (1, vec![(13, 0.2)]),
        ])
        .part(vec![(3, vec![(30, 1.0)]), (1, vec![(12, 0.7)])])
        .write(&root.path().join("long"));
    let spec = spec("long");
    let registry = registry(serving, root.path(), std::slice::from_ref(&spec));
    let model = load(serving, &registry, &spec).await;

    assert_eq!(model.shape(), "long");
    assert_eq!(
        lookup(&model, "1").await,
        ranked(&[("11", 0.9), ("12", 0.7), ("10", 0.5), ("13", 0.2)]),
        "rows of user 1 come from two runs in part 0 and one in part 1"
    );
    assert_eq!(lookup(&model, "2").await, ranked(&[("21", 0.3), ("20", 0.1)]));
    assert_eq!(lookup(&model, "3").await, ranked(&[("30", 1.0)]));
    assert_eq!(lookup(&model, "4").await, None);
    assert_eq!(lookup(&model, "x").await, None);
}

async fn long_with_rank_orders_by_rank_not_score(serving: Serving) {
    let root = tempfile::tempdir().expect("tempdir");
    // Ranks count on per user across parts: user 1 gets 10→1, 11→2, 12→3.
    SparkOutput::long()
        .with_rank()
        .user_id(Id::Utf8)
        .item_id(Id::Int64)
        .names("userId", "", "movieId", "score")
        .part(vec![
            ("u1", vec![(10, 0.1), (11, 0.9)]),
            ("u2", vec![(20, 0.2), (21, 0.8)]),
        ])
        .part(vec![("u2", vec![(22, 0.5)]), ("u1", vec![(12, 0.5)])])
        .write(&root.path().join("ranked"));
    let spec = spec("ranked");
    let registry = registry(serving, root.path(), std::slice::from_ref(&spec));
    let model = load(serving, &registry, &spec).await;

    assert_eq!(model.shape(), "long");
    assert_eq!(
        lookup(&model, "u1").await,
        ranked(&[("10", 0.1), ("11", 0.9), ("12", 0.5)])
    );
    assert_eq!(
        lookup(&model, "u2").await,
        ranked(&[("20", 0.2), ("21", 0.8), ("22", 0.5)])
    );
    assert_eq!(lookup(&model, "u3").await, None);
}

async fn global_serves_one_list_to_everyone(serving: Serving) {
    let root = tempfile::tempdir().expect("tempdir");
    SparkOutput::global()
        .item_id(Id::Utf8)
        .items(vec![("sku-a", 0.3), ("sku-b", 0.9)])
        .items(vec![("sku-c", 0.5)])
        .write(&root.path().join("popular"));
    SparkOutput::global()
        .with_rank()
        .items(vec![(3, 0.1), (1, 0.9), (2, 0.5)])
        .write(&root.path().join("editorial"));
    let popular = spec("popular");
    let editorial = spec("editorial");
    let registry = registry(serving, root.path(), &[popular.clone(), editorial.clone()]);
    registry.refresh().await;

    let model = registry.get(&popular).expect("popular loaded");
    assert_eq!(model.shape(), "global");
    let expected = ranked(&[("sku-b", 0.9), ("sku-c", 0.5), ("sku-a", 0.3)]);
    for user in ["1", "user-7f3a", "never-seen", ""] {
        assert_eq!(lookup(&model, user).await, expected, "user {user:?}");
    }
    let a = model.lookup("a").await.expect("lookup").expect("list");
    let b = model.lookup("b").await.expect("lookup").expect("list");
    assert!(Arc::ptr_eq(&a, &b), "one shared list");

    let model = registry.get(&editorial).expect("editorial loaded");
    assert_eq!(model.shape(), "global");
    assert_eq!(lookup(&model, "9").await, ranked(&[("3", 0.1), ("1", 0.9), ("2", 0.5)]));

    let status = status_of(&registry, "popular");
    assert_eq!((status.shape, status.users, status.error), (Some("global"), 0, None));
}

/// A global model holds its one list in memory, so it keeps answering even when its folder is
/// overwritten in place by a run whose output then fails to load.
async fn global_version_survives_a_failed_in_place_overwrite(serving: Serving) {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("popular");
    SparkOutput::global().items(vec![(1, 0.5), (2, 0.25)]).write(&dir);
    let spec = spec("popular");
    let registry = registry(serving, root.path(), std::slice::from_ref(&spec));
    let v1 = load(serving, &registry, &spec).await;

    let written = SparkOutput::global().items(vec![(3, 0.5)]).write(&dir);
    std::fs::write(&written.parts[0], b"garbage").unwrap();
    commit(&dir);
    registry.refresh().await;

    let kept = registry.get(&spec).expect("v1 keeps serving");
    assert!(Arc::ptr_eq(&kept, &v1));
    assert!(status_of(&registry, "popular").error.is_some());
    assert_eq!(lookup(&kept, "anyone").await, ranked(&[("1", 0.5), ("2", 0.25)]));
}

async fn partition_folders_crc_files_and_empty_parts(serving: Serving) {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("als-parts");
    let written = SparkOutput::nested()
        .user_id(Id::Int64)
        .empty_part()
        .part_in("bucket=0", vec![(0, vec![(1, 0.5)]), (2, vec![(3, 0.25), (4, 0.125)])])
        .part_in("bucket=1", vec![(1, vec![(5, 1.0)]), (3, vec![(6, 2.0)])])
        .part_in("bucket=1/day=2026-11-01", vec![(5, vec![(7, 3.0)])])
        .write(&dir);
    // The fixture lays things out as Spark does.
    for part in &written.parts {
        let name = part.file_name().unwrap().to_string_lossy();
        assert!(
            name.starts_with("part-") && name.ends_with("-c000.snappy.parquet"),
            "{name}"
        );
        assert!(part.with_file_name(format!(".{name}.crc")).is_file(), "crc of {name}");
    }
    assert!(dir.join("_SUCCESS").is_file() && dir.join("._SUCCESS.crc").is_file());
    assert_eq!(std::fs::metadata(dir.join("_SUCCESS")).unwrap().len(), 0);
    // Leftovers Hadoop treats as hidden must be ignored, even when they are not Parquet.
    std::fs::create_dir_all(dir.join("_temporary/0")).unwrap();
    std::fs::write(dir.join("_temporary/0/part-00009-x.snappy.parquet"), b"not parquet").unwrap();
    std::fs::write(dir.join("bucket=0/.part-00009.parquet.swp"), b"not parquet").unwrap();

    let spec = spec("als-parts");
    let registry = registry(serving, root.path(), std::slice::from_ref(&spec));
    let model = load(serving, &registry, &spec).await;
    assert_eq!(model.part_files(), 4, "the empty part and three data parts");
    assert_eq!(status_of(&registry, "als-parts").users, 5);
    assert_eq!(lookup(&model, "0").await, ranked(&[("1", 0.5)]));
    assert_eq!(lookup(&model, "1").await, ranked(&[("5", 1.0)]));
    assert_eq!(lookup(&model, "2").await, ranked(&[("3", 0.25), ("4", 0.125)]));
    assert_eq!(lookup(&model, "3").await, ranked(&[("6", 2.0)]));
    assert_eq!(lookup(&model, "5").await, ranked(&[("7", 3.0)]));
    assert_eq!(lookup(&model, "4").await, None);
}

async fn folder_without_success_is_not_a_model(serving: Serving) {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("pending");
    SparkOutput::nested()
        .part(vec![(1, vec![(2, 0.5)])])
        .write_uncommitted(&dir);
    let pending = spec("pending");
    let missing = spec("never-written");
    let registry = registry(serving, root.path(), &[pending.clone(), missing.clone()]);
    registry.refresh().await;

    assert!(registry.get(&pending).is_none());
    assert!(registry.get(&missing).is_none());
    for location in ["pending", "never-written"] {
        let status = status_of(&registry, location);
        assert_eq!((status.version, status.shape, status.users), (None, None, 0));
        let error = status.error.unwrap_or_default();
        assert!(
            error.contains("_SUCCESS") && error.contains(location),
            "{location}: {error:?}"
        );
    }

    commit(&dir);
    let model = load(serving, &registry, &pending).await;
    assert_eq!(lookup(&model, "1").await, ranked(&[("2", 0.5)]));
    assert_eq!(status_of(&registry, "pending").error, None);
}

async fn corrupt_part_in_a_new_version_keeps_the_old_one_serving(serving: Serving) {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("als");
    let v1_rows = vec![(1, vec![(10, 0.5), (11, 0.25)]), (2, vec![(20, 1.0)])];
    SparkOutput::nested().part(v1_rows).write(&dir);
    let spec = spec("als");
    let registry = registry(serving, root.path(), std::slice::from_ref(&spec));
    let v1 = load(serving, &registry, &spec).await;

    // A second job appends a part file that is not Parquet and commits again.
    let bad = dir.join("part-00000-0b6f5b1e-9c1d-4c7e-8f3a-2d5e6f7a8b9c-c000.snappy.parquet");
    std::fs::write(&bad, b"PAR1 this is not a parquet file, only its first magic").unwrap();
    common::spark::write_crc(&bad);
    commit(&dir);
    registry.refresh().await;

    let kept = registry.get(&spec).expect("v1 keeps serving");
    assert!(Arc::ptr_eq(&kept, &v1), "still v1");
    let status = status_of(&registry, "als");
    assert_eq!(status.version.as_deref(), Some(v1.version()));
    let error = status.error.expect("the failure is reported");
    assert!(error.contains("failed to load"), "{error}");
    assert!(
        error.contains("part-00000-0b6f5b1e-9c1d-4c7e-8f3a-2d5e6f7a8b9c"),
        "names the file: {error}"
    );
    assert_eq!(lookup(&kept, "1").await, ranked(&[("10", 0.5), ("11", 0.25)]));

    // Polling the same failed version again changes nothing.
    registry.refresh().await;
    assert!(Arc::ptr_eq(&registry.get(&spec).unwrap(), &v1));
    assert!(status_of(&registry, "als").error.is_some());

    // A good version replaces v1 and clears the error.
    SparkOutput::nested().part(vec![(1, vec![(12, 0.75)])]).write(&dir);
    let v3 = load(serving, &registry, &spec).await;
    assert_ne!(v3.version(), v1.version());
    assert_eq!(lookup(&v3, "1").await, ranked(&[("12", 0.75)]));
    assert_eq!(status_of(&registry, "als").error, None);
}

async fn truncated_part_in_a_rewritten_folder_is_reported(serving: Serving) {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("als");
    SparkOutput::nested().part(vec![(1, vec![(10, 0.5)])]).write(&dir);
    let spec = spec("als");
    let registry = registry(serving, root.path(), std::slice::from_ref(&spec));
    let v1 = load(serving, &registry, &spec).await;

    // `mode("overwrite")` with a part file cut short (e.g. a lost executor's upload).
    let written = SparkOutput::nested()
        .part(vec![(1, vec![(11, 0.5)])])
        .part(vec![(2, vec![(21, 0.5)])])
        .write(&dir);
    let bad = &written.parts[1];
    let bytes = std::fs::read(bad).unwrap();
    std::fs::write(bad, &bytes[..bytes.len() / 2]).unwrap();
    commit(&dir);
    registry.refresh().await;

    let kept = registry.get(&spec).expect("v1 stays the serving version");
    assert_eq!(kept.version(), v1.version());
    let error = status_of(&registry, "als").error.expect("reported");
    let bad_name = bad.file_name().unwrap().to_string_lossy();
    assert!(error.contains(&*bad_name), "names {bad_name}: {error}");
    assert!(!error.contains(&*written.parts[0].file_name().unwrap().to_string_lossy()));
}

async fn new_version_is_picked_up_on_refresh(serving: Serving) {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("als-v2");
    SparkOutput::nested()
        .part(vec![(1, vec![(10, 0.5)]), (2, vec![(20, 0.5)])])
        .write(&dir);
    let spec = spec("als-v2");
    let registry = registry(serving, root.path(), std::slice::from_ref(&spec));
    let v1 = load(serving, &registry, &spec).await;
    assert_eq!(lookup(&v1, "1").await, ranked(&[("10", 0.5)]));

    // Nothing changed: the same version object keeps serving.
    registry.refresh().await;
    assert!(Arc::ptr_eq(&registry.get(&spec).unwrap(), &v1));

    SparkOutput::nested()
        .part(vec![(1, vec![(11, 0.9), (10, 0.1)]), (3, vec![(30, 0.3)])])
        .write(&dir);
    let v2 = load(serving, &registry, &spec).await;
    assert_ne!(v2.version(), v1.version());
    assert!(v2.version().starts_with("als-v2@"), "{}", v2.version());
    assert_eq!(lookup(&v2, "1").await, ranked(&[("11", 0.9), ("10", 0.1)]));
    assert_eq!(lookup(&v2, "2").await, None, "user 2 left the model");
    assert_eq!(lookup(&v2, "3").await, ranked(&[("30", 0.3)]));
    assert_eq!(status_of(&registry, "als-v2").version.as_deref(), Some(v2.version()));
}

async fn wildcard_serves_the_newest_committed_folder(serving: Serving) {
    let root = tempfile::tempdir().expect("tempdir");
    let als = root.path().join("als");
    for (day, item) in [("2026-11-01", 1), ("2026-11-02", 2)] {
        SparkOutput::nested()
            .part(vec![(7, vec![(item, 0.5)])])
            .write(&als.join(day));
    }
    SparkOutput::nested()
        .part(vec![(7, vec![(3, 0.5)])])
        .write_uncommitted(&als.join("2026-11-03"));
    let spec = spec("als/*");
    let registry = registry(serving, root.path(), std::slice::from_ref(&spec));
    let model = load(serving, &registry, &spec).await;
    assert!(model.version().starts_with("2026-11-02@"), "{}", model.version());
    assert!(model.uri().ends_with("/als/2026-11-02"), "{}", model.uri());
    assert_eq!(lookup(&model, "7").await, ranked(&[("2", 0.5)]));

    commit(&als.join("2026-11-03"));
    let model = load(serving, &registry, &spec).await;
    assert!(model.version().starts_with("2026-11-03@"), "{}", model.version());
    assert_eq!(lookup(&model, "7").await, ranked(&[("3", 0.5)]));
    let status = status_of(&registry, "als/*");
    assert_eq!((status.version.as_deref(), status.error), (Some(model.version()), None));
}

async fn lookups_find_users_in_every_row_group_of_a_large_model(serving: Serving) {
    const USERS: i64 = 20_000;
    let root = tempfile::tempdir().expect("tempdir");
    let rows = |range: std::ops::Range<i64>| {
        range
            .map(|u| (u * 3, vec![(u % 977, 1.0), (u % 131 + 1000, 0.5), (u, 0.25)]))
            .collect::<Vec<_>>()
    };
    let written = SparkOutput::nested()
        .user_id(Id::Int64)
        .row_group_rows(1_500)
        .part(rows(0..USERS / 2))
        .part(rows(USERS / 2..USERS))
        .write(&root.path().join("big"));
    let groups = |path: &Path| {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
        reader.metadata().num_row_groups()
    };
    assert_eq!(groups(&written.parts[0]), 7, "10,000 rows in groups of 1,500");

    let spec = spec("big");
    let registry = registry(serving, root.path(), std::slice::from_ref(&spec));
    let model = load(serving, &registry, &spec).await;
    assert_eq!(status_of(&registry, "big").users, USERS as usize);
    for u in [0, 1, 1_499, 1_500, 9_999, 10_000, 14_321, USERS - 1] {
        let expected = vec![
            ((u % 977).to_string(), 1.0, 1),
            ((u % 131 + 1000).to_string(), 0.5, 2),
            (u.to_string(), 0.25, 3),
        ];
        assert_eq!(
            lookup(&model, &(u * 3).to_string()).await,
            Some(expected),
            "user {}",
            u * 3
        );
    }
    assert_eq!(lookup(&model, "1").await, None, "user ids are multiples of 3");
    assert_eq!(lookup(&model, &(USERS * 3).to_string()).await, None);
}

/// The checksum the Spark-layout writer puts in `.crc` side files is CRC-32 itself: its check
/// value (the CRC of `123456789`) is the standard one.
#[test]
fn the_spark_writers_crc32_matches_the_check_value() {
    assert_eq!(common::spark::crc32(b"123456789"), 0xCBF4_3926);
}

#[test]
fn fixture_writes_spark_footers() {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let root = tempfile::tempdir().expect("tempdir");
    let written = SparkOutput::nested()
        .names("userId", "recommendations", "movieId", "rating")
        .part(vec![(1, vec![(2, 0.5)])])
        .write(&root.path().join("m"));
    let reader = SerializedFileReader::new(std::fs::File::open(&written.parts[0]).unwrap()).unwrap();
    let meta = reader.metadata().file_metadata();
    assert!(meta.created_by().unwrap_or_default().starts_with("parquet-mr version"));
    assert_eq!(meta.schema().name(), "spark_schema");
    let kv = meta.key_value_metadata().expect("key-value metadata");
    assert!(
        kv.iter().all(|kv| kv.key != "ARROW:schema"),
        "Spark writes no Arrow schema"
    );
    let row_meta = kv
        .iter()
        .find(|kv| kv.key == "org.apache.spark.sql.parquet.row.metadata")
        .and_then(|kv| kv.value.clone())
        .expect("row metadata");
    let json: serde_json::Value = serde_json::from_str(&row_meta).expect("json");
    assert_eq!(json["fields"][0]["name"], "userId");
    assert_eq!(json["fields"][0]["type"], "integer");
    assert_eq!(json["fields"][1]["type"]["type"], "array");
    assert_eq!(json["fields"][1]["type"]["elementType"]["fields"][0]["name"], "movieId");
    assert_eq!(json["fields"][1]["type"]["elementType"]["fields"][1]["type"], "float");
    let col = reader.metadata().row_group(0).column(0);
    assert_eq!(col.compression(), parquet::basic::Compression::SNAPPY);
    // The Parquet schema is the 3-level list Spark writes.
    let leaf = reader.metadata().file_metadata().schema_descr().column(1);
    assert_eq!(leaf.path().string(), "recommendations.list.element.movieId");
    let crc = std::fs::read(written.parts[0].with_file_name(format!(
        ".{}.crc",
        written.parts[0].file_name().unwrap().to_string_lossy()
    )))
    .unwrap();
    let size = std::fs::metadata(&written.parts[0]).unwrap().len() as usize;
    assert_eq!(&crc[..8], b"crc\0\0\0\x02\0");
    assert_eq!(crc.len(), 8 + 4 * size.div_ceil(512));
}

both_paths!(nested_int32_spark_defaults);
both_paths!(nested_int64_renamed_columns_with_and_without_overrides);
both_paths!(nested_string_ids);
both_paths!(ambiguous_columns_need_overrides_and_wrong_overrides_are_reported);
both_paths!(long_model_with_three_id_columns_needs_user_and_item_named);
both_paths!(long_without_rank_orders_by_score_across_part_files);
both_paths!(long_with_rank_orders_by_rank_not_score);
both_paths!(global_serves_one_list_to_everyone);
both_paths!(global_version_survives_a_failed_in_place_overwrite);
both_paths!(partition_folders_crc_files_and_empty_parts);
both_paths!(folder_without_success_is_not_a_model);
both_paths!(corrupt_part_in_a_new_version_keeps_the_old_one_serving);
both_paths!(truncated_part_in_a_rewritten_folder_is_reported);
both_paths!(new_version_is_picked_up_on_refresh);
both_paths!(wildcard_serves_the_newest_committed_folder);
both_paths!(lookups_find_users_in_every_row_group_of_a_large_model);

// ---------------------------------------------------------------------------------------------
// Serving snapshots: reuse on restart, corruption, an unwritable folder, size cap, arm flag
// ---------------------------------------------------------------------------------------------

/// A looked-up list as `(id, score, rank)`, as [`lookup`] gives it.
type Listed = Option<Vec<(String, f32, u32)>>;

/// A small nested model `als` under a fresh root, and its expected list of user 1.
fn snapshot_fixture() -> (tempfile::TempDir, ModelSpec, Listed) {
    let root = tempfile::tempdir().expect("tempdir");
    SparkOutput::nested()
        .part(vec![(1, vec![(10, 0.5), (11, 0.25)]), (2, vec![(12, 0.75)])])
        .part(vec![(3, vec![(13, 1.0)])])
        .write(&root.path().join("als"));
    (root, spec("als"), ranked(&[("10", 0.5), ("11", 0.25)]))
}

fn snapshot_files(root: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(root.join("_snapshots"))
        .map(|dir| dir.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

#[tokio::test]
async fn a_restarted_registry_maps_the_snapshot_without_reading_the_model() {
    let (root, spec, want) = snapshot_fixture();
    let first = registry(Serving::Snapshot, root.path(), std::slice::from_ref(&spec));
    let version = load(Serving::Snapshot, &first, &spec).await.version().to_string();
    drop(first);
    let files = snapshot_files(root.path());
    assert_eq!(files.len(), 1, "one snapshot, kept when its registry stops: {files:?}");
    // The part files go: only the snapshot can answer now (the marker, hence the version, stays).
    for part in std::fs::read_dir(root.path().join("als")).expect("model folder") {
        let path = part.expect("entry").path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("part-"))
        {
            std::fs::remove_file(path).expect("remove part");
        }
    }
    let restarted = registry(Serving::Snapshot, root.path(), std::slice::from_ref(&spec));
    let model = load(Serving::Snapshot, &restarted, &spec).await;
    assert_eq!(model.version(), version);
    assert_eq!(lookup(&model, "1").await, want);
    assert_eq!(lookup(&model, "3").await, ranked(&[("13", 1.0)]));
    assert_eq!(lookup(&model, "4").await, None);
    assert_eq!(status_of(&restarted, "als").users, 3);
}

#[tokio::test]
async fn a_corrupt_snapshot_on_restart_is_rebuilt_and_never_served() {
    let (root, spec, want) = snapshot_fixture();
    let first = registry(Serving::Snapshot, root.path(), std::slice::from_ref(&spec));
    load(Serving::Snapshot, &first, &spec).await;
    drop(first);
    let file = snapshot_files(root.path()).remove(0);
    let mut bytes = std::fs::read(&file).expect("snapshot");
    // The first entry's score of user 1: a lookup of the corrupt file would answer 0.5 wrong.
    let at = bytes.len() / 3;
    bytes[at] ^= 0x40;
    std::fs::write(&file, &bytes).expect("corrupt it");
    let restarted = registry(Serving::Snapshot, root.path(), std::slice::from_ref(&spec));
    let model = load(Serving::Snapshot, &restarted, &spec).await;
    assert_eq!(lookup(&model, "1").await, want, "rebuilt from the model");
    assert_ne!(
        std::fs::read(&file).expect("rebuilt snapshot"),
        bytes,
        "the corrupt file was replaced"
    );
    // Cut short, it is caught too.
    std::fs::write(&file, &bytes[..bytes.len() - 8]).expect("truncate it");
    let again = registry(Serving::Snapshot, root.path(), std::slice::from_ref(&spec));
    let model = load(Serving::Snapshot, &again, &spec).await;
    assert_eq!(lookup(&model, "1").await, want);
}

/// Opening a snapshot left on disk reads and checksums all of it (up to 16 GiB): on a blocking
/// thread, so that the runtime's other tasks, requests and timers, go on meanwhile. A named
/// pipe in the snapshot's place stands for a read that takes long: opening it waits for a
/// writer, which comes once a timer on this single-threaded runtime has fired (or after 5 s,
/// when the open held the runtime's only thread).
#[tokio::test]
async fn a_snapshot_on_disk_is_checked_off_the_runtime() {
    let (root, spec, want) = snapshot_fixture();
    let first = registry(Serving::Snapshot, root.path(), std::slice::from_ref(&spec));
    load(Serving::Snapshot, &first, &spec).await;
    drop(first);
    let file = snapshot_files(root.path()).remove(0);
    std::fs::remove_file(&file).expect("remove the snapshot");
    let made = std::process::Command::new("mkfifo")
        .arg(&file)
        .status()
        .expect("mkfifo");
    assert!(made.success(), "mkfifo {}", file.display());

    let (ticked, heard) = std::sync::mpsc::channel();
    let pipe = file.clone();
    let writer = std::thread::spawn(move || {
        let ticked_first = heard.recv_timeout(Duration::from_secs(5)).is_ok();
        // Opening the pipe to write, without waiting, works once its reader is opening it.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let opened = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&pipe);
            match opened {
                Ok(_) => return ticked_first,
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("open the pipe to write: {e}"),
            }
        }
    });
    let restarted = registry(Serving::Snapshot, root.path(), std::slice::from_ref(&spec));
    let timer = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Late, the writer stopped listening: its answer is already false.
        let _ = ticked.send(());
    };
    tokio::join!(restarted.refresh(), timer);
    let ticked_first = tokio::task::spawn_blocking(move || writer.join().expect("writer"))
        .await
        .expect("joined");
    assert!(
        ticked_first,
        "a timer fired while the snapshot on disk was being opened"
    );
    // The pipe was no snapshot: deleted, and the snapshot rebuilt from the model.
    let model = load(Serving::Snapshot, &restarted, &spec).await;
    assert_eq!(lookup(&model, "1").await, want);
    assert!(std::fs::symlink_metadata(&file).expect("rebuilt").is_file());
}

#[tokio::test]
async fn an_unwritable_snapshot_folder_or_a_size_cap_keeps_page_reads() {
    let (root, spec, want) = snapshot_fixture();
    // A file where the folder should be: nothing can be created in it (even by root).
    let blocked = root.path().join("_blocked");
    std::fs::write(&blocked, b"not a folder").expect("file");
    let settings = |dir: &Path, max_bytes| SnapshotSettings {
        dir: Ok(dir.to_path_buf()),
        max_bytes,
    };
    let models = || {
        ModelRegistry::new(
            root.path().to_str().expect("utf-8"),
            [spec.clone()],
            recgw::metrics::Metrics::new(),
        )
        .expect("registry")
    };
    for (registry, why) in [
        (models().with_snapshots(settings(&blocked, 1 << 30)), "cannot write"),
        (
            models().with_snapshots(settings(root.path(), 100)),
            "snapshot_max_bytes",
        ),
    ] {
        let model = load(Serving::Pages, &registry, &spec).await;
        assert_eq!(lookup(&model, "1").await, want);
        let note = status_of(&registry, "als").snapshot.expect("says why");
        assert!(note.contains(why), "{note}");
    }
    let no_leftovers: Vec<_> = std::fs::read_dir(root.path())
        .expect("root")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(no_leftovers.is_empty(), "abandoned files removed: {no_leftovers:?}");
    // An arm's `snapshot = false` keeps its model on page reads.
    let off = ModelSpec {
        snapshot: false,
        ..spec.clone()
    };
    let registry = registry(Serving::Snapshot, root.path(), std::slice::from_ref(&off));
    load(Serving::Pages, &registry, &off).await;
    assert!(snapshot_files(root.path()).is_empty());
}

#[tokio::test]
async fn a_replaced_version_gives_up_its_snapshot_file() {
    let (root, spec, _) = snapshot_fixture();
    let registry = registry(Serving::Snapshot, root.path(), std::slice::from_ref(&spec));
    let v1 = load(Serving::Snapshot, &registry, &spec).await;
    let first = snapshot_files(root.path());
    SparkOutput::nested()
        .part(vec![(1, vec![(20, 0.5)])])
        .write(&root.path().join("als"));
    let v2 = load(Serving::Snapshot, &registry, &spec).await;
    assert_ne!(v1.version(), v2.version());
    assert_eq!(
        snapshot_files(root.path()).len(),
        2,
        "v1's file stays while a request holds v1"
    );
    assert_eq!(lookup(&v1, "1").await, ranked(&[("10", 0.5), ("11", 0.25)]));
    drop(v1);
    let left = snapshot_files(root.path());
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(!first.contains(&left[0]), "the file left is v2's");
    assert_eq!(lookup(&v2, "1").await, ranked(&[("20", 0.5)]));
}
