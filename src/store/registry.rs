//! Every model the catalog references, each in a slot holding its current version. Readers
//! take the current version with one atomic load; the poller swaps in new versions and keeps
//! the old one whenever a new one fails, so a bad Spark run never takes an arm down.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};

use super::covariates::{CovariateSpec, CovariateTable};
use super::layout::{Committed, committed_at};
use super::location::Locator;
use super::snapshot::{Snapshot, SnapshotSettings, path_for};
use super::{LoadedModel, ModelSpec, StoreError};
use crate::metrics::Metrics;

/// One model's current version and what went wrong last.
#[derive(Debug, Default)]
struct Slot {
    /// The version requests read; `None` until a first version loads.
    current: ArcSwapOption<LoadedModel>,
    /// Error and failed version, only touched by the poller and `/ready`.
    state: Mutex<SlotState>,
    /// The slot's poller, stopped when the model leaves the catalog.
    poller: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(poller) = self.poller.get_mut().unwrap_or_else(|p| p.into_inner()).take() {
            poller.abort();
        }
    }
}

#[derive(Debug, Default)]
struct SlotState {
    /// The last problem, cleared once the model is current again.
    error: Option<String>,
    /// A version that failed to load, not retried until the marker changes again.
    failed_version: Option<String>,
}

impl SlotState {
    /// Records the outcome of a check: the problem, if any, and the version that failed to
    /// load, if one did.
    fn record(state: &Mutex<SlotState>, error: Option<String>, failed_version: Option<String>) {
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        state.error = error;
        if failed_version.is_some() {
            state.failed_version = failed_version;
        }
    }
}

/// What `/ready` and operators see of one model.
#[derive(Debug, Clone)]
pub struct ModelStatus {
    /// The model as experiments name it.
    pub location: String,
    /// The version serving, if any.
    pub version: Option<String>,
    /// `nested`, `long` or `global`, once loaded.
    pub shape: Option<&'static str>,
    /// Users in the index of the serving version.
    pub users: usize,
    /// The last problem, e.g. a newer version that failed to load.
    pub error: Option<String>,
    /// `snapshot`, `pages` or `memory`, once loaded.
    pub serving: Option<&'static str>,
    /// Why the serving version is not read from a snapshot (being built, too large, off).
    pub snapshot: Option<String>,
    /// Size of the serving version's snapshot file.
    pub(crate) snapshot_bytes: Option<usize>,
}

type Slots = HashMap<ModelSpec, Arc<Slot>>;

/// One covariate table's current version and what went wrong last; the counters of its
/// experiment hold it to look users up.
#[derive(Debug, Default)]
pub(crate) struct CovariateSlot {
    /// The version users entering an arm are looked up in; `None` until a first one loads.
    current: ArcSwapOption<CovariateTable>,
    /// Error and failed version, only touched by the poller and `/ready`.
    state: Mutex<SlotState>,
}

impl CovariateSlot {
    /// The user's pre-period row. A user entering while no version is loaded has none, as
    /// a user missing from the table: that costs precision (their pre-period explains
    /// nothing), never bias, since the table does not depend on the arm.
    pub(crate) fn get(&self, user: crate::feedback::users::UserKey) -> Option<crate::feedback::sums::PrePeriod> {
        self.current.load().as_ref()?.get(user)
    }
}

type CovariateSlots = HashMap<CovariateSpec, Arc<CovariateSlot>>;

/// All model slots and the resolver of their locations.
#[derive(Debug)]
pub struct ModelRegistry {
    /// Resolves locations against `models.root`.
    locator: Locator,
    /// One slot per model the catalog in force references; replaced whole when the catalog
    /// changes, so readers never lock.
    slots: ArcSwap<Slots>,
    /// Serialises changes to `slots`.
    changing: Mutex<()>,
    /// The polling interval once [`ModelRegistry::spawn_polling`] ran: models added later are
    /// polled too.
    polling: Mutex<Option<Duration>>,
    /// Where load failures are counted.
    metrics: Metrics,
    /// Where serving snapshots go; off unless [`ModelRegistry::with_snapshots`] says.
    snapshots: SnapshotSettings,
    /// One slot per covariate table the catalog in force references, replaced whole like
    /// `slots`.
    covariates: ArcSwap<CovariateSlots>,
    /// The task polling the covariate tables, once polling runs.
    covariate_poller: Mutex<Option<tokio::task::AbortHandle>>,
}

