//! The `recgw` binary (ARCHITECTURE.md §2): every subcommand run as a user would, with
//! `std::process::Command`, checking exit codes and what it prints.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use arrow_array::Array;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Int32Type};
use common::cli::{COMMAND_TIMEOUT, recgw};
use common::edits::{copy_of_experiments, edit};
use common::gateway::repo;
use common::process::run_bounded;
use common::spark::hadoop_crc;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use recgw::experiment::Catalog;

/// Runs `command` (bounded by [`COMMAND_TIMEOUT`]), returning exit success, stdout and stderr.
fn run(command: &mut Command) -> (bool, String, String) {
    let finished = run_bounded(command, b"", COMMAND_TIMEOUT);
    (finished.success(), finished.stdout, finished.stderr)
}

/// `path` as a `str`; the tests' paths are UTF-8.
fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

#[test]
fn validate_accepts_the_bundled_experiments() {
    let (ok, stdout, stderr) = run(&mut recgw(&["validate", "experiments"]));
    assert!(ok, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("ok, 4 placement(s), 3 experiment(s)"), "{stdout}");
    // Without DIR it checks `experiments.dir`, the same folder by default.
    let (ok, default_stdout, stderr) = run(&mut recgw(&["validate"]));
    assert!(ok, "{stderr}");
    let digest = Catalog::load_dir(&repo().join("experiments"))
        .expect("valid")
        .digest()
        .to_string();
    assert!(
        stdout.contains(&digest) && default_stdout.contains(&digest),
        "{stdout}\n{default_stdout}"
    );
}

