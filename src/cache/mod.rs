//! Two cache tiers in front of the model store (ARCHITECTURE.md §6): an in-process W-TinyLFU tier
//! (moka) and Redis, both holding a user's whole ranked list under
//! `recgw:{model}:{version}:{generation}:{user}` (the local tier under a 128-bit hash of the same
//! parts, so a hit builds no key string). Pages and filters are cut after the cache.
//!
//! A new model version changes the key, so nothing stale is served after a swap; an
//! invalidation bumps the model's generation (in Redis, published to every replica), which
//! changes the key too. Concurrent misses for one key are coalesced into one read.
//!
//! A global list (a model without a user column, such as `popular`) is held once per loaded
//! version by the model itself, so neither tier keeps copies of it per user: it is served from
//! memory (`source = local`) and counts as no cache lookup. A version with a mapped serving
//! snapshot is read from it after a local miss, skipping Redis (`source = snapshot`).

mod codec;

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures::StreamExt;
use moka::Expiry;
use moka::future::Cache as Moka;

use crate::config::CacheSettings;
use crate::keys;
use crate::metrics::Metrics;
use crate::redact::SecretUrl;
use crate::redis::{Failure, Redis, RedisClient};
use crate::store::{LoadedModel, RankedList, StoreError};

/// Where a served list came from: the tier that answered, or the placement default standing in
/// for an arm that could not. The one name of each, for responses, the exposure log and the
/// document alike.
///
/// The tiers are declared in the order [`TieredCache::list`] tries them, and that order is the
/// type's `Ord`: of two sources that answered one request (an interleaved page reads two
/// lists), the greater is the one the request waited for. `Fallback` comes after every tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Source {
    /// This process's memory (and a global list, held by its loaded version).
    Local,
    /// The model version's mapped serving snapshot.
    Snapshot,
    /// Redis.
    Redis,
    /// The model's Parquet files.
    Store,
    /// The arm could not answer; the placement default did (never returned by the cache).
    Fallback,
}

impl Source {
    /// The name used in responses and logs.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Source::Local => "local",
            Source::Snapshot => "snapshot",
            Source::Redis => "redis",
            Source::Store => "store",
            Source::Fallback => "fallback",
        }
    }
}

/// A cached lookup result: the list (or its absence) and how long to keep it locally.
#[derive(Debug, Clone)]
struct Cached {
    /// `None` when the model has no list for the user (cached so cold users skip the store).
    list: Option<RankedList>,
    /// [`model_tag`] of the model location the list is of, so an invalidation can drop the
    /// model's entries at once (their keys are hashes and cannot be matched by prefix).
    model: u64,
    /// Jittered lifetime of this entry.
    ttl: Duration,
    /// Where it was read from, reported to requests that waited for the same read.
    origin: Source,
}

/// A model location's 64-bit xxh3, held by each local entry: locations are few, so a collision
/// between two of them (which would only drop the other's entries too) has odds of 2^-64.
fn model_tag(location: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(location.as_bytes())
}

/// Gives each local entry its own jittered TTL.
struct PerEntryTtl;

impl Expiry<u128, Cached> for PerEntryTtl {
    fn expire_after_create(&self, _key: &u128, value: &Cached, _created_at: std::time::Instant) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// Per-model invalidation generations. The map is replaced whole when a catalog brings new
/// models, so the per-request read takes no lock.
#[derive(Debug, Default)]
struct Generations(ArcSwap<HashMap<String, Arc<AtomicU64>>>);

impl Generations {
    fn get(&self, model: &str) -> u64 {
        self.0.load().get(model).map_or(0, |g| g.load(Ordering::Relaxed))
    }

    /// Raises `model`'s generation to `generation`; true when it moved.
    fn raise(&self, model: &str, generation: u64) -> bool {
        self.0
            .load()
            .get(model)
            .is_some_and(|g| g.fetch_max(generation, Ordering::Relaxed) < generation)
    }

    /// Starts tracking `models` (at generation 0 until Redis says otherwise).
    fn track(&self, models: impl IntoIterator<Item = String>) {
        let mut map = HashMap::clone(&self.0.load());
        for model in models {
            map.entry(model).or_default();
        }
        self.0.store(Arc::new(map));
    }

