//! Per-placement holdouts end to end (../shared/DESIGN.md §3 `experiments/holdouts.toml`, §3.1;
//! `src/experiment/validate.rs` `build_holdouts`/`check_holdouts`, `src/experiment/assign.rs`,
//! `src/gateway/mod.rs` `recommend`, `src/feedback/events.rs`): a holdout promises that its users
//! never see an experiment, and its results (`holdout:<placement>`) compare them with everyone
//! else on the placement, so a test that trusted the code's own assignment could not catch a
//! user leaking into an arm or an event counted twice.
//!
//! Real `recgw` gateways run in this process on free loopback ports over copies of the
//! repository's `experiments/` and `models/` (`common::gateway::DemoCopy`), each test with its
//! own `redis-server` (`common::redis`) where Redis is involved. Every user's arm is computed
//! here with the §3.1 hash (`common::assignment::bucket`), and every test keeps a ledger of what
//! the client was served and got accepted for, which the results must equal exactly.
//!
//! 1. held-out users never see an experiment arm (no Redis, one node, a 3-node cluster), and
//!    both results equal the ledger: the holdout's arms and the experiment's own arms;
//! 2. replayed events (same event ids, a retried batch, through another replica on the same
//!    Redis) count nothing twice in either results;
//! 3. `recgw validate` refuses a holdout overlapping an experiment, an unknown placement, bad
//!    traffic and an unknown key, naming the field, and accepts a valid one;
//! 4. a holdout on a placement without any experiment: exactly the users the hash says are
//!    held out, the rest exposed, with an SRM p-value; listed and explained by the API.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::assignment::bucket;
use common::cli;
use common::edits::{copy_of_experiments, edit};
use common::events::{self, ArmLedger, Claims, ClientEvent, Kind, arm_named, arms_match, post_all_accepted};
use common::gateway::{self, DemoCopy, TestGateway, eventually};
use common::page::{Page, recommend};
use common::redis::{Mode, Redis};
use common::rng::{Rng, fnv};
use serde_json::{Value, json};

const EXPERIMENT: &str = "home-als-rank";
const HOME: &str = "home";
const HOLDOUT_HOME: &str = "holdout:home";
const HOLDOUT_ARM: &str = "holdout";
const EXPOSED_ARM: &str = "exposed";
const CONTROL: &str = "control";
const TREATMENT: &str = "treatment";
/// Models of `home-als-rank`'s arms, and the placements' default.
const CONTROL_MODEL: &str = "als-v1";
const TREATMENT_MODEL: &str = "als-v2";
const DEFAULT_MODEL: &str = "popular";
/// The demo's QA override of `home-als-rank` (forced into the treatment, never counted there).
const QA_USER: &str = "qa-user-1";
/// The holdout of the `home` tests, percent; the experiment takes the rest of the placement.
const HOLDOUT_PERCENT: f64 = 10.0;
/// How long a background effect (an exposure flush) gets before a test fails.
const WAIT: Duration = Duration::from_secs(15);
/// Exposures are flushed to Redis every second; a wait for one more flush.
const FLUSH: Duration = Duration::from_millis(1200);

// ---------------------------------------------------------------------------------------------
// Demo copies with a holdout, and gateways over them
// ---------------------------------------------------------------------------------------------

/// A copy of the demo whose `home-als-rank` covers `experiment_traffic` of `home` (the demo's
/// line `traffic = [0.0, 100.0]` replaced) and whose `holdouts.toml` is `holdouts`.
fn holdout_demo(experiment_traffic: &str, holdouts: &str) -> DemoCopy {
    let demo = DemoCopy::new();
    narrow(&demo.experiments(), experiment_traffic);
    std::fs::write(demo.experiments().join("holdouts.toml"), holdouts).expect("write holdouts.toml");
    demo
}

