//! Names of a tree with encrypted names, without a mount: fsck opens every
//! entry's name in its directory and every symlink's target (docs/FORMAT.md,
//! "Names"), through the tree's descriptors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{Tree, Walk};
use crate::envelope::names::{self, LinkPlace, NameKey, ROOT_DIR_ID, TargetForm};
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
    /// Those of them in form 1 (bound to the tree only, as builds before
    /// form 2 wrote them): still read; a rename through the mount or
    /// `kmsfs rewrap` re-seals them for their link.
    #[serde(rename = "OldTargets")]
    pub old_targets: Vec<PathBuf>,
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
    let mut ids = HashMap::new();
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
        ids.insert(rel.clone(), id);
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
        let (Some(parent), Some(entry)) = (link.parent(), link.file_name()) else {
            continue;
        };
        // A directory whose id does not open was refused above.
        let Some(id) = ids.get(parent) else {
            continue;
        };
        let target = tree
            .node(link)
            .and_then(|n| crate::os::node::readlink_node(&n))
            .map_err(names::NameError::from)
            .and_then(|t| key.decrypt_target(LinkPlace { dir: id, entry }, &t));
        match target {
            Ok((_, form)) => {
                r.targets += 1;
                if form == TargetForm::Tree {
                    r.old_targets.push(link.clone());
                }
            }
            Err(e) => refuse(&mut r, link.clone(), e.to_string()),
        }
    }
    Ok(r)
}

/// Re-seals every symlink target of the old form (bound to the tree only)
/// in `tree` (walked as `w`) for its link, with the name key `wrapped`
/// unwraps: a new symlink under a temporary name in the link's directory,
/// with the old one's owner, times and extended attributes, exchanged with
/// the link (RENAME_EXCHANGE), then the old one removed; if the entry
/// exchanged out is not the link that was read (replaced meanwhile), the
/// exchange is undone. Returns the links re-sealed and those that could
/// not be, each left as it was. For a tree no mount serves.
pub fn reseal_old_targets(
    tree: &Tree,
    w: &Walk,
    wrapped: &[u8],
    ks: &dyn KeyService,
    rc: &RequestContext<'_>,
) -> Result<(u64, Vec<NameFinding>), names::NameError> {
    let key = NameKey::unwrap(ks, rc, wrapped)?;
    let mut done = 0;
    let mut failed = Vec::new();
    for link in &w.links {
        match reseal_one(tree, &key, link) {
            Ok(true) => done += 1,
            Ok(false) => {}
            Err(e) => failed.push(NameFinding {
                path: link.clone(),
                reason: e.to_string(),
            }),
        }
    }
    Ok((done, failed))
}

/// `reseal_old_targets` for one link: true when it was re-sealed.
fn reseal_one(tree: &Tree, key: &NameKey, link: &Path) -> Result<bool, names::NameError> {
    use crate::os::beneath::{open_node, renameat2, symlinkat, unlinkat};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let (dir, entry) = tree.parent(link)?;
    let parent = link.parent().unwrap_or(Path::new(""));
    let id = if parent.as_os_str().is_empty() {
        ROOT_DIR_ID
    } else {
        names::read_dir_id(&dir)?
    };
    let node = open_node(&dir, entry)?;
    let md = node.metadata()?;
    if !md.file_type().is_symlink() {
        return Ok(false);
    }
    let place = LinkPlace { dir: &id, entry };
    let stored = crate::os::node::readlink_node(&node)?;
    let (target, form) = key.decrypt_target(place, &stored)?;
    if form == TargetForm::Link {
        return Ok(false);
    }
    let sealed = key.encrypt_target(place, &target)?;
    let tmp = names::temp_name();
    symlinkat(Path::new(std::ffi::OsStr::from_bytes(&sealed)), &dir, &tmp)?;
    // What is under the temporary name at the end goes (the new link if
    // nothing was exchanged, else the old one), unless an exchange could
    // not be undone: then it is someone else's entry and stays.
    let mut remove_tmp = true;
    let made = (|| {
        let new = open_node(&dir, &tmp)?;
        crate::os::xattr::copy_xattrs(&node, &new)?;
        super::apply_meta(&md, &new)?;
        renameat2(&dir, &tmp, &dir, entry, libc::RENAME_EXCHANGE)?;
        let out = open_node(&dir, &tmp)?.metadata()?;
        if (out.dev(), out.ino()) != (md.dev(), md.ino()) {
            remove_tmp = false;
            renameat2(&dir, &tmp, &dir, entry, libc::RENAME_EXCHANGE)?;
            remove_tmp = true;
            return Err(std::io::Error::other("replaced while it was re-sealed"));
        }
        Ok(())
    })();
    if remove_tmp {
        let _ = unlinkat(&dir, &tmp, false);
    }
    made?;
    Ok(true)
}
