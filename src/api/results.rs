//! `GET /experiments/{id}/results`: what analysts read to compare arms.

use std::collections::BTreeMap;
use std::sync::Arc;

use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi};

use super::ApiTags;
use super::auth::Auth;
use super::error::ApiError;
use crate::analysis::cuped::Cuped;
use crate::analysis::results::{self, ArmResults, DayResults, ExperimentResults, InterleavingResults};
use crate::gateway::{Gateway, Pause};

/// The results endpoint.
#[derive(Default)]
pub(crate) struct ResultsApi;

/// One arm's counts and statistics. A statistic that cannot be computed is absent, and its
/// reason is in `undefined`.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub(super) struct ArmResultsBody {
    /// Arm name.
    pub(super) name: String,
    /// Configured share, percent (0 in an interleave experiment, whose arms both serve every
    /// covered user).
    pub(super) weight: f64,
    /// True for the control (the first arm), which the others are compared with.
    pub(super) control: bool,
    /// Distinct users served from the arm, counted exactly (each user once, the first time it
    /// is served from the arm, across replicas, restarts and resends): the unit of analysis.
    pub(super) users: u64,
    /// Responses served to counted users (QA overrides excluded).
    pub(super) exposures: u64,
    /// Impressions reported.
    pub(super) impressions: u64,
    /// Clicks reported.
    pub(super) clicks: u64,
    /// Of `impressions`, those outside the per-user statistics: counted before per-user
    /// counting began (see `per_user_since`), or of users past the memory bound. Absent when 0.
    pub(super) impressions_outside_per_user: Option<u64>,
    /// Of `clicks`, those outside the per-user statistics. Absent when 0.
    pub(super) clicks_outside_per_user: Option<u64>,
    /// Distinct users who clicked (exact, since per-user counting began).
    pub(super) clicking_users: u64,
    /// The sums over the arm's users that its CTR, lift and p-values are computed from.
    pub(super) per_user_sums: PerUserSumsBody,
    /// With `covariates`: the sums of the arm's users' pre-period rows that the CUPED
    /// comparison is computed from.
    pub(super) pre_period_sums: Option<PrePeriodSumsBody>,
    /// With `covariates`: the comparison with the control adjusted for each user's pre-period
    /// clicks and impressions (CUPED); `decision` then reads it.
    pub(super) cuped: Option<CupedBody>,
    /// Clicks / impressions over the users counted: the ratio of the users' mean clicks to
    /// their mean impressions.
    pub(super) ctr: Option<f64>,
    /// 95% interval of the CTR, low end: users are the unit, its variance by the delta method
    /// from the per-user sums (impressions of one user are not independent).
    pub(super) ctr_low: Option<f64>,
    /// 95% interval of the CTR, high end.
    pub(super) ctr_high: Option<f64>,
    /// Relative lift of the CTR over the control (`0.05` is +5%).
    pub(super) lift: Option<f64>,
    /// 95% interval of the lift (delta method over users, on the log ratio), low end.
    pub(super) lift_low: Option<f64>,
    /// 95% interval of the lift, high end.
    pub(super) lift_high: Option<f64>,
    /// Two-sided z-test of the CTR difference against the control, users the unit (delta
    /// method). Fixed-horizon, like `lift_low` and `lift_high`: only valid read once, at a
    /// sample size chosen in advance.
    pub(super) p_value: Option<f64>,
    /// Always-valid 95% interval of the lift (a confidence sequence), low end: valid however
    /// often it is read, so it may be acted on at any look.
    pub(super) sequential_lift_low: Option<f64>,
    /// Always-valid 95% interval of the lift, high end.
    pub(super) sequential_lift_high: Option<f64>,
    /// Always-valid p-value of no lift: below 0.05 exactly when the always-valid interval
    /// leaves out 0.
    pub(super) sequential_p_value: Option<f64>,
    /// `p_value` after Holm's adjustment for the arms compared with the control; only when
    /// more than one is.
    pub(super) p_value_adjusted: Option<f64>,
    /// `sequential_p_value` after Holm's adjustment; only when more than one arm is compared.
    pub(super) sequential_p_value_adjusted: Option<f64>,
    /// What the always-valid test (Holm-adjusted with several arms; of the CUPED-adjusted
    /// comparison when the experiment names covariates) allows now: `better`, `worse` or
    /// `inconclusive`.
    pub(super) decision: Option<String>,
    /// Whether the arm has `min_sample_size` impressions.
    pub(super) min_sample_reached: bool,
    /// In an interleave experiment: users who clicked this arm's items more than the other's.
    pub(super) wins: Option<u64>,
    /// True for a shadow arm: it serves nobody; its list is compared with the control's.
    pub(super) shadow: bool,
    /// `serving`, `shadow`, or `paused_by_guardrail` (its users get the control's list and
    /// are still counted here, as assigned).
    pub(super) state: String,
    /// Which guardrail paused the arm, with the figures.
    pub(super) paused_reason: Option<String>,
    /// Distinct items this arm served (a shadow arm: in the lists compared; HyperLogLog with
    /// Redis, ±0.81%).
    pub(super) distinct_items: u64,
    /// `distinct_items` / items in the arm's model: how much of the catalogue it reaches.
    pub(super) catalogue_coverage: Option<f64>,
    /// A shadow arm's comparisons with the control's list for the same user.
    pub(super) compared: Option<u64>,
    /// Their mean Jaccard@k (k = the page size asked for).
    pub(super) overlap_jaccard: Option<f64>,
    /// Their mean rank-biased overlap (p = 0.9).
    pub(super) overlap_rbo: Option<f64>,
    /// Impressions, clicks and CTR by the item's rank in the list.
    pub(super) by_position: Vec<PositionBody>,
    /// Why a statistic is absent, by field name.
    pub(super) undefined: BTreeMap<String, String>,
}

