//! Experiment folders as product teams write them (ARCHITECTURE.md §3): one valid folder, then one
//! test per rejection rule, each checking the file, field (and line where the TOML parser
//! knows it) of the problem reported.

mod common;

use std::time::{Duration, SystemTime};

use recgw::experiment::{Catalog, Problem, Status};
use tempfile::TempDir;

use common::examples::{EXPERIMENT, PLACEMENTS};

/// A folder holding `placements.toml` and `files`.
fn folder(files: &[(&str, &str)]) -> TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("placements.toml"), PLACEMENTS).expect("write placements");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write experiment");
    }
    dir
}

/// `text` with the first `from` replaced by `to`; `from` must occur.
fn edit(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} not in the text");
    text.replacen(from, to, 1)
}

/// 1-based line of the first occurrence of `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in the text"));
    text[..at].matches('\n').count() + 1
}

fn rejected(dir: &TempDir) -> Vec<Problem> {
    match Catalog::load_dir(dir.path()) {
        Ok(_) => panic!("the folder was accepted"),
        Err(problems) => problems.0,
    }
}

/// The folder's only problem, checked to be in `file` and on `field`.
fn only_problem(dir: &TempDir, file: &str, field: &str) -> Problem {
    let problems = rejected(dir);
    assert_eq!(problems.len(), 1, "exactly one problem: {problems:#?}");
    let problem = problems.into_iter().next().unwrap();
    assert_eq!(problem.file, dir.path().join(file), "{problem}");
    assert_eq!(problem.field, field, "{problem}");
    problem
}

/// Rejects a single experiment file `exp.toml` holding `text`, with one problem on `field`.
fn reject_experiment(text: &str, field: &str) -> Problem {
    let dir = folder(&[("exp.toml", text)]);
    let problem = only_problem(&dir, "exp.toml", field);
    assert_eq!(problem.line, None, "{problem}");
    problem
}

fn at(days_since_epoch: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(days_since_epoch * 86_400)
}

#[test]
fn the_design_example_loads() {
    let dir = folder(&[("home-als-rank.toml", EXPERIMENT)]);
    let catalog = Catalog::load_dir(dir.path()).unwrap_or_else(|p| panic!("{p}"));

    let home = catalog.placement("home").expect("home");
    assert_eq!(home.default_model.location, "popular");
    assert_eq!(home.experiments().len(), 1);
    assert!(catalog.placement("search").unwrap().experiments().is_empty());

    let exp = catalog.experiment("home-als-rank").expect("experiment");
    assert_eq!(exp.placement, "home");
    assert_eq!(exp.owner, "recs-team@example.com");
    assert_eq!(exp.status, Status::Running);
    assert_eq!(exp.start, Some(at(20_758)), "2026-11-01T00:00:00Z");
    assert_eq!(exp.end, Some(at(20_788)), "2026-12-01T00:00:00Z");
    assert_eq!(exp.slice, 0..5_000);
    assert_eq!(exp.salt, "home-als-rank");
    assert_eq!(exp.winner, None);
    let arms: Vec<_> = exp
        .arms
        .iter()
        .map(|a| {
            (
                a.name.as_str(),
                a.weight_bp,
                a.buckets.clone(),
                a.model.location.as_str(),
            )
        })
        .collect();
    assert_eq!(
        arms,
        [
            ("control", 5_000, 0..5_000, "als-v1"),
            ("treatment", 5_000, 5_000..10_000, "als-v2")
        ]
    );
    assert_eq!(exp.arms[0].cache_ttl, None);
    assert_eq!(exp.arms[1].cache_ttl, Some(Duration::from_secs(30 * 60)));
    assert_eq!(exp.overrides.get("qa-user-1"), Some(&1));
    assert_eq!(exp.file, dir.path().join("home-als-rank.toml"));
    assert!(exp.active_at(at(20_760)));
    assert!(!exp.active_at(at(20_788)), "end is exclusive");

    let models: Vec<String> = catalog.models().into_iter().map(|m| m.location).collect();
    assert_eq!(models, ["als-v1", "als-v2", "popular", "popular-search"]);
    assert_eq!(catalog.digest().len(), 16);
}

