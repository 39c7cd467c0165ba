//! Guardrails that act (../shared/DESIGN.md §3 `guardrails`, `guardrail_window`; the doc
//! comment of `src/gateway/guardrails.rs`): an arm that breaches a guardrail is paused by the
//! gateway itself, its users (assignment unchanged) get the control's list flagged
//! `paused_by_guardrail`, still counted as the assigned arm, and the pause is shared through
//! Redis and lifted by `POST /admin/experiments/{id}/arms/{arm}/resume`.
//!
//! Real `recgw` gateways run in this process on free loopback ports over copies of the
//! repository's `experiments/` and `models/` (`common::gateway::DemoCopy`), each test with its
//! own `redis-server` (`common::redis`) where Redis is involved. The broken treatment points
//! `home-als-rank`'s treatment at `als-missing`, a model folder that does not exist, so every
//! treatment request is a fallback (`model_not_loaded`) until the guardrail pauses the arm.
//!
//! 1. a broken treatment is paused within a bounded time, without Redis and on one Redis node:
//!    every response 200, the control never paused, state, reason, metric, and exposures and
//!    events of paused responses credited to the assigned arm, exactly;
//! 2. two replicas on one Redis (one node and a 3-node cluster): a pause made by the replica
//!    that served the bad traffic is served by the other too; a resume through the other lifts
//!    it on both, until a whole new window pauses it again;
//! 3. an A/A experiment under every guardrail, with identical seeded click rates, is never
//!    paused;
//! 4. `recgw validate` refuses each malformed guardrail naming the field, accepts a valid one;
//! 5. resuming an unknown experiment or arm is a 404 JSON error.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use common::assignment::bucket;
use common::cli;
use common::edits::{copy_of_experiments, edit, with_lines};
use common::events::{self, Counts, arm_named, arms_match, post_all_accepted};
use common::gateway::{self, DemoCopy, TestGateway, eventually};
use common::page::{Page, recommend};
use common::redis::{Mode, Redis};
use common::rng::{Rng, fnv};
use common::traffic::{Sent, Traffic};
use recgw::experiment::{Catalog, Guardrails};
use reqwest::Method;
use serde_json::{Value, json};

const EXPERIMENT: &str = "home-als-rank";
const PLACEMENT: &str = "home";
const CONTROL: &str = "control";
const TREATMENT: &str = "treatment";
/// The control's model, which paused treatment users get.
const CONTROL_MODEL: &str = "als-v1";
/// A model folder that does not exist: every request of an arm serving it is a fallback.
const BROKEN_MODEL: &str = "als-missing";
/// The placement default, which answers for a model that is not loaded.
const DEFAULT_MODEL: &str = "popular";
/// The guardrail of the broken-treatment tests, and its window.
const BROKEN_GUARDRAILS: &str = "guardrails = { fallback_rate = 0.2, min_requests = 20 }\nguardrail_window = \"2s\"";
const WINDOW: Duration = Duration::from_secs(2);
/// How long the first replica may take to pause the broken treatment under traffic.
const PAUSE_WITHIN: Duration = Duration::from_secs(15);
/// How long another replica on the same Redis may take to follow a pause or a resume.
const SPREAD_WITHIN: Duration = Duration::from_secs(5);
/// How long a background effect (a flush, a metric update) gets before a test fails.
const WAIT: Duration = Duration::from_secs(10);
/// Users the demo models know: `0..USERS`.
const USERS: usize = 2000;
/// The gateway's own key of the pauses of `home-als-rank`.
const PAUSE_KEY: &str = "recgw:guardrails:{home-als-rank}";

// ---------------------------------------------------------------------------------------------
// Gateways over a copy of the demo
// ---------------------------------------------------------------------------------------------

/// A copy of the demo whose `home-als-rank` serves `treatment_model` in its treatment and has
/// `lines` (guardrails) before its arms.
fn guarded_demo(lines: &str, treatment_model: &str) -> DemoCopy {
    let demo = DemoCopy::new();
    let file = format!("{EXPERIMENT}.toml");
    with_lines(&demo.experiments(), &file, lines);
    edit(
        &demo.experiments(),
        &file,
        "model = \"als-v2\"",
        &format!("model = \"{treatment_model}\""),
    );
    demo
}

