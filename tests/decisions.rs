//! Decisions an analyst may act on at any look (../shared/DESIGN.md §5
//! `GET /experiments/{id}/results`, §3 `sequential_tuning`): the always-valid lift interval and
//! p-value of each arm compared with the control (the confidence sequence of Waudby-Smith et al.
//! 2023 as GrowthBook's `docs/statistics/sequential.mdx` states it, on the log ratio of the
//! CTRs), Holm-adjusted p-values when several arms are compared, the per-arm `decision`, and
//! how `recgw report` and `recgw validate` show and check them.
//!
//! Real `recgw` gateways run in this process on free loopback ports over copies of the
//! repository's `experiments/` and `models/` (`common::gateway::DemoCopy`); where a test needs
//! three arms it writes `default-three-arms` (arms `control`, `same`, `better`, a third of the
//! users each, on the demo placement `default`) into its own copy. Every test keeps a ledger of
//! what the gateway served and accepted, waits until the results show exactly those counts, and
//! computes every expected statistic here, from the ledger, with its own implementation of the
//! formulas and of Holm's step-down — never from the response.
//!
//! 1. three arms at seeded CTRs 4%, 4% and 7%: every sequential figure, both adjusted
//!    p-values, the decisions, `comparisons` and `adjustment`, without Redis, on one Redis node
//!    and on a 3-node Redis Cluster; and two candidates each significant alone but not after
//!    Holm's adjustment are `inconclusive`;
//! 2. the demo's two-arm `home-als-rank`: no adjustment, default tuning 5000, and a reloaded
//!    `sequential_tuning = 20000` changes the interval to the formula's at N* = 20000 (and a
//!    reload with 0 is refused);
//! 3. undefined figures: no impressions, a control without clicks, an arm without clicks (an
//!    undefined p-value still counts in Holm's adjustment), a sample-ratio mismatch, a shadow
//!    arm and an interleave experiment;
//! 4. `recgw validate` refuses a `sequential_tuning` that is not a finite number ≥ 1;
//! 5. `recgw report` on the three-arm experiment: Holm line, adjusted p-values, decisions.

mod common;

use std::time::Duration;

use common::assignment::bucket;
use common::cli::{self, report_stdout as report};
use common::edits::with_lines;
use common::events::{self, ArmWant, Counts, Kind, arms_match, post_all_accepted};
use common::gateway::{self, DemoCopy, TestGateway, eventually};
use common::redis::{Mode, Redis};
use common::rng::{Rng, fnv};
use common::stats::{self, ALPHA, close};
use recgw::experiment::Catalog;
use reqwest::Method;
use serde_json::{Value, json};
use statrs::function::erf::erfc;

/// The three-arm experiment the tests write, on the demo placement `default`.
const THREE: &str = "default-three-arms";
const THREE_PLACEMENT: &str = "default";
const THREE_ARMS: [&str; 3] = ["control", "same", "better"];
/// Its TOML: a third of the users each (weights in basis points 3334, 3333, 3333).
const THREE_TOML: &str = r#"id = "default-three-arms"
placement = "default"
description = "two candidates against one control"
owner = "recs-team@example.com"
status = "running"
start = 2026-11-01T00:00:00Z

[[arms]]
name = "control"
weight = 33.34
model = "als-v1"

[[arms]]
name = "same"
weight = 33.33
model = "als-v1"

[[arms]]
name = "better"
weight = 33.33
model = "als-v2"
"#;
/// The demo's two-arm split experiment.
const DEMO: &str = "home-als-rank";
const DEMO_PLACEMENT: &str = "home";
const DEMO_ARMS: [&str; 2] = ["control", "treatment"];
/// Items asked for per page: the demo models hold 20 per user, so each page is 20 impressions.
const PAGE: usize = 20;
/// The default `sequential_tuning` (N*).
const DEFAULT_TUNING: f64 = 5000.0;
/// Exposures are flushed to Redis every second; waits for one start after this.
const FLUSH: Duration = Duration::from_millis(1100);
/// How long a background effect (a flush, a reload) gets before a test fails.
const WAIT: Duration = Duration::from_secs(10);
/// The sequential figures of an arm, in the order the contract names them.
const SEQUENTIAL: [&str; 3] = ["sequential_lift_low", "sequential_lift_high", "sequential_p_value"];
/// The Holm-adjusted p-values of an arm.
const ADJUSTED: [&str; 2] = ["p_value_adjusted", "sequential_p_value_adjusted"];

// ---------------------------------------------------------------------------------------------
// Gateways over a copy of the demo
// ---------------------------------------------------------------------------------------------

/// A copy of the demo with [`THREE_TOML`] added to its experiments.
fn three_arm_demo() -> DemoCopy {
    let demo = DemoCopy::new();
    std::fs::write(demo.experiments().join(format!("{THREE}.toml")), THREE_TOML)
        .expect("write the three-arm experiment");
    demo
}

/// A gateway over `demo` whose counts live where `mode` says, with the Redis it needs (kept
/// alive by the caller).
async fn launch(demo: &DemoCopy, mode: Mode) -> (TestGateway, Redis) {
    let redis = Redis::start_in_place(mode);
    let gw = TestGateway::launch_up(&demo.settings(&redis.url())).await;
    (gw, redis)
}

// ---------------------------------------------------------------------------------------------
// Pages, events and the ledger
// ---------------------------------------------------------------------------------------------

/// One recommendation response of an experiment arm.
#[derive(Debug, Clone)]
struct Page {
    user: String,
    /// Index of the arm that served it, in the experiment's arm order.
    arm: usize,
    items: Vec<String>,
    token: String,
}

