//! Counts analysts can trust, against real Redis: one node and a 3-node Redis Cluster.
//!
//! 1. Event claims on a cluster: the same 40 impressions sent to replica A and again to replica
//!    B count 40, and the cache's lookups keep working beside them.
//! 2. One tracking token cannot forge clicks: items not on its page count nothing, and its
//!    first item counts one click whatever event ids come with it.
//! 3. Replies delayed past every deadline (a TCP proxy between gateway and Redis; `DEBUG SLEEP`
//!    on the cluster node of the experiment's slot): a flush or claim that ran but whose answer
//!    was lost is not applied twice, so after a graceful stop the exposures, impressions and
//!    clicks in Redis equal what the clients were served and got accepted, exactly.
//! 4. A long outage: exposures wait in constant memory (nothing is dropped), events are refused
//!    with a retryable 503 instead of being answered accepted and lost, and both land exactly
//!    once when Redis is back.
//! 5. Counts and claims on a Redis of their own (`results.redis_url`), apart from the cache.
//! 6. A global list (`popular`) is not cached once per user.
//!
//! Every test keeps its own record of what the gateways served and accepted and compares the
//! results endpoint (and Redis itself) with it to the unit.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::events;
use common::gateway;
use common::gateway::{DemoCopy, TestGateway, assert_error, eventually};
use common::page::{Page, experiment_pages, recommend};
use common::proxy::DelayProxy;
use common::redis::{RedisCluster, RedisServer};
use recgw::config::Settings;
use serde_json::{Value, json};

const EXPERIMENT: &str = "home-als-rank";
/// Every replica shares it, so tokens of one verify on the others.
const SECRET: &str = "counts-tests-shared-secret-of-32-bytes";
/// The results path.
const RESULTS: &str = "/experiments/home-als-rank/results";
/// The query of a page of `home`, which [`EXPERIMENT`] covers.
const HOME: &str = "placement=home";
/// How long a flush or a reconnection gets before a test fails.
const WAIT: Duration = Duration::from_secs(20);

/// Settings of one replica over the demo copy, the cache on `cache_url` and the counts on
/// `results_url` (empty: the cache's).
fn settings(demo: &DemoCopy, cache_url: &str, results_url: &str) -> Settings {
    let mut settings = gateway::settings(&demo.experiments(), &demo.models(), "1s");
    settings.cache.redis_url = cache_url.to_string();
    settings.results.redis_url = results_url.to_string();
    settings.cache.redis_timeout = Duration::from_millis(200);
    settings.tracking.secret = vec![SECRET.to_string()];
    settings.server.shutdown_grace = Duration::from_secs(5);
    settings
}

/// What the results must show: per arm exposures, impressions and clicks, and the events the
/// clients got accepted (each counted once, however often it was sent).
#[derive(Debug, Default)]
struct Ledger {
    arms: BTreeMap<String, [u64; 3]>,
    accepted: BTreeSet<(String, String, String)>,
}

impl Ledger {
    fn served(&mut self, page: &Page) {
        if page.counted() {
            self.arms.entry(page.arm.clone()).or_default()[0] += 1;
        }
    }

    /// Records an accepted event; a second acceptance of the same one (a retry) adds nothing.
    fn accepted(&mut self, page: &Page, kind: &str, item: &str) {
        let new = self
            .accepted
            .insert((page.token.clone(), kind.to_string(), item.to_string()));
        if new && page.counted() {
            let arm = self.arms.entry(page.arm.clone()).or_default();
            arm[if kind == "click" { 2 } else { 1 }] += 1;
        }
    }
}

impl TestGateway {
    /// `POST /events` ([`events::try_post_events`]), whatever the answer: the status and per
    /// event the reason (`None`: accepted), or for a whole batch refused (an error answer) its
    /// error code for every event, so that a test of outages treats both alike.
    async fn event_outcomes(&self, events: &[Value]) -> (u16, Vec<Option<String>>) {
        match events::try_post_events(self, events).await {
            Ok(outcomes) => (202, outcomes),
            Err(reply) => {
                assert_error(&reply, reply.status, None, "POST /events");
                let error = reply.json()["error"].as_str().map(String::from);
                (reply.status, vec![error; events.len()])
            }
        }
    }

