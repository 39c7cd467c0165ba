//! `GET /experiments/{id}/results`: per-arm counts from [`crate::feedback::counts`] turned into
//! what an analyst reads — CTR with its interval, lift and p-value against the control (the first
//! arm), and the experiment's sample-ratio-mismatch test. Every statistic that is undefined for the
//! data at hand is an `Err` with the reason, which the API renders as `null` plus the reason.

use std::time::SystemTime;

use crate::analysis::cuped::{self, Cuped};
use crate::analysis::significance::{self, ALPHA, Interval, Lift, Sequential};
use crate::experiment::{Experiment, Kind, Status};
use crate::feedback::counts::{ArmCounts, Counts, DayCounts, DuelCounts, Tally};
use crate::feedback::lists::POSITION_BUCKETS;
use crate::feedback::sums::UserSums;

/// A sample-ratio mismatch is flagged below this p-value (ARCHITECTURE.md §5).
pub(crate) const SRM_THRESHOLD: f64 = 0.001;

/// One arm's results.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ArmResults {
    /// Arm name.
    pub(crate) name: String,
    /// Configured share, percent.
    pub(crate) weight: f64,
    /// Whether this is the control (the first arm).
    pub(crate) control: bool,
    /// The counts.
    pub(crate) counts: ArmCounts,
    /// Clicks / impressions over the per-user sums (a ratio of per-user means).
    pub(crate) ctr: Result<f64, &'static str>,
    /// 95% interval of the CTR, its variance by the delta method over users.
    pub(crate) ctr_interval: Result<Interval, &'static str>,
    /// Relative lift over the control (`Err` for the control itself).
    pub(crate) lift: Result<Lift, &'static str>,
    /// Two-sided test of the CTR difference against the control, users the unit.
    pub(crate) p_value: Result<f64, &'static str>,
    /// The always-valid lift interval and p-value against the control.
    pub(crate) sequential: Result<Sequential, &'static str>,
    /// The comparison adjusted for the users' pre-period (CUPED), when the experiment names
    /// covariates; `decision` then reads it.
    pub(crate) cuped: Option<Result<Cuped, &'static str>>,
    /// With more than one arm compared with the control: `p_value` and the always-valid
    /// p-value after Holm's adjustment (`None` when the raw value is undefined); with
    /// covariates, of the adjusted comparison.
    pub(crate) adjusted: Option<[Option<f64>; 2]>,
    /// What the always-valid test (adjusted, with several arms) says an analyst may do now.
    pub(crate) decision: Result<Decision, &'static str>,
    /// Whether the arm has `min_sample_size` impressions.
    pub(crate) min_sample_reached: bool,
    /// Users the arm won, in an interleave experiment.
    pub(crate) wins: Option<u64>,
    /// Whether the arm is a shadow, which serves nobody and is compared with the control.
    pub(crate) shadow: bool,
    /// Distinct items served / items in the model (`Err` while the model's catalogue is
    /// unknown: no snapshot mapped).
    pub(crate) coverage: Result<f64, &'static str>,
    /// A shadow arm's mean Jaccard@k and RBO against the control's list.
    pub(crate) overlap: Result<(f64, f64), &'static str>,
    /// Impressions, clicks and CTR per rank bucket, in [`POSITION_BUCKETS`] order.
    pub(crate) by_position: Vec<PositionResults>,
}

/// What the always-valid test allows, at any look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// The arm's CTR is higher than the control's.
    Better,
    /// The arm's CTR is lower than the control's.
    Worse,
    /// No difference shown yet: keep the experiment running (or stop it for lack of effect).
    Inconclusive,
}

impl Decision {
    /// The name in the API.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Decision::Better => "better",
            Decision::Worse => "worse",
            Decision::Inconclusive => "inconclusive",
        }
    }
}

