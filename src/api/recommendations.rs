//! `GET /recommendations/{user_id}`: the request client apps make on every page view. Both ways
//! in (the OpenAPI operation, and [`direct`] from the front layer) read the parameters, and share
//! the rest: the checks the extractors leave, one call to the gateway
//! ([`Gateway::serve_page`]), which serves and counts the page, and the body written from it
//! (ARCHITECTURE.md §1.1).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use poem::web::Data;
use poem::{IntoResponse, Request};
use poem_openapi::param::{Path, Query};
use poem_openapi::{Enum, Object, OpenApi};
use serde::Serialize;

use super::ApiTags;
use super::auth::Auth;
use super::error::ApiError;
use super::fast_json::FastJson;
use super::request_id::RequestId;
use crate::cache::Source;
use crate::experiment::is_valid_user_id;
use crate::gateway::{FallbackReason, Gateway, PageRequest, ServeError, ServeRequest, ServedPage};
use crate::metrics::NONE;

/// The recommendation endpoints.
#[derive(Default)]
pub(crate) struct RecommendationsApi;

/// One recommended item.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
struct ItemBody {
    /// Item id, always a string whatever its type in the model.
    item_id: String,
    /// Model score (a 32-bit float, printed at its shortest decimal).
    score: f64,
    /// 1-based rank in the model's list (kept through filters); on an interleaved list, in
    /// the list of the item's team.
    rank: u32,
    /// On an interleaved list (`arm = interleaved`), the arm whose pick this item was: clicks
    /// on it count for that arm. Absent otherwise.
    team: Option<String>,
}

// `Source` as the document shows it (this comment stays out of the document): the domain type
// knows nothing of the API, and the document lists the values in an order of its own, not the
// lookup order `Source` is declared in. Converted from it in one place, below.
/// Which tier produced the list.
#[derive(Debug, Enum, Serialize)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
enum SourceBody {
    /// This replica's in-process cache.
    Local,
    /// The shared Redis cache.
    Redis,
    /// The model version's serving snapshot, mapped on this replica.
    Snapshot,
    /// The model store (page reads of the Parquet part files).
    Store,
    /// The placement default, because the arm's model could not answer for this user.
    Fallback,
}

impl From<Source> for SourceBody {
    fn from(source: Source) -> Self {
        match source {
            Source::Local => SourceBody::Local,
            Source::Snapshot => SourceBody::Snapshot,
            Source::Redis => SourceBody::Redis,
            Source::Store => SourceBody::Store,
            Source::Fallback => SourceBody::Fallback,
        }
    }
}

/// A page of a user's recommendations and where they came from: the documented schema. The
/// body itself is written by [`RecommendationsView`] from the served list without copying it.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
struct RecommendationsBody {
    /// The user asked for.
    user_id: String,
    /// The placement asked for.
    placement: String,
    /// Covering experiment; absent when the user is on the placement default.
    experiment: Option<String>,
    /// Assigned arm; `default` when no experiment covers the user, `interleaved` when an
    /// interleave experiment merged both its arms' lists (each item then names its `team`).
    arm: String,
    /// True when a QA override forced the arm.
    forced: bool,
    /// The model that produced the items (the placement default after a fallback); on an
    /// interleaved list, both arms' models, comma-separated in arm order.
    model: String,
    /// Version of that model: resolved folder and commit marker (both, comma-separated, on an
    /// interleaved list).
    model_version: String,
    /// This page, best first.
    items: Vec<ItemBody>,
    /// Items left after `min_score` and `exclude`, across all pages.
    total: u64,
    /// Offset of this page.
    offset: u32,
    /// Page size asked for.
    limit: u32,
    /// Offset of the next page; absent on the last page.
    next_offset: Option<u64>,
    /// Which tier answered.
    source: SourceBody,
    /// Why the arm's model did not answer, when `source` is `fallback`.
    fallback_reason: Option<FallbackBody>,
    /// `true` when a guardrail paused the assigned arm: the items are the control's (and
    /// `model` names it), while `arm` stays the one assigned, whose results count this
    /// response. Absent otherwise.
    paused_by_guardrail: Option<bool>,
    /// Signed proof of what was served: send it back with impression and click events.
    tracking_token: String,
}

/// [`RecommendationsBody`] as written: the same fields, borrowed from the request and the served
/// list.
#[derive(Serialize)]
struct RecommendationsView<'a> {
    user_id: &'a str,
    placement: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    experiment: Option<&'a str>,
    arm: &'a str,
    forced: bool,
    model: &'a str,
    model_version: &'a str,
    #[serde(serialize_with = "items")]
    items: &'a ServedPage,
    total: u64,
    offset: u32,
    limit: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_offset: Option<u64>,
    source: SourceBody,
    #[serde(skip_serializing_if = "Option::is_none")]
    fallback_reason: Option<FallbackBody>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    paused_by_guardrail: bool,
    tracking_token: &'a str,
}

