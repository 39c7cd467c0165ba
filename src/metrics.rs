//! The Prometheus registry (DESIGN.md §7). Families are registered once at start; the hot path
//! holds pre-resolved handles, so counting a cache hit is an atomic add, not a label lookup.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// Latency buckets for a gateway whose cache hits take well under a millisecond: 100 µs to 2.5 s.
pub(crate) const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Every metric family recgw exports, with pre-resolved handles for the hot ones.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// What `/metrics` renders.
    registry: Registry,
    /// `store_read_duration_seconds{model}`: one observation per model read, so its count is
    /// the number of store reads (what cache coalescing is judged by).
    store_reads: HistogramVec,
    /// `cache_requests_total{tier,result}`, pre-resolved.
    pub(crate) cache: CacheCounters,
    /// `redis_up`: 1 when the last Redis command succeeded, 0 after a failure, absent when off.
    pub(crate) redis_up: IntGauge,
    /// `model_load_failures_total{model}`: versions that failed to load.
    model_load_failures: IntCounterVec,
}

/// `cache_requests_total` handles, one per (tier, result) the cache can report.
#[derive(Debug, Clone)]
pub(crate) struct CacheCounters {
    pub local_hit: IntCounter,
    pub local_miss: IntCounter,
    pub redis_hit: IntCounter,
    pub redis_miss: IntCounter,
    /// The command failed (connection refused, protocol error) or its reply did not decode.
    pub redis_error: IntCounter,
    /// The command did not answer within `cache.redis_timeout`.
    pub redis_timeout: IntCounter,
    /// Redis was skipped because it failed recently (the breaker is open).
    pub redis_skipped: IntCounter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every family on a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let store_reads = HistogramVec::new(
            HistogramOpts::new(
                "store_read_duration_seconds",
                "Time to read one user's list from a model's Parquet files.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["model"],
        )
        .expect("valid metric");
        let cache_requests = IntCounterVec::new(
            Opts::new("cache_requests_total", "Cache lookups by tier and result."),
            &["tier", "result"],
        )
        .expect("valid metric");
        let redis_up = IntGauge::new(
            "redis_up",
            "1 when the last Redis command succeeded, 0 after a failure.",
        )
        .expect("valid metric");
        let model_load_failures = IntCounterVec::new(
            Opts::new(
                "model_load_failures_total",
                "Model versions that failed to load (the previous one kept serving).",
            ),
            &["model"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(store_reads.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(cache_requests.clone()),
            Box::new(model_load_failures.clone()),
        ] {
            registry.register(collector).expect("registered once");
        }
        let cache = CacheCounters {
            local_hit: cache_requests.with_label_values(&["local", "hit"]),
            local_miss: cache_requests.with_label_values(&["local", "miss"]),
            redis_hit: cache_requests.with_label_values(&["redis", "hit"]),
            redis_miss: cache_requests.with_label_values(&["redis", "miss"]),
            redis_error: cache_requests.with_label_values(&["redis", "error"]),
            redis_timeout: cache_requests.with_label_values(&["redis", "timeout"]),
            redis_skipped: cache_requests.with_label_values(&["redis", "skipped"]),
        };
        Metrics {
            registry,
            store_reads,
            cache,
            redis_up,
            model_load_failures,
        }
    }

    /// Exports `redis_up`; called only when a Redis tier is configured, so a gateway without
    /// Redis does not report it as down.
    pub(crate) fn register_redis(&self) {
        if self.registry.register(Box::new(self.redis_up.clone())).is_err() {
            tracing::debug!("redis_up already registered");
        }
    }

    /// The store-read histogram of `model`.
    pub(crate) fn store_read(&self, model: &str) -> Histogram {
        self.store_reads.with_label_values(&[model])
    }

    /// Counts a version of `model` that failed to load.
    pub(crate) fn model_load_failed(&self, model: &str) {
        self.model_load_failures.with_label_values(&[model]).inc();
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}
