//! Users as the unit of analysis, end to end (DESIGN.md §5 `GET /experiments/{id}/results`,
//! STATISTICS.md §1–§4): real `recgw` gateways in this process on free loopback ports over a
//! copy of the demo (`home-als-rank`: control/treatment 50/50 on placement `home`), without
//! Redis, on one `redis-server` and on a 3-node Redis Cluster of their own.
//!
//! Every statistic of the results is now computed from per-arm sums over users
//! (`n, Σc, Σi, Σc², Σi², Σc·i`) that the gateway keeps incrementally, in memory or spread over
//! `results.shards` hash tags in Redis, while exposures reach them through an asynchronous
//! flush and events through synchronous claims. A lost, doubled or misattributed update moves
//! a sum silently, and every interval and p-value with it; so the only trustworthy check is
//! against the test's own ledger of each user's clicks and impressions per arm:
//!
//! 1. **The sums equal the ledger, exactly**, after heterogeneous traffic (users with no
//!    events, users with several pages and several impressions and clicks each), a replayed
//!    batch, replies delayed past the deadline (a proxy on one node, `DEBUG SLEEP` on every
//!    node of the cluster), an outage during which users were served, and a restart of the
//!    gateway; and the CTR, its interval, the lift, its intervals and both p-values equal the
//!    independent computation of `common/stats.rs` from the ledger's rows.
//! 2. **Two replicas** serving the same users count each user once.
//! 3. **100,000 distinct users** are counted exactly per arm, and the sample-ratio p-value is
//!    the chi-square of those exact counts against the weights.
//! 4. **A bounded buffer** that overflows says so: users are not exact, and no sample-ratio
//!    verdict is given.
//!
//! Each test runs in every mode it applies to (`without_redis`, `on_one_node`,
//! `on_a_cluster`); each polls the results, with a deadline, until they match what it expects
//! (exposures are flushed asynchronously), then asserts equality.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::events::{self as client_events, Claims, ClientEvent, Kind};
use common::gateway::{DemoCopy, SHARED_SECRET, TestGateway, eventually};
use common::page::{Page, experiment_pages, recommend};
use common::proxy::DelayProxy;
use common::redis::{Mode, RedisCluster, RedisServer};
use common::rng::{Rng, fnv};
use common::stats::{self, UserRow, close_value};
use futures::StreamExt;
use recgw::config::Settings;
use serde_json::{Value, json};

const EXPERIMENT: &str = "home-als-rank";
const CONTROL: &str = "control";
const TREATMENT: &str = "treatment";
/// The query of a page of `home`, which [`EXPERIMENT`] covers.
const HOME: &str = "placement=home";
/// How long a flush, a reconnection or a resend gets before a test fails.
const WAIT: Duration = Duration::from_secs(30);
/// The experiment's `sequential_tuning`: not set in `home-als-rank.toml`, so the default.
const DEFAULT_TUNING: f64 = 5000.0;
/// Events per `POST /events` (the most is 1000).
const BATCH: usize = 250;

// ---------------------------------------------------------------------------------------------
// Gateways and their Redis
// ---------------------------------------------------------------------------------------------

/// Settings of one gateway over `demo`, Redis at `redis_url` (empty: none), each Redis lookup
/// given `redis_timeout` (a batch — a flush, a claim — gets ten of them), and `env` on top
/// (for the settings only the environment sets, such as `RECGW__RESULTS__MAX_BUFFERED_USERS`).
fn settings(demo: &DemoCopy, redis_url: &str, redis_timeout: Duration, env: &[(&str, &str)]) -> Settings {
    let experiments = demo.experiments();
    let models = demo.models();
    let mut vars = vec![
        ("RECGW__SERVER__LISTEN", "127.0.0.1:0"),
        ("RECGW__EXPERIMENTS__DIR", experiments.to_str().expect("utf-8 path")),
        ("RECGW__MODELS__ROOT", models.to_str().expect("utf-8 path")),
        ("RECGW__MODELS__REFRESH_INTERVAL", "1s"),
        ("RECGW__MODELS__SNAPSHOT_MAX_BYTES", "0"),
    ];
    vars.extend_from_slice(env);
    let mut settings =
        Settings::load_from(None, vars.into_iter().map(|(k, v)| (k.to_string(), v.to_string()))).expect("settings");
    settings.cache.redis_url = redis_url.to_string();
    settings.cache.redis_timeout = redis_timeout;
    settings.tracking.secret = vec![SHARED_SECRET.to_string()];
    settings.server.shutdown_grace = Duration::from_secs(5);
    settings
}

