//! The statistics analysts read in `/experiments/{id}/results`: CTR intervals, lift, p-values
//! and the sample-ratio-mismatch test. Pure functions over counts; an undefined statistic is an
//! `Err` carrying the reason, never a NaN.
//!
//! Choices (standard for A/B tests on proportions):
//! - CTR interval: Wilson score, 95%.
//! - Lift: relative, `ctr_arm / ctr_control − 1`, with a 95% interval from the delta method on
//!   the log of the ratio (Katz): `Var(ln r) ≈ (1−p₁)/(n₁p₁) + (1−p₀)/(n₀p₀)`.
//! - p-value: two-sided two-proportion z-test with the pooled proportion.
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
//!   it, applied to the log ratio `μ̂ = ln(ctr₁/ctr₀)` and its standard error `σ̂` (Katz, as
//!   above). With `N = n₁ + n₀` impressions and the tuning `N*` (the comparison's planned
//!   impressions, default 5000):
//!   `ρ = √((−2 ln α + ln(−2 ln α + 1)) / N*)`, half-width
//!   `h = σ̂·√N·√(2(Nρ² + 1)/(N²ρ²) · ln(√(Nρ² + 1)/α))`, interval `exp(μ̂ ± h) − 1`;
//!   p-value `min(1, 1/E)` with `E = exp(ρ²·N·(μ̂/σ̂)²/(2(Nρ² + 1))) / √(Nρ² + 1)`. The two are
//!   dual: `p < α` exactly when the interval leaves out a lift of 0. Both stay valid however
//!   often they are read, so an analyst may stop the experiment the first time either says so.
//! - Several arms against one control: Holm's step-down adjustment of their p-values.

use statrs::distribution::{Binomial, ChiSquared, ContinuousCDF, DiscreteCDF, Normal};

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

/// The Wilson score interval (95%) of `successes` in `trials`.
pub(crate) fn wilson(successes: u64, trials: u64) -> Result<Interval, &'static str> {
    if trials == 0 {
        return Err("no impressions");
    }
    let n = trials as f64;
    let p = successes as f64 / n;
    let z2 = Z95 * Z95;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = Z95 / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    Ok(Interval {
        low: (centre - half).max(0.0),
        high: (centre + half).min(1.0),
    })
}

fn standard_normal() -> Normal {
    Normal::standard()
}

/// Two-sided p-value of the pooled two-proportion z-test of `c1/n1` against `c0/n0`.
pub(crate) fn two_proportion_p(c1: u64, n1: u64, c0: u64, n0: u64) -> Result<f64, &'static str> {
    if n1 == 0 || n0 == 0 {
        return Err("an arm has no impressions");
    }
    let (n1f, n0f) = (n1 as f64, n0 as f64);
    let pooled = (c1 + c0) as f64 / (n1f + n0f);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1f + 1.0 / n0f)).sqrt();
    if se == 0.0 {
        return Err("no variation: no clicks, or clicks on every impression, in both arms");
    }
    let z = (c1 as f64 / n1f - c0 as f64 / n0f) / se;
    Ok((2.0 * standard_normal().sf(z.abs())).min(1.0))
}

/// Relative lift of `c1/n1` over `c0/n0` and its 95% interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Lift {
    /// `ctr₁ / ctr₀ − 1`.
    pub(crate) value: f64,
    /// Delta-method interval on the log ratio; `Err` when an arm has no clicks.
    pub(crate) interval: Result<Interval, &'static str>,
}

/// The relative lift of an arm over the control.
pub(crate) fn relative_lift(c1: u64, n1: u64, c0: u64, n0: u64) -> Result<Lift, &'static str> {
    if n1 == 0 || n0 == 0 {
        return Err("an arm has no impressions");
    }
    if c0 == 0 {
        return Err("the control has no clicks");
    }
    let value = (c1 as f64 / n1 as f64) / (c0 as f64 / n0 as f64) - 1.0;
    let interval = log_ratio(c1, n1, c0, n0).map(|(ln, se)| Interval {
        low: (ln - Z95 * se).exp() - 1.0,
        high: (ln + Z95 * se).exp() - 1.0,
    });
    Ok(Lift { value, interval })
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

/// The default `sequential_tuning`: the impressions (both arms) at which analysts most often
/// decide, where the always-valid interval is the least wider than the fixed one (GrowthBook's
/// default).
pub(crate) const DEFAULT_SEQUENTIAL_TUNING: f64 = 5000.0;

