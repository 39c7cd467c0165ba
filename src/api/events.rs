//! `POST /events`: impressions and clicks, credited to the arm named in each tracking token.

use std::sync::Arc;

use poem::middleware::SizeLimit;
use poem::web::Data;
use poem::{Endpoint, EndpointExt};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::ApiTags;
use super::auth::Auth;
use super::error::{ApiError, ErrorBody};
use crate::events::Event;
use crate::gateway::Gateway;

/// Events accepted in one batch at most.
pub(crate) const MAX_BATCH: usize = 1000;

/// Largest body accepted: 1000 events of about 400 bytes, with room to spare. Bodies must say
/// their length (`Content-Length`); larger ones get 413 before they are read.
const MAX_BODY_BYTES: usize = 1 << 20;

fn limit_body(endpoint: impl Endpoint) -> impl Endpoint {
    endpoint.with(SizeLimit::new(MAX_BODY_BYTES))
}

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
    /// Optional client id; a retried event with the same id is not counted twice.
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
struct Rejected {
    /// Position in the batch.
    index: u32,
    /// The client's event id, if it sent one.
    event_id: Option<String>,
    /// `bad_signature`, `expired_token`, `malformed_token`, `unknown_type`, `missing_item_id`
    /// or `duplicate_event_id`.
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
    /// More than 1000 events in one batch.
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
        Ok(EventsResponse::Accepted(Json(EventsOutcome {
            accepted: (results.len() - rejections.len()) as u32,
            rejected: rejections.len() as u32,
            rejections,
        })))
    }
}
