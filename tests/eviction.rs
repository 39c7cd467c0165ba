//! A counts' Redis that may evict them (README "Failure behaviour", `results.eviction_check`),
//! on one node and on a 3-node cluster: `results.redis_url` defaults to the cache's Redis, and a
//! cache runs `allkeys-lru`, where counts, event claims and sequence numbers would vanish.
//!
//! 1. Started on `allkeys-lru`, and again after a restart onto it: `/ready` 503 naming every
//!    node's policy, events refused `counts_unavailable`, nothing written to Redis; the
//!    exposures are held and arrive, exactly, once Redis runs `noeviction`.
//! 2. A Redis whose `CONFIG` is renamed away (as managed providers do): its policy cannot be
//!    read, so by default the counts are held and `/ready` says how to go on; with
//!    `results.eviction_check = "warn"` the gateway says so at start, in its log and in
//!    `/ready`, and counts into it.

mod common;

use std::ops::Range;
use std::time::Duration;

use common::gateway::{
    DemoCopy, READY_TIMEOUT, Reply, SHARED_SECRET, TestGateway, assert_error, eventually, http_client, send,
};
use common::page::Page;
use common::redis::{Config, Mode, Redis};
use common::serve::Process;
use reqwest::Method;
use serde_json::{Value, json};

/// The policy of a cache, which must not hold counts.
const EVICTING: [&str; 2] = ["--maxmemory-policy", "allkeys-lru"];
/// `CONFIG` renamed to nothing: the command does not exist.
const NO_CONFIG: [&str; 3] = ["--rename-command", "CONFIG", ""];
/// The demo experiment's results.
const RESULTS: &str = "/experiments/home-als-rank/results";
/// Longer than two flushes (one a second): what is held has had its chances to be written.
const FLUSHES: Duration = Duration::from_millis(2500);

/// A Redis `Config` of these directives, without a password.
fn directives(args: &[&str]) -> Config {
    Config {
        args: args.iter().map(|a| a.to_string()).collect(),
        ..Config::default()
    }
}

