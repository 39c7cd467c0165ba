//! Tracking tokens, `POST /events`, `/stats` and `/metrics` end to end (ARCHITECTURE.md §5, §7;
//! issue 4): real `recgw` servers in this process on free loopback ports, over the repository's
//! own `experiments/` and `models/`, spoken to with `reqwest`.
//!
//! Every gateway a test starts has its own metric registry, so counts are exact: each test
//! knows every request it made. Tokens are decoded (and, where a test needs a forgery or a
//! token of its own, signed) by the test itself from the documented format (ARCHITECTURE.md
//! §5): `base64url(claims ‖ HMAC-SHA256(secret, claims))`, the claims in a fixed binary layout
//! whose item tags bind the served page: an event may credit only an item of it, each position
//! at most once per type. Tokens of the JSON format issued before it still count.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::events::post_outcome;
use common::gateway;
use common::gateway::{TestGateway, assert_error, demo_settings, item_ids, repo};
use common::page::recommend;
use common::promtool;
use hmac::{Hmac, Mac};
use recgw::config::Settings;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------------
// A gateway with settings of the test's choosing
// ---------------------------------------------------------------------------------------------

const EXPERIMENT: &str = "home-als-rank";
const ARMS: [&str; 2] = ["control", "treatment"];

/// The demo's settings with a tracking secret.
fn settings_with_secret(secret: &str) -> Settings {
    let mut settings = demo_settings();
    settings.tracking.secret = vec![secret.to_string()];
    settings
}

impl TestGateway {
    /// `/metrics`, parsed.
    async fn scrape(&self) -> Metrics {
        Metrics::parse(&self.metrics().await)
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens, events and metrics, as a client and Prometheus see them
// ---------------------------------------------------------------------------------------------

/// The claims of a token, decoded by hand from the layout of ARCHITECTURE.md §5 (version 2,
/// the 4-byte key id, issued_at, nonce, flags, item count and tags, then placement, experiment
/// when flagged, arm, model version and user, each after a 2-byte length, the teams of an
/// interleaved page when flagged, the page's offset when flagged, then a 32-byte HMAC-SHA256),
/// as JSON with the JSON format's keys (`i`: the tag bytes in base64url), so tests name claims
/// one way.
fn claims(token: &str) -> Value {
    assert!(
        !token.contains(['+', '/', '=', '.']),
        "base64url without padding, one part: {token}"
    );
    let bytes = URL_SAFE_NO_PAD.decode(token).expect("base64url");
    let end = bytes.len().checked_sub(32).expect("an HMAC-SHA256 tag");
    assert_eq!(bytes[0], 2, "version 2: {token}");
    // Without the key id, the claims sit where they do from byte 1 on.
    let signed = &[&bytes[..1], &bytes[5..end]].concat()[..];
    let u64_at = |at: usize| u64::from_be_bytes(signed[at..at + 8].try_into().expect("8 bytes"));
    let len_at = |at: usize| usize::from(u16::from_be_bytes([signed[at], signed[at + 1]]));
    let flags = signed[17];
    assert_eq!(flags & !15, 0, "only the four documented flags: {token}");
    let items = len_at(18);
    let mut at = 20 + 4 * items;
    let mut string = || {
        let len = len_at(at);
        let text = std::str::from_utf8(&signed[at + 2..at + 2 + len]).expect("UTF-8");
        at += 2 + len;
        json!(text)
    };
    let placement = string();
    let experiment = if flags & 2 != 0 { string() } else { Value::Null };
    let (arm, model_version, user) = (string(), string(), string());
    let teams = if flags & 4 != 0 {
        let names = json!([string(), string()]);
        let bits = &signed[at..at + items.div_ceil(8)];
        at += items.div_ceil(8);
        let of_items: Vec<u8> = (0..items).map(|i| bits[i / 8] >> (i % 8) & 1).collect();
        Some(json!({ "a": names, "m": of_items }))
    } else {
        None
    };
    let offset = if flags & 8 != 0 {
        at += 4;
        Some(u32::from_be_bytes(signed[at - 4..at].try_into().expect("4 bytes")))
    } else {
        None
    };
    assert_eq!(at, signed.len(), "no byte left over: {token}");
    let mut claims = json!({
        "p": placement,
        "e": experiment,
        "a": arm,
        "v": model_version,
        "u": user,
        "t": u64_at(1),
        "n": u64_at(9),
        "i": URL_SAFE_NO_PAD.encode(&signed[20..20 + 4 * items]),
    });
    if flags & 1 != 0 {
        claims["f"] = json!(true);
    }
    if let Some(teams) = teams {
        claims["x"] = teams;
    }
    if let Some(offset) = offset {
        claims["o"] = json!(offset);
    }
    claims
}

/// The key id of `secret` in a token (ARCHITECTURE.md §5): the first 4 bytes of
/// HMAC-SHA256(secret, `recgw-tracking-key-id`).
fn key_id(secret: &str) -> Vec<u8> {
    hmac(secret, b"recgw-tracking-key-id")[..4].to_vec()
}

/// The signed bytes of `claims` (as [`claims`] gives them) under the key id `key` in the layout
/// of ARCHITECTURE.md §5.
fn layout(claims: &Value, key: &[u8]) -> Vec<u8> {
    let tags = URL_SAFE_NO_PAD
        .decode(claims["i"].as_str().unwrap_or_default())
        .expect("i is base64url");
    let string = |key: &str| claims[key].as_str().unwrap_or_else(|| panic!("{key}: {claims}"));
    let experiment = claims["e"].as_str();
    let offset = claims["o"].as_u64().map(|o| u32::try_from(o).expect("a u32 offset"));
    assert!(claims["x"].is_null(), "the tests sign no interleaved page: {claims}");
    let mut bytes = vec![2];
    bytes.extend(key);
    bytes.extend(claims["t"].as_u64().expect("t").to_be_bytes());
    bytes.extend(claims["n"].as_u64().unwrap_or_default().to_be_bytes());
    bytes.push(
        u8::from(claims["f"] == true) | if experiment.is_some() { 2 } else { 0 } | if offset.is_some() { 8 } else { 0 },
    );
    bytes.extend(u16::try_from(tags.len() / 4).expect("a page").to_be_bytes());
    bytes.extend(tags);
    for text in [
        Some(string("p")),
        experiment,
        Some(string("a")),
        Some(string("v")),
        Some(string("u")),
    ]
    .into_iter()
    .flatten()
    {
        bytes.extend(u16::try_from(text.len()).expect("short").to_be_bytes());
        bytes.extend(text.as_bytes());
    }
    if let Some(offset) = offset {
        bytes.extend(offset.to_be_bytes());
    }
    bytes
}

/// HMAC-SHA256 of `bytes` under `secret`.
fn hmac(secret: &str, bytes: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(bytes);
    mac.finalize().into_bytes().to_vec()
}

/// A token over `claims` signed with `secret` exactly as the format says.
fn sign(secret: &str, claims: &Value) -> String {
    let bytes = layout(claims, &key_id(secret));
    URL_SAFE_NO_PAD.encode([bytes.clone(), hmac(secret, &bytes)].concat())
}

/// A token over `claims` in the JSON format of tokens issued before the binary one:
/// `base64url(JSON claims) "." base64url(HMAC-SHA256(secret, JSON claims))`.
fn sign_json(secret: &str, claims: &Value) -> String {
    let payload = serde_json::to_vec(claims).expect("json");
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(&payload),
        URL_SAFE_NO_PAD.encode(hmac(secret, &payload))
    )
}

/// The tags of a page of `items` in a binary token, computed from the documented format rather
/// than taken from a token, as the `i` claim [`claims`] gives: base64url (no padding) of one
/// big-endian u32 per item in page order, each the top 32 bits of the item id's xxh3.
fn page_tags<S: AsRef<str>>(items: &[S]) -> String {
    let tags = items
        .iter()
        .flat_map(|item| ((xxhash_rust::xxh3::xxh3_64(item.as_ref().as_bytes()) >> 32) as u32).to_be_bytes());
    URL_SAFE_NO_PAD.encode(tags.collect::<Vec<u8>>())
}

/// The `i` claim of a page of `items` in a JSON token: the same encoding, each tag the first 4
/// bytes of SHA-256 of the item id, as releases before the binary format computed them.
fn json_page_tags<S: AsRef<str>>(items: &[S]) -> String {
    let tags = items.iter().flat_map(|item| {
        let digest = Sha256::digest(item.as_ref().as_bytes());
        [digest[0], digest[1], digest[2], digest[3]]
    });
    URL_SAFE_NO_PAD.encode(tags.collect::<Vec<u8>>())
}

/// An event without `event_id`.
fn event(kind: &str, token: &str, item: &str) -> Value {
    json!({ "type": kind, "tracking_token": token, "item_id": item })
}

/// An event with `event_id`.
fn event_with_id(kind: &str, token: &str, item: &str, id: &str) -> Value {
    json!({ "type": kind, "tracking_token": token, "item_id": item, "event_id": id })
}

/// Asserts a 202 outcome: counts and the exact `(index, event_id, reason)` of each rejection.
fn assert_outcome(outcome: &Value, accepted: u64, rejections: &[(u64, Option<&str>, &str)]) {
    let expected: Vec<Value> = rejections
        .iter()
        .map(|(index, id, reason)| json!({ "index": index, "event_id": id, "reason": reason }))
        .collect();
    let mut got = outcome["rejections"]
        .as_array()
        .unwrap_or_else(|| panic!("no rejections array: {outcome}"))
        .clone();
    // `event_id` is optional in the schema: an absent one means null.
    for r in &mut got {
        if r.get("event_id").is_none() {
            r["event_id"] = Value::Null;
        }
    }
    assert_eq!(
        (outcome["accepted"].as_u64(), outcome["rejected"].as_u64()),
        (Some(accepted), Some(rejections.len() as u64)),
        "{outcome}"
    );
    assert_eq!(got, expected, "{outcome}");
}

/// A `/metrics` body: every sample by family name and label set.
struct Metrics {
    text: String,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Metrics {
    fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("sample without value: {line}"));
            let value: f64 = value.parse().unwrap_or_else(|e| panic!("bad value ({e}): {line}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.strip_suffix('}').expect("closing brace")),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|p| !p.is_empty())
                .map(|pair| {
                    let (k, v) = pair
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("bad label {pair:?}: {line}"));
                    (k.to_string(), v.trim_end_matches('"').to_string())
                })
                .collect();
            samples.push((name.to_string(), labels, value));
        }
        Metrics {
            text: text.to_string(),
            samples,
        }
    }

