//! Turns the parsed TOML of a folder into a [`Catalog`], collecting every problem instead of
//! stopping at the first, so one `recgw validate` run lists everything a team has to fix.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use super::bucket::{BUCKETS, percent_to_bp};
use super::spec::{ArmSpec, ExperimentSpec, GuardrailsSpec, HoldoutsFile, Kind, PlacementsFile, Status};
use super::{
    Arm, Catalog, Experiment, Guardrails, HOLDOUT_ARMS, INTERLEAVED, Placement, Problem, Problems, holdout_id,
    is_valid_user_id,
};
use crate::keys::RESERVED_ARM_NAMES;
use crate::store::{CovariateSpec, ModelSpec};

/// The file naming the placements; every other `*.toml` is one experiment.
pub(crate) const PLACEMENTS_FILE: &str = "placements.toml";

/// The optional file of per-placement holdouts.
pub(crate) const HOLDOUTS_FILE: &str = "holdouts.toml";

/// Weights may be written with float noise (`33.33 + 33.33 + 33.34`); §3 allows ±0.01.
const WEIGHT_SUM_TOLERANCE: f64 = 0.01;

/// Collects problems against one file, so call sites name only the field and the message.
struct FileProblems<'a> {
    file: &'a Path,
    out: &'a mut Vec<Problem>,
}

impl FileProblems<'_> {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.out.push(Problem {
            file: self.file.to_path_buf(),
            line: None,
            field: field.into(),
            message: message.into(),
        });
    }
}

pub(crate) fn load_dir(dir: &Path) -> Result<Catalog, Problems> {
    let mut problems = Vec::new();
    let files = match read_folder(dir) {
        Ok(files) => files,
        Err(problem) => return Err(Problems(vec![problem])),
    };

    let mut digest = Sha256::new();
    for (path, text) in &files {
        let name = path.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default();
        digest.update((name.len() as u64).to_be_bytes());
        digest.update(name);
        digest.update((text.len() as u64).to_be_bytes());
        digest.update(text.as_bytes());
    }
    let digest = digest.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect();

    let placements_path = dir.join(PLACEMENTS_FILE);
    let Some((_, placements_text)) = files.iter().find(|(p, _)| *p == placements_path) else {
        return Err(Problems(vec![Problem {
            file: placements_path,
            line: None,
            field: String::new(),
            message: "missing: every experiments folder needs a placements.toml".into(),
        }]));
    };
    let placements_file = parse::<PlacementsFile>(&placements_path, placements_text, &mut problems);
    // With placements.toml unreadable, "unknown placement" on every experiment would be noise.
    let check_placements = placements_file.is_some();
    let mut placements = placements_file
        .map(|file| build_placements(&placements_path, file, &mut problems))
        .unwrap_or_default();

    let holdouts_path = dir.join(HOLDOUTS_FILE);
    let holdouts = files
        .iter()
        .find(|(p, _)| *p == holdouts_path)
        .and_then(|(path, text)| parse::<HoldoutsFile>(path, text, &mut problems))
        .map(|file| build_holdouts(&holdouts_path, file, &placements, &mut problems))
        .unwrap_or_default();

    let mut experiments: BTreeMap<String, Arc<Experiment>> = BTreeMap::new();
    for (path, text) in files
        .iter()
        .filter(|(p, _)| *p != placements_path && *p != holdouts_path)
    {
        let Some(spec) = parse::<ExperimentSpec>(path, text, &mut problems) else {
            continue;
        };
        let mut out = FileProblems {
            file: path,
            out: &mut problems,
        };
        let Some(experiment) = build_experiment(spec, path, check_placements.then_some(&placements), &mut out) else {
            continue;
        };
        if let Some(first) = experiments.get(&experiment.id) {
            out.push(
                "id",
                format!(
                    "duplicate id {:?}, also used by {}",
                    experiment.id,
                    first.file.display()
                ),
            );
            continue;
        }
        experiments.insert(experiment.id.clone(), Arc::new(experiment));
    }

    check_overlaps(&experiments, &mut problems);
    check_holdouts(&experiments, &holdouts, &mut problems);
    if !problems.is_empty() {
        return Err(Problems(problems));
    }
    for experiment in experiments.values() {
        if let Some(placement) = placements.get_mut(&experiment.placement) {
            placement.experiments.push(Arc::clone(experiment));
        }
    }
    for (name, holdout) in holdouts {
        if let Some(placement) = placements.get_mut(&name) {
            placement.holdout = Some(Arc::clone(&holdout));
        }
        experiments.insert(holdout.id.clone(), holdout);
    }
    Ok(Catalog {
        placements,
        experiments,
        digest,
    })
}

