//! Durable per-arm counts for the analysts' results, shared by every replica through Redis:
//! exposures, users and the per-user sums of [`crate::feedback::users`], impressions, clicks
//! and clicking users, and the list metrics of [`crate::feedback::lists`]: distinct items
//! served, impressions and clicks per rank bucket, and a shadow arm's overlap with the control.
//!
//! **Exposures** are counted on the request path without a lock, an allocation or a Redis
//! round trip: each arm has an [`ArmCounter`] resolved when the catalog loads, holding an atomic
//! count, a lock-free sketch of the items served and a bounded lock-free queue of the users
//! served. Every 100 ms a background task collects the queues into each arm's pending users
//! (without Redis: into the users this process counts); every second it flushes:
//! - the exposures, sketches and overlap sums as one Lua script per experiment that is applied
//!   at most once: each batch carries this replica's sequence number, and the script adds its
//!   counts only if the replica's last applied number (kept beside the counts) is lower. A
//!   batch whose reply was lost (a timeout after Redis ran it) is sent again unchanged and
//!   skipped the second time, so a slow Redis cannot inflate the counts. Items travel as the
//!   sketch's registers in Redis's own dense format, merged with `PFMERGE`;
//! - the pending users as one script per shard ([`crate::feedback::users`]): a user absent from
//!   its bucket is added, and counted in the arm's `users` and today's `n`, exactly once
//!   however often it is sent, so a resend, a restart or another replica's copy adds nothing.
//!
//! **Exact users, bounded.** Users wait in memory only while Redis does not confirm them, at most
//! `results.max_buffered_users` for the process (without Redis, that bounds every user held).
//! A user that finds no room (or a queue full for longer than 100 ms of traffic) is not
//! counted, and the arm's results say so (`users_exact: false`, with the reason, shared with the
//! other replicas through `recgw:results:{e}:inexact`) and withhold the sample-ratio verdict
//! rather than report a wrong one; `results_users_uncounted_total` counts them.
//!
//! **Impressions and clicks** are counted by [`crate::feedback::events`] in the same script
//! that claims the event and updates the user's `(c, i)` and the arm's sums, so an event is
//! answered accepted only once Redis has counted it.
//!
//! Without Redis configured the same counts are the results of this process, and say so.
//!
//! **Duels** are what an interleave experiment compares: per user, the clicks on each team's
//! items, and the totals of users each team wins and of ties (users with no click are in
//! neither). The event script that counts a click moves its user between outcomes in the same
//! step, so the totals never need a scan of the users.
//!
//! **Days**: what each UTC day added to the per-user sums (`n`, `Σc`, `Σi`, `Σc²`, `Σi²`,
//! `Σc·i`: the sums at the end of a day are the days' additions up to it) is counted in the
//! same step as the totals, so the days of an arm always sum to what it counted since they were
//! kept; at most [`MAX_DAYS`] are kept, the oldest dropped first. They give the results over
//! time (`?by=day`) with the same estimator as the totals.
//!
//! **Keys.** Under the experiment's own tag `{e}`: `recgw:results:{e}:{arm}` (exposures,
//! overlap sums), `…:items` (a HyperLogLog), `recgw:results:{e}:applied:{replica}` (the last
//! sequence applied from one replica process, expiring 7 days after its last flush) and
//! `recgw:results:{e}:inexact` (why users are not exact, once they are not). Under each shard's
//! tag `{e:k}`: `recgw:results:{e:k}:{arm}` (the per-user sums, the clicking users and the rank
//! buckets), `…:{arm}:days` (what each day added to the sums; with covariates, the pre-period
//! sums too), the users' buckets, and for an interleave experiment `recgw:results:{e:k}:duel`
//! (the outcomes' totals) and `…:duel:users` (clicks per user and team). Reading adds the
//! shards. The fields of these hashes are named in [`crate::keys::field`]: the scripts get them
//! from a prelude of their source ([`script`]) and the readers here use the same constants.
//!
//! **Counts from before per-user counting.** Impressions, clicks and days an experiment
//! counted under `recgw:results:{e}:{arm}` before the shards existed carry no per-user sums:
//! they are read as counted *outside* the per-user sums (in the totals, not in the statistics),
//! and the results say from which day the statistics run.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime};

use hyperloglockless::AtomicHyperLogLog;
use prometheus::{IntCounter, IntGauge};

use crate::config::ResultsSettings;
use crate::feedback::lists::{Overlap, POSITION_BUCKETS};
use crate::feedback::sums::{PrePeriod, PreSums, UserSums};
use crate::feedback::users::{Day, LocalUsers, UserKey, pre_state, shard_tag};
use crate::keys::{self, field};
use crate::redis::RedisClient;
use crate::store::CovariateSlot;

pub(crate) use crate::feedback::users::{DayCounts, MAX_DAYS};

/// A flush starts this often.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// The users' queues are collected this often: a queue holds this long's worth of traffic.
const COLLECT_EVERY: Duration = Duration::from_millis(100);

/// Exposures an arm's queue holds between two collections (160,000 a second per arm; 32 bytes
/// a slot, so 512 KiB an arm).
const ARRIVALS: usize = 1 << 14;

/// How long Redis remembers a replica's last applied batch: longer than any outage a batch
/// waits through, short enough that replicas long gone leave no keys behind.
const APPLIED_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// HyperLogLog precision: 2^14 registers, Redis's, so a sketch merges into its HyperLogLogs.
const PRECISION: u8 = 14;

/// The sketch's hash key. Fixed, so every replica puts an item in the same register and the
/// merged sketch counts an item seen by two replicas once.
const SKETCH_SEED: u128 = 0x7265_6367_772d_7573_6572_732d_686c_6c31;

/// Redis's dense HyperLogLog: a 16-byte header, then 16384 registers of 6 bits.
const DENSE_HEADER: usize = 16;
const DENSE_BYTES: usize = DENSE_HEADER + (1 << PRECISION) * 6 / 8;
/// The largest rank Redis's estimator reads at precision 14 (64 - 14 + 1).
const MAX_RANK: u8 = 51;

/// Why users are not exact, as the results say it.
const QUEUE_FULL: &str = "more users were served from one arm within 100 ms than a replica queues (16,384): \
     some were not counted, so users and the sample-ratio test are not exact";
const BUFFER_FULL: &str = "new users waited for Redis on one replica past results.max_buffered_users: \
     some were not counted, so users and the sample-ratio test are not exact";
const MEMORY_FULL: &str = "without Redis this process holds at most results.max_buffered_users users: \
     later users are not counted and their events are outside the per-user statistics";

/// A counting script of `parts`, after the prelude naming the hashes' fields
/// ([`keys::field::lua`]): the scripts spell no field, so the layout is the one `keys` gives and
/// the readers here use.
pub(crate) fn script(parts: &[&str]) -> ::redis::Script {
    ::redis::Script::new(&format!("{}{}", keys::field::lua(), parts.concat()))
}

/// The head of the scripts that count into a shard: it refuses the whole script, before any
/// write, when a key is not a hash; increments are gathered while the script runs and applied
/// at its end, one `HINCRBY` per field, so a batch of many events of a few
/// users costs a command per field rather than several per event. ARGV[1] is the day counted
/// (`YYYY-MM-DD`), ARGV[2] the day [`MAX_DAYS`] before it: the first count of a day in a days
/// hash drops that day's fields, so the days stay bounded.
pub(crate) const GATHERED_COUNTS: &str = r"
-- Every key these scripts touch is a hash. One of another type would stop the script halfway,
-- after some writes, which a resend would then apply again (or never count): so the script
-- stops before its first write, and the batch waits whole until the key is put right.
for i = 1, #KEYS do
  local kind = redis.call('TYPE', KEYS[i]).ok
  if kind ~= 'hash' and kind ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' holds a ' .. kind .. ', not a hash: nothing applied')
  end
