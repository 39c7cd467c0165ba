//! The analysts' results end to end (issue 5, ARCHITECTURE.md §5 `GET /experiments/{id}/results`):
//! real `recgw` gateways in this process on free loopback ports over copies of the repository's
//! own `experiments/` and `models/` (experiment `home-als-rank`: control/treatment 50/50 on
//! placement `home`, QA override `qa-user-1` → treatment), each test with its own
//! `redis-server` from `common/redis.rs` where Redis is involved.
//!
//! 1. two replicas on one Redis agree and count exactly (QA overrides excluded);
//! 2. a retried batch is counted once, whichever replica it reaches: a resend with the same
//!    event ids is answered accepted without a second count, one without ids is refused;
//! 3. a replica restarted mid-way loses nothing (its graceful shutdown flushes its exposures);
//! 4. a Redis outage of a few seconds: recommendations are served and their exposures held,
//!    events are refused 503 `counts_unavailable`, and sent again after recovery counted once;
//! 5. without Redis, the same exactly-once counts in memory;
//! 6. `recgw report` as a table, CSV and JSON, with the endpoint's numbers;
//! 7. undefined statistics are `null` with a reason;
//! 8. a graceful shutdown soon after Redis came back still delivers the held exposures.
//!
//! Every test keeps its own ledger of what the gateways served and accepted (from the
//! recommendation responses and the 202 answers of `POST /events`, each event counted at most
//! once) and compares the results endpoint with it exactly: exposures, impressions and clicks
//! to the unit; distinct users and clicking users, which are HyperLogLog estimates with and
//! without Redis, within ±2%.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::cli::report_stdout;
use common::events::{self, ArmLedger, Claims, ClientEvent, Kind, arms_match};
use common::gateway::{self, DemoCopy, TestGateway, assert_error, eventually};
use common::page::{Page, recommend};
use common::redis::RedisServer;
use common::stats::{self, UserRow, close_value as close};
use serde_json::{Value, json};

const EXPERIMENT: &str = "home-als-rank";
const PLACEMENT: &str = "home";
const CONTROL: &str = "control";
const TREATMENT: &str = "treatment";
/// The QA override of `home-als-rank` (forced into the treatment, never counted).
const QA_USER: &str = "qa-user-1";
/// How long a background effect (a flush, a reconnection) gets before a test fails.
const WAIT: Duration = Duration::from_secs(10);
/// Exposures are flushed to Redis every second; waits for one start after this.
const FLUSH: Duration = Duration::from_millis(1100);
/// The results path.
const RESULTS: &str = "/experiments/home-als-rank/results";

// ---------------------------------------------------------------------------------------------
// Replicas over a copy of the demo, and what the tests ask them
// ---------------------------------------------------------------------------------------------

/// A page of the experiment with items for `user` on `home` ([`recommend`]), numbered
/// `serial` among the test's responses, the user's `first` in this test or not.
async fn numbered_page(gw: &TestGateway, user: &str, serial: usize, first: bool) -> NumberedPage {
    let page = recommend(gw, user, &format!("placement={PLACEMENT}"))
        .await
        .expect_experiment(EXPERIMENT)
        .expect_items();
    NumberedPage { page, serial, first }
}

/// `POST /events`, expecting the whole batch refused because the counts' Redis does not
/// answer: 503 JSON `{"error": "counts_unavailable", "message": …}`.
async fn post_expecting_unavailable(gw: &TestGateway, events: &[Event]) {
    match events::try_post_events(gw, events).await {
        Ok(outcomes) => panic!("POST /events answered 202 while Redis is down: {outcomes:?}"),
        Err(reply) => assert_error(&reply, 503, "counts_unavailable", "POST /events"),
    }
}

/// The results of the experiment ([`events::try_results_reply`], which must be there) with
/// every number parsed exactly ([`parse_exact`]).
async fn exact_results(gw: &TestGateway) -> Value {
    let reply = events::try_results_reply(gw, EXPERIMENT, "")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    parse_exact(&reply.body)
}

// ---------------------------------------------------------------------------------------------
// The ledger: what was served and accepted, per arm
// ---------------------------------------------------------------------------------------------

/// One recommendation response, numbered among the test's.
#[derive(Debug, Clone)]
struct NumberedPage {
    page: Page,
    /// Position among the test's responses, for unique event ids.
    serial: usize,
    /// The user's first response in this test.
    first: bool,
}

/// One event, with what the ledger needs to credit it.
#[derive(Debug, Clone)]
struct Event {
    kind: Kind,
    arm: String,
    counted: bool,
    user: String,
    item: String,
    token: String,
    /// `None`: no id, so the gateway knows the event only by token, type and item (its position
    /// on the token's page), and a resend is a `duplicate_event_id`; with an id a resend is a
    /// safe retry, answered accepted and not counted again.
    id: Option<String>,
}

impl ClientEvent for Event {
    fn to_json(&self) -> Value {
        events::event(self.kind.name(), &self.token, &self.item, self.id.as_deref())
    }
}

/// Impressions of every item of every response and `clicks(i)` clicks (on its first items) of
/// the i-th response. When `anonymous` allows it, the events of a user's first response with
/// an even serial carry no `event_id` (the gateway dedupes them on token, type and position
/// alone); all others carry explicit `{prefix}-…` ids, unique per event.
fn events_for(served: &[NumberedPage], prefix: &str, clicks: impl Fn(usize) -> usize, anonymous: bool) -> Vec<Event> {
    let mut events = Vec::new();
    for (i, s) in served.iter().enumerate() {
        let explicit = !(anonymous && s.first && s.serial % 2 == 0);
        let mut push = |kind: Kind, item: &String| {
            let tag = kind.tag();
            events.push(Event {
                kind,
                arm: s.page.arm.clone(),
                counted: s.page.counted(),
                user: s.page.user.clone(),
                item: item.clone(),
                token: s.page.token.clone(),
                id: explicit.then(|| format!("{prefix}-{}-{tag}-{item}", s.serial)),
            });
        };
        for item in &s.page.items {
            push(Kind::Impression, item);
        }
        for item in s.page.items.iter().take(clicks(i)) {
            push(Kind::Click, item);
        }
    }
    events
}

/// What the results should show, per arm.
#[derive(Debug, Default, Clone)]
struct Ledger {
    arms: BTreeMap<String, ArmLedger>,
    /// Responses served (counted or not).
    responses: u64,
    /// Events accepted for the first time (counted or not): each at most once.
    accepted: u64,
    /// Accepted answers to a resend of an event accepted before under the same `event_id`: a
    /// safe retry, which counts nothing.
    retried: u64,
    /// Events refused.
    rejected: u64,
    /// Every event accepted so far: a second acceptance is a retry or a count too many.
    seen: Claims,
}

impl Ledger {
    fn served(&mut self, s: &NumberedPage) {
        self.responses += 1;
        if s.page.counted() {
            self.arms.entry(s.page.arm.clone()).or_default().served(&s.page.user);
        }
    }