/// Reads every `*.toml` directly in `dir`, sorted by name so digests and messages are stable.
fn read_folder(dir: &Path) -> Result<Vec<(PathBuf, String)>, Problem> {
    let folder_problem = |message: String| Problem {
        file: dir.to_path_buf(),
        line: None,
        field: String::new(),
        message,
    };
    let entries = std::fs::read_dir(dir).map_err(|e| folder_problem(format!("cannot read folder: {e}")))?;
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| folder_problem(format!("cannot list folder: {e}")))?
            .path();
        if path.extension().is_some_and(|ext| ext == "toml") && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|path| match std::fs::read_to_string(&path) {
            Ok(text) => Ok((path, text)),
            Err(e) => Err(Problem {
                file: path,
                line: None,
                field: String::new(),
                message: format!("cannot read: {e}"),
            }),
        })
        .collect()
}

/// Parses one file. The parser's byte span becomes the line, and the path of keys down to the
/// value (`arms[1].weight`, or an unknown key's own path) the field; a syntax error has a line
/// but no field.
fn parse<T: serde::de::DeserializeOwned>(path: &Path, text: &str, problems: &mut Vec<Problem>) -> Option<T> {
    let (error, field) = match toml::Deserializer::parse(text) {
        Err(e) => (e, String::new()),
        Ok(document) => match serde_path_to_error::deserialize::<_, T>(document) {
            Ok(value) => return Some(value),
            Err(e) => {
                let field = e.path().to_string();
                (e.into_inner(), field)
            }
        },
    };
    let span = error
        .span()
        .filter(|span| span.end <= text.len() && span.start <= span.end);
    let line = span.as_ref().map(|span| text[..span.start].matches('\n').count() + 1);
    // `.` is the document itself (e.g. a missing top-level key, which the message names).
    let field = if field == "." { String::new() } else { field };
    problems.push(Problem {
        file: path.to_path_buf(),
        line,
        field,
        message: error.message().trim_end().to_string(),
    });
    None
}

/// Names of experiments, arms and placements: safe in URLs, metric labels and cache keys.
fn is_valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

const NAME_RULE: &str = "use 1-64 characters from [a-z0-9_-]";

fn build_placements(path: &Path, file: PlacementsFile, problems: &mut Vec<Problem>) -> BTreeMap<String, Placement> {
    let mut out = FileProblems {
        file: path,
        out: problems,
    };
    let mut placements = BTreeMap::new();
    for (name, spec) in file.placements {
        let field = format!("placements.{name}");
        if !is_valid_name(&name) {
            out.push(&field, format!("invalid placement name {name:?}: {NAME_RULE}"));
            continue;
        }
        if spec.default_model.trim().is_empty() {
            out.push(format!("{field}.default_model"), "must name a model");
            continue;
        }
        let placement = Placement {
            slice_salt: format!("placement:{name}"),
            name: name.clone(),
            default_model: ModelSpec::new(spec.default_model, spec.default_columns),
            experiments: Vec::new(),
            holdout: None,
        };
        placements.insert(name, placement);
    }
    if placements.is_empty() && out.out.is_empty() {
        out.push("placements", "declares no placement");
    }
    placements
}

