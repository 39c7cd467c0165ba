//! The HTTP API (DESIGN.md §5): one endpoint group per file, described with poem-openapi so
//! `/docs`, `/openapi.json` and the committed `openapi.yaml` come from the code itself.

mod error;
mod experiments;
mod health;
mod recommendations;

use std::sync::Arc;

use poem::{Endpoint, EndpointExt, Route};
use poem_openapi::{OpenApiService, Tags};

pub use error::{ApiError, ErrorBody};

use crate::gateway::Gateway;

/// Groups in the generated documentation.
#[derive(Tags)]
enum ApiTags {
    /// What client apps call.
    Recommendations,
    /// What product teams and QA inspect.
    Experiments,
    /// What load balancers probe.
    Health,
}

type Apis = (
    recommendations::RecommendationsApi,
    experiments::ExperimentsApi,
    health::HealthApi,
);

fn service() -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        (
            recommendations::RecommendationsApi,
            experiments::ExperimentsApi,
            health::HealthApi,
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

/// The whole HTTP application over `gateway`.
pub fn app(gateway: Arc<Gateway>) -> impl Endpoint {
    let service = service();
    let docs = service.swagger_ui();
    let spec = service.spec_endpoint();
    Route::new()
        .nest("/", service)
        .nest("/docs", docs)
        .at("/openapi.json", spec)
        .data(gateway)
        .catch_all_error(error::json_errors)
}
