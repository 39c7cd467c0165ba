//! The per-arm metric handles, resolved by the gateway for each catalog it puts in force (it owns
//! the catalog, so `metrics` needs to know nothing of experiments), so serving a list counts it
//! with a few atomic adds and no label lookups.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus::core::Metric as _;
use prometheus::{Histogram, IntCounter};

use super::FallbackReason;
use crate::experiment::{Catalog, INTERLEAVED, Kind};
use crate::feedback::lists::{Overlap, POSITION_BUCKETS};
use crate::metrics::{LATENCY_BUCKETS, Metrics, NONE};

/// What an arm served since start, from its metric handles: what guardrails judge, as the
/// difference of two samples a window apart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Sample {
    /// Responses.
    pub(crate) requests: u64,
    /// Of them, those whose model read failed.
    pub(crate) errors: u64,
    /// Of them, those the placement default answered.
    pub(crate) fallbacks: u64,
    /// Cumulative response counts per [`LATENCY_BUCKETS`] bound, then in all.
    pub(crate) latency: Vec<u64>,
}

impl Sample {
    /// What was served between `earlier` and this sample.
    pub(crate) fn since(&self, earlier: &Sample) -> Sample {
        Sample {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            fallbacks: self.fallbacks.saturating_sub(earlier.fallbacks),
            latency: self
                .latency
                .iter()
                .zip(earlier.latency.iter().chain(std::iter::repeat(&0)))
                .map(|(now, then)| now.saturating_sub(*then))
                .collect(),
        }
    }

    /// The `q` quantile of the response times in seconds, interpolated inside its bucket as
    /// Prometheus's `histogram_quantile` does (so it agrees with the dashboard); `None`
    /// without responses.
    pub(crate) fn quantile(&self, q: f64) -> Option<f64> {
        let total = *self.latency.last()?;
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let i = self.latency.iter().position(|&n| n as f64 >= rank)?;
        let Some(&upper) = LATENCY_BUCKETS.get(i) else {
            // Beyond the last bound: Prometheus answers that bound.
            return LATENCY_BUCKETS.last().copied();
        };
        let (lower, below) = match i {
            0 => (0.0, 0),
            _ => (LATENCY_BUCKETS[i - 1], self.latency[i - 1]),
        };
        let inside = (self.latency[i] - below) as f64;
        Some(lower + (upper - lower) * (rank - below as f64) / inside.max(1.0))
    }
}

/// Pre-resolved handles of one (placement, experiment, arm).
#[derive(Debug, Clone)]
pub(crate) struct ArmMetrics {
    /// `recommendations_total`.
    recommendations: IntCounter,
    /// `response_time_seconds{endpoint="recommendations"}`.
    latency: Histogram,
    /// `recommended_items_total`.
    items: IntCounter,
    /// `impressions_total`.
    impressions: IntCounter,
    /// `clicks_total`.
    clicks: IntCounter,
    /// `fallbacks_total`, one per [`FallbackReason`] in [`FallbackReason::ALL`] order.
    fallbacks: [IntCounter; FallbackReason::ALL.len()],
    /// `errors_total{kind="store_error"}`: a store fault is an error as well as a fallback.
    store_errors: IntCounter,
    /// `impressions_by_position_total` and `clicks_by_position_total`, one per rank bucket.
    impressions_by_position: [IntCounter; POSITION_BUCKETS.len()],
    clicks_by_position: [IntCounter; POSITION_BUCKETS.len()],
    /// A shadow arm's comparison handles; `None` for an arm that serves.
    shadow: Option<ShadowMetrics>,
}

/// A shadow arm's handles.
#[derive(Debug, Clone)]
pub(crate) struct ShadowMetrics {
    /// `list_overlap{measure="jaccard"}` and `{measure="rbo"}`.
    jaccard: Histogram,
    rbo: Histogram,
    /// `shadow_comparisons_total{outcome="compared"}`, `busy` and `no_list`.
    compared: IntCounter,
    pub(crate) busy: IntCounter,
    pub(crate) no_list: IntCounter,
}

