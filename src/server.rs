//! Start-up and the serving loop: load experiments (a bad set stops start-up, with every
//! problem listed), create the model slots, bind, then serve while models load in the
//! background so `/health` answers at once and `/ready` tells when serving is complete.

mod connections;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use self::connections::Limits;

use crate::api;
use crate::auth::Keys;
use crate::cache::TieredCache;
use crate::config::{Settings, SettingsError};
use crate::experiment::{Catalog, Problems};
use crate::feedback::counts::Tally;
use crate::feedback::events::EventLog;
use crate::feedback::token::Signer;
use crate::gateway::{Gateway, Parts};
use crate::logs::LogWriter;
use crate::metrics::Metrics;
use crate::redis::EvictionGuard;
use crate::redis::{Health, Redis, RedisUrlError, batch_deadline};
use crate::store::{ModelRegistry, SnapshotSettings, StoreError, private_dir};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is out of range (see `Settings::validate`).
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The experiments folder is invalid.
    #[error("experiments rejected:\n{0}")]
    Experiments(#[from] Problems),
    /// `models.root` is unusable.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `logs.root` is unusable.
    #[error("invalid logs.root: {0}")]
    Logs(#[source] StoreError),
    /// `auth.keys` holds a malformed digest.
    #[error("invalid settings: {0}")]
    Auth(String),
    /// `cache.redis_url` or `results.redis_url` cannot be parsed.
    #[error("invalid {setting}: {source}")]
    Redis {
        /// The setting holding the URL.
        setting: &'static str,
        /// Why it cannot be used.
        #[source]
        source: RedisUrlError,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address from `server.listen`.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// A bound, not yet serving gateway.
pub struct Server {
    /// State shared with every request.
    gateway: Arc<Gateway>,
    /// API keys, for the HTTP layer that checks them; empty when auth is off.
    keys: Arc<Keys>,
    /// The bound socket.
    listener: TcpListener,
    /// Where it listens (the real port when `server.listen` asked for port 0).
    local_addr: SocketAddr,
    /// How often models are polled.
    refresh_interval: Duration,
    /// `server.request_timeout`: past it a request gets a 504 (408 when its body is late).
    request_timeout: Duration,
    /// `server.access_log`.
    access_log: bool,
    /// The bounds of each connection, and on their number.
    limits: Limits,
    /// `server.shutdown_grace`: how long in-flight requests get after a shutdown signal.
    shutdown_grace: Duration,
    /// `experiments.reload_interval`: how often the experiments folder is re-read, and cache
    /// generations with it (for replicas that missed an invalidation), and the counts' Redis's
    /// eviction policy (which `CONFIG SET` changes without a reconnection).
    sync_interval: Duration,
}

impl Server {
    /// Loads the experiments, creates the model slots and binds `server.listen`.
    pub async fn bind(settings: &Settings) -> Result<Server, StartError> {
        settings.validate()?;
        let catalog = Catalog::load_dir(&settings.experiments.dir)?;
        let metrics = Metrics::new();
        let models = catalog.models();
        let locations = models.iter().map(|m| m.location.clone());
        let (health, cache_redis, results_redis) = redis_connections(settings, &metrics)?;
        let cache = Arc::new(TieredCache::new(
            &settings.cache,
            cache_redis.as_ref(),
            settings.models.max_concurrent_reads,
            locations,
            metrics.clone(),
        ));
        let models = Arc::new(
            ModelRegistry::new(&settings.models.root, models, metrics.clone())?.with_snapshots(SnapshotSettings {
                dir: snapshot_dir(&settings.models.snapshot_dir),
                max_bytes: settings.models.snapshot_max_bytes,
            }),
        );
        if settings.tracking.secret.is_empty() {
            tracing::warn!(
                "tracking.secret is not set: tokens are signed with a random per-process key, so events \
                 must come back to this replica; set RECGW__TRACKING__SECRET when replicas share traffic"
            );
        }
        let signer = Signer::rotating(&settings.tracking.secret, settings.tracking.token_max_age)
            .with_format(settings.tracking.token_format);
        let timeout = batch_deadline(settings.cache.redis_timeout);
        let eviction = results_redis
            .as_ref()
            .map(|r| EvictionGuard::new(r, settings.results.eviction_check, timeout));
        // Every client that writes what the results are made of waits for the guard.
        let counts_client = |caller, timeout| {
            results_redis
                .as_ref()
                .zip(eviction.as_ref())
                .map(|(redis, guard)| redis.client(caller, timeout).guarded_by(guard))
        };
        let events = EventLog::new(signer, counts_client("events", timeout));
        let guard_redis = counts_client("guardrails", settings.cache.redis_timeout);
        let tally = Arc::new(Tally::new(
            counts_client("counts", timeout),
            metrics.results_pending.clone(),
            metrics.results_users_uncounted.clone(),
            &settings.results,
        ));
        let keys = Keys::new(&settings.auth.keys, settings.auth.loopback_admin).map_err(StartError::Auth)?;
        if keys.is_off() {
            let admin = if keys.loopback_admin() {
                "admin routes (reload, cache invalidation) answer every caller on this host without a key: \
                 every local process, and behind a sidecar or local reverse proxy every request it forwards; \
                 set auth.loopback_admin = false (or configure auth.keys) unless nothing else runs here"
            } else {
                "admin routes answer nobody (auth.loopback_admin = false) until auth.keys holds an admin key"
            };
            tracing::warn!(
                "AUTH IS OFF: no auth.keys are configured, so every client route is open to anyone who can \
                 reach {}, and {admin}",
                settings.server.listen
            );
        }
        let logs = LogWriter::new(&settings.logs, &metrics).map_err(StartError::Logs)?;
        let dir = settings.experiments.dir.clone();
        let gateway = Arc::new(Gateway::new(
            catalog,
            dir,
            Parts {
                models,
                cache,
                metrics,
                events,
                tally,
                redis: health,
                eviction,
                logs,
                guard_redis,
            },
        ));
        let addr = settings.server.listen;
        let bound = TcpListener::bind(addr).await;
        let (listener, local_addr) = bound
            .and_then(|listener| listener.local_addr().map(|local| (listener, local)))
            .map_err(|source| StartError::Bind { addr, source })?;
        let server = &settings.server;
        Ok(Server {
            gateway,
            keys: Arc::new(keys),
            listener,
            local_addr,
            refresh_interval: settings.models.refresh_interval,
            sync_interval: settings.experiments.reload_interval,
            shutdown_grace: server.shutdown_grace,
            request_timeout: server.request_timeout,
            access_log: server.access_log,
            limits: Limits {
                header_read_timeout: server.header_read_timeout,
                idle_timeout: server.idle_timeout,
                max_connections: server.max_connections,
                http2_max_concurrent_streams: server.http2_max_concurrent_streams,
            },
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The HTTP application this server runs, for embedding it elsewhere (the fuzz targets).
    pub fn app(&self) -> impl poem::Endpoint + use<> {
        api::app(
            Arc::clone(&self.gateway),
            Arc::clone(&self.keys),
            self.request_timeout,
            self.access_log,
        )
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        self.gateway.models().spawn_polling(self.refresh_interval);
        let mut tasks = self.gateway.cache().spawn_sync(self.sync_interval);
        tasks.push(self.gateway.spawn_reloading(self.sync_interval));
        tasks.push(self.gateway.spawn_guarding());
        tasks.push(self.gateway.tally().spawn_flushing());
        // Not aborted with the others either: the counts' drain may wait for a check to pass.
        let eviction_checking = self
            .gateway
            .eviction()
            .map(|eviction| eviction.spawn_checking(self.sync_interval));
        // Not aborted with the others: the drain below waits for a flush under way instead.
        let log_flushing = self.gateway.logs().map(LogWriter::spawn_flushing);
        tracing::info!(addr = %self.local_addr, "recgw listening");
        let app = self.app();
        let refused = self.gateway.metrics().connections_refused.clone();
        let result = connections::serve(self.listener, app, self.limits, refused, shutdown, self.shutdown_grace).await;
        tasks.iter().for_each(|task| task.abort());
        self.gateway.models().stop_polling();
        let deadline = tokio::time::Instant::now() + self.shutdown_grace;
        let logs = async {
            if let Some(logs) = self.gateway.logs() {
                // drain says what it could not write.
                logs.drain(deadline).await;
            }
        };
        let (counts, ()) = tokio::join!(self.gateway.tally().drain(deadline), logs);
        if !counts {
            tracing::error!("result counts could not be flushed to Redis before exit");
        }
        for task in [log_flushing, eviction_checking].into_iter().flatten() {
            task.abort();
        }
        result
    }
}

/// `models.snapshot_dir` when it is fit for snapshots ([`private_dir`]: created if missing,
/// this process's alone, writable); else why not, and every model is served by page reads
/// (said once, loudly, and in `/ready`). The gateway still starts: page reads answer the same
/// lists, and a folder someone else took in a shared temp folder must not stop a replica.
fn snapshot_dir(dir: &std::path::Path) -> Result<std::path::PathBuf, String> {
    private_dir(dir).inspect_err(|why| {
        tracing::warn!(dir = %dir.display(), problem = %why, "models.snapshot_dir refused: models are served by page reads");
    })
}

/// The Redis of the cache and that of the counts and event claims (`results.redis_url`, by
/// default the cache's, then one connection serves both), and their shared health.
#[allow(clippy::type_complexity)]
fn redis_connections(
    settings: &Settings,
    metrics: &Metrics,
) -> Result<(Option<Arc<Health>>, Option<Arc<Redis>>, Option<Arc<Redis>>), StartError> {
    let cache_url = settings.cache.redis_url.trim();
    let results_url = match settings.results.redis_url.trim() {
        "" => cache_url,
        url => url,
    };
    if cache_url.is_empty() && results_url.is_empty() {
        return Ok((None, None, None));
    }
    let health = Health::new(metrics);
    let timeout = settings.cache.redis_timeout;
    let open = |url: &str, setting| {
        Redis::open(url, timeout, &health, metrics).map_err(|source| StartError::Redis { setting, source })
    };
    let cache = (!cache_url.is_empty())
        .then(|| open(cache_url, "cache.redis_url"))
        .transpose()?;
    let results = match &cache {
        Some(cache) if results_url == cache_url => {
            tracing::warn!(
                "result counts, event claims and the replicas' sequence numbers share the cache's Redis \
                 (results.redis_url is not set, or the same as cache.redis_url): a cache is run with an \
                 evicting maxmemory-policy such as allkeys-lru, which would drop them without a word (counts \
                 lost, events counted twice), so counts are held while it runs anything but noeviction \
                 (results.eviction_check), and a noeviction Redis refuses cache writes once it is full; give \
                 the counts a Redis of their own"
            );
            Some(Arc::clone(cache))
        }
        _ => Some(open(results_url, "results.redis_url")?),
    };
    Ok((Some(health), cache, results))
}
