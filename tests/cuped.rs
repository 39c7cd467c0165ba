//! CUPED end to end (DESIGN.md §3 `covariates`, §5 results; STATISTICS.md §5): real `recgw`
//! gateways in this process on free loopback ports over a copy of the demo whose split
//! experiment `home-als-rank` (control/treatment 50/50 on placement `home`) names a covariate
//! table of each user's pre-period clicks and impressions, written with the crate's own
//! generator (`recgw::synthetic::write_covariates`, Spark's layout), without Redis, on one
//! `redis-server` and on a 3-node Redis Cluster of their own.
//!
//! The adjusted comparison is computed from sums the gateway keeps per arm beside the
//! per-user ones: sums of the arm's users' pre-period rows, and cross sums of their clicks and
//! impressions in the arm with those rows. A user's row is looked up once, when the user
//! enters the arm (by the collector of served users, or by the user's first counted event),
//! and frozen; every later event adds to the cross sums with the frozen row. A row looked up
//! in the wrong version, or twice, or not at all, or an event multiplied by another row, moves
//! a sum silently, and the adjusted lift, its intervals and the decision with it. So each test
//! keeps a ledger of what the client was served and got accepted, and of the row each user had
//! in the table version loaded when it entered, and holds the gateway to it:
//!
//! 1. **Every CUPED figure equals the ledger's computation.** A table with rows for most users
//!    (each user has an activity level and a click propensity, which drive both the pre-period
//!    row and the traffic, so the two correlate as real users' do), some users absent from it
//!    (they count as `(0, 0)` and not among `users_with_row`), and rows of users never served;
//!    heterogeneous traffic (several pages and events per user, some users none). Once the
//!    per-user and pre-period sums of every arm equal the ledger exactly, every figure of the
//!    treatment's `cuped` object (and of the last day's in `?by=day`) equals the independent
//!    two-pass computation of `common/stats.rs` from the ledger's per-user rows, the control's
//!    is all undefined, `variance_reduction` is positive, and `decision` is what the adjusted
//!    always-valid p-value and interval allow.
//! 2. **A new table version changes nothing already counted.** With `covariates = "pre/*"`,
//!    users counted under `pre/v1`; then `pre/v2` commits different rows for the same users
//!    (and rows for users `v1` lacked, one over the 65,535 cap); once `/ready` serves it, the
//!    old users get more pages and events and new users enter. The sums equal the ledger in
//!    which old users keep their `v1` rows (or none), and new users have their `v2` rows.
//!
//! Each test runs in every mode (`without_redis`, `on_one_node`, `on_a_cluster`); each polls
//! the results, with a deadline, until they match the ledger (served users reach the counts
//! through an asynchronous flush), then asserts equality.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::edits;
use common::events::{self as client_events, ArmLedger, ArmWant, Claims, ClientEvent, Kind, arm_named};
use common::gateway::{DemoCopy, TestGateway, eventually};
use common::page::{Page, experiment_pages};
use common::redis::{Mode, Redis};
use common::rng::{Rng, fnv};
use common::stats::{self, CupedRow, PRE_PERIOD_SUMS, close_value};
use recgw::synthetic::{CovariateRow, write_covariates};
use serde_json::Value;

const EXPERIMENT: &str = "home-als-rank";
const CONTROL: &str = "control";
const TREATMENT: &str = "treatment";
/// The arms, control first, as the results list them.
const ARMS: [&str; 2] = [CONTROL, TREATMENT];
/// The query of a page of `home`, which [`EXPERIMENT`] covers.
const HOME: &str = "placement=home";
/// How long a flush or a resend gets before a test fails.
const WAIT: Duration = Duration::from_secs(30);
/// The experiment's `sequential_tuning`: not set in `home-als-rank.toml`, so the default.
const DEFAULT_TUNING: f64 = 5000.0;
/// Events per `POST /events` (the most is 1000).
const BATCH: usize = 250;
/// Recommendation requests in flight at once.
const IN_FLIGHT: usize = 8;
/// Pre-period counts above this are taken as this (DESIGN.md: the table's counts are capped).
const PRE_PERIOD_CAP: u64 = 65_535;
/// The fields of the results' `cuped` object: [`stats::Cuped::fields`] and the users with a
/// row in both arms.
const CUPED_FIELDS: [&str; 9] = [
    "lift",
    "lift_low",
    "lift_high",
    "p_value",
    "sequential_lift_low",
    "sequential_lift_high",
    "sequential_p_value",
    "variance_reduction",
    "users_with_pre_period",
];