impl ModelRegistry {
    /// Creates empty slots for `models`; nothing is read until [`ModelRegistry::refresh`].
    pub fn new(root: &str, models: impl IntoIterator<Item = ModelSpec>, metrics: Metrics) -> Result<Self, StoreError> {
        let slots: Slots = models.into_iter().map(|spec| (spec, Arc::default())).collect();
        for spec in slots.keys() {
            metrics.track_model(&spec.location);
        }
        Ok(ModelRegistry {
            locator: Locator::new(root)?,
            slots: ArcSwap::from_pointee(slots),
            changing: Mutex::default(),
            polling: Mutex::default(),
            metrics,
            snapshots: SnapshotSettings::default(),
            covariates: ArcSwap::default(),
            covariate_poller: Mutex::default(),
        })
    }

    /// Builds a serving snapshot of every loaded version of a per-user model (unless its spec
    /// says not to) in `settings.dir`.
    pub fn with_snapshots(mut self, settings: SnapshotSettings) -> Self {
        self.snapshots = settings;
        self
    }

    /// The serving version of `model`, if one is loaded.
    pub fn get(&self, model: &ModelSpec) -> Option<Arc<LoadedModel>> {
        self.slots.load().get(model)?.current.load_full()
    }

    /// Whether every model has a serving version.
    pub fn all_loaded(&self) -> bool {
        self.slots.load().values().all(|slot| slot.current.load().is_some())
    }

    /// A snapshot of every model, sorted by location.
    pub fn status(&self) -> Vec<ModelStatus> {
        let mut out: Vec<ModelStatus> = self
            .slots
            .load()
            .iter()
            .map(|(spec, slot)| {
                let current = slot.current.load_full();
                let state = slot.state.lock().unwrap_or_else(|p| p.into_inner());
                ModelStatus {
                    location: spec.location.clone(),
                    version: current.as_ref().map(|m| m.version().to_string()),
                    shape: current.as_ref().map(|m| m.shape()),
                    users: current.as_ref().map_or(0, |m| m.indexed_users()),
                    error: state.error.clone(),
                    serving: current.as_ref().map(|m| m.serving()),
                    snapshot: current.as_ref().and_then(|m| m.snapshot_note()),
                    snapshot_bytes: current.as_ref().and_then(|m| m.snapshot_bytes()),
                }
            })
            .chain(self.covariates.load().iter().map(|(spec, slot)| {
                let current = slot.current.load_full();
                let state = slot.state.lock().unwrap_or_else(|p| p.into_inner());
                ModelStatus {
                    location: spec.location.clone(),
                    version: current.as_ref().map(|t| t.version().to_string()),
                    shape: current.as_ref().map(|_| "covariates"),
                    users: current.as_ref().map_or(0, |t| t.users()),
                    error: state.error.clone(),
                    serving: current.as_ref().map(|t| if t.mapped() { "snapshot" } else { "memory" }),
                    snapshot: None,
                    snapshot_bytes: None,
                }
            }))
            .collect();
        out.sort_by(|a, b| a.location.cmp(&b.location));
        out
    }

    /// Tracks exactly the covariate tables in `specs` (tables already tracked keep their
    /// loaded versions) and returns the new ones, which the next poll loads; see
    /// [`ModelRegistry::refresh_covariates`] to load them at once.
    pub(crate) fn track_covariates(&self, specs: &[CovariateSpec]) -> Vec<CovariateSpec> {
        let _changing = self.changing.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.covariates.load_full();
        let added: Vec<CovariateSpec> = specs.iter().filter(|s| !current.contains_key(*s)).cloned().collect();
        let slots: CovariateSlots = specs
            .iter()
            .map(|spec| (spec.clone(), current.get(spec).cloned().unwrap_or_default()))
            .collect();
        self.covariates.store(Arc::new(slots));
        added
    }

    /// The slot of a tracked covariate table.
    pub(crate) fn covariate_slot(&self, spec: &CovariateSpec) -> Option<Arc<CovariateSlot>> {
        self.covariates.load().get(spec).cloned()
    }

    /// Checks the given tracked covariate tables (all when `None`) and loads versions that
    /// changed, concurrently.
    pub(crate) async fn refresh_covariates(&self, only: Option<&[CovariateSpec]>) {
        let slots = self.covariates.load_full();
        let wanted = slots
            .iter()
            .filter(|(spec, _)| only.is_none_or(|only| only.contains(spec)));
        futures::future::join_all(wanted.map(|(spec, slot)| self.refresh_covariate(spec, slot))).await;
    }

