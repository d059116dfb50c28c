//! Names across an export or an import of a tree with encrypted names
//! (docs/FORMAT.md, "Names"): an export opens every entry's name in its
//! directory and every symbolic link's target with the tree's name key, an
//! import encrypts them into the directories it makes, each with its id.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::copy::{Dest, Names};
use super::{FileStatus, Tree, Walk};
use crate::crypto::sha256;
use crate::envelope::names::{self, DirId, LinkPlace, NameKey, ROOT_DIR_ID, TEMP_PREFIX};

/// A refused name as a finding.
fn refused(why: impl std::fmt::Display) -> FileStatus {
    FileStatus::CorruptName {
        reason: format!("name refused: {why}"),
    }
}

/// The names of a tree with encrypted names, opened for an export: the
/// plaintext path of every entry a walk found, or why it does not open.
pub(super) struct Decrypted {
    key: NameKey,
    plain: HashMap<PathBuf, Result<PathBuf, String>>,
    /// Directories' ids by backing path.
    ids: HashMap<PathBuf, Result<DirId, String>>,
}

impl Decrypted {
    /// Opens the name of every entry of `w` (a walk of `tree`), each in its
    /// directory by that directory's id; an entry under a directory whose
    /// name or id does not open does not open either.
    pub(super) fn new(tree: &Tree, w: &Walk, key: NameKey) -> Self {
        let mut plain = HashMap::new();
        let mut ids: HashMap<PathBuf, Result<DirId, String>> = HashMap::new();
        plain.insert(PathBuf::new(), Ok(PathBuf::new()));
        ids.insert(PathBuf::new(), Ok(ROOT_DIR_ID));
        for d in &w.dirs {
            let p = open_name(tree, &key, d, &plain, &ids);
            let id = match &p {
                Ok(_) => tree
                    .dir(d)
                    .map_err(names::NameError::from)
                    .and_then(|dir| names::read_dir_id(&dir))
                    .map_err(|e| match e {
                        names::NameError::Io(e) if e.kind() == io::ErrorKind::NotFound => {
                            format!("directory has no {}", names::DIR_ID_FILE)
                        }
                        e => format!("its {}: {e}", names::DIR_ID_FILE),
                    }),
                Err(_) => Err("its name does not open".into()),
            };
            plain.insert(d.clone(), p);
            ids.insert(d.clone(), id);
        }
        for e in w.files.iter().chain(&w.links).chain(&w.special) {
            let p = open_name(tree, &key, e, &plain, &ids);
            plain.insert(e.clone(), p);
        }
        Self { key, plain, ids }
    }
}

/// The plaintext path of entry `rel`: its directory's plaintext path and
/// its name opened with that directory's id.
fn open_name(
    tree: &Tree,
    key: &NameKey,
    rel: &Path,
    plain: &HashMap<PathBuf, Result<PathBuf, String>>,
    ids: &HashMap<PathBuf, Result<DirId, String>>,
) -> Result<PathBuf, String> {
    let parent = rel.parent().unwrap_or(Path::new(""));
    let name = rel.file_name().ok_or("no name")?;
    let dir = match plain.get(parent) {
        Some(Ok(p)) => p,
        _ => return Err("its directory's name does not open".into()),
    };
    let id = match ids.get(parent) {
        Some(Ok(id)) => id,
        Some(Err(e)) => return Err(format!("its directory: {e}")),
        None => return Err("its directory was not listed".into()),
    };
    let name = key
        .decrypt_entry(id, name, |side| {
            names::read_side_file(&tree.dir(parent)?, side)
        })
        .map_err(|e| e.to_string())?;
    Ok(dir.join(name))
}

impl Names for Decrypted {
    fn dest(&self, rel: &Path) -> Result<Dest, FileStatus> {
        match self.plain.get(rel) {
            Some(Ok(p)) => Ok(Dest {
                rel: p.clone(),
                long: None,
            }),
            Some(Err(why)) => Err(refused(why)),
            None => Err(refused("not listed")),
        }
    }