/// The Redis of a test in one [`Mode`], with what it needs to inject faults: on one node, a
/// [`DelayProxy`] the gateways connect through.
struct Store {
    mode: Mode,
    node: Option<RedisServer>,
    proxy: Option<DelayProxy>,
    cluster: Option<RedisCluster>,
}

impl Store {
    /// Starts what `mode` needs: nothing, a node behind a proxy, or a 3-node cluster.
    async fn start(mode: Mode) -> Store {
        let mut store = Store {
            mode,
            node: None,
            proxy: None,
            cluster: None,
        };
        match mode {
            Mode::Memory => {}
            Mode::Node => {
                let node = tokio::task::block_in_place(RedisServer::start);
                let upstream: SocketAddr = format!("127.0.0.1:{}", node.port()).parse().expect("address");
                store.proxy = Some(DelayProxy::start(upstream).await);
                store.node = Some(node);
            }
            Mode::Cluster => store.cluster = Some(tokio::task::block_in_place(|| RedisCluster::start(3))),
        }
        store
    }

    /// What the gateways' `cache.redis_url` is: the proxy on one node, every node of a cluster,
    /// empty without Redis.
    fn url(&self) -> String {
        match self.mode {
            Mode::Memory => String::new(),
            Mode::Node => self.proxy.as_ref().expect("proxy").url(),
            Mode::Cluster => self.cluster.as_ref().expect("cluster").url(),
        }
    }

    /// Kills the node or every node of the cluster (their data is gone).
    fn stop(&mut self) {
        tokio::task::block_in_place(|| match self.mode {
            Mode::Memory => unreachable!("no Redis to stop"),
            Mode::Node => self.node.as_mut().expect("node").stop(),
            Mode::Cluster => self.cluster.as_mut().expect("cluster").stop(),
        });
    }

    /// Starts them again, empty (a cluster keeps its slots).
    fn restart(&mut self) {
        tokio::task::block_in_place(|| match self.mode {
            Mode::Memory => unreachable!("no Redis to restart"),
            Mode::Node => self.node.as_mut().expect("node").restart(),
            Mode::Cluster => self.cluster.as_mut().expect("cluster").restart(),
        });
    }

    /// Runs `during` while Redis answers every command after the gateways' batch deadline (1 s
    /// at a 100 ms lookup timeout): on one node the proxy holds each reply 1.6 s; on a cluster
    /// every node stalls in `DEBUG SLEEP 1.5` again and again (under the 2 s node timeout, so
    /// none is failed over). Commands still run in Redis; only their answers come too late.
    async fn slow<T>(&self, during: impl AsyncFnOnce() -> T) -> T {
        match self.mode {
            Mode::Memory => unreachable!("no Redis to slow down"),
            Mode::Node => {
                let proxy = self.proxy.as_ref().expect("proxy");
                proxy.set_delay(Duration::from_millis(1600));
                let out = during().await;
                proxy.set_delay(Duration::ZERO);
                out
            }
            Mode::Cluster => {
                let urls: Vec<String> = self
                    .cluster
                    .as_ref()
                    .expect("cluster")
                    .nodes()
                    .iter()
                    .map(RedisServer::url)
                    .collect();
                let until = Instant::now() + Duration::from_secs(6);
                let stalls: Vec<_> = urls
                    .into_iter()
                    .map(|url| {
                        std::thread::spawn(move || {
                            let client = redis::Client::open(url).expect("node url");
                            let mut connection = client.get_connection().expect("node connection");
                            while Instant::now() < until {
                                let _: redis::RedisResult<()> =
                                    redis::cmd("DEBUG").arg("SLEEP").arg("1.5").query(&mut connection);
                                std::thread::sleep(Duration::from_millis(50));
                            }
                        })
                    })
                    .collect();
                let out = during().await;
                tokio::task::block_in_place(|| {
                    for stall in stalls {
                        stall.join().expect("stalling thread");
                    }
                });
                out
            }
        }
    }
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
    id: Option<String>,
}