#[test]
fn validate_names_file_and_field_of_a_broken_folder() {
    let dir = copy_of_experiments();
    edit(
        dir.path(),
        "home-als-rank.toml",
        "cache_ttl = \"30m\"",
        "cache_ttl = \"soon\"",
    );
    let (ok, stdout, stderr) = run(&mut recgw(&["validate", path_str(dir.path())]));
    assert!(!ok, "a broken folder must fail\nstdout: {stdout}\nstderr: {stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("home-als-rank.toml"))
        .unwrap_or_else(|| panic!("no line names the file: {stderr}"));
    assert!(line.contains("arms[1].cache_ttl") && line.contains("soon"), "{line}");
    assert!(stderr.contains("1 problem(s)"), "{stderr}");

    // An unknown key: file, line and key.
    let dir = copy_of_experiments();
    edit(
        dir.path(),
        "home-als-rank.toml",
        "status = \"running\"\n",
        "status = \"running\"\ncolour = \"red\"\n",
    );
    let text = fs::read_to_string(dir.path().join("home-als-rank.toml")).expect("read");
    let line_no = text.lines().position(|l| l.starts_with("colour")).expect("edited") + 1;
    let (ok, _, stderr) = run(&mut recgw(&["validate", path_str(dir.path())]));
    assert!(!ok, "{stderr}");
    assert!(stderr.contains(&format!("home-als-rank.toml:{line_no}")), "{stderr}");
    assert!(stderr.contains("colour"), "{stderr}");
}

/// `sequential_tuning` counted impressions before results were per user and counts users now:
/// validate notes every experiment that sets its own, so a value planned in impressions is
/// looked at again; the demo's, which set none, get no note.
#[test]
fn validate_notes_a_sequential_tuning_now_counted_in_users() {
    let (ok, _, stderr) = run(&mut recgw(&["validate", "experiments"]));
    assert!(ok && !stderr.contains("sequential_tuning"), "{stderr}");
    let dir = copy_of_experiments();
    edit(
        dir.path(),
        "home-als-rank.toml",
        "status = \"running\"\n",
        "status = \"running\"\nsequential_tuning = 20000\n",
    );
    let (ok, stdout, stderr) = run(&mut recgw(&["validate", path_str(dir.path())]));
    assert!(ok, "a note, not a problem\nstdout: {stdout}\nstderr: {stderr}");
    let note = stderr
        .lines()
        .find(|l| l.starts_with("note:") && l.contains("sequential_tuning"))
        .unwrap_or_else(|| panic!("no note: {stderr}"));
    assert!(
        note.contains("home-als-rank.toml") && note.contains("20000") && note.contains("counts users"),
        "names the file and the value, and says it counts users: {note}"
    );
}

#[test]
fn validate_warns_about_model_folders_that_do_not_exist() {
    let (ok, _, stderr) = run(&mut recgw(&["validate", "experiments"]));
    assert!(ok, "{stderr}");
    assert!(!stderr.contains("warning"), "every demo model exists: {stderr}");

    // A typo in a model path, and a model on HDFS, which validate cannot check: still valid.
    let dir = copy_of_experiments();
    edit(
        dir.path(),
        "home-als-rank.toml",
        "model = \"als-v1\"",
        "model = \"als-v9\"",
    );
    edit(
        dir.path(),
        "home-als-rank.toml",
        "model = \"als-v2\"",
        "model = \"hdfs://namenode:8020/recs/als-v2\"",
    );
    let (ok, stdout, stderr) = run(&mut recgw(&["validate", path_str(dir.path())]));
    assert!(
        ok,
        "a missing model folder warns, it does not fail\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stdout.contains("ok, 4 placement(s), 3 experiment(s)"), "{stdout}");
    let warning = stderr
        .lines()
        .find(|l| l.starts_with("warning:"))
        .unwrap_or_else(|| panic!("no warning: {stderr}"));
    assert!(
        warning.contains("home-als-rank.toml")
            && warning.contains("arms[0].model")
            && warning.contains("models/als-v9"),
        "names the file, the field and the folder: {warning}"
    );
    assert_eq!(stderr.matches("warning:").count(), 1, "{stderr}");
    assert!(
        stderr.contains("hdfs://") && stderr.contains("not checked"),
        "says HDFS models were not checked: {stderr}"
    );
}

/// `recgw validate` reads a local covariate table as the gateway would: a table written by
/// `gen-models --format covariates` passes with its users counted; a folder that is a model
/// rather than a covariate table fails, naming the file and the missing column; a folder not
/// there yet only warns; and covariates on an interleave experiment are refused.
#[test]
fn validate_reads_covariate_tables() {
    let tables = tempfile::tempdir().expect("tempdir");
    let good = tables.path().join("pre");
    let (ok, stdout, stderr) = run(&mut recgw(&[
        "gen-models",
        "--out",
        path_str(&good),
        "--format",
        "covariates",
        "--users",
        "120",
    ]));
    assert!(ok, "stdout: {stdout}\nstderr: {stderr}");
    assert!(good.join("_SUCCESS").is_file() && good.join("._SUCCESS.crc").is_file());
    let model = tables.path().join("model");
    gen_models(&model, "1");

    let validate_with = |location: &str| {
        let dir = copy_of_experiments();
        common::edits::with_lines(dir.path(), "home-als-rank.toml", &format!("covariates = {location:?}"));
        let (ok, stdout, stderr) = run(&mut recgw(&["validate", path_str(dir.path())]));
        (ok, stdout, stderr, dir)
    };
    let (ok, stdout, stderr, _dir) = validate_with(&format!("file://{}", good.display()));
    assert!(ok, "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stdout.contains("home-als-rank.toml: covariates") && stdout.contains("ok, 120 user(s)"),
        "{stdout}"
    );

    let (ok, stdout, stderr, _dir) = validate_with(&format!("file://{}", model.display()));
    assert!(
        !ok,
        "a model is not a covariate table\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stderr.contains("error:") && stderr.contains("home-als-rank.toml") && stderr.contains("no column \"clicks\""),
        "{stderr}"
    );

    let (ok, _, stderr, _dir) = validate_with(&format!("file://{}", tables.path().join("later").display()));
    assert!(ok, "a table not written yet warns, it does not fail: {stderr}");
    assert!(
        stderr.contains("warning:") && stderr.contains("covariates: no folder"),
        "{stderr}"
    );

    let dir = copy_of_experiments();
    common::edits::with_lines(dir.path(), "feed-als-interleave.toml", "covariates = \"pre\"");
    let (ok, _, stderr) = run(&mut recgw(&["validate", path_str(dir.path())]));
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("feed-als-interleave.toml") && stderr.contains("covariates") && stderr.contains("only a split"),
        "{stderr}"
    );
}

