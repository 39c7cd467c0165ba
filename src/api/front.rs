//! The one layer in front of every route: the request id, the key check, the size and time
//! limits, the endpoint metrics, the JSON error shape and the access log, in one `async fn`
//! around the routes. Five nested layers each wrapped the next one's future and moved it, which
//! cost more than the checks themselves; one layer reads the route once and keeps one future.
//! The route it reads also picks the endpoint: the API, the documents about it, or, for a
//! plain recommendation request (the request clients make on every page view), the handler's
//! own work without the API's extractor chain (`recommendations::direct`). An outer router in
//! front of the API's own cost a second match, a boxed future and the path's captures as
//! strings per request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use poem::error::NotFoundError;
use poem::http::{StatusCode, header};
use poem::{Endpoint, IntoResponse, Request, Response};
use prometheus::Histogram;
use tracing::Instrument;

use super::request_id::{REQUEST_ID, RequestId, request_id};
use super::routes::{self, ROUTES, RouteInfo};
use super::{auth, error, recommendations, ui};
use crate::auth::{Keys, Role};
use crate::gateway::{Gateway, RELOAD_BUDGET};
use crate::metrics::{Metrics, NONE};

/// Request headers larger than this in all (names and values) get a 431 JSON error. Real
/// clients send well under 2 KiB; nginx's default buffers allow 32 KiB. Past hyper's own
/// limit (a 400 KiB read buffer, 100 headers) the connection gets hyper's bare 431 instead.
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// What the layer needs, built once per application.
pub(crate) struct Front {
    /// The registry the layer counts failures into (the handlers count their own arm metrics).
    metrics: Metrics,
    /// API keys; empty when auth is off.
    keys: Arc<Keys>,
    /// `server.request_timeout`.
    timeout: Duration,
    /// `server.access_log`: one log line per request; off, requests log nothing unless they fail
    /// inside the gateway, and the request span is not built at all.
    access_log: bool,
    /// Whether handlers are given the request id ([`RequestId`]): only while the exposure log
    /// records it, so requests without logs pay nothing for it.
    request_ids: bool,
    /// `response_time_seconds{endpoint}` of each route of [`ROUTES`] (then of unknown paths),
    /// resolved once so a request does no label lookup.
    latency: Vec<Histogram>,
}

impl Front {
    /// The layer's state: counting into `metrics`, admitting the callers `keys` admit.
    pub(crate) fn new(
        metrics: Metrics,
        keys: Arc<Keys>,
        timeout: Duration,
        access_log: bool,
        request_ids: bool,
    ) -> Self {
        let latency = ROUTES
            .iter()
            .chain([&routes::OTHER])
            .map(|route| metrics.endpoint_latency(route.label))
            .collect();
        Front {
            metrics,
            keys,
            timeout,
            access_log,
            request_ids,
            latency,
        }
    }
}

/// The whole application: [`Front`] in front of the API and of its documents.
pub(crate) struct App<A, D> {
    /// The OpenAPI service, with the gateway as its data: every route of [`ROUTES`] but the
    /// documents, and the 405s of methods a route does not take. Paths outside [`ROUTES`] never
    /// reach it (see [`guarded`]).
    pub(crate) api: A,
    /// The gateway, for the recommendation requests answered without the OpenAPI service
    /// ([`recommendations::direct`]).
    pub(crate) gateway: Arc<Gateway>,
    /// `/docs/*` (Swagger UI) and `/openapi.json`.
    pub(crate) documents: D,
    /// What the layer needs.
    pub(crate) front: Front,
}

impl<A: Endpoint, D: Endpoint> Endpoint for App<A, D> {
    type Output = Response;

    async fn call(&self, request: Request) -> poem::Result<Response> {
        front(self, request).await
    }
}

