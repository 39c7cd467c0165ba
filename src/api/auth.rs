//! API keys on the HTTP layer. [`authorize`] runs before any route parses its parameters or
//! body, so a caller without a valid key learns nothing but 401 (or 403 for a lesser role).
//! [`Auth`] only declares the `X-API-Key` scheme on the routes that need it, for the OpenAPI
//! document and Swagger UI.

use poem::Request;
use poem::http::StatusCode;
use poem_openapi::SecurityScheme;
use poem_openapi::auth::ApiKey;

use crate::auth::{Keys, Role};

/// A configured key, sent as `X-API-Key`.
#[derive(SecurityScheme)]
#[oai(rename = "ApiKey", ty = "api_key", key_name = "X-API-Key", key_in = "header")]
pub(crate) struct KeyAuth(#[expect(dead_code, reason = "checked by `authorize` before the route runs")] ApiKey);

/// Declares that a route takes an API key; optional in the document because a gateway may run
/// with auth off. The key is checked by [`authorize`], before the route runs.
#[derive(SecurityScheme)]
pub(crate) enum Auth {
    /// A configured key.
    Key(#[expect(dead_code, reason = "checked by `authorize` before the route runs")] KeyAuth),
    /// No key: accepted only while auth is off.
    #[oai(fallback)]
    Anonymous,
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Denied {
    /// No key, or not a configured one, while auth is on.
    #[error("send a valid key in the X-API-Key header")]
    Unauthorized,
    /// A client key on an admin route.
    #[error("key {0:?} may not call admin routes")]
    Forbidden(String),
    /// Auth is off and an admin route was called from another host.
    #[error("auth is off (no auth.keys): admin routes answer loopback callers only")]
    LoopbackOnly,
    /// Auth is off and admin routes answer nobody (`auth.loopback_admin = false`).
    #[error("auth is off (no auth.keys) and auth.loopback_admin is false: admin routes need an admin key in auth.keys")]
    AdminClosed,
}

impl poem::error::ResponseError for Denied {
    fn status(&self) -> StatusCode {
        match self {
            Denied::Unauthorized => StatusCode::UNAUTHORIZED,
            Denied::Forbidden(_) | Denied::LoopbackOnly | Denied::AdminClosed => StatusCode::FORBIDDEN,
        }
    }
}

/// Checks the caller's key against the route's `role`, before the route parses anything. The
/// key's name (never the key) goes into the request's log line.
pub(crate) fn authorize(request: &Request, role: Role, keys: &Keys) -> Result<(), Denied> {
    let name = if keys.is_off() {
        if role == Role::Admin {
            if !keys.loopback_admin() {
                return Err(Denied::AdminClosed);
            }
            let loopback = request
                .remote_addr()
                .as_socket_addr()
                .is_some_and(|a| a.ip().is_loopback());
            if !loopback {
                return Err(Denied::LoopbackOnly);
            }
        }
        "anonymous"
    } else {
        let presented = request.headers().get("x-api-key").and_then(|v| v.to_str().ok());
        let caller = presented.and_then(|key| keys.check(key)).ok_or(Denied::Unauthorized)?;
        tracing::Span::current().record("key", caller.name);
        if caller.role < role {
            return Err(Denied::Forbidden(caller.name.to_string()));
        }
        caller.name
    };
    tracing::Span::current().record("key", name);
    Ok(())
}
