//! The `recgw` command line: a thin shell over the library, one subcommand per job.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Parser, Subcommand};

use crate::config::Settings;
use crate::experiment::{Catalog, Problem, diff, is_valid_user_id};
use crate::report::{Format, fetch, render};
use crate::server::Server;
use crate::synthetic::{GenOptions, generate};

/// A/B testing gateway for recommendations.
#[derive(Debug, Parser)]
#[command(name = "recgw", version, about)]
struct Cli {
    /// Settings file (TOML); `RECGW__SECTION__KEY` environment variables override it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP API (the default).
    Serve,
    /// Check an experiments folder; with --against, say how many users change arm.
    Validate {
        /// The folder to check (default: `experiments.dir`).
        dir: Option<PathBuf>,
        /// The folder currently deployed, to compare assignments against.
        #[arg(long, value_name = "OLD_DIR")]
        against: Option<PathBuf>,
    },
    /// Which arm of an experiment a user gets, and why.
    Assign {
        /// Experiment id.
        experiment: String,
        /// User id.
        user_id: String,
    },
    /// Write deterministic model outputs in Spark's layout.
    GenModels(GenOptions),
    /// Print the OpenAPI document (YAML).
    Openapi,
    /// Read an API key on stdin and print the SHA-256 digest that `auth.keys` holds.
    HashKey,
    /// Print an experiment's results from a running gateway.
    Report {
        /// Experiment id.
        experiment: String,
        /// The gateway's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// API key, when the gateway requires one.
        #[arg(long, env = "RECGW_API_KEY", hide_env_values = true)]
        key: Option<String>,
        /// Also draw each arm's cumulative lift per day with its always-valid interval into
        /// this SVG file (from `?by=day`).
        #[arg(long, value_name = "FILE.svg")]
        plot: Option<PathBuf>,
    },
}

/// Runs the command line; the binary's `main` is this call.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Held to the end of `main`: dropping it writes out the lines still queued.
    let _logs = init_tracing();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(e) => return fail(e),
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(&settings),
        Command::Validate { dir, against } => validate(
            dir.as_deref().unwrap_or(&settings.experiments.dir),
            against.as_deref(),
            &settings.models.root,
        ),
        Command::Assign { experiment, user_id } => assign(&settings.experiments.dir, &experiment, &user_id),
        Command::GenModels(opts) => match generate(&opts) {
            Ok(()) => {
                println!("wrote {} ({:?}, seed {})", opts.out.display(), opts.format, opts.seed);
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Command::Report {
            experiment,
            url,
            format,
            key,
            plot,
        } => {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => return fail(e),
            };
            let results = match runtime.block_on(fetch(&url, &experiment, key.as_deref(), plot.is_some())) {
                Ok(results) => results,
                Err(e) => return fail(e),
            };
            print!("{}", render(&results, format));
            match plot.map(|path| crate::report::write_plot(&results.body, &path)) {
                Some(Err(e)) => fail(e),
                _ => ExitCode::SUCCESS,
            }
        }
        Command::HashKey => {
            let mut key = String::new();
            if let Err(e) = std::io::stdin().read_line(&mut key) {
                return fail(e);
            }
            let key = key.trim_end_matches(['\n', '\r']);
            if key.is_empty() {
                return fail("no key on stdin");
            }
            println!("{}", crate::auth::hash_key(key));
            ExitCode::SUCCESS
        }
        Command::Openapi => {
            print!("{}", crate::api::spec_yaml());
            ExitCode::SUCCESS
        }
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::FAILURE
}

/// Logs go to stderr, filtered by `RUST_LOG` (default `info`); `RUST_LOG_FORMAT=json` writes
/// one JSON object per line for log pipelines. Lines are queued and written by a thread of
/// their own, so a request never waits on stderr (a slow terminal or a full pipe); when the
/// queue is full (128,000 lines) new lines are dropped rather than slowing requests.
fn init_tracing() -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    if std::env::var("RUST_LOG_FORMAT").is_ok_and(|format| format.eq_ignore_ascii_case("json")) {
        logs.json().with_current_span(true).with_span_list(false).init();
    } else {
        logs.init();
    }
    guard
}

