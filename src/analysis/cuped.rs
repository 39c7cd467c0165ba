//! CUPED for the per-user CTR: the comparison of [`significance`](super::significance), an
//! arm's CTR against the control's with the user as the unit, made more precise with what each
//! user did on the placement before the experiment (Deng, Xu, Kohavi and Walker, "Improving the
//! sensitivity of online controlled experiments by utilizing pre-experiment data", WSDM 2013;
//! STATISTICS.md §5, whose formulas are normative).
//!
//! Why: most of the noise in a CTR comparison is the difference between users, a few clicking
//! far more than the rest whichever arm they land in. Much of it is predictable from the same
//! user's clicks and impressions before the experiment, and those were fixed before
//! randomization, so the treatment cannot have moved them: subtracting the part they predict
//! takes noise out and leaves the effect in. The interval narrows by `√(1 − variance_reduction)`
//! and a test needs `1 − variance_reduction` of the users for the same power. In this module's
//! simulation (users keep their propensity to click from one period to the next, a fifth of them
//! new) the reduction is about 36%; a covariate unrelated to clicks gives about 0 and CUPED the
//! unadjusted answer.
//!
//! Choices:
//! - Each of the ratio's two means is adjusted by its own pre-period value:
//!   `ĉ = c − θ_c·(c' − c̄')`, `î = i − θ_i·(i' − ī')`, `θ_c = Cov(c, c')/Var(c')`,
//!   `θ_i = Cov(i, i')/Var(i')` (0 when the variance is 0: a pre-period the same for everyone
//!   predicts nothing). A user without a pre-period row, a new one, counts as `c' = i' = 0`:
//!   any value fixed before randomization keeps the adjustment unbiased, so a missing row costs
//!   only some of the reduction for those users.
//! - `θ` and the centres `c̄'`, `ī'` are fitted on both compared arms pooled, never on one. Both
//!   arms are then adjusted by the same `θ`, and the comparison moves by `θ` times the arms'
//!   difference in pre-period means, which randomization makes 0 on average and the treatment
//!   cannot have caused: the adjusted lift stays unbiased, up to the order-`1/N` wobble every
//!   ratio estimator has.
//! - The means, variances and covariance of `ĉ` and `î` within an arm follow from integer sums,
//!   [`UserSums`] and [`PreSums`], without per-user rows; `θ` is a constant within the arm, so
//!   e.g. `s_ĉĉ = s_cc − 2θ_c·s_cc' + θ_c²·s_c'c'`. The adjusted CTR `R̂ = mean(ĉ)/mean(î)`
//!   takes its variance from STATISTICS.md §2 with `ĉ`, `î` in place of `c`, `i`, and the lift,
//!   its interval, the p-value and the confidence sequence follow as in §3, unchanged.
//! - The variance ignores the sampling noise of `θ` itself, as Deng et al. and GrowthBook do:
//!   it adds a relative `O(1/N)`, nothing at the thousands of users a test needs, and the
//!   simulations below find the A/A false-positive rate at 5% with 400 users an arm.

use crate::analysis::significance::{
    Lift, Ratio, Sequential, centred, confidence_sequence, lift_interval, log_ratio, two_sided_p,
};
use crate::feedback::sums::{PreSums, UserSums};

/// The CUPED-adjusted comparison of an arm with the control.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Cuped {
    /// `R̂₁/R̂₀ − 1` and its 95% interval `exp(μ̂ ± z·σ̂) − 1` on the adjusted log ratio, as
    /// [`relative_lift`](super::significance::relative_lift) has it unadjusted; the interval is
    /// always `Ok`, since [`cuped`] returns only when it is defined.
    pub(crate) lift: Lift,
    /// Two-sided p-value of the z-test of `R̂₁ − R̂₀`, with `Var(R̂₁) + Var(R̂₀)`.
    pub(crate) p_value: f64,
    /// The always-valid interval and p-value: the same confidence sequence as unadjusted, fed
    /// the adjusted `μ̂`, `σ̂` and `N = n₁ + n₀` users.
    pub(crate) sequential: Sequential,
    /// `1 − Var(ln lift, adjusted) / Var(ln lift, unadjusted)`: the share of the users the
    /// adjustment saves for the same power. About 0 when the pre-period predicts nothing (a
    /// hair above: `θ` fits some of the sample's own noise); below 0 only if the pooled `θ`
    /// suits the arms worse than none.
    pub(crate) variance_reduction: f64,
    /// Users of both arms with a pre-period row: how many the adjustment had to go on.
    pub(crate) covered: u64,
}

/// Why CUPED is undefined when the arms' pre-period sums count more users than the arms have.
const MORE_COVERED_THAN_USERS: &str = "inconsistent pre-period sums: more users with a pre-period row than in the arm";

/// Why CUPED is undefined when the pre-period sums could not come from real users.
const INCONSISTENT_PRE_PERIOD: &str = "inconsistent pre-period sums: a sum of squares is below its sum squared over n";

/// Why the adjusted ratio is undefined when its denominator is not positive.
const NO_ADJUSTED_IMPRESSIONS: &str =
    "an arm's adjusted mean impressions are not positive: its pre-period is too far from the pooled one";

/// Why the adjusted log lift is undefined when a numerator is not positive.
const NO_ADJUSTED_CLICKS: &str =
    "an arm's adjusted mean clicks are not positive: its pre-period is too far from the pooled one";

/// Why the adjusted interval is undefined when the adjustment leaves no variance.
const NO_ADJUSTED_VARIATION: &str = "no variation between users once adjusted for the pre-period";

/// The coefficients of the adjustment, fitted on both compared arms pooled (module doc).
#[derive(Clone, Copy)]
struct Coefficients {
    /// `θ_c`, how much of a user's pre-period clicks above the mean carry over to the experiment.
    clicks: f64,
    /// `θ_i`, the same for impressions.
    impressions: f64,
    /// `c̄'`, the pooled mean pre-period clicks the adjustment centres on.
    mean_clicks: f64,
    /// `ī'`, the pooled mean pre-period impressions.
    mean_impressions: f64,
}