    fn models(&self) -> Vec<String> {
        self.0.load().keys().cloned().collect()
    }
}

/// Both tiers, the generations and the counters.
#[derive(Debug)]
pub(crate) struct TieredCache {
    /// The in-process tier (also the coalescer of concurrent misses).
    /// Keyed by [`TieredCache::local_key`]: a hash of the Redis key's parts, built on the stack,
    /// so a hit allocates no key string.
    local: Moka<u128, Cached>,
    /// Whether `local` is used for hits (`cache.local_capacity > 0`).
    local_enabled: bool,
    /// The Redis tier's lookups and write-backs, when configured.
    redis: Option<Arc<RedisClient>>,
    /// Generation bumps, polls and publishes: their own client, so a failed invalidation does
    /// not make lookups skip Redis, nor the reverse.
    invalidation: Option<RedisClient>,
    /// Invalidation generation per model location.
    generations: Generations,
    /// `cache.ttl`.
    default_ttl: Duration,
    /// Counters and histograms.
    metrics: Metrics,
    /// Randomness for TTL jitter.
    jitter: RandomState,
    /// Bounds store reads in flight (`models.max_concurrent_reads`).
    store_reads: tokio::sync::Semaphore,
}

impl TieredCache {
    /// Builds the tiers for `models` (locations) over `redis` (none: local tier only), letting
    /// at most `max_concurrent_reads` store reads run at once; Redis is not contacted yet.
    pub(crate) fn new(
        config: &CacheSettings,
        redis: Option<&Arc<Redis>>,
        max_concurrent_reads: usize,
        models: impl IntoIterator<Item = String>,
        metrics: Metrics,
    ) -> Self {
        let local_enabled = config.local_capacity > 0;
        let local = Moka::builder()
            .max_capacity(config.local_capacity)
            .expire_after(PerEntryTtl)
            .support_invalidation_closures()
            .build();
        TieredCache {
            local,
            local_enabled,
            redis: redis.map(|r| Arc::new(r.client("cache", config.redis_timeout))),
            invalidation: redis.map(|r| r.client("invalidation", config.redis_timeout)),
            generations: {
                let generations = Generations::default();
                generations.track(models);
                generations
            },
            default_ttl: config.ttl,
            metrics,
            jitter: RandomState::new(),
            store_reads: tokio::sync::Semaphore::new(max_concurrent_reads.max(1)),
        }
    }

    /// The Redis key of `user`'s list of `model` at `version`, under the model's generation now.
    fn key(&self, model: &str, version: &str, user: &str) -> String {
        keys::list(model, version, self.generations.get(model), user)
    }

    /// The local tier's key of the same parts as [`TieredCache::key`]: their 128-bit xxh3, each
    /// part ended by a byte no part holds (ids and locations are text, `0xff` is not UTF-8), so
    /// two lists share a key only by a collision of 128 bits.
    fn local_key(&self, model: &str, version: &str, user: &str) -> u128 {
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        for part in [
            model.as_bytes(),
            version.as_bytes(),
            &self.generations.get(model).to_le_bytes(),
            user.as_bytes(),
        ] {
            hasher.update(part);
            hasher.update(&[0xff]);
        }
        hasher.digest128()
    }

    /// `ttl` ±10%, so lists loaded together do not expire together.
    fn jittered(&self, ttl: Duration) -> Duration {
        let unit = (self.jitter.hash_one(Instant::now()) >> 11) as f64 / (1u64 << 53) as f64;
        ttl.mul_f64(0.9 + 0.2 * unit)
    }

    /// The list of `user` in `model` (a loaded version of the model at `location`), from the
    /// nearest tier that has it; `ttl` overrides `cache.ttl` (an arm's `cache_ttl`).
    pub(crate) async fn list(
        &self,
        location: &str,
        model: &LoadedModel,
        user: &str,
        ttl: Option<Duration>,
    ) -> Result<(Option<RankedList>, Source), Arc<StoreError>> {
        if let Some(list) = model.global_list() {
            return Ok((Some(list), Source::Local));
        }
        let key = self.local_key(location, model.version(), user);
        if self.local_enabled {
            if let Some(hit) = self.local.get(&key).await {
                self.metrics.cache.local_hit.inc();
                return Ok((hit.list, Source::Local));
            }
            self.metrics.cache.local_miss.inc();
        }
        // Boxed: the miss path's futures (the coalesced load, a Redis round trip) are several
        // times the size of the hit's, and every request's future would carry them, moved on
        // each poll through the layers above.
        Box::pin(self.miss(key, location, model, user, ttl)).await
    }

