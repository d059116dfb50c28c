//! A node's attributes as the mount shows them (plaintext sizes), and the
//! rules for changing them: setattr (truncate, owner, mode, times, dropping
//! setid bits) and the access check.

use std::fs::{File, Metadata};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::error::FsError;
use super::filesystem::KmsFs;
use super::privs::{self, Kill};
use super::times;
use crate::format::{self, Layout};
use crate::kms::Caller;
use crate::os;
use crate::os::node::Utime;

/// The type of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A named pipe.
    NamedPipe,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A directory.
    Directory,
    /// A regular file.
    RegularFile,
    /// A symbolic link.
    Symlink,
    /// A Unix socket.
    Socket,
}

impl Kind {
    /// The kind a directory entry's d_type says; None for DT_UNKNOWN.
    pub fn from_dtype(t: u8) -> Option<Self> {
        Some(match t {
            libc::DT_DIR => Kind::Directory,
            libc::DT_REG => Kind::RegularFile,
            libc::DT_LNK => Kind::Symlink,
            libc::DT_FIFO => Kind::NamedPipe,
            libc::DT_CHR => Kind::CharDevice,
            libc::DT_BLK => Kind::BlockDevice,
            libc::DT_SOCK => Kind::Socket,
            _ => return None,
        })
    }

    /// The kind of a std file type (a regular file when unknown).
    pub fn from_std(t: std::fs::FileType) -> Self {
        use std::os::unix::fs::FileTypeExt;
        if t.is_dir() {
            Kind::Directory
        } else if t.is_symlink() {
            Kind::Symlink
        } else if t.is_fifo() {
            Kind::NamedPipe
        } else if t.is_char_device() {
            Kind::CharDevice
        } else if t.is_block_device() {
            Kind::BlockDevice
        } else if t.is_socket() {
            Kind::Socket
        } else {
            Kind::RegularFile
        }
    }
}

/// What the kernel is told about a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// FUSE inode number.
    pub ino: u64,
    /// FUSE generation (`node::generation`): with `ino`, what a file handle
    /// of the mount holds.
    pub generation: u64,
    /// Size: the plaintext size for a regular file.
    pub size: u64,
    /// 512-byte blocks allocated (scaled to the plaintext share for files).
    pub blocks: u64,
    /// Last access.
    pub atime: SystemTime,
    /// Last modification.
    pub mtime: SystemTime,
    /// Last change.
    pub ctime: SystemTime,
    /// Type.
    pub kind: Kind,
    /// Permission bits (with setuid, setgid, sticky).
    pub perm: u16,
    /// Hard links.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number.
    pub rdev: u32,
    /// Preferred I/O size.
    pub blksize: u32,
}

pub(super) fn time(secs: i64, nsecs: i64) -> SystemTime {
    let n = nsecs.clamp(0, 999_999_999) as u32;
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, n)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::new(0, n)
    }
}

/// Attributes of FUSE inode `ino` from its backing file's metadata: regular
/// files report their plaintext size, computed from the backing size alone.
/// `layout` is the tree's: every file of a mount stores its blocks alike.
pub(super) fn attr_of(layout: Layout, ino: u64, m: &Metadata) -> Attr {
    let kind = Kind::from_std(m.file_type());
    let (size, blocks) = if kind == Kind::RegularFile {
        let plain = layout.stat_size_from_backing(m.len());
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
    Attr {
        ino,
        generation: super::node::generation(m),
        size,
        blocks,
        atime: time(m.atime(), m.atime_nsec()),
        mtime: time(m.mtime(), m.mtime_nsec()),
        ctime: time(m.ctime(), m.ctime_nsec()),
        kind,
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: m.rdev() as u32,
        blksize: format::BLOCK_SIZE as u32,
    }
}

/// What a setattr asks for.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    /// New mode bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New plaintext size.
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<Utime>,
    /// New modification time.
    pub mtime: Option<Utime>,
    /// The kernel's change time, handed back under the writeback cache
    /// (FATTR_CTIME): kept beside a regular file (`times.rs`).
    pub ctime: Option<SystemTime>,
    /// Through the caller's own open handle (ftruncate).
    pub by_handle: bool,
}

/// The metadata part of a setattr.
#[derive(Debug)]
pub(super) struct MetaChange {
    pub(super) mode: Option<u32>,
    pub(super) uid: Option<u32>,
    pub(super) gid: Option<u32>,
    pub(super) atime: Option<Utime>,
    pub(super) mtime: Option<Utime>,
}

impl MetaChange {
    /// True when it changes anything.
    pub(super) fn changes(&self) -> bool {
        self.mode.is_some()
            || self.uid.is_some()
            || self.gid.is_some()
            || self.atime.is_some()
            || self.mtime.is_some()
    }

    /// Applies the change to the object `node` holds (an open file, or an
    /// O_PATH descriptor of an entry checked to be the inode the kernel
    /// asked about), never through a symlink and never by name: chmod of a
    /// symlink is EOPNOTSUPP; chown and times change the symlink itself.
    /// The owner changes before the mode: a chown clears S_ISUID/S_ISGID,
    /// and a mode given with it is the one wanted.
    pub(super) fn apply(&self, node: &File) -> Result<(), FsError> {
        if self.uid.is_some() || self.gid.is_some() {
            os::node::chown_node(node, self.uid, self.gid)?;
        }
        if let Some(mode) = self.mode {
            os::node::chmod_node(node, mode & 0o7777)?;
        }
        if self.atime.is_some() || self.mtime.is_some() {
            let or_omit = |t: Option<Utime>| t.unwrap_or(Utime::Omit);
            os::node::utimens_node(node, or_omit(self.atime), or_omit(self.mtime))?;
        }
        Ok(())
    }
}

