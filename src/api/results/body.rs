//! The body of `GET /experiments/{id}/results`, as types: what the endpoint answers, what the
//! results UI renders and what `recgw report` reads back from a gateway, so a field renamed or
//! removed is a compile error in every reader, and `recgw report --format csv` takes its columns
//! from these types' schema (a new statistic shows there without a change to the report).
//! Only the types live here; how they are filled from the statistics is `super`'s.

use std::collections::BTreeMap;

use poem_openapi::Object;
use poem_openapi::registry::{MetaSchema, MetaSchemaRef, Registry};

/// One arm's counts and statistics. A statistic that cannot be computed is absent, and its
/// reason is in `undefined`.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub(crate) struct ArmResultsBody {
    /// Arm name.
    pub(crate) name: String,
    /// Configured share, percent (0 in an interleave experiment, whose arms both serve every
    /// covered user).
    pub(crate) weight: f64,
    /// True for the control (the first arm), which the others are compared with.
    pub(crate) control: bool,
    /// Distinct users served from the arm, counted exactly (each user once, the first time it
    /// is served from the arm, across replicas, restarts and resends): the unit of analysis.
    pub(crate) users: u64,
    /// Responses served to counted users (QA overrides excluded).
    pub(crate) exposures: u64,
    /// Impressions reported.
    pub(crate) impressions: u64,
    /// Clicks reported.
    pub(crate) clicks: u64,
    /// Of `impressions`, those outside the per-user statistics: counted before per-user
    /// counting began (see `per_user_since`), or of users past the memory bound. Absent when 0.
    pub(crate) impressions_outside_per_user: Option<u64>,
    /// Of `clicks`, those outside the per-user statistics. Absent when 0.
    pub(crate) clicks_outside_per_user: Option<u64>,
    /// Distinct users who clicked (exact, since per-user counting began).
    pub(crate) clicking_users: u64,
    /// The sums over the arm's users that its CTR, lift and p-values are computed from.
    pub(crate) per_user_sums: PerUserSumsBody,
    /// With `covariates`: the sums of the arm's users' pre-period rows that the CUPED
    /// comparison is computed from.
    pub(crate) pre_period_sums: Option<PrePeriodSumsBody>,
    /// With `covariates`: the comparison with the control adjusted for each user's pre-period
    /// clicks and impressions (CUPED); `decision` then reads it.
    pub(crate) cuped: Option<CupedBody>,
    /// Clicks / impressions over the users counted: the ratio of the users' mean clicks to
    /// their mean impressions.
    pub(crate) ctr: Option<f64>,
    /// 95% interval of the CTR, low end: users are the unit, its variance by the delta method
    /// from the per-user sums (impressions of one user are not independent).
    pub(crate) ctr_low: Option<f64>,
    /// 95% interval of the CTR, high end.
    pub(crate) ctr_high: Option<f64>,
    /// Relative lift of the CTR over the control (`0.05` is +5%).
    pub(crate) lift: Option<f64>,
    /// 95% interval of the lift (delta method over users, on the log ratio), low end.
    pub(crate) lift_low: Option<f64>,
    /// 95% interval of the lift, high end.
    pub(crate) lift_high: Option<f64>,
    /// Two-sided z-test of the CTR difference against the control, users the unit (delta
    /// method). Fixed-horizon, like `lift_low` and `lift_high`: only valid read once, at a
    /// sample size chosen in advance.
    pub(crate) p_value: Option<f64>,
    /// Always-valid 95% interval of the lift (a confidence sequence), low end: valid however
    /// often it is read, so it may be acted on at any look.
    pub(crate) sequential_lift_low: Option<f64>,
    /// Always-valid 95% interval of the lift, high end.
    pub(crate) sequential_lift_high: Option<f64>,
    /// Always-valid p-value of no lift: below 0.05 exactly when the always-valid interval
    /// leaves out 0.
    pub(crate) sequential_p_value: Option<f64>,
    /// `p_value` after Holm's adjustment for the arms compared with the control; only when
    /// more than one is.
    pub(crate) p_value_adjusted: Option<f64>,
    /// `sequential_p_value` after Holm's adjustment; only when more than one arm is compared.
    pub(crate) sequential_p_value_adjusted: Option<f64>,
    /// What the always-valid test (Holm-adjusted with several arms; of the CUPED-adjusted
    /// comparison when the experiment names covariates) allows now: `better`, `worse` or
    /// `inconclusive`.
    pub(crate) decision: Option<String>,
    /// Whether the arm has `min_sample_size` impressions.
    pub(crate) min_sample_reached: bool,
    /// In an interleave experiment: users who clicked this arm's items more than the other's.
    pub(crate) wins: Option<u64>,
    /// True for a shadow arm: it serves nobody; its list is compared with the control's.
    pub(crate) shadow: bool,
    /// `serving`, `shadow`, or `paused_by_guardrail` (its users get the control's list and
    /// are still counted here, as assigned).
    pub(crate) state: String,
    /// Which guardrail paused the arm, with the figures.
    pub(crate) paused_reason: Option<String>,
    /// Distinct items this arm served (a shadow arm: in the lists compared; HyperLogLog with
    /// Redis, ±0.81%).
    pub(crate) distinct_items: u64,
    /// `distinct_items` / items in the arm's model: how much of the catalogue it reaches.
    pub(crate) catalogue_coverage: Option<f64>,
    /// A shadow arm's comparisons with the control's list for the same user.
    pub(crate) compared: Option<u64>,
    /// Their mean Jaccard@k (k = the page size asked for).
    pub(crate) overlap_jaccard: Option<f64>,
    /// Their mean rank-biased overlap (p = 0.9).
    pub(crate) overlap_rbo: Option<f64>,
    /// Impressions, clicks and CTR by the item's rank in the list.
    pub(crate) by_position: Vec<PositionBody>,
    /// Why a statistic is absent, by field name.
    pub(crate) undefined: BTreeMap<String, String>,
}