impl ClientEvent for Event {
    fn to_json(&self) -> Value {
        client_events::event(self.kind.name(), &self.page.token, &self.item, self.id.as_deref())
    }
}

/// The ledger: per arm, each counted user's `(clicks, impressions)` in the arm, and the
/// arm's responses; and every event the client got accepted, each credited once however often
/// it was accepted (a resend with the same `event_id`).
#[derive(Debug, Default)]
struct Ledger {
    users: BTreeMap<String, BTreeMap<String, UserRow>>,
    exposures: BTreeMap<String, u64>,
    claims: Claims,
}

impl Ledger {
    /// Records a response: a counted one is an exposure, and its user (0, 0) in its arm unless
    /// there already.
    fn served(&mut self, page: &Page) {
        if page.counted() {
            *self.exposures.entry(page.arm.clone()).or_default() += 1;
            self.users
                .entry(page.arm.clone())
                .or_default()
                .entry(page.user.clone())
                .or_insert((0, 0));
        }
    }

    /// Records an event the gateway answered accepted; only its first acceptance counts.
    fn accepted(&mut self, event: &Event) {
        let first = self
            .claims
            .accept(&event.page.token, event.kind, &event.item, event.id.as_deref());
        if first && event.page.counted() {
            let row = self
                .users
                .get_mut(&event.page.arm)
                .and_then(|users| users.get_mut(&event.page.user))
                .expect("an event of a page the ledger served");
            match event.kind {
                Kind::Click => row.0 += 1,
                Kind::Impression => row.1 += 1,
            }
        }
    }

    /// The rows of `arm`'s users.
    fn rows(&self, arm: &str) -> Vec<UserRow> {
        self.users
            .get(arm)
            .map(|u| u.values().copied().collect())
            .unwrap_or_default()
    }

    /// Per arm what the results must show, as [`Counts::of`] reads it from them.
    fn counts(&self) -> BTreeMap<String, Counts> {
        [CONTROL, TREATMENT]
            .into_iter()
            .map(|arm| {
                let rows = self.rows(arm);
                let sums = stats::sums(&rows);
                let counts = Counts {
                    users: sums[0],
                    exposures: self.exposures.get(arm).copied().unwrap_or(0),
                    impressions: sums[2],
                    clicks: sums[1],
                    clicking_users: rows.iter().filter(|r| r.0 > 0).count() as u64,
                    sums,
                };
                (arm.to_string(), counts)
            })
            .collect()
    }

    /// Users per arm, control first.
    fn users_per_arm(&self) -> [u64; 2] {
        [CONTROL, TREATMENT].map(|arm| self.users.get(arm).map_or(0, |u| u.len() as u64))
    }
}

/// The exact figures of one arm of the results.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Counts {
    users: u64,
    exposures: u64,
    impressions: u64,
    clicks: u64,
    clicking_users: u64,
    /// `per_user_sums`: `[users, clicks, impressions, clicks_squared, impressions_squared,
    /// clicks_times_impressions]`, the order of [`stats::sums`].
    sums: [u64; 6],
}

impl Counts {
    /// Reads them from an arm of the results (`u64::MAX` for a missing figure, which then
    /// matches nothing).
    fn of(arm: &Value) -> Counts {
        let n = |v: &Value| v.as_u64().unwrap_or(u64::MAX);
        let sums = &arm["per_user_sums"];
        Counts {
            users: n(&arm["users"]),
            exposures: n(&arm["exposures"]),
            impressions: n(&arm["impressions"]),
            clicks: n(&arm["clicks"]),
            clicking_users: n(&arm["clicking_users"]),
            sums: stats::PER_USER_SUMS.map(|field| n(&sums[field])),
        }
    }
}

/// Per arm the exact figures of a results body.
fn counts_of(body: &Value) -> BTreeMap<String, Counts> {
    body["arms"]
        .as_array()
        .unwrap_or_else(|| panic!("no arms: {body}"))
        .iter()
        .map(|arm| (arm["name"].as_str().expect("arm name").to_string(), Counts::of(arm)))
        .collect()
}

/// The arm `name` of a results body.
fn arm<'a>(body: &'a Value, name: &str) -> &'a Value {
    body["arms"]
        .as_array()
        .and_then(|arms| arms.iter().find(|a| a["name"] == name))
        .unwrap_or_else(|| panic!("no arm {name}: {body}"))
}

