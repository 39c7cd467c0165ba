//! Events as a client posts them, with the tracking tokens of the responses it was served, and
//! what a test keeps of them to compare the results endpoint with: every file that counts
//! impressions and clicks posts them the same way, checks `POST /events`' answer the same way
//! (the counts and the rejections agree, a rejection names the event), and credits an event
//! accepted a second time only as a safe retry (the same `event_id`); and every file that
//! compares reads the results endpoint the same way ([`results`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::gateway::{Reply, TestGateway, assert_error, eventually};
use super::stats::UserRow;

/// The type of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Impression,
    Click,
}

impl Kind {
    /// Its `type` in `POST /events`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Impression => "impression",
            Kind::Click => "click",
        }
    }

    /// Its one-letter tag in the tests' event ids: `i` or `c`.
    pub fn tag(self) -> &'static str {
        &self.name()[..1]
    }
}

/// An event of type `kind` ("impression", "click") on `item` of the page of `token`, without
/// `event_id` (`id = None`) or with one.
pub fn event(kind: &str, token: &str, item: &str, id: Option<&str>) -> Value {
    let mut event = json!({ "type": kind, "tracking_token": token, "item_id": item });
    if let Some(id) = id {
        event["event_id"] = json!(id);
    }
    event
}

/// An event as a test keeps it (with what its ledger needs to credit it), which it sends as
/// `POST /events` takes it: the helpers below post any of them.
pub trait ClientEvent {
    /// The event in `POST /events`' batch.
    fn to_json(&self) -> Value;
}

impl ClientEvent for Value {
    fn to_json(&self) -> Value {
        self.clone()
    }
}

/// `POST /events` of `events`: for a 202, the outcome as it came, after checking that it is
/// JSON and that its counts and rejections agree with the batch (each rejection at an index of
/// it, naming that event's `event_id`); any other reply as it came.
pub async fn try_post_outcome(gw: &TestGateway, events: &[impl ClientEvent]) -> Result<Value, Reply> {
    let events: Vec<Value> = events.iter().map(ClientEvent::to_json).collect();
    let reply = gw.post_json("/events", &json!({ "events": events })).await;
    if reply.status != 202 {
        return Err(reply);
    }
    reply.assert_json("POST /events");
    let outcome = reply.json();
    let rejections = outcome["rejections"]
        .as_array()
        .unwrap_or_else(|| panic!("no rejections: {outcome}"));
    for rejection in rejections {
        let index = rejection["index"].as_u64().expect("index") as usize;
        assert!(index < events.len(), "a rejection of an event of the batch: {outcome}");
        assert_eq!(
            rejection["event_id"].as_str(),
            events[index]["event_id"].as_str(),
            "the rejection names the event: {outcome}"
        );
    }
    let rejected = rejections.len() as u64;
    assert_eq!(outcome["rejected"], rejected, "{outcome}");
    assert_eq!(outcome["accepted"], events.len() as u64 - rejected, "{outcome}");
    Ok(outcome)
}

/// [`try_post_outcome`], expecting 202: the outcome (`accepted`, `rejected`, `rejections`).
pub async fn post_outcome(gw: &TestGateway, events: &[impl ClientEvent]) -> Value {
    try_post_outcome(gw, events)
        .await
        .unwrap_or_else(|reply| panic!("POST /events: {} {}", reply.status, reply.body))
}

/// `POST /events` of `events` ([`try_post_outcome`]): for a 202, per event `None` when
/// accepted, else the reason; any other reply as it came.
pub async fn try_post_events(gw: &TestGateway, events: &[impl ClientEvent]) -> Result<Vec<Option<String>>, Reply> {
    let outcome = try_post_outcome(gw, events).await?;
    let mut results = vec![None; events.len()];
    for rejection in outcome["rejections"].as_array().expect("rejections") {
        let index = rejection["index"].as_u64().expect("index") as usize;
        assert!(results[index].is_none(), "one rejection an event: {outcome}");
        results[index] = Some(rejection["reason"].as_str().expect("reason").to_string());
    }
    Ok(results)
}

/// [`try_post_events`], expecting 202: per event `None` when accepted, else the reason.
pub async fn post_events(gw: &TestGateway, events: &[impl ClientEvent]) -> Vec<Option<String>> {
    try_post_events(gw, events)
        .await
        .unwrap_or_else(|reply| panic!("POST /events: {} {}", reply.status, reply.body))
}

/// [`post_events`] in batches of `batch` (at most 1000, the most one batch may hold),
/// expecting every event accepted.
pub async fn post_all_accepted(gw: &TestGateway, events: &[impl ClientEvent], batch: usize) {
    for chunk in events.chunks(batch) {
        let outcomes = post_events(gw, chunk).await;
        for (event, outcome) in chunk.iter().zip(&outcomes) {
            assert_eq!(
                outcome,
                &None,
                "every event is valid, and accepted: {}",
                event.to_json()
            );
        }
    }
}

