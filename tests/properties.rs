//! Property tests (proptest) over the parsers that take bad input from outside: experiment TOML
//! folders, user ids, tracking tokens, and the `POST /events` body and
//! `GET /recommendations/{user}` path and query over real HTTP.
//!
//! Every expectation is written here from ARCHITECTURE.md (§3, §3.1, §5) and the tracking-token
//! format, never computed by the code under test. Case counts are kept small so the file runs
//! in seconds in debug; raise them for a longer hunt with `PROPTEST_CASES=5000` (which applies
//! to every property here). A failing case is shrunk and saved under `tests/properties.proptest-regressions`.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::examples::{EXPERIMENT, PLACEMENTS};
use common::gateway::{Reply, TestGateway};
use proptest::prelude::*;
use proptest::sample::Index;
use recgw::experiment::{BUCKETS, Catalog, Problem, is_valid_user_id};
use recgw::feedback::token::{Claims, Signer, Teams, TokenError};
use serde_json::{Map, Value, json};
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------------
// Experiment folders
// ---------------------------------------------------------------------------------------------

/// A second valid experiment on `home`, on the other half of its users.
const SECOND: &str = r#"id = "home-second"
placement = "home"
status = "running"
traffic = [50.0, 100.0]

[[arms]]
name = "a"
weight = 25.5
model = "m-a"

[[arms]]
name = "b"
weight = 74.5
model = "m-b"
"#;

/// A folder holding `files`, written as given.
fn folder(files: &[(&str, &[u8])]) -> TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes).expect("write");
    }
    dir
}

/// Loads `dir`; on rejection checks what every problem must carry (ARCHITECTURE.md §3: file, line
/// where the parser gives one, field) and returns the problems.
///
/// A problem must name one of `files` (the folder's own files, not something else), carry a
/// non-empty message, and locate itself: a non-empty field or a line. The one exception is a
/// file that is not UTF-8 at all, which is refused whole ("cannot read") before any parser sees
/// it; `non_utf8` names the files for which that is allowed.
fn check_load(dir: &Path, files: &[&str], non_utf8: &[&str]) -> Result<Catalog, Vec<Problem>> {
    let problems = match Catalog::load_dir(dir) {
        Ok(catalog) => return Ok(catalog),
        Err(problems) => problems.0,
    };
    assert!(!problems.is_empty(), "a rejection lists at least one problem");
    let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
    for problem in &problems {
        assert!(
            paths.contains(&problem.file),
            "problem names a file of the folder: {problem} (files {files:?})"
        );
        assert!(!problem.message.trim().is_empty(), "problem has a message: {problem:?}");
        let whole_file = non_utf8.iter().any(|f| dir.join(f) == problem.file) && problem.message.contains("UTF-8");
        assert!(
            !problem.field.is_empty() || problem.line.is_some() || whole_file,
            "problem names neither a field nor a line: {problem:?}"
        );
        if let Some(line) = problem.line {
            let text = std::fs::read_to_string(&problem.file).unwrap_or_default();
            assert!(
                line >= 1 && line <= text.lines().count().max(1) + 1,
                "line {line} lies inside the file ({} lines): {problem}",
                text.lines().count()
            );
        }
        let shown = problem.to_string();
        assert!(
            shown.contains(&problem.file.display().to_string()),
            "Display names the file: {shown}"
        );
        if !problem.field.is_empty() {
            assert!(shown.contains(&problem.field), "Display names the field: {shown}");
        }
    }
    Err(problems)
}

/// What any accepted catalog must hold, from ARCHITECTURE.md §3 and §3.1.
fn check_catalog(catalog: &Catalog) {
    for experiment in catalog.experiments() {
        assert!(experiment.arms.len() >= 2, "{}: at least two arms", experiment.id);
        assert!(
            catalog.placement(&experiment.placement).is_some(),
            "{}: its placement exists",
            experiment.id
        );
        assert!(
            experiment.slice.start < experiment.slice.end && experiment.slice.end <= BUCKETS,
            "{}: slice {:?} inside [0, 10000) and not empty",
            experiment.id,
            experiment.slice
        );
        let mut next = 0u16;
        for arm in &experiment.arms {
            assert_eq!(arm.buckets.start, next, "{}: arms tile the buckets", experiment.id);
            assert_eq!(arm.buckets.end - arm.buckets.start, arm.weight_bp, "{}", experiment.id);
            assert!(arm.weight_bp > 0, "{}: no empty arm", experiment.id);
            next = arm.buckets.end;
        }
        assert_eq!(next, BUCKETS, "{}: weights sum to 100%", experiment.id);
        let names: BTreeSet<&str> = experiment.arms.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(
            names.len(),
            experiment.arms.len(),
            "{}: arm names are unique",
            experiment.id
        );
        if let (Some(start), Some(end)) = (experiment.start, experiment.end) {
            assert!(start < end, "{}: end after start", experiment.id);
        }
        for (user, arm) in &experiment.overrides {
            assert!(
                *arm < experiment.arms.len() && expected_user_id_rule(user),
                "{}: override {user:?}",
                experiment.id
            );
        }
    }
}

/// One step of a walk into a TOML tree.
#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Idx(usize),
}

/// Every path to a value in `value` (not the root itself), depth first.
fn paths(value: &toml::Value, prefix: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    match value {
        toml::Value::Table(table) => {
            for (key, child) in table {
                prefix.push(Seg::Key(key.clone()));
                out.push(prefix.clone());
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        toml::Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                prefix.push(Seg::Idx(i));
                out.push(prefix.clone());
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn get<'a>(value: &'a toml::Value, path: &[Seg]) -> Option<&'a toml::Value> {
    path.iter().try_fold(value, |value, seg| match (seg, value) {
        (Seg::Key(key), toml::Value::Table(table)) => table.get(key),
        (Seg::Idx(i), toml::Value::Array(items)) => items.get(*i),
        _ => None,
    })
}

fn get_mut<'a>(value: &'a mut toml::Value, path: &[Seg]) -> Option<&'a mut toml::Value> {
    path.iter().try_fold(value, |value, seg| match (seg, value) {
        (Seg::Key(key), toml::Value::Table(table)) => table.get_mut(key),
        (Seg::Idx(i), toml::Value::Array(items)) => items.get_mut(*i),
        _ => None,
    })
}

/// Removes the value at `path` (a key from its table, an element from its array).
fn remove(root: &mut toml::Value, path: &[Seg]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    match (last, get_mut(root, parent)) {
        (Seg::Key(key), Some(toml::Value::Table(table))) => {
            table.remove(key);
        }
        (Seg::Idx(i), Some(toml::Value::Array(items))) if *i < items.len() => {
            items.remove(*i);
        }
        _ => {}
    }
}

/// The path chosen by `index` among all paths of `root`, if it has any.
fn pick(root: &toml::Value, index: &Index) -> Option<Vec<Seg>> {
    let mut all = Vec::new();
    paths(root, &mut Vec::new(), &mut all);
    (!all.is_empty()).then(|| all[index.index(all.len())].clone())
}

/// The tables of `root` (itself included), for adding keys to.
fn tables(root: &toml::Value) -> Vec<Vec<Seg>> {
    let mut all = vec![Vec::new()];
    paths(root, &mut Vec::new(), &mut all);
    all.retain(|path| matches!(get(root, path), Some(toml::Value::Table(_))));
    all
}

/// A change to a valid experiment file.
#[derive(Debug, Clone)]
enum Mutation {
    /// Remove a key or an array element anywhere.
    Drop(Index),
    /// Replace any value with another of a random type.
    Set(Index, toml::Value),
    /// Add a key (usually unknown) to any table.
    AddKey(Index, String, toml::Value),
    /// Append a copy of an arm (same name).
    DuplicateArm(Index),
    /// Keep only the first `n` arms.
    TruncateArms(usize),
    /// New weights for the first arms.
    Weights(Vec<f64>),
    /// New `start` and `end` (removed when `None`).
    Dates(Option<toml::Value>, Option<toml::Value>),
    /// New `traffic`.
    Traffic(toml::Value),
    /// New `status`.
    Status(String),
    /// A `winner`.
    Winner(String),
    /// An override `user` → `arm`.
    Override(String, String),
}

