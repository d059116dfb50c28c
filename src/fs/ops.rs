//! fuser's `Filesystem` callbacks: each looks up what it needs, calls a
//! `KmsFs` method or a system call on the backing path, and replies once.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::path::Path;
use std::time::SystemTime;

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::core::{KmsFs, acl_xattr, attr_of, filter_xattr_list, reserved_xattr};
use super::errno::io_errno;
use super::open::OpenFile;
use super::privs::{self, Kill};
use super::sparse;
use crate::kms::Caller;
use crate::os::{self, node::Utime};

/// Largest write the kernel may send (the kernel here caps it at 1 MiB).
pub const MAX_WRITE: u32 = 1 << 20;
const GENERATION: Generation = Generation(0);

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

fn ioe(e: io::Error) -> Errno {
    io_errno(&e)
}

fn utime(t: Option<TimeOrNow>) -> Utime {
    match t {
        None => Utime::Omit,
        Some(TimeOrNow::Now) => Utime::Now,
        Some(TimeOrNow::SpecificTime(t)) => Utime::At(t),
    }
}

/// Runs the body of one request. A panic there (none is known reachable
/// from a request) is caught and logged: the reply the body owned was dropped
/// while unwinding, and fuser answers a dropped reply with EIO, so the caller
/// gets EIO rather than an answer never sent; and the serving thread lives
/// on (fuser does not restart its threads, so each panic would cost one, and
/// the mount hangs once all are gone). Locks recover from poisoning
/// (`into_inner`), so the state stays usable.
fn contained(op: &str, body: impl FnOnce()) {
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        let why = panic
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("no message");
        log::error!("{op}: panicked ({why}); the request got EIO");
    }
}

/// The metadata part of a setattr.
struct MetaChange {
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    atime: Option<TimeOrNow>,
    mtime: Option<TimeOrNow>,
}

impl MetaChange {
    /// Applies the change to the object `node` holds (an open file, or an
    /// O_PATH descriptor of an entry checked to be the inode the kernel
    /// asked about), never through a symlink and never by name: chmod of a
    /// symlink is EOPNOTSUPP; chown and times change the symlink itself.
    /// The owner changes before the mode: a chown clears S_ISUID/S_ISGID,
    /// and a mode given with it is the one wanted.
    fn apply(&self, node: &File) -> Result<(), Errno> {
        if self.uid.is_some() || self.gid.is_some() {
            os::node::chown_node(node, self.uid, self.gid).map_err(ioe)?;
        }
        if let Some(mode) = self.mode {
            os::node::chmod_node(node, mode & 0o7777).map_err(ioe)?;
        }
        if self.atime.is_some() || self.mtime.is_some() {
            os::node::utimens_node(node, utime(self.atime), utime(self.mtime)).map_err(ioe)?;
        }
        Ok(())
    }
}

impl KmsFs {
    fn reply_entry(&self, r: Result<FileAttr, Errno>, reply: ReplyEntry) {
        match r {
            Ok(attr) => reply.entry(&self.ttl(), &attr, GENERATION),
            Err(e) => reply.error(e),
        }
    }

