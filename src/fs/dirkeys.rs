//! A key per directory: a directory may name the CMK that wraps the data
//! keys of files created under it and under its subdirectories, which
//! inherit it. The choice is a record in the backing directory's xattr
//! `RECORD_XATTR`, authenticated by an HMAC under the tree's directory-key
//! MAC key (wrapped by the tree's CMK, kept in the binding file) and bound
//! to the directory's inode and birth time: a record the mount did not
//! write is refused (EIO), never obeyed. Programs read and change it
//! through the mount as the xattr `DIR_KEY_XATTR` of a directory
//! (`kmsfs set-key`, `kmsfs get-key`); docs/MOUNT.md, "A key per directory".
//! With a local keystore, the keystore also lists every key the mount sets
//! (`DirKeyList`): a record removed from the backing directory, or an older
//! one put back, is refused as well.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::json;

use super::error::FsError;
use super::filesystem::{KmsFs, lock};
use super::xattr::{XattrValue, answer};
use crate::crypto::SecretBytes;
use crate::envelope::dirkey::{
    DirId, Listed, MAC_KEY_PURPOSE, PURPOSE_KEY, RECORD_XATTR, SET_KEY_PURPOSE, check_record,
    record_text,
};
use crate::kms::{
    Caller, DataKeySpec, EncryptionContext, FileAccess, KeyServiceExt, KmsError, Origin,
    RequestContext,
};
use crate::os;

/// The xattr of a directory in the mount that reads (JSON: `KeyId`,
/// `Source` directory, inherited or default, `From`), sets (a key id, alias
/// or ARN) and removes (back to the parent's key) the directory's key.
pub const DIR_KEY_XATTR: &str = "user.kmsfs.key-id";
/// Longest record read.
const RECORD_MAX: usize = 1024;
/// Directories whose key is cached at most (then the cache starts afresh).
const CACHE_MAX: usize = 1 << 14;

/// Saves a newly made wrapped MAC key in the binding file (the daemon's).
pub type SaveMacKey = Arc<dyn Fn(&[u8]) -> Result<(), String> + Send + Sync>;

/// The list of the keys set on the tree's directories, kept where those who
/// can write the backing tree cannot (the keystore's record of the tree).
pub trait DirKeyList: Send + Sync {
    /// What it says of directory `id` (None: nothing).
    fn get(&self, id: DirId) -> std::io::Result<Option<Listed>>;
    /// Lists `id` as `to` (None: drops it), durably; what it said before.
    fn set(&self, id: DirId, to: Option<Listed>) -> std::io::Result<Option<Listed>>;
    /// Where it is kept (for messages).
    fn path(&self) -> &Path;
    /// A number that changes whenever the list does.
    fn version(&self) -> std::io::Result<u64>;
}

/// Reads the wrapped MAC key from the binding file again (None: it has
/// none): another daemon of a shared tree may have made it since.
pub type LoadMacKey = Arc<dyn Fn() -> Result<Option<Vec<u8>>, String> + Send + Sync>;

/// How the mount finds the tree's directory-key MAC key.
#[derive(Clone, Default)]
pub struct DirKeysConfig {
    /// The MAC key as the binding file holds it, wrapped (None: no
    /// directory of the tree has a key of its own yet).
    pub wrapped: Option<Vec<u8>>,
    /// The CMKs the MAC key may be wrapped under (the binding file's
    /// default key and the mount's): a MAC key under any other is refused,
    /// so a binding file edited to hold a MAC key of someone else's key
    /// forges nothing.
    pub trusted: Vec<String>,
    /// Records a MAC key made at the first set-key (None: read-only).
    pub save: Option<SaveMacKey>,
    /// Reads it again while the mount knows none.
    pub load: Option<LoadMacKey>,
    /// The keystore's list of the tree's directory keys (None: a remote
    /// KMS, which keeps none; a removed record is not detected then).
    pub list: Option<Arc<dyn DirKeyList>>,
    /// Other mounts serve the same tree (`-o sharedstorage`): the keys
    /// cached are dropped whenever the list changed, so a key another
    /// mount set or cleared is used from the next create on.
    pub shared: bool,
}