#[test]
fn validate_against_reports_the_basis_points_that_change_arm() {
    // OLD: the slice [0, 50) split 50/50; NEW: the same slice split 40/60.
    let old = copy_of_experiments();
    edit(
        old.path(),
        "home-als-rank.toml",
        "traffic = [0.0, 100.0]",
        "traffic = [0.0, 50.0]",
    );
    let new = copy_of_experiments();
    edit(
        new.path(),
        "home-als-rank.toml",
        "traffic = [0.0, 100.0]",
        "traffic = [0.0, 50.0]",
    );
    edit(
        new.path(),
        "home-als-rank.toml",
        "weight = 50.0\nmodel = \"als-v1\"",
        "weight = 40.0\nmodel = \"als-v1\"",
    );
    edit(
        new.path(),
        "home-als-rank.toml",
        "weight = 50.0\nmodel = \"als-v2\"",
        "weight = 60.0\nmodel = \"als-v2\"",
    );

    // Same salt, same slice: arm buckets [4000, 5000) move from control to treatment, i.e. a
    // tenth of the arm buckets, in a slice holding half the placement.
    let slice_bp = 5_000.0;
    let moved_arm_buckets = 5_000.0 - 4_000.0;
    let expected = slice_bp * moved_arm_buckets / 10_000.0;
    assert_eq!(expected, 500.0);

    let (ok, stdout, stderr) = run(&mut recgw(&[
        "validate",
        path_str(new.path()),
        "--against",
        path_str(old.path()),
    ]));
    assert!(ok, "stdout: {stdout}\nstderr: {stderr}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("home-als-rank "))
        .unwrap_or_else(|| panic!("no line for the experiment: {stdout}"));
    assert!(line.contains(&format!("{expected:.1} bp")), "{line}");
    assert!(line.contains("5.00% of placement users"), "{line}");
    assert!(
        !line.contains("expected:"),
        "same salt: an exact count, not an expectation: {line}"
    );

    // Unchanged folders move nobody.
    let (ok, stdout, _) = run(&mut recgw(&[
        "validate",
        path_str(old.path()),
        "--against",
        path_str(old.path()),
    ]));
    assert!(ok);
    let line = stdout.lines().find(|l| l.starts_with("home-als-rank ")).expect("line");
    assert!(line.contains(" 0.0 bp"), "{line}");
}

/// The `arm` line of `recgw assign` output.
fn assigned_arm(stdout: &str) -> &str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("arm "))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no arm line: {stdout}"))
}

#[test]
fn assign_prints_the_arm_the_gateway_serves() {
    let catalog = Catalog::load_dir(&repo().join("experiments")).expect("valid");
    for user in ["42", "1", "7", "user-7f3a"] {
        let x = catalog
            .explain("home-als-rank", user, SystemTime::now())
            .expect("experiment");
        assert!(x.in_experiment, "the slice is [0, 100)");
        let (ok, stdout, stderr) = run(&mut recgw(&["assign", "home-als-rank", user]));
        assert!(ok, "{stderr}");
        assert_eq!(assigned_arm(&stdout), x.served.arm_name(), "user {user}: {stdout}");
        assert!(stdout.contains(&format!("arm {}", x.arm_bucket)), "{stdout}");
        assert!(stdout.contains("forced      false"), "{stdout}");
    }

    let (ok, stdout, stderr) = run(&mut recgw(&["assign", "home-als-rank", "qa-user-1"]));
    assert!(ok, "{stderr}");
    assert_eq!(assigned_arm(&stdout), "treatment");
    assert!(stdout.contains("forced      true"), "{stdout}");

    // The experiments folder comes from the settings.
    let moved = copy_of_experiments();
    edit(
        moved.path(),
        "home-als-rank.toml",
        "\"qa-user-1\" = \"treatment\"",
        "\"qa-user-1\" = \"control\"",
    );
    let (ok, stdout, stderr) = run(recgw(&["assign", "home-als-rank", "qa-user-1"])
        .current_dir(std::env::temp_dir())
        .env("RECGW__EXPERIMENTS__DIR", moved.path()));
    assert!(ok, "{stderr}");
    assert_eq!(assigned_arm(&stdout), "control", "{stdout}");

    let (ok, _, stderr) = run(&mut recgw(&["assign", "no-such-experiment", "42"]));
    assert!(!ok);
    assert!(stderr.contains("no-such-experiment"), "{stderr}");
    let (ok, _, stderr) = run(&mut recgw(&["assign", "home-als-rank", "a b"]));
    assert!(!ok);
    assert!(stderr.contains("not a valid user id"), "{stderr}");
}

#[test]
fn openapi_prints_the_committed_spec() {
    let (ok, stdout, stderr) = run(&mut recgw(&["openapi"]));
    assert!(ok, "{stderr}");
    let committed = fs::read_to_string(repo().join("openapi.yaml")).expect("openapi.yaml");
    if stdout != committed {
        let line = stdout
            .lines()
            .zip(committed.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| stdout.lines().count().min(committed.lines().count()));
        panic!(
            "`recgw openapi` differs from openapi.yaml from line {}: printed {:?}, committed {:?}; \
             regenerate it with `cargo run -- openapi > openapi.yaml`",
            line + 1,
            stdout.lines().nth(line),
            committed.lines().nth(line)
        );
    }
    assert!(stdout.contains("/recommendations/{user_id}"));
}

