//! The two cache tiers end to end (ARCHITECTURE.md §6): real `recgw` servers in this process, each
//! test with its own `redis-server` (or Redis Cluster) on free loopback ports started by
//! `common/redis.rs`, and Spark-layout models written by `common/spark.rs`.
//!
//! What is checked is what a client and an operator see: the `source` of each response, the
//! keys and TTLs in Redis, `/ready`, `/metrics` and `POST /admin/cache/invalidate`.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::assignment::bucket;
use common::gateway;
use common::gateway::{Reply, TestGateway, assert_error, eventually, sample, send};
use common::redis::{RedisCluster, RedisServer};
use common::spark::SparkOutput;
use common::traffic::{Sent, Traffic};
use recgw::config::Settings;
use reqwest::Method;
use serde_json::{Value, json};
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------------
// The world: one placement, one experiment whose arms serve two models
// ---------------------------------------------------------------------------------------------

const PLACEMENT: &str = "home";
const EXPERIMENT: &str = "cache-exp";
/// The control arm's model; it has no `cache_ttl`, so `cache.ttl` applies.
const MODEL_A: &str = "als-a";
/// The treatment arm's model, with `cache_ttl = "20m"`.
const MODEL_B: &str = "als-b";
/// The placement default.
const POPULAR: &str = "popular";
/// Users `1..=USERS` are in both models.
const USERS: u32 = 2_000;
/// `cache.ttl` of every test.
const TTL: Duration = Duration::from_secs(10 * 60);
/// The treatment arm's `cache_ttl`.
const ARM_TTL: Duration = Duration::from_secs(20 * 60);
/// Bound of the waits for something that happens in the background.
const WAIT: Duration = Duration::from_secs(5);

/// The model serving `user` (50/50 arms over the whole placement; control owns `[0, 5000)`).
fn model_of(user: u32) -> &'static str {
    if bucket(EXPERIMENT, &user.to_string()) < 5_000 {
        MODEL_A
    } else {
        MODEL_B
    }
}

/// Users of the model's arm, in increasing order.
fn users_of(model: &'static str) -> impl Iterator<Item = u32> {
    (1..=USERS).filter(move |u| model_of(*u) == model)
}

/// What version 1 of `als-a` holds for `user` (scores are exact in f32 and JSON).
fn a_v1(user: u32) -> Vec<(u32, f32)> {
    vec![(user * 10 + 1, 4.0), (user * 10 + 2, 3.0)]
}

/// Version 2 of `als-a`: other items.
fn a_v2(user: u32) -> Vec<(u32, f32)> {
    vec![(user * 10 + 9, 8.0), (user * 10 + 8, 7.5), (user * 10 + 7, 6.25)]
}

fn b_list(user: u32) -> Vec<(u32, f32)> {
    vec![(user * 10 + 5, 2.5), (user * 10 + 6, 1.25)]
}

/// The list `user` gets from their arm's model (version 1 of `als-a`).
fn expected(user: u32) -> Vec<(u32, f32)> {
    match model_of(user) {
        MODEL_A => a_v1(user),
        _ => b_list(user),
    }
}

/// `(item_id, score)` of a response, best first.
fn items(body: &Value) -> Vec<(String, f32)> {
    body["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {body}"))
        .iter()
        .map(|item| {
            let id = item["item_id"].as_str().unwrap_or_else(|| panic!("item_id: {item}"));
            (id.to_string(), item["score"].as_f64().expect("score") as f32)
        })
        .collect()
}

fn as_items(list: &[(u32, f32)]) -> Vec<(String, f32)> {
    list.iter().map(|(id, score)| (id.to_string(), *score)).collect()
}

fn source(body: &Value) -> &str {
    body["source"].as_str().unwrap_or_else(|| panic!("no source: {body}"))
}

fn version(body: &Value) -> String {
    body["model_version"]
        .as_str()
        .unwrap_or_else(|| panic!("no model_version: {body}"))
        .to_string()
}

/// The cache key of ARCHITECTURE.md §6: `recgw:{model}:{version}:{generation}:{user}`.
fn key(model: &str, version: &str, generation: u64, user: u32) -> String {
    format!("recgw:{model}:{version}:{generation}:{user}")
}

/// Experiments and models of one test, in temporary folders.
struct World {
    experiments: TempDir,
    models: TempDir,
}

