//! The gateway's own work per request, without sockets: `GET /recommendations/{user}` on the demo's
//! `home` placement (a running experiment, so each answer is assigned, counted as an exposure and
//! given a tracking token) answered from the local tier, through the whole HTTP application
//! (`Server::app`: the layers in front of the handlers, routing, parameters, JSON). Also counts
//! the heap allocations one such request makes, with a counting global allocator over the
//! binary's own (mimalloc), and prints
//! them beside criterion's figures; a bare poem route answering the same bytes is measured in
//! the same run, so both figures have a baseline. The same request on the demo's `feed`
//! placement (an interleave experiment: both arms' lists read from the local tier and merged
//! per request) is measured beside it, as a ratio of the split request.
//!
//! `cargo bench --bench request`; with `RECGW_BENCH_LOGS=DIR` the gateway also writes its
//! exposure and event logs under `DIR` (flushed every second), to see what they cost a request.

use std::alloc::{GlobalAlloc, Layout};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use poem::http::StatusCode;
use poem::{Endpoint, EndpointExt, Request, Response, Route, get, handler};
use recgw::config::Settings;
use recgw::server::Server;

/// The allocator `recgw` runs with, counting allocations (and reallocations, which allocate too).
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to mimalloc.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is mimalloc's.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The demo gateway's application, built as `recgw serve` builds it (nothing listens).
fn demo_app(runtime: &tokio::runtime::Runtime) -> poem::endpoint::BoxEndpoint<'static> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = |p: &str| repo.join(p).to_str().expect("UTF-8 path").to_string();
    let snapshots = std::env::temp_dir().join(format!("recgw-bench-request-{}", std::process::id()));
    let env = [
        ("RECGW__SERVER__LISTEN", "127.0.0.1:0".to_string()),
        ("RECGW__EXPERIMENTS__DIR", path("experiments")),
        ("RECGW__MODELS__ROOT", path("models")),
        (
            "RECGW__MODELS__SNAPSHOT_DIR",
            snapshots.to_str().expect("UTF-8").to_string(),
        ),
    ];
    let logs = std::env::var("RECGW_BENCH_LOGS").ok().map(|dir| {
        [
            ("RECGW__LOGS__ROOT", dir),
            ("RECGW__LOGS__FLUSH_INTERVAL", "1s".to_string()),
        ]
    });
    let env = env.into_iter().chain(logs.into_iter().flatten());
    let settings = Settings::load_from(None, env.map(|(k, v)| (k.to_string(), v))).expect("settings");
    runtime.block_on(async {
        let server = Server::bind(&settings).await.expect("the demo gateway starts");
        let app = server.app().map_to_response().boxed();
        // Serving also runs the model loaders, which the in-process app relies on; its socket
        // takes no requests.
        tokio::spawn(server.run(std::future::pending()));
        // Models load in the background: wait until the user is served from a model.
        for _ in 0..600 {
            if call(&app, SPLIT).await.0 == StatusCode::OK && call(&app, INTERLEAVED).await.0 == StatusCode::OK {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        app
    })
}

async fn call(app: &poem::endpoint::BoxEndpoint<'static>, uri: &str) -> (StatusCode, bytes::Bytes) {
    let response = app.get_response(Request::builder().uri_str(uri).finish()).await;
    let status = response.status();
    (status, response.into_body().into_bytes().await.expect("body"))
}

/// The split experiment's request and the interleave experiment's.
const SPLIT: &str = "/recommendations/42?placement=home";
const INTERLEAVED: &str = "/recommendations/42?placement=feed";

/// Allocations of one request to `uri`, the median of 101 (a request now and then also pays
/// for a cache's housekeeping).
fn allocations_per_request(
    runtime: &tokio::runtime::Runtime,
    app: &poem::endpoint::BoxEndpoint<'static>,
    uri: &str,
) -> u64 {
    let mut counts: Vec<u64> = (0..101)
        .map(|_| {
            let before = ALLOCATIONS.load(Ordering::Relaxed);
            runtime.block_on(call(app, uri));
            ALLOCATIONS.load(Ordering::Relaxed) - before
        })
        .collect();
    counts.sort_unstable();
    counts[counts.len() / 2]
}

fn bench_request(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let app = demo_app(&runtime);
    let (status, body) = runtime.block_on(call(&app, SPLIT));
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let (status, interleaved) = runtime.block_on(call(&app, INTERLEAVED));
    assert_eq!(status, StatusCode::OK, "{interleaved:?}");
    assert!(
        interleaved.windows(8).any(|w| w == b"\"team\":\""),
        "the feed answer is interleaved: {interleaved:?}"
    );

    #[handler]
    fn same_bytes(body: poem::web::Data<&bytes::Bytes>) -> Response {
        Response::builder()
            .content_type("application/json; charset=utf-8")
            .body(body.0.clone())
    }
    let bare = Route::new()
        .at("/recommendations/:user_id", get(same_bytes))
        .data(body)
        .map_to_response()
        .boxed();

    let mut group = c.benchmark_group("local hit, experiment placement, in process");
    group.bench_function("bare poem route, same bytes", |b| {
        b.iter(|| runtime.block_on(call(&bare, SPLIT)))
    });
    group.bench_function("recgw", |b| b.iter(|| runtime.block_on(call(&app, SPLIT))));
    group.bench_function("recgw, interleaved placement", |b| {
        b.iter(|| runtime.block_on(call(&app, INTERLEAVED)))
    });
    group.finish();
    println!(
        "heap allocations per request: recgw {}, recgw interleaved {}, bare poem route {}",
        allocations_per_request(&runtime, &app, SPLIT),
        allocations_per_request(&runtime, &app, INTERLEAVED),
        allocations_per_request(&runtime, &bare, SPLIT)
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(Duration::from_secs(5));
    targets = bench_request
}
criterion_main!(benches);
