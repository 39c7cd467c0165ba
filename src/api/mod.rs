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
mod request_id;
pub(crate) mod results;
mod routes;
mod stats;
mod ui;
mod uri_limit;

use std::sync::Arc;
use std::time::Duration;

use poem::error::SizedLimitError;
use poem::web::headers::{ContentLength, HeaderMapExt};
use poem::{Endpoint, EndpointExt, Route};
use poem_openapi::{OpenApiService, Tags};
use tokio::io::AsyncReadExt;

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
    /// What analysts open in a browser: the results UI's pages and its sign-in.
    Ui,
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
    ui::UiApi,
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
    let request_ids = gateway.logs().is_some();
    let front = front::Front::new(
        gateway.metrics().clone(),
        Arc::clone(&keys),
        timeout,
        access_log,
        request_ids,
    );
    let service = service();
    let documents = Route::new()
        .nest("/docs", service.swagger_ui())
        .at("/openapi.json", service.spec_endpoint());
    front::App {
        api: service.data(Arc::clone(&gateway)).data(keys),
        gateway,
        documents,
        front,
    }
}

/// Largest body accepted: a batch of 1000 events of about 400 bytes, with room to spare. Bodies
/// must say their length (`Content-Length`); larger ones get 413 without being parsed.
const MAX_BODY_BYTES: u64 = 1 << 20;

/// Largest refused body read and thrown away before the 413 is sent. Closing a socket that holds
/// unread bytes sends a reset, and a client still writing its body then sees "connection reset"
/// instead of the answer (it happened to a 1 MiB + 1 byte batch). Reading a body somewhat over
/// the limit, within the request's time limit, lets the client read the 413 and keep its
/// connection, as nginx's lingering close does; a body announced larger than this is answered at
/// once and its connection closed, since reading it would be the attack the limit stops.
const MAX_DRAINED_BYTES: u64 = 4 * MAX_BODY_BYTES;

/// Bounds the body of an operation that takes one (`transform = "limit_body"`).
fn limit_body(endpoint: impl Endpoint + 'static) -> impl Endpoint {
    endpoint.around(|endpoint, mut request| async move {
        let length = request
            .headers()
            .typed_get::<ContentLength>()
            .ok_or(SizedLimitError::MissingContentLength)?
            .0;
        if length > MAX_BODY_BYTES {
            if length <= MAX_DRAINED_BYTES {
                let mut body = request.take_body().into_async_read().take(length);
                // A body that ends early or fails is refused the same; the answer is what counts.
                let _ = tokio::io::copy(&mut body, &mut tokio::io::sink()).await;
            }
            return Err(SizedLimitError::PayloadTooLarge.into());
        }
        endpoint.call(request).await
    })
}