    /// Loads a new committed version of one covariate table, on a blocking thread (it reads
    /// and sorts the whole table); a version that fails keeps the previous one in force.
    async fn refresh_covariate(&self, spec: &CovariateSpec, slot: &CovariateSlot) {
        let record = |error, failed_version| SlotState::record(&slot.state, error, failed_version);
        let current = slot.current.load_full();
        let in_force = current.as_ref().map(|t| t.version());
        let Some(committed) = self.version_to_load(&spec.location, in_force, &slot.state).await else {
            return;
        };
        let version = committed.version.clone();
        let (dir, for_spec, runtime) = (
            self.snapshots.dir.clone(),
            spec.clone(),
            tokio::runtime::Handle::current(),
        );
        let started = std::time::Instant::now();
        let loaded = tokio::task::spawn_blocking(move || {
            super::covariates::load(&committed, &for_spec, dir.as_deref().ok(), &runtime)
        })
        .await;
        match loaded {
            Ok(Ok(table)) => {
                tracing::info!(covariates = %spec.location, version = %version, users = table.users(),
                    load_ms = started.elapsed().as_millis() as u64, "covariate table version loaded");
                if let Some(previous) = current {
                    previous.supersede();
                }
                slot.current.store(Some(Arc::new(table)));
                record(None, None);
            }
            Ok(Err(e)) => {
                tracing::error!(covariates = %spec.location, version = %version, error = %e,
                    "covariate table version failed to load; the previous one stays in force");
                self.metrics.model_load_failed(&spec.location);
                record(Some(format!("version {version} failed to load: {e}")), Some(version));
            }
            Err(e) => record(Some(format!("loading version {version} stopped: {e}")), None),
        }
    }

    /// Checks every model's marker and loads versions that changed, all models concurrently.
    pub async fn refresh(&self) {
        let slots = self.slots.load_full();
        futures::future::join_all(slots.iter().map(|(spec, slot)| self.refresh_one(spec, slot))).await;
    }

    /// Adds slots for models not tracked yet (polled from now on when polling runs) and
    /// returns them; slots already tracked keep their loaded versions.
    pub(crate) fn add(self: &Arc<Self>, models: &[ModelSpec]) -> Vec<ModelSpec> {
        let _changing = self.changing.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.slots.load_full();
        let added: Vec<ModelSpec> = models.iter().filter(|m| !current.contains_key(*m)).cloned().collect();
        if added.is_empty() {
            return added;
        }
        let mut slots = Slots::clone(&current);
        let interval = *self.polling.lock().unwrap_or_else(|p| p.into_inner());
        for spec in &added {
            self.metrics.track_model(&spec.location);
            let slot: Arc<Slot> = Arc::default();
            if let Some(interval) = interval {
                self.poll(spec.clone(), &slot, interval);
            }
            slots.insert(spec.clone(), slot);
        }
        self.slots.store(Arc::new(slots));
        added
    }

    /// Stops tracking models outside `models` (they left the catalog).
    pub(crate) fn retain(&self, models: &[ModelSpec]) {
        let _changing = self.changing.lock().unwrap_or_else(|p| p.into_inner());
        let mut slots = Slots::clone(&self.slots.load_full());
        slots.retain(|spec, _| models.contains(spec));
        self.slots.store(Arc::new(slots));
    }

    /// Loads the given tracked models now (e.g. models a new catalog brings), concurrently.
    pub(crate) async fn refresh_models(&self, models: &[ModelSpec]) {
        let slots = self.slots.load_full();
        let wanted = models
            .iter()
            .filter_map(|spec| slots.get(spec).map(|slot| (spec, slot)));
        futures::future::join_all(wanted.map(|(spec, slot)| self.refresh_one(spec, slot))).await;
    }