/// `GET /recommendations/{user}?placement={placement}&limit=20`, expecting a full page of
/// `experiment`, not forced, not a fallback, from one of `arms`.
async fn recommend(gw: &TestGateway, user: &str, placement: &str, experiment: &str, arms: &[&str]) -> Page {
    let path = format!("/recommendations/{user}?placement={placement}&limit={PAGE}");
    let body = gw.ok(&path).await;
    assert_eq!(body["experiment"], experiment, "{path}: {body}");
    assert_eq!(body["forced"], false, "{path}: {body}");
    assert_ne!(body["source"], "fallback", "the user is in the arm's model: {body}");
    let arm = body["arm"].as_str().expect("arm is a string");
    let arm = arms
        .iter()
        .position(|a| *a == arm)
        .unwrap_or_else(|| panic!("arm {arm:?} is none of {arms:?}: {body}"));
    let items = gateway::item_ids(&body);
    assert_eq!(items.len(), PAGE, "a full page: {body}");
    Page {
        user: user.to_string(),
        arm,
        items,
        token: body["tracking_token"].as_str().expect("tracking_token").to_string(),
    }
}

/// Serves each of `users` once.
async fn serve(
    gw: &TestGateway,
    users: &[String],
    placement: &str,
    experiment: &str,
    arms: &[&str],
    ledger: &mut Ledger,
) -> Vec<Page> {
    let mut pages = Vec::with_capacity(users.len());
    for user in users {
        let page = recommend(gw, user, placement, experiment, arms).await;
        ledger.arms[page.arm].exposures += 1;
        pages.push(page);
    }
    pages
}

/// Users `from..=to` as ids (the demo models know users 0..2000).
fn users(from: u32, to: u32) -> Vec<String> {
    (from..=to).map(|u| u.to_string()).collect()
}

/// One event and the arm it must be credited to.
#[derive(Debug, Clone)]
struct Event {
    arm: usize,
    kind: Kind,
    body: Value,
}

/// `kind` on `item` of `page`, with the id `{user}-{i|c}-{item}`.
fn event(page: &Page, kind: Kind, item: &str) -> Event {
    let id = format!("{}-{}-{item}", page.user, kind.tag());
    Event {
        arm: page.arm,
        kind,
        body: events::event(kind.name(), &page.token, item, Some(&id)),
    }
}

/// An impression of every item of every page.
fn impressions(pages: &[Page]) -> Vec<Event> {
    pages
        .iter()
        .flat_map(|p| p.items.iter().map(move |item| event(p, Kind::Impression, item)))
        .collect()
}

/// Clicks: each item of a page of arm `a` clicked with probability `ctr[a]`, decided by a
/// generator seeded from the user and `seed`, so every run (and every mode) clicks alike.
fn clicks(pages: &[Page], ctr: &[f64], seed: u64) -> Vec<Event> {
    let mut events = Vec::new();
    for page in pages {
        let mut rng = Rng::new(fnv(&page.user) ^ seed);
        for item in &page.items {
            if rng.chance(ctr[page.arm]) {
                events.push(event(page, Kind::Click, item));
            }
        }
    }
    events
}

/// What the results must show, per arm in arm order.
#[derive(Debug, Clone)]
struct Ledger {
    names: Vec<String>,
    arms: Vec<Counts>,
}

impl Ledger {
    /// Nothing served yet to the arms `names`.
    fn new(names: &[&str]) -> Ledger {
        Ledger {
            names: names.iter().map(|n| n.to_string()).collect(),
            arms: vec![Counts::default(); names.len()],
        }
    }

    /// Whether `body` shows exactly these counts, arm by arm; the differences otherwise.
    fn matches(&self, body: &Value) -> Result<(), String> {
        let want: Vec<ArmWant> = self
            .names
            .iter()
            .zip(&self.arms)
            .map(|(name, arm)| arm.of(name))
            .collect();
        arms_match(body, "", &want)
    }
}

/// Posts `events` in batches of 1000 (the most one batch may hold), expecting every one
/// accepted, and credits them to the ledger.
async fn post_all(gw: &TestGateway, events: &[Event], ledger: &mut Ledger) {
    let bodies: Vec<Value> = events.iter().map(|e| e.body.clone()).collect();
    post_all_accepted(gw, &bodies, 1000).await;
    for e in events {
        let arm = &mut ledger.arms[e.arm];
        match e.kind {
            Kind::Impression => arm.impressions += 1,
            Kind::Click => arm.clicks += 1,
        }
    }
}

/// `GET /experiments/{experiment}/results`, expecting 200 and JSON.
async fn results(gw: &TestGateway, experiment: &str) -> Value {
    gw.ok(&format!("/experiments/{experiment}/results")).await
}

/// Waits (one flush period, then at most [`WAIT`]) until the results of `experiment` show
/// exactly what `ledger` says was served and accepted; returns them.
async fn settled(gw: &TestGateway, experiment: &str, ledger: &Ledger) -> Value {
    tokio::time::sleep(FLUSH).await;
    eventually(WAIT, "results equal what was served and accepted", async || {
        let body = results(gw, experiment).await;
        ledger.matches(&body).map(|()| body)
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// The statistics, computed here from the ledger
// ---------------------------------------------------------------------------------------------

/// The always-valid figures of one arm against the control.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sequential {
    low: f64,
    high: f64,
    p: f64,
}

/// The confidence sequence of the contract, on `μ = ln(p1/p0)` with the Katz standard error,
/// for `arm` against `control` at tuning `tuning` (N*); `Err` names why it is undefined.
fn sequential(arm: Counts, control: Counts, tuning: f64) -> Result<Sequential, &'static str> {
    if arm.impressions == 0 || control.impressions == 0 {
        return Err("no impressions");
    }
    if control.clicks == 0 {
        return Err("the control has no clicks");
    }
    if arm.clicks == 0 {
        return Err("the arm has no clicks");
    }
    let (low, high, p) = stats::sequential(arm.clicks, arm.impressions, control.clicks, control.impressions, tuning);
    Ok(Sequential { low, high, p })
}

/// The fixed-horizon two-sided pooled two-proportion z-test of `arm` against `control`;
/// `None` without impressions or without variation.
fn z_test(arm: Counts, control: Counts) -> Option<f64> {
    if arm.impressions == 0 || control.impressions == 0 {
        return None;
    }
    let (n1, n0) = (arm.impressions as f64, control.impressions as f64);
    let pooled = (arm.clicks + control.clicks) as f64 / (n1 + n0);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n0)).sqrt();
    if se == 0.0 {
        return None;
    }
    let z = (arm.clicks as f64 / n1 - control.clicks as f64 / n0) / se;
    Some(erfc(z.abs() / std::f64::consts::SQRT_2).min(1.0))
}