    /// The sum of the samples of `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
            .map(|(_, _, v)| v)
            .sum()
    }

    /// The value of the exact series `name{labels}` as rendered, which must be present once.
    fn exact(&self, series: &str) -> f64 {
        let values: Vec<f64> = self
            .text
            .lines()
            .filter_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .collect();
        assert_eq!(values.len(), 1, "series {series} once in:\n{}", self.text);
        values[0]
    }

    /// A per-arm counter of the home experiment.
    fn arm(&self, name: &str, arm: &str) -> f64 {
        self.exact(&format!(
            "{name}{{arm=\"{arm}\",experiment=\"{EXPERIMENT}\",placement=\"home\"}}"
        ))
    }
}

/// Asserts that `m` shows `events_rejected_total{reason}` exactly at `counts` for each reason
/// (a reason not exported at all fails too: every one is exported from the start) and counts no
/// rejection of any other reason.
fn assert_rejections(m: &Metrics, counts: &[(&str, f64)]) {
    for (reason, count) in counts {
        assert_eq!(
            m.exact(&format!("events_rejected_total{{reason=\"{reason}\"}}")),
            *count,
            "{reason}"
        );
    }
    let total: f64 = counts.iter().map(|(_, count)| count).sum();
    assert_eq!(m.sum("events_rejected_total", &[]), total, "no other reason");
}

/// The `tracking_token` of a recommendation response and the items it showed, what events about
/// that page carry.
fn shown(response: &Value) -> (&str, Vec<String>) {
    let token = response["tracking_token"].as_str().expect("tracking_token");
    (token, item_ids(response))
}

/// One user of each arm of the home experiment (the first found among `1`, `2`, … whose list
/// comes from the arm's model), with their responses. Every probe is a served recommendation:
/// the returned count says how many were made per arm.
async fn users_of_each_arm(gw: &TestGateway) -> ([Value; 2], [u64; 2]) {
    let mut found: [Option<Value>; 2] = [None, None];
    let mut served = [0u64; 2];
    for user in 1..=200 {
        let body = recommend(gw, &user.to_string(), "placement=home").await.body;
        assert_eq!(body["experiment"], EXPERIMENT, "{body}");
        let arm = ARMS
            .iter()
            .position(|a| body["arm"] == *a)
            .unwrap_or_else(|| panic!("unknown arm: {body}"));
        served[arm] += 1;
        if found[arm].is_none() && body["source"] != "fallback" {
            found[arm] = Some(body);
        }
        if found.iter().all(Option::is_some) {
            let [control, treatment] = found;
            return ([control.expect("control"), treatment.expect("treatment")], served);
        }
    }
    panic!("no user of each arm among 1..=200: {found:?}");
}

/// The `/stats` entry of one arm.
fn stats_arm<'a>(stats: &'a Value, placement: &str, experiment: &str, arm: &str) -> &'a Value {
    stats["arms"]
        .as_array()
        .unwrap_or_else(|| panic!("no arms: {stats}"))
        .iter()
        .find(|a| a["placement"] == placement && a["experiment"] == experiment && a["arm"] == arm)
        .unwrap_or_else(|| panic!("no arm {placement}/{experiment}/{arm}: {stats}"))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// Every response carries a token whose claims name exactly what was served: placement,
