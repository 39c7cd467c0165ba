//! The Prometheus registry (ARCHITECTURE.md §7). Families are registered once at start; the hot
//! path holds pre-resolved handles ([`CacheCounters`], and the per-arm handles the gateway
//! resolves for each catalog), so counting a served list is a few atomic adds, not label
//! lookups. A leaf: it knows label names and values, never the types that carry them.
//!
//! Per-arm families carry `placement, experiment, arm`, with `experiment="none", arm="default"`
//! for users no experiment covers; request failures before assignment use `arm="none"`.

use std::collections::HashMap;
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Latency buckets for a gateway whose cache hits take well under a millisecond: 100 µs to 2.5 s.
pub(crate) const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Overlap buckets: tenths of the 0-1 range.
const OVERLAP_BUCKETS: &[f64] = &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99, 1.0];

/// The label value for "no experiment" and for request failures that never reached an arm.
pub(crate) const NONE: &str = "none";

/// The per-arm label names.
pub(crate) const ARM_LABELS: [&str; 3] = ["placement", "experiment", "arm"];

/// Every metric family recgw exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// What `/metrics` renders.
    registry: Registry,
    /// `recommendations_total{placement,experiment,arm}`: responses served.
    pub(crate) recommendations: IntCounterVec,
    /// `response_time_seconds{endpoint,placement,experiment,arm}`.
    pub(crate) response_time: HistogramVec,
    /// `errors_total{endpoint,placement,experiment,arm,kind}`: failed requests and store errors.
    pub(crate) errors: IntCounterVec,
    /// `recommended_items_total{placement,experiment,arm}`: items returned in pages.
    pub(crate) items: IntCounterVec,
    /// `impressions_total{placement,experiment,arm}`: accepted impression events.
    pub(crate) impressions: IntCounterVec,
    /// `clicks_total{placement,experiment,arm}`: accepted click events.
    pub(crate) clicks: IntCounterVec,
    /// `fallbacks_total{placement,experiment,arm,reason}`: arms answered by the default.
    pub(crate) fallbacks: IntCounterVec,
    /// `impressions_by_position_total{placement,experiment,arm,position}` and
    /// `clicks_by_position_total{…}`: accepted events by the item's rank bucket (`1`, `2`, `3`,
    /// `4-5`, `6-10`, `11+`), for CTR by position.
    pub(crate) impressions_by_position: IntCounterVec,
    pub(crate) clicks_by_position: IntCounterVec,
    /// `list_overlap{placement,experiment,arm,measure}`: a shadow arm's Jaccard@k and RBO
    /// against the control's list for the same user, one observation per comparison.
    pub(crate) list_overlap: HistogramVec,
    /// `shadow_comparisons_total{placement,experiment,arm,outcome}`: `compared`, `busy`
    /// (dropped: too many comparisons in flight) and `no_list` (the shadow's model had no list
    /// for the user, or could not be read).
    pub(crate) shadow_comparisons: IntCounterVec,
    /// `experiment_arm_weight{placement,experiment,arm}`: expected share of the experiment.
    pub(crate) arm_weight: GaugeVec,
    /// `experiment_arm_paused{placement,experiment,arm}`: 1 while a guardrail holds the arm
    /// paused (its users get the control's list), for guarded experiments' arms.
    pub(crate) arm_paused: IntGaugeVec,
    /// `experiment_arm_info{placement,experiment,arm,model}`: 1 per arm, naming its model, so
    /// model-level series can be joined to arms.
    pub(crate) arm_info: IntGaugeVec,
    /// `store_read_duration_seconds{model}`: one observation per model read, so its count is
    /// the number of store reads (what cache coalescing is judged by).
    store_reads: HistogramVec,
    /// `model_info{model,version}`: 1 for the version serving.
    model_info: IntGaugeVec,
    /// `model_load_failures_total{model}`: versions that failed to load.
    model_load_failures: IntCounterVec,
    /// `model_serving_mode{model,mode}`: 1 for where the serving version's lookups are
    /// answered from (`snapshot`, `pages`, `memory`), 0 for the others.
    serving_mode: IntGaugeVec,
    /// `events_rejected_total{reason}`: events `POST /events` refused.
    events_rejected: IntCounterVec,
    /// `config_reload_failures_total`: experiment folders rejected on reload.
    reload_failures: IntCounter,
    /// `http_connections_refused_total`: connections closed at once because
    /// `server.max_connections` were being served.
    pub(crate) connections_refused: IntCounter,
    /// `experiments_info{digest}`: 1 for the experiment set in force, so every replica's set
    /// can be compared in one query.
    experiments_info: IntGaugeVec,
    /// `results_pending_updates`: exposures and new users counted here and not yet confirmed by
    /// Redis.
    pub(crate) results_pending: IntGauge,
    /// `results_users_uncounted_total`: users served but not counted, because the memory bound
    /// or an arm's queue was full; the results then say users are not exact.
    pub(crate) results_users_uncounted: IntCounter,
    /// `redis_commands_total{client,result}`: every Redis command by caller (`cache`,
    /// `invalidation`, `counts`, `events`) and outcome (`ok`, `error`, `timeout`, `skipped`).
    pub(crate) redis_commands: IntCounterVec,
    /// `cache_requests_total{tier,result}`, pre-resolved.
    pub(crate) cache: CacheCounters,
    /// `redis_up`: 1 when the last Redis command succeeded, 0 after a failure; only exported
    /// when a Redis tier is configured.
    pub(crate) redis_up: IntGauge,
    /// `logs_written_rows_total{table}`, `logs_dropped_rows_total{table}`,
    /// `logs_pending_rows{table}` and `logs_write_failures_total{table}`: the exposure and event
    /// logs (series exist only while `logs.root` is set).
    pub(crate) logs: LogFamilies,
}