    fn writable(&self) -> Result<(), Errno> {
        if self.read_only() {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    /// After making node `name` in `dir` (at `rel`): give it to the caller
    /// (with the directory's group when it is setgid) and register it. Then
    /// `mode` (not for symlinks) is set exactly, despite the daemon's umask
    /// and the chown (which clears S_ISUID/S_ISGID). Nothing here follows a
    /// symlink swapped in meanwhile.
    fn made(
        &self,
        rel: &Path,
        dir: &File,
        name: &OsStr,
        req: &Request,
        mode: Option<u32>,
    ) -> Result<FileAttr, Errno> {
        let (gid, setgid_dir) = self.new_group(dir, &caller(req))?;
        self.set_owner_at(dir, name, &caller(req), gid)?;
        let is_dir = |m: u32| m & libc::S_IFMT == libc::S_IFDIR;
        if let Some(mode) = mode.and_then(|m| self.mode_to_set(m, setgid_dir, is_dir(m))) {
            os::beneath::fchmodat_nofollow(dir, name, mode).map_err(ioe)?;
        }
        let m = os::beneath::open_node(dir, name)
            .and_then(|n| n.metadata())
            .map_err(ioe)?;
        Ok(self.entry(rel, &m))
    }

    #[allow(clippy::too_many_arguments)]
    fn do_setattr(
        &self,
        req: &Request,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        fh: Option<FileHandle>,
    ) -> Result<FileAttr, Errno> {
        // A truncate drops setid bits; so does a setattr that carries
        // nothing fuser shows: the kernel's request to kill them (see
        // privs.rs). Either way the reply then carries the new mode.
        let empty = [uid, gid].iter().all(Option::is_none)
            && [atime, mtime].iter().all(Option::is_none)
            && size.is_none();
        let kill = match (size, empty) {
            (Some(_), _) => Some(Kill::IfUnprivileged),
            (None, true) => Some(Kill::Asked),
            (None, false) => None,
        };
        let mut mode = mode;
        if let (None, Some(kill)) = (mode, kill) {
            let a = self.getattr(ino)?;
            if a.kind == FileType::RegularFile {
                mode = privs::mode_after(u32::from(a.perm), a.gid, &caller(req), kill);
            }
        }
        if let Some(size) = size {
            self.truncate(ino, size, &caller(req), fh.is_some())?;
        }
        let change = MetaChange {
            mode,
            uid,
            gid,
            atime,
            mtime,
        };
        match self.open_state(ino) {
            // Open (perhaps unlinked, perhaps its name swapped for something
            // else since): change the very file through its descriptor.
            Ok(f) => change.apply(f.read().file())?,
            // Else through a descriptor of the entry checked to be `ino`.
            Err(_) => change.apply(&self.open_checked(ino, libc::O_PATH)?.file)?,
        }
        self.getattr(ino)
    }

    fn do_rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        let (fdir, fname, from) = self.in_dir(parent, name)?;
        let (tdir, tname, to) = self.in_dir(newparent, newname)?;
        os::beneath::renameat2(&fdir, &fname, &tdir, &tname, flags.bits()).map_err(ioe)?;
        self.renamed(&from, &to, flags.contains(RenameFlags::RENAME_EXCHANGE));
        Ok(())
    }

    fn do_access(&self, req: &Request, ino: u64, mask: i32) -> Result<(), Errno> {
        let a = self.getattr(ino)?;
        if mask == libc::F_OK {
            return Ok(());
        }
        if mask & libc::W_OK != 0 && self.read_only() {
            return Err(Errno::EROFS);
        }
        let perm = u32::from(a.perm);
        let bits = if req.uid() == 0 {
            // Root may read and write anything; execute needs some x bit (or a directory).
            let x = a.kind == FileType::Directory || perm & 0o111 != 0;
            return if mask & libc::X_OK != 0 && !x {
                Err(Errno::EACCES)
            } else {
                Ok(())
            };
        } else if req.uid() == a.uid {
            (perm >> 6) & 7
        } else if req.gid() == a.gid {
            (perm >> 3) & 7
        } else {
            perm & 7
        };
        if (mask as u32) & !bits & 7 != 0 {
            Err(Errno::EACCES)
        } else {
            Ok(())
        }
    }

    /// setxattr and removexattr: kmsfs's own names are refused (EPERM), POSIX
    /// ACLs too (EOPNOTSUPP: the kernel would not enforce them), then `change`
    /// runs on the entry checked to be `ino` (a symlink itself).
    fn change_xattr(
        &self,
        ino: INodeNo,
        name: &OsStr,
        change: impl FnOnce(&File) -> io::Result<()>,
    ) -> Result<(), Errno> {
        if reserved_xattr(name) {
            return Err(Errno::EPERM);
        }
        if acl_xattr(name) {
            return Err(Errno::EOPNOTSUPP);
        }
        self.writable()?;
        change(&self.open_checked(ino.0, libc::O_PATH)?.file).map_err(ioe)
    }

    /// unlink (`dir` false) and rmdir (`dir` true) of `name` in `parent`.
    fn remove_entry(&self, parent: INodeNo, name: &OsStr, dir: bool, reply: ReplyEmpty) {
        let r = self
            .in_dir(parent.0, name)
            .and_then(|(parent_dir, name, rel)| {
                os::beneath::unlinkat(&parent_dir, &name, dir).map_err(ioe)?;
                self.forget_path(&rel);
                Ok(())
            });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    /// A content change by the caller of `req` drops the setid bits it must
    /// (see privs.rs).
    fn drop_setid(&self, f: &OpenFile, req: &Request, kill: Kill) -> Result<(), Errno> {
        privs::drop_for(f.read().file(), &caller(req), kill)
    }

    fn xattr_reply(&self, r: io::Result<usize>, size: u32, buf: &[u8], reply: ReplyXattr) {
        match r {
            Err(e) => reply.error(ioe(e)),
            Ok(n) if size == 0 => reply.size(n as u32),
            Ok(n) if n > size as usize => reply.error(Errno::ERANGE),
            Ok(n) => reply.data(&buf[..n]),
        }
    }
}

impl Filesystem for KmsFs {
    fn init(&mut self, _req: &Request, cfg: &mut KernelConfig) -> io::Result<()> {
        // No FUSE_WRITEBACK_CACHE: with it the kernel keeps a regular
        // file's mtime and ctime itself and shows those, while the backing
        // file keeps the times of the daemon's own writes (and no program
        // can set a ctime), so the times changed across a remount. Without
        // it every stat shows the stored times.
        // No FUSE_ATOMIC_O_TRUNC either: with it the daemon truncates in
        // OPEN, before the kernel checks that the file is not being executed
        // (ETXTBSY), so an open(O_TRUNC) that failed had still cut a running
        // program. Without it the kernel truncates by a setattr after that
        // check.
        let wanted = [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_ASYNC_DIO,
            // The daemon drops setuid/setgid itself (see privs.rs); the
            // kernel then stops asking for security.capability before
            // every write.
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
        ];
        for flag in wanted {
            if let Err(missing) = cfg.add_capabilities(flag) {
                log::info!("kernel does not offer {missing:?}");
            }
        }
        let _ = cfg
            .set_max_write(MAX_WRITE)
            .or_else(|max| cfg.set_max_write(max));
        let _ = cfg.set_max_background(64);
        Ok(())
    }

    fn destroy(&mut self) {
        self.shutdown();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        contained("lookup", || {
            self.reply_entry(KmsFs::lookup(self, parent.0, name), reply);
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        contained("forget", || {
            KmsFs::forget(self, ino.0, nlookup);
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        contained("getattr", || match KmsFs::getattr(self, ino.0) {
            Ok(a) => reply.attr(&self.ttl(), &a),
            Err(e) => reply.error(e),
        });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        contained("setattr", || {
            match self.do_setattr(req, ino.0, mode, uid, gid, size, atime, mtime, fh) {
                Ok(a) => reply.attr(&self.ttl(), &a),
                Err(e) => reply.error(e),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        contained("readlink", || {
            let r = self
                .open_checked(ino.0, libc::O_PATH)
                .and_then(|node| os::node::readlink_node(&node.file).map_err(ioe));
            match r {
                Ok(t) => reply.data(&t),
                Err(e) => reply.error(e),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        contained("mknod", || {
            let r = self.writable().and_then(|()| {
                if mode & libc::S_IFMT == libc::S_IFREG {
                    // A regular file made by mknod still gets a header and data key.
                    let (attr, _) = self.create(parent.0, name, mode, &caller(req))?;
                    self.release(attr.ino.0);
                    return Ok(attr);
                }
                let (dir, name, rel) = self.in_dir(parent.0, name)?;
                os::beneath::mknodat(&dir, &name, mode, rdev).map_err(ioe)?;
                self.made(&rel, &dir, &name, req, Some(mode))
            });
            self.reply_entry(r, reply);
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        contained("mkdir", || {
            let r = self.writable().and_then(|()| {
                let (dir, name, rel) = self.in_dir(parent.0, name)?;
                os::beneath::mkdirat(&dir, &name, mode & 0o7777).map_err(ioe)?;
                // The kernel passes mkdir only the permission bits.
                self.made(&rel, &dir, &name, req, Some(libc::S_IFDIR | mode))
            });
            self.reply_entry(r, reply);
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        contained("unlink", || {
            self.remove_entry(parent, name, false, reply);
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        contained("rmdir", || {
            self.remove_entry(parent, name, true, reply);
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        contained("symlink", || {
            let r = self.writable().and_then(|()| {
                let (dir, name, rel) = self.in_dir(parent.0, link_name)?;
                os::beneath::symlinkat(target, &dir, &name).map_err(ioe)?;
                self.made(&rel, &dir, &name, req, None)
            });
            self.reply_entry(r, reply);
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        contained("rename", || {
            match self.do_rename(parent.0, name, newparent.0, newname, flags) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        contained("link", || {
            let r = (|| {
                let node = self.open_checked(ino.0, libc::O_PATH)?;
                let (dir, name, rel) = self.in_dir(newparent.0, newname)?;
                os::node::link_node(&node.file, &dir, &name).map_err(ioe)?;
                self.linked(ino.0, &rel);
                KmsFs::getattr(self, ino.0)
            })();
            self.reply_entry(r, reply);
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        contained("open", || {
            let truncate = flags.0 & libc::O_TRUNC != 0;
            match KmsFs::open(self, ino.0, &caller(req), truncate) {
                Ok(_) => reply.opened(FileHandle(ino.0), FopenFlags::empty()),
                Err(e) => reply.error(e),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        contained("read", || {
            match self
                .open_state(ino.0)
                .and_then(|f| f.read_at(offset, size as usize))
            {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(e),
            }
        });
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        contained("write", || {
            let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
            match self.open_state(ino.0).and_then(|f| {
                if kill {
                    self.drop_setid(&f, req, Kill::Asked)?;
                }
                f.write_at(data, offset)
            }) {
                Ok(()) => reply.written(data.len() as u32),
                Err(e) => reply.error(e),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        contained("flush", || {
            // Nothing is buffered here: every write already reached the backing file.
            reply.ok();
        });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        contained("release", || {
            KmsFs::release(self, ino.0);
            reply.ok();
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        contained("fsync", || {
            match self.open_state(ino.0).and_then(|f| f.sync(datasync)) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        contained("opendir", || match KmsFs::opendir(self, ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        contained("readdir", || {
            let entries = match self.dir_entries(fh.0, offset) {
                Ok(e) => e,
                Err(e) => return reply.error(e),
            };
            let dots = [(".", FileType::Directory), ("..", FileType::Directory)];
            let all = dots.iter().map(|(n, k)| (OsStr::new(n), *k, ino.0)).chain(
                entries
                    .iter()
                    .map(|e| (e.name.as_os_str(), e.kind, e.backing_ino)),
            );
            for (i, (name, kind, eino)) in all.enumerate().skip(offset as usize) {
                if reply.add(INodeNo(eino), i as u64 + 1, kind, name) {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        contained("readdirplus", || {
            // The directory, checked to be `ino`: its entries are looked up
            // in it, not in whatever its name leads to by now.
            let (entries, dir) = match self.dir_entries(fh.0, offset).and_then(|e| {
                Ok((
                    e,
                    self.open_checked(ino.0, libc::O_PATH | libc::O_DIRECTORY)?,
                ))
            }) {
                Ok(x) => x,
                Err(e) => return reply.error(e),
            };
            let dir_attr = attr_of(ino.0, &dir.meta);
            let ttl = self.ttl();
            for i in (offset as usize)..entries.len() + 2 {
                let next = i as u64 + 1;
                let full = match i {
                    // "." and ".." take no lookup reference in the kernel.
                    0 => reply.add(ino, next, ".", &ttl, &dir_attr, GENERATION),
                    1 => reply.add(ino, next, "..", &ttl, &dir_attr, GENERATION),
                    _ => {
                        let e = &entries[i - 2];
                        // An entry gone since the snapshot is skipped (Err -> not full).
                        self.dir_entry_plus(&dir.file, &dir.rel, &e.name, |a| {
                            reply.add(a.ino, next, &e.name, &ttl, a, GENERATION)
                        })
                        .unwrap_or_default()
                    }
                };
                if full {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        contained("releasedir", || {
            KmsFs::releasedir(self, fh.0);
            reply.ok();
        });
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        contained("fsyncdir", || {
            let r = self
                .open_checked(ino.0, libc::O_RDONLY | libc::O_DIRECTORY)
                .and_then(|d| d.file.sync_all().map_err(ioe));
            match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        contained("statfs", || match os::space::fstatvfs(self.root()) {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namemax, s.frsize,
            ),
            Err(e) => reply.error(ioe(e)),
        });
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        contained("setxattr", || {
            let r = self.change_xattr(ino, name, |node| {
                os::xattr::setxattr_node(node, name, value, flags)
            });
            match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        contained("getxattr", || {
            if reserved_xattr(name) || acl_xattr(name) {
                return reply.error(Errno::NO_XATTR);
            }
            let node = match self.open_checked(ino.0, libc::O_PATH) {
                Ok(n) => n.file,
                Err(e) => return reply.error(e),
            };
            let mut buf = vec![0u8; size as usize];
            let r = os::xattr::getxattr_node(&node, name, &mut buf);
            self.xattr_reply(r, size, &buf, reply);
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        contained("listxattr", || {
            let node = match self.open_checked(ino.0, libc::O_PATH) {
                Ok(n) => n.file,
                Err(e) => return reply.error(e),
            };
            let r = os::xattr::listxattr_node(&node, &mut []).and_then(|n| {
                let mut buf = vec![0u8; n];
                let n = os::xattr::listxattr_node(&node, &mut buf)?;
                buf.truncate(n);
                Ok(filter_xattr_list(&buf))
            });
            match r {
                Ok(list) => self.xattr_reply(Ok(list.len()), size, &list, reply),
                Err(e) => reply.error(ioe(e)),
            }
        });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        contained("removexattr", || {
            let r = self.change_xattr(ino, name, |node| os::xattr::removexattr_node(node, name));
            match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        });
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        contained("access", || match self.do_access(req, ino.0, mask.bits()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        contained("create", || {
            let r = self
                .writable()
                .and_then(|()| KmsFs::create(self, parent.0, name, mode, &caller(req)));
            match r {
                Ok((attr, _)) => reply.created(
                    &self.ttl(),
                    &attr,
                    GENERATION,
                    FileHandle(attr.ino.0),
                    FopenFlags::empty(),
                ),
                Err(e) => reply.error(e),
            }
        });
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        contained("fallocate", || {
            match self.open_state(ino.0).and_then(|f| {
                self.drop_setid(&f, req, Kill::IfUnprivileged)?;
                sparse::fallocate(&f, offset, length, mode)
            }) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        });
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        ino_in: INodeNo,
        _fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        _fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        contained("copy_file_range", || {
            // Decrypt and encrypt again (the two files have different keys), in
            // pieces of at most MAX_WRITE; the caller loops for the rest.
            let r = self.open_state(ino_in.0).and_then(|src| {
                let dst = self.open_state(ino_out.0)?;
                let data = src.read_at(offset_in, len.min(u64::from(MAX_WRITE)) as usize)?;
                dst.write_at(&data, offset_out)?;
                Ok(data.len() as u32)
            });
            match r {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(e),
            }
        });
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        contained("lseek", || {
            let offset = match u64::try_from(offset) {
                Ok(o) => o,
                Err(_) => return reply.error(Errno::ENXIO),
            };
            let r = self.open_state(ino.0).and_then(|f| match whence {
                libc::SEEK_DATA => sparse::seek_data(&f, offset),
                libc::SEEK_HOLE => sparse::seek_hole(&f, offset),
                _ => Err(Errno::EINVAL),
            });
            match r {
                Ok(pos) => reply.offset(pos as i64),
                Err(e) => reply.error(e),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Stands for a fuser reply: its Drop is what answers EIO.
    struct Reply<'a>(&'a AtomicUsize);

    impl Drop for Reply<'_> {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_panicking_request_drops_its_reply_and_the_thread_goes_on() {
        let dropped = AtomicUsize::new(0);
        for i in 0..10 {
            let reply = Reply(&dropped);
            contained("test", move || {
                let _owned = reply;
                if i % 2 == 0 {
                    panic!("request {i}");
                }
                std::panic::panic_any(i); // a payload that is not a message
            });
        }
        // Every body's reply was dropped (so fuser answered it), and this
        // thread is still here to count them.
        assert_eq!(dropped.load(Ordering::SeqCst), 10);
        // A body that does not panic runs as it is.
        let mut ran = false;
        contained("test", || ran = true);
        assert!(ran);
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
