//! `POST /events`: impressions and clicks coming back from client apps. Each event carries the
//! tracking token of the response that showed the item, so it is credited to the arm that
//! served it; forged, expired, repeated and unserved events are refused one by one with a
//! reason, and never fail the rest of the batch.
//!
//! **What an event may credit.** A token binds the page it came with (a tag per item, see
//! [`crate::feedback::token`]), so an event must name an item of that page, and each position
//! of the page takes at most one impression and one click, whatever `event_id` says: one token
//! cannot credit more than twice its page's length. Deduplication keys on (token, type,
//! position), so a client cannot claim another client's events, however it names its own.
//!
//! **Exactly once.** With Redis, the claim and the count happen in one Lua script per
//! experiment (its keys share the experiment's cluster slot), so an event is answered
//! `accepted` only once Redis has counted it, and a counted event is never counted again. The
//! claim remembers the event's `event_id`: a client that lost its answer and sends the event
//! again with the same id is answered `accepted` again without a second count. Without an id,
//! a repeat is a `duplicate_event_id`, so clients that retry should send ids. When Redis does
//! not answer, the events it should have counted are refused as `counts_unavailable` (the
//! whole batch is a 503 when nothing was accepted): retrying them later is safe.
//!
//! Without Redis the same claims live in this process ([`RecentClaims`]), counted in the same
//! step.
//!
//! Keys: `recgw:seen:{experiment}:{token id}`, a hash of `i3`/`c3` (type and position) → the
//! event id, expiring [`CLAIM_MARGIN`] after the token does. One event adds at most a field of 3–4 bytes and its id
//! (at most 64), about 80 bytes with the hash's overhead; a token's hash, about 100 bytes more,
//! holds at most 2 × its page's length fields. Events of the placement default (no experiment)
//! are claimed under `{p:placement}` and counted only in the metrics.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::experiment::HOLDOUT_ARMS;
use crate::experiment::Team;
use crate::feedback::counts::{self, Count, GATHERED_COUNTS, MAX_DAYS, Tally, key_index};
use crate::feedback::lists::{POSITION_BUCKETS, position_bucket};
use crate::feedback::token::{Claims, Signer, TokenError, TokenId, item_tag_in};
use crate::feedback::users::{UserKey, pre_state, shard_tag};
use crate::keys;
use crate::redis::{Failure, RedisClient};

/// How long a claim outlives its token: tokens are verified by each replica's clock and claims
/// expire by Redis's, so a claim kept only to the token's last second lets an event in that
/// second, or on a replica whose clock runs behind Redis's, be counted again. Five minutes
/// covers any skew NTP leaves between hosts.
pub(crate) const CLAIM_MARGIN: Duration = Duration::from_secs(300);

/// Claims this process remembers at most without Redis (see [`RecentClaims`]).
const DEDUPE_CAPACITY: usize = 1_000_000;

/// Longest `event_id` and `item_id` accepted.
const MAX_EVENT_ID: usize = 64;
const MAX_ITEM_ID: usize = 256;