/// experiment (null on the default), arm, model version (the default's after a fallback),
/// user, the signing time, and the page (`i`: a tag per item, in page order, so the offset
/// page binds its own items); `f` marks events outside any experiment's results (a QA override,
/// a user no experiment covers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_name_what_was_served() {
    let gw = TestGateway::demo().await;
    let before = unix_now();
    let ([control, treatment], _) = users_of_each_arm(&gw).await;
    let mut bodies = vec![control, treatment];
    bodies.push(recommend(&gw, "7", "placement=default").await.body);
    bodies.push(recommend(&gw, "no-such-user-in-any-model", "placement=home").await.body);
    bodies.push(recommend(&gw, "qa-user-1", "placement=home").await.body);
    bodies.push(
        gw.ok(&format!(
            "/recommendations/{}?placement=home&limit=3&offset=4",
            bodies[0]["user_id"].as_str().expect("user")
        ))
        .await,
    );
    let after = unix_now();

    let default = &bodies[2];
    assert_eq!(
        (&default["experiment"], &default["arm"]),
        (&Value::Null, &json!("default")),
        "{default}"
    );
    let fallback = &bodies[3];
    assert_eq!(
        (&fallback["source"], &fallback["fallback_reason"]),
        (&json!("fallback"), &json!("user_not_in_model")),
        "{fallback}"
    );
    let qa = &bodies[4];
    assert_eq!((&qa["arm"], &qa["forced"]), (&json!("treatment"), &json!(true)), "{qa}");

    let mut tokens = Vec::new();
    for body in &bodies {
        let token = body["tracking_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no tracking_token: {body}"));
        let c = claims(token);
        let t = c["t"].as_u64().unwrap_or_else(|| panic!("t: {c}"));
        assert!(
            (before..=after).contains(&t),
            "issued at {t}, not in [{before}, {after}]: {c}"
        );
        // Uncounted (`f`): a QA override, and users no experiment covers (no results to count in).
        let uncounted = body["forced"] == true || body["experiment"].is_null();
        let mut expected = json!({
            "p": body["placement"],
            "e": body["experiment"],
            "a": body["arm"],
            "v": body["model_version"],
            "u": body["user_id"],
            "t": t,
            "n": c["n"],
            "i": page_tags(&item_ids(body)),
        });
        assert!(c["n"].is_u64(), "a nonce: {c}");
        if uncounted {
            expected["f"] = json!(true);
        }
        // A page after the first names its offset, so events know each item's rank.
        if body["offset"] != 0 {
            expected["o"] = body["offset"].clone();
        }
        assert_eq!(c, expected, "claims of {body}");
        let keys: Vec<&str> = c.as_object().expect("object").keys().map(String::as_str).collect();
        assert!(
            keys.iter()
                .all(|k| ["p", "e", "a", "v", "u", "t", "n", "f", "i", "o"].contains(k)),
            "{c}"
        );
        tokens.push(token.to_string());
    }
    assert_eq!(
        (&bodies[0]["arm"], &bodies[1]["arm"]),
        (&json!("control"), &json!("treatment"))
    );
    assert_ne!(
        bodies[0]["model_version"], bodies[1]["model_version"],
        "each arm has its own model"
    );
    // Fallback tokens name the model that answered, under the assigned arm.
    assert!(
        fallback["model_version"]
            .as_str()
            .is_some_and(|v| v.starts_with("popular@")),
        "{fallback}"
    );

    // Every one of those tokens is accepted by the gateway that issued it, for the first item
    // of its own page (two pages for one user carry distinct tokens, so nothing is a
    // duplicate); the page at offset 4 does not credit the first item of the user's first page.
    let mut batch: Vec<Value> = bodies
        .iter()
        .zip(&tokens)
        .map(|(body, t)| {
            let items = item_ids(body);
            let first = items.first().unwrap_or_else(|| panic!("an empty page: {body}"));
            event("impression", t, first)
        })
        .collect();
    let first = &item_ids(&bodies[0])[0];
    assert!(
        !item_ids(&bodies[5]).contains(first),
        "rank 1 is not on the page at offset 4: {}",
        bodies[5]
    );
    batch.push(event("impression", &tokens[5], first));
    let outcome = post_outcome(&gw, &batch).await;
    assert_outcome(
        &outcome,
        tokens.len() as u64,
        &[(tokens.len() as u64, None, "item_not_served")],
    );
}

