//! The statistics of the results contract computed again here, from counts the tests kept
//! themselves, so that an expectation never comes from the code under test: a bug in
//! `src/feedback` must not pass as what the test expected. Each formula is written once, for
//! every test file that checks it.

use serde_json::Value;

/// The error rate of every test in the contract.
pub const ALPHA: f64 = 0.05;

/// The 0.975 quantile of the standard normal.
pub const Z95: f64 = 1.959_963_984_540_054;

/// Equal up to the rounding of two independent computations of one formula (the same formula
/// computed in another order may differ in the last bits): 1e-9 relative, and 1e-21 absolute
/// next to zero.
pub fn close(got: f64, want: f64) -> bool {
    got == want || (got - want).abs() <= 1e-9 * want.abs().max(1e-12)
}

/// [`close`] for a JSON value: false unless `got` is a number.
pub fn close_value(got: &Value, want: f64) -> bool {
    got.as_f64().is_some_and(|g| close(g, want))
}

/// One user's counts in one arm, as a test's ledger keeps them: `(clicks, impressions)`.
pub type UserRow = (u64, u64);

/// The fields of a results arm's `per_user_sums`, in the order of [`sums`].
pub const PER_USER_SUMS: [&str; 6] = [
    "users",
    "clicks",
    "impressions",
    "clicks_squared",
    "impressions_squared",
    "clicks_times_impressions",
];

/// The per-user sums of an arm (STATISTICS.md §1), computed directly from the users' final
/// counts: `[n, Σc, Σi, Σc², Σi², Σc·i]`, the order of the results' `per_user_sums`.
pub fn sums(rows: &[UserRow]) -> [u64; 6] {
    let mut out = [rows.len() as u64, 0, 0, 0, 0, 0];
    for &(c, i) in rows {
        out[1] += c;
        out[2] += i;
        out[3] += c * c;
        out[4] += i * i;
        out[5] += c * i;
    }
    out
}

/// The CTR of an arm and the delta-method variance of it, from the users' rows by two passes
/// (means first, then centred moments), not from the sums the gateway keeps:
/// `Var(R) = (s_cc − 2R·s_ci + R²·s_ii) / (n·ī²)`.
pub fn ratio(rows: &[UserRow]) -> (f64, f64) {
    let n = rows.len() as f64;
    let c_mean = rows.iter().map(|r| r.0 as f64).sum::<f64>() / n;
    let i_mean = rows.iter().map(|r| r.1 as f64).sum::<f64>() / n;
    let moment = |f: &dyn Fn(&UserRow) -> f64| rows.iter().map(f).sum::<f64>() / (n - 1.0);
    let s_cc = moment(&|r| (r.0 as f64 - c_mean).powi(2));
    let s_ii = moment(&|r| (r.1 as f64 - i_mean).powi(2));
    let s_ci = moment(&|r| (r.0 as f64 - c_mean) * (r.1 as f64 - i_mean));
    let r = c_mean / i_mean;
    (r, (s_cc - 2.0 * r * s_ci + r * r * s_ii) / (n * i_mean * i_mean))
}

/// The 95% interval of an arm's CTR: `R ± z·√Var(R)`, the low end at least 0.
pub fn ctr_interval(rows: &[UserRow]) -> (f64, f64) {
    let (r, var) = ratio(rows);
    ((r - Z95 * var.sqrt()).max(0.0), r + Z95 * var.sqrt())
}

/// `μ = ln(R₁/R₀)` and `σ = √(Var(R₁)/R₁² + Var(R₀)/R₀²)`: the log ratio the lift intervals
/// are built on.
pub fn log_ratio(arm: &[UserRow], control: &[UserRow]) -> (f64, f64) {
    let ((r1, v1), (r0, v0)) = (ratio(arm), ratio(control));
    ((r1 / r0).ln(), (v1 / (r1 * r1) + v0 / (r0 * r0)).sqrt())
}

/// The lift and its fixed-horizon 95% interval: `(lift, low, high)`.
pub fn lift(arm: &[UserRow], control: &[UserRow]) -> (f64, f64, f64) {
    let (mu, sigma) = log_ratio(arm, control);
    (
        mu.exp() - 1.0,
        (mu - Z95 * sigma).exp() - 1.0,
        (mu + Z95 * sigma).exp() - 1.0,
    )
}

/// The two-sided p-value of `Δ = R₁ − R₀` with `Var(Δ) = Var(R₁) + Var(R₀)`.
pub fn p_value(arm: &[UserRow], control: &[UserRow]) -> f64 {
    use statrs::distribution::{ContinuousCDF, Normal};
    let ((r1, v1), (r0, v0)) = (ratio(arm), ratio(control));
    let z = (r1 - r0) / (v1 + v0).sqrt();
    (2.0 * Normal::standard().sf(z.abs())).min(1.0)
}

