//! The use case the HTTP layer exposes: assign a user on a placement, read the arm's list, fall
//! back to the placement default when the arm cannot answer, and cut the requested page. It
//! knows nothing of HTTP, so the CLI, benchmarks and tests drive it directly.

mod arm_metrics;
mod guardrails;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::cache::{Source, TieredCache};
use crate::experiment::{Arm, Assignment, Catalog, Experiment, Problems, Reason, Team, merge_seed, team_draft};
use crate::feedback::counts::{ArmCounter, Tally};
use crate::feedback::events::{Event, EventKind, EventLog, Rejection};
use crate::feedback::lists::overlap;
use crate::feedback::token::{ClaimsRef, TeamsRef, next_nonce, unix_seconds};
use crate::logs::{EventRow, Exposure, LogWriter, now_us};
use crate::metrics::{Metrics, NONE};
use crate::redis::EvictionGuard;
use crate::redis::{Health, RedisClient};

use crate::store::{Item, LoadedModel, ModelRegistry, ModelSpec, RankedList};
use arm_metrics::ArmIndex;
pub(crate) use arm_metrics::ArmMetrics;
pub(crate) use guardrails::{Guard, Pause};

/// Exposure counters of the catalog in force, by experiment id: the experiment they were
/// resolved for (a request may still hold the catalog before a swap) and one per arm, in arm
/// order.
type Counters = HashMap<String, (Arc<Experiment>, Vec<Arc<ArmCounter>>)>;

/// Shared state of a running gateway.
#[derive(Debug)]
pub(crate) struct Gateway {
    /// The experiment set in force; each request reads one snapshot of it.
    catalog: ArcSwap<Catalog>,
    /// Loaded model versions.
    models: Arc<ModelRegistry>,
    /// Local and Redis tiers in front of the models.
    cache: Arc<TieredCache>,
    /// Every metric family.
    metrics: Metrics,
    /// Pre-resolved per-arm handles of the catalog in force, replaced with it.
    arms: ArcSwap<ArmIndex>,
    /// Token signing and event deduplication.
    events: EventLog,
    /// Durable per-arm counts for the results.
    tally: Arc<Tally>,
    /// Exposure counters resolved for the catalog in force, replaced with it.
    counters: ArcSwap<Counters>,
    /// Whether every configured Redis answers; `None` without Redis.
    redis: Option<Arc<Health>>,
    /// Whether the counts' Redis keeps what they write; `None` without Redis.
    eviction: Option<Arc<EvictionGuard>>,
    /// The Parquet exposure and event logs, when `logs.root` is set.
    logs: Option<Arc<LogWriter>>,
    /// The folder the catalog is (re)loaded from.
    experiments_dir: PathBuf,
    /// Serialises reloads.
    reloading: tokio::sync::Mutex<()>,
    /// Why the folder on disk is not the set in force, if it was rejected: shown by `/ready`,
    /// and compared so a broken file is logged and counted once rather than at every check.
    rejected: ArcSwapOption<Problems>,
    /// Permits for shadow comparisons in flight ([`SHADOW_SLOTS`]).
    shadow_slots: Arc<tokio::sync::Semaphore>,
    /// Arms paused by their guardrails, and the windows they are judged on.
    guard: Guard,
}

/// The services a gateway is assembled from (see `server::Server::bind`).
#[derive(Debug)]
pub(crate) struct Parts {
    /// Model slots of the catalog.
    pub(crate) models: Arc<ModelRegistry>,
    /// Cache tiers.
    pub(crate) cache: Arc<TieredCache>,
    /// Metric families.
    pub(crate) metrics: Metrics,
    /// Token signing and event deduplication.
    pub(crate) events: EventLog,
    /// Results counters.
    pub(crate) tally: Arc<Tally>,
    /// The state of the Redis connections, when any is configured.
    pub(crate) redis: Option<Arc<Health>>,
    /// What holds the counts while their Redis may evict them, when one is configured.
    pub(crate) eviction: Option<Arc<EvictionGuard>>,
    /// The exposure and event logs, when configured.
    pub(crate) logs: Option<Arc<LogWriter>>,
    /// Where guardrail pauses are shared, with the counts' Redis.
    pub(crate) guard_redis: Option<RedisClient>,
}

/// New models a reloaded catalog brings get this long to load before the catalog is swapped
/// in anyway (their arms then fall back to the placement default until they load).
const NEW_MODEL_WAIT: Duration = Duration::from_secs(30);

/// What admin routes get on top of `server.request_timeout`, so `POST /admin/reload` can wait
/// for new models. A call queued behind a reload that is waiting already shares its wait, and
/// may be answered 504 if the folder changed once more meanwhile (its reload still completes).
pub(crate) const RELOAD_BUDGET: Duration = NEW_MODEL_WAIT;

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reload {
    /// The folder has not changed since the catalog in force was loaded.
    Unchanged {
        /// Digest of the catalog in force.
        digest: String,
    },
    /// A new catalog is in force.
    Applied {
        /// Digest of the old catalog.
        previous: String,
        /// Digest of the new one.
        digest: String,
    },
}

/// Why the arm's model did not answer, for logs now and the `fallbacks_total{reason}` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FallbackReason {
    /// No version of the arm's model has loaded yet.
    ModelNotLoaded,
    /// The model holds no list for this user (cold start).
    UserNotInModel,
    /// Reading the model failed.
    StoreError,
    /// One arm of an interleave experiment could not answer (for any of the reasons above), so
    /// the other's list was served alone, and the page is not counted in the results.
    NotInterleaved,
}

