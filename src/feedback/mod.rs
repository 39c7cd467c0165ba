//! The feedback loop, from a served page to an analyst's decision: [`token`] signs what each
//! response served, [`events`] takes impressions and clicks back against it, [`counts`] keeps
//! per-arm totals exactly once across replicas, [`significance`] holds the statistical tests,
//! [`cuped`] narrows the CTR comparison with each user's pre-period clicks and impressions,
//! [`lists`] compares two arms' lists, and [`results`] turns the counts into what an analyst
//! reads.

pub(crate) mod counts;
pub(crate) mod cuped;
pub(crate) mod events;
pub(crate) mod lists;
pub(crate) mod results;
pub(crate) mod significance;
#[cfg(test)]
pub(crate) mod sim;
pub mod token;
pub(crate) mod users;
