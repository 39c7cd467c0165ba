//! Shadow arms and list metrics end to end: real `recgw` gateways in this process on free
//! loopback ports, over an experiments folder and Spark-layout models the tests write
//! themselves. Every expectation — pages, Jaccard and RBO, rank buckets, distinct items — is
//! computed here, from what the tests wrote and what the gateway served, by the definitions of
//! the contract, never by the code under test.
//!
//! The folder (see [`Env`]):
//! - `home-shadow` on `home`: `control` (weight 100, model `ctl`) and the shadow arm
//!   `candidate` (model `shd`, `shadow_sample = 1.0`); QA override `qa-1` → `control`;
//! - `side-split` on `side`: `left` (`ctl`) and `right` (`shd`), 50/50; QA `qa-2` → `left`;
//! - `trio-shadow` on `trio`: `control` (50, `ctl`), the shadow arm `candidate` (`shd`,
//!   `shadow_sample = 1.0`) written between them, and `treatment` (50, `ctl`);
//! - `sampled-shadow` on `sampled`: `control` (weight 100, `ctl`) and two shadow arms on `shd`,
//!   `half` (`shadow_sample = 0.5`) and `tenth` (no `shadow_sample`: the default 0.1);
//! - `done-shadow` on `done`: completed, winner `control` (100, `ctl`), beside a shadow arm
//!   `candidate` (`shd`, `shadow_sample = 1.0`).
//!
//! Models (nested, string user ids): users `1`..=`40` in both, with 12-20 items out of
//! `100`..`139` in `ctl`; in `shd` even users get a perturbation of their `ctl` list (items
//! replaced by `2xx` ones, neighbours swapped, length changed) and odd users an independent
//! draw; plus users whose lists are identical, disjoint, shorter on either side, missing from
//! either model, and users nobody asks for (whose items only widen the catalogues). Scores are
//! 9 − r/8 (`ctl`) and 8 − r/4 (`shd`) at 0-based rank r, exact in `f32`.
//!
//! Everything that talks to Redis runs three times: without Redis (counts in memory), on one
//! `redis-server`, and on a 3-node Redis Cluster (`common/redis.rs`).
//!
//! 1. a shadow arm is never served, and its comparisons with the control (count, mean Jaccard
//!    and RBO, the Prometheus histogram and outcome counters) are exact;
//! 2. impressions, clicks and CTR by rank bucket, in the results and in Prometheus;
//! 3. distinct items and catalogue coverage, with and without serving snapshots;
//! 4. validation of the new keys;
//! 5. sampling of the comparisons;
//! 6. a shadow arm beside two serving arms: no buckets of its own, compared after the
//!    control's responses only (and not after a completed experiment's winner, `done-shadow`
//!    on `done`, whose responses are not counted).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::events::{arm_named as arm, event, post_all_accepted, results, wait_flushed};
use common::gateway::{self, TestGateway, eventually};
use common::page::recommend;
use common::redis::{Mode, Redis};
use common::rng::{Rng, fnv};
use common::spark::{Id, SparkOutput};
use recgw::config::Settings;
use recgw::experiment::{Catalog, Problem};
use serde_json::Value;
use tempfile::TempDir;

/// The shadow experiment, its placement and arms.
const EXPERIMENT: &str = "home-shadow";
const PLACEMENT: &str = "home";
const CONTROL: &str = "control";
const SHADOW: &str = "candidate";
/// The models of the control and of the shadow arm.
const CONTROL_MODEL: &str = "ctl";
const SHADOW_MODEL: &str = "shd";
/// The placement default.
const POPULAR: &str = "popular";
/// The split experiment, its placement and arms (`left` on `ctl`, `right` on `shd`).
const SPLIT_EXPERIMENT: &str = "side-split";
const SPLIT_PLACEMENT: &str = "side";
const SPLIT_ARMS: [&str; 2] = ["left", "right"];
/// The shadow experiment with a shadow arm between two serving arms (`control` and `treatment`,
/// 50/50, both on `ctl`), and its placement.
const TRIO_EXPERIMENT: &str = "trio-shadow";
const TRIO_PLACEMENT: &str = "trio";
/// A completed experiment whose winner is its control, beside a shadow arm, and its placement.
const DONE_EXPERIMENT: &str = "done-shadow";
const DONE_PLACEMENT: &str = "done";
/// The sampled shadow experiment, its placement and its two shadow arms.
const SAMPLED_EXPERIMENT: &str = "sampled-shadow";
const SAMPLED_PLACEMENT: &str = "sampled";
const HALF: &str = "half";
const TENTH: &str = "tenth";
/// Forced into `control` of `home-shadow`, and into `left` of `side-split`.
const QA_USER: &str = "qa-1";
const SPLIT_QA_USER: &str = "qa-2";
/// Users `1..=REGULAR` are in both models.
const REGULAR: u32 = 40;
/// The page size when the request gives none.
const DEFAULT_LIMIT: usize = 10;
/// RBO's persistence.
const RBO_P: f64 = 0.9;
/// The rank buckets of `by_position`, in order.
const POSITIONS: [&str; 6] = ["1", "2", "3", "4-5", "6-10", "11+"];
/// Exposures and comparisons are flushed to Redis every second; a wait for one starts after
/// this.
const FLUSH: Duration = Duration::from_millis(1100);
/// How long a background effect gets before a test fails.
const WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// The test's own oracle: overlap, rank buckets, pages
// ---------------------------------------------------------------------------------------------

/// One comparison of a shadow list with a control list, by the contract's definitions.
#[derive(Debug, Clone, PartialEq)]
struct Comparison {
    /// `d = min(k, |shadow|, |control|)`.
    depth: usize,
    jaccard: f64,
    rbo: f64,
    /// The shadow's top-`d` prefix.
    shadow_prefix: Vec<String>,
}

/// `X_i = |S[:i] ∩ T[:i]|`, counted naively from two sets.
fn shared(s: &[String], t: &[String], i: usize) -> usize {
    let a: HashSet<&String> = s[..i].iter().collect();
    let b: HashSet<&String> = t[..i].iter().collect();
    a.intersection(&b).count()
}

/// Jaccard and RBO_ext (Webber, Moffat, Zobel 2010, eq. 32, p = 0.9) of the top-`d` prefixes of
/// `shadow` and `control`, `d = min(k, |shadow|, |control|)`; `None` when `d` is 0.
fn compare(shadow: &[String], control: &[String], k: usize) -> Option<Comparison> {
    let d = k.min(shadow.len()).min(control.len());
    if d == 0 {
        return None;
    }
    let (s, t) = (&shadow[..d], &control[..d]);
    let union: BTreeSet<&String> = s.iter().chain(t.iter()).collect();
    let jaccard = shared(s, t, d) as f64 / union.len() as f64;
    let sum: f64 = (1..=d)
        .map(|i| shared(s, t, i) as f64 / i as f64 * RBO_P.powi(i as i32))
        .sum();
    let rbo = shared(s, t, d) as f64 / d as f64 * RBO_P.powi(d as i32) + (1.0 - RBO_P) / RBO_P * sum;
    Some(Comparison {
        depth: d,
        jaccard,
        rbo,
        shadow_prefix: s.to_vec(),
    })
}

/// The bucket (index into [`POSITIONS`]) of a 1-based rank.
fn bucket(rank: usize) -> usize {
    assert!(rank >= 1, "ranks are 1-based");
    match rank {
        1 => 0,
        2 => 1,
        3 => 2,
        4..=5 => 3,
        6..=10 => 4,
        _ => 5,
    }
}