    /// Credits what the gateway answered for `event` (`None`: accepted); returns whether it was
    /// accepted and new. An acceptance of an event the ledger has already seen accepted must be
    /// a retry with the same `event_id` (the gateway says it did not count it again); any other
    /// second acceptance would be a count the client was not entitled to, and fails the test.
    fn outcome(&mut self, event: &Event, outcome: &Option<String>) -> bool {
        if outcome.is_some() {
            self.rejected += 1;
            return false;
        }
        if !self
            .seen
            .accept(&event.token, event.kind, &event.item, event.id.as_deref())
        {
            self.retried += 1;
            return false;
        }
        self.accepted += 1;
        if !event.counted {
            return true;
        }
        self.arms
            .entry(event.arm.clone())
            .or_default()
            .event(&event.user, event.kind);
        true
    }

    /// Whether the ledger has seen `event`'s (token, type, item) accepted.
    fn has_seen(&self, event: &Event) -> bool {
        self.seen.contains(&event.token, event.kind, &event.item)
    }

    fn arm(&self, name: &str) -> ArmLedger {
        self.arms.get(name).cloned().unwrap_or_default()
    }

    /// Whether `body` shows exactly this ledger: exposures, impressions, clicks, users, clicking
    /// users and the per-user sums, to the unit; the differences otherwise.
    fn matches(&self, body: &Value) -> Result<(), String> {
        arms_match(
            body,
            "",
            &[CONTROL, TREATMENT].map(|name| self.arm(name).want(name, true)),
        )
    }
}

/// Serves `users` round-robin over `gateways`, crediting the ledger.
async fn serve_all(gateways: &[&TestGateway], users: &[String], first: bool, ledger: &mut Ledger) -> Vec<NumberedPage> {
    let mut served = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let s = numbered_page(gateways[i % gateways.len()], user, ledger.responses as usize, first).await;
        ledger.served(&s);
        served.push(s);
    }
    served
}

/// Posts `events` in batches of `batch`, round-robin over `gateways`, crediting the ledger
/// with what each 202 says was accepted (a retry of an event it has seen counts nothing).
async fn post_all(gateways: &[&TestGateway], events: &[Event], batch: usize, ledger: &mut Ledger) {
    for (i, chunk) in events.chunks(batch).enumerate() {
        let outcomes = events::post_events(gateways[i % gateways.len()], chunk).await;
        for (event, outcome) in chunk.iter().zip(&outcomes) {
            ledger.outcome(event, outcome);
        }
    }
}

/// Users `from..=to` as ids.
fn users(from: u32, to: u32) -> Vec<String> {
    (from..=to).map(|u| u.to_string()).collect()
}

/// Clicks of the i-th response: none, one or two, so both arms get some.
fn clicks(i: usize) -> usize {
    match i % 6 {
        0 => 1,
        3 => 2,
        _ => 0,
    }
}

/// Waits (at least one flush period, at most `WAIT`) until `gw`'s results match `ledger`.
async fn settled(gw: &TestGateway, ledger: &Ledger) -> Value {
    tokio::time::sleep(FLUSH).await;
    eventually(WAIT, "results equal what was accepted", async || {
        let body = parse_exact(&events::try_results_reply(gw, EXPERIMENT, "").await?.body);
        ledger.matches(&body).map(|()| body)
    })
    .await
}

/// The body without `age_seconds`, which may tick between two reads.
fn ageless(mut body: Value) -> Value {
    assert!(body["age_seconds"].is_u64(), "{body}");
    body.as_object_mut().expect("object").remove("age_seconds");
    body
}

// ---------------------------------------------------------------------------------------------
// JSON with exact numbers
// ---------------------------------------------------------------------------------------------

/// JSON text to a `Value` with every number parsed exactly (`str::parse::<f64>` rounds
/// correctly). serde_json as this crate builds it (without its `float_roundtrip` feature) may
/// parse a float one ULP off — `0.09090909090909091` becomes `0.09090909090909093` — which
/// would make exact comparisons of what the gateway printed meaningless.
fn parse_exact(text: &str) -> Value {
    let mut parser = ExactParser { text, at: 0 };
    let value = parser.value();
    parser.blank();
    assert_eq!(parser.at, text.len(), "trailing text after JSON: {text}");
    value
}

struct ExactParser<'a> {
    text: &'a str,
    at: usize,
}

