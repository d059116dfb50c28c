//! `KmsFs`, the mounted filesystem's state (configuration, inode table, open
//! files, data-key cache, directory handles), its construction and shutdown.
//! Its operations live in the files named after what they act on: node.rs,
//! attr.rs, file.rs, entries.rs, dirs.rs, xattr.rs.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use super::budget::{Budget, FileHandles, HandleLimits};
use super::dirs::DirTable;
use super::error::FsError;
use super::inodes::InodeTable;
use super::keycache::KeyCache;
use super::node::backing_key;
use super::open::OpenTable;
use crate::kms::KeyService;
use crate::os;
use crate::os::space::FsStats;

/// How the mount is configured.
#[derive(Clone)]
pub struct FsConfig {
    /// Absolute path of the backing directory.
    pub backing: PathBuf,
    /// The key service (the mount only uses the trait).
    pub ks: Arc<dyn KeyService>,
    /// The CMK that wraps data keys of new files.
    pub key_id: String,
    /// How the tree's files store their blocks (the backing directory's
    /// marker says): new files get it, sizes are computed with it, and a
    /// file of another layout is refused (EIO).
    pub layout: crate::format::Layout,
    /// Mounted read-only: backing files are opened read-only.
    pub read_only: bool,
    /// Mounted noatime: backing files are opened with O_NOATIME, so that
    /// reading through the mount leaves their atime alone (the kernel leaves
    /// atime to the daemon, whose own reads would set it).
    pub noatime: bool,
    /// Entry and attribute time-to-live given to the kernel.
    pub ttl: Duration,
    /// The kernel's writeback cache (`fuse.rs`, init; `times.rs`).
    pub writeback: bool,
    /// How many handles one user, and all users together, may hold.
    pub handles: HandleLimits,
    /// Encrypted names: the tree's name key, wrapped by its CMK, as the
    /// binding file holds it (None: plain names).
    pub names: Option<Vec<u8>>,
    /// Keys per directory: the tree's wrapped MAC key of their records.
    pub dir_keys: super::dirkeys::DirKeysConfig,
    /// Data keys generated ahead for new files under `key_id` (a remote
    /// key service; None: each create asks the key service).
    pub datakey_pool: Option<Arc<super::keypool::DataKeyPool>>,
}

impl std::fmt::Debug for FsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsConfig")
            .field("backing", &self.backing)
            .field("key_id", &self.key_id)
            .field("layout", &self.layout)
            .field("read_only", &self.read_only)
            .field("noatime", &self.noatime)
            .field("ttl", &self.ttl)
            .field("writeback", &self.writeback)
            .field("handles", &self.handles)
            .field("encrypted_names", &self.names.is_some())
            .field("dir_keys", &self.dir_keys)
            .field("datakey_pool", &self.datakey_pool)
            .finish()
    }
}

/// The mounted filesystem.
#[derive(Debug)]
pub struct KmsFs {
    pub(super) cfg: FsConfig,
    pub(super) inodes: Mutex<InodeTable>,
    pub(super) opens: OpenTable,
    pub(super) keys: KeyCache,
    pub(super) dirs: DirTable,
    /// The handles each user holds, against `cfg.handles`.
    pub(super) budget: Arc<Budget>,
    /// Open file handles, each charged to its user.
    pub(super) files: FileHandles,
    /// Serialises giving headers to empty backing files.
    pub(super) init_lock: Mutex<()>,
    /// The backing directory, which file opens may not leave.
    pub(super) root: File,
    /// Read-only now (starts as `cfg.read_only`; a remount changes it).
    read_only: Arc<AtomicBool>,
    /// Tells the kernel that attributes it caches changed without its
    /// knowing (set once the session exists).
    pub(super) kernel: KernelCache,
    /// Whether FUSE over io_uring is wanted, and asked of the kernel at INIT.
    pub(super) uring: super::fuse::UringAsk,
    /// Encrypted names (None: plain names).
    pub(super) names: Option<super::names::Names>,
    /// Keys per directory.
    pub(super) dir_keys: super::dirkeys::DirKeys,
}

/// The way back to the kernel's caches: the kernel caches entries and
/// attributes for the TTL and updates them itself for every change it asks
/// for, so the daemon only speaks up for a change it makes on its own (setid
/// bits it drops on a write or fallocate, see privs.rs), and for the pages
/// of a range that a direct write changed (the kernel drops them after a
/// synchronous direct write, never after an asynchronous one). The adapter
/// (fuse.rs) sets the notifier once the session exists; before that (and in
/// unit tests, with no kernel) nothing is sent.
#[derive(Clone, Default)]
pub(super) struct KernelCache(Arc<OnceLock<Notify>>);

/// What the adapter gives `KernelCache`.
pub(super) struct Notify {
    /// Invalidates the kernel's cached attributes of an inode, at once.
    pub(super) attr: Box<dyn Fn(u64) + Send + Sync>,
    /// Invalidates the kernel's cached pages of `len` bytes of an inode at
    /// an offset, then runs the closure (which replies to the request).
    pub(super) pages: PagesThen,
}

