//! `GET /experiments/{id}/results`: what analysts read to compare arms.

use std::collections::BTreeMap;
use std::sync::Arc;

use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Enum, OpenApi};

use super::ApiTags;
use super::auth::Auth;
use super::error::ApiError;
use crate::analysis::cuped::Cuped;
use crate::analysis::results::{self, ArmResults, DayResults, ExperimentResults, InterleavingResults};
use crate::gateway::{Gateway, Pause};

pub(crate) mod body;

use body::{
    ArmResultsBody, CupedBody, DayArmBody, DayBody, InterleavingBody, PerUserSumsBody, PositionBody, PrePeriodSumsBody,
    ResultsBody,
};

/// The results endpoint.
#[derive(Default)]
pub(crate) struct ResultsApi;

impl CupedBody {
    fn new(cuped: Result<Cuped, &'static str>) -> Self {
        let mut undefined = BTreeMap::new();
        let fields = [
            "lift",
            "lift_low",
            "lift_high",
            "p_value",
            "sequential_lift_low",
            "sequential_lift_high",
            "sequential_p_value",
            "variance_reduction",
            "users_with_pre_period",
        ];
        let cuped = value(cuped, &fields, &mut undefined);
        let interval = cuped.and_then(|c| value(c.lift.interval, &["lift_low", "lift_high"], &mut undefined));
        CupedBody {
            lift: cuped.map(|c| c.lift.value),
            lift_low: interval.map(|i| i.low),
            lift_high: interval.map(|i| i.high),
            p_value: cuped.map(|c| c.p_value),
            sequential_lift_low: cuped.map(|c| c.sequential.interval.low),
            sequential_lift_high: cuped.map(|c| c.sequential.interval.high),
            sequential_p_value: cuped.map(|c| c.sequential.p_value),
            variance_reduction: cuped.map(|c| c.variance_reduction),
            users_with_pre_period: cuped.map(|c| c.covered),
            undefined,
        }
    }
}

/// How results may be broken down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub(super) enum By {
    /// Cumulative results at the end of each day (UTC) something was counted.
    Day,
}

impl From<&DayResults> for DayBody {
    fn from(day: &DayResults) -> Self {
        DayBody {
            day: crate::calendar::date(day.day),
            arms: day
                .arms
                .iter()
                .map(|arm| {
                    let mut undefined = BTreeMap::new();
                    let sequential = value(
                        arm.sequential,
                        &["sequential_lift_low", "sequential_lift_high", "sequential_p_value"],
                        &mut undefined,
                    );
                    DayArmBody {
                        name: arm.name.clone(),
                        users: arm.users,
                        impressions: arm.impressions,
                        clicks: arm.clicks,
                        ctr: value(arm.ctr, &["ctr"], &mut undefined),
                        lift: value(arm.lift, &["lift"], &mut undefined),
                        sequential_lift_low: sequential.map(|s| s.interval.low),
                        sequential_lift_high: sequential.map(|s| s.interval.high),
                        sequential_p_value: sequential.map(|s| s.p_value),
                        cuped: arm.cuped.map(CupedBody::new),
                        undefined,
                    }
                })
                .collect(),
        }
    }
}

/// What `act_on` says.
const ACT_ON: &str = "decision and the sequential_* figures are valid at every look; lift_low, lift_high \
     and p_value only at a sample size fixed in advance";

/// What `act_on` says when the experiment names covariates.
const ACT_ON_CUPED: &str = "decision reads the CUPED-adjusted figures (cuped.sequential_*), valid at every look \
     like the unadjusted sequential_* figures; lift_low, lift_high and p_value, adjusted or not, only at a \
     sample size fixed in advance";

/// Splits a statistic into its value and, when undefined, the reason recorded under each of
/// the `fields` it fills.
fn value<T>(result: Result<T, &'static str>, fields: &[&str], undefined: &mut BTreeMap<String, String>) -> Option<T> {
    result
        .map_err(|reason| {
            for field in fields {
                undefined.insert(field.to_string(), reason.to_string());
            }
        })
        .ok()
}

