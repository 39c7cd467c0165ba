//! The results over time end to end (`GET /experiments/{id}/results?by=day` and
//! `recgw report … --plot FILE.svg`, ../shared/DESIGN.md): real `recgw` gateways in this
//! process on free loopback ports over a copy of the repository's own `experiments/` and
//! `models/` (`home-als-rank`: control/treatment 50/50 on all of placement `home`, QA override
//! `qa-user-1` → treatment; `feed-als-interleave` on `feed`), plus a completed experiment the
//! tests add, `side-done` on a placement `side` of their own, whose winner serves everyone
//! uncounted.
//!
//! Users are the unit of analysis (../shared/STATISTICS.md §1–3): what each UTC day added to an
//! arm's per-user sums (`n, Σc, Σi, Σc², Σi², Σc·i`) is counted in the same step as the totals
//! — an event's increments on the day it was accepted, a user on the day it was first counted
//! (first served, or its first event if that came first) — and `?by=day` gives per day the
//! cumulative users, impressions and clicks and the statistics of the per-user sums up to the
//! end of that day. What the tests check, each against a ledger of each counted user's
//! `(clicks, impressions)` per arm — the users the client was served, the events the gateway
//! answered 202/accepted, and on which days of the test's clock each happened — and statistics
//! the test computes itself from the ledger's rows (`common/stats.rs`):
//!
//! 1. on no Redis, one Redis node and a 3-node Redis Cluster (`common/redis.rs` [`Mode`]):
//!    traffic on `home-als-rank` from users who differ (some served and never showing an
//!    event, the others looking at 1 to 10 items) shows as exactly one day, today (UTC, from
//!    the test's own clock), whose cumulative users and counts equal the ledger and the body's
//!    totals (whose `per_user_sums` are the ledger's) and whose CTR, lift and always-valid
//!    interval and p-value equal the test's own computation; QA overrides and a completed
//!    experiment's winner add no day; a retried batch changes no day;
//! 2. two replicas on one Redis (node and cluster) add up exactly in `?by=day`;
//! 3. `by=week` is a 400 JSON error `invalid_parameter`, no `by` gives no `days`, and an
//!    experiment without traffic has no day;
//! 4. `recgw report home-als-rank --plot DIR/out.svg` writes an SVG whose `<desc>` holds exactly
//!    the points of the `?by=day` body; a `.png` path and an interleave experiment fail.
//!
//! **Several days cannot be tested here.** The day is the one on which the gateway accepted an
//! event, read from the system clock, and the gateway has no clock a test could set; faking
//! one (or writing Redis keys by hand) would test the fake rather than the contract. So these
//! tests see one day (two when a run crosses midnight UTC, which they accept: the ledger knows
//! between which days of the test's clock each response and batch happened, so it still checks
//! every day it can place, and the cumulative counts of any other), and the cumulative sums
//! over several days, the 400-day limit and the plot of several days are left to the unit
//! tests of `src/analysis/results.rs` (`days_from_counts`) and `src/report/plot.rs`, which take
//! the per-day counts as input.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::cli::report_async as report;
use common::events::{self, ClientEvent, Kind};
use common::gateway::{DemoCopy, TestGateway, eventually};
use common::page::{Page, recommend};
use common::redis::{Mode, Redis};
use common::rng::Rng;
use common::stats::{self, UserRow, close_value as close};
use serde_json::{Value, json};

const EXPERIMENT: &str = "home-als-rank";
const PLACEMENT: &str = "home";
/// The arms of `home-als-rank`, in arm order (the control first).
const ARMS: [&str; 2] = ["control", "treatment"];
/// The QA override of `home-als-rank`, forced into the treatment and never counted.
const QA_USER: &str = "qa-user-1";
/// The interleave experiment of the demo, and its placement.
const INTERLEAVE: &str = "feed-als-interleave";
const INTERLEAVE_PLACEMENT: &str = "feed";
/// The completed experiment the tests add (see [`demo`]), its placement and winner.
const COMPLETED: &str = "side-done";
const COMPLETED_PLACEMENT: &str = "side";
const WINNER: &str = "treatment";
/// The query of the results with the days.
const BY_DAY: &str = "?by=day";
/// `sequential_tuning` when an experiment sets none (the demo's do not).
const DEFAULT_TUNING: f64 = 5000.0;
/// Click probability per shown item of each arm, so that the lift is clearly not zero.
const CLICK_P: [f64; 2] = [0.10, 0.18];
/// Every this many numeric users is served and looks at nothing: counted, without events.
const IDLE_EVERY: u32 = 8;
/// Events per `POST /events`.
const BATCH: usize = 250;
/// How long the users served get to be counted (in the background) before a test fails.
const WAIT: Duration = Duration::from_secs(10);
/// The fields a day's arm may have: the contract's.
const DAY_ARM_FIELDS: [&str; 10] = [
    "name",
    "users",
    "impressions",
    "clicks",
    "ctr",
    "lift",
    "sequential_lift_low",
    "sequential_lift_high",
    "sequential_p_value",
    "undefined",
];

