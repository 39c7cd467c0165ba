//! The HTTP API (DESIGN.md §5): one endpoint group per file, described with poem-openapi so
//! `/docs`, `/openapi.json` and the committed `openapi.yaml` come from the code itself.

mod admin;
mod error;
mod experiments;
mod health;
mod metrics;
mod recommendations;

use std::sync::Arc;

use poem::{Endpoint, EndpointExt, Route};
use poem_openapi::{OpenApiService, Tags};

pub use error::{ApiError, ErrorBody};

use crate::gateway::Gateway;
use crate::metrics::Metrics;

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

type Apis = (
    recommendations::RecommendationsApi,
    experiments::ExperimentsApi,
    health::HealthApi,
    metrics::MetricsApi,
    admin::AdminApi,
);

fn service() -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        (
            recommendations::RecommendationsApi,
            experiments::ExperimentsApi,
            health::HealthApi,
            metrics::MetricsApi,
            admin::AdminApi,
        ),
        "recgw",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "A/B testing gateway for recommendations: assigns users to experiment arms and serves each arm's model output.",
    )
}

/// The OpenAPI document as YAML: what `recgw openapi` prints and `openapi.yaml` holds.
pub fn spec_yaml() -> String {
    service().spec_yaml()
}

/// The whole HTTP application over `gateway`, exporting `metrics`.
pub fn app(gateway: Arc<Gateway>, metrics: Metrics) -> impl Endpoint {
    let service = service();
    let docs = service.swagger_ui();
    let spec = service.spec_endpoint();
    Route::new()
        .nest("/", service)
        .nest("/docs", docs)
        .at("/openapi.json", spec)
        .data(gateway)
        .data(metrics)
        .catch_all_error(error::json_errors)
}
