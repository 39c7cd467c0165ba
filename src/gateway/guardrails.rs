//! Guardrails that act: an arm of an experiment with `guardrails` that breaches one of them is
//! paused by the gateway itself, without waiting for anyone to read a dashboard.
//!
//! Every second each replica judges the arms compared with the control (not the control, not
//! shadows) on what it served over the last `guardrail_window`, read from the arm's own metric
//! handles: store errors / requests (`error_rate`), fallbacks / requests (`fallback_rate`) and
//! the p99 of its response times, interpolated in the histogram's buckets as Prometheus's
//! `histogram_quantile` does (`p99_ms`); rates are judged once the window holds
//! `min_requests`. `max_ctr_drop` is judged on the shared results counts: the arm is paused
//! once the always-valid 95% interval of its lift lies wholly below `−max_ctr_drop`; that
//! interval is valid however often it is read, so judging it every second cannot trip it by
//! chance (an A/A test trips it at most 5% of the time over its whole life).
//!
//! A paused arm keeps its users (assignment does not move: intent to treat): they are served
//! the control's list, counted as exposures of the arm they were assigned, and flagged
//! (`paused_by_guardrail` in the response). The pause is written to Redis
//! (`recgw:guardrails:{experiment}`, arm → `{"reason", "since"}`, first reason kept) and read
//! back every second, so every replica serves the control within a second or two of the first
//! one pausing; `POST /admin/experiments/{id}/arms/{arm}/resume` deletes it, and each replica
//! then judges the arm afresh on a whole new window. Without Redis a pause is this replica's.
//! A pause that Redis did not take is kept here and written again at the next check.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use super::Gateway;
use super::arm_metrics::Sample;
use crate::analysis::results::acted_on;
use crate::analysis::significance::Sequential;
use crate::experiment::{Experiment, Guardrails, Status};
use crate::keys;
use crate::redis::RedisClient;

/// How often arms are judged and pauses read back from Redis.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Why and since when an arm is paused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Pause {
    /// The guardrail breached and the figures, in words.
    pub(crate) reason: String,
    /// Unix seconds.
    pub(crate) since: u64,
}

/// Experiment id → arm name → its pause.
type Pauses = HashMap<String, HashMap<String, Pause>>;

/// One arm's samples over the last window, oldest first.
type Window = VecDeque<(Instant, Sample)>;

/// The pauses in force and what judging them needs.
#[derive(Debug)]
pub(crate) struct Guard {
    /// Where pauses are shared; `None` keeps them in this process.
    redis: Option<RedisClient>,
    /// The pauses every request of a guarded experiment looks up, replaced whole.
    paused: ArcSwap<Pauses>,
    /// Pauses made here that Redis has not taken yet.
    unwritten: Mutex<Vec<(String, String, Pause)>>,
    /// Per (experiment, arm), its samples over the last window, oldest first.
    windows: Mutex<HashMap<(String, String), Window>>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Guard {
    /// Pauses shared through `redis`, or kept here without.
    pub(crate) fn new(redis: Option<RedisClient>) -> Self {
        Guard {
            redis,
            paused: ArcSwap::default(),
            unwritten: Mutex::default(),
            windows: Mutex::default(),
        }
    }

    /// The pause of an arm, if it is paused.
    pub(crate) fn pause(&self, experiment: &str, arm: &str) -> Option<Pause> {
        self.paused.load().get(experiment)?.get(arm).cloned()
    }

    /// Whether an arm is paused: a lookup without allocation, for the request path.
    pub(crate) fn is_paused(&self, experiment: &str, arm: &str) -> bool {
        self.paused
            .load()
            .get(experiment)
            .is_some_and(|arms| arms.contains_key(arm))
    }

    /// Reads the pauses of `experiments` back from Redis (keeping those not written yet);
    /// returns the arms whose pause was lifted since the last read. A Redis that does not
    /// answer changes nothing.
    async fn sync(&self, experiments: &[&Arc<Experiment>]) -> Vec<(String, String)> {
        let Some(redis) = &self.redis else {
            return Vec::new();
        };
        self.write_unwritten(redis).await;
        let mut fresh = Pauses::new();
        for experiment in experiments {
            let mut command = ::redis::cmd("HGETALL");
            command.arg(keys::guardrails(&experiment.id));
            let Ok(fields) = redis.query::<HashMap<String, String>>(&command).await else {
                return Vec::new();
            };
            let arms: HashMap<String, Pause> = fields
                .into_iter()
                .filter_map(|(arm, json)| Some((arm, serde_json::from_str(&json).ok()?)))
                .collect();
            if !arms.is_empty() {
                fresh.insert(experiment.id.clone(), arms);
            }
        }
        for (experiment, arm, pause) in self.unwritten.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            fresh
                .entry(experiment.clone())
                .or_default()
                .entry(arm.clone())
                .or_insert_with(|| pause.clone());
        }
        let before = self.paused.load_full();
        let lifted = before
            .iter()
            .flat_map(|(e, arms)| arms.keys().map(move |a| (e.clone(), a.clone())))
            .filter(|(e, a)| !fresh.get(e).is_some_and(|arms| arms.contains_key(a)))
            .collect();
        self.paused.store(Arc::new(fresh));
        lifted
    }