// ---------------------------------------------------------------------------------------------
// Users and their covariate table
// ---------------------------------------------------------------------------------------------

/// How a user behaves, the same before and during the experiment: how active (1 to 3: visits
/// and items looked at per page) and how likely to click an item seen.
#[derive(Debug, Clone, Copy)]
struct Profile {
    activity: u64,
    propensity: f64,
}

/// The profile of `user`, drawn from its id.
fn profile(user: &str) -> Profile {
    let mut rng = Rng::new(fnv(user));
    Profile {
        activity: 1 + rng.below(3),
        propensity: [0.02, 0.08, 0.2, 0.4][rng.below(4) as usize],
    }
}

/// A pre-period row of `user` drawn from its profile, `seed` telling tables apart: about
/// eight impressions per activity level, each clicked at the user's propensity.
fn pre_period(user: &str, seed: u64) -> (i64, i64) {
    let Profile { activity, propensity } = profile(user);
    let mut rng = Rng::new(fnv(user) ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let impressions = 8 * activity + rng.below(8);
    let clicks = (0..impressions).filter(|_| rng.chance(propensity)).count() as u64;
    (clicks as i64, impressions as i64)
}

/// A covariate table as the test writes it: `(clicks, impressions)` by user.
#[derive(Debug, Default, Clone)]
struct Table {
    rows: BTreeMap<String, (i64, i64)>,
}

impl Table {
    /// A table of [`pre_period`] rows of `users`, drawn with `seed`.
    fn drawn<'a>(users: impl IntoIterator<Item = &'a String>, seed: u64) -> Table {
        Table {
            rows: users.into_iter().map(|u| (u.clone(), pre_period(u, seed))).collect(),
        }
    }

    /// The row the gateway must freeze for `user` while this table is loaded: its counts,
    /// capped at [`PRE_PERIOD_CAP`]; `None` when the table has no row for the user.
    fn row(&self, user: &str) -> Option<(u64, u64)> {
        let cap = |n: i64| u64::try_from(n).expect("counts are not negative").min(PRE_PERIOD_CAP);
        self.rows.get(user).map(|&(c, i)| (cap(c), cap(i)))
    }

    /// Rows (users) in the table, as `/ready` counts them.
    fn len(&self) -> usize {
        self.rows.len()
    }

    /// Writes the table into `dir` as a committed Spark output of three part files, rows in
    /// a shuffled order (Spark's output is in no particular order).
    fn write(&self, dir: &Path, seed: u64) {
        let mut rows: Vec<CovariateRow> = self
            .rows
            .iter()
            .map(|(user, &(clicks, impressions))| CovariateRow {
                user: user.clone(),
                clicks,
                impressions,
            })
            .collect();
        Rng::new(seed).shuffle(&mut rows);
        write_covariates(dir, &rows, 3, seed).unwrap_or_else(|e| panic!("write {}: {e}", dir.display()));
    }
}

/// User ids `first..first + n`, all in the demo models (users 0..2000), so each is served its
/// arm's own list.
fn user_ids(first: u64, n: u64) -> Vec<String> {
    (first..first + n).map(|u| u.to_string()).collect()
}

/// The visits of `users`: each user's activity level of pages, interleaved round by round with
/// the other users'.
fn visits(users: &[String]) -> Vec<String> {
    (1..=3)
        .flat_map(|round| users.iter().filter(move |u| profile(u).activity >= round))
        .cloned()
        .collect()
}

// ---------------------------------------------------------------------------------------------
// What the client was served and got accepted
// ---------------------------------------------------------------------------------------------

/// One event on a page, as the client sends it (and sends it again).
#[derive(Debug, Clone)]
struct Event {
    page: Page,
    kind: Kind,
    item: String,
    id: String,
}

impl ClientEvent for Event {
    fn to_json(&self) -> Value {
        client_events::event(self.kind.name(), &self.page.token, &self.item, Some(&self.id))
    }
}

/// The ledger: per arm, what was served and each user's `(clicks, impressions)` in it; each
/// counted user's pre-period row, frozen when the user entered its arm (`None`: no row); and
/// every event the client got accepted, credited once however often it was accepted.
#[derive(Debug, Default)]
struct Ledger {
    arms: BTreeMap<String, ArmLedger>,
    pre: BTreeMap<String, Option<(u64, u64)>>,
    claims: Claims,
}

