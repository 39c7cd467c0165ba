//! Request ids: the caller's `X-Request-Id` when it is sane, else one generated here; echoed on
//! every response by the front layer and, while the exposure log records them, given to the
//! handlers. Apart from the layer so the handlers the layer calls can read them.

use std::sync::atomic::{AtomicU64, Ordering};

use poem::Request;
use poem::http::HeaderValue;

/// The header carrying a request's id, accepted from the caller or generated.
pub(crate) const REQUEST_ID: &str = "x-request-id";

/// A request's id, as its response's `X-Request-Id` will say, for handlers that record it
/// (the exposure log).
#[derive(Debug, Clone)]
pub(crate) struct RequestId(pub(crate) HeaderValue);

impl RequestId {
    /// The id of `request`; empty when the front layer was told not to give it (logs off).
    pub(crate) fn of(request: &Request) -> &str {
        request
            .extensions()
            .get::<RequestId>()
            .and_then(|id| id.0.to_str().ok())
            .unwrap_or_default()
    }
}

/// Generated request ids: a random per-process prefix and a counter, unique across replicas
/// without coordination. Written on the stack and copied once into the header's bytes.
fn next_request_id() -> HeaderValue {
    use std::io::Write;
    static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| getrandom::u32().unwrap_or_else(|_| std::process::id()));
    // 8 hex digits, a dash and at most 16 more.
    let mut id = [0u8; 25];
    let mut rest = &mut id[..];
    let written = write!(rest, "{prefix:08x}-{:x}", COUNTER.fetch_add(1, Ordering::Relaxed));
    let len = 25 - rest.len();
    written
        .ok()
        .and_then(|()| HeaderValue::from_bytes(&id[..len]).ok())
        .unwrap_or_else(|| HeaderValue::from_static("-"))
}

/// The caller's `X-Request-Id` when it is sane, else a new one; echoed on the response.
pub(crate) fn request_id(request: &Request) -> HeaderValue {
    let given = request
        .headers()
        .get(REQUEST_ID)
        .filter(|v| (1..=128).contains(&v.len()) && v.as_bytes().iter().all(u8::is_ascii_graphic));
    match given {
        Some(id) => id.clone(),
        None => next_request_id(),
    }
}
