//! The directories of a backing tree that have a key of their own (their
//! key record, docs/MOUNT.md "A key per directory"), as recorded: read
//! without unwrapping the tree's MAC key, for `kmsfs inspect`; the mount
//! checks each record's MAC before it uses one.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use super::Tree;
use crate::envelope::dirkey::{RECORD_XATTR, recorded_key_id};
use crate::os;

/// Longest record read.
const RECORD_MAX: usize = 1024;

/// The key id recorded on directory `rel` of `tree` ("" the root): None
/// when it has no record, `Some(None)` when what it holds is not one.
fn recorded(tree: &Tree, rel: &Path) -> Option<Option<String>> {
    let dir = tree.dir(rel).ok()?;
    let mut buf = vec![0u8; RECORD_MAX];
    let n = os::xattr::getxattr_node(&dir, OsStr::new(RECORD_XATTR), &mut buf).ok()?;
    Some(recorded_key_id(&buf[..n]))
}

/// The directories among the root and `dirs` that hold a key record, with
/// the key id each names (None: a record that cannot be read as one).
pub fn recorded_dir_keys(tree: &Tree, dirs: &[PathBuf]) -> Vec<(PathBuf, Option<String>)> {
    std::iter::once(PathBuf::new())
        .chain(dirs.iter().cloned())
        .filter_map(|d| recorded(tree, &d).map(|k| (d, k)))
        .collect()
}
