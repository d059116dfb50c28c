//! The filesystem's state and its operations as plain methods returning
//! `Result<_, Errno>`: inode and path resolution, attributes with plaintext
//! sizes, opening files with the right data key (through the cache), creating
//! files under the mount's key, directory snapshots, xattr filtering.
//! `ops.rs` adapts these to fuser's callbacks.

use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileType, INodeNo};

use super::dirs::DirTable;
use super::errno::{envelope_errno, io_errno};
use super::inodes::{BackingKey, InodeTable};
use super::keycache::KeyCache;
use super::open::{OpenFile, OpenTable};
use crate::envelope::{EncryptedFile, FileKey};
use crate::format::{self, Header};
use crate::kms::{Caller, KeyService};

/// Extended attribute names the mount reserves for itself: hidden from
/// listings and refused to get, set and remove, so programs above cannot read
/// or clobber internal data.
pub const RESERVED_XATTR_PREFIXES: [&str; 2] = ["user.kmsfs.", "trusted.kmsfs."];

/// The POSIX ACL xattrs. The mount does not support ACLs: the kernel checks
/// only the mode bits (FUSE_POSIX_ACL is not requested), so an ACL passed to
/// the backing file would not be enforced, while ext4 would still rewrite the
/// group bits to its mask. Setting them is EOPNOTSUPP (as on a file system
/// without ACLs); ones the backing file has anyway are neither listed nor
/// returned.
pub const ACL_XATTRS: [&str; 2] = ["system.posix_acl_access", "system.posix_acl_default"];

/// How the mount is configured.
#[derive(Clone)]
pub struct FsConfig {
    /// Absolute path of the backing directory.
    pub backing: PathBuf,
    /// The key service (the mount only uses the trait).
    pub ks: Arc<dyn KeyService>,
    /// The CMK that wraps data keys of new files.
    pub key_id: String,
    /// Mounted read-only: backing files are opened read-only.
    pub read_only: bool,
    /// Mounted noatime: backing files are opened with O_NOATIME, so that
    /// reading through the mount leaves their atime alone (the kernel leaves
    /// atime to the daemon, whose own reads would set it).
    pub noatime: bool,
    /// Entry and attribute time-to-live given to the kernel.
    pub ttl: Duration,
}

impl std::fmt::Debug for FsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsConfig")
            .field("backing", &self.backing)
            .field("key_id", &self.key_id)
            .field("read_only", &self.read_only)
            .field("noatime", &self.noatime)
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// One entry of a directory snapshot.
#[derive(Debug, Clone)]
pub struct DirEntry {
    /// Name in the directory.
    pub name: OsString,
    /// File type.
    pub kind: FileType,
    /// Backing inode number (reported by plain readdir).
    pub backing_ino: u64,
}

/// The mounted filesystem.
#[derive(Debug)]
pub struct KmsFs {
    cfg: FsConfig,
    inodes: Mutex<InodeTable>,
    opens: OpenTable,
    keys: KeyCache,
    dirs: DirTable,
    /// Serialises giving headers to empty backing files.
    init_lock: Mutex<()>,
    /// The daemon's umask (new nodes get their exact mode despite it).
    umask: u32,
    /// The backing directory, which file opens may not leave.
    root: File,
}

fn backing_key(m: &Metadata) -> BackingKey {
    // File type in the top bits, birth time (ns, where the backing file
    // system records it) below: a reused inode number of another type or
    // born later is another file.
    let born = m
        .created()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64);
    let kind = u64::from(m.mode() & libc::S_IFMT);
    (m.dev(), m.ino(), (kind << 48) ^ born)
}

/// A backing object opened for a FUSE inode and checked to be the one the
/// inode stands for (`KmsFs::open_checked`).
#[derive(Debug)]
pub struct Checked {
    /// The descriptor: act through it, not through the name.
    pub file: File,
    /// Its fstat.
    pub meta: Metadata,
    /// The name it was reached by, relative to the backing root.
    pub rel: PathBuf,
}

/// True when two headers hold the same file id and current wrapped key (so
/// an open authorized against one may be served by a key from the other).
fn same_key(a: &Header, b: &Header) -> bool {
    fn wrapped(h: &Header) -> Option<&[u8]> {
        h.active().map(|s| s.wrapped_key.as_slice())
    }
    a.file_id == b.file_id && wrapped(a) == wrapped(b)
}

/// Metadata of entry `name` of directory `dir` itself (a symlink is not
/// followed).
fn stat_at(dir: &File, name: &OsStr) -> Result<Metadata, Errno> {
    super::sys::open_node(dir, name)
        .and_then(|n| n.metadata())
        .map_err(|e| io_errno(&e))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    let n = nsecs.clamp(0, 999_999_999) as u32;
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, n)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::new(0, n)
    }
}