fn build_experiment(
    spec: ExperimentSpec,
    path: &Path,
    placements: Option<&BTreeMap<String, Placement>>,
    out: &mut FileProblems<'_>,
) -> Option<Experiment> {
    let before = out.out.len();
    if !is_valid_name(&spec.id) || spec.id.contains('_') {
        out.push(
            "id",
            format!("invalid id {:?}: use 1-64 characters from [a-z0-9-]", spec.id),
        );
    }
    if let Some(placements) = placements
        && !placements.contains_key(&spec.placement)
    {
        let known: Vec<&str> = placements.keys().map(String::as_str).collect();
        out.push(
            "placement",
            format!(
                "unknown placement {:?}; placements.toml declares {known:?}",
                spec.placement
            ),
        );
    }
    let start = spec.start.as_ref().and_then(|dt| to_system_time(dt, "start", out));
    let end = spec.end.as_ref().and_then(|dt| to_system_time(dt, "end", out));
    if let (Some(s), Some(e)) = (start, end)
        && e <= s
    {
        out.push("end", "must be after start");
    }

    let slice = slice(spec.traffic, out);

    let salt = spec.salt.unwrap_or_else(|| spec.id.clone());
    if salt.is_empty() {
        out.push("salt", "must not be empty (leave it out to use the id)");
    }
    let arms = build_arms(&spec.arms, spec.kind, out);

    let arm_index = |name: &str| arms.iter().position(|a| a.name == name);
    let winner = match (&spec.winner, spec.status) {
        (None, _) => None,
        (Some(name), Status::Completed) => {
            let index = arm_index(name);
            match index.map(|i| &arms[i]) {
                None => out.push("winner", format!("names no arm: {name:?}")),
                Some(arm) if arm.shadow.is_some() => {
                    out.push("winner", format!("{name:?} is a shadow arm, which serves nobody"))
                }
                Some(_) => {}
            }
            index
        }
        (Some(_), status) => {
            out.push(
                "winner",
                format!(
                    "only a completed experiment has a winner (status is {:?})",
                    status.as_str()
                ),
            );
            None
        }
    };

    let mut overrides = BTreeMap::new();
    for (user, arm) in &spec.overrides {
        let field = format!("overrides.{user:?}");
        if !is_valid_user_id(user) {
            out.push(
                &field,
                "is not a valid user id (1-128 characters from [A-Za-z0-9._:@-])",
            );
        }
        match arm_index(arm) {
            Some(index) if arms[index].shadow.is_some() => {
                out.push(&field, format!("{arm:?} is a shadow arm, which serves nobody"));
            }
            Some(index) => {
                overrides.insert(user.clone(), index);
            }
            None => out.push(&field, format!("names no arm: {arm:?}")),
        }
    }

    let sequential_tuning = spec.sequential_tuning.unwrap_or(super::DEFAULT_SEQUENTIAL_TUNING);
    if !(sequential_tuning.is_finite() && sequential_tuning >= 1.0) {
        out.push(
            "sequential_tuning",
            format!("{sequential_tuning} must be at least 1: the users (both arms) at which you expect to decide"),
        );
    }

    let guardrails = guardrails(
        spec.guardrails.as_ref(),
        spec.guardrail_window.as_deref(),
        spec.kind,
        out,
    );

    let covariates = match (spec.covariates, spec.kind) {
        (None, _) => None,
        (Some(_), Kind::Interleave) => {
            out.push(
                "covariates",
                "only a split experiment is adjusted by covariates: interleaved arms serve the same users",
            );
            None
        }
        (Some(location), Kind::Split) if location.trim().is_empty() => {
            out.push("covariates", "must name a table's location (or be left out)");
            None
        }
        (Some(location), Kind::Split) => Some(CovariateSpec {
            location,
            columns: spec.covariate_columns,
        }),
    };

    if out.out.len() > before {
        return None;
    }
    Some(Experiment {
        id: spec.id,
        placement: spec.placement,
        description: spec.description,
        owner: spec.owner,
        status: spec.status,
        start,
        end,
        slice,
        salt,
        kind: spec.kind,
        winner,
        arms,
        overrides,
        sequential_tuning,
        guardrails,
        covariates,
        file: path.to_path_buf(),
    })
}