/// The sample-ratio p-value of `users` per arm against `weights`, computed here: Pearson's
/// chi-square with `k − 1` degrees of freedom (STATISTICS.md §4).
fn srm_p_value(users: &[u64], weights: &[f64]) -> f64 {
    use statrs::distribution::{ChiSquared, ContinuousCDF};
    let total = users.iter().sum::<u64>() as f64;
    let weight: f64 = weights.iter().sum();
    let statistic: f64 = users
        .iter()
        .zip(weights)
        .map(|(&n, &w)| {
            let expected = total * w / weight;
            (n as f64 - expected).powi(2) / expected
        })
        .sum();
    ChiSquared::new((users.len() - 1) as f64)
        .expect("degrees of freedom")
        .sf(statistic)
}

impl TestGateway {
    /// A page of the experiment for each of `users`, in order (`in_flight` requests at a
    /// time), each recorded in `ledger`.
    async fn pages(&self, users: &[String], in_flight: usize, ledger: &mut Ledger) -> Vec<Page> {
        let pages = experiment_pages(self, users, HOME, EXPERIMENT, in_flight).await;
        pages.iter().for_each(|p| ledger.served(p));
        pages
    }

    /// Posts `events`; every event answered accepted goes into `ledger`, and those refused
    /// because Redis did not answer are returned, to be sent again ([`TestGateway::resend`]).
    async fn post(&self, events: &[Event], ledger: &mut Ledger) -> Vec<Event> {
        client_events::post_keeping_refused(self, events, BATCH, |e| ledger.accepted(e)).await
    }

    /// Sends `refused` again until all are accepted (each then goes into `ledger`, credited
    /// once).
    async fn resend(&self, refused: Vec<Event>, ledger: &mut Ledger) {
        client_events::resend_until_accepted(self, refused, BATCH, WAIT, |e| ledger.accepted(e)).await;
    }

    /// Waits (at most `timeout`) until the exact figures of the results equal `want`, and
    /// returns that body.
    async fn settled(&self, want: &BTreeMap<String, Counts>, timeout: Duration) -> Value {
        eventually(timeout, "results equal the ledger", async || {
            let body = client_events::try_results(self, EXPERIMENT, "").await?;
            let got = counts_of(&body);
            if &got == want {
                Ok(body)
            } else {
                Err(format!("results {got:?}\nledger  {want:?}"))
            }
        })
        .await
    }
}

/// Asserts every statistic of a settled results `body` against the computation of
/// `common/stats.rs` from the ledger's rows, and the experiment-level fields of exact users.
fn assert_statistics(body: &Value, ledger: &Ledger, mode: Mode) {
    assert_eq!(body["unit"], "user", "{body}");
    assert_eq!(body["counts"], mode.counts(), "{body}");
    assert_eq!(body["users_exact"], true, "{body}");
    assert!(body.get("users_exact_reason").is_none(), "{body}");
    assert_eq!(body["sequential_tuning"], json!(DEFAULT_TUNING), "{body}");
    let srm = srm_p_value(&ledger.users_per_arm(), &[50.0, 50.0]);
    assert!(
        close_value(&body["srm_p_value"], srm),
        "srm_p_value {} (want {srm})",
        body["srm_p_value"]
    );
    let (control, treatment) = (ledger.rows(CONTROL), ledger.rows(TREATMENT));
    let mut want: Vec<(&str, &str, f64)> = Vec::new();
    for (name, rows) in [(CONTROL, &control), (TREATMENT, &treatment)] {
        let (ctr, _) = stats::ratio(rows);
        let (low, high) = stats::ctr_interval(rows);
        want.extend([(name, "ctr", ctr), (name, "ctr_low", low), (name, "ctr_high", high)]);
    }
    let (lift, lift_low, lift_high) = stats::lift(&treatment, &control);
    let (seq_low, seq_high, seq_p) = stats::sequential(&treatment, &control, DEFAULT_TUNING);
    want.extend([
        (TREATMENT, "lift", lift),
        (TREATMENT, "lift_low", lift_low),
        (TREATMENT, "lift_high", lift_high),
        (TREATMENT, "p_value", stats::p_value(&treatment, &control)),
        (TREATMENT, "sequential_lift_low", seq_low),
        (TREATMENT, "sequential_lift_high", seq_high),
        (TREATMENT, "sequential_p_value", seq_p),
    ]);
    let wrong: Vec<String> = want
        .iter()
        .filter(|(name, field, value)| !close_value(&arm(body, name)[*field], *value))
        .map(|(name, field, value)| format!("{name}.{field} = {} (want {value})", arm(body, name)[*field]))
        .collect();
    assert!(wrong.is_empty(), "{}\n{body}", wrong.join("\n"));
}