impl Coefficients {
    /// `θ_c`, `θ_i`, `c̄'` and `ī'` from the pooled sums of `n ≥ 2` users.
    fn pooled(s: &UserSums, pre: &PreSums) -> Result<Self, &'static str> {
        let var_clicks = centred(s.users, pre.clicks, pre.clicks, pre.clicks_sq);
        let var_impressions = centred(s.users, pre.impressions, pre.impressions, pre.impressions_sq);
        if var_clicks < 0.0 || var_impressions < 0.0 {
            return Err(INCONSISTENT_PRE_PERIOD);
        }
        // `centred` is exact up to its last rounding, so the same value for every user gives 0
        // exactly, and such a covariate predicts nothing.
        let slope = |covariance: f64, variance: f64| if variance > 0.0 { covariance / variance } else { 0.0 };
        let n = s.users as f64;
        Ok(Coefficients {
            clicks: slope(centred(s.users, s.clicks, pre.clicks, pre.clicks_by_clicks), var_clicks),
            impressions: slope(
                centred(s.users, s.impressions, pre.impressions, pre.impressions_by_impressions),
                var_impressions,
            ),
            mean_clicks: pre.clicks as f64 / n,
            mean_impressions: pre.impressions as f64 / n,
        })
    }
}

/// An arm's adjusted CTR `R̂ = mean(ĉ)/mean(î)` and its delta-method variance, from its sums of
/// `n ≥ 2` users and the pooled `theta` (module doc).
fn adjusted(s: &UserSums, pre: &PreSums, theta: Coefficients) -> Result<Ratio, &'static str> {
    let covariance = |sum_x: u64, sum_y: u64, sum_xy: u64| centred(s.users, sum_x, sum_y, sum_xy);
    let s_pc_pc = covariance(pre.clicks, pre.clicks, pre.clicks_sq);
    let s_pi_pi = covariance(pre.impressions, pre.impressions, pre.impressions_sq);
    if s_pc_pc < 0.0 || s_pi_pi < 0.0 {
        return Err(INCONSISTENT_PRE_PERIOD);
    }
    let (tc, ti) = (theta.clicks, theta.impressions);
    let n = s.users as f64;
    let clicks = s.clicks as f64 / n - tc * (pre.clicks as f64 / n - theta.mean_clicks);
    let impressions = s.impressions as f64 / n - ti * (pre.impressions as f64 / n - theta.mean_impressions);
    if impressions <= 0.0 {
        return Err(NO_ADJUSTED_IMPRESSIONS);
    }
    if clicks <= 0.0 {
        return Err(NO_ADJUSTED_CLICKS);
    }
    let value = clicks / impressions;
    let s_cc = covariance(s.clicks, s.clicks, s.clicks_sq)
        - 2.0 * tc * covariance(s.clicks, pre.clicks, pre.clicks_by_clicks)
        + tc * tc * s_pc_pc;
    let s_ii = covariance(s.impressions, s.impressions, s.impressions_sq)
        - 2.0 * ti * covariance(s.impressions, pre.impressions, pre.impressions_by_impressions)
        + ti * ti * s_pi_pi;
    let s_ci = covariance(s.clicks, s.impressions, s.cross)
        - ti * covariance(s.clicks, pre.impressions, pre.clicks_by_impressions)
        - tc * covariance(pre.clicks, s.impressions, pre.impressions_by_clicks)
        + tc * ti * covariance(pre.clicks, pre.impressions, pre.cross);
    // Exactly, the sample variance of the residuals `ĉ − R̂·î`, never negative; rounding can
    // take it a hair below 0 when the adjusted values are all in proportion.
    let spread = (s_cc - 2.0 * value * s_ci + value * value * s_ii).max(0.0);
    Ok(Ratio {
        value,
        variance: spread / (n * impressions * impressions),
    })
}

