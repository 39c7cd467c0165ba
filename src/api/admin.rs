//! Operator routes. `POST /admin/cache/invalidate` drops cached lists on every replica, e.g.
//! after a model was re-scored in place or a bad list was served;
//! `POST /admin/experiments/{id}/arms/{arm}/resume` lifts a guardrail's pause.

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::auth::Auth;
use super::error::ApiError;
use super::{ApiTags, limit_body};
use crate::gateway::{Gateway, Reload};

/// The admin endpoints.
#[derive(Default)]
pub(crate) struct AdminApi;

/// What to invalidate: a model, every model of an experiment, or one arm's model.
#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
struct InvalidateRequest {
    /// A model location as experiments name it (e.g. `als-v2`).
    model: Option<String>,
    /// An experiment id: every model its arms serve.
    experiment: Option<String>,
    /// With `experiment`: only this arm's model.
    arm: Option<String>,
}

/// One invalidated model.
#[derive(Debug, Object)]
struct InvalidatedModel {
    /// The model location.
    model: String,
    /// Its new cache generation (part of every cache key).
    generation: u64,
    /// Whether every replica was told through Redis; `false` without Redis or when Redis did
    /// not answer, in which case only this replica dropped its entries.
    propagated: bool,
}

/// The result of an invalidation.
#[derive(Debug, Object)]
struct InvalidateResponse {
    /// The models whose cached lists are gone.
    models: Vec<InvalidatedModel>,
}

/// The result of `POST /admin/reload`.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
struct ReloadBody {
    /// `applied` (a new experiment set is in force) or `unchanged`.
    status: String,
    /// Digest of the set in force now.
    digest: String,
    /// Digest of the set it replaced, when applied.
    previous: Option<String>,
}

/// A rejected experiments folder.
#[derive(Debug, Object)]
struct RejectedBody {
    /// `experiments_rejected`.
    error: String,
    /// Every problem on one line each.
    message: String,
    /// The problems, one per entry (`file:line: field: message`).
    problems: Vec<String>,
}

#[derive(Debug, ApiResponse)]
enum ReloadResponse {
    /// The folder was read; see `status`.
    #[oai(status = 200)]
    Done(Json<ReloadBody>),
    /// The folder failed validation; the previous set keeps serving.
    #[oai(status = 422)]
    Rejected(Json<RejectedBody>),
}

/// Lifts a guardrail's pause of `arm` of experiment `id` on every replica, whether asked through
/// the API or by the results UI's button; whether the arm was paused.
pub(super) async fn resume_arm(gateway: &Gateway, id: &str, arm: &str) -> Result<bool, ApiError> {
    let catalog = gateway.catalog();
    let experiment = catalog
        .experiment(id)
        .ok_or_else(|| ApiError::not_found("unknown_experiment", format!("no experiment {id:?} is loaded")))?;
    if !experiment.arms.iter().any(|a| a.name == arm) {
        return Err(ApiError::not_found(
            "unknown_arm",
            format!("experiment {id:?} has no arm {arm:?}"),
        ));
    }
    let was_paused = gateway.guard().resume(id, arm).await.map_err(|_| {
        ApiError::unavailable(
            "redis_unavailable",
            "Redis does not answer, so the other replicas would keep the arm paused; retry shortly",
        )
    })?;
    if was_paused {
        tracing::info!(experiment = %id, arm = %arm, "guardrail pause lifted by an operator");
    }
    Ok(was_paused)
}

/// The result of a resume.
#[derive(Debug, Object)]
struct ResumeBody {
    /// The experiment.
    experiment: String,
    /// The arm, serving its own model again.
    arm: String,
    /// Whether it was paused (a resume of an arm serving already changes nothing).
    was_paused: bool,
}

#[OpenApi(tag = "ApiTags::Admin")]
impl AdminApi {
    /// Re-reads the experiments folder now and answers with the validation result. A folder
    /// that fails validation is rejected whole; the experiments in force keep serving.
    #[oai(path = "/admin/reload", method = "post")]
    async fn reload(&self, gateway: Data<&Arc<Gateway>>, _auth: Auth) -> Result<ReloadResponse, ApiError> {
        Ok(match gateway.reload().await {
            Ok(Reload::Unchanged { digest }) => ReloadResponse::Done(Json(ReloadBody {
                status: "unchanged".into(),
                digest,
                previous: None,
            })),
            Ok(Reload::Applied { previous, digest }) => ReloadResponse::Done(Json(ReloadBody {
                status: "applied".into(),
                digest,
                previous: Some(previous),
            })),
            Err(problems) => ReloadResponse::Rejected(Json(RejectedBody {
                error: "experiments_rejected".into(),
                message: problems.to_string(),
                problems: problems.0.iter().map(ToString::to_string).collect(),
            })),
        })
    }

    /// Lifts a guardrail's pause of an arm on every replica (through Redis): its users get its
    /// own model's lists again, and its guardrails judge it afresh over a whole new window.
    #[oai(path = "/admin/experiments/:id/arms/:arm/resume", method = "post")]
    async fn resume(
        &self,
        gateway: Data<&Arc<Gateway>>,
        id: Path<String>,
        arm: Path<String>,
        _auth: Auth,
    ) -> Result<Json<ResumeBody>, ApiError> {
        let was_paused = resume_arm(&gateway, &id, &arm).await?;
        Ok(Json(ResumeBody {
            experiment: id.0,
            arm: arm.0,
            was_paused,
        }))
    }

    /// Drops cached lists of a model, an experiment's models or one arm's model, on every
    /// replica. Cached lists are keyed by model, so other experiments serving the same model
    /// are refreshed too.
    #[oai(path = "/admin/cache/invalidate", method = "post", transform = "limit_body")]
    async fn invalidate(
        &self,
        gateway: Data<&Arc<Gateway>>,
        body: Json<InvalidateRequest>,
        _auth: Auth,
    ) -> Result<Json<InvalidateResponse>, ApiError> {
        let catalog = gateway.catalog();
        let models: Vec<String> = match (&body.model, &body.experiment, &body.arm) {
            (Some(model), None, None) => {
                if !catalog.models().iter().any(|m| &m.location == model) {
                    return Err(ApiError::not_found(
                        "unknown_model",
                        format!("no experiment or placement serves {model:?}"),
                    ));
                }
                vec![model.clone()]
            }
            (None, Some(id), arm) => {
                let experiment = catalog.experiment(id).ok_or_else(|| {
                    ApiError::not_found("unknown_experiment", format!("no experiment {id:?} is loaded"))
                })?;
                let arms: Vec<_> = experiment
                    .arms
                    .iter()
                    .filter(|a| arm.as_ref().is_none_or(|n| &a.name == n))
                    .collect();
                if arms.is_empty() {
                    return Err(ApiError::not_found(
                        "unknown_arm",
                        format!("experiment {id:?} has no arm {arm:?}"),
                    ));
                }
                let mut models: Vec<String> = arms.iter().map(|a| a.model.location.clone()).collect();
                models.sort();
                models.dedup();
                models
            }
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_target",
                    "name either `model`, or `experiment` (optionally with `arm`)",
                ));
            }
        };
        let mut invalidated = Vec::with_capacity(models.len());
        for model in models {
            let (generation, propagated) = gateway.cache().invalidate(&model).await;
            invalidated.push(InvalidatedModel {
                model,
                generation,
                propagated,
            });
        }
        Ok(Json(InvalidateResponse { models: invalidated }))
    }
}