/// `GET path` of the gateway at `base`.
async fn get(base: &str, path: &str) -> Reply {
    send(&http_client(), Method::GET, &format!("{base}{path}"), &[], None)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Serves `users` on `home` by the gateway at `base` (in this process or not), none of them
/// the QA override, so each is an exposure counted.
async fn serve(base: &str, users: Range<u32>) -> Vec<Page> {
    let mut pages = Vec::new();
    for user in users {
        let path = format!("/recommendations/{user}?placement=home");
        let page = Page::read(&user.to_string(), &format!("GET {path}"), &get(base, &path).await).expect_items();
        assert!(!page.forced, "{}", page.body);
        pages.push(page);
    }
    pages
}

/// `POST /events` of an impression on each page's first item, with ids, so sending them
/// again is safe.
async fn post_impressions(base: &str, pages: &[Page]) -> Reply {
    let events: Vec<Value> = pages
        .iter()
        .map(|p| json!({ "type": "impression", "tracking_token": p.token, "item_id": p.items[0], "event_id": format!("i-{}", p.user) }))
        .collect();
    send(
        &http_client(),
        Method::POST,
        &format!("{base}/events"),
        &[],
        Some(&json!({ "events": events })),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Asserts `reply` is a 503 `counts_unavailable` ([`assert_error`]); returns its message.
fn counts_unavailable(reply: &Reply, what: &str) -> String {
    assert_error(reply, 503, "counts_unavailable", what);
    reply.json()["message"].as_str().expect("a message").to_string()
}

/// `(exposures, impressions)` of the demo experiment, both arms; `Err` while the results are
/// not available.
async fn totals(base: &str) -> Result<(u64, u64), String> {
    let reply = get(base, RESULTS).await;
    if reply.status != 200 {
        return Err(format!("{} {}", reply.status, reply.body));
    }
    let arms = reply.json()["arms"].as_array().expect("arms").clone();
    let sum = |field: &str| arms.iter().map(|a| a[field].as_u64().expect(field)).sum();
    Ok((sum("exposures"), sum("impressions")))
}

/// Waits until the results say `want`.
async fn counted(base: &str, want: (u64, u64)) {
    eventually(READY_TIMEOUT, &format!("results {want:?}"), async || {
        match totals(base).await? {
            found if found == want => Ok(()),
            found => Err(format!("{found:?}")),
        }
    })
    .await;
}

/// Waits until `/ready` answers `status` with every model loaded and a body `check` accepts;
/// returns the body.
async fn ready(base: &str, status: u16, check: impl Fn(&Value) -> bool) -> Value {
    eventually(READY_TIMEOUT, &format!("/ready {status}"), async || {
        let reply = get(base, "/ready").await;
        let body = reply.json();
        let loaded = body["models"]
            .as_array()
            .is_some_and(|models| models.iter().all(|m| m["version"].is_string()));
        if reply.status == status && loaded && check(&body) {
            Ok(body)
        } else {
            Err(format!("{} {body}", reply.status))
        }
    })
    .await
}

/// `/ready` 503 because the counts are held, naming every node of `redis` and `finding`.
///
/// Waited for as a whole: a cluster restarts one node at a time, so the check that first finds
/// an evicting node may run before the last node is back, and names only those it read; the
/// next check (every reload interval) names them all.
async fn refused(base: &str, redis: &Redis, finding: &str) -> String {
    let nodes: Vec<String> = redis
        .servers()
        .iter()
        .map(|server| format!("127.0.0.1:{}", server.port()))
        .collect();
    let body = ready(base, 503, |body| {
        body["counts_error"]
            .as_str()
            .is_some_and(|e| e.contains(finding) && nodes.iter().all(|node| e.contains(node)))
    })
    .await;
    assert!(body["counts_warning"].is_null(), "{body}");
    body["counts_error"].as_str().expect("counts_error").to_string()
}

/// Nothing of the results, and no event claim, was written to `redis`.
fn nothing_written(redis: &Redis) {
    for pattern in ["recgw:results:*", "recgw:seen:*"] {
        let keys = tokio::task::block_in_place(|| redis.keys(pattern));
        assert!(keys.is_empty(), "written while refused: {keys:?}");
    }
}

async fn an_evicting_counts_redis_holds_the_counts(mode: Mode) {
    let mut redis = tokio::task::block_in_place(|| Redis::start_with(mode, &directives(&EVICTING)));
    let demo = DemoCopy::new();
    let mut settings = demo.settings(&redis.url());
    // How often the policy is checked again beside reconnections.
    settings.experiments.reload_interval = Duration::from_millis(200);
    let gw = TestGateway::launch(&settings).await;
    let base = gw.base();

    // Refused at start: held, refused, written nowhere.
    let error = refused(&base, &redis, "maxmemory-policy allkeys-lru").await;
    let first = serve(&base, 0..30).await;
    counts_unavailable(&post_impressions(&base, &first).await, "events while refused");
    let message = counts_unavailable(&get(&base, RESULTS).await, "results while refused");
    assert!(message.contains("allkeys-lru"), "the results say why: {message}");
    tokio::time::sleep(FLUSHES).await;
    nothing_written(&redis);

    // Redeployed with noeviction: ready, and what was held arrives; the refused events are
    // accepted when sent again.
    tokio::task::block_in_place(|| redis.restart_with(&Config::default()));
    ready(&base, 200, |body| body["counts_error"].is_null()).await;
    counted(&base, (30, 0)).await;
    let again = post_impressions(&base, &first).await;
    assert_eq!(again.status, 202, "{}", again.body);
    assert_eq!(again.json()["accepted"], 30, "{}", again.body);
    counted(&base, (30, 30)).await;

    // Restarted onto an evicting policy again: found at the reconnection, held again.
    tokio::task::block_in_place(|| redis.restart_with(&directives(&EVICTING)));
    refused(&base, &redis, "maxmemory-policy allkeys-lru").await;
    let second = serve(&base, 100..125).await;
    counts_unavailable(&post_impressions(&base, &second).await, "events while refused again");
    tokio::time::sleep(FLUSHES).await;
    nothing_written(&redis);
    tokio::task::block_in_place(|| redis.restart_with(&Config::default()));
    ready(&base, 200, |body| body["counts_error"].is_null()).await;
    // The restarts emptied Redis: what it holds is what was held since.
    counted(&base, (25, 0)).await;
    eprintln!("{mode:?}: {error}");
    gw.stop().await;
}

redis_modes! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    an_evicting_counts_redis_holds_the_counts {
        an_evicting_counts_redis_holds_the_counts_on_one_node => Node,
        an_evicting_counts_redis_holds_the_counts_on_a_cluster => Cluster,
    }
}

async fn a_counts_redis_without_config_is_refused_or_warned_about(mode: Mode) {
    let redis = tokio::task::block_in_place(|| Redis::start_with(mode, &directives(&NO_CONFIG)));
    let demo = DemoCopy::new();

    // By default the policy must be read: held, and /ready says how to go on.
    let gw = TestGateway::launch(&demo.settings(&redis.url())).await;
    let error = refused(&gw.base(), &redis, "cannot be read").await;
    assert!(error.contains("results.eviction_check = \"warn\""), "{error}");
    gw.stop().await;

    // With the setting, warned about at start and in /ready, and counted into.
    let dir = tempfile::tempdir().expect("tempdir");
    let url = redis.url();
    let mut process = Process::demo(
        dir.path(),
        &[
            ("RECGW__CACHE__REDIS_URL", &url),
            ("RECGW__TRACKING__SECRET", SHARED_SECRET),
            ("RECGW__RESULTS__EVICTION_CHECK", "warn"),
        ],
    );
    let base = process.base();
    let body = ready(&base, 200, |body| body["counts_warning"].is_string()).await;
    let warning = body["counts_warning"].as_str().expect("counts_warning");
    assert!(
        warning.contains("cannot be read") && warning.contains("counted into anyway"),
        "{body}"
    );
    assert!(body["counts_error"].is_null(), "{body}");
    serve(&base, 0..20).await;
    counted(&base, (20, 0)).await;

    let sigterm_at = std::time::Instant::now();
    process.sigterm();
    let exit = process.exit(sigterm_at).await;
    let log = process.log();
    assert_eq!(exit.code(), Some(0), "{log}");
    let warnings: Vec<String> = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["level"] == "WARN")
        .filter_map(|line| line["fields"]["message"].as_str().map(String::from))
        .collect();
    for said in ["cannot be read", "share the cache's Redis"] {
        assert!(
            warnings.iter().any(|w| w.contains(said)),
            "no warning says {said:?}: {warnings:#?}"
        );
    }
}

redis_modes! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_counts_redis_without_config_is_refused_or_warned_about {
        a_counts_redis_without_config_is_refused_or_warned_about_on_one_node => Node,
        a_counts_redis_without_config_is_refused_or_warned_about_on_a_cluster => Cluster,
    }
}