impl FallbackReason {
    /// Every reason, in declaration order (the order [`ArmMetrics`] keeps their counters in).
    pub(crate) const ALL: [FallbackReason; 4] = [
        FallbackReason::ModelNotLoaded,
        FallbackReason::UserNotInModel,
        FallbackReason::StoreError,
        FallbackReason::NotInterleaved,
    ];

    /// The `reason` label of `fallbacks_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            FallbackReason::ModelNotLoaded => "model_not_loaded",
            FallbackReason::UserNotInModel => "user_not_in_model",
            FallbackReason::StoreError => "store_error",
            FallbackReason::NotInterleaved => "not_interleaved",
        }
    }
}

/// A served list and everything a response says about where it came from.
#[derive(Debug, Clone)]
pub(crate) struct Recommendation {
    /// The covering experiment's id, `None` on the placement default.
    pub(crate) experiment: Option<String>,
    /// The assigned arm (`"default"` when uncovered), kept on fallback so analysts see who
    /// was assigned where even when the arm could not answer.
    pub(crate) arm: String,
    /// True for QA overrides.
    pub(crate) forced: bool,
    /// Whether the experiment's results count this response (not a QA override, not a
    /// completed experiment's winner); events carrying its token are counted alike.
    pub(crate) counted: bool,
    /// The model that produced the list (the placement default after a fallback); both arms'
    /// models, comma-separated in arm order, for an interleaved list.
    pub(crate) model: String,
    /// Its version string (both, comma-separated, for an interleaved list).
    pub(crate) model_version: String,
    /// The whole ranked list, or the two teams' lists; pages are cut by
    /// [`Recommendation::page`].
    pub(crate) lists: Lists,
    /// Where the list came from: the tier that answered, or `Fallback` when the placement
    /// default answered for the arm.
    pub(crate) source: Source,
    /// Why the arm did not answer, when `source` is `Fallback`.
    pub(crate) fallback: Option<FallbackReason>,
    /// The assigned arm is paused by a guardrail: this is the control's list, counted as an
    /// exposure of the assigned arm (intent to treat).
    pub(crate) paused: bool,
    /// The counter of the arm whose list this is, when the results count it: the page's items
    /// go into its catalogue coverage.
    counter: Option<Arc<ArmCounter>>,
    /// The experiment, when this is its control's counted list and it has shadow arms to
    /// compare with it.
    shadows: Option<Arc<Experiment>>,
}

/// Comparisons of shadow arms in flight at most; more are dropped and counted (`busy`), so a
/// slow shadow model cannot pile up work behind the responses.
const SHADOW_SLOTS: usize = 64;

/// What a response's page is cut from.
#[derive(Debug, Clone)]
pub(crate) enum Lists {
    /// One arm's (or the default's) ranked list.
    One(RankedList),
    /// An interleave experiment's two arms, merged per page.
    Teams(Box<Teams>),
}

/// The two lists of an interleaved response and the seed of their merge.
#[derive(Debug, Clone)]
pub(crate) struct Teams {
    /// The experiment, whose arms name the teams.
    experiment: Arc<Experiment>,
    /// Each arm's whole list, in arm order; empty for an arm that could not answer.
    lists: [RankedList; 2],
    /// The nonce of the response's token, which seeds the merge's coin with the salt and
    /// user, so the token tells how the page was merged.
    nonce: u64,
    /// `merge_seed(salt, user, nonce)`.
    seed: u64,
    /// Both arms' counters, when the results count the page: each team's items go into its
    /// catalogue coverage.
    counters: Option<[Arc<ArmCounter>; 2]>,
}

/// Why no list could be served.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServeError {
    /// The placement is not in `placements.toml`.
    #[error("unknown placement {0:?}")]
    UnknownPlacement(String),
    /// Neither the arm's model nor the placement default could answer.
    #[error("model {model:?} is not available: {reason}")]
    ModelUnavailable {
        /// The model that failed last (the placement default).
        model: String,
        /// What went wrong.
        reason: String,
    },
}

/// Filters and paging applied after the cache, on the whole list.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PageRequest<'a> {
    /// Items per page.
    pub(crate) limit: usize,
    /// Items to skip.
    pub(crate) offset: usize,
    /// Drop items scoring below this.
    pub(crate) min_score: Option<f32>,
    /// Item ids the client already showed or does not want; a set, so filtering a list costs
    /// one lookup per item whatever the number of ids.
    pub(crate) exclude: &'a HashSet<&'a str>,
}

/// One page of a list: which of its items show, and where the page sits in the list.
#[derive(Debug)]
pub(crate) struct Page {
    /// Each item's index in its list (its team's list, when interleaved), in page order (merge
    /// order when interleaved): indices rather than references, so the page can be kept beside
    /// the lists it is cut from ([`ServedPage`]).
    positions: Vec<usize>,
    /// On an interleaved page, the team of each item; empty otherwise.
    teams: Vec<Team>,
    /// Items skipped before this page (`offset`), which its token carries so events know
    /// each item's position in the list.
    offset: u32,
    /// Items left after filters, across all pages.
    total: usize,
    /// Offset of the next page, `None` on the last one.
    next_offset: Option<usize>,
}