impl std::fmt::Debug for DirKeysConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirKeysConfig")
            .field("wrapped", &self.wrapped.is_some())
            .field("trusted", &self.trusted)
            .field("list", &self.list.as_ref().map(|l| l.path().to_path_buf()))
            .finish()
    }
}

/// The directory keys the mount has read or set, by directory (as seen
/// under the mount point): what `kmsfs status` lists.
pub type DirKeysSeen = Arc<Mutex<BTreeMap<String, String>>>;

/// The map behind `DirKeysSeen`, also after a panic poisoned its lock.
pub fn lock_seen(s: &DirKeysSeen) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
    lock(s)
}

/// Where a directory's key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Effective {
    /// The CMK for new files.
    pub(super) key_id: String,
    /// The backing directory (relative) whose record names it; None: the
    /// mount's key.
    pub(super) from: Option<PathBuf>,
}

/// The mount's state of directory keys.
#[derive(Debug)]
pub(super) struct DirKeys {
    wrapped: Mutex<Option<Vec<u8>>>,
    mac: Mutex<Option<(u64, Arc<SecretBytes>)>>,
    cache: Mutex<HashMap<PathBuf, Effective>>,
    /// The list's version the cache was filled under (shared trees).
    cached_under: Mutex<u64>,
    pub(super) seen: DirKeysSeen,
}

impl DirKeys {
    pub(super) fn new(cfg: &DirKeysConfig) -> Self {
        Self {
            wrapped: Mutex::new(cfg.wrapped.clone()),
            mac: Mutex::new(None),
            cache: Mutex::new(HashMap::new()),
            cached_under: Mutex::new(0),
            seen: DirKeysSeen::default(),
        }
    }
}

/// The mount's own identity, for the MAC key.
fn me() -> Caller {
    let (uid, gid) = os::ids::ids();
    Caller {
        uid,
        gid,
        pid: std::process::id(),
        access_key: None,
    }
}

fn mac_context() -> EncryptionContext {
    EncryptionContext::with(PURPOSE_KEY, MAC_KEY_PURPOSE)
}

/// EIO with a warning naming the backing directory.
fn refused(backing: &Path, why: &str) -> FsError {
    log::warn!(
        "{}: directory key record refused: {why}; returning EIO",
        crate::logtext::escaped(backing)
    );
    FsError::Io(std::io::Error::from_raw_os_error(libc::EIO))
}

/// EIO with a warning: the list of directory keys could not be used.
fn list_failed(list: &dyn DirKeyList, e: std::io::Error) -> FsError {
    log::warn!(
        "the list of directory keys {}: {e}; returning EIO",
        crate::logtext::escaped(list.path())
    );
    FsError::Io(std::io::Error::from_raw_os_error(libc::EIO))
}

/// A key service error met on the directory key of `backing`.
fn kms(e: KmsError, backing: &Path) -> FsError {
    FsError::envelope(crate::envelope::EnvelopeError::Kms(e), backing)
}

impl KmsFs {
    fn dir_keys(&self) -> &DirKeys {
        &self.dir_keys
    }

    /// The directory keys read or set so far (for `kmsfs status`).
    pub fn dir_keys_seen(&self) -> DirKeysSeen {
        self.dir_keys().seen.clone()
    }