/// One rank bucket of an arm.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PositionResults {
    /// The bucket's name (`1`, `4-5`, `11+`).
    pub(crate) bucket: &'static str,
    /// Impressions of items in the bucket.
    pub(crate) impressions: u64,
    /// Clicks on them.
    pub(crate) clicks: u64,
    /// Clicks / impressions.
    pub(crate) ctr: Result<f64, &'static str>,
}

/// What an interleave experiment's users prefer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct InterleavingResults {
    /// The wins and ties.
    pub(crate) duel: DuelCounts,
    /// `Δ`, the preference for the first arm (see [`significance::preference`]).
    pub(crate) preference: Result<f64, &'static str>,
    /// Its 95% interval.
    pub(crate) interval: Result<Interval, &'static str>,
    /// The sign test's two-sided p-value.
    pub(crate) p_value: Result<f64, &'static str>,
}

/// An experiment's results.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ExperimentResults {
    /// Experiment id.
    pub(crate) experiment: String,
    /// Lifecycle state.
    pub(crate) status: Status,
    /// Seconds since the schedule started (`Err` without a `start`).
    pub(crate) age_seconds: Result<u64, &'static str>,
    /// Whether the counts are shared by every replica (Redis) or this process's only.
    pub(crate) shared: bool,
    /// Chi-square p-value of exact users per arm against the weights; withheld while users
    /// are not exact.
    pub(crate) srm_p_value: Result<f64, &'static str>,
    /// Why users are not exact, when some could not be counted.
    pub(crate) inexact: Option<String>,
    /// The first day (UTC) of the per-user sums, when some arm also has impressions or clicks
    /// outside them (counted before per-user counting began): the statistics run from then.
    pub(crate) per_user_since: Option<i64>,
    /// `srm_p_value < 0.001`: the split is broken, the comparison untrustworthy.
    pub(crate) srm_detected: bool,
    /// Impressions each arm needs before its comparison is worth reading.
    pub(crate) min_sample_size: u64,
    /// Arms, control first.
    pub(crate) arms: Vec<ArmResults>,
    /// How the arms are compared.
    pub(crate) kind: Kind,
    /// The preference test of an interleave experiment.
    pub(crate) interleaving: Option<InterleavingResults>,
    /// `N*` of the always-valid intervals.
    pub(crate) sequential_tuning: f64,
    /// Arms compared with the control; above one, p-values are also given Holm-adjusted.
    pub(crate) comparisons: usize,
    /// Whether the experiment names covariates, so `decision` reads the adjusted comparison.
    pub(crate) adjusted_by_covariates: bool,
}

/// Why a shadow arm has no lift or p-value.
const SHADOW_ARM: &str = "a shadow arm serves nobody: read its overlap with the control";

/// Why split-experiment statistics are absent from an interleave experiment.
const INTERLEAVED_ARMS: &str = "interleaved arms serve the same users: read the interleaving preference";

/// Whether arm `i` of `experiment` is compared with the control, or why not.
fn compared(experiment: &Experiment, i: usize) -> Result<(), &'static str> {
    match (i, experiment.kind) {
        (_, Kind::Interleave) => Err(INTERLEAVED_ARMS),
        (0, Kind::Split) => Err("this is the control"),
        _ if experiment.arms[i].shadow.is_some() => Err(SHADOW_ARM),
        _ => Ok(()),
    }
}

/// Clicks / impressions.
fn rate(clicks: u64, impressions: u64) -> Result<f64, &'static str> {
    match impressions {
        0 => Err("no impressions"),
        n => Ok(clicks as f64 / n as f64),
    }
}