/// The basis points of a `traffic = [lo, hi]` slice in percent, checked.
fn slice([lo, hi]: [f64; 2], out: &mut FileProblems<'_>) -> Range<u16> {
    if !(0.0..=100.0).contains(&lo) || !(0.0..=100.0).contains(&hi) {
        out.push("traffic", format!("[{lo}, {hi}] must lie inside [0, 100]"));
        return 0..0;
    }
    if percent_to_bp(lo) >= percent_to_bp(hi) {
        out.push(
            "traffic",
            format!("[{lo}, {hi}] is empty: the lower bound must be below the upper"),
        );
    }
    percent_to_bp(lo)..percent_to_bp(hi)
}

/// The holdouts of `holdouts.toml`, each as the experiment that counts it (see
/// [`Placement::holdout`]), by placement.
fn build_holdouts(
    path: &Path,
    file: HoldoutsFile,
    placements: &BTreeMap<String, Placement>,
    problems: &mut Vec<Problem>,
) -> BTreeMap<String, Arc<Experiment>> {
    let mut out = FileProblems {
        file: path,
        out: problems,
    };
    let mut holdouts = BTreeMap::new();
    for (name, spec) in file.holdouts {
        let Some(placement) = placements.get(&name) else {
            let known: Vec<&str> = placements.keys().map(String::as_str).collect();
            out.push(
                format!("holdouts.{name}"),
                format!("unknown placement {name:?}; placements.toml declares {known:?}"),
            );
            continue;
        };
        let before = out.out.len();
        let slice = slice(spec.traffic, &mut out);
        for problem in &mut out.out[before..] {
            problem.field = format!("holdouts.{name}.traffic");
        }
        if out.out.len() > before {
            continue;
        }
        let width = slice.end - slice.start;
        let arm = |i: usize, buckets: Range<u16>| Arm {
            name: HOLDOUT_ARMS[i].to_string(),
            weight_bp: buckets.end - buckets.start,
            buckets,
            model: placement.default_model.clone(),
            cache_ttl: None,
            shadow: None,
        };
        let holdout = Experiment {
            id: holdout_id(&name),
            placement: name.clone(),
            description: match spec.description.as_str() {
                "" => format!("users held out of every experiment on {name}, against everyone else there"),
                text => text.to_string(),
            },
            owner: String::new(),
            status: Status::Running,
            start: None,
            end: None,
            // Its arms split the placement hash itself: `holdout` owns the slice, `exposed` the
            // rest (the last arm takes what no range holds).
            salt: placement.slice_salt.clone(),
            slice: slice.clone(),
            kind: Kind::Split,
            winner: None,
            arms: vec![arm(0, slice.clone()), arm(1, slice.end..slice.end + (BUCKETS - width))],
            overrides: BTreeMap::new(),
            sequential_tuning: super::DEFAULT_SEQUENTIAL_TUNING,
            guardrails: None,
            covariates: None,
            file: path.to_path_buf(),
        };
        holdouts.insert(name, Arc::new(holdout));
    }
    holdouts
}

/// An experiment whose slice meets its placement's holdout is refused, whatever its status:
/// the holdout promises its users never see one.
fn check_holdouts(
    experiments: &BTreeMap<String, Arc<Experiment>>,
    holdouts: &BTreeMap<String, Arc<Experiment>>,
    problems: &mut Vec<Problem>,
) {
    for experiment in experiments.values() {
        let Some(holdout) = holdouts.get(&experiment.placement) else {
            continue;
        };
        if experiment.slice.start < holdout.slice.end && holdout.slice.start < experiment.slice.end {
            problems.push(Problem {
                file: experiment.file.clone(),
                line: None,
                field: "traffic".into(),
                message: format!(
                    "slice [{}, {}) bp overlaps the holdout [{}, {}) bp of placement {:?} ({}), whose users no experiment may cover",
                    experiment.slice.start,
                    experiment.slice.end,
                    holdout.slice.start,
                    holdout.slice.end,
                    experiment.placement,
                    holdout.file.display()
                ),
            });
        }
    }
}