    /// [`TieredCache::list`] past the local tier.
    async fn miss(
        &self,
        key: u128,
        location: &str,
        model: &LoadedModel,
        user: &str,
        ttl: Option<Duration>,
    ) -> Result<(Option<RankedList>, Source), Arc<StoreError>> {
        let ttl = self.jittered(ttl.unwrap_or(self.default_ttl));
        // A mapped snapshot answers faster than a Redis round trip: Redis is neither read nor
        // written for its lists, only the local tier keeps them (saving the list's assembly).
        if let Some(snapshot) = model.snapshot() {
            let list = snapshot.lookup(user);
            if self.local_enabled {
                let cached = Cached {
                    list: list.clone(),
                    model: model_tag(location),
                    ttl,
                    origin: Source::Snapshot,
                };
                self.local.insert(key, cached).await;
            }
            return Ok((list, Source::Snapshot));
        }
        let entry = self
            .local
            .entry(key)
            .or_try_insert_with(self.load(location, model, user, ttl))
            .await?;
        let cached = entry.into_value();
        Ok((cached.list, cached.origin))
    }

    /// The miss path: Redis, then the store (whose result is written back to Redis without
    /// delaying the response).
    async fn load(&self, location: &str, model: &LoadedModel, user: &str, ttl: Duration) -> Result<Cached, StoreError> {
        // Locally a disabled tier keeps entries for no time: they only serve the coalescing.
        let local_ttl = if self.local_enabled { ttl } else { Duration::ZERO };
        let key = self.key(location, model.version(), user);
        if let Some(redis) = &self.redis {
            match redis.query::<Option<Vec<u8>>>(::redis::cmd("GET").arg(&key)).await {
                Ok(Some(bytes)) => match codec::decode(&bytes) {
                    Some(list) => {
                        self.metrics.cache.redis_hit.inc();
                        return Ok(Cached {
                            list,
                            model: model_tag(location),
                            ttl: local_ttl,
                            origin: Source::Redis,
                        });
                    }
                    None => self.metrics.cache.redis_error.inc(),
                },
                Ok(None) => self.metrics.cache.redis_miss.inc(),
                Err(Failure::Skipped) => self.metrics.cache.redis_skipped.inc(),
                Err(Failure::Timeout) => self.metrics.cache.redis_timeout.inc(),
                Err(Failure::Error) => self.metrics.cache.redis_error.inc(),
            }
        }
        let list = {
            // Closed only when the cache is dropped, which no request outlives.
            let _permit = self.store_reads.acquire().await;
            let _timer = self.metrics.store_read(location).start_timer();
            model.lookup(user).await?
        };
        if let Some(redis) = &self.redis {
            let set = ::redis::cmd("SET")
                .arg(&key)
                .arg(codec::encode(list.as_deref()))
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64)
                .to_owned();
            let redis = Arc::clone(redis);
            tokio::spawn(async move { redis.query::<()>(&set).await });
        }
        Ok(Cached {
            list,
            model: model_tag(location),
            ttl: local_ttl,
            origin: Source::Store,
        })
    }

    /// Invalidates every cached list of `model` on every replica: bumps its generation in Redis
    /// and publishes it. An operator asked for it, so Redis is tried even when a recent poll
    /// failed and the invalidation client's breaker is still backing off. Returns the new generation and whether other replicas were told
    /// (false without Redis, or when Redis did not answer: then only this replica forgets).
    pub(crate) async fn invalidate(&self, model: &str) -> (u64, bool) {
        let local = self.generations.get(model);
        if let Some(redis) = &self.invalidation
            && let Ok(mut generation) = redis
                .query_now::<u64>(::redis::cmd("INCR").arg(keys::generation(model)), redis.timeout())
                .await
        {
            // Redis may be behind this replica (it restarted without persistence, or an
            // invalidation happened while it was down): the generation must still move on.
            if generation <= local {
                generation = local + 1;
                let _ = redis
                    .query_now::<()>(
                        ::redis::cmd("SET").arg(keys::generation(model)).arg(generation),
                        redis.timeout(),
                    )
                    .await;
            }
            self.apply(model, generation, Forget::Always);
            let message = format!("{generation} {model}");
            let published = redis
                .query_now::<i64>(
                    ::redis::cmd("PUBLISH").arg(keys::INVALIDATE_CHANNEL).arg(message),
                    redis.timeout(),
                )
                .await
                .is_ok();
            return (generation, published);
        }
        self.apply(model, local + 1, Forget::Always);
        (local + 1, false)
    }

