//! `GET /health` (the process answers) and `GET /ready` (it can serve what traffic reaches
//! now), for load balancers and orchestrators.

use std::sync::Arc;
use std::time::SystemTime;

use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::ApiTags;
use crate::gateway::Gateway;

/// The health endpoints.
#[derive(Default)]
pub(crate) struct HealthApi;

/// Liveness.
#[derive(Debug, Object)]
struct HealthBody {
    /// Always `ok` when the process answers.
    status: String,
}

/// One model as `/ready` reports it.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
struct ModelBody {
    /// Location as experiments name it.
    model: String,
    /// Serving version, absent until one loads.
    version: Option<String>,
    /// `nested`, `long` or `global`.
    shape: Option<String>,
    /// Users in the serving version's index.
    users: u64,
    /// Last problem (e.g. a newer version that failed to load while the old one serves).
    error: Option<String>,
    /// Whether traffic reaches the model now (a placement default, an arm of a running
    /// experiment inside its schedule, a completed experiment's winner), so readiness waits
    /// for it; models of draft, paused or ended experiments are reported, not waited for.
    required: bool,
    /// Where lookups are answered from: `snapshot` (a mapped serving snapshot), `pages`
    /// (page-index reads of the part files, behind both cache tiers) or `memory` (a global
    /// list); absent until a version loads.
    serving: Option<String>,
    /// Why the serving version is not read from a snapshot: being built, too large, off.
    snapshot: Option<String>,
    /// Size of the serving version's snapshot file.
    snapshot_bytes: Option<u64>,
}

/// Readiness and what it depends on.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
struct ReadyBody {
    /// True when every model traffic reaches now has a version (see `required`) and no
    /// `counts_error` holds the counts.
    ready: bool,
    /// Digest of the experiment set in force.
    experiments_digest: String,
    /// Why the experiments folder on disk was rejected (file, line, field and problem per
    /// line), while the set in force keeps serving; absent when the folder is the set in
    /// force. Not a readiness condition: every replica reads the same folder, and taking them
    /// all out of the load balancer over a typo would turn it into an outage.
    experiments_error: Option<String>,
    /// Every model the experiments reference, serving or not.
    models: Vec<ModelBody>,
    /// The Redis tier: `up`, `down` (requests go on to the store) or `off` (not configured).
    /// Reported, never required.
    redis: String,
    /// Why result counts are held rather than written to `results.redis_url`: a node runs a
    /// `maxmemory-policy` other than `noeviction`, or its policy cannot be read. Makes `/ready`
    /// 503, so a deploy onto such a Redis stops at its first replica; absent otherwise.
    counts_error: Option<String>,
    /// The same finding under `results.eviction_check = "warn"`: counts are written anyway, and
    /// may be evicted. Not a readiness condition.
    counts_warning: Option<String>,
}

#[derive(Debug, ApiResponse)]
enum ReadyResponse {
    /// Ready to serve.
    #[oai(status = 200)]
    Ready(Json<ReadyBody>),
    /// Not ready yet (a required model has no loaded version, or the counts' Redis may evict
    /// them); the body says which.
    #[oai(status = 503)]
    NotReady(Json<ReadyBody>),
}

#[OpenApi(tag = "ApiTags::Health")]
impl HealthApi {
    /// The process is alive.
    #[oai(path = "/health", method = "get")]
    async fn health(&self) -> Json<HealthBody> {
        Json(HealthBody {
            status: "ok".to_string(),
        })
    }

    /// Every model traffic reaches now is loaded, and the counts have a Redis that keeps them.
    #[oai(path = "/ready", method = "get")]
    async fn ready(&self, gateway: Data<&Arc<Gateway>>) -> ReadyResponse {
        let models = gateway.models();
        let catalog = gateway.catalog();
        let required = catalog.serving_models(SystemTime::now());
        let counts_error = gateway.eviction().and_then(|e| e.holding());
        let body = ReadyBody {
            ready: required.iter().all(|spec| models.get(spec).is_some()) && counts_error.is_none(),
            experiments_digest: catalog.digest().to_string(),
            experiments_error: gateway.rejected().map(|problems| problems.to_string()),
            models: models
                .status()
                .into_iter()
                .map(|m| ModelBody {
                    required: required.iter().any(|spec| spec.location == m.location),
                    model: m.location,
                    version: m.version,
                    shape: m.shape.map(str::to_string),
                    users: m.users as u64,
                    error: m.error,
                    serving: m.serving.map(str::to_string),
                    snapshot: m.snapshot,
                    snapshot_bytes: m.snapshot_bytes.map(|b| b as u64),
                })
                .collect(),
            redis: match gateway.redis_up() {
                None => "off",
                Some(true) => "up",
                Some(false) => "down",
            }
            .to_string(),
            counts_error,
            counts_warning: gateway.eviction().and_then(|e| e.warning()),
        };
        if body.ready {
            ReadyResponse::Ready(Json(body))
        } else {
            ReadyResponse::NotReady(Json(body))
        }
    }
}