end
local day, expired = ARGV[1], ARGV[2]
local adds, days_keys = {}, {}
local function add(key, field, n)
  if n ~= 0 then
    local fields = adds[key]
    if not fields then
      fields = {}
      adds[key] = fields
    end
    fields[field] = (fields[field] or 0) + n
  end
end
-- A sum (`F.USERS`, …) moves in the arm's totals and in today's field alike.
local function count(counters, days, sum, n)
  add(counters, sum.total, n)
  days_keys[days] = true
  add(days, day .. ':' .. sum.day, n)
end
-- A user's state in a bucket: `i:c`, with the pre-period `i':c'` appended when the user
-- entered with a covariate row (CUPED); empty for a user served without events.
local function parse(kept)
  local n = {}
  for part in string.gmatch(kept, '[^:]+') do n[#n + 1] = tonumber(part) end
  return n[1] or 0, n[2] or 0, n[3], n[4]
end
-- Counts a user new to an arm, with its pre-period `i':c'` (`pre`, empty without a row).
local function enter(counters, days, pre)
  count(counters, days, F.USERS, 1)
  if #pre == 0 then return nil, nil end
  local _, _, pi, pc = parse('0:0:' .. pre)
  count(counters, days, F.PRE_USERS, 1)
  count(counters, days, F.PRE_IMPRESSIONS, pi)
  count(counters, days, F.PRE_CLICKS, pc)
  count(counters, days, F.PRE_IMPRESSIONS_SQ, pi * pi)
  count(counters, days, F.PRE_CLICKS_SQ, pc * pc)
  count(counters, days, F.PRE_CROSS, pc * pi)
  return pi, pc
end
local function apply()
  for key, fields in pairs(adds) do
    for field, n in pairs(fields) do
      if redis.call('HINCRBY', key, field, n) == n and days_keys[key] then
        local gone = {}
        for _, sum in ipairs(F.SUMS) do gone[#gone + 1] = expired .. ':' .. sum.day end
        redis.call('HDEL', key, unpack(gone))
      end
    end
  end
end
";

/// Applies one replica's batch to an experiment's counts at most once. KEYS[1] is the replica's
/// applied-sequence key, KEYS[2] a scratch key for a sketch, KEYS[3] the experiment's
/// `inexact` key, then per arm its counters hash and items HyperLogLog; ARGV: the batch's
/// sequence, the applied key's TTL, why users are not exact (empty when they are), then per arm
/// its exposures, items sketch, comparisons, and the sums of their Jaccard and RBO in
/// millionths (integers, so a sum is exact whatever the order of adds).
const FLUSH_SCRIPT: &str = r"
-- A key of another type than the script writes (an arm's counters are a hash, the rest
-- strings) would stop it after part of the batch, which the resend would add again: so it
-- stops before its first write.
for i = 1, #KEYS do
  local want = 'string'
  if i > 3 and i % 2 == 0 then want = 'hash' end
  local kind = redis.call('TYPE', KEYS[i]).ok
  if kind ~= want and kind ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' holds a ' .. kind .. ', not a ' .. want .. ': nothing applied')
  end
end
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) <= last then return 0 end
if #ARGV[3] > 0 then redis.call('SET', KEYS[3], ARGV[3]) end
for arm = 0, (#KEYS - 3) / 2 - 1 do
  local k = 4 + arm * 2
  local a = 4 + arm * 5
  local fields = {F.EXPOSURES, nil, F.COMPARED, F.JACCARD_MICRO, F.RBO_MICRO}
  for _, f in ipairs({1, 3, 4, 5}) do
    local n = tonumber(ARGV[a + f - 1])
    if n > 0 then redis.call('HINCRBY', KEYS[k], fields[f], n) end
  end
  if #ARGV[a + 1] > 0 then
    redis.call('SET', KEYS[2], ARGV[a + 1])
    redis.call('PFMERGE', KEYS[k + 1], KEYS[2])
    redis.call('DEL', KEYS[2])
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
";

/// Counts users served, in one shard, each once, after [`GATHERED_COUNTS`]. KEYS: per arm its
/// counters hash and days hash, then the users' bucket hashes; ARGV: the day they were served
/// (`YYYY-MM-DD`), the day [`MAX_DAYS`] before it, then per user its arm's counters key index,
/// its bucket key index, its field and its pre-period row (`i':c'`, empty without one). A user
/// already there keeps the row it entered with. Returns the users new to their arm.
const USERS_SCRIPT: &str = r"
local added = 0
for u = 0, (#ARGV - 2) / 4 - 1 do
  local a = 3 + u * 4
  local arm, pre = tonumber(ARGV[a]), ARGV[a + 3]
  local state = ''
  if #pre > 0 then state = '0:0:' .. pre end
  if redis.call('HSETNX', KEYS[tonumber(ARGV[a + 1])], ARGV[a + 2], state) == 1 then
    enter(KEYS[arm], KEYS[arm + 1], pre)
    added = added + 1
  end
end
apply()
return added
";

/// Users one script adds at most: after an outage a shard may have hundreds of thousands
/// waiting, and one script blocks Redis while it runs (10,000 `HSETNX` take a few ms).
const USERS_PER_SCRIPT: usize = 10_000;

/// Fixed-point scale of the overlap sums: millionths.
const MICRO: f64 = 1e6;

/// What an event counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Count {
    /// An accepted impression event.
    Impression,
    /// An accepted click event.
    Click,
}

/// Totals of one arm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ArmCounts {
    /// Responses served.
    pub(crate) exposures: u64,
    /// The per-user sums: `users` is the distinct users served from the arm, exactly.
    pub(crate) sums: UserSums,
    /// Impressions and clicks in the totals but not in `sums`: counted before per-user sums
    /// were kept, or (without Redis) of users past the memory bound.
    pub(crate) outside: [u64; 2],
    /// The pre-period sums of the users in `sums` (CUPED), zero without covariates.
    pub(crate) pre: PreSums,
    /// Distinct users who clicked, since per-user counting began.
    pub(crate) clickers: u64,
    /// Distinct items served (HyperLogLog, ±0.81%); for a shadow arm, in the lists compared.
    pub(crate) items: u64,
    /// Impressions per rank bucket ([`POSITION_BUCKETS`]).
    pub(crate) impressions_by_position: [u64; POSITION_BUCKETS.len()],
    /// Clicks per rank bucket.
    pub(crate) clicks_by_position: [u64; POSITION_BUCKETS.len()],
    /// Shadow comparisons with the control's list.
    pub(crate) compared: u64,
    /// Sum of their Jaccard@k, in millionths.
    pub(crate) jaccard_micro: u64,
    /// Sum of their RBO, in millionths.
    pub(crate) rbo_micro: u64,
}

impl ArmCounts {
    /// Every impression counted.
    pub(crate) fn impressions(&self) -> u64 {
        self.sums.impressions + self.outside[0]
    }

    /// Every click counted.
    pub(crate) fn clicks(&self) -> u64 {
        self.sums.clicks + self.outside[1]
    }
}

