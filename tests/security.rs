//! Secrets and trust (README "Security"): a Redis password given in a URL never reaches a log
//! line, `/ready` or what the command line prints, through a Redis restart, on one node and on a
//! 3-node cluster; and with auth off, the start-up warning says what admin access from loopback
//! trusts and how to close it (the routes themselves are checked in `tests/operations.rs`).
//!
//! The gateway runs as the real `recgw serve` process (`common/serve.rs`) at `debug`, so that
//! every line it writes, stderr and stdout alike, is read; Redis runs with `requirepass` (and
//! `masterauth` on cluster nodes), so the password is one the gateway must send to work at all.

mod common;

use std::time::{Duration, Instant};

use common::cli::{output, recgw, report};
use common::gateway::{READY_TIMEOUT, SHARED_SECRET, eventually, sample};
use common::ports::ClosedPort;
use common::process::run_bounded;
use common::redis::{Config, Mode, Redis};
use common::serve::Process;

/// The Redis password: distinctive, so that any trace of it in the output is found.
const PASSWORD: &str = "rEd1s-Pa55w0rd-c0ff33-7e57";

/// How a password in a URL is printed instead.
const MASK: &str = "***";

/// [`Redis::start_with`] the [`PASSWORD`], from the multi-threaded runtime.
fn redis_with_password(mode: Mode) -> Redis {
    let config = Config {
        password: Some(PASSWORD.to_string()),
        ..Config::default()
    };
    tokio::task::block_in_place(|| Redis::start_with(mode, &config))
}

/// `recgw serve` over the demo in `dir`, with `redis` as its cache and counts, logging at
/// `debug`.
fn serve_with(redis: &Redis, dir: &std::path::Path) -> Process {
    let url = redis.url();
    Process::demo(
        dir,
        &[
            ("RUST_LOG", "debug"),
            ("RECGW__CACHE__REDIS_URL", &url),
            ("RECGW__TRACKING__SECRET", SHARED_SECRET),
        ],
    )
}

/// Waits until `process` answers `/ready` 200 and `/metrics` says `redis_up 1`; returns the
/// `/ready` body.
async fn ready_with_redis(process: &Process) -> String {
    eventually(READY_TIMEOUT, "ready with Redis up", async || {
        let ready = process.get("/ready").await;
        let metrics = process.get("/metrics").await;
        if ready.status == 200 && sample(&metrics.body, "redis_up", &[]) == 1.0 {
            Ok(ready.body)
        } else {
            Err(format!("{} {}", ready.status, ready.body))
        }
    })
    .await
}

/// The gateway given `redis://:{password}@…` prints the URL of every node it connects to
/// (the cluster's nodes at start, the node the invalidation subscriber lost at a restart), and
/// none of them holds the password; nor does `/ready`.
async fn a_redis_password_is_never_printed(mode: Mode) {
    let mut redis = redis_with_password(mode);
    if mode == Mode::Cluster {
        // Away at start, so that the gateway also says whom it cannot reach.
        tokio::task::block_in_place(|| redis.stop());
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut process = serve_with(&redis, dir.path());
    if mode == Mode::Cluster {
        process.logged("Redis Cluster unreachable").await;
        tokio::task::block_in_place(|| redis.restart());
        process.logged("connected to Redis Cluster").await;
    }
    let before = ready_with_redis(&process).await;

    // A restart: every connection is lost and made again, and the invalidation subscriber
    // says which node it lost.
    tokio::task::block_in_place(|| redis.restart());
    let lost = process.logged("invalidation subscription lost; reconnecting").await;
    let after = ready_with_redis(&process).await;
    // The subscriber back on its node, and a flush or two past the restart.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let sigterm_at = Instant::now();
    process.sigterm();
    let exit = process.exit(sigterm_at).await;
    let log = process.log();
    assert_eq!(exit.code(), Some(0), "{log}");
    for (what, text) in [
        ("the log", &log),
        ("/ready", &before),
        ("/ready after the restart", &after),
    ] {
        assert!(!text.contains(PASSWORD), "{what} holds the Redis password:\n{text}");
    }
    // The URLs were printed, without the password.
    let node = lost["fields"]["node"].as_str().expect("the lost node named");
    let ports: Vec<u16> = redis.servers().iter().map(|s| s.port()).collect();
    assert!(
        ports
            .iter()
            .any(|port| node == format!("redis://:{MASK}@127.0.0.1:{port}")),
        "{node} is none of the nodes {ports:?}, masked"
    );
    if mode == Mode::Cluster {
        let connected = process.logged("connected to Redis Cluster").await;
        let nodes = connected["fields"]["nodes"].as_str().expect("the nodes named");
        for port in ports {
            assert!(
                nodes.contains(&format!("redis://:{MASK}@127.0.0.1:{port}")),
                "node {port} not in {nodes}"
            );
        }
    }
}

redis_modes! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_redis_password_is_never_printed {
        a_redis_password_is_never_printed_on_one_node => Node,
        a_redis_password_is_never_printed_on_a_cluster => Cluster,
    }
}