/// Accepted impressions and clicks are counted for the arm named in their token, exactly, in
/// `/metrics` and `/stats`; nothing else moves. Each position of a page counts once per type:
/// a retry under the id it was counted with is accepted without a second count, and no number
/// of event ids or unserved items makes one token count more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_events_count_for_the_token_arm() {
    let gw = TestGateway::demo().await;
    let ([control, treatment], _) = users_of_each_arm(&gw).await;
    let ((ct, ci), (tt, ti)) = (shown(&control), shown(&treatment));

    let before = gw.scrape().await;
    for arm in ARMS {
        assert_eq!(before.arm("impressions_total", arm), 0.0);
        assert_eq!(before.arm("clicks_total", arm), 0.0);
    }

    // Control: 3 impressions, 1 click. Treatment: 2 impressions, 2 clicks.
    let batch = [
        event("impression", ct, &ci[0]),
        event("impression", ct, &ci[1]),
        event("impression", tt, &ti[0]),
        event("impression", ct, &ci[2]),
        event("click", ct, &ci[1]),
        event("impression", tt, &ti[1]),
        event_with_id("click", tt, &ti[0], "t-click-1"),
        event_with_id("click", tt, &ti[1], "t-click-2"),
    ];
    assert_outcome(&post_outcome(&gw, &batch).await, 8, &[]);

    let after = gw.scrape().await;
    let expected = [("control", 3.0, 1.0), ("treatment", 2.0, 2.0)];
    for (arm, impressions, clicks) in expected {
        assert_eq!(after.arm("impressions_total", arm), impressions, "{arm}");
        assert_eq!(after.arm("clicks_total", arm), clicks, "{arm}");
    }
    for placement in ["home", "default"] {
        let labels = [("placement", placement), ("experiment", "none")];
        assert_eq!(after.sum("impressions_total", &labels), 0.0, "{placement} default");
        assert_eq!(after.sum("clicks_total", &labels), 0.0, "{placement} default");
    }
    assert_eq!(after.sum("events_rejected_total", &[]), 0.0);

    // A second batch adds exactly its own counts.
    let batch = [
        event("click", ct, &ci[0]),
        event("click", ct, &ci[2]),
        event("impression", tt, &ti[2]),
    ];
    assert_outcome(&post_outcome(&gw, &batch).await, 3, &[]);
    let after = gw.scrape().await;
    let expected = [("control", 3.0, 3.0), ("treatment", 3.0, 2.0)];
    for (arm, impressions, clicks) in expected {
        assert_eq!(after.arm("impressions_total", arm), impressions, "{arm}");
        assert_eq!(after.arm("clicks_total", arm), clicks, "{arm}");
    }

    // Retries of counted events under the ids they were counted with (a client that lost its
    // answer): accepted again, counted once.
    let batch = [
        event_with_id("click", tt, &ti[0], "t-click-1"),
        event_with_id("click", tt, &ti[1], "t-click-2"),
    ];
    assert_outcome(&post_outcome(&gw, &batch).await, 2, &[]);
    let after = gw.scrape().await;
    for (arm, impressions, clicks) in expected {
        assert_eq!(after.arm("impressions_total", arm), impressions, "{arm} after retries");
        assert_eq!(after.arm("clicks_total", arm), clicks, "{arm} after retries");
    }

    // Another id for a counted position, or a repeat without id, is a duplicate; an id is
    // scoped to its token and position, so the same id elsewhere is a new event.
    let batch = [
        event_with_id("click", tt, &ti[0], "t-click-3"), // 0: t-click-1's position
        event("click", ct, &ci[0]),                      // 1: counted in the second batch
        event_with_id("impression", ct, &ci[3], "c-imp-3"), // 2: new
        event_with_id("click", tt, &ti[2], "t-click-1"), // 3: another position
        event_with_id("click", ct, &ci[3], "t-click-1"), // 4: another token
    ];
    assert_outcome(
        &post_outcome(&gw, &batch).await,
        3,
        &[
            (0, Some("t-click-3"), "duplicate_event_id"),
            (1, None, "duplicate_event_id"),
        ],
    );
    // An impression retried: accepted, not counted again.
    let retry = [event_with_id("impression", ct, &ci[3], "c-imp-3")];
    assert_outcome(&post_outcome(&gw, &retry).await, 1, &[]);
    let after = gw.scrape().await;
    let expected = [("control", 4.0, 4.0), ("treatment", 3.0, 3.0)];
    for (arm, impressions, clicks) in expected {
        assert_eq!(after.arm("impressions_total", arm), impressions, "{arm}");
        assert_eq!(after.arm("clicks_total", arm), clicks, "{arm}");
    }

    // A fresh control token: 50 clicks on its first item under 50 distinct ids count one click;
    // 50 clicks on items of the user's next page (real items, not on this page) count none.
    let cu = control["user_id"].as_str().expect("user");
    let fresh = recommend(&gw, cu, "placement=home").await.body;
    assert_eq!(fresh["arm"], "control", "{fresh}");
    let ft = fresh["tracking_token"].as_str().expect("token");
    assert_ne!(ft, ct, "a new token for a new response");
    let fi = item_ids(&fresh);
    let burst: Vec<Value> = (0..50)
        .map(|i| event_with_id("click", ft, &fi[0], &format!("burst-{i}")))
        .collect();
    let ids: Vec<String> = (0..50).map(|i| format!("burst-{i}")).collect();
    let duplicates: Vec<(u64, Option<&str>, &str)> = (1..50)
        .map(|i| (i as u64, Some(ids[i].as_str()), "duplicate_event_id"))
        .collect();
    assert_outcome(&post_outcome(&gw, &burst).await, 1, &duplicates);
    let next = item_ids(&gw.ok(&format!("/recommendations/{cu}?placement=home&offset=10")).await);
    assert!(
        !next.is_empty() && next.iter().all(|item| !fi.contains(item)),
        "the next page holds other items: {next:?} vs {fi:?}"
    );
    let strays: Vec<Value> = (0..50)
        .map(|i| event_with_id("click", ft, &next[i % next.len()], &format!("stray-{i}")))
        .collect();
    let ids: Vec<String> = (0..50).map(|i| format!("stray-{i}")).collect();
    let unserved: Vec<(u64, Option<&str>, &str)> = (0..50)
        .map(|i| (i as u64, Some(ids[i].as_str()), "item_not_served"))
        .collect();
    assert_outcome(&post_outcome(&gw, &strays).await, 0, &unserved);

    let after = gw.scrape().await;
    let expected = [("control", 4.0, 5.0), ("treatment", 3.0, 3.0)];
    for (arm, impressions, clicks) in expected {
        assert_eq!(
            after.arm("impressions_total", arm),
            impressions,
            "{arm} after the burst"
        );
        assert_eq!(after.arm("clicks_total", arm), clicks, "{arm} after the burst");
    }
    assert_eq!(
        after.exact("events_rejected_total{reason=\"duplicate_event_id\"}"),
        51.0
    );
    assert_eq!(after.exact("events_rejected_total{reason=\"item_not_served\"}"), 50.0);
    assert_eq!(after.sum("events_rejected_total", &[]), 101.0, "no other reason");

    // `/stats` agrees, per arm and overall.
    let stats = gw.ok("/stats").await;
    for (arm, impressions, clicks) in expected {
        let entry = stats_arm(&stats, "home", EXPERIMENT, arm);
        assert_eq!(
            (entry["impressions"].as_u64(), entry["clicks"].as_u64()),
            (Some(impressions as u64), Some(clicks as u64)),
            "{arm}: {stats}"
        );
    }
    assert_eq!(
        (
            stats["overall"]["impressions"].as_u64(),
            stats["overall"]["clicks"].as_u64()
        ),
        (Some(7), Some(8)),
        "{stats}"
    );
}

/// Replicas sharing `tracking.secret` credit each other's tokens to the arm that served them;
/// a replica with another secret (or the default random one) refuses them as forged. A token
/// the test signs itself credits exactly the page its `i` claim names, and one without `i`
/// credits nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_a_secret_credit_the_serving_arm() {
    let (shared, another) = (
        settings_with_secret("shared-s3cret"),
        settings_with_secret("another-secret"),
    );
    let (a, b, other, random) = tokio::join!(
        TestGateway::launch_ready(&shared),
        TestGateway::launch_ready(&shared),
        TestGateway::launch_ready(&another),
        TestGateway::demo()
    );
    let ([control, treatment], _) = users_of_each_arm(&a).await;
    let ((ct, ci), (tt, ti)) = (shown(&control), shown(&treatment));

    // B never served these users, yet credits A's tokens to their arms.
    let batch = [
        event("impression", ct, &ci[0]),
        event("click", ct, &ci[0]),
        event("impression", tt, &ti[0]),
        event("impression", tt, &ti[1]),
        event("click", tt, &ti[1]),
        event("click", tt, &ti[0]),
    ];
    assert_outcome(&post_outcome(&b, &batch).await, 6, &[]);
    let on_b = b.scrape().await;
    assert_eq!(on_b.arm("impressions_total", "control"), 1.0);
    assert_eq!(on_b.arm("clicks_total", "control"), 1.0);
    assert_eq!(on_b.arm("impressions_total", "treatment"), 2.0);
    assert_eq!(on_b.arm("clicks_total", "treatment"), 2.0);
    assert_eq!(on_b.sum("recommendations_total", &[]), 0.0, "B served nothing");
    let on_a = a.scrape().await;
    assert_eq!(on_a.sum("impressions_total", &[]) + on_a.sum("clicks_total", &[]), 0.0);

    // A token the test signs itself with the shared secret is as good as the gateway's: the
    // signature is HMAC-SHA256 over the exact claim bytes, the arm in it is credited, and so
    // is the page its `i` claim names (here one of the test's own), and nothing else.
    let mut forged = claims(ct);
    assert_eq!(forged["i"], json!(page_tags(&ci)), "the gateway's token binds its page");
    forged["a"] = json!("treatment");
    forged["i"] = json!(page_tags(&["own-1", "own-2"]));
    let own = sign("shared-s3cret", &forged);
    let batch_own = [
        event("click", &own, "own-2"),
        event("impression", &own, "own-1"),
        event("click", &own, &ci[3]),
    ];
    assert_outcome(&post_outcome(&b, &batch_own).await, 2, &[(2, None, "item_not_served")]);
    // Without `i` a validly signed token has no page: it credits nothing.
    let mut unbound = forged.clone();
    unbound
        .as_object_mut()
        .expect("claims are an object")
        .remove("i")
        .expect("an i claim to remove");
    let unbound = sign("shared-s3cret", &unbound);
    let outcome = post_outcome(
        &b,
        &[event("click", &unbound, "own-2"), event("impression", &unbound, &ci[0])],
    )
    .await;
    assert_outcome(
        &outcome,
        0,
        &[(0, None, "item_not_served"), (1, None, "item_not_served")],
    );
    let on_b = b.scrape().await;
    assert_eq!(
        on_b.arm("clicks_total", "treatment"),
        3.0,
        "the token's arm, not the user's"
    );
    assert_eq!(on_b.arm("impressions_total", "treatment"), 3.0);
    assert_eq!(on_b.arm("clicks_total", "control"), 1.0);
    assert_eq!(on_b.arm("impressions_total", "control"), 1.0);
    assert_eq!(on_b.exact("events_rejected_total{reason=\"item_not_served\"}"), 3.0);
    assert_eq!(on_b.sum("events_rejected_total", &[]), 3.0, "no other reason");

    // Another secret, or none configured: every token is forged there.
    for gw in [&other, &random] {
        let outcome = post_outcome(gw, &batch).await;
        let reasons: Vec<(u64, Option<&str>, &str)> =
            (0..batch.len() as u64).map(|i| (i, None, "bad_signature")).collect();
        assert_outcome(&outcome, 0, &reasons);
        let m = gw.scrape().await;
        assert_eq!(m.exact("events_rejected_total{reason=\"bad_signature\"}"), 6.0);
        assert_eq!(m.sum("impressions_total", &[]) + m.sum("clicks_total", &[]), 0.0);
    }
    let outcome = post_outcome(&b, &[event("click", &sign("another-secret", &forged), "9")]).await;
    assert_outcome(&outcome, 0, &[(0, None, "bad_signature")]);
}