    /// Writes the pauses Redis has not taken, keeping the ones it still refuses.
    async fn write_unwritten(&self, redis: &RedisClient) {
        let waiting = std::mem::take(&mut *self.unwritten.lock().unwrap_or_else(|p| p.into_inner()));
        let mut left = Vec::new();
        for (experiment, arm, pause) in waiting {
            let mut command = ::redis::cmd("HSETNX");
            command
                .arg(keys::guardrails(&experiment))
                .arg(&arm)
                .arg(serde_json::to_string(&pause).unwrap_or_default());
            if redis.query::<u8>(&command).await.is_err() {
                left.push((experiment, arm, pause));
            }
        }
        self.unwritten.lock().unwrap_or_else(|p| p.into_inner()).extend(left);
    }

    /// Pauses an arm here at once, and in Redis at the next check.
    fn pause_now(&self, experiment: &str, arm: &str, reason: String) {
        let pause = Pause {
            reason,
            since: unix_now(),
        };
        let mut pauses = Pauses::clone(&self.paused.load());
        pauses
            .entry(experiment.to_string())
            .or_default()
            .insert(arm.to_string(), pause.clone());
        self.paused.store(Arc::new(pauses));
        if self.redis.is_some() {
            self.unwritten.lock().unwrap_or_else(|p| p.into_inner()).push((
                experiment.to_string(),
                arm.to_string(),
                pause,
            ));
        }
    }

    /// Lifts an arm's pause here and in Redis; `Err` when Redis does not answer (the pause
    /// would come back from the other replicas).
    pub(crate) async fn resume(&self, experiment: &str, arm: &str) -> Result<bool, crate::redis::Failure> {
        if let Some(redis) = &self.redis {
            let mut command = ::redis::cmd("HDEL");
            command.arg(keys::guardrails(experiment)).arg(arm);
            redis.query::<u8>(&command).await?;
        }
        self.unwritten
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(e, a, _)| (e.as_str(), a.as_str()) != (experiment, arm));
        let mut pauses = Pauses::clone(&self.paused.load());
        let was = pauses.get_mut(experiment).and_then(|arms| arms.remove(arm)).is_some();
        self.paused.store(Arc::new(pauses));
        self.forget(experiment, arm);
        Ok(was)
    }

    /// Drops the windows of arms no longer guarded (a reload removed them or their
    /// guardrails), so they do not outlive the catalog.
    fn keep_windows(&self, guarded: &[&Arc<Experiment>]) {
        self.windows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(experiment, arm), _| {
                guarded
                    .iter()
                    .any(|e| e.id == *experiment && e.arms.iter().any(|a| a.name == *arm))
            });
    }

    /// Drops an arm's window, so it is judged on a whole new one.
    fn forget(&self, experiment: &str, arm: &str) {
        self.windows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(experiment.to_string(), arm.to_string()));
    }

    /// Adds `sample` to an arm's window and returns what it served over the whole window, once
    /// the window is that old.
    fn over_window(&self, experiment: &str, arm: &str, sample: Sample, window: Duration) -> Option<Sample> {
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let samples = windows.entry((experiment.to_string(), arm.to_string())).or_default();
        samples.push_back((now, sample.clone()));
        // Keep the newest sample at least a window old: the start of the window judged.
        while samples.get(1).is_some_and(|(at, _)| now.duration_since(*at) >= window) {
            samples.pop_front();
        }
        let (start, first) = samples.front()?;
        (now.duration_since(*start) >= window).then(|| sample.since(first))
    }
}