/// Claims and counts a group of events of one shard of an experiment (or of one placement's
/// default), after [`GATHERED_COUNTS`]. KEYS: the tokens' claim hashes, per arm its counters
/// hash and days hash, the users' bucket hashes, and for an interleave experiment its duel
/// hashes (per user, then totals; see [`crate::feedback::counts`]). ARGV: today (`YYYY-MM-DD`,
/// UTC), the day whose counts are dropped once today's are first counted ([`MAX_DAYS`] back),
/// then 13 per event: claim key index, field, value (the event id, or this request's attempt
/// id), expiry (unix seconds), counters key index (0: not counted; the days hash follows it),
/// `1` for a click (`0`: an impression), user, duel key index (0: not interleaved), the item's
/// team (`0`/`1`), the item's rank bucket (`3`, `4-5`: its impressions and clicks are also
/// counted in the arm's [`keys::field::IMPRESSIONS_AT`] and [`keys::field::CLICKS_AT`] of the
/// bucket), the user's bucket key index, the user's field in it and
/// the user's pre-period row (`i':c'`, empty without one: used only if the event enters the
/// user). Returns per event 1 (counted now), 2 (counted before with this value: a retry) or 0 (a
/// duplicate).
///
/// A counted event moves the user's `(c, i)` (kept as `"{i}:{c}"` in the bucket; a user not
/// there yet is counted in the arm's [`keys::field::USERS`] first) and the arm's per-user sums
/// by the increments of STATISTICS.md §1, in the totals and in today's fields alike; a user who
/// entered with a pre-period row (kept as `"{i}:{c}:{i'}:{c'}"`) also moves the cross sums of
/// STATISTICS.md §5 ([`keys::field::CLICKS_BY_CLICKS`] and the three after it). Each user's
/// state is read once and written once per script, however many of its events the batch holds.
/// The fields' names come from the prelude [`counts::script`] puts before it.
///
/// A click on an interleaved page adds one to the user's clicks for the item's team; the user's
/// outcome (which team has more clicks, or a tie) is compared before and after, and the totals
/// move the user from the old outcome to the new, so they always hold each clicking user once.
pub(super) const CLAIM_SCRIPT: &str = r"
-- F.WINS counts from 1, as Lua does: team 0's wins, then team 1's.
local function outcome(mine, theirs, team)
  if mine == 0 and theirs == 0 then return nil end
  if mine == theirs then return F.TIES end
  if mine > theirs then return F.WINS[team + 1] end
  return F.WINS[2 - team]
end
local out = {}
local states = {}
for e = 0, (#ARGV - 2) / 13 - 1 do
  local a = 2 + e * 13
  local seen = KEYS[tonumber(ARGV[a + 1])]
  local prev = redis.call('HGET', seen, ARGV[a + 2])
  if not prev then
    redis.call('HSET', seen, ARGV[a + 2], ARGV[a + 3])
    redis.call('EXPIREAT', seen, ARGV[a + 4])
    local arm = tonumber(ARGV[a + 5])
    if arm > 0 then
      local counters, days, click = KEYS[arm], KEYS[arm + 1], ARGV[a + 6] == '1'
      local bucket, field = KEYS[tonumber(ARGV[a + 11])], ARGV[a + 12]
      local id = bucket .. '/' .. field
      local state = states[id]
      if not state then
        state = {bucket, field, 0, 0}
        local kept = redis.call('HGET', bucket, field)
        if not kept then
          state[5], state[6] = enter(counters, days, ARGV[a + 13])
        else
          state[3], state[4], state[5], state[6] = parse(kept)
        end
        states[id] = state
      end
      local i, c, pi, pc = state[3], state[4], state[5], state[6]
      if click then
        add(counters, F.CLICKS_AT .. ARGV[a + 10], 1)
        count(counters, days, F.CLICKS, 1)
        count(counters, days, F.CLICKS_SQ, 2 * c + 1)
        count(counters, days, F.CROSS, i)
        if pi then
          count(counters, days, F.CLICKS_BY_CLICKS, pc)
          count(counters, days, F.CLICKS_BY_IMPRESSIONS, pi)
        end
        if c == 0 then add(counters, F.CLICKERS, 1) end
        state[4] = c + 1
        local duel = tonumber(ARGV[a + 8])
        if duel > 0 then
          local team = tonumber(ARGV[a + 9])
          local user = ARGV[a + 7]
          local mine = redis.call('HINCRBY', KEYS[duel], user .. ':' .. team, 1)
          local theirs = tonumber(redis.call('HGET', KEYS[duel], user .. ':' .. (1 - team)) or '0')
          local before = outcome(mine - 1, theirs, team)
          local after = outcome(mine, theirs, team)
          if before ~= after then
            if before then redis.call('HINCRBY', KEYS[duel + 1], before, -1) end
            redis.call('HINCRBY', KEYS[duel + 1], after, 1)
          end
        end
      else
        add(counters, F.IMPRESSIONS_AT .. ARGV[a + 10], 1)
        count(counters, days, F.IMPRESSIONS, 1)
        count(counters, days, F.IMPRESSIONS_SQ, 2 * i + 1)
        count(counters, days, F.CROSS, c)
        if pi then
          count(counters, days, F.IMPRESSIONS_BY_CLICKS, pc)
          count(counters, days, F.IMPRESSIONS_BY_IMPRESSIONS, pi)
        end
        state[3] = i + 1
      end
    end
    out[e + 1] = 1
  elseif prev == ARGV[a + 3] then
    out[e + 1] = 2
  else
    out[e + 1] = 0
  end
end
for _, state in pairs(states) do
  local kept = state[3] .. ':' .. state[4]
  if state[5] then kept = kept .. ':' .. state[5] .. ':' .. state[6] end
  redis.call('HSET', state[1], state[2], kept)
end
apply()
return out
";

/// What happened to the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventKind {
    /// The item was shown.
    Impression,
    /// The item was clicked.
    Click,
}

