//! Operating the gateway safely (issue 6; ARCHITECTURE.md §2 and §5): API keys and roles on every
//! route, hot reload of the experiments folder, request ids, the per-request timeout and a
//! graceful shutdown of the real binary on SIGTERM.
//!
//! Gateways run in this process on free loopback ports (except the shutdown test, which runs
//! the `recgw` binary as a child process), over copies of the repository's own `experiments/`
//! and its `models/`. Redis, where a test needs a slow one, is a private `redis-server` made
//! slow with `DEBUG SLEEP` from a second client. Every wait is bounded.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::assignment::bucket;
use common::gateway;
use common::gateway::{
    READY_TIMEOUT, Reply, TestGateway, assert_error, copy_dir, eventually, http_client, repo, sample, send,
};
use common::process::{run_bounded, try_run_bounded};
use common::redis::RedisServer;
use common::serve::Process;
use recgw::auth::{KeySettings, Role, hash_key};
use recgw::config::Settings;
use reqwest::Method;
use serde_json::{Value, json};
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The demo experiment (`experiments/home-als-rank.toml`, 50/50, salt = id).
const EXPERIMENT: &str = "home-als-rank";
const EXPERIMENT_FILE: &str = "home-als-rank.toml";
/// Keys of the auth matrix; settings hold only their digests.
const CLIENT_KEY: &str = "web-app-key-5e1f0c";
const ADMIN_KEY: &str = "ops-team-key-9a7b22";
const WRONG_KEY: &str = "nobody-configured-this-key";
/// Bound of the waits for something that should happen within a reload interval or two.
const WAIT: Duration = Duration::from_secs(5);

/// Settings over the repository's demo models and `experiments`, on a free loopback port.
fn settings_over(experiments: &Path) -> Settings {
    gateway::settings(experiments, &repo().join("models"), "100ms")
}

impl TestGateway {
    /// `POST /admin/reload` (no key: these gateways run with auth off, called from loopback).
    async fn reload(&self) -> Reply {
        self.call(Method::POST, "/admin/reload", None, None).await
    }
}

/// The error code of `answer`, which must be an error of the gateway's one shape
/// ([`assert_error`]), whatever its status and code.
fn error_code(answer: &Reply, what: &str) -> String {
    assert_error(answer, answer.status, None, what);
    answer.json()["error"].as_str().expect("an error code").to_string()
}

/// Sends `method path` with `body` as a caller holding `key` would: in `X-API-Key`, or, on the
/// results UI (`ui`), in the sign-in cookie, as a browser does. Redirects are not followed, so
/// a page's 303 to the sign-in form is seen; the answer is checked against `openapi.yaml`.
async fn call_as(gw: &TestGateway, method: Method, path: &str, key: Option<&str>, body: &Body, ui: bool) -> Reply {
    use base64::Engine;
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    let mut request = client.request(method, gw.url(path));
    request = match (key, ui) {
        (Some(key), true) => request.header(
            "cookie",
            format!(
                "recgw_key={}",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
            ),
        ),
        (Some(key), false) => request.header("x-api-key", key),
        (None, _) => request,
    };
    request = match body {
        Body::Empty => request,
        Body::Json(value) => request.json(value),
        Body::Form(form) => request
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.clone()),
    };
    gateway::exchange(&client, request)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

// ---------------------------------------------------------------------------------------------
// 1. Auth matrix
// ---------------------------------------------------------------------------------------------

/// Who may call a route (ARCHITECTURE.md §5, README "Security").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Probes and docs: anyone.
    Open,
    /// Client apps: a client or admin key.
    Client,
    /// Operators: an admin key.
    Admin,
}

/// The access the gateway's route table declares for a route (the one table auth, limits,
/// metrics and the log read); a served route missing from it fails the test. The matrix below
/// then checks the running gateway enforces exactly that, and the document says it.
fn access(template: &str) -> Access {
    let route = recgw::api::route(template);
    assert_ne!(route, &recgw::api::OTHER, "route {template} is not in the route table");
    match route.role {
        None => Access::Open,
        Some(Role::Client) => Access::Client,
        Some(Role::Admin) => Access::Admin,
    }
}

/// One route of the API: method and path template.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Route {
    method: String,
    template: String,
}

/// The body of a request of the matrix.
#[derive(Debug, Clone)]
enum Body {
    /// None.
    Empty,
    /// JSON, as the API takes.
    Json(Value),
    /// A form of the results UI (`application/x-www-form-urlencoded`).
    Form(String),
}

impl Route {
    /// Whether the route is the results UI's, whose callers are browsers: they present their
    /// key in the sign-in cookie, and a page sends one without it to the sign-in form (303)
    /// rather than refuse it, as its forms answer 303 when done.
    fn is_ui(&self) -> bool {
        self.template.starts_with("/ui")
    }

    /// The status of the route's success: 303 for a form of the results UI, else 200.
    fn done(&self) -> u16 {
        if self.is_ui() && self.method == "post" {
            303
        } else {
            200
        }
    }

    /// A valid concrete request for the route: path with parameters and query, and body.
    fn request(&self) -> (Method, String, Body) {
        let path = self
            .template
            .replace("{user_id}", "42")
            .replace("{id}", EXPERIMENT)
            .replace("{arm}", "treatment");
        let path = match self.template.as_str() {
            "/recommendations/{user_id}" => format!("{path}?placement=home&limit=5"),
            _ => path,
        };
        let body = match (self.method.as_str(), self.template.as_str()) {
            ("post", "/events") => Body::Json(json!({ "events": [] })),
            ("post", "/admin/cache/invalidate") => Body::Json(json!({ "experiment": EXPERIMENT })),
            ("post", "/ui/sign-in") => Body::Form(format!("key={CLIENT_KEY}&next=%2Fui%2F")),
            ("post", "/admin/reload" | "/admin/experiments/{id}/arms/{arm}/resume" | "/ui/sign-out") => Body::Empty,
            ("post", "/ui/experiments/{id}/arms/{arm}/resume") => Body::Empty,
            ("post", other) => panic!("no valid body known for POST {other}: add one"),
            _ => Body::Empty,
        };
        let method = Method::from_bytes(self.method.to_ascii_uppercase().as_bytes()).expect("method");
        (method, path, body)
    }
}

