//! Encrypted names in the mount: the tree's name key (unwrapped as the
//! mount's own identity, again whenever the key service's state changes, so
//! a disabled CMK refuses the next lookup), each directory's id (cached by
//! the directory's backing identity), and a plaintext name's backing name.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::attr::{Attr, Kind, attr_of};
use super::error::FsError;
use super::filesystem::{KmsFs, lock};
use super::inodes::BackingKey;
use super::node::{Checked, backing_key};
use crate::envelope::names::{
    self, BackingName, DirId, LinkPlace, NameKey, ROOT_DIR_ID, TargetForm,
};
use crate::kms::{Caller, Origin, RequestContext};
use crate::os;

/// Directory ids cached at most (then the cache starts afresh).
const DIR_IDS_MAX: usize = 1 << 16;

/// The state of a tree with encrypted names.
#[derive(Debug)]
pub(super) struct Names {
    /// The name key as the binding file holds it, wrapped by the CMK (a
    /// rewrap since the mount replaces it: `name_key`).
    wrapped: Mutex<Vec<u8>>,
    /// The check value of the key first unwrapped: a wrapping read later
    /// must open to the same key.
    check: Mutex<Option<Vec<u8>>>,
    /// The unwrapped key and the key service's generation it was checked at.
    key: Mutex<Option<(u64, Arc<NameKey>)>>,
    /// Directory ids by the directory's backing identity.
    dir_ids: Mutex<HashMap<BackingKey, DirId>>,
    /// For the audit trail's path: directories by their stored path
    /// (relative to the backing root), with their plaintext path and id.
    plain_dirs: Mutex<HashMap<PathBuf, (PathBuf, DirId)>>,
    /// The FUSE generation of symlinks re-sealed by a rename (new backing
    /// objects under their old node numbers), by node number.
    link_generations: Mutex<HashMap<u64, u64>>,
}

impl Names {
    pub(super) fn new(wrapped: Vec<u8>) -> Self {
        Self {
            wrapped: Mutex::new(wrapped),
            check: Mutex::new(None),
            key: Mutex::new(None),
            dir_ids: Mutex::new(HashMap::new()),
            plain_dirs: Mutex::new(HashMap::new()),
            link_generations: Mutex::new(HashMap::new()),
        }
    }
}

/// A name in a directory as the backing directory holds it: plain names
/// are themselves (`enc` None).
#[derive(Debug)]
pub(super) struct Backing {
    /// The entry's name in the backing directory.
    pub(super) name: OsString,
    /// The encrypted name (for long names, the side file to keep).
    pub(super) enc: Option<BackingName>,
}

impl KmsFs {
    /// True when this tree's names are encrypted.
    pub fn encrypted_names(&self) -> bool {
        self.names.is_some()
    }

    /// Unwraps the name key once, at the start (a failure is the first
    /// lookup's to report): a rewrap since the mount is then told from a
    /// swapped key even when the old CMK is disabled before any lookup.
    pub fn first_name_key(&self) {
        if let Err(e) = self.name_key() {
            log::warn!("the name key does not open yet: {e}");
        }
    }

    /// The tree's name key (None: plain names), unwrapped by the key
    /// service again whenever its state may have changed.
    pub(super) fn name_key(&self) -> Result<Option<Arc<NameKey>>, FsError> {
        let Some(n) = &self.names else {
            return Ok(None);
        };
        let ks = &*self.cfg.ks;
        let generation = ks.generation();
        let mut k = lock(&n.key);
        if let Some((g, key)) = &*k
            && *g == generation
        {
            return Ok(Some(key.clone()));
        }
        *k = None;
        let (uid, gid) = os::ids::ids();
        let me = Caller {
            uid,
            gid,
            pid: std::process::id(),
            access_key: None,
        };
        let rc = RequestContext::new(me, Origin::Mount);
        let held = lock(&n.wrapped).clone();
        let key = match NameKey::unwrap(ks, &rc, &held) {
            Ok(key) => key,
            // `kmsfs rewrap` may have wrapped the key anew (and the old CMK
            // be disabled since): the binding file's wrapping is taken when
            // it opens to the very key this mount serves.
            Err(e) => match self.rewrapped_name_key(n, &held, &rc) {
                Some(key) => key,
                None => return Err(FsError::name(e, &self.cfg.backing)),
            },
        };
        let check = key
            .check_value()
            .map_err(|e| FsError::name(e, &self.cfg.backing))?;
        let mut c = lock(&n.check);
        match &*c {
            Some(first) if *first != check => {
                return Err(FsError::name(
                    names::NameError::Corrupt("the name key changed under the mount"),
                    &self.cfg.backing,
                ));
            }
            Some(_) => {}
            None => *c = Some(check),
        }
        let key = Arc::new(key);
        *k = Some((generation, key.clone()));
        Ok(Some(key))
    }

