//! `POST /events`: impressions and clicks coming back from client apps. Each event carries the
//! tracking token of the response that showed the item, so it is credited to the arm that
//! served it; forged, expired and repeated events are refused one by one with a reason, and
//! never fail the rest of the batch.

use std::time::{Duration, SystemTime};

use moka::sync::Cache;

use crate::tracking::{Claims, Signer, TokenError};

/// How long an event id is remembered: a client retrying a batch within this window is not
/// double-counted.
const DEDUPE_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Event ids remembered at most; past it the oldest-used are forgotten first.
const DEDUPE_CAPACITY: u64 = 1_000_000;

/// What happened to the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The item was shown.
    Impression,
    /// The item was clicked.
    Click,
}

/// One event as the client sent it.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    /// `impression` or `click`.
    pub kind: &'a str,
    /// The `tracking_token` of the response that showed the item.
    pub token: &'a str,
    /// The item.
    pub item_id: &'a str,
    /// Client-chosen id for deduplication; derived from token, item and type when absent.
    pub event_id: Option<&'a str>,
}

/// Why an event was refused; `as_str` is the reason reported to the client and in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The token failed verification.
    Token(TokenError),
    /// `type` is neither `impression` nor `click`.
    UnknownType,
    /// `item_id` is empty.
    MissingItem,
    /// This event id was already accepted within the dedupe window.
    Duplicate,
}

impl Rejection {
    /// The reason code.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Token(TokenError::Malformed) => "malformed_token",
            Rejection::Token(TokenError::BadSignature) => "bad_signature",
            Rejection::Token(TokenError::Expired) => "expired_token",
            Rejection::UnknownType => "unknown_type",
            Rejection::MissingItem => "missing_item_id",
            Rejection::Duplicate => "duplicate_event_id",
        }
    }
}

/// Verifies and deduplicates events.
#[derive(Debug)]
pub struct EventLog {
    /// Verifies tracking tokens (and signs them for responses).
    signer: Signer,
    /// Event ids seen within the window.
    seen: Cache<String, ()>,
}

impl EventLog {
    /// An event log verifying with `signer`.
    pub fn new(signer: Signer) -> Self {
        EventLog {
            signer,
            seen: Cache::builder()
                .max_capacity(DEDUPE_CAPACITY)
                .time_to_live(DEDUPE_WINDOW)
                .build(),
        }
    }

    /// The signer, for issuing tokens with responses.
    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// Checks one event; on success its id is remembered and the claims and kind returned.
    pub fn accept(&self, event: &Event<'_>, now: SystemTime) -> Result<(Claims, EventKind), Rejection> {
        let kind = match event.kind {
            "impression" => EventKind::Impression,
            "click" => EventKind::Click,
            _ => return Err(Rejection::UnknownType),
        };
        if event.item_id.is_empty() {
            return Err(Rejection::MissingItem);
        }
        let claims = self.signer.verify(event.token, now).map_err(Rejection::Token)?;
        // Without a client id, the event is identified by what it says: one impression (or
        // click) of one item per served response.
        let id = match event.event_id {
            Some(id) => format!("id:{id}"),
            None => {
                let signature = event.token.rsplit('.').next().unwrap_or_default();
                format!("{}:{}:{signature}", event.kind, event.item_id)
            }
        };
        if self.seen.contains_key(&id) {
            return Err(Rejection::Duplicate);
        }
        self.seen.insert(id, ());
        Ok((claims, kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracking::unix_seconds;

    fn claims(now: SystemTime) -> Claims {
        Claims {
            placement: "home".into(),
            experiment: Some("e".into()),
            arm: "treatment".into(),
            model_version: "v".into(),
            user: "42".into(),
            issued_at: unix_seconds(now),
            forced: false,
        }
    }

    #[test]
    fn accepts_once_and_names_every_rejection() {
        let now = SystemTime::now();
        let log = EventLog::new(Signer::new("k", Duration::from_secs(60)));
        let token = log.signer().sign(&claims(now));
        let event = Event {
            kind: "click",
            token: &token,
            item_id: "7",
            event_id: None,
        };
        assert_eq!(
            log.accept(&event, now).map(|(c, k)| (c.arm, k)),
            Ok(("treatment".into(), EventKind::Click))
        );
        assert_eq!(log.accept(&event, now).map(|_| ()), Err(Rejection::Duplicate));
        let impression = Event {
            kind: "impression",
            ..event
        };
        assert!(
            log.accept(&impression, now).is_ok(),
            "another type of the same item is another event"
        );
        let with_id = Event {
            event_id: Some("e-1"),
            item_id: "8",
            ..event
        };
        assert!(log.accept(&with_id, now).is_ok());
        assert_eq!(
            log.accept(
                &Event {
                    item_id: "9",
                    ..with_id
                },
                now
            )
            .map(|_| ()),
            Err(Rejection::Duplicate)
        );

        let reasons: Vec<&str> = [
            Event { kind: "view", ..event },
            Event { item_id: "", ..event },
            Event {
                token: "x.y",
                item_id: "1",
                ..event
            },
            Event {
                token: &Signer::new("other", Duration::from_secs(60)).sign(&claims(now)),
                item_id: "1",
                ..event
            },
        ]
        .iter()
        .map(|e| log.accept(e, now).map(|_| ()).expect_err("rejected").as_str())
        .collect();
        assert_eq!(
            reasons,
            ["unknown_type", "missing_item_id", "malformed_token", "bad_signature"]
        );
        let later = now + Duration::from_secs(120);
        assert_eq!(
            log.accept(&Event { item_id: "2", ..event }, later).map(|_| ()),
            Err(Rejection::Token(TokenError::Expired))
        );
    }
}