/// Every operation in `/openapi.json`, checking its security requirement against [`access`],
/// plus `/openapi.json` and `/docs` themselves; also checks every path of the committed
/// `openapi.yaml` is served.
fn routes(spec: &Value) -> Vec<Route> {
    let paths = spec["paths"].as_object().expect("paths in /openapi.json");
    let mut routes = Vec::new();
    for (template, operations) in paths {
        let operations = operations.as_object().expect("operations");
        for (method, operation) in operations {
            if !["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                continue;
            }
            // A key in `X-API-Key`, or on the results UI in its sign-in cookie.
            let declares_key = operation["security"].as_array().is_some_and(|s| {
                s.iter()
                    .any(|r| r.get("ApiKey").is_some() || r.get("SignInCookie").is_some())
            });
            let route = Route {
                method: method.clone(),
                template: template.clone(),
            };
            assert_eq!(
                declares_key,
                access(template) != Access::Open,
                "{method} {template}: the spec's key requirement does not match its access"
            );
            routes.push(route);
        }
    }
    let committed = std::fs::read_to_string(repo().join("openapi.yaml")).expect("openapi.yaml");
    let committed: BTreeSet<&str> = committed
        .lines()
        .filter(|l| l.starts_with("  /") && l.ends_with(':'))
        .map(|l| l.trim().trim_end_matches(':'))
        .collect();
    let served: BTreeSet<&str> = paths.keys().map(String::as_str).collect();
    // Equality of the two is another test's job (the spec may be regenerated separately); the
    // matrix only needs every committed route to be served and covered.
    let missing: Vec<&&str> = committed.difference(&served).collect();
    assert!(missing.is_empty(), "openapi.yaml routes not served: {missing:?}");
    for template in ["/openapi.json", "/docs"] {
        routes.push(Route {
            method: "get".into(),
            template: template.into(),
        });
    }
    routes.sort();
    routes
}

fn keyed_settings() -> Settings {
    let mut settings = settings_over(&repo().join("experiments"));
    settings.auth.keys = vec![
        KeySettings {
            sha256: hash_key(CLIENT_KEY),
            role: Role::Client,
            name: "web".into(),
        },
        KeySettings {
            sha256: hash_key(ADMIN_KEY),
            role: Role::Admin,
            name: "ops".into(),
        },
    ];
    settings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_kind_of_caller_as_documented() {
    let gw = TestGateway::launch_ready(&keyed_settings()).await;
    let spec = gw.ok("/openapi.json").await;
    let routes = routes(&spec);
    for expected in [
        "/recommendations/{user_id}",
        "/events",
        "/experiments",
        "/experiments/{id}",
        "/experiments/{id}/assignment/{user_id}",
        "/stats",
        "/health",
        "/ready",
        "/metrics",
        "/admin/reload",
        "/admin/cache/invalidate",
    ] {
        assert!(
            routes.iter().any(|r| r.template == expected),
            "{expected} is missing from /openapi.json: {routes:?}"
        );
    }

    let callers = [
        ("no key", None),
        ("client key", Some(CLIENT_KEY)),
        ("admin key", Some(ADMIN_KEY)),
        ("wrong key", Some(WRONG_KEY)),
    ];
    let mut wrong = Vec::new();
    let mut checked = 0;
    for route in &routes {
        let (method, path, body) = route.request();
        let access = access(&route.template);
        for (caller, key) in callers {
            let answer = call_as(&gw, method.clone(), &path, key, &body, route.is_ui()).await;
            let status = answer.status;
            let fits = match (access, caller) {
                (Access::Open, _) => status == route.done(),
                (Access::Client, "client key" | "admin key") => (200..300).contains(&status),
                // A page sends a browser without its cookie to the sign-in form.
                (Access::Client, _) if route.is_ui() => status == 303,
                (Access::Client, _) => status == 401,
                (Access::Admin, "admin key") => status == route.done(),
                (Access::Admin, "client key") => status == 403,
                (Access::Admin, _) => status == 401,
            };
            let what = format!("{method} {path} with {caller}");
            if !fits {
                wrong.push(format!("{what} ({access:?} route): {status} {}", answer.body));
            }
            if status == 401 || status == 403 {
                error_code(&answer, &what);
                assert!(!answer.body.contains(CLIENT_KEY) && !answer.body.contains(WRONG_KEY));
            }
            checked += 1;
        }
    }
    assert!(wrong.is_empty(), "unexpected statuses:\n{}", wrong.join("\n"));
    assert!(checked >= 13 * 4, "{checked} calls");

    // The admin key reloads for real (the folder is unchanged) and invalidates the models.
    let reload = gw
        .call(Method::POST, "/admin/reload", Some(ADMIN_KEY), None)
        .await
        .json();
    assert_eq!(reload["status"], "unchanged", "{reload}");
    let listed = gw
        .call(Method::GET, "/experiments", Some(CLIENT_KEY), None)
        .await
        .json();
    assert_eq!(reload["digest"], listed["digest"], "{reload} vs {listed}");
    let invalidated = gw
        .call(
            Method::POST,
            "/admin/cache/invalidate",
            Some(ADMIN_KEY),
            Some(&json!({ "experiment": EXPERIMENT })),
        )
        .await
        .json();
    let models: Vec<&str> = invalidated["models"]
        .as_array()
        .expect("models")
        .iter()
        .filter_map(|m| m["model"].as_str())
        .collect();
    assert_eq!(models, ["als-v1", "als-v2"], "{invalidated}");
}

/// Paths that are not `path` (a concrete path of the route `template`) but that a looser
/// matcher could still take for it: each parameter empty, each `/` doubled, a `/` added at the
/// end, a literal segment with its first character percent-encoded. None is a route. (Dot
/// segments are left out: the client resolves them before sending, as proxies do.)
fn odd_paths(template: &str, path: &str) -> Vec<String> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let parameters: Vec<bool> = template
        .trim_start_matches('/')
        .split('/')
        .map(|s| s.starts_with('{'))
        .collect();
    let owned = || segments.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let join = |segments: Vec<String>| format!("/{}", segments.join("/"));
    let mut odd = vec![format!("{path}/")];
    for i in 0..segments.len() {
        let mut changed = owned();
        if parameters[i] {
            changed[i] = String::new();
        } else {
            let first = changed[i].remove(0);
            changed[i] = format!("%{:02X}{}", first as u32, changed[i]);
        }
        odd.push(join(changed));
        let mut doubled = owned();
        doubled.insert(i, String::new());
        odd.push(join(doubled));
    }
    odd
}

