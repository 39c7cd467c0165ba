//! A real gateway in the test process: [`TestGateway::launch`] binds `recgw::server::Server`
//! with the given settings on a free loopback port (or [`TestGateway::start`] over a given
//! experiments folder and models root), serves it on the test's runtime, and speaks HTTP to it
//! with `reqwest`. Every answer is checked against `openapi.yaml` (`common/openapi.rs`), and
//! every wait is bounded and fails with the last thing the server said.
//!
//! The requests of the tests' domain are shared too: recommending in `common::page`, posting
//! events and reading results in `common::events`, error answers checked by [`assert_error`].
//! The module is part of each test's crate, so a test adds only what it alone does, with an
//! `impl TestGateway { … }` block of its own.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use recgw::config::Settings;
use recgw::server::Server;
use reqwest::Method;
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::openapi;

/// How long a server gets to load its models and report ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a server with Redis configured gets to report `redis_up 1` once ready.
pub const REDIS_UP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`TestGateway::stop`] waits for the server to finish.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How often bounded waits poll.
const POLL: Duration = Duration::from_millis(20);
/// A `tracking.secret` for gateways with Redis configured, which refuse to start with none or
/// with one under 32 bytes (replicas sharing a Redis must sign alike).
pub const SHARED_SECRET: &str = "recgw-tests-shared-tracking-secret-of-32+-bytes";

/// The repository (the crate's manifest folder).
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// An HTTP client without proxies (a proxy from the environment must not see loopback calls)
/// and with a 10 s timeout.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

/// The `item_id`s of a recommendation response, in page order.
pub fn item_ids(body: &Value) -> Vec<String> {
    body["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {body}"))
        .iter()
        .map(|i| i["item_id"].as_str().expect("string item_id").to_string())
        .collect()
}

/// Copies the folder `from` into `to`, recursively (creating `to`).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("mkdir {}: {e}", to.display()));
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display())) {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap_or_else(|e| panic!("copy {}: {e}", entry.path().display()));
        }
    }
}

/// Copies of the repository's `experiments/` and `models/` in a temporary folder, for tests
/// that change them or must not share them.
pub struct DemoCopy {
    dir: TempDir,
}

impl DemoCopy {
    pub fn new() -> DemoCopy {
        let dir = tempfile::tempdir().expect("tempdir");
        copy_dir(&repo().join("experiments"), &dir.path().join("experiments"));
        copy_dir(&repo().join("models"), &dir.path().join("models"));
        DemoCopy { dir }
    }

    /// The copy of `experiments/`.
    pub fn experiments(&self) -> PathBuf {
        self.dir.path().join("experiments")
    }

    /// The copy of `models/`.
    pub fn models(&self) -> PathBuf {
        self.dir.path().join("models")
    }

    /// [`replica_settings`] over this copy.
    pub fn settings(&self, redis_url: &str) -> Settings {
        replica_settings(&self.experiments(), &self.models(), redis_url)
    }
}

/// One HTTP answer, read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// `Content-Type`, empty when absent.
    pub content_type: String,
    /// `X-Request-Id`, when present.
    pub request_id: Option<String>,
    /// Body as text.
    pub body: String,
}

impl Reply {
    /// The body as JSON; panics with the body when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("status {}: body is not JSON ({e}): {}", self.status, self.body))
    }

    /// Checks that the body is declared JSON (`what` names the request in a failure): every
    /// answer a test reads as JSON is checked so.
    pub fn assert_json(&self, what: &str) {
        assert!(
            self.content_type.starts_with("application/json"),
            "{what}: {} content type {:?}, body {}",
            self.status,
            self.content_type,
            self.body
        );
    }

    /// Reads `response` whole; `what` names the request in errors.
    async fn read(what: &str, response: reqwest::Response) -> Result<Reply, String> {
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = header(reqwest::header::CONTENT_TYPE.as_str()).unwrap_or_default();
        let request_id = header("x-request-id");
        let status = response.status().as_u16();
        let body = response.text().await.map_err(|e| format!("{what}: body: {e}"))?;
        Ok(Reply {
            status,
            content_type,
            request_id,
            body,
        })
    }
}

