//! Experiments: the TOML product teams write, checked once at load into an immutable
//! [`Catalog`] that the request path reads without locks or allocation.
//!
//! A catalog is all-or-nothing: one bad file rejects the whole folder, so a half-applied change
//! can never split traffic in a way nobody wrote down.

mod assign;
mod bucket;
mod diff;
mod interleave;
mod spec;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use assign::{Assignment, Explanation, Reason};
pub use bucket::{BUCKETS, bucket};
pub use diff::{ArmChange, diff};
pub use interleave::{INTERLEAVED, team_draft};

/// The arm of a holdout's users, and that of everyone else on its placement.
pub const HOLDOUT_ARMS: [&str; 2] = ["holdout", "exposed"];

/// The id a placement's holdout is counted under: `holdout:{placement}`, which no experiment
/// id can be (ids have no `:`).
pub fn holdout_id(placement: &str) -> String {
    format!("holdout:{placement}")
}
pub(crate) use interleave::{Team, merge_seed};
pub use spec::{Kind, Status};

use crate::store::{CovariateSpec, ModelSpec};

/// The validated set of placements and experiments loaded from one folder.
#[derive(Debug)]
pub struct Catalog {
    /// Placement name → placement, for the request path's lookup by query parameter.
    placements: BTreeMap<String, Placement>,
    /// Experiment id → experiment, for the `/experiments/{id}` routes.
    experiments: BTreeMap<String, Arc<Experiment>>,
    /// Hash of every file's name and bytes, so operators can tell which set a replica runs.
    digest: String,
}

/// A slot in a client app, with the experiments that split its users.
#[derive(Debug)]
pub struct Placement {
    /// The name clients pass as `placement=`.
    pub(crate) name: String,
    /// Served to users no experiment covers and whenever an arm cannot answer.
    pub default_model: ModelSpec,
    /// `"placement:" + name`, the salt of the slice hash, built once instead of per request.
    slice_salt: String,
    /// Experiments on this placement ordered by id, so override precedence is deterministic.
    experiments: Vec<Arc<Experiment>>,
    /// Its holdout, as the experiment that counts it: arm `holdout` (the held-out users, served
    /// the default) against arm `exposed` (everyone else on the placement).
    pub(crate) holdout: Option<Arc<Experiment>>,
}

/// The default `sequential_tuning`, counted in users (both arms together): the users at which
/// analysts most often decide, where the always-valid interval is the least wider than the
/// fixed one. 5000 users (GrowthBook's default).
pub const DEFAULT_SEQUENTIAL_TUNING: f64 = 5000.0;

/// One experiment, with percentages already turned into basis-point ranges.
#[derive(Debug)]
pub struct Experiment {
    /// Identifier from the file.
    pub id: String,
    /// Placement it splits.
    pub placement: String,
    /// Free text for humans.
    pub(crate) description: String,
    /// Contact.
    pub owner: String,
    /// Lifecycle state.
    pub status: Status,
    /// Schedule start (inclusive), if any.
    pub start: Option<SystemTime>,
    /// Schedule end (exclusive), if any.
    pub end: Option<SystemTime>,
    /// Slice of placement buckets this experiment owns, `[lo, hi)` in basis points.
    pub slice: Range<u16>,
    /// Seed of the arm hash (split) or of the merge's coin (interleave).
    pub salt: String,
    /// Whether users are split between the arms or see both arms' lists interleaved.
    pub kind: Kind,
    /// Index of the winning arm of a completed experiment.
    pub winner: Option<usize>,
    /// The arms, control first.
    pub arms: Vec<Arm>,
    /// QA user → forced arm index.
    pub overrides: BTreeMap<String, usize>,
    /// `N*` of the always-valid intervals: the planned impressions of one comparison.
    pub sequential_tuning: f64,
    /// The limits its arms must keep, if any.
    pub guardrails: Option<Guardrails>,
    /// The pre-period table its results are adjusted by (CUPED), if any.
    pub covariates: Option<CovariateSpec>,
    /// File it came from, for messages.
    pub file: PathBuf,
}

/// Validated `guardrails`: each limit is optional, and an arm breaching any one of them over
/// `window` is paused (see `gateway::guardrails`).
#[derive(Debug, Clone, PartialEq)]
pub struct Guardrails {
    /// Highest store-error share of an arm's requests.
    pub error_rate: Option<f64>,
    /// Highest p99 response time.
    pub p99: Option<Duration>,
    /// Highest fallback share of an arm's requests.
    pub fallback_rate: Option<f64>,
    /// Largest relative CTR drop the always-valid interval may show for certain.
    pub max_ctr_drop: Option<f64>,
    /// Requests in the window before rates and latency are judged.
    pub min_requests: u64,
    /// How long a breach must last.
    pub window: Duration,
}

