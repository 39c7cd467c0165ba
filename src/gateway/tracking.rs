//! What ties a served page to what follows it: its tracking token (ARCHITECTURE.md §5), its
//! exposure counted for the results (§8) and logged (§9), its items in the arm's catalogue
//! coverage, and the events that come back with the token, checked and counted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use super::Gateway;
use super::page::Page;
use super::recommend::{Lists, Recommendation};
use super::serve::{ServeRequest, ServedPage};
use crate::experiment::{Arm, Catalog, Experiment};
use crate::feedback::counts::{ArmCounter, Tally};
use crate::feedback::events::{Accepted, Event, EventKind, Rejection};
use crate::feedback::token::{ClaimsRef, TeamsRef, next_nonce, unix_seconds};
use crate::logs::{EventRow, Exposure, now_us};
use crate::store::ModelRegistry;

/// Exposure counters of the catalog in force, by experiment id: the experiment they were
/// resolved for (a request may still hold the catalog before a swap) and one per arm, in arm
/// order.
pub(super) type Counters = HashMap<String, (Arc<Experiment>, Vec<Arc<ArmCounter>>)>;

impl Gateway {
    /// The tracking token of a served recommendation, binding the `page` it showed (and, when
    /// interleaved, each item's team and the nonce the merge was seeded with).
    pub(super) fn tracking_token(&self, served: &Recommendation, request: &ServeRequest<'_>, page: &Page) -> String {
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
    pub(super) fn expose(&self, experiment: &Arc<Experiment>, arm: &Arm, user: &str) -> Arc<ArmCounter> {
        let counter = self.counter(experiment, arm);
        self.tally.expose(&counter, user);
        counter
    }

    /// An arm's results counter: the one resolved with the catalog, or (a request that began
    /// on a catalog since replaced) the arm's counter found by name.
    pub(super) fn counter(&self, experiment: &Arc<Experiment>, arm: &Arm) -> Arc<ArmCounter> {
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

    /// Puts the page's items in the catalogue coverage of the arm whose list it is (each
    /// team's items in its arm's, when interleaved), when the results count the page.
    pub(super) fn cover(&self, served: &ServedPage) {
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
    }

    /// Logs a served response as an exposure row, when logs are on: every response
    /// `recommendations_total` counts, the placement default's too (with no experiment), so
    /// the table's rows per arm are that counter's.
    pub(super) fn log_exposure(&self, served: &Recommendation, request: &ServeRequest<'_>) {
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

    /// Checks a batch of events and counts the accepted ones for the arm in their token: in the
    /// results (see [`EventLog::accept`](crate::feedback::events::EventLog::accept)) and,
    /// unless a retry of one counted before, in the metrics.
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
}

/// The log row of an event counted for the first time: the counted key is its `event_id`.
fn event_row(accepted: Accepted, item_id: &str) -> EventRow {
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
pub(super) fn counters(tally: &Tally, models: &ModelRegistry, catalog: &Catalog) -> Counters {
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
