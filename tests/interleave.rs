//! Interleaving experiments end to end (`kind = "interleave"`, ../shared/DESIGN.md §3): real
//! `recgw` gateways in this process on free loopback ports, over an experiments folder and
//! Spark-layout models the tests write themselves, so every expectation is computed here from
//! what the tests wrote and what the gateway served, never by the code under test.
//!
//! The folder (see [`Env`]):
//! - `home-interleave` on placement `home`: arms `alpha` (model `alpha`) and `beta` (model
//!   `beta`), no weights; QA override `qa-1` → `beta`;
//! - `aa-interleave` on placement `aa`: arms `left` and `right`, both on model `alpha` (A/A);
//! - `side-split` on placement `side`: a split experiment on the same two models, 50/50.
//!
//! Models: users `1`..=`300` in both models, `9001` only in `alpha`, `9002` only in `beta`,
//! `qa-1` in both; each list 12-20 distinct items out of 40 (`100`..`139`), so the two lists of
//! a user overlap, with strictly decreasing scores (`alpha`: 9 − r/8, `beta`: 8 − r/4 at 0-based
//! rank r, exact in `f32`).
//!
//! Everything that talks to Redis (serving through the cache tiers, events, results) runs three
//! times: without Redis (counts in memory), on one `redis-server`, and on a 3-node Redis
//! Cluster (`common/redis.rs`).
//!
//! 1. a simulated population prefers the better arm: per-team counts, wins, ties, preference,
//!    its interval and the sign-test p-value equal the test's own computation;
//! 2. an A/A interleave (the same model on both arms): order kept, teams alternate in pairs,
//!    the preference interval contains 0;
//! 3. the merge is visible over HTTP: each page is what team draft of the two lists can give,
//!    with `exclude` and `min_score` applied before the merge, and pages are slices of a draft;
//! 4. a user missing from one arm's model gets that other arm's list alone
//!    (`not_interleaved`), a forced QA user one arm's list; neither counts in results;
//! 5. events: an item not on the page, a tampered token, and clicks credited to the item's team;
//! 6. validation of the new keys.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::cli::{self, line_naming};
use common::events::{event, post_all_accepted, post_events, results, wait_flushed};
use common::gateway::{self, TestGateway};
use common::page::{Page, recommend};
use common::redis::{Mode, Redis};
use common::rng::{Rng, fnv};
use common::spark::{Id, SparkOutput};
use common::stats::Z95;
use recgw::config::Settings;
use recgw::experiment::{Catalog, Kind, Problem};
use serde_json::Value;
use tempfile::TempDir;

/// The interleave experiment on `home`.
const EXPERIMENT: &str = "home-interleave";
const PLACEMENT: &str = "home";
/// Its arms, in arm order (the first is the "A" of the preference).
const ARMS: [&str; 2] = ["alpha", "beta"];
/// The A/A experiment on `aa` and its arms (both on model `alpha`).
const AA_EXPERIMENT: &str = "aa-interleave";
const AA_PLACEMENT: &str = "aa";
const AA_ARMS: [&str; 2] = ["left", "right"];
/// The split experiment on `side`.
const SPLIT_EXPERIMENT: &str = "side-split";
const SPLIT_PLACEMENT: &str = "side";
/// What an interleaved response says in `arm`.
const INTERLEAVED: &str = "interleaved";
/// Users in both models.
const POPULATION: u32 = 300;
/// A user only `alpha`'s model knows, and one only `beta`'s knows.
const ONLY_ALPHA: &str = "9001";
const ONLY_BETA: &str = "9002";
/// The QA override of `home-interleave`, forced into `beta`.
const QA_USER: &str = "qa-1";
/// Exposures are flushed to Redis every second; a wait for one starts after this.
const FLUSH: Duration = Duration::from_millis(1100);
/// How long a background effect gets before a test fails.
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// The experiments folder and the models
// ---------------------------------------------------------------------------------------------

/// A ranked list: item ids with strictly decreasing scores, best first.
type List = Vec<(String, f32)>;

/// The list `model` (0 = `alpha`, 1 = `beta`) holds for `user`: 12-20 distinct items out of
/// `100`..`139`, in an order of the model's own; scores 9 − r/8 (`alpha`) or 8 − r/4 (`beta`).
fn ranked_list(model: usize, user: &str) -> List {
    let mut rng = Rng::new(fnv(user) ^ [0x00A1_FA00, 0x00BE_7A00][model]);
    let mut items: Vec<u32> = (100..140).collect();
    rng.shuffle(&mut items);
    let len = 12 + rng.below(9) as usize;
    let (top, step) = [(9.0f32, 0.125f32), (8.0, 0.25)][model];
    items
        .into_iter()
        .take(len)
        .enumerate()
        .map(|(r, item)| (item.to_string(), top - step * r as f32))
        .collect()
}

/// The users whose lists `model` holds.
fn users_of(model: usize) -> Vec<String> {
    let mut users: Vec<String> = (1..=POPULATION).map(|u| u.to_string()).collect();
    users.push([ONLY_ALPHA, ONLY_BETA][model].to_string());
    users.push(QA_USER.to_string());
    users
}

const PLACEMENTS_TOML: &str = r#"[placements.default]
default_model = "popular"

[placements.home]
default_model = "popular"

[placements.aa]
default_model = "popular"

[placements.side]
default_model = "popular"

[placements.half]
default_model = "popular"

[placements.paused]
default_model = "popular"

[placements.later]
default_model = "popular"
"#;

/// An interleave experiment on `placement` with `lines` (status, traffic, schedule), on the
/// `alpha` and `beta` models.
fn scheduled_toml(id: &str, placement: &str, lines: &str) -> String {
    format!(
        "id = \"{id}\"\nplacement = \"{placement}\"\nkind = \"interleave\"\n{lines}\n\n\
         [[arms]]\nname = \"alpha\"\nmodel = \"alpha\"\n\n[[arms]]\nname = \"beta\"\nmodel = \"beta\"\n"
    )
}

const INTERLEAVE_TOML: &str = r#"id = "home-interleave"
placement = "home"
description = "alpha against beta, interleaved"
owner = "recs-team@example.com"
kind = "interleave"
status = "running"
salt = "home-interleave"

[[arms]]
name = "alpha"
model = "alpha"

[[arms]]
name = "beta"
model = "beta"

[overrides]
"qa-1" = "beta"
"#;

const AA_TOML: &str = r#"id = "aa-interleave"
placement = "aa"
kind = "interleave"
status = "running"

[[arms]]
name = "left"
model = "alpha"

[[arms]]
name = "right"
model = "alpha"
"#;

const SPLIT_TOML: &str = r#"id = "side-split"
placement = "side"
status = "running"

[[arms]]
name = "alpha"
weight = 50.0
model = "alpha"

[[arms]]
name = "beta"
weight = 50.0
model = "beta"
"#;