    /// Per arm `[exposures, impressions, clicks]` from the results endpoint.
    async fn counts(&self) -> Result<BTreeMap<String, [u64; 3]>, String> {
        let body = events::try_results(self, EXPERIMENT, "").await?;
        Ok(body["arms"]
            .as_array()
            .ok_or_else(|| format!("no arms: {body}"))?
            .iter()
            .filter(|arm| arm["exposures"].as_u64() != Some(0) || arm["impressions"].as_u64() != Some(0))
            .map(|arm| {
                let n = |k: &str| arm[k].as_u64().unwrap_or(u64::MAX);
                (
                    arm["name"].as_str().unwrap_or("?").to_string(),
                    [n("exposures"), n("impressions"), n("clicks")],
                )
            })
            .collect())
    }

    /// Waits until the results equal `ledger` exactly.
    async fn settled(&self, ledger: &Ledger) {
        eventually(WAIT, "results equal what was served and accepted", async || {
            let counts = self.counts().await?;
            if counts == ledger.arms {
                Ok(())
            } else {
                Err(format!("results {counts:?}, ledger {:?}", ledger.arms))
            }
        })
        .await;
    }
}

fn impression(page: &Page, item: &str, id: Option<String>) -> Value {
    json!({ "type": "impression", "tracking_token": page.token, "item_id": item, "event_id": id })
}

fn click(page: &Page, item: &str, id: Option<String>) -> Value {
    json!({ "type": "click", "tracking_token": page.token, "item_id": item, "event_id": id })
}