/// A change to the file's text after the mutations, for syntax errors.
#[derive(Debug, Clone)]
enum TextEdit {
    None,
    /// Delete a line.
    DeleteLine(Index),
    /// Repeat a line (a duplicate key, a duplicate table header).
    DuplicateLine(Index),
    /// Insert text at a character position.
    Insert(Index, String),
    /// Cut the file at a character position.
    Truncate(Index),
}

fn apply(root: &mut toml::Value, mutation: &Mutation) {
    match mutation {
        Mutation::Drop(index) => {
            if let Some(path) = pick(root, index) {
                remove(root, &path);
            }
            return;
        }
        Mutation::Set(index, value) => {
            if let Some(path) = pick(root, index)
                && let Some(slot) = get_mut(root, &path)
            {
                *slot = value.clone();
            }
            return;
        }
        Mutation::AddKey(index, key, value) => {
            let all = tables(root);
            let path = &all[index.index(all.len())];
            if let Some(toml::Value::Table(table)) = get_mut(root, path) {
                table.insert(key.clone(), value.clone());
            }
            return;
        }
        _ => {}
    }
    let toml::Value::Table(top) = root else {
        return;
    };
    match mutation {
        Mutation::Drop(_) | Mutation::Set(..) | Mutation::AddKey(..) => {}
        Mutation::DuplicateArm(index) => {
            if let Some(toml::Value::Array(arms)) = top.get_mut("arms")
                && !arms.is_empty()
            {
                let arm = arms[index.index(arms.len())].clone();
                arms.push(arm);
            }
        }
        Mutation::TruncateArms(n) => {
            if let Some(toml::Value::Array(arms)) = top.get_mut("arms") {
                arms.truncate(*n);
            }
        }
        Mutation::Weights(weights) => {
            if let Some(toml::Value::Array(arms)) = top.get_mut("arms") {
                for (arm, weight) in arms.iter_mut().zip(weights) {
                    if let toml::Value::Table(arm) = arm {
                        arm.insert("weight".into(), toml::Value::Float(*weight));
                    }
                }
            }
        }
        Mutation::Dates(start, end) => {
            for (key, value) in [("start", start), ("end", end)] {
                match value {
                    Some(value) => top.insert(key.into(), value.clone()),
                    None => top.remove(key),
                };
            }
        }
        Mutation::Traffic(value) => {
            top.insert("traffic".into(), value.clone());
        }
        Mutation::Status(status) => {
            top.insert("status".into(), toml::Value::String(status.clone()));
        }
        Mutation::Winner(winner) => {
            top.insert("winner".into(), toml::Value::String(winner.clone()));
        }
        Mutation::Override(user, arm) => {
            let overrides = top
                .entry("overrides")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(overrides) = overrides {
                overrides.insert(user.clone(), toml::Value::String(arm.clone()));
            }
        }
    }
}

/// The character boundary of `text` chosen by `index` (0..=len in characters).
fn char_boundary(text: &str, index: &Index) -> usize {
    let boundaries: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
    boundaries[index.index(boundaries.len())]
}

fn edit_text(text: &str, edit: &TextEdit) -> String {
    let lines: Vec<&str> = text.lines().collect();
    match edit {
        TextEdit::None => text.to_string(),
        TextEdit::DeleteLine(i) if !lines.is_empty() => {
            let at = i.index(lines.len());
            let kept: Vec<&str> = lines
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != at)
                .map(|(_, l)| *l)
                .collect();
            kept.join("\n") + "\n"
        }
        TextEdit::DuplicateLine(i) if !lines.is_empty() => {
            let at = i.index(lines.len());
            let mut out: Vec<&str> = lines.clone();
            out.insert(at, lines[at]);
            out.join("\n") + "\n"
        }
        TextEdit::Insert(i, s) => {
            let at = char_boundary(text, i);
            format!("{}{s}{}", &text[..at], &text[at..])
        }
        TextEdit::Truncate(i) => text[..char_boundary(text, i)].to_string(),
        _ => text.to_string(),
    }
}

/// Datetimes as TOML writes them: with and without offset, bare dates and times, before 1970,
/// far in the future.
fn datetime() -> impl Strategy<Value = toml::Value> {
    (
        0u16..=9999,
        1u8..=12,
        1u8..=28,
        0u8..=23,
        0u8..=59,
        0u8..=59,
        prop_oneof!["Z", "", "[+-](0[0-9]|1[0-9]|2[0-3]):[0-5][0-9]"],
        0u8..4,
    )
        .prop_filter_map("a datetime TOML accepts", |(y, mo, d, h, mi, s, offset, shape)| {
            let text = match shape {
                0 => format!("{y:04}-{mo:02}-{d:02}"),
                1 => format!("{h:02}:{mi:02}:{s:02}"),
                _ => format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{offset}"),
            };
            text.parse::<toml::value::Datetime>().ok().map(toml::Value::Datetime)
        })
}

/// Floats a percentage field may be given: valid ones, edges, and anything at all.
fn percent() -> impl Strategy<Value = f64> {
    prop_oneof![
        (0u32..=10_000).prop_map(|bp| f64::from(bp) / 100.0),
        any::<f64>(),
        prop::sample::select(vec![
            -1.0,
            -0.0,
            0.0,
            0.004,
            0.005,
            33.33,
            33.333,
            99.995,
            100.0,
            100.004,
            100.01,
            1e300,
            f64::MAX,
            f64::MIN_POSITIVE,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ]),
    ]
}

/// Names that pass or nearly pass the name rules (`[a-z0-9_-]{1,64}`).
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9-]{1,12}",
        "[a-z0-9_-]{0,70}",
        Just("default".to_string()),
        Just("control".to_string()),
        Just("treatment".to_string()),
        any::<String>(),
    ]
}

/// Any TOML value, scalars biased to the edges the validator checks.
fn toml_value() -> impl Strategy<Value = toml::Value> {
    let leaf = prop_oneof![
        name().prop_map(toml::Value::String),
        any::<i64>().prop_map(toml::Value::Integer),
        (-1000i64..=1000).prop_map(toml::Value::Integer),
        percent().prop_map(toml::Value::Float),
        any::<bool>().prop_map(toml::Value::Boolean),
        datetime(),
        prop::sample::select(vec!["30m", "1h", "0s", "", "soon", "-5m", "1000000000000h"])
            .prop_map(|s| toml::Value::String(s.into())),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(toml::Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..3)
                .prop_map(|m| toml::Value::Table(m.into_iter().collect())),
        ]
    })
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let key = prop_oneof![
        "[a-z_]{1,10}",
        Just("weight".to_string()),
        Just("columns".to_string()),
        Just("cache_ttl".to_string()),
        Just("winner".to_string()),
        any::<String>(),
    ];
    let user = prop_oneof!["[A-Za-z0-9._:@-]{1,10}", any::<String>(), "[A-Za-z0-9._:@-]{129,130}"];
    prop_oneof![
        any::<Index>().prop_map(Mutation::Drop),
        (any::<Index>(), toml_value()).prop_map(|(i, v)| Mutation::Set(i, v)),
        (any::<Index>(), key, toml_value()).prop_map(|(i, k, v)| Mutation::AddKey(i, k, v)),
        any::<Index>().prop_map(Mutation::DuplicateArm),
        (0usize..3).prop_map(Mutation::TruncateArms),
        prop::collection::vec(percent(), 0..5).prop_map(Mutation::Weights),
        (prop::option::of(datetime()), prop::option::of(datetime())).prop_map(|(s, e)| Mutation::Dates(s, e)),
        prop_oneof![
            (percent(), percent()).prop_map(|(lo, hi)| toml::Value::Array(vec![lo.into(), hi.into()])),
            toml_value(),
        ]
        .prop_map(Mutation::Traffic),
        prop_oneof![
            prop::sample::select(vec!["draft", "running", "paused", "completed"]).prop_map(String::from),
            any::<String>(),
        ]
        .prop_map(Mutation::Status),
        name().prop_map(Mutation::Winner),
        (user, name()).prop_map(|(u, a)| Mutation::Override(u, a)),
    ]
}