/// The always-valid interval of the lift of `arm` against `control` and its p-value, at tuning
/// `tuning` (N*, users) and level [`ALPHA`]: the confidence sequence of Waudby-Smith et al.
/// 2023 as GrowthBook's sequential test states it, on the log ratio of [`log_ratio`] with `N`
/// the users of both arms: `(low, high, p)`. Both arms need clicks (the callers say why a
/// figure is undefined otherwise).
pub fn sequential(arm: &[UserRow], control: &[UserRow], tuning: f64) -> (f64, f64, f64) {
    let (mu, sigma) = log_ratio(arm, control);
    confidence_sequence(mu, sigma, (arm.len() + control.len()) as f64, tuning)
}

/// The confidence sequence of [`sequential`] for a log ratio estimated as `mu` with standard
/// error `sigma` from `n` users (both arms), at tuning `tuning`: the always-valid interval of
/// the lift and its p-value, `(low, high, p)`. [`cuped`] feeds it the adjusted log ratio.
pub fn confidence_sequence(mu: f64, sigma: f64, n: f64, tuning: f64) -> (f64, f64, f64) {
    let l = -2.0 * ALPHA.ln();
    let rho2 = (l + (l + 1.0).ln()) / tuning;
    let spread = n * rho2 + 1.0;
    let h = sigma * n.sqrt() * (2.0 * spread / (n * n * rho2) * (spread.sqrt() / ALPHA).ln()).sqrt();
    let evidence = (rho2 * n * (mu / sigma).powi(2) / (2.0 * spread)).exp() / spread.sqrt();
    ((mu - h).exp() - 1.0, (mu + h).exp() - 1.0, (1.0 / evidence).min(1.0))
}

// ---------------------------------------------------------------------------------------------
// CUPED (STATISTICS.md §5)
// ---------------------------------------------------------------------------------------------

/// One user's counts in one arm with the pre-period row frozen for the user when it entered
/// the arm, as a CUPED test's ledger keeps them: `(c, i, c', i')` — clicks and impressions in
/// the arm, then pre-period clicks and impressions (`(0, 0)` without a row in the table).
pub type CupedRow = (u64, u64, u64, u64);

/// The fields of a results arm's `pre_period_sums`, in the order of [`pre_period_sums`].
pub const PRE_PERIOD_SUMS: [&str; 10] = [
    "users_with_row",
    "clicks",
    "impressions",
    "clicks_squared",
    "impressions_squared",
    "clicks_times_impressions",
    "clicks_times_pre_clicks",
    "clicks_times_pre_impressions",
    "impressions_times_pre_clicks",
    "impressions_times_pre_impressions",
];

/// The pre-period sums of an arm (STATISTICS.md §5), computed directly from its users' rows:
/// `[users_with_row, Σc', Σi', Σc'², Σi'², Σc'·i', Σc·c', Σc·i', Σi·c', Σi·i']`, the order of
/// the results' `pre_period_sums`. `users_with_row` is given: a user without a row and a user
/// whose row is `(0, 0)` have the same [`CupedRow`].
pub fn pre_period_sums(rows: &[CupedRow], users_with_row: u64) -> [u64; 10] {
    let mut out = [users_with_row, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    for &(c, i, pc, pi) in rows {
        out[1] += pc;
        out[2] += pi;
        out[3] += pc * pc;
        out[4] += pi * pi;
        out[5] += pc * pi;
        out[6] += c * pc;
        out[7] += c * pi;
        out[8] += i * pc;
        out[9] += i * pi;
    }
    out
}

/// The CUPED-adjusted comparison of an arm with the control, as the results' `cuped` object
/// names its figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cuped {
    pub lift: f64,
    pub lift_low: f64,
    pub lift_high: f64,
    pub p_value: f64,
    pub sequential_lift_low: f64,
    pub sequential_lift_high: f64,
    pub sequential_p_value: f64,
    pub variance_reduction: f64,
}