/// The kind of a backing file.
pub fn kind_of(m: &Metadata) -> FileType {
    FileType::from_std(m.file_type()).unwrap_or(FileType::RegularFile)
}

/// Attributes of FUSE inode `ino` from its backing file's metadata: regular
/// files report their plaintext size, computed from the backing size alone.
pub fn attr_of(ino: u64, m: &Metadata) -> FileAttr {
    let kind = kind_of(m);
    let (size, blocks) = if kind == FileType::RegularFile {
        let plain = format::shown_size(m.len());
        // Scale the allocated blocks by the plaintext share, so du stays sensible.
        let blocks = if m.len() == 0 {
            0
        } else {
            (u128::from(m.blocks()) * u128::from(plain) / u128::from(m.len())) as u64
        };
        (plain, blocks)
    } else {
        (m.len(), m.blocks())
    };
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks,
        atime: time(m.atime(), m.atime_nsec()),
        mtime: time(m.mtime(), m.mtime_nsec()),
        ctime: time(m.ctime(), m.ctime_nsec()),
        crtime: time(m.ctime(), m.ctime_nsec()),
        kind,
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: m.rdev() as u32,
        blksize: format::BLOCK_SIZE as u32,
        flags: 0,
    }
}

impl KmsFs {
    /// A filesystem over `cfg.backing`, which must be an existing directory.
    /// Backing paths are absolute until `enter_backing`.
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
            init_lock: Mutex::new(()),
            umask: super::sys::umask(),
            root,
            cfg,
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

    /// True for a read-only mount.
    pub fn read_only(&self) -> bool {
        self.cfg.read_only
    }

    /// The full backing path of `rel`, for log messages.
    pub fn shown(&self, rel: &Path) -> PathBuf {
        self.cfg.backing.join(rel)
    }

    /// The backing directory's descriptor (below which every backing
    /// operation stays).
    pub fn root(&self) -> &File {
        &self.root
    }

