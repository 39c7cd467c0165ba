//! What the simulations of [`super::significance`] and [`super::cuped`] share: one seeded
//! random number generator, so every simulated figure is the same on every run and machine, the
//! counters' view of a user's events, and the check of a simulated rate. One copy, so the two
//! estimators are tested on the same populations with the same samplers.

/// SplitMix64, so every simulation is the same on every run.
pub(crate) struct SplitMix(pub(crate) u64);

impl SplitMix {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Successes in `n` trials at `p`, by a plain loop: an iterator chain is several times
    /// slower in the debug builds the simulations run in.
    pub(crate) fn binomial(&mut self, n: u64, p: f64) -> u64 {
        let threshold = (p * u64::MAX as f64) as u64;
        let mut successes = 0;
        for _ in 0..n {
            successes += u64::from(self.next() < threshold);
        }
        successes
    }

    /// Uniform on `0..n` (the modulo bias is below 1e-17 for the small `n` used here).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform on (0, 1]: never 0, so its logarithm and powers stay finite.
    pub(crate) fn uniform(&mut self) -> f64 {
        ((self.next() >> 11) + 1) as f64 / (1_u64 << 53) as f64
    }

    /// Standard normal, by Box and Muller.
    pub(crate) fn normal(&mut self) -> f64 {
        (-2.0 * self.uniform().ln()).sqrt() * (std::f64::consts::TAU * self.uniform()).cos()
    }

    /// Gamma(`shape`, 1) by Marsaglia and Tsang ("A simple method for generating gamma
    /// variables", 2000); a shape below 1 from shape + 1 times `U^(1/shape)`, as they show.
    pub(crate) fn gamma(&mut self, shape: f64) -> f64 {
        if shape < 1.0 {
            let boost = self.uniform().powf(1.0 / shape);
            return self.gamma(shape + 1.0) * boost;
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = (1.0 + c * x).powi(3);
            if v > 0.0 && self.uniform().ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v;
            }
        }
    }

    /// Beta(`a`, `b`), as `X / (X + Y)` of independent Gamma(a) and Gamma(b).
    pub(crate) fn beta(&mut self, a: f64, b: f64) -> f64 {
        let x = self.gamma(a);
        x / (x + self.gamma(b))
    }
}

/// What the counters see of a user, one at a time.
#[derive(Clone, Copy)]
pub(crate) enum Event {
    /// The arm served the user (counted at the user's first event of any kind).
    Served,
    /// The user saw an impression.
    Impression,
    /// The user clicked.
    Click,
}

/// The events of users with `(clicks, impressions)` rows, indexed by row, in random order: each
/// user's one `Served`, their impressions and their clicks, all users' shuffled together, so a
/// click may come before the impression it follows in life, as resent or reordered events do.
pub(crate) fn shuffled_events(rows: impl IntoIterator<Item = (u64, u64)>, rng: &mut SplitMix) -> Vec<(usize, Event)> {
    let mut events = Vec::new();
    for (user, (clicks, impressions)) in rows.into_iter().enumerate() {
        events.push((user, Event::Served));
        events.extend(std::iter::repeat_n((user, Event::Impression), impressions as usize));
        events.extend(std::iter::repeat_n((user, Event::Click), clicks as usize));
    }
    for k in (1..events.len()).rev() {
        events.swap(k, rng.below(k as u64 + 1) as usize);
    }
    events
}

/// Whether `count` of `experiments` is within three binomial standard deviations of `rate`.
pub(crate) fn near_rate(count: u32, experiments: u32, rate: f64) -> bool {
    let experiments = f64::from(experiments);
    (f64::from(count) / experiments - rate).abs() <= 3.0 * (rate * (1.0 - rate) / experiments).sqrt()
}

mod tests {
    use super::*;

    /// The simulations rest on the Beta sampler: Beta(0.3, 5.7) has mean 0.05 and variance
    /// 0.3·5.7 / (6²·7), and its shape 0.3 goes through the boosted branch of `gamma`.
    #[test]
    fn the_beta_sampler_has_the_right_moments() {
        let mut rng = SplitMix(0xbe7a);
        let draws: Vec<f64> = (0..200_000).map(|_| rng.beta(0.3, 5.7)).collect();
        let n = draws.len() as f64;
        let mean = draws.iter().sum::<f64>() / n;
        let variance = draws.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        assert!((mean - 0.05).abs() < 0.0015, "mean {mean}");
        let want = 0.3 * 5.7 / (36.0 * 7.0);
        assert!((variance / want - 1.0).abs() < 0.05, "variance {variance}, want {want}");
    }
}
