//! Serving-path benchmarks (not timed tests): assignment of one user, the tracking token of a
//! 10-item page (signed and verified, in the binary format and the JSON one it replaced), and
//! a store point lookup on a generated 1,000,000-user × 50-item model, with the index build
//! rate, index bytes per user and lookup p50/p99 printed beside criterion's figures.
//!
//! `cargo bench --bench serving` (`-- token` for the token cases only); the model is generated
//! once under `target/bench-models`. `RECGW_BENCH_USERS` shrinks it for a quick run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use recgw::experiment::Catalog;
use recgw::feedback::token::{Claims, ClaimsRef, Signer};
use recgw::store::{ColumnNames, LoadedModel, ModelRegistry, ModelSpec};
use recgw::synthetic::{GenFormat, GenOptions, generate};

fn users() -> u32 {
    std::env::var("RECGW_BENCH_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn bench_assignment(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("placements.toml"),
        "[placements.home]\ndefault_model = \"popular\"\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("e.toml"),
        "id = \"home-als\"\nplacement = \"home\"\nstatus = \"running\"\ntraffic = [0.0, 50.0]\n\
         [[arms]]\nname = \"control\"\nweight = 50.0\nmodel = \"a\"\n\
         [[arms]]\nname = \"treatment\"\nweight = 50.0\nmodel = \"b\"\n",
    )
    .expect("write");
    let catalog = Catalog::load_dir(dir.path()).expect("valid");
    let now = SystemTime::now();
    let ids: Vec<String> = (0..1024).map(|i| format!("user-{i:07}")).collect();
    let mut i = 0;
    c.bench_function("assign one user", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            catalog.assign("home", &ids[i], now).map(|a| a.arm_name().len())
        })
    });
}

/// The token of a 10-item page, signed and verified in both formats. The JSON sign is also
/// measured as the gateway paid it, building owned claims from the served response first.
fn bench_token(c: &mut Criterion) {
    let signer = Signer::new("a-tracking-secret-of-32-bytes-or-more", Duration::from_secs(86_400));
    let issued_at = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let (placement, experiment, arm, model_version, user) = (
        "home",
        Some("home-als-rank"),
        "treatment",
        "als-v2@51a113-6615355fcd761-0",
        "user-0000042",
    );
    let tags: Vec<u32> = (1..=10u32).map(|i| i.wrapping_mul(0x9E37_79B9)).collect();
    let nonce = 0x5EED_0000_0000_002A;
    let view = || ClaimsRef {
        placement,
        experiment,
        arm,
        model_version,
        user,
        issued_at,
        nonce,
        uncounted: false,
        items: tags.iter().copied(),
        teams: None,
        offset: 0,
    };
    let owned = || Claims {
        placement: placement.to_string(),
        experiment: experiment.map(str::to_string),
        arm: arm.to_string(),
        model_version: model_version.to_string(),
        user: user.to_string(),
        issued_at,
        nonce,
        uncounted: false,
        items: tags.clone(),
        teams: None,
        offset: 0,
    };
    let claims = owned();
    let (binary, json) = (signer.sign(view()), signer.sign_json(&claims));
    println!(
        "token of 10 items: {} characters binary, {} JSON",
        binary.len(),
        json.len()
    );
    let now = SystemTime::now();
    c.bench_function("token sign binary (10 items)", |b| {
        b.iter(|| signer.sign(std::hint::black_box(view())))
    });
    c.bench_function("token sign json (10 items)", |b| {
        b.iter(|| signer.sign_json(std::hint::black_box(&claims)))
    });
    c.bench_function("token sign json with owned claims (10 items)", |b| {
        b.iter(|| signer.sign_json(&std::hint::black_box(owned())))
    });
    c.bench_function("token verify binary (10 items)", |b| {
        b.iter(|| signer.verify(std::hint::black_box(&binary), now).expect("valid"))
    });
    c.bench_function("token verify json (10 items)", |b| {
        b.iter(|| signer.verify(std::hint::black_box(&json), now).expect("valid"))
    });
}

/// Generates the model once; a `_SUCCESS` marks a complete earlier run.
fn model_dir(users: u32) -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("target"));
    let root = target.join("bench-models");
    let dir = root.join(format!("nested-{users}x50"));
    if !dir.join("_SUCCESS").exists() {
        let started = Instant::now();
        generate(&GenOptions {
            out: dir.clone(),
            users,
            items: 100_000,
            k: 50,
            seed: 7,
            format: GenFormat::Nested,
            partitions: 8,
            row_group_rows: 65_536,
        })
        .expect("generate model");
        eprintln!("generated {} in {:.1?}", dir.display(), started.elapsed());
    }
    root
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn bench_lookup(c: &mut Criterion) {
    let users = users();
    let root = model_dir(users);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let spec = ModelSpec::new(format!("nested-{users}x50"), ColumnNames::default());
    let registry = ModelRegistry::new(
        root.to_str().expect("utf-8 path"),
        [spec.clone()],
        recgw::metrics::Metrics::new(),
    )
    .expect("registry");
    let started = Instant::now();
    runtime.block_on(registry.refresh());
    let build = started.elapsed();
    let model: Arc<LoadedModel> = registry.get(&spec).expect("model loaded");
    println!(
        "index: {} users loaded in {:.2?} ({:.2} M users/s, whole load incl. footers), {:.1} bytes/user",
        model.indexed_users(),
        build,
        model.indexed_users() as f64 / build.as_secs_f64() / 1e6,
        model.index_bytes() as f64 / model.indexed_users() as f64
    );

    // Percentiles over uniformly drawn users: criterion reports the mean and median only.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next_user = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % u64::from(users)).to_string()
    };
    let mut samples: Vec<Duration> = (0..5_000)
        .map(|_| {
            let user = next_user();
            let t = Instant::now();
            let list = runtime
                .block_on(model.lookup(&user))
                .expect("lookup")
                .expect("user present");
            assert_eq!(list.len(), 50);
            t.elapsed()
        })
        .collect();
    samples.sort_unstable();
    println!(
        "lookup over {} random users: p50 {:.1?}, p99 {:.1?}, max {:.1?}",
        samples.len(),
        percentile(&samples, 0.50),
        percentile(&samples, 0.99),
        samples[samples.len() - 1]
    );

    c.bench_function("store point lookup (nested, 50 items)", |b| {
        b.iter(|| runtime.block_on(model.lookup(&next_user())).expect("lookup"))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(Duration::from_secs(5));
    targets = bench_assignment, bench_token, bench_lookup
}
criterion_main!(benches);
