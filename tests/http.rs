//! The HTTP API end to end (ARCHITECTURE.md §3–§5): a real `recgw` server per test, in this
//! process, on a free loopback port, over experiment folders and Spark-layout model folders written
//! by the test (`common/spark.rs`) or the repository's own demo, spoken to with `reqwest`.
//!
//! Arms are never hard-coded from the implementation: the test computes `B(s, u)` of §3.1
//! itself (checked against the design's vectors) and derives which arm, hence which model
//! and which items, each user must get.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::assignment::bucket;
use common::gateway::{READY_TIMEOUT, Reply, TestGateway, assert_error, eventually, item_ids, model_status};
use common::spark::{Id, SparkOutput, commit};
use common::traffic::{Sent, Traffic};
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The arm of a 50/50 experiment with salt `salt` for `user` (first arm owns `[0, 5000)`).
fn even_arm<'a>(salt: &str, user: &str, arms: [&'a str; 2]) -> &'a str {
    if bucket(salt, user) < 5_000 { arms[0] } else { arms[1] }
}

/// Sources of a list the arm's own model produced: the store on a first read, a cache tier
/// (ARCHITECTURE.md §6) when the same user asks again. Only `fallback` means the arm did not
/// answer.
const FROM_MODEL: [&str; 3] = ["store", "local", "redis"];

/// Asserts that `body` came from its model (any tier), not from the placement default.
fn assert_from_model(body: &Value) {
    let source = body["source"].as_str().unwrap_or_default();
    assert!(
        FROM_MODEL.contains(&source),
        "source {source:?} is not the model's: {body}"
    );
}

/// `(item_id, score, rank)` of a list, as a response carries it.
type Items = Vec<(String, f32, u32)>;

/// `(item, score)` pairs ranked 1, 2, … in the given order.
fn ranked<I: ToString>(list: &[(I, f32)]) -> Items {
    list.iter()
        .zip(1..)
        .map(|((id, score), rank)| (id.to_string(), *score, rank))
        .collect()
}

/// The items of a recommendations body; every `item_id` must be a JSON string.
fn items(body: &Value) -> Items {
    body["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items array: {body}"))
        .iter()
        .map(|item| {
            let id = item["item_id"]
                .as_str()
                .unwrap_or_else(|| panic!("item_id is not a JSON string: {item}"));
            let score = item["score"].as_f64().unwrap_or_else(|| panic!("score: {item}")) as f32;
            let rank = item["rank"].as_u64().unwrap_or_else(|| panic!("rank: {item}")) as u32;
            (id.to_string(), score, rank)
        })
        .collect()
}

/// A folder holding `files`.
fn folder(files: &[(&str, &str)]) -> TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write file");
    }
    dir
}

/// A running 50/50 experiment on `placement` over `traffic`, whose arms are
/// `(name, model, extra arm lines)`.
fn experiment(id: &str, placement: &str, traffic: &str, arms: [(&str, &str, &str); 2]) -> String {
    let mut text = format!(
        "id = \"{id}\"\nplacement = \"{placement}\"\nowner = \"tests@example.com\"\nstatus = \"running\"\ntraffic = {traffic}\n"
    );
    for (name, model, extra) in arms {
        text.push_str(&format!(
            "\n[[arms]]\nname = \"{name}\"\nweight = 50.0\nmodel = \"{model}\"\n{extra}\n"
        ));
    }
    text
}

// ---------------------------------------------------------------------------------------------
// Fixture worlds
// ---------------------------------------------------------------------------------------------

/// A ranked list as written: `(item, score)`, best first.
type List = Vec<(String, f32)>;

/// User → list of one model.
type Lists = BTreeMap<String, List>;

/// Experiments and models written by the test; every model committed, so the gateway gets
/// ready.
struct World {
    experiments: TempDir,
    models: TempDir,
    /// model → user → list as written.
    lists: BTreeMap<&'static str, Lists>,
    /// The `popular` (global) list as written.
    popular: List,
}

const INT_USERS: [&str; 8] = ["1", "2", "3", "4", "5", "6", "7", "8"];
const TEXT_USERS: [&str; 8] = ["u-a", "u-b", "u-c", "u-d", "u-e", "u-f", "u-g", "u-h"];

fn as_rows(lists: &Lists, users: &[&str]) -> Vec<(String, List)> {
    users.iter().map(|u| (u.to_string(), lists[*u].clone())).collect()
}

