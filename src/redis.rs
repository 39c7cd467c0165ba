//! The crate's one Redis client: one node or a Redis Cluster, shared by the cache, the
//! invalidation channel, the results counts and the event claims.
//!
//! Redis is never required to answer a request: every command has a deadline, and a caller's
//! breaker skips Redis for a backoff window (50 ms doubling to 5 s) after an outage-like failure,
//! so an outage costs requests nothing, while connections recover on their own (the connection
//! manager and the cluster client reconnect in the background).
//!
//! Each caller gets its own [`RedisClient`]: its own breaker and its own
//! `redis_commands_total{client,result}` series. A caller whose command is refused (a script
//! error, a wrong type) does not make Redis look down to the others, and a slow 2 s counts batch
//! does not open the breaker of the 50 ms cache lookups.
//!
//! The clients of the counts (counts, event claims, guardrail pauses) are also held by an
//! [`EvictionGuard`] while their Redis may evict what they write: their commands are then not
//! sent, as if the breaker were open.

pub(crate) mod eviction;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClient;
use ::redis::cluster_async::ClusterConnection;
use ::redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
use ::redis::{Cmd, ErrorKind, FromRedisValue, RedisError, ServerErrorKind, Value};
use arc_swap::ArcSwapOption;
use prometheus::{IntCounter, IntGauge};
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::redact::SecretUrl;
pub(crate) use eviction::EvictionGuard;

/// First and longest pause after a failure before Redis is tried again.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The deadline of a batch (a counts flush, a batch's event claims): ten lookups' worth of
/// `cache.redis_timeout`, at least 0.5 s and at most 1 s. A batch is larger than a lookup
/// and no request's latency depends on it, but its deadline is also how long an event waits
/// for an answer before it is refused as unavailable.
pub(crate) fn batch_deadline(redis_timeout: Duration) -> Duration {
    (redis_timeout * 10).clamp(Duration::from_millis(500), Duration::from_secs(1))
}

/// Why the URL of a Redis could not be used.
pub(crate) type RedisUrlError = RedisError;

/// How a connection reaches Redis.
enum Connection {
    /// A single node; the manager reconnects lazily after errors.
    Single(ConnectionManager),
    /// A cluster; the client is built in the background because it must reach a node first.
    Cluster(ArcSwapOption<ClusterConnection>),
}

/// One Redis (a node or a cluster), shared by every [`RedisClient`] made from it.
pub(crate) struct Redis {
    /// The connection.
    connection: Connection,
    /// Node URLs, for the pub/sub subscriber and the logs (which print them without their
    /// credentials).
    nodes: Vec<SecretUrl>,
    /// Whether the last command on this connection got an answer (and one ever did); shared
    /// with [`Health`].
    up: Arc<AtomicBool>,
    /// How many times a command failed for want of a connection (refused, reset, dropped; not
    /// a late answer): the Redis answering after that may be another one (restarted with other
    /// settings, a replica promoted), which the [`EvictionGuard`] checks again before counts go
    /// to it.
    losses: watch::Sender<u64>,
    /// `redis_up`, shared by every Redis this process uses.
    health: Arc<Health>,
    /// The metric families callers resolve their handles from.
    metrics: Metrics,
}

/// `redis_up` is 1 only while every configured Redis answers: with the counts on their own
/// Redis, the gauge must not hide that one of the two is gone.
#[derive(Debug)]
pub(crate) struct Health {
    /// The gauge.
    gauge: IntGauge,
    /// The `up` flag of each Redis, to recompute the gauge when one flips.
    members: Mutex<Vec<Arc<AtomicBool>>>,
}

impl Health {
    /// The health of this process's Redis connections, exporting `redis_up`.
    pub(crate) fn new(metrics: &Metrics) -> Arc<Self> {
        metrics.register_redis();
        Arc::new(Health {
            gauge: metrics.redis_up.clone(),
            members: Mutex::new(Vec::new()),
        })
    }

    /// Whether every Redis answered its last command.
    pub(crate) fn up(&self) -> bool {
        self.gauge.get() == 1
    }