/// Every file under `dir` (relative path → bytes), sorted.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out: Vec<(PathBuf, Vec<u8>)> = fs::read_dir(dir)
        .expect("read dir")
        .map(|e| {
            let path = e.expect("entry").path();
            assert!(path.is_file(), "flat layout: {}", path.display());
            (PathBuf::from(path.file_name().unwrap()), fs::read(&path).expect("read"))
        })
        .collect();
    out.sort();
    out
}

fn gen_models(out: &Path, seed: &str) {
    let (ok, stdout, stderr) = run(&mut recgw(&[
        "gen-models",
        "--out",
        path_str(out),
        "--format",
        "nested",
        "--users",
        "50",
        "--items",
        "30",
        "--k",
        "5",
        "--seed",
        seed,
    ]));
    assert!(ok, "stdout: {stdout}\nstderr: {stderr}");
}

#[test]
fn gen_models_is_deterministic_and_writes_spark_layout() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b, c) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("c"));
    gen_models(&a, "3");
    gen_models(&b, "3");
    gen_models(&c, "4");
    let (first, second) = (files(&a), files(&b));
    let names: Vec<String> = first.iter().map(|(n, _)| n.to_string_lossy().into_owned()).collect();
    assert_eq!(first, second, "same seed, same bytes");

    let parts: Vec<&(PathBuf, Vec<u8>)> = first
        .iter()
        .filter(|(n, _)| n.to_string_lossy().starts_with("part-"))
        .collect();
    assert!(!parts.is_empty(), "{names:?}");
    for (name, bytes) in &parts {
        let name = name.to_string_lossy();
        assert!(name.ends_with("-c000.snappy.parquet"), "{name}");
        assert!(
            bytes.starts_with(b"PAR1") && bytes.ends_with(b"PAR1"),
            "{name} is Parquet"
        );
        let crc = first
            .iter()
            .find(|(n, _)| n.to_string_lossy() == format!(".{name}.crc"))
            .unwrap_or_else(|| panic!("no .{name}.crc in {names:?}"));
        assert_eq!(crc.1, hadoop_crc(bytes), "Hadoop checksum of {name}");
    }
    let success = first
        .iter()
        .find(|(n, _)| n.as_os_str() == "_SUCCESS")
        .unwrap_or_else(|| panic!("_SUCCESS in {names:?}"));
    assert!(success.1.is_empty(), "_SUCCESS is empty");
    let success_crc = first.iter().find(|(n, _)| n.as_os_str() == "._SUCCESS.crc");
    assert_eq!(success_crc.map(|c| c.1.clone()), Some(hadoop_crc(&[])), "{names:?}");
    assert_eq!(
        names.len(),
        2 * parts.len() + 2,
        "only parts, _SUCCESS and checksums: {names:?}"
    );

    let third = files(&c);
    let bytes_of_parts = |all: &[(PathBuf, Vec<u8>)]| -> Vec<Vec<u8>> {
        all.iter()
            .filter(|(n, _)| n.to_string_lossy().starts_with("part-"))
            .map(|(_, b)| b.clone())
            .collect()
    };
    assert_ne!(
        bytes_of_parts(&first),
        bytes_of_parts(&third),
        "another seed, other data"
    );

    // The output is what was asked for: users 0..50, each with 5 distinct items of 0..30,
    // best first (read with the parquet crate directly, not through the store).
    let mut users = Vec::new();
    for (name, bytes) in parts {
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes.clone()))
            .and_then(|b| b.build())
            .unwrap_or_else(|e| panic!("{}: {e}", name.display()));
        for batch in reader {
            let batch = batch.expect("batch");
            let user = batch
                .column_by_name("user")
                .expect("user column")
                .as_primitive::<Int32Type>();
            let lists = batch
                .column_by_name("recommendations")
                .expect("recommendations column")
                .as_list::<i32>();
            for row in 0..batch.num_rows() {
                let entries = lists.value(row);
                let entries = entries.as_struct();
                let items = entries
                    .column_by_name("item")
                    .expect("item")
                    .as_primitive::<Int32Type>();
                let scores = entries
                    .column_by_name("rating")
                    .expect("rating")
                    .as_primitive::<Float32Type>();
                assert_eq!(entries.len(), 5, "k = 5 for user {}", user.value(row));
                let mut distinct: Vec<i32> = items.values().to_vec();
                assert!(distinct.iter().all(|i| (0..30).contains(i)), "{distinct:?}");
                distinct.sort();
                distinct.dedup();
                assert_eq!(distinct.len(), 5, "distinct items");
                assert!(scores.values().windows(2).all(|w| w[0] >= w[1]), "best first");
                users.push(user.value(row));
            }
        }
    }
    users.sort();
    assert_eq!(users, (0..50).collect::<Vec<i32>>());
}

