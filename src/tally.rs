//! Durable per-arm counts for the analysts' results, shared by every replica through Redis:
//! exposures, distinct users (HyperLogLog), impressions, clicks and distinct clicking users.
//!
//! Counting never adds a Redis round trip to a request: updates go into an in-memory buffer
//! that a background task flushes in pipelined batches (every 250 ms, or sooner once 1,000
//! updates wait). While Redis is away the buffer keeps them (up to [`MAX_PENDING`] updates;
//! beyond that they are dropped and counted) and flushes on recovery; a graceful shutdown
//! flushes it too. Without Redis configured the counts live in this process only, and the
//! results say so.
//!
//! Keys: `recgw:results:{experiment}:{arm}` (a hash of counters) and `…:users` / `…:clickers`
//! (HyperLogLogs). The `{experiment}` hash tag keeps one experiment's keys in one cluster
//! slot, so a flush is one pipeline per experiment.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};

use crate::cache::RedisTier;

/// Updates waiting for Redis at most; past it new ones are dropped (and counted).
pub const MAX_PENDING: usize = 1_000_000;

/// A flush starts after this long, or sooner once [`FLUSH_BATCH`] updates wait.
const FLUSH_EVERY: Duration = Duration::from_millis(250);
const FLUSH_BATCH: usize = 1_000;

/// A flush pipeline may take this long: it carries up to thousands of commands.
const FLUSH_DEADLINE: Duration = Duration::from_secs(2);

/// What happened, counted per arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Count {
    /// A recommendation response served to a user the experiment counts (not forced, not a
    /// winner being served).
    Exposure,
    /// An accepted impression event.
    Impression,
    /// An accepted click event.
    Click,
}

impl Count {
    fn field(self) -> &'static str {
        match self {
            Count::Exposure => "exposures",
            Count::Impression => "impressions",
            Count::Click => "clicks",
        }
    }

    /// The distinct-user set this count adds the user to.
    fn users(self) -> Option<&'static str> {
        match self {
            Count::Exposure => Some("users"),
            Count::Click => Some("clickers"),
            Count::Impression => None,
        }
    }
}

/// Totals of one arm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArmCounts {
    /// Responses served.
    pub exposures: u64,
    /// Distinct users served (approximate with Redis: HyperLogLog, ±0.81%).
    pub users: u64,
    /// Impressions.
    pub impressions: u64,
    /// Clicks.
    pub clicks: u64,
    /// Distinct users who clicked (approximate with Redis).
    pub clickers: u64,
}

type ArmKey = (String, String);

/// Updates not yet in Redis.
#[derive(Debug, Default)]
struct Pending {
    /// `(experiment, arm, count) → n`.
    counts: HashMap<(String, String, Count), u64>,
    /// `(experiment, arm, set) → users` to add.
    users: HashMap<(String, String, &'static str), HashSet<String>>,
    /// Updates held (what [`MAX_PENDING`] bounds).
    updates: usize,
}

/// Exact in-process counts, when no Redis is configured.
#[derive(Debug, Default)]
struct Local {
    counts: HashMap<ArmKey, ArmCounts>,
    users: HashMap<(String, String, &'static str), HashSet<String>>,
}

/// The counters and where they go.
#[derive(Debug)]
pub struct Tally {
    /// Where counts are kept; `None` keeps them in `local`.
    redis: Option<Arc<RedisTier>>,
    /// Updates waiting for the next flush (Redis mode).
    pending: Mutex<Pending>,
    /// The counts themselves (no-Redis mode).
    local: Mutex<Local>,
    /// Wakes the flusher early when a batch is full.
    wake: tokio::sync::Notify,
    /// Held while a batch is out of the buffer.
    flushing: tokio::sync::Mutex<()>,
    /// `results_pending_updates`: the buffer's depth.
    depth: IntGauge,
    /// `results_dropped_updates_total`: updates lost to a full buffer.
    dropped: IntCounter,
    /// `results.min_sample_size`: impressions an arm needs before its comparison is read.
    min_sample_size: u64,
}

fn key(experiment: &str, arm: &str) -> String {
    format!("recgw:results:{{{experiment}}}:{arm}")
}

impl Tally {
    /// Counts into Redis when `redis` is given, else in this process.
    pub(crate) fn new(
        redis: Option<Arc<RedisTier>>,
        depth: IntGauge,
        dropped: IntCounter,
        min_sample_size: u64,
    ) -> Self {
        Tally {
            redis,
            pending: Mutex::default(),
            local: Mutex::default(),
            wake: tokio::sync::Notify::new(),
            flushing: tokio::sync::Mutex::new(()),
            depth,
            dropped,
            min_sample_size,
        }
    }

