//! `GET /experiments…`: what is running, and which arm a given user gets and why, so product
//! teams and QA can check an experiment without reading hashes by hand.

use std::sync::Arc;
use std::time::SystemTime;

use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use serde::Serialize;

use super::ApiTags;
use super::auth::Auth;
use super::error::ApiError;
use super::fast_json::FastJson;
use crate::experiment::{Experiment, is_valid_user_id};
use crate::gateway::{Gateway, Guard, Pause};

/// The experiment endpoints.
#[derive(Default)]
pub(crate) struct ExperimentsApi;

/// One arm as configured.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
struct ArmBody {
    /// Arm name.
    name: String,
    /// Share of the experiment's slice, percent; 0 in an interleave experiment, whose arms
    /// both serve every covered user.
    weight: f64,
    /// Model location it serves.
    model: String,
    /// Per-arm cache TTL override, humantime.
    cache_ttl: Option<String>,
    /// For a shadow arm (which serves nobody): the share of the control's responses its list
    /// is compared on.
    shadow_sample: Option<f64>,
    /// `serving`, `shadow`, or `paused_by_guardrail`: a guardrail breached, and the arm's
    /// users get the control's list until `POST /admin/experiments/{id}/arms/{arm}/resume`.
    state: String,
    /// Which guardrail paused the arm, with the figures.
    paused_reason: Option<String>,
    /// When it was paused, RFC 3339.
    paused_since: Option<String>,
}

/// The limits an experiment's arms must keep.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
struct GuardrailsBody {
    /// Highest share of an arm's requests whose model read failed.
    error_rate: Option<f64>,
    /// Highest p99 response time, milliseconds.
    p99_ms: Option<f64>,
    /// Highest share of an arm's requests the placement default answered.
    fallback_rate: Option<f64>,
    /// Largest relative CTR drop against the control, on the always-valid interval.
    max_ctr_drop: Option<f64>,
    /// Requests an arm needs in the window before rates and latency are judged.
    min_requests: u64,
    /// How long the rates and latency are judged over, humantime.
    window: String,
}

/// One experiment as loaded.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
struct ExperimentBody {
    /// Identifier.
    id: String,
    /// Placement it splits.
    placement: String,
    /// Free text.
    description: String,
    /// Contact.
    owner: String,
    /// `split` (each user sees one arm) or `interleave` (each user sees both arms' lists
    /// merged).
    kind: String,
    /// `draft`, `running`, `paused` or `completed`.
    status: String,
    /// Whether it takes traffic right now (status and schedule).
    active: bool,
    /// Schedule start, RFC 3339.
    start: Option<String>,
    /// Schedule end (exclusive), RFC 3339.
    end: Option<String>,
    /// Slice of the placement's users, percent `[lo, hi)`.
    traffic: Vec<f64>,
    /// Seed of the arm hash (of the merge's coin in an interleave experiment).
    salt: String,
    /// Winning arm of a completed experiment.
    winner: Option<String>,
    /// Arms, control first.
    arms: Vec<ArmBody>,
    /// QA users forced into an arm (user → arm).
    overrides: std::collections::BTreeMap<String, String>,
    /// The limits whose breach pauses an arm, if any.
    guardrails: Option<GuardrailsBody>,
}

/// Every loaded experiment.
#[derive(Debug, Object)]
struct ExperimentsBody {
    /// Hash of the experiment files in force; equal on replicas running the same set.
    digest: String,
    /// Experiments by id.
    experiments: Vec<ExperimentBody>,
}

/// Where one user lands, seen from one experiment.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
struct AssignmentBody {
    /// The experiment asked about.
    experiment: String,
    /// The user asked about.
    user_id: String,
    /// Whether this experiment counts the user now: serves them, or, for a placement's holdout
    /// (`holdout:<placement>`), has them on its placement.
    in_experiment: bool,
    /// The arm this experiment counts the user in (for a holdout, `holdout` or `exposed`),
    /// absent when it does not.
    arm: Option<String>,
    /// True for QA overrides.
    forced: bool,
    /// `B("placement:" + placement, user)`, decides the slice.
    placement_bucket: u16,
    /// `B(salt, user)`, decides the arm.
    arm_bucket: u16,
    /// The arm `arm_bucket` falls in, whether or not the user is in the slice.
    arm_for_bucket: String,
    /// The experiment serving this user on the placement (absent: the placement default).
    placement_experiment: Option<String>,
    /// The arm served on the placement (`default` when no experiment covers the user).
    placement_arm: String,
    /// The decision in words.
    reason: String,
}

/// [`AssignmentBody`] as written, borrowed from the catalog: QA tools and client SDKs that
/// resolve arms call this per user, so it skips the owned body and its value tree.
#[derive(Serialize)]
struct AssignmentView<'a> {
    experiment: &'a str,
    user_id: &'a str,
    in_experiment: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    arm: Option<&'a str>,
    forced: bool,
    placement_bucket: u16,
    arm_bucket: u16,
    arm_for_bucket: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    placement_experiment: Option<&'a str>,
    placement_arm: &'a str,
    reason: &'a str,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339(t).to_string()
}

