//! Durable per-arm counts for the analysts' results, shared by every replica through Redis:
//! exposures, distinct users, impressions, clicks and distinct clicking users, and the list
//! metrics of [`crate::feedback::lists`]: distinct items served, impressions and clicks per
//! rank bucket, and a shadow arm's overlap with the control.
//!
//! **Exposures** are counted on the request path without a lock, an allocation or a Redis
//! round trip: each arm has an [`ArmCounter`] resolved when the catalog loads, holding an atomic
//! count and a lock-free HyperLogLog of its users (precision 14, Redis's). A background task
//! flushes them every second as one Lua script per experiment that is applied at most once:
//! each batch carries this replica's sequence number, and the script adds its counts only if
//! the replica's last applied number (kept beside the counts) is lower. A batch whose reply
//! was lost (a timeout after Redis ran it) is sent again unchanged and skipped the second
//! time, so a slow Redis cannot inflate the counts. Users travel as the sketch's registers in
//! Redis's own dense format, merged with `PFMERGE`: a merge taken twice changes nothing.
//!
//! Memory does not grow with an outage: a counter and a 16 KiB sketch per arm hold any number
//! of exposures and users until Redis is back, and a graceful shutdown drains them (past the
//! breaker, which may still be waiting out a backoff when Redis has just returned).
//!
//! **Impressions and clicks** are counted by [`crate::feedback::events`] in the same script
//! that claims the event, so an event is answered accepted only once Redis has counted it.
//!
//! Without Redis configured the same counters are the results of this process, and say so.
//!
//! **Duels** are what an interleave experiment compares: per user, the clicks on each team's
//! items, and the totals of users each team wins and of ties (users with no click are in
//! neither). The event script that counts a click moves its user between outcomes in the same
//! step, so the totals never need a scan of the users.
//!
//! **Days**: impressions and clicks are also counted per UTC day (the day the event was
//! accepted), in the same step as the totals, so the days of an arm always sum to what it
//! counted since they were kept; at most [`MAX_DAYS`] are kept, the oldest dropped first. They
//! give the results over time (`?by=day`); exposures are not kept per day, since the daily
//! statistics are of CTR.
//!
//! Keys, all under the `{experiment}` hash tag so one experiment's keys share a cluster slot:
//! `recgw:results:{e}:{arm}` (a hash of counters), `…:users` / `…:clickers` (HyperLogLogs),
//! `…:days` (a hash of `YYYY-MM-DD:i` and `YYYY-MM-DD:c` → impressions and clicks that day),
//! `recgw:results:{e}:applied:{replica}` (the last sequence applied from one replica process,
//! expiring 7 days after its last flush), `recgw:results:{e}:duel` (`wins0`, `wins1`, `ties`)
//! and `recgw:results:{e}:duel:users` (`{user}:{team}` → clicks, about 100 bytes a clicking
//! user).

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use hyperloglockless::AtomicHyperLogLog;
use prometheus::IntGauge;

use crate::feedback::lists::{Overlap, POSITION_BUCKETS};
use crate::redis::RedisClient;

/// A flush starts this often.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// How long Redis remembers a replica's last applied batch: longer than any outage a batch
/// waits through, short enough that replicas long gone leave no keys behind.
const APPLIED_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// HyperLogLog precision: 2^14 registers, Redis's, so a sketch merges into its HyperLogLogs.
const PRECISION: u8 = 14;

/// The sketch's hash key. Fixed, so every replica puts a user in the same register and the
/// merged sketch counts a user seen by two replicas once.
const SKETCH_SEED: u128 = 0x7265_6367_772d_7573_6572_732d_686c_6c31;

/// Redis's dense HyperLogLog: a 16-byte header, then 16384 registers of 6 bits.
const DENSE_HEADER: usize = 16;
const DENSE_BYTES: usize = DENSE_HEADER + (1 << PRECISION) * 6 / 8;
/// The largest rank Redis's estimator reads at precision 14 (64 - 14 + 1).
const MAX_RANK: u8 = 51;