/// The per-user sums of an arm (STATISTICS.md §1): with `c` a user's clicks and `i` its
/// impressions in the arm, sums over the arm's users, kept exactly, so that every statistic of
/// the arm can be computed again from them (delta method: Deng, Knoblich and Lu, KDD 2018).
#[derive(Debug, Object)]
pub(crate) struct PerUserSumsBody {
    /// `n`: users counted in the arm, with or without events.
    pub(crate) users: u64,
    /// `Σc`.
    pub(crate) clicks: u64,
    /// `Σi`.
    pub(crate) impressions: u64,
    /// `Σc²`.
    pub(crate) clicks_squared: u64,
    /// `Σi²`.
    pub(crate) impressions_squared: u64,
    /// `Σc·i`.
    pub(crate) clicks_times_impressions: u64,
}

/// The pre-period sums of an arm (STATISTICS.md §5): with `c'`, `i'` a user's clicks and
/// impressions before the experiment (0 and 0 without a row in the covariate table, frozen
/// when the user entered the arm) and `c`, `i` the user's in the arm, sums over the arm's users.
#[derive(Debug, Object)]
pub(crate) struct PrePeriodSumsBody {
    /// Users with a row in the covariate table.
    pub(crate) users_with_row: u64,
    /// `Σc'`.
    pub(crate) clicks: u64,
    /// `Σi'`.
    pub(crate) impressions: u64,
    /// `Σc'²`.
    pub(crate) clicks_squared: u64,
    /// `Σi'²`.
    pub(crate) impressions_squared: u64,
    /// `Σc'·i'`.
    pub(crate) clicks_times_impressions: u64,
    /// `Σc·c'`.
    pub(crate) clicks_times_pre_clicks: u64,
    /// `Σc·i'`.
    pub(crate) clicks_times_pre_impressions: u64,
    /// `Σi·c'`.
    pub(crate) impressions_times_pre_clicks: u64,
    /// `Σi·i'`.
    pub(crate) impressions_times_pre_impressions: u64,
}

