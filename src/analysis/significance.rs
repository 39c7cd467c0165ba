//! The statistics analysts read in `/experiments/{id}/results`: CTR intervals, lift, p-values
//! and the sample-ratio-mismatch test. Pure functions over counts; an undefined statistic is an
//! `Err` carrying the reason, never a NaN.
//!
//! The unit of analysis is the user, because users are what is randomized: an arm is assigned
//! per user, and one user's impressions share that user's propensity to click, so they are not
//! independent trials. Counting impressions as Bernoulli trials understates the variance by the
//! design effect (about three at 10–20 impressions a user with realistic spread between users):
//! intervals come out about half as wide as they should be, and A/A tests look significant far
//! more often than 5% (a quarter of the time in this module's simulation). So each arm keeps six
//! integer sums over its users, [`UserSums`], and every CTR statistic below follows from them
//! (`shared/STATISTICS.md`, whose formulas are normative).
//!
//! Choices:
//! - CTR: `R = Σc / Σi`, a ratio of per-user means, with its variance by the delta method (Deng,
//!   Knoblich and Lu, "Applying the delta method in metric analytics", KDD 2018; STATISTICS.md
//!   §2): `Var(R) ≈ (s_cc − 2R·s_ci + R²·s_ii) / (n·ī²)`, the `s` being the sample (co)variances
//!   of per-user clicks `c` and impressions `i` over the arm's `n` users. Interval
//!   `R ± z·√Var(R)`, 95%.
//! - Lift: relative, `R₁ / R₀ − 1`, with a 95% interval `exp(μ̂ ± z·σ̂) − 1` on the log of the
//!   ratio, `μ̂ = ln(R₁/R₀)`, `σ̂² = Var(R₁)/R₁² + Var(R₀)/R₀²` (the delta method again; arms are
//!   independent). On the log scale the ratio's sampling distribution is nearer normal, and the
//!   interval cannot reach below a lift of −100%.
//! - p-value: two-sided z-test of `Δ = R₁ − R₀` with `Var(Δ) = Var(R₁) + Var(R₀)`.
//! - Sample-ratio mismatch: Pearson chi-square of users per arm against the configured
//!   weights, `k − 1` degrees of freedom.
//! - Interleaving (Chapelle, Joachims, Radlinski and Yue, "Large-scale validation and analysis
//!   of interleaved search evaluation", TOIS 2012): each compared user scores 1 when the first
//!   arm won them, ½ for a tie, 0 when the second did. The preference is the mean score minus ½,
//!   `Δ = (wins₀ + ties/2) / n − ½`, with a 95% normal interval `Δ ± z·s/√n` (`s²` the sample
//!   variance of the scores, `n − 1` in the denominator); the p-value is the two-sided exact
//!   sign test of `wins₀` in `wins₀ + wins₁` at ½, ties left out.
//! - Always-valid lift interval and p-value: the asymptotic confidence sequence of Waudby-Smith,
//!   Arnold, Wu, Ramdas and Ruan ("Time-uniform central limit theory and asymptotic confidence
//!   sequences", 2023, eq. 9 and 155), as GrowthBook's `docs/statistics/sequential.mdx` states
//!   it, applied to the log ratio `μ̂` and its standard error `σ̂` (as for the lift above). With
//!   `N = n₁ + n₀` users and the tuning `N*` (the comparison's planned users, default 5000):
//!   `ρ = √((−2 ln α + ln(−2 ln α + 1)) / N*)`, half-width
//!   `h = σ̂·√N·√(2(Nρ² + 1)/(N²ρ²) · ln(√(Nρ² + 1)/α))`, interval `exp(μ̂ ± h) − 1`;
//!   p-value `min(1, 1/E)` with `E = exp(ρ²·N·(μ̂/σ̂)²/(2(Nρ² + 1))) / √(Nρ² + 1)`. The two are
//!   dual: `p < α` exactly when the interval leaves out a lift of 0. Both stay valid however
//!   often they are read, so an analyst may stop the experiment the first time either says so.
//! - Several arms against one control: Holm's step-down adjustment of their p-values.

use statrs::distribution::{Binomial, ChiSquared, ContinuousCDF, DiscreteCDF, Normal};

use crate::feedback::sums::UserSums;

/// The 0.975 quantile of the standard normal: two-sided 95%.
pub(crate) const Z95: f64 = 1.959_963_984_540_054;

/// A two-sided interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Interval {
    /// Lower bound.
    pub(crate) low: f64,
    /// Upper bound.
    pub(crate) high: f64,
}

/// Why a statistic comparing two arms is undefined when one of them has not shown anything.
const NO_IMPRESSIONS_IN_AN_ARM: &str = "an arm has no impressions";

/// Why a lift is undefined: it is relative to the control's CTR.
const NO_CONTROL_CLICKS: &str = "the control has no clicks";

/// Why an interval or p-value is undefined when the delta-method variance is 0.
const NO_VARIATION: &str = "no variation between users: each user's clicks are the same fraction of their impressions";

/// The CTR of an arm, `R = Σc / Σi`: clicks per impression over all its users.
pub(crate) fn ctr(s: &UserSums) -> Result<f64, &'static str> {
    if s.impressions == 0 {
        return Err("no impressions");
    }
    Ok(s.clicks as f64 / s.impressions as f64)
}