/// Holm's step-down adjustment: hypothesis `i` at rank `r(i)` (0-based, ascending p) gets
/// `max over ranks s ≤ r(i) of min(1, (m − s)·p₍ₛ₎)`. An undefined p counts as a hypothesis
/// with p = 1 for the others and gets no adjusted value.
fn holm(p: &[Option<f64>]) -> Vec<Option<f64>> {
    let m = p.len();
    let value = |i: usize| p[i].unwrap_or(1.0);
    let mut ranked: Vec<usize> = (0..m).collect();
    ranked.sort_by(|&a, &b| value(a).total_cmp(&value(b)));
    let mut adjusted = vec![None; m];
    for (rank, &i) in ranked.iter().enumerate() {
        if p[i].is_some() {
            let step = ranked[..=rank]
                .iter()
                .enumerate()
                .map(|(s, &j)| ((m - s) as f64 * value(j)).min(1.0))
                .fold(0.0, f64::max);
            adjusted[i] = Some(step);
        }
    }
    adjusted
}

/// The decision of an arm: `better` or `worse` when `p` (its always-valid p-value, adjusted
/// when several arms are compared) is below α, by the sign of the interval; else
/// `inconclusive`.
fn decision(figures: Sequential, p: f64) -> &'static str {
    if p >= ALPHA {
        "inconclusive"
    } else if figures.low > 0.0 {
        "better"
    } else if figures.high < 0.0 {
        "worse"
    } else {
        panic!("p = {p} < α yet the interval {figures:?} contains 0: the p-value and the interval disagree")
    }
}

/// What one compared arm must show.
#[derive(Debug, Clone)]
struct Expected {
    sequential: Result<Sequential, &'static str>,
    p_value_adjusted: Option<f64>,
    sequential_p_value_adjusted: Option<f64>,
    decision: Option<&'static str>,
}

/// The expected figures of every arm after the control (all compared: no shadows here), from
/// the ledger, at tuning `tuning`, with the experiment's `srm_detected`.
fn expected(ledger: &Ledger, tuning: f64, srm_detected: bool) -> Vec<Expected> {
    let control = ledger.arms[0];
    let compared = &ledger.arms[1..];
    let figures: Vec<Result<Sequential, &'static str>> =
        compared.iter().map(|&a| sequential(a, control, tuning)).collect();
    let several = compared.len() > 1;
    let fixed = holm(&compared.iter().map(|&a| z_test(a, control)).collect::<Vec<_>>());
    let always = holm(&figures.iter().map(|f| f.as_ref().ok().map(|s| s.p)).collect::<Vec<_>>());
    figures
        .iter()
        .enumerate()
        .map(|(k, f)| {
            let p = if several {
                always[k]
            } else {
                f.as_ref().ok().map(|s| s.p)
            };
            Expected {
                sequential: *f,
                p_value_adjusted: fixed[k].filter(|_| several),
                sequential_p_value_adjusted: always[k].filter(|_| several),
                decision: match (f, p) {
                    (Ok(figures), Some(p)) if !srm_detected => Some(decision(*figures, p)),
                    _ => None,
                },
            }
        })
        .collect()
}

/// `arm[field]` is a number equal to `want` ([`close`]) and has no reason in `undefined`.
fn assert_figure(arm: &Value, field: &str, want: f64) {
    let got = arm
        .get(field)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{field} is not a number (want {want}): {arm}"));
    assert!(
        close(got, want),
        "{field} = {got}, the contract's formula gives {want}: {arm}"
    );
    assert!(
        arm["undefined"].get(field).is_none(),
        "{field} has a value and a reason: {arm}"
    );
}

/// `arm[field]` is absent and `undefined[field]` gives a reason; returns it.
fn assert_undefined<'a>(arm: &'a Value, field: &str) -> &'a str {
    assert!(arm.get(field).is_none(), "{field} must be absent: {arm}");
    let reason = arm["undefined"][field]
        .as_str()
        .unwrap_or_else(|| panic!("no reason for the absent {field}: {arm}"));
    assert!(!reason.is_empty(), "an empty reason for {field}: {arm}");
    reason
}

/// `arm` has neither adjusted p-value, nor a reason for one.
fn assert_not_adjusted(arm: &Value) {
    for field in ADJUSTED {
        assert!(arm.get(field).is_none(), "{field} without an adjustment: {arm}");
        assert!(arm["undefined"].get(field).is_none(), "{field} has a reason: {arm}");
    }
}

/// The control: no sequential figure (each with the reason "this is the control"), no
/// adjusted p-value, no decision (with a reason).
fn assert_control(arm: &Value) {
    assert_eq!(arm["control"], true, "{arm}");
    for field in SEQUENTIAL {
        assert_eq!(assert_undefined(arm, field), "this is the control", "{field}: {arm}");
    }
    assert_undefined(arm, "decision");
    assert_not_adjusted(arm);
}

