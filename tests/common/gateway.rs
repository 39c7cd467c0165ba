//! A real gateway in the test process: [`TestGateway::start`] binds `recgw::server::Server` on
//! a free loopback port over the given experiments folder and models root, serves it on the
//! test's runtime, and speaks HTTP to it with `reqwest`. Every wait is bounded and fails with
//! the last thing the server said.
//!
//! Included with `#[path = "common/gateway.rs"] mod gateway;` (not through `common/mod.rs`),
//! so only the tests that start servers compile it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use recgw::config::Settings;
use recgw::server::Server;
use serde_json::Value;
use tokio::sync::oneshot;

/// How long a server gets to load its models and report ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How often bounded waits poll.
const POLL: Duration = Duration::from_millis(20);

/// A running gateway; dropping it signals shutdown.
pub struct TestGateway {
    /// Where it listens.
    pub addr: SocketAddr,
    /// HTTP client without proxies (a proxy from the environment must not see loopback calls).
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
}

/// One HTTP answer, read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// `Content-Type`, empty when absent.
    pub content_type: String,
    /// Body as text.
    pub body: String,
}

impl Reply {
    /// The body as JSON; panics with the body when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("status {}: body is not JSON ({e}): {}", self.status, self.body))
    }
}

/// Settings for a gateway over `experiments` and `models`, as the environment would give them.
pub fn settings(experiments: &Path, models: &Path, refresh: &str) -> Settings {
    let env = [
        ("RECGW__SERVER__LISTEN", "127.0.0.1:0"),
        ("RECGW__EXPERIMENTS__DIR", experiments.to_str().expect("utf-8 path")),
        ("RECGW__MODELS__ROOT", models.to_str().expect("utf-8 path")),
        ("RECGW__MODELS__REFRESH_INTERVAL", refresh),
    ];
    Settings::load_from(None, env.map(|(k, v)| (k.to_string(), v.to_string()))).expect("settings")
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

impl TestGateway {
    /// Binds and serves a gateway over `experiments` and `models`, polling models every
    /// `refresh`; does not wait for the models to load.
    pub async fn start(experiments: &Path, models: &Path, refresh: &str) -> TestGateway {
        let server = Server::bind(&settings(experiments, models, refresh))
            .await
            .unwrap_or_else(|e| panic!("gateway does not start: {e}"));
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0, "bound to a real port");
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(server.run(async {
            rx.await.ok();
        }));
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client");
        TestGateway {
            addr,
            client,
            shutdown: Some(tx),
        }
    }

    /// [`TestGateway::start`], then waits until `/ready` answers 200.
    pub async fn start_ready(experiments: &Path, models: &Path) -> TestGateway {
        let gateway = Self::start(experiments, models, "100ms").await;
        gateway.wait_ready().await;
        gateway
    }

    /// The bundled demo: the repository's own `experiments/` and `models/`.
    pub async fn demo() -> TestGateway {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        Self::start_ready(&repo.join("experiments"), &repo.join("models")).await
    }

    /// `http://addr` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends `method path` and reads the whole answer.
    pub async fn request(&self, method: reqwest::Method, path: &str) -> Reply {
        let response = self
            .client
            .request(method.clone(), self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = response
            .text()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: body: {e}"));
        Reply {
            status,
            content_type,
            body,
        }
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Reply {
        self.request(reqwest::Method::GET, path).await
    }

    /// `GET path`, expecting `status` and a JSON body, which it returns.
    pub async fn get_json(&self, path: &str, status: u16) -> Value {
        let reply = self.get(path).await;
        assert_eq!(reply.status, status, "GET {path}: {}", reply.body);
        assert!(
            reply.content_type.starts_with("application/json"),
            "GET {path}: content type {:?}",
            reply.content_type
        );
        reply.json()
    }

    /// `GET path`, expecting 200 and JSON.
    pub async fn ok(&self, path: &str) -> Value {
        self.get_json(path, 200).await
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