/// Strings of `ids`.
fn strings(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

/// The oracle is itself tested against values worked out by hand from the definitions, so a
/// passing HTTP test means the gateway agrees with the definitions, not with a shared mistake:
/// identical lists give 1 and 1, disjoint ones 0 and 0; `ab`/`ba`: X = (0, 2), RBO = 0.81 +
/// (0.1/0.9)·0.81 = 0.9; `abc`/`acb`: X = (1, 1, 3), RBO = 0.729 + (0.9 + 0.405 + 0.729)/9 =
/// 0.955; `ab`/`ac`: X = (1, 1), RBO = 0.405 + (0.9 + 0.405)/9 = 0.55, Jaccard 1/3; lists are
/// cut to the shorter one and to k; ranks fall in their buckets.
#[test]
fn the_oracle_follows_the_definitions() {
    let s = |text: &str| text.chars().map(String::from).collect::<Vec<String>>();
    let close = |got: f64, want: f64| (got - want).abs() < 1e-12;
    let same = compare(&s("abcdefghij"), &s("abcdefghij"), 10).expect("defined");
    assert!(close(same.jaccard, 1.0) && close(same.rbo, 1.0), "{same:?}");
    let disjoint = compare(&s("abcdefghij"), &s("klmnopqrst"), 10).expect("defined");
    assert!(close(disjoint.jaccard, 0.0) && close(disjoint.rbo, 0.0), "{disjoint:?}");
    let swapped = compare(&s("ab"), &s("ba"), 10).expect("defined");
    assert!(close(swapped.jaccard, 1.0) && close(swapped.rbo, 0.9), "{swapped:?}");
    let tail = compare(&s("abc"), &s("acb"), 10).expect("defined");
    assert!(close(tail.jaccard, 1.0) && close(tail.rbo, 0.955), "{tail:?}");
    let half = compare(&s("ab"), &s("ac"), 10).expect("defined");
    assert!(close(half.jaccard, 1.0 / 3.0) && close(half.rbo, 0.55), "{half:?}");
    let short = compare(&s("axyz"), &s("a"), 10).expect("defined");
    assert_eq!((short.depth, short.shadow_prefix), (1, s("a")));
    assert!(close(short.jaccard, 1.0) && close(short.rbo, 1.0));
    let cut = compare(&s("abcz"), &s("abcy"), 3).expect("defined");
    assert!(close(cut.jaccard, 1.0) && close(cut.rbo, 1.0), "cut at k = 3: {cut:?}");
    assert_eq!(compare(&s("abc"), &[], 10), None);
    let names: Vec<&str> = [1, 2, 3, 4, 5, 6, 10, 11, 25].map(|r| POSITIONS[bucket(r)]).to_vec();
    assert_eq!(names, ["1", "2", "3", "4-5", "4-5", "6-10", "6-10", "11+", "11+"]);
}

// ---------------------------------------------------------------------------------------------
// The experiments folder and the models
// ---------------------------------------------------------------------------------------------

/// A ranked list: item ids with strictly decreasing scores, best first.
type List = Vec<(String, f32)>;

const PLACEMENTS_TOML: &str = r#"[placements.default]
default_model = "popular"

[placements.home]
default_model = "popular"

[placements.side]
default_model = "popular"

[placements.sampled]
default_model = "popular"

[placements.trio]
default_model = "popular"

[placements.done]
default_model = "popular"
"#;

const SHADOW_TOML: &str = r#"id = "home-shadow"
placement = "home"
description = "shd in shadow behind ctl"
owner = "recs-team@example.com"
status = "running"

[[arms]]
name = "control"
weight = 100.0
model = "ctl"

[[arms]]
name = "candidate"
model = "shd"
shadow = true
shadow_sample = 1.0

[overrides]
"qa-1" = "control"
"#;

const SPLIT_TOML: &str = r#"id = "side-split"
placement = "side"
status = "running"

[[arms]]
name = "left"
weight = 50.0
model = "ctl"

[[arms]]
name = "right"
weight = 50.0
model = "shd"

[overrides]
"qa-2" = "left"
"#;

const SAMPLED_TOML: &str = r#"id = "sampled-shadow"
placement = "sampled"
status = "running"

[[arms]]
name = "control"
weight = 100.0
model = "ctl"

[[arms]]
name = "half"
model = "shd"
shadow = true
shadow_sample = 0.5

[[arms]]
name = "tenth"
model = "shd"
shadow = true
"#;

const TRIO_TOML: &str = r#"id = "trio-shadow"
placement = "trio"
status = "running"

[[arms]]
name = "control"
weight = 50.0
model = "ctl"

[[arms]]
name = "candidate"
model = "shd"
shadow = true
shadow_sample = 1.0

[[arms]]
name = "treatment"
weight = 50.0
model = "ctl"
"#;

const DONE_TOML: &str = r#"id = "done-shadow"
placement = "done"
status = "completed"
winner = "control"

[[arms]]
name = "control"
weight = 100.0
model = "ctl"

[[arms]]
name = "candidate"
model = "shd"
shadow = true
shadow_sample = 1.0
"#;

/// `ctl`'s list of a regular user: 12-20 distinct items out of `100`..`139`.
fn control_ids(user: &str) -> Vec<String> {
    let mut rng = Rng::new(fnv(user) ^ 0xC047_7201);
    let mut items: Vec<u32> = (100..140).collect();
    rng.shuffle(&mut items);
    let len = 12 + rng.below(9) as usize;
    items.into_iter().take(len).map(|i| i.to_string()).collect()
}

/// `shd`'s list of a regular user `n`: for odd `n` an independent draw of 10-20 items out of
/// `100`..`139` and `200`..`209`; for even `n` the control list with each item replaced by a
/// `2xx` one with probability 1/4, three neighbour swaps, and a length of 10-20 (cut, or
/// extended by `1xx` items it lacks).
fn shadow_ids(user: &str, n: u32, control: &[String]) -> Vec<String> {
    let mut rng = Rng::new(fnv(user) ^ 0x5AAD_0000_0000);
    if n % 2 == 1 {
        let mut items: Vec<u32> = (100..140).chain(200..210).collect();
        rng.shuffle(&mut items);
        let len = 10 + rng.below(11) as usize;
        return items.into_iter().take(len).map(|i| i.to_string()).collect();
    }
    let mut fresh = (200..240).map(|i: u32| i.to_string());
    let mut list: Vec<String> = control
        .iter()
        .map(|c| {
            if rng.chance(0.25) {
                fresh.next().expect("enough fresh items")
            } else {
                c.clone()
            }
        })
        .collect();
    for _ in 0..3 {
        let i = rng.below(list.len() as u64 - 1) as usize;
        list.swap(i, i + 1);
    }
    let len = 10 + rng.below(11) as usize;
    list.truncate(len);
    let missing: Vec<String> = (100..140u32)
        .map(|i| i.to_string())
        .filter(|i| !list.contains(i))
        .collect();
    let mut missing = missing.into_iter();
    while list.len() < len {
        list.push(missing.next().expect("enough items"));
    }
    list
}

/// Ids with scores `top − step·r`.
fn scored(ids: Vec<String>, top: f32, step: f32) -> List {
    ids.into_iter()
        .enumerate()
        .map(|(r, id)| (id, top - step * r as f32))
        .collect()
}

/// The experiments folder and the models, in a temporary folder of the test's own, with the
/// lists the test wrote.
struct Env {
    dir: TempDir,
    /// `ctl`: user → list.
    control: BTreeMap<String, List>,
    /// `shd`: user → list.
    shadow: BTreeMap<String, List>,
    /// The placement default's global list.
    popular: List,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let experiments = dir.path().join("experiments");
        std::fs::create_dir_all(&experiments).expect("mkdir experiments");
        for (name, text) in [
            ("placements.toml", PLACEMENTS_TOML),
            ("home-shadow.toml", SHADOW_TOML),
            ("side-split.toml", SPLIT_TOML),
            ("sampled-shadow.toml", SAMPLED_TOML),
            ("trio-shadow.toml", TRIO_TOML),
            ("done-shadow.toml", DONE_TOML),
        ] {
            std::fs::write(experiments.join(name), text).expect("write experiment");
        }

        let mut control: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut shadow: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for n in 1..=REGULAR {
            let user = n.to_string();
            let c = control_ids(&user);
            shadow.insert(user.clone(), shadow_ids(&user, n, &c));
            control.insert(user, c);
        }
        // Identical lists.
        for user in ["same-1", "same-2"] {
            let c = control_ids(user);
            shadow.insert(user.to_string(), c.clone());
            control.insert(user.to_string(), c);
        }
        // Disjoint lists: the shadow's items are all `2xx`.
        for user in ["disjoint-1", "disjoint-2"] {
            let mut rng = Rng::new(fnv(user));
            let mut items: Vec<u32> = (200..240).collect();
            rng.shuffle(&mut items);
            shadow.insert(user.to_string(), items.iter().take(15).map(|i| i.to_string()).collect());
            control.insert(user.to_string(), control_ids(user));
        }
        // A control list of 4 items against a shadow list of 15: compared at depth 4, so the
        // shadow's items `302`.. (in no other list) are never in a compared prefix.
        control.insert("short-c".into(), strings(&["100", "101", "102", "103"]));
        let mut long = strings(&["101", "100", "300", "301"]);
        long.extend((302..313).map(|i: u32| i.to_string()));
        shadow.insert("short-c".into(), long);
        // A shadow list of 3 items.
        let c = control_ids("short-s");
        shadow.insert("short-s".into(), vec![c[2].clone(), "239".into(), c[0].clone()]);
        control.insert("short-s".into(), c);
        // Missing from the shadow's model, then from the control's.
        for user in ["only-c-1", "only-c-2"] {
            control.insert(user.to_string(), control_ids(user));
        }
        shadow.insert("only-s".into(), control_ids("only-s"));
        // QA users; `qa-1`'s control items (`800`..) are in no other list.
        control.insert(QA_USER.into(), (800..812).map(|i: u32| i.to_string()).collect());
        shadow.insert(QA_USER.into(), control_ids(QA_USER));
        let c = control_ids(SPLIT_QA_USER);
        shadow.insert(SPLIT_QA_USER.into(), shadow_ids(SPLIT_QA_USER, 2, &c));
        control.insert(SPLIT_QA_USER.into(), c);
        // Users nobody asks for: their items widen the catalogues only.
        for (k, user) in ["idle-1", "idle-2", "idle-3"].iter().enumerate() {
            let base = 900 + 4 * k as u32;
            control.insert(user.to_string(), (base..base + 4).map(|i| i.to_string()).collect());
        }
        shadow.insert("idle-s".into(), (950..958).map(|i: u32| i.to_string()).collect());

        let control: BTreeMap<String, List> = control
            .into_iter()
            .map(|(u, ids)| (u, scored(ids, 9.0, 0.125)))
            .collect();
        let shadow: BTreeMap<String, List> = shadow.into_iter().map(|(u, ids)| (u, scored(ids, 8.0, 0.25))).collect();
        for list in control.values().chain(shadow.values()) {
            let distinct: HashSet<&String> = list.iter().map(|(i, _)| i).collect();
            assert_eq!(distinct.len(), list.len(), "distinct items: {list:?}");
        }
        let models = dir.path().join("models");
        for (name, lists) in [(CONTROL_MODEL, &control), (SHADOW_MODEL, &shadow)] {
            let rows: Vec<(String, List)> = lists.iter().map(|(u, l)| (u.clone(), l.clone())).collect();
            let half = rows.len() / 2;
            SparkOutput::nested()
                .user_id(Id::Utf8)
                .part(rows[..half].to_vec())
                .part(rows[half..].to_vec())
                .write(&models.join(name));
        }
        let popular: List = (1..=5).map(|i| (i.to_string(), 6.0 - i as f32)).collect();
        SparkOutput::global()
            .items(popular.clone())
            .write(&models.join(POPULAR));
        Env {
            dir,
            control,
            shadow,
            popular,
        }
    }

    fn experiments(&self) -> PathBuf {
        self.dir.path().join("experiments")
    }

    fn models(&self) -> PathBuf {
        self.dir.path().join("models")
    }

    fn control_ids(&self, user: &str) -> Option<Vec<String>> {
        self.control
            .get(user)
            .map(|l| l.iter().map(|(i, _)| i.clone()).collect())
    }

    fn shadow_ids(&self, user: &str) -> Option<Vec<String>> {
        self.shadow
            .get(user)
            .map(|l| l.iter().map(|(i, _)| i.clone()).collect())
    }

    /// Distinct items of a model, as written.
    fn catalogue(lists: &BTreeMap<String, List>) -> usize {
        lists
            .values()
            .flat_map(|l| l.iter().map(|(i, _)| i))
            .collect::<HashSet<_>>()
            .len()
    }
}

