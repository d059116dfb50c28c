//! Keystore persistence: the directory layout, the sealed file format (header,
//! root-key verifier, sealed body, SHA-256 trailer), the root key (random key file
//! or Argon2id passphrase), the exclusive lock, and atomic, durable writes that keep
//! the previous generation. Knows the model only as a serializable `StoreState`.
#![forbid(unsafe_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::model::StoreState;
use super::{Existing, KmsError, RootKeyProblem};
use crate::crypto::{self, AeadKey, Key256, SEAL_OVERHEAD, SecretBytes};

/// File name of the current generation.
pub const CURRENT_FILE: &str = "keystore.kms";
/// File name of the previous generation.
pub const PREV_FILE: &str = "keystore.prev";
/// File name of the root key (root-key-file mode).
pub const ROOT_KEY_FILE: &str = "root.key";
/// File name of the lock file.
pub const LOCK_FILE: &str = "keystore.lock";
const CURRENT_TMP: &str = "keystore.kms.tmp";
const PREV_TMP: &str = "keystore.prev.tmp";

/// First bytes of a keystore file.
pub const KEYSTORE_MAGIC: [u8; 8] = *b"KMSFS-KS";
/// The keystore format version this code writes and reads.
pub const KEYSTORE_VERSION: u16 = 1;
/// First bytes of the root key file; 32 key bytes follow.
pub const ROOT_KEY_MAGIC: [u8; 8] = *b"KMSFSRK1";

const MODE_KEY_FILE: u8 = 1;
const MODE_PASSPHRASE: u8 = 2;
/// Offsets of the fixed header (see docs/KEYSTORE.md).
const OFF_VERSION: usize = 8;
const OFF_ID: usize = 10;
const OFF_MODE: usize = 26;
const OFF_PARAMS: usize = 27;
const OFF_SALT: usize = 39;
const OFF_GENERATION: usize = 55;
const OFF_VERIFIER: usize = 63;
const VERIFIER_LEN: usize = SEAL_OVERHEAD;
const OFF_BODY_LEN: usize = OFF_VERIFIER + VERIFIER_LEN; // 91
const FIXED_LEN: usize = OFF_BODY_LEN + 4; // 95
const CHECKSUM_LEN: usize = 32;
const VERIFIER_LABEL: &[u8] = b"kmsfs keystore verifier v1\0";
const BODY_LABEL: &[u8] = b"kmsfs keystore body v1\0";
/// Largest body accepted (a corrupt length must not make us allocate wildly).
const MAX_BODY_LEN: usize = 256 << 20;

/// Argon2id cost parameters, stored in the keystore header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Params {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl Default for Argon2Params {
    /// 64 MiB, 3 passes, 1 lane: a few hundred milliseconds, once per process.
    fn default() -> Self {
        Self {
            m_kib: 64 * 1024,
            t: 3,
            p: 1,
        }
    }
}

impl Argon2Params {
    /// The most work kmsfs accepts: what it writes (`default`). The header
    /// that carries the parameters is authenticated only by the key they
    /// derive, so they are checked before deriving: anyone who can write the
    /// keystore could otherwise make every open run Argon2id for minutes (the
    /// algorithm allows terabytes and 2^32 passes). Lower costs are accepted
    /// (a lowered cost in a changed header only derives a key that fails the
    /// verifier). Lanes split the same memory, so up to 4 add no work.
    pub const MAX: Argon2Params = Argon2Params {
        m_kib: 64 * 1024,
        t: 3,
        p: 4,
    };

    /// Checks the parameters against `MAX` and the algorithm's own minimums
    /// (at least 8 KiB per lane, one pass, one lane).
    pub fn validate(&self) -> Result<(), KmsError> {
        let max = Self::MAX;
        if self.p == 0
            || self.p > max.p
            || self.m_kib < 8 * self.p
            || self.m_kib > max.m_kib
            || self.t == 0
            || self.t > max.t
        {
            return Err(KmsError::corrupt(format!(
                "the keystore header asks for Argon2id parameters m={} KiB t={} p={}, which \
                 kmsfs never writes (at most m={} KiB t={} p={}): the header was changed; \
                 refused before deriving any key, nothing was changed",
                self.m_kib, self.t, self.p, max.m_kib, max.t, max.p
            )));
        }
        Ok(())
    }
}

/// How the root key that seals the keystore is obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootMode {
    /// A random 256-bit key in `root.key` (mode 0600) beside the keystore.
    KeyFile,
    /// Argon2id of a passphrase with the stored salt and parameters.
    Passphrase {
        /// Cost parameters.
        params: Argon2Params,
        /// Random salt.
        salt: [u8; 16],
    },
}

impl RootMode {
    /// "root-key-file" or "passphrase".
    pub fn name(&self) -> &'static str {
        match self {
            RootMode::KeyFile => "root-key-file",
            RootMode::Passphrase { .. } => "passphrase",
        }
    }
}