/// A gateway over `demo` on `redis_url`, once the control's model and the placement default
/// are loaded (`/ready` stays 503 while a referenced model is missing) and, with Redis, once
/// Redis answered.
async fn launch(demo: &DemoCopy, redis_url: &str) -> TestGateway {
    let gw = TestGateway::launch(&demo.settings(redis_url)).await;
    for model in [CONTROL_MODEL, DEFAULT_MODEL] {
        gw.wait_model(model, &format!("{model} loaded"), |m| m["version"].is_string())
            .await;
    }
    if !redis_url.is_empty() {
        gw.wait_redis_up().await;
    }
    gw
}

/// The arm §3.1 assigns `user` in `home-als-rank` (control `[0, 5000)`, treatment
/// `[5000, 10000)`; the slice is the whole placement), computed here.
fn arm_of(user: &str) -> &'static str {
    if bucket(EXPERIMENT, user) < 5000 {
        CONTROL
    } else {
        TREATMENT
    }
}

/// The first `n` demo users assigned `arm`.
fn users_of(arm: &str, n: usize) -> Vec<String> {
    (0..USERS)
        .map(|u| u.to_string())
        .filter(|u| arm_of(u) == arm)
        .take(n)
        .collect()
}

/// `/recommendations/{user}?placement=home`.
fn path_of(user: &str) -> String {
    format!("/recommendations/{user}?placement={PLACEMENT}")
}

/// The user of a recommendation path.
fn user_of(path: &str) -> &str {
    path.trim_start_matches("/recommendations/")
        .split('?')
        .next()
        .expect("a user in the path")
}

// ---------------------------------------------------------------------------------------------
// What a response of the broken-treatment experiment may be
// ---------------------------------------------------------------------------------------------

/// Judges `page`, the 200 answer for its user, against the contract with the treatment
/// serving [`BROKEN_MODEL`]: the control always its own list; the treatment either a fallback
/// (`model_not_loaded`, the placement default, no flag) or paused (the control's model, not a
/// fallback, `paused_by_guardrail: true`), `arm` always the assigned one (§3.1's); the page when
/// it holds.
fn judge(page: Page) -> Result<Page, String> {
    let (user, body) = (&page.user, &page.body);
    let arm = arm_of(user);
    let fail = |why: &str| Err(format!("user {user} (assigned {arm}): {why}: {body}"));
    if body["experiment"] != EXPERIMENT || body["arm"] != arm || body["forced"] != false {
        return fail("experiment, arm or forced");
    }
    match (arm, &body["paused_by_guardrail"]) {
        (CONTROL, Value::Null) => {
            if body["model"] != CONTROL_MODEL || body["source"] == "fallback" {
                return fail("the control serves its own model");
            }
        }
        (CONTROL, _) => return fail("the control is never paused"),
        (_, Value::Null) => {
            if body["model"] != DEFAULT_MODEL
                || body["source"] != "fallback"
                || body["fallback_reason"] != "model_not_loaded"
            {
                return fail("an unpaused broken treatment is a model_not_loaded fallback");
            }
        }
        (_, Value::Bool(true)) => {
            if body["model"] != CONTROL_MODEL || body["source"] == "fallback" {
                return fail("a paused treatment gets the control's list");
            }
        }
        _ => return fail("paused_by_guardrail is true or absent"),
    }
    if page.items.is_empty() {
        return fail("no items");
    }
    Ok(page)
}

/// Whether `page`, judged, carried `paused_by_guardrail: true` (and so the control's list).
fn is_paused(page: &Page) -> bool {
    page.body["paused_by_guardrail"] == true
}

/// The page of `user` on `home` ([`recommend`]), which [`judge`] must accept.
async fn judged_page(gw: &TestGateway, user: &str) -> Page {
    let page = recommend(gw, user, &format!("placement={PLACEMENT}")).await;
    judge(page).unwrap_or_else(|e| panic!("{e}"))
}

impl TestGateway {
    /// `GET /experiments/home-als-rank`, the arm named `arm`.
    async fn arm_state(&self, arm: &str) -> Value {
        let body = self.ok(&format!("/experiments/{EXPERIMENT}")).await;
        arm_named(&body, arm).clone()
    }

