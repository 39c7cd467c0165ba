//! `GET /stats`: a JSON summary of served traffic, overall and per arm, for people without a
//! Prometheus at hand; computed from the same registry as `/metrics`.

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::ApiTags;
use super::auth::Auth;
use super::error::ApiError;
use crate::gateway::Gateway;
use crate::metrics::ArmTraffic;

/// The stats endpoint.
#[derive(Default)]
pub(crate) struct StatsApi;

/// Served traffic of one arm, or of everything.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
struct TrafficBody {
    /// Placement (empty in `overall`).
    placement: String,
    /// Experiment id, `none` for the placement default (empty in `overall`).
    experiment: String,
    /// Arm (empty in `overall`).
    arm: String,
    /// Recommendation responses served.
    recommendations_served: u64,
    /// Mean response time in seconds; absent before the first response.
    mean_response_time_seconds: Option<f64>,
    /// Share of served responses whose arm failed to read its model; in `overall`, failed
    /// requests count too. absent before the first request.
    error_rate: Option<f64>,
    /// Accepted impressions.
    impressions: u64,
    /// Accepted clicks.
    clicks: u64,
}

/// The summary.
#[derive(Debug, Object)]
struct StatsBody {
    /// Everything added up.
    overall: TrafficBody,
    /// Recommendation requests that failed before serving (bad input, unknown placement, 503).
    failed_requests: u64,
    /// Per placement, experiment and arm.
    arms: Vec<TrafficBody>,
}

impl TrafficBody {
    fn new(arm: &ArmTraffic, failed: u64) -> Self {
        let requests = arm.recommendations + failed;
        TrafficBody {
            placement: arm.placement.clone(),
            experiment: arm.experiment.clone(),
            arm: arm.arm.clone(),
            recommendations_served: arm.recommendations,
            mean_response_time_seconds: arm.mean_response_time(),
            error_rate: (requests > 0).then(|| (arm.errors + failed) as f64 / requests as f64),
            impressions: arm.impressions,
            clicks: arm.clicks,
        }
    }
}

#[OpenApi(tag = "ApiTags::Health")]
impl StatsApi {
    /// Recommendations served, mean response time and error rate, overall and per arm.
    #[oai(path = "/stats", method = "get")]
    async fn stats(&self, gateway: Data<&Arc<Gateway>>, _auth: Auth) -> Result<Json<StatsBody>, ApiError> {
        let stats = gateway.metrics().traffic();
        Ok(Json(StatsBody {
            overall: TrafficBody::new(&stats.overall, stats.failed_requests),
            failed_requests: stats.failed_requests,
            arms: stats.arms.iter().map(|arm| TrafficBody::new(arm, 0)).collect(),
        }))
    }
}