impl EventKind {
    /// The `type` of the event as clients send it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EventKind::Impression => "impression",
            EventKind::Click => "click",
        }
    }

    /// The letter of the type in claim keys (`i3`, `c3`).
    pub(crate) fn code(self) -> char {
        match self {
            EventKind::Impression => 'i',
            EventKind::Click => 'c',
        }
    }

    fn count(self) -> Count {
        match self {
            EventKind::Impression => Count::Impression,
            EventKind::Click => Count::Click,
        }
    }
}

/// One event as the client sent it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Event<'a> {
    /// `impression` or `click`.
    pub(crate) kind: &'a str,
    /// The `tracking_token` of the response that showed the item.
    pub(crate) token: &'a str,
    /// The item.
    pub(crate) item_id: &'a str,
    /// Client-chosen id: an event sent again with the same id is answered accepted without
    /// being counted twice.
    pub(crate) event_id: Option<&'a str>,
}

/// Why an event was refused; `as_str` is the reason reported to the client and in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// The token failed verification.
    Token(TokenError),
    /// `type` is neither `impression` nor `click`.
    UnknownType,
    /// `item_id` is empty.
    MissingItem,
    /// `item_id` is longer than 256 bytes or holds control characters.
    InvalidItem,
    /// `event_id` is longer than 64 characters or not from `[A-Za-z0-9._:@-]`.
    InvalidEventId,
    /// The item was not on the page the token came with.
    ItemNotServed,
    /// This type of event was already counted for this item of this page.
    Duplicate,
    /// Redis, which counts it, did not answer: send it again later.
    Unavailable,
}

impl Rejection {
    /// Every rejection, so each reason's counter exists from the start.
    pub(crate) const ALL: [Rejection; 10] = [
        Rejection::Token(TokenError::Malformed),
        Rejection::Token(TokenError::BadSignature),
        Rejection::Token(TokenError::Expired),
        Rejection::UnknownType,
        Rejection::MissingItem,
        Rejection::InvalidItem,
        Rejection::InvalidEventId,
        Rejection::ItemNotServed,
        Rejection::Duplicate,
        Rejection::Unavailable,
    ];

    /// The reason code.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Rejection::Token(TokenError::Malformed) => "malformed_token",
            Rejection::Token(TokenError::BadSignature) => "bad_signature",
            Rejection::Token(TokenError::Expired) => "expired_token",
            Rejection::UnknownType => "unknown_type",
            Rejection::MissingItem => "missing_item_id",
            Rejection::InvalidItem => "invalid_item_id",
            Rejection::InvalidEventId => "invalid_event_id",
            Rejection::ItemNotServed => "item_not_served",
            Rejection::Duplicate => "duplicate_event_id",
            Rejection::Unavailable => "counts_unavailable",
        }
    }
}

/// An accepted event.
#[derive(Debug, Clone)]
pub(crate) struct Accepted {
    /// What its token says.
    pub(crate) claims: Claims,
    /// Impression or click.
    pub(crate) kind: EventKind,
    /// Counted by this request; false for a retry of an event counted before.
    pub(crate) fresh: bool,
    /// The rank bucket of the item's position in the list ([`POSITION_BUCKETS`]).
    pub(crate) bucket: usize,
    /// The item's place in the token's page, 0-based.
    pub(crate) position: usize,
    /// The token's id: with the type and position, the key the event is counted under.
    pub(crate) token: TokenId,
}