/// See `Notify::pages`.
pub(super) type PagesThen = Box<dyn Fn(u64, u64, u64, Then) + Send + Sync>;

/// What runs once the kernel has dropped the pages.
pub(super) type Then = Box<dyn FnOnce() + Send>;

impl KernelCache {
    /// Sets what invalidates an inode's cached attributes and pages.
    pub(super) fn set(&self, notify: Notify) {
        let _ = self.0.set(notify);
    }

    /// The kernel's cached attributes of `ino` are stale.
    pub(super) fn attr_changed(&self, ino: u64) {
        if let Some(n) = self.0.get() {
            (n.attr)(ino);
        }
    }

    /// The kernel's cached pages of `len` bytes of `ino` at `offset` are
    /// stale: `then` runs once the kernel has dropped them. The kernel first
    /// waits for the pages it holds locked (a read of them in flight, which
    /// a serving thread answers), so this wait is not a serving thread's.
    pub(super) fn pages_changed(&self, ino: u64, offset: u64, len: u64, then: Then) {
        match self.0.get() {
            Some(n) => (n.pages)(ino, offset, len, then),
            None => then(),
        }
    }
}

impl std::fmt::Debug for KernelCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "KernelCache(set)"
        } else {
            "KernelCache(unset)"
        })
    }
}

/// A mutex's guard, also after a panic poisoned it (the state stays usable).
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl KmsFs {
    /// The pool of data keys generated ahead, if the mount has one.
    pub fn datakey_pool(&self) -> Option<Arc<super::keypool::DataKeyPool>> {
        self.cfg.datakey_pool.clone()
    }
}

impl KmsFs {
    /// A filesystem over `cfg.backing`, which must be an existing directory.
    /// Backing paths are absolute until `enter_backing`.
    #[allow(clippy::disallowed_methods)] // the backing root the user named; all below it goes through its descriptor
    pub fn new(cfg: FsConfig) -> std::io::Result<Self> {
        // The inode table's root is the directory actually opened.
        let root = File::open(&cfg.backing)?;
        let m = root.metadata()?;
        if !m.is_dir() {
            return Err(std::io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        Ok(Self {
            inodes: Mutex::new(InodeTable::new(backing_key(&m))),
            opens: OpenTable::new(),
            keys: KeyCache::new(),
            dirs: DirTable::default(),
            budget: Budget::new(cfg.handles),
            files: FileHandles::default(),
            init_lock: Mutex::new(()),
            root,
            read_only: Arc::new(AtomicBool::new(cfg.read_only)),
            names: cfg.names.clone().map(super::names::Names::new),
            dir_keys: super::dirkeys::DirKeys::new(&cfg.dir_keys),
            cfg,
            kernel: KernelCache::default(),
            uring: super::fuse::UringAsk::default(),
        })
    }

    /// Makes the backing directory the process's working directory (so the
    /// daemon pins no other directory). For the daemon. Backing entries are
    /// always named relative to the backing root's descriptor, so a path as
    /// long as the kernel allows on the mount still fits in PATH_MAX below it.
    pub fn enter_backing(&mut self) -> std::io::Result<()> {
        std::env::set_current_dir(&self.cfg.backing)
    }

    /// Entry and attribute time-to-live.
    pub fn ttl(&self) -> Duration {
        self.cfg.ttl
    }

    /// True when the kernel may keep what it caches across opens (directory
    /// listings, and the pages of a file unchanged since it was last
    /// closed): not on shared storage (TTL 0), where others change the
    /// backing directory.
    pub fn kernel_caches(&self) -> bool {
        !self.cfg.ttl.is_zero()
    }

    /// True when the kernel runs the writeback cache (`fuse.rs`, init):
    /// not on shared storage, nor with -o no_writeback_cache.
    pub fn writeback(&self) -> bool {
        self.cfg.writeback && self.kernel_caches()
    }

    /// True for a read-only mount.
    pub fn read_only(&self) -> bool {
        self.read_only.load(Ordering::Relaxed)
    }

    /// The switch that makes the mount read-only or read-write while it
    /// serves (a remount): files opened afterwards follow it.
    pub fn read_only_switch(&self) -> Arc<AtomicBool> {
        self.read_only.clone()
    }

    /// EROFS on a read-only mount.
    pub fn writable(&self) -> Result<(), FsError> {
        if self.read_only() {
            Err(FsError::ReadOnly)
        } else {
            Ok(())
        }
    }

    /// The full backing path of `rel`, for log messages.
    pub fn backing_path(&self, rel: &Path) -> PathBuf {
        self.cfg.backing.join(rel)
    }

    /// statfs: the backing file system's figures.
    pub fn statfs(&self) -> Result<FsStats, FsError> {
        Ok(os::space::fstatvfs(&self.root)?)
    }

    /// Unmount: sync and close every open file, drop every data key.
    pub fn shutdown(&self) {
        self.files.clear();
        self.opens.close_all();
        self.keys.clear();
        self.dirs.clear();
    }

    /// Number of cached data keys (tests).
    pub fn cached_keys(&self) -> usize {
        self.keys.len()
    }
}