impl PageRequest<'_> {
    /// Whether `item` passes the filters.
    fn keeps(&self, item: &Item) -> bool {
        self.min_score.is_none_or(|min| item.score >= min) && !self.exclude.contains(&*item.id)
    }

    /// The offset asked for, as tokens carry it (the API takes at most a `u32`).
    fn page_offset(&self) -> u32 {
        u32::try_from(self.offset).unwrap_or(u32::MAX)
    }

    /// The offset of the page after one of a list of `total` items.
    fn next_offset(&self, total: usize) -> Option<usize> {
        let end = self.offset.saturating_add(self.limit);
        (end < total).then_some(end)
    }

    /// The items of `list` that pass the filters, each with its index in the list.
    fn kept<'l>(&self, list: &'l [Item]) -> impl Iterator<Item = (usize, &'l Item)> {
        list.iter().enumerate().filter(|(_, item)| self.keeps(item))
    }
}

/// Cuts one page out of `list` after the filters.
fn page(list: &[Item], request: &PageRequest<'_>) -> Page {
    let total = request.kept(list).count();
    // Sized from the count, so the page is one allocation whatever its length.
    let mut positions = Vec::with_capacity(total.saturating_sub(request.offset).min(request.limit));
    positions.extend(
        request
            .kept(list)
            .skip(request.offset)
            .take(request.limit)
            .map(|(at, _)| at),
    );
    Page {
        positions,
        teams: Vec::new(),
        offset: request.page_offset(),
        total,
        next_offset: request.next_offset(total),
    }
}

/// An item of a list and its index there, equal to another by id: what the merge deduplicates
/// on.
#[derive(Debug, Clone, Copy)]
struct Pick<'l> {
    /// Its index in its team's list.
    at: usize,
    /// The item.
    item: &'l Item,
}

impl PartialEq for Pick<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.item.id == other.item.id
    }
}

impl Eq for Pick<'_> {}

impl std::hash::Hash for Pick<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.item.id.hash(state);
    }
}

impl Teams {
    /// The two arms' names, team 0 first; validation gives an interleave experiment two arms
    /// (without them a page is signed without teams, and its events credit nothing).
    fn names(&self) -> Option<[&str; 2]> {
        match self.experiment.arms.as_slice() {
            [first, second] => Some([&first.name, &second.name]),
            _ => None,
        }
    }

    /// Filters both lists, merges them by team draft and cuts the page: filters come first so
    /// an excluded item leaves its team one pick short instead of a hole in the page.
    fn page(&self, request: &PageRequest<'_>) -> Page {
        let [a, b] = self.lists.each_ref().map(|list| {
            request
                .kept(list)
                .map(|(at, item)| Pick { at, item })
                .collect::<Vec<_>>()
        });
        let merged = team_draft(&a, &b, self.seed);
        let (positions, teams) = merged
            .iter()
            .skip(request.offset)
            .take(request.limit)
            // Teams are 0 and 1, as the token's bits carry them.
            .map(|(pick, team)| (pick.at, *team as Team))
            .unzip();
        Page {
            positions,
            teams,
            offset: request.page_offset(),
            total: merged.len(),
            next_offset: request.next_offset(merged.len()),
        }
    }
}

impl Recommendation {
    /// The page `request` asks for.
    fn page(&self, request: &PageRequest<'_>) -> Page {
        match &self.lists {
            Lists::One(list) => page(list, request),
            Lists::Teams(teams) => teams.page(request),
        }
    }

    /// The items `page` shows, in page order, each with its team on an interleaved page.
    fn items<'a>(&'a self, page: &'a Page) -> impl ExactSizeIterator<Item = (&'a Item, Option<Team>)> {
        page.positions.iter().enumerate().map(move |(i, &at)| {
            let team = page.teams.get(i).copied();
            // Pages are cut only by `Recommendation::page` and kept beside the lists they were
            // cut from, so every position is in its list, and every item of a `Teams` page has
            // a team, 0 or 1.
            let list = match &self.lists {
                Lists::One(list) => list,
                Lists::Teams(teams) => &teams.lists[usize::from(team.unwrap_or_default() & 1)],
            };
            (&list[at], team)
        })
    }
}

/// A request for one page of a user's recommendations, once read and checked: what
/// [`Gateway::serve_page`] serves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServeRequest<'a> {
    /// The user, a valid id.
    pub(crate) user: &'a str,
    /// The placement asked for, which may not exist.
    pub(crate) placement: &'a str,
    /// The page and its filters.
    pub(crate) page: PageRequest<'a>,
    /// The request's `X-Request-Id`, which the exposure row carries.
    pub(crate) request_id: &'a str,
    /// When the request arrived: the response time counted for the arm runs from there.
    pub(crate) started: Instant,
}

/// One page served and counted: what the response shows.
#[derive(Debug)]
pub(crate) struct ServedPage {
    /// The list the page was cut from, and what the response says about where it came from.
    pub(crate) recommendation: Recommendation,
    /// Which of its items the page shows.
    page: Page,
    /// The page's signed claims, which events bring back.
    pub(crate) tracking_token: String,
}

impl ServedPage {
    /// The page's items, in page order, each with the arm of its team on an interleaved page.
    pub(crate) fn items(&self) -> impl Iterator<Item = (&Item, Option<&str>)> {
        let arms = match &self.recommendation.lists {
            Lists::One(_) => None,
            Lists::Teams(teams) => Some(&teams.experiment.arms),
        };
        self.recommendation.items(&self.page).map(move |(item, team)| {
            let arm = arms.zip(team).and_then(|(arms, team)| arms.get(usize::from(team)));
            (item, arm.map(|arm| arm.name.as_str()))
        })
    }

