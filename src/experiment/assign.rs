//! The assignment of ARCHITECTURE.md §3.1: which experiment and arm a user sees on a placement.
//! It is a pure function of the catalog, the user and the clock, so every replica agrees.

use std::sync::Arc;
use std::time::SystemTime;

use super::bucket::bucket;
use super::{Arm, Catalog, Experiment, INTERLEAVED, Kind, Placement};

/// Where a user landed and why; borrowed from the catalog so the hot path copies nothing.
#[derive(Debug, Clone, Copy)]
pub struct Assignment<'c> {
    /// The placement asked for.
    pub(crate) placement: &'c Placement,
    /// The covering experiment, `None` for users on the placement default.
    pub(crate) experiment: Option<&'c Arc<Experiment>>,
    /// The arm served: `None` for the placement default, and for an interleave experiment's
    /// users, who see both arms.
    pub(crate) arm: Option<&'c Arm>,
    /// True for QA overrides, which are never counted in results.
    pub(crate) forced: bool,
    /// The buckets that decided it, for `recgw assign` and the assignment endpoint.
    pub(crate) reason: Reason,
}

/// Why an assignment came out the way it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Listed in the experiment's `[overrides]`.
    Override,
    /// Placement bucket inside the slice, arm bucket inside the arm's range.
    Covered {
        /// `B("placement:" + p, u)`.
        placement_bucket: u16,
        /// `B(salt, u)`.
        arm_bucket: u16,
    },
    /// Placement bucket inside the slice of an interleave experiment: both arms serve.
    Interleaved {
        /// `B("placement:" + p, u)`.
        placement_bucket: u16,
    },
    /// Inside the slice of a completed experiment, which serves its winner.
    Winner {
        /// `B("placement:" + p, u)`.
        placement_bucket: u16,
    },
    /// Inside the placement's holdout: the default, counted as the holdout's users.
    Holdout {
        /// `B("placement:" + p, u)`.
        placement_bucket: u16,
    },
    /// No active experiment's slice holds the placement bucket.
    Uncovered {
        /// `B("placement:" + p, u)`.
        placement_bucket: u16,
    },
}

impl<'c> Assignment<'c> {
    /// Arm name for responses and labels: `"default"` when no experiment covers the user,
    /// [`INTERLEAVED`] when both arms of an interleave experiment serve.
    pub fn arm_name(&self) -> &'c str {
        match (self.arm, self.experiment) {
            (Some(arm), _) => &arm.name,
            (None, Some(_)) => INTERLEAVED,
            (None, None) => "default",
        }
    }

    /// The experiment and the two arms whose lists are merged, for an interleave experiment's
    /// covered user.
    pub(crate) fn interleaved(&self) -> Option<(&'c Arc<Experiment>, [&'c Arm; 2])> {
        match (self.reason, self.experiment) {
            (Reason::Interleaved { .. }, Some(experiment)) => match experiment.arms.as_slice() {
                [first, second] => Some((experiment, [first, second])),
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether this exposure belongs in the experiment's results: overrides and winners do not.
    pub(crate) fn counted(&self) -> bool {
        matches!(
            self.reason,
            Reason::Covered { .. } | Reason::Interleaved { .. } | Reason::Holdout { .. }
        )
    }
}

impl Catalog {
    /// Assigns `user` on `placement` at `now`; `None` when the placement does not exist.
    pub fn assign(&self, placement: &str, user: &str, now: SystemTime) -> Option<Assignment<'_>> {
        let placement = self.placement(placement)?;
        Some(placement.assign(user, now))
    }
}

impl Placement {
    /// Steps 1–3 of §3.1 for one user.
    pub(crate) fn assign(&self, user: &str, now: SystemTime) -> Assignment<'_> {
        let base = Assignment {
            placement: self,
            experiment: None,
            arm: None,
            forced: false,
            reason: Reason::Override,
        };
        if let Some((experiment, arm)) = self
            .experiments
            .iter()
            .find_map(|e| e.overrides.get(user).map(|&arm| (e, &e.arms[arm])))
        {
            return Assignment {
                experiment: Some(experiment),
                arm: Some(arm),
                forced: true,
                ..base
            };
        }

        let placement_bucket = self.slice_bucket(user);
        if let Some(holdout) = &self.holdout
            && holdout.slice.contains(&placement_bucket)
        {
            return Assignment {
                experiment: Some(holdout),
                arm: holdout.arms.first(),
                reason: Reason::Holdout { placement_bucket },
                ..base
            };
        }
        let Some(experiment) = self
            .experiments
            .iter()
            .find(|e| e.slice.contains(&placement_bucket) && e.active_at(now))
        else {
            return Assignment {
                reason: Reason::Uncovered { placement_bucket },
                ..base
            };
        };
        if let Some(winner) = experiment.winner {
            return Assignment {
                experiment: Some(experiment),
                arm: Some(&experiment.arms[winner]),
                reason: Reason::Winner { placement_bucket },
                ..base
            };
        }
        if experiment.kind == Kind::Interleave {
            return Assignment {
                experiment: Some(experiment),
                reason: Reason::Interleaved { placement_bucket },
                ..base
            };
        }
        let arm_bucket = bucket(&experiment.salt, user);
        Assignment {
            experiment: Some(experiment),
            arm: Some(experiment.arm_for_bucket(arm_bucket)),
            reason: Reason::Covered {
                placement_bucket,
                arm_bucket,
            },
            ..base
        }
    }
}

