//! The catalog in force and its swaps: the experiments folder re-read (every
//! `experiments.reload_interval`, or when `POST /admin/reload` asks), validated whole, its new
//! models loaded first, then swapped in with everything resolved for it (ARCHITECTURE.md §3).
//! A rejected folder leaves the catalog in force serving.

use std::sync::Arc;
use std::time::Duration;

use super::Gateway;
use super::arm_metrics::ArmIndex;
use super::tracking::counters;
use crate::experiment::{Catalog, Problems};

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

impl Gateway {
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
}