// ---------------------------------------------------------------------------------------------
// Where the counts live: memory, one Redis node, a Redis Cluster
// ---------------------------------------------------------------------------------------------

/// A gateway over `env` in `mode`, with the Redis it needs (kept alive by the caller); with
/// `snapshots`, serving snapshots on, in a folder of the test's own (kept alive by `env`).
async fn launch(env: &Env, mode: Mode, snapshots: bool) -> (TestGateway, Redis) {
    launch_with(env, mode, snapshots, |_| {}).await
}

/// [`launch`] with settings changed by `tweak`.
async fn launch_with(
    env: &Env,
    mode: Mode,
    snapshots: bool,
    tweak: impl FnOnce(&mut Settings),
) -> (TestGateway, Redis) {
    let redis = Redis::start_in_place(mode);
    let mut settings = gateway::replica_settings(&env.experiments(), &env.models(), &redis.url());
    tweak(&mut settings);
    if snapshots {
        // Not created here: the gateway creates it private (0700), as it must be.
        let dir = env.dir.path().join("snapshots");
        settings = gateway::with_snapshots(settings, &dir);
    }
    let gw = TestGateway::launch_up(&settings).await;
    (gw, redis)
}

// ---------------------------------------------------------------------------------------------
// Requests, pages, events and results as a client and an analyst see them
// ---------------------------------------------------------------------------------------------

/// One recommendation request.
#[derive(Debug, Clone)]
struct Ask {
    user: String,
    limit: Option<usize>,
    offset: usize,
    exclude: Vec<String>,
    min_score: Option<f32>,
}

impl Ask {
    fn new(user: &str) -> Ask {
        Ask {
            user: user.to_string(),
            limit: None,
            offset: 0,
            exclude: Vec::new(),
            min_score: None,
        }
    }

    fn limit(mut self, limit: usize) -> Ask {
        self.limit = Some(limit);
        self
    }

    fn offset(mut self, offset: usize) -> Ask {
        self.offset = offset;
        self
    }

    fn exclude(mut self, ids: &[String]) -> Ask {
        self.exclude = ids.to_vec();
        self
    }

    fn min_score(mut self, min: f32) -> Ask {
        self.min_score = Some(min);
        self
    }

    /// `k`: the request's limit, 10 by default.
    fn k(&self) -> usize {
        self.limit.unwrap_or(DEFAULT_LIMIT)
    }

    /// Its query string on `placement`: `placement=…&…`.
    fn query(&self, placement: &str) -> String {
        let mut path = format!("placement={placement}");
        if let Some(limit) = self.limit {
            path.push_str(&format!("&limit={limit}"));
        }
        if self.offset > 0 {
            path.push_str(&format!("&offset={}", self.offset));
        }
        if !self.exclude.is_empty() {
            path.push_str(&format!("&exclude={}", self.exclude.join(",")));
        }
        if let Some(min) = self.min_score {
            path.push_str(&format!("&min_score={min}"));
        }
        path
    }

    /// The page a client must get from `list`: `exclude` and `min_score` applied, then
    /// `offset` items skipped and `k` taken.
    fn page_of(&self, list: &List) -> Vec<String> {
        list.iter()
            .filter(|(i, s)| !self.exclude.contains(i) && self.min_score.is_none_or(|m| *s >= m))
            .skip(self.offset)
            .take(self.k())
            .map(|(i, _)| i.clone())
            .collect()
    }
}

/// `shadow_comparisons_total{outcome}` of a shadow arm in `/metrics` text.
fn outcome(text: &str, placement: &str, experiment: &str, arm: &str, outcome: &str) -> f64 {
    gateway::sample(
        text,
        "shadow_comparisons_total",
        &[
            ("arm", arm),
            ("experiment", experiment),
            ("outcome", outcome),
            ("placement", placement),
        ],
    )
}

/// The labels of `list_overlap` of the shadow arm of `home-shadow` for `measure`.
fn overlap_labels(measure: &str) -> [(&str, &str); 4] {
    [
        ("arm", SHADOW),
        ("experiment", EXPERIMENT),
        ("measure", measure),
        ("placement", PLACEMENT),
    ]
}

/// The `le` bounds and cumulative counts of the histogram `name_bucket{labels, le}`.
fn buckets(text: &str, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
    let wanted: BTreeSet<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    let prefix = format!("{name}_bucket{{");
    let mut out = Vec::new();
    for line in text.lines().filter(|l| l.starts_with(&prefix)) {
        let (series, value) = line.rsplit_once(' ').expect("a sample line");
        let inner = series[prefix.len()..].trim_end_matches('}');
        let mut le = None;
        let mut found = BTreeSet::new();
        for label in inner.split(',').filter(|l| !l.is_empty()) {
            match label.strip_prefix("le=") {
                Some(bound) => le = Some(bound.trim_matches('"').to_string()),
                None => {
                    found.insert(label.to_string());
                }
            }
        }
        if found == wanted {
            let le = le.unwrap_or_else(|| panic!("{line}: no le"));
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or_else(|e| panic!("{line}: {e}"))
            };
            out.push((bound, value.parse().unwrap_or_else(|e| panic!("{line}: {e}"))));
        }
    }
    out
}

/// Asserts that `field` of `arm` is absent with a non-empty reason in the arm's `undefined`.
fn assert_absent_with_reason(arm: &Value, field: &str) {
    assert!(
        arm.get(field).is_none_or(Value::is_null),
        "{field} must be absent: {arm}"
    );
    assert!(
        arm["undefined"][field].as_str().is_some_and(|r| !r.trim().is_empty()),
        "{field} is absent without a reason in `undefined`: {arm}"
    );
}

// ---------------------------------------------------------------------------------------------
// The traffic of tests 1 and 3, and what it must leave behind
// ---------------------------------------------------------------------------------------------