#[test]
fn defaults_and_columns_load() {
    let text = r#"id = "x"
placement = "search"
status = "draft"

[[arms]]
name = "a"
weight = 33.33
model = "als/*"
columns = { user = "userId", item = "movieId" }

[[arms]]
name = "b"
weight = 33.33
model = "hdfs://namenode:8020/recs/b"

[[arms]]
name = "c_2"
weight = 33.34
model = "c"
"#;
    let dir = folder(&[("x.toml", text)]);
    let catalog = Catalog::load_dir(dir.path()).unwrap_or_else(|p| panic!("{p}"));
    let exp = catalog.experiment("x").expect("x");
    assert_eq!(
        (exp.slice.clone(), exp.salt.as_str(), exp.start, exp.end),
        (0..10_000, "x", None, None)
    );
    let buckets: Vec<_> = exp.arms.iter().map(|a| a.buckets.clone()).collect();
    assert_eq!(buckets, [0..3_333, 3_333..6_666, 6_666..10_000]);
    assert_eq!(exp.arms[0].model.columns.user.as_deref(), Some("userId"));
    assert_eq!(exp.arms[0].model.columns.item.as_deref(), Some("movieId"));
    assert_eq!(exp.arms[0].model.columns.items, None);
}

#[test]
fn unknown_key_names_file_and_line() {
    let text = edit(EXPERIMENT, "owner = ", "colour = \"blue\"\nowner = ");
    let dir = folder(&[("exp.toml", &text)]);
    let problem = only_problem(&dir, "exp.toml", "colour");
    assert_eq!(problem.line, Some(line_of(&text, "colour")), "{problem}");
    assert!(problem.message.contains("colour"), "{problem}");
    let shown = problem.to_string();
    assert!(
        shown.starts_with(&format!("{}:{}: ", dir.path().join("exp.toml").display(), 4)),
        "{shown}"
    );

    // Inside an array of tables, and inside an inline `columns` table: the field is the path.
    let text = edit(
        EXPERIMENT,
        "weight = 50.0\nmodel = \"als-v2\"",
        "wieght = 50.0\nmodel = \"als-v2\"",
    );
    let dir = folder(&[("exp.toml", &text)]);
    let problem = only_problem(&dir, "exp.toml", "arms[1].wieght");
    assert_eq!(problem.line, Some(line_of(&text, "wieght")), "{problem}");
    assert!(problem.message.contains("wieght"), "{problem}");

    let text = edit(
        EXPERIMENT,
        "model = \"als-v1\"",
        "model = \"als-v1\"\ncolumns = { usr = \"userId\" }",
    );
    let dir = folder(&[("exp.toml", &text)]);
    let problem = only_problem(&dir, "exp.toml", "arms[0].columns.usr");
    assert_eq!(problem.line, Some(line_of(&text, "columns")), "{problem}");
    assert!(problem.message.contains("usr"), "{problem}");
}

#[test]
fn unknown_key_in_placements_names_the_line() {
    let dir = folder(&[]);
    let text = "[placements.home]\ndefault_model = \"popular\"\ndefault_ttl = \"1h\"\n";
    std::fs::write(dir.path().join("placements.toml"), text).unwrap();
    let problem = only_problem(&dir, "placements.toml", "placements.home.default_ttl");
    assert_eq!(problem.line, Some(3), "{problem}");
    assert!(problem.message.contains("default_ttl"), "{problem}");
}

#[test]
fn toml_syntax_error_names_file_and_line() {
    let text = edit(EXPERIMENT, "model = \"als-v2\"", "model = \"als-v2");
    let dir = folder(&[
        (
            "ok.toml",
            &edit(EXPERIMENT, "home-als-rank\"\nplacement", "other\"\nplacement"),
        ),
        ("broken.toml", &text),
    ]);
    let problems = rejected(&dir);
    let broken: Vec<&Problem> = problems
        .iter()
        .filter(|p| p.file == dir.path().join("broken.toml"))
        .collect();
    assert_eq!(broken.len(), 1, "{problems:#?}");
    assert_eq!(
        broken[0].line,
        Some(line_of(&text, "model = \"als-v2")),
        "{}",
        broken[0]
    );
    assert_eq!(broken[0].field, "");
    assert!(
        problems.iter().all(|p| p.file != dir.path().join("ok.toml")),
        "{problems:#?}"
    );
}