/// Applies one replica's batch to an experiment's counts at most once. KEYS[1] is the replica's
/// applied-sequence key, KEYS[2] a scratch key for a sketch, then per arm its counters hash,
/// users HyperLogLog and items HyperLogLog; ARGV: the batch's sequence, the applied key's TTL,
/// then per arm its exposures, users sketch, items sketch, comparisons, and the sums of their
/// Jaccard and RBO in millionths (integers, so a sum is exact whatever the order of adds).
const FLUSH_SCRIPT: &str = r"
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) <= last then return 0 end
local function merge(key, sketch)
  if #sketch > 0 then
    redis.call('SET', KEYS[2], sketch)
    redis.call('PFMERGE', key, KEYS[2])
    redis.call('DEL', KEYS[2])
  end
end
for arm = 0, (#KEYS - 2) / 3 - 1 do
  local k = 3 + arm * 3
  local a = 3 + arm * 6
  local fields = {'exposures', nil, nil, 'compared', 'jaccard_micro', 'rbo_micro'}
  for _, f in ipairs({1, 4, 5, 6}) do
    local n = tonumber(ARGV[a + f - 1])
    if n > 0 then redis.call('HINCRBY', KEYS[k], fields[f], n) end
  end
  merge(KEYS[k + 1], ARGV[a + 1])
  merge(KEYS[k + 2], ARGV[a + 2])
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
";

/// Days of counts kept per arm: more than a year, enough for any experiment's duration.
pub(crate) const MAX_DAYS: i64 = 400;

/// Impressions and clicks per day (days since 1970-01-01, UTC) of one arm.
pub(crate) type DayCounts = BTreeMap<i64, [u64; 2]>;

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
    /// Distinct users served (HyperLogLog, ±0.81%).
    pub(crate) users: u64,
    /// Impressions.
    pub(crate) impressions: u64,
    /// Clicks.
    pub(crate) clicks: u64,
    /// Distinct users who clicked (HyperLogLog, ±0.81%).
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

/// `recgw:results:{experiment}:{arm}`, the counters hash of an arm; its HyperLogLogs add
/// `:users` and `:clickers`.
pub(crate) fn arm_key(experiment: &str, arm: &str) -> String {
    format!("recgw:results:{{{experiment}}}:{arm}")
}

/// The duel hashes of an interleave experiment: clicks per user and team, then the totals.
pub(crate) fn duel_keys(experiment: &str) -> [String; 2] {
    let totals = format!("recgw:results:{{{experiment}}}:duel");
    [format!("{totals}:users"), totals]
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
/// (an item or user seen before: nearly every request) leaves the line shared. The register and
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
/// touches atomics.
#[derive(Debug)]
pub(crate) struct ArmCounter {
    /// Exposures recorded since start.
    exposures: AtomicU64,
    /// Of them, those already put into a flush batch (written by the flusher only).
    sealed: AtomicU64,
    /// Users exposed since start; merged into Redis whole, which is idempotent.
    users: AtomicHyperLogLog,
    /// Items served since start (catalogue coverage), merged whole like `users`.
    items: AtomicHyperLogLog,
    /// Shadow comparisons recorded since start, and the sums of their Jaccard and RBO in
    /// millionths; sealed into batches like the exposures.
    overlap: [AtomicU64; 3],
    /// Of them, those already put into a flush batch.
    overlap_sealed: [AtomicU64; 3],
    /// Impressions and clicks per rank bucket, kept here only without Redis.
    impressions_by_position: [AtomicU64; POSITION_BUCKETS.len()],
    clicks_by_position: [AtomicU64; POSITION_BUCKETS.len()],
    /// Impressions and clicks, clicking users: kept here only without Redis (with Redis the
    /// event script counts them there).
    impressions: AtomicU64,
    clicks: AtomicU64,
    clickers: AtomicHyperLogLog,
    /// Impressions and clicks per day, kept here only without Redis; locked by events only,
    /// never by a recommendation.
    days: Mutex<DayCounts>,
}

impl ArmCounter {
    fn new() -> Self {
        ArmCounter {
            exposures: AtomicU64::new(0),
            sealed: AtomicU64::new(0),
            users: sketch(),
            items: sketch(),
            overlap: Default::default(),
            overlap_sealed: Default::default(),
            impressions_by_position: Default::default(),
            clicks_by_position: Default::default(),
            impressions: AtomicU64::new(0),
            clicks: AtomicU64::new(0),
            clickers: sketch(),
            days: Mutex::default(),
        }
    }

    fn totals(&self) -> ArmCounts {
        ArmCounts {
            exposures: self.exposures.load(Ordering::Relaxed),
            users: estimate(&self.users),
            impressions: self.impressions.load(Ordering::Relaxed),
            clicks: self.clicks.load(Ordering::Relaxed),
            clickers: estimate(&self.clickers),
            items: estimate(&self.items),
            impressions_by_position: self
                .impressions_by_position
                .each_ref()
                .map(|n| n.load(Ordering::Relaxed)),
            clicks_by_position: self.clicks_by_position.each_ref().map(|n| n.load(Ordering::Relaxed)),
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
/// (`count()` truncates: one user's estimate of 0.99… would read 0 here and 1 from Redis).
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
}

/// What one arm adds in a batch.
#[derive(Debug, Clone)]
struct Sealed {
    /// The arm's name.
    arm: String,
    /// Its counter, whose sketches travel whole.
    counter: Arc<ArmCounter>,
    /// New exposures.
    exposures: u64,
    /// New comparisons and the sums of their Jaccard and RBO (millionths).
    overlap: [u64; 3],
}

/// The counters and where they go.
#[derive(Debug)]
pub(crate) struct Tally {
    /// Where counts are kept; `None` keeps them in this process only.
    redis: Option<RedisClient>,
    /// Names this process's applied-sequence keys: random per start, so a restarted replica
    /// starts a sequence of its own.
    replica: String,
    /// `experiment → arm → counter`, for every arm this process counted or resolved; read-locked
    /// only when a catalog loads, an event names an arm, or a flush starts.
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
    /// Duels of interleave experiments, by experiment, without Redis.
    duels: Mutex<HashMap<String, Duel>>,
    /// `results_pending_updates`: exposures not yet confirmed by Redis.
    depth: IntGauge,
    /// `results.min_sample_size`: impressions an arm needs before its comparison is read.
    min_sample_size: u64,
}

impl Tally {
    /// Counts into Redis when `redis` is given (its deadline bounds a flush, which carries a
    /// 12 KiB sketch per arm: see [`crate::redis::batch_deadline`]), else in this process.
    pub(crate) fn new(redis: Option<RedisClient>, depth: IntGauge, min_sample_size: u64) -> Self {
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
            script: ::redis::Script::new(FLUSH_SCRIPT),
            depth,
            min_sample_size,
        }
    }

    /// Impressions an arm needs before its comparison is worth reading.
    pub(crate) fn min_sample_size(&self) -> u64 {
        self.min_sample_size
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

    /// Records an exposure of `user` on an arm: one atomic update, a second only when the user
    /// raises a register of the sketch; never a wait.
    pub(crate) fn expose(&self, counter: &ArmCounter, user: &str) {
        counter.exposures.fetch_add(1, Ordering::Relaxed);
        insert(&counter.users, user);
        if self.redis.is_some() {
            self.depth.inc();
        }
    }

    /// Counts an accepted event in this process (no Redis configured), `bucket` being its
    /// item's rank bucket and `day` the day it was accepted.
    pub(crate) fn count_locally(&self, counter: &ArmCounter, user: &str, count: Count, bucket: usize, day: i64) {
        let mut days = counter.days.lock().unwrap_or_else(|p| p.into_inner());
        days.entry(day).or_default()[usize::from(count == Count::Click)] += 1;
        while days.len() > MAX_DAYS as usize {
            days.pop_first();
        }
        drop(days);
        match count {
            Count::Impression => {
                counter.impressions_by_position[bucket].fetch_add(1, Ordering::Relaxed);
                counter.impressions.fetch_add(1, Ordering::Relaxed)
            }
            Count::Click => {
                insert(&counter.clickers, user);
                counter.clicks_by_position[bucket].fetch_add(1, Ordering::Relaxed);
                counter.clicks.fetch_add(1, Ordering::Relaxed)
            }
        };
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

    /// The duel of an interleave experiment, from Redis or this process; `None` when Redis does
    /// not answer.
    pub(crate) async fn read_duel(&self, experiment: &str) -> Option<DuelCounts> {
        let Some(redis) = &self.redis else {
            let duels = self.duels.lock().unwrap_or_else(|p| p.into_inner());
            return Some(duels.get(experiment).map(|d| d.totals).unwrap_or_default());
        };
        let [_, totals] = duel_keys(experiment);
        let mut command = ::redis::cmd("HMGET");
        command.arg(totals).arg("wins0").arg("wins1").arg("ties");
        let [a, b, ties]: [Option<u64>; 3] = redis.query(&command).await.ok()?;
        Some(DuelCounts {
            wins: [a.unwrap_or(0), b.unwrap_or(0)],
            ties: ties.unwrap_or(0),
        })
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
                in_flight.insert(experiment.clone(), Batch { seq, arms: batch });
            }
        }
    }

    /// Sends every batch waiting for Redis (sealing new ones first); a batch Redis does not
    /// confirm stays for the next flush, unchanged. Returns whether nothing is left waiting.
    /// With `drain_until` (the shutdown drain), Redis is tried even in the breaker's backoff
    /// window, and no script waits past that instant.
    pub(crate) async fn flush(&self, drain_until: Option<tokio::time::Instant>) -> bool {
        let Some(redis) = &self.redis else {
            return true;
        };
        let _flushing = self.flushing.lock().await;
        self.seal();
        let waiting: Vec<(String, Batch)> = self
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(experiment, batch)| (experiment.clone(), batch.clone()))
            .collect();
        if waiting.is_empty() && drain_until.is_none() {
            // Nothing to send: a PING keeps `redis_up` true to this Redis without traffic.
            let _ = redis.query::<String>(&::redis::cmd("PING")).await;
            return true;
        }
        let mut done = true;
        for (experiment, Batch { seq, arms }) in waiting {
            let mut invocation = self.script.prepare_invoke();
            invocation
                .key(format!("recgw:results:{{{experiment}}}:applied:{}", self.replica))
                .key(format!("recgw:results:{{{experiment}}}:scratch:{}", self.replica))
                .arg(seq)
                .arg(APPLIED_TTL.as_secs());
            for sealed in &arms {
                let key = arm_key(&experiment, &sealed.arm);
                invocation
                    .key(&key)
                    .key(format!("{key}:users"))
                    .key(format!("{key}:items"))
                    .arg(sealed.exposures)
                    .arg(redis_dense(&sealed.counter.users))
                    .arg(redis_dense(&sealed.counter.items));
                for n in sealed.overlap {
                    invocation.arg(n);
                }
            }
            let answer = match drain_until {
                Some(until) => {
                    let left = until.saturating_duration_since(tokio::time::Instant::now());
                    redis.query_now::<u8>(&invocation, left.min(redis.timeout())).await
                }
                None => redis.query::<u8>(&invocation).await,
            };
            if answer.is_ok() {
                self.in_flight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&experiment);
                self.depth.sub(arms.iter().map(|sealed| sealed.exposures as i64).sum());
            } else {
                done = false;
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

    /// Flushes every second.
    pub(crate) fn spawn_flushing(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        self.redis.as_ref()?;
        let tally = Arc::downgrade(self);
        Some(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(FLUSH_EVERY);
            loop {
                ticker.tick().await;
                let Some(strong) = tally.upgrade() else {
                    return;
                };
                strong.flush(None).await;
            }
        }))
    }

    /// The totals of `arms` of `experiment`, from Redis (every replica's flushed counts) or
    /// from this process; `None` when Redis does not answer.
    pub(crate) async fn read(&self, experiment: &str, arms: &[&str]) -> Option<Vec<ArmCounts>> {
        let Some(redis) = &self.redis else {
            return Some(arms.iter().map(|arm| self.arm(experiment, arm).totals()).collect());
        };
        let mut pipe = ::redis::pipe();
        for arm in arms {
            let key = arm_key(experiment, arm);
            let hmget = pipe.cmd("HMGET").arg(&key);
            for field in COUNTER_FIELDS {
                hmget.arg(field);
            }
            for kind in ["i", "c"] {
                for bucket in POSITION_BUCKETS {
                    hmget.arg(format!("{kind}@{bucket}"));
                }
            }
            pipe.cmd("PFCOUNT").arg(format!("{key}:users"));
            pipe.cmd("PFCOUNT").arg(format!("{key}:clickers"));
            pipe.cmd("PFCOUNT").arg(format!("{key}:items"));
        }
        let replies: Vec<::redis::Value> = redis.query(&pipe).await.ok()?;
        replies
            .chunks(4)
            .map(|reply| {
                let [counters, users, clickers, items] = reply else {
                    return None;
                };
                let fields: Vec<Option<u64>> = ::redis::from_redis_value(counters.clone()).ok()?;
                let field = |i: usize| fields.get(i).copied().flatten().unwrap_or(0);
                let n = COUNTER_FIELDS.len();
                let buckets = POSITION_BUCKETS.len();
                Some(ArmCounts {
                    exposures: field(0),
                    impressions: field(1),
                    clicks: field(2),
                    compared: field(3),
                    jaccard_micro: field(4),
                    rbo_micro: field(5),
                    impressions_by_position: std::array::from_fn(|b| field(n + b)),
                    clicks_by_position: std::array::from_fn(|b| field(n + buckets + b)),
                    users: ::redis::from_redis_value(users.clone()).ok()?,
                    clickers: ::redis::from_redis_value(clickers.clone()).ok()?,
                    items: ::redis::from_redis_value(items.clone()).ok()?,
                })
            })
            .collect()
    }

    /// The impressions and clicks per day of `arms` of `experiment`, from Redis or this
    /// process; `None` when Redis does not answer.
    pub(crate) async fn read_days(&self, experiment: &str, arms: &[&str]) -> Option<Vec<DayCounts>> {
        let Some(redis) = &self.redis else {
            return Some(
                arms.iter()
                    .map(|arm| {
                        let counter = self.arm(experiment, arm);
                        let days = counter.days.lock().unwrap_or_else(|p| p.into_inner());
                        days.clone()
                    })
                    .collect(),
            );
        };
        let mut pipe = ::redis::pipe();
        for arm in arms {
            pipe.cmd("HGETALL").arg(format!("{}:days", arm_key(experiment, arm)));
        }
        let replies: Vec<HashMap<String, u64>> = redis.query(&pipe).await.ok()?;
        Some(
            replies
                .into_iter()
                .map(|fields| {
                    let mut days = DayCounts::new();
                    for (field, n) in fields {
                        // Fields are `YYYY-MM-DD:i` and `YYYY-MM-DD:c`; anything else is not ours.
                        let parsed = field.split_once(':').and_then(|(date, kind)| {
                            let slot = match kind {
                                "i" => 0,
                                "c" => 1,
                                _ => return None,
                            };
                            Some((crate::calendar::parse_date(date)?, slot))
                        });
                        if let Some((day, slot)) = parsed {
                            days.entry(day).or_default()[slot] = n;
                        }
                    }
                    while days.len() > MAX_DAYS as usize {
                        days.pop_first();
                    }
                    days
                })
                .collect(),
        )
    }
}

/// The counters of an arm's hash that [`Tally::read`] reads first, in [`ArmCounts`] order; the
/// rank buckets' `i@{bucket}` and `c@{bucket}` follow.
const COUNTER_FIELDS: [&str; 6] = [
    "exposures",
    "impressions",
    "clicks",
    "compared",
    "jaccard_micro",
    "rbo_micro",
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Small counts are exact, as `PFCOUNT` reports them for the same users.
    #[test]
    fn small_distinct_counts_are_exact() {
        let counter = ArmCounter::new();
        for (users, repeats) in [(1u64, 2), (2, 3), (10, 1), (100, 2)] {
            let counter_users = sketch();
            for _ in 0..repeats {
                for user in 0..users {
                    counter_users.insert(&user.to_string());
                }
            }
            assert_eq!(estimate(&counter_users), users, "{users} users seen {repeats} times");
        }
        assert_eq!(counter.totals().users, 0);
    }

    /// A user moves between outcomes as clicks come in, and is counted in one at a time.
    #[test]
    fn duel_totals_hold_each_clicking_user_once() {
        let tally = Tally::new(None, IntGauge::new("depth", "test").expect("gauge"), 1);
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
        let tally = Tally::new(None, IntGauge::new("depth", "test").expect("gauge"), 1);
        let counter = tally.arm("e", "a");
        let first = 20_000;
        for day in first..first + MAX_DAYS + 2 {
            tally.count_locally(&counter, "u", Count::Impression, 0, day);
        }
        tally.count_locally(&counter, "u", Count::Click, 0, first + MAX_DAYS + 1);
        let days = counter.days.lock().expect("lock").clone();
        assert_eq!(days.len(), MAX_DAYS as usize);
        assert_eq!(days.keys().next(), Some(&(first + 2)), "the two oldest dropped");
        assert_eq!(days[&(first + MAX_DAYS + 1)], [1, 1]);
        assert_eq!(
            counter.totals().impressions,
            (MAX_DAYS + 2) as u64,
            "totals keep everything"
        );
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
