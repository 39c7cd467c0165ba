//! Edits the tests make to copies of the repository's experiment files (`experiments/*.toml`),
//! checked as they are made: a test that changes a line the demo no longer has, or adds lines
//! where there are no arms, fails there rather than testing the unchanged demo.

use std::path::Path;

use tempfile::TempDir;

use super::gateway::{copy_dir, repo};

/// A copy of the repository's `experiments/` folder.
pub fn copy_of_experiments() -> TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&repo().join("experiments"), dir.path());
    dir
}

/// Replaces exactly one occurrence of `from` in `dir/file` with `to`.
pub fn edit(dir: &Path, file: &str, from: &str, to: &str) {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {file}: {e}"));
    assert_eq!(text.matches(from).count(), 1, "{from:?} once in {file}: {text}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap_or_else(|e| panic!("write {file}: {e}"));
}

/// Writes `dir/file` as the repository's copy of `experiments/file` with `lines` added before
/// its first `[[arms]]` (top-level keys of the experiment).
pub fn with_lines(dir: &Path, file: &str, lines: &str) {
    let pristine =
        std::fs::read_to_string(repo().join("experiments").join(file)).unwrap_or_else(|e| panic!("read {file}: {e}"));
    let anchor = "\n[[arms]]";
    assert!(pristine.contains(anchor), "{pristine}");
    std::fs::write(
        dir.join(file),
        pristine.replacen(anchor, &format!("\n{lines}\n{anchor}"), 1),
    )
    .unwrap_or_else(|e| panic!("write {file}: {e}"));
}