impl ShadowMetrics {
    /// Records a comparison.
    pub(crate) fn compared(&self, overlap: Overlap) {
        self.jaccard.observe(overlap.jaccard);
        self.rbo.observe(overlap.rbo);
        self.compared.inc();
    }
}

impl ArmMetrics {
    /// Handles for one (placement, experiment, arm), resolved now; a `shadow` arm's comparison
    /// handles too.
    pub(crate) fn resolve(metrics: &Metrics, placement: &str, experiment: &str, arm: &str, shadow: bool) -> Self {
        let labels = [placement, experiment, arm];
        let by_position = |family: &prometheus::IntCounterVec| {
            POSITION_BUCKETS.map(|bucket| family.with_label_values(&[placement, experiment, arm, bucket]))
        };
        let outcome = |outcome: &str| {
            metrics
                .shadow_comparisons
                .with_label_values(&[placement, experiment, arm, outcome])
        };
        let overlap = |measure: &str| {
            metrics
                .list_overlap
                .with_label_values(&[placement, experiment, arm, measure])
        };
        ArmMetrics {
            recommendations: metrics.recommendations.with_label_values(&labels),
            latency: metrics
                .response_time
                .with_label_values(&["recommendations", placement, experiment, arm]),
            items: metrics.items.with_label_values(&labels),
            impressions: metrics.impressions.with_label_values(&labels),
            clicks: metrics.clicks.with_label_values(&labels),
            fallbacks: FallbackReason::ALL.map(|reason| {
                metrics
                    .fallbacks
                    .with_label_values(&[placement, experiment, arm, reason.label()])
            }),
            store_errors: metrics.errors.with_label_values(&[
                "recommendations",
                placement,
                experiment,
                arm,
                "store_error",
            ]),
            impressions_by_position: by_position(&metrics.impressions_by_position),
            clicks_by_position: by_position(&metrics.clicks_by_position),
            shadow: shadow.then(|| ShadowMetrics {
                jaccard: overlap("jaccard"),
                rbo: overlap("rbo"),
                compared: outcome("compared"),
                busy: outcome("busy"),
                no_list: outcome("no_list"),
            }),
        }
    }

    /// A shadow arm's comparison handles.
    pub(crate) fn shadow(&self) -> Option<&ShadowMetrics> {
        self.shadow.as_ref()
    }

    /// Counts one served response of `items` items that took `elapsed`.
    pub(crate) fn served(&self, items: usize, fallback: Option<FallbackReason>, elapsed: Duration) {
        self.recommendations.inc();
        self.items.inc_by(items as u64);
        self.latency.observe(elapsed.as_secs_f64());
        if let Some(reason) = fallback {
            self.fallbacks[reason as usize].inc();
            if reason == FallbackReason::StoreError {
                self.store_errors.inc();
            }
        }
    }

    /// What the arm served since start.
    pub(crate) fn sample(&self) -> Sample {
        let histogram = self.latency.metric();
        let mut latency: Vec<u64> = histogram
            .get_histogram()
            .get_bucket()
            .iter()
            .map(|b| b.cumulative_count())
            .collect();
        latency.push(self.latency.get_sample_count());
        Sample {
            requests: self.recommendations.get(),
            errors: self.store_errors.get(),
            fallbacks: self.fallbacks.iter().map(IntCounter::get).sum(),
            latency,
        }
    }

    /// Counts an accepted impression of an item in rank bucket `bucket`.
    pub(crate) fn impression(&self, bucket: usize) {
        self.impressions.inc();
        self.impressions_by_position[bucket].inc();
    }

    /// Counts an accepted click on an item in rank bucket `bucket`.
    pub(crate) fn click(&self, bucket: usize) {
        self.clicks.inc();
        self.clicks_by_position[bucket].inc();
    }
}