// ---------------------------------------------------------------------------------------------
// Gateways over a copy of the demo
// ---------------------------------------------------------------------------------------------

/// A copy of the demo with placement `side` and the completed experiment `side-done` on it
/// (winner `treatment`), which serves every user of `side` uncounted.
fn demo() -> DemoCopy {
    let demo = DemoCopy::new();
    let placements = demo.experiments().join("placements.toml");
    let mut text = std::fs::read_to_string(&placements).expect("the demo has placements.toml");
    text.push_str("\n[placements.side]\ndefault_model = \"popular\"\n");
    std::fs::write(&placements, text).expect("write placements.toml");
    let completed = format!(
        "id = \"{COMPLETED}\"\nplacement = \"{COMPLETED_PLACEMENT}\"\nstatus = \"completed\"\n\
         winner = \"{WINNER}\"\n\n[[arms]]\nname = \"control\"\nweight = 50.0\nmodel = \"als-v1\"\n\n\
         [[arms]]\nname = \"treatment\"\nweight = 50.0\nmodel = \"als-v2\"\n"
    );
    std::fs::write(demo.experiments().join("side-done.toml"), completed).expect("write side-done.toml");
    demo
}

// ---------------------------------------------------------------------------------------------
// The test's clock: today's date (UTC)
// ---------------------------------------------------------------------------------------------

/// `YYYY-MM-DD` of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`, written
/// here again so that the test does not trust the gateway's calendar).
fn date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Today (UTC) by the system clock, as days since 1970-01-01.
fn today() -> i64 {
    let since = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("the clock is after 1970");
    (since.as_secs() / 86_400) as i64
}

/// The test's own calendar, on which every expected day rests, against dates known
/// independently (a leap day, a year boundary, the demo's start).
#[test]
fn the_test_calendar_names_known_days() {
    assert_eq!(date(0), "1970-01-01");
    assert_eq!(date(-1), "1969-12-31");
    assert_eq!(date(11_017), "2000-03-01");
    assert_eq!(date(19_782), "2024-02-29");
    assert_eq!(date(19_783), "2024-03-01");
    assert_eq!(date(20_758), "2026-11-01");
    assert_eq!(date(20_819), "2027-01-01");
}

// ---------------------------------------------------------------------------------------------
// Traffic and the ledger of what was accepted
// ---------------------------------------------------------------------------------------------

/// The days (since 1970-01-01, UTC, by the test's clock) just before and just after something
/// the gateway did: it did it on one of the days `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    first: i64,
    last: i64,
}

impl Window {
    /// Today, before doing something; [`Window::close`] it after.
    fn open() -> Window {
        let day = today();
        Window { first: day, last: day }
    }

    /// The window with today as its last day.
    fn close(self) -> Window {
        Window { last: today(), ..self }
    }

    /// Whether what happened in the window is counted by the end of `day`: `None` when the
    /// window holds `day` and a later day, so the test cannot tell (only across midnight UTC).
    fn by(self, day: i64) -> Option<bool> {
        if self.last <= day {
            Some(true)
        } else if self.first > day {
            Some(false)
        } else {
            None
        }
    }
}

/// A recommendation response and the window it was served in, which tells the ledger on
/// which day its user may have been counted.
#[derive(Debug, Clone)]
struct TimedPage {
    page: Page,
    when: Window,
}

/// A page of `experiment` (which covers the whole placement) with items for `user` on
/// `placement`, timed.
async fn timed_page(gw: &TestGateway, user: &str, placement: &str, experiment: &str) -> TimedPage {
    let when = Window::open();
    let page = recommend(gw, user, &format!("placement={placement}")).await;
    let when = when.close();
    TimedPage {
        page: page.expect_experiment(experiment).expect_items(),
        when,
    }
}

/// One event, and the arm whose counts it belongs in (`None`: not counted).
#[derive(Debug, Clone)]
struct Event {
    json: Value,
    /// Index into [`ARMS`] when the event counts in `home-als-rank`'s results.
    counts_for: Option<usize>,
    click: bool,
    /// The user of the page.
    user: String,
}

/// How many items of `s` its user looks at: none for every [`IDLE_EVERY`]-th numeric user
/// (served, counted, and never shows an event), else 1 to all of them by `rng`, so that users
/// differ in impressions.
fn depth(s: &TimedPage, rng: &mut Rng) -> usize {
    if s.page.user.parse::<u32>().is_ok_and(|u| u % IDLE_EVERY == 0) {
        0
    } else {
        1 + rng.below(s.page.items.len() as u64) as usize
    }
}