/// Every compared arm of `body` shows what `want` says, and the experiment-level fields say
/// `tuning` and as many comparisons as `want` has.
fn assert_decisions(body: &Value, want: &[Expected], tuning: f64) {
    assert_eq!(body["sequential_tuning"].as_f64(), Some(tuning), "{body}");
    assert_eq!(body["comparisons"], want.len() as u64, "{body}");
    assert_eq!(
        body["adjustment"],
        if want.len() > 1 { "holm" } else { "none" },
        "{body}"
    );
    let act_on = body["act_on"].as_str().expect("act_on is a sentence");
    assert!(
        act_on.contains("decision") && act_on.contains("sequential"),
        "act_on: {act_on}"
    );
    let arms = body["arms"].as_array().expect("arms");
    assert_eq!(arms.len(), want.len() + 1, "{body}");
    assert_control(&arms[0]);
    for (arm, want) in arms[1..].iter().zip(want) {
        match want.sequential {
            Ok(s) => {
                assert_figure(arm, "sequential_lift_low", s.low);
                assert_figure(arm, "sequential_lift_high", s.high);
                assert_figure(arm, "sequential_p_value", s.p);
            }
            Err(reason) => {
                for field in SEQUENTIAL {
                    let got = assert_undefined(arm, field);
                    if reason != "no impressions" {
                        assert_eq!(got, reason, "{field}: {arm}");
                    }
                }
            }
        }
        for (field, want) in ADJUSTED
            .into_iter()
            .zip([want.p_value_adjusted, want.sequential_p_value_adjusted])
        {
            match want {
                Some(p) => assert_figure(arm, field, p),
                None => assert!(arm.get(field).is_none(), "{field} must be absent: {arm}"),
            }
        }
        match want.decision {
            Some(d) => {
                assert_eq!(arm["decision"], d, "decision: {arm}");
                assert!(arm["undefined"].get("decision").is_none(), "{arm}");
            }
            None => {
                assert_undefined(arm, "decision");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 0. The test's own statistics, against published values
// ---------------------------------------------------------------------------------------------

/// The expectations of every other test come from [`sequential`] and [`holm`] here: they must
/// reproduce values computed outside this repository, or a bug in them would pass as the
/// gateway's — GrowthBook's gbstats 0.8.0 on the Katz log ratio (as quoted in
/// `src/feedback/significance.rs`), and statsmodels' `multipletests(p, method="holm")`.
#[test]
fn reference_statistics_match_published_values() {
    let counts = |clicks, impressions| Counts {
        exposures: 0,
        impressions,
        clicks,
    };
    for (c1, n1, c0, n0, tuning, low, high, p) in [
        (
            60,
            1000,
            40,
            1000,
            5000.0,
            -0.19481411489094302,
            1.7943857953933864,
            0.42257890618259325,
        ),
        (
            90,
            1000,
            40,
            1000,
            5000.0,
            0.2636361636661273,
            3.006295598024364,
            0.0013392826809000568,
        ),
        (
            1400,
            100000,
            1100,
            100000,
            5000.0,
            0.10922278044095535,
            0.4603330722254555,
            2.510093086733463e-07,
        ),
        (
            300,
            2000,
            200,
            2000,
            1000.5,
            0.14760808657689473,
            0.9605996387768041,
            0.00010916953136734117,
        ),
        (30, 400, 45, 500, 2000.0, -0.5864369644363319, 0.6791743572970625, 1.0),
    ] {
        let got = sequential(counts(c1, n1), counts(c0, n0), tuning).expect("defined");
        assert!(
            close(got.low, low) && close(got.high, high) && close(got.p, p),
            "{c1}/{n1} vs {c0}/{n0} at {tuning}: {got:?}"
        );
    }
    for (p, want) in [
        (vec![0.01, 0.04, 0.03], vec![0.03, 0.06, 0.06]),
        (vec![0.2, 0.001, 0.5, 0.04], vec![0.4, 0.004, 0.5, 0.12]),
    ] {
        let got = holm(&p.iter().copied().map(Some).collect::<Vec<_>>());
        for (g, w) in got.iter().zip(&want) {
            assert!(g.is_some_and(|g| (g - w).abs() < 1e-12), "holm {p:?}: {got:?}");
        }
    }
    assert_eq!(
        holm(&[Some(0.01), None, Some(0.02)]),
        vec![Some(0.03), None, Some(0.04)]
    );
    // statsmodels.stats.proportion.proportions_ztest([60, 40], [1000, 1000])
    let z = z_test(counts(60, 1000), counts(40, 1000)).expect("defined");
    assert!(close(z, 0.04017387028851211), "{z}");
}

// ---------------------------------------------------------------------------------------------
// 1. Three arms, in every mode
// ---------------------------------------------------------------------------------------------

/// Seeded CTRs of `control`, `same` and `better`.
const THREE_CTR: [f64; 3] = [0.04, 0.04, 0.07];
/// Users served, once each: about 600 per arm, 12 000 impressions per arm.
const THREE_USERS: u32 = 1800;
/// Seed of the clicks of the three-arm traffic.
const THREE_SEED: u64 = 0xDEC1_5105;

/// Serves users 1..=1800 on the three-arm experiment with 20 items each, posts an impression
/// of every item and seeded clicks at [`THREE_CTR`], and waits until the results show exactly
/// that; returns the ledger and the results.
async fn three_arm_traffic(gw: &TestGateway) -> (Ledger, Value) {
    let mut ledger = Ledger::new(&THREE_ARMS);
    let pages = serve(
        gw,
        &users(1, THREE_USERS),
        THREE_PLACEMENT,
        THREE,
        &THREE_ARMS,
        &mut ledger,
    )
    .await;
    let mut events = impressions(&pages);
    events.extend(clicks(&pages, &THREE_CTR, THREE_SEED));
    post_all(gw, &events, &mut ledger).await;
    for (name, arm) in THREE_ARMS.iter().zip(&ledger.arms) {
        assert!(
            arm.exposures > 500,
            "about a third of {THREE_USERS} users in {name}: {:?}",
            ledger.arms
        );
    }
    let body = settled(gw, THREE, &ledger).await;
    (ledger, body)
}

/// Two candidates against one control, the case the Holm adjustment exists for: with seeded
/// CTRs 4% (control), 4% (`same`) and 7% (`better`) over about 12 000 impressions per arm, every
/// always-valid figure, both Holm-adjusted p-values and each decision equal this file's own
/// computation from the counts it ledgered, `comparisons` is 2 and `adjustment` `holm`; and
/// the simulation comes out as designed: `better` is `better`, `same` `inconclusive`.
async fn three_arms_decide_as_computed(mode: Mode) {
    let demo = three_arm_demo();
    let (gw, _redis) = launch(&demo, mode).await;
    let (ledger, body) = three_arm_traffic(&gw).await;
    assert_eq!(body["counts"], mode.counts(), "{body}");
    assert_eq!(body["kind"], "split", "{body}");
    // Users are split by hash: a mismatch here would withhold every decision (test 3 checks
    // that), and would mean the split is broken.
    assert_eq!(body["srm_detected"], false, "a third each: {body}");
    let want = expected(&ledger, DEFAULT_TUNING, false);
    assert_decisions(&body, &want, DEFAULT_TUNING);
    let arms = &body["arms"];
    assert_eq!(
        arms[1]["decision"], "inconclusive",
        "same CTR as the control: {}",
        arms[1]
    );
    assert_eq!(arms[2]["decision"], "better", "7% against 4%: {}", arms[2]);
    // The adjustment is real: `better`'s adjusted p-values are twice the raw ones (it ranks
    // first of two), not copies of them.
    for (raw, adjusted) in [
        ("p_value", "p_value_adjusted"),
        ("sequential_p_value", "sequential_p_value_adjusted"),
    ] {
        let (raw, adjusted) = (
            arms[2][raw].as_f64().expect("raw p"),
            arms[2][adjusted].as_f64().expect("adjusted p"),
        );
        assert!(
            close(adjusted, (2.0 * raw).min(1.0)),
            "{raw} adjusted to {adjusted}: {}",
            arms[2]
        );
    }
    gw.stop().await;
}

/// [`three_arms_decide_as_computed`] with the counts in the gateway's memory (no Redis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_arms_decide_as_computed_in_memory() {
    three_arms_decide_as_computed(Mode::Memory).await;
}

/// [`three_arms_decide_as_computed`] with the counts on one `redis-server`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_arms_decide_as_computed_on_one_redis_node() {
    three_arms_decide_as_computed(Mode::Node).await;
}

/// [`three_arms_decide_as_computed`] with the counts on a 3-node Redis Cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_arms_decide_as_computed_on_a_redis_cluster() {
    three_arms_decide_as_computed(Mode::Cluster).await;
}

/// `decision` reads the Holm-adjusted always-valid p-value, not the raw one: both candidates
/// get the fewest clicks above the control's CTR (on the first items of their pages, the control 5% of its
/// impressions) whose raw always-valid p-value is below 0.05 — in [0.025, 0.05), so that the
/// interval alone leaves out 0 but Holm's 2·p does not pass — and both are `inconclusive`,
/// every figure equal to this file's computation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_holm_adjustment_can_withhold_a_decision() {
    let demo = three_arm_demo();
    let (gw, _redis) = launch(&demo, Mode::Memory).await;
    let mut ledger = Ledger::new(&THREE_ARMS);
    let pages = serve(&gw, &users(1, 600), THREE_PLACEMENT, THREE, &THREE_ARMS, &mut ledger).await;
    post_all(&gw, &impressions(&pages), &mut ledger).await;
    let control = Counts {
        clicks: ledger.arms[0].impressions / 20,
        ..ledger.arms[0]
    };
    let mut wanted = vec![control.clicks];
    for (arm, name) in THREE_ARMS.iter().enumerate().skip(1) {
        // Upwards from the control's CTR: the first significant count is a lift, not a drop.
        let served = ledger.arms[arm];
        let at = |clicks| sequential(Counts { clicks, ..served }, control, DEFAULT_TUNING);
        let even = control.clicks * served.impressions / control.impressions;
        let clicks = (even..=served.impressions)
            .find(|&clicks| at(clicks).is_ok_and(|s| s.p < ALPHA))
            .expect("some click count is significant");
        let p = at(clicks).expect("defined").p;
        assert!(
            2.0 * p >= ALPHA,
            "{clicks} clicks in {name}: p = {p} is not in [α/2, α)"
        );
        wanted.push(clicks);
    }
    let mut events = Vec::new();
    for (arm, &want) in wanted.iter().enumerate() {
        let items = pages
            .iter()
            .filter(|p| p.arm == arm)
            .flat_map(|p| p.items.iter().map(move |item| (p, item)));
        events.extend(
            items
                .take(want as usize)
                .map(|(page, item)| event(page, Kind::Click, item)),
        );
    }
    post_all(&gw, &events, &mut ledger).await;
    assert_eq!(ledger.arms.iter().map(|a| a.clicks).collect::<Vec<_>>(), wanted);
    let body = settled(&gw, THREE, &ledger).await;
    assert_eq!(body["srm_detected"], false, "{body}");
    assert_decisions(&body, &expected(&ledger, DEFAULT_TUNING, false), DEFAULT_TUNING);
    for arm in &body["arms"].as_array().expect("arms")[1..] {
        let raw = arm["sequential_p_value"].as_f64().expect("defined");
        let adjusted = arm["sequential_p_value_adjusted"].as_f64().expect("adjusted");
        let low = arm["sequential_lift_low"].as_f64().expect("defined");
        assert!(raw < ALPHA && low > 0.0, "unadjusted, the arm would be better: {arm}");
        assert!(adjusted >= ALPHA, "adjusted for two comparisons it is not: {arm}");
        assert_eq!(
            arm["decision"], "inconclusive",
            "the decision reads the adjusted p-value: {arm}"
        );
    }
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 2. Two arms: no adjustment; the tuning
// ---------------------------------------------------------------------------------------------

/// `POST /admin/reload` (auth is off in these gateways).
async fn reload(gw: &TestGateway) -> (u16, Value) {
    let reply = gw.call(Method::POST, "/admin/reload", None, None).await;
    (reply.status, reply.json())
}

/// Rewrites `home-als-rank.toml` of `demo` with `line` added before its arms.
fn set_demo_tuning(demo: &DemoCopy, line: &str) {
    with_lines(&demo.experiments(), &format!("{DEMO}.toml"), line);
}

/// With one arm compared with the control nothing is adjusted (`adjustment` `none`, no
/// `*_adjusted` fields) and the default N* is 5000; the treatment, seeded at half the
/// control's CTR, is `worse`. Then `sequential_tuning = 20000` written into the TOML and
/// reloaded changes the interval (same counts) to the formula's at N* = 20000, and a reload
/// with `sequential_tuning = 0` is refused naming the field, the 20000 staying in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_arms_are_not_adjusted_and_follow_the_tuning() {
    let demo = DemoCopy::new();
    let (gw, _redis) = launch(&demo, Mode::Memory).await;
    let mut ledger = Ledger::new(&DEMO_ARMS);
    let pages = serve(&gw, &users(1, 1000), DEMO_PLACEMENT, DEMO, &DEMO_ARMS, &mut ledger).await;
    let mut events = impressions(&pages);
    events.extend(clicks(&pages, &[0.06, 0.03], 0x7E0));
    post_all(&gw, &events, &mut ledger).await;
    let body = settled(&gw, DEMO, &ledger).await;
    assert_eq!(body["srm_detected"], false, "{body}");
    let at_default = expected(&ledger, DEFAULT_TUNING, false);
    assert_decisions(&body, &at_default, DEFAULT_TUNING);
    assert_eq!(body["adjustment"], "none");
    assert_eq!(body["comparisons"], 1);
    assert_eq!(body["sequential_tuning"].as_f64(), Some(5000.0));
    for arm in body["arms"].as_array().expect("arms") {
        assert_not_adjusted(arm);
    }
    assert_eq!(
        body["arms"][1]["decision"], "worse",
        "3% against 6%: {}",
        body["arms"][1]
    );

    set_demo_tuning(&demo, "sequential_tuning = 20000");
    let (status, outcome) = reload(&gw).await;
    assert_eq!((status, &outcome["status"]), (200, &json!("applied")), "{outcome}");
    let retuned = settled(&gw, DEMO, &ledger).await;
    let at_tuning = expected(&ledger, 20000.0, false);
    assert_decisions(&retuned, &at_tuning, 20000.0);
    let treatment = &retuned["arms"][1];
    for field in SEQUENTIAL {
        let (before, after) = (&body["arms"][1][field], &treatment[field]);
        assert_ne!(before, after, "{field} must change with N*: {treatment}");
    }
    // The same counts and another N*: only the always-valid figures moved.
    for field in ["lift", "lift_low", "lift_high", "p_value"] {
        assert_eq!(body["arms"][1][field], treatment[field], "{field} is fixed-horizon");
    }

    set_demo_tuning(&demo, "sequential_tuning = 0");
    let (status, outcome) = reload(&gw).await;
    assert_eq!(status, 422, "{outcome}");
    assert_eq!(outcome["error"], "experiments_rejected", "{outcome}");
    let problems = outcome["problems"].as_array().expect("problems");
    assert!(
        problems.iter().any(|p| p
            .as_str()
            .is_some_and(|p| p.contains("home-als-rank.toml") && p.contains("sequential_tuning"))),
        "the problem names the file and the field: {outcome}"
    );
    let kept = settled(&gw, DEMO, &ledger).await;
    assert_eq!(
        kept["sequential_tuning"].as_f64(),
        Some(20000.0),
        "the rejected reload changed nothing: {kept}"
    );
    assert_decisions(&kept, &at_tuning, 20000.0);
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Undefined figures
// ---------------------------------------------------------------------------------------------

/// The sequential figures, their adjusted p-value and the decision are absent with a reason
/// whenever they cannot be computed: before any impression; when the control has no clicks
/// (every compared arm says "the control has no clicks"); when one arm has impressions but no
/// clicks ("the arm has no clicks" under each of the three fields, no decision), which still
/// counts as a hypothesis with p = 1 in the other arm's Holm adjustment; and for the control,
/// always ("this is the control").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undefined_sequential_figures_have_reasons() {
    let demo = three_arm_demo();
    let (gw, _redis) = launch(&demo, Mode::Memory).await;
    let mut ledger = Ledger::new(&THREE_ARMS);

    // Nothing served yet.
    let body = results(&gw, THREE).await;
    ledger.matches(&body).expect("no counts yet");
    assert_decisions(&body, &expected(&ledger, DEFAULT_TUNING, false), DEFAULT_TUNING);
    for arm in &body["arms"].as_array().expect("arms")[1..] {
        for field in SEQUENTIAL.into_iter().chain(ADJUSTED).chain(["decision"]) {
            assert!(arm.get(field).is_none(), "{field} without impressions: {arm}");
        }
        assert_undefined(arm, "sequential_p_value");
    }

    // Impressions everywhere, clicks only in `better`: no comparison has a control CTR.
    let pages = serve(&gw, &users(1, 600), THREE_PLACEMENT, THREE, &THREE_ARMS, &mut ledger).await;
    post_all(&gw, &impressions(&pages), &mut ledger).await;
    post_all(&gw, &clicks(&pages, &[0.0, 0.0, 0.1], 0xB0), &mut ledger).await;
    let body = settled(&gw, THREE, &ledger).await;
    assert!(ledger.arms.iter().all(|a| a.impressions > 0), "{:?}", ledger.arms);
    assert_eq!(ledger.arms[0].clicks, 0);
    let want = expected(&ledger, DEFAULT_TUNING, false);
    assert!(
        want.iter().all(|w| w.sequential == Err("the control has no clicks")),
        "{want:?}"
    );
    assert_decisions(&body, &want, DEFAULT_TUNING);
    for arm in &body["arms"].as_array().expect("arms")[1..] {
        for field in SEQUENTIAL {
            assert_eq!(
                assert_undefined(arm, field),
                "the control has no clicks",
                "{field}: {arm}"
            );
        }
        assert_undefined(arm, "decision");
        assert!(arm.get("sequential_p_value_adjusted").is_none(), "{arm}");
    }

    // Then clicks in the control too (on the pages already shown): `same` alone has none.
    post_all(&gw, &clicks(&pages, &[0.05, 0.0, 0.0], 0xC0), &mut ledger).await;
    let body = settled(&gw, THREE, &ledger).await;
    assert!(
        ledger.arms[0].clicks > 0 && ledger.arms[2].clicks > 0,
        "{:?}",
        ledger.arms
    );
    assert_eq!(ledger.arms[1].clicks, 0);
    let want = expected(&ledger, DEFAULT_TUNING, false);
    assert_decisions(&body, &want, DEFAULT_TUNING);
    let (same, better) = (&body["arms"][1], &body["arms"][2]);
    for field in SEQUENTIAL {
        assert_eq!(
            assert_undefined(same, field),
            "the arm has no clicks",
            "{field}: {same}"
        );
    }
    assert_undefined(same, "decision");
    assert!(
        same.get("sequential_p_value_adjusted").is_none(),
        "no raw value, no adjusted one: {same}"
    );
    // `same` still has a fixed-horizon p-value (the control clicked), so both are adjusted.
    assert!(same["p_value_adjusted"].is_f64(), "{same}");
    // `better` is adjusted for two hypotheses, the undefined one at p = 1.
    let raw = better["sequential_p_value"].as_f64().expect("defined");
    let adjusted = better["sequential_p_value_adjusted"].as_f64().expect("adjusted");
    assert!(close(adjusted, (2.0 * raw).min(1.0)), "{raw} → {adjusted}: {better}");
    assert!(better["decision"].is_string(), "{better}");
    gw.stop().await;
}