/// Handles for every arm of a catalog (and each placement's default), looked up by name
/// without allocating.
#[derive(Debug, Default)]
pub(crate) struct ArmIndex(HashMap<String, HashMap<String, HashMap<String, Arc<ArmMetrics>>>>);

impl ArmIndex {
    /// Resolves handles for every arm of `catalog` and each placement's default, so their
    /// series exist (at zero) before traffic arrives, and publishes the expected arm weights.
    pub(crate) fn resolve(metrics: &Metrics, catalog: &Catalog) -> Self {
        // Experiments and arms a reload removed must not linger in the weights (they would skew
        // sample-ratio checks) nor in the arm → model map.
        metrics.arm_weight.reset();
        metrics.arm_info.reset();
        // Nor may a pause of an experiment that lost its guardrails keep its alert firing; the
        // guardrail check sets the arms still guarded within a second.
        metrics.arm_paused.reset();
        let mut index: HashMap<String, HashMap<String, HashMap<String, Arc<ArmMetrics>>>> = HashMap::new();
        for placement in catalog.placements() {
            let by_experiment = index.entry(placement.name.clone()).or_default();
            by_experiment.entry(NONE.to_string()).or_default().insert(
                "default".to_string(),
                Arc::new(ArmMetrics::resolve(metrics, &placement.name, NONE, "default", false)),
            );
            if let Some(holdout) = &placement.holdout
                && let Some(arm) = holdout.arms.first()
            {
                // Only the held-out users are served as the holdout; `exposed` is everyone
                // else, whose series are their own arms'.
                by_experiment.entry(holdout.id.clone()).or_default().insert(
                    arm.name.clone(),
                    Arc::new(ArmMetrics::resolve(
                        metrics,
                        &placement.name,
                        &holdout.id,
                        &arm.name,
                        false,
                    )),
                );
                metrics
                    .arm_weight
                    .with_label_values(&[&placement.name, &holdout.id, &arm.name])
                    .set(f64::from(arm.weight_bp) / 10_000.0);
            }
            for experiment in placement.experiments() {
                let arms = by_experiment.entry(experiment.id.clone()).or_default();
                let resolve = |arm: &str, shadow: bool| {
                    Arc::new(ArmMetrics::resolve(
                        metrics,
                        &placement.name,
                        &experiment.id,
                        arm,
                        shadow,
                    ))
                };
                for (i, arm) in experiment.arms.iter().enumerate() {
                    let labels = [placement.name.as_str(), experiment.id.as_str(), arm.name.as_str()];
                    arms.insert(arm.name.clone(), resolve(&arm.name, arm.shadow.is_some()));
                    // The share of the slice's requests the arm is expected to serve: a
                    // completed experiment's all go to its winner, an interleave experiment's
                    // to neither arm alone.
                    let share = match (experiment.winner, experiment.kind) {
                        (Some(winner), _) => f64::from(u8::from(winner == i)),
                        (None, Kind::Split) => f64::from(arm.weight_bp) / 10_000.0,
                        (None, Kind::Interleave) => 0.0,
                    };
                    metrics.arm_weight.with_label_values(&labels).set(share);
                    metrics
                        .arm_info
                        .with_label_values(&[labels[0], labels[1], labels[2], arm.model.location.as_str()])
                        .set(1);
                }
                if experiment.kind == Kind::Interleave {
                    arms.insert(INTERLEAVED.to_string(), resolve(INTERLEAVED, false));
                    let share = f64::from(u8::from(experiment.winner.is_none()));
                    metrics
                        .arm_weight
                        .with_label_values(&[&placement.name, &experiment.id, INTERLEAVED])
                        .set(share);
                }
            }
        }
        ArmIndex(index)
    }

    /// The handles of an arm the catalog knows.
    pub(crate) fn get(&self, placement: &str, experiment: &str, arm: &str) -> Option<&Arc<ArmMetrics>> {
        self.0.get(placement)?.get(experiment)?.get(arm)
    }
}