    fn update(&self) {
        let members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        let up = members.iter().all(|m| m.load(Ordering::Relaxed));
        self.gauge.set(i64::from(up));
    }
}

impl Redis {
    /// Parses `url` (one URL, or a comma-separated list of cluster nodes). Nothing is contacted
    /// yet: Redis being down at start must not stop the gateway. `timeout` bounds connecting.
    pub(crate) fn open(
        url: &str,
        timeout: Duration,
        health: &Arc<Health>,
        metrics: &Metrics,
    ) -> Result<Arc<Self>, RedisUrlError> {
        let nodes: Vec<SecretUrl> = url
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(SecretUrl::new)
            .collect();
        let connect = timeout.max(Duration::from_millis(250));
        let connection = if nodes.len() > 1 {
            Connection::Cluster(ArcSwapOption::empty())
        } else {
            let client = ::redis::Client::open(url)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(connect))
                // Deadlines are the callers' (below); the client's own only guards against a
                // reply that never comes.
                .set_response_timeout(Some(Duration::from_secs(10)))
                .set_number_of_retries(1)
                .set_min_delay(BACKOFF_MIN)
                .set_max_delay(BACKOFF_MAX);
            Connection::Single(ConnectionManager::new_lazy_with_config(client, config)?)
        };
        let up = Arc::new(AtomicBool::new(false));
        let redis = Arc::new(Redis {
            connection,
            nodes,
            up: Arc::clone(&up),
            losses: watch::Sender::new(0),
            health: Arc::clone(health),
            metrics: metrics.clone(),
        });
        health.members.lock().unwrap_or_else(|p| p.into_inner()).push(up);
        health.update();
        if let Connection::Cluster(_) = &redis.connection {
            tokio::spawn(Arc::clone(&redis).connect_cluster(connect));
        }
        Ok(redis)
    }

    /// Builds the cluster connection, retrying with backoff until a node answers.
    async fn connect_cluster(self: Arc<Self>, connect: Duration) {
        let Connection::Cluster(slot) = &self.connection else {
            return;
        };
        let mut backoff = BACKOFF_MIN;
        loop {
            let attempt = async {
                ClusterClient::builder(self.nodes.iter().map(SecretUrl::expose))
                    .connection_timeout(connect)
                    .response_timeout(Duration::from_secs(10))
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

    /// A client for `caller` (the `client` label of `redis_commands_total`) whose commands wait
    /// at most `timeout` unless told otherwise.
    pub(crate) fn client(self: &Arc<Self>, caller: &'static str, timeout: Duration) -> RedisClient {
        RedisClient {
            redis: Arc::clone(self),
            timeout,
            breaker: Breaker {
                epoch: Instant::now(),
                open_until_ms: AtomicU64::new(0),
                backoff_ms: AtomicU64::new(0),
            },
            counters: {
                let result = |r: &str| self.metrics.redis_commands.with_label_values(&[caller, r]);
                CommandCounters {
                    ok: result("ok"),
                    error: result("error"),
                    timeout: result("timeout"),
                    skipped: result("skipped"),
                }
            },
            guard: None,
        }
    }

    /// The node URLs, for subscribers.
    pub(crate) fn nodes(&self) -> &[SecretUrl] {
        &self.nodes
    }

    /// Whether the last command on this Redis got an answer.
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Watches [`Redis::losses`].
    pub(crate) fn losses(&self) -> watch::Receiver<u64> {
        self.losses.subscribe()
    }

    /// Sends `cmd` to every node (of a cluster, to every master and replica it knows of) within
    /// `deadline`, past any breaker: per node, its address (without credentials) and its answer
    /// or the error it answered with. `Err` when Redis could not be reached, which marks it down
    /// as any failed command does.
    pub(crate) async fn ask_every_node(
        &self,
        cmd: &Cmd,
        deadline: Duration,
    ) -> Result<Vec<(String, Result<Value, String>)>, Failure> {
        let answers = async {
            match &self.connection {
                Connection::Single(manager) => {
                    let node = self.nodes.first().map(ToString::to_string).unwrap_or_default();
                    match cmd.query_async::<Value>(&mut manager.clone()).await {
                        Ok(value) => Ok(vec![(node, Ok(value))]),
                        Err(e) if !is_outage(&e) => Ok(vec![(node, Err(e.to_string()))]),
                        Err(e) => Err(e),
                    }
                }
                Connection::Cluster(slot) => {
                    let Some(connection) = slot.load_full() else {
                        return Err(RedisError::from((ErrorKind::Io, "cluster not connected yet")));
                    };
                    let every = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllNodes, None));
                    // Without a response policy the cluster client answers a map of node → reply.
                    match (*connection).clone().route_command(cmd.clone(), every).await? {
                        Value::Map(nodes) => Ok(nodes
                            .into_iter()
                            .map(|(node, reply)| {
                                let node = match node {
                                    Value::BulkString(address) => String::from_utf8_lossy(&address).into_owned(),
                                    other => format!("{other:?}"),
                                };
                                match reply {
                                    Value::ServerError(e) => (node, Err(e.to_string())),
                                    reply => (node, Ok(reply)),
                                }
                            })
                            .collect()),
                        other => Err(RedisError::from((
                            ErrorKind::UnexpectedReturnType,
                            "not a map of the nodes' replies",
                            format!("{other:?}"),
                        ))),
                    }
                }
            }
        };
        let failure = match tokio::time::timeout(deadline, answers).await {
            Ok(Ok(answers)) => {
                self.set_up(true);
                return Ok(answers);
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "redis did not answer on every node");
                self.lost(&e);
                Failure::Error
            }
            Err(_) => Failure::Timeout,
        };
        self.set_up(false);
        Err(failure)
    }

    /// Counts a loss when `e` says the connection failed.
    fn lost(&self, e: &RedisError) {
        if !e.is_timeout() && is_outage(e) {
            self.losses.send_modify(|losses| *losses += 1);
        }
    }

    fn set_up(&self, up: bool) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            self.health.update();
        }
    }
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
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