    /// Waits (at most `within`) until `/experiments/home-als-rank` shows `arm` in `state`;
    /// returns the arm.
    async fn wait_state(&self, arm: &str, state: &str, within: Duration) -> Value {
        eventually(within, &format!("{arm} is {state}"), async || {
            let found = self.arm_state(arm).await;
            if found["state"] == state {
                Ok(found)
            } else {
                Err(found.to_string())
            }
        })
        .await
    }

    /// `experiment_arm_paused{placement="home", experiment="home-als-rank", arm}`, which must
    /// be exported (a missing series is not a 0).
    async fn paused_metric(&self, arm: &str) -> f64 {
        let text = self.metrics().await;
        let labels = [("placement", PLACEMENT), ("experiment", EXPERIMENT), ("arm", arm)];
        let series =
            format!("experiment_arm_paused{{placement=\"{PLACEMENT}\",experiment=\"{EXPERIMENT}\",arm=\"{arm}\"}}");
        let exported = text.lines().any(|l| {
            l.starts_with("experiment_arm_paused{") && labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        });
        assert!(exported, "{series} is not exported");
        gateway::sample(&text, "experiment_arm_paused", &labels)
    }

    /// Waits until `experiment_arm_paused` of `arm` is `want`.
    async fn wait_paused_metric(&self, arm: &str, want: f64) {
        eventually(WAIT, &format!("experiment_arm_paused of {arm} = {want}"), async || {
            let got = self.paused_metric(arm).await;
            if got == want { Ok(()) } else { Err(got.to_string()) }
        })
        .await;
    }

    /// `POST /admin/experiments/{experiment}/arms/{arm}/resume` (auth is off).
    async fn resume(&self, experiment: &str, arm: &str) -> (u16, Value) {
        let path = format!("/admin/experiments/{experiment}/arms/{arm}/resume");
        let reply = self.call(Method::POST, &path, None, None).await;
        reply.assert_json(&format!("POST {path}"));
        (reply.status, reply.json())
    }

    /// `fallbacks_total` of the treatment for `model_not_loaded`.
    async fn treatment_fallbacks(&self) -> f64 {
        self.metric(
            "fallbacks_total",
            &[
                ("placement", PLACEMENT),
                ("experiment", EXPERIMENT),
                ("arm", TREATMENT),
                ("reason", "model_not_loaded"),
            ],
        )
        .await
    }
}

/// Traffic of `clients` clients on `gw`, client `c` asking for users `c, c + clients, …`
/// (modulo the demo's users), each answer followed by a short pause.
fn traffic(gw: &TestGateway, clients: usize) -> Traffic {
    Traffic::start(gw, clients, Duration::from_millis(2), move |c, n| {
        path_of(&((c + clients * n) % USERS).to_string())
    })
}

/// Judges every answer of a traffic run: each a 200 that [`judge`] accepts, and per client the
/// treatment never unpaused again once paused (the pause does not flicker); the judged
/// answers in order, or every disagreement.
fn judge_traffic(sent: &[Sent]) -> Result<Vec<(Instant, Page)>, String> {
    let mut problems = Vec::new();
    let mut served = Vec::new();
    let mut paused_client = BTreeMap::new();
    for s in sent {
        let user = user_of(&s.path);
        let outcome = match &s.answer {
            Ok(reply) if reply.status == 200 => judge(Page::read(user, &s.path, reply)),
            _ => Err(format!("not a 200: {s}")),
        };
        match outcome {
            Ok(one) => {
                if one.arm == TREATMENT {
                    if is_paused(&one) {
                        paused_client.insert(s.client, ());
                    } else if paused_client.contains_key(&s.client) {
                        problems.push(format!("treatment unpaused again after its pause: {s}"));
                    }
                }
                served.push((s.at, one));
            }
            Err(problem) => problems.push(problem),
        }
    }
    if problems.is_empty() {
        Ok(served)
    } else {
        let shown: Vec<&String> = problems.iter().take(10).collect();
        Err(format!("{} bad answers, first ones: {shown:#?}", problems.len()))
    }
}