/// One arm's counts from its first kept day to the end of one day, and their statistics.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DayArm {
    /// Arm name.
    pub(crate) name: String,
    /// Users counted up to the end of the day.
    pub(crate) users: u64,
    /// Impressions up to the end of the day.
    pub(crate) impressions: u64,
    /// Clicks up to the end of the day.
    pub(crate) clicks: u64,
    /// Their ratio.
    pub(crate) ctr: Result<f64, &'static str>,
    /// Relative lift over the control then.
    pub(crate) lift: Result<f64, &'static str>,
    /// The always-valid interval and p-value then: the one an analyst reading day by day may
    /// act on.
    pub(crate) sequential: Result<Sequential, &'static str>,
    /// The comparison adjusted for the pre-period then, when the experiment names covariates.
    pub(crate) cuped: Option<Result<Cuped, &'static str>>,
}

/// The cumulative results at the end of one day (UTC).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DayResults {
    /// Days since 1970-01-01.
    pub(crate) day: i64,
    /// Every arm, control first.
    pub(crate) arms: Vec<DayArm>,
}

/// The results of `experiment` at the end of each day something was counted; `None` when
/// Redis does not answer.
pub(crate) async fn compute_days(experiment: &Experiment, tally: &Tally) -> Option<Vec<DayResults>> {
    let names: Vec<&str> = experiment.arms.iter().map(|a| a.name.as_str()).collect();
    let days = tally.read_days(&experiment.id, &names).await?;
    Some(days_from_counts(experiment, &days))
}

/// The cumulative statistics of per-day counts (one map per arm, in arm order): the per-user
/// sums up to the end of each day are the days' additions up to it, so each day's figures are
/// the same estimator as the totals, over the users counted by then.
pub(crate) fn days_from_counts(experiment: &Experiment, days: &[DayCounts]) -> Vec<DayResults> {
    let mut all: Vec<i64> = days.iter().flat_map(|d| d.keys().copied()).collect();
    all.sort_unstable();
    all.dedup();
    let mut running = vec![(ArmCounts::default(), [0u64; 2]); days.len()];
    all.into_iter()
        .map(|day| {
            for ((counts, outside), arm) in running.iter_mut().zip(days) {
                if let Some(added) = arm.get(&day) {
                    counts.sums.add(&added.sums);
                    counts.pre.add(&added.pre);
                    *outside = [outside[0] + added.outside[0], outside[1] + added.outside[1]];
                }
            }
            let control = running.first().map(|(counts, _)| *counts).unwrap_or_default();
            let arms = experiment
                .arms
                .iter()
                .zip(&running)
                .enumerate()
                .map(|(i, (arm, (counts, outside)))| {
                    let sums = &counts.sums;
                    DayArm {
                        name: arm.name.clone(),
                        users: sums.users,
                        impressions: sums.impressions + outside[0],
                        clicks: sums.clicks + outside[1],
                        ctr: per_user(sums, *outside, significance::ctr(sums)),
                        lift: compared(experiment, i)
                            .and_then(|()| significance::relative_lift(sums, &control.sums))
                            .map(|l| l.value),
                        sequential: compared(experiment, i).and_then(|()| {
                            significance::sequential_lift(sums, &control.sums, experiment.sequential_tuning)
                        }),
                        cuped: experiment.covariates.as_ref().map(|_| {
                            compared(experiment, i).and_then(|()| adjusted_comparison(experiment, counts, &control))
                        }),
                    }
                })
                .collect();
            DayResults { day, arms }
        })
        .collect()
}