/// The unsealed root key, and which mode/salt it belongs to.
pub struct RootKey {
    aead: AeadKey,
    mode: RootMode,
}

impl std::fmt::Debug for RootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RootKey({}, redacted)", self.mode.name())
    }
}

impl RootKey {
    /// The mode this key was obtained by.
    pub fn mode(&self) -> RootMode {
        self.mode
    }

    /// Obtains the root key for `mode`: reads `root.key`, or runs Argon2id over
    /// the passphrase that `passphrase` supplies (only called in that mode).
    pub fn obtain(
        dir: &KeystoreDir,
        mode: RootMode,
        passphrase: &dyn Fn() -> Result<SecretBytes, KmsError>,
    ) -> Result<Self, KmsError> {
        let key = match mode {
            RootMode::KeyFile => dir.read_root_key_file()?,
            RootMode::Passphrase { params, salt } => {
                params.validate()?;
                let pass = passphrase()?;
                derive_argon2id(pass.expose(), &salt, params)?
            }
        };
        Ok(Self {
            aead: AeadKey::new(&key),
            mode,
        })
    }
}

/// Argon2id(passphrase, salt) into a 256-bit key.
pub fn derive_argon2id(pass: &[u8], salt: &[u8; 16], p: Argon2Params) -> Result<Key256, KmsError> {
    let params = argon2::Params::new(p.m_kib, p.t, p.p, Some(crypto::KEY_LEN))
        .map_err(|e| KmsError::corrupt(format!("invalid Argon2id parameters: {e}")))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Zeroizing::new([0u8; crypto::KEY_LEN]);
    a.hash_password_into(pass, salt, &mut *out)
        .map_err(|e| KmsError::internal(format!("Argon2id failed: {e}")))?;
    Key256::from_slice(&*out).map_err(|e| KmsError::internal(e.to_string()))
}

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

fn io_err(what: &str, path: &Path, e: std::io::Error) -> KmsError {
    if e.raw_os_error() == Some(libc::ELOOP) {
        return KmsError::io(format!(
            "cannot {what} {}: it is a symbolic link, and kmsfs never follows symbolic links \
             inside the keystore directory (someone may be trying to redirect its writes); \
             nothing was written — check who made it, remove it, and try again",
            path.display()
        ));
    }
    KmsError::io(format!("cannot {what} {}: {e}", path.display()))
}

/// Flags for every open inside the keystore directory: never follow a symbolic
/// link in the last component, never leak the descriptor to a child, never block
/// on a FIFO planted under a keystore name.
const OPEN_FLAGS: i32 = libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;

