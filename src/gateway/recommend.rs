//! What list a request gets: the user assigned on the placement (ARCHITECTURE.md §3.1), the
//! arm's list read through the cache, the placement default when the arm cannot answer (or,
//! paused by a guardrail, the control's list), both arms' lists for an interleave experiment;
//! and each counted response's exposure, counted for the arm assigned.

use std::sync::Arc;
use std::time::SystemTime;

use super::Gateway;
use crate::cache::Source;
use crate::experiment::{Arm, Assignment, Experiment, Reason, merge_seed};
use crate::feedback::counts::ArmCounter;
use crate::feedback::token::next_nonce;
use crate::store::{LoadedModel, ModelSpec, RankedList};

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
    /// Every reason, in declaration order (the order [`ArmMetrics`](super::ArmMetrics) keeps
    /// their counters in).
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
    pub(super) counter: Option<Arc<ArmCounter>>,
    /// The experiment, when this is its control's counted list and it has shadow arms to
    /// compare with it.
    pub(super) shadows: Option<Arc<Experiment>>,
}

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
    pub(super) experiment: Arc<Experiment>,
    /// Each arm's whole list, in arm order; empty for an arm that could not answer.
    pub(super) lists: [RankedList; 2],
    /// The nonce of the response's token, which seeds the merge's coin with the salt and
    /// user, so the token tells how the page was merged.
    pub(super) nonce: u64,
    /// `merge_seed(salt, user, nonce)`.
    pub(super) seed: u64,
    /// Both arms' counters, when the results count the page: each team's items go into its
    /// catalogue coverage.
    pub(super) counters: Option<[Arc<ArmCounter>; 2]>,
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

impl Gateway {
    /// The whole ranked list for `user` on `placement`, with its provenance.
    pub(super) async fn recommend(&self, user: &str, placement: &str) -> Result<Recommendation, ServeError> {
        let catalog = self.catalog.load_full();
        let assignment = catalog
            .assign(placement, user, SystemTime::now())
            .ok_or_else(|| ServeError::UnknownPlacement(placement.to_string()))?;
        let served = self.serve_assignment(&assignment, user).await?;
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
    async fn serve_assignment(&self, assignment: &Assignment<'_>, user: &str) -> Result<Recommendation, ServeError> {
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
    pub(super) async fn read_arm(
        &self,
        arm: &Arm,
        user: &str,
    ) -> Result<(Arc<LoadedModel>, RankedList, Source), FallbackReason> {
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