fn text_edit() -> impl Strategy<Value = TextEdit> {
    prop_oneof![
        6 => Just(TextEdit::None),
        1 => any::<Index>().prop_map(TextEdit::DeleteLine),
        1 => any::<Index>().prop_map(TextEdit::DuplicateLine),
        1 => (any::<Index>(), prop_oneof![any::<String>(), "[\\[\\]=\"'{}, \n.#]{1,3}"])
            .prop_map(|(i, s)| TextEdit::Insert(i, s)),
        1 => any::<Index>().prop_map(TextEdit::Truncate),
    ]
}

/// Text that looks like an experiment file: known keys with random values, table headers,
/// stray tokens.
fn tomlish() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "id",
        "placement",
        "status",
        "start",
        "end",
        "traffic",
        "salt",
        "winner",
        "name",
        "weight",
        "model",
        "cache_ttl",
        "default_model",
        "unknown",
        "\"qa-user-1\"",
        "a.b",
    ]);
    let value = prop_oneof![
        "\"[a-z0-9-]{0,10}\"",
        "-?[0-9]{1,5}(\\.[0-9]{1,3})?",
        "\\[[0-9., ]{0,12}\\]",
        "(true|false|nan|inf|-inf)",
        "[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9]{2}:[0-9]{2}:[0-9]{2}(Z|[+-][0-9]{2}:[0-9]{2})?)?",
        "\\{ *[a-z]{1,5} *= *\"[a-z]{0,5}\" *\\}",
        any::<String>().prop_map(|s| format!("{s:?}")),
    ];
    let line = prop_oneof![
        4 => (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => prop::sample::select(vec!["[[arms]]", "[overrides]", "[placements.home]", "[arms]", "[[placements]]", "[placements]"])
            .prop_map(String::from),
        1 => any::<String>(),
    ];
    prop::collection::vec(line, 0..12).prop_map(|lines| lines.join("\n"))
}

fn base_experiment() -> toml::Value {
    toml::Value::Table(toml::from_str(EXPERIMENT).expect("the base experiment is TOML"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Arbitrary bytes or text as an experiment file, or as `placements.toml`: no panic, and
    /// every rejection names the file and locates the problem.
    #[test]
    fn arbitrary_file_contents_are_rejected_precisely(
        contents in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..300),
            any::<String>().prop_map(String::into_bytes),
            tomlish().prop_map(String::into_bytes),
        ],
        as_placements in any::<bool>(),
    ) {
        let (target, other, other_text) = if as_placements {
            ("placements.toml", "exp.toml", EXPERIMENT)
        } else {
            ("exp.toml", "placements.toml", PLACEMENTS)
        };
        let dir = folder(&[(target, &contents), (other, other_text.as_bytes())]);
        match check_load(dir.path(), &[target, other], &[target]) {
            Ok(catalog) => check_catalog(&catalog),
            Err(problems) => prop_assert!(
                problems.iter().any(|p| p.file == dir.path().join(target)),
                "the bad file is among those named: {problems:?}"
            ),
        }
    }

    /// A valid folder, mutated at random (keys dropped, values of other types, unknown keys,
    /// duplicate arms, random weights, dates and traffic, text edits): no panic; either a
    /// catalog satisfying every rule of §3, or problems that each name a file and a field or
    /// line.
    #[test]
    fn mutated_experiments_load_or_are_rejected_precisely(
        mutations in prop::collection::vec(mutation(), 1..4),
        edit in text_edit(),
        with_second in any::<bool>(),
    ) {
        let mut root = base_experiment();
        for mutation in &mutations {
            apply(&mut root, mutation);
        }
        let text = toml::to_string(&root);
        prop_assume!(text.is_ok(), "serializable: {:?}", text);
        let text = edit_text(&text.unwrap_or_default(), &edit);
        let mut files: Vec<(&str, &[u8])> = vec![("placements.toml", PLACEMENTS.as_bytes()), ("exp.toml", text.as_bytes())];
        if with_second {
            files.push(("second.toml", SECOND.as_bytes()));
        }
        let names: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
        let dir = folder(&files);
        match check_load(dir.path(), &names, &[]) {
            Ok(catalog) => {
                check_catalog(&catalog);
                prop_assert_eq!(catalog.experiments().count(), files.len() - 1);
            }
            Err(problems) => {
                // placements.toml and second.toml are valid: only exp.toml can be at fault, or
                // second.toml when the two now overlap (the later id is the one reported).
                for problem in &problems {
                    let on_exp = problem.file == dir.path().join("exp.toml");
                    let overlap = problem.file == dir.path().join("second.toml") && problem.field == "traffic";
                    let duplicate = problem.field == "id" && problem.message.contains("duplicate");
                    prop_assert!(on_exp || overlap || duplicate, "problem on an unchanged file: {problem}");
                }
            }
        }
    }
}

/// A valid experiment of the generator below: what was written, to compare with what loaded.
#[derive(Debug, Clone)]
struct ValidExperiment {
    id: String,
    placement: &'static str,
    status: &'static str,
    traffic_bp: (u16, u16),
    weights_bp: Vec<u16>,
    start_end: Option<(u16, u16)>,
    salt: Option<String>,
    winner: Option<usize>,
    overrides: Vec<(String, usize)>,
}

impl ValidExperiment {
    fn toml(&self) -> String {
        let percent = |bp: u16| format!("{}.{:02}", bp / 100, bp % 100);
        let mut text = format!(
            "id = \"{}\"\nplacement = \"{}\"\nstatus = \"{}\"\ntraffic = [{}, {}]\n",
            self.id,
            self.placement,
            self.status,
            percent(self.traffic_bp.0),
            percent(self.traffic_bp.1)
        );
        if let Some((start, end)) = self.start_end {
            text += &format!(
                "start = {}-01-01T00:00:00Z\nend = {}-06-30T12:00:00+02:00\n",
                start, end
            );
        }
        if let Some(salt) = &self.salt {
            text += &format!("salt = {}\n", toml::Value::String(salt.clone()));
        }
        if let Some(winner) = self.winner {
            text += &format!("winner = \"arm-{winner}\"\n");
        }
        for (i, bp) in self.weights_bp.iter().enumerate() {
            text += &format!(
                "\n[[arms]]\nname = \"arm-{i}\"\nweight = {}\nmodel = \"m-{i}\"\n",
                percent(*bp)
            );
        }
        if !self.overrides.is_empty() {
            text += "\n[overrides]\n";
            for (user, arm) in &self.overrides {
                text += &format!("\"{user}\" = \"arm-{arm}\"\n");
            }
        }
        text
    }
}

