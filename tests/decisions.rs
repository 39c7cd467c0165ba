//! Decisions an analyst may act on at any look (../shared/DESIGN.md §5
//! `GET /experiments/{id}/results`, §3 `sequential_tuning`; ../shared/STATISTICS.md §1–3): the
//! always-valid lift interval and p-value of each arm compared with the control (the confidence
//! sequence of Waudby-Smith et al. 2023 as GrowthBook's `docs/statistics/sequential.mdx` states
//! it, on the log ratio of the CTRs with its delta-method variance over users, `N` the users of
//! both arms), Holm-adjusted p-values when several arms are compared, the per-arm `decision`,
//! and how `recgw report` and `recgw validate` show and check them.
//!
//! Users are the unit of analysis: each user is one observation, with their clicks and
//! impressions in the arm. Real `recgw` gateways run in this process on free loopback ports
//! over copies of the repository's `experiments/` and `models/` (`common::gateway::DemoCopy`);
//! where a test needs three arms it writes `default-three-arms` (arms `control`, `same`,
//! `better`, a third of the users each, on the demo placement `default`) into its own copy.
//! The simulated users differ from one another: each looks at its own number of the page's
//! items (5 to 20) and clicks at its own propensity around its arm's CTR, so the variance
//! between users is not the binomial one and the per-user sums' every term matters. Every test
//! keeps a ledger of what the gateway served and accepted, per arm and per user
//! `(clicks, impressions)`, waits until the results show exactly those counts and per-user
//! sums, and computes every expected statistic here, from the ledger's rows, with
//! `common/stats.rs` and its own Holm's step-down — never from the response.
//!
//! 0. the test's own statistics against GrowthBook's gbstats (its delta method over users) and
//!    statsmodels;
//! 1. three arms at seeded CTRs 4%, 4% and 7%: every sequential figure, both adjusted
//!    p-values, the decisions, `comparisons` and `adjustment`, without Redis, on one Redis node
//!    and on a 3-node Redis Cluster; and two candidates each significant alone but not after
//!    Holm's adjustment are `inconclusive`;
//! 2. the demo's two-arm `home-als-rank`: no adjustment, default tuning 5000 users, and a
//!    reloaded `sequential_tuning = 20000` changes the interval to the formula's at N* = 20000
//!    (and a reload with 0 is refused);
//! 3. undefined figures: no impressions, an arm with fewer than two users, no variation between
//!    users, a control without clicks, an arm without clicks (an undefined p-value still counts
//!    in Holm's adjustment), a sample-ratio mismatch, a shadow arm and an interleave experiment;
//! 4. `recgw validate` refuses a `sequential_tuning` that is not a finite number ≥ 1;
//! 5. `recgw report` on the three-arm experiment: Holm line, adjusted p-values, decisions.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::assignment::bucket;
use common::cli::{self, report_stdout as report};
use common::edits::with_lines;
use common::events::{self, ArmWant, ClientEvent, Counts, Kind, arms_match, post_all_accepted};
use common::gateway::{self, DemoCopy, TestGateway, eventually};
use common::page::{Page, recommend};
use common::redis::{Mode, Redis};
use common::rng::{Rng, fnv};
use common::stats::{self, ALPHA, UserRow, close};
use recgw::experiment::Catalog;
use reqwest::Method;
use serde_json::{Value, json};

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
/// Items asked for per page: the demo models hold 20 per user, so each page has 20 items.
const PAGE: usize = 20;
/// The fewest items of a page a simulated user looks at; the most is [`PAGE`].
const MIN_DEPTH: usize = 5;
/// Seed of how many items of its page each user looks at.
const DEPTH_SEED: u64 = 0xDE97_0000;
/// The default `sequential_tuning` (N*, users of a comparison).
const DEFAULT_TUNING: f64 = 5000.0;
/// Exposures are flushed to Redis every second; waits for one start after this.
const FLUSH: Duration = Duration::from_millis(1100);
/// How long a background effect (a flush, a reload) gets before a test fails.
const WAIT: Duration = Duration::from_secs(10);
/// The sequential figures of an arm, in the order the contract names them.
const SEQUENTIAL: [&str; 3] = ["sequential_lift_low", "sequential_lift_high", "sequential_p_value"];
/// The Holm-adjusted p-values of an arm.
const ADJUSTED: [&str; 2] = ["p_value_adjusted", "sequential_p_value_adjusted"];

/// Why a comparison is undefined, as the contract words it (`src/analysis/significance.rs`).
const NO_IMPRESSIONS: &str = "an arm has no impressions";
const FEW_USERS: &str = "an arm has fewer than two users: no variance between users yet";
const CONTROL_WITHOUT_CLICKS: &str = "the control has no clicks";
const ARM_WITHOUT_CLICKS: &str = "the arm has no clicks";
const NO_VARIATION: &str = "no variation between users: each user's clicks are the same fraction of their impressions";

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