/// Posts `events` in batches of `batch` (at most 1000); hands each event answered accepted to
/// `accepted` and returns those refused because the counts' Redis did not answer
/// (`counts_unavailable`, per event in a 202 or the whole batch in a 503), to be sent again.
/// Any other refusal fails the test.
pub async fn post_keeping_refused<E: ClientEvent + Clone + Debug>(
    gw: &TestGateway,
    events: &[E],
    batch: usize,
    mut accepted: impl FnMut(&E),
) -> Vec<E> {
    let mut refused = Vec::new();
    for chunk in events.chunks(batch) {
        match try_post_events(gw, chunk).await {
            Ok(outcomes) => {
                for (event, outcome) in chunk.iter().zip(outcomes) {
                    match outcome.as_deref() {
                        None => accepted(event),
                        Some("counts_unavailable") => refused.push(event.clone()),
                        Some(other) => panic!("{event:?} refused: {other}"),
                    }
                }
            }
            Err(reply) => {
                assert_error(&reply, 503, "counts_unavailable", "POST /events");
                refused.extend_from_slice(chunk);
            }
        }
    }
    refused
}

/// Sends `refused` again ([`post_keeping_refused`]), what is still refused every 200 ms, until
/// every event was accepted (each handed to `accepted`); fails after `within`.
pub async fn resend_until_accepted<E: ClientEvent + Clone + Debug>(
    gw: &TestGateway,
    refused: Vec<E>,
    batch: usize,
    within: Duration,
    mut accepted: impl FnMut(&E),
) {
    let mut left = refused;
    let deadline = Instant::now() + within;
    while !left.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} events still refused after {within:?}",
            left.len()
        );
        left = post_keeping_refused(gw, &left, batch, &mut accepted).await;
        if !left.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The events a test has seen accepted, by (token, type, item) — a page's item takes one
/// impression and one click — with the `event_id` each was first accepted under, so that a
/// second acceptance is told apart: a safe retry (the same id, which counts nothing) or a
/// count the client was not entitled to, which fails the test.
#[derive(Debug, Default, Clone)]
pub struct Claims(HashMap<(String, Kind, String), Option<String>>);

impl Claims {
    /// Records the acceptance of `kind` on `item` of the page of `token`, sent with `id`;
    /// true when it is the first, false for a retry. Any other second acceptance panics.
    pub fn accept(&mut self, token: &str, kind: Kind, item: &str, id: Option<&str>) -> bool {
        let key = (token.to_string(), kind, item.to_string());
        if let Some(counted_as) = self.0.get(&key) {
            assert!(
                id.is_some() && counted_as.as_deref() == id,
                "{kind:?} of item {item} on one page accepted twice: first as {counted_as:?}, again as {id:?} \
                 (only a resend with the same event_id may be accepted again, and is not counted)"
            );
            return false;
        }
        self.0.insert(key, id.map(str::to_string));
        true
    }

    /// Whether `kind` on `item` of the page of `token` was accepted.
    pub fn contains(&self, token: &str, kind: Kind, item: &str) -> bool {
        self.0.contains_key(&(token.to_string(), kind, item.to_string()))
    }
}

/// What one arm was served and accepted, as its results count it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub exposures: u64,
    pub impressions: u64,
    pub clicks: u64,
}

impl Counts {
    /// What arm `name` must show: these counts, no distinct users checked.
    pub fn of<'a>(&self, name: &'a str) -> ArmWant<'a> {
        ArmWant {
            name,
            exposures: self.exposures,
            impressions: self.impressions,
            clicks: self.clicks,
            users: None,
            clicking_users: None,
            per_user_sums: None,
        }
    }
}

/// What one arm was served and accepted, user by user: the unit the results count in.
#[derive(Debug, Default, Clone)]
pub struct ArmLedger {
    pub exposures: u64,
    /// Each user served from the arm or credited an event of it: `(clicks, impressions)`.
    pub users: BTreeMap<String, UserRow>,
}

impl ArmLedger {
    /// A counted response to `user`.
    pub fn served(&mut self, user: &str) {
        self.exposures += 1;
        self.users.entry(user.to_string()).or_default();
    }

    /// An accepted, counted event of `user`.
    pub fn event(&mut self, user: &str, kind: Kind) {
        let row = self.users.entry(user.to_string()).or_default();
        match kind {
            Kind::Impression => row.1 += 1,
            Kind::Click => row.0 += 1,
        }
    }

    /// Impressions accepted.
    pub fn impressions(&self) -> u64 {
        self.users.values().map(|row| row.1).sum()
    }

    /// Clicks accepted.
    pub fn clicks(&self) -> u64 {
        self.users.values().map(|row| row.0).sum()
    }

    /// The users' rows, for the statistics of `common::stats`.
    pub fn rows(&self) -> Vec<UserRow> {
        self.users.values().copied().collect()
    }