/// An arm's state: `paused_by_guardrail` with its pause, `shadow`, or `serving`.
pub(crate) fn arm_state(shadow: bool, pause: Option<&Pause>) -> &'static str {
    match (pause, shadow) {
        (Some(_), _) => "paused_by_guardrail",
        (None, true) => "shadow",
        (None, false) => "serving",
    }
}

impl ExperimentBody {
    fn new(e: &Experiment, now: SystemTime, guard: &Guard) -> Self {
        let percent = |bp: u16| f64::from(bp) / 100.0;
        ExperimentBody {
            id: e.id.clone(),
            placement: e.placement.clone(),
            description: e.description.clone(),
            owner: e.owner.clone(),
            kind: e.kind.as_str().to_string(),
            status: e.status.as_str().to_string(),
            active: e.active_at(now),
            start: e.start.map(rfc3339),
            end: e.end.map(rfc3339),
            traffic: vec![percent(e.slice.start), percent(e.slice.end)],
            salt: e.salt.clone(),
            winner: e.winner.map(|w| e.arms[w].name.clone()),
            arms: e
                .arms
                .iter()
                .map(|a| {
                    let pause = guard.pause(&e.id, &a.name);
                    ArmBody {
                        name: a.name.clone(),
                        weight: percent(a.weight_bp),
                        model: a.model.location.clone(),
                        cache_ttl: a.cache_ttl.map(|d| humantime::format_duration(d).to_string()),
                        shadow_sample: a.shadow,
                        state: arm_state(a.shadow.is_some(), pause.as_ref()).to_string(),
                        paused_since: pause
                            .as_ref()
                            .map(|p| rfc3339(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(p.since))),
                        paused_reason: pause.map(|p| p.reason),
                    }
                })
                .collect(),
            overrides: e
                .overrides
                .iter()
                .map(|(user, &arm)| (user.clone(), e.arms[arm].name.clone()))
                .collect(),
            guardrails: e.guardrails.as_ref().map(|g| GuardrailsBody {
                error_rate: g.error_rate,
                p99_ms: g.p99.map(|d| d.as_secs_f64() * 1000.0),
                fallback_rate: g.fallback_rate,
                max_ctr_drop: g.max_ctr_drop,
                min_requests: g.min_requests,
                window: humantime::format_duration(g.window).to_string(),
            }),
        }
    }
}

fn unknown_experiment(id: &str) -> ApiError {
    ApiError::not_found("unknown_experiment", format!("no experiment {id:?} is loaded"))
}

#[OpenApi(tag = "ApiTags::Experiments")]
impl ExperimentsApi {
    /// Every loaded experiment and the digest of the set.
    #[oai(path = "/experiments", method = "get")]
    async fn list(&self, gateway: Data<&Arc<Gateway>>, _auth: Auth) -> Result<Json<ExperimentsBody>, ApiError> {
        let catalog = gateway.catalog();
        let now = SystemTime::now();
        Ok(Json(ExperimentsBody {
            digest: catalog.digest().to_string(),
            experiments: catalog
                .experiments()
                .map(|e| ExperimentBody::new(e, now, gateway.guard()))
                .collect(),
        }))
    }

    /// One experiment.
    #[oai(path = "/experiments/:id", method = "get")]
    async fn get(
        &self,
        gateway: Data<&Arc<Gateway>>,
        id: Path<String>,
        _auth: Auth,
    ) -> Result<Json<ExperimentBody>, ApiError> {
        let catalog = gateway.catalog();
        let experiment = catalog.experiment(&id).ok_or_else(|| unknown_experiment(&id))?;
        Ok(Json(ExperimentBody::new(
            experiment,
            SystemTime::now(),
            gateway.guard(),
        )))
    }

    /// Which arm of this experiment a user gets, with the buckets that decided it.
    #[oai(path = "/experiments/:id/assignment/:user_id", method = "get")]
    async fn assignment(
        &self,
        gateway: Data<&Arc<Gateway>>,
        id: Path<String>,
        /// Opaque user id: 1-128 characters from `[A-Za-z0-9._:@-]`.
        user_id: Path<String>,
        _auth: Auth,
    ) -> Result<FastJson<AssignmentBody>, ApiError> {
        if !is_valid_user_id(&user_id) {
            return Err(ApiError::bad_request(
                "invalid_user_id",
                "user_id must be 1-128 characters from [A-Za-z0-9._:@-]",
            ));
        }
        let catalog = gateway.catalog();
        let x = catalog
            .explain(&id, &user_id, SystemTime::now())
            .ok_or_else(|| unknown_experiment(&id))?;
        let view = AssignmentView {
            experiment: &x.experiment.id,
            user_id: &user_id,
            in_experiment: x.in_experiment,
            arm: x.arm(),
            forced: x.in_experiment && x.served.forced,
            placement_bucket: x.placement_bucket,
            arm_bucket: x.arm_bucket,
            arm_for_bucket: x.arm_for_bucket,
            placement_experiment: x.served.experiment.map(|e| e.id.as_str()),
            placement_arm: x.served.arm_name(),
            reason: &x.reason(),
        };
        Ok(FastJson::write(&view, 512))
    }
}