/// Every asked user of `home-shadow`, some twice, with page sizes 2 to 50 (5 and 10 mostly),
/// offsets, `exclude` and `min_score`.
fn shadow_traffic(env: &Env) -> Vec<Ask> {
    let ids = |user: &str| env.control_ids(user).expect("in ctl");
    let mut asks = Vec::new();
    for n in 1..=REGULAR {
        let user = n.to_string();
        let c = ids(&user);
        asks.push(match n % 6 {
            0 => Ask::new(&user),
            1 => Ask::new(&user).limit(5),
            2 => Ask::new(&user)
                .limit(5)
                .offset(3)
                .exclude(&[c[0].clone(), c[4].clone()]),
            3 => Ask::new(&user).offset(10),
            4 => Ask::new(&user).offset(2).min_score(8.5),
            _ => Ask::new(&user).limit(50),
        });
    }
    asks.extend([
        Ask::new("same-1"),
        Ask::new("same-2").limit(5),
        Ask::new("disjoint-1"),
        Ask::new("disjoint-2").limit(5).offset(10),
        Ask::new("short-c"),
        Ask::new("short-s").limit(5),
        Ask::new("only-c-1"),
        Ask::new("only-c-2").limit(5),
        Ask::new("only-s"),
        Ask::new(QA_USER),
    ]);
    // A second round: each response is compared, not each user.
    let one = ids("1");
    asks.extend([
        Ask::new("same-1").limit(3),
        Ask::new("short-c").limit(2),
        Ask::new("1").limit(7).exclude(&[one[1].clone()]),
        Ask::new("disjoint-1").limit(5).offset(5),
        Ask::new("only-c-1").limit(5),
        Ask::new("only-s").limit(5),
        Ask::new(QA_USER).limit(5),
        Ask::new("2").limit(20).min_score(8.9),
    ]);
    asks
}

/// What the test expects of `home-shadow` after its traffic, computed from its own lists.
#[derive(Debug, Default)]
struct ShadowLedger {
    /// Counted responses (QA excluded, fallbacks included): the control's exposures.
    exposures: u64,
    /// Counted, non-fallback control responses: the ones compared, or `no_list`.
    to_compare: u64,
    /// The comparisons.
    comparisons: Vec<Comparison>,
    /// Responses whose user the shadow model lacks.
    no_list: u64,
    /// Distinct ids on the control's counted non-fallback pages.
    control_items: BTreeSet<String>,
    /// Distinct ids in the shadow's compared top-`d` prefixes.
    shadow_items: BTreeSet<String>,
    /// Distinct ids in the shadow's top-`k` prefixes, not cut at `d`: not what the contract
    /// counts, kept to say what a wrong count is.
    shadow_items_uncut: BTreeSet<String>,
}

impl ShadowLedger {
    fn mean(&self, of: impl Fn(&Comparison) -> f64) -> f64 {
        self.comparisons.iter().map(of).sum::<f64>() / self.comparisons.len() as f64
    }
}

/// Serves `asks` on `home-shadow` and checks each response: arm `control` (never the shadow
/// arm), `forced` for the QA user only, the placement default for a user `ctl` lacks, and
/// exactly the page the test cuts from the list it wrote — never the shadow's page where the
/// two differ. Returns what the results must say.
async fn serve_shadow_traffic(gw: &TestGateway, env: &Env, asks: &[Ask]) -> ShadowLedger {
    let mut ledger = ShadowLedger::default();
    for ask in asks {
        let page = recommend(gw, &ask.user, &ask.query(PLACEMENT)).await;
        let body = &page.body;
        assert_eq!(body["experiment"], EXPERIMENT, "{body}");
        assert_eq!(body["arm"], CONTROL, "never the shadow arm: {body}");
        assert_ne!(body["model"], SHADOW_MODEL, "never the shadow's model: {body}");
        let forced = ask.user == QA_USER;
        assert_eq!(body["forced"], forced, "{body}");
        let shadow_page = env.shadow.get(&ask.user).map(|l| ask.page_of(l));
        let (want, fallback) = match env.control.get(&ask.user) {
            Some(list) => (ask.page_of(list), false),
            None => (ask.page_of(&env.popular), true),
        };
        assert_eq!(page.items, want, "the control's page ({ask:?}): {body}");
        if let Some(shadow_page) = &shadow_page
            && *shadow_page != want
        {
            assert_ne!(&page.items, shadow_page, "not the shadow's page: {body}");
        }
        assert_eq!(body["source"] == "fallback", fallback, "{body}");
        if fallback {
            assert_eq!(body["model"], POPULAR, "{body}");
        } else {
            assert_eq!(body["model"], CONTROL_MODEL, "{body}");
        }
        if forced {
            continue;
        }
        ledger.exposures += 1;
        if fallback {
            continue;
        }
        ledger.to_compare += 1;
        ledger.control_items.extend(page.items.iter().cloned());
        let control = env.control_ids(&ask.user).expect("in ctl");
        match env.shadow_ids(&ask.user) {
            None => ledger.no_list += 1,
            Some(shadow) => {
                let comparison = compare(&shadow, &control, ask.k()).expect("both lists non-empty");
                ledger.shadow_items.extend(comparison.shadow_prefix.iter().cloned());
                ledger.shadow_items_uncut.extend(shadow.iter().take(ask.k()).cloned());
                ledger.comparisons.push(comparison);
            }
        }
    }
    ledger
}

/// Waits until every comparison of `ledger` left its trace in Prometheus (`compared` plus
/// `no_list` plus `busy` is the number of control responses to compare), then until the
/// results' `compared` and the control's exposures equal the ledger's (flushed to Redis every
/// second); returns the results and the metrics at that point.
async fn wait_compared(gw: &TestGateway, ledger: &ShadowLedger) -> (Value, String) {
    let want = ledger.to_compare as f64;
    eventually(WAIT, "every control response compared", async || {
        let text = gw.metrics().await;
        let [compared, no_list, busy] =
            ["compared", "no_list", "busy"].map(|o| outcome(&text, PLACEMENT, EXPERIMENT, SHADOW, o));
        if compared + no_list + busy == want {
            Ok(())
        } else {
            Err(format!(
                "compared {compared}, no_list {no_list}, busy {busy}; want {want} in all"
            ))
        }
    })
    .await;
    wait_flushed(gw, FLUSH, WAIT).await;
    let want = (ledger.comparisons.len() as u64, ledger.exposures);
    eventually(WAIT, "results: compared and exposures", async || {
        let body = results(gw, EXPERIMENT, "").await;
        let got = (
            arm(&body, SHADOW)["compared"].as_u64().unwrap_or(u64::MAX),
            arm(&body, CONTROL)["exposures"].as_u64().unwrap_or(u64::MAX),
        );
        if got == want {
            Ok(())
        } else {
            Err(format!("(compared, exposures) {got:?}, want {want:?}: {body}"))
        }
    })
    .await;
    (results(gw, EXPERIMENT, "").await, gw.metrics().await)
}

// ---------------------------------------------------------------------------------------------
// 1. A shadow arm is never served; its overlap with the control is exact
// ---------------------------------------------------------------------------------------------

