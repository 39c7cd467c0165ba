//! Spark's output layout: a folder is a model only once `_SUCCESS` exists; data is every file
//! that Hadoop does not treat as hidden (`_…`, `.…`, which covers `.crc` side files and
//! `_temporary/`), at any depth, so `key=value/` partition folders are read too.

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStoreExt};

use super::StoreError;
use super::location::{Locator, Place};

/// The marker Spark's committer writes last.
const SUCCESS: &str = "_SUCCESS";

/// A committed model folder and the version string that names it in cache keys and responses.
#[derive(Debug, Clone)]
pub(crate) struct Committed {
    /// The folder holding the part files.
    pub(crate) folder: Place,
    /// `{leaf folder}@{marker etag or mtime}`: changes whenever Spark commits again.
    pub(crate) version: String,
}

/// A marker check slower than this is reported as a failure (an unreachable name node makes
/// the HDFS client retry for minutes), and tried again at the next interval.
const MARKER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The committed version a model (or covariate table) location names now, `name/*` for the
/// newest committed sub-folder; the inner `Err` says nothing is committed there, the outer one
/// that the storage could not be asked.
pub(crate) async fn committed_at(locator: &Locator, location: &str) -> Result<Result<Committed, String>, StoreError> {
    let (folder, wildcard) = match location.strip_suffix("/*") {
        Some(folder) => (folder, true),
        None => (location, false),
    };
    let place = locator.resolve(folder)?;
    match tokio::time::timeout(MARKER_TIMEOUT, committed(&place, wildcard)).await {
        Ok(found) => {
            Ok(found?.ok_or_else(|| format!("{}: no committed version (_SUCCESS missing)", place.uri_of(&place.path))))
        }
        Err(_) => Err(StoreError::Timeout {
            uri: place.uri_of(&place.path),
            after: MARKER_TIMEOUT,
        }),
    }
}

/// Finds the committed folder for a location: the folder itself, or with `wildcard`, its
/// lexicographically greatest sub-folder holding `_SUCCESS`. `None` while nothing is committed.
pub(crate) async fn committed(place: &Place, wildcard: bool) -> Result<Option<Committed>, StoreError> {
    if !wildcard {
        return marker(place).await;
    }
    let listing = place
        .store
        .list_with_delimiter(Some(&place.path))
        .await
        .map_err(|source| StoreError::Storage {
            uri: place.uri_of(&place.path),
            source,
        })?;
    let mut candidates: Vec<Path> = listing
        .common_prefixes
        .into_iter()
        .filter(|p| p.filename().is_some_and(|name| !is_hidden(name)))
        .collect();
    candidates.sort_unstable_by(|a, b| b.as_ref().cmp(a.as_ref()));
    for candidate in candidates {
        if let Some(found) = marker(&place.at(candidate)).await? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

async fn marker(folder: &Place) -> Result<Option<Committed>, StoreError> {
    let path = folder.path.clone().join(SUCCESS);
    match folder.store.head(&path).await {
        Ok(meta) => {
            let leaf = folder.path.filename().unwrap_or_default();
            let version = match meta.e_tag {
                // ETags come quoted (`"inode-mtime-size"`); quotes do not belong in cache keys.
                Some(tag) => format!("{leaf}@{}", tag.trim_matches('"')),
                None => format!("{leaf}@{}", meta.last_modified.timestamp_millis()),
            };
            Ok(Some(Committed {
                version,
                folder: folder.clone(),
            }))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(source) => Err(StoreError::Storage {
            uri: folder.uri_of(&path),
            source,
        }),
    }
}

/// Hadoop's hidden-file rule, applied to every path segment below the model folder.
fn is_hidden(segment: &str) -> bool {
    segment.starts_with('_') || segment.starts_with('.')
}

/// The data files of a committed folder, sorted by path so row locations are stable.
pub(crate) async fn part_files(folder: &Place) -> Result<Vec<ObjectMeta>, StoreError> {
    let uri = folder.uri_of(&folder.path);
    let all: Vec<ObjectMeta> = folder
        .store
        .list(Some(&folder.path))
        .try_collect()
        .await
        .map_err(|source| StoreError::Storage {
            uri: uri.clone(),
            source,
        })?;
    let mut parts: Vec<ObjectMeta> = all
        .into_iter()
        .filter(|meta| {
            meta.location
                .prefix_match(&folder.path)
                .is_some_and(|mut segments| segments.all(|s| !is_hidden(s.as_ref())))
        })
        .collect();
    if parts.is_empty() {
        return Err(StoreError::Invalid {
            uri,
            message: "committed (_SUCCESS) but holds no part files".into(),
        });
    }
    parts.sort_unstable_by(|a, b| a.location.cmp(&b.location));
    Ok(parts)
}