/// Replaces the traffic line of `home-als-rank.toml` in `dir` with `traffic`.
fn narrow(dir: &Path, traffic: &str) {
    edit(
        dir,
        &format!("{EXPERIMENT}.toml"),
        "traffic = [0.0, 100.0]",
        &format!("traffic = {traffic}"),
    );
}

/// The `home` demo of tests 1 and 2: `home-als-rank` on `[10, 100]`, the holdout `[0, 10]`.
fn home_demo() -> DemoCopy {
    holdout_demo(
        "[10.0, 100.0]",
        "[holdouts.home]\ntraffic = [0.0, 10.0]\ndescription = \"global holdout of home\"\n",
    )
}

/// A gateway over `demo` on `redis_url`, ready (every model loaded) and, with Redis, once a
/// Redis command succeeded.
async fn launch(demo: &DemoCopy, redis_url: &str) -> TestGateway {
    TestGateway::launch_up(&demo.settings(redis_url)).await
}

// ---------------------------------------------------------------------------------------------
// What §3.1 says each user gets, computed here
// ---------------------------------------------------------------------------------------------

/// What a response must say, and what it counts for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Expect {
    /// `experiment` of the response (`None`: null).
    experiment: Option<String>,
    arm: String,
    forced: bool,
    model: String,
    /// `fallback_reason` of the response (`None`: not a fallback).
    fallback: Option<&'static str>,
    /// The (experiment, arm) results this response and its events count for.
    credits: Vec<(String, String)>,
}

/// §3.1 with a holdout of `[0, holdout_bp)` on `placement`: the QA override first (on `home`),
/// then the holdout, then `home-als-rank` on the rest of `home` (none elsewhere). Every
/// response not held out counts for the holdout's `exposed` arm too.
fn expect(placement: &str, user: &str, holdout_bp: u16) -> Expect {
    let holdout = format!("holdout:{placement}");
    let exposed = (holdout.clone(), EXPOSED_ARM.to_string());
    if placement == HOME && user == QA_USER {
        return Expect {
            experiment: Some(EXPERIMENT.into()),
            arm: TREATMENT.into(),
            forced: true,
            // The demo's models do not know the QA user: the treatment answers with the
            // placement default.
            model: DEFAULT_MODEL.into(),
            fallback: Some("user_not_in_model"),
            credits: vec![exposed],
        };
    }
    if bucket(&format!("placement:{placement}"), user) < holdout_bp {
        return Expect {
            experiment: Some(holdout.clone()),
            arm: HOLDOUT_ARM.into(),
            forced: false,
            model: DEFAULT_MODEL.into(),
            fallback: None,
            credits: vec![(holdout, HOLDOUT_ARM.into())],
        };
    }
    if placement != HOME {
        return Expect {
            experiment: None,
            arm: "default".into(),
            forced: false,
            model: DEFAULT_MODEL.into(),
            fallback: None,
            credits: vec![exposed],
        };
    }
    let (arm, model) = if bucket(EXPERIMENT, user) < 5000 {
        (CONTROL, CONTROL_MODEL)
    } else {
        (TREATMENT, TREATMENT_MODEL)
    };
    Expect {
        experiment: Some(EXPERIMENT.into()),
        arm: arm.into(),
        forced: false,
        model: model.into(),
        fallback: None,
        credits: vec![exposed, (EXPERIMENT.into(), arm.into())],
    }
}

/// A recommendation response checked against [`expect`], with what it was expected to be
/// (and so credited to).
#[derive(Debug, Clone)]
struct ExpectedPage {
    page: Page,
    want: Expect,
}