#[test]
fn duplicate_ids_across_files() {
    let second = edit(EXPERIMENT, "traffic = [0.0, 50.0]", "traffic = [50.0, 100.0]");
    let dir = folder(&[("a.toml", EXPERIMENT), ("b.toml", &second)]);
    let problem = only_problem(&dir, "b.toml", "id");
    assert!(problem.message.contains("home-als-rank"), "{problem}");
    assert!(problem.message.contains("a.toml"), "names the first file: {problem}");
}

#[test]
fn bad_ids() {
    for id in ["Home-ALS", "home_als", "home als", "", &"x".repeat(65)] {
        let problem = reject_experiment(
            &edit(EXPERIMENT, "id = \"home-als-rank\"", &format!("id = {id:?}")),
            "id",
        );
        assert!(problem.message.contains("[a-z0-9-]"), "{id:?}: {problem}");
    }
    // 64 characters is fine.
    let dir = folder(&[(
        "x.toml",
        &edit(
            EXPERIMENT,
            "id = \"home-als-rank\"",
            &format!("id = {:?}", "x".repeat(64)),
        ),
    )]);
    assert!(Catalog::load_dir(dir.path()).is_ok());
}

#[test]
fn bad_arm_name() {
    for name in ["Control", "con trol", "", "contrôle"] {
        let text = edit(EXPERIMENT, "name = \"control\"", &format!("name = {name:?}"));
        let problem = reject_experiment(&text, "arms[0].name");
        assert!(problem.message.contains(&format!("{name:?}")), "{problem}");
    }
}

#[test]
fn arm_named_default_is_reserved() {
    let text = edit(EXPERIMENT, "name = \"treatment\"", "name = \"default\"");
    let text = edit(&text, "\"qa-user-1\" = \"treatment\"", "\"qa-user-1\" = \"default\"");
    let problem = reject_experiment(&text, "arms[1].name");
    assert!(problem.message.contains("reserved"), "{problem}");
}

/// Names the results' own keys take where an arm's name goes: an arm of one would share its
/// counters with them (an arm `duel` with an interleave experiment's duel totals).
#[test]
fn arm_names_the_results_keys_use_are_reserved() {
    for name in ["applied", "scratch", "inexact", "duel"] {
        let text = edit(EXPERIMENT, "name = \"treatment\"", &format!("name = {name:?}"));
        let text = edit(
            &text,
            "\"qa-user-1\" = \"treatment\"",
            &format!("\"qa-user-1\" = {name:?}"),
        );
        let problem = reject_experiment(&text, "arms[1].name");
        assert!(
            problem.message.contains("reserved") && problem.message.contains(&format!("{name:?}")),
            "{problem}"
        );
    }
}

#[test]
fn duplicate_arm_names() {
    let text = edit(EXPERIMENT, "name = \"treatment\"", "name = \"control\"");
    let text = edit(&text, "\"qa-user-1\" = \"treatment\"", "\"qa-user-1\" = \"control\"");
    let problem = reject_experiment(&text, "arms[1].name");
    assert!(problem.message.contains("duplicate"), "{problem}");
}

#[test]
fn weights_must_sum_to_100() {
    let text = edit(
        EXPERIMENT,
        "weight = 50.0\nmodel = \"als-v2\"",
        "weight = 40.0\nmodel = \"als-v2\"",
    );
    let problem = reject_experiment(&text, "arms");
    assert!(problem.message.contains("90"), "{problem}");
    // Within the ±0.01 tolerance and exact in basis points: accepted.
    let text = edit(
        EXPERIMENT,
        "weight = 50.0\nmodel = \"als-v1\"",
        "weight = 49.999\nmodel = \"als-v1\"",
    );
    let text = edit(
        &text,
        "weight = 50.0\nmodel = \"als-v2\"",
        "weight = 50.001\nmodel = \"als-v2\"",
    );
    let dir = folder(&[("exp.toml", &text)]);
    let catalog = Catalog::load_dir(dir.path()).unwrap_or_else(|p| panic!("{p}"));
    let weights: Vec<u16> = catalog
        .experiment("home-als-rank")
        .unwrap()
        .arms
        .iter()
        .map(|a| a.weight_bp)
        .collect();
    assert_eq!(weights, [5_000, 5_000]);
}

