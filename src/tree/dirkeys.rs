//! The directories of a backing tree that have a key of their own (their
//! key record, docs/MOUNT.md "A key per directory"), as recorded: read
//! without unwrapping the tree's MAC key, for `kmsfs inspect`; the mount
//! checks each record's MAC before it uses one.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use super::Tree;
use crate::envelope::dirkey::{DirId, Listed, RECORD_XATTR, recorded_key_id};
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

/// The directories among the root and `dirs` whose record disagrees with
/// `listed`, the keystore's list of the keys set through the mount, and
/// how: a record missing where a key was set, one naming another key, one
/// there after its owner cleared it. The mount refuses creates under each.
/// Listed directories that are not in the tree (removed, or a copy of it)
/// are not reported.
pub fn dir_key_mismatches(
    tree: &Tree,
    dirs: &[PathBuf],
    listed: &BTreeMap<DirId, Listed>,
) -> Vec<(PathBuf, String)> {
    if listed.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for d in std::iter::once(PathBuf::new()).chain(dirs.iter().cloned()) {
        let Ok(m) = tree.dir(&d).and_then(|f| f.metadata()) else {
            continue;
        };
        let Some(l) = listed.get(&DirId::of(&m)) else {
            continue;
        };
        let why = match (l, recorded(tree, &d)) {
            (Listed::Key(k), None) => format!(
                "the keystore lists key {k}, but its record is missing (removed in the backing \
                 directory)"
            ),
            (Listed::Key(k), Some(Some(r))) if r != *k => {
                format!("its record names {r}, but the keystore lists key {k}, set last")
            }
            (Listed::Cleared, Some(_)) => {
                "its owner cleared its key, but a record is there again".into()
            }
            _ => continue,
        };
        out.push((d, why));
    }
    out
}