/// The page of `user` on `placement` ([`recommend`]), which must be exactly what [`expect`]
/// says (experiment, arm, forced, model, not a fallback, some items).
async fn expected_page(gw: &TestGateway, placement: &str, user: &str, holdout_bp: u16) -> ExpectedPage {
    let page = recommend(gw, user, &format!("placement={placement}")).await;
    let body = &page.body;
    let want = expect(placement, user, holdout_bp);
    let experiment = want.experiment.as_deref().map_or(Value::Null, |e| json!(e));
    assert_eq!(
        (&body["experiment"], &body["arm"], &body["forced"], &body["model"]),
        (&experiment, &json!(want.arm), &json!(want.forced), &json!(want.model)),
        "user {user} on {placement} (placement bucket {}): {body}",
        bucket(&format!("placement:{placement}"), user)
    );
    let fallback = want.fallback.map_or(Value::Null, |r| json!(r));
    assert_eq!(body["fallback_reason"], fallback, "user {user}: {body}");
    ExpectedPage {
        page: page.expect_items(),
        want,
    }
}

// ---------------------------------------------------------------------------------------------
// The ledger: what was served and accepted, per (experiment, arm)
// ---------------------------------------------------------------------------------------------

/// One event and the response it belongs to.
#[derive(Debug, Clone)]
struct Event {
    kind: Kind,
    item: String,
    id: String,
    served: ExpectedPage,
}

impl ClientEvent for Event {
    fn to_json(&self) -> Value {
        events::event(self.kind.name(), &self.served.page.token, &self.item, Some(&self.id))
    }
}

/// Impressions of every item of every response, and a click on each item with the seeded
/// probability `ctr(served)`; ids `{prefix}-{n}-{i|c}{position}`, unique per event.
fn events_for(served: &[ExpectedPage], prefix: &str, seed: u64, ctr: impl Fn(&ExpectedPage) -> f64) -> Vec<Event> {
    let mut events = Vec::new();
    for (n, s) in served.iter().enumerate() {
        let mut rng = Rng::new(fnv(&s.page.user) ^ seed ^ n as u64);
        for (i, item) in s.page.items.iter().enumerate() {
            let mut push = |kind: Kind| {
                events.push(Event {
                    kind,
                    item: item.clone(),
                    id: format!("{prefix}-{n}-{}{i}", kind.tag()),
                    served: s.clone(),
                });
            };
            push(Kind::Impression);
            if rng.chance(ctr(s)) {
                push(Kind::Click);
            }
        }
    }
    events
}

/// What the results should show, per (experiment, arm).
#[derive(Debug, Default)]
struct Ledger {
    arms: BTreeMap<(String, String), ArmLedger>,
    /// Every event accepted so far: a second acceptance must be a resend with the same id,
    /// which counts nothing.
    seen: Claims,
    /// Events accepted for the first time.
    accepted: u64,
    /// Accepted resends of events accepted before (same id): counted nowhere.
    retried: u64,
}

impl Ledger {
    /// Credits a response to every results it counts for.
    fn served(&mut self, s: &ExpectedPage) {
        for key in &s.want.credits {
            self.arms.entry(key.clone()).or_default().served(&s.page.user);
        }
    }

    /// Credits an accepted event, once.
    fn accepted(&mut self, event: &Event) {
        if !self
            .seen
            .accept(&event.served.page.token, event.kind, &event.item, Some(&event.id))
        {
            self.retried += 1;
            return;
        }
        self.accepted += 1;
        for credit in &event.served.want.credits {
            let arm = self.arms.entry(credit.clone()).or_default();
            arm.event(&event.served.page.user, event.kind);
        }
    }

    /// What arm `arm` of `experiment` should show.
    fn arm(&self, experiment: &str, arm: &str) -> ArmLedger {
        self.arms
            .get(&(experiment.to_string(), arm.to_string()))
            .cloned()
            .unwrap_or_default()
    }

    /// Whether the results `body` of `experiment` shows exactly this ledger for `arms`, in
    /// that order: exposures, impressions, clicks, users and per-user sums to the unit; the
    /// differences otherwise.
    fn matches(&self, body: &Value, experiment: &str, arms: [&str; 2]) -> Result<(), String> {
        let want = arms.map(|name| self.arm(experiment, name).want(name, false));
        arms_match(body, &format!("{experiment} "), &want)
    }
}