/// What the command line prints about a URL with credentials leaves them out: `recgw report`
/// failing to reach its gateway (the URL is in its error), and `recgw serve` refusing a Redis
/// URL it cannot parse.
#[test]
fn the_command_line_prints_no_password_of_a_url() {
    let closed = ClosedPort::hold();
    let gateway = format!("http://ops:{PASSWORD}@127.0.0.1:{}", closed.port());
    let failed = report(&["home-als-rank", "--url", &gateway]);
    let printed = output(&failed);
    assert!(!failed.success(), "{printed}");
    assert!(
        !printed.contains(PASSWORD),
        "recgw report printed the password:\n{printed}"
    );
    assert!(
        printed.contains(&format!("http://ops:{MASK}@127.0.0.1:{}", closed.port())),
        "the URL is named, masked:\n{printed}"
    );

    let mut serve = recgw(&["serve"]);
    serve
        .env("RECGW__SERVER__LISTEN", "127.0.0.1:0")
        .env(
            "RECGW__CACHE__REDIS_URL",
            format!("redis://:{PASSWORD}@127.0.0.1:not-a-port"),
        )
        .env("RECGW__TRACKING__SECRET", SHARED_SECRET);
    let refused = run_bounded(&mut serve, b"", Duration::from_secs(30));
    let printed = output(&refused);
    assert!(!refused.success(), "{printed}");
    assert!(printed.contains("cache.redis_url"), "{printed}");
    assert!(
        !printed.contains(PASSWORD),
        "recgw serve printed the password:\n{printed}"
    );
}

/// With auth off, the start-up warning names what loopback admin access trusts (every local
/// process, a sidecar's every request) and the setting that closes it, and says when it is
/// closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_off_warning_names_the_loopback_risk_and_its_setting() {
    for (loopback_admin, says) in [
        (
            "true",
            ["every local process", "sidecar", "auth.loopback_admin = false"],
        ),
        (
            "false",
            ["admin routes answer nobody", "auth.loopback_admin = false", "admin key"],
        ),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut process = Process::demo(dir.path(), &[("RECGW__AUTH__LOOPBACK_ADMIN", loopback_admin)]);
        // Answering, so its SIGTERM handler is in place.
        assert_eq!(process.get("/health").await.status, 200);
        let sigterm_at = Instant::now();
        process.sigterm();
        let exit = process.exit(sigterm_at).await;
        let log = process.log();
        assert_eq!(exit.code(), Some(0), "{log}");
        let warning = log
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|line| line["level"] == "WARN")
            .filter_map(|line| line["fields"]["message"].as_str().map(String::from))
            .find(|message| message.starts_with("AUTH IS OFF"))
            .unwrap_or_else(|| panic!("no AUTH IS OFF warning:\n{log}"));
        for said in says {
            assert!(
                warning.contains(said),
                "loopback_admin = {loopback_admin}: {said:?} not in {warning}"
            );
        }
    }
}