/// Per response, an impression of every item its user looks at ([`depth`]) and, by `rng`, a
/// click on it with the arm's [`CLICK_P`]; each with an explicit `event_id`
/// `{prefix}-{response}-{i|c}-{item}`, so a resend is a safe retry. `counted` tells whether a
/// response's events count in `home-als-rank`.
fn events_for(served: &[TimedPage], prefix: &str, rng: &mut Rng, counted: impl Fn(&TimedPage) -> bool) -> Vec<Event> {
    let mut events = Vec::new();
    for (n, s) in served.iter().enumerate() {
        let arm = ARMS.iter().position(|a| *a == s.page.arm);
        let counts_for = arm.filter(|_| counted(s));
        let shown = depth(s, rng);
        for item in &s.page.items[..shown] {
            let mut push = |kind: Kind| {
                let id = format!("{prefix}-{n}-{}-{item}", kind.tag());
                events.push(Event {
                    json: events::event(kind.name(), &s.page.token, item, Some(&id)),
                    counts_for,
                    click: kind == Kind::Click,
                    user: s.page.user.clone(),
                });
            };
            push(Kind::Impression);
            if rng.chance(CLICK_P[arm.unwrap_or(0)]) {
                push(Kind::Click);
            }
        }
    }
    events
}

impl ClientEvent for Event {
    fn to_json(&self) -> Value {
        self.json.clone()
    }
}

/// One counted user of an arm as the ledger knows them.
#[derive(Debug, Clone, PartialEq)]
struct UserLedger {
    /// When the user was first served from the arm.
    served: Window,
    /// Each of its events accepted for the first time, a click or an impression, with the
    /// window of its batch.
    events: Vec<(bool, Window)>,
}

impl UserLedger {
    /// The user's `(clicks, impressions)` of the events in `events`.
    fn row<'a>(events: impl Iterator<Item = &'a (bool, Window)>) -> UserRow {
        events.fold(
            (0, 0),
            |(c, i), &(click, _)| if click { (c + 1, i) } else { (c, i + 1) },
        )
    }
}

/// What `home-als-rank`'s arms must show: per arm in [`ARMS`] order, each counted user served
/// from it with the events accepted for them for the first time, and when each happened, so
/// that the ledger can tell what the results held at the end of any day.
#[derive(Debug, Default, Clone, PartialEq)]
struct Ledger {
    users: [BTreeMap<String, UserLedger>; 2],
    /// Events accepted (counted or not).
    accepted: u64,
}

impl Ledger {
    /// Records the counted responses of `served` (not a QA override, in an arm of
    /// `home-als-rank`): each user is one of its arm's users from then on, `(0, 0)` until
    /// events are accepted for them.
    fn serve(&mut self, served: &[TimedPage]) {
        for s in served.iter().filter(|s| !s.page.forced) {
            let arm = ARMS
                .iter()
                .position(|a| *a == s.page.arm)
                .expect("an arm of home-als-rank");
            self.users[arm].entry(s.page.user.clone()).or_insert(UserLedger {
                served: s.when,
                events: Vec::new(),
            });
        }
    }

    /// Posts fresh `events` in batches of [`BATCH`], round-robin over `gateways`; every one
    /// must be accepted, and is credited to its arm's user when it counts.
    async fn post_fresh(&mut self, gateways: &[&TestGateway], events: &[Event]) {
        for (i, chunk) in events.chunks(BATCH).enumerate() {
            let when = Window::open();
            let outcomes = events::post_events(gateways[i % gateways.len()], chunk).await;
            let when = when.close();
            for (event, outcome) in chunk.iter().zip(&outcomes) {
                assert_eq!(outcome, &None, "a fresh event is accepted: {}", event.json);
                self.accepted += 1;
                if let Some(arm) = event.counts_for {
                    self.users[arm]
                        .get_mut(&event.user)
                        .unwrap_or_else(|| panic!("an event of a user served from the arm: {}", event.json))
                        .events
                        .push((event.click, when));
                }
            }
        }
    }

    /// Per arm, the rows of every user: what the totals must be.
    fn rows(&self) -> [Vec<UserRow>; 2] {
        self.users
            .each_ref()
            .map(|users| users.values().map(|user| UserLedger::row(user.events.iter())).collect())
    }

    /// Per arm, the rows of the users counted by the end of `day` with their events accepted
    /// by then: what the cumulative sums of that day must be. A user is counted when first
    /// served or at their first event, whichever comes first (after the serving, at the latest
    /// with the batch of their first event; a user without events at the latest by `seen`, the
    /// day the test saw every user counted). `None` when a window holds `day` and a later day,
    /// so the test cannot tell on which side of midnight something was counted.
    fn rows_by(&self, day: i64, seen: i64) -> Option<[Vec<UserRow>; 2]> {
        let mut rows = [Vec::new(), Vec::new()];
        for (arm, users) in self.users.iter().enumerate() {
            for user in users.values() {
                let counted = Window {
                    first: user.served.first,
                    last: user.events.first().map_or(seen, |(_, batch)| batch.last),
                };
                if !counted.by(day)? {
                    continue;
                }
                let mut events = Vec::new();
                for event in &user.events {
                    if event.1.by(day)? {
                        events.push(event);
                    }
                }
                rows[arm].push(UserLedger::row(events.into_iter()));
            }
        }
        Some(rows)
    }
}