/// With `shadow_sample = 1.0`, every user of `home-shadow` (two rounds, limits 2 to 50, offsets,
/// `exclude`, `min_score`) gets the control's page and never the shadow arm or its list; every
/// counted control response with a shadow list is compared on the WHOLE control list cut at
/// k = limit, so the results' `compared` equals the test's count, `overlap_jaccard` and
/// `overlap_rbo` its own means within 1e-6, users the shadow model lacks count as `no_list`, QA
/// and fallback responses are not compared, nothing is `busy`; the histogram's `_count`,
/// `_sum` (within 1e-6 × count) and buckets agree with the test's values; the shadow arm has
/// no exposures, lift or p-value (with reasons), the sample-ratio test is no mismatch, and
/// without snapshots neither arm has a catalogue coverage (with a reason).
async fn shadow_is_never_served_and_overlap_is_exact(mode: Mode) {
    let env = Env::new();
    let (gw, _redis) = launch(&env, mode, false).await;
    let asks = shadow_traffic(&env);
    let ledger = serve_shadow_traffic(&gw, &env, &asks).await;
    // The traffic holds what the test is about.
    let n = ledger.comparisons.len();
    assert!(n >= 45, "{ledger:?}");
    assert!(ledger.comparisons.iter().any(|c| c.jaccard == 1.0), "identical");
    assert!(ledger.comparisons.iter().any(|c| c.jaccard == 0.0), "disjoint");
    assert!(
        ledger.comparisons.iter().any(|c| c.jaccard > 0.0 && c.jaccard < 1.0),
        "partly overlapping"
    );
    assert!(ledger.comparisons.iter().any(|c| c.depth < 5), "cut short");
    assert_eq!(ledger.no_list, 3, "only-c-1 twice, only-c-2 once");

    let (body, text) = wait_compared(&gw, &ledger).await;
    assert_eq!(body["counts"], mode.counts(), "{body}");
    let names: Vec<&str> = body["arms"]
        .as_array()
        .expect("arms")
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert_eq!(names, [CONTROL, SHADOW], "{body}");

    let shadow = arm(&body, SHADOW);
    assert_eq!(shadow["shadow"], true, "{shadow}");
    assert_eq!(shadow["compared"], n as u64, "{shadow}");
    let (jaccard, rbo) = (ledger.mean(|c| c.jaccard), ledger.mean(|c| c.rbo));
    for (field, want) in [("overlap_jaccard", jaccard), ("overlap_rbo", rbo)] {
        let got = shadow[field]
            .as_f64()
            .unwrap_or_else(|| panic!("{field} is a number: {shadow}"));
        assert!((got - want).abs() <= 1e-6, "{field} = {got}, want {want}: {shadow}");
    }
    assert_eq!(shadow["exposures"], 0, "never assigned: {shadow}");
    assert_eq!(shadow["users"], 0, "never assigned: {shadow}");
    assert_absent_with_reason(shadow, "lift");
    assert_absent_with_reason(shadow, "p_value");

    let control = arm(&body, CONTROL);
    assert_eq!(control["shadow"], false, "{control}");
    assert_eq!(control["exposures"], ledger.exposures, "{control}");
    for field in ["compared", "overlap_jaccard", "overlap_rbo"] {
        assert!(
            control.get(field).is_none_or(Value::is_null),
            "{field}: shadow arms only: {control}"
        );
    }
    assert_eq!(
        body["srm_detected"], false,
        "the shadow arm is no share to check: {body}"
    );
    for arm in [control, shadow] {
        assert_absent_with_reason(arm, "catalogue_coverage");
    }

    // Prometheus: the outcomes, and one histogram observation per comparison.
    for (what, want) in [
        ("compared", n as f64),
        ("no_list", ledger.no_list as f64),
        ("busy", 0.0),
    ] {
        assert_eq!(
            outcome(&text, PLACEMENT, EXPERIMENT, SHADOW, what),
            want,
            "shadow_comparisons_total{{outcome={what}}}"
        );
    }
    for (measure, of) in [
        ("jaccard", (|c: &Comparison| c.jaccard) as fn(&Comparison) -> f64),
        ("rbo", |c: &Comparison| c.rbo),
    ] {
        let labels = overlap_labels(measure);
        let count = gateway::sample(&text, "list_overlap_count", &labels);
        assert_eq!(count, n as f64, "list_overlap_count{{measure={measure}}}");
        let sum = gateway::sample(&text, "list_overlap_sum", &labels);
        let want: f64 = ledger.comparisons.iter().map(of).sum();
        assert!(
            (sum - want).abs() <= 1e-6 * n as f64,
            "list_overlap_sum{{measure={measure}}} = {sum}, want {want}"
        );
        let values: Vec<f64> = ledger.comparisons.iter().map(of).collect();
        let bounds = buckets(&text, "list_overlap", &labels);
        assert!(
            bounds.iter().any(|(le, c)| le.is_infinite() && *c == n as f64),
            "+Inf bucket = count: {bounds:?}"
        );
        for (le, got) in bounds {
            // A computed RBO within rounding of a bound could land on either side of it.
            if measure == "rbo" && values.iter().any(|v| (v - le).abs() < 1e-9) {
                continue;
            }
            let want = values.iter().filter(|v| **v <= le).count() as f64;
            assert_eq!(got, want, "list_overlap_bucket{{measure={measure},le={le}}}");
        }
    }
    // No list of the shadow model was ever an answer, nor counted as the control's.
    for name in ["recommendations_total", "impressions_total", "clicks_total"] {
        let got = gateway::sample(
            &text,
            name,
            &[("arm", SHADOW), ("experiment", EXPERIMENT), ("placement", PLACEMENT)],
        );
        assert_eq!(got, 0.0, "{name}{{arm={SHADOW}}}");
    }
    gw.stop().await;
}

redis_modes! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    shadow_is_never_served_and_overlap_is_exact {
        shadow_is_never_served_and_overlap_is_exact_in_memory => Memory,
        shadow_is_never_served_and_overlap_is_exact_on_one_redis_node => Node,
        shadow_is_never_served_and_overlap_is_exact_on_a_redis_cluster => Cluster,
    }
}

// ---------------------------------------------------------------------------------------------
// 2. CTR by position
// ---------------------------------------------------------------------------------------------

/// Impressions and clicks per rank bucket, per (experiment, arm).
type Positions = BTreeMap<(String, String), [[u64; 2]; 6]>;

/// Asserts `by_position` of every arm of `experiment` in `body` equals `ledger`: six entries
/// in bucket order, impressions and clicks to the unit, `ctr` = clicks / impressions (1e-12),
/// absent without impressions; and the arm's totals are their sums.
fn assert_by_position(body: &Value, experiment: &str, arms: &[&str], ledger: &Positions) {
    for name in arms {
        let entry = arm(body, name);
        let want = ledger
            .get(&(experiment.to_string(), name.to_string()))
            .copied()
            .unwrap_or_default();
        let got = entry["by_position"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: no by_position: {entry}"));
        let positions: Vec<&str> = got.iter().filter_map(|p| p["position"].as_str()).collect();
        assert_eq!(positions, POSITIONS, "{experiment}/{name}: {entry}");
        for (b, position) in got.iter().enumerate() {
            let [impressions, clicks] = want[b];
            assert_eq!(
                (position["impressions"].as_u64(), position["clicks"].as_u64()),
                (Some(impressions), Some(clicks)),
                "{experiment}/{name} position {}: {entry}",
                POSITIONS[b]
            );
            match impressions {
                0 => assert!(
                    position.get("ctr").is_none_or(Value::is_null),
                    "{experiment}/{name} position {}: no ctr without impressions: {position}",
                    POSITIONS[b]
                ),
                n => {
                    let ctr = position["ctr"].as_f64().unwrap_or_else(|| panic!("ctr: {position}"));
                    let want = clicks as f64 / n as f64;
                    assert!(
                        (ctr - want).abs() <= 1e-12,
                        "{experiment}/{name}: ctr {ctr}, want {want}"
                    );
                }
            }
        }
        let total = |i: usize| want.iter().map(|b| b[i]).sum::<u64>();
        assert_eq!(entry["impressions"], total(0), "{experiment}/{name}: {entry}");
        assert_eq!(entry["clicks"], total(1), "{experiment}/{name}: {entry}");
    }
}

/// `impressions_by_position_total` and `clicks_by_position_total` of every arm of
/// `experiment` on `placement` equal `ledger`.
fn assert_position_counters(text: &str, placement: &str, experiment: &str, arms: &[&str], ledger: &Positions) {
    for name in arms {
        let want = ledger
            .get(&(experiment.to_string(), name.to_string()))
            .copied()
            .unwrap_or_default();
        for (b, position) in POSITIONS.iter().enumerate() {
            let labels = [
                ("arm", *name),
                ("experiment", experiment),
                ("placement", placement),
                ("position", position),
            ];
            for (i, family) in ["impressions_by_position_total", "clicks_by_position_total"]
                .iter()
                .enumerate()
            {
                assert_eq!(
                    gateway::sample(text, family, &labels),
                    want[b][i] as f64,
                    "{family}{{experiment={experiment},arm={name},position={position}}}"
                );
            }
        }
    }
}

/// Pages with offset 0 and 10 (limit 5 or 10; some with `exclude`, so an item's model rank
/// and its position differ; some at offset 3) on `side-split` and on the control of
/// `home-shadow`; an impression for every item and, by a seeded RNG, clicks more likely near
/// the top; the first events sent again with their ids (accepted, not counted again). Each
/// arm's `by_position` counts each event in the bucket of offset + index in the page + 1,
/// exactly as the test buckets it, with its CTR, and the shadow arm's is empty; the Prometheus
/// by-position counters agree; events of QA pages, accepted, change nothing in the results.
/// With `json`, the gateway signs the JSON tokens of `tracking.token_format = "json"` (the
/// previous release's format, signed during an upgrade), which must carry the offset alike.
async fn ctr_by_position_is_exact(mode: Mode, json: bool) {
    let env = Env::new();
    let (gw, _redis) = launch_with(&env, mode, false, |s| {
        if json {
            s.tracking.token_format = recgw::feedback::token::TokenFormat::Json;
        }
    })
    .await;
    let mut rng = Rng::new(0x0B05_1710);
    let mut ledger = Positions::new();
    let mut events = Vec::new();
    let mut pages = 0usize;
    let mut serve = async |placement: &str, ask: Ask, rng: &mut Rng, ledger: &mut Positions| {
        let page = recommend(&gw, &ask.user, &ask.query(placement)).await;
        let body = &page.body;
        assert_eq!(body["forced"], false, "{body}");
        assert_ne!(body["source"], "fallback", "{body}");
        assert_eq!(
            page.token.contains('.'),
            json,
            "the token format asked for: {}",
            page.token
        );
        let experiment = body["experiment"].as_str().expect("experiment").to_string();
        let arm = body["arm"].as_str().expect("arm").to_string();
        let entry = ledger.entry((experiment, arm)).or_default();
        pages += 1;
        let mut sent = Vec::new();
        for (index, item) in page.items.iter().enumerate() {
            let b = bucket(ask.offset + index + 1);
            sent.push(event(
                "impression",
                &page.token,
                item,
                Some(&format!("p{pages}-i{index}")),
            ));
            entry[b][0] += 1;
            let p = [0.6, 0.45, 0.35, 0.25, 0.15, 0.1][b];
            if rng.chance(p) {
                sent.push(event("click", &page.token, item, Some(&format!("p{pages}-c{index}"))));
                entry[b][1] += 1;
            }
        }
        sent
    };
    for n in 1..=REGULAR {
        let user = n.to_string();
        let both: Vec<String> = [&env.control_ids(&user), &env.shadow_ids(&user)]
            .iter()
            .map(|l| l.as_ref().expect("in both models")[0].clone())
            .collect();
        let mut asks = vec![
            Ask::new(&user),
            Ask::new(&user).limit(5).offset(10),
            Ask::new(&user).limit(5).exclude(&both),
            Ask::new(&user).offset(10),
        ];
        if n % 3 == 0 {
            asks.push(Ask::new(&user).limit(4).offset(3));
        }
        for ask in asks {
            events.extend(serve(SPLIT_PLACEMENT, ask, &mut rng, &mut ledger).await);
        }
        if n <= 10 {
            let c = env.control_ids(&user).expect("in ctl");
            for ask in [Ask::new(&user).limit(5), Ask::new(&user).offset(10).exclude(&c[..1])] {
                events.extend(serve(PLACEMENT, ask, &mut rng, &mut ledger).await);
            }
        }
    }
    // Both split arms and every bucket have events, so no expectation is vacuous.
    for name in SPLIT_ARMS {
        let counts = ledger[&(SPLIT_EXPERIMENT.to_string(), name.to_string())];
        assert!(counts.iter().all(|b| b[0] > 0 && b[1] > 0), "{name}: {counts:?}");
    }
    post_all_accepted(&gw, &events, 200).await;
    // Retries: accepted again, not counted again.
    post_all_accepted(&gw, &events[..30], 200).await;

    // Events are counted before they are answered: exact at once.
    let split = results(&gw, SPLIT_EXPERIMENT, "").await;
    assert_eq!(split["counts"], mode.counts(), "{split}");
    assert_by_position(&split, SPLIT_EXPERIMENT, &SPLIT_ARMS, &ledger);
    let shadow = results(&gw, EXPERIMENT, "").await;
    assert_by_position(&shadow, EXPERIMENT, &[CONTROL, SHADOW], &ledger);
    let text = gw.metrics().await;
    assert_position_counters(&text, SPLIT_PLACEMENT, SPLIT_EXPERIMENT, &SPLIT_ARMS, &ledger);
    assert_position_counters(&text, PLACEMENT, EXPERIMENT, &[CONTROL, SHADOW], &ledger);

    // QA pages: their events are accepted and not counted in the results.
    let mut qa_events = Vec::new();
    for (placement, user) in [(SPLIT_PLACEMENT, SPLIT_QA_USER), (PLACEMENT, QA_USER)] {
        for ask in [Ask::new(user), Ask::new(user).limit(5).offset(10)] {
            let page = recommend(&gw, &ask.user, &ask.query(placement)).await;
            assert_eq!(page.body["forced"], true, "{}", page.body);
            for (index, item) in page.items.iter().enumerate() {
                for kind in ["impression", "click"] {
                    qa_events.push(event(
                        kind,
                        &page.token,
                        item,
                        Some(&format!("qa-{user}-{}-{index}-{kind}", ask.offset)),
                    ));
                }
            }
        }
    }
    post_all_accepted(&gw, &qa_events, 200).await;
    assert_by_position(
        &results(&gw, SPLIT_EXPERIMENT, "").await,
        SPLIT_EXPERIMENT,
        &SPLIT_ARMS,
        &ledger,
    );
    assert_by_position(
        &results(&gw, EXPERIMENT, "").await,
        EXPERIMENT,
        &[CONTROL, SHADOW],
        &ledger,
    );
    gw.stop().await;
}

redis_modes! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    ctr_by_position_is_exact(false) {
        ctr_by_position_is_exact_in_memory => Memory,
        ctr_by_position_is_exact_on_one_redis_node => Node,
        ctr_by_position_is_exact_on_a_redis_cluster => Cluster,
    }
}

