//! Nodes: how a FUSE inode reaches its backing object (opened beneath the
//! backing root, checked to be that very object, else ESTALE), lookups and
//! the inode table's bookkeeping of names.

use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata};
use std::hash::{BuildHasher, RandomState};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::attr::Attr;
use super::error::FsError;
use super::filesystem::{KmsFs, lock};
use super::inodes::BackingKey;
use super::times;
use crate::os;

/// What identifies a backing object across renames: device, inode number,
/// and type and birth time (so that a reused inode number is another object).
pub(super) fn backing_key(m: &Metadata) -> BackingKey {
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

/// The FUSE generation of a backing object: a hash of its identity
/// (`backing_key`) under a key drawn at random when the daemon starts, cut
/// to the 32 bits the kernel keeps (i_generation). A file handle of the
/// mount is the inode number and this generation; the kernel refuses a
/// handle (ESTALE) whose generation is not that of the inode it names. The
/// table never gives one number to two objects, so any fixed function would
/// do for that; a keyed one also makes a handle forged from a guessed
/// inode number (an NFS client's, say) fail but once in 2^32 tries.
pub(super) fn generation(m: &Metadata) -> u64 {
    static KEY: OnceLock<RandomState> = OnceLock::new();
    let h = KEY.get_or_init(RandomState::new).hash_one(backing_key(m));
    u64::from((h as u32) | 1)
}

pub use crate::format::{BACKING_LOCK, BACKING_MARKER};

/// True for the names kmsfs keeps for itself in the backing root: hidden
/// from listings and lookups, and not to be made, renamed or removed
/// through the mount.
pub fn is_reserved(parent: u64, name: &OsStr) -> bool {
    parent == super::inodes::ROOT_INO && (name == BACKING_MARKER || name == BACKING_LOCK)
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

/// An entry of a directory, reached for a change (`KmsFs::in_dir`).
#[derive(Debug)]
pub struct InDir {
    /// The directory, checked to be its node (O_PATH).
    pub dir: File,
    /// The entry's name in the backing directory.
    pub name: OsString,
    /// Its path relative to the backing root.
    pub rel: PathBuf,
    /// The encrypted name, when the tree's names are encrypted.
    pub enc: Option<crate::envelope::names::BackingName>,
}

/// Metadata of entry `name` of directory `dir` itself (a symlink is not
/// followed).
pub(super) fn stat_at(dir: &File, name: &OsStr) -> Result<Metadata, FsError> {
    Ok(os::beneath::open_node(dir, name).and_then(|n| n.metadata())?)
}

impl KmsFs {
    /// Opens the backing object that FUSE inode `ino` stands for, with
    /// `flags` (O_PATH: a handle to stat it and change it through), beneath
    /// the backing root and through no symlink, and checks with an fstat of
    /// that very descriptor that it is that object: same device, inode
    /// number, type and birth time (`backing_key`). The kernel checked the
    /// caller's permissions against the attributes of the object it knows as
    /// `ino`, while the name it had can lead elsewhere by now (renamed or
    /// replaced in the backing directory by anyone who may write there):
    /// then ESTALE, so that the kernel looks the name up again and checks
    /// the permissions of what is there now. The check is made on an O_PATH
    /// descriptor, before anything is opened for I/O: a FIFO or device in
    /// the node's place is never opened (its type is part of the key).
    /// Whatever the caller then does,
    /// it does through the returned descriptor, so the object checked is the
    /// object used. A node with no name left is ENOENT.
    pub fn open_checked(&self, ino: u64, flags: i32) -> Result<Checked, FsError> {
        let (rel, key) = lock(&self.inodes)
            .node(ino)
            .map(|(p, k)| (p.to_path_buf(), k))
            .ok_or(FsError::NotFound)?;
        let stale = || {
            log::info!(
                "{}: not the file the kernel knows as inode {ino} (replaced or renamed beside \
                 the mount); returning ESTALE",
                self.backing_path(&rel).display()
            );
            FsError::Stale
        };
        // First an O_PATH descriptor, which opens nothing (a FIFO or device
        // swapped in cannot block or act on the open), checked; then, for
        // I/O, that very object opened again (`os::beneath::reopen`).
        let path_flags = libc::O_PATH | (flags & libc::O_DIRECTORY);
        let node = os::beneath::open_beneath_deep(&self.root, os::or_dot(&rel), path_flags, 0)
            .map_err(
                // A symlink, or an object of another type, where the node's
                // object was: swapped as well.
                |e| match e.raw_os_error() {
                    Some(libc::ELOOP | libc::ENOTDIR | libc::EISDIR) => stale(),
                    _ => FsError::Io(e),
                },
            )?;
        let meta = node.metadata()?;
        if backing_key(&meta) != key {
            return Err(stale());
        }
        let file = if flags & libc::O_PATH != 0 {
            node
        } else {
            os::beneath::reopen(&node, flags)?
        };
        Ok(Checked { file, meta, rel })
    }

    /// Entry `name` of directory `parent`: the directory, opened as an O_PATH
    /// descriptor and checked to be `parent` (`open_checked`), for the *at
    /// system calls; the entry's name in the backing directory (encrypted,
    /// unless the tree has plain names); and its relative backing path.
    /// A name with a slash, empty, "." or ".." is EINVAL.
    pub fn in_dir(&self, parent: u64, name: &OsStr) -> Result<InDir, FsError> {
        if name.is_empty() || name == "." || name == ".." || name.as_encoded_bytes().contains(&b'/')
        {
            return Err(FsError::Invalid);
        }
        if is_reserved(parent, name) {
            return Err(FsError::Reserved);
        }
        let dir = self.open_checked(parent, libc::O_PATH | libc::O_DIRECTORY)?;
        let b = self.backing_name(&dir, name)?;
        let rel = dir.rel.join(&b.name);
        Ok(InDir {
            dir: dir.file,
            name: b.name,
            rel,
            enc: b.enc,
        })
    }

    /// Registers `rel` (just looked up or created) with one lookup reference.
    pub fn entry(&self, rel: &Path, m: &Metadata) -> Attr {
        let ino = lock(&self.inodes).lookup(rel, backing_key(m), m.is_dir());
        self.attr(ino, m)
    }

    /// Looks up `name` in `parent` for the kernel: the entry itself (a
    /// symlink is not followed) in the directory checked to be `parent`.
    /// "." and ".." come only from the kernel's file-handle code (FUSE
    /// export support): "." is `parent` itself, of any type, which the
    /// kernel may have forgotten; ".." is the directory holding directory
    /// `parent`. Both are reached as every node is (`open_checked`): by
    /// name beneath the backing root, checked to be the object the number
    /// stands for, so a number of an object that is gone or was swapped is
    /// ESTALE and no number reaches anything outside the backing root.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr, FsError> {
        if name == "." {
            let node = self.open_checked(parent, libc::O_PATH)?;
            return Ok(self.entry(&node.rel, &node.meta));
        }
        if name == ".." {
            return self.lookup_parent(parent);
        }
        if is_reserved(parent, name) {
            return Err(FsError::NotFound);
        }
        let e = self.in_dir(parent, name)?;
        let node = os::beneath::open_node(&e.dir, &e.name)?;
        let m = node.metadata()?;
        Ok(times::shown(self.entry(&e.rel, &m), &node, &m))
    }

    /// The directory holding directory `dir` (the root for the root).
    fn lookup_parent(&self, dir: u64) -> Result<Attr, FsError> {
        let node = self.open_checked(dir, libc::O_PATH | libc::O_DIRECTORY)?;
        let rel = node.rel.parent().unwrap_or(Path::new(""));
        let up = os::beneath::open_beneath_deep(
            &self.root,
            os::or_dot(rel),
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )?;
        let meta = up.metadata()?;
        Ok(self.entry(rel, &meta))
    }

    /// The kernel dropped `n` references to `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        if lock(&self.inodes).forget(ino, n) {
            self.opens.forget_seen(ino);
        }
    }

    /// Metadata of `ino`'s backing file (from the open fd when open: works
    /// after unlink and never reads content). A directory whose name is gone
    /// (removed, or replaced by a rename) is still reached through a handle
    /// some opendir keeps.
    pub fn metadata(&self, ino: u64) -> Result<Metadata, FsError> {
        if let Some(f) = self.opens.get(ino) {
            return f.metadata();
        }
        match self.open_checked(ino, libc::O_PATH) {
            Ok(c) => Ok(c.meta),
            // A directory whose name a rename replaced: an open handle of it.
            Err(e) => self.dirs.metadata(ino).unwrap_or(Err(e)),
        }
    }

    /// The target of symlink `ino`.
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let node = self.open_checked(ino, libc::O_PATH)?;
        let stored = os::node::readlink_node(&node.file)?;
        self.plain_target(stored, &node.rel).map(|(t, _)| t)
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
}
