//! `GET /metrics`: the Prometheus text exposition.

use poem::web::Data;
use poem_openapi::OpenApi;
use poem_openapi::payload::PlainText;

use super::ApiTags;
use crate::metrics::Metrics;

/// The metrics endpoint.
pub(crate) struct MetricsApi;

#[OpenApi(tag = "ApiTags::Health")]
impl MetricsApi {
    /// Prometheus metrics, text format.
    #[oai(path = "/metrics", method = "get")]
    async fn metrics(&self, metrics: Data<&Metrics>) -> PlainText<String> {
        PlainText(metrics.render())
    }
}