/// Why Redis gave no answer to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Not tried: the caller's breaker is open after a recent outage.
    Skipped,
    /// No answer within the deadline. The command may still have run.
    Timeout,
    /// Redis or the connection answered with an error.
    Error,
}

/// `redis_commands_total{client,result}` of one caller.
#[derive(Debug, Clone)]
pub(crate) struct CommandCounters {
    /// Answered.
    pub(crate) ok: IntCounter,
    /// Failed (refused, connection lost, reply not decoded).
    pub(crate) error: IntCounter,
    /// Past the deadline.
    pub(crate) timeout: IntCounter,
    /// Skipped by the breaker.
    pub(crate) skipped: IntCounter,
}

/// One caller's way to Redis.
pub(crate) struct RedisClient {
    /// The shared connection.
    redis: Arc<Redis>,
    /// Default per-command deadline.
    timeout: Duration,
    /// This caller's failure backoff.
    breaker: Breaker,
    /// This caller's command counts.
    counters: CommandCounters,
    /// For a client of the counts: what holds its commands while their Redis may evict them.
    guard: Option<Arc<EvictionGuard>>,
}

impl std::fmt::Debug for RedisClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisClient")
            .field("redis", &self.redis)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Whether an error says Redis is away (so the breaker should open) rather than that it refused
/// this one command, which retrying later would not change.
fn is_outage(e: &RedisError) -> bool {
    !matches!(
        e.kind(),
        ErrorKind::Server(
            ServerErrorKind::ResponseError
                | ServerErrorKind::ExecAbort
                | ServerErrorKind::NoScript
                | ServerErrorKind::CrossSlot
                | ServerErrorKind::NoPerm
                | ServerErrorKind::NotBusy
                | ServerErrorKind::NoSub
        ) | ErrorKind::Client
            | ErrorKind::UnexpectedReturnType
            | ErrorKind::Parse
            | ErrorKind::Extension
    )
}

impl RedisClient {
    /// This client, held by `guard` while its Redis may evict what it writes.
    pub(crate) fn guarded_by(mut self, guard: &Arc<EvictionGuard>) -> Self {
        self.guard = Some(Arc::clone(guard));
        self
    }

