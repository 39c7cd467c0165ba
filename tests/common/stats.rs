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

/// The always-valid interval of the lift of `c1` clicks in `n1` impressions against `c0` in
/// `n0`, and its p-value, at tuning `tuning` (N*) and level [`ALPHA`]: the confidence sequence
/// of Waudby-Smith et al. 2023 as GrowthBook's sequential test states it, on `μ = ln(p1/p0)`
/// with the Katz standard error, as the contract writes it: `(low, high, p)`. Every count must
/// be positive (the callers say why a figure is undefined otherwise).
pub fn sequential(c1: u64, n1: u64, c0: u64, n0: u64, tuning: f64) -> (f64, f64, f64) {
    let (p1, p0) = (c1 as f64 / n1 as f64, c0 as f64 / n0 as f64);
    let mu = (p1 / p0).ln();
    let sigma = ((1.0 - p1) / (n1 as f64 * p1) + (1.0 - p0) / (n0 as f64 * p0)).sqrt();
    let n = (n1 + n0) as f64;
    let l = -2.0 * ALPHA.ln();
    let rho2 = (l + (l + 1.0).ln()) / tuning;
    let spread = n * rho2 + 1.0;
    let h = sigma * n.sqrt() * (2.0 * spread / (n * n * rho2) * (spread.sqrt() / ALPHA).ln()).sqrt();
    let evidence = (rho2 * n * (mu / sigma).powi(2) / (2.0 * spread)).exp() / spread.sqrt();
    ((mu - h).exp() - 1.0, (mu + h).exp() - 1.0, (1.0 / evidence).min(1.0))
}