redis_modes! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    ctr_by_position_is_exact(true) {
        ctr_by_position_with_json_tokens_is_exact_in_memory => Memory,
        ctr_by_position_with_json_tokens_is_exact_on_one_redis_node => Node,
        ctr_by_position_with_json_tokens_is_exact_on_a_redis_cluster => Cluster,
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Distinct items and catalogue coverage
// ---------------------------------------------------------------------------------------------

/// The traffic of test 1 on `home-shadow`. The control's `distinct_items` is the number of
/// distinct ids on its counted, non-fallback pages as the test saw them (not the QA user's
/// pages, whose items `800`.. no other list has; not the placement default's items of a
/// fallback); the shadow arm's is the number of distinct ids in the top-d shadow prefixes it
/// was compared on (not the items `302`.. beyond depth 4 of `short-c`'s shadow list, in no
/// other list). With `snapshots`, once both models are served from their snapshots,
/// `catalogue_coverage` is that over the distinct items of the arm's model as the test wrote
/// it (users never asked for included), within 1e-9; without, it is absent with a reason.
async fn coverage_counts_distinct_items(mode: Mode, snapshots: bool) {
    let env = Env::new();
    let (gw, _redis) = launch(&env, mode, snapshots).await;
    if snapshots {
        for model in [CONTROL_MODEL, SHADOW_MODEL] {
            gw.wait_model(model, "served from its snapshot", |m| m["serving"] == "snapshot")
                .await;
        }
    }
    let asks = shadow_traffic(&env);
    let ledger = serve_shadow_traffic(&gw, &env, &asks).await;
    assert!(!ledger.control_items.iter().any(|i| i.starts_with('8')), "QA items");
    assert!(!ledger.shadow_items.contains("302"), "short-c is compared at depth 4");
    let (body, _) = wait_compared(&gw, &ledger).await;
    assert!(
        ledger.shadow_items_uncut.len() > ledger.shadow_items.len(),
        "the traffic tells top-d prefixes from top-k ones"
    );
    let catalogue = [Env::catalogue(&env.control), Env::catalogue(&env.shadow)];
    let items = [ledger.control_items.len(), ledger.shadow_items.len()];
    // Every arm and field is checked before failing, so a failure names all that is wrong.
    let mut wrong = Vec::new();
    for (i, name) in [CONTROL, SHADOW].iter().enumerate() {
        let entry = arm(&body, name);
        if entry["distinct_items"] != items[i] as u64 {
            wrong.push(format!(
                "{name}: distinct_items {}, want {} (the shadow's top-k prefixes, uncut, hold {})",
                entry["distinct_items"],
                items[i],
                ledger.shadow_items_uncut.len()
            ));
        }
        if snapshots {
            let want = items[i] as f64 / catalogue[i] as f64;
            assert!(want < 1.0, "part of the catalogue only");
            match entry["catalogue_coverage"].as_f64() {
                Some(got) if (got - want).abs() <= 1e-9 => {}
                got => wrong.push(format!(
                    "{name}: catalogue_coverage {got:?}, want {want} = {} / {}",
                    items[i], catalogue[i]
                )),
            }
            if entry["undefined"].get("catalogue_coverage").is_some() {
                wrong.push(format!("{name}: catalogue_coverage has a reason: {entry}"));
            }
        } else {
            assert_absent_with_reason(entry, "catalogue_coverage");
        }
    }
    assert!(wrong.is_empty(), "{}\n{body}", wrong.join("\n"));
    gw.stop().await;
}

redis_modes! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    coverage_counts_distinct_items(true) {
        coverage_with_snapshots_in_memory => Memory,
        coverage_with_snapshots_on_one_redis_node => Node,
        coverage_with_snapshots_on_a_redis_cluster => Cluster,
    }
}

redis_modes! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    coverage_counts_distinct_items(false) {
        coverage_without_snapshots_in_memory => Memory,
        coverage_without_snapshots_on_one_redis_node => Node,
        coverage_without_snapshots_on_a_redis_cluster => Cluster,
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Validation
// ---------------------------------------------------------------------------------------------

/// `placements.toml` (`home`, `search`) and `files` in a new folder.
fn folder(files: &[(&str, &str)]) -> TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("placements.toml"), common::examples::PLACEMENTS).expect("write placements");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write experiment");
    }
    dir
}

/// An experiment `sh` on `home` with `top` lines after `status`, `arms` (name, extra lines) on
/// models `m-{name}`, and `tail` after them.
fn experiment_toml(top: &str, arms: &[(&str, &str)], tail: &str) -> String {
    let mut text = format!("id = \"sh\"\nplacement = \"home\"\n{top}\n");
    for (name, extra) in arms {
        text.push_str(&format!("\n[[arms]]\nname = \"{name}\"\nmodel = \"m-{name}\"\n{extra}"));
    }
    text.push_str(tail);
    text
}