    /// The Redis this client talks to.
    pub(crate) fn redis(&self) -> &Arc<Redis> {
        &self.redis
    }

    /// The client's default deadline.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs one command, pipeline or script under the client's deadline and breaker.
    pub(crate) async fn query<T: FromRedisValue + Send>(&self, request: &impl Ask) -> Result<T, Failure> {
        self.query_within(request, self.timeout).await
    }

    /// As [`RedisClient::query`] with another deadline, for batches larger than one command.
    pub(crate) async fn query_within<T: FromRedisValue + Send>(
        &self,
        request: &impl Ask,
        deadline: Duration,
    ) -> Result<T, Failure> {
        if !self.breaker.allows() {
            self.counters.skipped.inc();
            return Err(Failure::Skipped);
        }
        self.query_now(request, deadline).await
    }

    /// As [`RedisClient::query_within`], but tried even while the breaker is open: for work
    /// with no request whose latency the breaker protects (a shutdown drain, whose deadline may
    /// come before the breaker's window ends). A failure still counts and backs off.
    pub(crate) async fn query_now<T: FromRedisValue + Send>(
        &self,
        request: &impl Ask,
        deadline: Duration,
    ) -> Result<T, Failure> {
        // Held even at shutdown: counts written into a Redis that evicts are lost all the same.
        if let Some(guard) = &self.guard
            && !guard.admits(deadline).await
        {
            self.counters.skipped.inc();
            return Err(Failure::Skipped);
        }
        let answer = tokio::time::timeout(deadline, async {
            match &self.redis.connection {
                Connection::Single(manager) => request.ask(&mut manager.clone()).await,
                Connection::Cluster(slot) => match slot.load_full() {
                    Some(connection) => request.ask(&mut (*connection).clone()).await,
                    None => Err(RedisError::from((ErrorKind::Io, "cluster not connected yet"))),
                },
            }
        })
        .await;
        let failure = match answer {
            Ok(Ok(value)) => {
                self.breaker.succeeded();
                self.redis.set_up(true);
                self.counters.ok.inc();
                return Ok(value);
            }
            Ok(Err(e)) if e.is_timeout() => {
                tracing::debug!(error = %e, "redis command timed out");
                Failure::Timeout
            }
            Ok(Err(e)) if !is_outage(&e) => {
                // Redis answered: it is up, and the breaker stays closed for the others.
                self.redis.set_up(true);
                self.counters.error.inc();
                tracing::warn!(error = %e, "redis refused a command");
                return Err(Failure::Error);
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "redis command failed");
                self.redis.lost(&e);
                Failure::Error
            }
            Err(_) => {
                tracing::debug!(?deadline, "redis command timed out");
                Failure::Timeout
            }
        };
        match failure {
            Failure::Timeout => self.counters.timeout.inc(),
            _ => self.counters.error.inc(),
        }
        self.breaker.failed();
        self.redis.set_up(false);
        Err(failure)
    }
}

/// What Redis answers: one command, a pipeline or a script.
pub(crate) trait Ask: Sync {
    /// Sends it on `connection` and decodes the reply.
    fn ask<T: FromRedisValue + Send, C: ConnectionLike + Send>(
        &self,
        connection: &mut C,
    ) -> impl Future<Output = ::redis::RedisResult<T>> + Send;
}

impl Ask for Cmd {
    async fn ask<T: FromRedisValue + Send, C: ConnectionLike + Send>(
        &self,
        connection: &mut C,
    ) -> ::redis::RedisResult<T> {
        self.query_async(connection).await
    }
}

impl Ask for ::redis::Pipeline {
    async fn ask<T: FromRedisValue + Send, C: ConnectionLike + Send>(
        &self,
        connection: &mut C,
    ) -> ::redis::RedisResult<T> {
        self.query_async(connection).await
    }
}

impl Ask for ::redis::ScriptInvocation<'_> {
    async fn ask<T: FromRedisValue + Send, C: ConnectionLike + Send>(
        &self,
        connection: &mut C,
    ) -> ::redis::RedisResult<T> {
        self.invoke_async(connection).await
    }
}
