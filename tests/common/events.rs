//! Events as a client posts them, with the tracking tokens of the responses it was served, and
//! what a test keeps of them to compare the results endpoint with: every file that counts
//! impressions and clicks posts them the same way, checks `POST /events`' answer the same way
//! (the counts and the rejections agree, a rejection names the event), and credits an event
//! accepted a second time only as a safe retry (the same `event_id`).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::{Value, json};

use super::gateway::{Reply, TestGateway, eventually};
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

/// `POST /events` of `events`: for a 202, per event `None` when accepted, else the reason
/// (checking that the counts and the rejections agree, and that each rejection names the
/// event's `event_id`); any other reply as it came.
pub async fn try_post_events(gw: &TestGateway, events: &[Value]) -> Result<Vec<Option<String>>, Reply> {
    let reply = gw.post_json("/events", &json!({ "events": events })).await;
    if reply.status != 202 {
        return Err(reply);
    }
    let outcome = reply.json();
    let mut results = vec![None; events.len()];
    for rejection in outcome["rejections"].as_array().expect("rejections") {
        let index = rejection["index"].as_u64().expect("index") as usize;
        assert_eq!(
            rejection["event_id"].as_str(),
            events[index]["event_id"].as_str(),
            "the rejection names the event: {outcome}"
        );
        results[index] = Some(rejection["reason"].as_str().expect("reason").to_string());
    }
    let rejected = results.iter().filter(|r| r.is_some()).count() as u64;
    assert_eq!(outcome["rejected"], rejected, "{outcome}");
    assert_eq!(outcome["accepted"], events.len() as u64 - rejected, "{outcome}");
    Ok(results)
}

/// [`try_post_events`], expecting 202: per event `None` when accepted, else the reason.
pub async fn post_events(gw: &TestGateway, events: &[Value]) -> Vec<Option<String>> {
    try_post_events(gw, events)
        .await
        .unwrap_or_else(|reply| panic!("POST /events: {} {}", reply.status, reply.body))
}

/// [`post_events`] in batches of `batch` (at most 1000, the most one batch may hold),
/// expecting every event accepted.
pub async fn post_all_accepted(gw: &TestGateway, events: &[Value], batch: usize) {
    for chunk in events.chunks(batch) {
        let outcomes = post_events(gw, chunk).await;
        for (event, outcome) in chunk.iter().zip(&outcomes) {
            assert_eq!(outcome, &None, "every event is valid, and accepted: {event}");
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