/// The split experiment of [`experiment_toml`], running.
fn split_toml(arms: &[(&str, &str)], tail: &str) -> String {
    experiment_toml("status = \"running\"", arms, tail)
}

/// The problems of a folder that must be rejected.
fn rejected(dir: &Path) -> Vec<Problem> {
    match Catalog::load_dir(dir) {
        Ok(_) => panic!("the folder {} was accepted", dir.display()),
        Err(problems) => problems.0,
    }
}

/// `text` as `sh.toml` is rejected with exactly one problem, in that file, on `field`, with a
/// message.
fn only_problem(text: &str, field: &str) -> Problem {
    let dir = folder(&[("sh.toml", text)]);
    let problems = rejected(dir.path());
    assert_eq!(
        problems.len(),
        1,
        "exactly one problem at {field}: {problems:#?}\n{text}"
    );
    let problem = problems.into_iter().next().expect("one");
    assert_eq!(problem.file, dir.path().join("sh.toml"), "{problem}");
    assert_eq!(problem.field, field, "{problem}\n{text}");
    assert!(!problem.message.trim().is_empty(), "{problem}");
    problem
}

const SHADOW_ARM: &str = "shadow = true\n";

/// A shadow arm without `weight` beside a control of weight 100 loads: the shadow arm has the
/// default share 0.1 (or the `shadow_sample` given, 1.0 included, and a small one), owns no
/// bucket, and the serving arms' weights alone sum to 100, also with a 50/50 split beside it.
#[test]
fn shadow_arm_without_weight_loads() {
    for (extra, share) in [
        ("", 0.1),
        ("shadow_sample = 1.0\n", 1.0),
        ("shadow_sample = 0.001\n", 0.001),
        ("shadow_sample = 0.5\n", 0.5),
    ] {
        let text = split_toml(
            &[
                ("control", "weight = 100.0\n"),
                ("cand", &format!("{SHADOW_ARM}{extra}")),
            ],
            "",
        );
        let dir = folder(&[("sh.toml", &text)]);
        let catalog = Catalog::load_dir(dir.path()).unwrap_or_else(|p| panic!("{p}\n{text}"));
        let experiment = catalog.experiment("sh").expect("sh");
        let [control, cand] = [&experiment.arms[0], &experiment.arms[1]];
        assert_eq!(control.shadow, None, "the control serves");
        assert_eq!(cand.shadow, Some(share), "{text}");
        assert_eq!((control.weight_bp, control.buckets.clone()), (10_000, 0..10_000));
        assert!(
            cand.buckets.is_empty(),
            "a shadow arm owns no bucket: {:?}",
            cand.buckets
        );
    }
    let text = split_toml(
        &[
            ("control", "weight = 50.0\n"),
            ("cand", SHADOW_ARM),
            ("treatment", "weight = 50.0\n"),
        ],
        "",
    );
    let dir = folder(&[("sh.toml", &text)]);
    let catalog = Catalog::load_dir(dir.path()).unwrap_or_else(|p| panic!("{p}\n{text}"));
    let arms = &catalog.experiment("sh").expect("sh").arms;
    assert_eq!(arms[0].buckets, 0..5_000);
    assert!(arms[1].buckets.is_empty(), "{:?}", arms[1].buckets);
    assert_eq!(arms[2].buckets, 5_000..10_000);
}

/// A shadow arm with a `weight` is rejected at that arm's `weight` — alone when the serving
/// arms sum to 100 — and when the serving arms' weights do not sum to 100 without it, that is
/// said too (at `arms`).
#[test]
fn shadow_arm_with_weight_is_rejected_at_its_weight() {
    let text = split_toml(
        &[
            ("control", "weight = 100.0\n"),
            ("cand", &format!("{SHADOW_ARM}weight = 10.0\n")),
        ],
        "",
    );
    only_problem(&text, "arms[1].weight");
    let text = split_toml(
        &[
            ("control", "weight = 50.0\n"),
            ("cand", &format!("{SHADOW_ARM}weight = 50.0\n")),
        ],
        "",
    );
    let dir = folder(&[("sh.toml", &text)]);
    let mut fields: Vec<String> = rejected(dir.path()).into_iter().map(|p| p.field).collect();
    fields.sort();
    assert_eq!(fields, ["arms", "arms[1].weight"], "{text}");
}

/// The serving arms' weights must sum to 100 on their own: a control of 90 beside a shadow arm
/// is rejected, at `arms`.
#[test]
fn serving_weights_beside_a_shadow_must_sum_to_100() {
    let text = split_toml(&[("control", "weight = 90.0\n"), ("cand", SHADOW_ARM)], "");
    let problem = only_problem(&text, "arms");
    assert!(problem.message.contains("90"), "says the sum: {problem}");
}

/// The first arm, the control, cannot be a shadow: rejected at `arms[0].shadow`.
#[test]
fn control_cannot_be_a_shadow() {
    let text = split_toml(&[("control", SHADOW_ARM), ("treatment", "weight = 100.0\n")], "");
    only_problem(&text, "arms[0].shadow");
}

/// An interleave experiment cannot have a shadow arm: rejected at that arm's `shadow`.
#[test]
fn interleave_experiment_cannot_have_a_shadow_arm() {
    let text = experiment_toml(
        "kind = \"interleave\"\nstatus = \"running\"",
        &[("a", ""), ("b", SHADOW_ARM)],
        "",
    );
    only_problem(&text, "arms[1].shadow");
}

/// A completed experiment's `winner` cannot be a shadow arm: rejected at `winner` (the same
/// experiment with the control as winner loads).
#[test]
fn winner_cannot_be_a_shadow_arm() {
    let arms = [("control", "weight = 100.0\n"), ("cand", SHADOW_ARM)];
    let text = experiment_toml("status = \"completed\"\nwinner = \"cand\"", &arms, "");
    let problem = only_problem(&text, "winner");
    assert!(problem.message.contains("cand"), "names the arm: {problem}");
    let text = experiment_toml("status = \"completed\"\nwinner = \"control\"", &arms, "");
    let dir = folder(&[("sh.toml", &text)]);
    Catalog::load_dir(dir.path()).unwrap_or_else(|p| panic!("the control may win: {p}"));
}

/// `[overrides]` cannot force a user into a shadow arm: rejected at `overrides."{user}"`
/// (forcing into the control loads).
#[test]
fn overrides_cannot_name_a_shadow_arm() {
    let arms = [("control", "weight = 100.0\n"), ("cand", SHADOW_ARM)];
    let text = split_toml(&arms, "\n[overrides]\n\"qa-user-1\" = \"cand\"\n");
    let problem = only_problem(&text, "overrides.\"qa-user-1\"");
    assert!(problem.message.contains("cand"), "names the arm: {problem}");
    let text = split_toml(&arms, "\n[overrides]\n\"qa-user-1\" = \"control\"\n");
    let dir = folder(&[("sh.toml", &text)]);
    Catalog::load_dir(dir.path()).unwrap_or_else(|p| panic!("forcing the control: {p}"));
}

/// `shadow_sample` on an arm that is no shadow is rejected at that arm's `shadow_sample`, on
/// the control and on a serving treatment alike (also with `shadow = false` written out).
#[test]
fn shadow_sample_on_a_serving_arm_is_rejected() {
    let text = split_toml(
        &[
            ("control", "weight = 100.0\nshadow_sample = 0.5\n"),
            ("cand", SHADOW_ARM),
        ],
        "",
    );
    only_problem(&text, "arms[0].shadow_sample");
    for extra in ["shadow_sample = 0.5\n", "shadow = false\nshadow_sample = 0.5\n"] {
        let text = split_toml(
            &[
                ("control", "weight = 50.0\n"),
                ("treatment", &format!("weight = 50.0\n{extra}")),
            ],
            "",
        );
        only_problem(&text, "arms[1].shadow_sample");
    }
}