    /// How many items the page shows.
    pub(crate) fn len(&self) -> usize {
        self.page.positions.len()
    }

    /// Items left after the filters, across all pages.
    pub(crate) fn total(&self) -> usize {
        self.page.total
    }

    /// Offset of the next page, `None` on the last one.
    pub(crate) fn next_offset(&self) -> Option<usize> {
        self.page.next_offset
    }
}

impl Gateway {
    /// A gateway over a catalog loaded from `experiments_dir` (re-read on reload) and the
    /// services it uses.
    pub(crate) fn new(catalog: Catalog, experiments_dir: PathBuf, parts: Parts) -> Self {
        let Parts {
            models,
            cache,
            metrics,
            events,
            tally,
            redis,
            eviction,
            logs,
            guard_redis,
        } = parts;
        let arms = ArmIndex::resolve(&metrics, &catalog);
        for rejection in Rejection::ALL {
            metrics.track_rejection(rejection.as_str());
        }
        metrics.experiments_loaded(None, catalog.digest());
        // Loaded by the first poll, which runs as soon as polling starts.
        models.track_covariates(&catalog.covariates());
        Gateway {
            counters: ArcSwap::from_pointee(counters(&tally, &models, &catalog)),
            catalog: ArcSwap::from_pointee(catalog),
            models,
            cache,
            metrics,
            arms: ArcSwap::from_pointee(arms),
            events,
            tally,
            redis,
            eviction,
            logs,
            experiments_dir,
            reloading: tokio::sync::Mutex::new(()),
            rejected: ArcSwapOption::empty(),
            shadow_slots: Arc::new(tokio::sync::Semaphore::new(SHADOW_SLOTS)),
            guard: Guard::new(guard_redis),
        }
    }

    /// Re-reads the experiments folder and, when it changed and validates, swaps the new
    /// catalog in: new models are loaded first, in-flight requests finish on the catalog they
    /// started with, and models no experiment references any more are dropped. A folder that
    /// fails validation is rejected whole and the catalog in force keeps serving.
    ///
    /// The work runs in a task of its own, so a caller that stops waiting (an admin request
    /// past its time budget) cannot cut it between adding the new models and waiting for them:
    /// a reload cut there would leave the models added, and the next one, finding nothing to
    /// add, would swap the catalog in without waiting. Reloads, periodic or asked for, take
    /// turns, so one asked for while another waits for models waits with it.
    pub(crate) async fn reload(self: &Arc<Self>) -> Result<Reload, Problems> {
        let gateway = Arc::clone(self);
        tokio::spawn(async move { gateway.reload_whole().await })
            .await
            .unwrap_or_else(|e| Err(self.reload_failed(e)))
    }

    /// The work of [`Gateway::reload`], from reading the folder to the swap.
    async fn reload_whole(&self) -> Result<Reload, Problems> {
        let _reloading = self.reloading.lock().await;
        let dir = self.experiments_dir.clone();
        let loaded = tokio::task::spawn_blocking(move || Catalog::load_dir(&dir))
            .await
            .unwrap_or_else(|e| Err(self.reload_failed(e)));
        let catalog = match loaded {
            Ok(catalog) => catalog,
            Err(problems) => {
                if self.rejected.load().as_deref() != Some(&problems) {
                    tracing::error!(problems = %problems, "experiments rejected; the loaded set keeps serving");
                    self.metrics.reload_failed();
                    self.rejected.store(Some(Arc::new(problems.clone())));
                }
                return Err(problems);
            }
        };
        self.rejected.store(None);
        let previous = self.catalog.load().digest().to_string();
        if catalog.digest() == previous {
            return Ok(Reload::Unchanged { digest: previous });
        }
        let models = catalog.models();
        let tables = self.models.track_covariates(&catalog.covariates());
        if !tables.is_empty()
            && tokio::time::timeout(NEW_MODEL_WAIT, self.models.refresh_covariates(Some(&tables)))
                .await
                .is_err()
        {
            tracing::warn!(covariates = ?tables, "new covariate tables still loading; users entering meanwhile count without a pre-period row");
        }
        let added = self.models.add(&models);
        if !added.is_empty() {
            self.cache.track(added.iter().map(|m| m.location.clone())).await;
            if tokio::time::timeout(NEW_MODEL_WAIT, self.models.refresh_models(&added))
                .await
                .is_err()
            {
                tracing::warn!(models = ?added, "new models still loading; their arms fall back until they load");
            }
        }
        let digest = catalog.digest().to_string();
        self.arms.store(Arc::new(ArmIndex::resolve(&self.metrics, &catalog)));
        self.counters
            .store(Arc::new(counters(&self.tally, &self.models, &catalog)));
        self.catalog.store(Arc::new(catalog));
        self.models.retain(&models);
        self.metrics.experiments_loaded(Some(&previous), &digest);
        tracing::info!(previous = %previous, digest = %digest, "experiments reloaded");
        Ok(Reload::Applied { previous, digest })
    }

    /// A reload whose task died (a bug), as the problem it is reported as.
    fn reload_failed(&self, e: tokio::task::JoinError) -> Problems {
        Problems(vec![crate::experiment::Problem {
            file: self.experiments_dir.clone(),
            line: None,
            field: String::new(),
            message: format!("reload task failed: {e}"),
        }])
    }