/// Checks the paused arm's state in `/experiments/home-als-rank` (and that the control is
/// serving, and the experiment's `guardrails` as configured); returns the treatment's
/// `paused_reason` and `paused_since`.
async fn assert_paused_state(gw: &TestGateway) -> (String, String) {
    let body = gw.ok(&format!("/experiments/{EXPERIMENT}")).await;
    let control = arm_named(&body, CONTROL);
    assert_eq!(control["state"], "serving", "the control is never paused: {body}");
    assert!(
        control["paused_reason"].is_null() && control["paused_since"].is_null(),
        "{body}"
    );
    let treatment = arm_named(&body, TREATMENT);
    assert_eq!(treatment["state"], "paused_by_guardrail", "{body}");
    let reason = treatment["paused_reason"].as_str().expect("paused_reason").to_string();
    assert!(
        reason.starts_with("fallback_rate 1.000 > 0.2 over the last 2s"),
        "every treatment request was a fallback: {reason}"
    );
    let since = treatment["paused_since"].as_str().expect("paused_since").to_string();
    let at = humantime::parse_rfc3339(&since).unwrap_or_else(|e| panic!("paused_since {since:?}: {e}"));
    let age = SystemTime::now().duration_since(at).unwrap_or_default();
    assert!(age < Duration::from_secs(120), "paused_since {since} is recent");
    let limits = &body["guardrails"];
    assert_eq!(limits["fallback_rate"], 0.2, "{body}");
    assert_eq!(limits["min_requests"], 20, "{body}");
    assert_eq!(limits["window"], "2s", "{body}");
    for absent in ["error_rate", "p99_ms", "max_ctr_drop"] {
        assert!(limits[absent].is_null(), "{absent} was not configured: {body}");
    }
    (reason, since)
}

// ---------------------------------------------------------------------------------------------
// 1. A broken treatment is paused
// ---------------------------------------------------------------------------------------------

/// Index of an arm in the results, in arm order.
fn index_of(arm: &str) -> usize {
    usize::from(arm == TREATMENT)
}

/// Whether the results `body` shows exactly `want` per arm; the differences otherwise.
fn counts_match(body: &Value, want: &[Counts; 2]) -> Result<(), String> {
    arms_match(
        body,
        "",
        &[CONTROL, TREATMENT].map(|name| want[index_of(name)].of(name)),
    )
}

