//! The keystore directory: its file names, reads that never follow links or
//! allocate wildly, the exclusive writer lock, and atomic, durable writes of
//! both generations.
#![forbid(unsafe_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::codec::{CHECKSUM_LEN, FIXED_LEN, MAX_BODY_LEN, ROOT_KEY_MAGIC, corrupt};
use crate::crypto::{self, Key256};
use crate::kms::{KmsError, RootKeyProblem};

/// File name of the current generation.
pub const CURRENT_FILE: &str = "keystore.kms";
/// File name of the previous generation.
pub const PREV_FILE: &str = "keystore.prev";
/// File name of the root key (root-key-file mode).
pub const ROOT_KEY_FILE: &str = "root.key";
/// File name of the lock file.
pub const LOCK_FILE: &str = "keystore.lock";
pub(super) const CURRENT_TMP: &str = "keystore.kms.tmp";
pub(super) const PREV_TMP: &str = "keystore.prev.tmp";

/// Identity of a file version on disk: changes when the file is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Fingerprint {
    fn of(m: &fs::Metadata) -> Self {
        Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        }
    }
}

/// A keystore directory and the names of its files.
#[derive(Debug, Clone)]
pub struct KeystoreDir {
    dir: PathBuf,
}

/// Holds the exclusive keystore lock until dropped.
#[derive(Debug)]
pub struct LockGuard(#[allow(dead_code)] File);

pub(super) fn io_err(what: &str, path: &Path, e: std::io::Error) -> KmsError {
    if e.raw_os_error() == Some(libc::ELOOP) {
        return KmsError::io(format!(
            "cannot {what} {}: it is a symbolic link, and kmsfs never follows symbolic links \
             inside the keystore directory (someone may be trying to redirect its writes); \
             nothing was written — check who made it, remove it, and try again",
            path.display()
        ));
    }
    KmsError::io_from(format!("cannot {what} {}", path.display()), e)
}

/// Flags for every open inside the keystore directory: never follow a symbolic
/// link in the last component, never leak the descriptor to a child, never block
/// on a FIFO planted under a keystore name.
const OPEN_FLAGS: i32 = libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;

/// Opens an existing file of the keystore directory read-only, without
/// following symbolic links, and checks that it is a regular file.
#[allow(clippy::disallowed_methods)] // in the keystore directory, which trust.rs checks is writable by its owner and root only
fn open_regular(p: &Path) -> std::io::Result<(File, fs::Metadata)> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(OPEN_FLAGS)
        .open(p)?;
    let m = f.metadata()?;
    if !m.file_type().is_file() {
        return Err(std::io::Error::other("it is not a regular file"));
    }
    Ok((f, m))
}

/// Creates a new file (O_EXCL: fails on any existing entry, symbolic links
/// included) with mode 0600, without following symbolic links.
#[allow(clippy::disallowed_methods)] // in the keystore directory, which trust.rs checks is writable by its owner and root only
fn create_exclusive(p: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(OPEN_FLAGS)
        .open(p)
}

/// Reads at most `max` bytes of `f`; more is an error (`Ok(None)`), so a huge
/// or growing file never makes us allocate wildly.
fn read_bounded(f: &mut File, len_hint: u64, max: usize) -> std::io::Result<Option<Vec<u8>>> {
    if len_hint > max as u64 {
        return Ok(None);
    }
    let mut buf = Vec::with_capacity(len_hint as usize);
    f.take(max as u64 + 1).read_to_end(&mut buf)?;
    Ok((buf.len() <= max).then_some(buf))
}

/// Largest keystore file accepted.
const MAX_FILE_LEN: usize = FIXED_LEN + MAX_BODY_LEN + CHECKSUM_LEN;
/// Exact size of `root.key`.
const ROOT_KEY_FILE_LEN: usize = ROOT_KEY_MAGIC.len() + crypto::KEY_LEN;

impl KeystoreDir {
    /// The keystore at `dir` (which may not exist yet).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }
    /// Path of a file in the directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    /// True when the directory has an entry `name` of any kind (a dangling
    /// symbolic link included), or when that cannot be ruled out (EACCES, EIO):
    /// only a definite "no such file" counts as absent.
    #[allow(clippy::disallowed_methods)] // in the keystore directory, which trust.rs checks is writable by its owner and root only
    pub fn has_entry(&self, name: &str) -> bool {
        !matches!(fs::symlink_metadata(self.file(name)), Err(e) if e.kind() == ErrorKind::NotFound)
    }
    /// True when a current or previous generation exists, or may exist.
    pub fn exists(&self) -> bool {
        self.has_entry(CURRENT_FILE) || self.has_entry(PREV_FILE)
    }

