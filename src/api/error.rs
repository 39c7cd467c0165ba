//! One error shape for every 4xx/5xx: `{ "error": "<code>", "message": "<human text>" }`.
//! Handlers return [`ApiError`]; everything poem raises itself (unknown route, bad query
//! parameter, wrong method) is rewritten into the same shape by [`json_errors`].

use poem::http::StatusCode;
use poem::{IntoResponse, Response};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object};

/// The body of every error response.
#[derive(Debug, Clone, Object)]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `invalid_user_id`, `unknown_placement`.
    pub error: String,
    /// What went wrong, for humans.
    pub message: String,
}

/// Errors the handlers return, with their statuses.
#[derive(Debug, ApiResponse)]
pub enum ApiError {
    /// The request is malformed: bad user id or parameter.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// No valid `X-API-Key` (auth is on). Raised before the route runs.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// The key's role may not call this route. Raised before the route runs.
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// The placement, experiment or route does not exist.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// No model can answer yet; retry later.
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
    /// The error code, for metrics.
    pub fn code(&self) -> &str {
        match self {
            ApiError::BadRequest(body)
            | ApiError::Unauthorized(body)
            | ApiError::Forbidden(body)
            | ApiError::NotFound(body)
            | ApiError::Unavailable(body) => &body.error,
        }
    }

    /// 400 with a code and message.
    pub fn bad_request(error: &str, message: impl Into<String>) -> Self {
        ApiError::BadRequest(body(error, message))
    }

    /// 404 with a code and message.
    pub fn not_found(error: &str, message: impl Into<String>) -> Self {
        ApiError::NotFound(body(error, message))
    }

    /// 503 with a code and message.
    pub fn unavailable(error: &str, message: impl Into<String>) -> Self {
        ApiError::Unavailable(body(error, message))
    }
}

/// Rewrites errors raised outside the handlers into the JSON error shape; responses the
/// handlers built already have it and pass through.
pub(crate) async fn json_errors(err: poem::Error) -> Response {
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