/// Placements `default`, `ids` and `text`, all defaulting to the global `popular` model:
/// - `ids-exp` on `ids`: arm `int32` serves `nested-int32` (Spark defaults, `bucket=N/`
///   partition folders, an empty part file), arm `int64` serves `nested-int64` (int64 ids,
///   columns renamed `userId`/`movieId` and configured on the arm);
/// - `text-exp` on `text`: arm `nested` serves `nested-text` (string ids), arm `long` serves
///   `long-text` (string ids, `userId`/`movieId` not configured, an explicit `rank` column
///   that disagrees with the scores, each user's rows split over two part files).
fn world() -> World {
    let models = tempfile::tempdir().expect("tempdir");
    let mut lists: BTreeMap<&'static str, Lists> = BTreeMap::new();

    // Scores are multiples of 1/8 so they survive f32 → JSON → f64 → f32 exactly.
    let int32: Lists = (1..=8u32)
        .map(|u| {
            let n = 2 + u % 3;
            let list = (1..=n)
                .map(|j| ((u * 100 + j).to_string(), 5.0 - 0.5 * j as f32))
                .collect();
            (u.to_string(), list)
        })
        .collect();
    let written = SparkOutput::nested()
        .part_in("bucket=0", as_rows(&int32, &INT_USERS[..4]))
        .part_in("bucket=1", as_rows(&int32, &INT_USERS[4..]))
        .empty_part()
        .write(&models.path().join("nested-int32"));
    for part in &written.parts {
        let crc = part.with_file_name(format!(".{}.crc", part.file_name().unwrap().to_string_lossy()));
        assert!(crc.is_file(), "fixture writes {}", crc.display());
    }
    assert!(models.path().join("nested-int32/bucket=1").is_dir());
    lists.insert("nested-int32", int32);

    let int64: Lists = (1..=8u64)
        .map(|u| {
            let list = (1..=3u64)
                .map(|j| ((9_007_199_254_740_993 + u * 10 + j).to_string(), 2.0 - 0.125 * j as f32))
                .collect();
            (u.to_string(), list)
        })
        .collect();
    SparkOutput::nested()
        .user_id(Id::Int64)
        .item_id(Id::Int64)
        .names("userId", "recommendations", "movieId", "rating")
        .part(as_rows(&int64, &INT_USERS))
        .write(&models.path().join("nested-int64"));
    lists.insert("nested-int64", int64);

    let text: Lists = TEXT_USERS
        .iter()
        .map(|u| {
            let list = (1..=4)
                .map(|j| (format!("sku-{u}-{j}"), 3.0 - 0.25 * j as f32))
                .collect();
            (u.to_string(), list)
        })
        .collect();
    SparkOutput::nested()
        .user_id(Id::Utf8)
        .item_id(Id::Utf8)
        .part(as_rows(&text, &TEXT_USERS[..5]))
        .part(as_rows(&text, &TEXT_USERS[5..]))
        .write(&models.path().join("nested-text"));
    lists.insert("nested-text", text);

    // Ranked by the rank column (the given order), not by score.
    let long: Lists = TEXT_USERS
        .iter()
        .map(|u| {
            let list = vec![
                (format!("long-{u}-x"), 1.0),
                (format!("long-{u}-y"), 3.5),
                (format!("long-{u}-z"), 2.25),
            ];
            (u.to_string(), list)
        })
        .collect();
    let head = |list: &List| list[..2].to_vec();
    let tail = |list: &List| list[2..].to_vec();
    SparkOutput::long()
        .user_id(Id::Utf8)
        .item_id(Id::Utf8)
        .names("userId", "", "movieId", "score")
        .with_rank()
        .part(TEXT_USERS.iter().map(|u| (u.to_string(), head(&long[*u]))).collect())
        .part(TEXT_USERS.iter().map(|u| (u.to_string(), tail(&long[*u]))).collect())
        .write(&models.path().join("long-text"));
    lists.insert("long-text", long);

    let popular: List = (0..7).map(|i| ((101 + i).to_string(), 4.0 - 0.5 * i as f32)).collect();
    SparkOutput::global()
        .items(popular.clone())
        .write(&models.path().join("popular"));

    let placements = "[placements.default]\ndefault_model = \"popular\"\n\n\
                      [placements.ids]\ndefault_model = \"popular\"\n\n\
                      [placements.text]\ndefault_model = \"popular\"\n";
    let ids = experiment(
        "ids-exp",
        "ids",
        "[0.0, 100.0]",
        [
            ("int32", "nested-int32", ""),
            (
                "int64",
                "nested-int64",
                "columns = { user = \"userId\", item = \"movieId\" }",
            ),
        ],
    );
    let text = experiment(
        "text-exp",
        "text",
        "[0.0, 100.0]",
        [("nested", "nested-text", ""), ("long", "long-text", "")],
    );
    let experiments = folder(&[
        ("placements.toml", placements),
        ("ids.toml", &ids),
        ("text.toml", &text),
    ]);
    World {
        experiments,
        models,
        lists,
        popular,
    }
}