/// One user seen from one experiment: what the placement serves them, whether that is this
/// experiment, and the buckets behind it. `recgw assign` and the assignment endpoint print it.
#[derive(Debug, Clone, Copy)]
pub struct Explanation<'c> {
    /// The experiment asked about.
    pub(crate) experiment: &'c Arc<Experiment>,
    /// What the placement actually serves the user.
    pub served: Assignment<'c>,
    /// Whether this experiment counts the user: serves them, or, for a placement's holdout,
    /// has them on its placement (held out, or in its `exposed` arm).
    pub in_experiment: bool,
    /// Whether the experiment asked about is a placement's holdout.
    holdout: bool,
    /// `B("placement:" + p, u)`.
    pub(crate) placement_bucket: u16,
    /// `B(salt, u)` for this experiment.
    pub arm_bucket: u16,
    /// The arm `arm_bucket` falls in, whether or not the user is in the slice ([`INTERLEAVED`]
    /// for an interleave experiment, whose slice sees both arms).
    pub(crate) arm_for_bucket: &'c str,
}

impl Catalog {
    /// Explains where `user` lands relative to experiment `id`; `None` for an unknown id.
    pub fn explain(&self, id: &str, user: &str, now: SystemTime) -> Option<Explanation<'_>> {
        let experiment = self.experiment(id)?;
        let placement = self.placement(&experiment.placement)?;
        let served = placement.assign(user, now);
        let arm_bucket = bucket(&experiment.salt, user);
        let holdout = placement.holdout.as_ref().is_some_and(|h| Arc::ptr_eq(h, experiment));
        Some(Explanation {
            experiment,
            in_experiment: holdout || served.experiment.is_some_and(|e| Arc::ptr_eq(e, experiment)),
            holdout,
            placement_bucket: placement.slice_bucket(user),
            arm_bucket,
            arm_for_bucket: match experiment.kind {
                Kind::Split => &experiment.arm_for_bucket(arm_bucket).name,
                Kind::Interleave => INTERLEAVED,
            },
            served,
        })
    }
}