/// Resends `events` (all accepted before, with their ids) in batches of [`BATCH`], round-robin
/// over `gateways`: every one is accepted again, as a safe retry that counts nothing.
async fn resend(gateways: &[&TestGateway], events: &[Event]) {
    for (i, chunk) in events.chunks(BATCH).enumerate() {
        let outcomes = events::post_events(gateways[i % gateways.len()], chunk).await;
        assert!(
            outcomes.iter().all(Option::is_none),
            "a resend with the same event ids is answered accepted: {outcomes:?}"
        );
    }
}

/// Users `from..=to` served round-robin over `gateways` on `home`, plus the QA override once;
/// the counted ones recorded in `ledger`.
async fn serve_home(gateways: &[&TestGateway], from: u32, to: u32, ledger: &mut Ledger) -> Vec<TimedPage> {
    let mut served = Vec::new();
    for (i, user) in (from..=to).enumerate() {
        let s = timed_page(gateways[i % gateways.len()], &user.to_string(), PLACEMENT, EXPERIMENT).await;
        assert!(!s.page.forced && ARMS.contains(&s.page.arm.as_str()), "{s:?}");
        served.push(s);
    }
    let qa = timed_page(gateways[0], QA_USER, PLACEMENT, EXPERIMENT).await;
    assert_eq!(
        (qa.page.arm.as_str(), qa.page.forced),
        ("treatment", true),
        "the QA override: {qa:?}"
    );
    served.push(qa);
    for arm in ARMS {
        assert!(
            served.iter().any(|s| s.page.arm == arm && !s.page.forced),
            "users in {arm}"
        );
    }
    ledger.serve(&served);
    served
}

// ---------------------------------------------------------------------------------------------
// The days as the test expects them
// ---------------------------------------------------------------------------------------------

/// `?by=day` of `home-als-rank` once every user of the ledger is counted (users served without
/// events are counted by the gateway in the background, events synchronously).
async fn settled(gw: &TestGateway, ledger: &Ledger) -> Value {
    let want = ledger.users.each_ref().map(|users| users.len() as u64);
    eventually(WAIT, "every user served is counted", async || {
        let body = events::results(gw, EXPERIMENT, BY_DAY).await;
        let users = [0, 1].map(|i| body["arms"][i]["users"].as_u64().unwrap_or(0));
        if users == want {
            Ok(body)
        } else {
            Err(format!("users {users:?}, want {want:?}"))
        }
    })
    .await
}

/// The `days` array of a `?by=day` body.
fn days_of(body: &Value) -> &Vec<Value> {
    body["days"]
        .as_array()
        .unwrap_or_else(|| panic!("?by=day gives a days array: {body}"))
}

/// `[users, impressions, clicks]` of a day's arm or a body's arm.
fn counts_of(arm: &Value) -> [u64; 3] {
    ["users", "impressions", "clicks"].map(|field| {
        arm[field]
            .as_u64()
            .unwrap_or_else(|| panic!("{field} is a count: {arm}"))
    })
}

/// `[users, impressions, clicks]` of per-user rows.
fn counts_of_rows(rows: &[UserRow]) -> [u64; 3] {
    let sums = stats::sums(rows);
    [sums[0], sums[2], sums[1]]
}

