//! Names of a tree with encrypted names, without a mount: fsck opens every
//! entry's name in its directory and every symlink's target (docs/FORMAT.md,
//! "Names"), through the tree's descriptors.

use std::path::PathBuf;

use serde::Serialize;

use super::{Tree, Walk};
use crate::envelope::names::{self, NameKey, ROOT_DIR_ID};
use crate::format::{BACKING_LOCK, BACKING_MARKER};
use crate::kms::{KeyService, RequestContext};
use crate::os::at::list_dir;

/// A name, target or directory id that does not open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NameFinding {
    /// The backing entry, relative to the tree's root.
    #[serde(rename = "Path")]
    pub path: PathBuf,
    /// Why.
    #[serde(rename = "Reason")]
    pub reason: String,
}

/// What a check of a tree's names found.
#[derive(Debug, Default, Clone, Serialize)]
pub struct NamesReport {
    /// Entries whose name opened.
    #[serde(rename = "Names")]
    pub names: u64,
    /// Symlink targets that opened.
    #[serde(rename = "Targets")]
    pub targets: u64,
    /// Every name, target or directory id that did not.
    #[serde(rename = "Refused")]
    pub refused: Vec<NameFinding>,
}

/// Checks every name and symlink target of `tree` (walked as `w`) with
/// the name key `wrapped` unwraps; an error if the key service refuses it.
pub fn check_names(
    tree: &Tree,
    w: &Walk,
    wrapped: &[u8],
    ks: &dyn KeyService,
    rc: &RequestContext<'_>,
) -> Result<NamesReport, names::NameError> {
    let key = NameKey::unwrap(ks, rc, wrapped)?;
    let mut r = NamesReport::default();
    let refuse = |r: &mut NamesReport, path: PathBuf, reason: String| {
        r.refused.push(NameFinding { path, reason });
    };
    for rel in std::iter::once(PathBuf::new()).chain(w.dirs.iter().cloned()) {
        let dir = match tree.dir(&rel) {
            Ok(d) => d,
            Err(e) => {
                refuse(&mut r, rel, e.to_string());
                continue;
            }
        };
        let id = if rel.as_os_str().is_empty() {
            ROOT_DIR_ID
        } else {
            match names::read_dir_id(&dir) {
                Ok(id) => id,
                Err(e) => {
                    refuse(&mut r, rel.join(names::DIR_ID_FILE), e.to_string());
                    continue;
                }
            }
        };
        let entries = match list_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                refuse(&mut r, rel, e.to_string());
                continue;
            }
        };
        for (name, _) in entries {
            let root_own =
                rel.as_os_str().is_empty() && (name == BACKING_MARKER || name == BACKING_LOCK);
            if root_own || names::is_internal(&name) {
                continue;
            }
            match key.decrypt_entry(&id, &name, |side| names::read_side_file(&dir, side)) {
                Ok(_) => r.names += 1,
                Err(e) => refuse(&mut r, rel.join(&name), e.to_string()),
            }
        }
    }
    for link in &w.links {
        let target = tree
            .node(link)
            .and_then(|n| crate::os::node::readlink_node(&n))
            .map_err(names::NameError::from)
            .and_then(|t| key.decrypt_target(&t));
        match target {
            Ok(_) => r.targets += 1,
            Err(e) => refuse(&mut r, link.clone(), e.to_string()),
        }
    }
    Ok(r)
}
