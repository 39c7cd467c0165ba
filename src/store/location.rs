//! Where models live: `models.root` and each model's location resolved to an object store and
//! a path in it. One store is kept per HDFS name node, so arms on one cluster share connections.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use hdfs_native_object_store::HdfsObjectStoreBuilder;
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::path::Path;

use super::StoreError;

/// A folder in some object store, with the URI used in messages, versions and `/ready`.
#[derive(Debug, Clone)]
pub(crate) struct Place {
    /// The store holding the folder.
    pub(crate) store: Arc<dyn ObjectStore>,
    /// The same store when it is the local file system, which can name the file behind a
    /// path: part files are then read through handles opened once per version.
    local: Option<Arc<LocalFileSystem>>,
    /// The folder inside the store.
    pub(crate) path: Path,
    /// `file:///…` or `hdfs://host:port`, the prefix that turns `path` back into a URI.
    scheme_and_authority: Arc<str>,
}

impl Place {
    /// The URI of `path` inside this place's store, for messages.
    pub(crate) fn uri_of(&self, path: &Path) -> String {
        format!("{}/{}", self.scheme_and_authority, path)
    }

    /// The file behind `path` when this place is on the local file system.
    pub(crate) fn local_file(&self, path: &Path) -> Option<Result<PathBuf, StoreError>> {
        let local = self.local.as_ref()?;
        Some(local.path_to_filesystem(path).map_err(|e| StoreError::Location {
            location: self.uri_of(path),
            message: e.to_string(),
        }))
    }

    /// The same store, another folder.
    pub(crate) fn at(&self, path: Path) -> Place {
        Place {
            store: Arc::clone(&self.store),
            local: self.local.clone(),
            path,
            scheme_and_authority: Arc::clone(&self.scheme_and_authority),
        }
    }
}

/// Resolves model locations against `models.root`.
#[derive(Debug)]
pub(crate) struct Locator {
    /// The resolved `models.root`.
    root: Place,
    /// The local file system, shared by every local location.
    local: Arc<LocalFileSystem>,
    /// One client per `hdfs://authority`, created on first use.
    hdfs: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
}

impl Locator {
    /// Resolves `root`: a folder (relative to the working directory), `file://…` or
    /// `hdfs://host:port/path`. Building an HDFS client does not contact the name node, so an
    /// unreachable cluster fails the models on it, not start-up.
    pub(crate) fn new(root: &str) -> Result<Self, StoreError> {
        Self::with_local(root, LocalFileSystem::new())
    }

    /// As [`Locator::new`], with local files written through `local` (the logs use one that
    /// syncs what it writes, which model reads have no need of).
    pub(crate) fn with_local(root: &str, local: LocalFileSystem) -> Result<Self, StoreError> {
        let local = Arc::new(local);
        let mut locator = Locator {
            root: Place {
                store: local.clone(),
                local: Some(Arc::clone(&local)),
                path: Path::default(),
                scheme_and_authority: "file://".into(),
            },
            local,
            hdfs: Mutex::new(HashMap::new()),
        };
        locator.root = locator.parse(root)?;
        Ok(locator)
    }

    /// The resolved root.
    pub(crate) fn root(&self) -> &Place {
        &self.root
    }

    /// Resolves a model location: a full URI stands alone, anything else is under the root.
    pub(crate) fn resolve(&self, location: &str) -> Result<Place, StoreError> {
        if location.contains("://") {
            return self.parse(location);
        }
        let mut path = self.root.path.clone();
        for segment in location.split('/').filter(|s| !s.is_empty()) {
            if segment == ".." || segment == "." {
                return Err(StoreError::Location {
                    location: location.into(),
                    message: "relative model paths may not contain '.' or '..'".into(),
                });
            }
            path = path.join(segment);
        }
        Ok(self.root.at(path))
    }

    fn parse(&self, uri: &str) -> Result<Place, StoreError> {
        let bad = |message: &str| StoreError::Location {
            location: uri.into(),
            message: message.into(),
        };
        if let Some(rest) = uri.strip_prefix("hdfs://") {
            let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
            if authority.is_empty() {
                return Err(bad(
                    "an hdfs:// URI needs a name node, e.g. hdfs://namenode:8020/models",
                ));
            }
            let base = format!("hdfs://{authority}");
            let store = self.hdfs_store(&base).map_err(|e| bad(&e.to_string()))?;
            let path = Path::parse(path).map_err(|e| bad(&e.to_string()))?;
            return Ok(Place {
                store,
                local: None,
                path,
                scheme_and_authority: base.into(),
            });
        }
        let fs_path = match uri.strip_prefix("file://") {
            Some(path) => std::path::PathBuf::from(path),
            None if uri.contains("://") => {
                return Err(bad("unsupported scheme: use a folder, file:// or hdfs://"));
            }
            None => std::path::PathBuf::from(uri),
        };
        let absolute = std::path::absolute(&fs_path).map_err(|e| bad(&e.to_string()))?;
        let path = Path::from_absolute_path(&absolute).map_err(|e| bad(&e.to_string()))?;
        Ok(Place {
            store: self.local.clone(),
            local: Some(Arc::clone(&self.local)),
            path,
            scheme_and_authority: "file://".into(),
        })
    }

    fn hdfs_store(&self, base: &str) -> object_store::Result<Arc<dyn ObjectStore>> {
        let mut clients = self.hdfs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(store) = clients.get(base) {
            return Ok(Arc::clone(store));
        }
        let store: Arc<dyn ObjectStore> = Arc::new(HdfsObjectStoreBuilder::new().with_url(base).build()?);
        clients.insert(base.to_string(), Arc::clone(&store));
        Ok(store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_locations_resolve_under_the_root() {
        let locator = Locator::new("/srv/models").expect("root");
        let place = locator.resolve("als/v1").expect("resolves");
        assert_eq!(place.uri_of(&place.path), "file:///srv/models/als/v1");
        assert!(locator.resolve("../etc").is_err());
    }

    #[test]
    fn hdfs_uris_keep_their_name_node() {
        let locator = Locator::new("hdfs://namenode:8020/user/recs").expect("root");
        let place = locator.resolve("als-v2").expect("resolves");
        assert_eq!(place.uri_of(&place.path), "hdfs://namenode:8020/user/recs/als-v2");
        let other = locator.resolve("file:///data/popular").expect("resolves");
        assert_eq!(other.uri_of(&other.path), "file:///data/popular");
        assert!(Locator::new("s3://bucket/models").is_err());
    }
}