/// The families of the Parquet exposure and event logs, by `table` (`exposures`, `events`).
#[derive(Debug, Clone)]
pub(crate) struct LogFamilies {
    /// `logs_written_rows_total`: rows in files committed under the log root.
    pub(crate) written: IntCounterVec,
    /// `logs_dropped_rows_total`: rows never written because the buffer was full (the log root
    /// unreachable for too long, or traffic past what a flush interval can hold).
    pub(crate) dropped: IntCounterVec,
    /// `logs_pending_rows`: rows held in memory, buffered or waiting in a file not yet written.
    pub(crate) pending: IntGaugeVec,
    /// `logs_write_failures_total`: file writes that failed or timed out (retried next interval).
    pub(crate) write_failures: IntCounterVec,
}

/// The handles of one log table.
#[derive(Debug, Clone)]
pub(crate) struct LogCounters {
    /// See [`LogFamilies::written`].
    pub(crate) written: IntCounter,
    /// See [`LogFamilies::dropped`].
    pub(crate) dropped: IntCounter,
    /// See [`LogFamilies::pending`].
    pub(crate) pending: IntGauge,
    /// See [`LogFamilies::write_failures`].
    pub(crate) write_failures: IntCounter,
}

impl LogFamilies {
    /// The handles of `table`, creating its series at zero.
    pub(crate) fn table(&self, table: &str) -> LogCounters {
        LogCounters {
            written: self.written.with_label_values(&[table]),
            dropped: self.dropped.with_label_values(&[table]),
            pending: self.pending.with_label_values(&[table]),
            write_failures: self.write_failures.with_label_values(&[table]),
        }
    }
}

/// `cache_requests_total` handles, one per (tier, result) the cache can report.
#[derive(Debug, Clone)]
pub(crate) struct CacheCounters {
    pub(crate) local_hit: IntCounter,
    pub(crate) local_miss: IntCounter,
    pub(crate) redis_hit: IntCounter,
    pub(crate) redis_miss: IntCounter,
    /// The lookup failed (connection refused, protocol error) or its reply did not decode.
    pub(crate) redis_error: IntCounter,
    /// The lookup did not answer within `cache.redis_timeout`.
    pub(crate) redis_timeout: IntCounter,
    /// Redis was skipped because lookups failed recently (the breaker is open).
    pub(crate) redis_skipped: IntCounter,
}

/// Served-traffic figures of one arm (or of everything), as `/stats` reports them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ArmTraffic {
    /// Placement label.
    pub(crate) placement: String,
    /// Experiment label (`none` on the default).
    pub(crate) experiment: String,
    /// Arm label.
    pub(crate) arm: String,
    /// Responses served.
    pub(crate) recommendations: u64,
    /// Served responses whose arm failed to read its model (answered by the default).
    pub(crate) errors: u64,
    /// Sum of response times of served responses, seconds.
    pub(crate) latency_sum: f64,
    /// Number of timed responses.
    pub(crate) latency_count: u64,
    /// Accepted impressions.
    pub(crate) impressions: u64,
    /// Accepted clicks.
    pub(crate) clicks: u64,
}