    /// Opens the backing object that FUSE inode `ino` stands for, with
    /// `flags` (O_PATH: a handle to stat it and change it through), beneath
    /// the backing root and through no symlink, and checks with an fstat of
    /// that very descriptor that it is that object: same device, inode
    /// number, type and birth time (`backing_key`). The kernel checked the
    /// caller's permissions against the attributes of the object it knows as
    /// `ino`, while the name it had can lead elsewhere by now (renamed or
    /// replaced in the backing directory by anyone who may write there):
    /// then ESTALE, so that the kernel looks the name up again and checks
    /// the permissions of what is there now. Whatever the caller then does,
    /// it does through the returned descriptor, so the object checked is the
    /// object used. A node with no name left is ENOENT.
    pub fn open_checked(&self, ino: u64, flags: i32) -> Result<Checked, Errno> {
        let (rel, key) = lock(&self.inodes)
            .node(ino)
            .map(|(p, k)| (p.to_path_buf(), k))
            .ok_or(Errno::ENOENT)?;
        let p = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            &rel
        };
        let stale = || {
            log::info!(
                "{}: not the file the kernel knows as inode {ino} (replaced or renamed beside \
                 the mount); returning ESTALE",
                self.shown(&rel).display()
            );
            Errno::ESTALE
        };
        let file = self.open_backing(p, flags, 0).map_err(|e| {
            // A symlink, or an object of another type, where the node's
            // object was: swapped as well.
            if [Errno::ELOOP, Errno::ENOTDIR, Errno::EISDIR].contains(&e) {
                stale()
            } else {
                e
            }
        })?;
        let meta = file.metadata().map_err(|e| io_errno(&e))?;
        if backing_key(&meta) != key {
            return Err(stale());
        }
        Ok(Checked { file, meta, rel })
    }

    /// Entry `name` of directory `parent`: the directory, opened as an O_PATH
    /// descriptor and checked to be `parent` (`open_checked`), for the *at
    /// system calls; `name` itself; and the entry's relative backing path.
    /// A name with a slash, empty, "." or ".." is EINVAL.
    pub fn in_dir(&self, parent: u64, name: &OsStr) -> Result<(File, OsString, PathBuf), Errno> {
        if name.is_empty() || name == "." || name == ".." || name.as_encoded_bytes().contains(&b'/')
        {
            return Err(Errno::EINVAL);
        }
        let dir = self.open_checked(parent, libc::O_PATH | libc::O_DIRECTORY)?;
        let rel = dir.rel.join(name);
        Ok((dir.file, name.to_os_string(), rel))
    }

    /// Registers `rel` (just looked up or created) with one lookup reference.
    pub fn entry(&self, rel: &Path, m: &Metadata) -> FileAttr {
        let ino = lock(&self.inodes).lookup(rel, backing_key(m), m.is_dir());
        attr_of(ino, m)
    }

    /// Looks up `name` in `parent` for the kernel: the entry itself (a
    /// symlink is not followed) in the directory checked to be `parent`.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<FileAttr, Errno> {
        let (dir, name, rel) = self.in_dir(parent, name)?;
        let m = stat_at(&dir, &name)?;
        Ok(self.entry(&rel, &m))
    }

    /// The kernel dropped `n` references to `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        lock(&self.inodes).forget(ino, n);
    }

    /// Metadata of `ino`'s backing file (from the open fd when open: works
    /// after unlink and never reads content). A directory whose name is gone
    /// (removed, or replaced by a rename) is still reached through a handle
    /// some opendir keeps.
    pub fn metadata(&self, ino: u64) -> Result<Metadata, Errno> {
        if let Some(f) = self.opens.get(ino) {
            return f.metadata();
        }
        match self.open_checked(ino, libc::O_PATH) {
            Ok(c) => Ok(c.meta),
            // A directory whose name a rename replaced: an open handle of it.
            Err(e) => self.dirs.metadata(ino).unwrap_or(Err(e)),
        }
    }

    /// Attributes of `ino`.
    pub fn getattr(&self, ino: u64) -> Result<FileAttr, Errno> {
        Ok(attr_of(ino, &self.metadata(ino)?))
    }

    /// The open state of `ino` (EBADF when no handle is open).
    pub fn open_state(&self, ino: u64) -> Result<Arc<OpenFile>, Errno> {
        self.opens.get(ino).ok_or(Errno::EBADF)
    }

    /// The data key of a header for `caller`, from the cache or the key service.
    fn file_key(
        &self,
        header: &Header,
        caller: &Caller,
        backing: &Path,
    ) -> Result<Arc<FileKey>, Errno> {
        let generation = self.cfg.ks.generation();
        let wrapped = header
            .active()
            .map(|s| s.wrapped_key.as_slice())
            .unwrap_or(&[]);
        if let Some(k) = self.keys.get(generation, &header.file_id, wrapped, caller) {
            return Ok(k);
        }
        let key = EncryptedFile::unwrap_key(header, &*self.cfg.ks, caller)
            .map_err(|e| envelope_errno(&e, backing))?;
        let key = Arc::new(key);
        self.keys
            .insert(generation, &header.file_id, wrapped, caller, key.clone());
        Ok(key)
    }

    /// Opens the backing file `rel` (relative to the backing root, which the
    /// open may not leave).
    fn open_backing(&self, rel: &Path, flags: i32, mode: u32) -> Result<File, Errno> {
        super::sys::open_beneath(&self.root, rel, flags, mode).map_err(|e| io_errno(&e))
    }

    /// Opens `ino` for `caller`: checks that the caller may use the file's key
    /// now (EACCES when the key is disabled, pending deletion, deleted or the
    /// policy refuses), then shares the inode's open state or makes it.
    pub fn open(&self, ino: u64, caller: &Caller, truncate: bool) -> Result<Arc<OpenFile>, Errno> {
        let f = match self.opens.get(ino) {
            Some(existing) => self.reopen(ino, &existing, caller)?,
            None => self.open_fresh(ino, caller)?,
        };
        if truncate && let Err(e) = f.set_len(0) {
            self.opens.release(ino);
            return Err(e);
        }
        Ok(f)
    }

    /// The check every open makes, for a file someone already has open:
    /// `caller` may use the key that will serve it, the one the open state
    /// holds. That is the wrapped key of the header the state was opened
    /// with, not of the header on disk now: whoever can write the backing
    /// file can put there the header of a file under a key of their own,
    /// which would pass the check while the state serves the holder's data
    /// key.
    fn check_key(&self, existing: &OpenFile, caller: &Caller) -> Result<(), Errno> {
        self.file_key(&existing.header(), caller, existing.backing())?;
        Ok(())
    }

    fn reopen(
        &self,
        ino: u64,
        existing: &OpenFile,
        caller: &Caller,
    ) -> Result<Arc<OpenFile>, Errno> {
        self.check_key(existing, caller)?;
        match self.opens.attach_existing(ino) {
            Some(f) => Ok(f),
            // The last handle went meanwhile: open afresh.
            None => self.open_fresh(ino, caller),
        }
    }

    fn open_fresh(&self, ino: u64, caller: &Caller) -> Result<Arc<OpenFile>, Errno> {
        let acc = if self.cfg.read_only {
            libc::O_RDONLY
        } else {
            libc::O_RDWR
        };
        // O_NOATIME needs the file's owner or CAP_FOWNER: the root daemon.
        let noatime = if self.cfg.noatime && super::sys::is_root() {
            libc::O_NOATIME
        } else {
            0
        };
        let Checked { file, meta: m, rel } = self.open_checked(ino, acc | noatime)?;
        let abs = self.shown(&rel);
        if m.is_dir() {
            return Err(Errno::EISDIR);
        }
        let ef = if m.len() == 0 && !self.cfg.read_only {
            // An empty backing file holds nothing yet (a crash between create
            // and header, or a file made beside the mount): give it a header,
            // once, even if several opens race here.
            let _one_at_a_time = lock(&self.init_lock);
            if file.metadata().map_err(|e| io_errno(&e))?.len() == 0 {
                EncryptedFile::create(file, &*self.cfg.ks, caller, &self.cfg.key_id)
                    .map_err(|e| envelope_errno(&e, &abs))?
            } else {
                self.keyed(file, caller, &abs)?
            }
        } else {
            self.keyed(file, caller, &abs)?
        };
        let mine = ef.header().clone();
        let (f, fresh) = self.opens.attach(ino, || OpenFile::new(ef, abs));
        // Another open made the state first: it serves this caller too, so
        // the caller must be allowed its key (the header may have changed
        // between that open's read and this one's).
        if !fresh
            && !same_key(&f.header(), &mine)
            && let Err(e) = self.check_key(&f, caller)
        {
            self.opens.release(ino);
            return Err(e);
        }
        Ok(f)
    }

    /// An existing encrypted file with its data key for `caller`.
    fn keyed(&self, file: File, caller: &Caller, abs: &Path) -> Result<EncryptedFile, Errno> {
        let header = EncryptedFile::read_header(&file).map_err(|e| envelope_errno(&e, abs))?;
        let key = self.file_key(&header, caller, abs)?;
        Ok(EncryptedFile::with_key(file, header, key))
    }

    /// Releases one handle of `ino`.
    pub fn release(&self, ino: u64) {
        self.opens.release(ino);
    }

    /// Creates `name` in `parent` under the mount's key and opens it.
    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        caller: &Caller,
    ) -> Result<(FileAttr, Arc<OpenFile>), Errno> {
        let (dir, name, rel) = self.in_dir(parent, name)?;
        let shown = self.shown(&rel);
        let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL;
        let file = super::sys::open_beneath(&dir, Path::new(&name), flags, mode & 0o7777)
            .map_err(|e| io_errno(&e))?;
        let made = self.new_group(&dir, caller).and_then(|(gid, setgid_dir)| {
            // Owner first: a chown clears S_ISUID/S_ISGID, which the exact
            // mode then puts back.
            self.set_owner(&file, caller, gid)?;
            if let Some(mode) = self.mode_to_set(mode, setgid_dir, false) {
                file.set_permissions(std::fs::Permissions::from_mode(mode))
                    .map_err(|e| io_errno(&e))?;
            }
            EncryptedFile::create(file, &*self.cfg.ks, caller, &self.cfg.key_id)
                .map_err(|e| envelope_errno(&e, &shown))
        });
        let ef = match made {
            Ok(ef) => ef,
            Err(e) => {
                // Leave no headerless file behind.
                let _ = super::sys::unlinkat(&dir, &name, false);
                return Err(e);
            }
        };
        let m = ef.file().metadata().map_err(|e| io_errno(&e))?;
        let attr = self.entry(&rel, &m);
        // A new backing file is a new node: the state is this one.
        let (f, _) = self.opens.attach(attr.ino.0, || OpenFile::new(ef, shown));
        Ok((attr, f))
    }

    /// The group of a new entry of directory `dir` (an O_PATH descriptor is
    /// fine) and whether `dir` is setgid: then the directory's group, as
    /// ext4 gives it, else the caller's primary group.
    pub fn new_group(&self, dir: &File, caller: &Caller) -> Result<(u32, bool), Errno> {
        let m = dir.metadata().map_err(|e| io_errno(&e))?;
        if m.mode() & libc::S_ISGID != 0 {
            Ok((m.gid(), true))
        } else {
            Ok((caller.gid, false))
        }
    }

    /// The mode to set on a new node after its owner, if one must be set.
    /// The kernel already applied the caller's umask to `mode`; the daemon's
    /// own umask may have removed bits, and the chown to the caller cleared
    /// S_ISUID/S_ISGID. A directory made in a setgid directory is setgid too
    /// (the kernel does not pass that bit to mkdir).
    pub fn mode_to_set(&self, mode: u32, setgid_dir: bool, is_dir: bool) -> Option<u32> {
        let mut mode = mode & 0o7777;
        if is_dir && setgid_dir {
            mode |= libc::S_ISGID;
        }
        (mode & (libc::S_ISUID | libc::S_ISGID) != 0 || self.umask_strips(mode)).then_some(mode)
    }

    /// True when the daemon's umask removes bits of `mode`.
    pub fn umask_strips(&self, mode: u32) -> bool {
        mode & self.umask & 0o7777 != 0
    }

    /// A new file belongs to the caller, with group `gid` (the daemon runs
    /// as root).
    pub fn set_owner(&self, file: &File, caller: &Caller, gid: u32) -> Result<(), Errno> {
        if !super::sys::is_root() {
            return Ok(());
        }
        std::os::unix::fs::fchown(file, Some(caller.uid), Some(gid)).map_err(|e| io_errno(&e))
    }

    /// A new node `name` in directory `dir` belongs to the caller, with group
    /// `gid` (the daemon runs as root); a symlink itself, not its target.
    pub fn set_owner_at(
        &self,
        dir: &File,
        name: &OsStr,
        caller: &Caller,
        gid: u32,
    ) -> Result<(), Errno> {
        if !super::sys::is_root() {
            return Ok(());
        }
        super::sys::fchownat_nofollow(dir, name, Some(caller.uid), Some(gid))
            .map_err(|e| io_errno(&e))
    }

    /// Truncates or extends `ino` to `size` plaintext bytes. `by_handle`: the
    /// caller's own open handle (ftruncate), whose open already checked the
    /// key. Otherwise (truncate by path) the caller gets the same key check
    /// as an open, even while someone else holds the file open: their open
    /// says nothing about this caller, and extending writes blocks under the
    /// key. Without any handle the file is opened briefly, which checks.
    pub fn truncate(
        &self,
        ino: u64,
        size: u64,
        caller: &Caller,
        by_handle: bool,
    ) -> Result<(), Errno> {
        if let Some(f) = self.opens.get(ino) {
            if !by_handle {
                self.check_key(&f, caller)?;
            }
            return f.set_len(size);
        }
        let f = self.open(ino, caller, false)?;
        let r = f.set_len(size);
        self.opens.release(ino);
        r
    }

    /// Opens directory `ino` for readdir; returns its handle.
    pub fn opendir(&self, ino: u64) -> Result<u64, Errno> {
        // Opened beneath the root through no symlink, checked to be `ino`
        // (and listed through its descriptor): the handle is of exactly
        // that directory.
        let dir = self
            .open_checked(ino, libc::O_RDONLY | libc::O_DIRECTORY)?
            .file;
        Ok(self.dirs.open(ino, dir))
    }

    /// The entries of directory handle `fh` for a readdir at `offset` (a
    /// listing from offset 0 sees the directory as it is now).
    pub fn dir_entries(&self, fh: u64, offset: u64) -> Result<Arc<Vec<DirEntry>>, Errno> {
        self.dirs.get(fh)?.entries(offset)
    }

    /// Closes a directory handle.
    pub fn releasedir(&self, fh: u64) {
        self.dirs.release(fh);
    }

    /// For readdirplus: the attributes of `name` in directory `dir` (checked
    /// to be the directory listed, reached by `dir_rel`), with the node
    /// registered; `add` says whether the kernel took the entry (only then
    /// does it count as a lookup).
    pub fn dir_entry_plus(
        &self,
        dir: &File,
        dir_rel: &Path,
        name: &OsStr,
        add: impl FnOnce(&FileAttr) -> bool,
    ) -> Result<bool, Errno> {
        let rel = dir_rel.join(name);
        let m = stat_at(dir, name)?;
        let mut t = lock(&self.inodes);
        let ino = t.resolve(&rel, backing_key(&m), m.is_dir());
        let attr = attr_of(ino, &m);
        let full = add(&attr);
        if !full {
            t.add_lookup(ino);
        }
        Ok(full)
    }

    /// A name went away.
    pub fn forget_path(&self, rel: &Path) {
        lock(&self.inodes).remove_path(rel);
    }

    /// A rename happened in the backing directory.
    pub fn renamed(&self, from: &Path, to: &Path, exchange: bool) {
        let mut t = lock(&self.inodes);
        if exchange {
            t.exchange(from, to);
        } else {
            t.rename(from, to);
        }
    }

    /// A new hard link of `ino` named `rel`.
    pub fn linked(&self, ino: u64, rel: &Path) {
        let mut t = lock(&self.inodes);
        t.add_path(ino, rel);
        t.add_lookup(ino);
    }

    /// Unmount: sync and close every open file, drop every data key.
    pub fn shutdown(&self) {
        self.opens.close_all();
        self.keys.clear();
        self.dirs.clear();
    }

    /// Number of cached data keys (tests).
    pub fn cached_keys(&self) -> usize {
        self.keys.len()
    }
}

