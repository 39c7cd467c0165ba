//! The TOML files exactly as product teams write them (ARCHITECTURE.md §3). These structs only
//! parse; [`super::validate`] turns them into the checked, integer form the hot path uses.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::store::{ColumnNames, CovariateColumns};

/// `experiments/placements.toml`: every slot a client app may ask for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PlacementsFile {
    /// Placement name → its settings; a `BTreeMap` keeps listings and errors in a stable order.
    pub(crate) placements: BTreeMap<String, PlacementSpec>,
}

/// One placement as written in `placements.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PlacementSpec {
    /// Served to users no experiment covers, to users missing from their arm's model, and while
    /// an arm's model is not loaded yet.
    pub(crate) default_model: String,
    /// Column-name overrides for the default model when it is not in Spark's default naming.
    #[serde(default)]
    pub(crate) default_columns: ColumnNames,
}

/// `experiments/holdouts.toml`: per placement, users no experiment may cover.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HoldoutsFile {
    /// Placement name → its holdout.
    pub(crate) holdouts: BTreeMap<String, HoldoutSpec>,
}

/// One `[holdouts.<placement>]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HoldoutSpec {
    /// The held-out slice of the placement's users, percent, on the experiments' slice hash.
    pub(crate) traffic: [f64; 2],
    /// Free text for the people reading `/experiments`.
    #[serde(default)]
    pub(crate) description: String,
}

/// Lifecycle of an experiment; only `running` ones take traffic (and `completed` ones that name
/// a winner, which keep serving it to their slice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Written but not started: only override users see it.
    Draft,
    /// Takes its slice of traffic inside its schedule.
    Running,
    /// Stopped for now; its users go back to the placement default.
    Paused,
    /// Finished; with a `winner` its slice keeps being served that arm.
    Completed,
}

impl Status {
    /// The lowercase name used in TOML and in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Draft => "draft",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Completed => "completed",
        }
    }
}

/// How an experiment compares its arms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Users are split between the arms by weight: each user sees one arm's list.
    #[default]
    Split,
    /// Each covered user sees one list merged from both arms' lists by team draft, and the arm
    /// whose items that user clicks more wins the user (`crate::experiment::interleave`).
    Interleave,
}

impl Kind {
    /// The lowercase name used in TOML and in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Split => "split",
            Kind::Interleave => "interleave",
        }
    }
}

/// One `experiments/*.toml` file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExperimentSpec {
    /// Stable identifier used in URLs, metrics and the default salt.
    pub(crate) id: String,
    /// The placement whose users this experiment splits.
    pub(crate) placement: String,
    /// Free text for the people reading `/experiments`.
    #[serde(default)]
    pub(crate) description: String,
    /// Who to ask about this experiment.
    #[serde(default)]
    pub(crate) owner: String,
    /// Split users between the arms, or interleave the two arms' lists for every user.
    #[serde(default)]
    pub(crate) kind: Kind,
    /// Whether it takes traffic now.
    pub(crate) status: Status,
    /// Optional start of the schedule (inclusive).
    pub(crate) start: Option<toml::value::Datetime>,
    /// Optional end of the schedule (exclusive).
    pub(crate) end: Option<toml::value::Datetime>,
    /// Slice of the placement's users, in percent.
    #[serde(default = "full_traffic")]
    pub(crate) traffic: [f64; 2],
    /// Seed of the arm hash; defaults to the id so renaming nothing moves nobody.
    pub(crate) salt: Option<String>,
    /// With `status = "completed"`: the arm the slice keeps being served.
    pub(crate) winner: Option<String>,
    /// The variants, the first being the control.
    pub(crate) arms: Vec<ArmSpec>,
    /// QA users forced into an arm, never counted in results.
    #[serde(default)]
    pub(crate) overrides: BTreeMap<String, String>,
    /// Impressions (both arms of a comparison) at which the analysts expect to decide: the
    /// always-valid interval is tightest, relative to the fixed one, there (default 5000).
    pub(crate) sequential_tuning: Option<f64>,
    /// Limits an arm must keep; one it breaches for `guardrail_window` stops getting users.
    pub(crate) guardrails: Option<GuardrailsSpec>,
    /// How long a limit must be breached before the arm is paused (humantime, default `1m`).
    pub(crate) guardrail_window: Option<String>,
    /// Where each user's pre-period clicks and impressions on the placement are (a model
    /// location), for CUPED: results then also give the comparison adjusted for them.
    pub(crate) covariates: Option<String>,
    /// The covariate table's column names, when not `user`, `clicks`, `impressions`.
    #[serde(default)]
    pub(crate) covariate_columns: CovariateColumns,
}

/// `guardrails = { … }`: what each arm compared with the control must keep.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GuardrailsSpec {
    /// Highest share of an arm's requests whose model read failed (store errors), 0 to 1.
    pub(crate) error_rate: Option<f64>,
    /// Highest 99th percentile of an arm's response time, in milliseconds.
    pub(crate) p99_ms: Option<f64>,
    /// Highest share of an arm's requests served the placement default instead, 0 to 1.
    pub(crate) fallback_rate: Option<f64>,
    /// Largest CTR drop against the control, relative (0.1 = −10%), judged on the always-valid
    /// interval so that looking every second cannot trigger it by chance.
    pub(crate) max_ctr_drop: Option<f64>,
    /// Requests an arm needs in the window before its rates are judged (default 100).
    pub(crate) min_requests: Option<u64>,
}

fn full_traffic() -> [f64; 2] {
    [0.0, 100.0]
}

/// One `[[arms]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ArmSpec {
    /// Name shown in responses, metrics and results.
    pub(crate) name: String,
    /// Share of the experiment's slice, in percent: required by split experiments, refused by
    /// interleave ones (every covered user sees both arms).
    pub(crate) weight: Option<f64>,
    /// Model output path under `models.root`, or a full URI.
    pub(crate) model: String,
    /// Overrides `cache.ttl` for this arm's lists (humantime, e.g. `30m`).
    pub(crate) cache_ttl: Option<String>,
    /// Column names when the model does not use Spark's defaults.
    #[serde(default)]
    pub(crate) columns: ColumnNames,
    /// `false` keeps the model on page reads instead of a serving snapshot.
    pub(crate) snapshot: Option<bool>,
    /// A shadow arm serves nobody: its list is read beside the control's, in the background,
    /// and compared with it (`crate::feedback::lists`), so a model can be judged before any
    /// user sees it.
    #[serde(default)]
    pub(crate) shadow: bool,
    /// Share of the control's responses a shadow arm is compared on (0 to 1, default 0.1).
    pub(crate) shadow_sample: Option<f64>,
}