/// `tracking.secret` rotated, given as the environment gives a list (a JSON list): a replica
/// listing `[new, old]` credits the tokens a replica with `old` issued, and signs its own with
/// `new`, naming it by its key id; a replica left with `new` alone refuses the old tokens as
/// forged, and credits the new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_credits_old_tokens_until_it_is_removed() {
    let with_secret = |value: &str| {
        gateway::settings_with_env(
            &repo().join("experiments"),
            &repo().join("models"),
            "100ms",
            &[("RECGW__TRACKING__SECRET", value)],
        )
    };
    let settings = [
        with_secret("old-s3cret"),
        with_secret(r#"["new-s3cret", "old-s3cret"]"#),
        with_secret("new-s3cret"),
    ];
    let (old, rotated, retired) = tokio::join!(
        TestGateway::launch_ready(&settings[0]),
        TestGateway::launch_ready(&settings[1]),
        TestGateway::launch_ready(&settings[2]),
    );
    let ([control, treatment], _) = users_of_each_arm(&old).await;
    let ((ct, ci), (tt, ti)) = (shown(&control), shown(&treatment));
    let batch = [
        event("impression", ct, &ci[0]),
        event("impression", tt, &ti[0]),
        event("click", tt, &ti[0]),
    ];
    assert_outcome(&post_outcome(&rotated, &batch).await, 3, &[]);
    let m = rotated.scrape().await;
    assert_eq!(m.arm("impressions_total", "control"), 1.0);
    assert_eq!(m.arm("impressions_total", "treatment"), 1.0);
    assert_eq!(m.arm("clicks_total", "treatment"), 1.0);
    let forged: Vec<(u64, Option<&str>, &str)> = (0..3).map(|i| (i, None, "bad_signature")).collect();
    assert_outcome(&post_outcome(&retired, &batch).await, 0, &forged);

    let body = recommend(&rotated, "42", "placement=home").await.body;
    let (token, items) = shown(&body);
    let bytes = URL_SAFE_NO_PAD.decode(token).expect("base64url");
    assert_eq!(
        bytes[1..5],
        key_id("new-s3cret"),
        "signed with the first secret: {token}"
    );
    let fresh = [event("impression", token, &items[0])];
    assert_outcome(&post_outcome(&retired, &fresh).await, 1, &[]);
    assert_outcome(&post_outcome(&old, &fresh).await, 0, &[(0, None, "bad_signature")]);
}

