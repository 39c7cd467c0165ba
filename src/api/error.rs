//! One error shape for every 4xx/5xx: `{ "error": "<code>", "message": "<human text>" }`.
//! Handlers return [`ApiError`]; everything poem and the layers in front of the handlers raise
//! (unknown route, bad query parameter, missing key, timeout) is rewritten into the same shape
//! by [`json_errors`], and [`Documented`] lists those statuses on each operation they concern,
//! so the document says every status a client can get.

use std::collections::HashMap;

use poem::endpoint::BoxEndpoint;
use poem::http::{Method, StatusCode};
use poem::{IntoResponse, Response};
use poem_openapi::payload::{Json, Payload};
use poem_openapi::registry::{MetaApi, MetaMediaType, MetaOperation, MetaResponse, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::routes;
use crate::auth::Role;

/// The body of every error response.
#[derive(Debug, Clone, Object)]
pub(crate) struct ErrorBody {
    /// Stable machine-readable code, e.g. `invalid_user_id`, `unknown_placement`.
    pub(crate) error: String,
    /// What went wrong, for humans.
    pub(crate) message: String,
}

/// Errors the handlers return, with their statuses.
#[derive(Debug, ApiResponse)]
pub(crate) enum ApiError {
    /// The request is malformed: bad user id or parameter.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// The placement, experiment or route does not exist.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// Something the answer needs cannot answer yet: no model has loaded for the placement, or
    /// Redis, which counts events, did not answer and none of the batch was counted. Retry
    /// later (a batch sent again with its `event_id`s is never counted twice).
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

fn body(error: &str, message: impl Into<String>) -> Json<ErrorBody> {
    Json(ErrorBody {
        error: error.to_string(),
        message: message.into(),
    })
}

impl ApiError {
    /// The body every status carries.
    fn body(&self) -> &ErrorBody {
        match self {
            ApiError::BadRequest(body) | ApiError::NotFound(body) | ApiError::Unavailable(body) => body,
        }
    }

    /// The error code, for metrics.
    pub(crate) fn code(&self) -> &str {
        &self.body().error
    }

    /// What went wrong, for a person: what the results UI shows in place of a figure.
    pub(crate) fn message(&self) -> &str {
        &self.body().message
    }

    /// 400 with a code and message.
    pub(crate) fn bad_request(error: &str, message: impl Into<String>) -> Self {
        ApiError::BadRequest(body(error, message))
    }

    /// 404 with a code and message.
    pub(crate) fn not_found(error: &str, message: impl Into<String>) -> Self {
        ApiError::NotFound(body(error, message))
    }

    /// 503 with a code and message.
    pub(crate) fn unavailable(error: &str, message: impl Into<String>) -> Self {
        ApiError::Unavailable(body(error, message))
    }
}

/// Rewrites errors raised outside the handlers into the JSON error shape; responses the
/// handlers built already have it and pass through.
pub(crate) fn json_errors(err: poem::Error) -> Response {
    if err.is_from_response() {
        return err.into_response();
    }
    let status = err.status();
    let code = match status {
        StatusCode::BAD_REQUEST => {
            if err.is::<poem_openapi::error::ParseParamError>() {
                "invalid_parameter"
            } else {
                "bad_request"
            }
        }
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::LENGTH_REQUIRED => "length_required",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::GATEWAY_TIMEOUT => "timeout",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "headers_too_large",
        s if s.is_server_error() => "internal",
        _ => "error",
    };
    let message = match err.to_string() {
        m if m.is_empty() => status.canonical_reason().unwrap_or("error").to_string(),
        m => m,
    };
    Json(ErrorBody {
        error: code.to_string(),
        message,
    })
    .with_status(status)
    .into_response()
}

/// Which operations a status raised outside the handlers concerns.
#[derive(Debug, Clone, Copy)]
enum Concerns {
    /// Every operation.
    All,
    /// Operations with path or query parameters, or a body: what can fail to parse.
    Input,
    /// Operations that take a body.
    Body,
    /// Operations that need a key and answer a missing one with 401: all but the results UI's
    /// pages.
    Keyed,
    /// The results UI's pages, which send a browser without its cookie to sign in.
    Page,
    /// Operations that need an admin key, and the results UI's forms, which refuse other sites.
    Admin,
}

/// The statuses the layers in front of the handlers answer with (`limits`, `authorize`, the body
/// size limit, poem's parsers, the URI limit), each with the operations it concerns.
const LAYER_STATUSES: &[(u16, Concerns, &str)] = &[
    (
        400,
        Concerns::Input,
        "A path or query parameter, or the body, does not parse.",
    ),
    (
        303,
        Concerns::Page,
        "Not signed in while auth is on: sent to `/ui/sign-in?next=…`, which comes back here.",
    ),
    (
        401,
        Concerns::Keyed,
        "No valid `X-API-Key` (on a form of the results UI: no sign-in cookie) while auth is on.",
    ),
    (
        403,
        Concerns::Admin,
        "A client key on an admin route, or, while auth is off, a caller other than loopback (any \
         caller with `auth.loopback_admin = false`); on the results UI, also a form another site's \
         page sent.",
    ),
    (
        408,
        Concerns::Body,
        "The body did not arrive within `server.request_timeout`.",
    ),
    (
        411,
        Concerns::Body,
        "The body does not say its length (`Content-Length`).",
    ),
    (413, Concerns::Body, "The body is over 1 MiB."),
    (
        414,
        Concerns::All,
        "The request line is longer than the server accepts.",
    ),
    (
        415,
        Concerns::Body,
        "The body is not of the operation's media type (`application/json`; the sign-in form's is `application/x-www-form-urlencoded`).",
    ),
    (431, Concerns::All, "The request headers are over 16 KiB."),
    (
        500,
        Concerns::All,
        "A fault inside the gateway; the message says which.",
    ),
    (504, Concerns::All, "No answer within `server.request_timeout`."),
];

/// The API `A` with every status of [`LAYER_STATUSES`] documented, as a JSON error, on the
/// operations it concerns (unless the operation documents that status itself). The layers run
/// outside poem-openapi, which therefore cannot see them; the route table says which operations
/// need keys.
pub(crate) struct Documented<A>(pub(crate) A);

impl<A: OpenApi> OpenApi for Documented<A> {
    fn meta() -> Vec<MetaApi> {
        let mut apis = A::meta();
        for path in apis.iter_mut().flat_map(|api| api.paths.iter_mut()) {
            let route = routes::documented(&path.path);
            for operation in &mut path.operations {
                let role = route.and_then(|r| r.role);
                let ui = route.is_some_and(routes::is_page);
                document_layer_statuses(operation, role, ui);
            }
        }
        apis
    }

    fn register(registry: &mut Registry) {
        A::register(registry);
        ErrorBody::register(registry);
    }

    fn add_routes(self, route_table: &mut HashMap<String, HashMap<Method, BoxEndpoint<'static>>>) {
        self.0.add_routes(route_table);
    }
}

/// Adds the layer statuses to `operation`, which needs `role` and belongs to the results UI when
/// `ui`: its pages send a browser to sign in rather than refuse it, and its forms refuse other
/// sites.
fn document_layer_statuses(operation: &mut MetaOperation, role: Option<Role>, ui: bool) {
    let page = ui && operation.method == Method::GET;
    let form = ui && operation.method != Method::GET;
    for &(status, concerns, description) in LAYER_STATUSES {
        let applies = match concerns {
            Concerns::All => true,
            Concerns::Input => !operation.params.is_empty() || operation.request.is_some(),
            Concerns::Body => operation.request.is_some(),
            Concerns::Keyed => role.is_some() && !page,
            Concerns::Page => role.is_some() && page,
            Concerns::Admin => role == Some(Role::Admin) || form,
        };
        let responses = &mut operation.responses.responses;
        if applies && !responses.iter().any(|r| r.status == Some(status)) {
            responses.push(MetaResponse {
                description,
                status: Some(status),
                status_range: None,
                // A redirect has no body to describe; every error has the JSON shape.
                content: match status < 400 {
                    true => vec![],
                    false => vec![MetaMediaType {
                        content_type: Json::<ErrorBody>::CONTENT_TYPE,
                        schema: Json::<ErrorBody>::schema_ref(),
                    }],
                },
                headers: vec![],
            });
        }
    }
    operation.responses.responses.sort_by_key(|r| r.status);
}