/// Opens an existing file of the keystore directory read-only, without
/// following symbolic links, and checks that it is a regular file.
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

    fn create_lock_file(&self, p: &Path) -> Result<File, KmsError> {
        let suffix = crypto::random_array::<8>().map_err(|e| KmsError::internal(e.to_string()))?;
        let tmp = self.file(&format!("{LOCK_FILE}.{}", hex8(&suffix)));
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
    fn read_root_key_file(&self) -> Result<Key256, KmsError> {
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
    fn create_root_key_file(&self) -> Result<(), KmsError> {
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

/// The parts of a keystore file, after structure and checksum were checked
/// (nothing authenticated yet).
#[derive(Debug)]
pub struct Frame<'a> {
    /// Random id of the keystore.
    pub keystore_id: [u8; 16],
    /// How the root key is obtained.
    pub mode: RootMode,
    /// Write counter.
    pub generation: u64,
    header: &'a [u8],
    verifier: &'a [u8],
    body: &'a [u8],
}

fn corrupt(name: &str, why: &str) -> KmsError {
    KmsError::corrupt(format!("keystore file {name} is damaged: {why}"))
}

impl<'a> Frame<'a> {
    /// Checks magic, version, lengths and the SHA-256 trailer. An unknown version
    /// is its own clear error; everything else is corruption.
    pub fn parse(name: &str, b: &'a [u8]) -> Result<Self, KmsError> {
        if b.len() < OFF_ID {
            return Err(corrupt(
                name,
                &format!("it is truncated ({} bytes)", b.len()),
            ));
        }
        if b[..8] != KEYSTORE_MAGIC {
            return Err(corrupt(
                name,
                "it does not start with the kmsfs keystore magic",
            ));
        }
        let version = u16::from_be_bytes([b[OFF_VERSION], b[OFF_VERSION + 1]]);
        if version != KEYSTORE_VERSION {
            // The trailer is checked first: a flipped bit in the version field is
            // damage (and may fall back), only an intact file is a newer format.
            if !trailer_ok(b) {
                return Err(corrupt(
                    name,
                    "its checksum does not match (bytes were changed)",
                ));
            }
            return Err(KmsError::corrupt(format!(
                "keystore file {name} has format version {version}, but this kmsfs reads only \
                 version {KEYSTORE_VERSION}; use the kmsfs release that wrote it"
            )));
        }
        if b.len() < FIXED_LEN + CHECKSUM_LEN {
            return Err(corrupt(
                name,
                &format!("it is truncated ({} bytes)", b.len()),
            ));
        }
        let body_len = u32::from_be_bytes(arr4(&b[OFF_BODY_LEN..FIXED_LEN])) as usize;
        if body_len > MAX_BODY_LEN || b.len() != FIXED_LEN + body_len + CHECKSUM_LEN {
            return Err(corrupt(
                name,
                &format!(
                    "its length ({} bytes) does not match its header (truncated?)",
                    b.len()
                ),
            ));
        }
        let (content, sum) = b.split_at(FIXED_LEN + body_len);
        if !crypto::constant_time_eq(&crypto::sha256(&[content]), sum) {
            return Err(corrupt(
                name,
                "its checksum does not match (bytes were changed)",
            ));
        }
        let mut keystore_id = [0u8; 16];
        keystore_id.copy_from_slice(&b[OFF_ID..OFF_ID + 16]);
        let params = Argon2Params {
            m_kib: u32::from_be_bytes(arr4(&b[OFF_PARAMS..])),
            t: u32::from_be_bytes(arr4(&b[OFF_PARAMS + 4..])),
            p: u32::from_be_bytes(arr4(&b[OFF_PARAMS + 8..])),
        };
        let mut salt = [0u8; 16];
        salt.copy_from_slice(&b[OFF_SALT..OFF_SALT + 16]);
        let mode = match b[OFF_MODE] {
            MODE_KEY_FILE => RootMode::KeyFile,
            MODE_PASSPHRASE => RootMode::Passphrase { params, salt },
            m => return Err(corrupt(name, &format!("unknown root key mode {m}"))),
        };
        let mut g = [0u8; 8];
        g.copy_from_slice(&b[OFF_GENERATION..OFF_GENERATION + 8]);
        Ok(Self {
            keystore_id,
            mode,
            generation: u64::from_be_bytes(g),
            header: &b[..OFF_VERIFIER],
            verifier: &b[OFF_VERIFIER..OFF_BODY_LEN],
            body: &b[FIXED_LEN..FIXED_LEN + body_len],
        })
    }

    /// Checks the verifier (wrong root key → `WrongRootKey`), then opens and
    /// parses the body (failure → `CorruptKeystore`).
    pub fn unseal(&self, name: &str, root: &RootKey) -> Result<StoreState, KmsError> {
        if root.mode != self.mode {
            return Err(KmsError::WrongRootKey {
                problem: RootKeyProblem::SealedWithAnother {
                    file: name.to_string(),
                },
            });
        }
        let vaad = [VERIFIER_LABEL, self.header].concat();
        if root.aead.open(&vaad, self.verifier).is_err() {
            let problem = match self.mode {
                RootMode::Passphrase { .. } => RootKeyProblem::WrongPassphrase,
                RootMode::KeyFile => RootKeyProblem::KeyFileMismatch,
            };
            return Err(KmsError::WrongRootKey { problem });
        }
        let mut header_and_len = Vec::with_capacity(FIXED_LEN);
        header_and_len.extend_from_slice(self.header);
        header_and_len.extend_from_slice(self.verifier);
        header_and_len.extend_from_slice(&(self.body.len() as u32).to_be_bytes());
        let baad = [BODY_LABEL, &header_and_len].concat();
        let json = root
            .aead
            .open(&baad, self.body)
            .map_err(|_| corrupt(name, "its sealed body does not authenticate"))?;
        StoreState::from_json(json.expose()).map_err(|e| corrupt(name, &e.to_string()))
    }
}

/// True when `b` starts like a keystore file but of another format version
/// (a newer kmsfs wrote it): reported as such, never treated as damage.
pub fn unknown_version(b: &[u8]) -> bool {
    b.len() >= OFF_ID
        && b[..8] == KEYSTORE_MAGIC
        && u16::from_be_bytes([b[OFF_VERSION], b[OFF_VERSION + 1]]) != KEYSTORE_VERSION
        && trailer_ok(b)
}

/// True when the file ends with the SHA-256 of everything before it: the one
/// part of the layout every format version keeps (docs/KEYSTORE.md).
fn trailer_ok(b: &[u8]) -> bool {
    b.len() >= OFF_ID + CHECKSUM_LEN && {
        let (content, sum) = b.split_at(b.len() - CHECKSUM_LEN);
        crypto::constant_time_eq(&crypto::sha256(&[content]), sum)
    }
}

/// The generation number a file's header claims, when it has the layout of
/// this version (not authenticated: used only to say how stale a fallback is).
pub fn claimed_generation(b: &[u8]) -> Option<u64> {
    (b.len() >= OFF_VERIFIER && b[..8] == KEYSTORE_MAGIC).then(|| {
        let mut g = [0u8; 8];
        g.copy_from_slice(&b[OFF_GENERATION..OFF_GENERATION + 8]);
        u64::from_be_bytes(g)
    })
}

fn hex8(b: &[u8; 8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn arr4(b: &[u8]) -> [u8; 4] {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    a
}

/// Encodes and seals `state` as a keystore file.
pub fn encode(
    keystore_id: &[u8; 16],
    root: &RootKey,
    generation: u64,
    state: &StoreState,
) -> Result<Vec<u8>, KmsError> {
    let json = state.to_sealed_json()?;
    let body_len = json.len() + SEAL_OVERHEAD;
    if body_len > MAX_BODY_LEN {
        return Err(KmsError::internal("keystore body too large".into()));
    }
    let mut out = Vec::with_capacity(FIXED_LEN + body_len + CHECKSUM_LEN);
    out.extend_from_slice(&KEYSTORE_MAGIC);
    out.extend_from_slice(&KEYSTORE_VERSION.to_be_bytes());
    out.extend_from_slice(keystore_id);
    let (mode, params, salt) = match root.mode {
        RootMode::KeyFile => (
            MODE_KEY_FILE,
            Argon2Params {
                m_kib: 0,
                t: 0,
                p: 0,
            },
            [0u8; 16],
        ),
        RootMode::Passphrase { params, salt } => (MODE_PASSPHRASE, params, salt),
    };
    out.push(mode);
    for v in [params.m_kib, params.t, params.p] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(&salt);
    out.extend_from_slice(&generation.to_be_bytes());
    debug_assert_eq!(out.len(), OFF_VERIFIER);
    let vaad = [VERIFIER_LABEL, &out[..]].concat();
    let seal_err =
        |e: crypto::CryptoError| KmsError::internal(format!("sealing the keystore failed: {e}"));
    root.aead
        .seal_append(&vaad, &[], &mut out)
        .map_err(seal_err)?;
    out.extend_from_slice(&(body_len as u32).to_be_bytes());
    let baad = [BODY_LABEL, &out[..]].concat();
    root.aead
        .seal_append(&baad, &json, &mut out)
        .map_err(seal_err)?;
    let sum = crypto::sha256(&[&out]);
    out.extend_from_slice(&sum);
    Ok(out)
}

/// Creates a new keystore in `dir`: refuses if one (current or previous
/// generation) exists there; never overwrites anything.
pub fn create(
    dir: &KeystoreDir,
    mode: CreateMode,
) -> Result<([u8; 16], RootKey, StoreState, Fingerprint), KmsError> {
    dir.create_dir()?;
    let _lock = dir.lock()?;
    if dir.exists() {
        return Err(KmsError::AlreadyExists {
            what: Existing::Keystore {
                path: dir.path().to_path_buf(),
            },
        });
    }
    if dir.has_entry(ROOT_KEY_FILE) {
        return Err(lost(dir, ROOT_KEY_FILE));
    }
    let root = match mode {
        CreateMode::RootKeyFile => {
            dir.create_root_key_file()?;
            RootKey::obtain(dir, RootMode::KeyFile, &|| {
                Err(KmsError::internal("no passphrase in key-file mode".into()))
            })?
        }
        CreateMode::Passphrase { passphrase, params } => {
            let salt =
                crypto::random_array::<16>().map_err(|e| KmsError::internal(e.to_string()))?;
            let mode = RootMode::Passphrase { params, salt };
            params.validate().map_err(|_| {
                let max = Argon2Params::MAX;
                KmsError::invalid(format!(
                    "Argon2id parameters m={} KiB t={} p={} are out of range (at most m={} KiB \
                     t={} p={}, at least 8 KiB per lane): kmsfs would refuse to open the keystore",
                    params.m_kib, params.t, params.p, max.m_kib, max.t, max.p
                ))
            })?;
            RootKey::obtain(dir, mode, &|| Ok(passphrase.clone()))?
        }
    };
    let id = crypto::random_array::<16>().map_err(|e| KmsError::internal(e.to_string()))?;
    let state = StoreState::default();
    let bytes = encode(&id, &root, 1, &state)?;
    dir.remove_stale_temporaries();
    let fp = dir.write_generations(None, &bytes)?;
    Ok((id, root, state, fp))
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

/// Resolves `dir` once and checks that nobody but root and this process's
/// user can change the path to it (`crate::trust`): every directory above it
/// must belong to one of them and be writable by no one else, except a sticky
/// directory (such as /tmp) whose entry on the path belongs to one of them.
/// Otherwise another user could swap the keystore directory for another one
/// between two of this process's writes; a root process would then write (and
/// give away) keystore files wherever that user pointed it. With `create`, the
/// missing tail of `dir` is checked as the place it will be created in.
/// Returns the resolved path, which the keystore then uses throughout.
pub fn trusted_path(dir: &Path, create: bool) -> Result<PathBuf, KmsError> {
    use crate::trust::{Scope, TrustError};
    crate::trust::trusted_path(dir, create, Scope::Ancestors).map_err(|e| match e {
        TrustError::Io { what, path, source } => io_err(what, &path, source),
        TrustError::Untrusted { dir: d, uid, mode } => KmsError::UntrustedKeystorePath {
            keystore: dir.to_path_buf(),
            dir: d,
            owner_uid: uid,
            mode,
        },
    })
}

/// The error for a directory that shows a keystore was there (`evidence`)
/// but has neither generation: never answered by creating a new one.
pub fn lost(dir: &KeystoreDir, evidence: &str) -> KmsError {
    let d = dir.path().display();
    KmsError::corrupt(format!(
        "the keystore in {d} is lost or unreadable: {evidence} is there but neither \
         {CURRENT_FILE} nor {PREV_FILE} can be found (deleted? a symbolic link to a volume \
         that is not mounted?); nothing was created or changed. Restore {CURRENT_FILE} from \
         your backup. Only if no keystore was ever created here (an interrupted `kmsfs init`) \
         remove {d}/{evidence} and start again"
    ))
}

/// How `create` seals a new keystore.
pub enum CreateMode {
    /// Zero-setup: a random root key in `root.key`.
    RootKeyFile,
    /// Argon2id of a passphrase.
    Passphrase {
        /// The passphrase.
        passphrase: SecretBytes,
        /// Cost parameters ([`Argon2Params::default`] in production).
        params: Argon2Params,
    },
}

impl std::fmt::Debug for CreateMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CreateMode::RootKeyFile => f.write_str("RootKeyFile"),
            CreateMode::Passphrase { params, .. } => write!(f, "Passphrase({params:?}, redacted)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::model::KeyRecord;

    fn cheap() -> Argon2Params {
        Argon2Params {
            m_kib: 64,
            t: 1,
            p: 1,
        }
    }

    #[test]
    fn argon2_parameters_beyond_what_kmsfs_writes_are_refused() {
        let ok = |m_kib, t, p| Argon2Params { m_kib, t, p }.validate().is_ok();
        assert!(ok(64 * 1024, 3, 1), "the default");
        assert!(ok(64, 1, 1), "cheaper, as tests use");
        assert!(ok(64 * 1024, 3, 4));
        for (m, t, p) in [
            (64 * 1024 + 1, 3, 1),
            (64 * 1024, 4, 1),
            (4 << 20, 64, 1),
            (u32::MAX, u32::MAX, 1),
            (64 * 1024, 3, 5),
            (64 * 1024, 0, 1),
            (64 * 1024, 3, 0),
            (31, 1, 4),
        ] {
            let e = Argon2Params { m_kib: m, t, p }.validate().unwrap_err();
            assert!(matches!(e, KmsError::CorruptKeystore { .. }), "{m} {t} {p}");
            assert!(e.to_string().contains("never writes"), "{e}");
        }
        // Never written either.
        let t = tempfile::tempdir().unwrap();
        let dir = KeystoreDir::new(t.path().join("ks"));
        let params = Argon2Params {
            m_kib: 128 * 1024,
            t: 3,
            p: 1,
        };
        let passphrase = SecretBytes::new(b"pw".to_vec());
        let e = create(&dir, CreateMode::Passphrase { passphrase, params }).unwrap_err();
        assert!(matches!(e, KmsError::Validation { .. }), "{e}");
        assert!(!dir.file(CURRENT_FILE).exists());
    }

    fn sample(dir: &KeystoreDir) -> ([u8; 16], RootKey, Vec<u8>, String) {
        let (id, root, mut state, _) = create(dir, CreateMode::RootKeyFile).unwrap();
        let k = KeyRecord::generate("d", 1).unwrap();
        let kid = k.key_id.clone();
        state.keys.insert(kid.clone(), k);
        let bytes = encode(&id, &root, 2, &state).unwrap();
        (id, root, bytes, kid)
    }

    #[test]
    fn encode_parse_unseal_round_trip() {
        let t = tempfile::tempdir().unwrap();
        let dir = KeystoreDir::new(t.path());
        let (id, root, bytes, kid) = sample(&dir);
        let f = Frame::parse("x", &bytes).unwrap();
        assert_eq!(f.keystore_id, id);
        assert_eq!(f.generation, 2);
        let s = f.unseal("x", &root).unwrap();
        assert!(s.keys.contains_key(&kid));
        // The material is not in the file in clear (hex or raw).
        let m = s.keys[&kid].material(1).unwrap().material.clone();
        assert!(!bytes.windows(32).any(|w| w == m.expose()));
        let hex: String = m.expose().iter().map(|b| format!("{b:02x}")).collect();
        assert!(!String::from_utf8_lossy(&bytes).contains(&hex));
    }

    #[test]
    fn every_flipped_byte_and_truncation_is_detected() {
        let t = tempfile::tempdir().unwrap();
        let dir = KeystoreDir::new(t.path());
        let (_, root, bytes, _) = sample(&dir);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            let r = Frame::parse("x", &bad).and_then(|f| f.unseal("x", &root));
            assert!(
                matches!(r, Err(KmsError::CorruptKeystore { .. })),
                "byte {i}"
            );
        }
        for n in 0..bytes.len() {
            assert!(
                matches!(
                    Frame::parse("x", &bytes[..n]),
                    Err(KmsError::CorruptKeystore { .. })
                ),
                "len {n}"
            );
        }
    }

    #[test]
    fn worked_size_of_an_empty_keystore() {
        // docs/KEYSTORE.md: 95 fixed + (24-byte JSON + 28) body + 32 checksum.
        let t = tempfile::tempdir().unwrap();
        let dir = KeystoreDir::new(t.path());
        create(&dir, CreateMode::RootKeyFile).unwrap();
        assert_eq!(FIXED_LEN, 95);
        assert_eq!(StoreState::default().to_sealed_json().unwrap().len(), 24);
        assert_eq!(fs::read(dir.file(CURRENT_FILE)).unwrap().len(), 179);
        assert_eq!(fs::read(dir.file(ROOT_KEY_FILE)).unwrap().len(), 40);
    }

    #[test]
    fn garbage_never_panics() {
        let t = tempfile::tempdir().unwrap();
        let (_, root, good, _) = sample(&KeystoreDir::new(t.path()));
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for len in (0..400usize).chain([good.len() - 1, good.len(), good.len() + 1]) {
            let mut buf: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            // Half of them look like a keystore of the right version.
            if len >= 10 && len % 2 == 0 {
                buf[..10].copy_from_slice(&good[..10]);
            }
            let r = Frame::parse("x", &buf).and_then(|f| f.unseal("x", &root));
            assert!(r.is_err(), "len {len}");
        }
    }

    #[test]
    fn unknown_version_is_named() {
        let t = tempfile::tempdir().unwrap();
        let (_, _, mut bytes, _) = sample(&KeystoreDir::new(t.path()));
        bytes[OFF_VERSION + 1] = 9;
        // A flipped version with the old checksum is damage, not a newer format.
        let e = Frame::parse("x", &bytes).unwrap_err().to_string();
        assert!(e.contains("checksum does not match"), "{e}");
        assert!(!unknown_version(&bytes));
        // A newer writer's intact file is named as such.
        let n = bytes.len() - CHECKSUM_LEN;
        let sum = crypto::sha256(&[&bytes[..n]]);
        bytes[n..].copy_from_slice(&sum);
        let e = Frame::parse("x", &bytes).unwrap_err().to_string();
        assert!(e.contains("format version 9"), "{e}");
        assert!(unknown_version(&bytes));
    }

    #[test]
    fn wrong_root_key_is_not_corruption() {
        let t = tempfile::tempdir().unwrap();
        let (_, _, bytes, _) = sample(&KeystoreDir::new(t.path()));
        let t2 = tempfile::tempdir().unwrap();
        let (_, other_root, _, _) = sample(&KeystoreDir::new(t2.path()));
        let f = Frame::parse("x", &bytes).unwrap();
        assert!(matches!(
            f.unseal("x", &other_root),
            Err(KmsError::WrongRootKey { .. })
        ));
    }

    #[test]
    fn passphrase_mode_distinguishes_wrong_passphrase() {
        let t = tempfile::tempdir().unwrap();
        let dir = KeystoreDir::new(t.path());
        let mode = CreateMode::Passphrase {
            passphrase: SecretBytes::from(&b"right"[..]),
            params: cheap(),
        };
        let (_, root, state, _) = create(&dir, mode).unwrap();
        let (bytes, _) = dir.read(CURRENT_FILE).unwrap().unwrap();
        let f = Frame::parse("x", &bytes).unwrap();
        assert_eq!(f.mode, root.mode());
        assert!(!dir.file(ROOT_KEY_FILE).exists());
        let good = RootKey::obtain(&dir, f.mode, &|| Ok(SecretBytes::from(&b"right"[..]))).unwrap();
        assert_eq!(f.unseal("x", &good).unwrap().keys.len(), state.keys.len());
        let bad = RootKey::obtain(&dir, f.mode, &|| Ok(SecretBytes::from(&b"wrong"[..]))).unwrap();
        let e = f.unseal("x", &bad).unwrap_err();
        assert!(matches!(e, KmsError::WrongRootKey { .. }) && e.to_string().contains("passphrase"));
    }

    #[test]
    fn create_refuses_existing_and_sets_modes() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let dir = KeystoreDir::new(t.path().join("ks"));
        create(&dir, CreateMode::RootKeyFile).unwrap();
        let before = fs::read(dir.file(CURRENT_FILE)).unwrap();
        assert!(matches!(
            create(&dir, CreateMode::RootKeyFile),
            Err(KmsError::AlreadyExists { .. })
        ));
        assert_eq!(fs::read(dir.file(CURRENT_FILE)).unwrap(), before);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.file(ROOT_KEY_FILE)), 0o600);
        assert_eq!(mode(&dir.file(CURRENT_FILE)), 0o600);
        assert_eq!(mode(dir.path()), 0o700);
        // A prev alone also counts as an existing keystore.
        fs::rename(dir.file(CURRENT_FILE), dir.file(PREV_FILE)).unwrap();
        assert!(matches!(
            create(&dir, CreateMode::RootKeyFile),
            Err(KmsError::AlreadyExists { .. })
        ));
    }

    #[test]
    fn missing_or_bad_root_key_file_is_clear() {
        let t = tempfile::tempdir().unwrap();
        let dir = KeystoreDir::new(t.path());
        create(&dir, CreateMode::RootKeyFile).unwrap();
        fs::write(dir.file(ROOT_KEY_FILE), b"short").unwrap();
        let e = RootKey::obtain(&dir, RootMode::KeyFile, &|| unreachable!()).unwrap_err();
        assert!(matches!(e, KmsError::WrongRootKey { .. }));
        fs::remove_file(dir.file(ROOT_KEY_FILE)).unwrap();
        let e = RootKey::obtain(&dir, RootMode::KeyFile, &|| unreachable!()).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }

    #[test]
    fn files_written_by_root_take_the_directory_owner() {
        use std::os::unix::fs::MetadataExt;
        if fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(1) != 0 {
            return; // only root can give files away; nothing to check otherwise
        }
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("ks");
        fs::create_dir(&d).unwrap();
        std::os::unix::fs::chown(&d, Some(65534), Some(65534)).unwrap();
        let dir = KeystoreDir::new(&d);
        create(&dir, CreateMode::RootKeyFile).unwrap();
        let first = fs::read(dir.file(CURRENT_FILE)).unwrap();
        dir.write_generations(Some(&first), &first).unwrap();
        for name in [CURRENT_FILE, PREV_FILE, ROOT_KEY_FILE, LOCK_FILE] {
            let m = fs::metadata(dir.file(name)).unwrap();
            assert_eq!((m.uid(), m.gid()), (65534, 65534), "{name}");
            assert_eq!(m.mode() & 0o777, 0o600, "{name}");
        }
    }

    #[test]
    fn a_failed_write_changes_nothing_and_leaves_no_temporaries() {
        let t = tempfile::tempdir().unwrap();
        let dir = KeystoreDir::new(t.path());
        create(&dir, CreateMode::RootKeyFile).unwrap();
        let first = fs::read(dir.file(CURRENT_FILE)).unwrap();
        dir.write_generations(Some(&first), &first).unwrap();
        let before = (
            fs::read(dir.file(CURRENT_FILE)).unwrap(),
            fs::read(dir.file(PREV_FILE)).unwrap(),
        );
        // The current temporary cannot be created (a directory is in the way).
        fs::create_dir(dir.file(CURRENT_TMP)).unwrap();
        assert!(matches!(
            dir.write_generations(Some(b"new prev"), b"new"),
            Err(KmsError::Io { .. })
        ));
        assert!(
            !dir.file(PREV_TMP).exists(),
            "half-written temporary left behind"
        );
        let after = (
            fs::read(dir.file(CURRENT_FILE)).unwrap(),
            fs::read(dir.file(PREV_FILE)).unwrap(),
        );
        assert_eq!(after, before);
    }

    #[test]
    fn write_generations_keeps_previous_and_changes_fingerprint() {
        let t = tempfile::tempdir().unwrap();
        let dir = KeystoreDir::new(t.path());
        let (_, _, _, fp1) = create(&dir, CreateMode::RootKeyFile).unwrap();
        let first = fs::read(dir.file(CURRENT_FILE)).unwrap();
        let fp2 = dir.write_generations(Some(&first), b"second").unwrap();
        assert_ne!(fp1, fp2);
        assert_eq!(dir.fingerprint(), Some(fp2));
        assert_eq!(fs::read(dir.file(PREV_FILE)).unwrap(), first);
        assert_eq!(fs::read(dir.file(CURRENT_FILE)).unwrap(), b"second");
        assert!(!dir.file(CURRENT_TMP).exists() && !dir.file(PREV_TMP).exists());
    }

    #[test]
    fn symlinked_lock_file_is_refused_and_its_target_untouched() {
        use std::os::unix::fs::symlink;
        let t = tempfile::tempdir().unwrap();
        let dir = KeystoreDir::new(t.path().join("ks"));
        create(&dir, CreateMode::RootKeyFile).unwrap();
        let before = fs::read(dir.file(CURRENT_FILE)).unwrap();
        // Dangling: following it would create the target (and chown it).
        let target = t.path().join("target");
        fs::remove_file(dir.file(LOCK_FILE)).unwrap();
        symlink(&target, dir.file(LOCK_FILE)).unwrap();
        let e = dir.lock().unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        assert!(fs::symlink_metadata(&target).is_err(), "target was created");
        // Pointing at an existing file: still refused, the file unchanged.
        fs::write(&target, b"precious").unwrap();
        let e = dir.lock().unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        assert_eq!(fs::read(&target).unwrap(), b"precious");
        assert_eq!(fs::read(dir.file(CURRENT_FILE)).unwrap(), before);
    }

    #[test]
    fn symlinked_temporaries_are_refused_and_their_targets_untouched() {
        use std::os::unix::fs::symlink;
        let t = tempfile::tempdir().unwrap();
        let dir = KeystoreDir::new(t.path().join("ks"));
        create(&dir, CreateMode::RootKeyFile).unwrap();
        let before = fs::read(dir.file(CURRENT_FILE)).unwrap();
        for tmp in [PREV_TMP, CURRENT_TMP] {
            for existing in [false, true] {
                let target = t.path().join(format!("target-{tmp}-{existing}"));
                if existing {
                    fs::write(&target, b"precious").unwrap();
                }
                symlink(&target, dir.file(tmp)).unwrap();
                let _lock = dir.lock().unwrap();
                let e = dir
                    .write_generations(Some(&before), &before)
                    .unwrap_err()
                    .to_string();
                assert!(e.contains("symbolic link"), "{e}");
                if existing {
                    assert_eq!(fs::read(&target).unwrap(), b"precious");
                } else {
                    assert!(fs::symlink_metadata(&target).is_err(), "target was created");
                }
                assert_eq!(fs::read(dir.file(CURRENT_FILE)).unwrap(), before);
                fs::remove_file(dir.file(tmp)).unwrap();
            }
        }
        // A stale regular temporary (a crashed writer's) is simply replaced.
        fs::write(dir.file(PREV_TMP), b"stale").unwrap();
        dir.write_generations(Some(&before), &before).unwrap();
    }

    #[test]
    fn keystore_files_are_never_read_through_symlinks_or_fifos() {
        use std::os::unix::fs::symlink;
        let t = tempfile::tempdir().unwrap();
        let dir = KeystoreDir::new(t.path().join("ks"));
        create(&dir, CreateMode::RootKeyFile).unwrap();
        let real = t.path().join("elsewhere");
        fs::rename(dir.file(CURRENT_FILE), &real).unwrap();
        symlink(&real, dir.file(CURRENT_FILE)).unwrap();
        let e = dir.read(CURRENT_FILE).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        fs::remove_file(dir.file(CURRENT_FILE)).unwrap();
        let st = std::process::Command::new("mkfifo")
            .arg(dir.file(CURRENT_FILE))
            .status()
            .unwrap();
        assert!(st.success());
        // Must not block; must not be taken for a keystore.
        let e = dir.read(CURRENT_FILE).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn a_dangling_or_unreadable_generation_counts_as_existing() {
        use std::os::unix::fs::symlink;
        let t = tempfile::tempdir().unwrap();
        let dir = KeystoreDir::new(t.path().join("ks"));
        create(&dir, CreateMode::RootKeyFile).unwrap();
        let rk = fs::read(dir.file(ROOT_KEY_FILE)).unwrap();
        // keystore.kms points at a volume that is not mounted.
        fs::remove_file(dir.file(CURRENT_FILE)).unwrap();
        symlink("/nonexistent/volume/keystore.kms", dir.file(CURRENT_FILE)).unwrap();
        assert!(dir.exists());
        assert!(matches!(
            create(&dir, CreateMode::RootKeyFile),
            Err(KmsError::AlreadyExists { .. })
        ));
        // Gone altogether while root.key is still there: lost, never recreated.
        fs::remove_file(dir.file(CURRENT_FILE)).unwrap();
        assert!(!dir.exists());
        assert_eq!(dir.lost_evidence(), Some(ROOT_KEY_FILE));
        let e = create(&dir, CreateMode::RootKeyFile).unwrap_err();
        assert!(matches!(e, KmsError::CorruptKeystore { .. }), "{e:?}");
        assert!(e.to_string().contains("lost or unreadable"), "{e}");
        assert_eq!(fs::read(dir.file(ROOT_KEY_FILE)).unwrap(), rk);
        assert!(!dir.has_entry(CURRENT_FILE));
    }

    #[test]
    fn oversized_files_are_refused_before_allocating() {
        let t = tempfile::tempdir().unwrap();
        let dir = KeystoreDir::new(t.path());
        create(&dir, CreateMode::RootKeyFile).unwrap();
        // Sparse: costs no disk, would cost 64 GiB of memory if read whole.
        let f = OpenOptions::new()
            .write(true)
            .open(dir.file(CURRENT_FILE))
            .unwrap();
        f.set_len(64 << 30).unwrap();
        let e = dir.read(CURRENT_FILE).unwrap_err();
        assert!(matches!(e, KmsError::CorruptKeystore { .. }), "{e:?}");
        assert!(e.to_string().contains("larger than any keystore"), "{e}");
        let f = OpenOptions::new()
            .write(true)
            .open(dir.file(ROOT_KEY_FILE))
            .unwrap();
        f.set_len(64 << 30).unwrap();
        let e = RootKey::obtain(&dir, RootMode::KeyFile, &|| unreachable!()).unwrap_err();
        assert!(matches!(e, KmsError::WrongRootKey { .. }), "{e:?}");
    }
}