impl ArmResultsBody {
    /// The body of `arm`, paused by a guardrail when `pause` is given.
    fn new(arm: &ArmResults, pause: Option<Pause>) -> Self {
        let mut undefined = BTreeMap::new();
        let ctr = value(arm.ctr, &["ctr"], &mut undefined);
        let interval = value(arm.ctr_interval, &["ctr_low", "ctr_high"], &mut undefined);
        let lift = value(arm.lift, &["lift", "lift_low", "lift_high"], &mut undefined);
        let lift_interval = lift.and_then(|l| value(l.interval, &["lift_low", "lift_high"], &mut undefined));
        let sequential = value(
            arm.sequential,
            &["sequential_lift_low", "sequential_lift_high", "sequential_p_value"],
            &mut undefined,
        );
        let overlap = match arm.overlap {
            // Only a shadow arm has an overlap to explain; the others leave the fields out.
            Err(_) if !arm.shadow => None,
            result => value(result, &["overlap_jaccard", "overlap_rbo"], &mut undefined),
        };
        ArmResultsBody {
            name: arm.name.clone(),
            weight: arm.weight,
            control: arm.control,
            users: arm.counts.sums.users,
            exposures: arm.counts.exposures,
            impressions: arm.counts.impressions(),
            clicks: arm.counts.clicks(),
            impressions_outside_per_user: Some(arm.counts.outside[0]).filter(|&n| n > 0),
            clicks_outside_per_user: Some(arm.counts.outside[1]).filter(|&n| n > 0),
            clicking_users: arm.counts.clickers,
            per_user_sums: PerUserSumsBody {
                users: arm.counts.sums.users,
                clicks: arm.counts.sums.clicks,
                impressions: arm.counts.sums.impressions,
                clicks_squared: arm.counts.sums.clicks_sq,
                impressions_squared: arm.counts.sums.impressions_sq,
                clicks_times_impressions: arm.counts.sums.cross,
            },
            pre_period_sums: arm.cuped.map(|_| {
                let pre = &arm.counts.pre;
                PrePeriodSumsBody {
                    users_with_row: pre.covered,
                    clicks: pre.clicks,
                    impressions: pre.impressions,
                    clicks_squared: pre.clicks_sq,
                    impressions_squared: pre.impressions_sq,
                    clicks_times_impressions: pre.cross,
                    clicks_times_pre_clicks: pre.clicks_by_clicks,
                    clicks_times_pre_impressions: pre.clicks_by_impressions,
                    impressions_times_pre_clicks: pre.impressions_by_clicks,
                    impressions_times_pre_impressions: pre.impressions_by_impressions,
                }
            }),
            cuped: arm.cuped.map(CupedBody::new),
            ctr,
            ctr_low: interval.map(|i| i.low),
            ctr_high: interval.map(|i| i.high),
            lift: lift.map(|l| l.value),
            lift_low: lift_interval.map(|i| i.low),
            lift_high: lift_interval.map(|i| i.high),
            p_value: value(arm.p_value, &["p_value"], &mut undefined),
            sequential_lift_low: sequential.map(|s| s.interval.low),
            sequential_lift_high: sequential.map(|s| s.interval.high),
            sequential_p_value: sequential.map(|s| s.p_value),
            p_value_adjusted: arm.adjusted.and_then(|[fixed, _]| fixed),
            sequential_p_value_adjusted: arm.adjusted.and_then(|[_, sequential]| sequential),
            decision: value(arm.decision, &["decision"], &mut undefined).map(|d| d.as_str().to_string()),
            min_sample_reached: arm.min_sample_reached,
            wins: arm.wins,
            shadow: arm.shadow,
            state: super::experiments::arm_state(arm.shadow, pause.as_ref()).to_string(),
            paused_reason: pause.map(|p| p.reason),
            distinct_items: arm.counts.items,
            catalogue_coverage: value(arm.coverage, &["catalogue_coverage"], &mut undefined),
            compared: arm.shadow.then_some(arm.counts.compared),
            overlap_jaccard: overlap.map(|(jaccard, _)| jaccard),
            overlap_rbo: overlap.map(|(_, rbo)| rbo),
            by_position: arm
                .by_position
                .iter()
                .map(|p| PositionBody {
                    position: p.bucket.to_string(),
                    impressions: p.impressions,
                    clicks: p.clicks,
                    ctr: p.ctr.ok(),
                })
                .collect(),
            undefined,
        }
    }
}

