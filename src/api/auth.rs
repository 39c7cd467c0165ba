//! The `X-API-Key` security scheme of the API. A valid key names a caller; no key (or a wrong
//! one) falls back to an anonymous caller, which [`Auth::require`] admits only while auth is
//! off — and then to admin routes only from loopback.

use std::sync::Arc;

use poem::Request;
use poem::web::RemoteAddr;
use poem_openapi::SecurityScheme;
use poem_openapi::auth::ApiKey;

use super::error::ApiError;
use crate::auth::{Caller, Role};
use crate::gateway::Gateway;

/// A caller identified by a configured key.
#[derive(SecurityScheme)]
#[oai(
    rename = "ApiKey",
    ty = "api_key",
    key_name = "X-API-Key",
    key_in = "header",
    checker = "identify"
)]
pub(crate) struct KeyAuth(Caller);

/// The caller of an authenticated route.
#[derive(SecurityScheme)]
pub(crate) enum Auth {
    /// A configured key.
    Key(KeyAuth),
    /// No valid key; allowed only while auth is off.
    #[oai(fallback)]
    Anonymous,
}

async fn identify(request: &Request, key: ApiKey) -> Option<Caller> {
    request.data::<Arc<Gateway>>()?.keys().check(&key.key)
}

impl Auth {
    /// The caller, if it may use a route needing `role`: 401 without a valid key (auth on),
    /// 403 for a key of a lesser role, or for an admin route called from another host while
    /// auth is off. The key's name (never the key) goes into the request's log line.
    pub fn require(self, gateway: &Gateway, remote: &RemoteAddr, role: Role) -> Result<Caller, ApiError> {
        let caller = match self {
            Auth::Key(KeyAuth(caller)) => caller,
            Auth::Anonymous if gateway.keys().is_off() => {
                let loopback = remote.as_socket_addr().is_some_and(|a| a.ip().is_loopback());
                if role == Role::Admin && !loopback {
                    return Err(ApiError::forbidden(
                        "admin_loopback_only",
                        "auth is off (no auth.keys): admin routes answer loopback callers only",
                    ));
                }
                Caller {
                    name: "anonymous".into(),
                    role: Role::Admin,
                }
            }
            Auth::Anonymous => {
                return Err(ApiError::unauthorized(
                    "unauthorized",
                    "send a valid key in the X-API-Key header",
                ));
            }
        };
        tracing::Span::current().record("key", caller.name.as_str());
        if caller.role < role {
            return Err(ApiError::forbidden(
                "forbidden",
                format!("key {:?} may not call admin routes", caller.name),
            ));
        }
        Ok(caller)
    }
}