/// One variant of an experiment.
#[derive(Debug)]
pub struct Arm {
    /// Name in responses, metrics and results.
    pub name: String,
    /// Weight in basis points (the integers of §3.1; floats are never compared).
    pub weight_bp: u16,
    /// Arm buckets this arm owns, `[C_i, C_i + W_i)`.
    pub buckets: Range<u16>,
    /// The model output this arm serves.
    pub model: ModelSpec,
    /// Cache lifetime override for this arm's lists.
    pub cache_ttl: Option<Duration>,
    /// For a shadow arm, the share of the control's responses its list is compared on; a
    /// shadow arm owns no buckets, so it is never assigned.
    pub shadow: Option<f64>,
}

/// One reason a folder was rejected, precise enough to fix without reading code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file at fault.
    pub file: PathBuf,
    /// 1-based line, where the TOML parser knows it.
    pub line: Option<usize>,
    /// Dotted path of the offending field (`arms[1].weight`), or empty for the whole file.
    pub field: String,
    /// What is wrong and, where it helps, what would be right.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in a folder; a catalog is only built when this is empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// User ids are opaque strings of 1–128 characters from `[A-Za-z0-9._:@-]` (ARCHITECTURE.md §3.1);
/// the API rejects anything else with a 400 and the validator rejects such overrides.
pub fn is_valid_user_id(user: &str) -> bool {
    (1..=128).contains(&user.len())
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'@' | b'-'))
}

impl Catalog {
    /// Reads and validates every `*.toml` in `dir`; `placements.toml` is required.
    pub fn load_dir(dir: &Path) -> Result<Catalog, Problems> {
        validate::load_dir(dir)
    }

    /// Looks a placement up by name.
    pub fn placement(&self, name: &str) -> Option<&Placement> {
        self.placements.get(name)
    }

    /// Every placement, by name.
    pub(crate) fn placements(&self) -> impl Iterator<Item = &Placement> {
        self.placements.values()
    }

    /// Looks an experiment up by id.
    pub fn experiment(&self, id: &str) -> Option<&Arc<Experiment>> {
        self.experiments.get(id)
    }

    /// Every experiment, by id.
    pub fn experiments(&self) -> impl Iterator<Item = &Arc<Experiment>> {
        self.experiments.values()
    }

    /// Content hash of the loaded files (hex), equal on replicas that run the same set.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Every model the catalog can serve (arms and placement defaults), without duplicates, so
    /// the store knows what to load and `/ready` what to report.
    pub fn models(&self) -> Vec<ModelSpec> {
        self.models_of(|e| &e.arms)
    }

    /// Every covariate table the experiments name, sorted, without duplicates.
    pub fn covariates(&self) -> Vec<CovariateSpec> {
        let mut tables: Vec<CovariateSpec> = self.experiments.values().filter_map(|e| e.covariates.clone()).collect();
        tables.sort();
        tables.dedup();
        tables
    }

    /// The models traffic reaches at `t`: placement defaults, every arm of a running
    /// experiment inside its schedule, the winner of a completed one. Readiness waits for these
    /// only; a draft's or a paused experiment's model (QA overrides aside) serves nobody, and a
    /// typo in one must not take every replica out of the load balancer.
    pub(crate) fn serving_models(&self, t: SystemTime) -> Vec<ModelSpec> {
        self.models_of(|e| match e.winner {
            _ if !e.active_at(t) => &[],
            Some(winner) => std::slice::from_ref(&e.arms[winner]),
            None => &e.arms,
        })
    }

    /// Placement defaults and the models of the arms `arms` picks from each experiment, sorted,
    /// without duplicates.
    fn models_of<'c>(&'c self, arms: impl Fn(&'c Experiment) -> &'c [Arm]) -> Vec<ModelSpec> {
        let mut models: Vec<ModelSpec> = self
            .placements
            .values()
            .map(|p| p.default_model.clone())
            .chain(self.experiments.values().flat_map(|e| arms(e)).map(|a| a.model.clone()))
            .collect();
        models.sort();
        models.dedup();
        models
    }
}

impl Placement {
    /// `B("placement:" + name, user)`: which part of the placement's traffic the user is in.
    pub(crate) fn slice_bucket(&self, user: &str) -> u16 {
        bucket(&self.slice_salt, user)
    }

    /// Experiments on this placement, by id.
    pub fn experiments(&self) -> &[Arc<Experiment>] {
        &self.experiments
    }
}

impl Experiment {
    /// Whether `t` lies inside `[start, end)`.
    pub(crate) fn scheduled_at(&self, t: SystemTime) -> bool {
        self.start.is_none_or(|s| s <= t) && self.end.is_none_or(|e| t < e)
    }

    /// Whether the experiment takes traffic from its slice at `t`: running inside its schedule,
    /// or completed with a winner (which has no schedule left to respect).
    pub fn active_at(&self, t: SystemTime) -> bool {
        match self.status {
            Status::Running => self.scheduled_at(t),
            Status::Completed => self.winner.is_some(),
            Status::Draft | Status::Paused => false,
        }
    }

    /// The arm owning arm bucket `ab`; weights sum to exactly [`BUCKETS`], so one always does.
    pub(crate) fn arm_for_bucket(&self, ab: u16) -> &Arm {
        self.arms
            .iter()
            .find(|arm| arm.buckets.contains(&ab))
            .unwrap_or(&self.arms[self.arms.len() - 1])
    }
}