/// `Σ(x − x̄)(y − ȳ) / (n − 1)` from `n ≥ 2`, `Σx`, `Σy` and `Σxy`. It is STATISTICS.md's
/// `(Σxy − n·x̄·ȳ) / (n − 1)`, written `(n·Σxy − Σx·Σy) / (n·(n − 1))` so that the subtraction,
/// where floating point would cancel away the digits of large sums, is exact in 128 bits (a
/// product of two `u64` always fits).
pub(super) fn centred(n: u64, sum_x: u64, sum_y: u64, sum_xy: u64) -> f64 {
    let (a, b) = (
        u128::from(n) * u128::from(sum_xy),
        u128::from(sum_x) * u128::from(sum_y),
    );
    let difference = if a >= b { (a - b) as f64 } else { -((b - a) as f64) };
    difference / n as f64 / (n - 1) as f64
}

/// An arm's CTR with its delta-method variance.
#[derive(Clone, Copy)]
pub(super) struct Ratio {
    /// `R`.
    pub(super) value: f64,
    /// `Var(R)`, never negative.
    pub(super) variance: f64,
}

/// The CTR of an arm and its variance by the delta method (STATISTICS.md §2).
fn ratio(s: &UserSums) -> Result<Ratio, &'static str> {
    let value = ctr(s)?;
    if s.users < 2 {
        return Err("fewer than two users: no variance between users yet");
    }
    let s_cc = centred(s.users, s.clicks, s.clicks, s.clicks_sq);
    let s_ii = centred(s.users, s.impressions, s.impressions, s.impressions_sq);
    if s_cc < 0.0 || s_ii < 0.0 {
        // Impossible for sums of real users (Cauchy–Schwarz): a count was lost or doubled.
        return Err("inconsistent per-user sums: a sum of squares is below its sum squared over n");
    }
    let s_ci = centred(s.users, s.clicks, s.impressions, s.cross);
    let n = s.users as f64;
    let mean_impressions = s.impressions as f64 / n;
    // Exactly, this is the sample variance of the residuals `c − R·i`, never negative; rounding
    // can take it a hair below 0 when every user has the same CTR.
    let spread = (s_cc - 2.0 * value * s_ci + value * value * s_ii).max(0.0);
    Ok(Ratio {
        value,
        variance: spread / (n * mean_impressions * mean_impressions),
    })
}

/// The 95% interval of an arm's CTR, `R ± z·√Var(R)` (module doc), its low end clamped at 0.
pub(crate) fn ctr_interval(s: &UserSums) -> Result<Interval, &'static str> {
    let Ratio { value, variance } = ratio(s)?;
    if variance == 0.0 {
        return Err(NO_VARIATION);
    }
    let half = Z95 * variance.sqrt();
    Ok(Interval {
        low: (value - half).max(0.0),
        high: value + half,
    })
}

/// The CTRs and variances of an arm and the control, once both can have a variance.
fn ratios(arm: &UserSums, control: &UserSums) -> Result<[Ratio; 2], &'static str> {
    if arm.impressions == 0 || control.impressions == 0 {
        return Err(NO_IMPRESSIONS_IN_AN_ARM);
    }
    if arm.users < 2 || control.users < 2 {
        return Err("an arm has fewer than two users: no variance between users yet");
    }
    Ok([ratio(arm)?, ratio(control)?])
}

/// The two-sided p-value of a standard normal statistic `z`.
pub(super) fn two_sided_p(z: f64) -> f64 {
    (2.0 * Normal::standard().sf(z.abs())).min(1.0)
}

/// Two-sided p-value of no difference between the CTRs of an arm and the control: `z` of
/// `Δ = R₁ − R₀` with `Var(Δ) = Var(R₁) + Var(R₀)` (module doc).
pub(crate) fn difference_p(arm: &UserSums, control: &UserSums) -> Result<f64, &'static str> {
    let [a, c] = ratios(arm, control)?;
    let variance = a.variance + c.variance;
    if variance == 0.0 {
        return Err(NO_VARIATION);
    }
    Ok(two_sided_p((a.value - c.value) / variance.sqrt()))
}

/// Relative lift of an arm's CTR over the control's and its 95% interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Lift {
    /// `ctr₁ / ctr₀ − 1`.
    pub(crate) value: f64,
    /// Delta-method interval on the log ratio; `Err` when an arm has no clicks, too few users
    /// or no variation.
    pub(crate) interval: Result<Interval, &'static str>,
}

/// The relative lift of an arm over the control, `R₁ / R₀ − 1`, and its 95% interval
/// `exp(μ̂ ± z·σ̂) − 1` (module doc). The value needs only both CTRs, the interval also variances.
pub(crate) fn relative_lift(arm: &UserSums, control: &UserSums) -> Result<Lift, &'static str> {
    if arm.impressions == 0 || control.impressions == 0 {
        return Err(NO_IMPRESSIONS_IN_AN_ARM);
    }
    if control.clicks == 0 {
        return Err(NO_CONTROL_CLICKS);
    }
    let value = ctr(arm)? / ctr(control)? - 1.0;
    let interval = log_ratio(arm, control).map(|(mu, se)| lift_interval(mu, se));
    Ok(Lift { value, interval })
}

/// The 95% interval of a relative lift, `exp(μ̂ ± z·σ̂) − 1`, from the log ratio `mu` and its
/// standard error `se`.
pub(super) fn lift_interval(mu: f64, se: f64) -> Interval {
    Interval {
        low: (mu - Z95 * se).exp() - 1.0,
        high: (mu + Z95 * se).exp() - 1.0,
    }
}

