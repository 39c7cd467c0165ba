//! `POST /events`: impressions and clicks coming back from client apps. Each event carries the
//! tracking token of the response that showed the item, so it is credited to the arm that
//! served it; forged, expired and repeated events are refused one by one with a reason, and
//! never fail the rest of the batch.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use moka::sync::Cache;

use crate::cache::RedisTier;
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
    /// Every rejection, so each reason's counter exists from the start.
    pub const ALL: [Rejection; 6] = [
        Rejection::Token(TokenError::Malformed),
        Rejection::Token(TokenError::BadSignature),
        Rejection::Token(TokenError::Expired),
        Rejection::UnknownType,
        Rejection::MissingItem,
        Rejection::Duplicate,
    ];

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
    /// Event ids seen within the window by this process: the whole record without Redis,
    /// the fallback while Redis does not answer.
    seen: Cache<String, ()>,
    /// Where event ids are claimed for every replica (`SET NX` with expiry), when configured.
    redis: Option<Arc<RedisTier>>,
}

/// The Redis key claiming one event id.
fn claim_key(id: &str) -> String {
    format!("recgw:event:{id}")
}

impl EventLog {
    /// An event log verifying with `signer`, deduplicating through `redis` when given.
    pub(crate) fn new(signer: Signer, redis: Option<Arc<RedisTier>>) -> Self {
        EventLog {
            signer,
            seen: Cache::builder()
                .max_capacity(DEDUPE_CAPACITY)
                .time_to_live(DEDUPE_WINDOW)
                .build(),
            redis,
        }
    }

    /// The signer, for issuing tokens with responses.
    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// Verifies one event and names it: the client's id, or (without one) what it says — one
    /// impression or click of one item per served response.
    fn check(&self, event: &Event<'_>, now: SystemTime) -> Result<(Claims, EventKind, String), Rejection> {
        let kind = match event.kind {
            "impression" => EventKind::Impression,
            "click" => EventKind::Click,
            _ => return Err(Rejection::UnknownType),
        };
        if event.item_id.is_empty() {
            return Err(Rejection::MissingItem);
        }
        let claims = self.signer.verify(event.token, now).map_err(Rejection::Token)?;
        // An empty id is no id: clients that send "" would otherwise lose every such event
        // after the first.
        let id = match event.event_id.filter(|id| !id.is_empty()) {
            Some(id) => format!("id:{id}"),
            None => {
                let signature = event.token.rsplit('.').next().unwrap_or_default();
                format!("{}:{}:{signature}", event.kind, event.item_id)
            }
        };
        Ok((claims, kind, id))
    }

    /// Checks a batch: every event is verified, then its id is claimed for 24 h — in Redis
    /// with one pipelined `SET NX EX` per batch, shared by every replica, or in this process
    /// when there is no Redis or it does not answer. An id claimed before (or earlier in the
    /// batch) is a duplicate.
    pub async fn accept(&self, events: &[Event<'_>], now: SystemTime) -> Vec<Result<(Claims, EventKind), Rejection>> {
        let mut checked: Vec<Result<(Claims, EventKind, String), Rejection>> =
            events.iter().map(|event| self.check(event, now)).collect();
        let mut in_batch = HashSet::new();
        for result in &mut checked {
            if let Ok((_, _, id)) = result
                && !in_batch.insert(id.clone())
            {
                *result = Err(Rejection::Duplicate);
            }
        }
        let ids: Vec<&str> = checked
            .iter()
            .filter_map(|r| r.as_ref().ok().map(|(_, _, id)| id.as_str()))
            .collect();
        let fresh = self.claim(&ids).await;
        let mut fresh = fresh.into_iter();
        checked
            .into_iter()
            .map(|result| {
                let (claims, kind, _) = result?;
                if fresh.next().unwrap_or(false) {
                    Ok((claims, kind))
                } else {
                    Err(Rejection::Duplicate)
                }
            })
            .collect()
    }

    /// Claims `ids`; true for each id not claimed before.
    async fn claim(&self, ids: &[&str]) -> Vec<bool> {
        if ids.is_empty() {
            return Vec::new();
        }
        if let Some(redis) = &self.redis {
            let mut pipe = redis::pipe();
            for id in ids {
                pipe.cmd("SET")
                    .arg(claim_key(id))
                    .arg(1)
                    .arg("NX")
                    .arg("EX")
                    .arg(DEDUPE_WINDOW.as_secs());
            }
            if let Some(replies) = redis.query::<Vec<Option<String>>>(&pipe).await {
                for id in ids {
                    self.seen.insert(id.to_string(), ());
                }
                return replies.into_iter().map(|reply| reply.is_some()).collect();
            }
        }
        ids.iter()
            .map(|id| {
                let fresh = !self.seen.contains_key(*id);
                self.seen.insert(id.to_string(), ());
                fresh
            })
            .collect()
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
            nonce: 1,
            uncounted: false,
        }
    }

    #[tokio::test]
    async fn accepts_once_and_names_every_rejection() {
        let now = SystemTime::now();
        let log = EventLog::new(Signer::new("k", Duration::from_secs(60)), None);
        let token = log.signer().sign(&claims(now));
        async fn one(log: &EventLog, event: Event<'_>, now: SystemTime) -> Result<(String, EventKind), Rejection> {
            log.accept(&[event], now).await.remove(0).map(|(c, k)| (c.arm, k))
        }
        let event = Event {
            kind: "click",
            token: &token,
            item_id: "7",
            event_id: None,
        };
        assert_eq!(one(&log, event, now).await, Ok(("treatment".into(), EventKind::Click)));
        assert_eq!(one(&log, event, now).await, Err(Rejection::Duplicate));
        assert!(
            one(
                &log,
                Event {
                    kind: "impression",
                    ..event
                },
                now
            )
            .await
            .is_ok(),
            "another type is another event"
        );
        let with_id = Event {
            event_id: Some("e-1"),
            item_id: "8",
            ..event
        };
        assert!(one(&log, with_id, now).await.is_ok());
        assert_eq!(
            one(
                &log,
                Event {
                    item_id: "9",
                    ..with_id
                },
                now
            )
            .await,
            Err(Rejection::Duplicate)
        );

        let twice = [Event { item_id: "10", ..event }, Event { item_id: "10", ..event }];
        let results: Vec<bool> = log.accept(&twice, now).await.iter().map(Result::is_ok).collect();
        assert_eq!(results, [true, false], "a duplicate within one batch");

        let other = Signer::new("other", Duration::from_secs(60)).sign(&claims(now));
        let batch = [
            Event { kind: "view", ..event },
            Event { item_id: "", ..event },
            Event {
                token: "x.y",
                item_id: "1",
                ..event
            },
            Event {
                token: &other,
                item_id: "1",
                ..event
            },
        ];
        let reasons: Vec<&str> = log
            .accept(&batch, now)
            .await
            .into_iter()
            .map(|r| r.map(|_| ()).expect_err("rejected").as_str())
            .collect();
        assert_eq!(
            reasons,
            ["unknown_type", "missing_item_id", "malformed_token", "bad_signature"]
        );
        let later = now + Duration::from_secs(120);
        let expired = log
            .accept(&[Event { item_id: "2", ..event }], later)
            .await
            .remove(0)
            .map(|_| ());
        assert_eq!(expired, Err(Rejection::Token(TokenError::Expired)));
    }
}
