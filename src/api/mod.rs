//! The HTTP API (ARCHITECTURE.md §5): one endpoint group per file, described with poem-openapi so
//! `/docs`, `/openapi.json` and the committed `openapi.yaml` come from the code itself.

mod admin;
mod auth;
mod error;
mod events;
mod experiments;
mod fast_json;
mod front;
mod health;
mod metrics;
mod recommendations;
mod results;
mod routes;
mod stats;
mod uri_limit;

use std::sync::Arc;
use std::time::Duration;

use poem::{Endpoint, EndpointExt, Route};
use poem_openapi::{OpenApiService, Tags};

use error::Documented;
pub use routes::{OTHER, RouteInfo, route};
pub(crate) use uri_limit::JsonUriTooLong;

use crate::auth::Keys;
use crate::gateway::Gateway;

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
/// longer than `timeout` get 504 (408 while their body has not arrived); `access_log` writes a
/// line per request.
pub(crate) fn app(gateway: Arc<Gateway>, keys: Arc<Keys>, timeout: Duration, access_log: bool) -> impl Endpoint {
    let front = Arc::new(front::Front::new(gateway.metrics().clone(), keys, timeout, access_log));
    let service = service();
    let docs = service.swagger_ui();
    let spec = service.spec_endpoint();
    Route::new()
        .nest("/", service)
        .nest("/docs", docs)
        .at("/openapi.json", spec)
        .data(gateway)
        .around(move |endpoint, request| front::front(endpoint, request, Arc::clone(&front)))
}

/// Largest body accepted: a batch of 1000 events of about 400 bytes, with room to spare. Bodies
/// must say their length (`Content-Length`); larger ones get 413 before they are read.
const MAX_BODY_BYTES: usize = 1 << 20;

/// Bounds the body of an operation that takes one (`transform = "limit_body"`).
fn limit_body(endpoint: impl Endpoint) -> impl Endpoint {
    endpoint.with(poem::middleware::SizeLimit::new(MAX_BODY_BYTES))
}