/// An experiment's counts, as [`Tally::read`] gives them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// One per arm asked for, in that order.
    pub(crate) arms: Vec<ArmCounts>,
    /// Why users are not exact, when some could not be counted.
    pub(crate) inexact: Option<String>,
}

/// What an interleave experiment's users say: how many each team won, and how many tied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct DuelCounts {
    /// Users who clicked more of team 0's items, then of team 1's.
    pub(crate) wins: [u64; 2],
    /// Users who clicked both teams' items equally often.
    pub(crate) ties: u64,
}

impl DuelCounts {
    /// Moves a user from the outcome of `before` clicks per team to that of `after`.
    fn moved(&mut self, before: [u64; 2], after: [u64; 2]) {
        if let Some(old) = self.outcome(before) {
            *old -= 1;
        }
        if let Some(new) = self.outcome(after) {
            *new += 1;
        }
    }

    /// The total a user with `clicks` per team is counted in; none without a click.
    fn outcome(&mut self, clicks: [u64; 2]) -> Option<&mut u64> {
        match clicks {
            [0, 0] => None,
            [a, b] if a == b => Some(&mut self.ties),
            [a, b] => Some(&mut self.wins[usize::from(b > a)]),
        }
    }
}

/// An interleave experiment's duel in this process (no Redis): each clicking user's clicks per
/// team, and the totals.
#[derive(Debug, Default)]
struct Duel {
    users: HashMap<String, [u64; 2]>,
    totals: DuelCounts,
}

fn sketch() -> AtomicHyperLogLog {
    AtomicHyperLogLog::seeded(PRECISION, SKETCH_SEED)
}

/// Adds `value` to `sketch`, writing only when it raises its register. The crate's insert is a
/// `fetch_max`, a locked write whether or not the register changes; a served page made ten of
/// them a request, to lines both cores share, where a read finding the register high enough
/// (an item seen before: nearly every request) leaves the line shared. The register and
/// rank are the crate's own (`hash >> (64 - precision)`, `1 + trailing_zeros`), which
/// `inserts_leave_the_registers_the_crate_would` holds it to.
fn insert(sketch: &AtomicHyperLogLog, value: &str) {
    let (registers, hasher, ..) = sketch.parts();
    let hash = hasher.hash_one(value);
    let rank = 1 + hash.trailing_zeros() as u8;
    let register = registers.get((hash >> (64 - PRECISION)) as usize);
    if register.is_none_or(|r| r.load(Ordering::Relaxed) < rank) {
        sketch.insert_hash(hash);
    }
}

/// One arm's counts in this process, resolved once per catalog so the request path only
/// touches atomics and a lock-free queue.
#[derive(Debug)]
pub(crate) struct ArmCounter {
    /// Exposures recorded since start.
    exposures: AtomicU64,
    /// Of them, those already put into a flush batch (written by the flusher only).
    sealed: AtomicU64,
    /// Items served since start (catalogue coverage); merged into Redis whole, which is
    /// idempotent.
    items: AtomicHyperLogLog,
    /// Shadow comparisons recorded since start, and the sums of their Jaccard and RBO in
    /// millionths; sealed into batches like the exposures.
    overlap: [AtomicU64; 3],
    /// Of them, those already put into a flush batch.
    overlap_sealed: [AtomicU64; 3],
    /// Users served and not collected yet: the request path's side of the queue.
    arrivals: crossbeam_channel::Sender<UserKey>,
    /// The collector's side.
    collected: crossbeam_channel::Receiver<UserKey>,
    /// With Redis: users collected and not yet confirmed by Redis, with the day each was first
    /// served and its pre-period row. Locked by the collector and the flusher, never by a
    /// request.
    pending: Mutex<HashMap<UserKey, (i64, Option<PrePeriod>)>>,
    /// Without Redis: the arm's users and everything counted of them; locked by events and the
    /// collector, never by a recommendation.
    local: Mutex<LocalUsers>,
    /// Why some users of this arm could not be counted, once that happened.
    inexact: OnceLock<&'static str>,
    /// The experiment's covariate table, when it names one: a user's row is looked up when
    /// the user enters the arm (collected, or counted by an event first) and kept with them.
    covariates: arc_swap::ArcSwapOption<CovariateSlot>,
}

impl ArmCounter {
    fn new() -> Self {
        let (arrivals, collected) = crossbeam_channel::bounded(ARRIVALS);
        ArmCounter {
            exposures: AtomicU64::new(0),
            sealed: AtomicU64::new(0),
            items: sketch(),
            overlap: Default::default(),
            overlap_sealed: Default::default(),
            arrivals,
            collected,
            pending: Mutex::default(),
            local: Mutex::default(),
            inexact: OnceLock::new(),
            covariates: arc_swap::ArcSwapOption::empty(),
        }
    }

    /// Looks users entering the arm up in `covariates` from now on (none: no adjustment).
    pub(crate) fn use_covariates(&self, covariates: Option<Arc<CovariateSlot>>) {
        self.covariates.store(covariates);
    }

    /// The pre-period row of `user`, when the experiment has covariates and the table one.
    fn pre_period(&self, user: UserKey) -> Option<PrePeriod> {
        self.covariates.load().as_ref()?.get(user)
    }

    /// This process's counts (no Redis).
    fn totals(&self) -> ArmCounts {
        let local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        ArmCounts {
            exposures: self.exposures.load(Ordering::Relaxed),
            sums: local.sums,
            pre: local.pre,
            outside: local.outside,
            clickers: local.clickers,
            items: estimate(&self.items),
            impressions_by_position: local.by_position.map(|[i, _]| i),
            clicks_by_position: local.by_position.map(|[_, c]| c),
            compared: self.overlap[0].load(Ordering::Relaxed),
            jaccard_micro: self.overlap[1].load(Ordering::Relaxed),
            rbo_micro: self.overlap[2].load(Ordering::Relaxed),
        }
    }

    /// Records the items of a served page, for catalogue coverage.
    pub(crate) fn served_items<'a>(&self, items: impl IntoIterator<Item = &'a str>) {
        for item in items {
            insert(&self.items, item);
        }
    }

    /// Records a shadow comparison and the items the shadow's list would have shown.
    pub(crate) fn compared<'a>(&self, overlap: Overlap, items: impl IntoIterator<Item = &'a str>) {
        let micro = |x: f64| (x.clamp(0.0, 1.0) * MICRO).round() as u64;
        self.overlap[1].fetch_add(micro(overlap.jaccard), Ordering::Relaxed);
        self.overlap[2].fetch_add(micro(overlap.rbo), Ordering::Relaxed);
        // The count last: a flush that sees it sees its sums too, or a later flush does.
        self.overlap[0].fetch_add(1, Ordering::Relaxed);
        self.served_items(items);
    }
}

/// The distinct count of `sketch`, rounded to the nearest integer as Redis's `PFCOUNT` rounds it
/// (`count()` truncates: one item's estimate of 0.99… would read 0 here and 1 from Redis).
fn estimate(sketch: &AtomicHyperLogLog) -> u64 {
    sketch.raw_count().round() as u64
}

/// Redis's dense HyperLogLog string of `sketch`: `HYLL`, encoding 0 (dense), the cached
/// cardinality marked stale (so Redis recomputes it), then each register's 6 bits packed
/// least significant first, as `hyperloglog.c` lays them out.
fn redis_dense(sketch: &AtomicHyperLogLog) -> Vec<u8> {
    let mut out = vec![0u8; DENSE_BYTES];
    out[..4].copy_from_slice(b"HYLL");
    out[DENSE_HEADER - 1] = 0x80;
    let registers = &mut out[DENSE_HEADER..];
    for (i, rank) in sketch.iter().enumerate() {
        if rank == 0 {
            continue;
        }
        let bit = i * 6;
        let wide = u16::from(rank.min(MAX_RANK)) << (bit % 8);
        registers[bit / 8] |= wide as u8;
        if let Some(next) = registers.get_mut(bit / 8 + 1) {
            *next |= (wide >> 8) as u8;
        }
    }
    out
}

