//! The counts' Redis must keep every key they write. `results.redis_url` defaults to the cache's
//! Redis, and a cache is run with an evicting `maxmemory-policy` (`allkeys-lru`): there the
//! counts, the event claims and the replicas' applied-sequence keys would be evicted without a
//! word, losing counts and letting a resent event or batch count twice.
//!
//! Only `noeviction` is accepted. The `volatile-*` policies evict only keys with a TTL, and the
//! counts' hashes carry none, but the event claims (expiring with their token) and the
//! applied-sequence keys (7 days) do, and they are what `volatile-ttl` or `volatile-lru` evict
//! first under memory pressure: a claim or a sequence lost is an event or a batch counted
//! twice. `allkeys-*` may evict anything.
//!
//! [`EvictionGuard`] reads `CONFIG GET maxmemory-policy` on every node (a cluster's masters and
//! replicas: a replica is promoted with its own settings) at start; after any command failed
//! for want of a connection (the Redis answering next may be another one, restarted with other
//! settings), and until then counts wait; and every `experiments.reload_interval`, which catches
//! a `CONFIG SET` and a reconnection the client made without a command failing (a cluster
//! client retries on a node's new connection by itself). A late answer is no loss: a slow Redis
//! is the same Redis.
//!
//! With `results.eviction_check = "refuse"` (the default) the clients of the counts send nothing
//! until every node is known to keep its keys: exposures and users wait in memory as in an
//! outage, events are refused as `counts_unavailable`, and while a node evicts, or its policy
//! cannot be read (a provider that disables `CONFIG`), `/ready` answers 503 with the reason, so
//! a deploy onto such a Redis stops at its first replica. With `"warn"` the counts go on and the
//! reason is a warning in the log and in `/ready`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Redis;
use crate::config::EvictionCheck;

/// The one policy that never evicts a key the counts wrote.
const KEEPS_EVERY_KEY: &str = "noeviction";

/// First and longest pause between checks that got no answer (Redis away): short, because the
/// counts and events wait for the answer once Redis is back.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_millis(250);

/// What the last check found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// Not known since start or since the connection was last lost.
    Unchecked,
    /// Every node runs `noeviction`.
    Keeps,
    /// A node evicts, or its policy could not be read.
    Risky(Finding),
}

/// What a check found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Finding {
    /// Which nodes run which policy, or could not say: one sentence per policy or error.
    reason: String,
    /// Whether a node's policy could not be read (rather than read and found evicting): then
    /// `"warn"` is the way to count into a Redis whose provider disables `CONFIG`.
    unreadable: bool,
}

/// Whether the counts may be written to their Redis, and what `/ready` says about it.
#[derive(Debug)]
pub(crate) struct EvictionGuard {
    /// The counts' Redis.
    redis: Arc<Redis>,
    /// How long a check waits for every node's answer.
    deadline: Duration,
    /// `results.eviction_check`.
    mode: EvictionCheck,
    /// [`Redis::losses`] of the counts' Redis: a verdict reached before the last loss may be
    /// about a Redis that is not the one answering now.
    losses: watch::Receiver<u64>,
    /// The last verdict and the losses counted when its check was sent; watched by commands
    /// waiting for a check under way.
    verdict: watch::Sender<(u64, Verdict)>,
}

impl EvictionGuard {
    /// The guard of the counts on `redis`, doing what `mode` says, whose checks wait `deadline`
    /// for an answer; nothing is checked until [`EvictionGuard::spawn_checking`].
    pub(crate) fn new(redis: &Arc<Redis>, mode: EvictionCheck, deadline: Duration) -> Arc<Self> {
        Arc::new(EvictionGuard {
            redis: Arc::clone(redis),
            deadline,
            mode,
            losses: redis.losses(),
            verdict: watch::Sender::new((0, Verdict::Unchecked)),
        })
    }

    /// Whether a client of the counts may send a command: always with `"warn"`; with
    /// `"refuse"`, once every node was found to run `noeviction` since the last connection loss.
    /// While no check has answered since (at start, after a loss) but Redis answers again, it
    /// waits for one up to `within`, so a check under way does not turn a command away; while
    /// Redis does not answer it turns it away at once, as a breaker would.
    pub(crate) async fn admits(&self, within: Duration) -> bool {
        if self.mode == EvictionCheck::Warn {
            return true;
        }
        if let Some(keeps) = self.settled(&self.verdict.borrow()) {
            return keeps;
        }
        if !self.redis.is_up() {
            return false;
        }
        let mut verdicts = self.verdict.subscribe();
        let settled = async {
            loop {
                if let Some(keeps) = self.settled(&verdicts.borrow_and_update()) {
                    return keeps;
                }
                // Never closed: the sender is this guard's.
                if verdicts.changed().await.is_err() {
                    return false;
                }
            }
        };
        tokio::time::timeout(within, settled).await.unwrap_or(false)
    }

    /// Whether `verdict` keeps the counts, when it is about the connection now.
    fn settled(&self, verdict: &(u64, Verdict)) -> Option<bool> {
        if verdict.0 != *self.losses.borrow() {
            return None;
        }
        match verdict.1 {
            Verdict::Unchecked => None,
            Verdict::Keeps => Some(true),
            Verdict::Risky(_) => Some(false),
        }
    }