    /// Polls every model at `interval`, each in its own task so a slow name node or a large
    /// load delays only its own model; the first check runs at once. Models added later are
    /// polled from when they are added; a model's poller stops when it leaves the catalog.
    pub(crate) fn spawn_polling(self: &Arc<Self>, interval: Duration) {
        *self.polling.lock().unwrap_or_else(|p| p.into_inner()) = Some(interval);
        for (spec, slot) in self.slots.load().iter() {
            self.poll(spec.clone(), slot, interval);
        }
        // Covariate tables change once per experiment, if ever: one task polls them all.
        let registry = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(registry) = registry.upgrade() else {
                    return;
                };
                registry.refresh_covariates(None).await;
            }
        });
        *self.covariate_poller.lock().unwrap_or_else(|p| p.into_inner()) = Some(task.abort_handle());
    }

    /// Stops every poller (shutdown).
    pub(crate) fn stop_polling(&self) {
        *self.polling.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if let Some(poller) = self.covariate_poller.lock().unwrap_or_else(|p| p.into_inner()).take() {
            poller.abort();
        }
        for slot in self.slots.load().values() {
            if let Some(poller) = slot.poller.lock().unwrap_or_else(|p| p.into_inner()).take() {
                poller.abort();
            }
        }
    }

    fn poll(self: &Arc<Self>, spec: ModelSpec, slot: &Arc<Slot>, interval: Duration) {
        // The task holds the slot weakly: once the catalog drops the model, the slot goes and
        // the task ends with it.
        let registry = Arc::downgrade(self);
        let weak_slot = Arc::downgrade(slot);
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let (Some(registry), Some(slot)) = (registry.upgrade(), weak_slot.upgrade()) else {
                    return;
                };
                registry.refresh_one(&spec, &slot).await;
            }
        });
        *slot.poller.lock().unwrap_or_else(|p| p.into_inner()) = Some(task.abort_handle());
    }

    /// The committed version of `location` to load now, if any. `None` when it is `in_force`
    /// (the last problem cleared), when it failed before (tried again once the marker
    /// changes), or when nothing is committed or the storage does not answer (the problem
    /// recorded, and logged while nothing is in force or the storage failed).
    async fn version_to_load(
        &self,
        location: &str,
        in_force: Option<&str>,
        state: &Mutex<SlotState>,
    ) -> Option<Committed> {
        let committed = match committed_at(&self.locator, location).await {
            Ok(Ok(committed)) => committed,
            Ok(Err(message)) => {
                if in_force.is_none() {
                    tracing::warn!(location, "{message}");
                }
                SlotState::record(state, Some(message), None);
                return None;
            }
            Err(e) => {
                tracing::warn!(location, error = %e, "cannot check the version; the loaded one stays in force");
                SlotState::record(state, Some(e.to_string()), None);
                return None;
            }
        };
        if in_force == Some(committed.version.as_str()) {
            SlotState::record(state, None, None);
            return None;
        }
        let failed = state.lock().unwrap_or_else(|p| p.into_inner()).failed_version.clone();
        (failed.as_deref() != Some(committed.version.as_str())).then_some(committed)
    }

    async fn refresh_one(&self, spec: &ModelSpec, slot: &Slot) {
        let record = |error, failed_version| SlotState::record(&slot.state, error, failed_version);
        let current = slot.current.load_full();
        let in_force = current.as_ref().map(|m| m.version());
        let Some(committed) = self.version_to_load(&spec.location, in_force, &slot.state).await else {
            return;
        };
        let version = committed.version.clone();
        let uri = committed.folder.uri_of(&committed.folder.path);
        let dir = self.snapshots.dir.as_deref().ok().filter(|_| spec.snapshot);
        // A snapshot of this version already on disk (a restart) serves at once, without
        // reading the model; one that does not check out is rebuilt, never served. Checking it
        // reads all of it (up to snapshot_max_bytes), on a blocking thread: a runtime worker
        // would hold up the requests and timers queued on it meanwhile.
        if let Some(dir) = dir {
            let started = std::time::Instant::now();
            let path = path_for(dir, spec, &version);
            let (on_disk, checked) = (path.clone(), version.clone());
            let opened = tokio::task::spawn_blocking(move || Snapshot::open_existing(&on_disk, &checked))
                .await
                .unwrap_or_else(|e| Err(format!("the check stopped: {e}")));
            match opened {
                Ok(Some(snapshot)) if snapshot.file_bytes() as u64 > self.snapshots.max_bytes => {
                    tracing::info!(model = %spec.location, path = %path.display(),
                        "snapshot on disk is over models.snapshot_max_bytes; not used");
                }
                Ok(Some(snapshot)) => {
                    let model = LoadedModel::from_snapshot(uri, version, Arc::new(snapshot), started.elapsed());
                    tracing::info!(model = %spec.location, version = %model.version(), path = %path.display(),
                        load_ms = model.load_time().as_millis() as u64, "model version mapped from its snapshot");
                    self.swap(spec, slot, current.as_ref(), Arc::new(model));
                    return record(None, None);
                }
                Ok(None) => {}
                Err(problem) => {
                    tracing::warn!(model = %spec.location, path = %path.display(), problem = %problem,
                        "snapshot on disk not usable; rebuilding it from the model");
                }
            }
        }
        match LoadedModel::load(committed, &spec.columns).await {
            Ok(model) => {
                tracing::info!(
                    model = %spec.location,
                    version = %model.version(),
                    uri = %model.uri(),
                    shape = model.shape(),
                    users = model.indexed_users(),
                    index_bytes = model.index_bytes(),
                    part_files = model.part_files(),
                    load_ms = model.load_time().as_millis() as u64,
                    "model version loaded"
                );
                let model = Arc::new(model);
                if dir.is_some() && current.as_ref().is_some_and(|m| m.serving() == "snapshot") {
                    // The version in force answers from its snapshot: the new one takes over
                    // once its own is mapped (or could not be), so a swap sends no traffic to
                    // page reads — the way Voldemort swaps read-only stores.
                    self.snapshot(spec, &model, dir).await;
                    self.swap(spec, slot, current.as_ref(), model);
                    record(None, None);
                } else {
                    self.swap(spec, slot, current.as_ref(), Arc::clone(&model));
                    record(None, None);
                    self.snapshot(spec, &model, dir).await;
                }
            }
            Err(e) => {
                tracing::error!(model = %spec.location, version = %version, error = %e, "model version failed to load; the previous one keeps serving");
                self.metrics.model_load_failed(&spec.location);
                record(Some(format!("version {version} failed to load: {e}")), Some(version));
            }
        }
    }

    /// Makes `model` the serving version of `spec`; the one it replaces gives up its snapshot
    /// file once the last request using it is done.
    fn swap(&self, spec: &ModelSpec, slot: &Slot, previous: Option<&Arc<LoadedModel>>, model: Arc<LoadedModel>) {
        let old = previous.map(|m| m.version().to_string());
        self.metrics
            .model_version(&spec.location, old.as_deref(), model.version());
        self.metrics.serving_mode(&spec.location, model.serving());
        if let Some(previous) = previous {
            previous.supersede();
        }
        slot.current.store(Some(model));
    }

    /// Builds the serving snapshot of a version. A first version serves from pages meanwhile
    /// (requests are answered through the cache tiers and page reads until it is mapped); a
    /// later one is built before it is swapped in. The conversion
    /// runs on a blocking thread: it decodes the whole model, which must not hold up requests.
    async fn snapshot(&self, spec: &ModelSpec, model: &Arc<LoadedModel>, dir: Option<&std::path::Path>) {
        if model.serving() != "pages" {
            return;
        }
        let Some(dir) = dir else {
            model.set_snapshot_note(Some(match &self.snapshots.dir {
                Err(why) => format!("snapshots are off: {why}"),
                Ok(_) => "snapshot = false on an arm".to_string(),
            }));
            return;
        };
        model.set_snapshot_note(Some("snapshot being built; serving by page reads".into()));
        let started = std::time::Instant::now();
        let (building, dir, for_spec) = (Arc::clone(model), dir.to_path_buf(), spec.clone());
        let max_bytes = self.snapshots.max_bytes;
        let runtime = tokio::runtime::Handle::current();
        let built =
            tokio::task::spawn_blocking(move || runtime.block_on(building.build_snapshot(&dir, max_bytes, &for_spec)))
                .await;
        match built {
            Ok(Ok(snapshot)) => {
                tracing::info!(model = %spec.location, version = %model.version(), users = snapshot.users(),
                    bytes = snapshot.file_bytes(), build_ms = started.elapsed().as_millis() as u64,
                    "serving snapshot mapped");
                model.use_snapshot(snapshot);
            }
            Ok(Err(e)) => {
                tracing::warn!(model = %spec.location, version = %model.version(), error = %e,
                    "no serving snapshot; the version is served by page reads");
                model.set_snapshot_note(Some(e.to_string()));
            }
            Err(e) => model.set_snapshot_note(Some(format!("snapshot build stopped: {e}"))),
        }
        self.metrics.serving_mode(&spec.location, model.serving());
    }
}