/// Serves `users` on `placement` round-robin over `gateways`, crediting the ledger.
async fn serve_all(
    gateways: &[&TestGateway],
    placement: &str,
    users: &[String],
    holdout_bp: u16,
    ledger: &mut Ledger,
) -> Vec<ExpectedPage> {
    let mut served = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let s = expected_page(gateways[i % gateways.len()], placement, user, holdout_bp).await;
        ledger.served(&s);
        served.push(s);
    }
    served
}

/// Posts `events` in batches of `batch` to `gw`, expecting 202 with every event accepted (each
/// is valid: a first send or a resend with the same id), crediting the ledger.
async fn post_all(gw: &TestGateway, events: &[Event], batch: usize, ledger: &mut Ledger) {
    post_all_accepted(gw, events, batch).await;
    for event in events {
        ledger.accepted(event);
    }
}

/// Waits until both `holdout:home` and `home-als-rank` results equal the ledger on `gw`.
async fn assert_home_results(gw: &TestGateway, ledger: &Ledger, what: &str) -> (Value, Value) {
    eventually(WAIT, what, async || {
        let holdout = events::results(gw, HOLDOUT_HOME, "").await;
        let experiment = events::results(gw, EXPERIMENT, "").await;
        let a = ledger.matches(&holdout, HOLDOUT_HOME, [HOLDOUT_ARM, EXPOSED_ARM]);
        let b = ledger.matches(&experiment, EXPERIMENT, [CONTROL, TREATMENT]);
        match (a, b) {
            (Ok(()), Ok(())) => Ok((holdout, experiment)),
            (a, b) => Err(format!("{:?} / {:?}", a.err(), b.err())),
        }
    })
    .await
}

/// Checks the statistics of holdout results `body` beyond the counts: `holdout` is the control
/// with the holdout's width as weight, `exposed` the rest; CTRs are clicks / impressions; the
/// exposed arm's lift is its CTR over the holdout's; an SRM p-value is given.
fn assert_holdout_statistics(body: &Value, width_percent: f64) {
    let (holdout, exposed) = (arm_named(body, HOLDOUT_ARM), arm_named(body, EXPOSED_ARM));
    assert_eq!(holdout["control"], true, "the holdout is the control: {body}");
    assert_eq!(exposed["control"], false, "{body}");
    let weight = |arm: &Value| arm["weight"].as_f64().expect("weight");
    assert!((weight(holdout) - width_percent).abs() < 1e-9, "holdout weight: {body}");
    assert!(
        (weight(exposed) - (100.0 - width_percent)).abs() < 1e-9,
        "exposed weight: {body}"
    );
    let ctr = |arm: &Value| {
        let (clicks, impressions) = (
            arm["clicks"].as_f64().expect("clicks"),
            arm["impressions"].as_f64().expect("impressions"),
        );
        let ctr = arm["ctr"].as_f64().unwrap_or_else(|| panic!("ctr: {body}"));
        assert!(
            (ctr - clicks / impressions).abs() < 1e-9,
            "ctr of {}: {body}",
            arm["name"]
        );
        ctr
    };
    let (base, treated) = (ctr(holdout), ctr(exposed));
    let lift = exposed["lift"]
        .as_f64()
        .unwrap_or_else(|| panic!("lift of exposed: {body}"));
    assert!(
        (lift - (treated / base - 1.0)).abs() < 1e-9,
        "lift = exposed over holdout: {body}"
    );
    let srm = body["srm_p_value"]
        .as_f64()
        .unwrap_or_else(|| panic!("srm_p_value: {body}"));
    assert!((0.0..=1.0).contains(&srm), "{body}");
}

// ---------------------------------------------------------------------------------------------
// 1. Held-out users never see an experiment arm
// ---------------------------------------------------------------------------------------------