/// The experiments folder and the models, in a temporary folder of the test's own, with the
/// lists the test wrote.
struct Env {
    dir: TempDir,
    /// Per model (`alpha`, `beta`), user → list.
    lists: [BTreeMap<String, List>; 2],
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let experiments = dir.path().join("experiments");
        std::fs::create_dir_all(&experiments).expect("mkdir experiments");
        for (name, text) in [
            ("placements.toml", PLACEMENTS_TOML),
            ("home-interleave.toml", INTERLEAVE_TOML),
            ("aa-interleave.toml", AA_TOML),
            ("side-split.toml", SPLIT_TOML),
        ] {
            std::fs::write(experiments.join(name), text).expect("write experiment");
        }
        for (id, placement, lines) in [
            (
                "half-interleave",
                "half",
                "status = \"running\"\ntraffic = [0.0, 50.0]\nstart = 2020-01-01T00:00:00Z\nend = 2099-01-01T00:00:00Z",
            ),
            ("paused-interleave", "paused", "status = \"paused\""),
            (
                "later-interleave",
                "later",
                "status = \"running\"\nstart = 2098-01-01T00:00:00Z",
            ),
        ] {
            std::fs::write(
                experiments.join(format!("{id}.toml")),
                scheduled_toml(id, placement, lines),
            )
            .expect("write experiment");
        }
        let models = dir.path().join("models");
        let mut lists: [BTreeMap<String, List>; 2] = Default::default();
        for (model, name) in ARMS.iter().enumerate() {
            let rows: Vec<(String, List)> = users_of(model)
                .into_iter()
                .map(|u| {
                    let list = ranked_list(model, &u);
                    (u, list)
                })
                .collect();
            lists[model] = rows.iter().cloned().collect();
            let half = rows.len() / 2;
            SparkOutput::nested()
                .user_id(Id::Utf8)
                .part(rows[..half].to_vec())
                .part(rows[half..].to_vec())
                .write(&models.join(name));
        }
        SparkOutput::global()
            .items((1..=5).map(|i| (i, 6.0 - i as f32)).collect())
            .write(&models.join("popular"));
        Env { dir, lists }
    }

    fn experiments(&self) -> PathBuf {
        self.dir.path().join("experiments")
    }

    fn models(&self) -> PathBuf {
        self.dir.path().join("models")
    }

    /// `user`'s list in model `model` (0 = `alpha`, 1 = `beta`).
    fn list(&self, model: usize, user: &str) -> &List {
        self.lists[model]
            .get(user)
            .unwrap_or_else(|| panic!("model {} has no user {user}", ARMS[model]))
    }

    /// The item ids of `user`'s list in `model`, best first, keeping those `keep` accepts.
    fn ids(&self, model: usize, user: &str, keep: impl Fn(&(String, f32)) -> bool) -> Vec<String> {
        self.list(model, user)
            .iter()
            .filter(|e| keep(e))
            .map(|(i, _)| i.clone())
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Where the counts live: memory, one Redis node, a Redis Cluster
// ---------------------------------------------------------------------------------------------

/// A gateway over `env` in `mode`, with the Redis it needs (kept alive by the caller).
async fn launch(env: &Env, mode: Mode) -> (TestGateway, Redis) {
    launch_with(env, mode, |_| {}).await
}

/// [`launch`] with settings changed by `tweak`.
async fn launch_with(env: &Env, mode: Mode, tweak: impl FnOnce(&mut Settings)) -> (TestGateway, Redis) {
    let redis = Redis::start_in_place(mode);
    let mut settings = gateway::replica_settings(&env.experiments(), &env.models(), &redis.url());
    tweak(&mut settings);
    let gw = TestGateway::launch_up(&settings).await;
    (gw, redis)
}

// ---------------------------------------------------------------------------------------------
// Pages, events and results as a client and an analyst see them
// ---------------------------------------------------------------------------------------------

/// One served item.
#[derive(Debug, Clone, PartialEq)]
struct Shown {
    item: String,
    /// The `team` field; `None` when the item has none.
    team: Option<String>,
    rank: u64,
    score: f32,
}

/// What an interleave test reads of a page's items beyond their ids: the team each was drawn
/// from, its rank and its score.
trait Teams {
    /// Every item of the page, as served.
    fn shown(&self) -> Vec<Shown>;

    /// The item ids, in page order.
    fn ids(&self) -> Vec<String>;

    /// The team index (into `arms`) of each item; panics on an item without a team or with
    /// another name.
    fn teams(&self, arms: [&str; 2]) -> Vec<usize>;

    /// `(item, team index)` of each item.
    fn merged(&self, arms: [&str; 2]) -> Vec<(String, usize)> {
        self.ids().into_iter().zip(self.teams(arms)).collect()
    }
}

impl Teams for Page {
    fn shown(&self) -> Vec<Shown> {
        self.body["items"]
            .as_array()
            .unwrap_or_else(|| panic!("no items: {}", self.body))
            .iter()
            .map(|i| Shown {
                item: i["item_id"].as_str().expect("string item_id").to_string(),
                team: i.get("team").map(|t| {
                    t.as_str()
                        .unwrap_or_else(|| panic!("team is not a string: {i}"))
                        .to_string()
                }),
                rank: i["rank"].as_u64().expect("rank"),
                score: i["score"].as_f64().expect("score") as f32,
            })
            .collect()
    }

    fn ids(&self) -> Vec<String> {
        self.items.clone()
    }

    fn teams(&self, arms: [&str; 2]) -> Vec<usize> {
        self.shown()
            .iter()
            .map(|s| {
                let team = s
                    .team
                    .as_deref()
                    .unwrap_or_else(|| panic!("item {} has no team: {}", s.item, self.body));
                arms.iter()
                    .position(|a| *a == team)
                    .unwrap_or_else(|| panic!("team {team:?} is no arm of {arms:?}: {}", self.body))
            })
            .collect()
    }
}

/// An interleaved page of `home-interleave` (or of `experiment`): arm `interleaved`, not
/// forced, no fallback, every item with a team.
fn assert_interleaved(page: &Page, experiment: &str, arms: [&str; 2]) {
    let body = &page.body;
    assert_eq!(body["arm"], INTERLEAVED, "{body}");
    assert_eq!(body["experiment"], experiment, "{body}");
    assert_eq!(body["forced"], false, "{body}");
    assert!(body.get("fallback_reason").is_none(), "not a fallback: {body}");
    assert!(!page.shown().is_empty(), "{body}");
    page.teams(arms);
}

/// `body` without `age_seconds`, which may tick between two reads.
fn ageless(mut body: Value) -> Value {
    body.as_object_mut().expect("object").remove("age_seconds");
    body
}

/// The per-arm series `name{arm, experiment, placement}` of `/metrics` text.
fn arm_sample(text: &str, name: &str, experiment: &str, placement: &str, arm: &str) -> f64 {
    gateway::sample(
        text,
        name,
        &[("arm", arm), ("experiment", experiment), ("placement", placement)],
    )
}

// ---------------------------------------------------------------------------------------------
// The ledger: what the test served and got accepted, per team and per user
// ---------------------------------------------------------------------------------------------

/// Impressions and clicks per team, and clicks per team per user, of counted interleaved
/// pages whose events were accepted.
#[derive(Debug, Default, Clone)]
struct Ledger {
    impressions: [u64; 2],
    clicks: [u64; 2],
    per_user: BTreeMap<String, [u64; 2]>,
}

impl Ledger {
    fn impression(&mut self, team: usize) {
        self.impressions[team] += 1;
    }

    fn click(&mut self, user: &str, team: usize) {
        self.clicks[team] += 1;
        self.per_user.entry(user.to_string()).or_default()[team] += 1;
    }
}

/// The interleaving statistics, computed from a ledger by the definitions of the contract.
#[derive(Debug, Clone, PartialEq)]
struct Expected {
    wins: [u64; 2],
    ties: u64,
    /// Users compared: wins of either arm and ties.
    n: u64,
    preference: Option<f64>,
    interval: Option<(f64, f64)>,
    p_value: Option<f64>,
}

/// `P(X <= k)` for `X ~ Binomial(m, 1/2)`, summed term by term in log space.
fn binomial_cdf_half(k: u64, m: u64) -> f64 {
    let mut log_pmf = m as f64 * 0.5f64.ln();
    let mut cdf = 0.0;
    for i in 0..=k.min(m) {
        cdf += log_pmf.exp();
        log_pmf += ((m - i) as f64).ln() - ((i + 1) as f64).ln();
    }
    cdf
}

/// Two-sided exact sign test of `a` successes in `a + b` trials at p = 1/2.
fn sign_test(a: u64, b: u64) -> f64 {
    (2.0 * binomial_cdf_half(a.min(b), a + b)).min(1.0)
}

fn expected(ledger: &Ledger) -> Expected {
    let (mut wins, mut ties) = ([0u64; 2], 0u64);
    let mut scores = Vec::new();
    for clicks in ledger.per_user.values() {
        match clicks[0].cmp(&clicks[1]) {
            std::cmp::Ordering::Greater => {
                wins[0] += 1;
                scores.push(1.0);
            }
            std::cmp::Ordering::Less => {
                wins[1] += 1;
                scores.push(0.0);
            }
            std::cmp::Ordering::Equal if clicks[0] > 0 => {
                ties += 1;
                scores.push(0.5);
            }
            std::cmp::Ordering::Equal => {}
        }
    }
    let n = wins[0] + wins[1] + ties;
    assert_eq!(n as usize, scores.len());
    let preference = (n > 0).then(|| (wins[0] as f64 + ties as f64 / 2.0) / n as f64 - 0.5);
    let interval = (n > 1).then(|| {
        let mean = scores.iter().sum::<f64>() / n as f64;
        let variance = scores.iter().map(|s| (s - mean) * (s - mean)).sum::<f64>() / (n - 1) as f64;
        let half = Z95 * (variance / n as f64).sqrt();
        let delta = preference.expect("n > 0");
        (delta - half, delta + half)
    });
    let p_value = (wins[0] + wins[1] > 0).then(|| sign_test(wins[0], wins[1]));
    Expected {
        wins,
        ties,
        n,
        preference,
        interval,
        p_value,
    }
}

/// Whether `got` is a number within 1e-9 of `want`; for `relative`, also within a relative
/// 1e-9 of it (a p-value of 1e-25 must not pass for 0).
fn close(got: &Value, want: f64, relative: bool) -> bool {
    got.as_f64()
        .is_some_and(|g| (g - want).abs() <= 1e-9 && (!relative || (g - want).abs() <= 1e-9 * want.abs()))
}

/// The reason an interleaving statistic is undefined: under `interleaving.undefined` or, failing
/// that, the results' own `undefined`, by field name.
fn reason<'a>(body: &'a Value, field: &str) -> Option<&'a str> {
    body["interleaving"]["undefined"][field]
        .as_str()
        .or_else(|| body["undefined"][field].as_str())
}