/// A statistic of `sums`, with the reason for its absence told plainly when the only
/// impressions are `outside` the per-user sums (counted before per-user counting began).
fn per_user<T>(sums: &UserSums, outside: [u64; 2], statistic: Result<T, &'static str>) -> Result<T, &'static str> {
    match (sums.impressions, outside[0]) {
        (0, 1..) => Err("no impressions counted per user yet: those counted are from before per-user counting"),
        _ => statistic,
    }
}

/// Computes the results of `experiment`, `catalogue` telling the items of an arm's model;
/// `None` when the counts cannot be read (Redis down).
pub(crate) async fn compute(
    experiment: &Experiment,
    tally: &Tally,
    catalogue: impl Fn(&crate::experiment::Arm) -> Option<usize>,
) -> Option<ExperimentResults> {
    let catalogue: Vec<Option<usize>> = experiment.arms.iter().map(catalogue).collect();
    let names: Vec<&str> = experiment.arms.iter().map(|a| a.name.as_str()).collect();
    let counts = tally.read(&experiment.id, &names).await?;
    let duel = match experiment.kind {
        Kind::Split => None,
        Kind::Interleave => Some(tally.read_duel(&experiment.id).await?),
    };
    let mut results = from_counts(
        experiment,
        &counts,
        &catalogue,
        duel,
        tally.is_shared(),
        tally.min_sample_size(),
        SystemTime::now(),
    );
    // Only an experiment counted partly outside the per-user sums needs to say since when they
    // run; the days tell it.
    if counts.arms.iter().any(|arm| arm.outside != [0, 0]) {
        let days = tally.read_days(&experiment.id, &names).await?;
        results.per_user_since = days
            .iter()
            .filter_map(|arm| arm.iter().find(|(_, day)| day.sums != UserSums::default()))
            .map(|(&day, _)| day)
            .min();
    }
    Some(results)
}

/// The statistics of already-read counts (one per arm, in arm order).
pub(crate) fn from_counts(
    experiment: &Experiment,
    Counts { arms: counts, inexact }: &Counts,
    catalogue: &[Option<usize>],
    duel: Option<DuelCounts>,
    shared: bool,
    min_sample_size: u64,
    now: SystemTime,
) -> ExperimentResults {
    let control = counts.first().copied().unwrap_or_default();
    let mut arms = experiment
        .arms
        .iter()
        .zip(counts)
        .enumerate()
        .map(|(i, (arm, c))| {
            let is_control = compared(experiment, i);
            ArmResults {
                name: arm.name.clone(),
                weight: f64::from(arm.weight_bp) / 100.0,
                control: i == 0,
                counts: *c,
                ctr: per_user(&c.sums, c.outside, significance::ctr(&c.sums)),
                ctr_interval: per_user(&c.sums, c.outside, significance::ctr_interval(&c.sums)),
                lift: is_control.and_then(|()| significance::relative_lift(&c.sums, &control.sums)),
                p_value: is_control.and_then(|()| significance::difference_p(&c.sums, &control.sums)),
                sequential: is_control
                    .and_then(|()| significance::sequential_lift(&c.sums, &control.sums, experiment.sequential_tuning)),
                cuped: experiment
                    .covariates
                    .as_ref()
                    .map(|_| is_control.and_then(|()| adjusted_comparison(experiment, c, &control))),
                adjusted: None,
                decision: Err("this is the control"),
                min_sample_reached: c.impressions() >= min_sample_size,
                wins: duel.and_then(|d| d.wins.get(i).copied()),
                shadow: arm.shadow.is_some(),
                coverage: match catalogue.get(i).copied().flatten() {
                    None => Err("the model's catalogue is known once its serving snapshot is mapped"),
                    Some(0) => Err("the model has no items"),
                    Some(items) => Ok((c.items as f64 / items as f64).min(1.0)),
                },
                overlap: match (arm.shadow, c.compared) {
                    (None, _) => Err("only a shadow arm is compared with the control"),
                    (Some(_), 0) => Err("no comparison yet"),
                    (Some(_), n) => {
                        let mean = |micro: u64| micro as f64 / 1e6 / n as f64;
                        Ok((mean(c.jaccard_micro), mean(c.rbo_micro)))
                    }
                },
                by_position: POSITION_BUCKETS
                    .iter()
                    .enumerate()
                    .map(|(b, bucket)| PositionResults {
                        bucket,
                        impressions: c.impressions_by_position[b],
                        clicks: c.clicks_by_position[b],
                        ctr: rate(c.clicks_by_position[b], c.impressions_by_position[b]),
                    })
                    .collect(),
            }
        })
        .collect::<Vec<ArmResults>>();
    let comparisons = adjust(&mut arms);
    let serving = || {
        experiment
            .arms
            .iter()
            .zip(counts)
            .filter(|(arm, _)| arm.shadow.is_none())
    };
    let users: Vec<u64> = serving().map(|(_, c)| c.sums.users).collect();
    let weights: Vec<f64> = serving().map(|(a, _)| f64::from(a.weight_bp)).collect();
    let srm_p_value = match (duel, inexact) {
        (Some(_), _) => Err("an interleave experiment does not split users between its arms"),
        (None, Some(_)) => Err("users are not exact (see users_exact_reason), so no sample-ratio verdict is given"),
        (None, None) => significance::sample_ratio_p(&users, &weights),
    };
    let srm_detected = srm_p_value.is_ok_and(|p| p < SRM_THRESHOLD);
    for arm in &mut arms {
        arm.decision = decide(arm, srm_detected);
    }
    ExperimentResults {
        experiment: experiment.id.clone(),
        status: experiment.status,
        age_seconds: match experiment.start {
            Some(start) => Ok(now.duration_since(start).map_or(0, |d| d.as_secs())),
            None => Err("the experiment has no start"),
        },
        shared,
        srm_detected,
        srm_p_value,
        inexact: inexact.clone(),
        per_user_since: None,
        min_sample_size,
        arms,
        kind: experiment.kind,
        interleaving: duel.map(|duel| InterleavingResults {
            duel,
            preference: significance::preference(duel.wins, duel.ties),
            interval: significance::preference_interval(duel.wins, duel.ties),
            p_value: significance::sign_test_p(duel.wins),
        }),
        sequential_tuning: experiment.sequential_tuning,
        comparisons,
        adjusted_by_covariates: experiment.covariates.is_some(),
    }
}

/// The comparison of `arm` with `control` adjusted for the users' pre-period (CUPED).
fn adjusted_comparison(experiment: &Experiment, arm: &ArmCounts, control: &ArmCounts) -> Result<Cuped, &'static str> {
    cuped::cuped(
        &arm.sums,
        &arm.pre,
        &control.sums,
        &control.pre,
        experiment.sequential_tuning,
    )
}

