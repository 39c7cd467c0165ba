//! `recgw validate --against OLD_DIR`: how many users a change of experiments moves, so a team
//! sees the cost of editing weights or salts before it ships.
//!
//! Slice and arm hashes are independent, so the moved share is computed from bucket ranges
//! rather than by sampling users: with slices `So`, `Sn` and `d` arm buckets (of 10,000) whose
//! arm differs, `|So ∩ Sn| · d / 10,000 + |So Δ Sn|` placement buckets change arm (entering
//! or leaving an experiment counts as a change). When the salt changes or a winner is involved,
//! old and new arm buckets are independent and `d` is its expectation `10,000 − Σ w_o·w_n / 10,000`.
//! Schedules are ignored: the figure says what moves while both versions take traffic.

use std::collections::BTreeSet;
use std::ops::Range;

use super::bucket::BUCKETS;
use super::{Catalog, Experiment, INTERLEAVED, Kind, Status};

/// How one experiment's users move between two catalogs.
#[derive(Debug, Clone, PartialEq)]
pub struct ArmChange {
    /// The experiment id, present in either catalog.
    pub(crate) experiment: String,
    /// Its placement (the new one when it moved).
    pub(crate) placement: String,
    /// Placement basis points (of 10,000) whose arm changes.
    pub(crate) changed_bp: f64,
    /// True when `changed_bp` is an expectation (salt changed or a winner involved).
    pub(crate) expected: bool,
}

/// What an experiment does to its placement's buckets, reduced to what decides the arm.
struct Split<'a> {
    slice: Range<u16>,
    salt: &'a str,
    /// `(arm name, arm bucket range)`; a winner is one arm owning every bucket.
    arms: Vec<(&'a str, Range<u16>)>,
    winner: bool,
}

fn split(e: &Experiment) -> Split<'_> {
    let takes_traffic = e.status == Status::Running || (e.status == Status::Completed && e.winner.is_some());
    let slice = if takes_traffic { e.slice.clone() } else { 0..0 };
    let arms = match (e.winner, e.kind) {
        (Some(w), _) => vec![(e.arms[w].name.as_str(), 0..BUCKETS)],
        // Every covered user of an interleave experiment gets the merged list.
        (None, Kind::Interleave) => vec![(INTERLEAVED, 0..BUCKETS)],
        (None, Kind::Split) => e.arms.iter().map(|a| (a.name.as_str(), a.buckets.clone())).collect(),
    };
    Split {
        slice,
        salt: &e.salt,
        arms,
        winner: e.winner.is_some(),
    }
}

fn width(r: &Range<u16>) -> f64 {
    f64::from(r.end.saturating_sub(r.start))
}

fn arm_at<'a>(split: &Split<'a>, bucket: u16) -> Option<&'a str> {
    split
        .arms
        .iter()
        .find(|(_, r)| r.contains(&bucket))
        .map(|(name, _)| *name)
}

/// Per experiment in either catalog, the share of its placement whose arm changes.
pub fn diff(old: &Catalog, new: &Catalog) -> Vec<ArmChange> {
    let ids: BTreeSet<&str> = old
        .experiments
        .keys()
        .chain(new.experiments.keys())
        .map(String::as_str)
        .collect();
    let absent = || Split {
        slice: 0..0,
        salt: "",
        arms: Vec::new(),
        winner: false,
    };
    ids.into_iter()
        .map(|id| {
            let o = old.experiment(id).map(|e| split(e)).unwrap_or_else(absent);
            let n = new.experiment(id).map(|e| split(e)).unwrap_or_else(absent);
            let placement = new
                .experiment(id)
                .or(old.experiment(id))
                .map(|e| e.placement.clone())
                .unwrap_or_default();
            let both = o.slice.start.max(n.slice.start)..o.slice.end.min(n.slice.end);
            let only_one = width(&o.slice) + width(&n.slice) - 2.0 * width(&both);
            let independent = o.salt != n.salt || o.winner || n.winner;
            let differing = if independent {
                let same: f64 = o
                    .arms
                    .iter()
                    .filter_map(|(name, ro)| {
                        n.arms
                            .iter()
                            .find(|(m, _)| m == name)
                            .map(|(_, rn)| width(ro) * width(rn))
                    })
                    .sum();
                f64::from(BUCKETS) - same / f64::from(BUCKETS)
            } else {
                (0..BUCKETS).filter(|&b| arm_at(&o, b) != arm_at(&n, b)).count() as f64
            };
            ArmChange {
                experiment: id.to_string(),
                placement,
                changed_bp: width(&both) * differing / f64::from(BUCKETS) + only_one,
                expected: independent && width(&both) > 0.0,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::assign::tests::{catalog, experiment};
    use super::*;

    #[test]
    fn reports_moved_basis_points() {
        let even = [("control", 50.0), ("treatment", 50.0)];
        let old = catalog(&[("e.toml", &experiment("e", "traffic = [0.0, 50.0]", &even))]).expect("valid");

        let same = catalog(&[("e.toml", &experiment("e", "traffic = [0.0, 50.0]", &even))]).expect("valid");
        assert_eq!(diff(&old, &same)[0].changed_bp, 0.0);

        let wider = catalog(&[("e.toml", &experiment("e", "traffic = [0.0, 60.0]", &even))]).expect("valid");
        assert_eq!(diff(&old, &wider)[0].changed_bp, 1000.0);

        let skewed = [("control", 40.0), ("treatment", 60.0)];
        let reweighted = catalog(&[("e.toml", &experiment("e", "traffic = [0.0, 50.0]", &skewed))]).expect("valid");
        let change = &diff(&old, &reweighted)[0];
        assert_eq!(change.changed_bp, 500.0, "a tenth of the arm buckets in half the users");
        assert!(!change.expected);

        let resalted = catalog(&[(
            "e.toml",
            &experiment("e", "traffic = [0.0, 50.0]\nsalt = \"new\"", &even),
        )])
        .expect("valid");
        let change = &diff(&old, &resalted)[0];
        assert_eq!(change.changed_bp, 2500.0);
        assert!(change.expected);

        let removed = catalog(&[]).expect("valid");
        assert_eq!(diff(&old, &removed)[0].changed_bp, 5000.0);
    }
}