    /// The name key from the binding file's wrapping when it differs from
    /// `held` and opens to the key this mount first unwrapped (the check
    /// value); that wrapping is held from then on. None otherwise, logged:
    /// another tree's name key swapped into the binding file is never used.
    fn rewrapped_name_key(
        &self,
        n: &Names,
        held: &[u8],
        rc: &RequestContext<'_>,
    ) -> Option<NameKey> {
        let file = self.cfg.backing.join(crate::format::BACKING_MARKER);
        let shown = crate::logtext::escaped(&file);
        let fresh =
            match crate::tree::Tree::open(&self.cfg.backing).and_then(|t| t.wrapped_name_key()) {
                Ok(Some(w)) if w != held => w,
                Ok(_) => return None,
                Err(e) => {
                    log::warn!("{shown}: cannot read the name key: {e}");
                    return None;
                }
            };
        let key = match NameKey::unwrap(&*self.cfg.ks, rc, &fresh) {
            Ok(k) => k,
            Err(e) => {
                log::warn!("{shown}: the name key's new wrapping does not open: {e}");
                return None;
            }
        };
        let same = match (&*lock(&n.check), key.check_value()) {
            (Some(first), Ok(c)) => *first == c,
            _ => false,
        };
        if !same {
            log::warn!(
                "{shown}: holds a name key other than the one this mount serves: not used \
                 (restore the file from a backup)"
            );
            return None;
        }
        *lock(&n.wrapped) = fresh;
        log::info!("{shown}: the name key's new wrapping (a rewrap since the mount) is used");
        Some(key)
    }

    /// The id of directory `dir` (checked to be its node): the root's is
    /// fixed, every other directory's is read once from its `.kmsfs.dirid`.
    pub(super) fn dir_id(&self, dir: &Checked) -> Result<DirId, FsError> {
        self.dir_id_at(&dir.file, &dir.meta, &dir.rel)
    }

    /// `dir_id` of directory `file` (fstat `meta`) at stored path `rel`.
    fn dir_id_at(
        &self,
        file: &std::fs::File,
        meta: &std::fs::Metadata,
        rel: &Path,
    ) -> Result<DirId, FsError> {
        let Some(n) = &self.names else {
            return Ok(ROOT_DIR_ID);
        };
        if rel.as_os_str().is_empty() {
            return Ok(ROOT_DIR_ID);
        }
        let key = backing_key(meta);
        if let Some(id) = lock(&n.dir_ids).get(&key) {
            return Ok(*id);
        }
        let id = names::read_dir_id(file).map_err(|e| {
            FsError::name(
                match e {
                    names::NameError::Io(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                        names::NameError::Corrupt("directory has no .kmsfs.dirid")
                    }
                    e => e,
                },
                &self.backing_path(rel),
            )
        })?;
        let mut ids = lock(&n.dir_ids);
        if ids.len() >= DIR_IDS_MAX {
            ids.clear();
        }
        ids.insert(key, id);
        Ok(id)
    }

    /// The id of the directory holding the entry at stored path `rel`
    /// (opened beneath the backing root by its stored path).
    fn parent_dir_id(&self, rel: &Path) -> Result<DirId, FsError> {
        let parent = rel.parent().unwrap_or(Path::new(""));
        if self.names.is_none() || parent.as_os_str().is_empty() {
            return Ok(ROOT_DIR_ID);
        }
        let dir = os::beneath::open_beneath_deep(
            &self.root,
            parent,
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )?;
        let meta = dir.metadata()?;
        self.dir_id_at(&dir, &meta, parent)
    }

    /// Backing path `rel` (relative to the backing root) as the program
    /// names it under the mount point: with encrypted names each component
    /// is decrypted in its parent directory (for the audit trail's path).
    /// A component that does not open as a name of its directory is shown
    /// as stored; the open it describes is refused elsewhere if it matters.
    ///
    /// Directories are decrypted once and remembered by stored path, so a
    /// create or open costs no system call here (a long name reads its
    /// side file). A stored path maps to one plaintext path whatever
    /// happens to the tree (a name's encryption is bound to its parent's
    /// id); only the id remembered can be stale (a directory removed and
    /// made again under the same name), and then a child does not decrypt
    /// and the directory is read again.
    pub(super) fn plain_rel(&self, rel: &Path) -> String {
        let stored = || rel.to_string_lossy().into_owned();
        let (Some(n), Ok(Some(key))) = (&self.names, self.name_key()) else {
            return stored();
        };
        let (Some(parent), Some(last)) = (rel.parent(), rel.file_name()) else {
            return stored();
        };
        let mut plain = None;
        for fresh in [false, true] {
            if fresh {
                self.forget_plain_dirs(n, parent);
            }
            if let Some((dir, id)) = self.plain_dir(n, &key, parent)
                && let Some(name) = self.decrypt_component(&key, parent, &id, last)
            {
                plain = Some(dir.join(name));
                break;
            }
        }
        match plain {
            Some(p) => p.to_string_lossy().into_owned(),
            None => stored(),
        }
    }