/// Asserts that `field` of the interleaving object is absent (or null) with a non-empty reason.
fn assert_undefined(body: &Value, field: &str) {
    let value = &body["interleaving"][field];
    assert!(value.is_null(), "{field} must be absent: {body}");
    assert!(
        reason(body, field).is_some_and(|r| !r.trim().is_empty()),
        "{field} is absent without a reason under `undefined`: {body}"
    );
}

/// Asserts that `field` of the interleaving object is `want` within 1e-9, with no reason.
fn assert_defined(body: &Value, field: &str, want: f64) {
    let value = &body["interleaving"][field];
    assert!(
        close(value, want, field == "p_value"),
        "{field} = {value}, want {want}: {body}"
    );
    assert!(
        reason(body, field).is_none(),
        "{field} has a value and a reason: {body}"
    );
}

/// Asserts the results of an interleave experiment equal `ledger` and its statistics: kind,
/// per-team impressions, clicks and wins, and the interleaving object.
fn assert_results(body: &Value, arms: [&str; 2], ledger: &Ledger) -> Expected {
    let want = expected(ledger);
    assert_eq!(body["kind"], "interleave", "{body}");
    let got_arms = body["arms"].as_array().unwrap_or_else(|| panic!("no arms: {body}"));
    let names: Vec<&str> = got_arms.iter().filter_map(|a| a["name"].as_str()).collect();
    assert_eq!(names, arms, "{body}");
    for (i, arm) in got_arms.iter().enumerate() {
        assert_eq!(arm["control"], i == 0, "{arm}");
        assert_eq!(
            arm["impressions"], ledger.impressions[i],
            "{}.impressions: {body}",
            arms[i]
        );
        assert_eq!(arm["clicks"], ledger.clicks[i], "{}.clicks: {body}", arms[i]);
        assert_eq!(arm["wins"], want.wins[i], "{}.wins: {body}", arms[i]);
    }
    let interleaving = &body["interleaving"];
    assert!(interleaving.is_object(), "an interleaving object: {body}");
    assert_eq!(interleaving["users_compared"], want.n, "users_compared: {body}");
    assert_eq!(interleaving["ties"], want.ties, "ties: {body}");
    match want.preference {
        Some(delta) => assert_defined(body, "preference", delta),
        None => assert_undefined(body, "preference"),
    }
    match want.interval {
        Some((low, high)) => {
            assert_defined(body, "preference_low", low);
            assert_defined(body, "preference_high", high);
        }
        None => {
            assert_undefined(body, "preference_low");
            assert_undefined(body, "preference_high");
        }
    }
    match want.p_value {
        Some(p) => assert_defined(body, "p_value", p),
        None => assert_undefined(body, "p_value"),
    }
    want
}

// ---------------------------------------------------------------------------------------------
// Team draft, checked from the lists the test wrote
// ---------------------------------------------------------------------------------------------

/// The state of a team draft over two ranked lists after some picks.
#[derive(Clone)]
struct Draft<'a> {
    lists: [&'a [String]; 2],
    used: HashSet<&'a str>,
    picks: [usize; 2],
}