/// Why `served` (an arm's requests over the window) breaches `limits`, if it does.
pub(crate) fn breach(limits: &Guardrails, served: &Sample) -> Option<String> {
    if served.requests < limits.min_requests {
        return None;
    }
    let n = served.requests as f64;
    let window = humantime::format_duration(limits.window);
    if let Some(limit) = limits.error_rate {
        let rate = served.errors as f64 / n;
        if rate > limit {
            return Some(format!(
                "error_rate {rate:.3} > {limit} over the last {window} ({} requests)",
                served.requests
            ));
        }
    }
    if let Some(limit) = limits.fallback_rate {
        let rate = served.fallbacks as f64 / n;
        if rate > limit {
            return Some(format!(
                "fallback_rate {rate:.3} > {limit} over the last {window} ({} requests)",
                served.requests
            ));
        }
    }
    if let (Some(limit), Some(p99)) = (limits.p99, served.quantile(0.99))
        && p99 > limit.as_secs_f64()
    {
        return Some(format!(
            "p99 {:.1} ms > {} ms over the last {window} ({} requests)",
            p99 * 1000.0,
            limit.as_secs_f64() * 1000.0,
            served.requests
        ));
    }
    None
}

/// Why an arm's CTR breaches `max_ctr_drop` against the control's, if it does: the whole
/// always-valid interval of its lift (`sequential`, CUPED-adjusted when the experiment names
/// covariates) is below `−max_ctr_drop`.
pub(crate) fn ctr_breach(
    max_drop: f64,
    sequential: Result<Sequential, &'static str>,
    adjusted: bool,
) -> Option<String> {
    let sequential = sequential.ok()?;
    (sequential.interval.high < -max_drop).then(|| {
        format!(
            "max_ctr_drop: CTR lift at most {:+.1}% ({}always-valid 95% interval [{:+.1}%, {:+.1}%]), below -{:.1}%",
            sequential.interval.high * 100.0,
            if adjusted { "CUPED-adjusted " } else { "" },
            sequential.interval.low * 100.0,
            sequential.interval.high * 100.0,
            max_drop * 100.0
        )
    })
}

impl Gateway {
    /// Reads pauses back from Redis, then judges every guarded arm not paused yet.
    pub(crate) async fn check_guardrails(&self) {
        let catalog = self.catalog.load_full();
        let guarded: Vec<&Arc<Experiment>> = catalog
            .experiments()
            .filter(|e| e.guardrails.is_some() && e.status == Status::Running)
            .collect();
        self.guard.keep_windows(&guarded);
        for (experiment, arm) in self.guard.sync(&guarded).await {
            tracing::info!(%experiment, %arm, "guardrail pause lifted; the arm serves again");
            self.guard.forget(&experiment, &arm);
        }
        let arms = self.arms.load();
        for experiment in &guarded {
            let Some(limits) = &experiment.guardrails else { continue };
            let judged: Vec<usize> = (1..experiment.arms.len())
                .filter(|&i| experiment.arms[i].shadow.is_none())
                .collect();
            let counts = match limits.max_ctr_drop {
                Some(_) => {
                    let names: Vec<&str> = experiment.arms.iter().map(|a| a.name.as_str()).collect();
                    self.tally.read(&experiment.id, &names).await
                }
                None => None,
            };
            for i in judged {
                let arm = &experiment.arms[i];
                if self.guard.is_paused(&experiment.id, &arm.name) {
                    continue;
                }
                let Some(metrics) = arms.get(&experiment.placement, &experiment.id, &arm.name) else {
                    continue;
                };
                let served = self
                    .guard
                    .over_window(&experiment.id, &arm.name, metrics.sample(), limits.window);
                let ctr = match (limits.max_ctr_drop, &counts) {
                    (Some(drop), Some(counts)) => ctr_breach(
                        drop,
                        acted_on(experiment, &counts.arms[i], &counts.arms[0]),
                        experiment.covariates.is_some(),
                    ),
                    _ => None,
                };
                if let Some(reason) = served.and_then(|s| breach(limits, &s)).or(ctr) {
                    tracing::warn!(
                        experiment = %experiment.id,
                        arm = %arm.name,
                        %reason,
                        "guardrail breached: the arm is paused and its users get the control's list"
                    );
                    self.guard.pause_now(&experiment.id, &arm.name, reason);
                }
            }
        }
        self.publish_pauses(&guarded);
    }