    /// Reloads every `interval` (the first check after one interval).
    pub(crate) fn spawn_reloading(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let gateway = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            loop {
                ticker.tick().await;
                let Some(gateway) = gateway.upgrade() else {
                    return;
                };
                let _ = gateway.reload().await;
            }
        })
    }

    /// The results counters.
    pub(crate) fn tally(&self) -> &Arc<Tally> {
        &self.tally
    }

    /// The exposure and event logs, when `logs.root` is set.
    pub(crate) fn logs(&self) -> Option<&Arc<LogWriter>> {
        self.logs.as_ref()
    }

    /// Logs a served response as an exposure row, when logs are on: every response
    /// `recommendations_total` counts, the placement default's too (with no experiment), so
    /// the table's rows per arm are that counter's.
    fn log_exposure(&self, served: &Recommendation, request: &ServeRequest<'_>) {
        let Some(logs) = &self.logs else {
            return;
        };
        logs.exposure(Exposure {
            timestamp_us: now_us(),
            user_id: request.user.to_string(),
            experiment_id: served.experiment.clone(),
            variation_id: served.arm.clone(),
            placement: request.placement.to_string(),
            model: served.model.clone(),
            model_version: served.model_version.clone(),
            source: served.source.as_str(),
            forced: served.forced,
            request_id: request.request_id.to_string(),
        });
    }

    /// Whether every configured Redis answers (`None`: no Redis configured).
    pub(crate) fn redis_up(&self) -> Option<bool> {
        self.redis.as_ref().map(|h| h.up())
    }

    /// What holds the counts while their Redis may evict them; `None` without Redis.
    pub(crate) fn eviction(&self) -> Option<&Arc<EvictionGuard>> {
        self.eviction.as_ref()
    }

    /// Every metric family.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Handles of one arm: pre-resolved for the catalog in force, resolved now for arms it no
    /// longer has (an event whose token predates a change of experiments).
    fn arm_metrics(&self, placement: &str, experiment: Option<&str>, arm: &str) -> Arc<ArmMetrics> {
        let experiment = experiment.unwrap_or(NONE);
        match self.arms.load().get(placement, experiment, arm) {
            Some(handles) => Arc::clone(handles),
            None => Arc::new(ArmMetrics::resolve(&self.metrics, placement, experiment, arm, false)),
        }
    }

    /// The tracking token of a served recommendation, binding the `page` it showed (and, when
    /// interleaved, each item's team and the nonce the merge was seeded with).
    fn tracking_token(&self, served: &Recommendation, request: &ServeRequest<'_>, page: &Page) -> String {
        let (nonce, teams) = match &served.lists {
            Lists::One(_) => (next_nonce(), None),
            Lists::Teams(teams) => {
                let teams_ref = teams.names().map(|names| TeamsRef {
                    names,
                    of_items: &page.teams,
                });
                (teams.nonce, teams_ref)
            }
        };
        let signer = self.events.signer();
        signer.sign(ClaimsRef {
            placement: request.placement,
            experiment: served.experiment.as_deref(),
            arm: &served.arm,
            model_version: &served.model_version,
            user: request.user,
            issued_at: unix_seconds(SystemTime::now()),
            nonce,
            uncounted: !served.counted,
            items: served.items(page).map(|(item, _)| signer.item_tag(&item.id)),
            teams,
            offset: page.offset,
        })
    }

    /// Counts an exposure of `user` to an arm, and returns the arm's counter.
    fn expose(&self, experiment: &Arc<Experiment>, arm: &Arm, user: &str) -> Arc<ArmCounter> {
        let counter = self.counter(experiment, arm);
        self.tally.expose(&counter, user);
        counter
    }

    /// An arm's results counter: the one resolved with the catalog, or (a request that began
    /// on a catalog since replaced) the arm's counter found by name.
    fn counter(&self, experiment: &Arc<Experiment>, arm: &Arm) -> Arc<ArmCounter> {
        let counters = self.counters.load();
        let resolved = counters
            .get(&experiment.id)
            .filter(|(resolved_for, _)| Arc::ptr_eq(resolved_for, experiment))
            .and_then(|(_, arms)| arms.get(experiment.arms.iter().position(|a| std::ptr::eq(a, arm))?));
        match resolved {
            Some(counter) => Arc::clone(counter),
            None => self.tally.arm(&experiment.id, &arm.name),
        }
    }

    /// What a served page leaves behind once it is cut: its items in the serving arm's
    /// catalogue coverage, and, for a control's page, the comparisons of the experiment's
    /// shadow arms, sampled and in the background, so the response never waits for them.
    fn after_page(self: &Arc<Self>, served: &ServedPage, request: &ServeRequest<'_>) {
        let recommendation = &served.recommendation;
        let items = || recommendation.items(&served.page);
        match (&recommendation.lists, &recommendation.counter) {
            (Lists::One(_), Some(counter)) => counter.served_items(items().map(|(item, _)| &*item.id)),
            (Lists::Teams(teams), _) => {
                if let Some(counters) = &teams.counters {
                    for (item, team) in items() {
                        if let Some(counter) = team.and_then(|team| counters.get(usize::from(team))) {
                            counter.served_items([&*item.id]);
                        }
                    }
                }
            }
            _ => {}
        }
        let (Some(experiment), Lists::One(control)) = (&recommendation.shadows, &recommendation.lists) else {
            return;
        };
        let limit = request.page.limit;
        for (index, arm) in experiment.arms.iter().enumerate() {
            if !arm.shadow.is_some_and(sampled) {
                continue;
            }
            let handles = self.arm_metrics(request.placement, Some(&experiment.id), &arm.name);
            let Some(shadow) = handles.shadow() else {
                continue;
            };
            let Ok(permit) = Arc::clone(&self.shadow_slots).try_acquire_owned() else {
                shadow.busy.inc();
                continue;
            };
            let (gateway, experiment, control) = (Arc::clone(self), Arc::clone(experiment), Arc::clone(control));
            let user = request.user.to_string();
            tokio::spawn(async move {
                let _permit = permit;
                let (Some(arm), Some(shadow)) = (experiment.arms.get(index), handles.shadow()) else {
                    return;
                };
                let Ok((_, list, _)) = gateway.read_arm(arm, &user).await else {
                    shadow.no_list.inc();
                    return;
                };
                fn ids(list: &RankedList, limit: usize) -> Vec<&str> {
                    list.iter().take(limit).map(|item| &*item.id).collect()
                }
                let (mine, theirs) = (ids(&list, limit), ids(&control, limit));
                // The depth both lists reach is what was compared, and what the shadow's
                // coverage counts.
                let depth = mine.len().min(theirs.len());
                match overlap(mine.iter().copied(), theirs, limit) {
                    Some(o) => {
                        gateway
                            .counter(&experiment, arm)
                            .compared(o, mine[..depth].iter().copied());
                        shadow.compared(o);
                    }
                    None => shadow.no_list.inc(),
                }
            });
        }
    }

    /// Checks a batch of events and counts the accepted ones for the arm in their token: in the
    /// results (see [`EventLog::accept`]) and, unless a retry of one counted before, in the
    /// metrics.
    pub(crate) async fn record_events(&self, events: &[Event<'_>]) -> Vec<Result<(), Rejection>> {
        let catalog = self.catalog.load_full();
        let holdout = |placement: &str| Some(catalog.placement(placement)?.holdout.as_ref()?.id.clone());
        let results = self
            .events
            .accept(events, SystemTime::now(), &self.tally, holdout)
            .await;
        results
            .into_iter()
            .zip(events)
            .map(|(result, event)| {
                let accepted = result.inspect_err(|r| self.metrics.event_rejected(r.as_str()))?;
                if accepted.fresh {
                    let claims = &accepted.claims;
                    let arm = self.arm_metrics(&claims.placement, claims.experiment.as_deref(), &claims.arm);
                    match accepted.kind {
                        EventKind::Impression => arm.impression(accepted.bucket),
                        EventKind::Click => arm.click(accepted.bucket),
                    }
                    if let Some(logs) = &self.logs {
                        logs.event(event_row(accepted, event.item_id));
                    }
                }
                Ok(())
            })
            .collect()
    }

    /// The cache tiers.
    pub(crate) fn cache(&self) -> &Arc<TieredCache> {
        &self.cache
    }

    /// The experiment set in force.
    pub(crate) fn catalog(&self) -> arc_swap::Guard<Arc<Catalog>> {
        self.catalog.load()
    }

    /// Why the experiments folder was last rejected, while it stays rejected.
    pub(crate) fn rejected(&self) -> Option<Arc<Problems>> {
        self.rejected.load_full()
    }

    /// The model registry (shared with the poller).
    pub(crate) fn models(&self) -> &Arc<ModelRegistry> {
        &self.models
    }

    /// Serves one page of `request.user`'s recommendations on `request.placement`: assigns the
    /// user, reads the list through the cache (the placement default standing in for an arm
    /// that cannot answer), cuts the page, signs its token, and counts it: in the arm's metrics
    /// and, with logs on, as an exposure row. All in one call, so a response is never counted
    /// in `recommendations_total` without its exposure row (ARCHITECTURE.md §9), whatever its
    /// caller does; the caller renders what it returns.
    pub(crate) async fn serve_page(self: &Arc<Self>, request: &ServeRequest<'_>) -> Result<ServedPage, ServeError> {
        let recommendation = self.recommend(request.user, request.placement).await?;
        let page = recommendation.page(&request.page);
        let tracking_token = self.tracking_token(&recommendation, request, &page);
        let served = ServedPage {
            recommendation,
            page,
            tracking_token,
        };
        self.after_page(&served, request);
        let recommendation = &served.recommendation;
        self.arm_metrics(
            request.placement,
            recommendation.experiment.as_deref(),
            &recommendation.arm,
        )
        .served(served.len(), recommendation.fallback, request.started.elapsed());
        self.log_exposure(recommendation, request);
        Ok(served)
    }

    /// The whole ranked list for `user` on `placement`, with its provenance.
    async fn recommend(&self, user: &str, placement: &str) -> Result<Recommendation, ServeError> {
        let catalog = self.catalog.load_full();
        let assignment = catalog
            .assign(placement, user, SystemTime::now())
            .ok_or_else(|| ServeError::UnknownPlacement(placement.to_string()))?;
        let served = self.serve(&assignment, user).await?;
        // Everyone on a placement with a holdout who is not held out is its `exposed` arm,
        // whatever serves them: the holdout measures all of it together.
        if let Some(holdout) = &assignment.placement.holdout
            && !matches!(assignment.reason, Reason::Holdout { .. })
            && let Some(exposed) = holdout.arms.get(1)
        {
            self.expose(holdout, exposed, user);
        }
        Ok(served)
    }

    /// What `assignment` serves `user`.
    async fn serve(&self, assignment: &Assignment<'_>, user: &str) -> Result<Recommendation, ServeError> {
        let default = &assignment.placement.default_model;
        // A paused arm's users get the control's list; everything else about them stays.
        let paused = match (assignment.experiment, assignment.arm) {
            (Some(experiment), Some(arm)) if experiment.guardrails.is_some() => {
                self.guard.is_paused(&experiment.id, &arm.name)
            }
            _ => false,
        };
        let served =
            |model: &LoadedModel, spec: &ModelSpec, list: RankedList, source, fallback: Option<FallbackReason>| {
                // An exposure of the assigned arm, even when the default (or, paused, the
                // control) answered for it: results compare arms as assigned (intent to treat).
                // Its coverage counts only its own lists.
                let (mut counter, mut shadows) = (None, None);
                if let (true, Some(experiment), Some(arm)) =
                    (assignment.counted(), assignment.experiment, assignment.arm)
                {
                    let exposed = self.expose(experiment, arm, user);
                    if fallback.is_none() && !paused {
                        counter = Some(exposed);
                        let is_control = experiment
                            .arms
                            .first()
                            .is_some_and(|control| std::ptr::eq(control, arm));
                        if is_control && experiment.arms.iter().any(|a| a.shadow.is_some()) {
                            shadows = Some(Arc::clone(experiment));
                        }
                    }
                }
                Recommendation {
                    experiment: assignment.experiment.map(|e| e.id.clone()),
                    arm: assignment.arm_name().to_string(),
                    forced: assignment.forced,
                    counted: assignment.counted(),
                    model: spec.location.clone(),
                    model_version: model.version().to_string(),
                    lists: Lists::One(list),
                    source,
                    fallback,
                    paused,
                    counter,
                    shadows,
                }
            };
        if let Some((experiment, arms)) = assignment.interleaved() {
            // Boxed: two arms' reads at once make a future twice a split request's, which
            // every request would otherwise carry.
            return Box::pin(self.interleave(assignment, experiment, arms, user)).await;
        }

        let serving = match (paused, assignment.experiment) {
            (true, Some(experiment)) => experiment.arms.first(),
            _ => assignment.arm,
        };
        let (arm, spec) = match serving {
            Some(arm) if arm.model != *default => (arm, &arm.model),
            // Users on the default (and arms serving the default model) have no other tier to
            // fall back to: their primary source is the default itself.
            _ => {
                let model = self.loaded(default)?;
                let (list, tier) = self.read_default(&model, default, user).await?;
                return Ok(served(&model, default, list, tier, None));
            }
        };
        let reason = match self.read_arm(arm, user).await {
            Ok((model, list, tier)) => return Ok(served(&model, spec, list, tier, None)),
            Err(reason) => reason,
        };
        let model = self.loaded(default)?;
        let (list, _) = self.read_default(&model, default, user).await?;
        Ok(served(&model, default, list, Source::Fallback, Some(reason)))
    }

    /// An arm's list for `user` through the cache, with the model version that produced it, or
    /// why it has none.
    async fn read_arm(&self, arm: &Arm, user: &str) -> Result<(Arc<LoadedModel>, RankedList, Source), FallbackReason> {
        let spec = &arm.model;
        let model = self.models.get(spec).ok_or(FallbackReason::ModelNotLoaded)?;
        match self.cache.list(&spec.location, &model, user, arm.cache_ttl).await {
            Ok((Some(list), tier)) => Ok((model, list, tier)),
            Ok((None, _)) => Err(FallbackReason::UserNotInModel),
            Err(e) => {
                tracing::warn!(model = %spec.location, error = %e, "model read failed; serving without this arm");
                Err(FallbackReason::StoreError)
            }
        }
    }

    /// An interleave experiment's response: both arms' lists, read at once. With one arm
    /// unable to answer, the other's list is served alone (`not_interleaved`, not counted: a
    /// page one team fills says nothing of which the user prefers); with neither, the placement
    /// default, as for a split arm.
    async fn interleave(
        &self,
        assignment: &Assignment<'_>,
        experiment: &Arc<Experiment>,
        [first, second]: [&Arm; 2],
        user: &str,
    ) -> Result<Recommendation, ServeError> {
        let (a, b) = tokio::join!(self.read_arm(first, user), self.read_arm(second, user));
        let nonce = next_nonce();
        // Both teams are exposed only when both answered: a page one team fills is not counted.
        let counters = match (&a, &b) {
            (Ok(_), Ok(_)) => Some([first, second].map(|arm| self.expose(experiment, arm, user))),
            _ => None,
        };
        let recommendation =
            |lists, model: String, model_version: String, source, fallback: Option<FallbackReason>| Recommendation {
                experiment: Some(experiment.id.clone()),
                arm: assignment.arm_name().to_string(),
                forced: false,
                counted: fallback.is_none(),
                model,
                model_version,
                lists: Lists::Teams(Box::new(Teams {
                    experiment: Arc::clone(experiment),
                    lists,
                    nonce,
                    seed: merge_seed(&experiment.salt, user, nonce),
                    counters: counters.clone(),
                })),
                source,
                fallback,
                paused: false,
                counter: None,
                shadows: None,
            };
        let empty = || RankedList::from(Vec::new());
        let served = match (a, b) {
            (Ok((model_a, list_a, tier_a)), Ok((model_b, list_b, tier_b))) => recommendation(
                [list_a, list_b],
                format!("{},{}", first.model.location, second.model.location),
                format!("{},{}", model_a.version(), model_b.version()),
                tier_a.max(tier_b),
                None,
            ),
            (Ok((model, list, tier)), Err(_)) => recommendation(
                [list, empty()],
                first.model.location.clone(),
                model.version().to_string(),
                tier,
                Some(FallbackReason::NotInterleaved),
            ),
            (Err(_), Ok((model, list, tier))) => recommendation(
                [empty(), list],
                second.model.location.clone(),
                model.version().to_string(),
                tier,
                Some(FallbackReason::NotInterleaved),
            ),
            (Err(_), Err(reason)) => {
                let default = &assignment.placement.default_model;
                let model = self.loaded(default)?;
                let (list, _) = self.read_default(&model, default, user).await?;
                Recommendation {
                    experiment: Some(experiment.id.clone()),
                    arm: assignment.arm_name().to_string(),
                    forced: false,
                    counted: false,
                    model: default.location.clone(),
                    model_version: model.version().to_string(),
                    lists: Lists::One(list),
                    source: Source::Fallback,
                    fallback: Some(reason),
                    paused: false,
                    counter: None,
                    shadows: None,
                }
            }
        };
        Ok(served)
    }

    fn loaded(&self, spec: &ModelSpec) -> Result<Arc<LoadedModel>, ServeError> {
        self.models.get(spec).ok_or_else(|| ServeError::ModelUnavailable {
            model: spec.location.clone(),
            reason: "no version loaded yet".into(),
        })
    }

    /// Reads the placement default through the cache; a per-user default that lacks the user
    /// yields an empty list (a valid answer: there is nothing to recommend), a read error 503.
    async fn read_default(
        &self,
        model: &LoadedModel,
        spec: &ModelSpec,
        user: &str,
    ) -> Result<(RankedList, Source), ServeError> {
        match self.cache.list(&spec.location, model, user, None).await {
            Ok((list, tier)) => Ok((list.unwrap_or_else(|| Arc::from(Vec::new())), tier)),
            Err(e) => Err(ServeError::ModelUnavailable {
                model: spec.location.clone(),
                reason: e.to_string(),
            }),
        }
    }
}