/// The per-user sums of an arm (STATISTICS.md §1): with `c` a user's clicks and `i` its
/// impressions in the arm, sums over the arm's users, kept exactly, so that every statistic of
/// the arm can be computed again from them (delta method: Deng, Knoblich and Lu, KDD 2018).
#[derive(Debug, Object)]
pub(super) struct PerUserSumsBody {
    /// `n`: users counted in the arm, with or without events.
    pub(super) users: u64,
    /// `Σc`.
    pub(super) clicks: u64,
    /// `Σi`.
    pub(super) impressions: u64,
    /// `Σc²`.
    pub(super) clicks_squared: u64,
    /// `Σi²`.
    pub(super) impressions_squared: u64,
    /// `Σc·i`.
    pub(super) clicks_times_impressions: u64,
}

/// The pre-period sums of an arm (STATISTICS.md §5): with `c'`, `i'` a user's clicks and
/// impressions before the experiment (0 and 0 without a row in the covariate table, frozen
/// when the user entered the arm) and `c`, `i` the user's in the arm, sums over the arm's users.
#[derive(Debug, Object)]
pub(super) struct PrePeriodSumsBody {
    /// Users with a row in the covariate table.
    pub(super) users_with_row: u64,
    /// `Σc'`.
    pub(super) clicks: u64,
    /// `Σi'`.
    pub(super) impressions: u64,
    /// `Σc'²`.
    pub(super) clicks_squared: u64,
    /// `Σi'²`.
    pub(super) impressions_squared: u64,
    /// `Σc'·i'`.
    pub(super) clicks_times_impressions: u64,
    /// `Σc·c'`.
    pub(super) clicks_times_pre_clicks: u64,
    /// `Σc·i'`.
    pub(super) clicks_times_pre_impressions: u64,
    /// `Σi·c'`.
    pub(super) impressions_times_pre_clicks: u64,
    /// `Σi·i'`.
    pub(super) impressions_times_pre_impressions: u64,
}

/// The comparison of an arm with the control adjusted for the users' pre-period (CUPED, Deng,
/// Xu, Kohavi and Walker, WSDM 2013): the same estimands as the unadjusted figures, with the
/// part of each user's clicks and impressions their pre-period predicts regressed out (the
/// coefficients fitted on both arms pooled), so intervals are narrower by
/// `variance_reduction`.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub(super) struct CupedBody {
    /// Relative lift of the CTR over the control, adjusted.
    pub(super) lift: Option<f64>,
    /// Its 95% interval, low end (fixed-horizon).
    pub(super) lift_low: Option<f64>,
    /// Its 95% interval, high end (fixed-horizon).
    pub(super) lift_high: Option<f64>,
    /// Two-sided z-test of the adjusted CTR difference (fixed-horizon).
    pub(super) p_value: Option<f64>,
    /// Always-valid 95% interval of the adjusted lift, low end.
    pub(super) sequential_lift_low: Option<f64>,
    /// Always-valid 95% interval of the adjusted lift, high end.
    pub(super) sequential_lift_high: Option<f64>,
    /// Always-valid p-value of no lift, adjusted.
    pub(super) sequential_p_value: Option<f64>,
    /// `1 − Var(lift, adjusted) / Var(lift, unadjusted)`: the share of the lift's variance the
    /// pre-period explains (0.5 halves the users needed for the same power).
    pub(super) variance_reduction: Option<f64>,
    /// Users of this arm and the control with a row in the covariate table.
    pub(super) users_with_pre_period: Option<u64>,
    /// Why a figure is absent, by field name.
    pub(super) undefined: BTreeMap<String, String>,
}

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

/// One rank bucket of an arm's events.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub(super) struct PositionBody {
    /// Ranks in the bucket: `1`, `2`, `3`, `4-5`, `6-10`, `11+`.
    pub(super) position: String,
    /// Impressions of items at these ranks.
    pub(super) impressions: u64,
    /// Clicks on them.
    pub(super) clicks: u64,
    /// Clicks / impressions; absent without impressions.
    pub(super) ctr: Option<f64>,
}