/// Descriptors kept for everything but client connections: part files of loaded models (Spark
/// writes 200 a model by default), snapshots, Redis and the log root.
const FILES_BESIDE_CONNECTIONS: u64 = 1024;

fn serve(settings: &Settings) -> ExitCode {
    // Each loaded part file holds a descriptor (see `store::reader`) and each client a socket:
    // the soft limit (often 1024) goes up to the hard one, as Go's runtime does for its servers.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            tracing::debug!(limit, "open file limit");
            let connections = settings.server.max_connections as u64;
            if limit < connections.saturating_add(FILES_BESIDE_CONNECTIONS) {
                tracing::warn!(
                    limit,
                    "server.max_connections ({connections}) leaves fewer than {FILES_BESIDE_CONNECTIONS} of the \
                     open file limit for models and Redis: lower it, or raise the hard limit (ulimit -Hn)"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit"),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return fail(e),
    };
    runtime.block_on(async {
        let server = match Server::bind(settings).await {
            Ok(server) => server,
            Err(e) => return fail(e),
        };
        match server.run(shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        }
    })
}

/// Resolves on SIGINT or SIGTERM, so orchestrators get a clean drain.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => return std::mem::drop(interrupt.await),
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutting down: finishing in-flight requests");
}

fn load(dir: &Path) -> Result<Catalog, ExitCode> {
    Catalog::load_dir(dir).map_err(|problems| {
        for problem in &problems.0 {
            eprintln!("{problem}");
        }
        eprintln!("{}: {} problem(s)", dir.display(), problems.0.len());
        ExitCode::FAILURE
    })
}

fn validate(dir: &Path, against: Option<&Path>, models_root: &str) -> ExitCode {
    let catalog = match load(dir) {
        Ok(catalog) => catalog,
        Err(code) => return code,
    };
    let holdouts = catalog.placements().filter(|p| p.holdout.is_some()).count();
    let also = match holdouts {
        0 => String::new(),
        n => format!(", {n} holdout(s)"),
    };
    println!(
        "{}: ok, {} placement(s), {} experiment(s){also}, digest {}",
        dir.display(),
        catalog.placements().count(),
        catalog.experiments().count() - holdouts,
        catalog.digest()
    );
    warn_missing_models(&catalog, dir, models_root);
    note_sequential_tuning(&catalog);
    if !check_covariates(&catalog, models_root) {
        return ExitCode::FAILURE;
    }
    let Some(old_dir) = against else {
        return ExitCode::SUCCESS;
    };
    let old = match load(old_dir) {
        Ok(old) => old,
        Err(code) => return code,
    };
    for change in diff(&old, &catalog) {
        println!(
            "{:<32} {:<16} {:>8.1} bp ({:.2}% of placement users) change arm{}",
            change.experiment,
            change.placement,
            change.changed_bp,
            change.changed_bp / 100.0,
            if change.expected {
                " (expected: salt changed or winner set)"
            } else {
                ""
            }
        );
    }
    ExitCode::SUCCESS
}

/// Notes every experiment that sets its own `sequential_tuning`: the number counted impressions
/// before results took the user as the unit, and counts users now, so a value planned in
/// impressions makes the always-valid interval tightest far later than meant.
fn note_sequential_tuning(catalog: &Catalog) {
    for experiment in catalog.experiments() {
        if experiment.sequential_tuning != crate::experiment::DEFAULT_SEQUENTIAL_TUNING {
            eprintln!(
                "note: {}: sequential_tuning = {} counts users (both arms), not impressions as before results \
                 were per user: a value planned in impressions should be divided by the impressions per user",
                experiment.file.display(),
                experiment.sequential_tuning
            );
        }
    }
}

