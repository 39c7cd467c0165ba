//! The HTTP API (ARCHITECTURE.md §5): one endpoint group per file, described with poem-openapi so
//! `/docs`, `/openapi.json` and the committed `openapi.yaml` come from the code itself.

mod admin;
mod auth;
mod error;
mod events;
mod experiments;
mod fast_json;
mod health;
mod metrics;
mod recommendations;
mod results;
mod routes;
mod stats;
mod uri_limit;

use std::sync::Arc;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing::Instrument;

use futures::StreamExt;
use poem::http::{StatusCode, header};
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response, Route};
use poem_openapi::{OpenApiService, Tags};

use error::Documented;
pub use routes::{OTHER, RouteInfo, route};
pub(crate) use uri_limit::JsonUriTooLong;

use crate::auth::{Keys, Role};
use crate::gateway::{Gateway, RELOAD_BUDGET};
use crate::metrics::NONE;

/// Groups in the generated documentation.
#[derive(Tags)]
enum ApiTags {
    /// What client apps call.
    Recommendations,
    /// What product teams and QA inspect.
    Experiments,
    /// What load balancers and Prometheus probe.
    Health,
    /// What operators call.
    Admin,
}

type Apis = Documented<(
    recommendations::RecommendationsApi,
    events::EventsApi,
    experiments::ExperimentsApi,
    results::ResultsApi,
    stats::StatsApi,
    health::HealthApi,
    metrics::MetricsApi,
    admin::AdminApi,
)>;

pub(crate) fn service() -> OpenApiService<Apis, ()> {
    OpenApiService::new(Documented(Default::default()), "recgw", env!("CARGO_PKG_VERSION")).description(
        "A/B testing gateway for recommendations: assigns users to experiment arms and serves each arm's model output.",
    )
}

/// The OpenAPI document as YAML: what `recgw openapi` prints and `openapi.yaml` holds.
pub(crate) fn spec_yaml() -> String {
    service().spec_yaml()
}

/// The whole HTTP application over `gateway`, open to the callers `keys` admit; requests running
/// longer than `timeout` get 504 (408 while their body has not arrived).
pub(crate) fn app(gateway: Arc<Gateway>, keys: Arc<Keys>, timeout: Duration) -> impl Endpoint {
    let for_metrics = Arc::clone(&gateway);
    let service = service();
    let docs = service.swagger_ui();
    let spec = service.spec_endpoint();
    Route::new()
        .nest("/", service)
        .nest("/docs", docs)
        .at("/openapi.json", spec)
        .data(gateway)
        .around(move |endpoint, request| auth::authorize(endpoint, request, Arc::clone(&keys)))
        .around(move |endpoint, request| limits(endpoint, request, timeout))
        .around(move |endpoint, request| observe(endpoint, request, Arc::clone(&for_metrics)))
        .catch_all_error(error::json_errors)
        .around(log_request)
}

/// Largest body accepted: a batch of 1000 events of about 400 bytes, with room to spare. Bodies
/// must say their length (`Content-Length`); larger ones get 413 before they are read.
const MAX_BODY_BYTES: usize = 1 << 20;

/// Bounds the body of an operation that takes one (`transform = "limit_body"`).
fn limit_body(endpoint: impl Endpoint) -> impl Endpoint {
    endpoint.with(poem::middleware::SizeLimit::new(MAX_BODY_BYTES))
}