/// Default `guardrail_window`.
const DEFAULT_GUARDRAIL_WINDOW: Duration = Duration::from_secs(60);

/// Default `guardrails.min_requests`.
const DEFAULT_GUARDRAIL_MIN_REQUESTS: u64 = 100;

/// Checks `guardrails` and `guardrail_window`.
fn guardrails(
    spec: Option<&GuardrailsSpec>,
    window: Option<&str>,
    kind: Kind,
    out: &mut FileProblems<'_>,
) -> Option<Guardrails> {
    let Some(spec) = spec else {
        if window.is_some() {
            out.push("guardrail_window", "is only used with guardrails");
        }
        return None;
    };
    if kind == Kind::Interleave {
        out.push(
            "guardrails",
            "pause an arm, but every user of an interleave experiment sees both arms",
        );
    }
    let share = |value: Option<f64>, name: &str, out: &mut FileProblems<'_>| {
        if let Some(v) = value
            && !(v > 0.0 && v <= 1.0)
        {
            out.push(
                format!("guardrails.{name}"),
                format!("{v} must be above 0 and at most 1"),
            );
        }
        value
    };
    let error_rate = share(spec.error_rate, "error_rate", out);
    let fallback_rate = share(spec.fallback_rate, "fallback_rate", out);
    let max_ctr_drop = share(spec.max_ctr_drop, "max_ctr_drop", out);
    let p99 = spec.p99_ms.and_then(|ms| {
        if ms.is_finite() && ms > 0.0 {
            Some(Duration::from_secs_f64(ms / 1000.0))
        } else {
            out.push(
                "guardrails.p99_ms",
                format!("{ms} must be a positive number of milliseconds"),
            );
            None
        }
    });
    if [spec.error_rate, spec.p99_ms, spec.fallback_rate, spec.max_ctr_drop]
        .iter()
        .all(Option::is_none)
    {
        out.push(
            "guardrails",
            "names no limit: give error_rate, p99_ms, fallback_rate or max_ctr_drop",
        );
    }
    let min_requests = spec.min_requests.unwrap_or(DEFAULT_GUARDRAIL_MIN_REQUESTS);
    if min_requests == 0 {
        out.push("guardrails.min_requests", "must be at least 1");
    }
    let window = match window.map(parse_duration) {
        None => DEFAULT_GUARDRAIL_WINDOW,
        Some(Ok(window)) if window >= Duration::from_secs(1) => window,
        Some(Ok(window)) => {
            out.push(
                "guardrail_window",
                format!("{window:?} is shorter than the 1s guardrails are checked at"),
            );
            window
        }
        Some(Err(message)) => {
            out.push("guardrail_window", message);
            DEFAULT_GUARDRAIL_WINDOW
        }
    };
    Some(Guardrails {
        error_rate,
        p99,
        fallback_rate,
        max_ctr_drop,
        min_requests,
        window,
    })
}