    /// Why the counts are held, and until when: under `"refuse"`, once a check found a node
    /// that evicts or whose policy it could not read; `None` otherwise.
    pub(crate) fn holding(&self) -> Option<String> {
        self.risk(EvictionCheck::Refuse)
    }

    /// The same finding under `"warn"`, where the counts go on and may be evicted.
    pub(crate) fn warning(&self) -> Option<String> {
        self.risk(EvictionCheck::Warn)
    }

    /// The last check's finding, said as [`EvictionGuard::consequence`], when the guard runs in
    /// `mode`.
    fn risk(&self, mode: EvictionCheck) -> Option<String> {
        match &self.verdict.borrow().1 {
            Verdict::Risky(finding) if self.mode == mode => Some(self.consequence(finding)),
            _ => None,
        }
    }

    /// `finding` with what the gateway does about it.
    fn consequence(&self, finding: &Finding) -> String {
        let reason = &finding.reason;
        match self.mode {
            EvictionCheck::Refuse => format!(
                "{reason}: result counts are held in memory and events refused until every node of \
                 results.redis_url runs maxmemory-policy noeviction{}",
                if finding.unreadable {
                    " (where the provider disables CONFIG, check by other means that it does, then set \
                     results.eviction_check = \"warn\")"
                } else {
                    ""
                }
            ),
            EvictionCheck::Warn => format!(
                "{reason}: counted into anyway (results.eviction_check = \"warn\"), where counts, event \
                 claims and sequence numbers may be evicted"
            ),
        }
    }

    /// Checks the counts' Redis now, after each connection loss and every `every`, until the
    /// task is aborted.
    pub(crate) fn spawn_checking(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let guard = Arc::clone(self);
        tokio::spawn(async move {
            let mut losses = guard.losses.clone();
            let mut retry = RETRY_MIN;
            loop {
                let seen = *losses.borrow_and_update();
                match check(&guard.redis, guard.deadline).await {
                    Some(verdict) => {
                        guard.settle(seen, verdict);
                        retry = RETRY_MIN;
                        tokio::select! {
                            // Never closed: the sender lives in the Redis the guard holds.
                            _ = losses.changed() => {}
                            () = tokio::time::sleep(every) => {}
                        }
                    }
                    None => {
                        tokio::time::sleep(retry).await;
                        retry = (retry * 2).min(RETRY_MAX);
                    }
                }
            }
        })
    }

    /// Records `verdict`, reached by a check sent after `seen` losses, and says so in the log
    /// when it changed.
    fn settle(&self, seen: u64, verdict: Verdict) {
        let before = self.verdict.send_replace((seen, verdict.clone()));
        if before.1 == verdict {
            return;
        }
        match &verdict {
            Verdict::Risky(finding) => match self.mode {
                EvictionCheck::Refuse => tracing::error!("{}; /ready answers 503", self.consequence(finding)),
                EvictionCheck::Warn => tracing::warn!("{}", self.consequence(finding)),
            },
            Verdict::Keeps if before.1 != Verdict::Unchecked => {
                tracing::info!("every node of the counts' Redis runs maxmemory-policy noeviction: counting into it");
            }
            Verdict::Keeps | Verdict::Unchecked => {
                tracing::debug!("every node of the counts' Redis runs maxmemory-policy noeviction");
            }
        }
    }
}

/// Asks every node of `redis` for its `maxmemory-policy`; `None` when Redis did not answer.
async fn check(redis: &Redis, deadline: Duration) -> Option<Verdict> {
    let mut command = ::redis::cmd("CONFIG");
    command.arg("GET").arg("maxmemory-policy");
    let answers = redis.ask_every_node(&command, deadline).await.ok()?;
    // Nodes by the policy they run other than `noeviction`, and by why theirs could not be read.
    let mut evicting: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut unreadable: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (node, answer) in answers {
        let policy = answer.and_then(|reply| {
            ::redis::from_redis_value::<HashMap<String, String>>(reply)
                .map_err(|e| e.to_string())?
                .remove("maxmemory-policy")
                .ok_or_else(|| "no maxmemory-policy in its answer".to_string())
        });
        match policy {
            Ok(policy) if policy == KEEPS_EVERY_KEY => {}
            Ok(policy) => evicting.entry(policy).or_default().push(node),
            Err(e) => unreadable.entry(e).or_default().push(node),
        }
    }
    let nodes = |nodes: &mut Vec<String>| {
        nodes.sort();
        nodes.join(", ")
    };
    let mut reasons: Vec<String> = evicting
        .iter_mut()
        .map(|(policy, at)| {
            format!(
                "the counts' Redis ({}) runs maxmemory-policy {policy}, which may evict counts, event claims \
                 and sequence numbers",
                nodes(at)
            )
        })
        .collect();
    reasons.extend(unreadable.iter_mut().map(|(e, at)| {
        format!(
            "the maxmemory-policy of the counts' Redis ({}) cannot be read ({e})",
            nodes(at)
        )
    }));
    Some(if reasons.is_empty() {
        Verdict::Keeps
    } else {
        Verdict::Risky(Finding {
            reason: reasons.join("; "),
            unreadable: !unreadable.is_empty(),
        })
    })
}
