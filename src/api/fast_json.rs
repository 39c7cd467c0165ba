//! A JSON response payload written straight to bytes by serde from borrowed data. poem-openapi's
//! `Json` builds a `serde_json::Value` tree of an owned body first (a map per object, a string
//! copy per field); on the recommendation path that cost more than the rest of the request. The
//! OpenAPI schema still comes from `T`'s `Object` derive, so the document is unchanged; the value
//! written must have `T`'s shape, which the integration tests check on every body they receive.

use std::marker::PhantomData;

use poem::{IntoResponse, Response};
use poem_openapi::ApiResponse;
use poem_openapi::payload::Payload;
use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses, MetaSchemaRef, Registry};
use poem_openapi::types::Type;
use serde::Serialize;

/// `application/json` of schema `T`, already written.
#[derive(Debug)]
pub(crate) struct FastJson<T> {
    /// The body, or why it could not be written (a 500).
    body: Result<Vec<u8>, serde_json::Error>,
    /// The documented type.
    schema: PhantomData<fn() -> T>,
}

impl<T> FastJson<T> {
    /// Writes `value`, which has `T`'s shape; `capacity` is a guess of the body's size, so the
    /// buffer is allocated once.
    pub(crate) fn write(value: &impl Serialize, capacity: usize) -> Self {
        let mut body = Vec::with_capacity(capacity);
        FastJson {
            body: serde_json::to_writer(&mut body, value).map(|()| body),
            schema: PhantomData,
        }
    }
}

impl<T: Type> Payload for FastJson<T> {
    const CONTENT_TYPE: &'static str = "application/json; charset=utf-8";

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Type> IntoResponse for FastJson<T> {
    fn into_response(self) -> Response {
        match self.body {
            // A static header value: `content_type` would copy the string per response.
            Ok(body) => Response::builder()
                .header(
                    poem::http::header::CONTENT_TYPE,
                    poem::http::HeaderValue::from_static(<Self as Payload>::CONTENT_TYPE),
                )
                .body(body),
            Err(e) => {
                tracing::error!(error = %e, "cannot serialize a response");
                poem::http::StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
        }
    }
}

impl<T: Type> ApiResponse for FastJson<T> {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![MetaResponse {
                description: "",
                status: Some(200),
                status_range: None,
                content: vec![MetaMediaType {
                    content_type: Self::CONTENT_TYPE,
                    schema: Self::schema_ref(),
                }],
                headers: vec![],
            }],
        }
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}