/// The comparison of an arm with the control adjusted for the users' pre-period (CUPED, Deng,
/// Xu, Kohavi and Walker, WSDM 2013): the same estimands as the unadjusted figures, with the
/// part of each user's clicks and impressions their pre-period predicts regressed out (the
/// coefficients fitted on both arms pooled), so intervals are narrower by
/// `variance_reduction`.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub(crate) struct CupedBody {
    /// Relative lift of the CTR over the control, adjusted.
    pub(crate) lift: Option<f64>,
    /// Its 95% interval, low end (fixed-horizon).
    pub(crate) lift_low: Option<f64>,
    /// Its 95% interval, high end (fixed-horizon).
    pub(crate) lift_high: Option<f64>,
    /// Two-sided z-test of the adjusted CTR difference (fixed-horizon).
    pub(crate) p_value: Option<f64>,
    /// Always-valid 95% interval of the adjusted lift, low end.
    pub(crate) sequential_lift_low: Option<f64>,
    /// Always-valid 95% interval of the adjusted lift, high end.
    pub(crate) sequential_lift_high: Option<f64>,
    /// Always-valid p-value of no lift, adjusted.
    pub(crate) sequential_p_value: Option<f64>,
    /// `1 − Var(lift, adjusted) / Var(lift, unadjusted)`: the share of the lift's variance the
    /// pre-period explains (0.5 halves the users needed for the same power).
    pub(crate) variance_reduction: Option<f64>,
    /// Users of this arm and the control with a row in the covariate table.
    pub(crate) users_with_pre_period: Option<u64>,
    /// Why a figure is absent, by field name.
    pub(crate) undefined: BTreeMap<String, String>,
}

/// One rank bucket of an arm's events.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub(crate) struct PositionBody {
    /// Ranks in the bucket: `1`, `2`, `3`, `4-5`, `6-10`, `11+`.
    pub(crate) position: String,
    /// Impressions of items at these ranks.
    pub(crate) impressions: u64,
    /// Clicks on them.
    pub(crate) clicks: u64,
    /// Clicks / impressions; absent without impressions.
    pub(crate) ctr: Option<f64>,
}

/// What an interleave experiment's users prefer: each user who clicked an interleaved page is
/// won by the arm whose items they clicked more, or is a tie.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub(crate) struct InterleavingBody {
    /// Users compared: wins of either arm plus ties.
    pub(crate) users_compared: u64,
    /// Users who clicked both arms' items equally often.
    pub(crate) ties: u64,
    /// `(wins of the first arm + ties / 2) / users_compared − 0.5`: above 0 favours the first
    /// arm, below 0 the second.
    pub(crate) preference: Option<f64>,
    /// 95% interval of the preference, low end.
    pub(crate) preference_low: Option<f64>,
    /// 95% interval of the preference, high end.
    pub(crate) preference_high: Option<f64>,
    /// Two-sided sign test of the wins (ties left out).
    pub(crate) p_value: Option<f64>,
    /// Why a statistic is absent, by field name.
    pub(crate) undefined: BTreeMap<String, String>,
}

/// The results as they stood at the end of one day (UTC): counts since the first day kept
/// (at most 400), so the last day's equal the totals unless older days were dropped.
#[derive(Debug, Object)]
pub(crate) struct DayBody {
    /// `YYYY-MM-DD`.
    pub(crate) day: String,
    /// Every arm, control first.
    pub(crate) arms: Vec<DayArmBody>,
}

/// One arm at the end of a day.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub(crate) struct DayArmBody {
    /// Arm name.
    pub(crate) name: String,
    /// Users counted up to the end of the day.
    pub(crate) users: u64,
    /// Impressions up to the end of the day.
    pub(crate) impressions: u64,
    /// Clicks up to the end of the day.
    pub(crate) clicks: u64,
    /// Clicks / impressions.
    pub(crate) ctr: Option<f64>,
    /// Relative lift of the CTR over the control.
    pub(crate) lift: Option<f64>,
    /// Always-valid 95% interval of the lift, low end: the interval that may be read every day.
    pub(crate) sequential_lift_low: Option<f64>,
    /// Always-valid 95% interval of the lift, high end.
    pub(crate) sequential_lift_high: Option<f64>,
    /// Always-valid p-value of no lift.
    pub(crate) sequential_p_value: Option<f64>,
    /// With `covariates`: the comparison adjusted for the pre-period then.
    pub(crate) cuped: Option<CupedBody>,
    /// Why a statistic is absent, by field name.
    pub(crate) undefined: BTreeMap<String, String>,
}