impl KmsFs {
    /// Attributes of `ino`: the metadata of its backing object, with the
    /// change time stored for it (`times.rs`).
    pub fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        if let Some(f) = self.opens.get(ino) {
            let m = f.metadata()?;
            return Ok(times::shown(self.attr(ino, &m), f.read().file(), &m));
        }
        match self.open_checked(ino, libc::O_PATH) {
            Ok(c) => Ok(times::shown(self.attr(ino, &c.meta), &c.file, &c.meta)),
            // A directory whose name a rename replaced: an open handle of it.
            Err(_) => Ok(self.attr(ino, &self.metadata(ino)?)),
        }
    }

    /// setattr of `ino` by `caller`; the attributes after it.
    pub fn setattr(&self, ino: u64, caller: &Caller, set: SetAttr) -> Result<Attr, FsError> {
        // A truncate drops setid bits; so does a setattr that carries
        // nothing fuser shows: the kernel's request to kill them (see
        // privs.rs). Either way the reply then carries the new mode.
        let empty = [set.uid, set.gid].iter().all(Option::is_none)
            && set.atime.is_none()
            && set.mtime.is_none()
            && set.size.is_none();
        let kill = match (set.size, empty) {
            (Some(_), _) => Some(Kill::IfUnprivileged),
            (None, true) => Some(Kill::Asked),
            (None, false) => None,
        };
        let mut mode = set.mode;
        if let (None, Some(kill)) = (mode, kill) {
            let a = self.getattr(ino)?;
            if a.kind == Kind::RegularFile {
                mode = privs::mode_after(u32::from(a.perm), a.gid, caller, kill);
            }
        }
        if let Some(size) = set.size {
            self.truncate(ino, size, caller, set.by_handle)?;
        }
        let change = MetaChange {
            mode,
            uid: set.uid,
            gid: set.gid,
            atime: set.atime,
            mtime: set.mtime,
        };
        let changes = set.size.is_some() || change.changes();
        // The change, then the kernel's ctime kept beside a regular file
        // (or a record that no longer holds dropped).
        let keep = |node: &File| -> Result<(), FsError> {
            change.apply(node)?;
            let m = node.metadata()?;
            if let Some(ctime) = set.ctime {
                times::store(node, &m, ctime);
            } else if changes {
                times::drop_record(node, &m);
            }
            Ok(())
        };
        match self.open_state(ino) {
            // Open (perhaps unlinked, perhaps its name swapped for something
            // else since): change the very file through its descriptor.
            // Under the write lock: no write falls between the change and
            // the record.
            Ok(f) => keep(f.write().file())?,
            // Else through a descriptor of the entry checked to be `ino`.
            Err(_) => keep(&self.open_checked(ino, libc::O_PATH)?.file)?,
        }
        self.getattr(ino)
    }

    /// access(2) of `ino` by `caller` for `mask` (F_OK, or R_OK|W_OK|X_OK).
    pub fn access(&self, ino: u64, caller: &Caller, mask: i32) -> Result<(), FsError> {
        let a = self.getattr(ino)?;
        if mask == libc::F_OK {
            return Ok(());
        }
        if mask & libc::W_OK != 0 && self.read_only() {
            return Err(FsError::ReadOnly);
        }
        let perm = u32::from(a.perm);
        let bits = if caller.uid == 0 {
            // Root may read and write anything; execute needs some x bit (or a directory).
            let x = a.kind == Kind::Directory || perm & 0o111 != 0;
            return if mask & libc::X_OK != 0 && !x {
                Err(FsError::Denied)
            } else {
                Ok(())
            };
        } else if caller.uid == a.uid {
            (perm >> 6) & 7
        } else if caller.gid == a.gid {
            (perm >> 3) & 7
        } else {
            perm & 7
        };
        if (mask as u32) & !bits & 7 != 0 {
            Err(FsError::Denied)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn times_round() {
        assert_eq!(time(1, 5), UNIX_EPOCH + Duration::new(1, 5));
        assert_eq!(
            time(-2, 500_000_000),
            UNIX_EPOCH - Duration::from_millis(1500)
        );
    }

    #[test]
    fn setattr_with_owner_and_setuid_mode_keeps_the_mode() {
        if !os::ids::is_root() {
            eprintln!("SKIPPED: chown needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let change = MetaChange {
            mode: Some(0o6755),
            uid: Some(1),
            gid: Some(1),
            atime: None,
            mtime: None,
        };
        let file = File::create(dir.path().join("open")).unwrap();
        change.apply(&file).unwrap();
        let at = File::open(dir.path()).unwrap();
        File::create(dir.path().join("node")).unwrap();
        change
            .apply(&os::beneath::open_node(&at, OsStr::new("node")).unwrap())
            .unwrap();
        for name in ["open", "node"] {
            let m = std::fs::metadata(dir.path().join(name)).unwrap();
            assert_eq!(
                (m.mode() & 0o7777, m.uid(), m.gid()),
                (0o6755, 1, 1),
                "{name}"
            );
        }
    }
}
