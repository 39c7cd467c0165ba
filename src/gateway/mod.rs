//! The use case behind the HTTP API, and the state it runs on. A `Gateway` serves a page of
//! a user's recommendations in one call (`Gateway::serve_page`) and counts the events that
//! come back in another (`Gateway::record_events`). It knows nothing of HTTP: `api` reads each
//! request, makes the one call and writes the answer. Only this crate sees it (`server` builds
//! it); the integration tests and benchmarks reach it through HTTP, as clients do.
//!
//! Its rooms, in the order a request walks them (ARCHITECTURE.md §1.1): `serve` (the one call),
//! `recommend` (assignment, the arm's list through the cache, the fallback to the placement
//! default), `page` (filters, paging and the interleaved merge), `tracking` (the page's token,
//! its exposure counted and logged, its catalogue coverage, and the events its token brings
//! back), `shadow` (shadow arms compared with the control, in the background) and
//! `arm_metrics` (per-arm metric handles); beside the requests, `reload` (the catalog in force
//! and its swaps) and `guardrails` (arms judged every second and paused when they breach).

mod arm_metrics;
mod guardrails;
mod page;
mod recommend;
mod reload;
mod serve;
mod shadow;
mod tracking;

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::cache::TieredCache;
use crate::experiment::{Catalog, Problems};
use crate::feedback::counts::Tally;
use crate::feedback::events::{EventLog, Rejection};
use crate::logs::LogWriter;
use crate::metrics::{Metrics, NONE};
use crate::redis::{EvictionGuard, Health, RedisClient};
use crate::store::ModelRegistry;
use arm_metrics::ArmIndex;
pub(crate) use arm_metrics::ArmMetrics;
pub(crate) use guardrails::{Guard, Pause};
pub(crate) use page::PageRequest;
pub(crate) use recommend::{FallbackReason, ServeError};
pub(crate) use reload::{RELOAD_BUDGET, Reload};
pub(crate) use serve::{ServeRequest, ServedPage};
use shadow::SHADOW_SLOTS;
use tracking::{Counters, counters};

/// Shared state of a running gateway.
#[derive(Debug)]
pub(crate) struct Gateway {
    /// The experiment set in force; each request reads one snapshot of it.
    catalog: ArcSwap<Catalog>,
    /// Loaded model versions.
    models: Arc<ModelRegistry>,
    /// Local and Redis tiers in front of the models.
    cache: Arc<TieredCache>,
    /// Every metric family.
    metrics: Metrics,
    /// Pre-resolved per-arm handles of the catalog in force, replaced with it.
    arms: ArcSwap<ArmIndex>,
    /// Token signing and event deduplication.
    events: EventLog,
    /// Durable per-arm counts for the results.
    tally: Arc<Tally>,
    /// Exposure counters resolved for the catalog in force, replaced with it.
    counters: ArcSwap<Counters>,
    /// Whether every configured Redis answers; `None` without Redis.
    redis: Option<Arc<Health>>,
    /// Whether the counts' Redis keeps what they write; `None` without Redis.
    eviction: Option<Arc<EvictionGuard>>,
    /// The Parquet exposure and event logs, when `logs.root` is set.
    logs: Option<Arc<LogWriter>>,
    /// The folder the catalog is (re)loaded from.
    experiments_dir: PathBuf,
    /// Serialises reloads.
    reloading: tokio::sync::Mutex<()>,
    /// Why the folder on disk is not the set in force, if it was rejected: shown by `/ready`,
    /// and compared so a broken file is logged and counted once rather than at every check.
    rejected: ArcSwapOption<Problems>,
    /// Permits for shadow comparisons in flight ([`SHADOW_SLOTS`]).
    shadow_slots: Arc<tokio::sync::Semaphore>,
    /// Arms paused by their guardrails, and the windows they are judged on.
    guard: Guard,
}