impl ExactParser<'_> {
    fn peek(&self) -> u8 {
        *self
            .text
            .as_bytes()
            .get(self.at)
            .unwrap_or_else(|| panic!("JSON ends early: {}", self.text))
    }

    fn blank(&mut self) {
        while self.at < self.text.len() && self.peek().is_ascii_whitespace() {
            self.at += 1;
        }
    }

    fn expect(&mut self, byte: u8) {
        self.blank();
        assert_eq!(self.peek(), byte, "JSON at {}: {}", self.at, self.text);
        self.at += 1;
    }

    /// After an element of a container: true when another follows, false at `close`.
    fn more(&mut self, close: u8) -> bool {
        self.blank();
        let byte = self.peek();
        self.at += 1;
        match byte {
            b',' => true,
            b if b == close => false,
            _ => panic!("JSON at {}: {}", self.at - 1, self.text),
        }
    }

    fn value(&mut self) -> Value {
        self.blank();
        match self.peek() {
            b'{' => {
                self.at += 1;
                let mut map = serde_json::Map::new();
                self.blank();
                if self.peek() == b'}' {
                    self.at += 1;
                    return Value::Object(map);
                }
                loop {
                    self.blank();
                    let key = self.string();
                    self.expect(b':');
                    map.insert(key, self.value());
                    if !self.more(b'}') {
                        return Value::Object(map);
                    }
                }
            }
            b'[' => {
                self.at += 1;
                let mut items = Vec::new();
                self.blank();
                if self.peek() == b']' {
                    self.at += 1;
                    return Value::Array(items);
                }
                loop {
                    items.push(self.value());
                    if !self.more(b']') {
                        return Value::Array(items);
                    }
                }
            }
            b'"' => Value::String(self.string()),
            _ => {
                let start = self.at;
                while self.at < self.text.len()
                    && matches!(self.peek(), b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9' | b'a'..=b'z')
                {
                    self.at += 1;
                }
                let token = &self.text[start..self.at];
                match token {
                    "true" => Value::Bool(true),
                    "false" => Value::Bool(false),
                    "null" => Value::Null,
                    _ if token.contains(['.', 'e', 'E']) => {
                        let x: f64 = token.parse().unwrap_or_else(|e| panic!("{token}: {e}"));
                        json!(x)
                    }
                    _ if token.starts_with('-') => json!(token.parse::<i64>().expect("integer")),
                    _ => json!(token.parse::<u64>().unwrap_or_else(|e| panic!("{token:?}: {e}"))),
                }
            }
        }
    }

    /// A string literal, decoded by serde_json (strings have no precision to lose).
    fn string(&mut self) -> String {
        let start = self.at;
        assert_eq!(self.peek(), b'"', "JSON at {}: {}", self.at, self.text);
        self.at += 1;
        loop {
            match self.peek() {
                b'\\' => self.at += 2,
                b'"' => break,
                _ => self.at += 1,
            }
        }
        self.at += 1;
        serde_json::from_str(&self.text[start..self.at]).expect("JSON string")
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics, recomputed independently
// ---------------------------------------------------------------------------------------------

/// Checks every statistic of a results body against the ledger's users, computed again by
/// `common::stats` from each user's `(clicks, impressions)`: the CTR exactly Σc / Σi, its
/// delta-method interval, the lift and its interval, the p-value of the difference, and
/// `min_sample_reached`; a statistic left out must be one the ledger cannot define, with its
/// reason.
fn check_statistics(body: &Value, ledger: &Ledger) {
    let min = body["min_sample_size"].as_u64().expect("min_sample_size");
    let arms = body["arms"].as_array().expect("arms");
    assert_eq!(arms.len(), 2, "{body}");
    assert_eq!(body["unit"], "user", "{body}");
    let control = ledger.arm(CONTROL).rows();
    let defined = |rows: &[UserRow]| {
        let [n, c, i, ..] = stats::sums(rows);
        // Two users, impressions, and users whose CTRs differ: a variance between users.
        n >= 2 && i > 0 && stats::ratio(rows).1 > 0.0 && c > 0
    };
    for (k, arm) in arms.iter().enumerate() {
        let why = |field: &str| arm["undefined"][field].as_str().map(str::to_string);
        let rows = ledger.arm(arm["name"].as_str().expect("name")).rows();
        let [_, c, n, ..] = stats::sums(&rows);
        assert_eq!(arm["control"], k == 0, "{arm}");
        assert_eq!(arm["weight"], 50.0, "{arm}");
        assert_eq!(arm["min_sample_reached"], n >= min, "{arm}");
        if n == 0 {
            for field in ["ctr", "ctr_low", "ctr_high"] {
                assert!(arm[field].is_null(), "{field}: {arm}");
            }
            assert_eq!(why("ctr").as_deref(), Some("no impressions"), "{arm}");
        } else {
            assert_eq!(
                arm["ctr"].as_f64(),
                Some(c as f64 / n as f64),
                "CTR = clicks / impressions: {arm}"
            );
            if defined(&rows) {
                let (low, high) = stats::ctr_interval(&rows);
                assert!(
                    close(&arm["ctr_low"], low) && close(&arm["ctr_high"], high),
                    "delta method ({low}, {high}): {arm}"
                );
            } else {
                assert!(arm["ctr_low"].is_null() && why("ctr_low").is_some(), "{arm}");
            }
        }
        if k == 0 {
            for field in ["lift", "lift_low", "lift_high", "p_value"] {
                assert!(arm[field].is_null(), "{field} of the control: {arm}");
            }
            assert_eq!(why("lift").as_deref(), Some("this is the control"), "{arm}");
            assert_eq!(why("p_value").as_deref(), Some("this is the control"), "{arm}");
            continue;
        }
        let [_, c0, n0, ..] = stats::sums(&control);
        if n == 0 || n0 == 0 {
            assert!(arm["lift"].is_null() && arm["p_value"].is_null(), "{arm}");
            assert_eq!(why("lift").as_deref(), Some("an arm has no impressions"), "{arm}");
            assert_eq!(why("p_value").as_deref(), Some("an arm has no impressions"), "{arm}");
            continue;
        }
        if c0 == 0 {
            assert!(arm["lift"].is_null() && arm["lift_low"].is_null(), "{arm}");
            assert_eq!(why("lift").as_deref(), Some("the control has no clicks"), "{arm}");
        } else {
            let (lift, low, high) = stats::lift(&rows, &control);
            assert!(close(&arm["lift"], lift), "lift {lift}: {arm}");
            if defined(&rows) && defined(&control) {
                assert!(
                    close(&arm["lift_low"], low) && close(&arm["lift_high"], high),
                    "lift CI ({low}, {high}): {arm}"
                );
            } else {
                assert!(arm["lift_low"].is_null() && arm["lift_high"].is_null(), "{arm}");
                assert!(why("lift_low").is_some(), "{arm}");
            }
        }
        let variance = stats::ratio(&rows).1 + stats::ratio(&control).1;
        if rows.len() < 2 || control.len() < 2 || variance.is_nan() || variance <= 0.0 {
            assert!(arm["p_value"].is_null() && why("p_value").is_some(), "{arm}");
        } else {
            let p = stats::p_value(&rows, &control);
            assert!(close(&arm["p_value"], p), "p-value {p}: {arm}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Two replicas on one Redis
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_exact_counts_and_agree() {
    let demo = DemoCopy::new();
    let redis = RedisServer::start();
    let a = TestGateway::launch_up(&demo.settings(&redis.url())).await;
    let b = TestGateway::launch_up(&demo.settings(&redis.url())).await;
    let mut ledger = Ledger::default();

    // 400 distinct users alternating over A and B, every 5th one again on the other replica.
    let all = users(1, 400);
    let mut served = serve_all(&[&a, &b], &all, true, &mut ledger).await;
    let again: Vec<String> = all.iter().step_by(5).cloned().collect();
    served.extend(serve_all(&[&b, &a], &again, false, &mut ledger).await);
    assert_eq!(ledger.responses, 480);
    let exposures: u64 = ledger.arms.values().map(|a| a.exposures).sum();
    assert_eq!(exposures, 480, "every response counted: {:?}", ledger.arms.keys());

    // Impressions of every item and clicks of a known subset, batches alternating over A and B.
    let events = events_for(&served, "r1", clicks, true);
    post_all(&[&a, &b], &events, 40, &mut ledger).await;
    assert_eq!(
        (ledger.accepted, ledger.rejected),
        (events.len() as u64, 0),
        "fresh events are all accepted"
    );
    for arm in [CONTROL, TREATMENT] {
        let l = ledger.arm(arm);
        assert!(l.impressions() > 0 && l.clicks() > 0, "{arm}: {l:?}");
    }

    let from_a = settled(&a, &ledger).await;
    let from_b = settled(&b, &ledger).await;
    assert_eq!(
        ageless(from_a.clone()),
        ageless(from_b),
        "both replicas report the same"
    );
    assert_eq!(from_a["experiment"], EXPERIMENT);
    assert_eq!(from_a["status"], "running");
    assert_eq!(from_a["counts"], "redis");
    assert_eq!(from_a["min_sample_size"], 1000);
    // 2026-11-01T00:00:00Z: the age is measured from the schedule's start.
    let start = 1_793_491_200u64;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let age = from_a["age_seconds"].as_u64().expect("age");
    assert!(age.abs_diff(now - start) <= 2, "age {age}, want {}", now - start);
    // A fair 50/50 split of 400 hashed ids: no mismatch.
    let srm = from_a["srm_p_value"].as_f64().expect("srm_p_value defined");
    assert!(srm > 0.001 && srm <= 1.0, "{from_a}");
    assert_eq!(from_a["srm_detected"], false);
    assert!(
        from_a["undefined"].as_object().expect("undefined").is_empty(),
        "{from_a}"
    );
    check_statistics(&from_a, &ledger);
    // Every exposure confirmed by Redis. (Nothing can be dropped any more: a replica holds
    // any number of exposures in a counter and a sketch per arm, so there is no
    // `results_dropped_updates_total` to check.)
    for (gw, name) in [(&a, "A"), (&b, "B")] {
        assert_eq!(
            gw.metric("results_pending_updates", &[]).await,
            0.0,
            "{name}: nothing pending"
        );
    }

    // The QA override is served (forced, treatment) and its events are accepted, but nothing
    // of it is counted.
    let mut qa = Vec::new();
    for gw in [&a, &b] {
        let s = numbered_page(gw, QA_USER, ledger.responses as usize, false).await;
        assert_eq!(
            (s.page.arm.as_str(), s.page.counted()),
            (TREATMENT, false),
            "forced: {s:?}"
        );
        ledger.served(&s);
        qa.push(s);
    }
    let qa_events = events_for(&qa, "qa", |_| 2, false);
    let accepted_before = ledger.accepted;
    post_all(&[&a, &b], &qa_events, qa_events.len() / 2, &mut ledger).await;
    assert_eq!(
        ledger.accepted - accepted_before,
        qa_events.len() as u64,
        "202 and accepted"
    );
    tokio::time::sleep(FLUSH * 2).await;
    for gw in [&a, &b] {
        events::wait_flushed(gw, Duration::ZERO, WAIT).await;
        assert_eq!(
            ageless(exact_results(gw).await),
            ageless(from_a.clone()),
            "the QA override changes nothing"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 2. A retried batch is counted once, whichever replica it reaches
// ---------------------------------------------------------------------------------------------

/// What a resend of `events`, all accepted before, must get: accepted again (not counted) for
/// an event with its `event_id`, `duplicate_event_id` for one without.
fn resent(events: &[Event]) -> Vec<Option<String>> {
    events
        .iter()
        .map(|e| e.id.is_none().then(|| "duplicate_event_id".to_string()))
        .collect()
}

/// A client that lost the answer to a batch sends it again, to another replica or the same:
/// whatever reaches which replica, nothing is counted twice, and what the client is told lets
/// it tell a retry (its ids, accepted again) from a repeat it should not have sent (no ids,
/// refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_batch_is_counted_once_across_replicas() {
    let demo = DemoCopy::new();
    let redis = RedisServer::start();
    let a = TestGateway::launch_up(&demo.settings(&redis.url())).await;
    let b = TestGateway::launch_up(&demo.settings(&redis.url())).await;
    let mut ledger = Ledger::default();
    let served = serve_all(&[&a, &b], &users(1001, 1040), true, &mut ledger).await;
    // Explicit ids for some events, none (token, type and item only) for the others.
    let batch = events_for(&served, "retry", clicks, true);
    assert!(batch.iter().any(|e| e.id.is_none()) && batch.iter().any(|e| e.id.is_some()));
    assert!(batch.len() <= 1000, "one batch");

    let first = events::post_events(&a, &batch).await;
    assert!(first.iter().all(Option::is_none), "first delivery accepted: {first:?}");
    for (event, outcome) in batch.iter().zip(&first) {
        assert!(ledger.outcome(event, outcome), "new: {event:?}");
    }
    // Every exposure flushed, so what the results show now is final until more is counted.
    events::wait_flushed(&a, Duration::ZERO, WAIT).await;
    events::wait_flushed(&b, Duration::ZERO, WAIT).await;
    let before = ageless(settled(&a, &ledger).await);
    let accepted = ledger.accepted;

    for (gw, name) in [(&b, "B"), (&a, "A")] {
        let again = events::post_events(gw, &batch).await;
        assert_eq!(
            again,
            resent(&batch),
            "resent to {name}: ids accepted again, no ids duplicate_event_id"
        );
        for (event, outcome) in batch.iter().zip(&again) {
            assert!(!ledger.outcome(event, outcome), "not new: {event:?}");
        }
        for gw in [&a, &b] {
            assert_eq!(
                ageless(exact_results(gw).await),
                before,
                "a resend to {name} counts nothing"
            );
        }
    }
    assert_eq!(ledger.accepted, accepted);
    let with_ids = batch.iter().filter(|e| e.id.is_some()).count() as u64;
    assert_eq!(ledger.retried, 2 * with_ids, "every resend with an id was a retry");

    // A batch mixing resent events (with and without ids), counted positions under other ids,
    // and new events: only the new ones count.
    let more = serve_all(&[&b], &users(1041, 1045), true, &mut ledger).await;
    let fresh = events_for(&more, "retry2", |_| 1, false);
    let resends: Vec<Event> = batch
        .iter()
        .filter(|e| e.id.is_none())
        .take(4)
        .chain(batch.iter().filter(|e| e.id.is_some()).take(4))
        .cloned()
        .collect();
    let renamed: Vec<Event> = batch
        .iter()
        .rev()
        .step_by(7)
        .take(4)
        .map(|e| Event {
            id: Some(format!("other-{}", e.id.as_deref().unwrap_or("none"))),
            ..e.clone()
        })
        .collect();
    let mixed: Vec<Event> = resends.iter().chain(&renamed).chain(&fresh).cloned().collect();
    let outcomes = events::post_events(&b, &mixed).await;
    let (n, m) = (resends.len(), resends.len() + renamed.len());
    assert_eq!(outcomes[..n], resent(&resends)[..], "resent part");
    assert_eq!(
        outcomes[n..m],
        vec![Some("duplicate_event_id".to_string()); renamed.len()][..],
        "a counted position under another id: {renamed:?}"
    );
    assert!(outcomes[m..].iter().all(Option::is_none), "new part: {outcomes:?}");
    for (event, outcome) in mixed.iter().zip(&outcomes) {
        ledger.outcome(event, outcome);
    }
    assert_eq!(ledger.accepted, accepted + fresh.len() as u64);
    let body = settled(&a, &ledger).await;
    assert_eq!(ageless(body), ageless(settled(&b, &ledger).await));
}

// ---------------------------------------------------------------------------------------------
// 3. One replica restarts mid-way
// ---------------------------------------------------------------------------------------------

/// A deploy restarts one replica while traffic flows: its graceful shutdown flushes the
/// exposures it still held, and pages it served get their clicks through its successor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_restart_loses_nothing() {
    let demo = DemoCopy::new();
    let redis = RedisServer::start();
    let settings = demo.settings(&redis.url());
    let a = TestGateway::launch_up(&settings).await;
    let b = TestGateway::launch_up(&settings).await;
    let mut ledger = Ledger::default();

    let mut served = serve_all(&[&a, &b], &users(2001, 2150), true, &mut ledger).await;
    post_all(&[&a, &b], &events_for(&served, "p1", clicks, true), 50, &mut ledger).await;
    // The last traffic before the stop goes to A only, so A likely holds exposures not yet
    // flushed when it is told to stop (flushes run every second): only its shutdown flush can
    // deliver them. (Events are counted in Redis before they are answered.)
    let last = serve_all(&[&a], &users(2151, 2170), true, &mut ledger).await;
    post_all(&[&a], &events_for(&last, "p1-last", clicks, true), 500, &mut ledger).await;
    let pending = a.metric("results_pending_updates", &[]).await;
    let took = a.stop().await;
    eprintln!("replica A stopped in {took:?} with {pending} exposures pending just before");
    served.extend(last);

    // B (and Redis) have everything A accepted.
    settled(&b, &ledger).await;
    assert_eq!(ledger.rejected, 0);

    // A new A on the same Redis; traffic goes on over both, and old A's responses get clicks
    // through the new A (same secret, so its tokens still verify): on the first item of every
    // 4th page. A page's item takes one click, so where the first traffic clicked it already,
    // the late click is refused whatever its new id; everywhere else it is counted.
    let a = TestGateway::launch_up(&settings).await;
    let more = serve_all(&[&a, &b], &users(2171, 2300), true, &mut ledger).await;
    post_all(&[&b, &a], &events_for(&more, "p2", clicks, true), 50, &mut ledger).await;
    assert_eq!(ledger.rejected, 0, "every event is new");
    let late = events_for(&served, "late", |i| usize::from(i % 4 == 1), false);
    let (clicked, late): (Vec<Event>, Vec<Event>) = late
        .into_iter()
        .filter(|e| e.kind == Kind::Click)
        .partition(|e| ledger.has_seen(e));
    assert!(!late.is_empty() && !clicked.is_empty());
    post_all(&[&a], &late, 100, &mut ledger).await;
    assert_eq!(ledger.rejected, 0, "every click on an item not clicked yet is counted");
    let outcomes = events::post_events(&a, &clicked).await;
    assert!(
        outcomes.iter().all(|r| r.as_deref() == Some("duplicate_event_id")),
        "a second click on an item of a page, under a new id: {outcomes:?}"
    );
    for (event, outcome) in clicked.iter().zip(&outcomes) {
        ledger.outcome(event, outcome);
    }

    let from_a = settled(&a, &ledger).await;
    let from_b = settled(&b, &ledger).await;
    assert_eq!(ageless(from_a.clone()), ageless(from_b));
    check_statistics(&from_a, &ledger);
}

// ---------------------------------------------------------------------------------------------
// 4. Redis goes away for a few seconds while traffic flows
// ---------------------------------------------------------------------------------------------

/// Serves a handful of new users on `gw`, crediting their exposures; their events, all with
/// explicit ids so that sending them again is always safe.
async fn burst(gw: &TestGateway, next_user: &mut u32, ledger: &mut Ledger) -> Vec<Event> {
    let ids = users(*next_user, *next_user + 4);
    *next_user += 5;
    let served = serve_all(&[gw], &ids, true, ledger).await;
    events_for(&served, "outage", clicks, false)
}

/// A burst while Redis is down: the recommendations are served (their exposures held by the
/// gateway), the events refused as a whole with 503 `counts_unavailable` and kept in `refused`
/// to be sent again.
async fn burst_while_down(gw: &TestGateway, next_user: &mut u32, ledger: &mut Ledger, refused: &mut Vec<Event>) {
    let events = burst(gw, next_user, ledger).await;
    post_expecting_unavailable(gw, &events).await;
    refused.extend(events);
}

/// Sends `events`, refused while Redis was down, again in batches of 100 until `gw` answers
/// 202 (it answers 503 `counts_unavailable` while its breaker still waits out the outage), and
/// credits the ledger: every one must be accepted and, never counted before, new.
async fn resend_refused(gw: &TestGateway, events: &[Event], ledger: &mut Ledger) {
    for chunk in events.chunks(100) {
        let outcomes =
            eventually(
                WAIT,
                "the refused events accepted when sent again",
                async || match events::try_post_events(gw, chunk).await {
                    Ok(outcomes) => Ok(outcomes),
                    Err(reply) if reply.status == 503 && reply.json()["error"] == "counts_unavailable" => {
                        Err(reply.body)
                    }
                    Err(reply) => panic!("POST /events: {} {}", reply.status, reply.body),
                },
            )
            .await;
        assert!(outcomes.iter().all(Option::is_none), "sent again: {outcomes:?}");
        for (event, outcome) in chunk.iter().zip(&outcomes) {
            assert!(ledger.outcome(event, outcome), "refused before, so new: {event:?}");
        }
    }
}

/// An outage of the counts' Redis costs no recommendation and no count: exposures are held by
/// the replica (however many: a counter per arm, and each new user once, up to
/// `results.max_buffered_users`) and delivered on recovery; events, which are counted in Redis before they are
/// answered, are refused with 503 `counts_unavailable`, and counted once when sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_holds_exposures_and_refuses_events_until_recovery() {
    // The harness runs Redis without persistence (`--save "" --appendonly no`, fixed in
    // `common/redis.rs`), so a restarted Redis is empty: whatever was flushed before the stop
    // would be lost with it, by the test's own doing. So nothing is counted before Redis
    // stops: every count is made while it is down (exposures held by the gateway) or after it
    // is back, and the final results must equal everything accepted.
    let demo = DemoCopy::new();
    let mut redis = RedisServer::start();
    let a = TestGateway::launch_up(&demo.settings(&redis.url())).await;
    let mut ledger = Ledger::default();
    assert!(ledger.matches(&exact_results(&a).await).is_ok(), "nothing counted yet");

    redis.stop();
    let mut next_user = 3001;
    let mut refused = Vec::new();
    let down = Instant::now();
    let mut unavailable = None;
    // At least 2 s and 20 responses: the first post of the outage may take the events' whole
    // retry budget (five seconds at most), those after it are refused at once while the
    // breaker is open.
    while down.elapsed() < Duration::from_secs(2) || ledger.responses < 20 {
        burst_while_down(&a, &mut next_user, &mut ledger, &mut refused).await;
        if unavailable.is_none() && down.elapsed() > Duration::from_millis(500) {
            unavailable = Some(a.get(RESULTS).await);
            let pending = a.metric("results_pending_updates", &[]).await;
            assert!(
                pending > 0.0,
                "the gateway holds the exposures while Redis is down: {pending}"
            );
        }
    }
    let reply = unavailable.expect("checked during the outage");
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(reply.json()["error"], "counts_unavailable", "{}", reply.body);
    let during = (ledger.responses, refused.len());
    assert!(
        during.0 >= 20 && during.1 > 0,
        "traffic flowed during the outage: {during:?}"
    );
    assert_eq!(ledger.accepted, 0, "no event accepted while Redis was down");
    held(&a, &ledger, "every exposure and new user of the outage held").await;

    tokio::task::block_in_place(|| redis.restart());
    // The client sends the refused events again once the gateway takes them, then traffic
    // goes on: every event accepted.
    resend_refused(&a, &refused, &mut ledger).await;
    let back = Instant::now();
    while back.elapsed() < Duration::from_secs(1) {
        let events = burst(&a, &mut next_user, &mut ledger).await;
        post_all(&[&a], &events, 100, &mut ledger).await;
    }
    assert_eq!(ledger.rejected, 0, "every event posted after the outage accepted");
    eprintln!(
        "outage: {} responses / {} events refused during, {} / {} in total",
        during.0, during.1, ledger.responses, ledger.accepted
    );
    let body = settled(&a, &ledger).await;
    assert_eq!(body["counts"], "redis");
    check_statistics(&body, &ledger);
    events::wait_flushed(&a, Duration::ZERO, WAIT).await;
    // And nothing is flushed twice later on.
    tokio::time::sleep(FLUSH * 2).await;
    ledger.matches(&exact_results(&a).await).expect("stable");
}

// ---------------------------------------------------------------------------------------------
// 5. Without Redis
// ---------------------------------------------------------------------------------------------

/// Without Redis a replica counts in its own memory, with the same rules: each event once,
/// a resend with its id a safe retry, one without a duplicate; exposures, impressions and
/// clicks exact at once (no flush), distinct users estimated by the same sketches as in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_counts_each_event_once_in_memory() {
    let demo = DemoCopy::new();
    let gw = TestGateway::launch_up(&demo.settings("")).await;
    let mut ledger = Ledger::default();
    let all = users(4001, 4120);
    let mut served = serve_all(&[&gw], &all, true, &mut ledger).await;
    let again: Vec<String> = all.iter().step_by(3).cloned().collect();
    served.extend(serve_all(&[&gw], &again, false, &mut ledger).await);
    served.push(numbered_page(&gw, QA_USER, ledger.responses as usize, false).await);
    ledger.served(served.last().expect("qa"));
    let events = events_for(&served, "mem", clicks, true);
    post_all(&[&gw], &events, 100, &mut ledger).await;
    assert_eq!(
        (ledger.accepted, ledger.rejected),
        (events.len() as u64, 0),
        "fresh events are all accepted"
    );
    let before = exact_results(&gw).await;
    ledger
        .matches(&before)
        .unwrap_or_else(|diff| panic!("{diff}: {before}"));

    // A resend of the first batch, remembered by the local claims: accepted again without a
    // count for the events with ids, refused for those without.
    let first = &events[..100];
    assert!(first.iter().any(|e| e.id.is_none()) && first.iter().any(|e| e.id.is_some()));
    let retry = events::post_events(&gw, first).await;
    assert_eq!(retry, resent(first), "ids accepted again, no ids duplicate_event_id");
    for (event, outcome) in first.iter().zip(&retry) {
        assert!(!ledger.outcome(event, outcome), "not new: {event:?}");
    }
    assert_eq!(ledger.accepted, events.len() as u64, "the resend counted nothing");

    // No flush in memory: the counts are exact at once.
    let body = exact_results(&gw).await;
    ledger.matches(&body).unwrap_or_else(|diff| panic!("{diff}: {body}"));
    assert_eq!(ageless(body.clone()), ageless(before), "the resend changed nothing");
    assert_eq!(body["counts"], "memory");
    assert_eq!(ledger.arm(CONTROL).users.len() + ledger.arm(TREATMENT).users.len(), 120);
    assert_eq!(body["srm_detected"], false, "{body}");
    check_statistics(&body, &ledger);
    assert_eq!(gw.metric("results_pending_updates", &[]).await, 0.0);
}

// ---------------------------------------------------------------------------------------------
// 6. `recgw report`
// ---------------------------------------------------------------------------------------------

/// `recgw report home-als-rank --url URL [--format F]` on a blocking thread; its stdout.
async fn report_async(url: String, format: Option<&'static str>) -> String {
    tokio::task::spawn_blocking(move || report_stdout(&url, EXPERIMENT, format))
        .await
        .expect("report thread")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_prints_table_csv_and_json_of_the_endpoint() {
    let demo = DemoCopy::new();
    let gw = TestGateway::launch_up(&demo.settings("")).await;
    let mut ledger = Ledger::default();
    let served = serve_all(&[&gw], &users(5001, 5080), true, &mut ledger).await;
    post_all(&[&gw], &events_for(&served, "rep", clicks, true), 200, &mut ledger).await;
    let body = exact_results(&gw).await;
    ledger.matches(&body).expect("counted");
    let url = format!("http://{}", gw.addr);
    let arms = body["arms"].as_array().expect("arms").clone();

    // The table: a header naming the experiment, one row per arm with its numbers, and a bar
    // chart line per arm.
    let table = report_async(url.clone(), None).await;
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("home-als-rank (running, ") && lines[0].contains("counts: memory"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("arm") && lines[1].contains("CTR 95% CI"),
        "{table}"
    );
    for (arm, line) in arms.iter().zip(&lines[2..4]) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        let want = [
            arm["name"].as_str().unwrap().to_string(),
            "50.0%".to_string(),
            arm["users"].to_string(),
            arm["exposures"].to_string(),
            arm["impressions"].to_string(),
            arm["clicks"].to_string(),
            format!("{:.2}%", arm["ctr"].as_f64().unwrap() * 100.0),
        ];
        assert_eq!(cells[..7], want[..], "{table}");
    }
    assert!(table.contains("\nCTR, 95% interval (scale 0 .. "), "{table}");
    for name in [CONTROL, TREATMENT] {
        let bars: Vec<&&str> = lines
            .iter()
            .filter(|l| l.starts_with(name) && l.contains('|') && !l.contains('%'))
            .collect();
        assert_eq!(bars.len(), 1, "one bar for {name}:\n{table}");
    }

    // CSV: a header and one row per arm, with the endpoint's numbers.
    let csv = report_async(url.clone(), Some("csv")).await;
    let rows: Vec<&str> = csv.lines().collect();
    // Every field of an arm holding one value, nested objects' after their name.
    let columns = [
        "name",
        "weight",
        "control",
        "users",
        "exposures",
        "impressions",
        "clicks",
        "impressions_outside_per_user",
        "clicks_outside_per_user",
        "clicking_users",
        "per_user_sums_users",
        "per_user_sums_clicks",
        "per_user_sums_impressions",
        "per_user_sums_clicks_squared",
        "per_user_sums_impressions_squared",
        "per_user_sums_clicks_times_impressions",
        "pre_period_sums_users_with_row",
        "pre_period_sums_clicks",
        "pre_period_sums_impressions",
        "pre_period_sums_clicks_squared",
        "pre_period_sums_impressions_squared",
        "pre_period_sums_clicks_times_impressions",
        "pre_period_sums_clicks_times_pre_clicks",
        "pre_period_sums_clicks_times_pre_impressions",
        "pre_period_sums_impressions_times_pre_clicks",
        "pre_period_sums_impressions_times_pre_impressions",
        "cuped_lift",
        "cuped_lift_low",
        "cuped_lift_high",
        "cuped_p_value",
        "cuped_sequential_lift_low",
        "cuped_sequential_lift_high",
        "cuped_sequential_p_value",
        "cuped_variance_reduction",
        "cuped_users_with_pre_period",
        "ctr",
        "ctr_low",
        "ctr_high",
        "lift",
        "lift_low",
        "lift_high",
        "p_value",
        "sequential_lift_low",
        "sequential_lift_high",
        "sequential_p_value",
        "p_value_adjusted",
        "sequential_p_value_adjusted",
        "decision",
        "min_sample_reached",
        "wins",
        "shadow",
        "state",
        "paused_reason",
        "distinct_items",
        "catalogue_coverage",
        "compared",
        "overlap_jaccard",
        "overlap_rbo",
    ];
    let mut differences = Vec::new();
    assert_eq!(rows.len(), 3, "{csv}");
    assert_eq!(rows[0], format!("experiment,{}", columns.join(",")));
    for (arm, row) in arms.iter().zip(&rows[1..]) {
        let cells: Vec<&str> = row.split(',').collect();
        assert_eq!(cells.len(), columns.len() + 1, "{row}");
        assert_eq!(cells[0], EXPERIMENT);
        for (column, cell) in columns.iter().zip(&cells[1..]) {
            // Nested objects' columns are after their name (`cuped` is absent here: no covariates).
            let nested = ["per_user_sums", "pre_period_sums", "cuped"]
                .into_iter()
                .find_map(|object| Some((object, column.strip_prefix(object)?.strip_prefix('_')?)));
            let value = match nested {
                Some((object, field)) => &arm[object][field],
                None => &arm[column],
            };
            let same = match value {
                Value::Null => cell.is_empty(),
                Value::String(s) => cell == s,
                Value::Bool(b) => *cell == b.to_string(),
                // Both sides parsed exactly: the digits must be the endpoint's.
                Value::Number(n) => cell.parse::<f64>().ok() == n.as_f64(),
                other => panic!("{column}: {other}"),
            };
            if !same {
                differences.push(format!("csv {}.{column}: {cell:?}, endpoint {}", arm["name"], value));
            }
        }
    }

    // JSON: the endpoint's body.
    let printed = report_async(url, Some("json")).await;
    let printed = parse_exact(&printed);
    let (printed, body) = (ageless(printed), ageless(body));
    diff_values("json", &printed, &body, &mut differences);
    assert!(
        differences.is_empty(),
        "recgw report does not reproduce the endpoint's numbers:\n{}",
        differences.join("\n")
    );
    assert_eq!(printed, body);
}

/// Paths where `got` and `want` differ, with both values.
fn diff_values(path: &str, got: &Value, want: &Value, out: &mut Vec<String>) {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => {
            let keys: BTreeSet<&String> = g.keys().chain(w.keys()).collect();
            for key in keys {
                let (g, w) = (g.get(key).unwrap_or(&Value::Null), w.get(key).unwrap_or(&Value::Null));
                diff_values(&format!("{path}.{key}"), g, w, out);
            }
        }
        (Value::Array(g), Value::Array(w)) if g.len() == w.len() => {
            for (i, (g, w)) in g.iter().zip(w).enumerate() {
                diff_values(&format!("{path}[{i}]"), g, w, out);
            }
        }
        _ if got != want => out.push(format!("{path}: {got}, endpoint {want}")),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Undefined statistics through the API
// ---------------------------------------------------------------------------------------------

/// Users of `home-als-rank` in `arm` among `candidates`, asked of the assignment endpoint
/// (which counts nothing).
async fn in_arm(gw: &TestGateway, arm: &str, candidates: impl Iterator<Item = u32>, want: usize) -> Vec<String> {
    let mut found = Vec::new();
    for user in candidates {
        let reply = gw.get(&format!("/experiments/{EXPERIMENT}/assignment/{user}")).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        if reply.json()["arm"] == arm {
            found.push(user.to_string());
            if found.len() == want {
                return found;
            }
        }
    }
    panic!("fewer than {want} users in {arm}");
}

/// The statistics of an arm that may be `null`, each with the fields whose reason also covers
/// it (an interval's reason may be recorded once, under its low end or its point estimate).
const NULLABLE: [(&str, &[&str]); 12] = [
    ("catalogue_coverage", &[]),
    ("ctr", &[]),
    ("ctr_low", &["ctr"]),
    ("ctr_high", &["ctr_low", "ctr"]),
    ("lift", &[]),
    ("lift_low", &["lift"]),
    ("lift_high", &["lift_low", "lift"]),
    ("p_value", &[]),
    ("sequential_lift_low", &[]),
    ("sequential_lift_high", &[]),
    ("sequential_p_value", &[]),
    ("decision", &["sequential_p_value"]),
];

/// Each `(field, reason)` is in the arm's `undefined`; every `null` statistic has a reason (its
/// own or its interval's), and no statistic with a value has one.
fn assert_reasons(arm: &Value, expected: &[(&str, &str)]) {
    let undefined = arm["undefined"].as_object().expect("undefined");
    for (field, reason) in expected {
        assert_eq!(
            undefined.get(*field).and_then(Value::as_str),
            Some(*reason),
            "{field}: {arm}"
        );
    }
    for (field, covered_by) in NULLABLE {
        if arm[field].is_null() {
            assert!(
                std::iter::once(&field)
                    .chain(covered_by)
                    .any(|f| undefined.contains_key(*f)),
                "null {field} without a reason: {arm}"
            );
        } else {
            assert!(
                !undefined.contains_key(field),
                "{field} has a value and a reason: {arm}"
            );
        }
    }
    for key in undefined.keys() {
        assert!(
            NULLABLE.iter().any(|(f, _)| f == key),
            "reason for an unknown field {key}: {arm}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undefined_statistics_are_null_with_reasons() {
    let demo = DemoCopy::new();

    // No traffic at all.
    let gw = TestGateway::launch_up(&demo.settings("")).await;
    let unknown = gw.get("/experiments/no-such-experiment/results").await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    assert_eq!(unknown.json()["error"], "unknown_experiment");
    let body = exact_results(&gw).await;
    assert_eq!(body["srm_p_value"], Value::Null, "{body}");
    assert_eq!(body["srm_detected"], false);
    assert_eq!(body["undefined"], json!({ "srm_p_value": "no users yet" }), "{body}");
    let arms = body["arms"].as_array().expect("arms");
    for (arm, own) in arms.iter().zip(["this is the control", "an arm has no impressions"]) {
        for field in ["users", "exposures", "impressions", "clicks", "clicking_users"] {
            assert_eq!(arm[field], 0, "{field}: {arm}");
        }
        for field in ["ctr", "ctr_low", "ctr_high", "lift", "lift_low", "lift_high", "p_value"] {
            assert_eq!(arm[field], Value::Null, "{field}: {arm}");
        }
        assert_eq!(arm["min_sample_reached"], false);
        assert_reasons(
            arm,
            &[
                ("ctr", "no impressions"),
                ("ctr_low", "no impressions"),
                ("lift", own),
                ("p_value", own),
            ],
        );
    }
    check_statistics(&body, &Ledger::default());

    // Only the control has data: the treatment's CTR, lift and p-value are undefined, and a
    // split of n users to 0 is a sample-ratio mismatch.
    let mut ledger = Ledger::default();
    let control_users = in_arm(&gw, CONTROL, 6001..6200, 20).await;
    let served = serve_all(&[&gw], &control_users, true, &mut ledger).await;
    post_all(&[&gw], &events_for(&served, "one", clicks, true), 200, &mut ledger).await;
    let body = exact_results(&gw).await;
    ledger.matches(&body).expect("counted");
    check_statistics(&body, &ledger);
    let (control, treatment) = (&body["arms"][0], &body["arms"][1]);
    assert!(control["ctr"].is_f64() && control["ctr_low"].is_f64(), "{control}");
    assert_eq!(treatment["impressions"], 0);
    assert_eq!(treatment["ctr"], Value::Null);
    assert_eq!(treatment["lift"], Value::Null);
    assert_reasons(
        treatment,
        &[
            ("ctr", "no impressions"),
            ("lift", "an arm has no impressions"),
            ("p_value", "an arm has no impressions"),
        ],
    );
    assert_reasons(
        control,
        &[("lift", "this is the control"), ("p_value", "this is the control")],
    );
    let srm = body["srm_p_value"].as_f64().expect("defined with users");
    assert!(srm < 0.001, "{body}");
    assert_eq!(body["srm_detected"], true);
    assert_eq!(body["undefined"], json!({}));

    // Both arms shown, nobody clicks: CTR 0 with an interval, lift and p-value undefined.
    let gw = TestGateway::launch_up(&demo.settings("")).await;
    let mut ledger = Ledger::default();
    let served = serve_all(&[&gw], &users(7001, 7040), true, &mut ledger).await;
    post_all(&[&gw], &events_for(&served, "zero", |_| 0, true), 500, &mut ledger).await;
    let body = exact_results(&gw).await;
    ledger.matches(&body).expect("counted");
    check_statistics(&body, &ledger);
    let treatment = &body["arms"][1];
    assert_eq!(treatment["ctr"].as_f64(), Some(0.0), "{treatment}");
    let no_variation = "no variation between users: each user's clicks are the same fraction of their impressions";
    assert_reasons(
        treatment,
        &[
            ("ctr_low", no_variation),
            ("lift", "the control has no clicks"),
            ("sequential_p_value", "the control has no clicks"),
            ("decision", "the control has no clicks"),
            ("p_value", no_variation),
        ],
    );

    // Then clicks in the treatment only: a p-value, still no lift over a control without clicks.
    let treated: Vec<NumberedPage> = served.into_iter().filter(|s| s.page.arm == TREATMENT).collect();
    // One click for some users, two for others: their CTRs differ, so the difference has a
    // variance between users.
    let clicks_only: Vec<Event> = events_for(&treated, "zero-click", |i| 1 + i % 2, false)
        .into_iter()
        .filter(|e| e.kind == Kind::Click)
        .collect();
    post_all(&[&gw], &clicks_only, 500, &mut ledger).await;
    assert_eq!(ledger.rejected, 0);
    let body = exact_results(&gw).await;
    ledger.matches(&body).expect("counted");
    check_statistics(&body, &ledger);
    let treatment = &body["arms"][1];
    assert!(treatment["p_value"].is_f64(), "{treatment}");
    assert_reasons(
        treatment,
        &[
            ("lift", "the control has no clicks"),
            ("sequential_lift_low", "the control has no clicks"),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// 8. A graceful shutdown soon after Redis came back still delivers the held exposures
// ---------------------------------------------------------------------------------------------

/// `redis_commands_total{client="counts"}` of `gw` (exposure flushes, the PING of a flush with
/// nothing to send, results reads): commands answered, and failed (errors and timeouts, each
/// of which opens the breaker again, for twice as long).
async fn counts_commands(gw: &TestGateway) -> (f64, f64) {
    let text = gw.metrics().await;
    let result = |r: &str| gateway::sample(&text, "redis_commands_total", &[("client", "counts"), ("result", r)]);
    (result("ok"), result("error") + result("timeout"))
}

/// Waits (at most a second: users are collected from the request path every 100 ms) until
/// `gw` holds for Redis exactly the ledger's exposures and its distinct users
/// (`results_pending_updates`): nothing of the outage dropped, nothing held twice.
async fn held(gw: &TestGateway, ledger: &Ledger, what: &str) {
    let exposures: u64 = ledger.arms.values().map(|arm| arm.exposures).sum();
    let users: usize = ledger.arms.values().map(|arm| arm.users.len()).sum();
    let want = (exposures + users as u64) as f64;
    eventually(Duration::from_secs(1), what, async || {
        let pending = gw.metric("results_pending_updates", &[]).await;
        if pending == want {
            Ok(())
        } else {
            Err(format!("{pending} pending, want {want}"))
        }
    })
    .await;
}

/// A deploy stops a replica while the counts' Redis is away, and Redis comes back within the
/// grace: the shutdown drain keeps trying, past the counts' breaker, and gets through once the
/// eviction check has read the returned Redis's policy (after a lost connection counts wait for
/// it), so the exposures the replica held through the outage are not lost with the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_after_redis_recovered_flushes_held_exposures() {
    // As in the outage test, nothing is counted before Redis stops (it restarts empty).
    let demo = DemoCopy::new();
    let mut redis = RedisServer::start();
    let mut settings = demo.settings(&redis.url());
    settings.server.shutdown_grace = Duration::from_secs(3);
    // How long after the stop began Redis is back, well inside the grace.
    const BACK_AFTER: Duration = Duration::from_millis(500);
    let a = TestGateway::launch_up(&settings).await;
    let (answered, _) = counts_commands(&a).await;
    let mut ledger = Ledger::default();
    let mut refused = Vec::new();
    redis.stop();
    let mut next_user = 8001;
    let down = Instant::now();
    while down.elapsed() < Duration::from_secs(2) || ledger.responses < 20 {
        burst_while_down(&a, &mut next_user, &mut ledger, &mut refused).await;
    }
    assert!(!refused.is_empty(), "traffic flowed during the outage");
    held(&a, &ledger, "A holds every exposure and new user of the outage").await;
    let pending = a.metric("results_pending_updates", &[]).await;
    assert_eq!(counts_commands(&a).await.0, answered, "no flush reached Redis");
    // A deploy stops the replica with Redis still away; Redis is back a moment later.
    let stopping = tokio::spawn(a.stop());
    tokio::time::sleep(BACK_AFTER).await;
    tokio::task::block_in_place(|| redis.restart());
    let took = stopping.await.expect("the stop");
    eprintln!("A stopped in {took:?} with Redis back after {BACK_AFTER:?}, holding {pending} exposures and new users");
    // Whatever A held must have reached Redis: another replica reads it, and takes the events
    // refused during the outage.
    let b = TestGateway::launch_up(&demo.settings(&redis.url())).await;
    resend_refused(&b, &refused, &mut ledger).await;
    let body = exact_results(&b).await;
    if let Err(diff) = ledger.matches(&body) {
        panic!(
            "a graceful shutdown just after Redis came back lost the {pending} held exposures and new users: {diff}; \
             keys in Redis: {:?}",
            redis.keys("recgw:results:*")
        );
    }
}