impl<'a> Draft<'a> {
    fn new(lists: [&'a [String]; 2]) -> Draft<'a> {
        Draft {
            lists,
            used: HashSet::new(),
            picks: [0, 0],
        }
    }

    /// Team `t`'s highest-ranked item not yet in the merged list.
    fn best(&self, t: usize) -> Option<&'a str> {
        self.lists[t]
            .iter()
            .map(String::as_str)
            .find(|i| !self.used.contains(i))
    }

    /// The picks the rule allows next, as `(item, team)`: the team with fewer picks takes its
    /// best unused item; on equal picks either (the coin); a team with nothing left stops.
    fn options(&self) -> Vec<(&'a str, usize)> {
        match (self.best(0), self.best(1)) {
            (None, None) => vec![],
            (Some(a), None) => vec![(a, 0)],
            (None, Some(b)) => vec![(b, 1)],
            (Some(a), Some(b)) => match self.picks[0].cmp(&self.picks[1]) {
                std::cmp::Ordering::Less => vec![(a, 0)],
                std::cmp::Ordering::Greater => vec![(b, 1)],
                std::cmp::Ordering::Equal => vec![(a, 0), (b, 1)],
            },
        }
    }

    fn take(&mut self, item: &'a str, team: usize) {
        self.used.insert(item);
        self.picks[team] += 1;
    }
}

/// Checks `merged` (each item with its team index) against the team draft of `lists`, step by
/// step: no duplicate, every item of its team's list and that team's best unused one, the team
/// with fewer picks picking while it has an item left (so pick counts never differ by more than
/// one while both can pick); with `complete`, every item of either list appears.
fn check_draft(lists: [&[String]; 2], merged: &[(String, usize)], complete: bool) -> Result<(), String> {
    let mut draft = Draft::new(lists);
    let mut seen = HashSet::new();
    for (k, (item, team)) in merged.iter().enumerate() {
        if !seen.insert(item.as_str()) {
            return Err(format!("item {item} twice (position {k}) in {merged:?}"));
        }
        if !lists[*team].contains(item) {
            return Err(format!(
                "position {k}: item {item} is not in team {team}'s list {:?}",
                lists[*team]
            ));
        }
        let both_can_pick = draft.best(0).is_some() && draft.best(1).is_some();
        if both_can_pick && draft.picks[0].abs_diff(draft.picks[1]) > 1 {
            return Err(format!("before position {k}: picks {:?} in {merged:?}", draft.picks));
        }
        let options = draft.options();
        let Some(&(allowed, _)) = options.iter().find(|(_, t)| t == team) else {
            return Err(format!(
                "position {k}: team {team} picked {item} out of turn (picks so far {:?}, allowed {options:?}) in {merged:?}",
                draft.picks
            ));
        };
        if allowed != item {
            return Err(format!(
                "position {k}: team {team} picked {item}, but its best unused item is {allowed} ({merged:?})"
            ));
        }
        draft.take(allowed, *team);
    }
    if complete && !draft.options().is_empty() {
        return Err(format!("items left unpicked: {:?} after {merged:?}", draft.options()));
    }
    Ok(())
}

/// Whether some sequence of coins makes the team draft of `lists` hold `page` at positions
/// `offset..offset + page.len()`.
fn fits_a_draft(lists: [&[String]; 2], offset: usize, page: &[(String, usize)]) -> bool {
    fn go(draft: Draft<'_>, at: usize, offset: usize, page: &[(String, usize)]) -> bool {
        if at == offset + page.len() {
            return true;
        }
        for (item, team) in draft.options() {
            if at >= offset && (page[at - offset].0 != item || page[at - offset].1 != team) {
                continue;
            }
            let mut next = draft.clone();
            next.take(item, team);
            if go(next, at + 1, offset, page) {
                return true;
            }
        }
        false
    }
    go(Draft::new(lists), 0, offset, page)
}

/// The distinct items of two lists.
fn union(lists: [&[String]; 2]) -> BTreeSet<String> {
    lists.iter().flat_map(|l| l.iter().cloned()).collect()
}

/// The oracle of these tests is itself tested: [`check_draft`] and [`fits_a_draft`] accept the
/// drafts worked out by hand here and refuse merges team draft cannot give (an item twice, a
/// team's worse item first, a team picking out of turn, a list left unfinished, an item of the
/// wrong list), so an HTTP test passing on them means something.
#[test]
fn the_draft_checker_tells_team_drafts_from_other_merges() {
    let s = |items: &[&str]| items.iter().map(|i| i.to_string()).collect::<Vec<String>>();
    let m = |entries: &[(&str, usize)]| {
        entries
            .iter()
            .map(|(i, t)| (i.to_string(), *t))
            .collect::<Vec<(String, usize)>>()
    };
    let (a, b) = (s(&["1", "2", "3"]), s(&["2", "4"]));
    // Coin to a: a takes 1, b takes 2, coin to b: b takes 4, a takes 3.
    let valid = m(&[("1", 0), ("2", 1), ("4", 1), ("3", 0)]);
    check_draft([&a, &b], &valid, true).expect("a draft");
    // Coin to b: b takes 2, a takes 1, then a (equal picks, coin) takes 3, b takes 4.
    let valid_too = m(&[("2", 1), ("1", 0), ("3", 0), ("4", 1)]);
    check_draft([&a, &b], &valid_too, true).expect("a draft");
    for (wrong, what) in [
        (m(&[("1", 0), ("1", 1), ("2", 1), ("3", 0)]), "an item twice"),
        (m(&[("2", 0), ("1", 1)]), "a's second item first, and 1 is not b's"),
        (m(&[("3", 0), ("2", 1), ("4", 1), ("1", 0)]), "a's worse item first"),
        (m(&[("1", 0), ("2", 0)]), "a picks again while b is behind"),
        (m(&[("1", 0), ("2", 1), ("3", 0)]), "b's 4 left out"),
        (m(&[("1", 0), ("4", 1)]), "b skips its best unused item"),
    ] {
        assert!(check_draft([&a, &b], &wrong, true).is_err(), "{what}: {wrong:?}");
    }
    // The prefix of a draft is accepted as a prefix only.
    let prefix = m(&[("1", 0), ("2", 1)]);
    check_draft([&a, &b], &prefix, false).expect("a prefix");
    assert!(check_draft([&a, &b], &prefix, true).is_err());
    // Slices: positions 2..4 of some draft, or not.
    assert!(fits_a_draft([&a, &b], 2, &m(&[("4", 1), ("3", 0)])));
    assert!(fits_a_draft([&a, &b], 2, &m(&[("3", 0), ("4", 1)])));
    assert!(fits_a_draft([&a, &b], 1, &m(&[("1", 0)])), "b took 2 first");
    assert!(!fits_a_draft([&a, &b], 2, &m(&[("3", 1), ("4", 0)])), "teams swapped");
    assert!(
        !fits_a_draft([&a, &b], 2, &m(&[("4", 1), ("3", 0), ("5", 0)])),
        "past the end"
    );
    assert!(!fits_a_draft([&a, &b], 0, &m(&[("4", 1)])), "b's second item first");
    // Identical lists: pairs of one item of each team, in the list's order.
    let same = s(&["7", "8", "9"]);
    check_draft([&same, &same], &m(&[("7", 1), ("8", 0), ("9", 0)]), true).expect("a draft");
    assert!(check_draft([&same, &same], &m(&[("7", 1), ("8", 1), ("9", 0)]), true).is_err());
    assert!(check_draft([&same, &same], &m(&[("8", 0), ("7", 1), ("9", 0)]), true).is_err());
}

// ---------------------------------------------------------------------------------------------
// 1. A simulated population
// ---------------------------------------------------------------------------------------------

/// Click probability of an item of the better arm (`beta`) and of the other.
const P_BETTER: f64 = 0.30;
const P_WORSE: f64 = 0.12;

/// 300 users each served one interleaved page; every item gets an impression and, by a seeded
/// RNG, a click with probability 0.30 when its team is `beta` and 0.12 when `alpha`. The
/// results equal what the test computes from the responses' teams and its own clicks: per-team
/// impressions and clicks to the unit (and the same in `impressions_total`/`clicks_total` by
/// team), wins, ties, users compared, the preference Δ, its interval and the exact sign test
/// within 1e-9; and they favour `beta` (Δ < 0, the interval below 0) with p < 0.05.
async fn population_prefers_the_better_arm(mode: Mode) {
    let env = Env::new();
    let (gw, _redis) = launch(&env, mode).await;
    let mut rng = Rng::new(0x1D7E_41EA_5EED);
    let mut ledger = Ledger::default();
    let mut events = Vec::new();
    for u in 1..=POPULATION {
        let user = u.to_string();
        let page = recommend(&gw, &user, &format!("placement={PLACEMENT}")).await;
        assert_interleaved(&page, EXPERIMENT, ARMS);
        assert_eq!(page.shown().len(), 10, "a full default page: {}", page.body);
        for (item, team) in page.merged(ARMS) {
            events.push(event(
                "impression",
                &page.token,
                &item,
                Some(&format!("{user}-i-{item}")),
            ));
            ledger.impression(team);
            let p = if team == 1 { P_BETTER } else { P_WORSE };
            if rng.chance(p) {
                events.push(event("click", &page.token, &item, Some(&format!("{user}-c-{item}"))));
                ledger.click(&user, team);
            }
        }
    }
    post_all_accepted(&gw, &events, 200).await;

    // Exact at once: the events were accepted (counted in Redis in the same step, with Redis).
    let body = results(&gw, EXPERIMENT, "").await;
    assert_eq!(body["counts"], mode.counts(), "{body}");
    let want = assert_results(&body, ARMS, &ledger);
    assert!(want.n > 200, "most users clicked something: {want:?}");
    let delta = want.preference.expect("defined");
    assert!(delta < 0.0, "the preference favours beta: {want:?}");
    let high = body["interleaving"]["preference_high"].as_f64().expect("defined");
    assert!(high < 0.0, "the interval excludes 0, on beta's side: {body}");
    let p = body["interleaving"]["p_value"].as_f64().expect("defined");
    assert!(p < 0.05, "significant: {body}");
    assert!(want.wins[1] > want.wins[0], "{want:?}");

    // Each interleaved page showed both arms: it is an exposure of each, as a split page is of
    // its arm ("responses served to counted users"), once flushed; users within the ±2% of the
    // HyperLogLog sketches.
    wait_flushed(&gw, FLUSH, WAIT).await;
    let body = results(&gw, EXPERIMENT, "").await;
    for arm in body["arms"].as_array().expect("arms") {
        assert_eq!(arm["exposures"], u64::from(POPULATION), "one exposure a page: {arm}");
        let users = arm["users"].as_u64().expect("users");
        assert!(
            users.abs_diff(u64::from(POPULATION)) <= 6,
            "{POPULATION} users ±2%: {arm}"
        );
    }
    assert_results(&body, ARMS, &ledger);

    // The per-arm Prometheus counters credit the teams alike.
    let text = gw.metrics().await;
    for (i, arm) in ARMS.iter().enumerate() {
        assert_eq!(
            arm_sample(&text, "impressions_total", EXPERIMENT, PLACEMENT, arm),
            ledger.impressions[i] as f64,
            "impressions_total{{arm={arm}}}"
        );
        assert_eq!(
            arm_sample(&text, "clicks_total", EXPERIMENT, PLACEMENT, arm),
            ledger.clicks[i] as f64,
            "clicks_total{{arm={arm}}}"
        );
    }
    for name in ["impressions_total", "clicks_total"] {
        assert_eq!(
            arm_sample(&text, name, EXPERIMENT, PLACEMENT, INTERLEAVED),
            0.0,
            "{name}: events credit a team, never `interleaved`"
        );
    }
    gw.stop().await;
}

redis_modes! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    population_prefers_the_better_arm {
        population_prefers_the_better_arm_in_memory => Memory,
        population_prefers_the_better_arm_on_one_redis_node => Node,
        population_prefers_the_better_arm_on_a_redis_cluster => Cluster,
    }
}

// ---------------------------------------------------------------------------------------------
// 2. A/A
// ---------------------------------------------------------------------------------------------