impl Cuped {
    /// Every figure with its field name in the results' `cuped` object.
    pub fn fields(&self) -> [(&'static str, f64); 8] {
        [
            ("lift", self.lift),
            ("lift_low", self.lift_low),
            ("lift_high", self.lift_high),
            ("p_value", self.p_value),
            ("sequential_lift_low", self.sequential_lift_low),
            ("sequential_lift_high", self.sequential_lift_high),
            ("sequential_p_value", self.sequential_p_value),
            ("variance_reduction", self.variance_reduction),
        ]
    }
}

/// The mean of `values`.
fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

/// The sample covariance (`n − 1`) of `x` and `y`, by centred moments about their means.
fn covariance(x: &[f64], y: &[f64]) -> f64 {
    let (x_mean, y_mean) = (mean(x), mean(y));
    x.iter().zip(y).map(|(a, b)| (a - x_mean) * (b - y_mean)).sum::<f64>() / (x.len() as f64 - 1.0)
}

/// The regression coefficient of `y` on `x`: `Cov(y, x) / Var(x)`, 0 when `Var(x)` is 0.
fn theta(y: &[f64], x: &[f64]) -> f64 {
    let variance = covariance(x, x);
    if variance == 0.0 {
        0.0
    } else {
        covariance(y, x) / variance
    }
}

/// The adjusted CTR of one arm and its delta-method variance: each user's adjusted values
/// `ĉ = c − θ_c·(c' − c̄')` and `î = i − θ_i·(i' − ī')` (`c̄'`, `ī'` the pooled means),
/// then `R̂ = mean(ĉ) / mean(î)` and `Var(R̂) = (s_ĉĉ − 2R̂·s_ĉî + R̂²·s_îî) / (n·mean(î)²)`.
fn adjusted_ratio(rows: &[CupedRow], thetas: (f64, f64), pooled_means: (f64, f64)) -> (f64, f64) {
    let c_hat: Vec<f64> = rows
        .iter()
        .map(|r| r.0 as f64 - thetas.0 * (r.2 as f64 - pooled_means.0))
        .collect();
    let i_hat: Vec<f64> = rows
        .iter()
        .map(|r| r.1 as f64 - thetas.1 * (r.3 as f64 - pooled_means.1))
        .collect();
    let n = rows.len() as f64;
    let (c_mean, i_mean) = (mean(&c_hat), mean(&i_hat));
    let (s_cc, s_ii, s_ci) = (
        covariance(&c_hat, &c_hat),
        covariance(&i_hat, &i_hat),
        covariance(&c_hat, &i_hat),
    );
    let r = c_mean / i_mean;
    (r, (s_cc - 2.0 * r * s_ci + r * r * s_ii) / (n * i_mean * i_mean))
}

/// The CUPED comparison of `arm` with `control` (STATISTICS.md §5) from the users' rows, in
/// two passes, never from the sums the gateway reports: `θ_c = Cov(c, c') / Var(c')` and
/// `θ_i = Cov(i, i') / Var(i')` over the users of both arms pooled (sample moments about the
/// pooled means; 0 when the variance is 0), each user's adjusted values, each arm's adjusted
/// ratio by [`adjusted_ratio`], then the lift and its intervals as for the unadjusted ratio
/// (`μ = ln(R̂₁/R̂₀)`, `σ² = Var(R̂₁)/R̂₁² + Var(R̂₀)/R̂₀²`), the p-value of `R̂₁ − R̂₀`, the
/// confidence sequence of [`confidence_sequence`] with `N` the users of both arms, and
/// `variance_reduction = 1 − σ²/σ²_unadjusted` (`σ_unadjusted` of [`log_ratio`]).
pub fn cuped(arm: &[CupedRow], control: &[CupedRow], tuning: f64) -> Cuped {
    use statrs::distribution::{ContinuousCDF, Normal};
    let pooled: Vec<CupedRow> = arm.iter().chain(control).copied().collect();
    let column = |f: fn(&CupedRow) -> u64| pooled.iter().map(|r| f(r) as f64).collect::<Vec<f64>>();
    let (c, i, pc, pi) = (column(|r| r.0), column(|r| r.1), column(|r| r.2), column(|r| r.3));
    let thetas = (theta(&c, &pc), theta(&i, &pi));
    let pooled_means = (mean(&pc), mean(&pi));
    let (r1, v1) = adjusted_ratio(arm, thetas, pooled_means);
    let (r0, v0) = adjusted_ratio(control, thetas, pooled_means);
    let mu = (r1 / r0).ln();
    let variance = v1 / (r1 * r1) + v0 / (r0 * r0);
    let sigma = variance.sqrt();
    let z = (r1 - r0) / (v1 + v0).sqrt();
    let (sequential_lift_low, sequential_lift_high, sequential_p_value) =
        confidence_sequence(mu, sigma, pooled.len() as f64, tuning);
    let unadjusted = |rows: &[CupedRow]| rows.iter().map(|r| (r.0, r.1)).collect::<Vec<UserRow>>();
    let (_, sigma_unadjusted) = log_ratio(&unadjusted(arm), &unadjusted(control));
    Cuped {
        lift: mu.exp() - 1.0,
        lift_low: (mu - Z95 * sigma).exp() - 1.0,
        lift_high: (mu + Z95 * sigma).exp() - 1.0,
        p_value: (2.0 * Normal::standard().sf(z.abs())).min(1.0),
        sequential_lift_low,
        sequential_lift_high,
        sequential_p_value,
        variance_reduction: 1.0 - variance / (sigma_unadjusted * sigma_unadjusted),
    }
}
