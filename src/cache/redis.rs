//! The shared tier: one Redis or a Redis Cluster. It is never required to answer: every command
//! has `cache.redis_timeout`, and after a failure a breaker skips Redis for a backoff window
//! (50 ms doubling to 5 s) so an outage costs requests nothing, while connections recover on
//! their own (the connection manager and the cluster client reconnect in the background).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue};

use crate::metrics::Metrics;

/// First and longest pause after a failure before Redis is tried again.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How the tier reaches Redis.
enum Connection {
    /// A single node; the manager reconnects lazily after errors.
    Single(ConnectionManager),
    /// A cluster; the client is built in the background because it must reach a node first.
    Cluster(ArcSwapOption<ClusterConnection>),
}

/// Skips Redis for a growing window after each failure, and resets on success.
#[derive(Debug)]
struct Breaker {
    /// Reference point of the millisecond clock below.
    epoch: Instant,
    /// Redis is skipped until this many ms after `epoch`.
    open_until_ms: AtomicU64,
    /// The next window, doubled on each failure.
    backoff_ms: AtomicU64,
}

impl Breaker {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn allows(&self) -> bool {
        self.now_ms() >= self.open_until_ms.load(Ordering::Relaxed)
    }

    fn failed(&self) {
        let backoff = self
            .backoff_ms
            .load(Ordering::Relaxed)
            .max(BACKOFF_MIN.as_millis() as u64);
        self.open_until_ms.store(self.now_ms() + backoff, Ordering::Relaxed);
        self.backoff_ms
            .store((backoff * 2).min(BACKOFF_MAX.as_millis() as u64), Ordering::Relaxed);
    }

    fn succeeded(&self) {
        self.backoff_ms.store(0, Ordering::Relaxed);
    }
}

/// Redis, as the cache and the invalidation channel use it.
pub(crate) struct RedisTier {
    /// The connection.
    connection: Connection,
    /// Node URLs from `cache.redis_url`, for the pub/sub subscriber.
    nodes: Vec<String>,
    /// Per-command deadline.
    timeout: Duration,
    /// Failure backoff.
    breaker: Breaker,
    /// Whether any command succeeded yet: until then Redis is not reported up.
    answered: AtomicBool,
    /// Where failures are counted.
    metrics: Metrics,
}