/// An experiment's results.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub(crate) struct ResultsBody {
    /// Experiment id.
    pub(crate) experiment: String,
    /// `split` (users split between arms) or `interleave` (both arms' lists merged).
    pub(crate) kind: String,
    /// Lifecycle state.
    pub(crate) status: String,
    /// Seconds since the schedule started; absent without a start.
    pub(crate) age_seconds: Option<u64>,
    /// `redis`: counts shared by every replica; `memory`: this process's only.
    pub(crate) counts: String,
    /// The unit of analysis: `user`. Users are what is randomized, so every interval and
    /// p-value treats a user as one observation.
    pub(crate) unit: String,
    /// False when some users could not be counted (a memory bound was reached during a Redis
    /// outage, or without Redis): `users` is then short, and no sample-ratio verdict is given.
    pub(crate) users_exact: bool,
    /// Why `users_exact` is false.
    pub(crate) users_exact_reason: Option<String>,
    /// `YYYY-MM-DD`, the first day (UTC) of the per-user statistics, given when some arm also
    /// counted impressions or clicks outside them (before per-user counting began).
    pub(crate) per_user_since: Option<String>,
    /// Chi-square p-value of exact users per arm against the weights.
    pub(crate) srm_p_value: Option<f64>,
    /// `srm_p_value < 0.001`: the split is broken; do not trust the comparison.
    pub(crate) srm_detected: bool,
    /// Impressions each arm needs before its comparison is worth reading.
    pub(crate) min_sample_size: u64,
    /// Arms, control first.
    pub(crate) arms: Vec<ArmResultsBody>,
    /// The preference test, for an interleave experiment.
    pub(crate) interleaving: Option<InterleavingBody>,
    /// `N*` of the always-valid intervals: the users of a comparison (both arms) at which they
    /// are tightest relative to the fixed-horizon ones.
    pub(crate) sequential_tuning: f64,
    /// Arms compared with the control (shadows and the control left out).
    pub(crate) comparisons: u64,
    /// `holm` when more than one arm is compared, so the `*_adjusted` p-values are given and
    /// `decision` uses them; else `none`.
    pub(crate) adjustment: String,
    /// Which figures may be acted on at any look.
    pub(crate) act_on: String,
    /// With `?by=day`: the cumulative results at the end of each day, oldest first.
    pub(crate) days: Option<Vec<DayBody>>,
    /// Why an experiment-level statistic is absent, by field name.
    pub(crate) undefined: BTreeMap<String, String>,
}

/// The schema `schema` stands for: a field's own, or the object it refers to (poem-openapi
/// refers to a documented field's object through `allOf`, beside an entry for the field's doc).
pub(crate) fn resolve<'a>(registry: &'a Registry, schema: &'a MetaSchemaRef) -> Option<&'a MetaSchema> {
    match schema {
        MetaSchemaRef::Reference(name) => registry.schemas.get(name),
        MetaSchemaRef::Inline(inline) => {
            match inline.all_of.iter().find(|s| matches!(s, MetaSchemaRef::Reference(_))) {
                Some(referred) => resolve(registry, referred),
                None => Some(inline),
            }
        }
    }
}

/// Results as a test writes them: a JSON body with only the fields the test is about, the
/// required ones it leaves out filled from the schema (0, false, "", empty), read as the
/// typed body — the way `recgw report` reads a gateway's answer.
#[cfg(test)]
pub(crate) fn with_defaults(mut value: serde_json::Value) -> ResultsBody {
    use poem_openapi::types::{ParseFromJSON, Type};
    use serde_json::{Value, json};

    fn fill(registry: &Registry, schema: &MetaSchemaRef, value: &mut Value) {
        let Some(schema) = resolve(registry, schema) else {
            return;
        };
        if let (Value::Array(items), Some(item)) = (&mut *value, &schema.items) {
            items.iter_mut().for_each(|v| fill(registry, item, v));
        }
        let Value::Object(fields) = value else { return };
        for (name, property) in &schema.properties {
            if !fields.contains_key(*name) && !schema.required.contains(name) {
                continue;
            }
            let field = fields.entry(*name).or_insert_with(|| {
                match resolve(registry, property).map_or("", |schema| schema.ty) {
                    "integer" | "number" => json!(0),
                    "boolean" => json!(false),
                    "string" => json!(""),
                    "array" => json!([]),
                    _ => json!({}),
                }
            });
            fill(registry, property, field);
        }
    }

    let mut registry = Registry::new();
    ResultsBody::register(&mut registry);
    fill(&registry, &ResultsBody::schema_ref(), &mut value);
    ResultsBody::parse_from_json(Some(value)).unwrap_or_else(|e| panic!("results body: {}", e.into_message()))
}