/// One replica's batch of one experiment, sent until Redis confirms it.
#[derive(Debug, Clone)]
struct Batch {
    /// This replica's sequence number; Redis skips a batch at or below the last applied.
    seq: u64,
    /// Arms with something new in the batch.
    arms: Vec<Sealed>,
    /// Why users of the experiment are not exact, when an arm could not count some.
    inexact: Option<&'static str>,
}

/// What one arm adds in a batch.
#[derive(Debug, Clone)]
struct Sealed {
    /// The arm's name.
    arm: String,
    /// Its counter, whose sketch travels whole.
    counter: Arc<ArmCounter>,
    /// New exposures.
    exposures: u64,
    /// New comparisons and the sums of their Jaccard and RBO (millionths).
    overlap: [u64; 3],
}

/// Users of one shard and day waiting for Redis: `(arm, counter, user, pre-period row)`.
type ShardUsers = Vec<(String, Arc<ArmCounter>, UserKey, Option<PrePeriod>)>;

/// The counters and where they go.
#[derive(Debug)]
pub(crate) struct Tally {
    /// Where counts are kept; `None` keeps them in this process only.
    redis: Option<RedisClient>,
    /// Names this process's applied-sequence keys: random per start, so a restarted replica
    /// starts a sequence of its own.
    replica: String,
    /// `experiment → arm → counter`, for every arm this process counted or resolved; read-locked
    /// only when a catalog loads, an event names an arm, or a collection or flush starts.
    arms: RwLock<HashMap<String, HashMap<String, Arc<ArmCounter>>>>,
    /// Batches out of the counters and not yet confirmed, by experiment: kept here rather than in
    /// the flushing task, so a flush cut short (shutdown aborts the flusher) loses nothing.
    in_flight: Mutex<HashMap<String, Batch>>,
    /// The next batch's sequence number.
    next_seq: AtomicU64,
    /// Held while a flush runs, so batches go out in sequence order.
    flushing: tokio::sync::Mutex<()>,
    /// The flush script.
    script: ::redis::Script,
    /// The script that counts users per shard.
    users_script: ::redis::Script,
    /// Duels of interleave experiments, by experiment, without Redis.
    duels: Mutex<HashMap<String, Duel>>,
    /// `results_pending_updates`: exposures and new users not yet confirmed by Redis.
    depth: IntGauge,
    /// `results_users_uncounted_total`: users that found no room.
    uncounted: IntCounter,
    /// `results.min_sample_size`: impressions an arm needs before its comparison is read.
    min_sample_size: u64,
    /// `results.shards`: hash tags each experiment's per-user state is spread over.
    shards: u32,
    /// `results.max_buffered_users`.
    max_buffered: u64,
    /// Users held in memory now: pending for Redis, or (without Redis) every user counted.
    buffered: AtomicU64,
}

impl Tally {
    /// Counts into Redis when `redis` is given (its deadline bounds a flush, which carries a
    /// 12 KiB sketch per arm: see [`crate::redis::batch_deadline`]), else in this process.
    pub(crate) fn new(
        redis: Option<RedisClient>,
        depth: IntGauge,
        uncounted: IntCounter,
        settings: &ResultsSettings,
    ) -> Self {
        // Without OS randomness the process id still tells this process from its neighbours.
        let replica = getrandom::u64().unwrap_or_else(|_| u64::from(std::process::id()));
        Tally {
            redis,
            replica: format!("{replica:016x}"),
            arms: RwLock::default(),
            in_flight: Mutex::default(),
            duels: Mutex::default(),
            next_seq: AtomicU64::new(1),
            flushing: tokio::sync::Mutex::new(()),
            script: script(&[FLUSH_SCRIPT]),
            users_script: script(&[GATHERED_COUNTS, USERS_SCRIPT]),
            depth,
            uncounted,
            min_sample_size: settings.min_sample_size,
            shards: settings.shards,
            max_buffered: settings.max_buffered_users,
            buffered: AtomicU64::new(0),
        }
    }

    /// Impressions an arm needs before its comparison is worth reading.
    pub(crate) fn min_sample_size(&self) -> u64 {
        self.min_sample_size
    }

    /// Hash tags an experiment's per-user state is spread over.
    pub(crate) fn shards(&self) -> u32 {
        self.shards
    }

    /// Whether the counts are shared through Redis (else they are this process's only).
    pub(crate) fn is_shared(&self) -> bool {
        self.redis.is_some()
    }

    /// The counter of an arm, created on first use.
    pub(crate) fn arm(&self, experiment: &str, arm: &str) -> Arc<ArmCounter> {
        if let Some(counter) = self
            .arms
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(experiment)
            .and_then(|arms| arms.get(arm))
        {
            return Arc::clone(counter);
        }
        let mut arms = self.arms.write().unwrap_or_else(|p| p.into_inner());
        Arc::clone(
            arms.entry(experiment.to_string())
                .or_default()
                .entry(arm.to_string())
                .or_insert_with(|| Arc::new(ArmCounter::new())),
        )
    }

    /// Records an exposure of `user` on an arm: atomic updates and a queue slot; never a lock
    /// or a wait. A full queue loses the user, and says so in the results.
    pub(crate) fn expose(&self, counter: &ArmCounter, user: &str) {
        counter.exposures.fetch_add(1, Ordering::Relaxed);
        if counter.arrivals.try_send(UserKey::of(user)).is_err() {
            counter.inexact.get_or_init(|| QUEUE_FULL);
            self.uncounted.inc();
        }
        if self.redis.is_some() {
            self.depth.inc();
        }
    }

    /// Makes room for one more user in memory, or records on `counter` why there is none.
    fn admit(&self, counter: &ArmCounter, reason: &'static str) -> bool {
        if self.buffered.fetch_add(1, Ordering::Relaxed) < self.max_buffered {
            return true;
        }
        self.buffered.fetch_sub(1, Ordering::Relaxed);
        counter.inexact.get_or_init(|| reason);
        self.uncounted.inc();
        false
    }

    /// Gives back the room of `users` pending users Redis confirmed (or that wait twice).
    fn release(&self, users: usize) {
        self.buffered.fetch_sub(users as u64, Ordering::Relaxed);
        self.depth.sub(users as i64);
    }

    /// Moves the users each arm's queue holds into its pending users (with Redis) or its
    /// users (without).
    pub(crate) fn collect(&self) {
        let day = crate::calendar::day_of(SystemTime::now());
        let counters: Vec<Arc<ArmCounter>> = {
            let arms = self.arms.read().unwrap_or_else(|p| p.into_inner());
            arms.values().flat_map(|arms| arms.values().cloned()).collect()
        };
        for counter in counters {
            if counter.collected.is_empty() {
                continue;
            }
            if self.redis.is_some() {
                let mut pending = counter.pending.lock().unwrap_or_else(|p| p.into_inner());
                for user in counter.collected.try_iter() {
                    if !pending.contains_key(&user) && self.admit(&counter, BUFFER_FULL) {
                        pending.insert(user, (day, counter.pre_period(user)));
                        self.depth.inc();
                    }
                }
            } else {
                let mut local = counter.local.lock().unwrap_or_else(|p| p.into_inner());
                for user in counter.collected.try_iter() {
                    local.serve(
                        user,
                        day,
                        || self.admit(&counter, MEMORY_FULL),
                        || counter.pre_period(user),
                    );
                }
            }
        }
    }