/// An event that passed the checks, waiting for its claim.
#[derive(Debug)]
struct Checked {
    /// The token's claims, `arm` being the arm credited: the item's team on an interleaved
    /// page.
    claims: Claims,
    kind: EventKind,
    /// The item's team on an interleaved page.
    team: Option<Team>,
    /// The rank bucket of the item's position in the list.
    bucket: usize,
    /// The token's id.
    token: TokenId,
    /// The item's place in the token's page, 0-based.
    position: usize,
    /// Type and position in the page: `i3`, `c3`.
    field: String,
    /// The client's event id, if any.
    event_id: Option<String>,
    /// The holdout of the token's placement, when the event is not the holdout's own: the
    /// event is also counted for its `exposed` arm (everyone on the placement not held out).
    holdout: Option<String>,
    /// The token's user, as the per-user state knows it: its shard is the event's slot.
    user: UserKey,
}

impl Checked {
    /// The cluster slot group: the experiment counted, or the placement for default traffic.
    fn group(&self) -> String {
        match &self.claims.experiment {
            Some(experiment) => experiment.clone(),
            None => format!("p:{}", self.claims.placement),
        }
    }

    /// Whether the experiment's results count it.
    fn counted(&self) -> bool {
        self.claims.experiment.is_some() && !self.claims.uncounted
    }
}

/// Verifies, deduplicates and (with the counts) records events.
#[derive(Debug)]
pub(crate) struct EventLog {
    /// Verifies tracking tokens (and signs them for responses).
    signer: Signer,
    /// Where claims and counts go when Redis is configured.
    redis: Option<RedisClient>,
    /// The claim script.
    script: ::redis::Script,
    /// Claims of this process, without Redis.
    seen: RecentClaims,
    /// Makes attempt ids of this process unlike another's.
    attempts: RandomState,
}

fn valid_event_id(id: &str) -> bool {
    id.len() <= MAX_EVENT_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'@' | b'-'))
}

impl EventLog {
    /// An event log verifying with `signer`, claiming and counting through `redis` when given
    /// (whose deadline bounds one try of a batch's claims).
    pub(crate) fn new(signer: Signer, redis: Option<RedisClient>) -> Self {
        EventLog {
            // A claim is remembered at least half the window: twice the token's life and the
            // margin, so time alone never forgets one its token could still repeat.
            seen: RecentClaims::new(DEDUPE_CAPACITY, 2 * (signer.max_age() + CLAIM_MARGIN)),
            signer,
            redis,
            script: counts::script(&[GATHERED_COUNTS, CLAIM_SCRIPT]),
            attempts: RandomState::new(),
        }
    }

    /// The signer, for issuing tokens with responses.
    pub(crate) fn signer(&self) -> &Signer {
        &self.signer
    }

    /// Verifies one event and finds its item on the token's page.
    fn check(&self, event: &Event<'_>, now: SystemTime) -> Result<Checked, Rejection> {
        let kind = match event.kind {
            "impression" => EventKind::Impression,
            "click" => EventKind::Click,
            _ => return Err(Rejection::UnknownType),
        };
        if event.item_id.is_empty() {
            return Err(Rejection::MissingItem);
        }
        if event.item_id.len() > MAX_ITEM_ID || event.item_id.chars().any(char::is_control) {
            return Err(Rejection::InvalidItem);
        }
        // An empty id is no id: clients that send "" would otherwise be told every retry is
        // the same event.
        let event_id = event.event_id.filter(|id| !id.is_empty());
        if event_id.is_some_and(|id| !valid_event_id(id)) {
            return Err(Rejection::InvalidEventId);
        }
        let (mut claims, token) = self.signer.verify(event.token, now).map_err(Rejection::Token)?;
        let tag = item_tag_in(event.token, event.item_id);
        let position = claims
            .items
            .iter()
            .position(|t| *t == tag)
            .ok_or(Rejection::ItemNotServed)?;
        let team = match &claims.teams {
            // A signed token holds a team per item, so the position has one.
            Some(teams) => {
                let arm = teams.arm_of(position).ok_or(Rejection::Token(TokenError::Malformed))?;
                claims.arm = arm.to_string();
                teams.of_items.get(position).copied()
            }
            None => None,
        };
        let rank = claims.offset as usize + position + 1;
        let user = UserKey::of(&claims.user);
        Ok(Checked {
            claims,
            kind,
            team,
            bucket: position_bucket(rank),
            token,
            position,
            field: format!("{}{position}", kind.code()),
            event_id: event_id.map(str::to_string),
            holdout: None,
            user,
        })
    }