impl From<&InterleavingResults> for InterleavingBody {
    fn from(results: &InterleavingResults) -> Self {
        let mut undefined = BTreeMap::new();
        let interval = value(results.interval, &["preference_low", "preference_high"], &mut undefined);
        let duel = results.duel;
        InterleavingBody {
            users_compared: duel.wins[0] + duel.wins[1] + duel.ties,
            ties: duel.ties,
            preference: value(results.preference, &["preference"], &mut undefined),
            preference_low: interval.map(|i| i.low),
            preference_high: interval.map(|i| i.high),
            p_value: value(results.p_value, &["p_value"], &mut undefined),
            undefined,
        }
    }
}

impl ResultsBody {
    /// The body of `results`, `pause` telling each arm's guardrail pause by name.
    fn new(results: &ExperimentResults, pause: impl Fn(&str) -> Option<Pause>) -> Self {
        let mut undefined = BTreeMap::new();
        ResultsBody {
            experiment: results.experiment.clone(),
            kind: results.kind.as_str().to_string(),
            status: results.status.as_str().to_string(),
            age_seconds: value(results.age_seconds, &["age_seconds"], &mut undefined),
            counts: if results.shared { "redis" } else { "memory" }.to_string(),
            unit: "user".to_string(),
            users_exact: results.inexact.is_none(),
            users_exact_reason: results.inexact.clone(),
            per_user_since: results.per_user_since.map(crate::calendar::date),
            srm_p_value: value(results.srm_p_value, &["srm_p_value"], &mut undefined),
            srm_detected: results.srm_detected,
            min_sample_size: results.min_sample_size,
            arms: results
                .arms
                .iter()
                .map(|arm| ArmResultsBody::new(arm, pause(&arm.name)))
                .collect(),
            interleaving: results.interleaving.as_ref().map(InterleavingBody::from),
            sequential_tuning: results.sequential_tuning,
            comparisons: results.comparisons as u64,
            adjustment: if results.comparisons > 1 { "holm" } else { "none" }.to_string(),
            act_on: match results.adjusted_by_covariates {
                true => ACT_ON_CUPED,
                false => ACT_ON,
            }
            .to_string(),
            days: None,
            undefined,
        }
    }
}

/// The results of experiment `id`, with the days when `by_day`: what the JSON results and the
/// results UI show alike, so a page can never show other numbers than the API.
pub(super) async fn load(gateway: &Gateway, id: &str, by_day: bool) -> Result<ResultsBody, ApiError> {
    let catalog = gateway.catalog();
    let experiment = catalog
        .experiment(id)
        .ok_or_else(|| ApiError::not_found("unknown_experiment", format!("no experiment {id:?} is loaded")))?;
    let models = gateway.models();
    let catalogue = |arm: &crate::experiment::Arm| models.get(&arm.model)?.catalogue_items();
    let unavailable = || {
        let held = gateway.eviction().and_then(|e| e.holding());
        ApiError::unavailable(
            "counts_unavailable",
            held.unwrap_or_else(|| "Redis does not answer; retry shortly".to_string()),
        )
    };
    let results = results::compute(experiment, gateway.tally(), catalogue)
        .await
        .ok_or_else(unavailable)?;
    let mut body = ResultsBody::new(&results, |arm| gateway.guard().pause(&experiment.id, arm));
    if by_day {
        let days = results::compute_days(experiment, gateway.tally())
            .await
            .ok_or_else(unavailable)?;
        body.days = Some(days.iter().map(DayBody::from).collect());
    }
    Ok(body)
}

#[OpenApi(tag = "ApiTags::Experiments")]
impl ResultsApi {
    /// Per-arm counts, CTR with its 95% interval, relative lift and p-value against the
    /// control, users the unit (delta method over per-user sums), and the sample-ratio-mismatch
    /// test on exact users; for an interleave experiment, the wins per
    /// arm and the preference test instead of lift and sample ratio. With `by=day`, also the
    /// cumulative CTR, lift and always-valid interval at the end of each day.
    #[oai(path = "/experiments/:id/results", method = "get")]
    async fn results(
        &self,
        gateway: Data<&Arc<Gateway>>,
        id: Path<String>,
        /// `day`: add the results as they stood at the end of each day (UTC).
        by: Query<Option<By>>,
        _auth: Auth,
    ) -> Result<Json<ResultsBody>, ApiError> {
        Ok(Json(load(&gateway, &id, *by == Some(By::Day)).await?))
    }
}