    /// Counts an accepted event in this process (no Redis configured), `bucket` being its
    /// item's rank bucket and `day` the day it was accepted.
    pub(crate) fn count_locally(&self, counter: &ArmCounter, user: UserKey, count: Count, bucket: usize, day: i64) {
        let mut local = counter.local.lock().unwrap_or_else(|p| p.into_inner());
        local.event(
            user,
            count == Count::Click,
            bucket,
            day,
            || self.admit(counter, MEMORY_FULL),
            || counter.pre_period(user),
        );
    }

    /// The pre-period row an event of `user` on `arm` enters them with, should it be the first
    /// to count them.
    pub(crate) fn pre_period(&self, experiment: &str, arm: &str, user: UserKey) -> Option<PrePeriod> {
        let arms = self.arms.read().unwrap_or_else(|p| p.into_inner());
        arms.get(experiment)?.get(arm)?.pre_period(user)
    }

    /// Counts an accepted click of `user` on an item of `team` on an interleaved page, in this
    /// process (no Redis configured).
    pub(crate) fn duel_click(&self, experiment: &str, user: &str, team: crate::experiment::Team) {
        let mut duels = self.duels.lock().unwrap_or_else(|p| p.into_inner());
        let duel = duels.entry(experiment.to_string()).or_default();
        let clicks = duel.users.entry(user.to_string()).or_default();
        let before = *clicks;
        clicks[usize::from(team & 1)] += 1;
        let after = *clicks;
        duel.totals.moved(before, after);
    }

    /// The duel of an interleave experiment, from Redis (its shards and the totals kept before
    /// them) or this process; `None` when Redis does not answer.
    pub(crate) async fn read_duel(&self, experiment: &str) -> Option<DuelCounts> {
        let Some(redis) = &self.redis else {
            let duels = self.duels.lock().unwrap_or_else(|p| p.into_inner());
            return Some(duels.get(experiment).map(|d| d.totals).unwrap_or_default());
        };
        let reads = self.tags(experiment).map(|tag| async move {
            let [_, totals] = keys::duel(&tag);
            let mut command = ::redis::cmd("HMGET");
            command
                .arg(totals)
                .arg(field::WINS[0])
                .arg(field::WINS[1])
                .arg(field::TIES);
            redis.query::<[Option<u64>; 3]>(&command).await
        });
        let mut duel = DuelCounts::default();
        for reply in futures::future::join_all(reads).await {
            let [a, b, ties] = reply.ok()?.map(|n| n.unwrap_or(0));
            duel.wins[0] += a;
            duel.wins[1] += b;
            duel.ties += ties;
        }
        Some(duel)
    }

