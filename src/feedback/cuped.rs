//! Placeholder for the CUPED estimator (being written on the `cuped-stats` branch): only the
//! pre-period sums the counters keep.

/// A user's pre-period counts on the placement (a row of the covariates table).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PrePeriod {
    /// Clicks before the experiment.
    pub(crate) clicks: u64,
    /// Impressions before the experiment.
    pub(crate) impressions: u64,
}

/// Per-arm pre-period sums (STATISTICS.md §5).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PreSums {
    pub(crate) covered: u64,
    pub(crate) clicks: u64,
    pub(crate) impressions: u64,
    pub(crate) clicks_sq: u64,
    pub(crate) impressions_sq: u64,
    pub(crate) cross: u64,
    pub(crate) clicks_by_clicks: u64,
    pub(crate) clicks_by_impressions: u64,
    pub(crate) impressions_by_clicks: u64,
    pub(crate) impressions_by_impressions: u64,
}

impl PreSums {
    pub(crate) fn add_user(&mut self, pre: Option<PrePeriod>) {
        let Some(p) = pre else { return };
        self.covered += 1;
        self.clicks += p.clicks;
        self.impressions += p.impressions;
        self.clicks_sq += p.clicks * p.clicks;
        self.impressions_sq += p.impressions * p.impressions;
        self.cross += p.clicks * p.impressions;
    }
    pub(crate) fn add_impression(&mut self, pre: PrePeriod) {
        self.impressions_by_clicks += pre.clicks;
        self.impressions_by_impressions += pre.impressions;
    }
    pub(crate) fn add_click(&mut self, pre: PrePeriod) {
        self.clicks_by_clicks += pre.clicks;
        self.clicks_by_impressions += pre.impressions;
    }
    pub(crate) fn add(&mut self, o: &PreSums) {
        self.covered += o.covered;
        self.clicks += o.clicks;
        self.impressions += o.impressions;
        self.clicks_sq += o.clicks_sq;
        self.impressions_sq += o.impressions_sq;
        self.cross += o.cross;
        self.clicks_by_clicks += o.clicks_by_clicks;
        self.clicks_by_impressions += o.clicks_by_impressions;
        self.impressions_by_clicks += o.impressions_by_clicks;
        self.impressions_by_impressions += o.impressions_by_impressions;
    }
}

/// The CUPED-adjusted comparison of an arm with the control.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Cuped {
    pub(crate) lift: crate::feedback::significance::Lift,
    pub(crate) p_value: f64,
    pub(crate) sequential: crate::feedback::significance::Sequential,
    pub(crate) variance_reduction: f64,
    pub(crate) covered: u64,
}

pub(crate) fn cuped(
    _arm: &crate::feedback::significance::UserSums,
    _arm_pre: &PreSums,
    _control: &crate::feedback::significance::UserSums,
    _control_pre: &PreSums,
    _tuning: f64,
) -> Result<Cuped, &'static str> {
    Err("pending")
}