impl World {
    fn new() -> World {
        let experiments = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            experiments.path().join("placements.toml"),
            format!("[placements.{PLACEMENT}]\ndefault_model = \"{POPULAR}\"\n"),
        )
        .expect("write placements");
        std::fs::write(
            experiments.path().join(format!("{EXPERIMENT}.toml")),
            format!(
                "id = \"{EXPERIMENT}\"\nplacement = \"{PLACEMENT}\"\nowner = \"tests@example.com\"\n\
                 status = \"running\"\ntraffic = [0.0, 100.0]\n\n\
                 [[arms]]\nname = \"control\"\nweight = 50.0\nmodel = \"{MODEL_A}\"\n\n\
                 [[arms]]\nname = \"treatment\"\nweight = 50.0\nmodel = \"{MODEL_B}\"\ncache_ttl = \"20m\"\n"
            ),
        )
        .expect("write experiment");
        let world = World {
            experiments,
            models: tempfile::tempdir().expect("tempdir"),
        };
        world.write_a(a_v1);
        SparkOutput::nested()
            .part((1..=USERS).map(|u| (u, b_list(u))).collect())
            .write(&world.models.path().join(MODEL_B));
        SparkOutput::global()
            .items(vec![(1u32, 1.0f32), (2, 0.5)])
            .write(&world.models.path().join(POPULAR));
        world
    }

    /// (Re)writes `als-a` with `list` for every user and commits it (a new `_SUCCESS`).
    fn write_a(&self, list: fn(u32) -> Vec<(u32, f32)>) {
        SparkOutput::nested()
            .part((1..=USERS).map(|u| (u, list(u))).collect())
            .write(&self.models.path().join(MODEL_A));
    }

    /// Settings over this world and `redis_url`: `cache.ttl` 10 min, a Redis timeout generous
    /// enough for a loaded test machine, generations polled every 300 ms.
    fn settings(&self, redis_url: &str) -> Settings {
        let mut settings = gateway::settings(self.experiments.path(), self.models.path(), "100ms");
        settings.cache.redis_url = redis_url.to_string();
        settings.tracking.secret = vec![gateway::SHARED_SECRET.to_string()];
        settings.cache.ttl = TTL;
        settings.cache.redis_timeout = Duration::from_millis(500);
        settings.experiments.reload_interval = Duration::from_millis(300);
        settings
    }
}

// ---------------------------------------------------------------------------------------------
// What the tests ask a gateway
// ---------------------------------------------------------------------------------------------

impl TestGateway {
    /// `POST /admin/cache/invalidate` with `body` as it is (JSON content type).
    async fn invalidate_raw(&self, body: &str) -> Reply {
        self.post_raw("/admin/cache/invalidate", body.to_string()).await
    }

    /// Invalidates `target`, expecting 200; returns the `models` array.
    async fn invalidate(&self, target: Value) -> Vec<Value> {
        let reply = self.invalidate_raw(&target.to_string()).await;
        assert_eq!(reply.status, 200, "invalidate {target}: {}", reply.body);
        reply.json()["models"]
            .as_array()
            .unwrap_or_else(|| panic!("no models: {}", reply.body))
            .clone()
    }

    /// `GET /recommendations/{user}?placement=home`, expecting 200.
    async fn rec(&self, user: u32) -> Value {
        let path = format!("/recommendations/{user}?placement={PLACEMENT}");
        let reply = self.get(&path).await;
        assert_eq!(reply.status, 200, "GET {path}: {}", reply.body);
        reply.json()
    }

    /// A response for `user` from their arm's model with the expected items.
    async fn rec_checked(&self, user: u32, list: &[(u32, f32)]) -> Value {
        let body = self.rec(user).await;
        assert_eq!(body["model"], model_of(user), "{body}");
        assert_eq!(items(&body), as_items(list), "{body}");
        body
    }

    /// `/ready`: status and `redis` field.
    async fn ready_redis(&self) -> (u16, String) {
        let reply = self.get("/ready").await;
        let redis = reply.json()["redis"].as_str().unwrap_or_default().to_string();
        (reply.status, redis)
    }
}

/// Waits until `key` exists in `redis`; returns its PTTL in ms.
async fn wait_key(redis: &RedisServer, key: &str) -> i64 {
    eventually(WAIT, &format!("key {key} in Redis"), async || {
        let pttl: i64 = redis.query(&["PTTL", key]);
        if pttl >= 0 {
            Ok(pttl)
        } else {
            Err(format!("PTTL {pttl}; keys: {:?}", redis.keys("recgw:*")))
        }
    })
    .await
}

/// Subscribers of the invalidation channel on `redis` (one per replica).
fn subscribers(redis: &RedisServer) -> i64 {
    let numsub: Vec<redis::Value> = redis.query(&["PUBSUB", "NUMSUB", "recgw:invalidate"]);
    match numsub.get(1) {
        Some(redis::Value::Int(n)) => *n,
        other => panic!("PUBSUB NUMSUB: {other:?}"),
    }
}

/// Waits until `redis` has `n` subscribers on the invalidation channel.
async fn wait_subscribers(redis: &RedisServer, n: i64, timeout: Duration) {
    eventually(timeout, &format!("{n} subscribers"), async || {
        match subscribers(redis) {
            found if found == n => Ok(()),
            found => Err(format!("{found} subscribers")),
        }
    })
    .await;
}