/// A full page of an experiment arm, not forced and not a fallback, with the index of the
/// arm that served it, which the ledger counts by.
#[derive(Debug, Clone)]
struct ArmPage {
    page: Page,
    /// Index of the arm that served it, in the experiment's arm order.
    arm: usize,
}

impl ArmPage {
    /// The items the user looks at: the first [`MIN_DEPTH`] to [`PAGE`] of the page, how many
    /// by a generator seeded from the user, so that users have different numbers of
    /// impressions (every run, every mode alike).
    fn shown(&self) -> &[String] {
        let spread = (PAGE - MIN_DEPTH + 1) as u64;
        let depth = MIN_DEPTH + Rng::new(fnv(&self.page.user) ^ DEPTH_SEED).below(spread) as usize;
        &self.page.items[..depth.min(self.page.items.len())]
    }
}

/// A page of `limit=20` for `user` on `placement`: a full page of `experiment`, not forced,
/// not a fallback, from one of `arms`.
async fn arm_page(gw: &TestGateway, user: &str, placement: &str, experiment: &str, arms: &[&str]) -> ArmPage {
    let page = recommend(gw, user, &format!("placement={placement}&limit={PAGE}"))
        .await
        .expect_experiment(experiment);
    let body = &page.body;
    assert!(!page.forced, "{body}");
    assert_ne!(body["source"], "fallback", "the user is in the arm's model: {body}");
    let arm = arms
        .iter()
        .position(|a| *a == page.arm)
        .unwrap_or_else(|| panic!("arm {:?} is none of {arms:?}: {body}", page.arm));
    assert_eq!(page.items.len(), PAGE, "a full page: {body}");
    ArmPage { page, arm }
}

/// Serves each of `users` once, each a user of its arm in `ledger` from then on.
async fn serve(
    gw: &TestGateway,
    users: &[String],
    placement: &str,
    experiment: &str,
    arms: &[&str],
    ledger: &mut Ledger,
) -> Vec<ArmPage> {
    let mut pages = Vec::with_capacity(users.len());
    for user in users {
        let page = arm_page(gw, user, placement, experiment, arms).await;
        ledger.served(&page);
        pages.push(page);
    }
    pages
}

/// Users `from..=to` as ids (the demo models know users 0..2000).
fn users(from: u32, to: u32) -> Vec<String> {
    (from..=to).map(|u| u.to_string()).collect()
}

/// One event and the arm and user it must be credited to.
#[derive(Debug, Clone)]
struct Event {
    arm: usize,
    user: String,
    kind: Kind,
    body: Value,
}

impl ClientEvent for Event {
    fn to_json(&self) -> Value {
        self.body.clone()
    }
}

/// `kind` on `item` of `page`, with the id `{user}-{i|c}-{item}`.
fn event(page: &ArmPage, kind: Kind, item: &str) -> Event {
    let id = format!("{}-{}-{item}", page.page.user, kind.tag());
    Event {
        arm: page.arm,
        user: page.page.user.clone(),
        kind,
        body: events::event(kind.name(), &page.page.token, item, Some(&id)),
    }
}

/// An impression of every item each user looks at ([`ArmPage::shown`]).
fn impressions(pages: &[ArmPage]) -> Vec<Event> {
    pages
        .iter()
        .flat_map(|p| p.shown().iter().map(move |item| event(p, Kind::Impression, item)))
        .collect()
}

/// Uniform in `[0, 1)`.
fn uniform(rng: &mut Rng) -> f64 {
    (rng.next() >> 11) as f64 / (1u64 << 53) as f64
}

/// Clicks of users who differ: a user of arm `a` has the propensity `ctr[a]·m`, `m` uniform in
/// `[0, 2)` (mean 1), and clicks each item it looks at with that probability; `m` and the
/// clicks are drawn by a generator seeded from the user and `seed`, so every run (and every
/// mode) clicks alike.
fn clicks(pages: &[ArmPage], ctr: &[f64], seed: u64) -> Vec<Event> {
    let mut events = Vec::new();
    for page in pages {
        let mut rng = Rng::new(fnv(&page.page.user) ^ seed);
        let propensity = (ctr[page.arm] * 2.0 * uniform(&mut rng)).min(1.0);
        for item in page.shown() {
            if rng.chance(propensity) {
                events.push(event(page, Kind::Click, item));
            }
        }
    }
    events
}