/// [`ItemBody`] as written, straight from the cached item. The score goes out as an `f32`, so
/// serde prints its shortest decimal (`4.366`, not the widened `4.365995407104492`).
#[derive(Serialize)]
struct ItemView<'a> {
    item_id: &'a str,
    score: f32,
    rank: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    team: Option<&'a str>,
}

/// The page's items, each with its team's arm name when the page is interleaved.
fn items<S: serde::Serializer>(served: &&ServedPage, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(served.items().map(|(item, team)| ItemView {
        item_id: &item.id,
        score: item.score,
        rank: item.rank,
        team,
    }))
}

/// Why the placement default answered instead of the arm's model.
#[derive(Debug, Enum, Serialize)]
#[oai(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
enum FallbackBody {
    /// The arm's model has no loaded version yet.
    ModelNotLoaded,
    /// The model holds no list for this user (cold start).
    UserNotInModel,
    /// Reading the model failed.
    StoreError,
    /// One arm of an interleave experiment could not answer; the other's list is served alone
    /// and the page is not counted in the results.
    NotInterleaved,
}

impl From<FallbackReason> for FallbackBody {
    fn from(reason: FallbackReason) -> Self {
        match reason {
            FallbackReason::ModelNotLoaded => FallbackBody::ModelNotLoaded,
            FallbackReason::UserNotInModel => FallbackBody::UserNotInModel,
            FallbackReason::StoreError => FallbackBody::StoreError,
            FallbackReason::NotInterleaved => FallbackBody::NotInterleaved,
        }
    }
}

/// Ids `exclude` may name at most: a page holds at most 100 items, so a client excluding more
/// is paging wrong, and the cap bounds the set built per request whatever the URI limit.
pub(crate) const MAX_EXCLUDE: usize = 500;

/// The placement a request names none of.
const DEFAULT_PLACEMENT: &str = "default";

/// The page size a request names none of.
const DEFAULT_LIMIT: u32 = 10;

/// The page sizes accepted, as the operation's `limit` validator states them.
const LIMITS: std::ops::RangeInclusive<u32> = 1..=100;

fn default_placement() -> String {
    DEFAULT_PLACEMENT.to_string()
}

fn default_limit() -> u32 {
    DEFAULT_LIMIT
}

#[OpenApi(tag = "ApiTags::Recommendations")]
impl RecommendationsApi {
    /// A user's recommendations on a placement.
    ///
    /// The user is hashed into an experiment arm (the same on every replica); the arm's model
    /// answers, or the placement default when the user is missing from it (`source = fallback`).
    #[oai(path = "/recommendations/:user_id", method = "get")]
    #[allow(clippy::too_many_arguments)]
    async fn recommendations(
        &self,
        gateway: Data<&Arc<Gateway>>,
        /// Opaque user id: 1-128 characters from `[A-Za-z0-9._:@-]`.
        user_id: Path<String>,
        /// The slot in the client app, as declared in `placements.toml`.
        #[oai(default = "default_placement")]
        placement: Query<String>,
        /// Items per page.
        #[oai(default = "default_limit", validator(minimum(value = "1"), maximum(value = "100")))]
        limit: Query<u32>,
        /// Items to skip.
        #[oai(default)]
        offset: Query<u32>,
        /// Drop items scoring below this.
        min_score: Query<Option<f32>>,
        /// Comma-separated item ids to leave out (e.g. already shown), at most 500.
        exclude: Query<Option<String>>,
        _auth: Auth,
        request: &Request,
    ) -> Result<FastJson<RecommendationsBody>, ApiError> {
        let params = Params {
            user_id: &user_id,
            placement: &placement,
            limit: *limit,
            offset: *offset,
            min_score: *min_score,
            exclude: exclude.as_deref(),
        };
        answer(&gateway, &params, RequestId::of(request)).await
    }
}

/// `GET /recommendations/{user_id}` straight from the front layer, past the operation's
/// extractor chain: poem's route match, the query parsed into owned pairs, the gateway cloned
/// into the request's extensions (an allocation, and a reference count every request on every
/// core writes), a boxed future per step. It takes only requests the operation would read the
/// same way: a GET, a plain path segment, each parameter at most once with a plain value (no
/// percent or plus escapes) that parses and is in range. Everything else (`None`) goes to the
/// operation, which also gives every malformed parameter its documented error, so both paths
/// answer a request alike and only the cost differs.
pub(crate) async fn direct(gateway: &Arc<Gateway>, request: &Request) -> Option<poem::Result<poem::Response>> {
    let params = Params::plain(request)?;
    Some(match answer(gateway, &params, RequestId::of(request)).await {
        Ok(body) => Ok(body.into_response()),
        // What the operation's `Err` becomes: a response of its own, which the front layer
        // neither counts again nor rewrites.
        Err(e) => Err(poem::Error::from_response(e.into_response())),
    })
}