    /// Checks a batch and claims every event that passes: in Redis when configured (counting
    /// it there in the same script), else in this process (counting it in `tally`).
    /// `holdout` names the holdout of a placement, if it has one.
    pub(crate) async fn accept(
        &self,
        events: &[Event<'_>],
        now: SystemTime,
        tally: &Tally,
        holdout: impl Fn(&str) -> Option<String>,
    ) -> Vec<Result<Accepted, Rejection>> {
        let mut checked: Vec<Result<Checked, Rejection>> = events.iter().map(|e| self.check(e, now)).collect();
        let mut in_batch = HashSet::new();
        for result in &mut checked {
            if let Ok(c) = result
                && !in_batch.insert((c.token, c.field.clone()))
            {
                *result = Err(Rejection::Duplicate);
            }
            if let Ok(c) = result {
                c.holdout = holdout(&c.claims.placement).filter(|h| c.claims.experiment.as_ref() != Some(h));
            }
        }
        let today = crate::calendar::day_of(now);
        let outcomes: Vec<Result<bool, Rejection>> = match &self.redis {
            Some(redis) => self.claim_in_redis(redis, &checked, now, tally).await,
            None => checked
                .iter()
                .map(|c| {
                    let c = c.as_ref().map_err(|r| *r)?;
                    let fresh = self.seen.claim(c)?;
                    if fresh && c.counted() {
                        let experiment = c.claims.experiment.as_deref().unwrap_or_default();
                        let counter = tally.arm(experiment, &c.claims.arm);
                        tally.count_locally(&counter, c.user, c.kind.count(), c.bucket, today);
                        if let (Some(team), EventKind::Click) = (c.team, c.kind) {
                            tally.duel_click(experiment, &c.claims.user, team);
                        }
                    }
                    if let (true, Some(holdout)) = (fresh, &c.holdout) {
                        let counter = tally.arm(holdout, HOLDOUT_ARMS[1]);
                        tally.count_locally(&counter, c.user, c.kind.count(), c.bucket, today);
                    }
                    Ok(fresh)
                })
                .collect(),
        };
        checked
            .into_iter()
            .zip(outcomes)
            .map(|(c, outcome)| {
                let fresh = outcome?;
                let c = c?;
                Ok(Accepted {
                    claims: c.claims,
                    kind: c.kind,
                    fresh,
                    bucket: c.bucket,
                    position: c.position,
                    token: c.token,
                })
            })
            .collect()
    }

    /// One script per slot group, all at once; each group tried again (with the same values,
    /// so a try whose answer was lost is recognised) until it answers or the budget is spent.
    async fn claim_in_redis(
        &self,
        redis: &RedisClient,
        checked: &[Result<Checked, Rejection>],
        now: SystemTime,
        tally: &Tally,
    ) -> Vec<Result<bool, Rejection>> {
        let shards = tally.shards();
        let mut outcomes: Vec<Result<bool, Rejection>> = checked
            .iter()
            .map(|c| c.as_ref().map(|_| false).map_err(|r| *r))
            .collect();
        // Per slot (a shard of a group: the user's), its events, each flagged when it is
        // counted there as the holdout's `exposed` arm rather than for its own experiment.
        let mut groups: HashMap<String, Vec<(usize, bool)>> = HashMap::new();
        for (i, c) in checked.iter().enumerate() {
            if let Ok(c) = c {
                let shard = c.user.shard(shards);
                groups.entry(shard_tag(&c.group(), shard)).or_default().push((i, false));
                if let Some(holdout) = &c.holdout {
                    groups.entry(shard_tag(holdout, shard)).or_default().push((i, true));
                }
            }
        }
        let attempt = format!("~{:016x}", self.attempts.hash_one((Instant::now(), now)));
        let claims_for = (self.signer.max_age() + CLAIM_MARGIN).as_secs();
        // One try waits the client's deadline (at most 1 s); a late one is tried again for up
        // to two and a half of them, well inside `server.request_timeout`.
        let deadline = redis.timeout();
        let budget = deadline * 5 / 2;
        let started = Instant::now();
        let today = crate::calendar::day_of(now);
        let (day, expired) = (crate::calendar::date(today), crate::calendar::date(today - MAX_DAYS));
        let tries = groups.iter().map(|(tag, members)| {
            let mut invocation = self.script.prepare_invoke();
            invocation.arg(&day).arg(&expired);
            let mut keys: HashMap<String, usize> = HashMap::new();
            for &(i, exposed) in members {
                let Ok(c) = &checked[i] else { continue };
                let seen = key_index(
                    &mut invocation,
                    &mut keys,
                    keys::seen(tag, &URL_SAFE_NO_PAD.encode(c.token)),
                );
                let credited = match exposed {
                    true => Some(HOLDOUT_ARMS[1]),
                    false => c.counted().then_some(c.claims.arm.as_str()),
                };
                // Only the experiment's own arms are adjusted by covariates, not a holdout's.
                let pre = match (exposed, c.counted(), &c.claims.experiment) {
                    (false, true, Some(experiment)) => tally.pre_period(experiment, &c.claims.arm, c.user),
                    _ => None,
                };
                let (arm, bucket) = if let Some(credited) = credited {
                    let key = keys::results(tag, credited);
                    let counters = key_index(&mut invocation, &mut keys, key.clone());
                    key_index(&mut invocation, &mut keys, keys::days(&key));
                    let bucket = keys::user_bucket(tag, credited, c.user.bucket());
                    (counters, key_index(&mut invocation, &mut keys, bucket))
                } else {
                    (0, 0)
                };
                let duel = match c.team {
                    Some(_) if c.counted() && !exposed => {
                        let [users, totals] = keys::duel(tag);
                        let users = key_index(&mut invocation, &mut keys, users);
                        key_index(&mut invocation, &mut keys, totals);
                        users
                    }
                    _ => 0,
                };
                invocation
                    .arg(seen)
                    .arg(&c.field)
                    .arg(c.event_id.as_deref().unwrap_or(&attempt))
                    .arg(c.claims.issued_at + claims_for)
                    .arg(arm)
                    .arg(u8::from(c.kind == EventKind::Click))
                    .arg(&c.claims.user)
                    .arg(duel)
                    .arg(c.team.unwrap_or(0))
                    .arg(POSITION_BUCKETS[c.bucket])
                    .arg(bucket)
                    .arg(&c.user.field()[..])
                    .arg(pre_state(pre));
            }
            async move {
                let mut answer = redis.query::<Vec<u8>>(&invocation).await;
                // A late try may have run in Redis: the same values again tell whether it did.
                // A skipped or refused one never ran, so it is not worth the wait.
                while answer == Err(Failure::Timeout) && started.elapsed() + deadline / 4 < budget {
                    let left = budget.saturating_sub(started.elapsed());
                    answer = redis.query_now::<Vec<u8>>(&invocation, left.min(deadline)).await;
                }
                (members, answer)
            }
        });
        // An event's own group decides its answer; its count for a holdout's `exposed` arm can
        // only refuse it (as unavailable, so the client sends it again and both claims agree:
        // a claim taken before answers 2, a retry).
        let mut unavailable = Vec::new();
        for (members, answer) in futures::future::join_all(tries).await {
            match answer {
                Ok(replies) if replies.len() == members.len() => {
                    for (&(i, exposed), reply) in members.iter().zip(replies) {
                        if !exposed {
                            outcomes[i] = match reply {
                                1 => Ok(true),
                                2 => Ok(false),
                                _ => Err(Rejection::Duplicate),
                            };
                        }
                    }
                }
                _ => unavailable.extend(members.iter().map(|&(i, _)| i)),
            }
        }
        for i in unavailable {
            outcomes[i] = Err(Rejection::Unavailable);
        }
        outcomes
    }
}

/// Claims this process made recently (no Redis): a 64-bit keyed hash of (token, field) → a
/// hash of the event id, in two generations. Claims go into `current`; once it holds half the
/// capacity, or is half the window old, `previous` is dropped and `current` takes its place.
/// So a claim is remembered for at least half the capacity's worth of later claims and half
/// the window, at most the whole of both, in about 16 bytes. A false duplicate needs a 64-bit
/// collision among a million claims: about one chance in 10^7.
#[derive(Debug)]
struct RecentClaims {
    /// Keyed per process, so crafted ids cannot aim for collisions.
    hasher: RandomState,
    /// Claims per generation before it turns.
    per_generation: usize,
    /// Age of a generation before it turns.
    max_age: Duration,
    /// The two generations.
    generations: Mutex<Generations>,
}

#[derive(Debug)]
struct Generations {
    /// Where new claims go.
    current: HashMap<u64, u64>,
    /// The generation before, still consulted.
    previous: HashMap<u64, u64>,
    /// When `current` started.
    since: Instant,
}

impl RecentClaims {
    fn new(capacity: usize, window: Duration) -> Self {
        RecentClaims {
            hasher: RandomState::new(),
            per_generation: (capacity / 2).max(1),
            max_age: window / 2,
            generations: Mutex::new(Generations {
                current: HashMap::new(),
                previous: HashMap::new(),
                since: Instant::now(),
            }),
        }
    }