fn build_arms(specs: &[ArmSpec], kind: Kind, out: &mut FileProblems<'_>) -> Vec<Arm> {
    match kind {
        Kind::Split if specs.len() < 2 => out.push(
            "arms",
            format!("an experiment needs at least two arms, found {}", specs.len()),
        ),
        Kind::Interleave if specs.len() != 2 => out.push(
            "arms",
            format!(
                "an interleave experiment merges exactly two arms' lists, found {} arms",
                specs.len()
            ),
        ),
        _ => {}
    }
    let mut arms: Vec<Arm> = Vec::with_capacity(specs.len());
    let mut next_bucket: u32 = 0;
    for (i, spec) in specs.iter().enumerate() {
        let field = |name: &str| format!("arms[{i}].{name}");
        if !is_valid_name(&spec.name) {
            out.push(field("name"), format!("invalid arm name {:?}: {NAME_RULE}", spec.name));
        } else if matches!(spec.name.as_str(), "default" | INTERLEAVED) {
            out.push(
                field("name"),
                format!("{:?} is reserved for what the gateway itself serves", spec.name),
            );
        } else if RESERVED_ARM_NAMES.contains(&spec.name.as_str()) {
            out.push(
                field("name"),
                format!(
                    "{:?} is reserved: the results keep keys of their own under it ({})",
                    spec.name,
                    RESERVED_ARM_NAMES.join(", ")
                ),
            );
        } else if arms.iter().any(|a| a.name == spec.name) {
            out.push(field("name"), format!("duplicate arm name {:?}", spec.name));
        }
        let shadow = shadow_share(spec, i, kind, &field, out);
        let weight_bp = match (kind, spec.weight) {
            (Kind::Split, _) if spec.shadow => {
                if spec.weight.is_some() {
                    out.push(
                        field("weight"),
                        "a shadow arm serves nobody, so it has no weight: remove it",
                    );
                }
                0
            }
            (Kind::Split, None) => {
                out.push(field("weight"), "is required: the arm's share of the slice, in percent");
                0
            }
            (Kind::Split, Some(weight)) => split_weight(weight, &field("weight"), out),
            (Kind::Interleave, Some(_)) => {
                out.push(
                    field("weight"),
                    "is not used by an interleave experiment, whose users all see both arms: remove it",
                );
                0
            }
            (Kind::Interleave, None) => 0,
        };
        if spec.model.trim().is_empty() {
            out.push(field("model"), "must name a model");
        }
        let cache_ttl = spec.cache_ttl.as_deref().and_then(|text| {
            parse_duration(text)
                .map_err(|message| out.push(field("cache_ttl"), message))
                .ok()
        });
        let lo = next_bucket.min(u32::from(BUCKETS)) as u16;
        next_bucket += u32::from(weight_bp);
        arms.push(Arm {
            name: spec.name.clone(),
            weight_bp,
            buckets: lo..next_bucket.min(u32::from(BUCKETS)) as u16,
            model: ModelSpec {
                snapshot: spec.snapshot.unwrap_or(true),
                ..ModelSpec::new(spec.model.clone(), spec.columns.clone())
            },
            cache_ttl,
            shadow,
        });
    }
    if kind == Kind::Split {
        let sum: f64 = specs.iter().filter(|a| !a.shadow).filter_map(|a| a.weight).sum();
        if (sum - 100.0).abs() > WEIGHT_SUM_TOLERANCE {
            out.push("arms", format!("weights sum to {sum}, they must sum to 100"));
        } else if next_bucket != u32::from(BUCKETS) {
            out.push(
                "arms",
                format!(
                    "weights round to {next_bucket} basis points, not {BUCKETS}: write them with at most two decimals"
                ),
            );
        }
    }
    arms
}

/// The comparison share of a shadow arm (`None` for an arm that serves), with its problems:
/// the control serves, so it cannot be a shadow; an interleave experiment's two arms both serve.
fn shadow_share(
    spec: &ArmSpec,
    index: usize,
    kind: Kind,
    field: &impl Fn(&str) -> String,
    out: &mut FileProblems<'_>,
) -> Option<f64> {
    if !spec.shadow {
        if spec.shadow_sample.is_some() {
            out.push(field("shadow_sample"), "only a shadow arm (shadow = true) is sampled");
        }
        return None;
    }
    if index == 0 {
        out.push(
            field("shadow"),
            "the first arm is the control, which serves: it cannot be a shadow",
        );
    }
    if kind == Kind::Interleave {
        out.push(
            field("shadow"),
            "an interleave experiment's arms both serve: neither can be a shadow",
        );
    }
    let share = spec.shadow_sample.unwrap_or(DEFAULT_SHADOW_SAMPLE);
    if !(share > 0.0 && share <= 1.0) {
        out.push(field("shadow_sample"), format!("{share} must be above 0 and at most 1"));
    }
    Some(share)
}