/// The treatment serving a model folder that does not exist, under
/// `guardrails = { fallback_rate = 0.2, min_requests = 20 }` over 2 s, with continuous traffic:
/// every answer is a 200; within [`PAUSE_WITHIN`] the treatment is paused and its users get
/// the control's list (the very list `als-v1` gives them, checked on the `discover` placement,
/// whose only serving arm is `als-v1`) with `paused_by_guardrail: true` and `arm` still
/// `treatment`, and the pause never lifts by itself; the control is never paused; the state,
/// reason and metric say so; and the results count every response the client received under
/// its assigned arm, paused ones under the treatment, as are events with their tokens.
async fn a_broken_treatment_is_paused(mode: Mode) {
    let demo = guarded_demo(BROKEN_GUARDRAILS, BROKEN_MODEL);
    let redis = Redis::start_in_place(mode);
    let gw = launch(&demo, &redis.url()).await;
    let started = Instant::now();
    let load = traffic(&gw, 3);
    gw.wait_state(TREATMENT, "paused_by_guardrail", PAUSE_WITHIN).await;
    let paused_after = started.elapsed();
    load.overlap(150, "traffic after the pause").await;
    let sent = load.stop().await;
    let mut served: Vec<Page> = judge_traffic(&sent)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    let unpaused = served.iter().filter(|s| s.arm == TREATMENT && !is_paused(s)).count();
    assert!(unpaused >= 20, "the breach was served first: {unpaused} fallbacks");

    // After the pause was seen, every treatment user gets the control's list, flagged.
    for user in (0..200).map(|u| u.to_string()) {
        let one = judged_page(&gw, &user).await;
        assert_eq!(
            is_paused(&one),
            one.arm == TREATMENT,
            "user {user} ({}) after the pause",
            one.arm
        );
        if is_paused(&one) {
            let control = gw.ok(&format!("/recommendations/{user}?placement=discover")).await;
            assert_eq!(control["model"], CONTROL_MODEL, "{control}");
            assert_eq!(
                one.items,
                gateway::item_ids(&control),
                "user {user}: the control's list"
            );
        }
        served.push(one);
    }
    eprintln!("{mode:?}: paused after {paused_after:?}, {} responses", served.len());

    assert_paused_state(&gw).await;
    gw.wait_paused_metric(TREATMENT, 1.0).await;
    assert_eq!(gw.paused_metric(CONTROL).await, 0.0, "the control is not paused");
    let results = events::results(&gw, EXPERIMENT, "").await;
    let (control, treatment) = (arm_named(&results, CONTROL), arm_named(&results, TREATMENT));
    assert_eq!(control["state"], "serving", "{results}");
    assert!(control["paused_reason"].is_null(), "{results}");
    assert_eq!(treatment["state"], "paused_by_guardrail", "{results}");
    let reason = treatment["paused_reason"].as_str().expect("paused_reason in results");
    assert!(reason.starts_with("fallback_rate "), "{reason}");

    // Events with the tokens of paused responses credit the treatment; the control's its own.
    let mut want = [Counts::default(); 2];
    for s in &served {
        want[index_of(&s.arm)].exposures += 1;
    }
    let mut events = Vec::new();
    let paused: Vec<&Page> = served.iter().filter(|s| is_paused(s)).take(40).collect();
    let control_pages: Vec<&Page> = served.iter().filter(|s| s.arm == CONTROL).take(30).collect();
    assert_eq!((paused.len(), control_pages.len()), (40, 30), "enough of each");
    for (n, s) in paused.iter().chain(&control_pages).enumerate() {
        let item = &s.items[0];
        events.push(events::event("impression", &s.token, item, Some(&format!("g{n}-i"))));
        want[index_of(&s.arm)].impressions += 1;
        if is_paused(s) {
            events.push(events::event("click", &s.token, item, Some(&format!("g{n}-c"))));
            want[index_of(&s.arm)].clicks += 1;
        }
    }
    post_all_accepted(&gw, &events, 1000).await;
    assert_eq!(want[1].impressions, 40);
    assert_eq!(want[1].clicks, 40);
    eventually(
        WAIT,
        "results count every response under its assigned arm",
        async || {
            let body = events::results(&gw, EXPERIMENT, "").await;
            counts_match(&body, &want)
        },
    )
    .await;
    // `recommendations_total` counts the same responses under the assigned arm.
    for arm in [CONTROL, TREATMENT] {
        let labels = [("placement", PLACEMENT), ("experiment", EXPERIMENT), ("arm", arm)];
        let served = gw.metric("recommendations_total", &labels).await;
        assert_eq!(
            served,
            want[index_of(arm)].exposures as f64,
            "recommendations_total of {arm}"
        );
    }
    // The control was never paused, however long it served.
    assert_eq!(gw.arm_state(CONTROL).await["state"], "serving");

    // A resume lifts the pause at once on this replica: the broken model's fallback again.
    let (status, body) = gw.resume(EXPERIMENT, TREATMENT).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"experiment": EXPERIMENT, "arm": TREATMENT, "was_paused": true})
    );
    assert_eq!(gw.arm_state(TREATMENT).await["state"], "serving", "resumed");
    let user = &users_of(TREATMENT, 1)[0];
    assert!(
        !is_paused(&judged_page(&gw, user).await),
        "user {user} unpaused right after the resume"
    );
    gw.stop().await;
}