/// Both arms serve model `alpha`. Every page is `alpha`'s list in its own order, ranks 1, 2, …,
/// and positions 2k and 2k+1 always go to different teams (equal picks before each pair, so
/// the coin only decides which of the two comes first). Clicks are decided by a seeded RNG per
/// pair of positions, blind to the teams (both items of a pair or neither), so every clicking
/// user is a tie, whatever the coins: 0 wins each, Δ = 0, an interval [0, 0] that contains 0,
/// and no p-value (no user was won), with its reason.
async fn aa_interleave_interval_contains_zero(mode: Mode) {
    let env = Env::new();
    let (gw, _redis) = launch(&env, mode).await;
    let mut rng = Rng::new(0xAA_AA);
    let mut ledger = Ledger::default();
    let mut events = Vec::new();
    for u in 1..=120 {
        let user = u.to_string();
        let page = recommend(&gw, &user, &format!("placement={AA_PLACEMENT}")).await;
        assert_interleaved(&page, AA_EXPERIMENT, AA_ARMS);
        let list = env.ids(0, &user, |_| true);
        assert_eq!(page.ids(), list[..10], "the model's order: {}", page.body);
        let ranks: Vec<u64> = page.shown().iter().map(|s| s.rank).collect();
        assert_eq!(ranks, (1..=10).collect::<Vec<u64>>(), "{}", page.body);
        let teams = page.teams(AA_ARMS);
        for pair in teams.chunks(2) {
            assert_ne!(pair[0], pair[1], "one item of each team per pair: {}", page.body);
        }
        for (item, team) in page.merged(AA_ARMS) {
            events.push(event("impression", &page.token, &item, None));
            ledger.impression(team);
        }
        for pair in page.merged(AA_ARMS).chunks(2) {
            if rng.chance(0.3) {
                for (item, team) in pair {
                    events.push(event("click", &page.token, item, None));
                    ledger.click(&user, *team);
                }
            }
        }
    }
    post_all_accepted(&gw, &events, 200).await;
    let body = results(&gw, AA_EXPERIMENT, "").await;
    let want = assert_results(&body, AA_ARMS, &ledger);
    assert!(want.ties > 50, "{want:?}");
    assert_eq!(want.wins, [0, 0]);
    let (low, high) = (
        body["interleaving"]["preference_low"].as_f64().expect("low"),
        body["interleaving"]["preference_high"].as_f64().expect("high"),
    );
    assert!(low <= 0.0 && 0.0 <= high, "the interval contains 0: {body}");
    assert_eq!(ledger.clicks[0], ledger.clicks[1], "pairs credit both teams alike");
    gw.stop().await;
}

redis_modes! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    aa_interleave_interval_contains_zero {
        aa_interleave_interval_contains_zero_in_memory => Memory,
        aa_interleave_interval_contains_zero_on_one_redis_node => Node,
        aa_interleave_interval_contains_zero_on_a_redis_cluster => Cluster,
    }
}

// ---------------------------------------------------------------------------------------------
// 3. The merge over HTTP
// ---------------------------------------------------------------------------------------------

/// Asserts what every item of an interleaved page of `user` carries: `rank` its 1-based rank
/// in its team's (unfiltered) list, `score` its team's score for it.
fn assert_ranks_and_scores(env: &Env, page: &Page) {
    for (shown, team) in page.shown().iter().zip(page.teams(ARMS)) {
        let list = env.list(team, &page.user);
        let at = list
            .iter()
            .position(|(i, _)| *i == shown.item)
            .unwrap_or_else(|| panic!("{} not in {}'s list: {}", shown.item, ARMS[team], page.body));
        assert_eq!(
            shown.rank,
            at as u64 + 1,
            "rank of {} in {}'s model: {}",
            shown.item,
            ARMS[team],
            page.body
        );
        assert_eq!(
            shown.score, list[at].1,
            "score of {} in {}'s model: {}",
            shown.item, ARMS[team], page.body
        );
    }
}

/// For 30 users, the whole merged list (`limit=100`) is a team draft of the two lists the test
/// wrote: no duplicates, each item its team's best unused one, the team behind picking next
/// (counts within one while both can pick), every item of either list present, `total` the size
/// of their union; ranks and scores are the team's; `model` and `model_version` name both arms
/// in arm order. `exclude` (each list's top item and a shared item) and `min_score` (which cuts
/// `beta` to 5 items and `alpha` to 17) are applied to both lists before the merge: the page is
/// a complete draft of the filtered lists. Pages of 5 (`offset` 0, 5, 10, …) each fit a draft of
/// the lists at their offset, whatever the coin, with `total` and `next_offset` consistent. The
/// coin differs between responses (either team picks first over 40 requests). A split
/// experiment's items carry no `team`, and its results say `kind = "split"`.
async fn merged_lists_follow_team_draft(mode: Mode) {
    let env = Env::new();
    let (gw, _redis) = launch(&env, mode).await;

    let ready = gw.ok("/ready").await;
    let version = |model: &str| {
        gateway::model_status(&ready, model)
            .and_then(|m| m["version"].as_str())
            .unwrap_or_else(|| panic!("no version of {model}: {ready}"))
            .to_string()
    };
    let versions = format!("{},{}", version("alpha"), version("beta"));

    for u in 1..=30 {
        let user = u.to_string();
        let a = env.ids(0, &user, |_| true);
        let b = env.ids(1, &user, |_| true);

        // The whole list.
        let page = recommend(&gw, &user, &format!("placement={PLACEMENT}&limit=100")).await;
        assert_interleaved(&page, EXPERIMENT, ARMS);
        assert_eq!(page.body["model"], "alpha,beta", "{}", page.body);
        assert_eq!(page.body["model_version"], versions.as_str(), "{}", page.body);
        let merged = page.merged(ARMS);
        check_draft([&a, &b], &merged, true).unwrap_or_else(|e| panic!("user {user}: {e}"));
        let all = union([&a, &b]);
        assert_eq!(
            page.ids().into_iter().collect::<BTreeSet<_>>(),
            all,
            "a ∪ b: {}",
            page.body
        );
        assert_eq!(page.body["total"], all.len() as u64, "{}", page.body);
        assert!(page.body.get("next_offset").is_none(), "{}", page.body);
        assert_ranks_and_scores(&env, &page);

        // `exclude`: each list's top item and, when there is one, an item both lists hold.
        let mut excluded: Vec<String> = vec![a[0].clone(), b[0].clone()];
        if let Some(shared) = a.iter().find(|i| b.contains(i) && !excluded.contains(i)) {
            excluded.push(shared.clone());
        }
        let query = format!("&limit=100&exclude={}", excluded.join(","));
        let page = recommend(&gw, &user, &format!("placement={PLACEMENT}{query}")).await;
        assert_interleaved(&page, EXPERIMENT, ARMS);
        let keep = |(i, _): &(String, f32)| !excluded.contains(i);
        let (fa, fb) = (env.ids(0, &user, keep), env.ids(1, &user, keep));
        for item in page.ids() {
            assert!(!excluded.contains(&item), "excluded {item} served: {}", page.body);
        }
        check_draft([&fa, &fb], &page.merged(ARMS), true)
            .unwrap_or_else(|e| panic!("user {user}, exclude {excluded:?}: {e}"));
        assert_eq!(page.body["total"], union([&fa, &fb]).len() as u64, "{}", page.body);
        assert_ranks_and_scores(&env, &page);

        // `min_score = 7`: alpha keeps scores 9 − r/8 >= 7 (r <= 16), beta 8 − r/4 >= 7 (r <= 4).
        let page = recommend(&gw, &user, &format!("placement={PLACEMENT}&limit=100&min_score=7")).await;
        assert_interleaved(&page, EXPERIMENT, ARMS);
        let keep = |(_, s): &(String, f32)| *s >= 7.0;
        let (fa, fb) = (env.ids(0, &user, keep), env.ids(1, &user, keep));
        assert_eq!((fa.len(), fb.len()), (a.len().min(17), 5), "the test's own cut");
        check_draft([&fa, &fb], &page.merged(ARMS), true).unwrap_or_else(|e| panic!("user {user}, min_score 7: {e}"));
        assert_eq!(page.body["total"], union([&fa, &fb]).len() as u64, "{}", page.body);
        for shown in &page.shown() {
            assert!(shown.score >= 7.0, "{}", page.body);
        }
        assert_ranks_and_scores(&env, &page);

        // Pages of 5: each a slice of some draft, whatever the coins of each request.
        let total = all.len();
        let mut offset = 0;
        while offset < total {
            let query = format!("&limit=5&offset={offset}");
            let page = recommend(&gw, &user, &format!("placement={PLACEMENT}{query}")).await;
            assert_interleaved(&page, EXPERIMENT, ARMS);
            assert_eq!(page.body["total"], total as u64, "{}", page.body);
            assert_eq!(page.body["offset"], offset as u64, "{}", page.body);
            assert_eq!(page.shown().len(), 5.min(total - offset), "{}", page.body);
            if offset + 5 < total {
                assert_eq!(page.body["next_offset"], offset as u64 + 5, "{}", page.body);
            } else {
                assert!(page.body.get("next_offset").is_none(), "{}", page.body);
            }
            assert!(
                fits_a_draft([&a, &b], offset, &page.merged(ARMS)),
                "user {user}: page at offset {offset} is no slice of a team draft of {a:?} and {b:?}: {}",
                page.body
            );
            assert_ranks_and_scores(&env, &page);
            offset += 5;
        }
        // Past the end: an empty page with the same total.
        let page = recommend(&gw, &user, &format!("placement={PLACEMENT}&limit=5&offset={total}")).await;
        assert!(page.shown().is_empty(), "{}", page.body);
        assert_eq!(page.body["total"], total as u64, "{}", page.body);
    }

    // The coin depends on each response's token nonce: over 40 requests of one user, each
    // team has the first pick at least once (a fair coin fails this with probability 2^-39).
    let mut first_picks = BTreeSet::new();
    for _ in 0..40 {
        let page = recommend(&gw, "1", &format!("placement={PLACEMENT}&limit=1")).await;
        first_picks.insert(page.teams(ARMS)[0]);
    }
    assert_eq!(first_picks, BTreeSet::from([0, 1]), "the first pick's team varies");

    // A split experiment: one arm's list, no team on any item; its results say so.
    for u in 1..=10 {
        let user = u.to_string();
        let page = recommend(&gw, &user, &format!("placement={SPLIT_PLACEMENT}")).await;
        assert_eq!(page.body["experiment"], SPLIT_EXPERIMENT, "{}", page.body);
        let arm = page.body["arm"].as_str().expect("arm");
        let model = ARMS
            .iter()
            .position(|a| *a == arm)
            .unwrap_or_else(|| panic!("a split arm: {}", page.body));
        assert_eq!(page.ids(), env.ids(model, &user, |_| true)[..10], "{}", page.body);
        for item in page.body["items"].as_array().expect("items") {
            assert!(item.get("team").is_none(), "no team in a split response: {}", page.body);
        }
    }
    let split = results(&gw, SPLIT_EXPERIMENT, "").await;
    assert_eq!(split["kind"], "split", "{split}");
    let interleave = results(&gw, EXPERIMENT, "").await;
    assert_eq!(interleave["kind"], "interleave", "{interleave}");
    gw.stop().await;
}