/// The services a gateway is assembled from (see `server::Server::bind`).
#[derive(Debug)]
pub(crate) struct Parts {
    /// Model slots of the catalog.
    pub(crate) models: Arc<ModelRegistry>,
    /// Cache tiers.
    pub(crate) cache: Arc<TieredCache>,
    /// Metric families.
    pub(crate) metrics: Metrics,
    /// Token signing and event deduplication.
    pub(crate) events: EventLog,
    /// Results counters.
    pub(crate) tally: Arc<Tally>,
    /// The state of the Redis connections, when any is configured.
    pub(crate) redis: Option<Arc<Health>>,
    /// What holds the counts while their Redis may evict them, when one is configured.
    pub(crate) eviction: Option<Arc<EvictionGuard>>,
    /// The exposure and event logs, when configured.
    pub(crate) logs: Option<Arc<LogWriter>>,
    /// Where guardrail pauses are shared, with the counts' Redis.
    pub(crate) guard_redis: Option<RedisClient>,
}

impl Gateway {
    /// A gateway over a catalog loaded from `experiments_dir` (re-read on reload) and the
    /// services it uses.
    pub(crate) fn new(catalog: Catalog, experiments_dir: PathBuf, parts: Parts) -> Self {
        let Parts {
            models,
            cache,
            metrics,
            events,
            tally,
            redis,
            eviction,
            logs,
            guard_redis,
        } = parts;
        let arms = ArmIndex::resolve(&metrics, &catalog);
        for rejection in Rejection::ALL {
            metrics.track_rejection(rejection.as_str());
        }
        metrics.experiments_loaded(None, catalog.digest());
        // Loaded by the first poll, which runs as soon as polling starts.
        models.track_covariates(&catalog.covariates());
        Gateway {
            counters: ArcSwap::from_pointee(counters(&tally, &models, &catalog)),
            catalog: ArcSwap::from_pointee(catalog),
            models,
            cache,
            metrics,
            arms: ArcSwap::from_pointee(arms),
            events,
            tally,
            redis,
            eviction,
            logs,
            experiments_dir,
            reloading: tokio::sync::Mutex::new(()),
            rejected: ArcSwapOption::empty(),
            shadow_slots: Arc::new(tokio::sync::Semaphore::new(SHADOW_SLOTS)),
            guard: Guard::new(guard_redis),
        }
    }

    /// The cache tiers.
    pub(crate) fn cache(&self) -> &Arc<TieredCache> {
        &self.cache
    }

    /// The experiment set in force.
    pub(crate) fn catalog(&self) -> arc_swap::Guard<Arc<Catalog>> {
        self.catalog.load()
    }

    /// Why the experiments folder was last rejected, while it stays rejected.
    pub(crate) fn rejected(&self) -> Option<Arc<Problems>> {
        self.rejected.load_full()
    }

    /// The model registry (shared with the poller).
    pub(crate) fn models(&self) -> &Arc<ModelRegistry> {
        &self.models
    }

    /// The results counters.
    pub(crate) fn tally(&self) -> &Arc<Tally> {
        &self.tally
    }

    /// The exposure and event logs, when `logs.root` is set.
    pub(crate) fn logs(&self) -> Option<&Arc<LogWriter>> {
        self.logs.as_ref()
    }

    /// Whether every configured Redis answers (`None`: no Redis configured).
    pub(crate) fn redis_up(&self) -> Option<bool> {
        self.redis.as_ref().map(|h| h.up())
    }

    /// What holds the counts while their Redis may evict them; `None` without Redis.
    pub(crate) fn eviction(&self) -> Option<&Arc<EvictionGuard>> {
        self.eviction.as_ref()
    }

    /// Every metric family.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Handles of one arm: pre-resolved for the catalog in force, resolved now for arms it no
    /// longer has (an event whose token predates a change of experiments).
    fn arm_metrics(&self, placement: &str, experiment: Option<&str>, arm: &str) -> Arc<ArmMetrics> {
        let experiment = experiment.unwrap_or(NONE);
        match self.arms.load().get(placement, experiment, arm) {
            Some(handles) => Arc::clone(handles),
            None => Arc::new(ArmMetrics::resolve(&self.metrics, placement, experiment, arm, false)),
        }
    }
}