impl World {
    async fn serve(&self) -> TestGateway {
        TestGateway::start_ready(self.experiments.path(), self.models.path()).await
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn independent_bucket_matches_the_design_vectors() {
    let vectors = [
        ("home-als-v2", "42", 4467),
        ("home-als-v2", "1", 6740),
        ("home-als-v2", "user-7f3a", 3410),
        ("placement:home", "42", 9211),
        ("placement:home", "1", 7006),
        ("exp", "0", 3997),
        ("exp", "éà", 5336),
    ];
    for (s, u, b) in vectors {
        assert_eq!(bucket(s, u), b, "B({s:?}, {u:?})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_the_home_experiment() {
    let gw = TestGateway::demo().await;

    let ready = gw.ok("/ready").await;
    assert_eq!(ready["ready"], true, "{ready}");
    let locations: Vec<&str> = ready["models"]
        .as_array()
        .expect("models")
        .iter()
        .map(|m| m["model"].as_str().expect("model"))
        .collect();
    assert_eq!(locations, ["als-v1", "als-v2", "popular"], "{ready}");
    for m in ready["models"].as_array().unwrap() {
        assert!(m["error"].is_null(), "{m}");
        let version = m["version"].as_str().expect("version");
        assert!(
            version.starts_with(&format!("{}@", m["model"].as_str().unwrap())),
            "{m}"
        );
    }

    // User 42 is inside the full slice; its arm bucket decides control (als-v1) or treatment.
    assert!(bucket("placement:home", "42") < 10_000);
    let arm = even_arm("home-als-rank", "42", ["control", "treatment"]);
    let model = if arm == "control" { "als-v1" } else { "als-v2" };
    let body = gw.ok("/recommendations/42?placement=home").await;
    assert_eq!(body["user_id"], "42");
    assert_eq!(body["placement"], "home");
    assert_eq!(body["experiment"], "home-als-rank", "{body}");
    assert_eq!(body["arm"], arm, "{body}");
    assert_eq!(body["forced"], false);
    assert_eq!(body["model"], model, "{body}");
    let version = body["model_version"].as_str().expect("model_version");
    assert!(
        version.starts_with(&format!("{model}@")) && version.len() > model.len() + 1,
        "{body}"
    );
    assert_eq!(
        Some(version),
        model_status(&ready, model).and_then(|m| m["version"].as_str()),
        "the version /ready reports"
    );
    assert_eq!(body["source"], "store", "{body}");
    let list = items(&body);
    assert_eq!(list.len(), 10, "{body}");
    assert_eq!(
        list.iter().map(|i| i.2).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<u32>>()
    );
    assert!(list.windows(2).all(|w| w[0].1 >= w[1].1), "best first: {list:?}");
    assert!(
        list.iter().all(|i| i.0.parse::<u32>().is_ok_and(|n| n < 500)),
        "{list:?}"
    );
    // gen-models wrote k = 20 per user.
    assert_eq!((body["total"].as_u64(), body["offset"].as_u64()), (Some(20), Some(0)));
    assert_eq!(
        (body["limit"].as_u64(), body["next_offset"].as_u64()),
        (Some(10), Some(10))
    );

    // The assignment endpoint agrees.
    let assignment = gw.ok("/experiments/home-als-rank/assignment/42").await;
    assert_eq!(assignment["in_experiment"], true, "{assignment}");
    assert_eq!(assignment["arm"], arm, "{assignment}");
    assert_eq!(assignment["placement_arm"], arm);
    assert_eq!(assignment["placement_experiment"], "home-als-rank");
    assert_eq!(assignment["forced"], false);
    assert_eq!(assignment["placement_bucket"], bucket("placement:home", "42"));
    assert_eq!(assignment["arm_bucket"], bucket("home-als-rank", "42"));

    // QA override: treatment, forced; the ALS model has integer users, so the override user
    // is served the placement default.
    let qa = gw.ok("/recommendations/qa-user-1?placement=home").await;
    assert_eq!((&qa["arm"], &qa["forced"]), (&"treatment".into(), &true.into()), "{qa}");
    assert_eq!(qa["experiment"], "home-als-rank");
    assert_eq!(
        (&qa["source"], &qa["model"]),
        (&"fallback".into(), &"popular".into()),
        "{qa}"
    );
    let qa_assignment = gw.ok("/experiments/home-als-rank/assignment/qa-user-1").await;
    assert_eq!(qa_assignment["arm"], "treatment", "{qa_assignment}");
    assert_eq!(qa_assignment["forced"], true, "{qa_assignment}");

    // No placement given: the `default` placement, no experiment, its default model.
    let plain = gw.ok("/recommendations/42").await;
    assert_eq!(plain["placement"], "default");
    assert!(plain["experiment"].is_null(), "{plain}");
    assert_eq!(
        (&plain["arm"], &plain["model"]),
        (&"default".into(), &"popular".into()),
        "{plain}"
    );
    // A global list is held by its loaded version: this replica's memory, no cache lookup.
    assert_eq!(plain["source"], "local");
    assert_eq!(items(&plain).len(), 10);

    // The experiment as loaded.
    let e = gw.ok("/experiments/home-als-rank").await;
    assert_eq!(e["placement"], "home");
    assert_eq!(e["status"], "running");
    assert_eq!(e["active"], true);
    assert_eq!(e["traffic"], serde_json::json!([0.0, 100.0]));
    assert_eq!(e["salt"], "home-als-rank");
    let arms: Vec<(&str, f64, &str)> = e["arms"]
        .as_array()
        .expect("arms")
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap(),
                a["weight"].as_f64().unwrap(),
                a["model"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(arms, [("control", 50.0, "als-v1"), ("treatment", 50.0, "als-v2")]);
    assert_eq!(e["overrides"], serde_json::json!({"qa-user-1": "treatment"}));
    let all = gw.ok("/experiments").await;
    let ids: Vec<&str> = all["experiments"]
        .as_array()
        .expect("experiments")
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["discover-als-shadow", "feed-als-interleave", "home-als-rank"]);
    assert_eq!(all["digest"], ready["experiments_digest"]);
}

/// A plain recommendation request is answered past the OpenAPI operation's extractors; one
/// that names an unknown parameter or escapes a value goes through the operation. Both must
/// answer alike: the same status, type and body (the token carries a fresh nonce each time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_and_escaped_requests_answer_alike() {
    let gw = TestGateway::demo().await;
    let without_token = |reply: &Reply| {
        let mut body = reply.json();
        if let Some(object) = body.as_object_mut() {
            object.remove("tracking_token");
        }
        (reply.status, reply.content_type.clone(), body)
    };
    for (plain, escaped) in [
        (
            "/recommendations/42?placement=home",
            "/recommendations/42?placement=ho%6De",
        ),
        (
            "/recommendations/7?placement=home&limit=3&offset=2",
            "/recommendations/7?placement=home&limit=3&offset=2&x=1",
        ),
        (
            "/recommendations/7?placement=home&min_score=4.3",
            "/recommendations/7?placement=home&min_score=4.3&x=1",
        ),
        (
            "/recommendations/9?placement=home&exclude=156,223",
            "/recommendations/9?placement=home&exclude=156%2C223",
        ),
        ("/recommendations/9", "/recommendations/9?x=1"),
        (
            "/recommendations/9?placement=nope",
            "/recommendations/9?placement=nope&x=1",
        ),
        (
            "/recommendations/9?min_score=inf",
            "/recommendations/9?min_score=inf&x=1",
        ),
    ] {
        // The first read fills the local tier, so both compared answers come from it.
        gw.get(plain).await;
        let (plain_reply, escaped_reply) = (gw.get(plain).await, gw.get(escaped).await);
        assert_eq!(
            without_token(&plain_reply),
            without_token(&escaped_reply),
            "{plain} and {escaped}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spark_models_are_served_exactly_as_written() {
    let world = world();
    let gw = world.serve().await;

    let ready = gw.ok("/ready").await;
    for (model, shape) in [
        ("nested-int32", "nested"),
        ("nested-int64", "nested"),
        ("nested-text", "nested"),
        ("long-text", "long"),
        ("popular", "global"),
    ] {
        let status = model_status(&ready, model).unwrap_or_else(|| panic!("{model} in /ready: {ready}"));
        assert_eq!(status["shape"], shape, "{status}");
        assert!(status["error"].is_null(), "{status}");
        assert!(
            status["version"]
                .as_str()
                .is_some_and(|v| v.starts_with(&format!("{model}@"))),
            "{status}"
        );
    }
    assert_eq!(model_status(&ready, "nested-int32").unwrap()["users"], 8);
    assert_eq!(model_status(&ready, "nested-text").unwrap()["users"], 8);

    let cases = [
        (
            "ids",
            "ids-exp",
            &INT_USERS,
            [("int32", "nested-int32"), ("int64", "nested-int64")],
        ),
        (
            "text",
            "text-exp",
            &TEXT_USERS,
            [("nested", "nested-text"), ("long", "long-text")],
        ),
    ];
    for (placement, experiment, users, arms) in cases {
        let mut arms_seen = Vec::new();
        for user in users.iter() {
            let arm = even_arm(experiment, user, [arms[0].0, arms[1].0]);
            let model = if arm == arms[0].0 { arms[0].1 } else { arms[1].1 };
            arms_seen.push(arm);
            let body = gw.ok(&format!("/recommendations/{user}?placement={placement}")).await;
            let what = format!("user {user} on {placement}: {body}");
            assert_eq!(body["experiment"], experiment, "{what}");
            assert_eq!(body["arm"], arm, "{what}");
            assert_eq!(body["model"], model, "{what}");
            assert_eq!(body["source"], "store", "{what}");
            assert!(
                body["model_version"]
                    .as_str()
                    .is_some_and(|v| v.starts_with(&format!("{model}@"))),
                "{what}"
            );
            let written = &world.lists[model][*user];
            assert_eq!(items(&body), ranked(written), "{what}");
            assert_eq!(body["total"].as_u64(), Some(written.len() as u64), "{what}");
            assert!(body["next_offset"].is_null(), "{what}");
        }
        arms_seen.sort();
        arms_seen.dedup();
        assert_eq!(arms_seen.len(), 2, "the users exercise both arms of {experiment}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_and_filters_cut_the_ranked_list() {
    let world = world();
    let gw = world.serve().await;
    let popular = ranked(&world.popular); // 101..107, scores 4.0, 3.5, …, 1.0
    let get = async |query: &str| {
        let body = gw.ok(&format!("/recommendations/someone?{query}")).await;
        assert_eq!(body["model"], "popular", "{body}");
        assert_from_model(&body);
        body
    };
    let page = |body: &Value| {
        (
            body["total"].as_u64(),
            body["offset"].as_u64(),
            body["limit"].as_u64(),
            body["next_offset"].as_u64(),
        )
    };

    let first = get("limit=3").await;
    assert_eq!(items(&first), popular[0..3]);
    assert_eq!(page(&first), (Some(7), Some(0), Some(3), Some(3)));
    let second = get("limit=3&offset=3").await;
    assert_eq!(items(&second), popular[3..6]);
    assert_eq!(page(&second), (Some(7), Some(3), Some(3), Some(6)));
    let last = get("limit=3&offset=6").await;
    assert_eq!(items(&last), popular[6..7]);
    assert_eq!(page(&last), (Some(7), Some(6), Some(3), None));
    assert!(last["next_offset"].is_null());
    let exact = get("limit=7").await;
    assert_eq!(items(&exact), popular);
    assert_eq!(page(&exact), (Some(7), Some(0), Some(7), None));
    let beyond = get("offset=50").await;
    assert_eq!(items(&beyond), Items::new());
    assert_eq!(page(&beyond), (Some(7), Some(50), Some(10), None));
    let max = get("limit=100").await;
    assert_eq!(items(&max), popular);

    // min_score keeps scores >= the bound, ranks stay the model's.
    let scored = get("min_score=2.5").await;
    assert_eq!(items(&scored), popular[0..4]);
    assert_eq!(page(&scored), (Some(4), Some(0), Some(10), None));

    // exclude drops ids anywhere in the list; the remaining ranks keep their gaps.
    let excluded = get("exclude=102,104,999").await;
    let expected: Items = popular
        .iter()
        .filter(|i| i.0 != "102" && i.0 != "104")
        .cloned()
        .collect();
    assert_eq!(items(&excluded), expected);
    assert_eq!(items(&excluded)[1].2, 3, "rank of 103 is kept");
    assert_eq!(excluded["total"], 5);

    // All together: filters first, then the page.
    let both = get("min_score=2&exclude=101,103&limit=2&offset=1").await;
    assert_eq!(items(&both), [popular[3].clone(), popular[4].clone()]);
    assert_eq!(page(&both), (Some(3), Some(1), Some(2), None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_missing_from_the_arm_model_get_the_placement_default() {
    let world = world();
    let gw = world.serve().await;
    let popular = ranked(&world.popular);
    for (placement, experiment, user, arms) in [
        ("ids", "ids-exp", "999", ["int32", "int64"]),
        ("ids", "ids-exp", "not-a-number", ["int32", "int64"]),
        ("ids", "ids-exp", "-7", ["int32", "int64"]),
        // Only the canonical spelling is integer user 1: "01" is another user everywhere.
        ("ids", "ids-exp", "01", ["int32", "int64"]),
        ("text", "text-exp", "u-zzz", ["nested", "long"]),
        ("text", "text-exp", "1", ["nested", "long"]),
    ] {
        let body = gw.ok(&format!("/recommendations/{user}?placement={placement}")).await;
        let what = format!("{user} on {placement}: {body}");
        assert_eq!(body["source"], "fallback", "{what}");
        assert_eq!(body["model"], "popular", "{what}");
        assert!(
            body["model_version"]
                .as_str()
                .is_some_and(|v| v.starts_with("popular@")),
            "{what}"
        );
        assert_eq!(body["experiment"], experiment, "{what}");
        assert_eq!(
            body["arm"],
            even_arm(experiment, user, arms),
            "the assigned arm is kept: {what}"
        );
        assert_eq!(items(&body), popular, "{what}");
    }
}

/// Placements `home` (default `popular`) and `cold` (default `als-pending`):
/// - `pending-exp` on `home`: arm `ready` serves the committed `als-ready`, arm `pending`
///   serves `als-pending`, whose part files are written but not committed;
/// - `cold-exp` on `cold`, slice `[0, 50)`: both arms serve `als-ready`.
///
/// Users `1`..`12` are in both models with different lists.
fn pending_world() -> (TempDir, TempDir) {
    let models = tempfile::tempdir().expect("tempdir");
    let users: Vec<u32> = (1..=12).collect();
    SparkOutput::nested()
        .part(
            users
                .iter()
                .map(|u| (u, vec![(u * 10 + 1, 2.5f32), (u * 10 + 2, 2.0)]))
                .collect(),
        )
        .write(&models.path().join("als-ready"));
    SparkOutput::nested()
        .part(users.iter().map(|u| (u, vec![(u * 1000 + 7, 9.5f32)])).collect())
        .write_uncommitted(&models.path().join("als-pending"));
    SparkOutput::global()
        .items(vec![(1, 1.5f32), (2, 0.5)])
        .write(&models.path().join("popular"));
    let experiments = folder(&[
        (
            "placements.toml",
            "[placements.home]\ndefault_model = \"popular\"\n\n[placements.cold]\ndefault_model = \"als-pending\"\n",
        ),
        (
            "pending.toml",
            &experiment(
                "pending-exp",
                "home",
                "[0.0, 100.0]",
                [("ready", "als-ready", ""), ("pending", "als-pending", "")],
            ),
        ),
        (
            "cold.toml",
            &experiment(
                "cold-exp",
                "cold",
                "[0.0, 50.0]",
                [("a", "als-ready", ""), ("b", "als-ready", "")],
            ),
        ),
    ]);
    (experiments, models)
}

const PENDING_USERS: [&str; 12] = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_without_success_is_not_loaded_until_committed() {
    let (experiments, models) = pending_world();
    let gw = TestGateway::start(experiments.path(), models.path(), "100ms").await;
    assert_eq!(gw.ok("/health").await["status"], "ok", "alive before models load");

    // Wait until the committed models are in and the pending one has been checked.
    for model in ["popular", "als-ready"] {
        gw.wait_model(model, &format!("{model} loaded"), |m| m["version"].is_string())
            .await;
    }
    gw.wait_model("als-pending", "als-pending reported", |m| !m["error"].is_null())
        .await;
    let reply = gw.get("/ready").await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    let body = reply.json();
    assert_eq!(body["ready"], false, "{body}");
    let pending = model_status(&body, "als-pending").expect("als-pending listed");
    assert!(pending["version"].is_null(), "{pending}");
    let error = pending["error"].as_str().expect("error");
    assert!(error.contains("als-pending") && error.contains("_SUCCESS"), "{error}");
    assert!(model_status(&body, "als-ready").unwrap()["error"].is_null());

    // Arm `pending` falls back to the placement default; arm `ready` is served.
    let mut seen = [false; 2];
    for user in PENDING_USERS {
        let arm = even_arm("pending-exp", user, ["ready", "pending"]);
        let body = gw.ok(&format!("/recommendations/{user}?placement=home")).await;
        assert_eq!(body["arm"], arm, "{body}");
        if arm == "pending" {
            seen[1] = true;
            assert_eq!(
                (&body["source"], &body["model"]),
                (&"fallback".into(), &"popular".into()),
                "{body}"
            );
            assert_eq!(items(&body), ranked(&[(1, 1.5), (2, 0.5)]), "{body}");
        } else {
            seen[0] = true;
            let u: u32 = user.parse().unwrap();
            assert_eq!(
                (&body["source"], &body["model"]),
                (&"store".into(), &"als-ready".into()),
                "{body}"
            );
            assert_eq!(items(&body), ranked(&[(u * 10 + 1, 2.5), (u * 10 + 2, 2.0)]), "{body}");
        }
    }
    assert_eq!(seen, [true, true], "users on both arms");

    // The job commits: the model loads, /ready turns 200, the arm serves it.
    commit(&models.path().join("als-pending"));
    let ready = gw.wait_ready().await;
    let pending = model_status(&ready, "als-pending").expect("listed");
    assert!(pending["error"].is_null(), "{pending}");
    assert!(
        pending["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("als-pending@")),
        "{pending}"
    );
    for user in PENDING_USERS {
        if even_arm("pending-exp", user, ["ready", "pending"]) == "pending" {
            let u: u32 = user.parse().unwrap();
            let body = gw.ok(&format!("/recommendations/{user}?placement=home")).await;
            assert_eq!(
                (&body["source"], &body["model"]),
                (&"store".into(), &"als-pending".into()),
                "{body}"
            );
            assert_eq!(items(&body), ranked(&[(u * 1000 + 7, 9.5)]), "{body}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncovered_users_get_503_while_the_default_has_no_version() {
    let (experiments, models) = pending_world();
    let gw = TestGateway::start(experiments.path(), models.path(), "100ms").await;
    gw.wait_model("als-ready", "als-ready loaded", |m| m["version"].is_string())
        .await;
    gw.wait_model("als-pending", "als-pending reported", |m| !m["error"].is_null())
        .await;

    let mut seen = [false; 2];
    for user in PENDING_USERS {
        let path = format!("/recommendations/{user}?placement=cold");
        if bucket("placement:cold", user) < 5_000 {
            // Inside cold-exp's slice: its arm's model answers.
            seen[0] = true;
            let body = gw.ok(&path).await;
            assert_eq!(body["experiment"], "cold-exp", "{body}");
            assert_eq!(body["arm"], even_arm("cold-exp", user, ["a", "b"]), "{body}");
            assert_eq!(
                (&body["source"], &body["model"]),
                (&"store".into(), &"als-ready".into()),
                "{body}"
            );
        } else {
            // Outside it: the placement default, which has no committed version.
            seen[1] = true;
            let reply = gw.get(&path).await;
            assert_error(&reply, 503, "model_unavailable", &format!("uncovered user {user}"));
            assert!(
                reply.json()["message"].as_str().unwrap().contains("als-pending"),
                "{}",
                reply.body
            );
        }
    }
    assert_eq!(seen, [true, true], "users inside and outside the slice");
    // A covered user the arm's model lacks falls back to the same missing default.
    let outsider = (100..)
        .map(|n| format!("x{n}"))
        .find(|u| bucket("placement:cold", u) < 5_000)
        .expect("some user in the slice");
    assert_error(
        &gw.get(&format!("/recommendations/{outsider}?placement=cold")).await,
        503,
        "model_unavailable",
        "covered user missing from the arm model",
    );
}

/// Experiments of every status over one committed model (`als-ready`) and models that never
/// load: `typo-model` (no such folder), `als-pending` (not committed), `loser-model`,
/// `ended-model` and `future-model` (no such folders). Placements `home` and `later`, both
/// defaulting to `popular`:
/// - `running-exp` on `home`, slice `[0, 50)`: arms `a`, `b` serve `als-ready`;
/// - `completed-exp` on `home`, slice `[50, 100)`, winner `a` (`als-ready`); `b` serves
///   `loser-model`;
/// - `draft-exp` (an arm on `typo-model`) and `paused-exp` (an arm on `als-pending`) on `home`;
/// - `ended-exp` (running, ended in 2020, `ended-model`) and `future-exp` (running from 2999,
///   `future-model`) on `later`.
fn statuses_world() -> (TempDir, TempDir) {
    let models = tempfile::tempdir().expect("tempdir");
    SparkOutput::nested()
        .part(vec![(1u32, vec![(11u32, 2.5f32)])])
        .write(&models.path().join("als-ready"));
    SparkOutput::nested()
        .part(vec![(1u32, vec![(17u32, 9.5f32)])])
        .write_uncommitted(&models.path().join("als-pending"));
    SparkOutput::global()
        .items(vec![(1, 1.5f32), (2, 0.5)])
        .write(&models.path().join("popular"));
    let with = |text: String, status: &str| text.replace("status = \"running\"", status);
    let experiments = folder(&[
        (
            "placements.toml",
            "[placements.home]\ndefault_model = \"popular\"\n\n[placements.later]\ndefault_model = \"popular\"\n",
        ),
        (
            "running.toml",
            &experiment(
                "running-exp",
                "home",
                "[0.0, 50.0]",
                [("a", "als-ready", ""), ("b", "als-ready", "")],
            ),
        ),
        (
            "completed.toml",
            &with(
                experiment(
                    "completed-exp",
                    "home",
                    "[50.0, 100.0]",
                    [("a", "als-ready", ""), ("b", "loser-model", "")],
                ),
                "status = \"completed\"\nwinner = \"a\"",
            ),
        ),
        (
            "draft.toml",
            &with(
                experiment(
                    "draft-exp",
                    "home",
                    "[0.0, 100.0]",
                    [("a", "typo-model", ""), ("b", "als-ready", "")],
                ),
                "status = \"draft\"",
            ),
        ),
        (
            "paused.toml",
            &with(
                experiment(
                    "paused-exp",
                    "home",
                    "[0.0, 100.0]",
                    [("a", "als-pending", ""), ("b", "als-ready", "")],
                ),
                "status = \"paused\"",
            ),
        ),
        (
            "ended.toml",
            &with(
                experiment(
                    "ended-exp",
                    "later",
                    "[0.0, 100.0]",
                    [("a", "ended-model", ""), ("b", "als-ready", "")],
                ),
                "status = \"running\"\nstart = 2019-01-01T00:00:00Z\nend = 2020-01-01T00:00:00Z",
            ),
        ),
        (
            "future.toml",
            &with(
                experiment(
                    "future-exp",
                    "later",
                    "[0.0, 100.0]",
                    [("a", "future-model", ""), ("b", "als-ready", "")],
                ),
                "status = \"running\"\nstart = 2999-01-01T00:00:00Z",
            ),
        ),
    ]);
    (experiments, models)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_only_for_the_models_traffic_reaches_now() {
    let (experiments, models) = statuses_world();
    let gw = TestGateway::start(experiments.path(), models.path(), "100ms").await;
    let idle = [
        "typo-model",
        "als-pending",
        "loser-model",
        "ended-model",
        "future-model",
    ];
    for model in idle {
        gw.wait_model(model, &format!("{model} reported"), |m| !m["error"].is_null())
            .await;
    }
    let ready = gw.wait_ready().await;
    assert_eq!(ready["ready"], true, "{ready}");
    for model in ["popular", "als-ready"] {
        let entry = model_status(&ready, model).unwrap_or_else(|| panic!("{model} listed: {ready}"));
        assert!(entry["version"].is_string(), "{entry}");
        assert_eq!(entry["required"], true, "{model} serves now: {entry}");
    }
    for model in idle {
        let entry = model_status(&ready, model).unwrap_or_else(|| panic!("{model} listed: {ready}"));
        assert!(entry["version"].is_null(), "{entry}");
        assert!(
            entry["error"].as_str().is_some_and(|e| e.contains(model)),
            "{model} is reported with its error: {entry}"
        );
        assert_eq!(entry["required"], false, "{model} serves nobody now: {entry}");
    }

    // The completed experiment's winner becomes the arm whose model never loaded: its slice is
    // served a model without a version, so the replica is not ready any more.
    let file = experiments.path().join("completed.toml");
    let text = std::fs::read_to_string(&file).expect("read");
    std::fs::write(&file, text.replace("winner = \"a\"", "winner = \"b\"")).expect("write");
    let reload = gw.request(reqwest::Method::POST, "/admin/reload").await;
    assert_eq!(reload.status, 200, "{}", reload.body);
    assert_eq!(reload.json()["status"], "applied", "{}", reload.body);
    let reply = gw.get("/ready").await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    let body = reply.json();
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(
        model_status(&body, "loser-model").expect("listed")["required"],
        true,
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclude_is_capped_and_a_uri_too_long_gets_the_json_error() {
    let gw = TestGateway::demo().await;
    let first = item_ids(&gw.ok("/recommendations/42?placement=home").await)[0].clone();
    // `n` ids to exclude: the first item served, then ids no model holds.
    let ids = |n: usize| {
        let others = (1..n).map(|i| format!("x{i}"));
        std::iter::once(first.clone())
            .chain(others)
            .collect::<Vec<_>>()
            .join(",")
    };
    let at_cap = gw
        .ok(&format!("/recommendations/42?placement=home&exclude={}", ids(500)))
        .await;
    let served = item_ids(&at_cap);
    assert!(
        !served.is_empty() && !served.contains(&first),
        "{first} is left out: {at_cap}"
    );

    let over = gw
        .get(&format!("/recommendations/42?placement=home&exclude={}", ids(501)))
        .await;
    assert_error(&over, 400, "invalid_parameter", "501 excluded ids");
    assert!(
        over.json()["message"].as_str().is_some_and(|m| m.contains("500")),
        "names the cap: {}",
        over.body
    );

    // 20,000 ids make a request target over hyper's 65,534-byte limit (the client's too, so it
    // goes on a raw socket): hyper answers before routing, and the answer still carries the
    // JSON error.
    let path = format!("/recommendations/42?placement=home&exclude={}", ids(20_000));
    assert!(path.len() > 65_534, "{} bytes", path.len());
    let mut socket = tokio::net::TcpStream::connect(gw.addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nhost: recgw\r\n\r\n");
    socket.write_all(request.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut answer))
        .await
        .expect("answered and closed within 10 s")
        .expect("read");
    let answer = String::from_utf8(answer).expect("utf-8 answer");
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head: {answer:?}"));
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 414 "), "{answer}");
    assert!(head.contains("content-type: application/json"), "{answer}");
    assert!(head.contains(&format!("content-length: {}", body.len())), "{answer}");
    let body: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
    assert_eq!(body["error"], "uri_too_long", "{body}");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("500")), "{body}");
    gw.ok("/recommendations/42?placement=home").await;
}

/// Placement `home` (default `popular`) with `swap-exp` whose arms both serve `model`.
fn swap_world(model: &str) -> (TempDir, TempDir) {
    let models = tempfile::tempdir().expect("tempdir");
    SparkOutput::global()
        .items(vec![(1, 1.0f32)])
        .write(&models.path().join("popular"));
    let experiments = folder(&[
        ("placements.toml", "[placements.home]\ndefault_model = \"popular\"\n"),
        (
            "swap.toml",
            &experiment(
                "swap-exp",
                "home",
                "[0.0, 100.0]",
                [("control", model, ""), ("treatment", model, "")],
            ),
        ),
    ]);
    (experiments, models)
}

fn v1_list(user: u32) -> Vec<(u32, f32)> {
    vec![(user * 10 + 1, 4.0), (user * 10 + 2, 3.0)]
}

fn v2_list(user: u32) -> Vec<(u32, f32)> {
    vec![(user * 10 + 9, 8.0), (user * 10 + 8, 7.0), (user * 10 + 7, 6.0)]
}

fn write_version(dir: &Path, list: fn(u32) -> Vec<(u32, f32)>) {
    SparkOutput::nested()
        .part((1..=4u32).map(|u| (u, list(u))).collect())
        .write(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_new_version_keeps_the_old_one_serving() {
    let (experiments, models) = swap_world("als");
    let dir = models.path().join("als");
    write_version(&dir, v1_list);
    let gw = TestGateway::start_ready(experiments.path(), models.path()).await;
    let before = gw.ok("/recommendations/1?placement=home").await;
    assert_eq!(before["source"], "store", "{before}");
    assert_eq!(items(&before), ranked(&v1_list(1)));
    let v1 = before["model_version"].as_str().expect("version").to_string();
    assert!(v1.starts_with("als@"), "{v1}");

    // A new job adds a part file that is not Parquet and commits again (new `_SUCCESS`).
    let corrupt = "part-00007-0badc0de-0000-4000-8000-000000000000-c000.snappy.parquet";
    std::fs::write(dir.join(corrupt), b"PAR1 this is not a parquet file PAR1").expect("write corrupt part");
    commit(&dir);
    let (status, ready) = gw
        .wait_model("als", "the failed load reported", |m| {
            m["error"].as_str().is_some_and(|e| e.contains("failed to load"))
        })
        .await;
    assert_eq!(status, 200, "the old version still serves, so still ready: {ready}");
    let entry = model_status(&ready, "als").unwrap();
    assert_eq!(entry["version"], v1.as_str(), "{entry}");
    let error = entry["error"].as_str().unwrap();
    assert!(error.contains(corrupt), "the error names the bad file: {error}");
    assert!(
        !error.contains(&v1),
        "the error names the new version, not the serving one: {error}"
    );

    for user in 1..=4u32 {
        let body = gw.ok(&format!("/recommendations/{user}?placement=home")).await;
        assert_eq!(body["model_version"], v1.as_str(), "{body}");
        assert_from_model(&body);
        assert_eq!(items(&body), ranked(&v1_list(user)), "{body}");
    }
    // Still the old one after further polls (the failed version is not retried in a loop).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = gw.ok("/recommendations/1?placement=home").await;
    assert_eq!(again["model_version"], v1.as_str());
    assert_from_model(&again);

    // The job is rerun and fixes it: the new version loads and the error clears.
    std::fs::remove_file(dir.join(corrupt)).expect("remove corrupt part");
    commit(&dir);
    let (_, ready) = gw
        .wait_model("als", "the fixed version loaded", |m| {
            m["error"].is_null() && m["version"].as_str().is_some_and(|v| v != v1)
        })
        .await;
    let v3 = model_status(&ready, "als").unwrap()["version"]
        .as_str()
        .unwrap()
        .to_string();
    let after = gw.ok("/recommendations/1?placement=home").await;
    assert_eq!(after["model_version"], v3.as_str(), "{after}");
    assert_eq!(
        after["source"], "store",
        "a new version is read from the store: {after}"
    );
    assert_eq!(items(&after), ranked(&v1_list(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_swaps_in_while_serving_without_failed_requests() {
    let (experiments, models) = swap_world("als/*");
    write_version(&models.path().join("als/v1"), v1_list);
    // An older folder and an uncommitted newer one must both be ignored.
    write_version(&models.path().join("als/v0"), v2_list);
    SparkOutput::nested()
        .part(vec![(1u32, vec![(5u32, 1.0f32)])])
        .write_uncommitted(&models.path().join("als/v9-running"));
    let gw = TestGateway::start_ready(experiments.path(), models.path()).await;
    let first = gw.ok("/recommendations/1?placement=home").await;
    assert!(first["model_version"].as_str().unwrap().starts_with("v1@"), "{first}");
    assert_eq!(first["model"], "als/*");

    // One client per user 1, 2 and 3, as fast as answers come.
    let traffic = Traffic::start(&gw, 3, Duration::ZERO, |client, _| {
        format!("/recommendations/{}?placement=home", client + 1)
    });
    let served = |n: usize| {
        let traffic = &traffic;
        async move || {
            let now = traffic.counts();
            if now.iter().all(|&c| c >= n) {
                Ok(now)
            } else {
                Err(format!("requests per client {now:?}"))
            }
        }
    };
    eventually(READY_TIMEOUT, "clients running on v1", served(5)).await;

    // A new job writes v2 in its own folder; `_SUCCESS` is written last.
    write_version(&models.path().join("als/v2"), v2_list);
    eventually(READY_TIMEOUT, "v2 served", async || {
        let body = gw.ok("/recommendations/4?placement=home").await;
        match body["model_version"].as_str() {
            Some(v) if v.starts_with("v2@") => Ok(()),
            _ => Err(body.to_string()),
        }
    })
    .await;
    // Every client makes a few more requests after the swap was seen.
    let target = traffic.counts().into_iter().max().unwrap_or(0) + 5;
    eventually(READY_TIMEOUT, "clients running on v2", served(target)).await;

    let sent = traffic.stop().await;
    for user in 1..=3u32 {
        let mine: Vec<&Sent> = sent.iter().filter(|s| s.client + 1 == user as usize).collect();
        let failed: Vec<String> = mine
            .iter()
            .filter(|s| s.status() != 200)
            .map(ToString::to_string)
            .collect();
        assert_eq!(failed.len(), 0, "user {user}: failed requests: {failed:?}");
        let versions: Vec<u8> = mine
            .iter()
            .map(|s| {
                let body = s.answer.as_ref().expect("answered").json();
                assert_from_model(&body);
                let version = body["model_version"].as_str().expect("version");
                if version.starts_with("v1@") {
                    assert_eq!(items(&body), ranked(&v1_list(user)), "{body}");
                    1
                } else if version.starts_with("v2@") {
                    assert_eq!(items(&body), ranked(&v2_list(user)), "{body}");
                    2
                } else {
                    panic!("user {user}: unexpected version: {body}")
                }
            })
            .collect();
        assert_eq!(versions.first(), Some(&1), "user {user} started on v1");
        assert_eq!(versions.last(), Some(&2), "user {user} ended on v2");
        assert!(
            versions.windows(2).all(|w| w[0] <= w[1]),
            "user {user}: never back to v1 after v2: {versions:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_json_with_fitting_statuses() {
    let world = world();
    let gw = world.serve().await;
    let long_id = "a".repeat(129);
    let cases: Vec<(String, u16, &str)> = vec![
        ("/recommendations/a%20b".into(), 400, "invalid_user_id"),
        ("/recommendations/a%2Fb".into(), 400, "invalid_user_id"),
        ("/recommendations/%C3%A9".into(), 400, "invalid_user_id"),
        (format!("/recommendations/{long_id}"), 400, "invalid_user_id"),
        ("/recommendations/1?limit=0".into(), 400, "invalid_parameter"),
        ("/recommendations/1?limit=101".into(), 400, "invalid_parameter"),
        ("/recommendations/1?limit=abc".into(), 400, "invalid_parameter"),
        ("/recommendations/1?offset=-1".into(), 400, "invalid_parameter"),
        ("/recommendations/1?min_score=high".into(), 400, "invalid_parameter"),
        ("/recommendations/1?placement=nope".into(), 404, "unknown_placement"),
        ("/experiments/nope".into(), 404, "unknown_experiment"),
        ("/experiments/nope/assignment/42".into(), 404, "unknown_experiment"),
        ("/experiments/ids-exp/assignment/a%20b".into(), 400, "invalid_user_id"),
        ("/nope".into(), 404, "not_found"),
        ("/recommendations".into(), 404, "not_found"),
    ];
    for (path, status, code) in &cases {
        assert_error(&gw.get(path).await, *status, *code, &format!("GET {path}"));
    }
    let unknown = gw.get("/recommendations/1?placement=nope").await.json();
    assert!(unknown["message"].as_str().unwrap().contains("nope"), "{unknown}");

    for (method, path) in [
        (reqwest::Method::POST, "/recommendations/1"),
        (reqwest::Method::DELETE, "/experiments/ids-exp"),
        (reqwest::Method::PUT, "/health"),
    ] {
        assert_error(
            &gw.request(method.clone(), path).await,
            405,
            "method_not_allowed",
            &format!("{method} {path}"),
        );
    }

    // The boundaries themselves are accepted.
    let longest = "a".repeat(128);
    let body = gw.ok(&format!("/recommendations/{longest}?limit=100&offset=0")).await;
    assert_eq!(body["user_id"], longest.as_str());
    let body = gw.ok("/recommendations/A.b_c:d@e-f?limit=1").await;
    assert_eq!(body["user_id"], "A.b_c:d@e-f");
    assert_eq!(items(&body).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_docs_and_spec_are_served() {
    let (experiments, models) = pending_world();
    // Not ready (a model is uncommitted), yet alive and documented.
    let gw = TestGateway::start(experiments.path(), models.path(), "100ms").await;

    let health = gw.get("/health").await;
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(health.json(), serde_json::json!({"status": "ok"}));

    let spec = gw.ok("/openapi.json").await;
    assert!(
        spec["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{}",
        spec["openapi"]
    );
    let paths = spec["paths"].as_object().expect("paths");
    for path in [
        "/recommendations/{user_id}",
        "/experiments",
        "/experiments/{id}",
        "/experiments/{id}/assignment/{user_id}",
        "/health",
        "/ready",
    ] {
        assert!(
            paths.contains_key(path),
            "{path} in {:?}",
            paths.keys().collect::<Vec<_>>()
        );
    }
    let parameters: Vec<&str> = spec["paths"]["/recommendations/{user_id}"]["get"]["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for name in ["user_id", "placement", "limit", "offset", "min_score", "exclude"] {
        assert!(parameters.contains(&name), "{name} in {parameters:?}");
    }

    let docs = gw.get("/docs").await;
    assert_eq!(docs.status, 200, "{}", docs.body);
    assert!(docs.content_type.starts_with("text/html"), "{:?}", docs.content_type);
    assert!(docs.body.to_lowercase().contains("swagger"), "{}", docs.body);
}