/// `shadow_sample` must be above 0 and at most 1: 0, a negative share, and shares above 1 are
/// rejected at the shadow arm's `shadow_sample`.
#[test]
fn shadow_sample_out_of_range_is_rejected() {
    for share in ["0.0", "-0.1", "1.5", "1.000001", "100.0"] {
        let text = split_toml(
            &[
                ("control", "weight = 100.0\n"),
                ("cand", &format!("{SHADOW_ARM}shadow_sample = {share}\n")),
            ],
            "",
        );
        only_problem(&text, "arms[1].shadow_sample");
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Sampling
// ---------------------------------------------------------------------------------------------

/// 400 control responses of `sampled-shadow` (users 1..=40, ten each, every one in the shadow
/// model): the arm with `shadow_sample = 0.5` is compared on between 100 and 300 of them
/// (compared plus `no_list`, which is 0 here), the arm without `shadow_sample` (0.1) on between
/// 5 and 100 — samples, not counts, with bounds ten and five standard deviations wide — and the
/// results' `compared` of each equals its Prometheus count once flushed.
async fn comparisons_are_sampled(mode: Mode) {
    let env = Env::new();
    let (gw, _redis) = launch(&env, mode, false).await;
    let rounds = 10;
    for _ in 0..rounds {
        for n in 1..=REGULAR {
            let page = recommend(&gw, &n.to_string(), &format!("placement={SAMPLED_PLACEMENT}")).await;
            assert_eq!(page.body["experiment"], SAMPLED_EXPERIMENT, "{}", page.body);
            assert_eq!(page.body["arm"], CONTROL, "never a shadow arm: {}", page.body);
            assert_ne!(page.body["source"], "fallback", "{}", page.body);
        }
    }
    let responses = u64::from(REGULAR) * rounds;
    // Settled: Prometheus stops moving, and the results (flushed) agree with it.
    wait_flushed(&gw, FLUSH, WAIT).await;
    let (body, text) = eventually(WAIT, "results agree with Prometheus", async || {
        let text = gw.metrics().await;
        let body = results(&gw, SAMPLED_EXPERIMENT, "").await;
        let exposures = arm(&body, CONTROL)["exposures"].as_u64();
        let mut differ = Vec::new();
        for name in [HALF, TENTH] {
            let prom = outcome(&text, SAMPLED_PLACEMENT, SAMPLED_EXPERIMENT, name, "compared");
            let got = arm(&body, name)["compared"].as_f64();
            if got != Some(prom) {
                differ.push(format!("{name}: results {got:?}, prometheus {prom}"));
            }
        }
        if exposures != Some(responses) {
            differ.push(format!("exposures {exposures:?}, want {responses}"));
        }
        if differ.is_empty() {
            Ok((body, text))
        } else {
            Err(differ.join("; "))
        }
    })
    .await;
    for (name, range) in [(HALF, 100..=300), (TENTH, 5..=100)] {
        let entry = arm(&body, name);
        assert_eq!(entry["shadow"], true, "{entry}");
        let compared = entry["compared"].as_u64().expect("compared");
        let no_list = outcome(&text, SAMPLED_PLACEMENT, SAMPLED_EXPERIMENT, name, "no_list") as u64;
        assert_eq!(no_list, 0, "{name}: every user is in the shadow model");
        assert!(
            range.contains(&(compared + no_list)),
            "{name}: {compared} + {no_list} of {responses} responses, want within {range:?}"
        );
        assert_eq!(entry["exposures"], 0, "{name}: never assigned: {entry}");
    }
    gw.stop().await;
}

redis_modes! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    comparisons_are_sampled {
        comparisons_are_sampled_in_memory => Memory,
        comparisons_are_sampled_on_one_redis_node => Node,
        comparisons_are_sampled_on_a_redis_cluster => Cluster,
    }
}

// ---------------------------------------------------------------------------------------------
// 6. A shadow arm beside two serving arms
// ---------------------------------------------------------------------------------------------

/// On `trio-shadow` the shadow arm is written between `control` and `treatment` (50/50): it
/// owns no bucket, so every user gets the arm of its own `B(salt, u)` — `control` below 5000,
/// `treatment` from 5000 on, never `candidate` — in the response and in the assignment
/// endpoint; only the control's responses are compared (the treatment's are not), so
/// `compared` and the mean Jaccard and RBO equal the test's over those alone, and the
/// sample-ratio test, over the two serving arms, is defined. The control of `done-shadow`,
/// completed with the control as winner, serves its page to every user, uncounted, so its
/// shadow arm is compared on none of them.
async fn shadow_beside_two_arms_follows_the_control(mode: Mode) {
    let env = Env::new();
    let (gw, _redis) = launch(&env, mode, false).await;
    for n in 1..=10 {
        let ask = Ask::new(&n.to_string());
        let page = recommend(&gw, &ask.user, &ask.query(DONE_PLACEMENT)).await;
        assert_eq!(page.body["experiment"], DONE_EXPERIMENT, "{}", page.body);
        assert_eq!(page.body["arm"], CONTROL, "the winner: {}", page.body);
        assert_eq!(page.items, ask.page_of(&env.control[&ask.user]), "{}", page.body);
    }
    let mut comparisons = Vec::new();
    let mut arms_seen = BTreeSet::new();
    for limit in [None, Some(5)] {
        for n in 1..=REGULAR {
            let user = n.to_string();
            let ask = match limit {
                Some(limit) => Ask::new(&user).limit(limit),
                None => Ask::new(&user),
            };
            let page = recommend(&gw, &ask.user, &ask.query(TRIO_PLACEMENT)).await;
            let want = if common::assignment::bucket(TRIO_EXPERIMENT, &user) < 5_000 {
                CONTROL
            } else {
                "treatment"
            };
            assert_eq!(page.body["experiment"], TRIO_EXPERIMENT, "{}", page.body);
            assert_eq!(page.body["arm"], want, "B(salt, {user}): {}", page.body);
            let control = env.control_ids(&user).expect("in ctl");
            assert_eq!(page.items, ask.page_of(&env.control[&user]), "{}", page.body);
            arms_seen.insert(want);
            if want == CONTROL {
                let shadow = env.shadow_ids(&user).expect("in shd");
                comparisons.push(compare(&shadow, &control, ask.k()).expect("non-empty"));
            }
            if limit.is_none() {
                let assignment = gw
                    .ok(&format!("/experiments/{TRIO_EXPERIMENT}/assignment/{user}"))
                    .await;
                assert_eq!(assignment["arm"], want, "{assignment}");
                assert_eq!(assignment["arm_for_bucket"], want, "{assignment}");
            }
        }
    }
    assert_eq!(arms_seen.len(), 2, "both serving arms served: {arms_seen:?}");
    let n = comparisons.len() as f64;
    eventually(WAIT, "control responses compared", async || {
        let text = gw.metrics().await;
        let got = ["compared", "no_list", "busy"].map(|o| outcome(&text, TRIO_PLACEMENT, TRIO_EXPERIMENT, SHADOW, o));
        if got == [n, 0.0, 0.0] {
            Ok(())
        } else {
            Err(format!("(compared, no_list, busy) {got:?}, want ({n}, 0, 0)"))
        }
    })
    .await;
    wait_flushed(&gw, FLUSH, WAIT).await;
    let body = eventually(WAIT, "results: compared", async || {
        let body = results(&gw, TRIO_EXPERIMENT, "").await;
        if arm(&body, SHADOW)["compared"].as_f64() == Some(n) {
            Ok(body)
        } else {
            Err(format!("compared {}, want {n}: {body}", arm(&body, SHADOW)["compared"]))
        }
    })
    .await;
    let shadow = arm(&body, SHADOW);
    let mean = |of: fn(&Comparison) -> f64| comparisons.iter().map(of).sum::<f64>() / n;
    for (field, want) in [
        ("overlap_jaccard", mean(|c| c.jaccard)),
        ("overlap_rbo", mean(|c| c.rbo)),
    ] {
        let got = shadow[field].as_f64().unwrap_or_else(|| panic!("{field}: {shadow}"));
        assert!((got - want).abs() <= 1e-6, "{field} = {got}, want {want}: {shadow}");
    }
    assert_eq!(shadow["exposures"], 0, "{shadow}");
    let treatment = arm(&body, "treatment");
    for field in ["compared", "overlap_jaccard", "overlap_rbo"] {
        assert!(treatment.get(field).is_none_or(Value::is_null), "{field}: {treatment}");
    }
    let srm = body["srm_p_value"].as_f64();
    assert!(
        srm.is_some_and(|p| (0.0..=1.0).contains(&p)),
        "the sample-ratio test over control and treatment is defined: {body}"
    );
    // Long after the winner's pages (and a flush): none compared, nothing counted.
    let text = gw.metrics().await;
    for o in ["compared", "no_list", "busy"] {
        assert_eq!(
            outcome(&text, DONE_PLACEMENT, DONE_EXPERIMENT, SHADOW, o),
            0.0,
            "{DONE_EXPERIMENT}: outcome {o}"
        );
    }
    let done = results(&gw, DONE_EXPERIMENT, "").await;
    assert_eq!(arm(&done, SHADOW)["compared"], 0, "{done}");
    assert_eq!(arm(&done, CONTROL)["exposures"], 0, "{done}");
    gw.stop().await;
}

redis_modes! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    shadow_beside_two_arms_follows_the_control {
        shadow_beside_two_arms_follows_the_control_in_memory => Memory,
        shadow_beside_two_arms_follows_the_control_on_one_redis_node => Node,
        shadow_beside_two_arms_follows_the_control_on_a_redis_cluster => Cluster,
    }
}