/// Share of the control's responses a shadow arm is compared on when the file does not say.
const DEFAULT_SHADOW_SAMPLE: f64 = 0.1;

/// A split arm's weight in basis points, with its problems reported under `field`.
fn split_weight(weight: f64, field: &str, out: &mut FileProblems<'_>) -> u16 {
    if !(weight > 0.0 && weight <= 100.0) {
        out.push(field, format!("{weight} must be above 0 and at most 100"));
    }
    let weight_bp = percent_to_bp(weight);
    if weight > 0.0 && weight_bp == 0 {
        out.push(
            field,
            format!("{weight} rounds to 0 basis points: the arm would get no users"),
        );
    }
    weight_bp
}

/// Parses a humantime duration (`30m`, `1h`), naming the accepted form when it fails.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{text:?} is not a duration like 30m or 1h: {e}"))
}

/// Converts a TOML offset date-time to a `SystemTime`; local times and bare dates are refused
/// because replicas in different zones would start the experiment at different instants.
fn to_system_time(dt: &toml::value::Datetime, field: &str, out: &mut FileProblems<'_>) -> Option<SystemTime> {
    let (Some(date), Some(time), Some(offset)) = (dt.date, dt.time, dt.offset) else {
        out.push(
            field,
            format!("{dt} needs a date, a time and an offset, e.g. 2026-11-01T00:00:00Z"),
        );
        return None;
    };
    let offset_minutes = match offset {
        toml::value::Offset::Z => 0,
        toml::value::Offset::Custom { minutes } => i64::from(minutes),
    };
    let days = crate::calendar::days_from_civil(i64::from(date.year), i64::from(date.month), i64::from(date.day));
    let seconds = days * 86_400
        + i64::from(time.hour) * 3_600
        + i64::from(time.minute) * 60
        + i64::from(time.second.unwrap_or(0))
        - offset_minutes * 60;
    let nanos = time.nanosecond.unwrap_or(0);
    match u64::try_from(seconds) {
        Ok(secs) => Some(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos)),
        Err(_) => {
            out.push(field, format!("{dt} is before 1970"));
            None
        }
    }
}

/// Two experiments that take traffic on one placement must own disjoint slices while their
/// schedules overlap, or a user would be in both.
fn check_overlaps(experiments: &BTreeMap<String, Arc<Experiment>>, problems: &mut Vec<Problem>) {
    let takes_traffic =
        |e: &Experiment| e.status == Status::Running || (e.status == Status::Completed && e.winner.is_some());
    let live: Vec<&Arc<Experiment>> = experiments.values().filter(|e| takes_traffic(e)).collect();
    for (i, a) in live.iter().enumerate() {
        for b in &live[i + 1..] {
            let slices_meet = a.slice.start < b.slice.end && b.slice.start < a.slice.end;
            if a.placement != b.placement || !slices_meet || !schedules_meet(a, b) {
                continue;
            }
            problems.push(Problem {
                file: b.file.clone(),
                line: None,
                field: "traffic".into(),
                message: format!(
                    "slice [{}, {}) bp overlaps [{}, {}) bp of {:?} ({}) on placement {:?}",
                    b.slice.start,
                    b.slice.end,
                    a.slice.start,
                    a.slice.end,
                    a.id,
                    a.file.display(),
                    a.placement
                ),
            });
        }
    }
}

/// Whether two schedules share an instant; a completed winner is served for good.
fn schedules_meet(a: &Experiment, b: &Experiment) -> bool {
    let window = |e: &Experiment| match e.status {
        Status::Completed => (None, None),
        _ => (e.start, e.end),
    };
    let (a_start, a_end) = window(a);
    let (b_start, b_end) = window(b);
    let a_before_b = matches!((a_end, b_start), (Some(end), Some(start)) if end <= start);
    let b_before_a = matches!((b_end, a_start), (Some(end), Some(start)) if end <= start);
    !a_before_b && !b_before_a
}