impl<'c> Explanation<'c> {
    /// The arm this experiment counts the user in: the one served, or for a holdout `holdout`
    /// or `exposed`; `None` outside the experiment.
    pub fn arm(&self) -> Option<&'c str> {
        match (self.in_experiment, self.holdout) {
            (false, _) => None,
            (true, true) => Some(self.arm_for_bucket),
            (true, false) => Some(self.served.arm_name()),
        }
    }

    /// The decision in words.
    pub(crate) fn reason(&self) -> String {
        let e = self.experiment;
        let slice = format!("[{}, {})", e.slice.start, e.slice.end);
        if self.holdout && !matches!(self.served.reason, Reason::Holdout { .. }) {
            let by = self
                .served
                .experiment
                .map_or("the placement default", |x| x.id.as_str());
            return format!(
                "placement bucket {} is outside the holdout {slice}: counted as exposed, served by {by}",
                self.placement_bucket
            );
        }
        if let (false, Some(other)) = (self.in_experiment, self.served.experiment) {
            return format!("served by experiment {} instead", other.id);
        }
        match self.served.reason {
            Reason::Override => format!("listed in {}'s overrides", e.id),
            Reason::Covered {
                placement_bucket,
                arm_bucket,
            } => format!(
                "placement bucket {placement_bucket} is inside the slice {slice}; arm bucket {arm_bucket} picks the arm"
            ),
            Reason::Interleaved { placement_bucket } => format!(
                "placement bucket {placement_bucket} is inside the slice {slice}; both arms' lists are interleaved"
            ),
            Reason::Winner { placement_bucket } => format!(
                "placement bucket {placement_bucket} is inside the slice {slice} of a completed experiment serving its winner"
            ),
            Reason::Holdout { placement_bucket } => format!(
                "placement bucket {placement_bucket} is inside the placement's holdout {slice}: placement default, \
                 counted as held out"
            ),
            Reason::Uncovered { placement_bucket } if e.slice.contains(&placement_bucket) => format!(
                "{} takes no traffic now (status {}, or outside its schedule): placement default",
                e.id,
                e.status.as_str()
            ),
            Reason::Uncovered { placement_bucket } => {
                format!("placement bucket {placement_bucket} is outside the slice {slice}: placement default")
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;

    /// Writes a folder with `placements.toml` (placement `home`, default `popular`) and the
    /// given experiment files, and loads it.
    pub(crate) fn catalog(files: &[(&str, &str)]) -> Result<Catalog, crate::experiment::Problems> {
        let dir = tempfile::tempdir().expect("temp dir");
        write_folder(dir.path(), files);
        Catalog::load_dir(dir.path())
    }

    pub(crate) fn write_folder(dir: &Path, files: &[(&str, &str)]) {
        std::fs::write(
            dir.join("placements.toml"),
            "[placements.home]\ndefault_model = \"popular\"\n[placements.other]\ndefault_model = \"popular\"\n",
        )
        .expect("write placements");
        for (name, text) in files {
            std::fs::write(dir.join(name), text).expect("write experiment");
        }
    }

    pub(crate) fn experiment(id: &str, extra: &str, arms: &[(&str, f64)]) -> String {
        let mut text = format!("id = \"{id}\"\nplacement = \"home\"\nstatus = \"running\"\n{extra}\n");
        for (name, weight) in arms {
            text.push_str(&format!(
                "[[arms]]\nname = \"{name}\"\nweight = {weight}\nmodel = \"m-{name}\"\n"
            ));
        }
        text
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000)
    }

    fn users(n: usize) -> impl Iterator<Item = String> {
        (0..n).map(|i| format!("user-{i}"))
    }

    #[test]
    fn arm_shares_follow_weights_and_slice_share_follows_traffic() {
        let text = experiment(
            "split",
            "traffic = [0.0, 30.0]",
            &[("a", 20.0), ("b", 30.0), ("c", 50.0)],
        );
        let catalog = catalog(&[("split.toml", &text)]).expect("valid");
        let n = 100_000;
        let mut covered = 0usize;
        let mut per_arm = std::collections::HashMap::<&str, usize>::new();
        let experiment = catalog.experiment("split").expect("loaded");
        for user in users(n) {
            if catalog
                .assign("home", &user, now())
                .expect("placement")
                .experiment
                .is_some()
            {
                covered += 1;
            }
            // Arm shares are measured over everyone: the arm hash is independent of the slice.
            let arm = experiment.arm_for_bucket(bucket(&experiment.salt, &user));
            *per_arm.entry(arm.name.as_str()).or_default() += 1;
        }
        let share = |count: usize| count as f64 * 100.0 / n as f64;
        assert!((share(covered) - 30.0).abs() <= 0.7, "slice share {}", share(covered));
        for (name, weight) in [("a", 20.0), ("b", 30.0), ("c", 50.0)] {
            let got = share(per_arm[name]);
            assert!((got - weight).abs() <= 0.7, "arm {name}: {got}% vs {weight}%");
        }
    }

    #[test]
    fn widening_the_slice_moves_no_covered_user() {
        let arms = [("control", 50.0), ("treatment", 50.0)];
        let narrow = catalog(&[("e.toml", &experiment("e", "traffic = [0.0, 20.0]", &arms))]).expect("valid");
        let wide = catalog(&[("e.toml", &experiment("e", "traffic = [0.0, 60.0]", &arms))]).expect("valid");
        let mut newly_covered = 0;
        for user in users(20_000) {
            let before = narrow.assign("home", &user, now()).expect("placement");
            let after = wide.assign("home", &user, now()).expect("placement");
            if before.experiment.is_some() {
                assert_eq!(before.arm_name(), after.arm_name(), "user {user} moved");
            } else if after.experiment.is_some() {
                newly_covered += 1;
            }
        }
        assert!(
            newly_covered > 7_000,
            "widening should add users, added {newly_covered}"
        );
    }

    #[test]
    fn overrides_win_and_are_forced() {
        let mut text = experiment("e", "traffic = [0.0, 0.01]", &[("control", 50.0), ("treatment", 50.0)]);
        text.push_str("[overrides]\n\"qa-user-1\" = \"treatment\"\n");
        let catalog = catalog(&[("e.toml", &text)]).expect("valid");
        let a = catalog.assign("home", "qa-user-1", now()).expect("placement");
        assert_eq!(a.arm_name(), "treatment");
        assert!(a.forced);
        assert!(!a.counted());
        assert_eq!(a.reason, Reason::Override);
    }

    #[test]
    fn schedule_and_status_decide_coverage() {
        let arms = [("control", 50.0), ("treatment", 50.0)];
        let window = "start = 2026-11-01T00:00:00Z\nend = 2026-12-01T00:00:00+01:00";
        let catalog = catalog(&[("e.toml", &experiment("e", window, &arms))]).expect("valid");
        let e = catalog.experiment("e").expect("loaded");
        let start = e.start.expect("start");
        let end = e.end.expect("end");
        assert_eq!(
            end.duration_since(start).expect("ordered"),
            Duration::from_secs(30 * 86_400 - 3_600)
        );
        let covered = |t: SystemTime| catalog.assign("home", "42", t).expect("placement").experiment.is_some();
        assert!(!covered(start - Duration::from_secs(1)));
        assert!(covered(start));
        assert!(covered(end - Duration::from_nanos(1)));
        assert!(!covered(end));

        for (status, expect) in [("paused", false), ("draft", false), ("completed", false)] {
            let text = experiment("e", "", &arms).replace("running", status);
            let catalog = super::tests::catalog(&[("e.toml", &text)]).expect("valid");
            let a = catalog.assign("home", "42", now()).expect("placement");
            assert_eq!(a.experiment.is_some(), expect, "status {status}");
            assert_eq!(a.arm_name(), "default");
        }
    }

    #[test]
    fn completed_with_winner_serves_winner_uncounted() {
        let text = experiment(
            "e",
            "winner = \"treatment\"\nend = 2020-01-01T00:00:00Z",
            &[("control", 50.0), ("treatment", 50.0)],
        )
        .replace("running", "completed");
        let catalog = catalog(&[("e.toml", &text)]).expect("valid");
        for user in users(200) {
            let a = catalog.assign("home", &user, now()).expect("placement");
            assert_eq!(a.arm_name(), "treatment");
            assert!(!a.counted());
            assert!(matches!(a.reason, Reason::Winner { .. }));
        }
    }

    #[test]
    fn unknown_placement_is_none() {
        let catalog = catalog(&[]).expect("valid");
        assert!(catalog.assign("nowhere", "42", now()).is_none());
        let a = catalog.assign("home", "42", now()).expect("placement");
        assert!(a.arm.is_none());
        assert_eq!(a.placement.default_model.location, "popular");
        assert_eq!(a.reason, Reason::Uncovered { placement_bucket: 9211 });
    }
}