    /// Claims `event`'s position: `Ok(true)` when new, `Ok(false)` when claimed before by the
    /// same event id (a retry), else a duplicate.
    fn claim(&self, event: &Checked) -> Result<bool, Rejection> {
        let key = self.hasher.hash_one((&event.token, &event.field));
        // 0 stands for "no id", which never matches: a repeat without an id is a duplicate.
        let value = event.event_id.as_deref().map_or(0, |id| self.hasher.hash_one(id) | 1);
        let mut g = self.generations.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&claimed) = g.current.get(&key).or_else(|| g.previous.get(&key)) {
            return if claimed == value && value != 0 {
                Ok(false)
            } else {
                Err(Rejection::Duplicate)
            };
        }
        g.current.insert(key, value);
        if g.current.len() >= self.per_generation || g.since.elapsed() >= self.max_age {
            g.previous = std::mem::take(&mut g.current);
            g.since = Instant::now();
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use prometheus::{IntCounter, IntGauge};

    use super::*;
    use crate::feedback::token::{item_tag, unix_seconds};

    fn checked(token: u8, field: &str, event_id: Option<&str>) -> Checked {
        Checked {
            claims: claims(SystemTime::now()),
            kind: EventKind::Click,
            team: None,
            bucket: 0,
            token: [token; 12],
            position: 0,
            field: field.into(),
            event_id: event_id.map(String::from),
            holdout: None,
            user: UserKey::of("42"),
        }
    }

    /// Without Redis too, time alone never forgets a claim while its token, plus the margin
    /// for clock skew, could still bring the event back: a generation turns after at least
    /// that long, and a claim lives one to two generations.
    #[test]
    fn claims_here_outlive_their_token_by_the_margin() {
        let signer = Signer::new("k", Duration::from_secs(3600));
        let log = EventLog::new(signer, None);
        assert!(
            log.seen.max_age >= Duration::from_secs(3600) + CLAIM_MARGIN,
            "a generation turns after {:?}",
            log.seen.max_age
        );
    }

    #[test]
    fn recent_claims_are_remembered_for_half_the_capacity_at_least_and_then_forgotten() {
        let seen = RecentClaims::new(10, Duration::from_secs(3600));
        let a = checked(1, "c0", None);
        assert_eq!(seen.claim(&a), Ok(true));
        assert_eq!(seen.claim(&a), Err(Rejection::Duplicate), "a repeat without id");
        // Four more fill the first generation (5 = half of 10); five more turn the second.
        for i in 0..4 {
            assert_eq!(seen.claim(&checked(2, &format!("c{i}"), None)), Ok(true));
        }
        assert_eq!(
            seen.claim(&a),
            Err(Rejection::Duplicate),
            "still in the previous generation"
        );
        for i in 0..5 {
            assert_eq!(seen.claim(&checked(3, &format!("c{i}"), None)), Ok(true));
        }
        assert_eq!(seen.claim(&a), Ok(true), "forgotten two generations later");

        let with_id = checked(4, "i1", Some("e-1"));
        assert_eq!(seen.claim(&with_id), Ok(true));
        assert_eq!(seen.claim(&with_id), Ok(false), "the same id again is a retry");
        assert_eq!(
            seen.claim(&checked(4, "i1", Some("e-2"))),
            Err(Rejection::Duplicate),
            "another id for a counted position"
        );
        assert_eq!(
            seen.claim(&checked(5, "i1", Some("e-1"))),
            Ok(true),
            "ids are per token"
        );
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
            items: ["7", "8", "9", "10"].iter().map(|i| item_tag(i)).collect(),
            teams: None,
            offset: 0,
        }
    }