/// The parameters of a request, borrowed from it: from its URI on the direct path
/// ([`Params::plain`]), from the operation's extractors otherwise. Both paths share everything
/// from here on.
#[derive(Debug, PartialEq)]
struct Params<'a> {
    /// The path's segment, as the operation's `user_id`.
    user_id: &'a str,
    /// `placement`, or the operation's default.
    placement: &'a str,
    /// `limit`, within the operation's bounds, or its default.
    limit: u32,
    /// `offset`, or 0.
    offset: u32,
    /// `min_score`, parsed as the operation parses it (`f32::from_str`).
    min_score: Option<f32>,
    /// `exclude`, still comma-separated.
    exclude: Option<&'a str>,
}

impl<'a> Params<'a> {
    /// The parameters of `request`, when it is one the operation would read the same way.
    fn plain(request: &'a Request) -> Option<Self> {
        if request.method() != poem::http::Method::GET {
            return None;
        }
        Self::parse(request.uri().path(), request.uri().query())
    }

    fn parse(path: &'a str, query: Option<&'a str>) -> Option<Self> {
        let plain_value = |v: &str| !v.is_empty() && !v.contains(['%', '+', '/']);
        let user_id = path.strip_prefix("/recommendations/").filter(|id| plain_value(id))?;
        let mut plain = Params {
            user_id,
            placement: DEFAULT_PLACEMENT,
            limit: DEFAULT_LIMIT,
            offset: 0,
            min_score: None,
            exclude: None,
        };
        let mut seen = [false; 5];
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            let (key, value) = pair.split_once('=').filter(|(_, v)| plain_value(v))?;
            let index = match key {
                "placement" => {
                    plain.placement = value;
                    0
                }
                "limit" => {
                    plain.limit = value.parse().ok().filter(|l| LIMITS.contains(l))?;
                    1
                }
                "offset" => {
                    plain.offset = value.parse().ok()?;
                    2
                }
                "min_score" => {
                    plain.min_score = Some(value.parse().ok()?);
                    3
                }
                "exclude" => {
                    plain.exclude = Some(value);
                    4
                }
                _ => return None,
            };
            if std::mem::replace(&mut seen[index], true) {
                return None;
            }
        }
        Some(plain)
    }

    /// The ids `exclude` names, once what the operation's extractors leave unchecked is
    /// checked: the user id's characters, a finite `min_score`, at most [`MAX_EXCLUDE`] ids.
    fn excluded(&self) -> Result<HashSet<&'a str>, ApiError> {
        if !is_valid_user_id(self.user_id) {
            let message = "user_id must be 1-128 characters from [A-Za-z0-9._:@-]";
            return Err(ApiError::bad_request("invalid_user_id", message));
        }
        if self.min_score.is_some_and(|m| !m.is_finite()) {
            let message = "min_score must be a finite number";
            return Err(ApiError::bad_request("invalid_parameter", message));
        }
        let given = self.exclude.map_or(0, |ids| ids.split(',').count());
        if given > MAX_EXCLUDE {
            let message = format!("exclude holds {given} ids; at most {MAX_EXCLUDE} are accepted");
            return Err(ApiError::bad_request("invalid_parameter", message));
        }
        Ok(self
            .exclude
            .map(|ids| ids.split(',').map(str::trim).collect())
            .unwrap_or_default())
    }
}

/// What both paths answer: the page, or the error, counted under the placement's label (the
/// placement when it exists, else `unknown`, so bad input cannot grow the label set); the
/// gateway counts what it served for the arm.
async fn answer(
    gateway: &Arc<Gateway>,
    params: &Params<'_>,
    request_id: &str,
) -> Result<FastJson<RecommendationsBody>, ApiError> {
    let started = Instant::now();
    serve(gateway, params, request_id, started).await.inspect_err(|e| {
        let label = match gateway.catalog().placement(params.placement) {
            Some(_) => params.placement,
            None => "unknown",
        };
        gateway
            .metrics()
            .request_failed("recommendations", label, e.code(), started.elapsed());
    })
}