/// What one arm was served and accepted: its responses and each of its users'
/// `(clicks, impressions)`, a user served without events being `(0, 0)`.
#[derive(Debug, Clone, Default)]
struct ArmLedger {
    exposures: u64,
    users: BTreeMap<String, UserRow>,
}

impl ArmLedger {
    /// The users' rows, as `common/stats.rs` takes them.
    fn rows(&self) -> Vec<UserRow> {
        self.users.values().copied().collect()
    }

    /// `[n, Σc, Σi, Σc², Σi², Σc·i]` of the users.
    fn sums(&self) -> [u64; 6] {
        stats::sums(&self.rows())
    }
}

/// What the results must show, per arm in arm order.
#[derive(Debug, Clone)]
struct Ledger {
    names: Vec<String>,
    arms: Vec<ArmLedger>,
}

impl Ledger {
    /// Nothing served yet to the arms `names`.
    fn new(names: &[&str]) -> Ledger {
        Ledger {
            names: names.iter().map(|n| n.to_string()).collect(),
            arms: vec![ArmLedger::default(); names.len()],
        }
    }

    /// Records a response: an exposure of its arm, and its user one of the arm's users.
    fn served(&mut self, page: &ArmPage) {
        let arm = &mut self.arms[page.arm];
        arm.exposures += 1;
        arm.users.entry(page.page.user.clone()).or_insert((0, 0));
    }

    /// Credits an event answered accepted (for the first time) to its user.
    fn accepted(&mut self, event: &Event) {
        let row = self.arms[event.arm]
            .users
            .get_mut(&event.user)
            .unwrap_or_else(|| panic!("an event of a user the arm served: {event:?}"));
        match event.kind {
            Kind::Impression => row.1 += 1,
            Kind::Click => row.0 += 1,
        }
    }

    /// The rows of every arm, in arm order.
    fn rows(&self) -> Vec<Vec<UserRow>> {
        self.arms.iter().map(ArmLedger::rows).collect()
    }

    /// Whether `body` shows exactly these counts arm by arm — exposures, impressions, clicks,
    /// the exact `users` and `per_user_sums` equal to [`stats::sums`] of the rows; the
    /// differences otherwise.
    fn matches(&self, body: &Value) -> Result<(), String> {
        let sums: Vec<[u64; 6]> = self.arms.iter().map(ArmLedger::sums).collect();
        let want: Vec<ArmWant> = self
            .names
            .iter()
            .zip(&self.arms)
            .zip(&sums)
            .map(|((name, arm), sums)| {
                let counts = Counts {
                    exposures: arm.exposures,
                    impressions: sums[2],
                    clicks: sums[1],
                };
                counts.of(name)
            })
            .collect();
        arms_match(body, "", &want)?;
        let mut diffs = Vec::new();
        for ((name, sums), arm) in self.names.iter().zip(&sums).zip(body["arms"].as_array().expect("arms")) {
            if arm["users"].as_u64() != Some(sums[0]) {
                diffs.push(format!("{name}.users = {} (want {})", arm["users"], sums[0]));
            }
            let got = stats::PER_USER_SUMS.map(|field| arm["per_user_sums"][field].as_u64());
            if got != sums.map(Some) {
                diffs.push(format!(
                    "{name}.per_user_sums = {} (want {sums:?} in the order {:?})",
                    arm["per_user_sums"],
                    stats::PER_USER_SUMS
                ));
            }
        }
        if diffs.is_empty() {
            Ok(())
        } else {
            Err(diffs.join("; "))
        }
    }
}

/// Posts `events` in batches of 1000 (the most one batch may hold), expecting every one
/// accepted, and credits them to their users in the ledger.
async fn post_all(gw: &TestGateway, events: &[Event], ledger: &mut Ledger) {
    post_all_accepted(gw, events, 1000).await;
    for e in events {
        ledger.accepted(e);
    }
}