/// p-value of the chi-square test of `observed` users per arm against `weights` (any scale).
pub(crate) fn sample_ratio_p(observed: &[u64], weights: &[f64]) -> Result<f64, &'static str> {
    if observed.len() < 2 || observed.len() != weights.len() {
        return Err("needs at least two arms");
    }
    let total: f64 = observed.iter().map(|&o| o as f64).sum();
    let weight_sum: f64 = weights.iter().sum();
    if total == 0.0 {
        return Err("no users yet");
    }
    if weights.iter().any(|&w| w <= 0.0) || weight_sum <= 0.0 {
        return Err("an arm has no expected share");
    }
    let chi2: f64 = observed
        .iter()
        .zip(weights)
        .map(|(&o, &w)| {
            let expected = total * w / weight_sum;
            (o as f64 - expected).powi(2) / expected
        })
        .sum();
    let dist = ChiSquared::new((observed.len() - 1) as f64).map_err(|_| "invalid degrees of freedom")?;
    Ok(dist.sf(chi2))
}

/// The error rate of every test here: two-sided 95%.
pub(crate) const ALPHA: f64 = 0.05;

/// The log ratio `μ̂ = ln(R₁/R₀)` and its delta-method standard error `σ̂` (STATISTICS.md §3).
pub(super) fn log_ratio(arm: &UserSums, control: &UserSums) -> Result<(f64, f64), &'static str> {
    let [a, c] = ratios(arm, control)?;
    if control.clicks == 0 {
        return Err(NO_CONTROL_CLICKS);
    }
    if arm.clicks == 0 {
        return Err("the arm has no clicks");
    }
    // `Var(ln R) ≈ Var(R) / R²`, added over independent arms.
    let variance = a.variance / (a.value * a.value) + c.variance / (c.value * c.value);
    if variance == 0.0 {
        return Err(NO_VARIATION);
    }
    Ok(((a.value / c.value).ln(), variance.sqrt()))
}

/// `ρ` of the confidence sequence for a planned `tuning` users.
fn sequential_rho(tuning: f64) -> f64 {
    let l = -2.0 * ALPHA.ln();
    ((l + (l + 1.0).ln()) / tuning).sqrt()
}

/// The always-valid results of an arm against the control.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Sequential {
    /// The 95% confidence sequence of the relative lift.
    pub(crate) interval: Interval,
    /// The always-valid two-sided p-value of no lift.
    pub(crate) p_value: f64,
}

/// The confidence sequence of the module doc for an estimate `mu` of the log ratio with standard
/// error `se > 0` from `n` units, tuned for `tuning` of them. Apart from [`sequential_lift`], so
/// that it can be checked against GrowthBook with any estimate fed to it, and fed the CUPED
/// estimate by [`super::cuped`].
pub(super) fn confidence_sequence(mu: f64, se: f64, n: f64, tuning: f64) -> Sequential {
    let rho2 = sequential_rho(tuning).powi(2);
    let spread = n * rho2 + 1.0;
    let half = se * n.sqrt() * (2.0 * spread / (n * n * rho2) * (spread.sqrt() / ALPHA).ln()).sqrt();
    let evidence = (rho2 * n * (mu / se).powi(2) / (2.0 * spread)).exp() / spread.sqrt();
    Sequential {
        interval: Interval {
            low: (mu - half).exp() - 1.0,
            high: (mu + half).exp() - 1.0,
        },
        p_value: (1.0 / evidence).min(1.0),
    }
}

/// The always-valid lift interval and p-value of an arm against the control: the confidence
/// sequence fed `μ̂`, `σ̂` of the lift and `N = n₁ + n₀` users, `tuning` being `N*` in users
/// (module doc).
pub(crate) fn sequential_lift(arm: &UserSums, control: &UserSums, tuning: f64) -> Result<Sequential, &'static str> {
    let (mu, se) = log_ratio(arm, control)?;
    let users = (arm.users + control.users) as f64;
    Ok(confidence_sequence(mu, se, users, tuning))
}

/// Holm's step-down adjustment of `p` (one per hypothesis; `None` for one not testable yet,
/// which counts as a hypothesis with p = 1, so an arm without data cannot make the others look
/// stronger). Adjusted values keep the input's order.
pub(crate) fn holm(p: &[Option<f64>]) -> Vec<Option<f64>> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[a].unwrap_or(1.0).total_cmp(&p[b].unwrap_or(1.0)));
    let mut adjusted = vec![None; m];
    let mut running = 0.0_f64;
    for (rank, &i) in order.iter().enumerate() {
        let Some(value) = p[i] else { continue };
        running = running.max(((m - rank) as f64 * value).min(1.0));
        adjusted[i] = Some(running);
    }
    adjusted
}

/// The interleaving preference for the first arm, `Δ`, of `wins` per arm and `ties`.
pub(crate) fn preference(wins: [u64; 2], ties: u64) -> Result<f64, &'static str> {
    let n = wins[0] + wins[1] + ties;
    if n == 0 {
        return Err("no user clicked an interleaved page yet");
    }
    Ok((wins[0] as f64 + ties as f64 / 2.0) / n as f64 - 0.5)
}