/// Asserts that `reply` is an error answer as the gateway gives every one: `status`, JSON of
/// exactly `{error, message}`, the error code `code` (any code for `None`) and a message that
/// says something; `what` names the request in a failure. Tests of refusals check them all
/// this one way.
pub fn assert_error<'a>(reply: &Reply, status: u16, code: impl Into<Option<&'a str>>, what: &str) {
    assert_eq!(reply.status, status, "{what}: {}", reply.body);
    reply.assert_json(what);
    let body = reply.json();
    let object = body
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not an object: {body}"));
    assert_eq!(
        object.keys().map(String::as_str).collect::<Vec<_>>(),
        ["error", "message"],
        "{what}: {body}"
    );
    let error = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no error code: {body}"));
    if let Some(code) = code.into() {
        assert_eq!(error, code, "{what}: {body}");
    }
    let message = body["message"].as_str().unwrap_or_default();
    assert!(!message.trim().is_empty(), "{what}: empty message: {body}");
}

/// Sends `request` with `client`, reads the whole answer and checks it against `openapi.yaml`
/// ([`openapi::check`]): every request the harness sends to a gateway goes through here.
///
/// `Err` says what failed on the way (no connection, a timeout, a broken body), which some
/// tests expect; an answer the document does not allow panics instead, so that no caller can
/// take it for one of those.
pub async fn exchange(client: &reqwest::Client, request: reqwest::RequestBuilder) -> Result<Reply, String> {
    let request = request.build().map_err(|e| format!("request: {e}"))?;
    let (method, url) = (request.method().clone(), request.url().clone());
    let what = format!("{method} {url}");
    let response = client.execute(request).await.map_err(|e| format!("{what}: {e}"))?;
    let reply = Reply::read(&what, response).await?;
    if let Err(mismatch) = openapi::check(method.as_str(), url.path(), &reply) {
        panic!("{mismatch}");
    }
    Ok(reply)
}

/// Sends one request to `url` with `headers` and an optional JSON `body` through [`exchange`].
pub async fn send(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Result<Reply, String> {
    let mut request = client.request(method, url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    exchange(client, request).await
}

/// Settings for a gateway over `experiments` and `models`, as the environment would give them.
///
/// Models are served by page reads behind the cache tiers, the path most tests are about:
/// [`with_snapshots`] turns serving snapshots on, in a folder of the test's own.
pub fn settings(experiments: &Path, models: &Path, refresh: &str) -> Settings {
    settings_with_env(experiments, models, refresh, &[])
}

/// [`settings`] with more environment variables (`RECGW__…`), for settings whose environment
/// form a test is about.
pub fn settings_with_env(experiments: &Path, models: &Path, refresh: &str, more: &[(&str, &str)]) -> Settings {
    let env = [
        ("RECGW__SERVER__LISTEN", "127.0.0.1:0"),
        ("RECGW__EXPERIMENTS__DIR", experiments.to_str().expect("utf-8 path")),
        ("RECGW__MODELS__ROOT", models.to_str().expect("utf-8 path")),
        ("RECGW__MODELS__REFRESH_INTERVAL", refresh),
        ("RECGW__MODELS__SNAPSHOT_MAX_BYTES", "0"),
    ];
    let env = env.iter().chain(more).map(|(k, v)| (k.to_string(), v.to_string()));
    Settings::load_from(None, env).expect("settings")
}

/// [`settings`] of one replica of a test that counts results: models polled every second,
/// `redis_url` (empty: no Redis), the shared tracking secret (so that replicas accept each
/// other's tokens), a Redis timeout generous enough for a loaded 2-core machine, a short
/// shutdown grace.
pub fn replica_settings(experiments: &Path, models: &Path, redis_url: &str) -> Settings {
    let mut settings = settings(experiments, models, "1s");
    settings.cache.redis_url = redis_url.to_string();
    settings.cache.redis_timeout = Duration::from_millis(500);
    settings.tracking.secret = vec![SHARED_SECRET.to_string()];
    settings.server.shutdown_grace = Duration::from_secs(3);
    settings
}

/// `settings` with serving snapshots on, written to `dir`.
pub fn with_snapshots(mut settings: Settings, dir: &Path) -> Settings {
    settings.models.snapshot_dir = dir.to_path_buf();
    settings.models.snapshot_max_bytes = 1 << 30;
    settings
}

/// [`settings`] over the repository's own `experiments/` and `models/` (models polled every
/// 100 ms, auth off, no Redis).
pub fn demo_settings() -> Settings {
    settings(&repo().join("experiments"), &repo().join("models"), "100ms")
}

/// Polls `check` until it yields a value, or panics after `timeout` with the last `Err` it gave.
pub async fn eventually<T>(timeout: Duration, what: &str, mut check: impl AsyncFnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => panic!("{what}: not within {timeout:?}; last: {last}"),
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// The value of the sample `name{labels}` in a Prometheus text exposition, labels in any
/// order (none for an unlabelled sample); 0 when the sample is absent.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let wanted: BTreeSet<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, found): (&str, BTreeSet<String>) = match series.split_once('{') {
            Some((metric, rest)) => (
                metric,
                rest.trim_end_matches('}')
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect(),
            ),
            None => (series, BTreeSet::new()),
        };
        if metric == name && found == wanted {
            return value.parse().unwrap_or_else(|e| panic!("{line}: {e}"));
        }
    }
    0.0
}