/// A sample-ratio mismatch means the split is broken, so no decision may be read from it: with
/// five times as many control users as treatment users (chosen by the assignment hash of
/// DESIGN.md §3.1, computed here), `srm_detected` is true and `decision` is absent with a
/// reason, while the always-valid figures themselves are still given, equal to the formula's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sample_ratio_mismatch_withholds_the_decision() {
    let demo = DemoCopy::new();
    let (gw, _redis) = launch(&demo, Mode::Memory).await;
    // `home-als-rank` covers all of `home`; its salt is its id; the control owns [0, 5000).
    let (mut control, mut treatment) = (Vec::new(), Vec::new());
    for user in users(1, 1999) {
        if bucket(DEMO, &user) < 5000 {
            if control.len() < 250 {
                control.push(user);
            }
        } else if treatment.len() < 50 {
            treatment.push(user);
        }
    }
    assert_eq!((control.len(), treatment.len()), (250, 50), "enough users in each arm");
    let mut ledger = Ledger::new(&DEMO_ARMS);
    let mut pages = serve(&gw, &control, DEMO_PLACEMENT, DEMO, &DEMO_ARMS, &mut ledger).await;
    pages.extend(serve(&gw, &treatment, DEMO_PLACEMENT, DEMO, &DEMO_ARMS, &mut ledger).await);
    assert_eq!(
        (ledger.arms[0].exposures, ledger.arms[1].exposures),
        (250, 50),
        "the gateway assigns as DESIGN.md §3.1 says"
    );
    let mut events = impressions(&pages);
    events.extend(clicks(&pages, &[0.05, 0.15], 0x5A));
    post_all(&gw, &events, &mut ledger).await;
    let body = settled(&gw, DEMO, &ledger).await;
    assert_eq!(body["srm_detected"], true, "250 against 50 at 50/50: {body}");
    let want = expected(&ledger, DEFAULT_TUNING, true);
    let figures = want[0].sequential.expect("both arms have clicks");
    assert!(figures.p < ALPHA, "the figures alone would decide: {figures:?}");
    assert_eq!(want[0].decision, None);
    assert_decisions(&body, &want, DEFAULT_TUNING);
    gw.stop().await;
}