/// No keyed route is reached without its key through a path the route table does not hold
/// (an empty, doubled or percent-encoded segment): whoever calls, such a path gets the
/// 404 of an unknown path, never an answer of the route's handler, so the key check and the
/// dispatch agree on what the route is. A `/` percent-encoded inside a segment is a segment
/// of its own, and may make another route of the same prefix; a caller without its key is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_outside_the_route_table_reach_no_handler() {
    let gw = TestGateway::launch_ready(&keyed_settings()).await;
    let spec = gw.ok("/openapi.json").await;
    let unknown = gw.get("/no/such/route").await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    let callers = [
        ("no key", None),
        ("wrong key", Some(WRONG_KEY)),
        ("client key", Some(CLIENT_KEY)),
        ("admin key", Some(ADMIN_KEY)),
    ];
    let mut wrong = Vec::new();
    let mut checked = 0;
    // `/docs/*` takes any rest of the path, and needs no key.
    for route in routes(&spec).into_iter().filter(|r| r.template != "/docs") {
        let (method, path, body) = route.request();
        let ui = route.is_ui();
        let (path, query) = match path.split_once('?') {
            Some((path, query)) => (path.to_string(), format!("?{query}")),
            None => (path, String::new()),
        };
        let access = access(&route.template);
        let mut merged = Vec::new();
        for (i, _) in path.match_indices('/').skip(1) {
            merged.push(format!("{}%2F{}", &path[..i], &path[i + 1..]));
        }
        let mut odd = odd_paths(&route.template, &path);
        // `/ui/` is the list's address to browsers (the gateway reads it as `/ui`).
        odd.retain(|p| p != "/ui/");
        for (odd_path, routed) in odd.iter().map(|p| (p, false)).chain(merged.iter().map(|p| (p, true))) {
            let target = format!("{odd_path}{query}");
            for (caller, key) in callers {
                let answer = call_as(&gw, method.clone(), &target, key, &body, ui).await;
                let what = format!("{method} {target} ({access:?} route) with {caller}");
                checked += 1;
                let unknown_path = answer.status == 404 && answer.body == unknown.body;
                if !routed {
                    if !unknown_path {
                        wrong.push(format!("{what}: {} {}", answer.status, answer.body));
                    }
                    continue;
                }
                // A merged segment may make another keyed route of the same prefix (an
                // experiment named `x/results`): refused to a caller without a key, and to a
                // client key where the prefix is an admin route's.
                let lacks_key =
                    matches!(caller, "no key" | "wrong key") || (caller == "client key" && access == Access::Admin);
                let refused =
                    [401, 403].contains(&answer.status) || (ui && answer.status == 303 && method == Method::GET);
                if lacks_key && !(unknown_path || refused) {
                    wrong.push(format!("{what}: {} {}", answer.status, answer.body));
                }
                if answer.status >= 400 {
                    error_code(&answer, &what);
                }
            }
        }
    }
    assert!(wrong.is_empty(), "answered past the route table:\n{}", wrong.join("\n"));
    assert!(checked >= 300, "{checked} calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keys_client_routes_are_open_and_admin_routes_answer_loopback_only() {
    let mut settings = settings_over(&repo().join("experiments"));
    settings.auth.keys.clear();
    let gw = TestGateway::launch_ready(&settings).await;
    let spec = gw.ok("/openapi.json").await;
    let mut wrong = Vec::new();
    for route in routes(&spec) {
        let (method, path, body) = route.request();
        let answer = call_as(&gw, method.clone(), &path, None, &body, route.is_ui()).await;
        if answer.status != route.done() && !(200..300).contains(&answer.status) {
            wrong.push(format!(
                "{method} {path} from loopback: {} {}",
                answer.status, answer.body
            ));
        }
    }
    assert!(wrong.is_empty(), "with auth off:\n{}", wrong.join("\n"));

    // From a non-loopback address of this machine, admin routes are refused (403, JSON) while
    // client routes stay open.
    let Some(remote_ip) = RemoteAddress::acquire() else {
        return;
    };
    let ip = remote_ip.ip;
    settings.server.listen = SocketAddr::new(ip, 0);
    let remote = TestGateway::launch_ready(&settings).await;
    let answer = remote.get(&format!("/experiments/{EXPERIMENT}")).await;
    assert_eq!(answer.status, 200, "client route from {ip}: {}", answer.body);
    for (path, body) in [
        ("/admin/reload", None),
        ("/admin/cache/invalidate", Some(json!({ "experiment": EXPERIMENT }))),
    ] {
        let answer = remote.call(Method::POST, path, None, body.as_ref()).await;
        assert_eq!(
            answer.status, 403,
            "POST {path} from {ip} with auth off: {}",
            answer.body
        );
        error_code(&answer, path);
    }
}