    /// The tree's MAC key: unwrapped as the mount (under a trusted CMK
    /// only) whenever the key service's state changed; made and saved when
    /// `create` and there is none.
    fn mac_key(&self, create: bool) -> Result<Option<Arc<SecretBytes>>, FsError> {
        let ks = &*self.cfg.ks;
        let generation = ks.generation();
        let d = self.dir_keys();
        let mut mac = lock(&d.mac);
        if let Some((g, k)) = &*mac
            && *g == generation
        {
            return Ok(Some(k.clone()));
        }
        let rc = RequestContext::new(me(), Origin::Mount);
        let mut wrapped = lock(&d.wrapped);
        if wrapped.is_none()
            && let Some(load) = &self.cfg.dir_keys.load
        {
            match load() {
                Ok(w) => *wrapped = w,
                Err(e) => log::warn!("reading the directory-key MAC key again: {e}"),
            }
        }
        let key = match &*wrapped {
            Some(w) => {
                let mut last = None;
                let mut found = None;
                for k in &self.cfg.dir_keys.trusted {
                    match ks.decrypt(&rc, w, &mac_context(), Some(k)) {
                        Ok(p) => {
                            found = Some(p.plaintext);
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                match (found, last) {
                    (Some(p), _) => p,
                    (None, Some(e)) => return Err(kms(e, &self.cfg.backing)),
                    (None, None) => return Err(refused(&self.cfg.backing, "no trusted key")),
                }
            }
            None if !create => return Ok(None),
            None => {
                let Some(save) = &self.cfg.dir_keys.save else {
                    return Err(FsError::ReadOnly);
                };
                let dk = ks
                    .generate_data_key(&rc, &self.cfg.key_id, DataKeySpec::Aes256, &mac_context())
                    .map_err(|e| kms(e, &self.cfg.backing))?;
                save(&dk.ciphertext_blob).map_err(|e| {
                    log::warn!("saving the directory-key MAC key: {e}");
                    FsError::Io(std::io::Error::from_raw_os_error(libc::EIO))
                })?;
                *wrapped = Some(dk.ciphertext_blob);
                dk.plaintext
            }
        };
        let key = Arc::new(key);
        *mac = Some((generation, key.clone()));
        Ok(Some(key))
    }

    /// The record on backing directory `dir` (described by `m`, reached as
    /// `rel`): None when it has none; EIO when one is there that the mount
    /// did not write for this directory.
    fn read_record(&self, dir: &File, m: &Metadata, rel: &Path) -> Result<Option<String>, FsError> {
        let mut buf = vec![0u8; RECORD_MAX];
        let n = match os::xattr::getxattr_node(dir, OsStr::new(RECORD_XATTR), &mut buf) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => {
                return Err(refused(&self.backing_path(rel), "too long"));
            }
            Err(e) => return Err(e.into()),
        };
        let Some(mac) = self.mac_key(false)? else {
            return Err(refused(
                &self.backing_path(rel),
                "the tree has no directory-key MAC key",
            ));
        };
        check_record(mac.expose(), &buf[..n], m)
            .map(Some)
            .map_err(|why| refused(&self.backing_path(rel), why))
    }

    /// `record`, the checked record of backing directory `rel` (`m`), as
    /// the keystore's list allows it: a record the list says was removed,
    /// replaced or cleared is refused (EIO); one it does not know (written
    /// before lists existed, or by an import) is listed now.
    fn check_listed(
        &self,
        record: Option<String>,
        m: &Metadata,
        rel: &Path,
    ) -> Result<Option<String>, FsError> {
        let Some(list) = &self.cfg.dir_keys.list else {
            return Ok(record);
        };
        let id = DirId::of(m);
        let listed = list.get(id).map_err(|e| list_failed(&**list, e))?;
        let at = || self.backing_path(rel);
        let shown = crate::logtext::escaped(list.path());
        match (record, listed) {
            (Some(k), Some(Listed::Key(l))) if k == l => Ok(Some(k)),
            (Some(k), Some(Listed::Key(l))) => Err(refused(
                &at(),
                &format!(
                    "it names {k}, but the key set last on this directory is {l} (as {shown} \
                     lists): an older record put back"
                ),
            )),
            (Some(_), Some(Listed::Cleared)) => Err(refused(
                &at(),
                &format!(
                    "its owner cleared this directory's key (as {shown} lists): a record put \
                     back since"
                ),
            )),
            (Some(k), None) => {
                if self.writable().is_ok()
                    && let Err(e) = list.set(id, Some(Listed::Key(k.clone())))
                {
                    log::warn!("listing the key of {}: {e}", crate::logtext::escaped(&at()));
                }
                Ok(Some(k))
            }
            (None, Some(Listed::Key(l))) => Err(refused(
                &at(),
                &format!(
                    "the record is missing, but key {l} was set on this directory (as {shown} \
                     lists): removed in the backing directory; its owner sets the key again \
                     with `kmsfs set-key` (or `--inherit`)"
                ),
            )),
            (None, _) => Ok(None),
        }
    }

    /// Drops directory `id`, removed through the mount, from the list.
    pub(super) fn dir_key_unlisted(&self, id: DirId) {
        let Some(list) = &self.cfg.dir_keys.list else {
            return;
        };
        let r = list.get(id).and_then(|l| {
            if l.is_some() {
                list.set(id, None).map(drop)
            } else {
                Ok(())
            }
        });
        if let Err(e) = r {
            log::warn!(
                "dropping a removed directory from {}: {e}",
                crate::logtext::escaped(list.path())
            );
        }
    }

    /// Whether removed directories must be dropped from a list.
    pub(super) fn dir_keys_listed(&self) -> bool {
        self.cfg.dir_keys.list.is_some()
    }

    /// The key for files created in backing directory `rel`: the record of
    /// the nearest directory from `rel` up to the root that has one, else
    /// the mount's key. A refused record refuses the create (EIO): the
    /// mount's key is not used instead.
    pub(super) fn dir_key(&self, rel: &Path) -> Result<Effective, FsError> {
        let d = self.dir_keys();
        if let Some(list) = &self.cfg.dir_keys.list
            && self.cfg.dir_keys.shared
        {
            let v = list.version().map_err(|e| list_failed(&**list, e))?;
            let mut under = lock(&d.cached_under);
            if *under != v {
                lock(&d.cache).clear();
                *under = v;
            }
        }
        if let Some(e) = lock(&d.cache).get(rel) {
            return Ok(e.clone());
        }
        let mut at = Some(rel);
        let mut found = None;
        while let Some(p) = at {
            let dir = os::beneath::open_beneath_deep(
                &self.root,
                os::or_dot(p),
                libc::O_PATH | libc::O_DIRECTORY,
                0,
            )?;
            let m = dir.metadata()?;
            let record = self.read_record(&dir, &m, p)?;
            if let Some(k) = self.check_listed(record, &m, p)? {
                lock(&d.seen).insert(self.shown_dir(p), k.clone());
                found = Some(Effective {
                    key_id: k,
                    from: Some(p.to_path_buf()),
                });
                break;
            }
            at = p.parent();
        }
        let e = found.unwrap_or_else(|| Effective {
            key_id: self.cfg.key_id.clone(),
            from: None,
        });
        let mut cache = lock(&d.cache);
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(rel.to_path_buf(), e.clone());
        Ok(e)
    }

    /// Forgets the cached keys (a directory renamed, removed or its key
    /// changed).
    pub(super) fn dir_keys_moved(&self) {
        lock(&self.dir_keys().cache).clear();
    }

    /// A directory as seen under the mount point (`/` for the root).
    fn shown_dir(&self, rel: &Path) -> String {
        format!("/{}", self.plain_rel(rel))
    }

    /// getxattr `DIR_KEY_XATTR` of directory `ino`: where its key comes from.
    pub fn get_dir_key(&self, ino: u64, size: u32) -> Result<XattrValue, FsError> {
        let dir = self.open_checked(ino, libc::O_PATH | libc::O_DIRECTORY)?;
        let e = self.dir_key(&dir.rel)?;
        let source = match &e.from {
            None => "default",
            Some(p) if *p == dir.rel => "directory",
            Some(_) => "inherited",
        };
        let v = json!({
            "KeyId": e.key_id,
            "Source": source,
            "From": e.from.as_deref().map(|p| self.shown_dir(p)),
        })
        .to_string()
        .into_bytes();
        answer(v.len(), size, v)
    }

    /// setxattr `DIR_KEY_XATTR` of directory `ino` to `value` (a key id,
    /// alias or ARN) for `caller`: the directory's owner or root (EPERM
    /// otherwise), allowed GenerateDataKey on that key by its policy, asked
    /// of the key service as `caller` (EACCES otherwise, and nothing is
    /// written). The record names the key id the key service answered with.
    pub fn set_dir_key(&self, ino: u64, value: &[u8], caller: &Caller) -> Result<(), FsError> {
        self.writable()?;
        let dir = self.open_checked(ino, libc::O_PATH | libc::O_DIRECTORY)?;
        if caller.uid != 0 && caller.uid != dir.meta.uid() {
            return Err(FsError::Reserved);
        }
        let asked = std::str::from_utf8(value)
            .map_err(|_| FsError::Invalid)?
            .trim_end_matches('\0')
            .trim();
        if asked.is_empty() || asked.len() > 512 || asked.contains(char::is_whitespace) {
            return Err(FsError::Invalid);
        }
        let backing = self.backing_path(&dir.rel);
        let (requester, path) = self.requester(caller, &backing);
        let access = FileAccess {
            path: &path,
            requester: &requester,
        };
        let rc = RequestContext::open(*caller, &access);
        let context = EncryptionContext::with(PURPOSE_KEY, SET_KEY_PURPOSE);
        let dk = self
            .cfg
            .ks
            .generate_data_key(&rc, asked, DataKeySpec::Aes256, &context)
            .map_err(|e| kms(e, &backing))?;
        let key_id = dk.key_id.clone();
        drop(dk);
        let Some(mac) = self.mac_key(true)? else {
            return Err(FsError::ReadOnly);
        };
        let text = record_text(mac.expose(), &key_id, &dir.meta);
        // Listed first: a crash in between leaves a listed key without its
        // record, which refuses creates until the owner sets it again,
        // rather than a record the list does not know.
        let id = DirId::of(&dir.meta);
        let list = self.cfg.dir_keys.list.as_ref();
        let before = match list {
            Some(l) => l
                .set(id, Some(Listed::Key(key_id.clone())))
                .map_err(|e| list_failed(&**l, e))?,
            None => None,
        };
        if let Err(e) =
            os::xattr::setxattr_node(&dir.file, OsStr::new(RECORD_XATTR), text.as_bytes(), 0)
        {
            if let Some(l) = list {
                let _ = l.set(id, before);
            }
            return Err(e.into());
        }
        self.dir_keys_moved();
        lock(&self.dir_keys().seen).insert(self.shown_dir(&dir.rel), key_id.clone());
        log::info!(
            "uid {} set the key of {} to {key_id}",
            caller.uid,
            crate::logtext::escaped(&backing)
        );
        Ok(())
    }

    /// removexattr `DIR_KEY_XATTR` of directory `ino` for `caller` (the
    /// owner or root): files created in it get the parent's key again.
    /// ENODATA when it had none of its own.
    pub fn clear_dir_key(&self, ino: u64, caller: &Caller) -> Result<(), FsError> {
        self.writable()?;
        let dir = self.open_checked(ino, libc::O_PATH | libc::O_DIRECTORY)?;
        if caller.uid != 0 && caller.uid != dir.meta.uid() {
            return Err(FsError::Reserved);
        }
        // Listed as cleared first, so that the record, once removed, cannot
        // be put back; a record already removed by someone else is cleared
        // too (the owner's answer to the refusal it caused).
        let id = DirId::of(&dir.meta);
        let list = self.cfg.dir_keys.list.as_ref();
        let before = match list {
            Some(l) => l
                .set(id, Some(Listed::Cleared))
                .map_err(|e| list_failed(&**l, e))?,
            None => None,
        };
        let undo = || {
            if let Some(l) = list {
                let _ = l.set(id, before.clone());
            }
        };
        match os::xattr::removexattr_node(&dir.file, OsStr::new(RECORD_XATTR)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {
                if !matches!(before, Some(Listed::Key(_))) {
                    undo();
                    return Err(FsError::NoAttribute);
                }
            }
            Err(e) => {
                undo();
                return Err(e.into());
            }
        }
        self.dir_keys_moved();
        lock(&self.dir_keys().seen).remove(&self.shown_dir(&dir.rel));
        log::info!(
            "uid {} cleared the key of {}",
            caller.uid,
            crate::logtext::escaped(&self.backing_path(&dir.rel))
        );
        Ok(())
    }
}