    /// Sets `experiment_arm_paused` for every arm of the guarded experiments.
    fn publish_pauses(&self, guarded: &[&Arc<Experiment>]) {
        let paused: HashSet<(&str, &str)> = guarded
            .iter()
            .flat_map(|e| e.arms.iter().map(move |a| (e.id.as_str(), a.name.as_str())))
            .filter(|(e, a)| self.guard.is_paused(e, a))
            .collect();
        for experiment in guarded {
            for arm in &experiment.arms {
                let value = i64::from(paused.contains(&(experiment.id.as_str(), arm.name.as_str())));
                self.metrics
                    .arm_paused
                    .with_label_values(&[&experiment.placement, &experiment.id, &arm.name])
                    .set(value);
            }
        }
    }

    /// Judges guardrails every [`CHECK_EVERY`].
    pub(crate) fn spawn_guarding(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let gateway = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(CHECK_EVERY);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(gateway) = gateway.upgrade() else {
                    return;
                };
                gateway.check_guardrails().await;
            }
        })
    }

    /// The guardrail state in force.
    pub(crate) fn guard(&self) -> &Guard {
        &self.guard
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::significance;
    use crate::feedback::sums::UserSums;

    fn limits() -> Guardrails {
        Guardrails {
            error_rate: Some(0.02),
            p99: Some(Duration::from_millis(300)),
            fallback_rate: Some(0.2),
            max_ctr_drop: Some(0.1),
            min_requests: 100,
            window: Duration::from_secs(60),
        }
    }

    fn served(requests: u64, errors: u64, fallbacks: u64, latency: Vec<u64>) -> Sample {
        Sample {
            requests,
            errors,
            fallbacks,
            latency,
        }
    }

    /// Rates are judged only with `min_requests`, and each limit names itself.
    #[test]
    fn judges_rates_and_latency_over_enough_requests() {
        let fast = |n| {
            let mut buckets = vec![0; crate::metrics::LATENCY_BUCKETS.len() + 1];
            buckets.iter_mut().skip(3).for_each(|b| *b = n);
            buckets
        };
        assert_eq!(breach(&limits(), &served(99, 99, 99, fast(99))), None, "too few");
        assert_eq!(
            breach(&limits(), &served(1000, 20, 200, fast(1000))),
            None,
            "at the limits"
        );
        let errors = breach(&limits(), &served(1000, 21, 0, fast(1000))).expect("errors");
        assert!(
            errors.starts_with("error_rate 0.021 > 0.02 over the last 1m"),
            "{errors}"
        );
        let fallbacks = breach(&limits(), &served(1000, 0, 201, fast(1000))).expect("fallbacks");
        assert!(fallbacks.starts_with("fallback_rate 0.201 > 0.2"), "{fallbacks}");
        // 2% of the requests took 0.5-1 s: the p99 is in that bucket.
        let mut slow = fast(980);
        let last = slow.len();
        for (i, b) in slow.iter_mut().enumerate() {
            if i >= last - 3 {
                *b = 1000;
            }
        }
        let latency = breach(&limits(), &served(1000, 0, 0, slow)).expect("latency");
        assert!(latency.starts_with("p99 "), "{latency}");
    }

    /// `users` users with `each` impressions, the first `clicks` of them with one click.
    fn sums(users: u64, each: u64, clicks: u64) -> UserSums {
        let mut sums = UserSums::default();
        for u in 0..users {
            sums.add_user();
            for i in 0..each {
                sums.add_impression(0, i);
            }
            if u < clicks {
                sums.add_click(0, each);
            }
        }
        sums
    }

    /// The CTR guardrail fires only when the always-valid interval is wholly below the drop.
    #[test]
    fn ctr_drop_is_judged_on_the_always_valid_interval() {
        // 3% against 5% over 2,000 users of 10 impressions each: clearly more than 10% down.
        let judge = |arm: UserSums, control: UserSums| {
            ctr_breach(0.1, significance::sequential_lift(&arm, &control, 5000.0), false)
        };
        let reason = judge(sums(2000, 10, 600), sums(2000, 10, 1000)).expect("breach");
        assert!(reason.starts_with("max_ctr_drop: CTR lift at most"), "{reason}");
        // The same drop over 50 users each: the interval still reaches above −10%.
        assert_eq!(judge(sums(50, 10, 15), sums(50, 10, 25)), None);
        assert_eq!(judge(sums(50, 10, 0), sums(50, 10, 25)), None, "no interval yet");
    }
}