    /// When there is no generation: the file that shows a keystore was here
    /// (`root.key`, or the lock file that every writer creates first).
    pub fn lost_evidence(&self) -> Option<&'static str> {
        [ROOT_KEY_FILE, LOCK_FILE]
            .into_iter()
            .find(|n| self.has_entry(n))
    }

    /// Waits until no writer holds the lock (a keystore being created right
    /// now shows its lock file before its first generation). Best effort.
    pub fn wait_for_writers(&self) {
        if let Ok((f, _)) = open_regular(&self.file(LOCK_FILE)) {
            let _ = lock_bounded(&f, &self.file(LOCK_FILE));
        }
    }

    /// Creates the directory (mode 0700) if needed.
    #[allow(clippy::disallowed_methods)] // the keystore directory trust.rs accepted, made 0700
    pub fn create_dir(&self) -> Result<(), KmsError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| io_err("create keystore directory", &self.dir, e))
    }

    /// Takes the exclusive lock that serialises writers (blocking). The lock
    /// file is never followed through a symbolic link; a new one is created
    /// locked under a unique name and then linked into place, so it never
    /// appears unlocked (see `wait_for_writers`).
    pub fn lock(&self) -> Result<LockGuard, KmsError> {
        let p = self.file(LOCK_FILE);
        // flock works on a read-only descriptor: an existing lock file made by
        // another user of the keystore (e.g. its owner vs. a root daemon) is fine.
        let f = match open_regular(&p) {
            Ok((f, _)) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => self.create_lock_file(&p)?,
            Err(e) => return Err(io_err("open lock file", &p, e)),
        };
        lock_bounded(&f, &p)?;
        Ok(LockGuard(f))
    }

    #[allow(clippy::disallowed_methods)] // in the keystore directory, which trust.rs checks is writable by its owner and root only
    fn create_lock_file(&self, p: &Path) -> Result<File, KmsError> {
        let suffix = crypto::random_array::<8>().map_err(|e| KmsError::internal(e.to_string()))?;
        let tmp = self.file(&format!("{LOCK_FILE}.{}", crypto::hex(&suffix)));
        let f = create_exclusive(&tmp).map_err(|e| io_err("create lock file", &tmp, e))?;
        let r = (|| {
            self.match_dir_owner(&f, &tmp)?;
            f.lock().map_err(|e| io_err("lock", &tmp, e))?;
            match fs::hard_link(&tmp, p) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(io_err("create lock file", p, e)),
            }
        })();
        let _ = fs::remove_file(&tmp);
        if r? {
            Ok(f)
        } else {
            // Another writer linked its lock file first: use that one.
            drop(f);
            open_regular(p)
                .map(|(f, _)| f)
                .map_err(|e| io_err("open lock file", p, e))
        }
    }

    /// Gives a file this process just created (O_EXCL) in the keystore directory
    /// the directory's owner, so a root process (the mount daemon) never leaves
    /// a user's keystore owned by root and unreadable to that user. Only root can
    /// do this; for anyone else the owners already match, or the attempt is
    /// refused and harmless. Never called on a file that existed before.
    #[allow(clippy::disallowed_methods)] // in the keystore directory, which trust.rs checks is writable by its owner and root only
    fn match_dir_owner(&self, f: &File, p: &Path) -> Result<(), KmsError> {
        let dir = fs::metadata(&self.dir).map_err(|e| io_err("stat", &self.dir, e))?;
        let me = f.metadata().map_err(|e| io_err("stat", p, e))?;
        if !me.file_type().is_file() || me.nlink() != 1 {
            return Err(KmsError::io(format!(
                "{} changed under kmsfs right after it created it (another link to it \
                 appeared); refusing to go on",
                p.display()
            )));
        }
        if (me.uid(), me.gid()) == (dir.uid(), dir.gid()) {
            return Ok(());
        }
        match std::os::unix::fs::fchown(f, Some(dir.uid()), Some(dir.gid())) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::PermissionDenied => Ok(()),
            Err(e) => Err(io_err("set the owner of", p, e)),
        }
    }

    /// Stat of the current generation (None when absent).
    #[allow(clippy::disallowed_methods)] // in the keystore directory, which trust.rs checks is writable by its owner and root only
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        fs::symlink_metadata(self.file(CURRENT_FILE))
            .ok()
            .map(|m| Fingerprint::of(&m))
    }

    /// Reads a whole keystore file (never through a symbolic link, never more
    /// than the largest valid keystore) and the fingerprint of what was read.
    /// `Ok(None)` when it does not exist.
    pub fn read(&self, name: &str) -> Result<Option<(Vec<u8>, Fingerprint)>, KmsError> {
        let p = self.file(name);
        let (mut f, meta) = match open_regular(&p) {
            Ok(x) => x,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("open", &p, e)),
        };
        match read_bounded(&mut f, meta.len(), MAX_FILE_LEN).map_err(|e| io_err("read", &p, e))? {
            Some(buf) => Ok(Some((buf, Fingerprint::of(&meta)))),
            None => Err(corrupt(
                name,
                &format!(
                    "it is {} bytes, larger than any keystore file can be ({MAX_FILE_LEN} bytes)",
                    meta.len()
                ),
            )),
        }
    }

    /// Reads `root.key`.
    pub(super) fn read_root_key_file(&self) -> Result<Key256, KmsError> {
        let p = self.file(ROOT_KEY_FILE);
        let opened = open_regular(&p).and_then(|(mut f, m)| {
            read_bounded(&mut f, m.len(), ROOT_KEY_FILE_LEN).map(|b| b.unwrap_or_default())
        });
        let bytes = match opened {
            Ok(b) => Zeroizing::new(b),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(KmsError::WrongRootKey {
                    problem: RootKeyProblem::KeyFileMissing { path: p },
                });
            }
            Err(e) => return Err(io_err("read root key file", &p, e)),
        };
        if bytes.len() != ROOT_KEY_FILE_LEN || bytes[..8] != ROOT_KEY_MAGIC {
            return Err(KmsError::WrongRootKey {
                problem: RootKeyProblem::NotAKeyFile { path: p },
            });
        }
        Key256::from_slice(&bytes[8..]).map_err(|e| KmsError::internal(e.to_string()))
    }

    /// Creates `root.key` (mode 0600) with a fresh random key. An existing one
    /// is never reused (the caller refuses first: it means a lost keystore).
    pub(super) fn create_root_key_file(&self) -> Result<(), KmsError> {
        let p = self.file(ROOT_KEY_FILE);
        let key = Key256::random().map_err(|e| KmsError::internal(e.to_string()))?;
        let mut buf = Zeroizing::new(Vec::with_capacity(40));
        buf.extend_from_slice(&ROOT_KEY_MAGIC);
        buf.extend_from_slice(key.expose());
        let mut f = create_exclusive(&p).map_err(|e| io_err("create root key file", &p, e))?;
        self.match_dir_owner(&f, &p)?;
        f.write_all(&buf).map_err(|e| io_err("write", &p, e))?;
        f.sync_all().map_err(|e| io_err("fsync", &p, e))?;
        self.sync_dir()
    }

    /// Removes `root.key` (a switch to a passphrase, or a stale one left by
    /// an interrupted switch to a key file) and syncs the directory.
    #[allow(clippy::disallowed_methods)] // in the keystore directory, which trust.rs checks is writable by its owner and root only
    pub(super) fn remove_root_key_file(&self) -> Result<(), KmsError> {
        let p = self.file(ROOT_KEY_FILE);
        match fs::remove_file(&p) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &p, e)),
        }
    }

    #[allow(clippy::disallowed_methods)] // in the keystore directory, which trust.rs checks is writable by its owner and root only
    fn sync_dir(&self) -> Result<(), KmsError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err("fsync directory", &self.dir, e))
    }

    /// Writes a temporary as a new file of ours: a stale regular temporary is
    /// removed first, anything else under that name (a symbolic link, a FIFO, a
    /// directory) is refused, and the file is created with O_EXCL|O_NOFOLLOW so
    /// that a link planted in between makes the write fail instead of following it.
    fn write_tmp(&self, name: &str, bytes: &[u8]) -> Result<PathBuf, KmsError> {
        let p = self.file(name);
        self.remove_temporary(name)?;
        let mut f = create_exclusive(&p).map_err(|e| match e.kind() {
            ErrorKind::AlreadyExists => KmsError::io(format!(
                "cannot create {}: something appeared under that name while kmsfs was \
                 writing (someone may be trying to redirect its writes); nothing was written",
                p.display()
            )),
            _ => io_err("create", &p, e),
        })?;
        self.match_dir_owner(&f, &p)?;
        f.write_all(bytes).map_err(|e| io_err("write", &p, e))?;
        f.sync_all().map_err(|e| io_err("fsync", &p, e))?;
        Ok(p)
    }

    /// Replaces the previous generation with `prev` (when given) and the current
    /// with `current`, each through a fsynced temporary file and a rename, then
    /// fsyncs the directory. Both temporaries are written before either rename so
    /// the new current never reuses the inode of the one it replaces. Caller holds
    /// the lock. Returns the fingerprint of the new current generation.
    pub fn write_generations(
        &self,
        prev: Option<&[u8]>,
        current: &[u8],
    ) -> Result<Fingerprint, KmsError> {
        let r = self.write_generations_inner(prev, current);
        if r.is_err() {
            // Disk full or similar: leave no half-written temporaries behind.
            self.remove_stale_temporaries();
        }
        r
    }

    #[allow(clippy::disallowed_methods)] // in the keystore directory, which trust.rs checks is writable by its owner and root only
    fn write_generations_inner(
        &self,
        prev: Option<&[u8]>,
        current: &[u8],
    ) -> Result<Fingerprint, KmsError> {
        let prev_tmp = match prev {
            Some(b) => Some(self.write_tmp(PREV_TMP, b)?),
            None => None,
        };
        let cur_tmp = self.write_tmp(CURRENT_TMP, current)?;
        if let Some(t) = prev_tmp {
            let dst = self.file(PREV_FILE);
            fs::rename(&t, &dst).map_err(|e| io_err("rename to", &dst, e))?;
        }
        let dst = self.file(CURRENT_FILE);
        fs::rename(&cur_tmp, &dst).map_err(|e| io_err("rename to", &dst, e))?;
        self.sync_dir()?;
        fs::symlink_metadata(&dst)
            .map(|m| Fingerprint::of(&m))
            .map_err(|e| io_err("stat", &dst, e))
    }

    /// Removes a temporary a crashed writer may have left (caller holds the
    /// lock). Only a regular file is removed silently; anything else there was
    /// not made by kmsfs and is refused with a clear error.
    #[allow(clippy::disallowed_methods)] // in the keystore directory, which trust.rs checks is writable by its owner and root only
    fn remove_temporary(&self, name: &str) -> Result<(), KmsError> {
        let p = self.file(name);
        match fs::symlink_metadata(&p) {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("stat", &p, e)),
            Ok(m) if m.file_type().is_file() => match fs::remove_file(&p) {
                Err(e) if e.kind() != ErrorKind::NotFound => Err(io_err("remove", &p, e)),
                _ => Ok(()),
            },
            Ok(m) => Err(KmsError::io(format!(
                "{} is a {}, not a temporary file kmsfs left; kmsfs never writes through it \
                 (someone may be trying to redirect its writes); nothing was written — check \
                 who made it, remove it, and try again",
                p.display(),
                if m.file_type().is_symlink() {
                    "symbolic link"
                } else if m.file_type().is_dir() {
                    "directory"
                } else {
                    "special file"
                }
            ))),
        }
    }

    /// Removes temporaries a crashed writer may have left (caller holds the
    /// lock); best effort, the write itself refuses what it cannot remove.
    pub fn remove_stale_temporaries(&self) {
        for t in [CURRENT_TMP, PREV_TMP] {
            let _ = self.remove_temporary(t);
        }
    }
}

/// How long a writer waits for the keystore lock. Writers hold it for
/// milliseconds; anyone who may read the keystore can take it, so an
/// unbounded wait would let them stall a mount's writes for good.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Takes the exclusive lock on `f`, giving up after `LOCK_WAIT`.
fn lock_bounded(f: &File, p: &Path) -> Result<(), KmsError> {
    let start = std::time::Instant::now();
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) if start.elapsed() < LOCK_WAIT => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(KmsError::io(format!(
                    "the keystore lock {} has been held by another process for {} s; nothing \
                     was changed. Find it with `fuser {}` and try again when it is done",
                    p.display(),
                    LOCK_WAIT.as_secs(),
                    p.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err("lock", p, e)),
        }
    }
}