    /// The experiment's own tag, then its shards'.
    fn tags<'a>(&self, experiment: &'a str) -> impl Iterator<Item = String> + 'a {
        std::iter::once(experiment.to_string()).chain((0..self.shards).map(move |k| shard_tag(experiment, k)))
    }

    /// Seals what each experiment counted since its last batch, unless a batch of it still
    /// waits for Redis (batches go out one at a time per experiment, in sequence order).
    fn seal(&self) {
        let arms = self.arms.read().unwrap_or_else(|p| p.into_inner());
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        for (experiment, counters) in arms.iter() {
            if in_flight.contains_key(experiment) {
                continue;
            }
            let batch: Vec<Sealed> = counters
                .iter()
                .filter_map(|(arm, counter)| {
                    let recorded = counter.exposures.load(Ordering::Relaxed);
                    let exposures = recorded - counter.sealed.swap(recorded, Ordering::Relaxed);
                    // The count first, as `compared` adds it last: sums sealed with it are whole.
                    let overlap = [0, 1, 2].map(|i| {
                        let recorded = counter.overlap[i].load(Ordering::Acquire);
                        recorded - counter.overlap_sealed[i].swap(recorded, Ordering::Relaxed)
                    });
                    (exposures > 0 || overlap[0] > 0).then(|| Sealed {
                        arm: arm.clone(),
                        counter: Arc::clone(counter),
                        exposures,
                        overlap,
                    })
                })
                .collect();
            if !batch.is_empty() {
                let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
                let inexact = counters.values().find_map(|c| c.inexact.get().copied());
                in_flight.insert(
                    experiment.clone(),
                    Batch {
                        seq,
                        arms: batch,
                        inexact,
                    },
                );
            }
        }
    }

    /// Takes every arm's pending users, grouped by experiment, shard and day.
    fn take_pending(&self) -> BTreeMap<(String, u32, i64), ShardUsers> {
        let arms = self.arms.read().unwrap_or_else(|p| p.into_inner());
        let mut groups: BTreeMap<(String, u32, i64), ShardUsers> = BTreeMap::new();
        for (experiment, counters) in arms.iter() {
            for (arm, counter) in counters {
                let pending = std::mem::take(&mut *counter.pending.lock().unwrap_or_else(|p| p.into_inner()));
                for (user, (day, pre)) in pending {
                    groups
                        .entry((experiment.clone(), user.shard(self.shards), day))
                        .or_default()
                        .push((arm.clone(), Arc::clone(counter), user, pre));
                }
            }
        }
        groups
    }

    /// Sends every batch and pending user waiting for Redis (collecting and sealing new ones
    /// first); what Redis does not confirm stays for the next flush, unchanged. Returns whether
    /// nothing is left waiting. With `drain_until` (the shutdown drain), Redis is tried even in
    /// the breaker's backoff window, and no script waits past that instant.
    pub(crate) async fn flush(&self, drain_until: Option<tokio::time::Instant>) -> bool {
        let Some(redis) = &self.redis else {
            return true;
        };
        let _flushing = self.flushing.lock().await;
        self.collect();
        self.seal();
        let waiting: Vec<(String, Batch)> = self
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(experiment, batch)| (experiment.clone(), batch.clone()))
            .collect();
        let users = self.take_pending();
        if waiting.is_empty() && users.is_empty() && drain_until.is_none() {
            // Nothing to send: a PING keeps `redis_up` true to this Redis without traffic.
            let _ = redis.query::<String>(&::redis::cmd("PING")).await;
            return true;
        }
        let ask = async |invocation: &::redis::ScriptInvocation<'_>| match drain_until {
            Some(until) => {
                let left = until.saturating_duration_since(tokio::time::Instant::now());
                redis.query_now::<u64>(invocation, left.min(redis.timeout())).await
            }
            None => redis.query::<u64>(invocation).await,
        };
        let mut done = true;
        for (experiment, Batch { seq, arms, inexact }) in waiting {
            let mut invocation = self.script.prepare_invoke();
            invocation
                .key(keys::applied(&experiment, &self.replica))
                .key(keys::scratch(&experiment, &self.replica))
                .key(keys::inexact(&experiment))
                .arg(seq)
                .arg(APPLIED_TTL.as_secs())
                .arg(inexact.unwrap_or_default());
            for sealed in &arms {
                let key = keys::results(&experiment, &sealed.arm);
                invocation
                    .key(&key)
                    .key(keys::items(&key))
                    .arg(sealed.exposures)
                    .arg(redis_dense(&sealed.counter.items));
                for n in sealed.overlap {
                    invocation.arg(n);
                }
            }
            if ask(&invocation).await.is_ok() {
                self.in_flight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&experiment);
                self.depth.sub(arms.iter().map(|sealed| sealed.exposures as i64).sum());
            } else {
                done = false;
            }
        }
        let chunks = users.into_iter().flat_map(|(group, members)| {
            let mut members = members.into_iter().peekable();
            std::iter::from_fn(move || {
                members.peek()?;
                Some((
                    group.clone(),
                    members.by_ref().take(USERS_PER_SCRIPT).collect::<ShardUsers>(),
                ))
            })
        });
        for ((experiment, shard, day), members) in chunks {
            let tag = shard_tag(&experiment, shard);
            let mut invocation = self.users_script.prepare_invoke();
            invocation
                .arg(crate::calendar::date(day))
                .arg(crate::calendar::date(day - MAX_DAYS));
            let mut keys: HashMap<String, usize> = HashMap::new();
            for (arm, _, user, pre) in &members {
                let counters = key_index(&mut invocation, &mut keys, keys::results(&tag, arm));
                key_index(&mut invocation, &mut keys, keys::days(&keys::results(&tag, arm)));
                let bucket = key_index(&mut invocation, &mut keys, keys::user_bucket(&tag, arm, user.bucket()));
                invocation
                    .arg(counters)
                    .arg(bucket)
                    .arg(&user.field()[..])
                    .arg(pre_state(*pre));
            }
            if ask(&invocation).await.is_ok() {
                self.release(members.len());
            } else {
                done = false;
                for (_, counter, user, pre) in members {
                    let mut pending = counter.pending.lock().unwrap_or_else(|p| p.into_inner());
                    match pending.entry(user) {
                        // Collected again meanwhile, and made room for then: one place is enough,
                        // with the first day and the row looked up first.
                        std::collections::hash_map::Entry::Occupied(mut first) => {
                            let (later, _) = *first.get();
                            *first.get_mut() = (later.min(day), pre);
                            self.release(1);
                        }
                        std::collections::hash_map::Entry::Vacant(vacant) => {
                            vacant.insert((day, pre));
                        }
                    }
                }
            }
        }
        done
    }

    /// Flushes until nothing waits or `deadline` passes (a graceful shutdown); each try goes
    /// past the breaker, and a failed one is retried.
    pub(crate) async fn drain(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            if self.flush(Some(deadline)).await && self.depth.get() == 0 {
                return true;
            }
            if tokio::time::Instant::now() + Duration::from_millis(100) > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Collects the users' queues every 100 ms and, with Redis, flushes every second.
    pub(crate) fn spawn_flushing(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let tally = Arc::downgrade(self);
        let per_flush = (FLUSH_EVERY.as_millis() / COLLECT_EVERY.as_millis()) as u64;
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(COLLECT_EVERY);
            for tick in 0u64.. {
                ticker.tick().await;
                let Some(strong) = tally.upgrade() else {
                    return;
                };
                match strong.redis.is_some() && tick % per_flush == 0 {
                    true => {
                        strong.flush(None).await;
                    }
                    false => strong.collect(),
                }
            }
        })
    }

    /// The totals of `arms` of `experiment`, from Redis (every replica's flushed counts, the
    /// shards added) or from this process; `None` when Redis does not answer.
    pub(crate) async fn read(&self, experiment: &str, arms: &[&str]) -> Option<Counts> {
        let Some(redis) = &self.redis else {
            self.collect();
            let counters: Vec<Arc<ArmCounter>> = arms.iter().map(|arm| self.arm(experiment, arm)).collect();
            return Some(Counts {
                arms: counters.iter().map(|c| c.totals()).collect(),
                inexact: counters.iter().find_map(|c| c.inexact.get()).map(|r| r.to_string()),
            });
        };
        let reads = self.tags(experiment).enumerate().map(|(k, tag)| {
            let mut pipe = ::redis::pipe();
            for arm in arms {
                let key = keys::results(&tag, arm);
                let hmget = pipe.cmd("HMGET").arg(&key);
                for name in counter_fields(k) {
                    hmget.arg(name);
                }
                for at in [field::IMPRESSIONS_AT, field::CLICKS_AT] {
                    for bucket in POSITION_BUCKETS {
                        hmget.arg(format!("{at}{bucket}"));
                    }
                }
                if k == 0 {
                    pipe.cmd("PFCOUNT").arg(keys::items(&key));
                }
            }
            if k == 0 {
                pipe.cmd("GET").arg(keys::inexact(experiment));
            }
            async move { redis.query::<Vec<::redis::Value>>(&pipe).await }
        });
        let replies = futures::future::join_all(reads).await;
        let mut counts = Counts {
            arms: vec![ArmCounts::default(); arms.len()],
            inexact: None,
        };
        for (k, reply) in replies.into_iter().enumerate() {
            let mut reply = reply.ok()?.into_iter();
            for arm in &mut counts.arms {
                let fields: Vec<Option<u64>> = ::redis::from_redis_value(reply.next()?).ok()?;
                let field = |i: usize| fields.get(i).copied().flatten().unwrap_or(0);
                let n = counter_fields(k).len();
                let buckets = POSITION_BUCKETS.len();
                for b in 0..buckets {
                    arm.impressions_by_position[b] += field(n + b);
                    arm.clicks_by_position[b] += field(n + buckets + b);
                }
                if k == 0 {
                    arm.exposures = field(0);
                    arm.compared = field(1);
                    arm.jaccard_micro = field(2);
                    arm.rbo_micro = field(3);
                    arm.outside = [field(4), field(5)];
                    arm.items = ::redis::from_redis_value(reply.next()?).ok()?;
                } else {
                    for (i, (_, slot)) in SUM_SLOTS.iter().enumerate() {
                        *slot(&mut arm.sums, &mut arm.pre) += field(i);
                    }
                    arm.clickers += field(SUM_SLOTS.len());
                }
            }
            if k == 0 {
                counts.inexact = ::redis::from_redis_value(reply.next()?).ok()?;
            }
        }
        Some(counts)
    }

    /// What each day added to `arms` of `experiment`, from Redis (the shards added, and the
    /// days kept before them as counted outside the sums) or this process; `None` when Redis
    /// does not answer.
    pub(crate) async fn read_days(&self, experiment: &str, arms: &[&str]) -> Option<Vec<DayCounts>> {
        let Some(redis) = &self.redis else {
            self.collect();
            return Some(
                arms.iter()
                    .map(|arm| {
                        let counter = self.arm(experiment, arm);
                        let local = counter.local.lock().unwrap_or_else(|p| p.into_inner());
                        local.days.clone()
                    })
                    .collect(),
            );
        };
        let reads = self.tags(experiment).map(|tag| {
            let mut pipe = ::redis::pipe();
            for arm in arms {
                pipe.cmd("HGETALL").arg(keys::days(&keys::results(&tag, arm)));
            }
            async move { redis.query::<Vec<HashMap<String, u64>>>(&pipe).await }
        });
        let mut days = vec![DayCounts::new(); arms.len()];
        for (k, reply) in futures::future::join_all(reads).await.into_iter().enumerate() {
            for (arm, fields) in days.iter_mut().zip(reply.ok()?) {
                for (field, n) in fields {
                    // Fields are `YYYY-MM-DD:{short}`; anything else is not ours.
                    let Some((date, kind)) = field.split_once(':') else {
                        continue;
                    };
                    let Some(day) = crate::calendar::parse_date(date) else {
                        continue;
                    };
                    let entry: &mut Day = arm.entry(day).or_default();
                    let slot = if k == 0 {
                        let Some(j) = OUTSIDE.iter().position(|sum| sum.day == kind) else {
                            continue;
                        };
                        &mut entry.outside[j]
                    } else {
                        let Some((_, slot)) = SUM_SLOTS.iter().find(|(sum, _)| sum.day == kind) else {
                            continue;
                        };
                        slot(&mut entry.sums, &mut entry.pre)
                    };
                    *slot += n;
                }
            }
        }
        for arm in &mut days {
            while arm.len() > MAX_DAYS as usize {
                arm.pop_first();
            }
        }
        Some(days)
    }
}