redis_modes! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    merged_lists_follow_team_draft {
        merged_lists_follow_team_draft_in_memory => Memory,
        merged_lists_follow_team_draft_on_one_redis_node => Node,
        merged_lists_follow_team_draft_on_a_redis_cluster => Cluster,
    }
}

// ---------------------------------------------------------------------------------------------
// 3b. Slice, status and schedule
// ---------------------------------------------------------------------------------------------

/// The items of the placement default (`popular`), for everyone no experiment covers.
const POPULAR: [&str; 5] = ["1", "2", "3", "4", "5"];

/// Slice, status and schedule of an interleave experiment work as for a split one (DESIGN.md
/// §3.1, with `B` computed here): on `half` (traffic [0, 50), inside its schedule) exactly the
/// users with `B("placement:half", u) < 5000` get an interleaved page of both lists, the others
/// the placement default (`arm = "default"`, no experiment, no team); a paused experiment and
/// one whose schedule starts in 2098 cover nobody.
async fn slice_status_and_schedule_apply(mode: Mode) {
    let env = Env::new();
    let (gw, _redis) = launch(&env, mode).await;
    let mut covered = 0;
    for u in 1..=80 {
        let user = u.to_string();
        let inside = common::assignment::bucket("placement:half", &user) < 5_000;
        let page = recommend(&gw, &user, "placement=half&limit=100").await;
        if inside {
            covered += 1;
            assert_interleaved(&page, "half-interleave", ARMS);
            let (a, b) = (env.ids(0, &user, |_| true), env.ids(1, &user, |_| true));
            check_draft([&a, &b], &page.merged(ARMS), true).unwrap_or_else(|e| panic!("user {user}: {e}"));
        } else {
            assert_default(&page);
        }
        for placement in ["paused", "later"] {
            assert_default(&recommend(&gw, &user, &format!("placement={placement}")).await);
        }
    }
    assert!((20..=60).contains(&covered), "about half of 80 users: {covered}");
    gw.stop().await;
}

/// A page of the placement default: no experiment, `arm = "default"`, `popular`'s items, no team.
fn assert_default(page: &Page) {
    let body = &page.body;
    assert_eq!(body["arm"], "default", "{body}");
    assert!(body.get("experiment").is_none_or(Value::is_null), "{body}");
    assert_eq!(page.ids(), POPULAR, "{body}");
    assert!(page.shown().iter().all(|s| s.team.is_none()), "no team: {body}");
}