/// Asserts that the last day of `?by=day` holds the totals (the days are cumulative).
async fn assert_last_day(gw: &TestGateway, want: &BTreeMap<String, Counts>) {
    let body = client_events::try_results(gw, EXPERIMENT, "?by=day")
        .await
        .expect("results by day");
    let days = body["days"].as_array().unwrap_or_else(|| panic!("no days: {body}"));
    let last = days.last().unwrap_or_else(|| panic!("no day: {body}"));
    for (name, counts) in want {
        let day = arm(last, name);
        let got = [&day["users"], &day["impressions"], &day["clicks"]].map(|v| v.as_u64());
        let expected = [counts.users, counts.impressions, counts.clicks].map(Some);
        assert_eq!(got, expected, "{name} on {}: [users, impressions, clicks]", last["day"]);
    }
}

/// Heterogeneous events for `pages`, shuffled, ids `{phase}-{page}-{i|c}-{item}`: a user has
/// a click propensity of its own (0, 0.1, 0.3 or 0.6), one user in six sends no event at all,
/// and a page of the others gets impressions of its first 1..=len items with probability 3/4,
/// and clicks on those items at the user's propensity.
fn events_for(pages: &[Page], phase: &str, rng: &mut Rng) -> Vec<Event> {
    let mut events = Vec::new();
    for (serial, page) in pages.iter().enumerate() {
        let user = fnv(&page.user);
        if user.is_multiple_of(6) || !rng.chance(0.75) {
            continue;
        }
        let propensity = [0.0, 0.1, 0.3, 0.6][(user / 6 % 4) as usize];
        let shown = 1 + rng.below(page.items.len() as u64) as usize;
        for item in &page.items[..shown] {
            let mut push = |kind: Kind| {
                events.push(Event {
                    page: page.clone(),
                    kind,
                    item: item.clone(),
                    id: Some(format!("{phase}-{serial}-{}-{item}", kind.tag())),
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

/// `n` user ids from `first` on, each `copies` times: `copies(i)` pages for the `i`-th user
/// (served one after another, interleaved with the other users').
fn users(first: u64, n: u64, copies: impl Fn(u64) -> u64) -> Vec<String> {
    let copies = &copies;
    let max = (0..n).map(copies).max().unwrap_or(0);
    (0..max)
        .flat_map(|round| (0..n).filter(move |&i| copies(i) > round))
        .map(|i| (first + i).to_string())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. The per-user sums equal the ledger, through faults
// ---------------------------------------------------------------------------------------------

/// Outage (Redis modes), heterogeneous traffic with a replayed batch and an id-less duplicate,
/// late replies (Redis modes) and a gateway restart (Redis modes): every exact figure equals
/// the ledger, every statistic the computation from its rows.
async fn per_user_sums_equal_the_ledger(mode: Mode) {
    let mut store = Store::start(mode).await;
    let demo = DemoCopy::new();
    // A batch gets ten 100 ms lookups (1 s), which the delayed replies overrun.
    let settings = settings(&demo, &store.url(), Duration::from_millis(100), &[]);
    let mut gw = TestGateway::launch_up(&settings).await;
    let mut ledger = Ledger::default();
    let mut rng = Rng::new(0x75_7365_7273);

    if mode != Mode::Memory {
        // Redis away: users are served and held; their events are refused, retryably, and
        // nothing is answered accepted.
        store.stop();
        let pages = gw.pages(&users(1_000, 60, |i| 1 + i % 2), 4, &mut ledger).await;
        let events = events_for(&pages, "away", &mut rng);
        let refused = gw.post(&events, &mut ledger).await;
        assert_eq!(refused.len(), events.len(), "every event refused while Redis is away");
        let results = client_events::try_results(&gw, EXPERIMENT, "").await;
        assert!(results.as_ref().is_err_and(|e| e.starts_with("503")), "{results:?}");
        store.restart();
        gw.resend(refused, &mut ledger).await;
        gw.settled(&ledger.counts(), WAIT).await;
    }

    // Heterogeneous traffic: 240 users with one to three pages each.
    let pages = gw.pages(&users(2_000, 240, |i| 1 + i % 3), 8, &mut ledger).await;
    let events = events_for(&pages, "live", &mut rng);
    let refused = gw.post(&events, &mut ledger).await;
    gw.resend(refused, &mut ledger).await;
    // A batch sent again with the same ids (a client retry) is accepted and counts nothing.
    let replay = &events[..BATCH.min(events.len())];
    let refused = gw.post(replay, &mut ledger).await;
    gw.resend(refused, &mut ledger).await;
    // Without an id, the same event again is a duplicate.
    let (page, item) = pages
        .iter()
        .flat_map(|p| p.items.iter().map(move |item| (p, item)))
        .find(|(p, item)| p.counted() && !ledger.claims.contains(&p.token, Kind::Click, item))
        .expect("an item not clicked yet");
    let bare = Event {
        page: page.clone(),
        kind: Kind::Click,
        item: item.clone(),
        id: None,
    };
    let first = client_events::post_events(&gw, &[bare.to_json()]).await;
    assert_eq!(first, [None], "a click without an id");
    ledger.accepted(&bare);
    let again = client_events::post_events(&gw, &[bare.to_json()]).await;
    assert_eq!(again, [Some("duplicate_event_id".to_string())]);
    let body = gw.settled(&ledger.counts(), WAIT).await;
    assert_statistics(&body, &ledger, mode);

    if mode != Mode::Memory {
        // Replies late past every deadline: flushes and claims run in Redis, their answers are
        // lost; the events answered unavailable are sent again and count once.
        let mut next = 3_000;
        let refused = store
            .slow(async || {
                let mut refused = Vec::new();
                let started = Instant::now();
                while started.elapsed() < Duration::from_secs(6) {
                    let pages = gw.pages(&users(next, 5, |_| 1), 5, &mut ledger).await;
                    next += 5;
                    let events = events_for(&pages, &format!("slow{next}"), &mut rng);
                    refused.extend(gw.post(&events, &mut ledger).await);
                }
                refused
            })
            .await;
        let timeouts = gw
            .metric("redis_commands_total", &[("client", "events"), ("result", "timeout")])
            .await;
        assert_ne!(timeouts, 0.0, "claims timed out while Redis was slow");
        eprintln!(
            "{} events refused while Redis was slow; sending them again",
            refused.len()
        );
        gw.resend(refused, &mut ledger).await;
        gw.settled(&ledger.counts(), WAIT).await;

        // A restarted gateway counts no user again: the same users served again are
        // exposures, not users.
        gw.stop().await;
        gw = TestGateway::launch_up(&settings).await;
        let again: Vec<String> = (2_000..2_040).map(|u| u.to_string()).collect();
        let pages = gw.pages(&again, 8, &mut ledger).await;
        let events = events_for(&pages, "restart", &mut rng);
        let refused = gw.post(&events, &mut ledger).await;
        gw.resend(refused, &mut ledger).await;
    }

    let want = ledger.counts();
    let body = gw.settled(&want, WAIT).await;
    assert_statistics(&body, &ledger, mode);
    assert_last_day(&gw, &want).await;
    let users: u64 = want.values().map(|c| c.users).sum();
    let clickers: u64 = want.values().map(|c| c.clicking_users).sum();
    eprintln!("{mode:?}: {users} users, {clickers} clicking, {want:?}");
    gw.stop().await;
}

redis_modes! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    mod per_user_sums_equal_the_ledger {
        without_redis => Memory,
        on_one_node => Node,
        on_a_cluster => Cluster,
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Two replicas, the same users
// ---------------------------------------------------------------------------------------------

/// Two replicas on one Redis serve the same 200 users (and B 60 more), and take each other's
/// events: 260 users, 460 exposures, and the same results on both.
async fn two_replicas_count_each_user_once(mode: Mode) {
    let store = Store::start(mode).await;
    let demo = DemoCopy::new();
    let settings = settings(&demo, &store.url(), Duration::from_millis(500), &[]);
    let a = TestGateway::launch_up(&settings).await;
    let b = TestGateway::launch_up(&settings).await;
    let mut ledger = Ledger::default();
    let mut rng = Rng::new(2);
    // Users 0..200 served by both replicas, 200..260 by B only.
    let shared: Vec<String> = (0..200).map(|u| u.to_string()).collect();
    let on_a = a.pages(&shared, 8, &mut ledger).await;
    let mut on_b = b.pages(&shared, 8, &mut ledger).await;
    let only_b: Vec<String> = (200..260).map(|u| u.to_string()).collect();
    on_b.extend(b.pages(&only_b, 8, &mut ledger).await);
    for (page_a, page_b) in on_a.iter().zip(&on_b) {
        assert_eq!(page_a.arm, page_b.arm, "user {} in one arm on both", page_a.user);
    }
    // Each replica's pages get events through the other one.
    let events = events_for(&on_a, "a", &mut rng);
    let refused = b.post(&events, &mut ledger).await;
    b.resend(refused, &mut ledger).await;
    let events = events_for(&on_b, "b", &mut rng);
    let refused = a.post(&events, &mut ledger).await;
    a.resend(refused, &mut ledger).await;
    let want = ledger.counts();
    assert_eq!(want.values().map(|c| c.users).sum::<u64>(), 260);
    assert_eq!(want.values().map(|c| c.exposures).sum::<u64>(), 460);
    for gw in [&a, &b] {
        let body = gw.settled(&want, WAIT).await;
        assert_statistics(&body, &ledger, mode);
    }
    a.stop().await;
    b.stop().await;
}

redis_modes! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    mod two_replicas_count_each_user_once {
        on_one_node => Node,
        on_a_cluster => Cluster,
    }
}

// ---------------------------------------------------------------------------------------------
// 3. 100,000 distinct users, exactly
// ---------------------------------------------------------------------------------------------

/// Distinct users served in the large test.
const MANY: u64 = 100_000;
/// Requests in flight at once.
const IN_FLIGHT: usize = 32;

/// [`MANY`] distinct users, [`IN_FLIGHT`] requests at a time: users per arm equal those the
/// client was served from each arm, and `srm_p_value` is their chi-square against 50/50.
async fn a_hundred_thousand_users_are_counted_exactly(mode: Mode) {
    let store = Store::start(mode).await;
    let demo = DemoCopy::new();
    both_arms_serve_popular(&demo);
    let settings = settings(&demo, &store.url(), Duration::from_millis(500), &[]);
    let gw = TestGateway::launch_up(&settings).await;
    let started = Instant::now();
    let served: Vec<Page> = futures::stream::iter(0..MANY)
        .map(|u| gw.page_lean(u))
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let serving = started.elapsed();
    let mut per_arm: BTreeMap<String, u64> = BTreeMap::new();
    let mut distinct = BTreeSet::new();
    for page in &served {
        assert!(page.counted(), "{page:?}");
        assert!(distinct.insert(page.user.clone()), "{} served twice", page.user);
        *per_arm.entry(page.arm.clone()).or_default() += 1;
    }
    let users = [CONTROL, TREATMENT].map(|a| per_arm.get(a).copied().unwrap_or(0));
    assert_eq!(users.iter().sum::<u64>(), MANY);
    let body = eventually(WAIT, "users per arm equal those served", async || {
        let body = client_events::try_results(&gw, EXPERIMENT, "").await?;
        let got = [CONTROL, TREATMENT].map(|name| arm(&body, name)["users"].as_u64());
        if got == users.map(Some) {
            Ok(body)
        } else {
            Err(format!("users {got:?}, served {users:?}"))
        }
    })
    .await;
    let settling = started.elapsed() - serving;
    for (name, n) in [CONTROL, TREATMENT].iter().zip(users) {
        let arm = arm(&body, name);
        assert_eq!(arm["exposures"].as_u64(), Some(n), "{name}");
        assert_eq!(arm["per_user_sums"]["users"].as_u64(), Some(n), "{name}");
    }
    assert_eq!(body["users_exact"], true, "{body}");
    assert_eq!(body["counts"], mode.counts());
    let srm = srm_p_value(&users, &[50.0, 50.0]);
    assert!(
        close_value(&body["srm_p_value"], srm),
        "srm_p_value {} (want {srm}, users {users:?})",
        body["srm_p_value"]
    );
    eprintln!(
        "{mode:?}: {MANY} users served in {serving:.1?} ({:.0}/s, {IN_FLIGHT} in flight), counted {settling:.1?} later; \
         users {users:?}, srm_p_value {srm}",
        MANY as f64 / serving.as_secs_f64()
    );
    gw.stop().await;
}

/// Makes both arms of `home-als-rank` in `demo` serve the global `popular` list: the split,
/// the weights and the counting are the experiment's own, but a response costs no per-user
/// model read and no per-user cache entry (in a debug build that halves the CPU time of each
/// of the 100,000 requests, which are about users, not lists).
fn both_arms_serve_popular(demo: &DemoCopy) {
    let path = demo.experiments().join(format!("{EXPERIMENT}.toml"));
    let spec = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let spec = spec
        .replace("model = \"als-v1\"", "model = \"popular\"")
        .replace("model = \"als-v2\"", "model = \"popular\"");
    assert_eq!(spec.matches("model = \"popular\"").count(), 2, "{spec}");
    std::fs::write(&path, spec).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

impl TestGateway {
    /// The arm user `u` was served (a recommendation of one item on `home`, the cheapest
    /// answer), keeping nothing else the large test does not need (no body, items or token),
    /// so that 100,000 pages stay small.
    async fn page_lean(&self, u: u64) -> Page {
        let page = recommend(self, &u.to_string(), &format!("{HOME}&limit=1"))
            .await
            .expect_experiment(EXPERIMENT);
        Page {
            items: Vec::new(),
            token: String::new(),
            request_id: None,
            body: Value::Null,
            ..page
        }
    }
}

// On the cluster only, where one experiment's users are spread over every node's slots: the
// other modes count with the same code at the scale of test 1, and each 100,000-user run costs
// two to four minutes of CI's two cores in a debug build.
redis_modes! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    mod a_hundred_thousand_users_are_counted_exactly {
        on_a_cluster => Cluster,
    }
}

// ---------------------------------------------------------------------------------------------
// 4. A bounded buffer says users are not exact
// ---------------------------------------------------------------------------------------------

/// Without Redis and `results.max_buffered_users = 50`, 80 distinct users: 50 counted, 30
/// known uncounted, `users_exact: false` with a reason, and no SRM verdict, with a reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_makes_users_inexact_and_withholds_the_srm_verdict() {
    let demo = DemoCopy::new();
    let settings = settings(
        &demo,
        "",
        Duration::from_millis(500),
        &[("RECGW__RESULTS__MAX_BUFFERED_USERS", "50")],
    );
    let gw = TestGateway::launch_up(&settings).await;
    let mut ledger = Ledger::default();
    let users: Vec<String> = (0..80).map(|u| format!("bounded-{u}")).collect();
    gw.pages(&users, 4, &mut ledger).await;
    assert_eq!(ledger.users_per_arm().iter().sum::<u64>(), 80);
    // Every one of the 80 is either counted or known uncounted.
    eventually(WAIT, "80 users counted or known uncounted", async || {
        let body = client_events::try_results(&gw, EXPERIMENT, "").await?;
        let counted: u64 = counts_of(&body).values().map(|c| c.users).sum();
        let uncounted = gw.metric("results_users_uncounted_total", &[]).await;
        if counted as f64 + uncounted == 80.0 {
            Ok(())
        } else {
            Err(format!("{counted} counted, {uncounted} uncounted: {body}"))
        }
    })
    .await;
    let body = client_events::try_results(&gw, EXPERIMENT, "").await.expect("results");
    let counted: u64 = counts_of(&body).values().map(|c| c.users).sum();
    assert_eq!(counted, 50, "the bound's worth of users: {body}");
    assert_eq!(gw.metric("results_users_uncounted_total", &[]).await, 30.0);
    assert_eq!(body["users_exact"], false, "{body}");
    assert!(
        body["users_exact_reason"].as_str().is_some_and(|r| !r.is_empty()),
        "a reason: {body}"
    );
    assert!(body.get("srm_p_value").is_none(), "no SRM verdict: {body}");
    assert!(
        body["undefined"]["srm_p_value"].as_str().is_some_and(|r| !r.is_empty()),
        "the reason there is none: {body}"
    );
    assert_eq!(body["srm_detected"], false, "{body}");
    gw.stop().await;
}