/// The 95% interval of [`preference`].
pub(crate) fn preference_interval(wins: [u64; 2], ties: u64) -> Result<Interval, &'static str> {
    let delta = preference(wins, ties)?;
    let n = (wins[0] + wins[1] + ties) as f64;
    if n < 2.0 {
        return Err("one compared user has no variance");
    }
    // Scores are 1, ½ and 0; their mean is Δ + ½.
    let mean = delta + 0.5;
    let squares =
        wins[0] as f64 * (1.0 - mean).powi(2) + ties as f64 * (0.5 - mean).powi(2) + wins[1] as f64 * mean.powi(2);
    let half = Z95 * (squares / (n - 1.0) / n).sqrt();
    Ok(Interval {
        low: delta - half,
        high: delta + half,
    })
}

/// Two-sided exact sign test of `wins[0]` successes in `wins[0] + wins[1]` trials at ½.
pub(crate) fn sign_test_p(wins: [u64; 2]) -> Result<f64, &'static str> {
    let trials = wins[0] + wins[1];
    if trials == 0 {
        return Err("no user preferred either arm: every compared user is a tie");
    }
    let binomial = Binomial::new(0.5, trials).map_err(|_| "no binomial for these counts")?;
    // Symmetric at ½: twice the tail of the smaller count, the mode itself counted whole.
    Ok((2.0 * binomial.cdf(wins[0].min(wins[1]))).min(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::sim::{Event, SplitMix, near_rate, shuffled_events};
    use crate::experiment::DEFAULT_SEQUENTIAL_TUNING;

    /// Relative closeness, for reference values computed once with scipy/statsmodels.
    fn close(got: f64, want: f64) -> bool {
        (got - want).abs() <= 1e-9 * want.abs().max(1e-12)
    }

    #[test]
    fn interleaving_matches_numpy_and_scipy() {
        // s = [1]*a + [0]*b + [0.5]*t; d = s.mean() - 0.5;
        // half = 1.959963984540054 * sqrt(s.var(ddof=1) / n); binomtest(a, a + b, 0.5).pvalue
        let reference = [
            (
                60,
                40,
                10,
                0.09090909090909094,
                0.0030543719397108787,
                0.17876380987847101,
                0.05688793364098089,
            ),
            (3, 1, 0, 0.25, -0.2399909961350135, 0.7399909961350135, 0.625),
            (
                500,
                480,
                37,
                0.009832841691248762,
                -0.020341418803952977,
                0.0400071021864505,
                0.5439172374909201,
            ),
            (
                0,
                5,
                2,
                -0.35714285714285715,
                -0.5378787588402372,
                -0.17640695544547716,
                0.0625,
            ),
            (7, 7, 3, 0.0, -0.22232979174122494, 0.22232979174122494, 1.0),
        ];
        for (a, b, t, delta, low, high, p) in reference {
            let near = |got: f64, want: f64| (got - want).abs() < 1e-12;
            let interval = preference_interval([a, b], t).expect("defined");
            assert!(near(preference([a, b], t).expect("defined"), delta), "{a} {b} {t}");
            assert!(
                near(interval.low, low) && near(interval.high, high),
                "{a} {b} {t}: {interval:?}"
            );
            assert!(close(sign_test_p([a, b]).expect("defined"), p), "{a} {b} {t}");
        }
        assert!(preference([0, 0], 0).is_err());
        assert!(preference_interval([1, 0], 0).is_err());
        assert!(sign_test_p([0, 0]).is_err());
    }

    #[test]
    fn confidence_sequence_matches_growthbook() {
        // GrowthBook's own code, gbstats 0.8.0, with the Katz log ratio for its estimate:
        //   class Katz(SequentialTwoSidedTTest):
        //       def __init__(s, c1, n1, c0, n0, tuning):
        //           p1, p0 = c1 / n1, c0 / n0
        //           s.mu, s.var = log(p1 / p0), (1 - p1) / (n1 * p1) + (1 - p0) / (n0 * p0)
        //           s.stat_a, s.stat_b = SimpleNamespace(n=n0), SimpleNamespace(n=n1)
        //           s.sequential_tuning_parameter, s.alpha, s.test_value = tuning, 0.05, 0
        //       point_estimate = property(lambda s: s.mu)
        //       variance = property(lambda s: s.var)
        //   low, high = exp(Katz(...).confidence_interval) - 1; p = Katz(...).p_value
        // (c1, n1, c0, n0, tuning, low, high, p)
        let reference = [
            (
                60,
                1000,
                40,
                1000,
                5000.0,
                -0.19481411489094302,
                1.7943857953933864,
                0.42257890618259325,
            ),
            (
                90,
                1000,
                40,
                1000,
                5000.0,
                0.2636361636661273,
                3.006295598024364,
                0.0013392826809000568,
            ),
            (
                120,
                5000,
                100,
                5000,
                5000.0,
                -0.2036029236319734,
                0.8081432525683394,
                1.0,
            ),
            (
                520,
                10000,
                500,
                10000,
                100000.0,
                -0.15298230809382418,
                0.2769508952828441,
                1.0,
            ),
            (30, 400, 45, 500, 2000.0, -0.5864369644363319, 0.6791743572970625, 1.0),
            (
                1234,
                100000,
                1100,
                100000,
                5000.0,
                -0.02626093795763562,
                0.29241609186168094,
                0.3702168457629317,
            ),
            (
                1400,
                100000,
                1100,
                100000,
                5000.0,
                0.10922278044095535,
                0.4603330722254555,
                2.510093086733463e-07,
            ),
            (
                300,
                2000,
                200,
                2000,
                1000.5,
                0.14760808657689473,
                0.9605996387768041,
                0.00010916953136734117,
            ),
        ];
        for (c1, n1, c0, n0, tuning, low, high, p) in reference {
            // The sequence fed exactly what the reference fed GrowthBook: Katz's log ratio and
            // standard error of impression counts, with N = n₁ + n₀.
            let (p1, p0) = (f64::from(c1) / f64::from(n1), f64::from(c0) / f64::from(n0));
            let mu = (p1 / p0).ln();
            let se = ((1.0 - p1) / (f64::from(n1) * p1) + (1.0 - p0) / (f64::from(n0) * p0)).sqrt();
            let got = confidence_sequence(mu, se, f64::from(n1 + n0), tuning);
            assert!(
                close(got.interval.low, low) && close(got.interval.high, high) && close(got.p_value, p),
                "{c1}/{n1} vs {c0}/{n0} at {tuning}: {got:?}"
            );
            // Dual: significant exactly when the interval leaves out no lift.
            let excludes_zero = got.interval.low > 0.0 || got.interval.high < 0.0;
            assert_eq!(got.p_value < ALPHA, excludes_zero, "{c1}/{n1} vs {c0}/{n0}");
            // Wider than the fixed-horizon interval, which is only valid at one look.
            let (fixed_low, fixed_high) = ((mu - Z95 * se).exp() - 1.0, (mu + Z95 * se).exp() - 1.0);
            assert!(got.interval.low < fixed_low && got.interval.high > fixed_high);
        }
    }

    #[test]
    fn holm_matches_statsmodels() {
        // statsmodels.stats.multitest.multipletests(p, method="holm")[1]
        let reference: [(&[f64], &[f64]); 3] = [
            (&[0.01, 0.04, 0.03], &[0.03, 0.06, 0.06]),
            (&[0.2, 0.001, 0.5, 0.04], &[0.4, 0.004, 0.5, 0.12]),
            (&[0.03, 0.03], &[0.06, 0.06]),
        ];
        for (p, want) in reference {
            let got = holm(&p.iter().copied().map(Some).collect::<Vec<_>>());
            for (g, w) in got.iter().zip(want) {
                assert!(g.is_some_and(|g| (g - w).abs() < 1e-12), "{p:?}: {got:?}");
            }
        }
        // An arm not testable yet still counts: the others are adjusted for three hypotheses.
        assert_eq!(
            holm(&[Some(0.01), None, Some(0.02)]),
            vec![Some(0.03), None, Some(0.04)]
        );
    }

    /// Per-user `(clicks, impressions)` of `users` heterogeneous users: propensities from
    /// Beta(`a`, `b`), 0 to 30 impressions, so some users are served but have no event.
    fn rows(rng: &mut SplitMix, users: usize, a: f64, b: f64) -> Vec<(u64, u64)> {
        (0..users)
            .map(|_| {
                let p = rng.beta(a, b);
                let impressions = rng.below(31);
                (rng.binomial(impressions, p), impressions)
            })
            .collect()
    }

    /// The sums of `rows` built as the counters build them: one event at a time, the events of
    /// all users shuffled together (a user counted at their first event, the served-only ones
    /// included) and alternated between two shards added up at the end.
    fn sums_by_events(rows: &[(u64, u64)], rng: &mut SplitMix) -> UserSums {
        let events = shuffled_events(rows.iter().copied(), rng);
        let mut seen: Vec<Option<(u64, u64)>> = vec![None; rows.len()];
        let mut shards = [UserSums::default(); 2];
        for (k, (user, event)) in events.into_iter().enumerate() {
            let shard = &mut shards[k % 2];
            let (clicks, impressions) = seen[user].get_or_insert_with(|| {
                shard.add_user();
                (0, 0)
            });
            match event {
                Event::Served => {}
                Event::Impression => {
                    shard.add_impression(*clicks, *impressions);
                    *impressions += 1;
                }
                Event::Click => {
                    shard.add_click(*clicks, *impressions);
                    *clicks += 1;
                }
            }
        }
        let [mut total, other] = shards;
        total.add(&other);
        total
    }

    /// `R` and `Var(R)` of STATISTICS.md §2 straight from per-user rows, two-pass, sharing no
    /// code with `UserSums`; checked against the same variance from the residuals `c − R·i`.
    fn direct(rows: &[(u64, u64)]) -> (f64, f64) {
        let n = rows.len() as f64;
        let c: Vec<f64> = rows.iter().map(|&(c, _)| c as f64).collect();
        let i: Vec<f64> = rows.iter().map(|&(_, i)| i as f64).collect();
        let mean = |x: &[f64]| x.iter().sum::<f64>() / n;
        let (mean_c, mean_i) = (mean(&c), mean(&i));
        let covariance = |x: &[f64], mean_x: f64, y: &[f64], mean_y: f64| {
            x.iter().zip(y).map(|(x, y)| (x - mean_x) * (y - mean_y)).sum::<f64>() / (n - 1.0)
        };
        let s_cc = covariance(&c, mean_c, &c, mean_c);
        let s_ii = covariance(&i, mean_i, &i, mean_i);
        let s_ci = covariance(&c, mean_c, &i, mean_i);
        let r = mean_c / mean_i;
        let variance = (s_cc - 2.0 * r * s_ci + r * r * s_ii) / (n * mean_i * mean_i);
        let residuals = c.iter().zip(&i).map(|(c, i)| (c - r * i).powi(2)).sum::<f64>();
        assert!(close(variance, residuals / ((n - 1.0) * n * mean_i * mean_i)));
        (r, variance)
    }

    /// `|got − want|` within 1e-9 of `scale`, for values that may sit near 0 (interval ends).
    fn close_on(got: f64, want: f64, scale: f64) -> bool {
        (got - want).abs() <= 1e-9 * scale
    }

    #[test]
    fn statistics_match_an_independent_computation_from_user_rows() {
        let mut rng = SplitMix(0xde17a);
        let control_rows = rows(&mut rng, 250, 0.5, 9.5);
        let arm_rows = rows(&mut rng, 310, 0.6, 8.4);
        let control = sums_by_events(&control_rows, &mut rng);
        let arm = sums_by_events(&arm_rows, &mut rng);

        for (sums, rows) in [(&control, &control_rows), (&arm, &arm_rows)] {
            let sum = |f: fn(u64, u64) -> u64| rows.iter().map(|&(c, i)| f(c, i)).sum::<u64>();
            let want = UserSums {
                users: rows.len() as u64,
                clicks: sum(|c, _| c),
                impressions: sum(|_, i| i),
                clicks_sq: sum(|c, _| c * c),
                impressions_sq: sum(|_, i| i * i),
                cross: sum(|c, i| c * i),
            };
            assert_eq!(*sums, want);

            let (r, variance) = direct(rows);
            assert!(close(ctr(sums).expect("impressions"), r));
            let interval = ctr_interval(sums).expect("defined");
            let half = Z95 * variance.sqrt();
            assert!(r > half, "the low end is not clamped here: {interval:?}");
            assert!(
                close(interval.low, r - half) && close(interval.high, r + half),
                "{interval:?}"
            );
            assert!(close(interval.high - interval.low, 2.0 * half));
        }

        let ((r1, v1), (r0, v0)) = (direct(&arm_rows), direct(&control_rows));
        let lift = relative_lift(&arm, &control).expect("defined");
        assert!(close(lift.value, r1 / r0 - 1.0));
        let (mu, se) = ((r1 / r0).ln(), (v1 / (r1 * r1) + v0 / (r0 * r0)).sqrt());
        let (low, high) = ((mu - Z95 * se).exp() - 1.0, (mu + Z95 * se).exp() - 1.0);
        let interval = lift.interval.expect("defined");
        assert!(
            close_on(interval.low, low, high - low) && close_on(interval.high, high, high - low),
            "{interval:?} != [{low}, {high}]"
        );

        let z = (r1 - r0) / (v1 + v0).sqrt();
        let p = 2.0 * Normal::new(0.0, 1.0).expect("a normal").sf(z.abs());
        assert!(close(difference_p(&arm, &control).expect("defined"), p), "p {p}");

        // The sequence is fed this μ̂, σ̂ and the users (not impressions) of both arms.
        let users = (arm_rows.len() + control_rows.len()) as f64;
        let want = confidence_sequence(mu, se, users, DEFAULT_SEQUENTIAL_TUNING);
        let got = sequential_lift(&arm, &control, DEFAULT_SEQUENTIAL_TUNING).expect("defined");
        let width = want.interval.high - want.interval.low;
        assert!(
            close_on(got.interval.low, want.interval.low, width)
                && close_on(got.interval.high, want.interval.high, width)
                && close(got.p_value, want.p_value),
            "{got:?} != {want:?}"
        );
    }

    #[test]
    fn one_impression_per_user_gives_the_binomial_variance() {
        let mut rng = SplitMix(0xb1);
        let rows: Vec<(u64, u64)> = (0..500).map(|_| (rng.binomial(1, 0.07), 1)).collect();
        let sums = sums_by_events(&rows, &mut rng);
        let (n, p) = (rows.len() as f64, ctr(&sums).expect("impressions"));
        let interval = ctr_interval(&sums).expect("defined");
        let variance = ((interval.high - p) / Z95).powi(2);
        // p(1 − p)/n, times n/(n − 1) for the sample variance between users.
        assert!(close(variance, p * (1.0 - p) / n * n / (n - 1.0)), "{variance}");
    }

    #[test]
    fn undefined_statistics_are_errors_with_their_reason() {
        let mut rng = SplitMix(0xe7);
        let mut sums = |rows: &[(u64, u64)]| sums_by_events(rows, &mut rng);
        let varied = sums(&[(1, 10), (0, 4), (3, 12), (0, 0)]);
        let no_clicks = sums(&[(0, 10), (0, 4), (0, 12)]);
        let identical = sums(&[(1, 10), (1, 10), (1, 10)]);
        let one_user = sums(&[(2, 10)]);
        let empty = UserSums::default();
        let tuning = DEFAULT_SEQUENTIAL_TUNING;

        assert_eq!(ctr(&empty), Err("no impressions"));
        assert_eq!(ctr_interval(&empty), Err("no impressions"));
        assert_eq!(ctr(&one_user), Ok(0.2));
        assert_eq!(
            ctr_interval(&one_user),
            Err("fewer than two users: no variance between users yet")
        );
        assert_eq!(ctr_interval(&identical), Err(NO_VARIATION));
        assert_eq!(ctr_interval(&no_clicks), Err(NO_VARIATION));

        assert_eq!(relative_lift(&empty, &varied), Err(NO_IMPRESSIONS_IN_AN_ARM));
        assert_eq!(difference_p(&varied, &empty), Err(NO_IMPRESSIONS_IN_AN_ARM));
        assert_eq!(sequential_lift(&empty, &varied, tuning), Err(NO_IMPRESSIONS_IN_AN_ARM));
        assert_eq!(relative_lift(&varied, &no_clicks), Err(NO_CONTROL_CLICKS));
        assert_eq!(sequential_lift(&varied, &no_clicks, tuning), Err(NO_CONTROL_CLICKS));
        assert!(
            difference_p(&varied, &no_clicks).is_ok(),
            "the control's CTR is 0, known"
        );

        let lift = relative_lift(&no_clicks, &varied).expect("point estimate defined");
        assert_eq!(lift.value, -1.0);
        assert_eq!(lift.interval, Err("the arm has no clicks"));
        assert_eq!(
            sequential_lift(&no_clicks, &varied, tuning),
            Err("the arm has no clicks")
        );

        let few = Some("an arm has fewer than two users: no variance between users yet");
        let lift = relative_lift(&one_user, &varied).expect("point estimate defined");
        assert!(close(lift.value, 0.2 / (4.0 / 26.0) - 1.0));
        assert_eq!(lift.interval.err(), few);
        assert_eq!(difference_p(&varied, &one_user).err(), few);
        assert_eq!(sequential_lift(&one_user, &varied, tuning).err(), few);

        let same = relative_lift(&identical, &identical).expect("point estimate defined");
        assert_eq!(same.value, 0.0);
        assert_eq!(same.interval, Err(NO_VARIATION));
        assert_eq!(difference_p(&identical, &identical), Err(NO_VARIATION));
        assert_eq!(sequential_lift(&identical, &identical, tuning), Err(NO_VARIATION));

        // Two users cannot have 10 clicks between them and Σc² = 10 (at least 10²/2 = 50).
        let inconsistent = UserSums {
            users: 2,
            clicks: 10,
            impressions: 20,
            clicks_sq: 10,
            impressions_sq: 200,
            cross: 100,
        };
        assert!(ctr_interval(&inconsistent).is_err_and(|e| e.starts_with("inconsistent")));
    }

    /// Users per arm in a simulated experiment: a few hundred, as in a small real test.
    const USERS_PER_ARM: usize = 400;
    /// The days over which they arrive; the sums are read at the end of each.
    const DAYS: usize = 14;
    /// Simulated experiments per test: three binomial standard deviations around 5% are then
    /// ±1.5 points.
    const EXPERIMENTS: u32 = 2000;

    /// One simulated experiment with heterogeneous users: each has a click propensity from
    /// Beta(0.3, 5.7) (mean 5%, most users well below it, a few far above), the treatment's
    /// scaled by `effect`, and 10–20 impressions, each clicked at that propensity; they arrive
    /// evenly over `DAYS`. Returns the cumulative `[control, treatment]` sums at each day's end.
    fn simulate(rng: &mut SplitMix, effect: f64) -> Vec<[UserSums; 2]> {
        let mut sums = [UserSums::default(); 2];
        let mut days = Vec::with_capacity(DAYS);
        for day in 0..DAYS {
            let arrivals = (day + 1) * USERS_PER_ARM / DAYS - day * USERS_PER_ARM / DAYS;
            for _ in 0..arrivals {
                for (arm, scale) in sums.iter_mut().zip([1.0, effect]) {
                    let p = (rng.beta(0.3, 5.7) * scale).min(1.0);
                    let impressions = 10 + rng.below(11);
                    let clicks = rng.binomial(impressions, p);
                    // A user's sums at once rather than event by event, several times faster
                    // in a debug build; the formula test shows the events add up to the same.
                    arm.add(&UserSums {
                        users: 1,
                        clicks,
                        impressions,
                        clicks_sq: clicks * clicks,
                        impressions_sq: impressions * impressions,
                        cross: clicks * impressions,
                    });
                }
            }
            days.push(sums);
        }
        days
    }

    /// The tuning of the simulated sequences: the users of the whole experiment, its planned
    /// size, where the sequence is tightest; a looser tuning would only make it more cautious.
    const PLANNED_USERS: f64 = (2 * USERS_PER_ARM) as f64;

    /// A/A experiments: the user-level tests are significant 5% of the time at a fixed horizon,
    /// and the always-valid one at most 5% though read every day. The impression-level tests
    /// they replace, computed inline from the same sums, are significant far more often.
    #[test]
    fn a_a_experiments_are_significant_five_percent_of_the_time() {
        let mut rng = SplitMix(0xaa);
        let normal = Normal::new(0.0, 1.0).expect("a normal");
        let significant = |[control, arm]: &[UserSums; 2]| difference_p(arm, control).is_ok_and(|p| p < ALPHA);
        let (mut fixed, mut excluded, mut peeked, mut sequential, mut old) = (0_u32, 0_u32, 0_u32, 0_u32, 0_u32);
        let mut widths = Vec::new();
        for _ in 0..EXPERIMENTS {
            let days = simulate(&mut rng, 1.0);
            let last = days.last().expect("days");
            let [control, arm] = last;
            fixed += u32::from(significant(last));
            peeked += u32::from(days.iter().any(significant));
            sequential +=
                u32::from(days.iter().any(|[control, arm]| {
                    sequential_lift(arm, control, PLANNED_USERS).is_ok_and(|s| s.p_value < ALPHA)
                }));
            let lift = relative_lift(arm, control)
                .expect("both arms clicked")
                .interval
                .expect("defined");
            excluded += u32::from(lift.low > 0.0 || lift.high < 0.0);

            // What this module answered before: impressions as independent trials, a pooled
            // two-proportion z-test and Katz's interval of the log ratio.
            let (c1, n1) = (arm.clicks as f64, arm.impressions as f64);
            let (c0, n0) = (control.clicks as f64, control.impressions as f64);
            let (p1, p0, pooled) = (c1 / n1, c0 / n0, (c1 + c0) / (n1 + n0));
            let z = (p1 - p0) / (pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n0)).sqrt();
            old += u32::from(2.0 * normal.sf(z.abs()) < ALPHA);
            let katz = ((1.0 - p1) / (n1 * p1) + (1.0 - p0) / (n0 * p0)).sqrt();
            let old_width = ((p1 / p0).ln() + Z95 * katz).exp() - ((p1 / p0).ln() - Z95 * katz).exp();
            widths.push(old_width / (lift.high - lift.low));
        }
        widths.sort_by(f64::total_cmp);
        let rate = |count: u32| 100.0 * f64::from(count) / f64::from(EXPERIMENTS);
        eprintln!(
            "A/A, {EXPERIMENTS} experiments of {USERS_PER_ARM} users per arm: false positives \
             user-level {:.2}% (lift interval {:.2}%), impression-level {:.2}%; read every day for \
             {DAYS} days: fixed-horizon {:.2}%, always-valid {:.2}%; lift interval width \
             impression-level / user-level, median {:.3}",
            rate(fixed),
            rate(excluded),
            rate(old),
            rate(peeked),
            rate(sequential),
            widths[widths.len() / 2]
        );
        assert!(near_rate(fixed, EXPERIMENTS, ALPHA), "difference p: {}%", rate(fixed));
        assert!(
            near_rate(excluded, EXPERIMENTS, ALPHA),
            "lift interval: {}%",
            rate(excluded)
        );
        assert!(
            f64::from(sequential) <= ALPHA * f64::from(EXPERIMENTS),
            "always valid: {}%",
            rate(sequential)
        );
        // The checks have teeth: what they guard against does fail them.
        assert!(rate(old) > 10.0, "impression-level: {}%", rate(old));
        assert!(rate(peeked) > 10.0, "fixed-horizon read daily: {}%", rate(peeked));
    }

    /// Under a known effect the lift interval covers the true lift in about 95% of experiments,
    /// and the confidence sequence covers it on every day in at least 95%.
    #[test]
    fn the_lift_interval_covers_a_known_effect() {
        // Propensity and impressions are independent, so the true ratio of expected clicks to
        // expected impressions is E[min(1.1p, 1)] / E[p]; p exceeds 1/1.1 with probability
        // about 1e-7, so the clamp moves the true lift from 0.1 by less than 1e-6.
        let truth = 0.1;
        let mut rng = SplitMix(0xc0);
        let (mut covered, mut ever_missed) = (0_u32, 0_u32);
        for _ in 0..EXPERIMENTS {
            let days = simulate(&mut rng, 1.0 + truth);
            let [control, arm] = days.last().expect("days");
            let lift = relative_lift(arm, control)
                .expect("both arms clicked")
                .interval
                .expect("defined");
            covered += u32::from(lift.low <= truth && truth <= lift.high);
            ever_missed += u32::from(days.iter().any(|[control, arm]| {
                sequential_lift(arm, control, PLANNED_USERS)
                    .is_ok_and(|s| truth < s.interval.low || s.interval.high < truth)
            }));
        }
        let rate = |count: u32| f64::from(count) / f64::from(EXPERIMENTS);
        eprintln!(
            "true lift {truth}: the 95% lift interval covers it in {:.2}% of {EXPERIMENTS} experiments, \
             the confidence sequence on all {DAYS} days in {:.2}%",
            100.0 * rate(covered),
            100.0 * (1.0 - rate(ever_missed))
        );
        assert!((0.93..=0.97).contains(&rate(covered)), "coverage {}", rate(covered));
        assert!(
            rate(ever_missed) <= ALPHA,
            "the sequence missed in {}",
            rate(ever_missed)
        );
    }

    #[test]
    fn sample_ratio_matches_scipy_chisquare() {
        // scipy.stats.chisquare(observed, expected_from_weights).pvalue
        let reference: [(&[u64], &[f64], f64); 4] = [
            (&[5050, 4950], &[50.0, 50.0], 0.31731050786291115),
            (&[5200, 4800], &[50.0, 50.0], 6.334248366623988e-05),
            (&[3000, 3000, 4200], &[30.0, 30.0, 40.0], 0.0528035703343005),
            (&[1_000_000_000, 999_900_000], &[50.0, 50.0], 0.02534365752336276),
        ];
        for (observed, weights, p) in reference {
            let got = sample_ratio_p(observed, weights).expect("defined");
            assert!((got - p).abs() <= 1e-9 * p.max(1e-6), "{observed:?}: {got} != {p}");
        }
        assert_eq!(sample_ratio_p(&[0, 0], &[50.0, 50.0]), Err("no users yet"));
        assert_eq!(sample_ratio_p(&[10], &[100.0]), Err("needs at least two arms"));
    }
}
