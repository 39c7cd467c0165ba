//! Parquet's async reader over any `object_store` (parquet's own `ParquetObjectReader` is
//! deprecated in favour of this small adapter). Footer and page index are read once per loaded
//! version; point lookups then fetch only the byte ranges of the pages they need.
//!
//! Local part files are opened once, when their version loads, and read through that handle.
//! POSIX keeps a file's data while a handle is open, so a version whose folder is deleted,
//! moved, or overwritten in place by a later Spark run keeps serving until its successor
//! loads; it also saves an `open` per lookup. A model holds one descriptor per part file
//! (Spark writes 200 by default), which is why start-up raises the soft `RLIMIT_NOFILE`.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use object_store::ObjectStore;
use object_store::path::Path;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::errors::ParquetError;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};

use super::StoreError;
use super::location::Place;

/// Where a part file's bytes come from.
#[derive(Debug, Clone)]
enum Source {
    /// A local file, opened when its version loaded.
    File(Arc<File>),
    /// A file in a remote store (HDFS), fetched by path.
    Store {
        /// The store.
        store: Arc<dyn ObjectStore>,
        /// The file in it.
        path: Path,
    },
}

/// One part file of a loaded version.
#[derive(Debug, Clone)]
pub(crate) struct ObjectReader {
    /// Where its bytes come from.
    source: Source,
    /// Its length from the listing, which saves a round trip when reading the footer.
    size: u64,
}

impl ObjectReader {
    /// Binds the part file `path` of `place`: a local file is opened now.
    pub(crate) async fn open(place: &Place, path: Path, size: u64) -> Result<Self, StoreError> {
        let source = match place.local_file(&path) {
            None => Source::Store {
                store: Arc::clone(&place.store),
                path,
            },
            Some(file) => {
                let file = file?;
                let opened = tokio::task::spawn_blocking(move || File::open(&file)).await;
                let opened = opened.map_err(std::io::Error::other).and_then(|r| r);
                Source::File(Arc::new(opened.map_err(|e| StoreError::Invalid {
                    uri: place.uri_of(&path),
                    message: format!("cannot open: {e}"),
                })?))
            }
        };
        Ok(ObjectReader { source, size })
    }

    /// Reads the footer and, when the writer stored one (Spark does by default), the page index
    /// that lets a lookup fetch single pages.
    pub(crate) async fn load_metadata(&mut self) -> Result<ArrowReaderMetadata, ParquetError> {
        let size = self.size;
        let metadata = ParquetMetaDataReader::new()
            .with_page_index_policy(PageIndexPolicy::Optional)
            .load_and_finish(&mut *self, size)
            .await?;
        ArrowReaderMetadata::try_new(Arc::new(metadata), ArrowReaderOptions::new())
    }

    /// The bytes of `ranges`, in order.
    async fn ranges(&self, ranges: Vec<Range<u64>>) -> parquet::errors::Result<Vec<Bytes>> {
        match &self.source {
            Source::Store { store, path } => store.get_ranges(path, &ranges).await.map_err(external),
            // Off the runtime's workers: a page that is not in the page cache blocks on the disk.
            Source::File(file) => {
                let file = Arc::clone(file);
                tokio::task::spawn_blocking(move || {
                    ranges
                        .iter()
                        .map(|r| read_at(&file, r))
                        .collect::<std::io::Result<Vec<_>>>()
                })
                .await
                .map_err(external)?
                .map_err(external)
            }
        }
    }
}

fn read_at(file: &File, range: &Range<u64>) -> std::io::Result<Bytes> {
    let len = usize::try_from(range.end.saturating_sub(range.start)).map_err(std::io::Error::other)?;
    let mut buf = vec![0; len];
    file.read_exact_at(&mut buf, range.start)?;
    Ok(Bytes::from(buf))
}

fn external(e: impl std::error::Error + Send + Sync + 'static) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileReader for ObjectReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            let mut bytes = self.ranges(vec![range]).await?;
            bytes.pop().ok_or_else(|| ParquetError::General("no bytes read".into()))
        }
        .boxed()
    }

    fn get_byte_ranges(&mut self, ranges: Vec<Range<u64>>) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        self.ranges(ranges).boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let metadata = ParquetMetaDataReader::new()
                .with_arrow_reader_options(options)
                .load_and_finish(&mut *self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}
