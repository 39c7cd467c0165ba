//! `POST /events`: impressions and clicks coming back from client apps. Each event carries the
//! tracking token of the response that showed the item, so it is credited to the arm that
//! served it; forged, expired and repeated events are refused one by one with a reason, and
//! never fail the rest of the batch.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::cache::RedisTier;
use crate::tracking::{Claims, Signer, TokenError};

/// How long an event id is remembered: a client retrying a batch within this window is not
/// double-counted.
const DEDUPE_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Event ids this process remembers at most (see [`RecentIds`]): about 20 MB at 64 bits each.
const DEDUPE_CAPACITY: usize = 1_000_000;

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
    /// Event ids seen by this process: the whole record without Redis, the fallback while
    /// Redis does not answer.
    seen: RecentIds,
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
            seen: RecentIds::new(DEDUPE_CAPACITY, DEDUPE_WINDOW),
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
                    self.seen.claim(id);
                }
                return replies.into_iter().map(|reply| reply.is_some()).collect();
            }
        }
        ids.iter().map(|id| self.seen.claim(id)).collect()
    }
}

/// Event ids this process accepted recently, as 64-bit keyed hashes in two generations: ids
/// go into `current`; once it holds half the capacity, or is half the window old, `previous` is
/// dropped and `current` takes its place. So an id is remembered for at least half the
/// capacity's worth of later ids and half the window, at most the whole of both, in 8 bytes
/// and a bit. With a cache of string ids and per-entry expiry (moka) the process grew by
/// about 580 bytes per accepted event under load, which at this capacity would be 580 MB. A
/// false duplicate needs a 64-bit collision among a million ids: about one chance in 10^7.
#[derive(Debug)]
struct RecentIds {
    /// Keyed per process, so crafted ids cannot aim for collisions.
    hasher: RandomState,
    /// Ids per generation before it turns.
    per_generation: usize,
    /// Age of a generation before it turns.
    max_age: Duration,
    /// The two generations.
    generations: Mutex<Generations>,
}

#[derive(Debug)]
struct Generations {
    /// Where new ids go.
    current: HashSet<u64>,
    /// The generation before, still consulted.
    previous: HashSet<u64>,
    /// When `current` started.
    since: Instant,
}

impl RecentIds {
    fn new(capacity: usize, window: Duration) -> Self {
        RecentIds {
            hasher: RandomState::new(),
            per_generation: (capacity / 2).max(1),
            max_age: window / 2,
            generations: Mutex::new(Generations {
                current: HashSet::new(),
                previous: HashSet::new(),
                since: Instant::now(),
            }),
        }
    }

    /// Remembers `id`; true when it was not remembered already.
    fn claim(&self, id: &str) -> bool {
        let hash = self.hasher.hash_one(id);
        let mut g = self.generations.lock().unwrap_or_else(|p| p.into_inner());
        if g.previous.contains(&hash) || !g.current.insert(hash) {
            return false;
        }
        if g.current.len() >= self.per_generation || g.since.elapsed() >= self.max_age {
            g.previous = std::mem::take(&mut g.current);
            g.since = Instant::now();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracking::unix_seconds;

    #[test]
    fn recent_ids_are_remembered_for_half_the_capacity_at_least_and_then_forgotten() {
        let ids = RecentIds::new(10, DEDUPE_WINDOW);
        assert!(ids.claim("a"));
        assert!(!ids.claim("a"), "a repeat is caught");
        // Four more fill the first generation (5 = half of 10); five more turn the second.
        for i in 0..4 {
            assert!(ids.claim(&format!("x{i}")));
        }
        assert!(!ids.claim("a"), "still remembered in the previous generation");
        for i in 0..5 {
            assert!(ids.claim(&format!("y{i}")));
        }
        assert!(ids.claim("a"), "forgotten two generations later");

        // Half a zero window is over at once: every claim turns a generation.
        let aged = RecentIds::new(1000, Duration::ZERO);
        assert!(aged.claim("b"));
        assert!(!aged.claim("b"), "one turn keeps it");
        assert!(aged.claim("c"));
        assert!(aged.claim("b"), "two turns forget it");
    }

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