impl ArmTraffic {
    fn new([placement, experiment, arm]: [String; 3]) -> Self {
        ArmTraffic {
            placement,
            experiment,
            arm,
            recommendations: 0,
            errors: 0,
            latency_sum: 0.0,
            latency_count: 0,
            impressions: 0,
            clicks: 0,
        }
    }

    /// Mean response time in seconds, `None` before the first response.
    pub(crate) fn mean_response_time(&self) -> Option<f64> {
        (self.latency_count > 0).then(|| self.latency_sum / self.latency_count as f64)
    }
}

/// The `/stats` summary.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TrafficSummary {
    /// Every arm added up.
    pub(crate) overall: ArmTraffic,
    /// Recommendation requests that failed before serving (bad input, unknown placement, 503).
    pub(crate) failed_requests: u64,
    /// Per placement, experiment and arm.
    pub(crate) arms: Vec<ArmTraffic>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn register<C: Collector + Clone + 'static>(registry: &Registry, collector: C) -> C {
    registry
        .register(Box::new(collector.clone()))
        .expect("each family is registered once");
    collector
}

fn counters(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn histograms(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    register(registry, HistogramVec::new(opts, labels).expect("valid metric"))
}

impl Metrics {
    /// Registers every family on a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let with_kind = ["endpoint", ARM_LABELS[0], ARM_LABELS[1], ARM_LABELS[2], "kind"];
        let with_reason = [ARM_LABELS[0], ARM_LABELS[1], ARM_LABELS[2], "reason"];
        let with_endpoint = ["endpoint", ARM_LABELS[0], ARM_LABELS[1], ARM_LABELS[2]];
        let with_position = [ARM_LABELS[0], ARM_LABELS[1], ARM_LABELS[2], "position"];
        let r = &registry;
        let cache_requests = counters(
            r,
            "cache_requests_total",
            "Cache lookups by tier and result.",
            &["tier", "result"],
        );
        Metrics {
            recommendations: counters(
                r,
                "recommendations_total",
                "Recommendation responses served.",
                &ARM_LABELS,
            ),
            response_time: histograms(r, "response_time_seconds", "Time to answer a request.", &with_endpoint),
            errors: counters(r, "errors_total", "Failed requests and model read errors.", &with_kind),
            items: counters(
                r,
                "recommended_items_total",
                "Items returned in recommendation pages.",
                &ARM_LABELS,
            ),
            impressions: counters(r, "impressions_total", "Accepted impression events.", &ARM_LABELS),
            clicks: counters(r, "clicks_total", "Accepted click events.", &ARM_LABELS),
            fallbacks: counters(
                r,
                "fallbacks_total",
                "Responses the placement default answered for an arm.",
                &with_reason,
            ),
            impressions_by_position: counters(
                r,
                "impressions_by_position_total",
                "Accepted impression events by the item's rank bucket.",
                &with_position,
            ),
            clicks_by_position: counters(
                r,
                "clicks_by_position_total",
                "Accepted click events by the item's rank bucket.",
                &with_position,
            ),
            list_overlap: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "list_overlap",
                        "A shadow arm's overlap with the control's list for the same user (0-1).",
                    )
                    .buckets(OVERLAP_BUCKETS.to_vec()),
                    &[ARM_LABELS[0], ARM_LABELS[1], ARM_LABELS[2], "measure"],
                )
                .expect("valid metric"),
            ),
            shadow_comparisons: counters(
                r,
                "shadow_comparisons_total",
                "Shadow-arm comparisons by outcome: compared, busy (dropped), no_list.",
                &[ARM_LABELS[0], ARM_LABELS[1], ARM_LABELS[2], "outcome"],
            ),
            arm_info: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "experiment_arm_info",
                        "1 per experiment arm, naming the model it serves.",
                    ),
                    &["placement", "experiment", "arm", "model"],
                )
                .expect("valid metric"),
            ),
            arm_paused: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "experiment_arm_paused",
                        "1 while a guardrail holds the arm paused: its users get the control's list.",
                    ),
                    &ARM_LABELS,
                )
                .expect("valid metric"),
            ),
            arm_weight: register(
                r,
                GaugeVec::new(
                    Opts::new(
                        "experiment_arm_weight",
                        "Expected share of an arm in its experiment (0-1).",
                    ),
                    &ARM_LABELS,
                )
                .expect("valid metric"),
            ),
            store_reads: histograms(
                r,
                "store_read_duration_seconds",
                "Time to read one user's list from a model.",
                &["model"],
            ),
            model_info: register(
                r,
                IntGaugeVec::new(
                    Opts::new("model_info", "1 for the model version serving."),
                    &["model", "version"],
                )
                .expect("valid metric"),
            ),
            model_load_failures: counters(
                r,
                "model_load_failures_total",
                "Model versions that failed to load (the previous one kept serving).",
                &["model"],
            ),
            serving_mode: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "model_serving_mode",
                        "1 for where lookups of the model's serving version are answered from.",
                    ),
                    &["model", "mode"],
                )
                .expect("valid metric"),
            ),
            events_rejected: counters(
                r,
                "events_rejected_total",
                "Events refused by POST /events.",
                &["reason"],
            ),
            reload_failures: register(
                r,
                IntCounter::new("config_reload_failures_total", "Experiment folders rejected on reload.")
                    .expect("valid metric"),
            ),
            connections_refused: register(
                r,
                IntCounter::new(
                    "http_connections_refused_total",
                    "Connections refused because server.max_connections were being served.",
                )
                .expect("valid metric"),
            ),
            experiments_info: register(
                r,
                IntGaugeVec::new(
                    Opts::new("experiments_info", "1 for the experiment set in force."),
                    &["digest"],
                )
                .expect("valid metric"),
            ),
            results_pending: register(
                r,
                IntGauge::new(
                    "results_pending_updates",
                    "Exposures and new users counted here and not yet confirmed by Redis.",
                )
                .expect("valid metric"),
            ),
            results_users_uncounted: register(
                r,
                IntCounter::new(
                    "results_users_uncounted_total",
                    "Users served but not counted in the results: a memory bound or an arm's queue was full.",
                )
                .expect("valid metric"),
            ),
            redis_commands: counters(
                r,
                "redis_commands_total",
                "Redis commands by caller and outcome.",
                &["client", "result"],
            ),
            cache: CacheCounters {
                local_hit: cache_requests.with_label_values(&["local", "hit"]),
                local_miss: cache_requests.with_label_values(&["local", "miss"]),
                redis_hit: cache_requests.with_label_values(&["redis", "hit"]),
                redis_miss: cache_requests.with_label_values(&["redis", "miss"]),
                redis_error: cache_requests.with_label_values(&["redis", "error"]),
                redis_timeout: cache_requests.with_label_values(&["redis", "timeout"]),
                redis_skipped: cache_requests.with_label_values(&["redis", "skipped"]),
            },
            logs: LogFamilies {
                written: counters(
                    r,
                    "logs_written_rows_total",
                    "Exposure and event log rows in files committed under logs.root.",
                    &["table"],
                ),
                dropped: counters(
                    r,
                    "logs_dropped_rows_total",
                    "Exposure and event log rows dropped because the buffer was full.",
                    &["table"],
                ),
                pending: register(
                    r,
                    IntGaugeVec::new(
                        Opts::new(
                            "logs_pending_rows",
                            "Exposure and event log rows held in memory, not yet written.",
                        ),
                        &["table"],
                    )
                    .expect("valid metric"),
                ),
                write_failures: counters(
                    r,
                    "logs_write_failures_total",
                    "Log file writes that failed or timed out (retried at the next interval).",
                    &["table"],
                ),
            },
            redis_up: IntGauge::new(
                "redis_up",
                "1 when the last Redis command succeeded, 0 after a failure.",
            )
            .expect("valid metric"),
            registry,
        }
    }

    /// Creates the per-model series at zero, so a model's first store read or load failure is
    /// an increase Prometheus can see.
    pub(crate) fn track_model(&self, model: &str) {
        self.store_reads.with_label_values(&[model]);
        self.model_load_failures.with_label_values(&[model]);
        for mode in ["snapshot", "pages", "memory"] {
            self.serving_mode.with_label_values(&[model, mode]);
        }
    }

    /// Counts a request that failed before or instead of serving (`kind` is the error code).
    pub(crate) fn request_failed(&self, endpoint: &str, placement: &str, kind: &str, elapsed: Duration) {
        self.errors
            .with_label_values(&[endpoint, placement, NONE, NONE, kind])
            .inc();
        self.response_time
            .with_label_values(&[endpoint, placement, NONE, NONE])
            .observe(elapsed.as_secs_f64());
    }

    /// The latency histogram of requests to `endpoint` that reach no arm, resolved once by the
    /// HTTP layer.
    pub(crate) fn endpoint_latency(&self, endpoint: &str) -> Histogram {
        self.response_time.with_label_values(&[endpoint, NONE, NONE, NONE])
    }

    /// Counts an experiments folder rejected on reload.
    pub(crate) fn reload_failed(&self) {
        self.reload_failures.inc();
    }

    /// Marks `digest` as the experiment set in force, replacing `previous`.
    pub(crate) fn experiments_loaded(&self, previous: Option<&str>, digest: &str) {
        if let Some(previous) = previous {
            let _ = self.experiments_info.remove_label_values(&[previous]);
        }
        self.experiments_info.with_label_values(&[digest]).set(1);
    }

    /// Creates the series of an event rejection `reason` at zero, so its first occurrence is an
    /// increase Prometheus can see.
    pub(crate) fn track_rejection(&self, reason: &str) {
        self.events_rejected.with_label_values(&[reason]);
    }

    /// Counts an event `POST /events` refused.
    pub(crate) fn event_rejected(&self, reason: &str) {
        self.events_rejected.with_label_values(&[reason]).inc();
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

    /// Marks `version` as the one serving for `model`, replacing `previous`.
    pub(crate) fn model_version(&self, model: &str, previous: Option<&str>, version: &str) {
        if let Some(previous) = previous {
            let _ = self.model_info.remove_label_values(&[model, previous]);
        }
        self.model_info.with_label_values(&[model, version]).set(1);
    }

    /// Marks `mode` as where lookups of `model` are answered from.
    pub(crate) fn serving_mode(&self, model: &str, mode: &str) {
        for m in ["snapshot", "pages", "memory"] {
            self.serving_mode
                .with_label_values(&[model, m])
                .set(i64::from(m == mode));
        }
    }

    /// Counts a version of `model` that failed to load.
    pub(crate) fn model_load_failed(&self, model: &str) {
        self.model_load_failures.with_label_values(&[model]).inc();
    }

    /// The `/stats` summary, computed from the same registry `/metrics` exports.
    pub(crate) fn traffic(&self) -> TrafficSummary {
        let mut arms: HashMap<[String; 3], ArmTraffic> = HashMap::new();
        let mut failed = 0u64;
        for family in self.registry.gather() {
            let name = family.name();
            let per_endpoint = matches!(name, "errors_total" | "response_time_seconds");
            if !per_endpoint && !matches!(name, "recommendations_total" | "impressions_total" | "clicks_total") {
                continue;
            }
            for metric in family.get_metric() {
                let label = |wanted: &str| {
                    metric
                        .get_label()
                        .iter()
                        .find(|l| l.name() == wanted)
                        .map_or("", |l| l.value())
                        .to_string()
                };
                // Latency and errors cover every endpoint; only recommendations belong here.
                if per_endpoint && label("endpoint") != "recommendations" {
                    continue;
                }
                let count = metric.get_counter().get_value() as u64;
                let key = [label("placement"), label("experiment"), label("arm")];
                if key[2] == NONE {
                    // Requests that failed before reaching an arm.
                    if name == "errors_total" {
                        failed += count;
                    }
                    continue;
                }
                let arm = arms.entry(key.clone()).or_insert_with(|| ArmTraffic::new(key));
                match name {
                    "errors_total" => arm.errors += count,
                    "recommendations_total" => arm.recommendations += count,
                    "impressions_total" => arm.impressions += count,
                    "clicks_total" => arm.clicks += count,
                    _ => {
                        arm.latency_sum += metric.get_histogram().get_sample_sum();
                        arm.latency_count += metric.get_histogram().get_sample_count();
                    }
                }
            }
        }
        let mut arms: Vec<ArmTraffic> = arms.into_values().collect();
        arms.sort_by(|a, b| (&a.placement, &a.experiment, &a.arm).cmp(&(&b.placement, &b.experiment, &b.arm)));
        let mut overall = ArmTraffic::new([String::new(), String::new(), String::new()]);
        for arm in &arms {
            overall.recommendations += arm.recommendations;
            overall.errors += arm.errors;
            overall.latency_sum += arm.latency_sum;
            overall.latency_count += arm.latency_count;
            overall.impressions += arm.impressions;
            overall.clicks += arm.clicks;
        }
        TrafficSummary {
            overall,
            failed_requests: failed,
            arms,
        }
    }

    /// The Prometheus text exposition of every family.
    pub(crate) fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}