    /// Adopts a generation (never going back) and drops the model's local entries: always for
    /// an invalidation, only when the generation moved for a catch-up poll.
    fn apply(&self, model: &str, generation: u64, forget: Forget) {
        let moved = self.generations.raise(model, generation);
        if moved || forget == Forget::Always {
            let tag = model_tag(model);
            if let Err(e) = self.local.invalidate_entries_if(move |_, cached| cached.model == tag) {
                tracing::warn!(error = %e, "cannot drop local entries; they expire by TTL");
            }
            tracing::info!(model, generation, "cache entries of the model dropped");
        }
    }

    /// Starts keying lists of `models` (new in a reloaded catalog) by their generation, which
    /// is read from Redis at once so this replica agrees with the others.
    pub(crate) async fn track(&self, models: impl IntoIterator<Item = String>) {
        self.generations.track(models);
        self.poll_generations().await;
    }

    /// Starts the replica side of invalidation: a subscriber applying published generations,
    /// and a poll every `interval` that catches up on messages missed while disconnected.
    pub(crate) fn spawn_sync(self: &Arc<Self>, interval: Duration) -> Vec<tokio::task::JoinHandle<()>> {
        let Some(redis) = &self.invalidation else {
            return Vec::new();
        };
        let poller = {
            let cache = Arc::clone(self);
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(interval);
                loop {
                    ticker.tick().await;
                    cache.poll_generations().await;
                }
            })
        };
        let subscriber = tokio::spawn(subscribe(Arc::clone(self), redis.redis().nodes().to_vec()));
        vec![poller, subscriber]
    }

    async fn poll_generations(&self) {
        let Some(redis) = &self.invalidation else {
            return;
        };
        // One GET per model rather than MGET: in a cluster the keys live on different slots.
        for model in &self.generations.models() {
            if let Ok(Some(generation)) = redis
                .query::<Option<u64>>(::redis::cmd("GET").arg(keys::generation(model)))
                .await
            {
                self.apply(model, generation, Forget::IfMoved);
            }
        }
    }
}

/// When [`TieredCache::apply`] drops a model's local entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Forget {
    /// An invalidation: drop whatever the generation does.
    Always,
    /// A catch-up poll: drop only if the generation moved.
    IfMoved,
}

/// Listens on the invalidation channel, reconnecting (to the next node, in a cluster) with
/// backoff; every (re)connection first catches up by polling.
async fn subscribe(cache: Arc<TieredCache>, nodes: Vec<SecretUrl>) {
    let mut backoff = Duration::from_millis(100);
    for node in nodes.iter().cycle() {
        let connected = async {
            let mut pubsub = ::redis::Client::open(node.expose())?.get_async_pubsub().await?;
            pubsub.subscribe(keys::INVALIDATE_CHANNEL).await?;
            Ok::<_, ::redis::RedisError>(pubsub)
        };
        match connected.await {
            Ok(mut pubsub) => {
                backoff = Duration::from_millis(100);
                cache.poll_generations().await;
                let mut messages = pubsub.on_message();
                while let Some(message) = messages.next().await {
                    let payload: String = message.get_payload().unwrap_or_default();
                    match payload
                        .split_once(' ')
                        .and_then(|(g, m)| Some((g.parse::<u64>().ok()?, m)))
                    {
                        Some((generation, model)) => cache.apply(model, generation, Forget::Always),
                        None => tracing::warn!(payload, "ignoring malformed invalidation message"),
                    }
                }
                tracing::warn!(node = %node, "invalidation subscription lost; reconnecting");
            }
            Err(e) => tracing::debug!(node = %node, error = %e, "cannot subscribe to invalidations yet"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