    /// Impressions an arm needs before its comparison is worth reading.
    pub fn min_sample_size(&self) -> u64 {
        self.min_sample_size
    }

    /// Whether the counts are shared through Redis (else they are this process's only).
    pub fn is_shared(&self) -> bool {
        self.redis.is_some()
    }

    /// Records one `count` for `user` on an arm. Never waits for Redis.
    pub fn record(&self, experiment: &str, arm: &str, user: &str, count: Count) {
        if self.redis.is_none() {
            let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
            let distinct = count.users().map(|set| {
                let users = local
                    .users
                    .entry((experiment.to_string(), arm.to_string(), set))
                    .or_default();
                users.insert(user.to_string());
                users.len() as u64
            });
            let totals = local
                .counts
                .entry((experiment.to_string(), arm.to_string()))
                .or_default();
            match count {
                Count::Exposure => totals.exposures += 1,
                Count::Impression => totals.impressions += 1,
                Count::Click => totals.clicks += 1,
            }
            match (count, distinct) {
                (Count::Exposure, Some(users)) => totals.users = users,
                (Count::Click, Some(clickers)) => totals.clickers = clickers,
                _ => {}
            }
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.updates >= MAX_PENDING {
            self.dropped.inc();
            return;
        }
        *pending
            .counts
            .entry((experiment.to_string(), arm.to_string(), count))
            .or_default() += 1;
        if let Some(set) = count.users() {
            pending
                .users
                .entry((experiment.to_string(), arm.to_string(), set))
                .or_default()
                .insert(user.to_string());
        }
        pending.updates += 1;
        self.depth.set(pending.updates as i64);
        if pending.updates >= FLUSH_BATCH {
            self.wake.notify_one();
        }
    }

    /// Sends buffered updates to Redis, one pipeline per experiment; what Redis does not take
    /// goes back into the buffer for the next flush. Returns whether everything was written.
    /// With `drain_until` (the shutdown drain), Redis is tried even in the breaker's backoff
    /// window, and no pipeline waits past that instant.
    pub async fn flush(&self, drain_until: Option<tokio::time::Instant>) -> bool {
        let Some(redis) = &self.redis else {
            return true;
        };
        // One flush at a time: a batch taken out of the buffer is either written or put back
        // before another flush (or the shutdown drain) looks at the buffer.
        let _flushing = self.flushing.lock().await;
        let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if batch.updates == 0 {
            return true;
        }
        let mut by_experiment: HashMap<&str, redis::Pipeline> = HashMap::new();
        for ((experiment, arm, count), n) in &batch.counts {
            let pipe = by_experiment.entry(experiment).or_insert_with(redis::pipe);
            pipe.cmd("HINCRBY")
                .arg(key(experiment, arm))
                .arg(count.field())
                .arg(*n)
                .ignore();
        }
        for ((experiment, arm, set), users) in &batch.users {
            let pipe = by_experiment.entry(experiment).or_insert_with(redis::pipe);
            pipe.cmd("PFADD")
                .arg(format!("{}:{set}", key(experiment, arm)))
                .arg(users.iter().collect::<Vec<_>>())
                .ignore();
        }
        let mut failed: HashSet<String> = HashSet::new();
        for (experiment, pipe) in &by_experiment {
            let written = match drain_until {
                Some(until) => {
                    let left = until.saturating_duration_since(tokio::time::Instant::now());
                    redis.query_now::<()>(pipe, left.min(FLUSH_DEADLINE)).await
                }
                None => redis.query_within::<()>(pipe, FLUSH_DEADLINE).await,
            };
            if written.is_none() {
                failed.insert(experiment.to_string());
            }
        }
        drop(by_experiment);
        if failed.is_empty() {
            self.depth
                .set(self.pending.lock().unwrap_or_else(|p| p.into_inner()).updates as i64);
            return true;
        }
        // Put back what was not written; a pipeline that failed may still have applied
        // partly, so on an unclean failure a retry can count some updates twice — the
        // price of never losing them.
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for ((experiment, arm, count), n) in batch.counts {
            if failed.contains(&experiment) {
                *pending.counts.entry((experiment, arm, count)).or_default() += n;
                pending.updates += n as usize;
            }
        }
        for ((experiment, arm, set), users) in batch.users {
            if failed.contains(&experiment) {
                pending.users.entry((experiment, arm, set)).or_default().extend(users);
            }
        }
        self.depth.set(pending.updates as i64);
        false
    }

    /// Flushes until the buffer is empty or `deadline` passes (a graceful shutdown). Redis may
    /// have just come back while the breaker still waits out its backoff (up to 5 s, which can
    /// outlast the grace), so each try goes past the breaker, and a failed one is retried.
    pub async fn drain(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            if self.flush(Some(deadline)).await && self.pending.lock().unwrap_or_else(|p| p.into_inner()).updates == 0 {
                return true;
            }
            if tokio::time::Instant::now() + Duration::from_millis(100) > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Flushes every 250 ms, or as soon as a batch fills.
    pub fn spawn_flushing(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        self.redis.as_ref()?;
        let tally = Arc::downgrade(self);
        Some(tokio::spawn(async move {
            loop {
                let Some(strong) = tally.upgrade() else {
                    return;
                };
                let _ = tokio::time::timeout(FLUSH_EVERY, strong.wake.notified()).await;
                strong.flush(None).await;
            }
        }))
    }

    /// The totals of `arms` of `experiment`, from Redis (every replica's flushed updates) or
    /// from this process; `None` when Redis does not answer.
    pub async fn read(&self, experiment: &str, arms: &[&str]) -> Option<Vec<ArmCounts>> {
        let Some(redis) = &self.redis else {
            let local = self.local.lock().unwrap_or_else(|p| p.into_inner());
            return Some(
                arms.iter()
                    .map(|arm| {
                        local
                            .counts
                            .get(&(experiment.to_string(), arm.to_string()))
                            .copied()
                            .unwrap_or_default()
                    })
                    .collect(),
            );
        };
        let mut pipe = redis::pipe();
        for arm in arms {
            let key = key(experiment, arm);
            pipe.cmd("HMGET")
                .arg(&key)
                .arg("exposures")
                .arg("impressions")
                .arg("clicks");
            pipe.cmd("PFCOUNT").arg(format!("{key}:users"));
            pipe.cmd("PFCOUNT").arg(format!("{key}:clickers"));
        }
        let replies: Vec<redis::Value> = redis.query_within(&pipe, FLUSH_DEADLINE).await?;
        replies
            .chunks(3)
            .map(|reply| {
                let [counters, users, clickers] = reply else {
                    return None;
                };
                let [exposures, impressions, clicks]: [Option<u64>; 3] =
                    redis::from_redis_value(counters.clone()).ok()?;
                Some(ArmCounts {
                    exposures: exposures.unwrap_or(0),
                    impressions: impressions.unwrap_or(0),
                    clicks: clicks.unwrap_or(0),
                    users: redis::from_redis_value(users.clone()).ok()?,
                    clickers: redis::from_redis_value(clickers.clone()).ok()?,
                })
            })
            .collect()
    }
}