/// Warns, without failing, about every model whose local folder does not exist: a typo there
/// passes validation (a model may be written after its experiment) and would otherwise only
/// show in `/ready`. Models on `hdfs://` are not checked, since that means reaching the name
/// node; the gateway reports them in `/ready`.
fn warn_missing_models(catalog: &Catalog, dir: &Path, root: &str) {
    let defaults = catalog.placements().map(|p| {
        let field = format!("placements.{}.default_model", p.name);
        (dir.join("placements.toml"), field, &p.default_model.location)
    });
    let arms = catalog.experiments().flat_map(|e| {
        let file = &e.file;
        e.arms
            .iter()
            .enumerate()
            .map(move |(i, arm)| (file.clone(), format!("arms[{i}].model"), &arm.model.location))
    });
    let mut on_hdfs = 0;
    for (file, field, location) in defaults.chain(arms) {
        match local_folder(root, location) {
            None => on_hdfs += 1,
            Some(folder) if !folder.is_dir() => {
                let message = format!("no folder {} (models.root {root:?})", folder.display());
                let problem = Problem {
                    file,
                    line: None,
                    field,
                    message,
                };
                eprintln!("warning: {problem}");
            }
            Some(_) => {}
        }
    }
    if on_hdfs > 0 {
        eprintln!(
            "note: {on_hdfs} model(s) on hdfs:// not checked: validate does not reach name nodes (the gateway's \
             /ready reports each model's error)"
        );
    }
}

/// Reads every covariate table on a local folder as the gateway would (committed, the three
/// columns, integer counts, one row per user) and says how many users it holds; a folder not
/// there yet is a warning, as for a model, but a table that is there and cannot be read fails
/// the validation. Tables on HDFS are left to the gateway's `/ready`.
fn check_covariates(catalog: &Catalog, root: &str) -> bool {
    let tables: Vec<_> = catalog
        .experiments()
        .filter_map(|e| e.covariates.as_ref().map(|spec| (e, spec)))
        .collect();
    if tables.is_empty() {
        return true;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start a runtime to read covariate tables: {e}");
            return false;
        }
    };
    let mut ok = true;
    for (experiment, spec) in tables {
        let file = experiment.file.display();
        match local_folder(root, &spec.location) {
            None => eprintln!(
                "note: {file}: covariates {:?} on hdfs:// not checked (the gateway's /ready reports it)",
                spec.location
            ),
            Some(folder) if !folder.is_dir() => {
                eprintln!(
                    "warning: {file}: covariates: no folder {} (models.root {root:?})",
                    folder.display()
                )
            }
            Some(_) => match runtime.block_on(crate::store::covariates::check(root, spec)) {
                Ok(users) => println!("{file}: covariates {:?}: ok, {users} user(s)", spec.location),
                Err(problem) => {
                    eprintln!("error: {file}: covariates {:?}: {problem}", spec.location);
                    ok = false;
                }
            },
        }
    }
    ok
}

/// The local folder a model location names under `root` (for `name/*`, the folder of its
/// versions), as the gateway resolves it; `None` on HDFS.
fn local_folder(root: &str, location: &str) -> Option<PathBuf> {
    let location = location.strip_suffix("/*").unwrap_or(location);
    let uri = match location.contains("://") {
        true => location.to_string(),
        false => format!("{}/{location}", root.trim_end_matches('/')),
    };
    if uri.starts_with("hdfs://") {
        return None;
    }
    Some(PathBuf::from(uri.strip_prefix("file://").unwrap_or(&uri)))
}

fn assign(dir: &Path, experiment: &str, user: &str) -> ExitCode {
    if !is_valid_user_id(user) {
        return fail(format!(
            "{user:?} is not a valid user id (1-128 characters from [A-Za-z0-9._:@-])"
        ));
    }
    let catalog = match load(dir) {
        Ok(catalog) => catalog,
        Err(code) => return code,
    };
    let Some(x) = catalog.explain(experiment, user, SystemTime::now()) else {
        return fail(format!("no experiment {experiment:?} in {}", dir.display()));
    };
    let e = x.experiment;
    println!(
        "experiment  {} (placement {}, {})",
        e.id,
        e.placement,
        e.status.as_str()
    );
    println!("user        {user}");
    println!("arm         {}", x.arm().unwrap_or("- (not in this experiment)"));
    println!("forced      {}", x.in_experiment && x.served.forced);
    println!(
        "buckets     placement {} (slice [{}, {})), arm {} -> {}",
        x.placement_bucket, e.slice.start, e.slice.end, x.arm_bucket, x.arm_for_bucket
    );
    println!("why         {}", x.reason());
    println!(
        "served      {} / {}",
        x.served.experiment.map_or("default", |s| s.id.as_str()),
        x.served.arm_name()
    );
    ExitCode::SUCCESS
}