/// Request headers larger than this in all (names and values) get a 431 JSON error. Real
/// clients send well under 2 KiB; nginx's default buffers allow 32 KiB. Past hyper's own
/// limit (a 400 KiB read buffer, 100 headers) the connection gets hyper's bare 431 instead.
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Bounds what one request may hold: its headers' size, and its time (`server.request_timeout`).
/// A request past its time gets 504, or 408 when it is still waiting for its own body (a client
/// that stalls mid-body is the client's fault, not the gateway's); either way hyper then closes
/// the connection, since the body was not read to its end. Admin routes get the time a reload
/// may wait for new models on top, so `POST /admin/reload` answers what the reload did.
async fn limits<E: Endpoint>(endpoint: Arc<E>, mut request: Request, timeout: Duration) -> poem::Result<Response> {
    let timeout = match route(request.uri().path()).role {
        Some(Role::Admin) => timeout.saturating_add(RELOAD_BUDGET),
        _ => timeout,
    };
    let header_bytes: usize = request.headers().iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Err(poem::Error::from_string(
            format!("request headers are {header_bytes} bytes; at most {MAX_HEADER_BYTES} are accepted"),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        ));
    }
    // Only requests that carry a body pay for knowing whether it arrived.
    let body_read = (request.headers().contains_key(header::CONTENT_LENGTH)
        || request.headers().contains_key(header::TRANSFER_ENCODING))
    .then(|| {
        let read = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&read);
        let end = futures::stream::poll_fn(move |_| {
            flag.store(true, Ordering::Relaxed);
            std::task::Poll::Ready(None)
        });
        let body = request.take_body().into_bytes_stream().chain(end);
        request.set_body(poem::Body::from_bytes_stream(body));
        read
    });
    match tokio::time::timeout(timeout, endpoint.call(request)).await {
        Ok(result) => result.map(IntoResponse::into_response),
        Err(_) if body_read.is_some_and(|read| !read.load(Ordering::Relaxed)) => Err(poem::Error::from_string(
            format!("the request body did not arrive within {timeout:?}"),
            StatusCode::REQUEST_TIMEOUT,
        )),
        Err(_) => Err(poem::Error::from_status(StatusCode::GATEWAY_TIMEOUT)),
    }
}

/// The header carrying a request's id, accepted from the caller or generated.
const REQUEST_ID: &str = "x-request-id";

/// Generated request ids: a random per-process prefix and a counter, unique across replicas
/// without coordination.
fn next_request_id() -> String {
    static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| getrandom::u32().unwrap_or_else(|_| std::process::id()));
    format!("{prefix:08x}-{:x}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Gives every request an id (the caller's `X-Request-Id` when it is sane, else a new one),
/// echoes it, and logs one line per request with method, route, status and latency; the
/// recommendation handler adds experiment, arm and source to the same line.
async fn log_request<E: Endpoint>(endpoint: Arc<E>, request: Request) -> poem::Result<Response> {
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| (1..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(next_request_id, str::to_string);
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        route = route(request.uri().path()).template,
        experiment = tracing::field::Empty,
        arm = tracing::field::Empty,
        source = tracing::field::Empty,
        key = tracing::field::Empty,
    );
    let started = Instant::now();
    let result = endpoint.call(request).instrument(span.clone()).await;
    let mut response = match result {
        Ok(response) => response.into_response(),
        Err(e) => e.into_response(),
    };
    if let Ok(value) = poem::http::HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    span.in_scope(|| tracing::info!(status = response.status().as_u16(), latency_ms, "request"));
    Ok(response)
}

/// Times every request and counts its failures. `/recommendations` counts its own outcomes
/// with arm labels; only what never reached its handler (parameter errors, timeouts) is
/// counted here.
async fn observe<E: Endpoint>(endpoint: Arc<E>, request: Request, gateway: Arc<Gateway>) -> poem::Result<Response> {
    let metrics = gateway.metrics();
    let label = route(request.uri().path()).label;
    let started = Instant::now();
    let result = endpoint.call(request).await.map(IntoResponse::into_response);
    let parse_error = result
        .as_ref()
        .err()
        .is_some_and(|e| e.is::<poem_openapi::error::ParseParamError>());
    // The handler counted what it answered itself (successes and the errors it built).
    let counted_by_handler = match &result {
        Ok(_) => true,
        Err(e) => e.is_from_response(),
    };
    if label == "recommendations" && counted_by_handler {
        return result;
    }
    let status = match &result {
        Ok(response) => response.status(),
        Err(e) => e.status(),
    };
    let elapsed = started.elapsed();
    if status.is_client_error() || status.is_server_error() {
        let kind = match parse_error {
            true => "invalid_parameter".to_string(),
            false => status
                .canonical_reason()
                .unwrap_or("error")
                .to_ascii_lowercase()
                .replace(' ', "_"),
        };
        metrics.request_failed(label, NONE, &kind, elapsed);
    } else {
        metrics.observe(label, NONE, elapsed);
    }
    result
}