/// The always-valid comparison of `arm` with `control` that decisions and the `max_ctr_drop`
/// guardrail act on: adjusted for the pre-period when the experiment names covariates (the
/// same error guarantee, a narrower interval), else unadjusted.
pub(crate) fn acted_on(
    experiment: &Experiment,
    arm: &ArmCounts,
    control: &ArmCounts,
) -> Result<Sequential, &'static str> {
    match experiment.covariates {
        Some(_) => adjusted_comparison(experiment, arm, control).map(|c| c.sequential),
        None => significance::sequential_lift(&arm.sums, &control.sums, experiment.sequential_tuning),
    }
}

impl ArmResults {
    /// The fixed-horizon p-value and the always-valid comparison decisions read: adjusted
    /// (CUPED) when the experiment names covariates.
    fn acted_on(&self) -> (Result<f64, &'static str>, Result<Sequential, &'static str>) {
        match self.cuped {
            Some(cuped) => (cuped.map(|c| c.p_value), cuped.map(|c| c.sequential)),
            None => (self.p_value, self.sequential),
        }
    }
}

/// Adds Holm-adjusted p-values to the arms compared with the control when there are several;
/// returns how many are compared.
fn adjust(arms: &mut [ArmResults]) -> usize {
    let compared: Vec<usize> = (0..arms.len())
        .filter(|&i| !arms[i].control && !arms[i].shadow && arms[i].wins.is_none())
        .collect();
    if compared.len() > 1 {
        let fixed = significance::holm(&compared.iter().map(|&i| arms[i].acted_on().0.ok()).collect::<Vec<_>>());
        let sequential = significance::holm(
            &compared
                .iter()
                .map(|&i| arms[i].acted_on().1.ok().map(|s| s.p_value))
                .collect::<Vec<_>>(),
        );
        for (k, &i) in compared.iter().enumerate() {
            arms[i].adjusted = Some([fixed[k], sequential[k]]);
        }
    }
    compared.len()
}