/// Every reason, with the right index and event id, counted in `events_rejected_total`; only
/// the accepted events count for the arm. Checks run in the documented order (type, item id,
/// event id, token, item on the page, duplicates), so an event with several faults names the
/// first; refused events claim nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_events_are_rejected_one_by_one() {
    let gw = TestGateway::launch_ready(&settings_with_secret("k3y")).await;
    let ([control, _], _) = users_of_each_arm(&gw).await;
    let token = control["tracking_token"].as_str().expect("token");
    let items = item_ids(&control);
    assert!(items.len() >= 7, "a page of 7 items at least: {control}");
    let bytes = URL_SAFE_NO_PAD.decode(token).expect("base64url");
    let signature = &bytes[bytes.len() - 32..];

    // One character of the claims flipped (inside the base64, so it still decodes).
    let mut chars: Vec<char> = token.chars().collect();
    let middle = chars.len() / 2;
    chars[middle] = if chars[middle] == 'A' { 'B' } else { 'A' };
    let flipped: String = chars.into_iter().collect();
    assert_ne!(flipped, token);
    // Changed claims re-encoded with the old signature.
    let mut changed = claims(token);
    changed["a"] = json!("treatment");
    let reencoded = URL_SAFE_NO_PAD.encode([layout(&changed, &bytes[1..5]), signature.to_vec()].concat());
    // A signature cut short.
    let truncated = &URL_SAFE_NO_PAD.encode(&bytes[..bytes.len() - 3]);
    // Item ids at and over 256 bytes; event ids at and over 64 characters, of every kind of
    // character allowed.
    let (widest_item, too_wide_item) = ("y".repeat(256), "x".repeat(257));
    let longest_id: String = "Az09._:@-".chars().cycle().take(64).collect();
    let too_long_id = format!("{longest_id}a");

    let batch = [
        event_with_id("impression", token, &items[0], "e-1"), // 0: accepted
        event_with_id("impression", &flipped, &items[0], "e-2"), // 1
        event("click", &reencoded, &items[0]),                // 2
        event_with_id("click", "not-a-token", &items[0], "e-3"), // 3
        event("click", "", &items[0]),                        // 4
        event("click", "a.b.c", &items[0]),                   // 5
        event_with_id("view", token, &items[0], "e-4"),       // 6
        event_with_id("click", token, "", "e-5"),             // 7
        event_with_id("click", token, &items[1], "e-1"),      // 8: accepted, id of 0 elsewhere
        event("click", token, &items[2]),                     // 9: accepted
        event("click", token, &items[2]),                     // 10: same as 9
        event("impression", token, &items[2]),                // 11: accepted, another type
        event("click", truncated, &items[3]),                 // 12
        event_with_id("click", token, "not-on-the-page", "e-6"), // 13
        event("click", token, &too_wide_item),                // 14
        event("click", token, "line\nbreak"),                 // 15: a control character
        event_with_id("click", token, &items[6], "e 7"),      // 16: a space
        event_with_id("click", token, &items[6], &too_long_id), // 17
        event_with_id("click", token, &items[3], ""),         // 18: accepted, "" is no id
        event_with_id("click", token, &items[4], &longest_id), // 19: accepted
        event("impression", token, &widest_item),             // 20: valid, but not served
        // Several faults each: the first check names it.
        event_with_id("view", "not-a-token", "", "bad id"),  // 21
        event_with_id("click", "not-a-token", "", "bad id"), // 22
        event_with_id("click", "not-a-token", &too_wide_item, "bad id"), // 23
        event_with_id("click", "not-a-token", "not-on-the-page", "bad id"), // 24
        event("click", &flipped, "not-on-the-page"),         // 25
    ];
    let outcome = post_outcome(&gw, &batch).await;
    assert_outcome(
        &outcome,
        6,
        &[
            (1, Some("e-2"), "bad_signature"),
            (2, None, "bad_signature"),
            (3, Some("e-3"), "malformed_token"),
            (4, None, "malformed_token"),
            (5, None, "malformed_token"),
            (6, Some("e-4"), "unknown_type"),
            (7, Some("e-5"), "missing_item_id"),
            (10, None, "duplicate_event_id"),
            (12, None, "bad_signature"),
            (13, Some("e-6"), "item_not_served"),
            (14, None, "invalid_item_id"),
            (15, None, "invalid_item_id"),
            (16, Some("e 7"), "invalid_event_id"),
            (17, Some(too_long_id.as_str()), "invalid_event_id"),
            (20, None, "item_not_served"),
            (21, Some("bad id"), "unknown_type"),
            (22, Some("bad id"), "missing_item_id"),
            (23, Some("bad id"), "invalid_item_id"),
            (24, Some("bad id"), "invalid_event_id"),
            (25, None, "bad_signature"),
        ],
    );

    // Across batches: a counted event under its id is a retry (accepted, not counted again);
    // another id, no id, or the empty id for a counted position is a duplicate. Positions
    // whose events were refused are still free, and an id is scoped to its token.
    let again = recommend(&gw, control["user_id"].as_str().expect("user"), "placement=home")
        .await
        .body;
    let other_token = again["tracking_token"].as_str().expect("token");
    assert_ne!(other_token, token, "a new response, a new token");
    let batch = [
        event_with_id("click", token, &items[1], "e-1"),       // 0: retry of 8
        event_with_id("click", token, &items[1], "e-9"),       // 1
        event("click", token, &items[2]),                      // 2: as 9
        event_with_id("click", token, &items[3], ""),          // 3: as 18, which had no id
        event_with_id("click", token, &items[4], &longest_id), // 4: retry of 19
        event_with_id("impression", token, &items[0], "e-1"),  // 5: retry of 0
        event("impression", token, &items[5]),                 // 6: new
        event_with_id("click", token, &items[6], "e-7"),       // 7: new, refused twice before
        event_with_id("click", other_token, &item_ids(&again)[1], "e-1"), // 8: new, another token
    ];
    assert_outcome(
        &post_outcome(&gw, &batch).await,
        6,
        &[
            (1, Some("e-9"), "duplicate_event_id"),
            (2, None, "duplicate_event_id"),
            (3, Some(""), "duplicate_event_id"),
        ],
    );

    let m = gw.scrape().await;
    let expected = [
        ("bad_signature", 4.0),
        ("malformed_token", 3.0),
        ("expired_token", 0.0),
        ("unknown_type", 2.0),
        ("missing_item_id", 2.0),
        ("invalid_item_id", 3.0),
        ("invalid_event_id", 3.0),
        ("item_not_served", 2.0),
        ("duplicate_event_id", 4.0),
        ("counts_unavailable", 0.0),
    ];
    assert_rejections(&m, &expected);
    // Counted once each: impressions 0 and 11, batch-2 #6; clicks 8, 9, 18 and 19, batch-2 #7
    // and #8 (retries are not counted again).
    assert_eq!(m.arm("impressions_total", "control"), 3.0);
    assert_eq!(m.arm("clicks_total", "control"), 6.0);
    assert_eq!(
        m.arm("impressions_total", "treatment"),
        0.0,
        "the tampered arm gets nothing"
    );
    assert_eq!(m.arm("clicks_total", "treatment"), 0.0);
    let stats = gw.ok("/stats").await;
    let entry = stats_arm(&stats, "home", EXPERIMENT, "control");
    assert_eq!(
        (entry["impressions"].as_u64(), entry["clicks"].as_u64()),
        (Some(3), Some(6)),
        "the results count as the metrics do: {stats}"
    );
}

/// Tokens older than `tracking.token_max_age` are refused as expired (before the item is looked
/// for on their page).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tokens_are_rejected() {
    let mut settings = settings_with_secret("k3y");
    settings.tracking.token_max_age = Duration::from_secs(1);
    let gw = TestGateway::launch_ready(&settings).await;
    let body = recommend(&gw, "42", "placement=home").await.body;
    let issued = Instant::now();
    let token = body["tracking_token"].as_str().expect("token");
    let items = item_ids(&body);
    assert_outcome(
        &post_outcome(&gw, &[event("impression", token, &items[0])]).await,
        1,
        &[],
    );
    assert!(issued.elapsed() < Duration::from_secs(1), "the fresh check ran in time");

    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let batch = [
        event_with_id("click", token, &items[0], "late-1"),
        event("impression", token, &items[1]),
        event("click", token, "not-on-the-page"),
    ];
    assert_outcome(
        &post_outcome(&gw, &batch).await,
        0,
        &[
            (0, Some("late-1"), "expired_token"),
            (1, None, "expired_token"),
            (2, None, "expired_token"),
        ],
    );
    // A fresh token for the same user is fine again.
    let fresh = recommend(&gw, "42", "placement=home").await.body;
    let fresh = fresh["tracking_token"].as_str().expect("token");
    assert_outcome(&post_outcome(&gw, &[event("click", fresh, &items[0])]).await, 1, &[]);

    let m = gw.scrape().await;
    assert_eq!(m.exact("events_rejected_total{reason=\"expired_token\"}"), 3.0);
    assert_eq!(m.sum("events_rejected_total", &[]), 3.0, "no other reason");
    let arm = body["arm"].as_str().expect("arm");
    assert_eq!(m.arm("impressions_total", arm), 1.0);
    assert_eq!(m.arm("clicks_total", arm), 1.0);
}

/// Tokens of the JSON format, issued before the binary one, count as they did until they
/// expire, so a deploy loses no event of a page served just before it. Such a token and the
/// same claims in the binary format are two tokens, each counting its page once per type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_the_json_format_still_count() {
    let gw = TestGateway::launch_ready(&settings_with_secret("k3y")).await;
    let body = recommend(&gw, "42", "placement=home").await.body;
    let (token, items) = shown(&body);
    // The same page as the release before the binary format would have signed it.
    let mut page = claims(token);
    page["i"] = json!(json_page_tags(&items));
    let old = sign_json("k3y", &page);
    let batch = [
        event("impression", &old, &items[0]),
        event_with_id("click", &old, &items[0], "c-1"),
        event("click", token, &items[0]),
        event("click", &old, "not-on-the-page"),
        event("click", &sign_json("another-secret", &page), &items[1]),
    ];
    assert_outcome(
        &post_outcome(&gw, &batch).await,
        3,
        &[(3, None, "item_not_served"), (4, None, "bad_signature")],
    );
    // A retry under its id is accepted again and not counted; without one it is a duplicate.
    let again = [
        event_with_id("click", &old, &items[0], "c-1"),
        event("click", &old, &items[0]),
    ];
    assert_outcome(&post_outcome(&gw, &again).await, 1, &[(1, None, "duplicate_event_id")]);

    let m = gw.scrape().await;
    let arm = body["arm"].as_str().expect("arm");
    assert_eq!(m.arm("impressions_total", arm), 1.0);
    assert_eq!(m.arm("clicks_total", arm), 2.0, "one per token");
}