redis_modes! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_broken_treatment_is_paused {
        /// [`a_broken_treatment_is_paused`] without Redis: the replica's own pause.
        a_broken_treatment_is_paused_without_redis => Memory,
        /// [`a_broken_treatment_is_paused`] on one `redis-server` (results and pauses in Redis).
        a_broken_treatment_is_paused_on_one_redis_node => Node,
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Two replicas on one Redis
// ---------------------------------------------------------------------------------------------

/// The fields of the pauses hash of `home-als-rank` in `redis`.
fn pause_fields(redis: &Redis) -> BTreeMap<String, String> {
    let args = ["HGETALL", PAUSE_KEY];
    tokio::task::block_in_place(|| match redis {
        Redis::None => panic!("no Redis"),
        Redis::Node(server) => server.query(&args),
        Redis::Cluster(cluster) => cluster.query_key(&args, PAUSE_KEY),
    })
}

/// Two replicas on one Redis, the broken treatment's traffic only to replica A: once A pauses
/// it, replica B — which served no treatment request at all — shows the same pause (reason
/// and since, from Redis) within [`SPREAD_WITHIN`] and answers treatment users with the
/// control's list, flagged. A resume through B answers `was_paused: true`, and right after it
/// both replicas show the treatment serving and answer its users unflagged (the broken
/// model's fallback again), the metric back at 0; traffic to A pauses it again, but only after
/// a whole new window, and B follows again.
async fn a_pause_is_shared_and_resumed_through_redis(mode: Mode) {
    let demo = guarded_demo(BROKEN_GUARDRAILS, BROKEN_MODEL);
    let redis = Redis::start_in_place(mode);
    let a = launch(&demo, &redis.url()).await;
    let b = launch(&demo, &redis.url()).await;
    let treatment_users = users_of(TREATMENT, 5);

    let load = traffic(&a, 3);
    a.wait_state(TREATMENT, "paused_by_guardrail", PAUSE_WITHIN).await;
    let sent = load.stop().await;
    judge_traffic(&sent).unwrap_or_else(|e| panic!("replica A: {e}"));
    let (reason, since) = assert_paused_state(&a).await;
    // Written to Redis at the replica's next check.
    eventually(SPREAD_WITHIN, &format!("the pause is in {PAUSE_KEY}"), async || {
        let fields = pause_fields(&redis);
        if fields.contains_key(TREATMENT) {
            Ok(())
        } else {
            Err(format!("{fields:?}"))
        }
    })
    .await;

    // B follows from Redis, having served nothing bad (nothing of the treatment at all).
    b.wait_state(TREATMENT, "paused_by_guardrail", SPREAD_WITHIN).await;
    assert_eq!(b.treatment_fallbacks().await, 0.0, "B served no treatment request");
    assert_eq!(assert_paused_state(&b).await, (reason, since), "B shows A's pause");
    for user in &treatment_users {
        assert!(is_paused(&judged_page(&b, user).await), "B pauses user {user}");
    }
    b.wait_paused_metric(TREATMENT, 1.0).await;
    assert_eq!(b.paused_metric(CONTROL).await, 0.0);

    // Resume through B: lifted on both at once (A within its next read of Redis).
    let (status, body) = b.resume(EXPERIMENT, TREATMENT).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"experiment": EXPERIMENT, "arm": TREATMENT, "was_paused": true})
    );
    let resumed = Instant::now();
    assert_eq!(b.arm_state(TREATMENT).await["state"], "serving", "B resumed at once");
    assert!(
        !pause_fields(&redis).contains_key(TREATMENT),
        "the pause left Redis: {:?}",
        pause_fields(&redis)
    );
    a.wait_state(TREATMENT, "serving", SPREAD_WITHIN).await;
    for gw in [&a, &b] {
        let body = gw.ok(&format!("/experiments/{EXPERIMENT}")).await;
        let arm = arm_named(&body, TREATMENT);
        assert!(
            arm["paused_reason"].is_null() && arm["paused_since"].is_null(),
            "{body}"
        );
        for user in &treatment_users[..2] {
            assert!(
                !is_paused(&judged_page(gw, user).await),
                "user {user} unpaused right after the resume"
            );
        }
    }
    let lifted = resumed.elapsed();
    a.wait_paused_metric(TREATMENT, 0.0).await;
    b.wait_paused_metric(TREATMENT, 0.0).await;

    // The broken model still breaches: a whole new window later, A pauses it again.
    let load = traffic(&a, 3);
    a.wait_state(TREATMENT, "paused_by_guardrail", PAUSE_WITHIN).await;
    load.overlap(30, "traffic after the second pause").await;
    let sent = load.stop().await;
    let served = judge_traffic(&sent).unwrap_or_else(|e| panic!("replica A after resume: {e}"));
    let first_paused = served
        .iter()
        .find(|(_, s)| is_paused(s))
        .map(|(at, _)| at.duration_since(resumed))
        .expect("a paused answer after the second pause");
    assert!(
        first_paused >= WINDOW - Duration::from_millis(500),
        "paused again {first_paused:?} after the resume, before a whole new {WINDOW:?} window"
    );
    b.wait_state(TREATMENT, "paused_by_guardrail", SPREAD_WITHIN).await;
    eprintln!("{mode:?}: lifted on both within {lifted:?}, paused again after {first_paused:?}");
    a.stop().await;
    b.stop().await;
}