/// Checks the parameters, has the gateway serve the page in one call, and writes the body.
async fn serve(
    gateway: &Arc<Gateway>,
    params: &Params<'_>,
    request_id: &str,
    started: Instant,
) -> Result<FastJson<RecommendationsBody>, ApiError> {
    let excluded = params.excluded()?;
    let request = ServeRequest {
        user: params.user_id,
        placement: params.placement,
        page: PageRequest {
            limit: params.limit as usize,
            offset: params.offset as usize,
            min_score: params.min_score,
            exclude: &excluded,
        },
        request_id,
        started,
    };
    let served = gateway.serve_page(&request).await?;
    let recommendation = &served.recommendation;
    let span = tracing::Span::current();
    span.record("experiment", recommendation.experiment.as_deref().unwrap_or(NONE));
    span.record("arm", recommendation.arm.as_str());
    span.record("source", recommendation.source.as_str());
    let view = RecommendationsView {
        user_id: params.user_id,
        placement: params.placement,
        experiment: recommendation.experiment.as_deref(),
        arm: &recommendation.arm,
        forced: recommendation.forced,
        model: &recommendation.model,
        model_version: &recommendation.model_version,
        items: &served,
        total: served.total() as u64,
        offset: params.offset,
        limit: params.limit,
        next_offset: served.next_offset().map(|n| n as u64),
        source: recommendation.source.into(),
        fallback_reason: recommendation.fallback.map(FallbackBody::from),
        paused_by_guardrail: recommendation.paused,
        tracking_token: &served.tracking_token,
    };
    // About 60 bytes an item with the fields around them; one buffer for the whole body.
    Ok(FastJson::write(&view, 512 + 64 * served.len()))
}

impl From<ServeError> for ApiError {
    fn from(e: ServeError) -> Self {
        match e {
            ServeError::UnknownPlacement(_) => ApiError::not_found("unknown_placement", e.to_string()),
            ServeError::ModelUnavailable { .. } => ApiError::unavailable("model_unavailable", e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(uri: &str) -> Option<Params<'_>> {
        let (path, query) = match uri.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (uri, None),
        };
        Params::parse(path, query)
    }

    /// The direct path reads what the operation would read, defaults included.
    #[test]
    fn plain_requests_are_read_as_the_operation_reads_them() {
        let defaults = Params {
            user_id: "42",
            placement: "default",
            limit: 10,
            offset: 0,
            min_score: None,
            exclude: None,
        };
        assert_eq!(parse("/recommendations/42"), Some(defaults));
        let uri = "/recommendations/u.1:a@b-c?placement=home&limit=100&offset=7&min_score=-0.5&exclude=a,b";
        assert_eq!(
            parse(uri),
            Some(Params {
                user_id: "u.1:a@b-c",
                placement: "home",
                limit: 100,
                offset: 7,
                min_score: Some(-0.5),
                exclude: Some("a,b"),
            })
        );
        assert_eq!(parse("/recommendations/42?limit=1").map(|p| p.limit), Some(1));
    }

    /// Whatever the operation might read otherwise, or refuses with its own message, is left
    /// to it.
    #[test]
    fn anything_else_is_left_to_the_operation() {
        for uri in [
            "/recommendations/",
            "/recommendations/42/",
            "/recommendations/a%2Fb",
            "/recommendations/42?",
            "/recommendations/42?&limit=5",
            "/recommendations/42?limit",
            "/recommendations/42?limit=",
            "/recommendations/42?limit=0",
            "/recommendations/42?limit=101",
            "/recommendations/42?limit=abc",
            "/recommendations/42?limit=%35",
            "/recommendations/42?limit=+5",
            "/recommendations/42?offset=-1",
            "/recommendations/42?min_score=high",
            "/recommendations/42?placement=home&placement=feed",
            "/recommendations/42?exclude=a%2Cb",
            "/recommendations/42?unknown=1",
            "/experiments/x/assignment/42",
        ] {
            assert_eq!(parse(uri), None, "{uri}");
        }
    }

    /// The page sizes the direct path takes are those the operation documents and validates.
    #[test]
    fn the_limits_are_the_documented_ones() {
        let spec: serde_json::Value = serde_json::from_str(&crate::api::service().spec()).expect("JSON");
        let parameters = spec["paths"]["/recommendations/{user_id}"]["get"]["parameters"]
            .as_array()
            .expect("parameters");
        let limit = parameters.iter().find(|p| p["name"] == "limit").expect("limit");
        // The document gives the bounds as numbers (`1.0`).
        assert_eq!(limit["schema"]["minimum"].as_f64(), Some(f64::from(*LIMITS.start())));
        assert_eq!(limit["schema"]["maximum"].as_f64(), Some(f64::from(*LIMITS.end())));
        assert_eq!(limit["schema"]["default"], DEFAULT_LIMIT);
        let placement = parameters.iter().find(|p| p["name"] == "placement").expect("placement");
        assert_eq!(placement["schema"]["default"], DEFAULT_PLACEMENT);
    }
}