/// Batch and body limits, malformed and unexpected bodies: JSON errors with fitting statuses,
/// and nothing counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_limits_and_malformed_bodies() {
    let gw = TestGateway::demo().await;
    let body = recommend(&gw, "42", "placement=home").await.body;
    let token = body["tracking_token"].as_str().expect("token");
    let arm = body["arm"].as_str().expect("arm");
    let items = item_ids(&body);

    // A token credits each item of its page once per type, so 1000 distinct events take 50
    // pages of 10: an impression and a click of every item of each.
    let mut events = Vec::new();
    for _ in 0..50 {
        let page = recommend(&gw, "42", "placement=home").await.body;
        assert_eq!(page["arm"], arm, "one user, one arm: {page}");
        let page_token = page["tracking_token"].as_str().expect("token");
        let page_items = item_ids(&page);
        assert_eq!(page_items.len(), 10, "a full page: {page}");
        for item in &page_items {
            events.push(event("impression", page_token, item));
            events.push(event("click", page_token, item));
        }
    }
    assert_eq!(events.len(), 1000);

    // 1001 events: refused whole.
    let mut too_many = events.clone();
    too_many.push(event("impression", token, &items[0]));
    let bytes = serde_json::to_vec(&json!({ "events": too_many })).expect("json");
    assert!(bytes.len() < 1 << 20, "under the body limit: {}", bytes.len());
    let reply = gw.post_raw("/events", bytes).await;
    assert_error(&reply, 413, Some("batch_too_large"), "1001 events");
    let m = gw.scrape().await;
    assert_eq!(m.arm("impressions_total", arm), 0.0);
    assert_eq!(m.arm("clicks_total", arm), 0.0);

    // 1000 events: all counted.
    assert_outcome(&post_outcome(&gw, &events).await, 1000, &[]);
    let m = gw.scrape().await;
    assert_eq!(m.arm("impressions_total", arm), 500.0);
    assert_eq!(m.arm("clicks_total", arm), 500.0);

    // Exactly 1 MiB is read; one byte more is refused before reading. The padding is JSON
    // whitespace, so the event itself is an ordinary click on the page.
    let sized = |len: usize, item: &str| {
        let one = serde_json::to_string(&event("click", token, item)).expect("json");
        let head = format!(r#"{{"events":[{one}]"#);
        let pad = len - head.len() - 1;
        format!("{head}{}}}", " ".repeat(pad))
    };
    let exact = sized(1 << 20, &items[0]);
    assert_eq!(exact.len(), 1 << 20);
    let reply = gw.post_raw("/events", exact).await;
    assert_eq!(reply.status, 202, "a body of exactly 1 MiB: {}", reply.body);
    assert_outcome(&reply.json(), 1, &[]);
    let over = sized((1 << 20) + 1, &items[1]);
    assert_eq!(over.len(), (1 << 20) + 1);
    let reply = gw.post_raw("/events", over).await;
    assert_error(&reply, 413, Some("payload_too_large"), "a body of 1 MiB + 1 byte");
    let m = gw.scrape().await;
    assert_eq!(m.arm("clicks_total", arm), 501.0, "the oversized click is not counted");

    // Malformed JSON, an unknown top-level field, a non-array: 400 JSON.
    for bad in [
        r#"{"events":["#,
        "not json",
        r#"{"events":[],"extra":1}"#,
        r#"{"events":{}}"#,
    ] {
        let reply = gw.post_raw("/events", bad).await;
        assert_error(&reply, 400, None, bad);
    }

    // An empty batch is fine.
    let empty = post_outcome(&gw, &[] as &[Value]).await;
    assert_eq!(empty, json!({ "accepted": 0, "rejected": 0, "rejections": [] }));

    let m = gw.scrape().await;
    assert_eq!(
        m.sum("events_rejected_total", &[]),
        0.0,
        "whole-batch refusals are not events"
    );
    assert_eq!(m.arm("impressions_total", arm), 500.0);
    assert_eq!(m.arm("clicks_total", arm), 501.0);
}

/// `/stats` after a known traffic mix: N served (split across arms and the default), M failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_summarise_served_and_failed_requests() {
    let gw = TestGateway::demo().await;

    let empty = gw.ok("/stats").await;
    assert_eq!(empty["overall"]["recommendations_served"], 0, "{empty}");
    assert_eq!(empty["failed_requests"], 0, "{empty}");
    assert_eq!(empty["overall"]["mean_response_time_seconds"], Value::Null, "{empty}");
    assert_eq!(empty["overall"]["error_rate"], Value::Null, "{empty}");

    let ([control, treatment], mut served) = users_of_each_arm(&gw).await;
    for _ in 0..3 {
        recommend(&gw, control["user_id"].as_str().expect("user"), "placement=home").await;
        recommend(&gw, treatment["user_id"].as_str().expect("user"), "placement=home").await;
    }
    served[0] += 3;
    served[1] += 3;
    let default_served = 2u64;
    for user in ["7", "8"] {
        recommend(&gw, user, "placement=default").await;
    }
    let failed = 3u64;
    for _ in 0..failed {
        let reply = gw.get("/recommendations/bad%20user?placement=home").await;
        assert_error(&reply, 400, Some("invalid_user_id"), "bad user id");
    }
    let n = served[0] + served[1] + default_served;

    let stats = gw.ok("/stats").await;
    let overall = &stats["overall"];
    assert_eq!(overall["recommendations_served"].as_u64(), Some(n), "{stats}");
    assert_eq!(stats["failed_requests"].as_u64(), Some(failed), "{stats}");
    let rate = overall["error_rate"].as_f64().expect("error_rate");
    let want = failed as f64 / (n + failed) as f64;
    assert!((rate - want).abs() < 1e-12, "error rate {rate}, want {want}: {stats}");
    let mean = overall["mean_response_time_seconds"].as_f64().expect("mean");
    assert!(mean > 0.0 && mean < 10.0, "{stats}");
    assert_eq!(
        (&overall["placement"], &overall["experiment"], &overall["arm"]),
        (&json!(""), &json!(""), &json!("")),
        "{stats}"
    );

    let arms: Vec<(String, String, String)> = stats["arms"]
        .as_array()
        .expect("arms")
        .iter()
        .map(|a| {
            let s = |k: &str| a[k].as_str().expect("label").to_string();
            (s("placement"), s("experiment"), s("arm"))
        })
        .collect();
    let label = |p: &str, e: &str, a: &str| (p.to_string(), e.to_string(), a.to_string());
    assert_eq!(
        arms,
        [
            label("default", "none", "default"),
            label("discover", "discover-als-shadow", "candidate"),
            label("discover", "discover-als-shadow", "control"),
            label("discover", "none", "default"),
            label("feed", "feed-als-interleave", "control"),
            label("feed", "feed-als-interleave", "interleaved"),
            label("feed", "feed-als-interleave", "treatment"),
            label("feed", "none", "default"),
            label("home", EXPERIMENT, "control"),
            label("home", EXPERIMENT, "treatment"),
            label("home", "none", "default"),
        ],
        "every arm of the catalog, sorted: {stats}"
    );
    let sum: u64 = stats["arms"]
        .as_array()
        .expect("arms")
        .iter()
        .map(|a| a["recommendations_served"].as_u64().expect("served"))
        .sum();
    assert_eq!(sum, n, "{stats}");
    let expected = [
        (("home", EXPERIMENT, "control"), served[0]),
        (("home", EXPERIMENT, "treatment"), served[1]),
        (("default", "none", "default"), default_served),
    ];
    for ((p, e, a), count) in expected {
        let entry = stats_arm(&stats, p, e, a);
        assert_eq!(entry["recommendations_served"].as_u64(), Some(count), "{entry}");
        let mean = entry["mean_response_time_seconds"].as_f64().expect("mean");
        assert!(mean > 0.0 && mean < 10.0, "{entry}");
        assert_eq!(entry["error_rate"].as_f64(), Some(0.0), "{entry}");
    }
    let idle = stats_arm(&stats, "home", "none", "default");
    assert_eq!(
        (
            &idle["recommendations_served"],
            &idle["mean_response_time_seconds"],
            &idle["error_rate"]
        ),
        (&json!(0), &Value::Null, &Value::Null),
        "{idle}"
    );
}