#[test]
fn weights_within_tolerance_but_not_10000_basis_points() {
    let arm = |name: &str| format!("\n[[arms]]\nname = \"{name}\"\nweight = 33.333\nmodel = \"m\"\n");
    let text = format!(
        "id = \"thirds\"\nplacement = \"home\"\nstatus = \"running\"\n{}{}{}",
        arm("a"),
        arm("b"),
        arm("c")
    );
    let problem = reject_experiment(&text, "arms");
    assert!(problem.message.contains("9999"), "{problem}");
}

#[test]
fn weight_rounding_to_zero_basis_points_is_rejected() {
    let text = edit(
        EXPERIMENT,
        "weight = 50.0\nmodel = \"als-v1\"",
        "weight = 99.996\nmodel = \"als-v1\"",
    );
    let text = edit(
        &text,
        "weight = 50.0\nmodel = \"als-v2\"",
        "weight = 0.004\nmodel = \"als-v2\"",
    );
    reject_experiment(&text, "arms[1].weight");
}

#[test]
fn fewer_than_two_arms() {
    let one = "id = \"solo\"\nplacement = \"home\"\nstatus = \"running\"\n\n[[arms]]\nname = \"only\"\nweight = 100.0\nmodel = \"m\"\n";
    let problem = reject_experiment(one, "arms");
    assert!(problem.message.contains("at least two arms"), "{problem}");
    assert!(problem.message.contains("found 1"), "{problem}");
}

#[test]
fn unknown_placement() {
    let problem = reject_experiment(
        &edit(EXPERIMENT, "placement = \"home\"", "placement = \"checkout\""),
        "placement",
    );
    assert!(problem.message.contains("checkout"), "{problem}");
    assert!(
        problem.message.contains("home") && problem.message.contains("search"),
        "lists the known ones: {problem}"
    );
}

#[test]
fn override_naming_no_arm() {
    let text = edit(
        EXPERIMENT,
        "\"qa-user-1\" = \"treatment\"",
        "\"qa-user-1\" = \"treatmnt\"",
    );
    let problem = reject_experiment(&text, "overrides.\"qa-user-1\"");
    assert!(problem.message.contains("treatmnt"), "{problem}");
}

#[test]
fn invalid_override_user_id() {
    for user in ["qa user 1", "qa/user", &"u".repeat(129)] {
        let text = edit(
            EXPERIMENT,
            "\"qa-user-1\" = \"treatment\"",
            &format!("{user:?} = \"treatment\""),
        );
        let problem = reject_experiment(&text, &format!("overrides.{user:?}"));
        assert!(problem.message.contains("user id"), "{problem}");
    }
}

#[test]
fn winner_naming_no_arm() {
    let text = edit(
        EXPERIMENT,
        "status = \"running\"",
        "status = \"completed\"\nwinner = \"nobody\"",
    );
    let problem = reject_experiment(&text, "winner");
    assert!(problem.message.contains("nobody"), "{problem}");
    // And a winner that is an arm is accepted.
    let text = edit(
        EXPERIMENT,
        "status = \"running\"",
        "status = \"completed\"\nwinner = \"treatment\"",
    );
    let dir = folder(&[("exp.toml", &text)]);
    let catalog = Catalog::load_dir(dir.path()).unwrap_or_else(|p| panic!("{p}"));
    assert_eq!(catalog.experiment("home-als-rank").unwrap().winner, Some(1));
}

#[test]
fn winner_needs_status_completed() {
    for status in ["running", "paused", "draft"] {
        let text = edit(
            EXPERIMENT,
            "status = \"running\"",
            &format!("status = \"{status}\"\nwinner = \"treatment\""),
        );
        let problem = reject_experiment(&text, "winner");
        assert!(
            problem.message.contains("completed") && problem.message.contains(status),
            "{problem}"
        );
    }
}

#[test]
fn end_must_be_after_start() {
    for end in [
        "2026-11-01T00:00:00Z",
        "2026-10-31T23:59:59Z",
        "2026-11-01T01:00:00+01:00",
    ] {
        let text = edit(EXPERIMENT, "end = 2026-12-01T00:00:00Z", &format!("end = {end}"));
        let problem = reject_experiment(&text, "end");
        assert!(problem.message.contains("after start"), "{end}: {problem}");
    }
    // The same instant written in another offset, one second later, is fine.
    let text = edit(
        EXPERIMENT,
        "end = 2026-12-01T00:00:00Z",
        "end = 2026-11-01T01:00:01+01:00",
    );
    assert!(Catalog::load_dir(folder(&[("exp.toml", &text)]).path()).is_ok());
}