/// A shadow arm serves nobody and interleaved arms serve the same users, so neither is compared
/// with a control: the demo's `discover-als-shadow` and `feed-als-interleave`, given impressions
/// and clicks, have no sequential figure, adjusted p-value or decision on any arm (each
/// sequential field with a reason), `comparisons` 0 and `adjustment` `none` — even though both
/// interleaved arms have impressions and clicks of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_and_interleaved_arms_have_no_sequential_figures() {
    let demo = DemoCopy::new();
    let (gw, _redis) = launch(&demo, Mode::Memory).await;
    for (experiment, placement) in [("discover-als-shadow", "discover"), ("feed-als-interleave", "feed")] {
        let mut events = Vec::new();
        for user in users(1, 60) {
            let path = format!("/recommendations/{user}?placement={placement}&limit={PAGE}");
            let page = gw.ok(&path).await;
            assert_eq!(page["experiment"], experiment, "{page}");
            let token = page["tracking_token"].as_str().expect("tracking_token");
            for (i, item) in gateway::item_ids(&page).iter().enumerate() {
                events.push(events::event("impression", token, item, None));
                if i % 3 == 0 {
                    events.push(events::event("click", token, item, None));
                }
            }
        }
        post_all_accepted(&gw, &events, 1000).await;
        let body = results(&gw, experiment).await;
        assert_eq!(body["comparisons"], 0, "{experiment}: {body}");
        assert_eq!(body["adjustment"], "none", "{experiment}: {body}");
        assert_eq!(body["sequential_tuning"].as_f64(), Some(DEFAULT_TUNING), "{body}");
        let arms = body["arms"].as_array().expect("arms");
        assert_eq!(arms.len(), 2, "{body}");
        for arm in arms {
            for field in SEQUENTIAL {
                assert_undefined(arm, field);
            }
            assert!(arm.get("decision").is_none(), "{experiment}: {arm}");
            assert_not_adjusted(arm);
        }
        if experiment == "feed-als-interleave" {
            assert_eq!(body["kind"], "interleave", "{body}");
            for arm in arms {
                assert!(
                    arm["impressions"].as_u64() > Some(0) && arm["clicks"].as_u64() > Some(0),
                    "both teams were shown and clicked: {arm}"
                );
            }
        } else {
            assert_eq!(arms[1]["shadow"], true, "{body}");
            assert!(arms[0]["clicks"].as_u64() > Some(0), "{body}");
        }
    }
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Validation
// ---------------------------------------------------------------------------------------------