redis_modes! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_pause_is_shared_and_resumed_through_redis {
        /// [`a_pause_is_shared_and_resumed_through_redis`] on one `redis-server`.
        a_pause_is_shared_and_resumed_on_one_redis_node => Node,
        /// [`a_pause_is_shared_and_resumed_through_redis`] on a 3-node Redis Cluster.
        a_pause_is_shared_and_resumed_on_a_redis_cluster => Cluster,
    }
}

// ---------------------------------------------------------------------------------------------
// 3. A/A: nothing to pause
// ---------------------------------------------------------------------------------------------

/// Every guardrail on an A/A experiment (both arms `als-v1`) with a 2 s window: ten seconds of
/// traffic with impressions of every item and seeded clicks at 5% on both arms never pause an
/// arm — no response is flagged or off its own model, `state` stays `serving`, the metric 0 —
/// while the results show exactly the counts the guardrails were judged on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_a_a_experiment_is_never_paused() {
    const SEED: u64 = 0x6A_2026;
    const CTR: f64 = 0.05;
    let demo = guarded_demo(
        "guardrails = { error_rate = 0.02, fallback_rate = 0.2, p99_ms = 1000, max_ctr_drop = 0.05, min_requests = 20 }\nguardrail_window = \"2s\"",
        CONTROL_MODEL,
    );
    let gw = launch(&demo, "").await;
    let mut want = [Counts::default(); 2];
    let started = Instant::now();
    let mut round = 0u64;
    while started.elapsed() < Duration::from_secs(10) {
        let mut events = Vec::new();
        for u in 0..50 {
            let user = ((round as usize * 50 + u) % USERS).to_string();
            let body = gw.ok(&format!("{}&limit=20", path_of(&user))).await;
            let arm = arm_of(&user);
            assert_eq!(
                (&body["experiment"], &body["arm"], &body["model"]),
                (&json!(EXPERIMENT), &json!(arm), &json!(CONTROL_MODEL)),
                "{body}"
            );
            assert!(body["paused_by_guardrail"].is_null(), "A/A: nothing to pause: {body}");
            assert_ne!(body["source"], "fallback", "{body}");
            want[index_of(arm)].exposures += 1;
            let token = body["tracking_token"].as_str().expect("tracking_token");
            let mut rng = Rng::new(fnv(&user) ^ SEED ^ round);
            for (i, item) in gateway::item_ids(&body).iter().enumerate() {
                let id = |tag: &str| format!("r{round}-u{user}-{i}-{tag}");
                events.push(events::event("impression", token, item, Some(&id("i"))));
                want[index_of(arm)].impressions += 1;
                if rng.chance(CTR) {
                    events.push(events::event("click", token, item, Some(&id("c"))));
                    want[index_of(arm)].clicks += 1;
                }
            }
        }
        post_all_accepted(&gw, &events, 1000).await;
        let body = gw.ok(&format!("/experiments/{EXPERIMENT}")).await;
        for arm in [CONTROL, TREATMENT] {
            assert_eq!(arm_named(&body, arm)["state"], "serving", "round {round}: {body}");
        }
        round += 1;
    }
    eventually(WAIT, "results equal what was served and accepted", async || {
        let body = events::results(&gw, EXPERIMENT, "").await;
        counts_match(&body, &want)
    })
    .await;
    // Two more checks on the final counts, then still nothing paused.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let results = events::results(&gw, EXPERIMENT, "").await;
    for arm in [CONTROL, TREATMENT] {
        assert_eq!(arm_named(&results, arm)["state"], "serving", "{results}");
        assert_eq!(gw.arm_state(arm).await["state"], "serving");
        assert_eq!(gw.paused_metric(arm).await, 0.0, "{arm}");
    }
    eprintln!("A/A: {round} rounds, {want:?}");
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Validation
// ---------------------------------------------------------------------------------------------

/// The guardrails the catalog of `dir` holds for `home-als-rank`.
fn guardrails_in(dir: &Path) -> Guardrails {
    let catalog = Catalog::load_dir(dir).expect("valid");
    catalog
        .experiment(EXPERIMENT)
        .expect("home-als-rank")
        .guardrails
        .clone()
        .expect("guardrails")
}