impl RedisTier {
    /// Parses `cache.redis_url` (one URL, or a comma-separated list of cluster nodes). Nothing
    /// is contacted yet: Redis being down at start must not stop the gateway.
    pub fn new(url: &str, timeout: Duration, metrics: Metrics) -> redis::RedisResult<Arc<Self>> {
        let nodes: Vec<String> = url
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(String::from)
            .collect();
        let connection = if nodes.len() > 1 {
            Connection::Cluster(ArcSwapOption::empty())
        } else {
            let client = redis::Client::open(url)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout.max(Duration::from_millis(250))))
                // The per-command deadline is ours (below); the client's own only guards
                // against a reply that never comes.
                .set_response_timeout(Some(timeout * 4))
                .set_number_of_retries(1)
                .set_min_delay(BACKOFF_MIN)
                .set_max_delay(BACKOFF_MAX);
            Connection::Single(ConnectionManager::new_lazy_with_config(client, config)?)
        };
        metrics.register_redis();
        let tier = Arc::new(RedisTier {
            connection,
            nodes,
            timeout,
            answered: AtomicBool::new(false),
            breaker: Breaker {
                epoch: Instant::now(),
                open_until_ms: AtomicU64::new(0),
                backoff_ms: AtomicU64::new(0),
            },
            metrics,
        });
        if let Connection::Cluster(_) = &tier.connection {
            tokio::spawn(Arc::clone(&tier).connect_cluster());
        }
        Ok(tier)
    }

    /// Builds the cluster connection, retrying with backoff until a node answers.
    async fn connect_cluster(self: Arc<Self>) {
        let Connection::Cluster(slot) = &self.connection else {
            return;
        };
        let mut backoff = BACKOFF_MIN;
        loop {
            let attempt = async {
                ClusterClient::builder(self.nodes.clone())
                    .connection_timeout(self.timeout.max(Duration::from_millis(250)))
                    .response_timeout(self.timeout * 4)
                    .build()?
                    .get_async_connection()
                    .await
            };
            match attempt.await {
                Ok(connection) => {
                    slot.store(Some(Arc::new(connection)));
                    tracing::info!(nodes = ?self.nodes, "connected to Redis Cluster");
                    return;
                }
                Err(e) => {
                    tracing::warn!(nodes = ?self.nodes, error = %e, retry_in = ?backoff, "Redis Cluster unreachable");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// The node URLs, for subscribers.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// Whether Redis answered the last command (and has answered at all).
    pub fn is_up(&self) -> bool {
        self.answered.load(Ordering::Relaxed) && self.breaker.backoff_ms.load(Ordering::Relaxed) == 0
    }

    /// Runs one command or pipeline under `cache.redis_timeout` and the breaker; `None` when
    /// Redis did not answer (skipped, timed out or failed — each counted), so callers go on
    /// without it.
    pub async fn query<T: FromRedisValue>(&self, request: &impl Ask) -> Option<T> {
        self.query_within(request, self.timeout).await
    }

    /// As [`RedisTier::query`] with another deadline, for background batches that are larger
    /// than a request's single command.
    pub async fn query_within<T: FromRedisValue>(&self, request: &impl Ask, deadline: Duration) -> Option<T> {
        if !self.breaker.allows() {
            self.metrics.cache.redis_skipped.inc();
            return None;
        }
        self.query_now(request, deadline).await
    }

    /// As [`RedisTier::query_within`], but tried even while the breaker is open: for a
    /// shutdown drain, which has no request whose latency the breaker would protect, and whose
    /// deadline may come before the breaker's window ends. A failure still counts and backs off.
    pub async fn query_now<T: FromRedisValue>(&self, request: &impl Ask, deadline: Duration) -> Option<T> {
        let answer = tokio::time::timeout(deadline, async {
            match &self.connection {
                Connection::Single(manager) => request.ask(&mut manager.clone()).await,
                Connection::Cluster(slot) => match slot.load_full() {
                    Some(connection) => request.ask(&mut (*connection).clone()).await,
                    None => Err(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "cluster not connected yet",
                    ))),
                },
            }
        })
        .await;
        match answer {
            Ok(Ok(value)) => {
                self.breaker.succeeded();
                self.answered.store(true, Ordering::Relaxed);
                self.metrics.redis_up.set(1);
                return Some(value);
            }
            Ok(Err(e)) if e.is_timeout() => {
                self.metrics.cache.redis_timeout.inc();
                tracing::debug!(error = %e, "redis command timed out; going on without it");
            }
            Ok(Err(e)) => {
                self.metrics.cache.redis_error.inc();
                tracing::debug!(error = %e, "redis command failed; going on without it");
            }
            Err(_) => {
                self.metrics.cache.redis_timeout.inc();
                tracing::debug!(timeout = ?self.timeout, "redis command timed out; going on without it");
            }
        }
        self.breaker.failed();
        self.metrics.redis_up.set(0);
        None
    }
}

/// What Redis answers: one command or a pipeline of them.
pub(crate) trait Ask: Sync {
    /// Sends it on `connection` and decodes the reply.
    fn ask<T: FromRedisValue, C: ConnectionLike + Send>(
        &self,
        connection: &mut C,
    ) -> impl Future<Output = redis::RedisResult<T>> + Send;
}

impl Ask for Cmd {
    async fn ask<T: FromRedisValue, C: ConnectionLike + Send>(&self, connection: &mut C) -> redis::RedisResult<T> {
        self.query_async(connection).await
    }
}

impl Ask for redis::Pipeline {
    async fn ask<T: FromRedisValue, C: ConnectionLike + Send>(&self, connection: &mut C) -> redis::RedisResult<T> {
        self.query_async(connection).await
    }
}

impl std::fmt::Debug for RedisTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTier")
            .field("nodes", &self.nodes)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}