#[test]
fn start_needs_a_time_zone_offset() {
    for start in ["2026-11-01T00:00:00", "2026-11-01", "00:00:00"] {
        let text = edit(EXPERIMENT, "start = 2026-11-01T00:00:00Z", &format!("start = {start}"));
        let problem = reject_experiment(&text, "start");
        assert!(problem.message.contains("offset"), "{start}: {problem}");
    }
    let text = edit(EXPERIMENT, "end = 2026-12-01T00:00:00Z", "end = 2026-12-01T00:00:00");
    reject_experiment(&text, "end");
}

#[test]
fn traffic_outside_0_100() {
    for traffic in ["[-1.0, 50.0]", "[0.0, 100.5]", "[-10.0, 110.0]", "[nan, 50.0]"] {
        let text = edit(EXPERIMENT, "traffic = [0.0, 50.0]", &format!("traffic = {traffic}"));
        let problem = reject_experiment(&text, "traffic");
        assert!(problem.message.contains("[0, 100]"), "{traffic}: {problem}");
    }
}

#[test]
fn traffic_lo_must_be_below_hi() {
    for traffic in ["[50.0, 50.0]", "[60.0, 40.0]", "[10.001, 10.004]"] {
        let text = edit(EXPERIMENT, "traffic = [0.0, 50.0]", &format!("traffic = {traffic}"));
        let problem = reject_experiment(&text, "traffic");
        assert!(problem.message.contains("empty"), "{traffic}: {problem}");
    }
}

/// An experiment `id` on `placement` with `status`, slice `traffic` and an optional schedule.
fn experiment(id: &str, placement: &str, status: &str, traffic: &str, schedule: &str) -> String {
    format!(
        "id = \"{id}\"\nplacement = \"{placement}\"\nstatus = \"{status}\"\ntraffic = {traffic}\n{schedule}\n\
         [[arms]]\nname = \"a\"\nweight = 50.0\nmodel = \"m1\"\n\n[[arms]]\nname = \"b\"\nweight = 50.0\nmodel = \"m2\"\n"
    )
}

#[test]
fn running_experiments_on_one_placement_must_not_overlap() {
    let dir = folder(&[
        ("one.toml", &experiment("exp-a", "home", "running", "[0.0, 60.0]", "")),
        ("two.toml", &experiment("exp-b", "home", "running", "[50.0, 100.0]", "")),
    ]);
    let problem = only_problem(&dir, "two.toml", "traffic");
    assert!(
        problem.message.contains("exp-a") && problem.message.contains("home"),
        "{problem}"
    );
    assert!(problem.message.contains("one.toml"), "names the other file: {problem}");

    // A completed experiment with a winner keeps its slice, so it overlaps too.
    let winner = edit(
        &experiment("exp-a", "home", "completed", "[0.0, 60.0]", ""),
        "status",
        "winner = \"b\"\nstatus",
    );
    let dir = folder(&[
        ("one.toml", &winner),
        ("two.toml", &experiment("exp-b", "home", "running", "[50.0, 100.0]", "")),
    ]);
    only_problem(&dir, "two.toml", "traffic");
}

