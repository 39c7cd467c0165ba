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
    let n = (arm.len() + control.len()) as f64;
    let l = -2.0 * ALPHA.ln();
    let rho2 = (l + (l + 1.0).ln()) / tuning;
    let spread = n * rho2 + 1.0;
    let h = sigma * n.sqrt() * (2.0 * spread / (n * n * rho2) * (spread.sqrt() / ALPHA).ln()).sqrt();
    let evidence = (rho2 * n * (mu / sigma).powi(2) / (2.0 * spread)).exp() / spread.sqrt();
    ((mu - h).exp() - 1.0, (mu + h).exp() - 1.0, (1.0 / evidence).min(1.0))
}
