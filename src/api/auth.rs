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

/// The cookie the results UI's sign-in sets: the key, base64url-encoded (a key may hold
/// characters a cookie value may not). `HttpOnly`, so no script on the page can read it;
/// `SameSite=Strict`, so no other site's page can make the browser send it; `Path=/ui`, so it
/// opens the pages only, never the JSON API.
pub(crate) const SESSION_COOKIE: &str = "recgw_key";

/// The key a browser presents: the sign-in cookie's, decoded.
pub(crate) fn session_key(request: &Request) -> Option<String> {
    use base64::Engine;
    let cookies = request.headers().get_all(poem::http::header::COOKIE);
    let value = cookies
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(SESSION_COOKIE)?.strip_prefix('='))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(value).ok()?;
    String::from_utf8(bytes).ok()
}

/// The role a request was granted, for handlers that show more to admins (the results UI's
/// resume button) than to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Granted(pub(crate) Role);

/// Checks the caller's key against the route's `role`, before the route parses anything; a
/// page of the results UI reads the key from its sign-in cookie, every other route from the
/// `X-API-Key` header. The key's name (never the key) goes into the request's log line. Returns
/// the role the caller holds: an admin calling a client route still holds admin.
pub(crate) fn authorize(request: &Request, role: Role, keys: &Keys, page: bool) -> Result<Granted, Denied> {
    let (name, held) = if keys.is_off() {
        let loopback = request
            .remote_addr()
            .as_socket_addr()
            .is_some_and(|a| a.ip().is_loopback());
        let admin = keys.loopback_admin() && loopback;
        if role == Role::Admin && !admin {
            return Err(match keys.loopback_admin() {
                true => Denied::LoopbackOnly,
                false => Denied::AdminClosed,
            });
        }
        ("anonymous", if admin { Role::Admin } else { Role::Client })
    } else {
        let cookie;
        let presented = match page {
            true => {
                cookie = session_key(request);
                cookie.as_deref()
            }
            false => request.headers().get("x-api-key").and_then(|v| v.to_str().ok()),
        };
        let caller = presented.and_then(|key| keys.check(key)).ok_or(Denied::Unauthorized)?;
        tracing::Span::current().record("key", caller.name);
        if caller.role < role {
            return Err(Denied::Forbidden(caller.name.to_string()));
        }
        (caller.name, caller.role)
    };
    tracing::Span::current().record("key", name);
    Ok(Granted(held))
}