/// Runs `request` through its route. Every answer leaves it with the request
/// id, every error as the JSON shape, every request timed under its route's `endpoint` label;
/// `/recommendations` counts its own outcomes with arm labels, so only what never reached its
/// handler (parameter errors, timeouts, refused keys) is counted here.
async fn front<A: Endpoint, D: Endpoint>(app: &App<A, D>, mut request: Request) -> poem::Result<Response> {
    let front = &app.front;
    if request.uri().path() == routes::UI_HOME {
        let query = request.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
        if let Ok(uri) = format!("/ui{query}").parse() {
            *request.uri_mut() = uri;
        }
    }
    let (index, route) = routes::resolve(request.uri().path());
    let id = request_id(&request);
    if front.request_ids {
        request.extensions_mut().insert(RequestId(id.clone()));
    }
    let span = match front.access_log {
        true => tracing::info_span!(
            "request",
            request_id = id.to_str().unwrap_or_default(),
            method = %request.method(),
            route = route.template,
            experiment = tracing::field::Empty,
            arm = tracing::field::Empty,
            source = tracing::field::Empty,
            key = tracing::field::Empty,
        ),
        false => tracing::Span::none(),
    };
    let started = Instant::now();
    let result = guarded(app, request, route).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    count(front, index, route, &result, elapsed);
    let mut response = match result {
        Ok(response) => response,
        Err(e) => error::json_errors(e),
    };
    if front.access_log {
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        span.in_scope(|| tracing::info!(status = response.status().as_u16(), latency_ms, "request"));
    }
    response.headers_mut().insert(REQUEST_ID, id);
    Ok(response)
}

/// The key check, then the size and time limits around the route. A path that is no route of
/// [`ROUTES`] gets its 404 here: the API's router matches more loosely (an empty segment as a
/// parameter), and must never dispatch a path whose key was not checked. A request past its
/// time gets 504, or 408 when it is still waiting for its own body (a client that stalls
/// mid-body is the client's fault, not the gateway's); either way hyper then closes the
/// connection, since the body was not read to its end. Admin routes get the time a reload may
/// wait for new models on top, so `POST /admin/reload` answers what the reload did.
async fn guarded<A: Endpoint, D: Endpoint>(
    app: &App<A, D>,
    mut request: Request,
    route: &RouteInfo,
) -> poem::Result<Response> {
    let front = &app.front;
    if std::ptr::eq(route, &routes::OTHER) {
        return Err(NotFoundError.into());
    }
    let page = routes::is_page(route);
    if page && let Some(refused) = ui::refuse_cross_site(&request) {
        return Err(refused);
    }
    if let Some(role) = route.role {
        match auth::authorize(&request, role, &front.keys, page) {
            Ok(granted) if page => {
                request.extensions_mut().insert(granted);
            }
            Ok(_) => {}
            Err(auth::Denied::Unauthorized) if page && request.method() == poem::http::Method::GET => {
                return Ok(ui::to_sign_in(request.uri()));
            }
            Err(denied) => return Err(denied.into()),
        }
    }
    let header_bytes: usize = request.headers().iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Err(poem::Error::from_string(
            format!("request headers are {header_bytes} bytes; at most {MAX_HEADER_BYTES} are accepted"),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        ));
    }
    let timeout = match route.role {
        Some(Role::Admin) => front.timeout.saturating_add(RELOAD_BUDGET),
        _ => front.timeout,
    };
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
    let call = async {
        if route.label == "recommendations"
            && let Some(answered) = recommendations::direct(&app.gateway, &request).await
        {
            return answered;
        }
        match routes::is_document(route) {
            true => app.documents.call(request).await.map(IntoResponse::into_response),
            false => app.api.call(request).await.map(IntoResponse::into_response),
        }
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result,
        Err(_) if body_read.is_some_and(|read| !read.load(Ordering::Relaxed)) => Err(poem::Error::from_string(
            format!("the request body did not arrive within {timeout:?}"),
            StatusCode::REQUEST_TIMEOUT,
        )),
        Err(_) => Err(poem::Error::from_status(StatusCode::GATEWAY_TIMEOUT)),
    }
}

/// Times the request under its route's label and counts a failure by its kind, unless the
/// recommendation handler counted it with arm labels itself (what it answered: successes and
/// the errors it built).
fn count(front: &Front, index: usize, route: &RouteInfo, result: &poem::Result<Response>, elapsed: Duration) {
    let counted_by_handler = match result {
        Ok(_) => true,
        Err(e) => e.is_from_response(),
    };
    if route.label == "recommendations" && counted_by_handler {
        return;
    }
    let status = match result {
        Ok(response) => response.status(),
        Err(e) => e.status(),
    };
    if status.is_client_error() || status.is_server_error() {
        let parse_error = result
            .as_ref()
            .err()
            .is_some_and(|e| e.is::<poem_openapi::error::ParseParamError>());
        let kind = match parse_error {
            true => "invalid_parameter".to_string(),
            false => status
                .canonical_reason()
                .unwrap_or("error")
                .to_ascii_lowercase()
                .replace(' ', "_"),
        };
        front.metrics.request_failed(route.label, NONE, &kind, elapsed);
    } else {
        front.latency[index].observe(elapsed.as_secs_f64());
    }
}