/// What the always-valid p-value (Holm-adjusted when several arms are compared; of the
/// CUPED-adjusted comparison with covariates) lets an analyst conclude about `arm` now.
fn decide(arm: &ArmResults, srm_detected: bool) -> Result<Decision, &'static str> {
    let sequential = arm.acted_on().1?;
    if srm_detected {
        return Err("sample-ratio mismatch: the split is broken, so no decision can be read");
    }
    let p = match arm.adjusted {
        Some([_, adjusted]) => adjusted.unwrap_or(sequential.p_value),
        None => sequential.p_value,
    };
    Ok(if p >= ALPHA {
        Decision::Inconclusive
    } else if sequential.interval.low > 0.0 {
        Decision::Better
    } else {
        Decision::Worse
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::Catalog;

    /// Days are cumulative from the first kept day, every arm on every day any arm counted.
    /// What one day added: `users` new users with `impressions` impressions and `clicks`
    /// clicks between them, each user with at most one click (so the sums are simple to state).
    fn day(users: u64, impressions: u64, clicks: u64) -> crate::feedback::users::Day {
        let mut sums = UserSums::default();
        for u in 0..users {
            sums.add_user();
            let own = impressions / users + u64::from(u < impressions % users);
            for i in 0..own {
                sums.add_impression(0, i);
            }
            if u < clicks {
                sums.add_click(0, own);
            }
        }
        crate::feedback::users::Day {
            sums,
            ..Default::default()
        }
    }

    /// Days are cumulative from the first kept day, every arm on every day any arm counted,
    /// and each day's statistics are those of the per-user sums up to it.
    #[test]
    fn days_add_up_in_order_across_arms() {
        let catalog = Catalog::load_dir(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments"))
            .expect("demo experiments");
        let experiment = catalog.experiment("home-als-rank").expect("demo experiment");
        let control = DayCounts::from([(20_000, day(10, 100, 5)), (20_002, day(10, 100, 6))]);
        let mut before = day(0, 0, 0);
        before.outside = [40, 2];
        let treatment = DayCounts::from([(19_999, before), (20_000, day(10, 100, 7)), (20_001, day(5, 50, 1))]);
        let days = days_from_counts(experiment, &[control.clone(), treatment.clone()]);
        let seen: Vec<(i64, [u64; 3], [u64; 3])> = days
            .iter()
            .map(|d| {
                let n = |i: usize| [d.arms[i].users, d.arms[i].impressions, d.arms[i].clicks];
                (d.day, n(0), n(1))
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                (19_999, [0, 0, 0], [0, 40, 2]),
                (20_000, [10, 100, 5], [10, 140, 9]),
                (20_001, [10, 100, 5], [15, 190, 10]),
                (20_002, [20, 200, 11], [15, 190, 10]),
            ]
        );
        assert_eq!(
            days[0].arms[1].ctr,
            Err("no impressions counted per user yet: those counted are from before per-user counting")
        );
        let last = &days[3].arms;
        assert_eq!(last[0].lift, Err("this is the control"));
        let mut sums = [UserSums::default(); 2];
        for (total, arm) in sums.iter_mut().zip([&control, &treatment]) {
            for added in arm.values() {
                total.add(&added.sums);
            }
        }
        let lift = last[1].lift.expect("defined");
        assert!((lift - ((8.0 / 150.0) / (11.0 / 200.0) - 1.0)).abs() < 1e-12, "{lift}");
        assert_eq!(
            last[1].sequential,
            significance::sequential_lift(&sums[1], &sums[0], experiment.sequential_tuning)
        );
    }
}