/// Checks one day's entry against the rows of its arms' users up to the end of it, as the
/// ledger tells them: every arm in arm order with exactly those users, impressions and clicks,
/// its CTR, and for the treatment the lift, always-valid interval and p-value of
/// `common/stats.rs` over those rows; the control's lift and sequential fields absent, each
/// with the reason "this is the control". The test's traffic gives both arms users who differ,
/// impressions and clicks on every day, so nothing else may be undefined.
fn check_day(day: &Value, rows: &[Vec<UserRow>; 2], tuning: f64) {
    let arms = day["arms"].as_array().unwrap_or_else(|| panic!("arms: {day}"));
    let names: Vec<&str> = arms.iter().filter_map(|a| a["name"].as_str()).collect();
    assert_eq!(names, ARMS, "every arm, the control first: {day}");
    for (i, arm) in arms.iter().enumerate() {
        let [users, n, c] = counts_of_rows(&rows[i]);
        for key in arm.as_object().expect("an object").keys() {
            assert!(DAY_ARM_FIELDS.contains(&key.as_str()), "unknown field {key}: {arm}");
        }
        assert_eq!(
            counts_of(arm),
            [users, n, c],
            "cumulative users, impressions and clicks of {}: {day}",
            ARMS[i]
        );
        assert!(
            users >= 2 && n > 0 && c > 0 && counts_of_rows(&rows[0])[2] > 0,
            "the traffic gives every arm users and clicks: {rows:?}"
        );
        assert_eq!(arm["ctr"].as_f64(), Some(c as f64 / n as f64), "CTR: {arm}");
        let undefined = arm["undefined"]
            .as_object()
            .unwrap_or_else(|| panic!("undefined: {arm}"));
        let statistics = [
            "lift",
            "sequential_lift_low",
            "sequential_lift_high",
            "sequential_p_value",
        ];
        if i == 0 {
            for field in statistics {
                assert!(arm.get(field).is_none(), "the control has no {field}: {arm}");
                assert_eq!(
                    undefined.get(field).and_then(Value::as_str),
                    Some("this is the control"),
                    "{field}: {arm}"
                );
            }
            assert_eq!(undefined.len(), statistics.len(), "no other reason: {arm}");
            continue;
        }
        assert!(undefined.is_empty(), "everything defined: {arm}");
        let (lift, _, _) = stats::lift(&rows[1], &rows[0]);
        let (low, high, p) = stats::sequential(&rows[1], &rows[0], tuning);
        for (field, want) in [
            ("lift", lift),
            ("sequential_lift_low", low),
            ("sequential_lift_high", high),
            ("sequential_p_value", p),
        ] {
            assert!(
                close(&arm[field], want),
                "{field} = {} (want {want}): {arm}",
                arm[field]
            );
        }
        assert!(low < lift && lift < high, "the interval holds the lift: {arm}");
    }
}