    /// The plaintext path and id of the directory at stored path `rel`
    /// (None when some component does not decrypt).
    fn plain_dir(&self, n: &Names, key: &NameKey, rel: &Path) -> Option<(PathBuf, DirId)> {
        if rel.as_os_str().is_empty() {
            return Some((PathBuf::new(), ROOT_DIR_ID));
        }
        if let Some(known) = lock(&n.plain_dirs).get(rel) {
            return Some(known.clone());
        }
        let (parent, last) = (rel.parent()?, rel.file_name()?);
        let (plain_parent, parent_id) = self.plain_dir(n, key, parent)?;
        let name = self.decrypt_component(key, parent, &parent_id, last)?;
        let dir =
            os::beneath::open_beneath_deep(&self.root, rel, libc::O_PATH | libc::O_DIRECTORY, 0)
                .ok()?;
        let id = names::read_dir_id(&dir).ok()?;
        let known = (plain_parent.join(name), id);
        let mut dirs = lock(&n.plain_dirs);
        if dirs.len() >= DIR_IDS_MAX {
            dirs.clear();
        }
        dirs.insert(rel.to_path_buf(), known.clone());
        Some(known)
    }

    /// Forgets what `plain_dir` remembered of `rel` and the directories
    /// above it.
    fn forget_plain_dirs(&self, n: &Names, rel: &Path) {
        let mut dirs = lock(&n.plain_dirs);
        for a in rel.ancestors() {
            dirs.remove(a);
        }
    }

    /// Stored entry `part` of the directory at stored path `parent`, whose
    /// id is `id`, decrypted (a long name's side file is read from there).
    fn decrypt_component(
        &self,
        key: &NameKey,
        parent: &Path,
        id: &DirId,
        part: &OsStr,
    ) -> Option<OsString> {
        key.decrypt_entry(id, part, |side| {
            let dir = os::beneath::open_beneath_deep(
                &self.root,
                os::or_dot(parent),
                libc::O_PATH | libc::O_DIRECTORY,
                0,
            )?;
            names::read_side_file(&dir, side)
        })
        .ok()
    }

    /// Remembers the id of a directory just made.
    pub(super) fn remember_dir_id(&self, m: &std::fs::Metadata, id: DirId) {
        if let Some(n) = &self.names {
            lock(&n.dir_ids).insert(backing_key(m), id);
        }
    }

    /// The backing name of `name` in directory `dir`.
    pub(super) fn backing_name(&self, dir: &Checked, name: &OsStr) -> Result<Backing, FsError> {
        let Some(key) = self.name_key()? else {
            return Ok(Backing {
                name: name.to_os_string(),
                enc: None,
            });
        };
        let id = self.dir_id(dir)?;
        let enc = key
            .encrypt_name(&id, name)
            .map_err(|e| FsError::name(e, &self.backing_path(&dir.rel)))?;
        Ok(Backing {
            name: enc.entry.clone(),
            enc: Some(enc),
        })
    }

    /// The attributes of `ino` from its backing metadata: `attr_of`, and
    /// with encrypted names a symlink's size is its plaintext target's.
    pub(super) fn attr(&self, ino: u64, m: &std::fs::Metadata) -> Attr {
        let mut a = attr_of(self.cfg.layout, ino, m);
        if self.names.is_some() && a.kind == Kind::Symlink {
            a.size = names::target_len(a.size);
            if let Some(g) = self.link_generation(ino) {
                a.generation = g;
            }
        }
        a
    }

    /// The generation kept for re-sealed symlink `ino`, if it is one.
    pub(super) fn link_generation(&self, ino: u64) -> Option<u64> {
        let n = self.names.as_ref()?;
        lock(&n.link_generations).get(&ino).copied()
    }

    /// Keeps generation `g` for re-sealed symlink `ino` (`kept`: both).
    pub(super) fn keep_generation(&self, kept: Option<(u64, u64)>) {
        if let (Some(n), Some((ino, g))) = (&self.names, kept) {
            let mut gens = lock(&n.link_generations);
            if gens.len() >= DIR_IDS_MAX {
                gens.clear();
            }
            gens.insert(ino, g);
        }
    }

    /// The stored form of symlink target `target` for the link whose
    /// backing name is `enc` (None: plain names, stored as it is).
    pub(super) fn stored_target(
        &self,
        enc: Option<&BackingName>,
        target: &[u8],
    ) -> Result<Vec<u8>, FsError> {
        let (Some(k), Some(name)) = (self.name_key()?, enc) else {
            return Ok(target.to_vec());
        };
        k.encrypt_target(LinkPlace::of(name), target)
            .map_err(|e| FsError::name(e, &self.cfg.backing))
    }

    /// The plaintext of stored symlink target `stored` of the link at
    /// stored path `rel`, and its form: EIO (logged, naming the link) for
    /// a target sealed for another link, moved, or edited.
    pub(super) fn plain_target(
        &self,
        stored: Vec<u8>,
        rel: &Path,
    ) -> Result<(Vec<u8>, TargetForm), FsError> {
        let Some(k) = self.name_key()? else {
            return Ok((stored, TargetForm::Link));
        };
        let dir = self.parent_dir_id(rel)?;
        let entry = rel.file_name().unwrap_or_default();
        k.decrypt_target(LinkPlace { dir: &dir, entry }, &stored)
            .map_err(|e| FsError::name(e, &self.backing_path(rel)))
    }
}