/// A valid experiment: 2–5 arms of whole basis points summing to 100%, a non-empty slice,
/// ordered dates, overrides naming arms.
fn valid_experiment(placement: &'static str) -> impl Strategy<Value = ValidExperiment> {
    (
        "[a-z0-9][a-z0-9-]{0,20}",
        prop::sample::select(vec!["draft", "running", "paused", "completed"]),
        (0u16..10_000).prop_flat_map(|lo| (Just(lo), lo + 1..=10_000)),
        prop::collection::btree_set(1u16..10_000, 1..5),
        prop::option::of((1970u16..2100).prop_flat_map(|s| (Just(s), s + 1..2200))),
        prop::option::of("[ -~]{1,20}"),
        prop::collection::btree_map("[A-Za-z0-9._:@-]{1,20}", any::<Index>(), 0..3),
        any::<Option<Index>>(),
    )
        .prop_map(
            move |(id, status, traffic_bp, cuts, start_end, salt, overrides, winner)| {
                let mut edges: Vec<u16> = vec![0];
                edges.extend(cuts);
                edges.push(10_000);
                let weights_bp: Vec<u16> = edges.windows(2).map(|w| w[1] - w[0]).collect();
                let arms = weights_bp.len();
                ValidExperiment {
                    id,
                    placement,
                    status,
                    traffic_bp,
                    start_end,
                    salt,
                    winner: winner.filter(|_| status == "completed").map(|i| i.index(arms)),
                    overrides: overrides.into_iter().map(|(u, i)| (u, i.index(arms))).collect(),
                    weights_bp,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Valid folders load, exactly as written, and deterministically: the same folder twice,
    /// or its copy elsewhere, gives the same digest and the same catalog.
    #[test]
    fn valid_folders_load_as_written_and_deterministically(
        home in valid_experiment("home"),
        search in prop::option::of(valid_experiment("search")),
    ) {
        let search = search.filter(|s| s.id != home.id);
        let mut files: Vec<(String, String)> = vec![
            ("placements.toml".into(), PLACEMENTS.into()),
            ("home.toml".into(), home.toml()),
        ];
        if let Some(search) = &search {
            files.push(("search.toml".into(), search.toml()));
        }
        let borrowed: Vec<(&str, &[u8])> = files.iter().map(|(n, t)| (n.as_str(), t.as_bytes())).collect();
        let dir = folder(&borrowed);
        let copy = folder(&borrowed);
        let first = Catalog::load_dir(dir.path()).unwrap_or_else(|p| panic!("valid folder rejected:\n{p}\n{}", home.toml()));
        check_catalog(&first);
        let again = Catalog::load_dir(dir.path()).expect("loads twice");
        let elsewhere = Catalog::load_dir(copy.path()).expect("the copy loads");
        prop_assert_eq!(first.digest(), again.digest());
        prop_assert_eq!(first.digest(), elsewhere.digest());
        prop_assert_eq!(format!("{:?}", first.models()), format!("{:?}", again.models()));

        for written in std::iter::once(&home).chain(search.as_ref()) {
            let loaded = first.experiment(&written.id).expect("experiment loaded");
            prop_assert_eq!(loaded.placement.as_str(), written.placement);
            prop_assert_eq!(loaded.status.as_str(), written.status);
            prop_assert_eq!(loaded.slice.clone(), written.traffic_bp.0..written.traffic_bp.1);
            let weights: Vec<u16> = loaded.arms.iter().map(|a| a.weight_bp).collect();
            prop_assert_eq!(&weights, &written.weights_bp);
            prop_assert_eq!(&loaded.salt, written.salt.as_ref().unwrap_or(&written.id));
            prop_assert_eq!(loaded.winner, written.winner);
            prop_assert_eq!(loaded.overrides.len(), written.overrides.len());
            for (user, arm) in &written.overrides {
                prop_assert_eq!(loaded.overrides.get(user), Some(arm));
            }
            if let Some((start, end)) = written.start_end {
                let year = |y: u16| {
                    let days = (1970..y).map(|y| if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 { 366 } else { 365 }).sum::<u64>();
                    UNIX_EPOCH + Duration::from_secs(days * 86_400)
                };
                prop_assert_eq!(loaded.start, Some(year(start)));
                let leap = (end % 4 == 0 && end % 100 != 0) || end % 400 == 0;
                let june_30_noon_utc = (180 + u64::from(leap)) * 86_400 + 10 * 3600;
                prop_assert_eq!(loaded.end, Some(year(end) + Duration::from_secs(june_30_noon_utc)));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// User ids
// ---------------------------------------------------------------------------------------------

/// ARCHITECTURE.md §3.1: "opaque strings, 1–128 chars of `[A-Za-z0-9._:@-]`".
fn expected_user_id_rule(user: &str) -> bool {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '@' | '-');
    (1..=128).contains(&user.chars().count()) && user.chars().all(allowed)
}

/// Strings around the rule: allowed characters of any length near the bounds, with a random
/// character dropped in.
fn user_ids() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[A-Za-z0-9._:@-]{0,140}",
        "[A-Za-z0-9._:@-]{126,130}",
        ("[A-Za-z0-9._:@-]{0,130}", any::<char>(), any::<Index>()).prop_map(|(s, c, i)| {
            let at = char_boundary(&s, &i);
            format!("{}{c}{}", &s[..at], &s[at..])
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn user_ids_follow_the_documented_rule(user in user_ids()) {
        prop_assert_eq!(is_valid_user_id(&user), expected_user_id_rule(&user), "{:?}", user);
    }
}

// ---------------------------------------------------------------------------------------------
// Tracking tokens
// ---------------------------------------------------------------------------------------------

const DAY: Duration = Duration::from_secs(86_400);

fn claims() -> impl Strategy<Value = Claims> {
    (
        any::<String>(),
        any::<Option<String>>(),
        any::<String>(),
        any::<String>(),
        any::<String>(),
        any::<u64>(),
        any::<u64>(),
        any::<bool>(),
        prop::collection::vec(any::<u32>(), 0..100),
        (
            any::<Option<(String, String, u64)>>(),
            prop_oneof![Just(0u32), any::<u32>()],
        ),
    )
        .prop_map(
            |(placement, experiment, arm, model_version, user, issued_at, nonce, uncounted, items, (teams, offset))| {
                // An interleaved page: a team per item, drawn from the bits of a number.
                let teams = teams.map(|(first, second, bits)| Teams {
                    names: [first, second],
                    of_items: (0..items.len()).map(|i| (bits >> (i % 64) & 1) as u8).collect(),
                });
                Claims {
                    placement,
                    experiment,
                    arm,
                    model_version,
                    user,
                    issued_at,
                    nonce,
                    uncounted,
                    items,
                    teams,
                    offset,
                }
            },
        )
}

/// Strings shaped like tokens: base64url of bytes starting with the version byte, two
/// base64url parts (the JSON format still accepted), random alphabets, stray dots.
fn token_like() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "A[A-Za-z0-9_-]{0,250}",
        "[A-Za-z0-9_-]{0,80}\\.[A-Za-z0-9_-]{0,50}",
        "[A-Za-z0-9_.+/=-]{0,120}",
        prop::collection::vec(any::<u8>(), 0..200).prop_map(|b| URL_SAFE_NO_PAD.encode([&[1u8][..], &b].concat())),
        prop::collection::vec(any::<u8>(), 0..200).prop_map(|b| URL_SAFE_NO_PAD.encode([&[2u8][..], &b].concat())),
        (
            prop::collection::vec(any::<u8>(), 0..100),
            prop::collection::vec(any::<u8>(), 0..40)
        )
            .prop_map(|(p, t)| format!("{}.{}", URL_SAFE_NO_PAD.encode(p), URL_SAFE_NO_PAD.encode(t))),
    ]
}

/// Whether a token has the shape of a signed one, so that a wrong one is `bad_signature`
/// rather than `malformed_token` (ARCHITECTURE.md §5): base64url of the version byte 2, a
/// 4-byte key id and some claims, or of the version byte 1 (no key id) and some claims, then a
/// 32-byte HMAC-SHA256; or, in the JSON format still accepted, two base64url parts around a
/// dot.
fn signed_shape(token: &str) -> bool {
    match token.split_once('.') {
        Some((p, t)) => URL_SAFE_NO_PAD.decode(p).is_ok() && URL_SAFE_NO_PAD.decode(t).is_ok(),
        None => URL_SAFE_NO_PAD
            .decode(token)
            .is_ok_and(|b| (b.len() > 32 && b[0] == 1) || (b.len() >= 32 + 5 && b[0] == 2)),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Nothing but a token signed with the secret verifies.
    #[test]
    fn arbitrary_strings_are_never_valid_tokens(token in token_like(), secret in any::<String>()) {
        let signer = Signer::new(&secret, DAY);
        let result = signer.verify(&token, UNIX_EPOCH);
        prop_assert!(
            matches!(result, Err(TokenError::Malformed | TokenError::BadSignature)),
            "{token:?}: {result:?}"
        );
        // Malformed exactly when the token is not shaped like a signed one (checked independently).
        prop_assert_eq!(result == Err(TokenError::BadSignature), signed_shape(&token), "{:?}", token);
    }

    /// Any claims survive signing and verification unchanged, up to the maximum age and not a
    /// second past it, in the binary format and in the JSON one still accepted; another secret
    /// refuses them.
    #[test]
    fn signed_claims_round_trip(
        claims in claims(),
        secret in ".{1,40}",
        other in ".{1,40}",
        max_age in 0u64..(1 << 30),
    ) {
        let signer = Signer::new(&secret, Duration::from_secs(max_age));
        let token = signer.sign(claims.view());
        prop_assert!(!token.contains(['+', '/', '=', '.']), "URL-safe, one part: {}", token);
        prop_assert!(token.starts_with('A'), "the version byte 2: {}", token);
        for token in [token, signer.sign_json(&claims)] {
            // Before issue (a client clock ahead) is fine: only age expires a token.
            prop_assert_eq!(signer.verify(&token, UNIX_EPOCH).map(|(c, _)| c), Ok(claims.clone()));
            if let Some(now) = claims.issued_at.checked_add(max_age).filter(|s| *s < (1 << 40)) {
                let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
                prop_assert_eq!(signer.verify(&token, at(now)).map(|(c, _)| c), Ok(claims.clone()));
                prop_assert_eq!(signer.verify(&token, at(now + 1)), Err(TokenError::Expired));
            }
            if other != secret {
                prop_assert_eq!(
                    Signer::new(&other, Duration::from_secs(max_age)).verify(&token, UNIX_EPOCH),
                    Err(TokenError::BadSignature)
                );
            }
        }
    }

    /// Changing any one byte of a valid token (to any other ASCII byte), cutting it short or
    /// extending it gets it refused as forged or malformed, never accepted.
    #[test]
    fn any_single_byte_change_is_refused(
        claims in claims(),
        at in any::<Index>(),
        byte in 0u8..128,
        cut in any::<Index>(),
        extra in any::<char>(),
    ) {
        let signer = Signer::new("s3cret", DAY);
        let token = signer.sign(claims.view());
        let mut bytes = token.clone().into_bytes();
        let i = at.index(bytes.len());
        prop_assume!(bytes[i] != byte);
        bytes[i] = byte;
        let mutated = String::from_utf8(bytes).expect("ASCII stays UTF-8");
        let refused = |t: &str| matches!(signer.verify(t, UNIX_EPOCH), Err(TokenError::BadSignature | TokenError::Malformed));
        prop_assert!(refused(&mutated), "{mutated:?}: {:?}", signer.verify(&mutated, UNIX_EPOCH));
        let short = &token[..cut.index(token.len())];
        prop_assert!(refused(short), "{short:?}");
        let long = format!("{token}{extra}");
        prop_assert!(refused(&long), "{long:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Over HTTP: one demo gateway for every case of every property below
// ---------------------------------------------------------------------------------------------

/// The demo gateway, its runtime, and one real tracking token it issued.
struct Shared {
    runtime: tokio::runtime::Runtime,
    gateway: TestGateway,
    token: String,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (gateway, token) = runtime.block_on(async {
            let gateway = TestGateway::demo().await;
            let body = gateway.ok("/recommendations/42?placement=home").await;
            let token = body["tracking_token"].as_str().expect("token").to_string();
            (gateway, token)
        });
        Shared {
            runtime,
            gateway,
            token,
        }
    })
}

/// Checks an error reply: a 4xx with a JSON body of non-empty string `error` and `message`;
/// returns the code.
fn error_code(reply: &Reply, what: &str) -> String {
    assert!(
        (400..500).contains(&reply.status),
        "{what}: a client error, not {}: {}",
        reply.status,
        reply.body
    );
    assert!(
        reply.content_type.starts_with("application/json"),
        "{what}: JSON error, content type {:?}: {}",
        reply.content_type,
        reply.body
    );
    let body: Value = serde_json::from_str(&reply.body)
        .unwrap_or_else(|e| panic!("{what}: error body is not JSON ({e}): {}", reply.body));
    let message = body["message"].as_str();
    assert!(message.is_some_and(|m| !m.is_empty()), "{what}: string message: {body}");
    body["error"]
        .as_str()
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| panic!("{what}: string error code: {body}"))
        .to_string()
}

/// What `POST /events` should make of one event, from ARCHITECTURE.md §5 and the token format.
fn expected_reason(
    kind: &str,
    token: &str,
    item: &str,
    id: Option<&str>,
    on_page: Option<bool>,
) -> Option<&'static str> {
    if kind != "impression" && kind != "click" {
        return Some("unknown_type");
    }
    if item.is_empty() {
        return Some("missing_item_id");
    }
    if item.len() > 256 || item.chars().any(char::is_control) {
        return Some("invalid_item_id");
    }
    let id_ok = |id: &str| id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_:@".contains(&b));
    if id.is_some_and(|id| !id.is_empty() && !id_ok(id)) {
        return Some("invalid_event_id");
    }
    match on_page {
        Some(true) => return None,
        Some(false) => return Some("item_not_served"),
        None => {}
    }
    Some(if signed_shape(token) {
        "bad_signature"
    } else {
        "malformed_token"
    })
}

/// One event the property sends, and whether its token is the gateway's own.
#[derive(Debug, Clone)]
struct SentEvent {
    kind: String,
    token: Option<String>,
    item: String,
    event_id: Option<String>,
}

fn sent_event() -> impl Strategy<Value = SentEvent> {
    (
        prop_oneof![
            4 => prop::sample::select(vec!["impression", "click"]).prop_map(String::from),
            1 => any::<String>(),
            1 => Just("Click".to_string()),
        ],
        // None: the gateway's own token.
        prop_oneof![2 => Just(None), 3 => token_like().prop_map(Some)],
        prop_oneof![8 => "[a-z0-9]{1,8}", 1 => Just(String::new()), 1 => any::<String>()],
        prop::option::of(prop_oneof!["[a-z0-9-]{0,10}", any::<String>()]),
    )
        .prop_map(|(kind, token, item, event_id)| SentEvent {
            kind,
            token,
            item,
            event_id,
        })
}

/// Makes the gateway's own tokens' events unique, so none is a duplicate of an earlier case.
static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A JSON value of any shape, with the keys and words of an events batch mixed in.
fn json_value() -> impl Strategy<Value = Value> {
    let word = prop::sample::select(vec![
        "events",
        "type",
        "tracking_token",
        "item_id",
        "event_id",
        "impression",
        "click",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        word.clone().prop_map(|w| Value::String(w.into())),
    ];
    let key = prop_oneof![word.prop_map(String::from), any::<String>()];
    leaf.prop_recursive(4, 32, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Bodies near the batch shape: `{"events": [...]}` whose events have the right keys with
/// values of random types, sometimes missing or extra.
fn batch_like() -> impl Strategy<Value = Value> {
    let field = prop_oneof![
        4 => "[a-z]{1,8}".prop_map(Value::String),
        1 => json_value(),
    ];
    let event = (
        prop::option::of(field.clone()),
        prop::option::of(field.clone()),
        prop::option::of(field.clone()),
        prop::option::of(prop_oneof![Just(Value::Null), field.clone()]),
        prop::option::of(("[a-z]{1,6}", json_value())),
    )
        .prop_map(|(kind, token, item, id, extra)| {
            let mut event = Map::new();
            for (key, value) in [
                ("type", kind),
                ("tracking_token", token),
                ("item_id", item),
                ("event_id", id),
            ] {
                if let Some(value) = value {
                    event.insert(key.into(), value);
                }
            }
            if let Some((key, value)) = extra {
                event.insert(key, value);
            }
            Value::Object(event)
        });
    let events = prop_oneof![8 => prop::collection::vec(event, 0..5).prop_map(Value::Array), 1 => json_value()];
    (events, prop::option::of(("[a-z]{1,6}", json_value()))).prop_map(|(events, extra)| {
        let mut body = Map::new();
        body.insert("events".into(), events);
        if let Some((key, value)) = extra {
            body.insert(key, value);
        }
        Value::Object(body)
    })
}

/// A string field as poem-openapi reads it: a JSON string, or a number or boolean taken as its
/// text (its `String` parser is lenient so); anything else is a 400.
fn text_field(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// One event of a batch as the gateway reads it: `(type, tracking_token, item_id, event_id)`.
type ReadEvent = (String, String, String, Option<String>);

/// The events of `body` when it is a batch `POST /events` must accept (202), from the schema
/// of §5: an object with only `events`, an array of objects with text `type`, `tracking_token`
/// and `item_id`, and a text, null or absent `event_id` (extra keys in an event are ignored);
/// `None` for a 400.
fn read_batch(body: &Value) -> Option<Vec<ReadEvent>> {
    let body = body.as_object()?;
    if body.keys().any(|k| k != "events") {
        return None;
    }
    let events = body.get("events")?.as_array()?;
    events
        .iter()
        .map(|event| {
            let event = event.as_object()?;
            let field = |key: &str| event.get(key).and_then(text_field);
            let id = match event.get("event_id") {
                None | Some(Value::Null) => None,
                Some(value) => Some(text_field(value)?),
            };
            Some((field("type")?, field("tracking_token")?, field("item_id")?, id))
        })
        .collect()
}

/// Checks a `POST /events` reply to `body` (bytes sent as JSON): 202 with every event refused
/// (no body the property builds carries a valid token) or a 400 JSON error, as the schema
/// decides.
fn check_events_reply(reply: &Reply, body: &[u8]) {
    let what = format!("POST /events {}", String::from_utf8_lossy(body));
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    match parsed.as_ref().and_then(read_batch) {
        Some(events) => {
            let n = events.len();
            assert_eq!(reply.status, 202, "{what}: {}", reply.body);
            let outcome = reply.json();
            // Tokens here are random strings: nothing can be accepted.
            assert_eq!(outcome["accepted"], 0, "{what}: {outcome}");
            assert_eq!(outcome["rejected"], n, "{what}: {outcome}");
            let rejections = outcome["rejections"].as_array().expect("rejections");
            assert_eq!(rejections.len(), n, "{what}: {outcome}");
            for (i, (rejection, (kind, token, item, id))) in rejections.iter().zip(&events).enumerate() {
                assert_eq!(rejection["index"], i, "{what}: {outcome}");
                assert_eq!(rejection["event_id"].as_str(), id.as_deref(), "{what}: {outcome}");
                let want = expected_reason(kind, token, item, id.as_deref(), None);
                assert_eq!(rejection["reason"].as_str(), want, "{what}: event {i}: {outcome}");
            }
        }
        None => {
            assert_eq!(reply.status, 400, "{what}: {}", reply.body);
            error_code(reply, &what);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Batches of events with random types, items, ids and tokens (random strings, or the
    /// gateway's own): 202, and each event accepted or refused with the reason §5 gives.
    #[test]
    fn event_batches_are_judged_event_by_event(events in prop::collection::vec(sent_event(), 0..20)) {
        let shared = shared();
        // A fresh page per case, so its positions are not taken by an earlier case.
        let unique = UNIQUE.fetch_add(1, Ordering::Relaxed);
        let page = shared.runtime.block_on(shared.gateway.ok(&format!("/recommendations/p-{unique}?limit=100")));
        let page_token = page["tracking_token"].as_str().expect("token").to_string();
        let page_items: Vec<String> = page["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| i["item_id"].as_str().expect("item_id").to_string())
            .collect();
        let mut sent = Vec::new();
        let mut expected = Vec::new();
        let mut accepted = 0;
        for (i, event) in events.iter().enumerate() {
            let valid = event.token.is_none();
            let token = event.token.clone().unwrap_or_else(|| page_token.clone());
            // Events carrying the real token name the page's i-th item (each position once,
            // so none duplicates another) and no id, or an item not on the page.
            let (item, id) = match (valid, event.item.is_empty()) {
                (true, false) if event.item.len() % 3 == 0 => (format!("x-{}", event.item), None),
                (true, false) => (page_items[i].clone(), None),
                _ => (event.item.clone(), event.event_id.clone()),
            };
            let on_page = valid.then(|| page_items.contains(&item));
            let reason = expected_reason(&event.kind, &token, &item, id.as_deref(), on_page);
            accepted += usize::from(reason.is_none());
            expected.push((i, id.clone(), reason));
            let mut value = json!({ "type": event.kind, "tracking_token": token, "item_id": item });
            if let Some(id) = id {
                value["event_id"] = Value::String(id);
            }
            sent.push(value);
        }
        let body = serde_json::to_vec(&json!({ "events": sent })).expect("json");
        let reply = shared.runtime.block_on(shared.gateway.post_bytes("/events", Some("application/json"), body));
        prop_assert_eq!(reply.status, 202, "{}", reply.body);
        let outcome = reply.json();
        prop_assert_eq!(&outcome["accepted"], &json!(accepted), "{}", outcome);
        prop_assert_eq!(&outcome["rejected"], &json!(events.len() - accepted), "{}", outcome);
        let got: Vec<(usize, Option<String>, Option<&str>)> = outcome["rejections"]
            .as_array()
            .expect("rejections")
            .iter()
            .map(|r| {
                (
                    r["index"].as_u64().expect("index") as usize,
                    r["event_id"].as_str().map(String::from),
                    r["reason"].as_str(),
                )
            })
            .collect();
        let want: Vec<(usize, Option<String>, Option<&str>)> =
            expected.into_iter().filter(|(_, _, reason)| reason.is_some()).collect();
        prop_assert_eq!(got, want, "{}", outcome);
    }

    /// N well-formed events with garbage tokens: 202 with `rejected == N`, none accepted.
    #[test]
    fn garbage_tokens_are_all_rejected(
        tokens in prop::collection::vec(token_like(), 1..30),
        click in any::<bool>(),
    ) {
        let shared = shared();
        let kind = if click { "click" } else { "impression" };
        let events: Vec<Value> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| json!({ "type": kind, "tracking_token": t, "item_id": format!("item-{i}") }))
            .collect();
        let body = serde_json::to_vec(&json!({ "events": events })).expect("json");
        let reply = shared.runtime.block_on(shared.gateway.post_bytes("/events", Some("application/json"), body));
        prop_assert_eq!(reply.status, 202, "{}", reply.body);
        let outcome = reply.json();
        prop_assert_eq!(&outcome["accepted"], &json!(0), "{}", outcome);
        prop_assert_eq!(&outcome["rejected"], &json!(tokens.len()), "{}", outcome);
    }

    /// Any JSON body, shaped like a batch or not: 202 exactly when it fits the schema, else a
    /// 400 JSON error; never a 5xx.
    #[test]
    fn events_bodies_of_any_json_shape(body in prop_oneof![batch_like(), json_value()]) {
        let shared = shared();
        let bytes = serde_json::to_vec(&body).expect("json");
        let reply = shared.runtime.block_on(shared.gateway.post_bytes("/events", Some("application/json"), bytes.clone()));
        check_events_reply(&reply, &bytes);
    }

    /// Arbitrary bytes, and valid batches with a byte flipped, inserted or removed, declared
    /// JSON or something else: JSON bodies as the schema decides, anything else 415; every
    /// error a JSON `{error, message}`.
    #[test]
    fn events_bodies_of_any_bytes(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..200),
            (batch_like(), any::<Index>(), any::<u8>(), 0u8..3).prop_map(|(body, at, byte, how)| {
                let mut bytes = serde_json::to_vec(&body).expect("json");
                let i = at.index(bytes.len() + 1);
                match how {
                    0 if i < bytes.len() => bytes[i] = byte,
                    1 => bytes.insert(i, byte),
                    _ if i < bytes.len() => { bytes.remove(i); }
                    _ => {}
                }
                bytes
            }),
        ],
        content_type in prop_oneof![
            6 => Just(Some("application/json")),
            1 => Just(Some("application/json; charset=utf-8")),
            1 => Just(Some("text/plain")),
            1 => Just(Some("application/x-www-form-urlencoded")),
            1 => Just(None),
        ],
    ) {
        let shared = shared();
        let reply = shared.runtime.block_on(shared.gateway.post_bytes("/events", content_type, bytes.clone()));
        let what = format!("POST /events ({content_type:?}) {:?}", String::from_utf8_lossy(&bytes));
        if content_type.is_some_and(|c| c.starts_with("application/json")) {
            check_events_reply(&reply, &bytes);
        } else {
            prop_assert_eq!(reply.status, 415, "{}: {}", what, reply.body);
            error_code(&reply, &what);
        }
    }
}

/// `%XX` for every byte but ASCII letters, digits, `-`, `_` and `~`.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A query parameter as sent, and whether the gateway can parse it.
#[derive(Debug, Clone)]
enum Param {
    Absent,
    Valid(String),
    Invalid(String),
}

impl Param {
    fn invalid(&self) -> bool {
        matches!(self, Param::Invalid(_))
    }
}

fn limit_param() -> impl Strategy<Value = Param> {
    prop_oneof![
        Just(Param::Absent),
        (1u32..=100).prop_map(|n| Param::Valid(n.to_string())),
        prop_oneof![
            Just("0".to_string()),
            (101u64..=u64::from(u32::MAX) + 10).prop_map(|n| n.to_string()),
            (1i64..1000).prop_map(|n| format!("-{n}")),
            "[x-z]{1,4}",
            Just("1.5".to_string()),
        ]
        .prop_map(Param::Invalid),
    ]
}

fn offset_param() -> impl Strategy<Value = Param> {
    prop_oneof![
        Just(Param::Absent),
        prop_oneof![0u32..50, any::<u32>()].prop_map(|n| Param::Valid(n.to_string())),
        prop_oneof![
            (u64::from(u32::MAX) + 1..u64::MAX).prop_map(|n| n.to_string()),
            (1i64..1000).prop_map(|n| format!("-{n}")),
            "[x-z]{1,4}",
        ]
        .prop_map(Param::Invalid),
    ]
}

/// `min_score`: a finite number (valid), a non-finite one (parses, refused by the handler:
/// `Valid` here, judged separately), or text that is no number.
fn min_score_param() -> impl Strategy<Value = Param> {
    prop_oneof![
        Just(Param::Absent),
        any::<f32>().prop_map(|f| Param::Valid(f.to_string())),
        (-10.0f32..10.0).prop_map(|f| Param::Valid(f.to_string())),
        prop::sample::select(vec!["NaN", "inf", "-inf", "1e39"]).prop_map(|s| Param::Valid(s.into())),
        "[x-z]{1,4}".prop_map(Param::Invalid),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// `GET /recommendations/{user}` with a percent-encoded user of any characters and query
    /// parameters valid or not: the status and error code ARCHITECTURE.md §5 gives, and for a 200 a
    /// page echoing what was asked.
    #[test]
    fn recommendation_requests_get_the_documented_answer(
        user in user_ids().prop_filter("a path segment (not empty, not a dot segment)", |u| !u.is_empty() && u != "." && u != ".."),
        placement in prop_oneof![
            Just(None),
            Just(Some("default".to_string())),
            Just(Some("home".to_string())),
            "[a-z0-9-]{1,12}".prop_filter("unknown", |p| p != "default" && p != "home").prop_map(Some),
        ],
        limit in limit_param(),
        offset in offset_param(),
        min_score in min_score_param(),
        exclude in prop::option::of(prop_oneof!["[a-z0-9,]{0,20}", any::<String>()]),
    ) {
        let shared = shared();
        let mut query: Vec<String> = Vec::new();
        if let Some(p) = &placement {
            query.push(format!("placement={}", percent_encode(p)));
        }
        for (name, param) in [("limit", &limit), ("offset", &offset), ("min_score", &min_score)] {
            if let Param::Valid(v) | Param::Invalid(v) = param {
                query.push(format!("{name}={}", percent_encode(v)));
            }
        }
        if let Some(e) = &exclude {
            query.push(format!("exclude={}", percent_encode(e)));
        }
        let path = format!("/recommendations/{}?{}", percent_encode(&user), query.join("&"));
        let reply = shared.runtime.block_on(shared.gateway.get(&path));

        let non_finite = match &min_score {
            Param::Valid(v) => v.parse::<f32>().is_ok_and(|f| !f.is_finite()),
            _ => false,
        };
        let known = placement.as_deref().is_none_or(|p| p == "default" || p == "home");
        let want = if limit.invalid() || offset.invalid() || min_score.invalid() {
            Some((400, "invalid_parameter"))
        } else if !expected_user_id_rule(&user) {
            Some((400, "invalid_user_id"))
        } else if non_finite {
            Some((400, "invalid_parameter"))
        } else if !known {
            Some((404, "unknown_placement"))
        } else {
            None
        };
        match want {
            Some((status, code)) => {
                prop_assert_eq!(reply.status, status, "GET {}: {}", path, reply.body);
                prop_assert_eq!(error_code(&reply, &path), code, "GET {}: {}", path, reply.body);
            }
            None => {
                prop_assert_eq!(reply.status, 200, "GET {}: {}", path, reply.body);
                let body = reply.json();
                prop_assert_eq!(body["user_id"].as_str(), Some(user.as_str()), "{}", body);
                prop_assert_eq!(body["placement"].as_str(), Some(placement.as_deref().unwrap_or("default")), "{}", body);
                let limit = match &limit { Param::Valid(v) => v.parse().expect("u64"), _ => 10u64 };
                let offset = match &offset { Param::Valid(v) => v.parse().expect("u64"), _ => 0u64 };
                prop_assert_eq!(body["limit"].as_u64(), Some(limit), "{}", body);
                prop_assert_eq!(body["offset"].as_u64(), Some(offset), "{}", body);
                let items = body["items"].as_array().expect("items");
                prop_assert!(items.len() as u64 <= limit, "{}", body);
                let total = body["total"].as_u64().expect("total");
                prop_assert_eq!(items.len() as u64, total.saturating_sub(offset).min(limit), "{}", body);
                prop_assert!(body["tracking_token"].as_str().is_some_and(|t| !t.is_empty()), "{}", body);
                if let Param::Valid(v) = &min_score {
                    let min: f32 = v.parse().expect("finite");
                    for item in items {
                        prop_assert!(item["score"].as_f64().expect("score") >= f64::from(min), "{}", body);
                    }
                }
                if let Some(exclude) = &exclude {
                    let excluded: BTreeSet<&str> = exclude.split(',').map(str::trim).collect();
                    for item in items {
                        prop_assert!(!excluded.contains(item["item_id"].as_str().expect("id")), "{}", body);
                    }
                }
            }
        }
    }

    /// Any query string and any path segment bytes after `/recommendations/`: only the
    /// documented statuses (200, 400, 404), never a 5xx, and every error a JSON
    /// `{error, message}`.
    #[test]
    fn recommendation_requests_of_any_shape(
        segment in prop_oneof![
            prop::collection::vec(any::<u8>(), 1..20).prop_map(|b| b.iter().map(|b| format!("%{b:02X}")).collect::<String>()),
            "[A-Za-z0-9._:@%-]{1,20}",
        ],
        query in prop_oneof![
            any::<String>(),
            "((placement|limit|offset|min_score|exclude|x)=[A-Za-z0-9%.,+-]{0,8}&?){0,6}",
        ],
    ) {
        let shared = shared();
        let path = format!("/recommendations/{segment}?{query}");
        let reply = shared.runtime.block_on(shared.gateway.get(&path));
        prop_assert!(matches!(reply.status, 200 | 400 | 404), "GET {:?}: {} {}", path, reply.status, reply.body);
        if reply.status != 200 {
            error_code(&reply, &path);
        }
    }
}

#[test]
fn the_events_and_recommendation_properties_share_one_gateway() {
    // A smoke check of the shared harness itself, so a broken demo fails here first, readably.
    let shared = shared();
    let reply = shared.runtime.block_on(shared.gateway.get("/health"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(signed_shape(&shared.token), "{}", shared.token);
}

// ---------------------------------------------------------------------------------------------
// Team draft (`recgw::experiment::team_draft`, interleaving experiments)
// ---------------------------------------------------------------------------------------------

/// `items` without repeats, first occurrence kept: a ranked list has each item once.
fn distinct(items: Vec<u8>) -> Vec<u8> {
    let mut seen = BTreeSet::new();
    items.into_iter().filter(|i| seen.insert(*i)).collect()
}

/// Two ranked lists of 0..30 distinct items from a small alphabet (1..=40 letters), so that
/// they often share items, and sometimes are one inside the other.
fn ranked_pair() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    (1u8..=40).prop_flat_map(|letters| {
        (
            prop::collection::vec(0..letters, 0..30).prop_map(distinct),
            prop::collection::vec(0..letters, 0..30).prop_map(distinct),
        )
    })
}

/// `team_draft(a, b, seed)`, bound to the documented signature (`Vec<(T, usize)>`, the team 0
/// for `a` and 1 for `b`), so a change of it fails to compile here.
fn draft(a: &[u8], b: &[u8], seed: u64) -> Merged {
    let team_draft: fn(&[u8], &[u8], u64) -> Merged = recgw::experiment::team_draft::<u8>;
    team_draft(a, b, seed)
}

/// A merged list: each item with its team.
type Merged = Vec<(u8, usize)>;

/// The team draft rule replayed over `merged`: for each entry, whether both teams still had an
/// unused item before it, the pick counts before it, and each team's best unused item then.
struct Replay {
    both_could_pick: bool,
    picks: [usize; 2],
    best: [Option<u8>; 2],
}

fn replay(lists: [&[u8]; 2], merged: &[(u8, usize)]) -> Vec<Replay> {
    let mut used = BTreeSet::new();
    let mut picks = [0usize; 2];
    let mut steps = Vec::new();
    for (item, team) in merged {
        let best = [0, 1].map(|t| lists[t].iter().copied().find(|i| !used.contains(i)));
        steps.push(Replay {
            both_could_pick: best[0].is_some() && best[1].is_some(),
            picks,
            best,
        });
        used.insert(*item);
        if *team < 2 {
            picks[*team] += 1;
        }
    }
    steps
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The merged list never holds an item twice, and every team is 0 (a) or 1 (b).
    #[test]
    fn team_draft_never_repeats_an_item((a, b) in ranked_pair(), seed in any::<u64>()) {
        let merged = draft(&a, &b, seed);
        let mut seen = BTreeSet::new();
        for (item, team) in &merged {
            prop_assert!(seen.insert(*item), "{} twice in {:?} (a {:?}, b {:?})", item, merged, a, b);
            prop_assert!(*team < 2, "team {} in {:?}", team, merged);
        }
    }

    /// The merged list holds exactly the items of a ∪ b: each of its items is in a or b, and
    /// none of either list is left out.
    #[test]
    fn team_draft_holds_exactly_the_union((a, b) in ranked_pair(), seed in any::<u64>()) {
        let merged = draft(&a, &b, seed);
        let got: BTreeSet<u8> = merged.iter().map(|(i, _)| *i).collect();
        let want: BTreeSet<u8> = a.iter().chain(&b).copied().collect();
        prop_assert_eq!(got, want, "merged {:?} of a {:?}, b {:?}", merged, a, b);
        prop_assert_eq!(merged.len(), a.iter().chain(&b).copied().collect::<BTreeSet<u8>>().len());
    }

    /// Each entry of team t is the highest-ranked item of list t not earlier in the merged list
    /// (so an item both lists hold goes to the team that picked it first).
    #[test]
    fn team_draft_picks_each_team_s_best_unused_item((a, b) in ranked_pair(), seed in any::<u64>()) {
        let merged = draft(&a, &b, seed);
        for (k, (step, (item, team))) in replay([&a, &b], &merged).iter().zip(&merged).enumerate() {
            prop_assert!(*team < 2);
            prop_assert_eq!(
                step.best[*team], Some(*item),
                "position {}: team {} took {} (merged {:?}, a {:?}, b {:?})", k, team, item, merged, a, b
            );
        }
    }

    /// At every prefix, while both teams still had an unused item, their pick counts differ by
    /// at most one.
    #[test]
    fn team_draft_keeps_picks_balanced_while_both_can_pick((a, b) in ranked_pair(), seed in any::<u64>()) {
        let merged = draft(&a, &b, seed);
        let steps = replay([&a, &b], &merged);
        for (k, step) in steps.iter().enumerate() {
            if step.both_could_pick {
                prop_assert!(
                    step.picks[0].abs_diff(step.picks[1]) <= 1,
                    "before position {}: picks {:?} (merged {:?}, a {:?}, b {:?})", k, step.picks, merged, a, b
                );
            }
        }
        // And after the last pick made while both could pick.
        let last_both = steps.iter().rposition(|s| s.both_could_pick);
        if let Some(k) = last_both {
            let mut picks = [0usize; 2];
            for (_, team) in &merged[..=k] {
                picks[*team] += 1;
            }
            prop_assert!(picks[0].abs_diff(picks[1]) <= 1, "{:?} after position {} of {:?}", picks, k, merged);
        }
    }

    /// The team with fewer picks picks next while it has an unused item; a team with nothing
    /// left stops and the other goes on.
    #[test]
    fn team_draft_the_team_behind_picks_next((a, b) in ranked_pair(), seed in any::<u64>()) {
        let merged = draft(&a, &b, seed);
        for (k, (step, (_, team))) in replay([&a, &b], &merged).iter().zip(&merged).enumerate() {
            let behind = match step.picks[0].cmp(&step.picks[1]) {
                std::cmp::Ordering::Less => Some(0),
                std::cmp::Ordering::Greater => Some(1),
                std::cmp::Ordering::Equal => None,
            };
            if step.both_could_pick {
                if let Some(behind) = behind {
                    prop_assert_eq!(*team, behind, "position {}: picks {:?} in {:?}", k, step.picks, merged);
                }
            } else {
                let only = if step.best[0].is_some() { 0 } else { 1 };
                prop_assert_eq!(*team, only, "position {}: only team {} had items left in {:?}", k, only, merged);
            }
        }
    }

    /// The same list on both sides: the merged list is that list in its order, and the teams'
    /// pick counts differ by at most one (at every prefix: positions 2k and 2k+1 go to
    /// different teams).
    #[test]
    fn team_draft_of_identical_lists_keeps_their_order(
        a in (1u8..=40).prop_flat_map(|n| prop::collection::vec(0..n, 0..30).prop_map(distinct)),
        seed in any::<u64>(),
    ) {
        let merged = draft(&a, &a, seed);
        let order: Vec<u8> = merged.iter().map(|(i, _)| *i).collect();
        prop_assert_eq!(&order, &a);
        let on_a = merged.iter().filter(|(_, t)| *t == 0).count();
        prop_assert!(on_a.abs_diff(merged.len() - on_a) <= 1, "{:?}", merged);
        for pair in merged.chunks(2) {
            if let [(_, t0), (_, t1)] = pair {
                prop_assert_ne!(t0, t1, "{:?}", merged);
            }
        }
    }

    /// The same lists and seed give the same merged list.
    #[test]
    fn team_draft_is_deterministic_for_a_seed((a, b) in ranked_pair(), seed in any::<u64>()) {
        let first = draft(&a, &b, seed);
        let again = draft(&a.clone(), &b.clone(), seed);
        prop_assert_eq!(first, again);
    }

    /// The coin is used: with both lists non-empty, over the seeds 0..64 each team gets the
    /// first pick at least once (a fair coin fails this with probability 2^-63).
    #[test]
    fn team_draft_coin_gives_either_team_the_first_pick((a, b) in ranked_pair()) {
        prop_assume!(!a.is_empty() && !b.is_empty());
        let firsts: BTreeSet<usize> = (0..64u64)
            .map(|seed| draft(&a, &b, seed)[0].1)
            .collect();
        prop_assert_eq!(firsts, BTreeSet::from([0, 1]), "a {:?}, b {:?}", a, b);
    }
}
