//! `GET /metrics`: the Prometheus text exposition.

use poem::web::Data;
use poem_openapi::OpenApi;
use poem_openapi::payload::PlainText;

use std::sync::Arc;

use super::ApiTags;
use crate::gateway::Gateway;

/// The metrics endpoint.
#[derive(Default)]
pub(crate) struct MetricsApi;

#[OpenApi(tag = "ApiTags::Health")]
impl MetricsApi {
    /// Prometheus metrics, text format.
    #[oai(path = "/metrics", method = "get")]
    async fn metrics(&self, gateway: Data<&Arc<Gateway>>) -> PlainText<String> {
        PlainText(gateway.metrics().render())
    }
}