/// `recgw validate` refuses each malformed guardrail with a line naming the file and the
/// field, and accepts a complete one and a minimal one, which the catalog then holds with the
/// defaults (`min_requests` 100, window 1m).
#[test]
fn validate_checks_guardrails() {
    const SPLIT: &str = "home-als-rank.toml";
    const INTERLEAVE: &str = "feed-als-interleave.toml";
    let cases = [
        (SPLIT, "guardrails = {}", "guardrails"),
        (SPLIT, "guardrails = { fallback_rate = 0 }", "guardrails.fallback_rate"),
        (
            SPLIT,
            "guardrails = { fallback_rate = 1.5 }",
            "guardrails.fallback_rate",
        ),
        (SPLIT, "guardrails = { error_rate = -0.1 }", "guardrails.error_rate"),
        (SPLIT, "guardrails = { max_ctr_drop = 2 }", "guardrails.max_ctr_drop"),
        (SPLIT, "guardrails = { p99_ms = -1 }", "guardrails.p99_ms"),
        (SPLIT, "guardrails = { p99_ms = 0 }", "guardrails.p99_ms"),
        (
            SPLIT,
            "guardrails = { fallback_rate = 0.2, min_requests = 0 }",
            "guardrails.min_requests",
        ),
        (
            SPLIT,
            "guardrails = { fallback_rate = 0.2 }\nguardrail_window = \"0s\"",
            "guardrail_window",
        ),
        (
            SPLIT,
            "guardrails = { fallback_rate = 0.2 }\nguardrail_window = \"500ms\"",
            "guardrail_window",
        ),
        (SPLIT, "guardrail_window = \"2s\"", "guardrail_window"),
        (
            SPLIT,
            "guardrails = { fallback_rate = 0.2, max_fallbacks = 3 }",
            "guardrails.max_fallbacks",
        ),
        (INTERLEAVE, "guardrails = { fallback_rate = 0.2 }", "guardrails"),
    ];
    for (file, lines, field) in cases {
        let dir = copy_of_experiments();
        with_lines(dir.path(), file, lines);
        cli::assert_refused(dir.path(), file, field, &format!("{file} with {lines:?}"));
    }

    let dir = copy_of_experiments();
    with_lines(
        dir.path(),
        SPLIT,
        "guardrails = { error_rate = 0.02, p99_ms = 300, fallback_rate = 0.2, max_ctr_drop = 0.1, min_requests = 50 }\nguardrail_window = \"90s\"",
    );
    cli::assert_accepted(dir.path(), "a complete guardrail");
    let limits = guardrails_in(dir.path());
    assert_eq!(limits.error_rate, Some(0.02));
    assert_eq!(limits.p99, Some(Duration::from_millis(300)));
    assert_eq!(limits.fallback_rate, Some(0.2));
    assert_eq!(limits.max_ctr_drop, Some(0.1));
    assert_eq!(limits.min_requests, 50);
    assert_eq!(limits.window, Duration::from_secs(90));

    with_lines(dir.path(), SPLIT, "guardrails = { max_ctr_drop = 1 }");
    cli::assert_accepted(dir.path(), "a minimal guardrail");
    let limits = guardrails_in(dir.path());
    assert_eq!(
        (limits.min_requests, limits.window),
        (100, Duration::from_secs(60)),
        "defaults"
    );
    assert_eq!(
        (limits.error_rate, limits.p99, limits.fallback_rate),
        (None, None, None)
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Resume errors
// ---------------------------------------------------------------------------------------------

/// Resuming an experiment or an arm that is not loaded is a 404 JSON `{error, message}`; an
/// arm that is serving resumes to `was_paused: false` and stays serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_of_unknown_experiment_or_arm_is_404() {
    let demo = guarded_demo(BROKEN_GUARDRAILS, CONTROL_MODEL);
    let gw = launch(&demo, "").await;
    for (experiment, arm) in [("no-such-experiment", TREATMENT), (EXPERIMENT, "no-such-arm")] {
        let (status, body) = gw.resume(experiment, arm).await;
        assert_eq!(status, 404, "resume {experiment}/{arm}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    }
    let (status, body) = gw.resume(EXPERIMENT, TREATMENT).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"experiment": EXPERIMENT, "arm": TREATMENT, "was_paused": false})
    );
    assert_eq!(gw.arm_state(TREATMENT).await["state"], "serving");
    gw.stop().await;
}