    fn tally() -> Tally {
        Tally::new(
            None,
            IntGauge::new("depth", "test").expect("gauge"),
            IntCounter::new("uncounted", "test").expect("counter"),
            &crate::config::ResultsSettings::default(),
        )
    }

    #[tokio::test]
    async fn accepts_once_per_position_and_names_every_rejection() {
        let now = SystemTime::now();
        let log = EventLog::new(Signer::new("k", Duration::from_secs(60)), None);
        let tally = tally();
        let token = log.signer().sign(claims(now).view());
        let one = async |event: Event<'_>| {
            log.accept(&[event], now, &tally, |_| None)
                .await
                .remove(0)
                .map(|a| (a.claims.arm, a.kind, a.fresh))
        };
        let event = Event {
            kind: "click",
            token: &token,
            item_id: "7",
            event_id: None,
        };
        assert_eq!(one(event).await, Ok(("treatment".into(), EventKind::Click, true)));
        assert_eq!(one(event).await, Err(Rejection::Duplicate));
        assert!(
            one(Event {
                kind: "impression",
                ..event
            })
            .await
            .is_ok(),
            "another type is another event"
        );
        let with_id = Event {
            event_id: Some("e-1"),
            item_id: "8",
            ..event
        };
        assert_eq!(one(with_id).await, Ok(("treatment".into(), EventKind::Click, true)));
        assert_eq!(
            one(with_id).await,
            Ok(("treatment".into(), EventKind::Click, false)),
            "a retry with its id is accepted, not counted again"
        );
        assert_eq!(
            one(Event {
                event_id: Some("e-2"),
                ..with_id
            })
            .await,
            Err(Rejection::Duplicate),
            "one click per position, whatever the id"
        );
        assert_eq!(
            one(Event {
                item_id: "9",
                ..with_id
            })
            .await
            .map(|(_, _, fresh)| fresh),
            Ok(true),
            "an id is scoped to its position"
        );
        let counts = tally.read("e", &["treatment"]).await.expect("local counts");
        assert_eq!((counts.arms[0].clicks(), counts.arms[0].impressions()), (3, 1));