/// The log ratio `ln(ctr₁/ctr₀)` and its Katz standard error; `Err` when a CTR is 0.
fn log_ratio(c1: u64, n1: u64, c0: u64, n0: u64) -> Result<(f64, f64), &'static str> {
    if n1 == 0 || n0 == 0 {
        return Err("an arm has no impressions");
    }
    if c0 == 0 {
        return Err("the control has no clicks");
    }
    if c1 == 0 {
        return Err("the arm has no clicks");
    }
    let (p1, p0) = (c1 as f64 / n1 as f64, c0 as f64 / n0 as f64);
    let se = ((1.0 - p1) / (n1 as f64 * p1) + (1.0 - p0) / (n0 as f64 * p0)).sqrt();
    Ok(((p1 / p0).ln(), se))
}

/// `ρ` of the confidence sequence for a planned `tuning` impressions.
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

/// The always-valid lift interval and p-value of `c1/n1` against `c0/n0` (see the module doc).
pub(crate) fn sequential_lift(c1: u64, n1: u64, c0: u64, n0: u64, tuning: f64) -> Result<Sequential, &'static str> {
    let (mu, se) = log_ratio(c1, n1, c0, n0)?;
    if se == 0.0 {
        return Err("no variation: clicks on every impression in both arms");
    }
    let n = (n1 + n0) as f64;
    let rho2 = sequential_rho(tuning).powi(2);
    let spread = n * rho2 + 1.0;
    let half = se * n.sqrt() * (2.0 * spread / (n * n * rho2) * (spread.sqrt() / ALPHA).ln()).sqrt();
    let evidence = (rho2 * n * (mu / se).powi(2) / (2.0 * spread)).exp() / spread.sqrt();
    Ok(Sequential {
        interval: Interval {
            low: (mu - half).exp() - 1.0,
            high: (mu + half).exp() - 1.0,
        },
        p_value: (1.0 / evidence).min(1.0),
    })
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
    fn sequential_lift_matches_growthbook() {
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
            let got = sequential_lift(c1, n1, c0, n0, tuning).expect("defined");
            assert!(
                close(got.interval.low, low) && close(got.interval.high, high) && close(got.p_value, p),
                "{c1}/{n1} vs {c0}/{n0} at {tuning}: {got:?}"
            );
            // Dual: significant exactly when the interval leaves out no lift.
            let excludes_zero = got.interval.low > 0.0 || got.interval.high < 0.0;
            assert_eq!(got.p_value < ALPHA, excludes_zero, "{c1}/{n1} vs {c0}/{n0}");
            // Wider than the fixed-horizon interval, which is only valid at one look.
            let fixed = relative_lift(c1, n1, c0, n0)
                .expect("defined")
                .interval
                .expect("defined");
            assert!(got.interval.low < fixed.low && got.interval.high > fixed.high);
        }
        assert_eq!(sequential_lift(0, 100, 5, 100, 5000.0), Err("the arm has no clicks"));
        assert_eq!(
            sequential_lift(5, 100, 0, 100, 5000.0),
            Err("the control has no clicks")
        );
        assert_eq!(sequential_lift(5, 0, 5, 100, 5000.0), Err("an arm has no impressions"));
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

    /// SplitMix64, so the simulation below is the same on every run.
    struct SplitMix(u64);

    impl SplitMix {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        /// Successes in `n` trials at `p`.
        fn binomial(&mut self, n: u64, p: f64) -> u64 {
            let threshold = (p * u64::MAX as f64) as u64;
            (0..n).filter(|_| self.next() < threshold).count() as u64
        }
    }

    /// An A/A experiment read after every 200 impressions per arm, 100 times: an analyst who
    /// stops at the first p < 0.05 ships a false winner far more often than 5% with the
    /// fixed-horizon test, and at most 5% of the time with the always-valid one.
    #[test]
    fn peeking_at_an_a_a_test_keeps_the_always_valid_error_rate() {
        let (experiments, peeks, per_peek, ctr) = (400, 100, 200, 0.05);
        let mut rng = SplitMix(0x5eed);
        let (mut fixed_false, mut sequential_false) = (0, 0);
        for _ in 0..experiments {
            let (mut c, mut n) = ([0u64; 2], 0u64);
            let (mut fixed_hit, mut sequential_hit) = (false, false);
            for _ in 0..peeks {
                n += per_peek;
                for arm in &mut c {
                    *arm += rng.binomial(per_peek, ctr);
                }
                let p = two_proportion_p(c[1], n, c[0], n).unwrap_or(1.0);
                fixed_hit |= p < ALPHA;
                let sequential = sequential_lift(c[1], n, c[0], n, DEFAULT_SEQUENTIAL_TUNING);
                sequential_hit |= sequential.is_ok_and(|s| s.p_value < ALPHA);
            }
            fixed_false += u32::from(fixed_hit);
            sequential_false += u32::from(sequential_hit);
        }
        let rate = |n: u32| f64::from(n) / f64::from(experiments);
        assert!(
            rate(fixed_false) > 2.0 * ALPHA,
            "the fixed-horizon test peeked at should fail: {}",
            rate(fixed_false)
        );
        assert!(
            rate(sequential_false) <= ALPHA,
            "always valid: {} false winners of {experiments}",
            sequential_false
        );
        eprintln!(
            "false winners after 100 looks: fixed {:.1}%, always valid {:.1}%",
            100.0 * rate(fixed_false),
            100.0 * rate(sequential_false)
        );
    }

    #[test]
    fn wilson_matches_statsmodels() {
        // statsmodels.stats.proportion.proportion_confint(c, n, alpha=0.05, method="wilson")
        let reference = [
            (30, 1000, 0.021093738828834696, 0.042503414147587126),
            (0, 1000, 0.0, 0.003826758485555125),
            (1000, 1000, 0.996173241514445, 1.0),
            (5, 7, 0.3589344518326191, 0.9177810759959432),
            (123_456_789, 1_000_000_000, 0.12343640161927887, 0.12347717927367156),
        ];
        for (c, n, low, high) in reference {
            let got = wilson(c, n).expect("defined");
            assert!(
                (got.low - low).abs() < 1e-12 && close(got.high, high),
                "{c}/{n}: {got:?}"
            );
        }
        assert_eq!(wilson(0, 0), Err("no impressions"));
    }

    #[test]
    fn z_test_matches_statsmodels() {
        // statsmodels.stats.proportion.proportions_ztest([c1, c0], [n1, n0])
        let reference = [
            (60, 1000, 40, 1000, 0.04017387028851211),
            (120, 5000, 100, 5000, 0.1727308326331427),
            (0, 1000, 3, 1000, 0.08303324629912977),
            (
                123_456_789,
                1_000_000_000,
                123_400_000,
                1_000_000_000,
                0.00011313701574892927,
            ),
        ];
        for (c1, n1, c0, n0, p) in reference {
            let got = two_proportion_p(c1, n1, c0, n0).expect("defined");
            assert!(close(got, p), "{c1}/{n1} vs {c0}/{n0}: {got} != {p}");
        }
        assert!(two_proportion_p(0, 10, 0, 10).is_err(), "no clicks anywhere");
        assert!(two_proportion_p(5, 0, 1, 10).is_err(), "one arm only with data");
    }

    #[test]
    fn lift_uses_the_delta_method_on_the_log_ratio() {
        // exp(ln(p1/p0) ± 1.96·sqrt((1−p1)/(n1·p1) + (1−p0)/(n0·p0))) − 1, computed in Python.
        let lift = relative_lift(60, 1000, 40, 1000).expect("defined");
        assert!(close(lift.value, 0.5));
        let interval = lift.interval.expect("defined");
        assert!(close(interval.low, 0.015223749937738784) && close(interval.high, 1.216260208784504));
        let lift = relative_lift(120, 5000, 100, 5000).expect("defined");
        let interval = lift.interval.expect("defined");
        assert!(close(interval.low, -0.07702007707124314) && close(interval.high, 0.5601639474785747));

        let no_arm_clicks = relative_lift(0, 1000, 3, 1000).expect("point estimate defined");
        assert_eq!(no_arm_clicks.value, -1.0);
        assert_eq!(no_arm_clicks.interval, Err("the arm has no clicks"));
        assert_eq!(relative_lift(3, 1000, 0, 1000), Err("the control has no clicks"));
        assert_eq!(relative_lift(3, 0, 1, 1000), Err("an arm has no impressions"));
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