/// `/metrics` passes `promtool check metrics` silently and counts a known traffic mix exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_count_exactly() {
    let gw = TestGateway::demo().await;
    let ([control, treatment], mut served) = users_of_each_arm(&gw).await;
    let (cu, tu) = (
        control["user_id"].as_str().expect("user"),
        treatment["user_id"].as_str().expect("user"),
    );
    let mut items = [0u64; 2];
    for _ in 0..2 {
        items[0] += item_ids(&recommend(&gw, cu, "placement=home").await.body).len() as u64;
    }
    for _ in 0..4 {
        items[1] += item_ids(&recommend(&gw, tu, "placement=home").await.body).len() as u64;
    }
    served[0] += 2;
    served[1] += 4;
    for _ in 0..3 {
        recommend(&gw, "7", "placement=default").await;
    }
    for _ in 0..2 {
        let reply = gw.get("/recommendations/bad%20user?placement=home").await;
        assert_error(&reply, 400, Some("invalid_user_id"), "bad user id");
    }
    let reply = gw.get("/recommendations/42?placement=home&limit=0").await;
    assert_error(&reply, 400, Some("invalid_parameter"), "limit=0");
    let ((ct, ci), (tt, ti)) = (shown(&control), shown(&treatment));
    let batch = [
        event("impression", ct, &ci[0]),
        event("click", ct, &ci[0]),
        event("impression", tt, &ti[0]),
        event("click", "garbage", &ci[0]),
        event("click", tt, "not-on-the-page"),
    ];
    assert_outcome(
        &post_outcome(&gw, &batch).await,
        3,
        &[(3, None, "malformed_token"), (4, None, "item_not_served")],
    );

    let reply = gw.get("/metrics").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        reply.content_type.starts_with("text/plain"),
        "content type {:?}",
        reply.content_type
    );
    tokio::task::block_in_place(|| promtool::check_metrics(&reply.body));

    let m = Metrics::parse(&reply.body);
    assert_eq!(
        m.exact(r#"recommendations_total{arm="control",experiment="home-als-rank",placement="home"}"#),
        served[0] as f64
    );
    assert_eq!(
        m.exact(r#"recommendations_total{arm="treatment",experiment="home-als-rank",placement="home"}"#),
        served[1] as f64
    );
    assert_eq!(
        m.exact(r#"recommendations_total{arm="default",experiment="none",placement="default"}"#),
        3.0
    );
    assert_eq!(
        m.exact(r#"recommendations_total{arm="default",experiment="none",placement="home"}"#),
        0.0
    );
    assert_eq!(m.sum("recommendations_total", &[]), (served[0] + served[1] + 3) as f64);
    for (i, arm) in ARMS.iter().enumerate() {
        let labels = [
            ("endpoint", "recommendations"),
            ("placement", "home"),
            ("experiment", EXPERIMENT),
            ("arm", arm),
        ];
        assert_eq!(m.sum("response_time_seconds_count", &labels), served[i] as f64, "{arm}");
        assert!(m.sum("response_time_seconds_sum", &labels) > 0.0, "{arm}");
        assert_eq!(
            m.exact(&format!(
                "experiment_arm_weight{{arm=\"{arm}\",experiment=\"{EXPERIMENT}\",placement=\"home\"}}"
            )),
            0.5
        );
    }
    // Items of the pages this test counted (the arm probes added more; at least these).
    for (i, arm) in ARMS.iter().enumerate() {
        assert!(m.arm("recommended_items_total", arm) >= items[i] as f64, "{arm}");
    }

    let errors = |kind: &str| m.sum("errors_total", &[("endpoint", "recommendations"), ("kind", kind)]);
    assert_eq!(errors("invalid_user_id"), 2.0);
    assert_eq!(errors("invalid_parameter"), 1.0);
    assert_eq!(
        m.exact(r#"errors_total{arm="none",endpoint="recommendations",experiment="none",kind="invalid_user_id",placement="home"}"#),
        2.0
    );
    assert_eq!(
        m.sum("errors_total", &[("endpoint", "recommendations")]),
        3.0,
        "no other errors"
    );

    assert_eq!(m.arm("impressions_total", "control"), 1.0);
    assert_eq!(m.arm("clicks_total", "control"), 1.0);
    assert_eq!(m.arm("impressions_total", "treatment"), 1.0);
    assert_eq!(m.arm("clicks_total", "treatment"), 0.0);
    // Every rejection reason is exported from the start, at 0 until it happens.
    let reasons = [
        ("malformed_token", 1.0),
        ("bad_signature", 0.0),
        ("expired_token", 0.0),
        ("unknown_type", 0.0),
        ("missing_item_id", 0.0),
        ("invalid_item_id", 0.0),
        ("invalid_event_id", 0.0),
        ("item_not_served", 1.0),
        ("duplicate_event_id", 0.0),
        ("counts_unavailable", 0.0),
    ];
    assert_rejections(&m, &reasons);

    // Every family of ARCHITECTURE.md §7 that needs no Redis is exported.
    for family in [
        "recommendations_total",
        "response_time_seconds",
        "errors_total",
        "recommended_items_total",
        "impressions_total",
        "clicks_total",
        "fallbacks_total",
        "cache_requests_total",
        "store_read_duration_seconds",
        "model_info",
        "experiment_arm_weight",
    ] {
        assert!(
            reply.body.contains(&format!("# TYPE {family} ")),
            "no family {family} in:\n{}",
            reply.body
        );
    }
}