/// True when `name` is reserved for the mount's own use.
pub fn reserved_xattr(name: &OsStr) -> bool {
    let n = name.as_encoded_bytes();
    RESERVED_XATTR_PREFIXES
        .iter()
        .any(|p| n.starts_with(p.as_bytes()))
}

/// True for a POSIX ACL xattr (`ACL_XATTRS`).
pub fn acl_xattr(name: &OsStr) -> bool {
    ACL_XATTRS
        .iter()
        .any(|a| name.as_encoded_bytes() == a.as_bytes())
}

/// Removes reserved names and ACLs from a NUL-separated xattr name list.
pub fn filter_xattr_list(list: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(list.len());
    for name in list.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name_os = OsStr::from_bytes(name);
        if !reserved_xattr(name_os) && !acl_xattr(name_os) {
            out.extend_from_slice(name);
            out.push(0);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::tests::TestKeys;
    use crate::kms::{
        DataKey, DataKeySpec, Decrypted, Encrypted, EncryptionContext, KeyMetadata, KmsError,
    };
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    /// TestKeys that count Decrypt calls, whose generation tests can bump,
    /// and that can deny one uid the Decrypt of one wrapped key (a policy).
    struct Counting {
        inner: TestKeys,
        decrypts: AtomicUsize,
        generation: AtomicU64,
        deny: Mutex<Option<(u32, Vec<u8>)>>,
    }

    impl KeyService for Counting {
        fn generate_data_key(
            &self,
            c: &Caller,
            k: &str,
            s: DataKeySpec,
            x: &EncryptionContext,
        ) -> Result<DataKey, KmsError> {
            self.inner.generate_data_key(c, k, s, x)
        }
        fn decrypt(
            &self,
            c: &Caller,
            b: &[u8],
            x: &EncryptionContext,
            k: Option<&str>,
        ) -> Result<Decrypted, KmsError> {
            self.decrypts.fetch_add(1, Ordering::SeqCst);
            if lock(&self.deny).as_ref() == Some(&(c.uid, b.to_vec())) {
                return Err(KmsError::AccessDenied {
                    key_id: "(test)".into(),
                    action: crate::kms::Operation::Decrypt,
                    principal: (c.uid, c.gid),
                });
            }
            self.inner.decrypt(c, b, x, k)
        }
        fn encrypt(
            &self,
            c: &Caller,
            k: &str,
            p: &[u8],
            x: &EncryptionContext,
        ) -> Result<Encrypted, KmsError> {
            self.inner.encrypt(c, k, p, x)
        }
        fn re_encrypt(
            &self,
            c: &Caller,
            b: &[u8],
            sx: &EncryptionContext,
            d: &str,
            dx: &EncryptionContext,
        ) -> Result<Encrypted, KmsError> {
            self.inner.re_encrypt(c, b, sx, d, dx)
        }
        fn describe_key(&self, c: &Caller, k: &str) -> Result<KeyMetadata, KmsError> {
            self.inner.describe_key(c, k)
        }
        fn generation(&self) -> u64 {
            self.generation.load(Ordering::SeqCst)
        }
    }

    const ROOT: Caller = Caller {
        uid: 0,
        gid: 0,
        pid: 1,
    };
    const ALICE: Caller = Caller {
        uid: 1000,
        gid: 1000,
        pid: 2,
    };

    fn fs() -> (tempfile::TempDir, Arc<Counting>, KmsFs) {
        let dir = tempfile::tempdir().unwrap();
        let ks = Arc::new(Counting {
            inner: TestKeys::new(),
            decrypts: AtomicUsize::new(0),
            generation: AtomicU64::new(1),
            deny: Mutex::new(None),
        });
        let fs = KmsFs::new(FsConfig {
            backing: dir.path().to_path_buf(),
            ks: ks.clone(),
            key_id: "test".into(),
            read_only: false,
            noatime: false,
            ttl: Duration::from_secs(1),
        })
        .unwrap();
        (dir, ks, fs)
    }

    #[test]
    fn reopening_a_hot_file_uses_the_cache_until_the_keystore_changes() {
        let (_dir, ks, fs) = fs();
        let (attr, f) = fs
            .create(ROOT_INO_FOR_TESTS, OsStr::new("f"), 0o644, &ROOT)
            .unwrap();
        f.write_at(b"hello", 0).unwrap();
        let ino = attr.ino.0;
        fs.release(ino);
        let decrypts = || ks.decrypts.load(Ordering::SeqCst);
        // First open after create: unwrap once; then the cache serves.
        for _ in 0..5 {
            let f = fs.open(ino, &ROOT, false).unwrap();
            assert_eq!(f.read_at(0, 10).unwrap(), b"hello");
            fs.release(ino);
        }
        assert_eq!(decrypts(), 1);
        // Another user never rides on root's unwrap.
        fs.open(ino, &ALICE, false).unwrap();
        fs.release(ino);
        assert_eq!(decrypts(), 2);
        // A keystore change empties the cache: the next open asks again.
        ks.generation.fetch_add(1, Ordering::SeqCst);
        fs.open(ino, &ROOT, false).unwrap();
        assert_eq!(decrypts(), 3);
        // A refusal now fails new opens, even with a handle open.
        ks.inner.refuse.store(true, Ordering::SeqCst);
        ks.generation.fetch_add(1, Ordering::SeqCst);
        assert_eq!(fs.open(ino, &ROOT, false).err(), Some(Errno::EACCES));
        // ...while the open handle keeps reading.
        assert_eq!(fs.open_state(ino).unwrap().read_at(0, 5).unwrap(), b"hello");
        fs.release(ino);
        assert!(fs.open_state(ino).is_err());
        fs.shutdown();
        assert_eq!(fs.cached_keys(), 0);
    }

    #[test]
    fn plaintext_size_and_truncate_without_a_handle() {
        let (dir, _ks, fs) = fs();
        let (attr, f) = fs
            .create(ROOT_INO_FOR_TESTS, OsStr::new("g"), 0o600, &ROOT)
            .unwrap();
        f.write_at(&[7u8; 5000], 0).unwrap();
        let ino = attr.ino.0;
        fs.release(ino);
        assert_eq!(fs.getattr(ino).unwrap().size, 5000);
        let backing = std::fs::metadata(dir.path().join("g")).unwrap().len();
        assert_eq!(backing, format::backing_size_from_plain(5000));
        fs.truncate(ino, 10, &ROOT, false).unwrap();
        assert_eq!(fs.getattr(ino).unwrap().size, 10);
        assert!(fs.open_state(ino).is_err(), "truncate left the file open");
        assert_eq!(fs.getattr(ino).unwrap().perm, 0o600);
    }

    const ROOT_INO_FOR_TESTS: u64 = super::super::inodes::ROOT_INO;

    #[test]
    fn truncate_by_path_checks_the_key_while_another_handle_is_open() {
        let (_dir, ks, fs) = fs();
        let (attr, f) = fs
            .create(ROOT_INO_FOR_TESTS, OsStr::new("h"), 0o666, &ROOT)
            .unwrap();
        f.write_at(b"kept", 0).unwrap();
        let ino = attr.ino.0;
        ks.inner.refuse.store(true, Ordering::SeqCst);
        ks.generation.fetch_add(1, Ordering::SeqCst);
        // By path: refused like an open, whoever holds the file open.
        for (who, size) in [(&ALICE, 1 << 20), (&ROOT, 0)] {
            assert_eq!(
                fs.truncate(ino, size, who, false).err(),
                Some(Errno::EACCES)
            );
        }
        assert_eq!(fs.getattr(ino).unwrap().size, 4);
        // The holder's own handle (ftruncate) keeps working, as its writes do.
        fs.truncate(ino, 2, &ROOT, true).unwrap();
        assert_eq!(fs.open_state(ino).unwrap().read_at(0, 10).unwrap(), b"ke");
    }

    /// Makes `name` in the root with `content`, looked up once; its inode.
    fn made(fs: &KmsFs, name: &str, content: &[u8]) -> u64 {
        let (attr, f) = fs
            .create(ROOT_INO_FOR_TESTS, OsStr::new(name), 0o666, &ROOT)
            .unwrap();
        f.write_at(content, 0).unwrap();
        fs.release(attr.ino.0);
        attr.ino.0
    }

    /// Issue 6, item 1: a node whose name now leads to another backing file
    /// (renamed or replaced beside the mount) is ESTALE for everything that
    /// would act on that other file, and the other file is left alone.
    #[test]
    fn a_node_whose_name_leads_to_another_file_is_stale() {
        let (dir, _ks, fs) = fs();
        let a = made(&fs, "a", b"A's data");
        let b = made(&fs, "b", b"B's data, longer");
        std::fs::create_dir(dir.path().join("da")).unwrap();
        std::fs::create_dir(dir.path().join("db")).unwrap();
        std::fs::write(dir.path().join("db/in-b"), b"").unwrap();
        let da = fs
            .lookup(ROOT_INO_FOR_TESTS, OsStr::new("da"))
            .unwrap()
            .ino
            .0;
        // "a" now names B's file, "da" B's directory.
        for (x, y) in [("a", "b"), ("da", "db")] {
            let p = |n: &str| dir.path().join(n);
            std::fs::rename(p(x), p(&format!("{x}.aside"))).unwrap();
            std::fs::rename(p(y), p(x)).unwrap();
        }
        // And "c" a symlink.
        let c = made(&fs, "c", b"");
        std::fs::remove_file(dir.path().join("c")).unwrap();
        std::os::unix::fs::symlink("a", dir.path().join("c")).unwrap();
        let b_len = std::fs::metadata(dir.path().join("a")).unwrap().len();
        let stale = Some(Errno::ESTALE);
        assert_eq!(fs.getattr(a).err(), stale);
        assert_eq!(fs.open(a, &ROOT, false).err(), stale);
        assert_eq!(fs.getattr(c).err(), stale);
        assert_eq!(fs.open(c, &ROOT, false).err(), stale);
        assert_eq!(fs.truncate(a, 0, &ROOT, false).err(), stale);
        assert_eq!(fs.lookup(da, OsStr::new("in-b")).err(), stale);
        assert_eq!(fs.opendir(da).err(), stale);
        assert_eq!(fs.create(da, OsStr::new("new"), 0o600, &ROOT).err(), stale);
        assert!(!dir.path().join("da/new").exists());
        assert!(!dir.path().join("da.aside/new").exists());
        assert_eq!(
            std::fs::metadata(dir.path().join("a")).unwrap().len(),
            b_len
        );
        // A fresh lookup finds what is there now: B's file, as another node.
        let again = fs.lookup(ROOT_INO_FOR_TESTS, OsStr::new("a")).unwrap();
        assert_eq!(again.ino.0, b);
        assert_eq!(fs.getattr(b).unwrap().size, 16);
        let f = fs.open(b, &ROOT, false).unwrap();
        assert_eq!(f.read_at(0, 100).unwrap(), b"B's data, longer");
    }

    /// Issue 6, item 2: while one caller holds a file open, another who may
    /// not use its key copies over it the header of a file it may use. Its
    /// open (and truncate by path) would be served by the held state's data
    /// key, so it is checked against that key: EACCES.
    #[test]
    fn an_open_is_authorized_against_the_key_that_serves_it() {
        let (dir, ks, fs) = fs();
        let held = made(&fs, "held", b"root's plaintext");
        let _alices = made(&fs, "alices", b"alice may read this");
        let header = |name: &str| {
            let f = File::open(dir.path().join(name)).unwrap();
            EncryptedFile::read_header(&f).unwrap()
        };
        let wrapped = header("held").active().unwrap().wrapped_key.clone();
        *lock(&ks.deny) = Some((ALICE.uid, wrapped));
        assert_eq!(fs.open(held, &ALICE, false).err(), Some(Errno::EACCES));
        let state = fs.open(held, &ROOT, false).unwrap();
        // Alice swaps the header in the backing file.
        let mut hdr = vec![0u8; format::HEADER_LEN as usize];
        File::open(dir.path().join("alices"))
            .unwrap()
            .read_exact_at(&mut hdr, 0)
            .unwrap();
        let backing = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("held"))
            .unwrap();
        backing.write_all_at(&hdr, 0).unwrap();
        assert_eq!(fs.open(held, &ALICE, false).err(), Some(Errno::EACCES));
        assert_eq!(
            fs.truncate(held, 0, &ALICE, false).err(),
            Some(Errno::EACCES)
        );
        // The holder keeps reading; a caller allowed the held key may open.
        assert_eq!(state.read_at(0, 100).unwrap(), b"root's plaintext");
        fs.open(held, &ROOT, false).unwrap();
        fs.release(held);
        fs.release(held);
        // Opened afresh, the swapped header's key does not open the blocks.
        let f = fs.open(held, &ALICE, false).unwrap();
        assert_eq!(f.read_at(0, 100).err(), Some(Errno::EIO));
    }

    #[test]
    fn xattr_filter() {
        assert!(reserved_xattr(OsStr::new("user.kmsfs.x")));
        assert!(!reserved_xattr(OsStr::new("user.other")));
        let l = b"user.a\0user.kmsfs.hdr\0security.selinux\0";
        assert_eq!(filter_xattr_list(l), b"user.a\0security.selinux\0".to_vec());
        assert!(acl_xattr(OsStr::new("system.posix_acl_access")));
        assert!(acl_xattr(OsStr::new("system.posix_acl_default")));
        assert!(!acl_xattr(OsStr::new("system.posix_acl_accessx")));
        let l = b"system.posix_acl_access\0user.a\0system.posix_acl_default\0";
        assert_eq!(filter_xattr_list(l), b"user.a\0".to_vec());
    }

    #[test]
    fn times_round() {
        assert_eq!(time(1, 5), UNIX_EPOCH + Duration::new(1, 5));
        assert_eq!(
            time(-2, 500_000_000),
            UNIX_EPOCH - Duration::from_millis(1500)
        );
    }
}
