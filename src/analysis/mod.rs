//! From the counts to an analyst's decision: [`significance`] holds the statistical tests
//! (intervals, lift, p-values, always-valid intervals, Holm, sample-ratio mismatch), [`cuped`]
//! narrows the CTR comparison with each user's pre-period clicks and impressions, and
//! [`results`] turns an experiment's counts into what the results endpoint, the results UI and
//! `recgw report` show. Pure functions over the sums `crate::feedback` keeps; a new statistic
//! has its home here.

pub(crate) mod cuped;
pub(crate) mod results;
pub(crate) mod significance;
#[cfg(test)]
pub(crate) mod sim;