/// `sequential_tuning` is N*, a number of impressions: `recgw validate` refuses 0, a negative,
/// a fraction below 1, `nan`, `inf` and a string, each time naming the file and the field, and
/// accepts 1 (a TOML integer) and 12345.5, which the catalog then holds as given; without
/// the key it holds the default 5000.
#[test]
fn validate_checks_sequential_tuning() {
    let demo = DemoCopy::new();
    let file = format!("{DEMO}.toml");
    for bad in ["0", "-5", "0.5", "nan", "inf", "\"fast\""] {
        set_demo_tuning(&demo, &format!("sequential_tuning = {bad}"));
        cli::assert_refused(
            &demo.experiments(),
            &file,
            "sequential_tuning",
            &format!("sequential_tuning = {bad}"),
        );
    }
    for (good, want) in [("1", 1.0), ("12345.5", 12345.5)] {
        set_demo_tuning(&demo, &format!("sequential_tuning = {good}"));
        cli::assert_accepted(&demo.experiments(), &format!("sequential_tuning = {good}"));
        let catalog = Catalog::load_dir(&demo.experiments()).expect("valid");
        let experiment = catalog.experiment(DEMO).expect("home-als-rank");
        assert_eq!(experiment.sequential_tuning, want, "sequential_tuning = {good}");
    }
    let pristine = Catalog::load_dir(&gateway::repo().join("experiments")).expect("the demo is valid");
    assert_eq!(
        pristine.experiment(DEMO).expect("home-als-rank").sequential_tuning,
        DEFAULT_TUNING
    );
}