/// Users `0..n` and the demo's QA user.
fn home_users(n: usize) -> Vec<String> {
    let mut users: Vec<String> = (0..n).map(|u| u.to_string()).collect();
    users.push(QA_USER.to_string());
    users
}

/// Seeded click rates: the holdout's users 4%, the control's 6%, the treatment's 9%.
fn home_ctr(s: &ExpectedPage) -> f64 {
    match s.want.arm.as_str() {
        HOLDOUT_ARM => 0.04,
        CONTROL => 0.06,
        _ => 0.09,
    }
}

/// `home-als-rank` on `[10, 100]` of `home`, the holdout on `[0, 10]`: 1000 users and the QA
/// override, each served exactly what §3.1 computed here says (held-out users the placement
/// default as `holdout:home`/`holdout`, the others the experiment's arm, the QA user its forced
/// treatment), and a held-out user's list is the very list the default model gives them on a
/// placement without experiments; then impressions and seeded clicks with the real tokens,
/// and both results equal the ledger exactly: the holdout's `holdout` arm the held-out users'
/// counts, `exposed` everyone else's (QA user included), the experiment's arms its users'
/// (QA user excluded), as if there were no holdout.
async fn held_out_users_never_see_an_experiment(mode: Mode) {
    let demo = home_demo();
    let redis = Redis::start_in_place(mode);
    let gw = launch(&demo, &redis.url()).await;
    let holdout_bp = (HOLDOUT_PERCENT * 100.0) as u16;
    let mut ledger = Ledger::default();
    let served = serve_all(&[&gw], HOME, &home_users(1000), holdout_bp, &mut ledger).await;
    let held: Vec<&ExpectedPage> = served.iter().filter(|s| s.want.arm == HOLDOUT_ARM).collect();
    assert!(
        (70..=130).contains(&held.len()),
        "about 10% of 1000 held out: {}",
        held.len()
    );
    for s in held.iter().take(30) {
        let plain = gw
            .ok(&format!("/recommendations/{}?placement=default", s.page.user))
            .await;
        assert_eq!(plain["model"], DEFAULT_MODEL, "{plain}");
        assert_eq!(
            s.page.items,
            gateway::item_ids(&plain),
            "user {}: the default's list",
            s.page.user
        );
    }

    let events = events_for(&served, "h1", 0x401D_0057, home_ctr);
    post_all(&gw, &events, 500, &mut ledger).await;
    assert_eq!(ledger.accepted, events.len() as u64);
    let holdout = ledger.arm(HOLDOUT_HOME, HOLDOUT_ARM);
    let exposed = ledger.arm(HOLDOUT_HOME, EXPOSED_ARM);
    assert_eq!(holdout.exposures + exposed.exposures, served.len() as u64);
    assert!(holdout.clicks() > 0 && exposed.clicks() > 0, "{holdout:?} {exposed:?}");
    let (results, _) = assert_home_results(&gw, &ledger, "results equal the ledger").await;
    assert_holdout_statistics(&results, HOLDOUT_PERCENT);
    // Nothing more arrives after another flush.
    tokio::time::sleep(FLUSH).await;
    assert_home_results(&gw, &ledger, "results still equal the ledger").await;
    eprintln!(
        "{mode:?}: {} held out, {} exposed; {} events",
        held.len(),
        served.len() - held.len(),
        events.len()
    );
    gw.stop().await;
}

