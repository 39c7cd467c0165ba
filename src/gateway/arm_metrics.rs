//! The per-arm metric handles, resolved by the gateway for each catalog it puts in force (it owns
//! the catalog, so `metrics` needs to know nothing of experiments), so serving a list counts it
//! with a few atomic adds and no label lookups.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{Histogram, IntCounter};

use super::FallbackReason;
use crate::experiment::{Catalog, INTERLEAVED, Kind};
use crate::metrics::{Metrics, NONE};

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
}

impl ArmMetrics {
    /// Handles for one (placement, experiment, arm), resolved now.
    pub(crate) fn resolve(metrics: &Metrics, placement: &str, experiment: &str, arm: &str) -> Self {
        let labels = [placement, experiment, arm];
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
        }
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

    /// Counts an accepted impression.
    pub(crate) fn impression(&self) {
        self.impressions.inc();
    }

    /// Counts an accepted click.
    pub(crate) fn click(&self) {
        self.clicks.inc();
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
        let mut index: HashMap<String, HashMap<String, HashMap<String, Arc<ArmMetrics>>>> = HashMap::new();
        for placement in catalog.placements() {
            let by_experiment = index.entry(placement.name.clone()).or_default();
            by_experiment.entry(NONE.to_string()).or_default().insert(
                "default".to_string(),
                Arc::new(ArmMetrics::resolve(metrics, &placement.name, NONE, "default")),
            );
            for experiment in placement.experiments() {
                let arms = by_experiment.entry(experiment.id.clone()).or_default();
                let resolve = |arm: &str| Arc::new(ArmMetrics::resolve(metrics, &placement.name, &experiment.id, arm));
                for (i, arm) in experiment.arms.iter().enumerate() {
                    let labels = [placement.name.as_str(), experiment.id.as_str(), arm.name.as_str()];
                    arms.insert(arm.name.clone(), resolve(&arm.name));
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
                    arms.insert(INTERLEAVED.to_string(), resolve(INTERLEAVED));
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