impl Ledger {
    /// Records a response while `table` is the version loaded: a counted one is an exposure,
    /// and a user new to the ledger enters its arm with the row `table` has for it, frozen.
    fn served(&mut self, page: &Page, table: &Table) {
        if page.counted() {
            self.arms.entry(page.arm.clone()).or_default().served(&page.user);
            self.pre
                .entry(page.user.clone())
                .or_insert_with(|| table.row(&page.user));
        }
    }

    /// Records an event the gateway answered accepted; only its first acceptance counts.
    fn accepted(&mut self, event: &Event) {
        let first = self
            .claims
            .accept(&event.page.token, event.kind, &event.item, Some(&event.id));
        if first && event.page.counted() {
            self.arms
                .get_mut(&event.page.arm)
                .expect("an event of a page the ledger served")
                .event(&event.page.user, event.kind);
        }
    }

    /// The users of `arm` with their counts and frozen rows.
    fn users(&self, arm: &str) -> impl Iterator<Item = (&String, (u64, u64), Option<(u64, u64)>)> {
        self.arms
            .get(arm)
            .into_iter()
            .flat_map(|ledger| ledger.users.iter())
            .map(|(user, &counts)| (user, counts, self.pre[user]))
    }

    /// The rows `(c, i, c', i')` of `arm`'s users, for `common::stats`.
    fn rows(&self, arm: &str) -> Vec<CupedRow> {
        self.users(arm)
            .map(|(_, (c, i), pre)| {
                let (pc, pi) = pre.unwrap_or((0, 0));
                (c, i, pc, pi)
            })
            .collect()
    }

    /// Users of `arm` with a row in the table version they entered under.
    fn users_with_row(&self, arm: &str) -> u64 {
        self.users(arm).filter(|(_, _, pre)| pre.is_some()).count() as u64
    }

    /// What the results must show of every arm's counts and per-user sums.
    fn wants(&self) -> Vec<ArmWant<'static>> {
        ARMS.map(|arm| self.arms.get(arm).cloned().unwrap_or_default().want(arm, true))
            .to_vec()
    }

    /// What `arm`'s `pre_period_sums` must be, in the order of [`PRE_PERIOD_SUMS`].
    fn pre_period_sums(&self, arm: &str) -> [u64; 10] {
        stats::pre_period_sums(&self.rows(arm), self.users_with_row(arm))
    }
}

/// Where the `pre_period_sums` of a results `body` differ from the ledger's.
fn pre_period_diffs(body: &Value, ledger: &Ledger) -> Vec<String> {
    let mut diffs = Vec::new();
    for name in ARMS {
        let got = &arm_named(body, name)["pre_period_sums"];
        for (field, want) in PRE_PERIOD_SUMS.into_iter().zip(ledger.pre_period_sums(name)) {
            if got[field].as_u64() != Some(want) {
                diffs.push(format!("{name}.pre_period_sums.{field} = {} (want {want})", got[field]));
            }
        }
    }
    diffs
}

/// Heterogeneous events for `pages`, shuffled, ids `{phase}-{page}-{i|c}-{item}`: one user in
/// seven sends none at all; the others look at the first `2·activity` to `2·activity + 2`
/// items of each page (an impression each) and click each at their propensity, 1.3 times it
/// in the treatment (a lift to find).
fn events_for(pages: &[Page], phase: &str, rng: &mut Rng) -> Vec<Event> {
    let mut events = Vec::new();
    for (serial, page) in pages.iter().enumerate() {
        if fnv(&page.user).is_multiple_of(7) {
            continue;
        }
        let Profile { activity, propensity } = profile(&page.user);
        let propensity = if page.arm == TREATMENT {
            propensity * 1.3
        } else {
            propensity
        };
        let shown = ((2 * activity + rng.below(3)) as usize).min(page.items.len());
        for item in &page.items[..shown] {
            let mut push = |kind: Kind| {
                events.push(Event {
                    page: page.clone(),
                    kind,
                    item: item.clone(),
                    id: format!("{phase}-{serial}-{}-{item}", kind.tag()),
                })
            };
            push(Kind::Impression);
            if rng.chance(propensity) {
                push(Kind::Click);
            }
        }
    }
    rng.shuffle(&mut events);
    events
}

