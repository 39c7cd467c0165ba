//! The per-version user → rows index that keeps lookups from scanning: 20 bytes per user
//! (a 64-bit key hash plus a 12-byte location) in two sorted arrays searched by bisection.
//! Hash collisions are harmless: a lookup checks the user value of every row it reads.

/// A run of consecutive rows of one user in one row group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    /// Index into the version's part files.
    pub(crate) file: u16,
    /// Row group inside that file.
    pub(crate) row_group: u16,
    /// First row inside the row group.
    pub(crate) row: u32,
    /// Number of rows (1 for nested models; a user's items in long ones).
    pub(crate) len: u32,
}

/// Sorted user-hash → location arrays (struct of arrays: the bisection touches only hashes).
#[derive(Debug, Default)]
pub(crate) struct UserIndex {
    hashes: Box<[u64]>,
    locs: Box<[Loc]>,
    /// Distinct users: a long model whose user rows are split has more runs than users.
    users: usize,
}

impl UserIndex {
    /// Every run whose user hashes to `hash`: usually one, several for a long model whose user
    /// rows are not contiguous.
    pub(crate) fn find(&self, hash: u64) -> &[Loc] {
        let start = self.hashes.partition_point(|&h| h < hash);
        let end = start + self.hashes[start..].partition_point(|&h| h == hash);
        &self.locs[start..end]
    }

    /// Distinct users indexed.
    pub(crate) fn users(&self) -> usize {
        self.users
    }

    /// Heap bytes held, reported so the memory cost of a version is visible.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.hashes.len() * size_of::<u64>() + self.locs.len() * size_of::<Loc>()
    }
}

/// Collects rows in file order, merging consecutive rows of one user into a run.
#[derive(Debug, Default)]
pub(crate) struct IndexBuilder {
    entries: Vec<(u64, Loc)>,
}

impl IndexBuilder {
    pub(crate) fn with_capacity(rows: usize) -> Self {
        IndexBuilder {
            entries: Vec::with_capacity(rows),
        }
    }

    /// Adds one row of the user hashing to `hash`.
    pub(crate) fn push(&mut self, hash: u64, file: u16, row_group: u16, row: u32) {
        if let Some((last_hash, last)) = self.entries.last_mut()
            && *last_hash == hash
            && last.file == file
            && last.row_group == row_group
            && last.row + last.len == row
        {
            last.len += 1;
            return;
        }
        self.entries.push((
            hash,
            Loc {
                file,
                row_group,
                row,
                len: 1,
            },
        ));
    }

    pub(crate) fn finish(mut self) -> UserIndex {
        // Runs of one hash stay in file order, which groups them by row group for the reader.
        self.entries
            .sort_unstable_by_key(|(hash, loc)| (*hash, loc.file, loc.row_group, loc.row));
        let (hashes, locs): (Vec<u64>, Vec<Loc>) = self.entries.into_iter().unzip();
        let users = hashes.chunk_by(|a, b| a == b).count();
        UserIndex {
            hashes: hashes.into_boxed_slice(),
            locs: locs.into_boxed_slice(),
            users,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_runs_and_finds_every_run_of_a_hash() {
        let mut builder = IndexBuilder::default();
        builder.push(7, 0, 0, 0);
        builder.push(7, 0, 0, 1);
        builder.push(3, 0, 0, 2);
        builder.push(7, 0, 1, 0);
        let index = builder.finish();
        assert_eq!(index.users(), 2);
        assert_eq!(
            index.find(7),
            &[
                Loc {
                    file: 0,
                    row_group: 0,
                    row: 0,
                    len: 2
                },
                Loc {
                    file: 0,
                    row_group: 1,
                    row: 0,
                    len: 1
                }
            ]
        );
        assert_eq!(
            index.find(3),
            &[Loc {
                file: 0,
                row_group: 0,
                row: 2,
                len: 1
            }]
        );
        assert!(index.find(5).is_empty());
        assert_eq!(index.heap_bytes(), 3 * 20);
    }
}