/// Asserts `pttl` ms is the jittered `ttl` (±10%), allowing for the time the test took.
fn assert_ttl(pttl: i64, ttl: Duration, what: &str) {
    let ttl = ttl.as_millis() as f64;
    let (low, high) = (0.9 * ttl - 30_000.0, 1.1 * ttl);
    assert!(
        (low..=high).contains(&(pttl as f64)),
        "{what}: PTTL {pttl} ms outside [0.9, 1.1] × {ttl} ms"
    );
}

/// Polls `user` on `gw` until the answer is not `local` (the local entry was dropped); the
/// answer must then come from Redis or the store.
async fn wait_not_local(gw: &TestGateway, user: u32, what: &str) -> Value {
    let body = eventually(WAIT, what, async || {
        let body = gw.rec(user).await;
        if source(&body) == "local" {
            Err(body.to_string())
        } else {
            Ok(body)
        }
    })
    .await;
    assert!(["redis", "store"].contains(&source(&body)), "{what}: {body}");
    body
}

fn assert_invalidated(models: &[Value], expected: &[(&str, u64)]) {
    let got: Vec<(String, u64, bool)> = models
        .iter()
        .map(|m| {
            (
                m["model"].as_str().unwrap_or_default().to_string(),
                m["generation"].as_u64().unwrap_or_else(|| panic!("generation: {m}")),
                m["propagated"].as_bool().unwrap_or_else(|| panic!("propagated: {m}")),
            )
        })
        .collect();
    let want: Vec<(String, u64, bool)> = expected.iter().map(|(m, g)| (m.to_string(), *g, true)).collect();
    assert_eq!(got, want, "invalidation result");
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_come_from_local_then_from_redis_after_a_restart_with_the_arm_ttl() {
    let redis = RedisServer::start();
    let world = World::new();
    let settings = world.settings(&redis.url());
    let gw = TestGateway::launch_up(&settings).await;

    let a = users_of(MODEL_A).next().expect("a control user");
    let b = users_of(MODEL_B).next().expect("a treatment user");
    let mut versions = Vec::new();
    for (user, ttl) in [(a, TTL), (b, ARM_TTL)] {
        let first = gw.rec_checked(user, &expected(user)).await;
        assert_eq!(source(&first), "store", "first request: {first}");
        let second = gw.rec_checked(user, &expected(user)).await;
        assert_eq!(source(&second), "local", "second request: {second}");
        assert_eq!(version(&first), version(&second));
        let key = key(model_of(user), &version(&first), 0, user);
        let pttl = wait_key(&redis, &key).await;
        assert_ttl(pttl, ttl, &key);
        versions.push(version(&first));
    }
    // Only the two lists were written, under exactly these keys.
    assert_eq!(
        redis.keys("recgw:*"),
        [key(MODEL_A, &versions[0], 0, a), key(MODEL_B, &versions[1], 0, b)]
    );

    gw.stop().await;
    let gw = TestGateway::launch_up(&settings).await;
    for user in [a, b] {
        let third = gw.rec_checked(user, &expected(user)).await;
        assert_eq!(source(&third), "redis", "after a restart: {third}");
        let fourth = gw.rec_checked(user, &expected(user)).await;
        assert_eq!(source(&fourth), "local", "then local again: {fourth}");
    }
    assert_eq!(
        gw.metric("cache_requests_total", &[("tier", "redis"), ("result", "hit")])
            .await,
        2.0
    );
    assert_eq!(
        gw.metric("store_read_duration_seconds_count", &[("model", MODEL_A)])
            .await,
        0.0,
        "the restarted gateway never read the store"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_for_one_user_read_the_store_once() {
    let redis = RedisServer::start();
    let world = World::new();
    let gw = TestGateway::launch_up(&world.settings(&redis.url())).await;

    let known = users_of(MODEL_A).next().expect("a control user");
    // Not in any model: the arm answers "no list" (cached too), then the default answers.
    let cold = (900_000..).find(|u| model_of(*u) == MODEL_A).expect("a cold user");
    for (user, fallback) in [(known, false), (cold, true)] {
        let metrics = gw.metrics().await;
        let reads = |text: &str, model| sample(text, "store_read_duration_seconds_count", &[("model", model)]);
        let (before_a, before_popular) = (reads(&metrics, MODEL_A), reads(&metrics, POPULAR));
        let url = gw.url(&format!("/recommendations/{user}?placement={PLACEMENT}"));
        let requests: Vec<_> = (0..200)
            .map(|_| {
                let (client, url) = (gw.client.clone(), url.clone());
                tokio::spawn(async move { send(&client, Method::GET, &url, &[], None).await })
            })
            .collect();
        let mut sources = BTreeSet::new();
        for request in requests {
            let reply = request.await.expect("task").expect("request");
            assert_eq!(reply.status, 200, "user {user}: {}", reply.body);
            let body = reply.json();
            if fallback {
                assert_eq!(source(&body), "fallback", "{body}");
                assert_eq!(body["model"], POPULAR, "{body}");
            } else {
                assert_eq!(items(&body), as_items(&a_v1(user)), "{body}");
                sources.insert(source(&body).to_string());
            }
        }
        if !fallback {
            assert!(
                sources.iter().all(|s| s == "store" || s == "local"),
                "sources {sources:?}"
            );
        }
        let metrics = gw.metrics().await;
        assert_eq!(
            reads(&metrics, MODEL_A) - before_a,
            1.0,
            "user {user}: one store read of {MODEL_A} for 200 concurrent requests"
        );
        // The default is a global list, held by its loaded version: never a store read.
        assert_eq!(
            reads(&metrics, POPULAR) - before_popular,
            0.0,
            "user {user}: store reads of the default"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_model_version_is_read_from_the_store_not_from_the_old_key() {
    let redis = RedisServer::start();
    let world = World::new();
    let gw = TestGateway::launch_up(&world.settings(&redis.url())).await;

    let user = users_of(MODEL_A).next().expect("a control user");
    let first = gw.rec_checked(user, &a_v1(user)).await;
    assert_eq!(source(&first), "store");
    assert_eq!(source(&gw.rec_checked(user, &a_v1(user)).await), "local");
    let v1 = version(&first);
    wait_key(&redis, &key(MODEL_A, &v1, 0, user)).await;
    let redis_hits = gw
        .metric("cache_requests_total", &[("tier", "redis"), ("result", "hit")])
        .await;

    // The job runs again: new part files, a new `_SUCCESS` (new etag, new version).
    world.write_a(a_v2);
    let swapped = eventually(WAIT, "the new version served", async || {
        let body = gw.rec(user).await;
        if version(&body) == v1 {
            assert_eq!(items(&body), as_items(&a_v1(user)), "{body}");
            Err(body.to_string())
        } else {
            Ok(body)
        }
    })
    .await;
    assert_eq!(
        source(&swapped),
        "store",
        "the first answer of a new version is read from the store: {swapped}"
    );
    assert_eq!(items(&swapped), as_items(&a_v2(user)), "{swapped}");
    // Later answers: the new items, from the store whenever the version moves again (the
    // marker may be seen before and after its mtime is set), else from the local tier.
    let mut last = version(&swapped);
    for _ in 0..5 {
        let body = gw.rec(user).await;
        assert_eq!(items(&body), as_items(&a_v2(user)), "{body}");
        let want = if version(&body) == last { "local" } else { "store" };
        assert_eq!(source(&body), want, "after version {last}: {body}");
        last = version(&body);
    }
    assert_eq!(
        gw.metric("cache_requests_total", &[("tier", "redis"), ("result", "hit")])
            .await,
        redis_hits,
        "the old version's key is never read again"
    );
    wait_key(&redis, &key(MODEL_A, &last, 0, user)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_reaches_every_replica() {
    let redis = RedisServer::start();
    let world = World::new();
    // Generations are polled only every minute: within the test, only pub/sub can tell B.
    let mut settings = world.settings(&redis.url());
    settings.experiments.reload_interval = Duration::from_secs(60);
    let a = TestGateway::launch_up(&settings).await;
    let b = TestGateway::launch_up(&settings).await;
    wait_subscribers(&redis, 2, WAIT).await;

    let ua = users_of(MODEL_A).next().expect("a control user");
    let ub = users_of(MODEL_B).next().expect("a treatment user");
    let mut versions = std::collections::HashMap::new();
    for user in [ua, ub] {
        let first = b.rec_checked(user, &expected(user)).await;
        assert_eq!(source(&first), "store");
        assert_eq!(source(&b.rec_checked(user, &expected(user)).await), "local");
        versions.insert(user, version(&first));
        wait_key(&redis, &key(model_of(user), &version(&first), 0, user)).await;
        assert_eq!(source(&a.rec_checked(user, &expected(user)).await), "redis");
        assert_eq!(source(&a.rec_checked(user, &expected(user)).await), "local");
    }

    // By model, on A.
    assert_invalidated(&a.invalidate(json!({ "model": MODEL_A })).await, &[(MODEL_A, 1)]);
    let body = a.rec_checked(ua, &expected(ua)).await;
    assert_ne!(source(&body), "local", "A dropped its own entry: {body}");
    let body = wait_not_local(&b, ua, "B drops the invalidated list").await;
    assert_eq!(items(&body), as_items(&expected(ua)));
    wait_key(&redis, &key(MODEL_A, &versions[&ua], 1, ua)).await;
    assert_eq!(source(&b.rec(ua).await), "local", "cached again under generation 1");
    assert_eq!(
        source(&b.rec(ub).await),
        "local",
        "the other model's lists are untouched"
    );
    assert_eq!(redis.query::<String>(&["GET", "recgw:generation:als-a"]), "1");

    // By experiment and arm: the treatment arm's model only.
    assert_invalidated(
        &a.invalidate(json!({ "experiment": EXPERIMENT, "arm": "treatment" }))
            .await,
        &[(MODEL_B, 1)],
    );
    wait_not_local(&b, ub, "B drops the arm's list").await;
    wait_key(&redis, &key(MODEL_B, &versions[&ub], 1, ub)).await;
    assert_eq!(
        source(&b.rec(ua).await),
        "local",
        "the control arm's lists are untouched"
    );

    // By experiment: every arm's model.
    assert_invalidated(
        &a.invalidate(json!({ "experiment": EXPERIMENT })).await,
        &[(MODEL_A, 2), (MODEL_B, 2)],
    );
    for user in [ua, ub] {
        wait_not_local(&b, user, "B drops the experiment's lists").await;
        wait_key(&redis, &key(model_of(user), &versions[&user], 2, user)).await;
    }
    // The placement default is a model too.
    assert_invalidated(&a.invalidate(json!({ "model": POPULAR })).await, &[(POPULAR, 1)]);

    for (body, what) in [
        ("{}", "nothing named"),
        (r#"{"arm": "control"}"#, "an arm without experiment"),
        (
            r#"{"model": "als-a", "experiment": "cache-exp"}"#,
            "model and experiment",
        ),
    ] {
        assert_error(&a.invalidate_raw(body).await, 400, "invalid_target", what);
    }
    let empty = a.invalidate_raw("").await;
    assert_eq!(empty.status, 400, "an empty body: {}", empty.body);
    assert_error(
        &a.invalidate_raw(r#"{"model": "nope"}"#).await,
        404,
        "unknown_model",
        "unknown model",
    );
    assert_error(
        &a.invalidate_raw(r#"{"experiment": "nope"}"#).await,
        404,
        "unknown_experiment",
        "unknown experiment",
    );
    assert_error(
        &a.invalidate_raw(r#"{"experiment": "cache-exp", "arm": "nope"}"#).await,
        404,
        "unknown_arm",
        "unknown arm",
    );
    assert_eq!(
        redis.query::<String>(&["GET", "recgw:generation:als-a"]),
        "2",
        "rejected invalidations change nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_missed_the_message_polls_the_generation() {
    let redis = RedisServer::start();
    let world = World::new();
    let settings = world.settings(&redis.url());
    assert_eq!(settings.experiments.reload_interval, Duration::from_millis(300));
    let b = TestGateway::launch_up(&settings).await;

    let user = users_of(MODEL_A).next().expect("a control user");
    let first = b.rec_checked(user, &a_v1(user)).await;
    assert_eq!(source(&b.rec(user).await), "local");
    let v = version(&first);

    for generation in 1..=2u64 {
        // Another replica bumped the generation, but its message was lost: no PUBLISH.
        let bumped: u64 = redis.query(&["INCR", "recgw:generation:als-a"]);
        assert_eq!(bumped, generation);
        let started = Instant::now();
        wait_not_local(&b, user, "B picks the generation up by polling").await;
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        wait_key(&redis, &key(MODEL_A, &v, generation, user)).await;
        assert_eq!(source(&b.rec(user).await), "local");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dying_costs_no_request_and_redis_hits_resume_by_themselves() {
    let mut redis = RedisServer::start();
    let world = World::new();
    let mut settings = world.settings(&redis.url());
    // No local tier: a repeated request shows `redis` whenever Redis serves it.
    settings.cache.local_capacity = 0;
    settings.cache.redis_timeout = Duration::from_millis(200);
    let gw = TestGateway::launch_up(&settings).await;

    let mut users = users_of(MODEL_A);
    let hot = users.next().expect("a control user");
    assert_eq!(source(&gw.rec_checked(hot, &a_v1(hot)).await), "store");
    eventually(WAIT, "the hot user from Redis", async || {
        let body = gw.rec_checked(hot, &a_v1(hot)).await;
        if source(&body) == "redis" {
            Ok(())
        } else {
            Err(body.to_string())
        }
    })
    .await;

    // Traffic: the hot user and fresh users, alternately, as fast as answers come.
    let hot_path = format!("/recommendations/{hot}?placement={PLACEMENT}");
    let fresh: Vec<u32> = users.collect();
    let traffic = {
        let hot_path = hot_path.clone();
        Traffic::start(&gw, 1, Duration::from_millis(5), move |_, n| {
            if n % 2 == 1 {
                hot_path.clone()
            } else {
                format!("/recommendations/{}?placement={PLACEMENT}", fresh[n / 2 % fresh.len()])
            }
        })
    };
    let hot_since = |since: Instant, source: &'static str| {
        let (traffic, hot_path) = (&traffic, &hot_path);
        async move || {
            traffic.with_sent(|sent| {
                let n = sent
                    .iter()
                    .filter(|s| s.at > since && &s.path == hot_path && s.source() == source)
                    .count();
                if n >= 2 {
                    Ok(())
                } else {
                    Err(format!("{n} of {} requests", sent.len()))
                }
            })
        }
    };
    eventually(WAIT, "traffic served from Redis", hot_since(Instant::now(), "redis")).await;

    tokio::task::block_in_place(|| redis.stop());
    let killed = Instant::now();
    eventually(
        WAIT,
        "the hot user from the store while Redis is down",
        hot_since(killed, "store"),
    )
    .await;
    eventually(WAIT, "/ready says redis down", async || match gw.ready_redis().await {
        (200, redis) if redis == "down" => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .await;
    assert_eq!(gw.metric("redis_up", &[]).await, 0.0);
    // A short outage: the breaker's window has not grown to its 5 s maximum.
    tokio::time::sleep(Duration::from_millis(300).saturating_sub(killed.elapsed())).await;
    let (status, state) = gw.ready_redis().await;
    assert_eq!(
        (status, state.as_str()),
        (200, "down"),
        "still ready while Redis is down"
    );

    tokio::task::block_in_place(|| redis.restart());
    let restarted = Instant::now();
    // Redis came back empty: a store read writes the hot user again, then Redis serves it.
    eventually(
        Duration::from_secs(8),
        "Redis hits resume",
        hot_since(restarted, "redis"),
    )
    .await;
    let recovery = restarted.elapsed();
    eventually(WAIT, "/ready says redis up", async || match gw.ready_redis().await {
        (200, redis) if redis == "up" => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .await;
    assert_eq!(gw.metric("redis_up", &[]).await, 1.0);

    let sent = traffic.stop().await;
    let failed: Vec<String> = sent.iter().filter(|s| s.status() != 200).map(Sent::to_string).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        sent.len()
    );
    let odd: Vec<String> = sent
        .iter()
        .filter(|s| s.source() != "store" && s.source() != "redis")
        .map(Sent::to_string)
        .collect();
    assert!(odd.is_empty(), "only store and redis without a local tier: {odd:?}");
    let during: Vec<&Sent> = sent
        .iter()
        .filter(|s| s.at > killed + Duration::from_millis(50) && s.at < restarted)
        .collect();
    assert!(!during.is_empty(), "traffic flowed during the outage");
    assert!(
        during.iter().all(|s| s.source() == "store"),
        "store while Redis is down: {:?}",
        during.iter().find(|s| s.source() != "store").map(ToString::to_string)
    );
    assert!(recovery < Duration::from_secs(8), "recovered after {recovery:?}");
}

/// `(timeout, skipped, error)` of `cache_requests_total{tier="redis"}`.
fn redis_failures(metrics: &str) -> (f64, f64, f64) {
    let count = |result| {
        sample(
            metrics,
            "cache_requests_total",
            &[("tier", "redis"), ("result", result)],
        )
    };
    (count("timeout"), count("skipped"), count("error"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_does_not_slow_requests_down() {
    let redis = RedisServer::start();
    let world = World::new();
    let mut settings = world.settings(&redis.url());
    settings.cache.redis_timeout = Duration::from_millis(50);
    let gw = TestGateway::launch_up(&settings).await;
    let mut users = users_of(MODEL_A).chain(users_of(MODEL_B));
    let user = users.next().expect("a user");
    assert_eq!(source(&gw.rec_checked(user, &expected(user)).await), "store");
    let (timeouts, skipped, errors) = redis_failures(&gw.metrics().await);

    let sleeper = redis.debug_sleep(2.0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let mut answered = 0;
    while started.elapsed() < Duration::from_millis(1_500) {
        let user = users.next().expect("fresh users");
        let sent = Instant::now();
        let body = gw.rec_checked(user, &expected(user)).await;
        let took = sent.elapsed();
        assert!(took < Duration::from_secs(1), "user {user} took {took:?}: {body}");
        assert_eq!(source(&body), "store", "{body}");
        answered += 1;
    }
    let (answer, slept) = tokio::task::spawn_blocking(move || sleeper.join().expect("sleeper"))
        .await
        .expect("join");
    assert_eq!(answer.expect("DEBUG SLEEP"), "OK");
    assert!(slept >= Duration::from_secs(2), "Redis slept {slept:?}");
    assert!(answered >= 5, "{answered} requests during the sleep");
    let (timeouts_after, skipped_after, errors_after) = redis_failures(&gw.metrics().await);
    let counts = format!(
        "timeout {timeouts} → {timeouts_after}, skipped {skipped} → {skipped_after}, error {errors} → {errors_after}"
    );
    assert!(skipped_after > skipped, "Redis skipped after failures: {counts}");
    assert!(
        timeouts_after + errors_after > timeouts + errors,
        "the first command past the deadline failed: {counts}"
    );
    assert!(
        (timeouts_after + skipped_after + errors_after) - (timeouts + skipped + errors) >= f64::from(answered),
        "every request's lookup went without Redis: {counts}"
    );
    eventually(WAIT, "/ready says redis up again", async || {
        match gw.ready_redis().await {
            (200, redis) if redis == "up" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

/// `cache_requests_total{tier="redis",result="timeout"}` counts commands that did not answer
/// within `cache.redis_timeout` (src/metrics.rs); `error` is for failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_command_past_the_deadline_is_counted_as_a_timeout() {
    let redis = RedisServer::start();
    let world = World::new();
    let mut settings = world.settings(&redis.url());
    settings.cache.redis_timeout = Duration::from_millis(50);
    let gw = TestGateway::launch_up(&settings).await;
    let mut users = users_of(MODEL_A);
    assert_eq!(source(&gw.rec(users.next().unwrap()).await), "store");
    let (timeouts, _, errors) = redis_failures(&gw.metrics().await);

    let sleeper = redis.debug_sleep(0.5);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let body = gw.rec(users.next().unwrap()).await;
    assert_eq!(source(&body), "store", "{body}");
    let (answer, _) = tokio::task::spawn_blocking(move || sleeper.join().expect("sleeper"))
        .await
        .expect("join");
    assert_eq!(answer.expect("DEBUG SLEEP"), "OK");
    let (timeouts_after, _, errors_after) = redis_failures(&gw.metrics().await);
    assert!(
        timeouts_after > timeouts && errors_after == errors,
        "a slow GET is a timeout, not an error: timeout {timeouts} → {timeouts_after}, error {errors} → {errors_after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_local_tier_repeated_requests_come_from_redis() {
    let redis = RedisServer::start();
    let world = World::new();
    let mut settings = world.settings(&redis.url());
    settings.cache.local_capacity = 0;
    let gw = TestGateway::launch_up(&settings).await;

    for user in [users_of(MODEL_A).next().unwrap(), users_of(MODEL_B).next().unwrap()] {
        let first = gw.rec_checked(user, &expected(user)).await;
        assert_eq!(source(&first), "store", "{first}");
        // The write to Redis does not delay the response: wait for it.
        wait_key(&redis, &key(model_of(user), &version(&first), 0, user)).await;
        for _ in 0..10 {
            let body = gw.rec_checked(user, &expected(user)).await;
            assert_eq!(source(&body), "redis", "{body}");
        }
    }
    let metrics = gw.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "cache_requests_total",
            &[("tier", "local"), ("result", "hit")]
        ),
        0.0
    );
    assert_eq!(
        sample(
            &metrics,
            "cache_requests_total",
            &[("tier", "redis"), ("result", "hit")]
        ),
        20.0
    );

    // A value that does not decode is a miss: the store answers and the value is rewritten.
    let user = users_of(MODEL_A).nth(1).expect("another control user");
    let first = gw.rec_checked(user, &expected(user)).await;
    let key = key(MODEL_A, &version(&first), 0, user);
    wait_key(&redis, &key).await;
    let _: () = redis.query(&["SET", &key, "not a ranked list"]);
    let errors = gw
        .metric("cache_requests_total", &[("tier", "redis"), ("result", "error")])
        .await;
    let body = gw.rec_checked(user, &expected(user)).await;
    assert_eq!(source(&body), "store", "an undecodable value is not served: {body}");
    assert_eq!(
        gw.metric("cache_requests_total", &[("tier", "redis"), ("result", "error")])
            .await,
        errors + 1.0
    );
    eventually(WAIT, "the value rewritten", async || {
        let body = gw.rec_checked(user, &expected(user)).await;
        if source(&body) == "redis" {
            Ok(())
        } else {
            Err(body.to_string())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_spreads_lists_over_its_nodes_and_invalidates() {
    let cluster = RedisCluster::start(3);
    let world = World::new();
    let settings = world.settings(&cluster.url());
    let gw = TestGateway::launch_up(&settings).await;

    let users: Vec<u32> = (1..=50).collect();
    let mut versions = std::collections::HashMap::new();
    for &user in &users {
        let body = gw.rec_checked(user, &expected(user)).await;
        assert_eq!(source(&body), "store", "{body}");
        versions.insert(model_of(user), version(&body));
    }
    eventually(WAIT, "50 lists in the cluster", async || {
        let keys = cluster.keys("recgw:als-*");
        if keys.len() == users.len() {
            Ok(())
        } else {
            Err(format!("{} keys", keys.len()))
        }
    })
    .await;
    for &user in &users {
        let key = key(model_of(user), &versions[model_of(user)], 0, user);
        let pttl: i64 = cluster.query_key(&["PTTL", &key], &key);
        assert!(pttl > 0, "{key}: PTTL {pttl}");
    }
    let sizes = cluster.dbsizes();
    assert!(
        sizes.iter().filter(|&&n| n > 0).count() >= 2,
        "keys spread over the nodes: {sizes:?}"
    );

    gw.stop().await;
    let gw = TestGateway::launch_up(&settings).await;
    for &user in &users {
        let body = gw.rec_checked(user, &expected(user)).await;
        assert_eq!(source(&body), "redis", "after a restart: {body}");
    }
    // A second replica that learns of invalidations only through pub/sub: its generations are
    // polled once a minute. Subscribers listen on the first node; PUBLISH may land on any.
    let mut slow_poll = settings.clone();
    slow_poll.experiments.reload_interval = Duration::from_secs(60);
    let replica = TestGateway::launch_ready(&slow_poll).await;
    wait_subscribers(&cluster.nodes()[0], 2, WAIT).await;
    let watched = users[0];
    let first = replica.rec_checked(watched, &expected(watched)).await;
    assert_ne!(source(&first), "local", "{first}");
    assert_eq!(source(&replica.rec(watched).await), "local");

    let invalidated = model_of(watched);
    assert_invalidated(
        &gw.invalidate(json!({ "model": invalidated })).await,
        &[(invalidated, 1)],
    );
    for &user in &users {
        let body = gw.rec_checked(user, &expected(user)).await;
        let want = if model_of(user) == invalidated {
            "store"
        } else {
            "local"
        };
        assert_eq!(source(&body), want, "{body}");
    }
    wait_not_local(&replica, watched, "the replica drops the list").await;
    let fresh: Vec<String> = users
        .iter()
        .filter(|u| model_of(**u) == invalidated)
        .map(|u| key(invalidated, &versions[invalidated], 1, *u))
        .collect();
    eventually(WAIT, "generation 1 keys in the cluster", async || {
        let keys: BTreeSet<String> = cluster.keys("recgw:als-*").into_iter().collect();
        let missing: Vec<&String> = fresh.iter().filter(|k| !keys.contains(*k)).collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("missing {missing:?}"))
        }
    })
    .await;
}

/// Redis keeps nothing on disk here (as a cache often does): after it restarts, the generation
/// counter starts again from nothing. An invalidation must still drop every cached list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_after_redis_lost_its_data_still_drops_cached_lists() {
    let mut redis = RedisServer::start();
    let world = World::new();
    let gw = TestGateway::launch_up(&world.settings(&redis.url())).await;
    let user = users_of(MODEL_A).next().expect("a control user");

    assert_eq!(source(&gw.rec(user).await), "store");
    assert_invalidated(&gw.invalidate(json!({ "model": MODEL_A })).await, &[(MODEL_A, 1)]);
    assert_eq!(source(&gw.rec(user).await), "store");
    assert_eq!(source(&gw.rec(user).await), "local");

    tokio::task::block_in_place(|| redis.restart());
    eventually(WAIT, "Redis answers the gateway again", async || {
        let models = gw.invalidate(json!({ "model": POPULAR })).await;
        if models[0]["propagated"] == true {
            Ok(())
        } else {
            Err(format!("{models:?}"))
        }
    })
    .await;
    let models = gw.invalidate(json!({ "model": MODEL_A })).await;
    let body = gw.rec(user).await;
    assert_ne!(
        source(&body),
        "local",
        "after invalidation {models:?} the list cached before it is still served: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_started_while_redis_is_down_serves_and_uses_redis_once_it_is_up() {
    let mut redis = RedisServer::start();
    redis.stop();
    let world = World::new();
    let mut settings = world.settings(&redis.url());
    settings.cache.local_capacity = 0;
    let gw = TestGateway::launch_ready(&settings).await;
    eventually(WAIT, "/ready says redis down", async || match gw.ready_redis().await {
        (200, redis) if redis == "down" => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .await;
    let user = users_of(MODEL_A).next().expect("a control user");
    for _ in 0..3 {
        assert_eq!(source(&gw.rec_checked(user, &a_v1(user)).await), "store");
    }

    tokio::task::block_in_place(|| redis.restart());
    eventually(Duration::from_secs(8), "Redis hits once Redis is up", async || {
        let body = gw.rec_checked(user, &a_v1(user)).await;
        if source(&body) == "redis" {
            Ok(())
        } else {
            Err(body.to_string())
        }
    })
    .await;
    let (status, state) = gw.ready_redis().await;
    assert_eq!((status, state.as_str()), (200, "up"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_subscribe_again_after_redis_restarts() {
    let mut redis = RedisServer::start();
    let world = World::new();
    // Generations are polled once a minute: only pub/sub can tell B within the test.
    let mut settings = world.settings(&redis.url());
    settings.experiments.reload_interval = Duration::from_secs(60);
    let a = TestGateway::launch_up(&settings).await;
    let b = TestGateway::launch_up(&settings).await;
    wait_subscribers(&redis, 2, WAIT).await;
    let mut users = users_of(MODEL_A);
    let user = users.next().expect("a control user");
    assert_eq!(source(&b.rec(user).await), "store");
    assert_eq!(source(&b.rec(user).await), "local");

    tokio::task::block_in_place(|| redis.restart());
    wait_subscribers(&redis, 2, Duration::from_secs(8)).await;
    // A's command connection recovers with its next requests.
    eventually(Duration::from_secs(8), "A uses Redis again", async || {
        let fresh = users.next().expect("fresh users");
        a.rec(fresh).await;
        match a.metric("redis_up", &[]).await {
            1.0 => Ok(()),
            other => Err(format!("redis_up {other}")),
        }
    })
    .await;
    assert_invalidated(&a.invalidate(json!({ "model": MODEL_A })).await, &[(MODEL_A, 1)]);
    wait_not_local(&b, user, "B drops the list after Redis restarted").await;
}
