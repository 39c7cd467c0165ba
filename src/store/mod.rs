//! Model outputs: Parquet written by Spark (`recommendForAllUsers`, or any job writing the same
//! layout) on a local folder or HDFS, read through `object_store`.
//!
//! The request path never scans a model: loading a version builds a compact user → location
//! index, and a lookup reads only the pages that hold the user; each per-user version is then
//! converted into a mapped serving snapshot ([`snapshot`]) that lookups read instead. Versions
//! are polled in the background and swapped atomically; a version that fails to load leaves
//! the previous one serving.

mod columns;
pub(crate) mod covariates;
mod index;
mod layout;
mod location;
mod model;
mod reader;
mod registry;
mod snapshot;

use std::sync::Arc;

use serde::Deserialize;

pub use covariates::{CovariateColumns, CovariateSpec};
pub(crate) use location::{Locator, Place};
pub use model::LoadedModel;
pub(crate) use registry::CovariateSlot;
pub use registry::{ModelRegistry, ModelStatus};
pub use snapshot::SnapshotSettings;
pub(crate) use snapshot::{private_dir, process_uid};

/// A model reference as an experiment writes it: where it lives and how its columns are named.
/// It is the registry's key, so two arms naming the same output share one loaded copy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelSpec {
    /// Path under `models.root`, or a full `file://`/`hdfs://` URI; a trailing `/*` picks the
    /// newest committed sub-folder.
    pub location: String,
    /// Column-name overrides; empty means Spark's defaults, detected from the types.
    pub columns: ColumnNames,
    /// Whether loaded versions get a serving snapshot (an arm's `snapshot = false` keeps them
    /// on page reads).
    pub snapshot: bool,
}

impl ModelSpec {
    /// Builds a spec from the strings of an experiment file, with snapshots.
    pub fn new(location: impl Into<String>, columns: ColumnNames) -> Self {
        ModelSpec {
            location: location.into(),
            columns,
            snapshot: true,
        }
    }
}

/// Column-name overrides for a model's Parquet schema (ARCHITECTURE.md §4). Any name left out is
/// detected from the Arrow types.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnNames {
    /// The user id column (`user` in Spark's ALS output, often renamed `userId`).
    pub user: Option<String>,
    /// The `list<struct<item, score>>` column of the nested schema (`recommendations`).
    pub items: Option<String>,
    /// The item id column or struct field (`item`, often renamed, e.g. `movieId`).
    pub item: Option<String>,
    /// The score column or struct field (`rating` in Spark's ALS output).
    pub score: Option<String>,
}

/// One recommended item. Ids are kept as text whatever their Parquet type, so every client
/// sees one schema and cached lists need no type tag.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// The item id as text.
    pub id: Box<str>,
    /// The model's score; `f32` is what ALS writes and halves the size of cached lists.
    pub score: f32,
    /// 1-based position in the model's ranking, kept through filters so clients see the
    /// model's rank rather than a page position.
    pub rank: u32,
}

/// A user's whole ranked list, shared between the loaded model, caches and responses.
pub(crate) type RankedList = Arc<[Item]>;

/// Why a model could not be resolved, loaded or read. Messages name the URI at fault.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage said no: missing file, unreachable name node, permissions.
    #[error("{uri}: {source}")]
    Storage {
        /// The object the operation was on.
        uri: String,
        /// What the object store reported.
        #[source]
        source: object_store::Error,
    },
    /// A part file is not valid Parquet, or could not be decoded.
    #[error("{uri}: {source}")]
    Parquet {
        /// The part file.
        uri: String,
        /// What the Parquet reader reported.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// Readable, but not a model: no part files, unknown schema, mismatched part schemas.
    #[error("{uri}: {message}")]
    Invalid {
        /// The folder or file at fault.
        uri: String,
        /// What is wrong with it.
        message: String,
    },
    /// The storage did not answer in time (e.g. an unreachable HDFS name node).
    #[error("{uri}: no answer within {after:?}")]
    Timeout {
        /// What was being read.
        uri: String,
        /// How long recgw waited.
        after: std::time::Duration,
    },
    /// `models.root` or a model location is not a folder, `file://` or `hdfs://` URI.
    #[error("bad model location {location:?}: {message}")]
    Location {
        /// The location as written.
        location: String,
        /// Why it cannot be used.
        message: String,
    },
}
