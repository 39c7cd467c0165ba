//! `POST /events`: impressions and clicks, credited to the arm named in each tracking token.

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::auth::Auth;
use super::error::{ApiError, ErrorBody};
use super::{ApiTags, limit_body};
use crate::feedback::events::{Event, Rejection};
use crate::gateway::Gateway;

/// Events accepted in one batch at most.
pub(crate) const MAX_BATCH: usize = 1000;

/// The events endpoint.
#[derive(Default)]
pub(crate) struct EventsApi;

/// One event.
#[derive(Debug, Object)]
struct EventBody {
    /// `impression` or `click`.
    #[oai(rename = "type")]
    kind: String,
    /// The `tracking_token` of the recommendation response that showed the item.
    tracking_token: String,
    /// The item shown or clicked.
    item_id: String,
    /// Optional client id, at most 64 characters of `[A-Za-z0-9._:@-]`: an event sent again
    /// with the same id (a retry after a lost answer) is accepted again without a second count.
    /// Each item of a page takes one impression and one click whatever the id.
    event_id: Option<String>,
}

/// A batch of events.
#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
struct EventBatch {
    /// At most 1000 events.
    events: Vec<EventBody>,
}

/// An event that was not counted, and why.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
struct Rejected {
    /// Position in the batch.
    index: u32,
    /// The client's event id, if it sent one.
    event_id: Option<String>,
    /// `bad_signature`, `expired_token`, `malformed_token`, `unknown_type`, `missing_item_id`,
    /// `invalid_item_id`, `invalid_event_id`, `item_not_served` (not on the token's page),
    /// `duplicate_event_id` (this type of event was already counted for this item of this
    /// page) or `counts_unavailable` (Redis did not answer: send the event again later).
    reason: String,
}

/// What happened to a batch.
#[derive(Debug, Object)]
struct EventsOutcome {
    /// Events counted.
    accepted: u32,
    /// Events refused.
    rejected: u32,
    /// One entry per refused event.
    rejections: Vec<Rejected>,
}

#[derive(Debug, ApiResponse)]
enum EventsResponse {
    /// The batch was processed; each event was accepted or rejected on its own.
    #[oai(status = 202)]
    Accepted(Json<EventsOutcome>),
    /// More than 1000 events in one batch, or a body over 1 MiB.
    #[oai(status = 413)]
    TooLarge(Json<ErrorBody>),
}

#[OpenApi(tag = "ApiTags::Recommendations")]
impl EventsApi {
    /// Report impressions and clicks of recommended items.
    ///
    /// Each event carries the `tracking_token` of the response that showed the item, so it is
    /// credited to the arm that served it even if the user's arm has changed since.
    #[oai(path = "/events", method = "post", transform = "limit_body")]
    async fn events(
        &self,
        gateway: Data<&Arc<Gateway>>,
        batch: Json<EventBatch>,
        _auth: Auth,
    ) -> Result<EventsResponse, ApiError> {
        if batch.events.len() > MAX_BATCH {
            return Ok(EventsResponse::TooLarge(Json(ErrorBody {
                error: "batch_too_large".into(),
                message: format!("{} events in one batch; send at most {MAX_BATCH}", batch.events.len()),
            })));
        }
        let events: Vec<Event<'_>> = batch
            .events
            .iter()
            .map(|e| Event {
                kind: &e.kind,
                token: &e.tracking_token,
                item_id: &e.item_id,
                event_id: e.event_id.as_deref(),
            })
            .collect();
        let results = gateway.record_events(&events).await;
        let rejections: Vec<Rejected> = results
            .iter()
            .zip(&batch.events)
            .enumerate()
            .filter_map(|(index, (result, event))| {
                let reason = result.err()?;
                Some(Rejected {
                    index: index as u32,
                    event_id: event.event_id.clone(),
                    reason: reason.as_str().to_string(),
                })
            })
            .collect();
        let unavailable = results.iter().filter(|r| **r == Err(Rejection::Unavailable)).count();
        if unavailable > 0 && rejections.len() == results.len() {
            return Err(ApiError::unavailable(
                "counts_unavailable",
                format!(
                    "the results store did not answer for {unavailable} of {} events; none was counted, send the batch again later",
                    results.len()
                ),
            ));
        }
        Ok(EventsResponse::Accepted(Json(EventsOutcome {
            accepted: (results.len() - rejections.len()) as u32,
            rejected: rejections.len() as u32,
            rejections,
        })))
    }
}