/// Auth comes before input validation: a caller without a valid key learns nothing about the
/// API's parameters or body schema (issue 6: "Missing key → 401, wrong role → 403").
/// With auth off and `auth.loopback_admin = false` (a host where other processes, or a sidecar
/// proxy forwarding everyone's requests, share loopback), every admin route refuses a loopback
/// caller without a key with 403 JSON naming the setting, while client and open routes stay open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keys_and_with_loopback_admin_off_admin_routes_answer_nobody() {
    let mut settings = settings_over(&repo().join("experiments"));
    settings.auth.keys.clear();
    settings.auth.loopback_admin = false;
    let gw = TestGateway::launch_ready(&settings).await;
    let spec = gw.ok("/openapi.json").await;
    let mut wrong = Vec::new();
    let mut admin_routes = 0;
    for route in routes(&spec) {
        let (method, path, body) = route.request();
        let answer = call_as(&gw, method.clone(), &path, None, &body, route.is_ui()).await;
        let what = format!("{method} {path} from loopback without a key");
        let fits = match access(&route.template) {
            Access::Admin => {
                admin_routes += 1;
                answer.status == 403
                    && error_code(&answer, &what) == "forbidden"
                    && answer.json()["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("auth.loopback_admin"))
            }
            Access::Open | Access::Client => answer.status == route.done() || (200..300).contains(&answer.status),
        };
        if !fits {
            wrong.push(format!("{what}: {} {}", answer.status, answer.body));
        }
    }
    assert!(
        wrong.is_empty(),
        "with auth off and loopback_admin off:\n{}",
        wrong.join("\n")
    );
    assert!(admin_routes >= 3, "{admin_routes} admin routes tried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_is_checked_before_bodies_and_parameters_are_validated() {
    let gw = TestGateway::launch_ready(&keyed_settings()).await;
    let bogus = json!({ "bogus": 1 });
    let cases = [
        (Method::POST, "/events", None, Some(&bogus), 401),
        (Method::POST, "/admin/cache/invalidate", None, Some(&bogus), 401),
        (
            Method::POST,
            "/admin/cache/invalidate",
            Some(WRONG_KEY),
            Some(&bogus),
            401,
        ),
        (
            Method::POST,
            "/admin/cache/invalidate",
            Some(CLIENT_KEY),
            Some(&bogus),
            403,
        ),
        (
            Method::GET,
            "/recommendations/42?placement=home&limit=1000",
            None,
            None,
            401,
        ),
    ];
    let mut wrong = Vec::new();
    for (method, path, key, body, status) in cases {
        let answer = gw.call(method.clone(), path, key, body).await;
        if answer.status != status {
            wrong.push(format!(
                "{method} {path} key {key:?}: want {status}, got {} {}",
                answer.status, answer.body
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Set to `1` to skip the remote-caller checks on a machine where they cannot run (no
/// non-loopback address, and no right to add one); they fail otherwise rather than pass unseen.
const SKIP_REMOTE_CALLER: &str = "RECGW_SKIP_REMOTE_CALLER";

/// An IPv4 address of this machine that is not loopback, for a caller the gateway must treat as
/// remote (it counts all of 127.0.0.0/8 as loopback): the one the default route uses, or else one
/// of 198.18.0.0/16 (benchmarking addresses, never routed) added to `lo` for the test, which
/// needs root, and removed again on drop.
struct RemoteAddress {
    /// The address: the gateway listens on it, and a client connecting to it comes from it.
    ip: IpAddr,
    /// Whether the test added `ip` to `lo` itself, so dropping it must remove it.
    added: bool,
}

impl RemoteAddress {
    /// The address, or `None` (said on stderr) when none can be had and [`SKIP_REMOTE_CALLER`]
    /// is `1`; panics when none can be had otherwise.
    fn acquire() -> Option<RemoteAddress> {
        if let Some(ip) = Self::routed() {
            return Some(RemoteAddress { ip, added: false });
        }
        let problem = match Self::add() {
            Ok(address) => return Some(address),
            Err(problem) => problem,
        };
        let why = format!("no non-loopback IPv4 address, and none could be added to lo: {problem}");
        assert!(
            std::env::var(SKIP_REMOTE_CALLER).is_ok_and(|v| v == "1"),
            "{why}; run as root or set {SKIP_REMOTE_CALLER}=1 to skip the remote-caller checks"
        );
        eprintln!("{why}: the remote-caller checks are SKIPPED ({SKIP_REMOTE_CALLER}=1)");
        None
    }

    /// The local address of the default route, if any.
    fn routed() -> Option<IpAddr> {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
        // Connecting a UDP socket sends nothing; it only picks the local address of the route.
        socket.connect("192.0.2.1:9").ok()?;
        let ip = socket.local_addr().ok()?.ip();
        (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
    }

    /// Adds a `/32` of 198.18.0.0/16 to `lo`, chosen from the process id so that concurrent
    /// test runs take different ones, the next one along when that one is taken.
    fn add() -> Result<RemoteAddress, String> {
        let mut problem = String::new();
        for attempt in 0..8 {
            let n = std::process::id() + attempt;
            let ip = IpAddr::from([198, 18, (n / 254 % 256) as u8, (n % 254 + 1) as u8]);
            match Self::ip(&["addr", "add", &format!("{ip}/32"), "dev", "lo"]) {
                Ok(()) => return Ok(RemoteAddress { ip, added: true }),
                Err(e) => problem = e,
            }
        }
        Err(problem)
    }

    /// Runs `ip args`; `Err` says why it failed.
    fn ip(args: &[&str]) -> Result<(), String> {
        let finished = try_run_bounded(Command::new("ip").args(args), b"", Duration::from_secs(10))?;
        if finished.success() {
            Ok(())
        } else {
            Err(format!("ip {args:?}: {} {}", finished.status, finished.stderr.trim()))
        }
    }
}

impl Drop for RemoteAddress {
    fn drop(&mut self) {
        if self.added
            && let Err(e) = Self::ip(&["addr", "del", &format!("{}/32", self.ip), "dev", "lo"])
        {
            eprintln!("{} stays on lo: {e}", self.ip);
        }
    }
}

/// Runs the `recgw` binary with `args` and `stdin`; returns (success, stdout) within 20 s.
fn run_recgw(args: &[&str], stdin: &str) -> (bool, String) {
    let finished = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_recgw")).args(args),
        stdin.as_bytes(),
        Duration::from_secs(20),
    );
    (finished.success(), finished.stdout)
}

#[test]
fn hash_key_prints_the_digest_settings_hold() {
    for (stdin, key) in [
        ("s3cret-key\n", "s3cret-key"),
        ("no-newline", "no-newline"),
        ("windows\r\n", "windows"),
    ] {
        let (ok, stdout) = run_recgw(&["hash-key"], stdin);
        assert!(ok, "hash-key with {stdin:?} failed: {stdout}");
        assert_eq!(stdout.trim_end(), hash_key(key), "hash-key with {stdin:?}");
        assert_eq!(stdout.trim_end().len(), 64);
    }
    let (ok, stdout) = run_recgw(&["hash-key"], "");
    assert!(!ok, "an empty stdin is refused, not hashed: {stdout}");
}

// ---------------------------------------------------------------------------------------------
// 2. Hot reload
// ---------------------------------------------------------------------------------------------

/// A copy of the demo experiments folder that the test rewrites atomically (write a sibling
/// staging file, then rename), so the reloader never reads a half-written file.
struct Folder {
    root: TempDir,
    original: String,
}

impl Folder {
    fn new() -> Folder {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(root.path().join("staging")).expect("mkdir");
        copy_dir(&repo().join("experiments"), &root.path().join("experiments"));
        let original = std::fs::read_to_string(repo().join("experiments").join(EXPERIMENT_FILE)).expect("read");
        assert_eq!(
            original.matches("weight = 50.0").count(),
            2,
            "the demo experiment is 50/50:\n{original}"
        );
        assert!(!original.contains("salt"), "the demo salt is the id");
        Folder { root, original }
    }

    fn dir(&self) -> PathBuf {
        self.root.path().join("experiments")
    }

    fn write(&self, name: &str, text: &str) {
        let staged = self.root.path().join("staging").join(name);
        std::fs::write(&staged, text).expect("write staged file");
        std::fs::rename(&staged, self.dir().join(name)).expect("rename into the folder");
    }

    /// The demo experiment with weights `control`/`treatment` (percent).
    fn with_weights(&self, control: u16, treatment: u16) -> String {
        self.original
            .replacen("weight = 50.0", "weight = @C", 1)
            .replacen("weight = 50.0", "weight = @T", 1)
            .replace("@C", &format!("{control}.0"))
            .replace("@T", &format!("{treatment}.0"))
    }

    fn set_weights(&self, control: u16, treatment: u16) {
        self.write(EXPERIMENT_FILE, &self.with_weights(control, treatment));
    }
}

/// The arm §3.1 gives `user` when the control owns `control` percent.
fn arm_of(user: &str, control: u16) -> &'static str {
    if bucket(EXPERIMENT, user) < control * 100 {
        "control"
    } else {
        "treatment"
    }
}

fn users() -> Vec<String> {
    (0..200).map(|i| format!("user-{i}")).collect()
}

/// Asserts the assignment endpoint gives every user of `users` the arm of a `control`/`…`
/// split, with the bucket §3.1 computes.
async fn assert_assignments(gw: &TestGateway, users: &[String], control: u16, context: &str) {
    for user in users {
        let body = gw.ok(&format!("/experiments/{EXPERIMENT}/assignment/{user}")).await;
        assert_eq!(body["arm_bucket"], bucket(EXPERIMENT, user), "{context}: {body}");
        assert_eq!(body["in_experiment"], true, "{context}: {body}");
        assert_eq!(
            body["arm"],
            arm_of(user, control),
            "{context}: {user} with control at {control}%: {body}"
        );
        assert_eq!(body["arm_for_bucket"], arm_of(user, control), "{context}: {body}");
    }
}

/// The weights `/experiments/home-als-rank` shows.
async fn shown_weights(gw: &TestGateway) -> Vec<f64> {
    let body = gw.ok(&format!("/experiments/{EXPERIMENT}")).await;
    body["arms"]
        .as_array()
        .unwrap_or_else(|| panic!("arms: {body}"))
        .iter()
        .map(|a| a["weight"].as_f64().expect("weight"))
        .collect()
}

async fn wait_weights(gw: &TestGateway, control: u16, treatment: u16) -> Duration {
    let started = Instant::now();
    let want = vec![f64::from(control), f64::from(treatment)];
    eventually(WAIT, &format!("weights {want:?} in force"), async || {
        let shown = shown_weights(gw).await;
        if shown == want {
            Ok(())
        } else {
            Err(format!("{shown:?}"))
        }
    })
    .await;
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edited_weights_apply_broken_files_are_rejected_and_reloads_drop_nothing() {
    let folder = Folder::new();
    let mut settings = settings_over(&folder.dir());
    settings.experiments.reload_interval = Duration::from_millis(200);
    let gw = TestGateway::launch_ready(&settings).await;
    let users = users();
    let moving = users.iter().filter(|u| arm_of(u, 50) != arm_of(u, 90)).count();
    assert!(
        moving >= 20,
        "only {moving} of the users change arm from 50/50 to 90/10"
    );

    // (a) An edit is picked up by the interval, without any call.
    let d0 = gw.ok("/experiments").await["digest"]
        .as_str()
        .expect("digest")
        .to_string();
    assert_assignments(&gw, &users, 50, "the demo set").await;
    folder.set_weights(90, 10);
    let took = wait_weights(&gw, 90, 10).await;
    eprintln!("90/10 in force {took:?} after the edit (reload_interval 200ms)");
    assert_assignments(&gw, &users, 90, "after the edit to 90/10").await;
    for user in users.iter().take(20) {
        let body = gw.ok(&format!("/recommendations/{user}?placement=home")).await;
        assert_eq!(body["experiment"], EXPERIMENT, "{body}");
        assert_eq!(body["arm"], arm_of(user, 90), "{user}: {body}");
    }
    let d1 = gw.ok("/experiments").await["digest"]
        .as_str()
        .expect("digest")
        .to_string();
    assert_ne!(d0, d1, "the digest names the set in force");
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(&format!("experiments_info{{digest=\"{d1}\"}} 1")),
        "experiments_info shows {d1}:\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("experiments_info"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        !metrics.contains(&format!("experiments_info{{digest=\"{d0}\"}} 1")),
        "old digest still 1"
    );
    let answer = gw.reload().await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json()["status"], "unchanged", "{}", answer.body);
    assert_eq!(answer.json()["digest"], d1.as_str(), "{}", answer.body);

    // (b) A broken file (an unknown key, and weights that would move users) is rejected
    // whole, once, with the file named; the set in force keeps serving.
    let failures = sample(&gw.metrics().await, "config_reload_failures_total", &[]);
    folder.write(
        EXPERIMENT_FILE,
        &format!("colour = \"blue\"\n{}", folder.with_weights(50, 50)),
    );
    let answer = gw.reload().await;
    assert_eq!(answer.status, 422, "{}", answer.body);
    let (message, problems) = rejection(&answer);
    assert!(
        message.contains(EXPERIMENT_FILE) && message.contains("colour"),
        "the message names the file and the key: {}",
        answer.body
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains(EXPERIMENT_FILE) && p.contains("colour")),
        "a problem names the file and the key: {}",
        answer.body
    );
    assert_eq!(
        sample(&gw.metrics().await, "config_reload_failures_total", &[]),
        failures + 1.0
    );
    // Several reload intervals go by with the broken file in place.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(gw.reload().await.status, 422);
    assert_assignments(&gw, &users, 90, "with a broken file in the folder").await;
    assert_eq!(shown_weights(&gw).await, [90.0, 10.0]);
    assert_eq!(gw.ok("/experiments").await["digest"], d1.as_str());
    let after = sample(&gw.metrics().await, "config_reload_failures_total", &[]);
    assert_eq!(
        after,
        failures + 1.0,
        "config_reload_failures_total counts the rejected folder once, not at every check"
    );

    // A different breakage (invalid TOML, replacing the file in one step) counts once more, and
    // its problem carries the parser's line.
    folder.write(EXPERIMENT_FILE, &format!("{}\n[[arms]\n", folder.with_weights(50, 50)));
    let answer = gw.reload().await;
    assert_eq!(answer.status, 422, "{}", answer.body);
    let (_, problems) = rejection(&answer);
    let with_line = format!("{EXPERIMENT_FILE}:");
    assert!(
        problems.iter().any(|p| p
            .split_once(&with_line)
            .is_some_and(|(_, rest)| rest.starts_with(|c: char| c.is_ascii_digit()))),
        "a problem names the file and the line: {}",
        answer.body
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_assignments(&gw, &users, 90, "with invalid TOML in the folder").await;
    assert_eq!(
        sample(&gw.metrics().await, "config_reload_failures_total", &[]),
        failures + 2.0,
        "a new set of problems is counted once"
    );

    // Fixing the file applies it (by the interval or the call, whichever comes first).
    folder.set_weights(70, 30);
    let answer = gw.reload().await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let fixed = answer.json();
    let d2 = fixed["digest"].as_str().expect("digest").to_string();
    assert_ne!(d2, d1, "{fixed}");
    match fixed["status"].as_str() {
        Some("applied") => assert_eq!(fixed["previous"], d1.as_str(), "{fixed}"),
        Some("unchanged") => {}
        _ => panic!("status applied|unchanged: {fixed}"),
    }
    assert_eq!(shown_weights(&gw).await, [70.0, 30.0]);
    assert_eq!(gw.ok("/experiments").await["digest"], d2.as_str());
    assert_assignments(&gw, &users, 70, "after fixing the file at 70/30").await;
    assert_eq!(
        sample(&gw.metrics().await, "config_reload_failures_total", &[]),
        failures + 2.0
    );

    // (c) 2,000 requests from 12 concurrent tasks while 20 reloads alternate 30/70 and 70/30.
    reloads_drop_no_request(&gw, &folder).await;
}

/// `(message, problems)` of a 422 `experiments_rejected` from `/admin/reload`.
fn rejection(answer: &Reply) -> (String, Vec<String>) {
    assert!(answer.content_type.starts_with("application/json"), "{answer:?}");
    let body = answer.json();
    assert_eq!(body["error"], "experiments_rejected", "{body}");
    let problems: Vec<String> = body["problems"]
        .as_array()
        .unwrap_or_else(|| panic!("problems: {body}"))
        .iter()
        .map(|p| p.as_str().expect("problem string").to_string())
        .collect();
    assert!(!problems.is_empty(), "{body}");
    (body["message"].as_str().expect("message").to_string(), problems)
}

const REQUESTS: usize = 2_000;
const WORKERS: usize = 12;
const RELOADS: usize = 20;

async fn reloads_drop_no_request(gw: &TestGateway, folder: &Folder) {
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (next, done, failures) = (next.clone(), done.clone(), failures.clone());
        let (client, base) = (gw.client.clone(), gw.base());
        workers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= REQUESTS {
                    return;
                }
                let user = format!("user-{}", n % 300);
                let (path, recommendation) = match n % 2 {
                    0 => (format!("/recommendations/{user}?placement=home"), true),
                    _ => (format!("/experiments/{EXPERIMENT}/assignment/{user}"), false),
                };
                let failure = match send(&client, Method::GET, &format!("{base}{path}"), &[], None).await {
                    Ok(answer) if answer.status == 200 => {
                        // Either split (30/70 or 70/30) may be in force; nothing else may be.
                        let body = answer.json();
                        let arm = body["arm"].as_str().unwrap_or_default();
                        let expected = [arm_of(&user, 30), arm_of(&user, 70)];
                        let experiment_ok = !recommendation || body["experiment"] == EXPERIMENT;
                        (!expected.contains(&arm) || !experiment_ok).then(|| format!("GET {path}: {body}"))
                    }
                    Ok(answer) => Some(format!("GET {path}: {} {}", answer.status, answer.body)),
                    Err(e) => Some(e),
                };
                if let Some(failure) = failure {
                    failures.lock().expect("lock").push(failure);
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    // Reload i starts once i * 90 requests are done, so all 20 land among the requests.
    let mut digests = [BTreeSet::new(), BTreeSet::new()];
    let mut outcomes = Vec::new();
    let started = Instant::now();
    for i in 0..RELOADS {
        while done.load(Ordering::Relaxed) < i * 90 {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "requests stalled at {done:?}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let in_flight_at = done.load(Ordering::Relaxed);
        let (control, treatment) = if i % 2 == 0 { (30, 70) } else { (70, 30) };
        folder.set_weights(control, treatment);
        let answer = gw.reload().await;
        assert_eq!(answer.status, 200, "reload {i}: {}", answer.body);
        let body = answer.json();
        digests[i % 2].insert(body["digest"].as_str().expect("digest").to_string());
        outcomes.push((in_flight_at, body["status"].as_str().unwrap_or_default().to_string()));
    }
    for worker in workers {
        tokio::time::timeout(Duration::from_secs(20), worker)
            .await
            .expect("requests finish within 20 s")
            .expect("worker");
    }
    let failures = failures.lock().expect("lock");
    assert!(
        failures.is_empty(),
        "{} of {REQUESTS} requests failed during {RELOADS} reloads; first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(done.load(Ordering::Relaxed), REQUESTS);
    assert!(
        outcomes.iter().all(|(at, _)| *at < REQUESTS),
        "every reload started while requests were still being sent: {outcomes:?}"
    );
    assert!(
        digests[0].len() == 1 && digests[1].len() == 1 && digests[0] != digests[1],
        "each reload answers the digest of the split just written: {digests:?}"
    );
    let applied = outcomes.iter().filter(|(_, s)| s == "applied").count();
    eprintln!(
        "{REQUESTS} requests, {RELOADS} reloads ({applied} applied by the call, {} already by the interval) in {:?}",
        RELOADS - applied,
        started.elapsed()
    );
}

/// A gateway over a copy of the demo experiments with `server.request_timeout` 300 ms and
/// reloads every second, and a model location on an HDFS name node that accepts connections
/// and never answers: trying that model lasts until the marker check gives up (10 s).
struct SlowModel {
    /// Bound, never accepting: the silent name node.
    _name_node: std::net::TcpListener,
    folder: Folder,
    gw: TestGateway,
    /// The model on the silent name node.
    uri: String,
    /// Digest of the demo set the gateway started with.
    before: String,
}

impl SlowModel {
    async fn start() -> SlowModel {
        let name_node = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let uri = format!("hdfs://{}/recs/als-v3", name_node.local_addr().expect("addr"));
        let folder = Folder::new();
        let mut settings = settings_over(&folder.dir());
        settings.server.request_timeout = Duration::from_millis(300);
        settings.experiments.reload_interval = Duration::from_secs(1);
        let gw = TestGateway::launch_ready(&settings).await;
        let before = digest(&gw).await;
        SlowModel {
            _name_node: name_node,
            folder,
            gw,
            uri,
            before,
        }
    }

    /// Points the treatment arm at the model on the silent name node.
    fn edit(&self) {
        let text = self
            .folder
            .original
            .replace("model = \"als-v2\"", &format!("model = \"{}\"", self.uri));
        self.folder.write(EXPERIMENT_FILE, &text);
    }

    /// Sends `POST /admin/reload` with a client giving up after `patience`, in a task.
    fn reload(&self, patience: Duration) -> tokio::task::JoinHandle<Result<Reply, String>> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(patience)
            .build()
            .expect("client");
        let url = self.gw.url("/admin/reload");
        tokio::spawn(async move { send(&client, Method::POST, &url, &[], None).await })
    }

    /// Watches the set in force until `done` says so: whenever it is the edited one, its new
    /// model has been tried (`/ready` shows its error), never before. True once it is in force.
    async fn never_swapped_untried(&self, started: Instant, done: impl Fn(bool) -> bool) -> bool {
        loop {
            let swapped = digest(&self.gw).await != self.before;
            if swapped {
                let ready = self.gw.get("/ready").await.json();
                let error = gateway::model_status(&ready, &self.uri).map(|m| m["error"].clone());
                assert!(
                    error.as_ref().is_some_and(Value::is_string),
                    "the set naming {} is in force after {:?} before its model was tried: {error:?}",
                    self.uri,
                    started.elapsed()
                );
            }
            if done(swapped) {
                return swapped;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The digest of the set in force.
async fn digest(gw: &TestGateway) -> String {
    gw.ok("/experiments").await["digest"]
        .as_str()
        .expect("digest")
        .to_string()
}

/// `POST /admin/reload` waits for the new models of the set it applies past
/// `server.request_timeout`, and answers what it did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_reload_waits_for_new_models_past_the_request_timeout() {
    let slow = SlowModel::start().await;
    slow.edit();
    let started = Instant::now();
    let reload = slow.reload(Duration::from_secs(90));
    slow.never_swapped_untried(started, |_| reload.is_finished()).await;
    let answer = reload.await.expect("reload task").expect("reload answered");
    let took = started.elapsed();
    assert_eq!(answer.status, 200, "after {took:?}: {}", answer.body);
    let body = answer.json();
    assert!(
        ["applied", "unchanged"].contains(&body["status"].as_str().unwrap_or_default()),
        "{body}"
    );
    assert!(took > Duration::from_millis(300), "answered after {took:?}: {body}");
    let now = digest(&slow.gw).await;
    assert_ne!(now, slow.before, "the new set is in force once the reload answered");
    assert_eq!(body["digest"], now.as_str(), "{body}");
    slow.never_swapped_untried(started, |_| true).await;
    eprintln!("the reload answered after {took:?}: {body}");
}

/// A reload whose caller stops waiting still runs to its end, and the periodic reload that
/// follows does not swap the half-loaded set in without waiting for its models.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_its_caller_gave_up_on_is_not_swapped_in_untried() {
    let slow = SlowModel::start().await;
    slow.edit();
    let started = Instant::now();
    // The caller stops waiting before the model was tried (by its own deadline, or a 504).
    let gave_up = slow.reload(Duration::from_millis(500)).await.expect("reload task");
    assert!(
        gave_up.as_ref().map_or(true, |answer| answer.status == 504),
        "the reload waits for its model longer than 500 ms: {gave_up:?}"
    );
    // Periodic reloads run every second meanwhile; the set comes in once its model was tried.
    let swapped = slow
        .never_swapped_untried(started, |swapped| {
            swapped || started.elapsed() > Duration::from_secs(30)
        })
        .await;
    assert!(swapped, "the edited set is in force within 30 s");
    eprintln!(
        "the edited set came in {:?} after a reload its caller gave up on",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Request ids
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_echoed_or_generated() {
    let gw = TestGateway::launch_ready(&settings_over(&repo().join("experiments"))).await;
    let url = |path: &str| format!("{}{path}", gw.base());
    for path in ["/health", "/recommendations/42?placement=home", "/no-such-route"] {
        let answer = send(
            &gw.client,
            Method::GET,
            &url(path),
            &[("X-Request-Id", "req-7f3a-0001")],
            None,
        )
        .await
        .expect("request");
        assert_eq!(
            answer.request_id.as_deref(),
            Some("req-7f3a-0001"),
            "GET {path} ({})",
            answer.status
        );
    }
    let mut seen = BTreeSet::new();
    for path in [
        "/health",
        "/health",
        "/ready",
        "/recommendations/42?placement=home",
        "/nope",
    ] {
        let answer = send(&gw.client, Method::GET, &url(path), &[], None)
            .await
            .expect("request");
        let id = answer
            .request_id
            .unwrap_or_else(|| panic!("GET {path}: no X-Request-Id in the response"));
        assert!(!id.is_empty() && id.len() <= 128, "{id:?}");
        assert!(seen.insert(id.clone()), "id {id} given twice: {seen:?}");
    }
    // An unreasonable id (too long) is replaced rather than echoed.
    let long = "x".repeat(300);
    let answer = send(
        &gw.client,
        Method::GET,
        &url("/health"),
        &[("X-Request-Id", &long)],
        None,
    )
    .await
    .expect("request");
    let id = answer.request_id.expect("an id");
    assert!(id != long && id.len() <= 128, "{id:?}");
}

// ---------------------------------------------------------------------------------------------
// 4. Request timeout
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_the_timeout_gets_a_504_json_error() {
    let redis = RedisServer::start();
    let mut settings = settings_over(&repo().join("experiments"));
    settings.server.request_timeout = Duration::from_millis(100);
    settings.cache.redis_url = redis.url();
    settings.tracking.secret = vec![gateway::SHARED_SECRET.to_string()];
    settings.cache.redis_timeout = Duration::from_secs(2);
    settings.cache.local_capacity = 0;
    let gw = TestGateway::launch_ready(&settings).await;
    eventually(WAIT, "a first request served with Redis up", async || {
        let metrics = gw.metrics().await;
        let answer = gw.get("/recommendations/1?placement=home").await;
        let up = sample(&metrics, "redis_up", &[]);
        if answer.status == 200 && up == 1.0 {
            Ok(())
        } else {
            Err(format!("redis_up {up}, {} {}", answer.status, answer.body))
        }
    })
    .await;

    let sleeper = redis.debug_sleep(1.0);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let sent = Instant::now();
    let answer = send(
        &gw.client,
        Method::GET,
        &format!("{}/recommendations/2?placement=home", gw.base()),
        &[("X-Request-Id", "slow-one")],
        None,
    )
    .await
    .expect("request");
    let took = sent.elapsed();
    assert_eq!(answer.status, 504, "{}", answer.body);
    assert_eq!(error_code(&answer, "timed out request"), "timeout");
    assert_eq!(answer.request_id.as_deref(), Some("slow-one"));
    assert!(took < Duration::from_millis(700), "the 504 came after {took:?}");
    let (slept, _) = tokio::task::spawn_blocking(move || sleeper.join().expect("sleeper"))
        .await
        .expect("join");
    assert_eq!(slept.expect("DEBUG SLEEP"), "OK");
    eventually(WAIT, "requests served again once Redis answers", async || {
        let answer = gw.get("/recommendations/3?placement=home").await;
        if answer.status == 200 {
            Ok(())
        } else {
            Err(format!("{} {}", answer.status, answer.body))
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 5. Graceful shutdown of the binary
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish_and_exits_zero() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let toml_path = |p: &Path| p.to_str().expect("utf-8 path").replace('\\', "\\\\");
    let config = dir.path().join("recgw.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"10s\"\nrequest_timeout = \"8s\"\n\n\
             [experiments]\ndir = \"{}\"\n\n[models]\nroot = \"{}\"\nsnapshot_max_bytes = 0\n\n\
             [cache]\nredis_url = \"{}\"\nredis_timeout = \"3s\"\nlocal_capacity = 0\n\n\
             [tracking]\nsecret = \"{}\"\n\n\
             [[auth.keys]]\nsha256 = \"{}\"\nrole = \"client\"\nname = \"web\"\n",
            toml_path(&repo().join("experiments")),
            toml_path(&repo().join("models")),
            redis.url(),
            gateway::SHARED_SECRET,
            hash_key(CLIENT_KEY),
        ),
    )
    .expect("write settings");
    let mut process = Process::serve(dir.path().join("recgw.log"), |command| {
        command.args(["--config", config.to_str().expect("utf-8")])
    });
    let base = process.base();
    let client = http_client();

    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let ready = send(&client, Method::GET, &format!("{base}/ready"), &[], None).await;
        let metrics = send(&client, Method::GET, &format!("{base}/metrics"), &[], None).await;
        if let (Ok(ready), Ok(metrics)) = (&ready, &metrics)
            && ready.status == 200
            && sample(&metrics.body, "redis_up", &[]) == 1.0
        {
            break;
        }
        if let Ok(Some(status)) = process.child.try_wait() {
            panic!("recgw exited with {status} before serving:\n{}", process.log());
        }
        assert!(
            Instant::now() < deadline,
            "recgw not ready with Redis up within {READY_TIMEOUT:?}: {ready:?}\n{}",
            process.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Redis sleeps 1 s: every request below waits on its Redis lookup (3 s deadline); no
    // serving snapshot answers before Redis (`snapshot_max_bytes = 0`).
    let sleeper = redis.debug_sleep(1.0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let requests: Vec<_> = (0..20)
        .map(|i| {
            let (client, url) = (
                client.clone(),
                format!("{base}/recommendations/{}?placement=home", 100 + i),
            );
            tokio::spawn(async move {
                let answer = send(&client, Method::GET, &url, &[("X-API-Key", CLIENT_KEY)], None).await;
                (answer, Instant::now())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sigterm_at = Instant::now();
    process.sigterm();
    // Once the signal is handled, new connections are refused (not queued, not served).
    let refused = eventually(WAIT, "new connections refused after SIGTERM", async || {
        let fresh = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(1))
            .build()
            .expect("client");
        match send(&fresh, Method::GET, &format!("{base}/health"), &[], None).await {
            Err(e) => Ok(e),
            Ok(answer) => Err(format!("still served: {} {}", answer.status, answer.body)),
        }
    })
    .await;
    eprintln!("after SIGTERM: {refused}");

    let mut failures = Vec::new();
    for (i, request) in requests.into_iter().enumerate() {
        let (answer, finished) = tokio::time::timeout(Duration::from_secs(15), request)
            .await
            .unwrap_or_else(|_| panic!("request {i} still running 15 s after SIGTERM"))
            .expect("request task");
        match answer {
            Ok(answer) if answer.status == 200 => {
                if finished < sigterm_at {
                    failures.push(format!("request {i} finished before SIGTERM: it was not in flight"));
                }
            }
            Ok(answer) => failures.push(format!("request {i}: {} {}", answer.status, answer.body)),
            Err(e) => failures.push(format!("request {i}: {e}")),
        }
    }
    let exit = process.exit(sigterm_at).await;
    let exited_after = sigterm_at.elapsed();
    let _ = tokio::task::spawn_blocking(move || sleeper.join()).await;
    assert!(
        failures.is_empty(),
        "in-flight requests during shutdown:\n{}\nlog:\n{}",
        failures.join("\n"),
        process.log()
    );
    assert_eq!(exit.code(), Some(0), "exit status {exit}; log:\n{}", process.log());

    // One JSON log line per request, naming the key by its name, never the key itself.
    let log = process.log();
    assert!(!log.contains(CLIENT_KEY), "the key itself is in the log:\n{log}");
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["fields"]["message"] == "request" && l["span"]["route"] == "/recommendations/{user_id}")
        .collect();
    assert_eq!(lines.len(), 20, "request lines:\n{log}");
    for line in &lines {
        assert_eq!(line["span"]["key"], "web", "{line}");
        assert_eq!(line["fields"]["status"], 200, "{line}");
        assert!(
            line["span"]["request_id"].as_str().is_some_and(|id| !id.is_empty()),
            "{line}"
        );
    }
    eprintln!("recgw exited 0 {exited_after:?} after SIGTERM");
}

/// `server.access_log = false`: requests are served and write no line, while the log itself
/// still works (the start-up line reaches it). The test above checks the default writes one
/// line per request, so a setting that did nothing fails here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_access_log_requests_write_no_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut process = Process::serve(dir.path().join("recgw.log"), |command| {
        command
            .env("RECGW__SERVER__LISTEN", "127.0.0.1:0")
            .env("RECGW__SERVER__ACCESS_LOG", "false")
            .env("RECGW__EXPERIMENTS__DIR", repo().join("experiments"))
            .env("RECGW__MODELS__ROOT", repo().join("models"))
            .env("RECGW__MODELS__SNAPSHOT_MAX_BYTES", "0")
    });
    let base = process.base();
    let client = http_client();
    eventually(READY_TIMEOUT, "recgw ready", async || {
        match send(&client, Method::GET, &format!("{base}/ready"), &[], None).await {
            Ok(ready) if ready.status == 200 => Ok(()),
            other => Err(format!("{other:?}\n{}", process.log())),
        }
    })
    .await;
    for user in 0..5 {
        let url = format!("{base}/recommendations/{user}?placement=home");
        let answer = send(&client, Method::GET, &url, &[], None).await.expect("served");
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    let sigterm_at = Instant::now();
    process.sigterm();
    let exit = process.exit(sigterm_at).await;
    assert_eq!(exit.code(), Some(0), "{}", process.log());
    let log = process.log();
    let messages: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|l| l["fields"]["message"].clone())
        .collect();
    assert!(messages.iter().any(|m| m == "recgw listening"), "{log}");
    assert!(!messages.iter().any(|m| m == "request"), "{log}");
}