/// The CUPED comparison of an arm with the control (module doc): the adjusted lift with its 95%
/// interval, p-value and confidence sequence (tuned for `tuning` users, as
/// [`sequential_lift`](super::significance::sequential_lift)), and how much the adjustment
/// narrowed them. `Err` with the reason when the unadjusted comparison is undefined, when the
/// sums are inconsistent, or when an adjusted mean is not positive.
pub(crate) fn cuped(
    arm: &UserSums,
    arm_pre: &PreSums,
    control: &UserSums,
    control_pre: &PreSums,
    tuning: f64,
) -> Result<Cuped, &'static str> {
    // Where the unadjusted comparison is undefined, so is the adjusted one (no clicks, fewer than
    // two users an arm...), and its variance is what the reduction is measured against.
    let (_, unadjusted_se) = log_ratio(arm, control)?;
    if arm_pre.covered > arm.users || control_pre.covered > control.users {
        return Err(MORE_COVERED_THAN_USERS);
    }
    let (mut pooled, mut pooled_pre) = (*arm, *arm_pre);
    pooled.add(control);
    pooled_pre.add(control_pre);
    let theta = Coefficients::pooled(&pooled, &pooled_pre)?;
    let (a, c) = (adjusted(arm, arm_pre, theta)?, adjusted(control, control_pre, theta)?);
    // `Var(ln R̂) ≈ Var(R̂)/R̂²`, added over independent arms, as unadjusted.
    let variance = a.variance / (a.value * a.value) + c.variance / (c.value * c.value);
    if variance == 0.0 {
        return Err(NO_ADJUSTED_VARIATION);
    }
    let (mu, se) = ((a.value / c.value).ln(), variance.sqrt());
    Ok(Cuped {
        lift: Lift {
            value: a.value / c.value - 1.0,
            interval: Ok(lift_interval(mu, se)),
        },
        // Divides by more than 0: the log ratio's variance above 0 needs an arm's above 0.
        p_value: two_sided_p((a.value - c.value) / (a.variance + c.variance).sqrt()),
        sequential: confidence_sequence(mu, se, pooled.users as f64, tuning),
        // `log_ratio` returns only a positive standard error.
        variance_reduction: 1.0 - variance / (unadjusted_se * unadjusted_se),
        covered: pooled_pre.covered,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::significance::{ALPHA, Interval, Z95, difference_p, relative_lift, sequential_lift};
    use crate::analysis::sim::{Event, SplitMix, near_rate, shuffled_events};
    use crate::experiment::DEFAULT_SEQUENTIAL_TUNING;
    use crate::feedback::sums::PrePeriod;
    use statrs::distribution::{ContinuousCDF, Normal};

    /// A user as the tests know them: the in-experiment counts and the pre-period row, if any.
    #[derive(Debug, Clone, Copy)]
    struct Row {
        /// `c`.
        clicks: u64,
        /// `i`.
        impressions: u64,
        /// `(c', i')`, `None` for a user new to the placement.
        pre: Option<PrePeriod>,
    }

    impl Row {
        /// `(c', i')`, `(0, 0)` without a row (STATISTICS.md §5).
        fn pre_or_zero(&self) -> PrePeriod {
            self.pre.unwrap_or_default()
        }
    }

    /// One user's [`UserSums`] and [`PreSums`] straight from the definitions of the sums, the
    /// user's counts known at once.
    fn user_sums(row: &Row) -> (UserSums, PreSums) {
        let (c, i) = (row.clicks, row.impressions);
        let PrePeriod {
            clicks: pc,
            impressions: pi,
        } = row.pre_or_zero();
        let now = UserSums {
            users: 1,
            clicks: c,
            impressions: i,
            clicks_sq: c * c,
            impressions_sq: i * i,
            cross: c * i,
        };
        let pre = PreSums {
            covered: u64::from(row.pre.is_some()),
            clicks: pc,
            impressions: pi,
            clicks_sq: pc * pc,
            impressions_sq: pi * pi,
            cross: pc * pi,
            clicks_by_clicks: c * pc,
            clicks_by_impressions: c * pi,
            impressions_by_clicks: i * pc,
            impressions_by_impressions: i * pi,
        };
        (now, pre)
    }

    /// The sums of `rows`, a user at a time.
    fn sums_of(rows: &[Row]) -> (UserSums, PreSums) {
        let mut sums = (UserSums::default(), PreSums::default());
        for row in rows {
            let (now, pre) = user_sums(row);
            sums.0.add(&now);
            sums.1.add(&pre);
        }
        sums
    }

    /// The sums of `rows` built as the counters build them: one event at a time, all users'
    /// events shuffled together (a user counted, with their pre-period row, at their first event
    /// of any kind), alternated between two shards added up at the end.
    fn sums_by_events(rows: &[Row], rng: &mut SplitMix) -> (UserSums, PreSums) {
        let events = shuffled_events(rows.iter().map(|row| (row.clicks, row.impressions)), rng);
        let mut seen: Vec<Option<(u64, u64)>> = vec![None; rows.len()];
        let mut shards = [(UserSums::default(), PreSums::default()); 2];
        for (k, (user, event)) in events.into_iter().enumerate() {
            let (now, pre) = &mut shards[k % 2];
            let (clicks, impressions) = seen[user].get_or_insert_with(|| {
                now.add_user();
                pre.add_user(rows[user].pre);
                (0, 0)
            });
            let before = rows[user].pre_or_zero();
            match event {
                Event::Served => {}
                Event::Impression => {
                    now.add_impression(*clicks, *impressions);
                    pre.add_impression(before);
                    *impressions += 1;
                }
                Event::Click => {
                    now.add_click(*clicks, *impressions);
                    pre.add_click(before);
                    *clicks += 1;
                }
            }
        }
        let [(mut now, mut pre), (other_now, other_pre)] = shards;
        now.add(&other_now);
        pre.add(&other_pre);
        (now, pre)
    }

    /// `users` random users: a propensity from Beta(`a`, `b`) and an activity of 0 to 30
    /// kept in both periods; in each, impressions are 4 in 5 of the activity's (binomial),
    /// `extra` more before the experiment, and clicks at the propensity. Some users have no
    /// event, and one in four has no pre-period row.
    fn random_rows(rng: &mut SplitMix, users: usize, (a, b): (f64, f64), extra: u64) -> Vec<Row> {
        (0..users)
            .map(|_| {
                let p = rng.beta(a, b);
                let activity = rng.below(31);
                let pre = (rng.below(4) != 0).then(|| {
                    let impressions = rng.binomial(activity + extra, 0.8);
                    PrePeriod {
                        clicks: rng.binomial(impressions, p),
                        impressions,
                    }
                });
                let impressions = rng.binomial(activity, 0.8);
                Row {
                    clicks: rng.binomial(impressions, p),
                    impressions,
                    pre,
                }
            })
            .collect()
    }

    /// `θ` and the centres of an adjustment, as the tests compute them; `[clicks, impressions]`.
    #[derive(Clone, Copy)]
    struct Adjustment {
        /// `[θ_c, θ_i]`.
        theta: [f64; 2],
        /// `[c̄', ī']`.
        centre: [f64; 2],
    }

    /// No adjustment: the unadjusted estimate.
    const NONE: Adjustment = Adjustment {
        theta: [0.0; 2],
        centre: [0.0; 2],
    };

    /// `θ_c`, `θ_i`, `c̄'`, `ī'` of `rows` (both arms' users together), two-pass: the means
    /// first, then the sums of products of deviations from them; sharing no code with `PreSums`.
    fn fit(rows: &[Row]) -> Adjustment {
        let n = rows.len() as f64;
        let now = |row: &Row| [row.clicks as f64, row.impressions as f64];
        let pre = |row: &Row| {
            let p = row.pre_or_zero();
            [p.clicks as f64, p.impressions as f64]
        };
        let mut adjustment = NONE;
        for k in 0..2 {
            let mean_now = rows.iter().map(|row| now(row)[k]).sum::<f64>() / n;
            let mean_pre = rows.iter().map(|row| pre(row)[k]).sum::<f64>() / n;
            let covariance = rows
                .iter()
                .map(|row| (now(row)[k] - mean_now) * (pre(row)[k] - mean_pre))
                .sum::<f64>();
            let variance = rows.iter().map(|row| (pre(row)[k] - mean_pre).powi(2)).sum::<f64>();
            adjustment.theta[k] = if variance > 0.0 { covariance / variance } else { 0.0 };
            adjustment.centre[k] = mean_pre;
        }
        adjustment
    }

    /// An arm's `(R̂, Var(R̂))` from its rows: each user's `ĉ` and `î` computed explicitly, and
    /// the variance from the residuals `ĉ − R̂·î` (their mean is 0), not from the module's
    /// combination of (co)variances.
    fn estimate(rows: &[Row], adjustment: Adjustment) -> (f64, f64) {
        let n = rows.len() as f64;
        let Adjustment { theta, centre } = adjustment;
        let adjusted: Vec<[f64; 2]> = rows
            .iter()
            .map(|row| {
                let pre = row.pre_or_zero();
                [
                    row.clicks as f64 - theta[0] * (pre.clicks as f64 - centre[0]),
                    row.impressions as f64 - theta[1] * (pre.impressions as f64 - centre[1]),
                ]
            })
            .collect();
        let clicks = adjusted.iter().map(|a| a[0]).sum::<f64>() / n;
        let impressions = adjusted.iter().map(|a| a[1]).sum::<f64>() / n;
        let r = clicks / impressions;
        let residuals = adjusted.iter().map(|a| (a[0] - r * a[1]).powi(2)).sum::<f64>();
        (r, residuals / ((n - 1.0) * n * impressions * impressions))
    }

    /// `(μ̂, σ̂², R̂₁ − R̂₀, Var(R̂₁) + Var(R̂₀))` of an arm against the control under `adjustment`.
    fn comparison(arm: &[Row], control: &[Row], adjustment: Adjustment) -> (f64, f64, f64, f64) {
        let ((r1, v1), (r0, v0)) = (estimate(arm, adjustment), estimate(control, adjustment));
        ((r1 / r0).ln(), v1 / (r1 * r1) + v0 / (r0 * r0), r1 - r0, v1 + v0)
    }

    /// Everything [`cuped`] returns, from the rows by the computation above (the confidence
    /// sequence is the unadjusted one's, checked against GrowthBook in `significance`).
    fn expected(arm: &[Row], control: &[Row], tuning: f64) -> Cuped {
        let both: Vec<Row> = arm.iter().chain(control).copied().collect();
        let (mu, variance, difference, difference_variance) = comparison(arm, control, fit(&both));
        let (_, unadjusted, _, _) = comparison(arm, control, NONE);
        let se = variance.sqrt();
        let p = 2.0 * Normal::standard().sf((difference / difference_variance.sqrt()).abs());
        Cuped {
            lift: Lift {
                value: mu.exp() - 1.0,
                interval: Ok(Interval {
                    low: (mu - Z95 * se).exp() - 1.0,
                    high: (mu + Z95 * se).exp() - 1.0,
                }),
            },
            p_value: p,
            sequential: confidence_sequence(mu, se, both.len() as f64, tuning),
            variance_reduction: 1.0 - variance / unadjusted,
            covered: both.iter().filter(|row| row.pre.is_some()).count() as u64,
        }
    }

    /// `|got − want|` within 1e-9 of `scale`.
    fn close_on(got: f64, want: f64, scale: f64) -> bool {
        (got - want).abs() <= 1e-9 * scale
    }

    /// Relative closeness.
    fn close(got: f64, want: f64) -> bool {
        close_on(got, want, want.abs().max(1e-12))
    }

    /// An interval's ends within 1e-9 of its width.
    fn close_interval(got: Interval, want: Interval) -> bool {
        let width = want.high - want.low;
        close_on(got.low, want.low, width) && close_on(got.high, want.high, width)
    }

    /// Every output of `got` within 1e-9 of `want`'s.
    fn assert_close(got: &Cuped, want: &Cuped) {
        let (Ok(interval), Ok(want_interval)) = (got.lift.interval, want.lift.interval) else {
            panic!("undefined interval: {got:?}, {want:?}");
        };
        assert!(close(got.lift.value, want.lift.value), "{got:?} != {want:?}");
        assert!(close_interval(interval, want_interval), "{got:?} != {want:?}");
        assert!(close(got.p_value, want.p_value), "{got:?} != {want:?}");
        assert!(
            close_interval(got.sequential.interval, want.sequential.interval)
                && close(got.sequential.p_value, want.sequential.p_value),
            "{got:?} != {want:?}"
        );
        assert!(
            close(got.variance_reduction, want.variance_reduction),
            "{got:?} != {want:?}"
        );
        assert_eq!(got.covered, want.covered);
    }

    #[test]
    fn statistics_match_an_independent_computation_from_user_rows() {
        let mut rng = SplitMix(0xc0ed);
        // Unequal arms with different propensities and pre-period impressions, so the arms'
        // pre-period means differ from the pooled ones and the centring is exercised, as
        // randomization would not exercise it.
        let control_rows = random_rows(&mut rng, 250, (0.5, 9.5), 0);
        let arm_rows = random_rows(&mut rng, 310, (0.6, 8.4), 8);
        let (control, control_pre) = sums_by_events(&control_rows, &mut rng);
        let (arm, arm_pre) = sums_by_events(&arm_rows, &mut rng);
        assert_eq!((control, control_pre), sums_of(&control_rows));
        assert_eq!((arm, arm_pre), sums_of(&arm_rows));

        for tuning in [DEFAULT_SEQUENTIAL_TUNING, 560.0] {
            let got = cuped(&arm, &arm_pre, &control, &control_pre, tuning).expect("defined");
            let want = expected(&arm_rows, &control_rows, tuning);
            assert_close(&got, &want);
            // Not a trivial agreement: the adjustment narrowed the interval.
            assert!(got.variance_reduction > 0.1, "{got:?}");
        }
        // Nor a trivial centring: each arm's CTR moved, the arms' pre-periods being unlike.
        let both: Vec<Row> = arm_rows.iter().chain(&control_rows).copied().collect();
        for rows in [&arm_rows, &control_rows] {
            let (adjusted, unadjusted) = (estimate(rows, fit(&both)).0, estimate(rows, NONE).0);
            assert!((adjusted / unadjusted - 1.0).abs() > 0.02, "{adjusted} {unadjusted}");
        }
        // Both arms swapped: the same estimator seen from the other side.
        let got = cuped(&control, &control_pre, &arm, &arm_pre, DEFAULT_SEQUENTIAL_TUNING).expect("defined");
        assert_close(&got, &expected(&control_rows, &arm_rows, DEFAULT_SEQUENTIAL_TUNING));
    }

    /// Without a pre-period, or with one the same for every user, `θ = 0` and CUPED is exactly
    /// the unadjusted comparison of `significance`.
    #[test]
    fn without_a_usable_pre_period_cuped_is_the_unadjusted_comparison() {
        let mut rng = SplitMix(0x0);
        let without = |rows: Vec<Row>, pre: Option<PrePeriod>| rows.into_iter().map(|row| Row { pre, ..row }).collect();
        let everyone = Some(PrePeriod {
            clicks: 2,
            impressions: 17,
        });
        for pre in [None, everyone] {
            let control_rows: Vec<Row> = without(random_rows(&mut rng, 200, (0.5, 9.5), 0), pre);
            let arm_rows: Vec<Row> = without(random_rows(&mut rng, 230, (0.5, 9.5), 0), pre);
            let (control, control_pre) = sums_of(&control_rows);
            let (arm, arm_pre) = sums_of(&arm_rows);
            let tuning = DEFAULT_SEQUENTIAL_TUNING;
            let got = cuped(&arm, &arm_pre, &control, &control_pre, tuning).expect("defined");
            let lift = relative_lift(&arm, &control).expect("defined");
            let sequential = sequential_lift(&arm, &control, tuning).expect("defined");
            assert!(close(got.lift.value, lift.value), "{got:?} != {lift:?}");
            assert!(close_interval(
                got.lift.interval.expect("defined"),
                lift.interval.expect("defined")
            ));
            assert!(close(got.p_value, difference_p(&arm, &control).expect("defined")));
            assert!(close_interval(got.sequential.interval, sequential.interval));
            assert!(close(got.sequential.p_value, sequential.p_value));
            assert!(got.variance_reduction.abs() < 1e-12, "{got:?}");
            let covered = if pre.is_some() { 430 } else { 0 };
            assert_eq!(got.covered, covered);
        }
    }

    #[test]
    fn undefined_statistics_are_errors_with_their_reason() {
        let row = |clicks, impressions, pre: Option<(u64, u64)>| Row {
            clicks,
            impressions,
            pre: pre.map(|(clicks, impressions)| PrePeriod { clicks, impressions }),
        };
        let times = |n: usize, r: Row| std::iter::repeat_n(r, n);
        let tuning = DEFAULT_SEQUENTIAL_TUNING;
        let run = |arm: &[Row], control: &[Row]| {
            let ((a, ap), (c, cp)) = (sums_of(arm), sums_of(control));
            cuped(&a, &ap, &c, &cp, tuning)
        };
        let varied: Vec<Row> = vec![
            row(1, 10, Some((2, 12))),
            row(0, 4, None),
            row(3, 12, Some((1, 9))),
            row(0, 0, Some((0, 3))),
        ];
        let no_clicks: Vec<Row> = vec![row(0, 10, Some((1, 10))), row(0, 4, None)];

        // Where the unadjusted comparison is undefined, CUPED says why in the same words.
        assert_eq!(run(&varied, &[]), Err("an arm has no impressions"));
        assert_eq!(run(&varied, &no_clicks), Err("the control has no clicks"));
        assert_eq!(run(&no_clicks, &varied), Err("the arm has no clicks"));
        assert_eq!(
            run(&varied[..1], &varied),
            Err("an arm has fewer than two users: no variance between users yet")
        );

        // The control's users click as much as they did before; the arm's, with the heaviest
        // pre-period, click far less: with the pooled θ_c = 0.5 its adjusted mean clicks are
        // 5/6 − 0.5·(10 − 110/16) < 0, and its adjusted CTR has no logarithm.
        let control: Vec<Row> = times(5, row(0, 10, Some((0, 10))))
            .chain(times(5, row(10, 10, Some((10, 10)))))
            .collect();
        let arm: Vec<Row> = times(5, row(1, 10, Some((10, 10))))
            .chain(times(1, row(0, 10, Some((10, 10)))))
            .collect();
        assert!(relative_lift(&sums_of(&arm).0, &sums_of(&control).0).is_ok_and(|l| l.interval.is_ok()));
        assert_eq!(run(&arm, &control), Err(NO_ADJUSTED_CLICKS));
        // The same with impressions: the arm saw few, after many before.
        let control: Vec<Row> = times(5, row(1, 1, Some((1, 1))))
            .chain(times(5, row(3, 30, Some((1, 30)))))
            .collect();
        let arm: Vec<Row> = times(5, row(1, 2, Some((1, 30))))
            .chain(times(1, row(0, 1, Some((1, 30)))))
            .collect();
        assert_eq!(run(&arm, &control), Err(NO_ADJUSTED_IMPRESSIONS));

        // Sums no users could have: more rows than users, or Σc'² below (Σc')²/n.
        let (arm, mut arm_pre) = sums_of(&varied);
        let (control, control_pre) = sums_of(&varied);
        arm_pre.covered = 5;
        assert_eq!(
            cuped(&arm, &arm_pre, &control, &control_pre, tuning),
            Err(MORE_COVERED_THAN_USERS)
        );
        arm_pre.covered = 3;
        arm_pre.clicks_sq = 1;
        assert_eq!(
            cuped(&arm, &arm_pre, &control, &control_pre, tuning),
            Err(INCONSISTENT_PRE_PERIOD)
        );
    }

    /// Users per arm in a simulated experiment: a few hundred, as in a small real test and in
    /// `significance`'s simulation, so that the figures compare.
    const USERS_PER_ARM: usize = 400;
    /// The days over which they arrive; the sums are read at the end of each.
    const DAYS: usize = 14;
    /// Simulated experiments per test: three binomial standard deviations around 5% are then
    /// ±1.5 points.
    const EXPERIMENTS: u32 = 2000;
    /// The tuning of the simulated sequences: the experiment's planned users, both arms.
    const PLANNED_USERS: f64 = (2 * USERS_PER_ARM) as f64;
    /// Beta(a, b) of the users' propensities to click: mean 5%, most users well below it, a few
    /// far above.
    const PROPENSITY: (f64, f64) = (0.3, 5.7);
    /// The fewest impressions a user has in a period; they have up to `FEWEST + SPREAD − 1`
    /// (10–20), uniformly.
    const FEWEST: u64 = 10;
    /// How many impression counts a user's period can have.
    const SPREAD: u64 = 11;
    /// One user in `NEW` is new to the placement: no pre-period row.
    const NEW: u64 = 5;

    /// Where a simulated user's pre-period clicks come from.
    #[derive(Clone, Copy)]
    enum Covariate {
        /// The user's own propensity, the one they click with in the experiment: their history.
        Own,
        /// A propensity drawn apart from the same Beta: a covariate that predicts nothing.
        Unrelated,
    }

    /// A simulated user: a propensity `p` from [`PROPENSITY`]; unless new, a pre-period of 10–20
    /// impressions clicked at `p` (or at an unrelated propensity); in the experiment 10–20
    /// impressions clicked at `p·effect`.
    fn simulated_user(rng: &mut SplitMix, effect: f64, covariate: Covariate) -> Row {
        let (a, b) = PROPENSITY;
        let p = rng.beta(a, b);
        let pre = (rng.below(NEW) != 0).then(|| {
            let propensity = match covariate {
                Covariate::Own => p,
                Covariate::Unrelated => rng.beta(a, b),
            };
            let impressions = FEWEST + rng.below(SPREAD);
            PrePeriod {
                clicks: rng.binomial(impressions, propensity),
                impressions,
            }
        });
        let impressions = FEWEST + rng.below(SPREAD);
        Row {
            clicks: rng.binomial(impressions, (p * effect).min(1.0)),
            impressions,
            pre,
        }
    }

    /// One simulated experiment: `USERS_PER_ARM` users an arm arriving evenly over `DAYS`, the
    /// treatment's scaled by `effect`. Returns the cumulative `[control, treatment]` sums at
    /// each day's end.
    fn simulate(rng: &mut SplitMix, effect: f64, covariate: Covariate) -> Vec<[(UserSums, PreSums); 2]> {
        let mut sums = [(UserSums::default(), PreSums::default()); 2];
        let mut days = Vec::with_capacity(DAYS);
        for day in 0..DAYS {
            let arrivals = (day + 1) * USERS_PER_ARM / DAYS - day * USERS_PER_ARM / DAYS;
            for _ in 0..arrivals {
                for ((now, pre), scale) in sums.iter_mut().zip([1.0, effect]) {
                    // A user's sums at once rather than event by event, faster in a debug build;
                    // the formula test shows the events add up to the same.
                    let (user_now, user_pre) = user_sums(&simulated_user(rng, scale, covariate));
                    now.add(&user_now);
                    pre.add(&user_pre);
                }
            }
            days.push(sums);
        }
        days
    }

    /// CUPED of the treatment against the control from a day's `[control, treatment]` sums.
    fn cuped_of([(control, control_pre), (arm, arm_pre)]: &[(UserSums, PreSums); 2]) -> Result<Cuped, &'static str> {
        cuped(arm, arm_pre, control, control_pre, PLANNED_USERS)
    }

    /// The reduction of `Var(ln lift)` that the simulation's model implies, derived from its
    /// parameters rather than measured on any sample, so that it can check what `cuped`
    /// reports. With the user's propensity `p` (`m₁ = E p`, `m₂ = E p²`), `i` and `i'` uniform
    /// and independent of everything (mean `μ`, variance `v`), a row with probability `q`, and
    /// `c`, `c'` binomial and independent given `p`:
    /// - `Var(c) = μ(m₁ − m₂) + (μ² + v)m₂ − μ²m₁²` (binomial noise, then the spread of `i·p`),
    ///   `Var(c') = qμ(m₁ − m₂) + q(μ² + v)m₂ − q²μ²m₁²`, `Cov(c, c') = qμ²(m₂ − m₁²)`;
    /// - `i` depends on nothing, so `θ_i = 0` and `Cov(i, c') = 0`;
    /// - an arm's variance of `ln R̂` is that of the linearised residual `c − R·i` (`R = m₁`)
    ///   over a constant: `Var(c) − 2R·m₁v + R²v`. Adjusted it is the residual of
    ///   `c − R·i − θ_c(c' − c̄')`, whose variance is lower by `Cov(c, c')²/Var(c')` at
    ///   `θ_c = Cov(c, c')/Var(c')`; both arms alike in an A/A test.
    ///
    /// So the reduction is `Cov(c, c')² / (Var(c')·Var(c − R·i))`.
    fn predicted_reduction() -> f64 {
        let (a, b) = PROPENSITY;
        let m1 = a / (a + b);
        let m2 = a * (a + 1.0) / ((a + b) * (a + b + 1.0));
        let mean = FEWEST as f64 + (SPREAD - 1) as f64 / 2.0;
        let v = ((SPREAD * SPREAD) as f64 - 1.0) / 12.0;
        let q = 1.0 - 1.0 / NEW as f64;
        let var_c = mean * (m1 - m2) + (mean * mean + v) * m2 - (mean * m1).powi(2);
        let var_pre = q * mean * (m1 - m2) + q * (mean * mean + v) * m2 - (q * mean * m1).powi(2);
        let covariance = q * mean * mean * (m2 - m1 * m1);
        let residual = var_c - 2.0 * m1 * (m1 * v) + m1 * m1 * v;
        covariance * covariance / (var_pre * residual)
    }

    /// The width of a lift interval on the log scale, `ln(1 + high) − ln(1 + low) = 2·z·σ̂`.
    fn log_width(interval: Interval) -> f64 {
        interval.high.ln_1p() - interval.low.ln_1p()
    }

    /// The mean of `x`, its sample variance and the standard error of the mean.
    fn moments(x: &[f64]) -> (f64, f64, f64) {
        let n = x.len() as f64;
        let mean = x.iter().sum::<f64>() / n;
        let variance = x.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, variance, (variance / n).sqrt())
    }

    /// The median of `x`.
    fn median(mut x: Vec<f64>) -> f64 {
        x.sort_by(f64::total_cmp);
        x[x.len() / 2]
    }

    /// Share of `EXPERIMENTS`, in percent.
    fn percent(count: u32) -> f64 {
        100.0 * f64::from(count) / f64::from(EXPERIMENTS)
    }

    /// A/A experiments with users who keep their propensity: the adjusted lift is unbiased, its
    /// tests significant 5% of the time at a fixed horizon and at most 5% always-valid though
    /// read every day, and its interval narrower than the unadjusted one by the predicted
    /// amount.
    #[test]
    fn a_a_experiments_cuped_is_unbiased_narrower_and_significant_five_percent_of_the_time() {
        let mut rng = SplitMix(0xaa_c0ed);
        let (mut fixed, mut excluded, mut sequential, mut unadjusted_fixed) = (0_u32, 0_u32, 0_u32, 0_u32);
        let (mut lifts, mut unadjusted_lifts, mut shifts, mut ratios, mut reductions) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..EXPERIMENTS {
            let days = simulate(&mut rng, 1.0, Covariate::Own);
            let last = days.last().expect("days");
            let [(control, _), (arm, _)] = last;
            let adjusted = cuped_of(last).expect("defined");
            let interval = adjusted.lift.interval.expect("defined");
            let unadjusted = relative_lift(arm, control).expect("defined");
            let unadjusted_interval = unadjusted.interval.expect("defined");
            fixed += u32::from(adjusted.p_value < ALPHA);
            excluded += u32::from(interval.low > 0.0 || interval.high < 0.0);
            sequential += u32::from(
                days.iter()
                    .any(|day| cuped_of(day).is_ok_and(|c| c.sequential.p_value < ALPHA)),
            );
            unadjusted_fixed += u32::from(difference_p(arm, control).is_ok_and(|p| p < ALPHA));
            let (mu, unadjusted_mu) = (adjusted.lift.value.ln_1p(), unadjusted.value.ln_1p());
            lifts.push(mu);
            unadjusted_lifts.push(unadjusted_mu);
            shifts.push(mu - unadjusted_mu);
            let ratio = log_width(interval) / log_width(unadjusted_interval);
            // The reported reduction is the one the two intervals show.
            assert!((1.0 - ratio * ratio - adjusted.variance_reduction).abs() < 1e-9);
            ratios.push(ratio);
            reductions.push(adjusted.variance_reduction);
        }
        let (mean_lift, lift_variance, lift_error) = moments(&lifts);
        let (_, unadjusted_variance, _) = moments(&unadjusted_lifts);
        let (mean_shift, _, shift_error) = moments(&shifts);
        let (mean_reduction, _, _) = moments(&reductions);
        let predicted = predicted_reduction();
        let median_ratio = median(ratios);
        let realised = 1.0 - lift_variance / unadjusted_variance;
        eprintln!(
            "CUPED A/A, {EXPERIMENTS} experiments of {USERS_PER_ARM} users per arm, one in {NEW} new: false \
             positives unadjusted {:.2}%, CUPED {:.2}% (lift interval {:.2}%), CUPED always-valid read \
             every day for {DAYS} days {:.2}%; interval width CUPED / unadjusted median {median_ratio:.4} \
             (predicted √(1 − {predicted:.4}) = {:.4}); variance_reduction mean {mean_reduction:.4}, \
             realised across experiments 1 − Var(adjusted ln lift)/Var(unadjusted) = {realised:.4}; mean \
             adjusted ln lift {mean_lift:.5} ± {lift_error:.5}, mean shift by the adjustment \
             {mean_shift:.5} ± {shift_error:.5}",
            percent(unadjusted_fixed),
            percent(fixed),
            percent(excluded),
            percent(sequential),
            (1.0 - predicted).sqrt(),
        );
        assert!(
            mean_lift.abs() <= 3.0 * lift_error,
            "biased: {mean_lift} ± {lift_error}"
        );
        // Sharper: the adjustment's own contribution, without the noise the two share.
        assert!(
            mean_shift.abs() <= 3.0 * shift_error,
            "biased: {mean_shift} ± {shift_error}"
        );
        assert!(near_rate(fixed, EXPERIMENTS, ALPHA), "CUPED p: {}%", percent(fixed));
        assert!(
            near_rate(excluded, EXPERIMENTS, ALPHA),
            "CUPED interval: {}%",
            percent(excluded)
        );
        assert!(
            f64::from(sequential) <= ALPHA * f64::from(EXPERIMENTS),
            "always valid: {}%",
            percent(sequential)
        );
        // The median, since a ratio of two noisy widths is skewed; the prediction is the
        // model's, derived in `predicted_reduction` and checked on a large sample in
        // `cuped_cuts_the_users_needed_for_power_as_predicted`.
        let want = (1.0 - predicted).sqrt();
        assert!(
            (median_ratio / want - 1.0).abs() < 0.03,
            "width ratio {median_ratio}, predicted {want}"
        );
        // And the estimates really vary that much less from experiment to experiment, not only
        // their intervals: across 2000 experiments this figure has a standard error of about
        // 0.01 (the adjusted estimate and the adjustment's shift are uncorrelated, each variance
        // known to about 3%).
        assert!(
            (realised - predicted).abs() < 0.04,
            "realised {realised}, predicted {predicted}"
        );
    }

    /// A pre-period drawn apart from the experiment's propensities predicts nothing: CUPED
    /// reduces nothing, moves the lift by a small fraction of its standard error, and keeps
    /// the false-positive rate.
    #[test]
    fn a_covariate_unrelated_to_clicks_changes_nothing() {
        let mut rng = SplitMix(0x1d);
        let (mut fixed, mut reductions, mut shifts) = (0_u32, Vec::new(), Vec::new());
        for _ in 0..EXPERIMENTS {
            let days = simulate(&mut rng, 1.0, Covariate::Unrelated);
            let last = days.last().expect("days");
            let [(control, _), (arm, _)] = last;
            let adjusted = cuped_of(last).expect("defined");
            let unadjusted = relative_lift(arm, control).expect("defined");
            let se = log_width(unadjusted.interval.expect("defined")) / (2.0 * Z95);
            fixed += u32::from(adjusted.p_value < ALPHA);
            reductions.push(adjusted.variance_reduction);
            shifts.push((adjusted.lift.value.ln_1p() - unadjusted.value.ln_1p()) / se);
        }
        let (mean_reduction, _, reduction_error) = moments(&reductions);
        let rms_shift = (shifts.iter().map(|s| s * s).sum::<f64>() / shifts.len() as f64).sqrt();
        eprintln!(
            "CUPED A/A with an unrelated pre-period: false positives {:.2}%, variance_reduction mean \
             {mean_reduction:.5} ± {reduction_error:.5}, lift moved by {rms_shift:.4} standard errors \
             (root mean square)",
            percent(fixed)
        );
        assert!(near_rate(fixed, EXPERIMENTS, ALPHA), "CUPED p: {}%", percent(fixed));
        assert!(mean_reduction.abs() < 0.01, "reduction {mean_reduction}");
        assert!(rms_shift < 0.1, "moved by {rms_shift} standard errors");
    }

    /// Under a known +10% the adjusted lift interval covers it in about 95% of experiments, the
    /// confidence sequence on every day in at least 95%, and the adjusted lift is unbiased.
    #[test]
    fn the_adjusted_lift_interval_covers_a_known_effect() {
        // As in `significance`: p exceeds 1/1.1 with probability about 1e-7, so the clamp
        // moves the true lift from 0.1 by less than 1e-6.
        let truth = 0.1_f64;
        let mut rng = SplitMix(0xc0_7e);
        let (mut covered, mut ever_missed, mut lifts, mut shifts) = (0_u32, 0_u32, Vec::new(), Vec::new());
        for _ in 0..EXPERIMENTS {
            let days = simulate(&mut rng, 1.0 + truth, Covariate::Own);
            let last = days.last().expect("days");
            let [(control, _), (arm, _)] = last;
            let adjusted = cuped_of(last).expect("defined");
            let interval = adjusted.lift.interval.expect("defined");
            covered += u32::from(interval.low <= truth && truth <= interval.high);
            ever_missed += u32::from(days.iter().any(|day| {
                cuped_of(day).is_ok_and(|c| truth < c.sequential.interval.low || c.sequential.interval.high < truth)
            }));
            let mu = adjusted.lift.value.ln_1p();
            lifts.push(mu);
            shifts.push(mu - relative_lift(arm, control).expect("defined").value.ln_1p());
        }
        let (mean_lift, _, lift_error) = moments(&lifts);
        let (mean_shift, _, shift_error) = moments(&shifts);
        eprintln!(
            "CUPED, true lift {truth}: the 95% interval covers it in {:.2}% of {EXPERIMENTS} experiments, \
             the confidence sequence on all {DAYS} days in {:.2}%; mean adjusted ln lift {mean_lift:.5} \
             ± {lift_error:.5} (ln 1.1 = {:.5}), mean shift by the adjustment {mean_shift:.5} ± {shift_error:.5}",
            percent(covered),
            100.0 - percent(ever_missed),
            truth.ln_1p()
        );
        let rate = f64::from(covered) / f64::from(EXPERIMENTS);
        assert!((0.93..=0.97).contains(&rate), "coverage {rate}");
        assert!(
            f64::from(ever_missed) <= ALPHA * f64::from(EXPERIMENTS),
            "the sequence missed in {}%",
            percent(ever_missed)
        );
        assert!(
            (mean_lift - truth.ln_1p()).abs() <= 3.0 * lift_error,
            "biased: {mean_lift} ± {lift_error}"
        );
        assert!(
            mean_shift.abs() <= 3.0 * shift_error,
            "biased: {mean_shift} ± {shift_error}"
        );
    }

    /// Users in one large simulated population, for per-user variances: the reduction measured
    /// on it has a standard error of a few thousandths.
    const POPULATION: usize = 200_000;

    /// The users an arm needs for 80% power at a +5% lift, unadjusted and with CUPED, from the
    /// per-user variance of the linearised metric, `σ²_user = Var(c − R·i)/(R·ī)²` (with `ĉ`,
    /// `î` adjusted), on a large simulated population: `n = (z₀.₉₇₅ + z₀.₈)²·2σ²_user/δ²`,
    /// `δ = ln 1.05`. Their ratio is `1 − reduction`, which the model predicts.
    #[test]
    fn cuped_cuts_the_users_needed_for_power_as_predicted() {
        let mut rng = SplitMix(0x9043);
        let rows: Vec<Row> = (0..POPULATION)
            .map(|_| simulated_user(&mut rng, 1.0, Covariate::Own))
            .collect();
        let n = rows.len() as f64;
        // `n·Var(R̂)/R̂²` is `Var(c − R·i)/(R·ī)²`, the per-user variance of `ln R̂`.
        let per_user = |adjustment: Adjustment| {
            let (r, variance) = estimate(&rows, adjustment);
            n * variance / (r * r)
        };
        let (unadjusted, adjusted) = (per_user(NONE), per_user(fit(&rows)));
        let normal = Normal::standard();
        let z = normal.inverse_cdf(0.975) + normal.inverse_cdf(0.8);
        let delta = 1.05_f64.ln();
        let users = |variance: f64| (z * z * 2.0 * variance / (delta * delta)).ceil();
        let (measured, predicted) = (1.0 - adjusted / unadjusted, predicted_reduction());
        eprintln!(
            "CUPED power, {POPULATION} simulated users, one in {NEW} new: per-user variance of ln CTR \
             unadjusted {unadjusted:.4}, adjusted {adjusted:.4} (reduction {measured:.4}, the model \
             predicts {predicted:.4}); users per arm for 80% power at +5%: unadjusted {}, CUPED {}",
            users(unadjusted),
            users(adjusted)
        );
        assert!((measured - predicted).abs() < 0.02, "{measured} != {predicted}");
    }
}