/// Checks the `days` of a `?by=day` body after traffic on `[first, last]` (the test's days
/// before the first response and after the last event, `last` taken once the results showed
/// every user counted) whose users and accepted events the ledger holds: one entry, `first`,
/// when the date did not change; when it did, entries on days of `[first, last]` only, oldest
/// first, whose cumulative counts never decrease. Every entry whose users and events the
/// ledger can place before or after its midnight (all of them unless a response or a batch
/// straddled midnight) has the users, counts and statistics of the ledger's rows by then; the
/// last one's counts equal the ledger's and the body's totals, whose `per_user_sums` are those
/// of the ledger's rows.
fn check_days(body: &Value, first: i64, last: i64, ledger: &Ledger) {
    let days = days_of(body);
    let tuning = body["sequential_tuning"].as_f64().expect("sequential_tuning");
    assert_eq!(tuning, DEFAULT_TUNING, "the demo sets no tuning: {body}");
    assert_eq!(body["unit"], "user", "{body}");
    let names: Vec<&str> = days.iter().map(|d| d["day"].as_str().expect("day")).collect();
    if first == last {
        assert_eq!(names, [date(first)], "exactly one day, today (UTC): {body}");
    } else {
        eprintln!("the test crossed midnight UTC ({} to {})", date(first), date(last));
        let allowed: Vec<String> = (first..=last).map(date).collect();
        assert!(!names.is_empty(), "a day: {body}");
        assert!(
            names.iter().all(|d| allowed.iter().any(|a| a == d)),
            "days among {allowed:?}: {names:?}"
        );
        assert!(names.windows(2).all(|w| w[0] < w[1]), "oldest first: {names:?}");
    }
    let mut previous = [[0u64; 3]; 2];
    for (day, name) in days.iter().zip(&names) {
        let mut counts = [[0u64; 3]; 2];
        for (i, arm) in day["arms"].as_array().expect("arms").iter().enumerate().take(2) {
            counts[i] = counts_of(arm);
            for k in 0..3 {
                assert!(counts[i][k] >= previous[i][k], "cumulative: {days:?}");
            }
        }
        let number = (first..=last).find(|&d| date(d) == *name).expect("a day of the test");
        match ledger.rows_by(number, last) {
            Some(rows) => check_day(day, &rows, tuning),
            None => {
                assert_ne!(first, last, "on one day the ledger places everything");
                eprintln!("{name}: something was counted across midnight; its cumulative counts only are checked");
            }
        }
        previous = counts;
    }
    let rows = ledger.rows();
    let totals = rows.each_ref().map(|rows| counts_of_rows(rows));
    assert_eq!(
        previous, totals,
        "the last day's counts are what was served and accepted"
    );
    for (i, arm) in body["arms"].as_array().expect("arms").iter().enumerate() {
        assert_eq!(arm["name"], ARMS[i], "{body}");
        assert_eq!(counts_of(arm), totals[i], "the totals of {}: {body}", ARMS[i]);
        let sums = stats::PER_USER_SUMS.map(|field| arm["per_user_sums"][field].as_u64());
        assert_eq!(
            sums,
            stats::sums(&rows[i]).map(Some),
            "per_user_sums of {} ({:?}): {body}",
            ARMS[i],
            stats::PER_USER_SUMS
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 1. One gateway: one day, equal to the ledger, in each mode
// ---------------------------------------------------------------------------------------------

/// Traffic on `home-als-rank` (160 users, one in eight served without events, the QA
/// override) shows in `?by=day`, once every user served is counted, as one day, today by the
/// test's clock, whose cumulative users, impressions and clicks are exactly those the client
/// was served and got accepted for the counted users and the body's totals (whose
/// `per_user_sums` are the ledger's rows' sums), and whose statistics are the test's own over
/// those rows; the QA override's events, and those of a completed experiment's winner, add
/// nothing (the latter's `?by=day` has no day at all); and a retried batch (the same event
/// ids, answered accepted) changes no day. One day only: a test cannot move the gateway's
/// clock (see the file's doc).
async fn one_day_equals_the_ledger(mode: Mode) {
    let demo = demo();
    let redis = Redis::start_in_place(mode);
    let gw = TestGateway::launch_up(&demo.settings(&redis.url())).await;
    let first = today();
    let mut rng = Rng::new(0xDA15_0001);
    let mut ledger = Ledger::default();
    let served = serve_home(&[&gw], 1, 160, &mut ledger).await;
    let events = events_for(&served, "one", &mut rng, |s| !s.page.forced);
    ledger.post_fresh(&[&gw], &events).await;

    // The winner of a completed experiment is served and its events accepted, uncounted.
    let mut winner_pages = Vec::new();
    for user in 1..=20 {
        let s = timed_page(&gw, &user.to_string(), COMPLETED_PLACEMENT, COMPLETED).await;
        assert_eq!(s.page.arm, WINNER, "{s:?}");
        winner_pages.push(s);
    }
    let winner_events = events_for(&winner_pages, "won", &mut rng, |_| false);
    ledger.post_fresh(&[&gw], &winner_events).await;
    assert_eq!(ledger.accepted, (events.len() + winner_events.len()) as u64);
    assert!(
        events.iter().any(|e| e.counts_for.is_none()),
        "the QA override's events were posted"
    );

    let body = settled(&gw, &ledger).await;
    let last = today();
    assert_eq!(body["counts"], mode.counts(), "{body}");
    check_days(&body, first, last, &ledger);
    let completed = events::results(&gw, COMPLETED, BY_DAY).await;
    assert_eq!(
        completed["days"],
        json!([]),
        "a completed experiment's winner counts on no day: {completed}"
    );

    // The client lost the answers and sends everything again: accepted, counted on no day.
    resend(&[&gw], &events).await;
    resend(&[&gw], &winner_events).await;
    let again = events::results(&gw, EXPERIMENT, BY_DAY).await;
    assert_eq!(again["days"], body["days"], "a retried batch changes no day");
    check_days(&again, first, last, &ledger);
    gw.stop().await;
}

redis_modes! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    one_day_equals_the_ledger {
        /// [`one_day_equals_the_ledger`] without Redis: the days counted beside the totals in memory.
        one_day_equals_the_ledger_in_memory => Memory,
        /// [`one_day_equals_the_ledger`] on one Redis node: the days counted by the events' claim script.
        one_day_equals_the_ledger_on_one_redis_node => Node,
        /// [`one_day_equals_the_ledger`] on a 3-node Redis Cluster: the days hash in the experiment's slot.
        one_day_equals_the_ledger_on_a_redis_cluster => Cluster,
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Two replicas on one Redis
// ---------------------------------------------------------------------------------------------

/// Two replicas sharing one Redis each count part of the traffic (responses and batches
/// alternate between them, so a user's events may reach the replica that did not serve it):
/// `?by=day` of either shows the sum exactly — each user once, the per-user sums and the
/// statistics of the whole ledger — the same on both, and a batch retried on the other
/// replica changes no day.
async fn replicas_add_up(mode: Mode) {
    let demo = demo();
    let redis = Redis::start_in_place(mode);
    let settings = demo.settings(&redis.url());
    let a = TestGateway::launch_up(&settings).await;
    let b = TestGateway::launch_up(&settings).await;
    let first = today();
    let mut rng = Rng::new(0xDA15_0002);
    let mut ledger = Ledger::default();
    let served = serve_home(&[&a, &b], 201, 400, &mut ledger).await;
    let events = events_for(&served, "two", &mut rng, |s| !s.page.forced);
    ledger.post_fresh(&[&a, &b], &events).await;
    assert!(events.len() > BATCH, "batches went to both replicas: {}", events.len());

    let from_a = settled(&a, &ledger).await;
    let from_b = settled(&b, &ledger).await;
    let last = today();
    check_days(&from_a, first, last, &ledger);
    assert_eq!(from_a["days"], from_b["days"], "both replicas show the same days");

    // The batches A took, retried on B, and B's on A.
    resend(&[&b, &a], &events).await;
    for gw in [&a, &b] {
        assert_eq!(
            events::results(gw, EXPERIMENT, BY_DAY).await["days"],
            from_a["days"],
            "a retry on the other replica changes no day"
        );
    }
    a.stop().await;
    b.stop().await;
}

redis_modes! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    replicas_add_up {
        /// [`replicas_add_up`] on one Redis node.
        replicas_add_up_on_one_redis_node => Node,
        /// [`replicas_add_up`] on a 3-node Redis Cluster.
        replicas_add_up_on_a_redis_cluster => Cluster,
    }
}

// ---------------------------------------------------------------------------------------------
// 3. The `by` parameter
// ---------------------------------------------------------------------------------------------

/// `by` takes `day` only: `by=week` is a 400 JSON `{error: "invalid_parameter", message}`;
/// without `by` the body has no `days`; with `by=day` and nothing counted yet, `days` is empty
/// (a day appears only once something was counted on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_takes_day_only_and_days_only_when_asked() {
    let demo = demo();
    let gw = TestGateway::launch_up(&demo.settings("")).await;

    let empty = events::results(&gw, EXPERIMENT, BY_DAY).await;
    assert_eq!(empty["days"], json!([]), "nothing counted, no day: {empty}");

    let week = gw
        .get_json(&format!("/experiments/{EXPERIMENT}/results?by=week"), 400)
        .await;
    assert_eq!(week["error"], "invalid_parameter", "{week}");
    assert!(
        week["message"].as_str().is_some_and(|m| !m.is_empty()),
        "a message: {week}"
    );

    let mut rng = Rng::new(0xDA15_0003);
    let mut ledger = Ledger::default();
    let served = serve_home(&[&gw], 401, 440, &mut ledger).await;
    ledger
        .post_fresh(&[&gw], &events_for(&served, "by", &mut rng, |s| !s.page.forced))
        .await;
    let plain = events::results(&gw, EXPERIMENT, "").await;
    assert!(plain.get("days").is_none(), "no `by`, no days: {plain}");
    assert_eq!(
        plain["arms"][1]["impressions"].as_u64(),
        Some(stats::sums(&ledger.rows()[1])[2]),
        "the traffic is counted: {plain}"
    );
    let by_day = events::results(&gw, EXPERIMENT, BY_DAY).await;
    assert_eq!(days_of(&by_day).len(), 1, "now a day: {by_day}");
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 4. `recgw report --plot`
// ---------------------------------------------------------------------------------------------

/// `recgw report EXPERIMENT --url URL --plot PATH` as arguments.
fn plot_args(experiment: &str, gw: &TestGateway, path: &Path) -> Vec<String> {
    vec![
        experiment.to_string(),
        "--url".to_string(),
        gw.base(),
        "--plot".to_string(),
        path.to_str().expect("utf-8 path").to_string(),
    ]
}

/// The JSON in the `<desc>` element that must follow the opening `<svg …>` tag of `svg`,
/// unescaped.
fn description(svg: &str) -> Value {
    let at = svg.find("<svg").unwrap_or_else(|| panic!("no <svg: {svg}"));
    let open = at + svg[at..].find('>').expect("the <svg> tag closes") + 1;
    let rest = svg[open..].trim_start();
    let text = rest
        .strip_prefix("<desc>")
        .and_then(|r| r.split_once("</desc>"))
        .map(|(desc, _)| desc)
        .unwrap_or_else(|| panic!("<desc> right after <svg …>: {}", &rest[..rest.len().min(200)]));
    let text = text
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("<desc> is not JSON ({e}): {text}"))
}

/// What the plot's `<desc>` must hold for a `?by=day` body: per arm compared with the control
/// (not the control, not a shadow), in arm order, the days on which its lift and always-valid
/// interval are defined, with those values as the endpoint gave them.
fn plotted(body: &Value) -> Value {
    let compared = body["arms"]
        .as_array()
        .expect("arms")
        .iter()
        .filter(|a| a["control"] != true && a["shadow"] != true)
        .map(|a| a["name"].as_str().expect("name"));
    let series: Vec<Value> = compared
        .map(|name| {
            let days: Vec<Value> = days_of(body)
                .iter()
                .filter_map(|day| {
                    let arm = day["arms"].as_array()?.iter().find(|a| a["name"] == name)?;
                    let [lift, low, high] = ["lift", "sequential_lift_low", "sequential_lift_high"].map(|f| &arm[f]);
                    (lift.is_f64() && low.is_f64() && high.is_f64()).then(|| {
                        json!({
                            "day": day["day"], "lift": lift,
                            "sequential_lift_low": low, "sequential_lift_high": high,
                        })
                    })
                })
                .collect();
            json!({ "arm": name, "days": days })
        })
        .collect();
    Value::Array(series)
}

/// `recgw report home-als-rank --plot DIR/out.svg` against a gateway with traffic prints the
/// usual table and writes an SVG document whose `<desc>` holds exactly the points of the
/// `?by=day` body the test fetched itself (the treatment, today, its lift and always-valid
/// interval); a path not ending in `.svg` fails naming `.svg`, and the interleave experiment
/// `feed-als-interleave`, even with traffic, fails with "nothing to plot"; neither writes a
/// file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_plots_the_days_of_the_endpoint() {
    let demo = demo();
    let gw = TestGateway::launch_up(&demo.settings("")).await;
    let first = today();
    let mut rng = Rng::new(0xDA15_0004);
    let mut ledger = Ledger::default();
    let served = serve_home(&[&gw], 501, 620, &mut ledger).await;
    ledger
        .post_fresh(&[&gw], &events_for(&served, "plot", &mut rng, |s| !s.page.forced))
        .await;
    // The interleave experiment gets traffic too, so that its refusal is not for want of days.
    let mut pages = Vec::new();
    for user in 1..=30 {
        let page = timed_page(&gw, &user.to_string(), INTERLEAVE_PLACEMENT, INTERLEAVE).await;
        assert_eq!(page.page.arm, "interleaved", "{page:?}");
        pages.push(page);
    }
    let mut ignored = Ledger::default();
    ignored
        .post_fresh(&[&gw], &events_for(&pages, "feed", &mut rng, |_| false))
        .await;
    settled(&gw, &ledger).await;
    let last = today();
    let out = tempfile::tempdir().expect("tempdir");

    let svg_path = out.path().join("out.svg");
    let finished = report(plot_args(EXPERIMENT, &gw, &svg_path)).await;
    let stdout = finished.expect_success("recgw report --plot out.svg");
    assert!(
        stdout.starts_with("home-als-rank (running, ") && stdout.lines().any(|l| l.starts_with("treatment")),
        "the usual table: {stdout}"
    );
    let body = events::results(&gw, EXPERIMENT, BY_DAY).await;
    check_days(&body, first, last, &ledger);
    let svg = std::fs::read_to_string(&svg_path).expect("the plot was written");
    assert!(
        svg.contains("<svg") && svg.trim_end().ends_with("</svg>"),
        "an SVG document: {svg}"
    );
    let want = plotted(&body);
    assert_eq!(
        want[0]["days"].as_array().map(Vec::len),
        Some(days_of(&body).len()),
        "the treatment has a lift and an interval every day: {want}"
    );
    assert_eq!(description(&svg), want, "the plot shows what the endpoint said");

    let png = out.path().join("out.png");
    let finished = report(plot_args(EXPERIMENT, &gw, &png)).await;
    assert!(!finished.success(), "--plot out.png: {finished:?}");
    assert!(finished.stderr.contains(".svg"), "names .svg: {}", finished.stderr);
    assert!(!png.exists(), "no .png written");

    let interleaved = out.path().join("feed.svg");
    let finished = report(plot_args(INTERLEAVE, &gw, &interleaved)).await;
    assert!(!finished.success(), "an interleave experiment: {finished:?}");
    assert!(
        finished.stderr.contains("nothing to plot"),
        "says nothing to plot: {}",
        finished.stderr
    );
    assert!(!interleaved.exists(), "no plot written");
    gw.stop().await;
}

/// A sanity check of [`plotted`], the test's own reading of a `?by=day` body, on a body
/// written here: the control and a shadow arm are left out, and so is a day without a lift.
#[test]
fn plotted_keeps_compared_arms_and_defined_days() {
    let arm = |name: &str, lift: Option<f64>| {
        let mut a = json!({ "name": name, "users": 3, "impressions": 10, "clicks": 1, "undefined": {} });
        if let Some(lift) = lift {
            a["lift"] = json!(lift);
            a["sequential_lift_low"] = json!(lift - 1.0);
            a["sequential_lift_high"] = json!(lift + 1.0);
        }
        a
    };
    let body = json!({
        "arms": [
            { "name": "control", "control": true },
            { "name": "b", "control": false },
            { "name": "shadow", "control": false, "shadow": true },
        ],
        "days": [
            { "day": "2026-12-01", "arms": [arm("control", None), arm("b", None), arm("shadow", Some(0.5))] },
            { "day": "2026-12-02", "arms": [arm("control", None), arm("b", Some(0.25)), arm("shadow", Some(0.5))] },
        ],
    });
    let mut by_arm = BTreeMap::new();
    for series in plotted(&body).as_array().expect("array") {
        by_arm.insert(series["arm"].as_str().expect("arm").to_string(), series["days"].clone());
    }
    assert_eq!(
        by_arm,
        BTreeMap::from([(
            "b".to_string(),
            json!([{ "day": "2026-12-02", "lift": 0.25, "sequential_lift_low": -0.75, "sequential_lift_high": 1.25 }])
        )])
    );
}
