//! The integer sums each arm's counters keep, over its users and per day: what counting adds
//! to (an event, a user entering an arm) and what the analysis reads (`crate::analysis`), so
//! neither holds per-user rows. All integers, so the sums of shards, replicas and days add up
//! exactly whatever the order of the adds.

/// The per-user sums of one arm (STATISTICS.md §1): with the user as the unit, these six
/// integers are all the delta method needs, so the counters never keep per-user rows for the
/// statistics, and sums of shards or days add up exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct UserSums {
    /// `n`, the users counted in the arm, with or without events: each is one observation, and
    /// a user served but never shown or clicked is still one (with `c = i = 0`).
    pub(crate) users: u64,
    /// `Σc`, the arm's clicks: the numerator of its CTR.
    pub(crate) clicks: u64,
    /// `Σi`, the arm's impressions: the denominator of its CTR.
    pub(crate) impressions: u64,
    /// `Σc²`, for the variance of clicks between users.
    pub(crate) clicks_sq: u64,
    /// `Σi²`, for the variance of impressions between users.
    pub(crate) impressions_sq: u64,
    /// `Σc·i`, for the covariance of a user's clicks and impressions, which heavy users make
    /// large and which narrows the ratio's variance.
    pub(crate) cross: u64,
}

impl UserSums {
    /// Counts a user the first time the arm serves them: `n += 1`. Their events add to the
    /// other sums as they come.
    pub(crate) fn add_user(&mut self) {
        self.users += 1;
    }

    /// One impression of a user who had `clicks` and `impressions` before it: their `i` becomes
    /// `i + 1`, so `Σi += 1`, `Σi² += 2i + 1` and `Σc·i += c`, exact in integers.
    pub(crate) fn add_impression(&mut self, clicks: u64, impressions: u64) {
        self.impressions += 1;
        self.impressions_sq += 2 * impressions + 1;
        self.cross += clicks;
    }

    /// One click of a user who had `clicks` and `impressions` before it: their `c` becomes
    /// `c + 1`, so `Σc += 1`, `Σc² += 2c + 1` and `Σc·i += i`.
    pub(crate) fn add_click(&mut self, clicks: u64, impressions: u64) {
        self.clicks += 1;
        self.clicks_sq += 2 * clicks + 1;
        self.cross += impressions;
    }

    /// Adds `other` field by field: the sums of shards or days that saw disjoint events of the
    /// same users are the sums of the whole.
    pub(crate) fn add(&mut self, other: &UserSums) {
        self.users += other.users;
        self.clicks += other.clicks;
        self.impressions += other.impressions;
        self.clicks_sq += other.clicks_sq;
        self.impressions_sq += other.impressions_sq;
        self.cross += other.cross;
    }
}

/// A user's pre-period counts on the placement (a row of the covariates table).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PrePeriod {
    /// `c'`, the user's clicks before the experiment.
    pub(crate) clicks: u64,
    /// `i'`, the user's impressions before the experiment.
    pub(crate) impressions: u64,
}

/// Per-arm pre-period sums (STATISTICS.md §5): with [`UserSums`] of the same arm, all the
/// adjustment needs. All integers, exact, and added like `UserSums`, so shards and days add up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PreSums {
    /// Users with a row in the covariates table; the others count as `c' = i' = 0`.
    pub(crate) covered: u64,
    /// `Σc'`, for the arm's mean pre-period clicks.
    pub(crate) clicks: u64,
    /// `Σi'`, for the arm's mean pre-period impressions.
    pub(crate) impressions: u64,
    /// `Σc'²`, for the variance of pre-period clicks, the denominator of `θ_c`.
    pub(crate) clicks_sq: u64,
    /// `Σi'²`, for the variance of pre-period impressions, the denominator of `θ_i`.
    pub(crate) impressions_sq: u64,
    /// `Σc'·i'`, for the covariance of the two adjustments within an arm.
    pub(crate) cross: u64,
    /// `Σc·c'`, for how clicks follow pre-period clicks: the numerator of `θ_c`.
    pub(crate) clicks_by_clicks: u64,
    /// `Σc·i'`, for the covariance of clicks with the impressions' adjustment.
    pub(crate) clicks_by_impressions: u64,
    /// `Σi·c'`, for the covariance of impressions with the clicks' adjustment.
    pub(crate) impressions_by_clicks: u64,
    /// `Σi·i'`, for how impressions follow pre-period impressions: the numerator of `θ_i`.
    pub(crate) impressions_by_impressions: u64,
}

impl PreSums {
    /// A user entering the arm with `pre` (`None`: no row, which counts as `(0, 0)` and not as
    /// covered). The cross sums wait for the user's events: their `c` and `i` start at 0.
    pub(crate) fn add_user(&mut self, pre: Option<PrePeriod>) {
        let Some(PrePeriod { clicks, impressions }) = pre else {
            return;
        };
        self.covered += 1;
        self.clicks += clicks;
        self.impressions += impressions;
        self.clicks_sq += clicks * clicks;
        self.impressions_sq += impressions * impressions;
        self.cross += clicks * impressions;
    }

    /// An impression of a user whose pre-period is `pre`: their `i` grows by 1, so `Σi·c'`
    /// grows by `c'` and `Σi·i'` by `i'`, whatever order the events come in.
    pub(crate) fn add_impression(&mut self, pre: PrePeriod) {
        self.impressions_by_clicks += pre.clicks;
        self.impressions_by_impressions += pre.impressions;
    }

    /// A click of a user whose pre-period is `pre`: their `c` grows by 1, so `Σc·c'` grows by
    /// `c'` and `Σc·i'` by `i'`.
    pub(crate) fn add_click(&mut self, pre: PrePeriod) {
        self.clicks_by_clicks += pre.clicks;
        self.clicks_by_impressions += pre.impressions;
    }

    /// Adds `other` field by field: the sums of shards or days that saw disjoint users and
    /// events are the sums of the whole.
    pub(crate) fn add(&mut self, other: &PreSums) {
        self.covered += other.covered;
        self.clicks += other.clicks;
        self.impressions += other.impressions;
        self.clicks_sq += other.clicks_sq;
        self.impressions_sq += other.impressions_sq;
        self.cross += other.cross;
        self.clicks_by_clicks += other.clicks_by_clicks;
        self.clicks_by_impressions += other.clicks_by_impressions;
        self.impressions_by_clicks += other.impressions_by_clicks;
        self.impressions_by_impressions += other.impressions_by_impressions;
    }
}