// ---------------------------------------------------------------------------------------------
// The gateway, as this file speaks to it
// ---------------------------------------------------------------------------------------------

impl TestGateway {
    /// Waits until `/ready` lists the covariate table at `location` with a version of the
    /// folder `leaf` and `rows` users.
    async fn wait_table(&self, location: &str, leaf: &str, rows: usize) {
        let prefix = format!("{leaf}@");
        let what = format!("{location} serving {prefix}… with {rows} users");
        self.wait_model(location, &what, |m| {
            m["shape"] == "covariates"
                && m["version"].as_str().is_some_and(|v| v.starts_with(&prefix))
                && m["users"].as_u64() == Some(rows as u64)
        })
        .await;
    }

    /// A page of the experiment for each of `users`, in order ([`IN_FLIGHT`] requests at a
    /// time), each recorded in `ledger` with `table` the version loaded.
    async fn pages(&self, users: &[String], ledger: &mut Ledger, table: &Table) -> Vec<Page> {
        let pages = experiment_pages(self, users, HOME, EXPERIMENT, IN_FLIGHT).await;
        pages.iter().for_each(|p| ledger.served(p, table));
        pages
    }

    /// Posts `events` and sends those refused because Redis did not answer again until all
    /// are accepted (each then goes into `ledger`, credited once).
    async fn post_all(&self, events: &[Event], ledger: &mut Ledger) {
        let refused = client_events::post_keeping_refused(self, events, BATCH, |e| ledger.accepted(e)).await;
        client_events::resend_until_accepted(self, refused, BATCH, WAIT, |e| ledger.accepted(e)).await;
    }

    /// Waits (at most [`WAIT`]) until every arm's counts, per-user sums and pre-period sums
    /// equal the ledger, and returns that body.
    async fn settled(&self, ledger: &Ledger) -> Value {
        let wants = ledger.wants();
        eventually(WAIT, "results equal the ledger", async || {
            let body = client_events::try_results(self, EXPERIMENT, "").await?;
            client_events::arms_match(&body, "", &wants)?;
            let diffs = pre_period_diffs(&body, ledger);
            if diffs.is_empty() {
                Ok(body)
            } else {
                Err(diffs.join("; "))
            }
        })
        .await
    }
}

// ---------------------------------------------------------------------------------------------
// The adjusted comparison
// ---------------------------------------------------------------------------------------------

/// Asserts the `cuped` objects of the arms `arms` of a results body (or of one of its days,
/// `what` saying which): the control's undefined with a reason per field, the treatment's
/// each figure equal to `want` and `users_with_pre_period` to the users with a row in both
/// arms, nothing undefined.
fn assert_cuped_arms(arms: &Value, what: &str, want: &stats::Cuped, users_with_pre_period: u64) {
    let control = &arm_named(arms, CONTROL)["cuped"];
    for field in CUPED_FIELDS {
        assert!(
            control.get(field).is_none(),
            "{what}: the control has no {field}: {control}"
        );
        assert!(
            control["undefined"][field].as_str().is_some_and(|r| !r.is_empty()),
            "{what}: the control says why it has no {field}: {control}"
        );
    }
    let got = &arm_named(arms, TREATMENT)["cuped"];
    let mut wrong: Vec<String> = want
        .fields()
        .into_iter()
        .filter(|(field, value)| !close_value(&got[field], *value))
        .map(|(field, value)| format!("{what}: treatment.cuped.{field} = {} (want {value})", got[field]))
        .collect();
    if got["users_with_pre_period"].as_u64() != Some(users_with_pre_period) {
        wrong.push(format!(
            "{what}: treatment.cuped.users_with_pre_period = {} (want {users_with_pre_period})",
            got["users_with_pre_period"]
        ));
    }
    assert!(wrong.is_empty(), "{}\n{got}", wrong.join("\n"));
    assert_eq!(
        got["undefined"],
        serde_json::json!({}),
        "{what}: nothing undefined: {got}"
    );
}

