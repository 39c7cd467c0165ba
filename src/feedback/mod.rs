//! Taking the feedback in, from a served page to exact counts: [`token`] signs what each
//! response served, [`events`] takes impressions and clicks back against it, [`counts`] keeps
//! per-arm totals exactly once across replicas, [`users`] counts each user once per arm,
//! [`sums`] are the per-user sums they keep, and [`lists`] compares two arms' lists. What the
//! counts mean is `crate::analysis`'s.

pub(crate) mod counts;
pub(crate) mod events;
pub(crate) mod lists;
pub(crate) mod sums;
pub mod token;
pub(crate) mod users;