/// Runs the test `$name(topology)` twice: `$name::on_one_node` and `$name::on_a_cluster`.
macro_rules! on_one_node_and_a_cluster {
    ($name:ident) => {
        mod $name {
            use super::Topology;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_one_node() {
                super::$name(Topology::node()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_a_cluster() {
                super::$name(Topology::cluster()).await;
            }
        }
    };
}

/// The Redis topologies every test runs on.
enum Topology {
    Node(RedisServer),
    Cluster(RedisCluster),
}

impl Topology {
    fn node() -> Topology {
        Topology::Node(RedisServer::start())
    }

    fn cluster() -> Topology {
        Topology::Cluster(RedisCluster::start(3))
    }

    fn url(&self) -> String {
        match self {
            Topology::Node(node) => node.url(),
            Topology::Cluster(cluster) => cluster.url(),
        }
    }

    fn keys(&self, pattern: &str) -> Vec<String> {
        match self {
            Topology::Node(node) => node.keys(pattern),
            Topology::Cluster(cluster) => cluster.keys(pattern),
        }
    }

    /// Runs a command about `key` on the node holding it.
    fn query_key<T: redis::FromRedisValue>(&self, args: &[&str], key: &str) -> T {
        match self {
            Topology::Node(node) => node.query(args),
            Topology::Cluster(cluster) => cluster.query_key(args, key),
        }
    }

    /// Kills the node, or every node of the cluster.
    fn stop(&mut self) {
        match self {
            Topology::Node(node) => node.stop(),
            Topology::Cluster(cluster) => cluster.stop(),
        }
    }

    /// Starts it again, empty (a cluster keeps its slots).
    fn restart(&mut self) {
        match self {
            Topology::Node(node) => node.restart(),
            Topology::Cluster(cluster) => cluster.restart(),
        }
    }

    /// `[exposures, impressions, clicks]` of an arm, straight from Redis: exposures under the
    /// experiment's tag, impressions and clicks added over its 16 shards' tags (`{e:k}`).
    fn arm_counts(&self, arm: &str) -> [u64; 3] {
        let field = |tag: String, name: &str| -> u64 {
            let key = format!("recgw:results:{{{tag}}}:{arm}");
            let args = ["HGET", key.as_str(), name];
            let value: Option<u64> = self.query_key(&args, &key);
            value.unwrap_or(0)
        };
        let shards = |name: &str| (0..16).map(|k| field(format!("{EXPERIMENT}:{k}"), name)).sum();
        [
            field(EXPERIMENT.to_string(), "exposures"),
            shards("impressions"),
            shards("clicks"),
        ]
    }
}

// ---------------------------------------------------------------------------------------------
// 1. The same events through two replicas
// ---------------------------------------------------------------------------------------------

async fn events_sent_to_two_replicas_count_once(topology: Topology) {
    let demo = DemoCopy::new();
    let url = topology.url();
    let a = TestGateway::launch_up(&settings(&demo, &url, "")).await;
    let b = TestGateway::launch_up(&settings(&demo, &url, "")).await;
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let mut ledger = Ledger::default();
    let users: Vec<String> = (100..104).map(|u| u.to_string()).collect();
    let pages = experiment_pages(&a, &users, HOME, EXPERIMENT, 1).await;
    pages.iter().for_each(|p| ledger.served(p));
    // 40 impressions, 10 of each page, each with its id.
    let events: Vec<Value> = pages
        .iter()
        .flat_map(|p| {
            p.items
                .iter()
                .take(10)
                .map(move |item| impression(p, item, Some(format!("imp-{}-{item}", p.user))))
        })
        .collect();
    assert_eq!(events.len(), 40);
    for gw in [&a, &b] {
        let (status, outcome) = gw.event_outcomes(&events).await;
        assert_eq!(status, 202);
        assert!(
            outcome.iter().all(Option::is_none),
            "accepted (the second time as a retry): {outcome:?}"
        );
    }
    for p in &pages {
        for item in p.items.iter().take(10) {
            ledger.accepted(p, "impression", item);
        }
    }
    // Without ids, the same events again are duplicates on either replica.
    let bare: Vec<Value> = pages.iter().map(|p| impression(p, &p.items[0], None)).collect();
    assert_eq!(
        b.event_outcomes(&bare).await.1,
        vec![Some("duplicate_event_id".to_string()); bare.len()]
    );
    a.settled(&ledger).await;
    b.settled(&ledger).await;
    let total: u64 = ledger.arms.values().map(|c| c[1]).sum();
    assert_eq!(total, 40, "40 impressions, not 80");
    for arm in ledger.arms.keys() {
        assert_eq!(
            topology.arm_counts(arm)[1],
            ledger.arms[arm][1],
            "Redis holds the same for {arm}"
        );
    }
    let claims = topology.keys("recgw:seen:*");
    assert_eq!(claims.len(), 4, "one claim hash per token");
    // A claim outlives its token by the margin for clock skew, so no event in the token's last
    // seconds (by a clock behind Redis's) can be counted again: the tokens were issued after
    // `started`, and live `token_max_age`.
    let token_life = settings(&demo, &url, "").tracking.token_max_age.as_secs();
    for claim in &claims {
        let expires: i64 = topology.query_key(&["EXPIRETIME", claim], claim);
        assert!(
            expires >= (started + token_life + 300) as i64,
            "{claim} expires at {expires}, before the token's end ({}) and the margin",
            started + token_life
        );
    }

    // The cache kept working beside the claims: each replica's second read of a user is a
    // hit, and no Redis command of any caller was refused.
    for gw in [&a, &b] {
        recommend(gw, "100", HOME).await.expect_experiment(EXPERIMENT);
        let metrics = gw.metrics().await;
        for client in ["cache", "events", "counts"] {
            assert_eq!(
                gateway::sample(
                    &metrics,
                    "redis_commands_total",
                    &[("client", client), ("result", "error")]
                ),
                0.0,
                "{client}"
            );
        }
        assert_eq!(
            gateway::sample(
                &metrics,
                "cache_requests_total",
                &[("tier", "redis"), ("result", "skipped")]
            ),
            0.0
        );
    }
    assert!(
        b.metric("cache_requests_total", &[("tier", "redis"), ("result", "hit")])
            .await
            + b.metric("cache_requests_total", &[("tier", "local"), ("result", "hit")])
                .await
            > 0.0
    );
    a.stop().await;
    b.stop().await;
}

on_one_node_and_a_cluster!(events_sent_to_two_replicas_count_once);

// ---------------------------------------------------------------------------------------------
// 2. One token, a hundred clicks
// ---------------------------------------------------------------------------------------------

async fn one_token_cannot_forge_clicks(topology: Topology) {
    let demo = DemoCopy::new();
    let gw = TestGateway::launch_up(&settings(&demo, &topology.url(), "")).await;
    let mut ledger = Ledger::default();
    let page = recommend(&gw, "7", HOME).await.expect_experiment(EXPERIMENT);
    ledger.served(&page);
    let unserved: Vec<Value> = (0..50)
        .map(|i| click(&page, &format!("not-served-{i}"), Some(format!("f-{i}"))))
        .collect();
    let first: Vec<Value> = (0..50)
        .map(|i| click(&page, &page.items[0], Some(format!("c-{i}"))))
        .collect();
    let (_, outcome) = gw.event_outcomes(&unserved).await;
    assert_eq!(outcome, vec![Some("item_not_served".to_string()); 50]);
    let (_, outcome) = gw.event_outcomes(&first).await;
    assert_eq!(outcome[0], None);
    assert_eq!(outcome[1..], vec![Some("duplicate_event_id".to_string()); 49][..]);
    ledger.accepted(&page, "click", &page.items[0]);
    // Another client's id on its own token is its own event: ids cannot be pre-claimed.
    let other = recommend(&gw, "8", HOME).await.expect_experiment(EXPERIMENT);
    ledger.served(&other);
    let (_, outcome) = gw
        .event_outcomes(&[click(&other, &other.items[0], Some("c-0".into()))])
        .await;
    assert_eq!(outcome, [None]);
    ledger.accepted(&other, "click", &other.items[0]);
    // Ids are capped: no key of unbounded size reaches Redis.
    let long = click(&other, &other.items[1], Some("x".repeat(65)));
    assert_eq!(
        gw.event_outcomes(&[long]).await.1,
        [Some("invalid_event_id".to_string())]
    );
    gw.settled(&ledger).await;
    assert_eq!(ledger.arms.values().map(|c| c[2]).sum::<u64>(), 2, "two clicks in all");
    gw.stop().await;
}

on_one_node_and_a_cluster!(one_token_cannot_forge_clicks);

// ---------------------------------------------------------------------------------------------
// 3. Replies delayed past every deadline
// ---------------------------------------------------------------------------------------------

/// Serves users and posts one impression (with an id) of each page, on `gw`, for `period`;
/// events that were not accepted are returned to be sent again.
async fn traffic(gw: &TestGateway, period: Duration, next: &mut u32, ledger: &mut Ledger) -> Vec<(Page, Value)> {
    let mut refused = Vec::new();
    let started = Instant::now();
    while started.elapsed() < period {
        let users: Vec<String> = (*next + 1..=*next + 10).map(|u| u.to_string()).collect();
        *next += 10;
        let pages = experiment_pages(gw, &users, HOME, EXPERIMENT, 1).await;
        pages.iter().for_each(|p| ledger.served(p));
        let events: Vec<Value> = pages
            .iter()
            .map(|p| impression(p, &p.items[0], Some(format!("i-{}", p.user))))
            .collect();
        let (status, outcome) = gw.event_outcomes(&events).await;
        assert!(status == 202 || status == 503, "{status} {outcome:?}");
        for ((page, event), outcome) in pages.into_iter().zip(events).zip(outcome) {
            match outcome {
                None => ledger.accepted(&page, "impression", &page.items[0]),
                Some(reason) => {
                    assert_eq!(reason, "counts_unavailable", "only Redis can refuse these");
                    refused.push((page, event));
                }
            }
        }
    }
    refused
}

/// Sends `refused` again until every one is accepted.
async fn resend(gw: &TestGateway, refused: Vec<(Page, Value)>, ledger: &mut Ledger) {
    for (page, event) in refused {
        eventually(WAIT, "a refused event accepted once Redis answers", async || {
            match gw.event_outcomes(std::slice::from_ref(&event)).await.1[0].clone() {
                None => Ok(()),
                Some(reason) => Err(reason),
            }
        })
        .await;
        ledger.accepted(&page, "impression", &page.items[0]);
    }
}

/// Traffic before, during and after `slow` (which makes Redis answer late), then a graceful
/// stop: Redis must hold exactly what was served and accepted.
async fn late_replies_count_once(
    topology: &Topology,
    url: &str,
    slow: impl AsyncFnOnce(&TestGateway, &mut u32, &mut Ledger) -> Vec<(Page, Value)>,
) {
    let demo = DemoCopy::new();
    let mut settings = settings(&demo, url, "");
    // Batches (flushes, claims) get 1 s: ten lookups of 100 ms.
    settings.cache.redis_timeout = Duration::from_millis(100);
    let gw = TestGateway::launch_up(&settings).await;
    let mut ledger = Ledger::default();
    let mut next = 10_000;
    let refused = traffic(&gw, Duration::from_secs(2), &mut next, &mut ledger).await;
    assert!(refused.is_empty(), "Redis answers in time: {} refused", refused.len());
    let refused = slow(&gw, &mut next, &mut ledger).await;
    let metrics = gw.metrics().await;
    let timeouts = |client| {
        gateway::sample(
            &metrics,
            "redis_commands_total",
            &[("client", client), ("result", "timeout")],
        )
    };
    let (flushes, claims) = (timeouts("counts"), timeouts("events"));
    assert!(
        flushes > 0.0 && claims > 0.0,
        "flushes ({flushes}) and claims ({claims}) timed out"
    );
    eprintln!(
        "{} events refused while Redis was slow; sending them again",
        refused.len()
    );
    resend(&gw, refused, &mut ledger).await;
    gw.settled(&ledger).await;
    // More traffic after recovery, left for the shutdown drain to deliver.
    let refused = traffic(&gw, Duration::from_millis(500), &mut next, &mut ledger).await;
    assert!(refused.is_empty());
    gw.stop().await;
    for (arm, want) in &ledger.arms {
        assert_eq!(&topology.arm_counts(arm), want, "{arm}: Redis after the stop");
    }
    assert!(
        ledger.arms.values().map(|c| c[0]).sum::<u64>() > 100,
        "{:?}",
        ledger.arms
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_delayed_past_the_deadline_count_once_on_one_node() {
    let topology = Topology::node();
    let Topology::Node(redis) = &topology else {
        unreachable!()
    };
    let upstream: SocketAddr = format!("127.0.0.1:{}", redis.port()).parse().expect("address");
    let proxy = DelayProxy::start(upstream).await;
    late_replies_count_once(&topology, &proxy.url(), async |gw, next, ledger| {
        // Past the 1 s deadline of flushes and claims: each runs in Redis, its answer is late.
        proxy.set_delay(Duration::from_millis(1600));
        let refused = traffic(gw, Duration::from_secs(6), next, ledger).await;
        proxy.set_delay(Duration::ZERO);
        refused
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_delayed_past_the_deadline_count_once_on_a_cluster() {
    let topology = Topology::cluster();
    let Topology::Cluster(cluster) = &topology else {
        unreachable!()
    };
    // Every node stalls for 1.5 s at a time (under the cluster's 2 s node timeout, so none is
    // failed over), since an experiment's counts and claims are spread over the slots of its
    // shards: commands sent meanwhile run when a node wakes, after their 1 s deadline.
    let nodes: Vec<String> = cluster.nodes().iter().map(|n| n.url()).collect();
    late_replies_count_once(&topology, &cluster.url(), async |gw, next, ledger| {
        let stalls: Vec<_> = nodes
            .iter()
            .cloned()
            .map(|node| {
                std::thread::spawn(move || {
                    let client = redis::Client::open(node).expect("node url");
                    let mut connection = client.get_connection().expect("node connection");
                    let until = Instant::now() + Duration::from_secs(6);
                    while Instant::now() < until {
                        let _: redis::RedisResult<()> =
                            redis::cmd("DEBUG").arg("SLEEP").arg("1.5").query(&mut connection);
                        std::thread::sleep(Duration::from_millis(50));
                    }
                })
            })
            .collect();
        let refused = traffic(gw, Duration::from_secs(6), next, ledger).await;
        tokio::task::block_in_place(|| {
            for stall in stalls {
                stall.join().expect("stalling thread");
            }
        });
        refused
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 4. A long outage
// ---------------------------------------------------------------------------------------------

async fn long_outage_loses_nothing_and_accepts_nothing_uncounted(mut topology: Topology) {
    let demo = DemoCopy::new();
    let gw = TestGateway::launch_up(&settings(&demo, &topology.url(), "")).await;
    let mut ledger = Ledger::default();
    let mut next = 20_000;
    // Nothing is counted before the stop: the harness's Redis keeps no data across a restart.
    tokio::task::block_in_place(|| topology.stop());
    let refused = traffic(&gw, Duration::from_secs(4), &mut next, &mut ledger).await;
    let exposures: u64 = ledger.arms.values().map(|c| c[0]).sum();
    assert_eq!(
        ledger.accepted.len(),
        0,
        "no event answered accepted while nothing counts it"
    );
    assert_eq!(refused.len() as u64, exposures, "every event refused, retryably");
    // Every exposure is held, none dropped, and every new user (each page here is a user of
    // its own) once: the pending gauge is the exact count of both once the users' queues are
    // collected (every 100 ms).
    let held = (2 * exposures) as f64;
    eventually(Duration::from_secs(1), "exposures and users held", async || {
        match gw.metric("results_pending_updates", &[]).await {
            pending if pending == held => Ok(()),
            pending => Err(format!("{pending} pending, want {held}")),
        }
    })
    .await;
    let reply = gw.get(RESULTS).await;
    assert_eq!(
        (reply.status, reply.json()["error"].clone()),
        (503, json!("counts_unavailable"))
    );
    tokio::task::block_in_place(|| topology.restart());
    resend(&gw, refused, &mut ledger).await;
    gw.settled(&ledger).await;
    assert_eq!(gw.metric("results_pending_updates", &[]).await, 0.0);
    gw.stop().await;
}

on_one_node_and_a_cluster!(long_outage_loses_nothing_and_accepts_nothing_uncounted);

// ---------------------------------------------------------------------------------------------
// 5. A batch that cannot apply whole applies nothing
// ---------------------------------------------------------------------------------------------

/// Keys a counting script writes to, taken by values of another type (by hand, or by anything
/// else sharing the names), stop the script: it must stop before its first write, or the
/// part already written is written again by every resend (exposures added each second) or
/// lost (users marked present and never counted). Here the treatment's items sketch is a hash
/// and both arms' days are strings in every shard, so every flush (exposures and items of both
/// arms in one script) and every users' script (whichever arms a shard's users of one second
/// came from: a shard may get users of one arm only) is refused: nothing of either arm may
/// appear until the keys are free, and then everything, once.
async fn a_batch_that_cannot_apply_whole_applies_nothing(topology: Topology) {
    let demo = DemoCopy::new();
    let gw = TestGateway::launch_up(&settings(&demo, &topology.url(), "")).await;
    let items = format!("recgw:results:{{{EXPERIMENT}}}:treatment:items");
    let _: u64 = topology.query_key(&["HSET", &items, "taken", "1"], &items);
    let days: Vec<String> = (0..16)
        .flat_map(|k| ["control", "treatment"].map(|arm| format!("recgw:results:{{{EXPERIMENT}:{k}}}:{arm}:days")))
        .collect();
    for key in &days {
        let _: String = topology.query_key(&["SET", key, "taken"], key);
    }
    let mut ledger = Ledger::default();
    for user in 30_000..30_060 {
        let page = recommend(&gw, &user.to_string(), HOME)
            .await
            .expect_experiment(EXPERIMENT);
        ledger.served(&page);
    }
    assert_eq!(ledger.arms.len(), 2, "both arms served: {:?}", ledger.arms);
    let refused = [("client", "counts"), ("result", "error")];
    eventually(WAIT, "two flushes refused", async || {
        match gw.metric("redis_commands_total", &refused).await {
            n if n >= 2.0 => Ok(()),
            n => Err(format!("{n} refused")),
        }
    })
    .await;
    let users = |arm: &str| -> u64 {
        (0..16)
            .map(|k| {
                let key = format!("recgw:results:{{{EXPERIMENT}:{k}}}:{arm}");
                let n: Option<u64> = topology.query_key(&["HGET", &key, "users"], &key);
                n.unwrap_or(0)
            })
            .sum()
    };
    for arm in ["control", "treatment"] {
        assert_eq!(
            topology.arm_counts(arm)[0],
            0,
            "no exposure of {arm} applied from a refused batch"
        );
        assert_eq!(users(arm), 0, "no user of {arm} applied from a refused script");
    }
    for key in days.iter().chain([&items]) {
        let _: u64 = topology.query_key(&["DEL", key], key);
    }
    gw.settled(&ledger).await;
    // Each page was a user of its own.
    eventually(WAIT, "every user counted once", async || {
        let got = [users("control"), users("treatment")];
        let want = [ledger.arms["control"][0], ledger.arms["treatment"][0]];
        if got == want {
            Ok(())
        } else {
            Err(format!("users {got:?}, want {want:?}"))
        }
    })
    .await;
    gw.stop().await;
}

on_one_node_and_a_cluster!(a_batch_that_cannot_apply_whole_applies_nothing);

// ---------------------------------------------------------------------------------------------
// 6. Counts on a Redis of their own
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_and_claims_live_on_results_redis_url_and_the_cache_apart() {
    let demo = DemoCopy::new();
    let cache = Topology::node();
    let results = Topology::cluster();
    let gw = TestGateway::launch_up(&settings(&demo, &cache.url(), &results.url())).await;
    let mut ledger = Ledger::default();
    let mut next = 30_000;
    assert!(
        traffic(&gw, Duration::from_secs(1), &mut next, &mut ledger)
            .await
            .is_empty()
    );
    gw.settled(&ledger).await;
    assert!(cache.keys("recgw:results:*").is_empty() && cache.keys("recgw:seen:*").is_empty());
    assert!(!results.keys("recgw:results:*").is_empty() && !results.keys("recgw:seen:*").is_empty());
    assert!(
        cache.keys("recgw:u:*").is_empty() && !results.keys("recgw:u:*").is_empty(),
        "users' state"
    );
    let cached = results.keys("recgw:als-*");
    assert!(cached.is_empty(), "no cached list on the counts' Redis: {cached:?}");
    assert!(
        !cache.keys("recgw:als-*").is_empty(),
        "lists cached on the cache's Redis"
    );
    for (arm, want) in &ledger.arms {
        assert_eq!(&results.arm_counts(arm), want, "{arm}");
    }
    assert_eq!(gw.metric("redis_up", &[]).await, 1.0, "both answer");
    drop(results);
    eventually(WAIT, "redis_up 0 once the counts' Redis is gone", async || {
        gw.traffic_probe().await;
        match gw.metric("redis_up", &[]).await {
            0.0 => Ok(()),
            up => Err(format!("redis_up {up}")),
        }
    })
    .await;
    gw.stop().await;
}

impl TestGateway {
    /// One request and one event, so both Redis connections are used.
    async fn traffic_probe(&self) {
        let page = recommend(self, "probe", HOME).await.expect_experiment(EXPERIMENT);
        let _ = self.event_outcomes(&[impression(&page, &page.items[0], None)]).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 7. A global list is cached once, not once per user
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_list_is_not_cached_per_user() {
    let demo = DemoCopy::new();
    let redis = Topology::node();
    let gw = TestGateway::launch_up(&settings(&demo, &redis.url(), "")).await;
    let mut sources = BTreeSet::new();
    for user in 0..30 {
        let reply = gw.get(&format!("/recommendations/u{user}?placement=default")).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let body = reply.json();
        assert_eq!(body["model"], "popular", "{body}");
        sources.insert(body["source"].as_str().expect("source").to_string());
    }
    assert_eq!(
        sources,
        BTreeSet::from(["local".to_string()]),
        "served from the loaded version"
    );
    // Lists of per-user models are cached per user; the popular list is not, in either tier.
    recommend(&gw, "42", HOME).await.expect_experiment(EXPERIMENT);
    eventually(WAIT, "the per-user list written back to Redis", async || {
        match redis.keys("recgw:als-*").len() {
            0 => Err("no per-user key yet".to_string()),
            _ => Ok(()),
        }
    })
    .await;
    assert_eq!(redis.keys("recgw:popular:*"), Vec::<String>::new());
    let lookups = gw
        .metric("cache_requests_total", &[("tier", "local"), ("result", "miss")])
        .await;
    assert_eq!(lookups, 1.0, "one lookup: user 42's, none for the 30 popular answers");
    gw.stop().await;
}