/// Asserts every CUPED figure of a settled results `body` against the computation of
/// `common/stats.rs` from the ledger's rows, and the decision against the adjusted
/// always-valid figures; returns the computation.
fn assert_cuped(body: &Value, ledger: &Ledger) -> stats::Cuped {
    let want = stats::cuped(&ledger.rows(TREATMENT), &ledger.rows(CONTROL), DEFAULT_TUNING);
    let with_row = ARMS.iter().map(|arm| ledger.users_with_row(arm)).sum();
    assert_eq!(body["sequential_tuning"], serde_json::json!(DEFAULT_TUNING), "{body}");
    assert_cuped_arms(body, "results", &want, with_row);
    assert!(
        body["act_on"].as_str().is_some_and(|a| a.contains("CUPED")),
        "act_on says decisions read the adjusted figures: {}",
        body["act_on"]
    );
    // One comparison, so no Holm adjustment: the decision reads the adjusted always-valid
    // p-value and interval as they are.
    assert_eq!(body["srm_detected"], false, "{body}");
    let cuped = &arm_named(body, TREATMENT)["cuped"];
    let p = cuped["sequential_p_value"].as_f64().expect("sequential_p_value");
    let low = cuped["sequential_lift_low"].as_f64().expect("sequential_lift_low");
    let decision = if p >= stats::ALPHA {
        "inconclusive"
    } else if low > 0.0 {
        "better"
    } else {
        "worse"
    };
    assert_eq!(
        arm_named(body, TREATMENT)["decision"],
        decision,
        "decision at cuped.sequential_p_value {p}, cuped.sequential_lift_low {low}"
    );
    want
}

/// Asserts that the last day of `?by=day` (days are cumulative, so it holds the totals) has
/// the same `cuped` figures as `want`.
async fn assert_last_day(gw: &TestGateway, ledger: &Ledger, want: &stats::Cuped) {
    let body = client_events::try_results(gw, EXPERIMENT, "?by=day")
        .await
        .expect("results by day");
    let days = body["days"].as_array().unwrap_or_else(|| panic!("no days: {body}"));
    let last = days.last().unwrap_or_else(|| panic!("no day: {body}"));
    let with_row = ARMS.iter().map(|arm| ledger.users_with_row(arm)).sum();
    assert_cuped_arms(last, &format!("day {}", last["day"]), want, with_row);
}

// ---------------------------------------------------------------------------------------------
// 1. Every CUPED figure equals the ledger's computation
// ---------------------------------------------------------------------------------------------

/// 300 users, one in eight absent from the table (and 60 rows of users never served); their
/// pages and heterogeneous events. Once the sums equal the ledger, every `cuped` figure equals
/// the computation from the ledger's rows, on the results and their last day.
async fn every_cuped_figure_equals_the_ledger(mode: Mode) {
    let started = Instant::now();
    let redis = Redis::start_in_place(mode);
    let demo = DemoCopy::new();
    edits::with_lines(
        &demo.experiments(),
        &format!("{EXPERIMENT}.toml"),
        "covariates = \"pre-period\"",
    );
    let users = user_ids(0, 300);
    let never_served = user_ids(1_500, 60);
    let table = Table::drawn(
        users.iter().filter(|u| !fnv(u).is_multiple_of(8)).chain(&never_served),
        1,
    );
    table.write(&demo.models().join("pre-period"), 1);
    let gw = TestGateway::launch_up(&demo.settings(&redis.url())).await;
    gw.wait_table("pre-period", "pre-period", table.len()).await;

    let mut ledger = Ledger::default();
    let mut rng = Rng::new(0x63_7570_6564);
    let pages = gw.pages(&visits(&users), &mut ledger, &table).await;
    let events = events_for(&pages, "live", &mut rng);
    gw.post_all(&events, &mut ledger).await;
    let body = gw.settled(&ledger).await;

    // The traffic holds what the test is about, in both arms: users without a row, among them
    // some with events, and users with a row but no events.
    for arm in ARMS {
        let without_row: Vec<_> = ledger.users(arm).filter(|(_, _, pre)| pre.is_none()).collect();
        assert!(
            without_row.iter().any(|(_, (_, i), _)| *i > 0),
            "{arm}: users without a row, some with impressions: {without_row:?}"
        );
        assert!(
            ledger.users(arm).any(|(_, (_, i), pre)| i == 0 && pre.is_some()),
            "{arm}: users with a row and no events"
        );
    }
    let want = assert_cuped(&body, &ledger);
    assert!(
        want.variance_reduction > 0.0,
        "the pre-period predicts the users' behaviour, so it explains some variance: {want:?}"
    );
    assert_last_day(&gw, &ledger, &want).await;
    eprintln!(
        "{mode:?}: users with a row {:?} of {:?}, {want:?}, in {:.1?}",
        ARMS.map(|arm| ledger.users_with_row(arm)),
        ARMS.map(|arm| ledger.users(arm).count()),
        started.elapsed()
    );
    gw.stop().await;
    drop(redis);
}