redis_modes! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    held_out_users_never_see_an_experiment {
        /// [`held_out_users_never_see_an_experiment`] without Redis: counts in the gateway's memory.
        held_out_users_never_see_an_experiment_without_redis => Memory,
        /// [`held_out_users_never_see_an_experiment`] on one `redis-server`.
        held_out_users_never_see_an_experiment_on_one_redis_node => Node,
        /// [`held_out_users_never_see_an_experiment`] on a 3-node Redis Cluster, where the holdout's
        /// keys are in another slot than the experiment's.
        held_out_users_never_see_an_experiment_on_a_redis_cluster => Cluster,
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Replays count nothing twice
// ---------------------------------------------------------------------------------------------

/// Over the `home` demo: 300 users served by two replicas on one Redis; every event posted
/// once, then every batch sent again whole (same event ids) through the other replica, then a
/// batch half of resends and half of new events: every resend is answered accepted and counts
/// nothing in either results, the new half counts once, and the results stay equal to the
/// ledger after another flush.
async fn replayed_events_count_once(mode: Mode) {
    let demo = home_demo();
    let redis = Redis::start_in_place(mode);
    let (a, b) = (launch(&demo, &redis.url()).await, launch(&demo, &redis.url()).await);
    let mut ledger = Ledger::default();
    let served = serve_all(&[&a, &b], HOME, &home_users(300), 1000, &mut ledger).await;
    let events = events_for(&served, "r2", 0x2E_91A7, home_ctr);
    let (first, later) = events.split_at(events.len() * 2 / 3);
    post_all(&a, first, 200, &mut ledger).await;
    let before = assert_home_results(&a, &ledger, "results after the first sends").await;

    // A retried delivery of every batch, to the other replica: nothing new.
    post_all(&b, first, 200, &mut ledger).await;
    assert_eq!(ledger.retried, first.len() as u64, "every resend was a retry");
    let after = assert_home_results(&b, &ledger, "results after the replay").await;
    for (name, x, y) in [("holdout", &before.0, &after.0), ("experiment", &before.1, &after.1)] {
        for arm in x["arms"].as_array().expect("arms") {
            let other = arm_named(y, arm["name"].as_str().expect("name"));
            for field in ["exposures", "impressions", "clicks"] {
                assert_eq!(
                    arm[field], other[field],
                    "{name} {}.{field} after a replay",
                    arm["name"]
                );
            }
        }
    }

    // A retried batch that also carries new events: only those count.
    let mixed: Vec<Event> = first[first.len() - 100..].iter().chain(later).cloned().collect();
    post_all(&a, &mixed, 250, &mut ledger).await;
    assert_eq!(ledger.accepted, events.len() as u64);
    assert_eq!(ledger.retried, first.len() as u64 + 100);
    tokio::time::sleep(FLUSH).await;
    for gw in [&a, &b] {
        assert_home_results(gw, &ledger, "results after the mixed batch").await;
    }
    a.stop().await;
    b.stop().await;
}

redis_modes! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    replayed_events_count_once {
        /// [`replayed_events_count_once`] on one `redis-server`.
        replayed_events_count_once_on_one_redis_node => Node,
        /// [`replayed_events_count_once`] on a 3-node Redis Cluster: each event is claimed in two
        /// slots (the experiment's and the holdout's), and a replay must be a retry in both.
        replayed_events_count_once_on_a_redis_cluster => Cluster,
    }
}

/// Without Redis the replay goes to the same (only) gateway: its own claims dedupe it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_events_count_once_without_redis() {
    let demo = home_demo();
    let gw = launch(&demo, "").await;
    let mut ledger = Ledger::default();
    let served = serve_all(&[&gw], HOME, &home_users(200), 1000, &mut ledger).await;
    let events = events_for(&served, "r0", 0x2E_91A8, home_ctr);
    post_all(&gw, &events, 200, &mut ledger).await;
    post_all(&gw, &events, 200, &mut ledger).await;
    assert_eq!(
        (ledger.accepted, ledger.retried),
        (events.len() as u64, events.len() as u64)
    );
    assert_home_results(&gw, &ledger, "results after the replay").await;
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Validation
// ---------------------------------------------------------------------------------------------