redis_modes! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    slice_status_and_schedule_apply {
        slice_status_and_schedule_apply_in_memory => Memory,
        slice_status_and_schedule_apply_on_one_redis_node => Node,
        slice_status_and_schedule_apply_on_a_redis_cluster => Cluster,
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Pages that are not interleaved
// ---------------------------------------------------------------------------------------------

/// After 40 users' interleaved pages and events, and once every exposure is flushed: user
/// `9001` (only in `alpha`'s model) gets `alpha`'s list alone, `fallback_reason =
/// "not_interleaved"`, every item of team `alpha`, ranks 1..10; `9002` the same with `beta`;
/// the QA user gets `beta`'s list, `forced`; a user neither model knows the placement default
/// (no team). Impressions and clicks on all three pages are
/// accepted (202, none rejected), yet the results — per-arm counts, users, exposures, wins and
/// the interleaving statistics — stay exactly what they were.
async fn pages_not_interleaved_are_not_counted(mode: Mode) {
    let env = Env::new();
    let (gw, _redis) = launch(&env, mode).await;
    let mut rng = Rng::new(0xFA11_BAC6);
    let mut ledger = Ledger::default();
    let mut events = Vec::new();
    for u in 1..=40 {
        let user = u.to_string();
        let page = recommend(&gw, &user, &format!("placement={PLACEMENT}")).await;
        assert_interleaved(&page, EXPERIMENT, ARMS);
        for (item, team) in page.merged(ARMS) {
            events.push(event("impression", &page.token, &item, None));
            ledger.impression(team);
            if rng.chance(0.25) {
                events.push(event("click", &page.token, &item, None));
                ledger.click(&user, team);
            }
        }
    }
    post_all_accepted(&gw, &events, 200).await;
    wait_flushed(&gw, FLUSH, WAIT).await;
    let before = results(&gw, EXPERIMENT, "").await;
    assert_results(&before, ARMS, &ledger);

    let mut others = Vec::new();
    for (user, team) in [(ONLY_ALPHA, 0), (ONLY_BETA, 1)] {
        let page = recommend(&gw, user, &format!("placement={PLACEMENT}")).await;
        let body = &page.body;
        assert_eq!(body["fallback_reason"], "not_interleaved", "{body}");
        assert_eq!(body["experiment"], EXPERIMENT, "{body}");
        assert_eq!(page.ids(), env.ids(team, user, |_| true)[..10], "{body}");
        assert_eq!(page.teams(ARMS), vec![team; 10], "every item {}'s: {body}", ARMS[team]);
        let ranks: Vec<u64> = page.shown().iter().map(|s| s.rank).collect();
        assert_eq!(ranks, (1..=10).collect::<Vec<u64>>(), "{body}");
        others.push(page);
    }
    // Neither model knows the user: the placement default.
    let nobody = recommend(&gw, "nobody-1", &format!("placement={PLACEMENT}")).await;
    assert_eq!(nobody.ids(), POPULAR, "the placement default: {}", nobody.body);
    assert!(nobody.shown().iter().all(|s| s.team.is_none()), "{}", nobody.body);
    let qa = recommend(&gw, QA_USER, &format!("placement={PLACEMENT}")).await;
    assert_eq!(qa.body["forced"], true, "{}", qa.body);
    assert_eq!(qa.body["arm"], "beta", "{}", qa.body);
    assert_eq!(
        qa.ids(),
        env.ids(1, QA_USER, |_| true)[..10],
        "beta's list alone: {}",
        qa.body
    );
    others.push(qa);

    let mut uncounted = Vec::new();
    for page in &others {
        for item in page.ids() {
            uncounted.push(event("impression", &page.token, &item, None));
            uncounted.push(event("click", &page.token, &item, None));
        }
    }
    post_all_accepted(&gw, &uncounted, 200).await;
    wait_flushed(&gw, FLUSH, WAIT).await;
    let after = results(&gw, EXPERIMENT, "").await;
    assert_eq!(
        ageless(after),
        ageless(before),
        "pages not interleaved (and forced ones) change no result"
    );
    gw.stop().await;
}

redis_modes! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    pages_not_interleaved_are_not_counted {
        pages_not_interleaved_are_not_counted_in_memory => Memory,
        pages_not_interleaved_are_not_counted_on_one_redis_node => Node,
        pages_not_interleaved_are_not_counted_on_a_redis_cluster => Cluster,
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Events
// ---------------------------------------------------------------------------------------------

/// `token` with the character at `at` changed to another base64url character.
fn flip(token: &str, at: usize) -> String {
    let mut chars: Vec<char> = token.chars().collect();
    chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
    let flipped: String = chars.into_iter().collect();
    assert_ne!(flipped, token);
    flipped
}

/// On a 4-item interleaved page of user 7: an item of the user's lists left off the page and
/// an unknown item are refused `item_not_served`; the page's token with one character changed
/// in its claims or in its signature, or with the first item's team bit flipped, is refused
/// `bad_signature`, and so is every single-byte change of it but the version byte's (which may
/// be `malformed_token`); an impression and a click of each item are accepted, and
/// `impressions_total` / `clicks_total` grow by exactly the page's items of each team under
/// `arm = team` (nothing under `arm = "interleaved"`), the refusals are counted by reason, and
/// the results credit the teams alike. With user 8 clicking only its first item, the two
/// compared users give one tie and one win: Δ, its interval and the sign test (p = 1) as
/// computed here; user 7 alone (n = 1) had no interval and no p-value, each with its reason.
async fn events_are_credited_to_the_item_team(mode: Mode) {
    let env = Env::new();
    let (gw, _redis) = launch(&env, mode).await;
    let page = recommend(&gw, "7", &format!("placement={PLACEMENT}&limit=4")).await;
    assert_interleaved(&page, EXPERIMENT, ARMS);
    assert_eq!(page.shown().len(), 4, "{}", page.body);
    let merged = page.merged(ARMS);
    let (a, b) = (env.ids(0, "7", |_| true), env.ids(1, "7", |_| true));
    check_draft([&a, &b], &merged, false).unwrap_or_else(|e| panic!("{e}"));
    let outside = union([&a, &b])
        .into_iter()
        .find(|i| !page.ids().contains(i))
        .expect("the lists hold more than 4 items");
    let token = page.token.as_str();
    let in_claims = flip(token, token.len() / 2);
    let in_signature = flip(token, token.len() - 10);
    // The last byte before the 32-byte HMAC holds the page's team bits (4 items: one byte, item
    // 0 in bit 0): the first item handed to the other team, the token still well-formed.
    let bytes = URL_SAFE_NO_PAD.decode(token).expect("base64url");
    let mut swapped = bytes.clone();
    swapped[bytes.len() - 33] ^= 1;
    let team_swapped = URL_SAFE_NO_PAD.encode(&swapped);

    let batch = [
        event("click", token, &outside, Some("e-outside")),      // 0
        event("click", token, "99999", None),                    // 1
        event("click", &in_claims, &merged[0].0, None),          // 2
        event("impression", &in_signature, &merged[1].0, None),  // 3
        event("impression", token, &merged[0].0, Some("e-i-0")), // 4: accepted
        event("impression", token, &merged[1].0, Some("e-i-1")), // 5: accepted
        event("impression", token, &merged[2].0, Some("e-i-2")), // 6: accepted
        event("impression", token, &merged[3].0, Some("e-i-3")), // 7: accepted
        event("click", token, &merged[0].0, Some("e-c-0")),      // 8: accepted
        event("click", token, &merged[1].0, Some("e-c-1")),      // 9: accepted
        event("click", token, &merged[2].0, Some("e-c-2")),      // 10: accepted
        event("click", token, &merged[3].0, Some("e-c-3")),      // 11: accepted
        event("click", &team_swapped, &merged[0].0, None),       // 12
    ];
    let outcomes = post_events(&gw, &batch).await;
    let why = |r: &str| Some(r.to_string());
    let mut want = vec![
        why("item_not_served"),
        why("item_not_served"),
        why("bad_signature"),
        why("bad_signature"),
    ];
    want.extend(vec![None; 8]);
    want.push(why("bad_signature"));
    assert_eq!(outcomes, want, "outcome of each event of {batch:?}");

    // Every single-byte change of the token is refused: none credits anything.
    let changed: Vec<Value> = (0..bytes.len())
        .map(|at| {
            let mut changed = bytes.clone();
            changed[at] ^= 0x10;
            event("click", &URL_SAFE_NO_PAD.encode(&changed), &merged[1].0, None)
        })
        .collect();
    let outcomes = post_events(&gw, &changed).await;
    let mut malformed = Vec::new();
    for (at, outcome) in outcomes.iter().enumerate() {
        match outcome.as_deref() {
            Some("bad_signature") => {}
            Some("malformed_token") => malformed.push(at),
            other => panic!("byte {at} of {} changed: {other:?}", bytes.len()),
        }
    }
    // Only the version byte may say `malformed_token` (ARCHITECTURE.md §5: an unknown version
    // is malformed); any other byte changed, the team bits included, is a bad signature.
    assert!(
        malformed.iter().all(|at| *at == 0),
        "single-byte changes refused as malformed_token at {malformed:?} of {} bytes, not bad_signature",
        bytes.len()
    );
    let bad_signatures = (bytes.len() - malformed.len()) as f64;

    let mut ledger = Ledger::default();
    for (_, team) in &merged {
        ledger.impression(*team);
        ledger.click("7", *team);
    }
    let text = gw.metrics().await;
    for (i, arm) in ARMS.iter().enumerate() {
        let on_page = merged.iter().filter(|(_, t)| *t == i).count() as f64;
        assert_eq!(
            arm_sample(&text, "clicks_total", EXPERIMENT, PLACEMENT, arm),
            on_page,
            "clicks_total{{arm={arm}}}"
        );
        assert_eq!(
            arm_sample(&text, "impressions_total", EXPERIMENT, PLACEMENT, arm),
            on_page,
            "impressions_total{{arm={arm}}}"
        );
    }
    for name in ["impressions_total", "clicks_total"] {
        assert_eq!(
            arm_sample(&text, name, EXPERIMENT, PLACEMENT, INTERLEAVED),
            0.0,
            "{name}"
        );
    }
    for (why, count) in [
        ("item_not_served", 2.0),
        ("bad_signature", 3.0 + bad_signatures),
        ("malformed_token", malformed.len() as f64),
    ] {
        assert_eq!(
            gateway::sample(&text, "events_rejected_total", &[("reason", why)]),
            count,
            "events_rejected_total{{reason={why}}}"
        );
    }
    // Two picks each in the first four positions (both lists are longer): a tie, the only
    // user compared, so no interval (n = 1) and no p-value (no win).
    let body = results(&gw, EXPERIMENT, "").await;
    let first = assert_results(&body, ARMS, &ledger);
    assert_eq!((first.n, first.ties), (1, 1), "{first:?}");

    // User 8 clicks its first item only: that item's team wins the user.
    let page8 = recommend(&gw, "8", &format!("placement={PLACEMENT}")).await;
    assert_interleaved(&page8, EXPERIMENT, ARMS);
    let (item, team) = page8.merged(ARMS)[0].clone();
    let outcomes = post_events(
        &gw,
        &[
            event("impression", &page8.token, &item, None),
            event("click", &page8.token, &item, None),
        ],
    )
    .await;
    assert_eq!(outcomes, [None, None]);
    ledger.impression(team);
    ledger.click("8", team);
    let body = results(&gw, EXPERIMENT, "").await;
    let second = assert_results(&body, ARMS, &ledger);
    assert_eq!((second.n, second.ties, second.wins[team]), (2, 1, 1), "{second:?}");
    assert_eq!(second.p_value, Some(1.0));
    let text = gw.metrics().await;
    assert_eq!(
        arm_sample(&text, "clicks_total", EXPERIMENT, PLACEMENT, ARMS[team]),
        ledger.clicks[team] as f64
    );
    gw.stop().await;
}

redis_modes! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    events_are_credited_to_the_item_team {
        events_are_credited_to_the_item_team_in_memory => Memory,
        events_are_credited_to_the_item_team_on_one_redis_node => Node,
        events_are_credited_to_the_item_team_on_a_redis_cluster => Cluster,
    }
}

/// With `tracking.token_format = "json"` (the format of the previous release, signed during an
/// upgrade) interleaved pages carry JSON tokens (`claims.signature`), and their events are
/// credited to the items' teams all the same: per-team impressions and clicks, wins and the
/// interleaving statistics in the results, and `clicks_total{arm=team}`, exactly as computed
/// here from 30 users' pages and seeded clicks.
async fn json_tokens_credit_the_item_team(mode: Mode) {
    let env = Env::new();
    let (gw, _redis) = launch_with(&env, mode, |s| {
        s.tracking.token_format = recgw::feedback::token::TokenFormat::Json;
    })
    .await;
    let mut rng = Rng::new(0x0001_504E);
    let mut ledger = Ledger::default();
    let mut events = Vec::new();
    for u in 1..=30 {
        let user = u.to_string();
        let page = recommend(&gw, &user, &format!("placement={PLACEMENT}")).await;
        assert_interleaved(&page, EXPERIMENT, ARMS);
        assert_eq!(page.token.matches('.').count(), 1, "a JSON token: {}", page.token);
        for (item, team) in page.merged(ARMS) {
            events.push(event("impression", &page.token, &item, None));
            ledger.impression(team);
            if rng.chance(if team == 1 { 0.3 } else { 0.15 }) {
                events.push(event("click", &page.token, &item, None));
                ledger.click(&user, team);
            }
        }
    }
    post_all_accepted(&gw, &events, 200).await;
    let body = results(&gw, EXPERIMENT, "").await;
    assert_results(&body, ARMS, &ledger);
    let text = gw.metrics().await;
    for (i, arm) in ARMS.iter().enumerate() {
        assert_eq!(
            arm_sample(&text, "clicks_total", EXPERIMENT, PLACEMENT, arm),
            ledger.clicks[i] as f64,
            "clicks_total{{arm={arm}}}"
        );
    }
    gw.stop().await;
}

redis_modes! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    json_tokens_credit_the_item_team {
        json_tokens_credit_the_item_team_in_memory => Memory,
        json_tokens_credit_the_item_team_on_one_redis_node => Node,
        json_tokens_credit_the_item_team_on_a_redis_cluster => Cluster,
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Validation
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

/// An interleave experiment on `home` with `arms` (name, extra lines) on models `m-{name}`.
fn interleave_toml(arms: &[(&str, &str)]) -> String {
    let mut text = String::from("id = \"il\"\nplacement = \"home\"\nkind = \"interleave\"\nstatus = \"running\"\n");
    for (name, extra) in arms {
        text.push_str(&format!("\n[[arms]]\nname = \"{name}\"\nmodel = \"m-{name}\"\n{extra}"));
    }
    text
}

/// The problems of a folder that must be rejected.
fn rejected(dir: &Path) -> Vec<Problem> {
    match Catalog::load_dir(dir) {
        Ok(_) => panic!("the folder {} was accepted", dir.display()),
        Err(problems) => problems.0,
    }
}

/// The folder's only problem, which must be in `file`, on `field`.
fn only_problem(dir: &TempDir, file: &str, field: &str) -> Problem {
    let problems = rejected(dir.path());
    assert_eq!(problems.len(), 1, "exactly one problem: {problems:#?}");
    let problem = problems.into_iter().next().expect("one");
    assert_eq!(problem.file, dir.path().join(file), "{problem}");
    assert_eq!(problem.field, field, "{problem}");
    assert!(!problem.message.trim().is_empty(), "{problem}");
    problem
}

/// Two arms without `weight` under `kind = "interleave"` load, as an interleave experiment; an
/// experiment without `kind` is a split one.
#[test]
fn interleave_experiment_without_weights_loads() {
    // The example runs on `home` too, on [0, 50); this one takes [50, 100).
    let text = interleave_toml(&[("a", ""), ("b", "")]).replace(
        "status = \"running\"\n",
        "status = \"running\"\ntraffic = [50.0, 100.0]\n",
    );
    assert!(
        !common::examples::EXPERIMENT.contains("kind"),
        "the example says no kind"
    );
    let dir = folder(&[("il.toml", &text), ("home-als-rank.toml", common::examples::EXPERIMENT)]);
    let catalog = Catalog::load_dir(dir.path()).unwrap_or_else(|p| panic!("{p}"));
    let il = catalog.experiment("il").expect("il");
    assert_eq!(il.kind, Kind::Interleave);
    let names: Vec<&str> = il.arms.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    let models: Vec<&str> = il.arms.iter().map(|a| a.model.location.as_str()).collect();
    assert_eq!(models, ["m-a", "m-b"]);
    assert_eq!(il.slice, 5_000..10_000);
    let split = catalog.experiment("home-als-rank").expect("example");
    assert_eq!(split.kind, Kind::Split, "kind defaults to split");
}

/// An interleave experiment with three arms is rejected, on `arms`, saying it takes two.
#[test]
fn interleave_with_three_arms_is_rejected_at_arms() {
    let text = interleave_toml(&[("a", ""), ("b", ""), ("c", "")]);
    let dir = folder(&[("il.toml", &text)]);
    let problem = only_problem(&dir, "il.toml", "arms");
    assert!(
        problem.message.contains("two") || problem.message.contains('2'),
        "says two arms: {problem}"
    );
    assert!(problem.message.contains('3'), "says how many were found: {problem}");
}

/// An interleave experiment with one arm is rejected on `arms` too.
#[test]
fn interleave_with_one_arm_is_rejected_at_arms() {
    let dir = folder(&[("il.toml", &interleave_toml(&[("a", "")]))]);
    only_problem(&dir, "il.toml", "arms");
}

/// A `weight` on an arm of an interleave experiment is rejected at that arm's `weight`, whether
/// on the first or the second arm (even one that would be a valid split weight).
#[test]
fn interleave_arm_with_weight_is_rejected_at_its_weight() {
    for (arms, field) in [
        ([("a", "weight = 50.0\n"), ("b", "")], "arms[0].weight"),
        ([("a", ""), ("b", "weight = 100.0\n")], "arms[1].weight"),
    ] {
        let dir = folder(&[("il.toml", &interleave_toml(&arms))]);
        only_problem(&dir, "il.toml", field);
    }
    // Both weighted, summing to 100 as a split would: one problem per arm.
    let text = interleave_toml(&[("a", "weight = 50.0\n"), ("b", "weight = 50.0\n")]);
    let dir = folder(&[("il.toml", &text)]);
    let mut fields: Vec<String> = rejected(dir.path()).into_iter().map(|p| p.field).collect();
    fields.sort();
    assert_eq!(fields, ["arms[0].weight", "arms[1].weight"]);
}

/// Split arms still need a weight: a split arm without one is rejected at its `weight`, also
/// when `kind = "split"` is written out.
#[test]
fn split_arm_without_weight_is_rejected_at_its_weight() {
    let text = common::examples::EXPERIMENT.replacen("weight = 50.0\nmodel = \"als-v2\"", "model = \"als-v2\"", 1);
    assert_ne!(text, common::examples::EXPERIMENT);
    let explicit = text.replacen("status = \"running\"", "kind = \"split\"\nstatus = \"running\"", 1);
    for text in [text, explicit] {
        let dir = folder(&[("exp.toml", &text)]);
        let problems = rejected(dir.path());
        assert!(
            problems
                .iter()
                .any(|p| p.file == dir.path().join("exp.toml") && p.field == "arms[1].weight"),
            "a problem at arms[1].weight: {problems:#?}"
        );
        // What else may be said is about the weights' sum, which the missing one breaks.
        for problem in &problems {
            assert!(
                problem.field == "arms[1].weight" || problem.field == "arms",
                "only the weight and its sum: {problem}"
            );
        }
    }
}

/// A `kind` other than `split` or `interleave` is rejected, naming `kind`.
#[test]
fn unknown_kind_is_rejected_at_kind() {
    let text = interleave_toml(&[("a", ""), ("b", "")]).replace("\"interleave\"", "\"mixed\"");
    let dir = folder(&[("il.toml", &text)]);
    let problems = rejected(dir.path());
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(
        problems[0].field == "kind" || problems[0].message.contains("kind"),
        "names kind: {}",
        problems[0]
    );
    assert!(problems[0].message.contains("mixed"), "{}", problems[0]);
}

/// `recgw validate DIR` fails on a folder with both mistakes and prints each with its file and
/// field.
#[test]
fn recgw_validate_names_the_interleave_problems() {
    let three = interleave_toml(&[("a", ""), ("b", ""), ("c", "")]).replace("id = \"il\"", "id = \"il-three\"");
    let weighted = interleave_toml(&[("a", ""), ("b", "weight = 50.0\n")])
        .replace("id = \"il\"", "id = \"il-weight\"")
        .replace("placement = \"home\"", "placement = \"search\"");
    let dir = folder(&[("il-three.toml", &three), ("il-weight.toml", &weighted)]);
    let finished = cli::validate(dir.path());
    assert!(!finished.success(), "{}\n{}", finished.stdout, finished.stderr);
    let line = |file: &str| line_naming(&finished.stderr, file);
    assert!(line("il-three.toml").contains("arms"), "{}", finished.stderr);
    assert!(line("il-weight.toml").contains("arms[1].weight"), "{}", finished.stderr);
    assert!(finished.stderr.contains("2 problem(s)"), "{}", finished.stderr);
}