    fn target(&self, rel: &Path, stored: Vec<u8>) -> Result<Vec<u8>, FileStatus> {
        let parent = rel.parent().unwrap_or(Path::new(""));
        let (Some(Ok(dir)), Some(entry)) = (self.ids.get(parent), rel.file_name()) else {
            return Err(refused("its directory's id does not open"));
        };
        self.key
            .decrypt_target(LinkPlace { dir, entry }, &stored)
            .map(|(t, _)| t)
            .map_err(refused)
    }

    fn shown(&self, rel: &Path) -> PathBuf {
        match self.plain.get(rel) {
            Some(Ok(p)) => p.clone(),
            _ => rel.to_path_buf(),
        }
    }
}

/// The names of an import into a tree with encrypted names: each plaintext
/// path of the source as the backing directory stores it, by the ids of
/// the directories the import made or found.
pub(super) struct Encrypted {
    key: NameKey,
    /// Directories by their source path: backing path and id.
    dirs: RefCell<HashMap<PathBuf, (PathBuf, DirId)>>,
}

impl Encrypted {
    pub(super) fn new(key: NameKey) -> Self {
        let mut dirs = HashMap::new();
        dirs.insert(PathBuf::new(), (PathBuf::new(), ROOT_DIR_ID));
        Self {
            key,
            dirs: RefCell::new(dirs),
        }
    }

    /// Remembers the directory made (or found) for source directory `rel`.
    pub(super) fn add_dir(&self, rel: &Path, backing: PathBuf, id: DirId) {
        self.dirs
            .borrow_mut()
            .insert(rel.to_path_buf(), (backing, id));
    }
}

impl Names for Encrypted {
    fn dest(&self, rel: &Path) -> Result<Dest, FileStatus> {
        let parent = rel.parent().unwrap_or(Path::new(""));
        let name = rel.file_name().ok_or_else(|| FileStatus::Io {
            message: "no name".into(),
        })?;
        let dirs = self.dirs.borrow();
        let Some((dir, id)) = dirs.get(parent) else {
            return Err(FileStatus::Io {
                message: "its directory was not made".into(),
            });
        };
        let enc = self
            .key
            .encrypt_name(id, name)
            .map_err(|e| FileStatus::Io {
                message: e.to_string(),
            })?;
        Ok(Dest {
            rel: dir.join(&enc.entry),
            long: enc.long.is_some().then_some(enc),
        })
    }

    fn target(&self, rel: &Path, stored: Vec<u8>) -> Result<Vec<u8>, FileStatus> {
        let failed = |e: names::NameError| FileStatus::Io {
            message: format!("symbolic link target: {e}"),
        };
        let parent = rel.parent().unwrap_or(Path::new(""));
        let name = rel.file_name().ok_or_else(|| FileStatus::Io {
            message: "no name".into(),
        })?;
        let dirs = self.dirs.borrow();
        let Some((_, id)) = dirs.get(parent) else {
            return Err(FileStatus::Io {
                message: "its directory was not made".into(),
            });
        };
        // Sealed for the link's own place: its directory and stored name.
        let enc = self.key.encrypt_name(id, name).map_err(failed)?;
        self.key
            .encrypt_target(LinkPlace::of(&enc), &stored)
            .map_err(failed)
    }
}

/// The temporary name an import writes encrypted entry `entry` under: one
/// of kmsfs's own names (hidden by the mount, left out by every walk), the
/// same for the same entry so that a rerun replaces what a crash left.
pub(super) fn import_temp(entry: &OsStr) -> OsString {
    use std::os::unix::ffi::OsStrExt;
    let mut t = OsString::from(TEMP_PREFIX);
    t.push("import.");
    t.push(URL_SAFE_NO_PAD.encode(sha256(&[entry.as_bytes()])));
    t
}