    /// What arm `name` must show: these counts, the exact users and their per-user sums, and,
    /// with `clicking`, the clicking users.
    pub fn want<'a>(&self, name: &'a str, clicking: bool) -> ArmWant<'a> {
        let sums = super::stats::sums(&self.rows());
        ArmWant {
            name,
            exposures: self.exposures,
            impressions: sums[2],
            clicks: sums[1],
            users: Some(sums[0]),
            clicking_users: clicking.then(|| self.users.values().filter(|row| row.0 > 0).count() as u64),
            per_user_sums: Some(sums),
        }
    }
}

/// What one arm of a results body must show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArmWant<'a> {
    pub name: &'a str,
    /// Exposures, impressions and clicks, to the unit.
    pub exposures: u64,
    pub impressions: u64,
    pub clicks: u64,
    /// `users` when given, exactly.
    pub users: Option<u64>,
    /// `clicking_users` when given, exactly.
    pub clicking_users: Option<u64>,
    /// `per_user_sums` when given (`[n, Σc, Σi, Σc², Σi², Σc·i]`), exactly.
    pub per_user_sums: Option<[u64; 6]>,
}

/// Whether the results `body` shows exactly the arms `want`, in that order; the differences
/// otherwise, each prefixed with `label` (what the results are of, or empty).
pub fn arms_match(body: &Value, label: &str, want: &[ArmWant]) -> Result<(), String> {
    let found = body["arms"].as_array().ok_or_else(|| format!("no arms: {body}"))?;
    let names: Vec<&str> = found.iter().filter_map(|a| a["name"].as_str()).collect();
    let wanted: Vec<&str> = want.iter().map(|w| w.name).collect();
    if names != wanted {
        return Err(format!("{label}arms {names:?}, want {wanted:?}"));
    }
    let mut diffs = Vec::new();
    for (arm, want) in found.iter().zip(want) {
        let name = want.name;
        for (field, want) in [
            ("exposures", want.exposures),
            ("impressions", want.impressions),
            ("clicks", want.clicks),
        ] {
            if arm[field].as_u64() != Some(want) {
                diffs.push(format!("{label}{name}.{field} = {} (want {want})", arm[field]));
            }
        }
        for (field, want) in [("users", want.users), ("clicking_users", want.clicking_users)] {
            let Some(want) = want else { continue };
            if arm[field].as_u64() != Some(want) {
                diffs.push(format!("{label}{name}.{field} = {} (want {want})", arm[field]));
            }
        }
        if let Some(sums) = want.per_user_sums {
            for (field, want) in super::stats::PER_USER_SUMS.into_iter().zip(sums) {
                let got = &arm["per_user_sums"][field];
                if got.as_u64() != Some(want) {
                    diffs.push(format!("{label}{name}.per_user_sums.{field} = {got} (want {want})"));
                }
            }
        }
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(diffs.join("; "))
    }
}

/// The arm named `name` of an experiment or results body.
pub fn arm_named<'a>(body: &'a Value, name: &str) -> &'a Value {
    body["arms"]
        .as_array()
        .unwrap_or_else(|| panic!("no arms: {body}"))
        .iter()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("no arm {name}: {body}"))
}

/// Waits `first` (one flush period, so that what was just served is in a flush), then at most
/// `timeout` until `gw` has no result counts waiting for Redis (`results_pending_updates 0`).
pub async fn wait_flushed(gw: &TestGateway, first: Duration, timeout: Duration) {
    tokio::time::sleep(first).await;
    eventually(timeout, "results_pending_updates 0", async || {
        let pending = gw.metric("results_pending_updates", &[]).await;
        if pending == 0.0 {
            Ok(())
        } else {
            Err(format!("{pending} pending"))
        }
    })
    .await;
}

/// `GET /experiments/{experiment}/results{query}` (`query` with its `?`, or empty): the reply
/// when it is 200, after checking that it is JSON; `Err` otherwise, starting with the status
/// (then the body and the request), for a test that waits until the results are there or
/// checks why they are not.
pub async fn try_results_reply(gw: &TestGateway, experiment: &str, query: &str) -> Result<Reply, String> {
    let path = format!("/experiments/{experiment}/results{query}");
    let reply = gw.get(&path).await;
    if reply.status != 200 {
        return Err(format!("{} {} (GET {path})", reply.status, reply.body));
    }
    reply.assert_json(&format!("GET {path}"));
    Ok(reply)
}

/// [`try_results_reply`], the body.
pub async fn try_results(gw: &TestGateway, experiment: &str, query: &str) -> Result<Value, String> {
    try_results_reply(gw, experiment, query).await.map(|reply| reply.json())
}

/// The results of `experiment` ([`try_results`]), expecting 200 and JSON.
pub async fn results(gw: &TestGateway, experiment: &str, query: &str) -> Value {
    try_results(gw, experiment, query)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}