/// The index of `key` among an invocation's keys, adding it on first use.
pub(crate) fn key_index(
    invocation: &mut ::redis::ScriptInvocation<'_>,
    keys: &mut HashMap<String, usize>,
    key: String,
) -> usize {
    let next = keys.len() + 1;
    *keys.entry(key).or_insert_with_key(|key| {
        invocation.key(key);
        next
    })
}

/// What an arm's hash under the experiment's own tag counted before the shards existed, read as
/// outside the per-user sums: impressions, then clicks, as [`ArmCounts::outside`] holds them.
const OUTSIDE: [field::Sum; 2] = [field::IMPRESSIONS, field::CLICKS];

/// The fields of an arm's hash under the experiment's own tag that [`Tally::read`] reads first:
/// what the flush counts, then [`OUTSIDE`]; the rank buckets follow.
const TAG_FIELDS: [&str; 6] = [
    field::EXPOSURES,
    field::COMPARED,
    field::JACCARD_MICRO,
    field::RBO_MICRO,
    OUTSIDE[0].total,
    OUTSIDE[1].total,
];

/// Where a sum of [`keys::field::SUMS`] is read into, of an arm's totals or a day's.
type Slot = for<'a> fn(&'a mut UserSums, &'a mut PreSums) -> &'a mut u64;

/// Every sum a shard keeps, with where reading adds it (a test holds it to
/// [`keys::field::SUMS`]).
const SUM_SLOTS: [(field::Sum, Slot); 16] = [
    (field::USERS, |sums, _| &mut sums.users),
    (field::IMPRESSIONS, |sums, _| &mut sums.impressions),
    (field::CLICKS, |sums, _| &mut sums.clicks),
    (field::IMPRESSIONS_SQ, |sums, _| &mut sums.impressions_sq),
    (field::CLICKS_SQ, |sums, _| &mut sums.clicks_sq),
    (field::CROSS, |sums, _| &mut sums.cross),
    (field::PRE_USERS, |_, pre| &mut pre.covered),
    (field::PRE_CLICKS, |_, pre| &mut pre.clicks),
    (field::PRE_IMPRESSIONS, |_, pre| &mut pre.impressions),
    (field::PRE_CLICKS_SQ, |_, pre| &mut pre.clicks_sq),
    (field::PRE_IMPRESSIONS_SQ, |_, pre| &mut pre.impressions_sq),
    (field::PRE_CROSS, |_, pre| &mut pre.cross),
    (field::CLICKS_BY_CLICKS, |_, pre| &mut pre.clicks_by_clicks),
    (field::CLICKS_BY_IMPRESSIONS, |_, pre| &mut pre.clicks_by_impressions),
    (field::IMPRESSIONS_BY_CLICKS, |_, pre| &mut pre.impressions_by_clicks),
    (field::IMPRESSIONS_BY_IMPRESSIONS, |_, pre| {
        &mut pre.impressions_by_impressions
    }),
];

