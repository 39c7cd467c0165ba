//! Background traffic against a gateway, for tests that change something under load (a fault in
//! a model folder, a Redis outage, a new model version) and then judge every answer given
//! meanwhile: [`Traffic::start`] runs clients sending `GET`s as fast as answers come (or with a
//! pause) and records each answer with when it came, until [`Traffic::stop`].

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use reqwest::Method;
use tokio::task::JoinHandle;

use super::gateway::{Reply, TestGateway, eventually, send};

/// How long clients get to finish their last request once stopped, and how long a wait for
/// more answers may take before the traffic counts as stalled.
const BOUND: Duration = Duration::from_secs(20);

/// One request of the traffic and what came back.
#[derive(Debug, Clone)]
pub struct Sent {
    /// When the answer (or the failure) came.
    pub at: Instant,
    /// Which client sent it, `0..clients`.
    pub client: usize,
    /// The path and query asked for.
    pub path: String,
    /// The whole answer, or why there was none (no connection, a timeout, an answer
    /// `openapi.yaml` does not allow).
    pub answer: Result<Reply, String>,
}

impl Sent {
    /// The status, 0 when no answer came.
    pub fn status(&self) -> u16 {
        self.answer.as_ref().map_or(0, |reply| reply.status)
    }

    /// The answer's `source` field (empty when there is none).
    pub fn source(&self) -> String {
        self.answer
            .as_ref()
            .ok()
            .and_then(|reply| serde_json::from_str::<serde_json::Value>(&reply.body).ok())
            .and_then(|body| body["source"].as_str().map(String::from))
            .unwrap_or_default()
    }
}

impl std::fmt::Display for Sent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.answer {
            Ok(reply) => write!(f, "GET {}: {} {}", self.path, reply.status, reply.body),
            // Says the request itself.
            Err(e) => write!(f, "{e}"),
        }
    }
}

/// Running clients; dropping it without [`Traffic::stop`] leaves them to end with the runtime.
pub struct Traffic {
    /// Set by [`Traffic::stop`]; each client checks it before each request.
    stop: Arc<AtomicBool>,
    /// Every answer so far, in the order they came.
    sent: Arc<Mutex<Vec<Sent>>>,
    /// The client tasks.
    clients: Vec<JoinHandle<()>>,
}

impl Traffic {
    /// Starts `clients` clients against `gw`; client `c` sends `GET path(c, n)` as its `n`-th
    /// request (`n` = 0, 1, …) and waits `pause` after each answer.
    pub fn start(
        gw: &TestGateway,
        clients: usize,
        pause: Duration,
        path: impl Fn(usize, usize) -> String + Send + Sync + 'static,
    ) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let path = Arc::new(path);
        let clients = (0..clients)
            .map(|client| {
                let (stop, sent, path) = (Arc::clone(&stop), Arc::clone(&sent), Arc::clone(&path));
                let (http, base) = (gw.client.clone(), gw.base());
                tokio::spawn(async move {
                    for n in 0.. {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let path = path(client, n);
                        let url = format!("{base}{path}");
                        let request = send(&http, Method::GET, &url, &[], None);
                        // An answer `openapi.yaml` does not allow panics in `send`: recorded as a
                        // failed request, so the client goes on and the test reports it.
                        let answer = AssertUnwindSafe(request)
                            .catch_unwind()
                            .await
                            .unwrap_or_else(|panic| Err(panic_message(panic.as_ref())));
                        let at = Instant::now();
                        sent.lock().expect("lock").push(Sent {
                            at,
                            client,
                            path,
                            answer,
                        });
                        tokio::time::sleep(pause).await;
                    }
                })
            })
            .collect();
        Traffic { stop, sent, clients }
    }

    /// `f` of the answers so far, in the order they came.
    pub fn with_sent<T>(&self, f: impl FnOnce(&[Sent]) -> T) -> T {
        f(&self.sent.lock().expect("lock"))
    }

    /// How many answers each client got so far.
    pub fn counts(&self) -> Vec<usize> {
        self.with_sent(|sent| {
            let mut counts = vec![0; self.clients.len()];
            for s in sent {
                counts[s.client] += 1;
            }
            counts
        })
    }

    /// Waits until `n` more answers came than have now, so that what the test does meanwhile
    /// overlapped them; panics naming `what` when the traffic stalls.
    pub async fn overlap(&self, n: usize, what: &str) {
        let target = self.with_sent(<[Sent]>::len) + n;
        eventually(BOUND, &format!("{what}: {n} more answers"), async || {
            let done = self.with_sent(<[Sent]>::len);
            if done >= target {
                Ok(())
            } else {
                Err(format!("{done} of {target}"))
            }
        })
        .await;
    }

    /// Stops the clients, waits (bounded) until each finished its last request, and returns
    /// every answer in the order they came.
    pub async fn stop(self) -> Vec<Sent> {
        self.stop.store(true, Ordering::SeqCst);
        for client in self.clients {
            tokio::time::timeout(BOUND, client)
                .await
                .unwrap_or_else(|_| panic!("traffic still running {BOUND:?} after it was stopped"))
                .expect("traffic client");
        }
        std::mem::take(&mut *self.sent.lock().expect("lock"))
    }
}

/// The message of a panic's payload.
fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic without a message".to_string())
}