#[test]
fn settings_errors_name_the_key() {
    let (ok, stdout, stderr) = run(recgw(&["validate"]).env("RECGW__MODELS__ROOTS", "x"));
    assert!(!ok, "an unknown setting must fail\nstdout: {stdout}");
    assert!(stderr.contains("roots"), "{stderr}");

    let (ok, _, stderr) = run(recgw(&["validate"]).env("RECGW__MODELS__REFRESH_INTERVAL", "soon"));
    assert!(!ok);
    assert!(stderr.contains("soon"), "{stderr}");

    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("recgw.toml");
    fs::write(&file, "[experiments]\ndirectory = \"experiments\"\n").expect("write");
    let (ok, _, stderr) = run(&mut recgw(&["--config", path_str(&file), "validate"]));
    assert!(!ok);
    assert!(stderr.contains("directory"), "{stderr}");

    // A settings file is honoured: a folder that does not exist fails validation by name.
    fs::write(&file, "[experiments]\ndir = \"/nonexistent/recgw-experiments\"\n").expect("write");
    let (ok, _, stderr) = run(&mut recgw(&["validate", "--config", path_str(&file)]));
    assert!(!ok);
    assert!(stderr.contains("/nonexistent/recgw-experiments"), "{stderr}");
}

/// `recgw serve` with `env`: it must exit at once, failing, without binding (port 0 is given, so
/// that a start that goes wrong would serve on a port it picks, rather than clash with a port
/// someone else holds), and name `key`.
fn assert_serve_refused(env: &[(&str, &str)], key: &str) -> String {
    let mut command = recgw(&["serve"]);
    command.env("RECGW__SERVER__LISTEN", "127.0.0.1:0");
    for (name, value) in env {
        command.env(name, value);
    }
    // A refused start exits at once; one still running after the bound was not refused.
    let finished = run_bounded(&mut command, b"", Duration::from_secs(10));
    let (ok, stdout, stderr) = (finished.success(), finished.stdout, finished.stderr);
    assert!(
        !ok,
        "recgw serve with {env:?} must fail\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stderr.contains(key), "the message names {key}: {stderr}");
    stderr
}

#[test]
fn zero_or_absurd_durations_stop_the_start_naming_the_key() {
    for (variable, key, value) in [
        (
            "RECGW__EXPERIMENTS__RELOAD_INTERVAL",
            "experiments.reload_interval",
            "0s",
        ),
        ("RECGW__MODELS__REFRESH_INTERVAL", "models.refresh_interval", "0s"),
        ("RECGW__SERVER__REQUEST_TIMEOUT", "server.request_timeout", "0ms"),
        ("RECGW__CACHE__TTL", "cache.ttl", "0s"),
        (
            "RECGW__EXPERIMENTS__RELOAD_INTERVAL",
            "experiments.reload_interval",
            "100000years",
        ),
    ] {
        assert_serve_refused(&[(variable, value)], key);
    }
}

#[test]
fn a_redis_without_a_long_shared_secret_stops_the_start() {
    let long = "a-secret-shared-by-replicas-32-bytes+";
    for (url, secret) in [
        ("RECGW__CACHE__REDIS_URL", ""),
        ("RECGW__CACHE__REDIS_URL", "change-me"),
        ("RECGW__RESULTS__REDIS_URL", &long[..31]),
    ] {
        let key = url
            .trim_start_matches("RECGW__")
            .to_ascii_lowercase()
            .replace("__", ".");
        let stderr = assert_serve_refused(
            &[(url, "redis://127.0.0.1:1"), ("RECGW__TRACKING__SECRET", secret)],
            "tracking.secret",
        );
        assert!(
            stderr.contains(&key) && stderr.contains("RECGW__TRACKING__SECRET") && stderr.contains("32"),
            "names {key}, the rule and how to set the secret: {stderr}"
        );
    }
}