/// The fields [`Tally::read`] reads first from an arm's hash under the `k`th tag (0: the
/// experiment's own, then its shards'): [`TAG_FIELDS`], or every sum and the clicking users.
fn counter_fields(k: usize) -> Vec<&'static str> {
    match k {
        0 => TAG_FIELDS.to_vec(),
        _ => SUM_SLOTS
            .iter()
            .map(|(sum, _)| sum.total)
            .chain([field::CLICKERS])
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::feedback::events::CLAIM_SCRIPT;

    /// Every script's source but the prelude.
    const SCRIPTS: [&str; 4] = [GATHERED_COUNTS, FLUSH_SCRIPT, USERS_SCRIPT, CLAIM_SCRIPT];

    /// The prelude's table: each name and the Lua of its value.
    fn prelude() -> BTreeMap<String, String> {
        let lua = keys::field::lua();
        let table = lua
            .strip_prefix("local F = {\n")
            .and_then(|rest| rest.strip_suffix("}\n"))
            .unwrap_or_else(|| panic!("one table F: {lua}"));
        table
            .lines()
            .map(|line| {
                let entry = line.trim().strip_suffix(',').unwrap_or_else(|| panic!("{line}"));
                let (name, value) = entry.split_once(" = ").unwrap_or_else(|| panic!("{line}"));
                (name.to_string(), value.to_string())
            })
            .collect()
    }

    /// The names a script reads as `F.NAME` (comments left out), in order, repeats kept, each
    /// with what precedes it on its line.
    fn reads(script: &str) -> Vec<(&str, &str)> {
        let name_char = |c: char| c.is_ascii_alphanumeric() || c == '_';
        let mut reads = Vec::new();
        for line in script.lines() {
            let code = line.split("--").next().unwrap_or_default();
            for (at, _) in code.match_indices("F.") {
                if code[..at].ends_with(name_char) {
                    continue;
                }
                let rest = &code[at + 2..];
                let name = &rest[..rest.find(|c: char| !name_char(c)).unwrap_or(rest.len())];
                reads.push((name, code[..at].trim_start()));
            }
        }
        reads
    }

    /// Lua reads a name the prelude lacks as nil, which fails only when the script runs (and a
    /// `count` of a name that is not a sum fails only at its `.total`): every name the scripts
    /// read is one the prelude defines, each `count` is given a sum, each `add` a field, and the
    /// prelude defines nothing they do not read.
    #[test]
    fn the_scripts_read_every_name_of_the_prelude_and_no_other() {
        let defined = prelude();
        let reads: Vec<(&str, &str)> = SCRIPTS.iter().flat_map(|script| reads(script)).collect();
        assert!(defined.len() > field::SUMS.len(), "every sum and more: {defined:?}");
        for (name, before) in &reads {
            let value = defined
                .get(*name)
                .unwrap_or_else(|| panic!("F.{name} is not in the prelude: {defined:?}"));
            if before.ends_with("count(counters, days, ") {
                assert!(value.starts_with("{total = "), "count(…, F.{name}) of {value}");
            }
            if before.ends_with("add(counters, ") {
                assert!(value.starts_with('\''), "add(…, F.{name}) of {value}");
            }
        }
        let read: BTreeSet<&str> = reads.iter().map(|(name, _)| *name).collect();
        let names: BTreeSet<&str> = defined.keys().map(String::as_str).collect();
        assert_eq!(read, names, "the prelude's names, as the scripts read them");
    }

    /// A sum missing from [`keys::field::SUMS`] would never have its old days dropped nor be
    /// read back; one read into the wrong place, or two into one, would report another sum.
    #[test]
    fn every_sum_is_dropped_and_read_into_a_place_of_its_own() {
        let defined = prelude();
        for (name, value) in &defined {
            if value.starts_with("{total = ") {
                assert!(defined["SUMS"].contains(value.as_str()), "{name} is not in SUMS");
            }
        }
        let sums: Vec<field::Sum> = SUM_SLOTS.iter().map(|(sum, _)| *sum).collect();
        assert_eq!(sums, field::SUMS, "every sum read, in SUMS's order");
        let (mut user, mut pre) = (UserSums::default(), PreSums::default());
        for (n, (_, slot)) in (1..).zip(SUM_SLOTS) {
            *slot(&mut user, &mut pre) = n;
        }
        let mut placed = [
            user.users,
            user.clicks,
            user.impressions,
            user.clicks_sq,
            user.impressions_sq,
            user.cross,
            pre.covered,
            pre.clicks,
            pre.impressions,
            pre.clicks_sq,
            pre.impressions_sq,
            pre.cross,
            pre.clicks_by_clicks,
            pre.clicks_by_impressions,
            pre.impressions_by_clicks,
            pre.impressions_by_impressions,
        ];
        placed.sort_unstable();
        assert_eq!(
            placed,
            std::array::from_fn(|i| i as u64 + 1),
            "each sum in a place of its own"
        );
    }

    /// Two fields of one name in one hash would add their counts together; and a name is put in
    /// the scripts between quotes, so it holds none.
    #[test]
    fn no_two_fields_of_a_hash_share_a_name() {
        let ranks: Vec<String> = [field::IMPRESSIONS_AT, field::CLICKS_AT]
            .iter()
            .flat_map(|at| POSITION_BUCKETS.map(|bucket| format!("{at}{bucket}")))
            .collect();
        let owned = |names: &[&str]| names.iter().map(|name| name.to_string()).collect::<Vec<String>>();
        let hashes = [
            (
                "an arm's counters under the experiment's tag",
                [owned(&TAG_FIELDS), ranks.clone()].concat(),
            ),
            (
                "an arm's counters under a shard's tag",
                [owned(&counter_fields(1)), ranks].concat(),
            ),
            ("an arm's days", owned(&field::SUMS.map(|sum| sum.day))),
            ("a duel's totals", owned(&[field::WINS[0], field::WINS[1], field::TIES])),
        ];
        for (hash, names) in &hashes {
            let distinct: BTreeSet<&String> = names.iter().collect();
            assert_eq!(distinct.len(), names.len(), "{hash}: {names:?}");
            for name in names {
                let plain = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "_@-+".contains(c);
                assert!(!name.is_empty() && name.chars().all(plain), "{hash}: {name:?}");
            }
        }
        assert_eq!(counter_fields(1).len(), field::SUMS.len() + 1);
        for sum in OUTSIDE {
            assert!(
                field::SUMS.contains(&sum),
                "the days before the shards kept {sum:?} as a shard does"
            );
        }
    }

    fn tally(max_buffered_users: u64) -> Tally {
        let settings = ResultsSettings {
            max_buffered_users,
            ..ResultsSettings::default()
        };
        Tally::new(
            None,
            IntGauge::new("depth", "test").expect("gauge"),
            IntCounter::new("uncounted", "test").expect("counter"),
            &settings,
        )
    }

    /// Users are exact without Redis: each distinct user once, whatever the repeats.
    #[tokio::test]
    async fn users_are_counted_once_each() {
        let tally = tally(1_000);
        let counter = tally.arm("e", "a");
        for round in 0..3 {
            for user in 0..(100 + round) {
                tally.expose(&counter, &user.to_string());
            }
        }
        let counts = tally.read("e", &["a"]).await.expect("local counts");
        assert_eq!(counts.arms[0].sums.users, 102);
        assert_eq!(counts.arms[0].exposures, 303);
        assert_eq!(counts.inexact, None);
    }

    /// Past the bound, users are not counted and the counts say so.
    #[tokio::test]
    async fn users_past_the_bound_make_the_counts_inexact() {
        let tally = tally(10);
        let counter = tally.arm("e", "a");
        for user in 0..12 {
            tally.expose(&counter, &user.to_string());
        }
        let counts = tally.read("e", &["a"]).await.expect("local counts");
        assert_eq!(counts.arms[0].sums.users, 10);
        assert_eq!(counts.inexact.as_deref(), Some(MEMORY_FULL));
        assert_eq!(tally.uncounted.get(), 2);
    }

    /// A user moves between outcomes as clicks come in, and is counted in one at a time.
    #[test]
    fn duel_totals_hold_each_clicking_user_once() {
        let tally = tally(1_000);
        let total = |tally: &Tally| tally.duels.lock().expect("lock")["e"].totals;
        tally.duel_click("e", "u", 0);
        assert_eq!(total(&tally), DuelCounts { wins: [1, 0], ties: 0 });
        tally.duel_click("e", "u", 1);
        assert_eq!(total(&tally), DuelCounts { wins: [0, 0], ties: 1 });
        tally.duel_click("e", "u", 1);
        tally.duel_click("e", "v", 1);
        assert_eq!(total(&tally), DuelCounts { wins: [0, 2], ties: 0 });
    }

    /// Without Redis, days are counted beside the totals and the oldest go past [`MAX_DAYS`].
    #[test]
    fn days_kept_here_are_bounded() {
        let tally = tally(1_000);
        let counter = tally.arm("e", "a");
        let first = 20_000;
        for day in first..first + MAX_DAYS + 2 {
            tally.count_locally(&counter, UserKey::of("u"), Count::Impression, 0, day);
        }
        tally.count_locally(&counter, UserKey::of("u"), Count::Click, 0, first + MAX_DAYS + 1);
        let local = counter.local.lock().expect("lock");
        assert_eq!(local.days.len(), MAX_DAYS as usize);
        assert_eq!(local.days.keys().next(), Some(&(first + 2)), "the two oldest dropped");
        let last = local.days[&(first + MAX_DAYS + 1)].sums;
        assert_eq!([last.impressions, last.clicks], [1, 1]);
        assert_eq!(local.sums.impressions, (MAX_DAYS + 2) as u64, "totals keep everything");
    }

    #[test]
    fn inserts_leave_the_registers_the_crate_would() {
        let (ours, theirs) = (sketch(), sketch());
        for value in (0..20_000).map(|i| format!("item-{}", i % 7_000)) {
            insert(&ours, &value);
            theirs.insert(value.as_str());
        }
        assert!(ours.iter().eq(theirs.iter()), "the same registers");
        assert_eq!(ours.raw_count(), theirs.raw_count());
        assert!(
            estimate(&ours).abs_diff(7_000) < 200,
            "7,000 distinct: {}",
            estimate(&ours)
        );
    }

    #[test]
    fn dense_registers_are_packed_as_redis_lays_them_out() {
        let hll = sketch();
        for user in 0..2000 {
            hll.insert(&user.to_string());
        }
        let dense = redis_dense(&hll);
        assert_eq!(dense.len(), 12304, "HLL_DENSE_SIZE at precision 14");
        assert_eq!(&dense[..4], b"HYLL");
        assert_eq!(dense[4], 0, "dense encoding");
        // Read each register back the way hyperloglog.c's HLL_DENSE_GET_REGISTER does.
        let registers = &dense[DENSE_HEADER..];
        for (i, rank) in hll.iter().enumerate() {
            let byte = i * 6 / 8;
            let shift = (i * 6) % 8;
            let b0 = u16::from(registers[byte]);
            let b1 = u16::from(registers.get(byte + 1).copied().unwrap_or(0));
            let read = ((b0 >> shift) | (b1 << (8 - shift))) & 63;
            assert_eq!(read, u16::from(rank.min(MAX_RANK)), "register {i}");
        }
    }
}