redis_modes! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    mod every_cuped_figure_equals_the_ledger {
        without_redis => Memory,
        on_one_node => Node,
        on_a_cluster => Cluster,
    }
}

// ---------------------------------------------------------------------------------------------
// 2. A new table version changes nothing already counted
// ---------------------------------------------------------------------------------------------

/// 120 users counted under `pre/v1` (one in eight without a row there); `pre/v2` gives all of
/// them other rows and rows to 120 new users (but one in eight, and one row over the cap);
/// once `/ready` serves `v2`, the old users are served again with more events and the new
/// users enter. The old users keep their `v1` rows, or none; the new ones have `v2`'s.
async fn a_new_table_version_changes_nothing_already_counted(mode: Mode) {
    let started = Instant::now();
    let redis = Redis::start_in_place(mode);
    let demo = DemoCopy::new();
    edits::with_lines(
        &demo.experiments(),
        &format!("{EXPERIMENT}.toml"),
        "covariates = \"pre/*\"",
    );
    let old = user_ids(0, 120);
    let new = user_ids(120, 120);
    let v1 = Table::drawn(old.iter().filter(|u| !fnv(u).is_multiple_of(8)), 1);
    v1.write(&demo.models().join("pre").join("v1"), 1);
    let gw = TestGateway::launch_up(&demo.settings(&redis.url())).await;
    gw.wait_table("pre/*", "v1", v1.len()).await;

    let mut ledger = Ledger::default();
    let mut rng = Rng::new(0x7632);
    let pages = gw.pages(&visits(&old), &mut ledger, &v1).await;
    let events = events_for(&pages, "v1", &mut rng);
    gw.post_all(&events, &mut ledger).await;
    gw.settled(&ledger).await;

    // Other rows for every old user, those v1 lacked too; rows for the new users but one in
    // eight; one row over the cap.
    let mut v2 = Table::drawn(new.iter().filter(|u| !fnv(u).is_multiple_of(8)), 2);
    for user in &old {
        let (clicks, impressions) = pre_period(user, 1);
        v2.rows.insert(user.clone(), (clicks + 1, impressions + 5));
    }
    let heavy = new
        .iter()
        .find(|u| !fnv(u).is_multiple_of(7) && !fnv(u).is_multiple_of(8))
        .expect("a new user with a row and events");
    v2.rows.insert(heavy.clone(), (70_000, 100_000));
    for user in &old {
        assert_ne!(
            v1.row(user),
            v2.row(user),
            "user {user}: v2 changes every old user's row"
        );
    }
    v2.write(&demo.models().join("pre").join("v2"), 2);
    gw.wait_table("pre/*", "v2", v2.len()).await;

    // Old users again (exposures, not users: their rows stay v1's), new users entering.
    let again: Vec<String> = old.iter().chain(&visits(&new)).cloned().collect();
    let pages = gw.pages(&again, &mut ledger, &v2).await;
    let events = events_for(&pages, "v2", &mut rng);
    gw.post_all(&events, &mut ledger).await;
    let body = gw.settled(&ledger).await;

    for user in &old {
        assert_eq!(ledger.pre[user], v1.row(user), "user {user} keeps its v1 row");
    }
    for user in &new {
        assert_eq!(ledger.pre[user], v2.row(user), "user {user} has its v2 row");
    }
    assert_eq!(
        ledger.pre[heavy],
        Some((PRE_PERIOD_CAP, PRE_PERIOD_CAP)),
        "{heavy}: capped"
    );
    let want = assert_cuped(&body, &ledger);
    eprintln!(
        "{mode:?}: users with a row {:?} of {:?}, {want:?}, in {:.1?}",
        ARMS.map(|arm| ledger.users_with_row(arm)),
        ARMS.map(|arm| ledger.users(arm).count()),
        started.elapsed()
    );
    gw.stop().await;
    drop(redis);
}

redis_modes! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    mod a_new_table_version_changes_nothing_already_counted {
        without_redis => Memory,
        on_one_node => Node,
        on_a_cluster => Cluster,
    }
}