/// Waits (one flush period, then at most [`WAIT`]) until the results of `experiment` show
/// exactly what `ledger` says was served and accepted, per-user sums included; returns them.
async fn settled(gw: &TestGateway, experiment: &str, ledger: &Ledger) -> Value {
    tokio::time::sleep(FLUSH).await;
    eventually(WAIT, "results equal what was served and accepted", async || {
        let body = events::results(gw, experiment, "").await;
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

/// Whether the users of `rows` differ in their CTR: some user's clicks are not the arm's
/// fraction `Σc/Σi` of their impressions (`c·Σi ≠ i·Σc`, exact in integers). Without that the
/// delta-method variance of the arm's CTR is 0.
fn varies(rows: &[UserRow]) -> bool {
    let [_, clicks, impressions, ..] = stats::sums(rows);
    rows.iter().any(|&(c, i)| c * impressions != i * clicks)
}

/// Why a comparison of `arm` with `control` has no variance yet, if it has none: no
/// impressions in an arm, fewer than two users in an arm, or no variation between users in
/// either arm.
fn no_variance(arm: &[UserRow], control: &[UserRow]) -> Option<&'static str> {
    let (a, c) = (stats::sums(arm), stats::sums(control));
    if a[2] == 0 || c[2] == 0 {
        Some(NO_IMPRESSIONS)
    } else if a[0] < 2 || c[0] < 2 {
        Some(FEW_USERS)
    } else if !varies(arm) && !varies(control) {
        Some(NO_VARIATION)
    } else {
        None
    }
}

/// The confidence sequence of the contract ([`stats::sequential`]: the log ratio of the CTRs,
/// its delta-method variance over the users, `N` the users of both arms) for `arm` against
/// `control` at tuning `tuning` (N*); `Err` names why it is undefined, in the contract's order:
/// impressions and users first, then the clicks the log ratio needs, then the variation.
fn sequential(arm: &[UserRow], control: &[UserRow], tuning: f64) -> Result<Sequential, &'static str> {
    let (a, c) = (stats::sums(arm), stats::sums(control));
    let no_variance = no_variance(arm, control);
    if let Some(reason) = no_variance.filter(|r| *r != NO_VARIATION) {
        return Err(reason);
    }
    if c[1] == 0 {
        return Err(CONTROL_WITHOUT_CLICKS);
    }
    if a[1] == 0 {
        return Err(ARM_WITHOUT_CLICKS);
    }
    if let Some(reason) = no_variance {
        return Err(reason);
    }
    let (low, high, p) = stats::sequential(arm, control, tuning);
    Ok(Sequential { low, high, p })
}

/// The fixed-horizon two-sided p-value of the CTR difference ([`stats::p_value`]); `None`
/// while the comparison has no variance.
fn fixed_p(arm: &[UserRow], control: &[UserRow]) -> Option<f64> {
    no_variance(arm, control)
        .is_none()
        .then(|| stats::p_value(arm, control))
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
/// the ledger's rows, at tuning `tuning`, with the experiment's `srm_detected`.
fn expected(ledger: &Ledger, tuning: f64, srm_detected: bool) -> Vec<Expected> {
    let rows = ledger.rows();
    let control = &rows[0];
    let compared = &rows[1..];
    let figures: Vec<Result<Sequential, &'static str>> =
        compared.iter().map(|a| sequential(a, control, tuning)).collect();
    let several = compared.len() > 1;
    let fixed = holm(&compared.iter().map(|a| fixed_p(a, control)).collect::<Vec<_>>());
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
/// that users are the unit and exact, `tuning`, and as many comparisons as `want` has.
fn assert_decisions(body: &Value, want: &[Expected], tuning: f64) {
    assert_eq!(body["unit"], "user", "{body}");
    assert_eq!(body["users_exact"], true, "every user was counted: {body}");
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
                    assert_eq!(assert_undefined(arm, field), reason, "{field}: {arm}");
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

/// Users by kind: `(clicks, impressions, how many users)`, expanded into rows.
fn rows_of(kinds: &[(u64, u64, usize)]) -> Vec<UserRow> {
    kinds
        .iter()
        .flat_map(|&(c, i, users)| std::iter::repeat_n((c, i), users))
        .collect()
}

/// The expectations of every other test come from `common/stats.rs` (through [`sequential`]
/// and [`fixed_p`]) and [`holm`] here: they must reproduce values computed outside this
/// repository, or a bug in them would pass as the gateway's. For per-user rows that differ in
/// impressions and clicks (users without events among them), GrowthBook's own code, gbstats
/// 0.8.0, its delta method over users (`RatioStatistic`) and its sequential test fed the log
/// ratio:
///
/// ```python
/// def stat(kinds):  # [(c, i, users)]
///     n = sum(k for _, _, k in kinds); s = lambda f: sum(f(c, i) * k for c, i, k in kinds)
///     return RatioStatistic(n=n, m_statistic=SampleMeanStatistic(n=n, sum=s(lambda c, i: c),
///         sum_squares=s(lambda c, i: c * c)), d_statistic=SampleMeanStatistic(n=n,
///         sum=s(lambda c, i: i), sum_squares=s(lambda c, i: i * i)),
///         m_d_sum_of_products=s(lambda c, i: c * i))
/// class LogRatio(SequentialTwoSidedTTest):
///     def __init__(s, b, a, tuning):
///         s.stat_a, s.stat_b, s.sequential_tuning_parameter = a, b, tuning
///         s.alpha, s.test_value = 0.05, 0
///         s.mu = log(b.mean / a.mean)
///         s.var = b.variance / (b.n * b.mean**2) + a.variance / (a.n * a.mean**2)
///     point_estimate = property(lambda s: s.mu)
///     variance = property(lambda s: s.var)
/// b, a = stat(arm), stat(control); t = LogRatio(b, a, tuning)
/// low, high = exp(t.confidence_interval) - 1; p = t.p_value; lift = b.mean / a.mean - 1
/// fixed = 2 * scipy.stats.norm.sf(abs(b.mean - a.mean) / sqrt(b.variance / b.n + a.variance / a.n))
/// ```
///
/// and statsmodels' `multipletests(p, method="holm")`.
#[test]
fn reference_statistics_match_published_values() {
    type Kinds = &'static [(u64, u64, usize)];
    // (arm, control, tuning, [lift, low, high, p, fixed-horizon p])
    let reference: [(Kinds, Kinds, f64, [f64; 5]); 6] = [
        (
            &[(0, 10, 40), (1, 10, 25), (2, 15, 10), (3, 20, 5), (0, 0, 5)],
            &[(0, 10, 45), (1, 10, 20), (2, 15, 8), (1, 20, 5), (0, 0, 7)],
            5000.0,
            [
                0.41463414634146334,
                -0.44568181954031905,
                2.610182452135538,
                0.7352284889972177,
                0.04415793282630306,
            ],
        ),
        (
            &[
                (0, 12, 300),
                (1, 12, 150),
                (2, 12, 60),
                (4, 18, 30),
                (6, 20, 10),
                (0, 0, 20),
            ],
            &[(0, 12, 380), (1, 12, 120), (2, 12, 40), (3, 18, 10), (0, 0, 20)],
            5000.0,
            [
                0.8994802890100138,
                0.39721168632934156,
                1.5823040299758167,
                3.6890629131109543e-07,
                2.5516387151230534e-11,
            ],
        ),
        (
            &[(0, 5, 500), (1, 5, 100), (0, 40, 50), (5, 40, 40), (12, 60, 10)],
            &[(0, 5, 520), (1, 5, 80), (0, 40, 60), (3, 40, 30), (8, 60, 10)],
            1000.5,
            [
                0.6799999999999999,
                0.12190576962039734,
                1.5157193023037694,
                0.0031593478894653714,
                0.00013779285468179468,
            ],
        ),
        (
            &[(0, 20, 700), (1, 20, 200), (2, 20, 60), (3, 20, 20), (0, 0, 20)],
            &[(0, 20, 600), (1, 20, 250), (2, 20, 100), (4, 20, 40), (7, 20, 10)],
            2000.0,
            [
                -0.42977190876350546,
                -0.5503724837219433,
                -0.27682344993732144,
                3.526084297110877e-10,
                6.589873752423729e-12,
            ],
        ),
        (
            &[(0, 15, 8000), (1, 15, 1500), (2, 15, 400), (5, 30, 100)],
            &[(0, 15, 8200), (1, 15, 1400), (2, 15, 330), (5, 30, 70)],
            5000.0,
            [
                0.15837475863768957,
                0.03829077896165978,
                0.29234710414246545,
                0.0011033061770696574,
                2.7015949179604897e-05,
            ],
        ),
        (
            &[(0, 10, 50), (1, 10, 10), (0, 0, 3)],
            &[(0, 10, 48), (1, 10, 11), (2, 10, 1)],
            5000.0,
            [
                -0.23076923076923084,
                -0.9331465194952853,
                7.850937480953306,
                1.0,
                0.5112548351391015,
            ],
        ),
    ];
    for (arm, control, tuning, [lift, low, high, p, fixed]) in reference {
        let (arm, control) = (rows_of(arm), rows_of(control));
        let got = sequential(&arm, &control, tuning).expect("defined");
        assert!(
            close(got.low, low) && close(got.high, high) && close(got.p, p),
            "{arm:?} vs {control:?} at {tuning}: {got:?}"
        );
        assert!(close(stats::lift(&arm, &control).0, lift), "lift {lift}");
        let got = fixed_p(&arm, &control).expect("defined");
        assert!(close(got, fixed), "fixed-horizon p {got} (want {fixed})");
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
}

/// The reasons [`sequential`] and [`fixed_p`] give, in the contract's order, on rows written
/// here: no impressions before fewer than two users before missing clicks before no
/// variation; the fixed-horizon p-value needs variance only.
#[test]
fn the_reference_says_why_a_figure_is_undefined() {
    let varied = rows_of(&[(1, 10, 1), (0, 4, 1), (3, 12, 1), (0, 0, 1)]);
    let no_clicks = rows_of(&[(0, 10, 1), (0, 4, 1), (0, 12, 1)]);
    let identical = rows_of(&[(1, 10, 3)]);
    let one_user = rows_of(&[(2, 10, 1)]);
    let served_only = rows_of(&[(0, 0, 5)]);
    let tuning = DEFAULT_TUNING;
    assert_eq!(sequential(&served_only, &varied, tuning), Err(NO_IMPRESSIONS));
    assert_eq!(sequential(&one_user, &served_only, tuning), Err(NO_IMPRESSIONS));
    assert_eq!(fixed_p(&varied, &served_only), None);
    assert_eq!(sequential(&one_user, &varied, tuning), Err(FEW_USERS));
    assert_eq!(sequential(&one_user, &no_clicks, tuning), Err(FEW_USERS));
    assert_eq!(fixed_p(&varied, &one_user), None);
    assert_eq!(sequential(&varied, &no_clicks, tuning), Err(CONTROL_WITHOUT_CLICKS));
    assert!(fixed_p(&varied, &no_clicks).is_some(), "the control's CTR is 0, known");
    assert_eq!(sequential(&no_clicks, &varied, tuning), Err(ARM_WITHOUT_CLICKS));
    assert!(fixed_p(&no_clicks, &varied).is_some());
    assert_eq!(sequential(&no_clicks, &no_clicks, tuning), Err(CONTROL_WITHOUT_CLICKS));
    assert_eq!(fixed_p(&no_clicks, &no_clicks), None);
    assert_eq!(sequential(&identical, &identical, tuning), Err(NO_VARIATION));
    assert_eq!(fixed_p(&identical, &identical), None);
    assert!(
        sequential(&identical, &varied, tuning).is_ok(),
        "one arm's variation is enough"
    );
    assert!(sequential(&varied, &identical, tuning).is_ok());
}

// ---------------------------------------------------------------------------------------------
// 1. Three arms, in every mode
// ---------------------------------------------------------------------------------------------

/// Seeded CTRs of `control`, `same` and `better` (each user's propensity spread around them).
const THREE_CTR: [f64; 3] = [0.04, 0.04, 0.07];
/// Users served, once each: about 600 per arm, each looking at 5 to 20 items (some 7 500
/// impressions per arm).
const THREE_USERS: u32 = 1800;
/// Seed of the clicks of the three-arm traffic.
const THREE_SEED: u64 = 0xDEC1_5105;

/// Serves users 1..=1800 on the three-arm experiment with 20 items each, posts an impression
/// of every item each user looks at and seeded clicks around [`THREE_CTR`], and waits until
/// the results show exactly that; returns the ledger and the results.
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
            arm.exposures > 500 && arm.users.len() as u64 == arm.exposures,
            "about a third of {THREE_USERS} users in {name}, each served once: {} users, {} exposures",
            arm.users.len(),
            arm.exposures
        );
    }
    let body = settled(gw, THREE, &ledger).await;
    (ledger, body)
}

/// Two candidates against one control, the case the Holm adjustment exists for: with seeded
/// CTRs 4% (control), 4% (`same`) and 7% (`better`) over about 600 users per arm who differ in
/// how many items they look at and how readily they click, every always-valid figure, both
/// Holm-adjusted p-values and each decision equal this file's own computation from the users'
/// rows it ledgered (whose sums the results show exactly), `comparisons` is 2 and `adjustment`
/// `holm`; and the simulation comes out as designed: `better` is `better`, `same`
/// `inconclusive`.
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

redis_modes! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    three_arms_decide_as_computed {
        /// [`three_arms_decide_as_computed`] with the counts in the gateway's memory (no Redis).
        three_arms_decide_as_computed_in_memory => Memory,
        /// [`three_arms_decide_as_computed`] with the counts on one `redis-server`.
        three_arms_decide_as_computed_on_one_redis_node => Node,
        /// [`three_arms_decide_as_computed`] with the counts on a 3-node Redis Cluster.
        three_arms_decide_as_computed_on_a_redis_cluster => Cluster,
    }
}

/// Seed of the order in which [`the_holm_adjustment_can_withhold_a_decision`] clicks the items
/// an arm's users looked at.
const HOLM_SEED: u64 = 0x4019_0000;

/// `decision` reads the Holm-adjusted always-valid p-value, not the raw one: 600 users look at
/// 5 to 20 items each; the control's users click 5% of the items they looked at, and each
/// candidate's users the fewest above the control's CTR whose raw always-valid p-value, on the
/// users' rows, is below 0.05 — in [0.025, 0.05), so that the interval alone leaves out 0 but
/// Holm's 2·p does not pass (the clicks fall on the items an arm's users looked at in a seeded
/// order, so the k-th click is on a random user's item). Both are `inconclusive`, every figure
/// equal to this file's computation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_holm_adjustment_can_withhold_a_decision() {
    let demo = three_arm_demo();
    let (gw, _redis) = launch(&demo, Mode::Memory).await;
    let mut ledger = Ledger::new(&THREE_ARMS);
    let pages = serve(&gw, &users(1, 600), THREE_PLACEMENT, THREE, &THREE_ARMS, &mut ledger).await;
    post_all(&gw, &impressions(&pages), &mut ledger).await;
    let looked = ledger.clone();
    // Per arm, the items its users looked at, in the seeded order its clicks take them.
    let order: Vec<Vec<(&ArmPage, &String)>> = (0..THREE_ARMS.len())
        .map(|arm| {
            let mut shown: Vec<(&ArmPage, &String)> = pages
                .iter()
                .filter(|p| p.arm == arm)
                .flat_map(|p| p.shown().iter().map(move |item| (p, item)))
                .collect();
            Rng::new(HOLM_SEED ^ arm as u64).shuffle(&mut shown);
            shown
        })
        .collect();
    // The rows of `arm` once the first `clicks` of its order are clicked.
    let rows_with = |arm: usize, clicks: usize| -> Vec<UserRow> {
        let mut users = looked.arms[arm].users.clone();
        for (page, _) in &order[arm][..clicks] {
            users.get_mut(&page.page.user).expect("a user of the arm").0 += 1;
        }
        users.into_values().collect()
    };
    let control = rows_with(0, order[0].len() / 20);
    let mut wanted = vec![order[0].len() / 20];
    for (arm, name) in THREE_ARMS.iter().enumerate().skip(1) {
        // Upwards from the control's CTR: the first significant count is a lift, not a drop.
        let at = |clicks| sequential(&rows_with(arm, clicks), &control, DEFAULT_TUNING);
        let even = wanted[0] * order[arm].len() / order[0].len();
        let clicks = (even..=order[arm].len())
            .find(|&clicks| at(clicks).is_ok_and(|s| s.p < ALPHA))
            .expect("some click count is significant");
        let p = at(clicks).expect("defined").p;
        assert!(
            2.0 * p >= ALPHA,
            "{clicks} clicks in {name}: p = {p} is not in [α/2, α)"
        );
        wanted.push(clicks);
    }
    let events: Vec<Event> = wanted
        .iter()
        .zip(&order)
        .flat_map(|(&clicks, order)| {
            order[..clicks]
                .iter()
                .map(|(page, item)| event(page, Kind::Click, item))
        })
        .collect();
    post_all(&gw, &events, &mut ledger).await;
    for (arm, &clicks) in wanted.iter().enumerate() {
        assert_eq!(ledger.arms[arm].rows(), rows_with(arm, clicks), "{}", THREE_ARMS[arm]);
    }
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
/// `*_adjusted` fields) and the default N* is 5000 users; the treatment, seeded at half the
/// control's CTR (about 500 users per arm, differing users), is `worse`. Then
/// `sequential_tuning = 20000` written into the TOML and reloaded changes the interval (same
/// users, same counts) to the formula's at N* = 20000, and a reload with
/// `sequential_tuning = 0` is refused naming the field, the 20000 staying in force.
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
    // The same users and another N*: only the always-valid figures moved.
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
/// whenever they cannot be computed: before any impression ("an arm has no impressions"); on
/// the two-arm demo experiment, with one user in each arm ("an arm has fewer than two users"),
/// then two users in each arm all alike, ten impressions and a click each ("no variation
/// between users", the fixed-horizon p-value with the same reason each time); when the
/// control has no clicks (every compared arm says "the control has no clicks"); when one arm
/// has impressions but no clicks ("the arm has no clicks" under each of the three fields, no
/// decision), which still counts as a hypothesis with p = 1 in the other arm's Holm
/// adjustment; and for the control, always ("this is the control").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undefined_sequential_figures_have_reasons() {
    let demo = three_arm_demo();
    let (gw, _redis) = launch(&demo, Mode::Memory).await;
    let mut ledger = Ledger::new(&THREE_ARMS);

    // Nothing served yet.
    let body = events::results(&gw, THREE, "").await;
    ledger.matches(&body).expect("no counts yet");
    let want = expected(&ledger, DEFAULT_TUNING, false);
    assert!(want.iter().all(|w| w.sequential == Err(NO_IMPRESSIONS)), "{want:?}");
    assert_decisions(&body, &want, DEFAULT_TUNING);
    for arm in &body["arms"].as_array().expect("arms")[1..] {
        for field in SEQUENTIAL.into_iter().chain(ADJUSTED).chain(["decision"]) {
            assert!(arm.get(field).is_none(), "{field} without impressions: {arm}");
        }
        assert_undefined(arm, "sequential_p_value");
    }

    // The two-arm demo: a user per arm (the control owns buckets [0, 5000) of its hash), then
    // another just like it, each looking at ten items and clicking the first.
    let (control, treatment): (Vec<String>, Vec<String>) =
        users(1, 100).into_iter().partition(|user| bucket(DEMO, user) < 5000);
    assert!(control.len() >= 2 && treatment.len() >= 2, "users in both arms");
    let mut two = Ledger::new(&DEMO_ARMS);
    for (round, reason) in [FEW_USERS, NO_VARIATION].into_iter().enumerate() {
        let pair = [control[round].clone(), treatment[round].clone()];
        let pages = serve(&gw, &pair, DEMO_PLACEMENT, DEMO, &DEMO_ARMS, &mut two).await;
        let events: Vec<Event> = pages
            .iter()
            .flat_map(|page| {
                let shown = page.page.items[..10]
                    .iter()
                    .map(move |item| event(page, Kind::Impression, item));
                shown.chain([event(page, Kind::Click, &page.page.items[0])])
            })
            .collect();
        post_all(&gw, &events, &mut two).await;
        assert_eq!(
            two.rows(),
            vec![vec![(1, 10); round + 1]; 2],
            "{} users per arm, alike",
            round + 1
        );
        let body = settled(&gw, DEMO, &two).await;
        let want = expected(&two, DEFAULT_TUNING, false);
        assert_eq!(want[0].sequential, Err(reason), "{:?}", two.rows());
        assert_decisions(&body, &want, DEFAULT_TUNING);
        let treatment = &body["arms"][1];
        assert_eq!(assert_undefined(treatment, "p_value"), reason, "{treatment}");
        assert_undefined(treatment, "decision");
    }

    // Impressions everywhere, clicks only in `better`: no comparison has a control CTR.
    let pages = serve(&gw, &users(1, 600), THREE_PLACEMENT, THREE, &THREE_ARMS, &mut ledger).await;
    post_all(&gw, &impressions(&pages), &mut ledger).await;
    post_all(&gw, &clicks(&pages, &[0.0, 0.0, 0.1], 0xB0), &mut ledger).await;
    let body = settled(&gw, THREE, &ledger).await;
    let sums: Vec<[u64; 6]> = ledger.arms.iter().map(ArmLedger::sums).collect();
    assert!(sums.iter().all(|s| s[2] > 0), "{sums:?}");
    assert_eq!(sums[0][1], 0);
    let want = expected(&ledger, DEFAULT_TUNING, false);
    assert!(
        want.iter().all(|w| w.sequential == Err(CONTROL_WITHOUT_CLICKS)),
        "{want:?}"
    );
    assert_decisions(&body, &want, DEFAULT_TUNING);
    for arm in &body["arms"].as_array().expect("arms")[1..] {
        for field in SEQUENTIAL {
            assert_eq!(assert_undefined(arm, field), CONTROL_WITHOUT_CLICKS, "{field}: {arm}");
        }
        assert_undefined(arm, "decision");
        assert!(arm.get("sequential_p_value_adjusted").is_none(), "{arm}");
    }

    // Then clicks in the control too (on the pages already shown): `same` alone has none.
    post_all(&gw, &clicks(&pages, &[0.05, 0.0, 0.0], 0xC0), &mut ledger).await;
    let body = settled(&gw, THREE, &ledger).await;
    let sums: Vec<[u64; 6]> = ledger.arms.iter().map(ArmLedger::sums).collect();
    assert!(sums[0][1] > 0 && sums[2][1] > 0, "{sums:?}");
    assert_eq!(sums[1][1], 0);
    let want = expected(&ledger, DEFAULT_TUNING, false);
    assert_decisions(&body, &want, DEFAULT_TUNING);
    let (same, better) = (&body["arms"][1], &body["arms"][2]);
    for field in SEQUENTIAL {
        assert_eq!(assert_undefined(same, field), ARM_WITHOUT_CLICKS, "{field}: {same}");
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
/// DESIGN.md §3.1, computed here; the results count them exactly), `srm_detected` is true and
/// `decision` is absent with a reason, while the always-valid figures themselves are still
/// given, equal to the formula's over the users' rows, and would decide on their own.
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
        let body = events::results(&gw, experiment, "").await;
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

/// `sequential_tuning` is N*, a number of users: `recgw validate` refuses 0, a negative,
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
/// the Holm-adjusted p-values (not the raw ones), and it says `Act on `decision`` with N* (in
/// users) and
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
    assert!(
        act_on[0].contains("N* = 5000") && act_on[0].contains("users"),
        "names N*, in users:\n{table}"
    );
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