/// Whether this request is in a sample of `share` (0 to 1): a hash of a process-wide counter,
/// so samples are spread evenly without a random generator on the request path.
fn sampled(share: f64) -> bool {
    static DRAWS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let draw = DRAWS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let x = xxhash_rust::xxh3::xxh3_64(&draw.to_le_bytes());
    let unit = (x >> 11) as f64 / (1u64 << 53) as f64;
    unit < share
}

/// The log row of an event counted for the first time: the counted key is its `event_id`.
fn event_row(accepted: crate::feedback::events::Accepted, item_id: &str) -> EventRow {
    use base64::Engine;
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(accepted.token);
    let claims = accepted.claims;
    EventRow {
        timestamp_us: now_us(),
        event_id: format!("{token}:{}{}", accepted.kind.code(), accepted.position),
        placement: claims.placement,
        user_id: claims.user,
        experiment_id: claims.experiment,
        variation_id: claims.arm,
        event_type: accepted.kind.as_str(),
        item_id: item_id.to_string(),
        // The place in the list, as CTR by position counts it, rather than on the page.
        position: u16::try_from(claims.offset as usize + accepted.position).unwrap_or(u16::MAX),
    }
}

/// Resolves the exposure counter of every arm of `catalog`.
fn counters(tally: &Tally, models: &ModelRegistry, catalog: &Catalog) -> Counters {
    catalog
        .experiments()
        .map(|experiment| {
            let covariates = experiment
                .covariates
                .as_ref()
                .and_then(|spec| models.covariate_slot(spec));
            let arms = experiment
                .arms
                .iter()
                .map(|arm| {
                    let counter = tally.arm(&experiment.id, &arm.name);
                    counter.use_covariates(covariates.clone());
                    counter
                })
                .collect();
            (experiment.id.clone(), (Arc::clone(experiment), arms))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(n: u32) -> Vec<Item> {
        (1..=n)
            .map(|r| Item {
                id: format!("i{r}").into(),
                score: 10.0 - r as f32,
                rank: r,
            })
            .collect()
    }

    #[test]
    fn pages_after_filters_and_keeps_model_ranks() {
        let items = list(10);
        let exclude = HashSet::from(["i2"]);
        let request = PageRequest {
            limit: 3,
            offset: 0,
            min_score: Some(2.5),
            exclude: &exclude,
        };
        let ids = |page: &Page| page.positions.iter().map(|&at| &*items[at].id).collect::<Vec<_>>();
        let first = page(&items, &request);
        assert_eq!(first.total, 6, "i1..i7 score >= 2.5, minus i2");
        assert_eq!(ids(&first), ["i1", "i3", "i4"]);
        assert_eq!(items[first.positions[1]].rank, 3);
        assert_eq!(first.next_offset, Some(3));
        let last = page(&items, &PageRequest { offset: 3, ..request });
        assert_eq!(ids(&last), ["i5", "i6", "i7"]);
        assert_eq!(last.next_offset, None);
        let beyond = page(&items, &PageRequest { offset: 50, ..request });
        assert!(beyond.positions.is_empty());
        assert_eq!(beyond.next_offset, None);
    }
}