/// A running gateway; [`TestGateway::stop`] shuts it down gracefully and waits, dropping it
/// only signals shutdown.
pub struct TestGateway {
    /// Where it listens.
    pub addr: SocketAddr,
    /// HTTP client of [`http_client`].
    pub client: reqwest::Client,
    /// The `X-API-Key` every request of the harness carries, if any ([`TestGateway::with_key`]).
    key: Option<String>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestGateway {
    /// Binds and serves a gateway with `settings`; does not wait for anything.
    pub async fn launch(settings: &Settings) -> TestGateway {
        let server = Server::bind(settings)
            .await
            .unwrap_or_else(|e| panic!("gateway does not start: {e}"));
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0, "bound to a real port");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            rx.await.ok();
        }));
        TestGateway {
            addr,
            client: http_client(),
            key: None,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// [`TestGateway::launch`], then waits until `/ready` answers 200 (Redis may be down).
    pub async fn launch_ready(settings: &Settings) -> TestGateway {
        let gateway = Self::launch(settings).await;
        gateway.wait_ready().await;
        gateway
    }

    /// [`TestGateway::launch_ready`], then, when the settings configure Redis, waits until a
    /// Redis command succeeded (`redis_up 1`).
    pub async fn launch_up(settings: &Settings) -> TestGateway {
        let gateway = Self::launch_ready(settings).await;
        if !settings.cache.redis_url.is_empty() {
            gateway.wait_redis_up().await;
        }
        gateway
    }

    /// Binds and serves a gateway over `experiments` and `models`, polling models every
    /// `refresh`; does not wait for the models to load.
    pub async fn start(experiments: &Path, models: &Path, refresh: &str) -> TestGateway {
        Self::launch(&settings(experiments, models, refresh)).await
    }

    /// [`TestGateway::start`], then waits until `/ready` answers 200.
    pub async fn start_ready(experiments: &Path, models: &Path) -> TestGateway {
        let gateway = Self::start(experiments, models, "100ms").await;
        gateway.wait_ready().await;
        gateway
    }

    /// The bundled demo: the repository's own `experiments/` and `models/`.
    pub async fn demo() -> TestGateway {
        Self::launch_ready(&demo_settings()).await
    }

    /// Signals a graceful shutdown and waits (bounded) until `Server::run` returned, which is
    /// after its final flushes; returns how long that took.
    pub async fn stop(mut self) -> Duration {
        let started = Instant::now();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let task = self.task.take().expect("running");
        tokio::time::timeout(STOP_TIMEOUT, task)
            .await
            .unwrap_or_else(|_| panic!("gateway stops within {STOP_TIMEOUT:?}"))
            .expect("gateway task")
            .expect("gateway ran");
        started.elapsed()
    }

    /// The gateway spoken to as one client of a deployment with keys: every request of the
    /// harness ([`TestGateway::send`] and what is built on it, the shared helpers of
    /// `common::page` and `common::events` among them) then carries `X-API-Key: key`, except
    /// one that names a key itself ([`TestGateway::call`], a header of its own).
    pub fn with_key(mut self, key: &str) -> TestGateway {
        self.key = Some(key.to_string());
        self
    }

    /// `http://addr`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://addr` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends `method path` with `headers` (and the key of [`TestGateway::with_key`] unless they
    /// name one) and an optional JSON `body`; reads the whole answer.
    pub async fn send(&self, method: Method, path: &str, headers: &[(&str, &str)], body: Option<&Value>) -> Reply {
        let mut headers = headers.to_vec();
        let keyed = headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("x-api-key"));
        if let (Some(key), false) = (&self.key, keyed) {
            headers.push(("X-API-Key", key));
        }
        send(&self.client, method, &self.url(path), &headers, body)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// `method path` with the `X-API-Key` given (none for `None`, whatever
    /// [`TestGateway::with_key`] said) and an optional JSON body.
    pub async fn call(&self, method: Method, path: &str, key: Option<&str>, body: Option<&Value>) -> Reply {
        let headers: Vec<(&str, &str)> = key.map(|k| ("X-API-Key", k)).into_iter().collect();
        send(&self.client, method, &self.url(path), &headers, body)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Sends `method path` and reads the whole answer.
    pub async fn request(&self, method: Method, path: &str) -> Reply {
        self.send(method, path, &[], None).await
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Reply {
        self.request(Method::GET, path).await
    }

    /// `POST path` with `body` as JSON.
    pub async fn post_json(&self, path: &str, body: &Value) -> Reply {
        self.send(Method::POST, path, &[], Some(body)).await
    }

    /// `POST path` with `body` as it is, declared JSON; see [`TestGateway::post_bytes`].
    pub async fn post_raw(&self, path: &str, body: impl Into<Vec<u8>>) -> Reply {
        self.post_bytes(path, Some("application/json"), body).await
    }

    /// `POST path` with `body` as it is and the given `Content-Type` (none when `None`). The
    /// `Content-Length` is always said, an empty body's too: reqwest leaves it out for an empty
    /// body, which the gateway answers with 411 before looking at the body.
    pub async fn post_bytes(&self, path: &str, content_type: Option<&str>, body: impl Into<Vec<u8>>) -> Reply {
        let body = body.into();
        let mut request = self
            .client
            .post(self.url(path))
            .header(reqwest::header::CONTENT_LENGTH, body.len().to_string())
            .body(body);
        if let Some(content_type) = content_type {
            request = request.header(reqwest::header::CONTENT_TYPE, content_type);
        }
        if let Some(key) = &self.key {
            request = request.header("X-API-Key", key);
        }
        exchange(&self.client, request).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// `GET path`, expecting `status` and a JSON body, which it returns.
    pub async fn get_json(&self, path: &str, status: u16) -> Value {
        let reply = self.get(path).await;
        assert_eq!(reply.status, status, "GET {path}: {}", reply.body);
        reply.assert_json(&format!("GET {path}"));
        reply.json()
    }

    /// `GET path`, expecting 200 and JSON.
    pub async fn ok(&self, path: &str) -> Value {
        self.get_json(path, 200).await
    }

    /// `GET /metrics`, expecting 200; the exposition text.
    pub async fn metrics(&self) -> String {
        let reply = self.get("/metrics").await;
        assert_eq!(reply.status, 200, "GET /metrics: {}", reply.body);
        reply.body
    }

    /// The value of the sample `name{labels}` of `/metrics` (0 when absent); see [`sample`].
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        sample(&self.metrics().await, name, labels)
    }

    /// Waits until `/ready` answers 200 and returns its body; panics with the last body.
    pub async fn wait_ready(&self) -> Value {
        eventually(READY_TIMEOUT, "GET /ready = 200", async || {
            let reply = self.get("/ready").await;
            if reply.status == 200 {
                Ok(reply.json())
            } else {
                Err(format!("{} {}", reply.status, reply.body))
            }
        })
        .await
    }

    /// Waits until `/metrics` says `redis_up 1`; panics with the Redis lines of the last one.
    pub async fn wait_redis_up(&self) {
        eventually(REDIS_UP_TIMEOUT, "redis_up 1", async || {
            let text = self.metrics().await;
            if sample(&text, "redis_up", &[]) == 1.0 {
                Ok(())
            } else {
                Err(text
                    .lines()
                    .filter(|l| l.contains("redis"))
                    .collect::<Vec<_>>()
                    .join("\n"))
            }
        })
        .await;
    }

    /// Waits until the `/ready` entry of `model` satisfies `check`; returns the status code and
    /// the whole body at that moment.
    pub async fn wait_model(&self, model: &str, what: &str, check: impl Fn(&Value) -> bool) -> (u16, Value) {
        eventually(READY_TIMEOUT, what, async || {
            let reply = self.get("/ready").await;
            let body = reply.json();
            match model_status(&body, model) {
                Some(entry) if check(entry) => Ok((reply.status, body)),
                _ => Err(format!("{} {}", reply.status, reply.body)),
            }
        })
        .await
    }
}

/// The entry of `model` in a `/ready` body.
pub fn model_status<'a>(ready: &'a Value, model: &str) -> Option<&'a Value> {
    ready["models"]
        .as_array()?
        .iter()
        .find(|m| m["model"].as_str() == Some(model))
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