/// A copy of the repository's `experiments/`, `home-als-rank` on `traffic` (`None`: as it is,
/// `[0, 100]`), its status `status` when given, and `holdouts.toml` = `holdouts`.
fn experiments_dir(traffic: Option<&str>, status: Option<&str>, holdouts: &str) -> tempfile::TempDir {
    let dir = copy_of_experiments();
    if let Some(traffic) = traffic {
        narrow(dir.path(), traffic);
    }
    if let Some(status) = status {
        edit(
            dir.path(),
            &format!("{EXPERIMENT}.toml"),
            "status = \"running\"",
            &format!("status = \"{status}\""),
        );
    }
    std::fs::write(dir.path().join("holdouts.toml"), holdouts).expect("write holdouts.toml");
    dir
}

/// One refused case: `home-als-rank`'s traffic and status (`None`: the demo's), the
/// `holdouts.toml`, and the file and field a line of the refusal must name.
type Case<'a> = (Option<&'a str>, Option<&'a str>, String, &'a str, &'a str);

/// `recgw validate` refuses, with a line naming the file and the field: an experiment (running
/// or draft) whose slice overlaps its placement's holdout (`home-als-rank.toml`, `traffic`); a
/// holdout on an unknown placement (`holdouts.nowhere`); traffic `[10, 5]`, `[0, 120]` and not
/// a pair (`holdouts.home.traffic`); an unknown key in a holdout (`holdouts.home.colour`) and
/// at the top (`holdout`). It accepts a holdout beside a narrowed
/// experiment, printing ok, and the catalog then lists `holdout:home`.
#[test]
fn validate_checks_holdouts() {
    const HOLDOUTS: &str = "holdouts.toml";
    let home = "[holdouts.home]\ntraffic = [0.0, 10.0]\n";
    let cases: [Case; 8] = [
        (None, None, home.into(), "home-als-rank.toml", "traffic"),
        (
            Some("[5.0, 100.0]"),
            Some("draft"),
            home.into(),
            "home-als-rank.toml",
            "traffic",
        ),
        (
            Some("[10.0, 100.0]"),
            None,
            "[holdouts.nowhere]\ntraffic = [0.0, 10.0]\n".into(),
            HOLDOUTS,
            "holdouts.nowhere",
        ),
        (
            Some("[10.0, 100.0]"),
            None,
            "[holdouts.home]\ntraffic = [10.0, 5.0]\n".into(),
            HOLDOUTS,
            "holdouts.home.traffic",
        ),
        (
            Some("[10.0, 100.0]"),
            None,
            "[holdouts.home]\ntraffic = [0.0, 120.0]\n".into(),
            HOLDOUTS,
            "holdouts.home.traffic",
        ),
        (
            Some("[10.0, 100.0]"),
            None,
            "[holdouts.home]\ntraffic = [5.0]\n".into(),
            HOLDOUTS,
            "holdouts.home.traffic",
        ),
        (
            Some("[10.0, 100.0]"),
            None,
            format!("{home}colour = \"red\"\n"),
            HOLDOUTS,
            "holdouts.home.colour",
        ),
        (
            Some("[10.0, 100.0]"),
            None,
            "[holdout.home]\ntraffic = [0.0, 10.0]\n".into(),
            HOLDOUTS,
            "holdout",
        ),
    ];
    for (traffic, status, holdouts, file, field) in cases {
        let dir = experiments_dir(traffic, status, &holdouts);
        cli::assert_refused(
            dir.path(),
            file,
            field,
            &format!("traffic {traffic:?}, status {status:?}, holdouts {holdouts:?}"),
        );
    }

    let dir = experiments_dir(Some("[10.0, 100.0]"), None, home);
    let output = cli::assert_accepted(dir.path(), "a valid holdout");
    assert!(
        output.lines().any(|l| l.contains(": ok,")),
        "validate says ok:\n{output}"
    );
    let catalog = recgw::experiment::Catalog::load_dir(dir.path()).expect("valid");
    assert!(
        catalog.experiment(HOLDOUT_HOME).is_some(),
        "the catalog holds holdout:home"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. A placement without an experiment
// ---------------------------------------------------------------------------------------------

/// `[holdouts.default] traffic = [0.0, 50.0]` on `default`, where no experiment runs: of 600
/// users exactly those with `B("placement:default", u) < 5000` are held out (the default's
/// list as `holdout:default`/`holdout`), the rest get `experiment = null`, `arm = "default"`;
/// with impressions and clicks the results equal the ledger, the weights are 50/50 and an SRM
/// p-value is given. `GET /experiments` lists the holdout and
/// `GET /experiments/holdout:default/assignment/{user}` explains a held-out user and an
/// exposed one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holdout_on_a_placement_without_experiments() {
    const HOLDOUT: &str = "holdout:default";
    let demo = holdout_demo("[0.0, 100.0]", "[holdouts.default]\ntraffic = [0.0, 50.0]\n");
    let gw = launch(&demo, "").await;
    let users: Vec<String> = (0..600).map(|u| u.to_string()).collect();
    let mut ledger = Ledger::default();
    let served = serve_all(&[&gw], "default", &users, 5000, &mut ledger).await;
    let held = served.iter().filter(|s| s.want.arm == HOLDOUT_ARM).count();
    assert!((240..=360).contains(&held), "about half of 600 held out: {held}");
    let events = events_for(&served, "d4", 0xDEF_A017, |s| {
        if s.want.arm == HOLDOUT_ARM { 0.05 } else { 0.07 }
    });
    post_all(&gw, &events, 500, &mut ledger).await;
    let results = eventually(WAIT, "holdout:default results equal the ledger", async || {
        let body = events::results(&gw, HOLDOUT, "").await;
        ledger
            .matches(&body, HOLDOUT, [HOLDOUT_ARM, EXPOSED_ARM])
            .map(|()| body)
    })
    .await;
    assert_eq!(
        ledger.arm(HOLDOUT, HOLDOUT_ARM).exposures,
        held as u64,
        "held out: exactly the hash's"
    );
    assert_holdout_statistics(&results, 50.0);

    let list = gw.ok("/experiments").await;
    let text = list.to_string();
    assert!(
        text.contains(&format!("\"{HOLDOUT}\"")),
        "GET /experiments lists {HOLDOUT}: {list}"
    );
    let (inside, outside) = (
        served
            .iter()
            .find(|s| s.want.arm == HOLDOUT_ARM)
            .expect("a held-out user"),
        served
            .iter()
            .find(|s| s.want.arm != HOLDOUT_ARM)
            .expect("an exposed user"),
    );
    let explain = async |user: &str| gw.ok(&format!("/experiments/{HOLDOUT}/assignment/{user}")).await;
    let body = explain(&inside.page.user).await;
    let pb = bucket("placement:default", &inside.page.user);
    for (field, want) in [
        ("experiment", json!(HOLDOUT)),
        ("in_experiment", json!(true)),
        ("arm", json!(HOLDOUT_ARM)),
        ("forced", json!(false)),
        ("placement_bucket", json!(pb)),
        ("arm_for_bucket", json!(HOLDOUT_ARM)),
        ("placement_experiment", json!(HOLDOUT)),
        ("placement_arm", json!(HOLDOUT_ARM)),
    ] {
        assert_eq!(body[field], want, "held-out user {}: {field}: {body}", inside.page.user);
    }
    // Someone else on the placement is served the default, outside the holdout's slice, and
    // counted as its `exposed` arm.
    let body = explain(&outside.page.user).await;
    let pb = bucket("placement:default", &outside.page.user);
    for (field, want) in [
        ("placement_bucket", json!(pb)),
        ("arm_for_bucket", json!(EXPOSED_ARM)),
        ("placement_experiment", Value::Null),
        ("placement_arm", json!("default")),
    ] {
        assert_eq!(body[field], want, "exposed user {}: {field}: {body}", outside.page.user);
    }
    gw.stop().await;
}