#[test]
fn disjoint_or_inactive_or_differently_scheduled_experiments_may_share_a_placement() {
    let cases: [(&str, String, String); 5] = [
        (
            "disjoint slices",
            experiment("exp-a", "home", "running", "[0.0, 50.0]", ""),
            experiment("exp-b", "home", "running", "[50.0, 100.0]", ""),
        ),
        (
            "schedules that do not meet",
            experiment("exp-a", "home", "running", "[0.0, 100.0]", "end = 2026-11-15T00:00:00Z"),
            experiment(
                "exp-b",
                "home",
                "running",
                "[0.0, 100.0]",
                "start = 2026-11-15T00:00:00Z",
            ),
        ),
        (
            "other placement",
            experiment("exp-a", "home", "running", "[0.0, 100.0]", ""),
            experiment("exp-b", "search", "running", "[0.0, 100.0]", ""),
        ),
        (
            "paused",
            experiment("exp-a", "home", "running", "[0.0, 100.0]", ""),
            experiment("exp-b", "home", "paused", "[0.0, 100.0]", ""),
        ),
        (
            "completed without winner",
            experiment("exp-a", "home", "running", "[0.0, 100.0]", ""),
            experiment("exp-b", "home", "completed", "[0.0, 100.0]", ""),
        ),
    ];
    for (case, a, b) in cases {
        let dir = folder(&[("a.toml", &a), ("b.toml", &b)]);
        let catalog = Catalog::load_dir(dir.path()).unwrap_or_else(|p| panic!("{case}: {p}"));
        assert_eq!(catalog.experiments().count(), 2, "{case}");
    }
    // Overlapping schedules with overlapping slices are rejected.
    let dir = folder(&[
        (
            "a.toml",
            &experiment("exp-a", "home", "running", "[0.0, 100.0]", "end = 2026-11-15T00:00:01Z"),
        ),
        (
            "b.toml",
            &experiment(
                "exp-b",
                "home",
                "running",
                "[0.0, 100.0]",
                "start = 2026-11-15T00:00:00Z",
            ),
        ),
    ]);
    only_problem(&dir, "b.toml", "traffic");
}

#[test]
fn missing_placements_toml() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("exp.toml"), EXPERIMENT).unwrap();
    let problems = rejected(&dir);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0].file, dir.path().join("placements.toml"));
    assert_eq!((problems[0].line, problems[0].field.as_str()), (None, ""));
    assert!(problems[0].message.contains("missing"), "{}", problems[0]);

    let problems = match Catalog::load_dir(&dir.path().join("nope")) {
        Ok(_) => panic!("a missing folder loads"),
        Err(problems) => problems.0,
    };
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].file, dir.path().join("nope"));
}

#[test]
fn bad_cache_ttl() {
    for ttl in ["soon", "30", "-5m", ""] {
        let text = edit(EXPERIMENT, "cache_ttl = \"30m\"", &format!("cache_ttl = {ttl:?}"));
        let problem = reject_experiment(&text, "arms[1].cache_ttl");
        assert!(problem.message.contains(&format!("{ttl:?}")), "{problem}");
    }
}

#[test]
fn every_problem_of_a_folder_is_reported_at_once() {
    let text = edit(EXPERIMENT, "placement = \"home\"", "placement = \"nowhere\"");
    let text = edit(&text, "traffic = [0.0, 50.0]", "traffic = [70.0, 20.0]");
    let text = edit(&text, "cache_ttl = \"30m\"", "cache_ttl = \"later\"");
    let dir = folder(&[("exp.toml", &text), ("bad.toml", "id = ")]);
    let problems = rejected(&dir);
    let fields: Vec<(String, &str)> = problems
        .iter()
        .map(|p| {
            (
                p.file.file_name().unwrap().to_string_lossy().into_owned(),
                p.field.as_str(),
            )
        })
        .collect();
    for expected in [
        ("bad.toml", ""),
        ("exp.toml", "placement"),
        ("exp.toml", "traffic"),
        ("exp.toml", "arms[1].cache_ttl"),
    ] {
        assert!(
            fields.contains(&(expected.0.to_string(), expected.1)),
            "{expected:?} in {fields:?}"
        );
    }
    assert_eq!(problems.len(), 4, "{problems:#?}");
    let shown = recgw::experiment::Problems(problems).to_string();
    assert_eq!(shown.lines().count(), 4, "{shown}");
    assert!(
        shown.contains(&format!("{}: traffic: ", dir.path().join("exp.toml").display())),
        "{shown}"
    );
}

#[test]
fn an_experiment_cannot_be_served_outside_a_valid_folder() {
    // A file that is not TOML next to a valid one rejects the whole folder (all-or-nothing).
    let dir = folder(&[("a.toml", EXPERIMENT), ("notes.toml", "this is not toml")]);
    let problems = rejected(&dir);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0].file, dir.path().join("notes.toml"));
    assert_eq!(problems[0].line, Some(1));
    // Files that are not *.toml are ignored.
    let dir = folder(&[("a.toml", EXPERIMENT), ("README.md", "not an experiment")]);
    assert!(Catalog::load_dir(dir.path()).is_ok());
}