/// What an interleave experiment's users prefer: each user who clicked an interleaved page is
/// won by the arm whose items they clicked more, or is a tie.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub(super) struct InterleavingBody {
    /// Users compared: wins of either arm plus ties.
    pub(super) users_compared: u64,
    /// Users who clicked both arms' items equally often.
    pub(super) ties: u64,
    /// `(wins of the first arm + ties / 2) / users_compared − 0.5`: above 0 favours the first
    /// arm, below 0 the second.
    pub(super) preference: Option<f64>,
    /// 95% interval of the preference, low end.
    pub(super) preference_low: Option<f64>,
    /// 95% interval of the preference, high end.
    pub(super) preference_high: Option<f64>,
    /// Two-sided sign test of the wins (ties left out).
    pub(super) p_value: Option<f64>,
    /// Why a statistic is absent, by field name.
    pub(super) undefined: BTreeMap<String, String>,
}

/// How results may be broken down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub(super) enum By {
    /// Cumulative results at the end of each day (UTC) something was counted.
    Day,
}

/// The results as they stood at the end of one day (UTC): counts since the first day kept
/// (at most 400), so the last day's equal the totals unless older days were dropped.
#[derive(Debug, Object)]
pub(super) struct DayBody {
    /// `YYYY-MM-DD`.
    pub(super) day: String,
    /// Every arm, control first.
    pub(super) arms: Vec<DayArmBody>,
}

/// One arm at the end of a day.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub(super) struct DayArmBody {
    /// Arm name.
    pub(super) name: String,
    /// Users counted up to the end of the day.
    pub(super) users: u64,
    /// Impressions up to the end of the day.
    pub(super) impressions: u64,
    /// Clicks up to the end of the day.
    pub(super) clicks: u64,
    /// Clicks / impressions.
    pub(super) ctr: Option<f64>,
    /// Relative lift of the CTR over the control.
    pub(super) lift: Option<f64>,
    /// Always-valid 95% interval of the lift, low end: the interval that may be read every day.
    pub(super) sequential_lift_low: Option<f64>,
    /// Always-valid 95% interval of the lift, high end.
    pub(super) sequential_lift_high: Option<f64>,
    /// Always-valid p-value of no lift.
    pub(super) sequential_p_value: Option<f64>,
    /// With `covariates`: the comparison adjusted for the pre-period then.
    pub(super) cuped: Option<CupedBody>,
    /// Why a statistic is absent, by field name.
    pub(super) undefined: BTreeMap<String, String>,
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

/// An experiment's results.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub(super) struct ResultsBody {
    /// Experiment id.
    pub(super) experiment: String,
    /// `split` (users split between arms) or `interleave` (both arms' lists merged).
    pub(super) kind: String,
    /// Lifecycle state.
    pub(super) status: String,
    /// Seconds since the schedule started; absent without a start.
    pub(super) age_seconds: Option<u64>,
    /// `redis`: counts shared by every replica; `memory`: this process's only.
    pub(super) counts: String,
    /// The unit of analysis: `user`. Users are what is randomized, so every interval and
    /// p-value treats a user as one observation.
    pub(super) unit: String,
    /// False when some users could not be counted (a memory bound was reached during a Redis
    /// outage, or without Redis): `users` is then short, and no sample-ratio verdict is given.
    pub(super) users_exact: bool,
    /// Why `users_exact` is false.
    pub(super) users_exact_reason: Option<String>,
    /// `YYYY-MM-DD`, the first day (UTC) of the per-user statistics, given when some arm also
    /// counted impressions or clicks outside them (before per-user counting began).
    pub(super) per_user_since: Option<String>,
    /// Chi-square p-value of exact users per arm against the weights.
    pub(super) srm_p_value: Option<f64>,
    /// `srm_p_value < 0.001`: the split is broken; do not trust the comparison.
    pub(super) srm_detected: bool,
    /// Impressions each arm needs before its comparison is worth reading.
    pub(super) min_sample_size: u64,
    /// Arms, control first.
    pub(super) arms: Vec<ArmResultsBody>,
    /// The preference test, for an interleave experiment.
    pub(super) interleaving: Option<InterleavingBody>,
    /// `N*` of the always-valid intervals: the users of a comparison (both arms) at which they
    /// are tightest relative to the fixed-horizon ones.
    pub(super) sequential_tuning: f64,
    /// Arms compared with the control (shadows and the control left out).
    pub(super) comparisons: u64,
    /// `holm` when more than one arm is compared, so the `*_adjusted` p-values are given and
    /// `decision` uses them; else `none`.
    pub(super) adjustment: String,
    /// Which figures may be acted on at any look.
    pub(super) act_on: String,
    /// With `?by=day`: the cumulative results at the end of each day, oldest first.
    pub(super) days: Option<Vec<DayBody>>,
    /// Why an experiment-level statistic is absent, by field name.
    pub(super) undefined: BTreeMap<String, String>,
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