// ---------------------------------------------------------------------------------------------
// 5. `recgw report`
// ---------------------------------------------------------------------------------------------

/// `{:.2e}` of a p-value, or `-` when absent, as the report prints it.
fn printed_p(v: &Value) -> String {
    v.as_f64().map_or_else(|| "-".to_string(), |p| format!("{p:.2e}"))
}

/// `[low, high]` as signed percents, or `-`, as the report prints an interval.
fn printed_interval(low: &Value, high: &Value) -> String {
    match (low.as_f64(), high.as_f64()) {
        (Some(l), Some(h)) => format!("[{:+.1}%, {:+.1}%]", l * 100.0, h * 100.0),
        _ => "-".to_string(),
    }
}

/// The report is how analysts read the endpoint: on the three-arm experiment its table has the
/// always-valid columns, each arm's row shows the API's decision, always-valid interval and
/// the Holm-adjusted p-values (not the raw ones), and it says `Act on `decision`` with N* and
/// that p-values are Holm-adjusted for the 2 arms compared; its CSV carries the new columns
/// with the endpoint's values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_shows_holm_adjusted_p_values_and_decisions() {
    let demo = three_arm_demo();
    let (gw, _redis) = launch(&demo, Mode::Memory).await;
    let (_, body) = three_arm_traffic(&gw).await;
    let url = gw.base();
    let table = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || report(&url, THREE, None))
            .await
            .expect("report thread")
    };
    let lines: Vec<&str> = table.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("arm "))
        .unwrap_or_else(|| panic!("no header:\n{table}"));
    for column in ["always-valid CI", "av p-value", "decision"] {
        assert!(lines[at].contains(column), "column {column:?}:\n{table}");
    }
    let arms = body["arms"].as_array().expect("arms");
    for (arm, row) in arms.iter().zip(&lines[at + 1..]) {
        let name = arm["name"].as_str().expect("name");
        assert_eq!(
            row.split_whitespace().next(),
            Some(name),
            "one row per arm, in order:\n{table}"
        );
        let cells: Vec<&str> = row.split_whitespace().collect();
        let n = cells.len();
        assert_eq!(
            cells[n - 2],
            arm["decision"].as_str().unwrap_or("-"),
            "decision of {name}:\n{table}"
        );
        assert_eq!(
            cells[n - 3],
            printed_p(&arm["sequential_p_value_adjusted"]),
            "av p-value of {name}:\n{table}"
        );
        let interval = printed_interval(&arm["sequential_lift_low"], &arm["sequential_lift_high"]);
        let fixed_at = n - 3 - interval.split_whitespace().count() - 1;
        assert_eq!(
            cells[fixed_at + 1..n - 3].join(" "),
            interval,
            "always-valid CI of {name}:\n{table}"
        );
        assert_eq!(
            cells[fixed_at],
            printed_p(&arm["p_value_adjusted"]),
            "p-value of {name}:\n{table}"
        );
    }
    let better = &arms[2];
    assert_ne!(
        printed_p(&better["sequential_p_value"]),
        printed_p(&better["sequential_p_value_adjusted"]),
        "the adjustment shows: {better}"
    );
    let act_on: Vec<&&str> = lines.iter().filter(|l| l.starts_with("Act on `decision`")).collect();
    assert_eq!(act_on.len(), 1, "one Act on line:\n{table}");
    assert!(act_on[0].contains("N* = 5000"), "names N*:\n{table}");
    assert!(
        lines.contains(&"p-values are Holm-adjusted for the 2 arms compared with the control."),
        "the Holm line:\n{table}"
    );

    let csv = tokio::task::spawn_blocking(move || report(&url, THREE, Some("csv")))
        .await
        .expect("report thread");
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 1 + arms.len(), "{csv}");
    let columns: Vec<&str> = rows[0].split(',').collect();
    for (arm, row) in arms.iter().zip(&rows[1..]) {
        let cells: Vec<&str> = row.split(',').collect();
        assert_eq!(cells.len(), columns.len(), "{row}");
        for field in SEQUENTIAL.into_iter().chain(ADJUSTED).chain(["decision"]) {
            let at = columns
                .iter()
                .position(|c| *c == field)
                .unwrap_or_else(|| panic!("no column {field}: {}", rows[0]));
            let same = match arm.get(field) {
                None => cells[at].is_empty(),
                Some(Value::String(s)) => cells[at] == s,
                Some(v) => cells[at].parse::<f64>().ok() == v.as_f64(),
            };
            assert!(
                same,
                "csv {}.{field} = {:?}, endpoint {:?}",
                arm["name"],
                cells[at],
                arm.get(field)
            );
        }
    }
    gw.stop().await;
}