        let twice = [Event { item_id: "10", ..event }, Event { item_id: "10", ..event }];
        let results: Vec<bool> = log
            .accept(&twice, now, &tally, |_| None)
            .await
            .iter()
            .map(Result::is_ok)
            .collect();
        assert_eq!(results, [true, false], "a duplicate within one batch");

        let other = Signer::new("other", Duration::from_secs(60)).sign(claims(now).view());
        let long = "x".repeat(MAX_ITEM_ID + 1);
        let batch = [
            Event { kind: "view", ..event },
            Event { item_id: "", ..event },
            Event {
                item_id: &long,
                ..event
            },
            Event {
                event_id: Some("a b"),
                ..event
            },
            Event { item_id: "11", ..event },
            Event {
                token: "x.y",
                item_id: "7",
                ..event
            },
            Event {
                token: &other,
                item_id: "7",
                ..event
            },
        ];
        let reasons: Vec<&str> = log
            .accept(&batch, now, &tally, |_| None)
            .await
            .into_iter()
            .map(|r| r.map(|_| ()).expect_err("rejected").as_str())
            .collect();
        assert_eq!(
            reasons,
            [
                "unknown_type",
                "missing_item_id",
                "invalid_item_id",
                "invalid_event_id",
                "item_not_served",
                "malformed_token",
                "bad_signature"
            ]
        );
        let later = now + Duration::from_secs(120);
        let expired = log
            .accept(&[Event { item_id: "9", ..event }], later, &tally, |_| None)
            .await
            .remove(0)
            .map(|_| ());
        assert_eq!(expired, Err(Rejection::Token(TokenError::Expired)));
    }
}
