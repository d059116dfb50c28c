//! The adapter to fuser, and the only file that imports it: `Session` mounts
//! a `KmsFs` and serves it; each callback turns the request into a call of a
//! `KmsFs` method, and `serve` runs it, contains a panic, and replies once
//! (the value, or the error's errno).

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use fuser::{
    AccessFlags, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, SessionACL, TimeOrNow, WriteFlags,
};

use super::attr::{Attr, Kind, SetAttr, attr_of};
use super::error::FsError;
use super::file::{MAX_WRITE, Seek};
use super::filesystem::{KernelCache, KmsFs, Notify, PagesThen, Then};
use super::inodes::ROOT_INO;
use super::options::{Access, MountFlag, SessionConfig};
use super::stats::{Op, REQUESTS_XATTR, requests_xattr};
use super::xattr::XattrValue;
use crate::kms::Caller;
use crate::os::node::Utime;
use crate::os::uring::{self, DispatchFn, Rings};

/// How files are opened: FOPEN_NOFLUSH, because a FLUSH has nothing to do
/// here (every write already reached the backing file, and locks are the
/// kernel's), so close(2) need not wait for a round trip to the daemon: one
/// request fewer per file opened (tar -x and cat of a tree: one in six).
const OPEN_FLAGS: FopenFlags = FopenFlags::FOPEN_NOFLUSH;

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
        access_key: None,
    }
}

fn utime(t: Option<TimeOrNow>) -> Option<Utime> {
    t.map(|t| match t {
        TimeOrNow::Now => Utime::Now,
        TimeOrNow::SpecificTime(t) => Utime::At(t),
    })
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::NamedPipe => FileType::NamedPipe,
        Kind::CharDevice => FileType::CharDevice,
        Kind::BlockDevice => FileType::BlockDevice,
        Kind::Directory => FileType::Directory,
        Kind::RegularFile => FileType::RegularFile,
        Kind::Symlink => FileType::Symlink,
        Kind::Socket => FileType::Socket,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

/// A fuser reply that can carry an error.
trait Fails {
    fn fail(self, e: Errno);
}

macro_rules! fails {
    ($($t:ty),*) => {$(
        impl Fails for $t {
            fn fail(self, e: Errno) {
                self.error(e)
            }
        }
    )*};
}
fails!(
    ReplyAttr,
    ReplyCreate,
    ReplyData,
    ReplyDirectory,
    ReplyDirectoryPlus,
    ReplyEmpty,
    ReplyEntry,
    ReplyLseek,
    ReplyOpen,
    ReplyStatfs,
    ReplyWrite,
    ReplyXattr
);

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

/// Serves one request: runs `body` contained, then replies once, with `ok`
/// on success or with the error's errno.
fn serve<R: Fails, T>(
    op: Op,
    reply: R,
    body: impl FnOnce() -> Result<T, FsError>,
    ok: impl FnOnce(R, T),
) {
    op.count();
    contained(op.name(), || match body() {
        Ok(v) => ok(reply, v),
        Err(e) => {
            if e.errno() == libc::EIO {
                super::stats::io_error();
            }
            reply.fail(Errno::from_i32(e.errno()))
        }
    });
}

impl KmsFs {
    /// How directories are opened: the kernel caches their listings
    /// (FOPEN_CACHE_DIR) and keeps them across opendir (FOPEN_KEEP_CACHE),
    /// so a directory listed again (ls -lR warm, rm -rf after a walk) costs
    /// OPENDIR and RELEASEDIR and no READDIRPLUS. The kernel drops a cached
    /// listing itself when the directory changes through the mount (its
    /// version counter) or when it sees another mtime (attributes refreshed
    /// after the TTL), so a change beside the mount shows within the TTL.
    /// Not with -o sharedstorage (TTL 0): others change the backing
    /// directory at any time, and every listing is read afresh.
    fn dir_open_flags(&self) -> FopenFlags {
        if self.kernel_caches() {
            FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        }
    }

    fn reply_entry(&self, reply: ReplyEntry, a: Attr) {
        reply.entry(&self.ttl(), &file_attr(&a), Generation(a.generation));
    }

    fn reply_attr(&self, reply: ReplyAttr, a: Attr) {
        reply.attr(&self.ttl(), &file_attr(&a));
    }
}

fn reply_xattr(reply: ReplyXattr, v: XattrValue) {
    match v {
        XattrValue::Size(n) => reply.size(n),
        XattrValue::Data(d) => reply.data(&d),
    }
}

impl Filesystem for KmsFs {
    fn init(&mut self, _req: &Request, cfg: &mut KernelConfig) -> io::Result<()> {
        // FUSE_WRITEBACK_CACHE (not on shared storage): writes land in
        // the kernel's pages and reach the daemon merged at writeback (one
        // WRITE per dirty range, not one per write(2)). The kernel then
        // keeps a regular file's mtime and ctime itself and hands them back
        // with SETATTR (FATTR_MTIME, FATTR_CTIME) when it writes the inode
        // back: the mtime is set on the backing file and the ctime, which
        // no program can set, is kept beside it (times.rs), so the times
        // shown survive a remount. With the cache the kernel also keeps the
        // size it knows while it holds the inode, which is why storage that
        // others write (-o sharedstorage) goes without it.
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
            // File handles (name_to_handle_at, an NFS export) that open
            // after the kernel forgot the inode: it then asks for it with a
            // LOOKUP of "." (and of ".." for a directory's parent).
            InitFlags::FUSE_EXPORT_SUPPORT,
        ];
        let writeback = self.writeback().then_some(InitFlags::FUSE_WRITEBACK_CACHE);
        for flag in wanted.into_iter().chain(writeback) {
            if let Err(missing) = cfg.add_capabilities(flag) {
                log::info!("kernel does not offer {missing:?}");
            }
        }
        // FUSE over io_uring (Linux 6.14, /sys/module/fuse/parameters/
        // enable_uring): offered by the kernel when enabled; asked for with
        // -o io_uring once the rings exist (docs/PERFORMANCE.md, The transport).
        let offered = cfg.capabilities().contains(InitFlags::FUSE_OVER_IO_URING);
        if self.uring.wanted() {
            if offered && cfg.add_capabilities(InitFlags::FUSE_OVER_IO_URING).is_ok() {
                self.uring.set_asked();
            } else {
                log::warn!(
                    "kernel does not offer FUSE over io_uring \
                     (/sys/module/fuse/parameters/enable_uring is N?): serving through /dev/fuse"
                );
            }
        } else if offered {
            log::info!(
                "kernel offers FUSE over io_uring (-o io_uring not given); served through /dev/fuse"
            );
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
        let body = || KmsFs::lookup(self, parent.0, name);
        serve(Op::Lookup, reply, body, |r, a| self.reply_entry(r, a));
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        Op::Forget.count();
        contained("forget", || KmsFs::forget(self, ino.0, nlookup));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let body = || KmsFs::getattr(self, ino.0);
        serve(Op::Getattr, reply, body, |r, a| self.reply_attr(r, a));
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
        ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: utime(atime),
            mtime: utime(mtime),
            ctime,
            by_handle: fh.is_some(),
        };
        let body = || KmsFs::setattr(self, ino.0, &caller(req), set);
        serve(Op::Setattr, reply, body, |r, a| self.reply_attr(r, a));
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let body = || KmsFs::readlink(self, ino.0);
        serve(Op::Readlink, reply, body, |r, t| r.data(&t));
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
        let body = || KmsFs::mknod(self, parent.0, name, mode, rdev, &caller(req));
        serve(Op::Mknod, reply, body, |r, a| self.reply_entry(r, a));
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
        let body = || KmsFs::mkdir(self, parent.0, name, mode, &caller(req));
        serve(Op::Mkdir, reply, body, |r, a| self.reply_entry(r, a));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let body = || self.remove(parent.0, name, false);
        serve(Op::Unlink, reply, body, |r, ()| r.ok());
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let body = || self.remove(parent.0, name, true);
        serve(Op::Rmdir, reply, body, |r, ()| r.ok());
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let body = || KmsFs::symlink(self, parent.0, link_name, target, &caller(req));
        serve(Op::Symlink, reply, body, |r, a| self.reply_entry(r, a));
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
        let body = || KmsFs::rename(self, parent.0, name, newparent.0, newname, flags.bits());
        serve(Op::Rename, reply, body, |r, ()| r.ok());
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let body = || KmsFs::link(self, ino.0, newparent.0, newname);
        serve(Op::Link, reply, body, |r, a| self.reply_entry(r, a));
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let truncate = flags.0 & libc::O_TRUNC != 0;
        let writing = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        let body = || KmsFs::open_handle(self, ino.0, &caller(req), truncate, writing);
        serve(Op::Open, reply, body, |r, (fh, keep)| {
            let flags = if keep {
                OPEN_FLAGS | FopenFlags::FOPEN_KEEP_CACHE
            } else {
                OPEN_FLAGS
            };
            r.opened(FileHandle(fh), flags)
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
        let body = || KmsFs::read(self, ino.0, offset, size as usize);
        serve(Op::Read, reply, body, |r, data| r.data(&data));
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        // The flags are the writer's file's: O_DIRECT there, and not a
        // write-back of cached pages, is a direct write.
        let direct =
            flags.0 & libc::O_DIRECT != 0 && !write_flags.contains(WriteFlags::FUSE_WRITE_CACHE);
        let body = || KmsFs::write(self, ino.0, &caller(req), data, offset, kill, direct);
        serve(Op::Write, reply, body, |r, ()| {
            let n = data.len() as u32;
            if direct {
                // A direct write goes past the kernel's pages, which other
                // handles fill: the kernel drops them after a synchronous
                // direct write but not after an asynchronous one (io_submit,
                // io_uring), and a page a reader filled while the write was
                // in flight would keep the old bytes. So they are dropped
                // before the reply: a read in flight holds its page locked
                // and the kernel waits for it; a later read fetches anew.
                let then = Box::new(move || r.written(n));
                self.kernel.pages_changed(ino.0, offset, u64::from(n), then);
            } else {
                r.written(n)
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
        // Nothing is buffered here: every write already reached the backing
        // file. ENOSYS tells the kernel so once for all (fc->no_flush): with
        // the writeback cache it sends FLUSH at every close in spite of
        // FOPEN_NOFLUSH (after writing the file's dirty pages back).
        let nosys = || Err(FsError::Io(io::Error::from_raw_os_error(libc::ENOSYS)));
        serve(Op::Flush, reply, nosys, |r, ()| r.ok());
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let body = || {
            KmsFs::release_handle(self, ino.0, fh.0);
            Ok(())
        };
        serve(Op::Release, reply, body, |r, ()| r.ok());
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let body = || KmsFs::fsync(self, ino.0, datasync);
        serve(Op::Fsync, reply, body, |r, ()| r.ok());
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let body = || KmsFs::opendir(self, ino.0, &caller(req));
        serve(Op::Opendir, reply, body, |r, fh| {
            r.opened(FileHandle(fh), self.dir_open_flags())
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        let body = || self.dir_entries(fh.0, offset);
        serve(Op::Readdir, reply, body, |mut reply, entries| {
            for e in entries {
                // "." and ".." are the directory's own inode here.
                let eino = if e.is_dot() { ino.0 } else { e.backing_ino };
                if reply.add(INodeNo(eino), e.next, file_type(e.kind), &e.name) {
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
        reply: ReplyDirectoryPlus,
    ) {
        // The directory, checked to be `ino`: its entries are looked up in
        // it, not in whatever its name leads to by now.
        let body = || {
            let entries = self.dir_entries(fh.0, offset)?;
            Ok((
                entries,
                self.open_checked(ino.0, libc::O_PATH | libc::O_DIRECTORY)?,
            ))
        };
        serve(Op::Readdirplus, reply, body, |mut reply, (entries, dir)| {
            let dir_attr = attr_of(self.cfg.layout, ino.0, &dir.meta);
            let dir_gen = Generation(dir_attr.generation);
            let dir_attr = file_attr(&dir_attr);
            let ttl = self.ttl();
            for e in entries {
                let full = if e.is_dot() {
                    // "." and ".." take no lookup reference in the kernel.
                    reply.add(ino, e.next, &e.name, &ttl, &dir_attr, dir_gen)
                } else {
                    // An entry gone since it was read is skipped (Err -> not full).
                    self.dir_entry_plus(&dir.file, &dir.rel, &e.backing, |a| {
                        let generation = Generation(a.generation);
                        let a = file_attr(a);
                        reply.add(a.ino, e.next, &e.name, &ttl, &a, generation)
                    })
                    .unwrap_or_default()
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
        let body = || {
            KmsFs::releasedir(self, fh.0);
            Ok(())
        };
        serve(Op::Releasedir, reply, body, |r, ()| r.ok());
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let body = || KmsFs::fsyncdir(self, ino.0);
        serve(Op::Fsyncdir, reply, body, |r, ()| r.ok());
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        serve(
            Op::Statfs,
            reply,
            || KmsFs::statfs(self),
            |r, s| {
                r.statfs(
                    s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namemax, s.frsize,
                )
            },
        );
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let body = || KmsFs::setxattr(self, ino.0, name, value, flags, &caller(req));
        serve(Op::Setxattr, reply, body, |r, ()| r.ok());
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let body = || {
            if ino.0 == ROOT_INO && name == REQUESTS_XATTR {
                return requests_xattr(req.uid(), size);
            }
            #[cfg(debug_assertions)]
            if name == super::xattr::BACKING_XATTR {
                return self.backing_xattr(ino.0, req.uid(), size);
            }
            KmsFs::getxattr(self, ino.0, name, size)
        };
        serve(Op::Getxattr, reply, body, reply_xattr);
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let body = || KmsFs::listxattr(self, ino.0, &caller(req), size);
        serve(Op::Listxattr, reply, body, reply_xattr);
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let body = || KmsFs::removexattr(self, ino.0, name, &caller(req));
        serve(Op::Removexattr, reply, body, |r, ()| r.ok());
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let body = || KmsFs::access(self, ino.0, &caller(req), mask.bits());
        serve(Op::Access, reply, body, |r, ()| r.ok());
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
        let body = || {
            self.writable()?;
            KmsFs::create_handle(self, parent.0, name, mode, &caller(req))
        };
        serve(Op::Create, reply, body, |r, (attr, fh)| {
            let fh = FileHandle(fh);
            r.created(
                &self.ttl(),
                &file_attr(&attr),
                Generation(attr.generation),
                fh,
                OPEN_FLAGS,
            )
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
        let body = || KmsFs::fallocate(self, ino.0, &caller(req), offset, length, mode);
        serve(Op::Fallocate, reply, body, |r, ()| r.ok());
    }

    fn copy_file_range(
        &self,
        req: &Request,
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
        let body = || {
            let who = caller(req);
            self.copy_range(ino_in.0, offset_in, ino_out.0, offset_out, len, &who)
        };
        serve(Op::CopyFileRange, reply, body, |r, n| r.written(n));
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
        let body = || {
            let offset = u64::try_from(offset).map_err(|_| FsError::PastEnd)?;
            let whence = match whence {
                libc::SEEK_DATA => Seek::Data,
                libc::SEEK_HOLE => Seek::Hole,
                _ => return Err(FsError::Invalid),
            };
            self.seek(ino.0, offset, whence)
        };
        serve(Op::Lseek, reply, body, |r, pos| r.offset(pos as i64));
    }
}

/// Drops the kernel's pages of a range on this thread, then runs `then`.
fn inval_here(n: &fuser::Notifier, ino: u64, offset: u64, len: u64, then: Then) {
    if let Err(e) = n.inval_inode(INodeNo(ino), offset as i64, len.max(1) as i64) {
        log::debug!("invalidating inode {ino}'s pages: {e}");
    }
    then();
}

/// Whether FUSE over io_uring is wanted (-o io_uring, the rings made) and
/// was asked for in the INIT reply.
#[derive(Clone, Default, Debug)]
pub(super) struct UringAsk(Arc<[AtomicBool; 2]>);

impl UringAsk {
    fn wanted(&self) -> bool {
        self.0[0].load(Ordering::SeqCst)
    }
    fn set_wanted(&self) {
        self.0[0].store(true, Ordering::SeqCst);
    }
    fn asked(&self) -> bool {
        self.0[1].load(Ordering::SeqCst)
    }
    fn set_asked(&self) {
        self.0[1].store(true, Ordering::SeqCst);
    }
}

/// A FUSE session of a `KmsFs`, mounted and ready to serve.
pub struct Session {
    s: fuser::Session<KmsFs>,
    /// The io_uring transport's rings, when -o io_uring made them and the
    /// INIT reply asked for it.
    rings: Option<Rings>,
}

impl Session {
    /// Mounts `fs` at `mountpoint` the way fuser does (through fusermount3
    /// unless root); fuser unmounts it again when the session ends.
    pub fn mount(fs: KmsFs, mountpoint: &Path, cfg: &SessionConfig) -> io::Result<Self> {
        let kernel = fs.kernel.clone();
        let (uring, rings) = rings(&fs, cfg);
        let s = fuser::Session::new(fs, mountpoint, &fuser_config(cfg))?;
        Ok(Session::notifying(s, &kernel, uring, rings))
    }

    /// Serves `fs` over `fd`, a /dev/fuse connection that the caller has
    /// mounted with mount(2): fuser then never unmounts by itself.
    pub fn over_fd(fs: KmsFs, fd: OwnedFd, cfg: &SessionConfig) -> io::Result<Self> {
        let kernel = fs.kernel.clone();
        let (uring, rings) = rings(&fs, cfg);
        let s = fuser::Session::from_fd(fs, fd, acl(cfg.access), fuser_config(cfg))?;
        Ok(Session::notifying(s, &kernel, uring, rings))
    }

    /// Gives the filesystem its way to invalidate the kernel's cached
    /// attributes of an inode (FUSE_NOTIFY_INVAL_INODE with a negative
    /// offset: attributes only, no page is touched, so it is safe to send
    /// while serving a WRITE whose pages the writer holds locked), and its
    /// pages of a range (after a direct write). Pages are dropped by one
    /// thread of their own: the kernel waits there for pages locked by
    /// reads in flight, which the serving threads must stay free to answer.
    fn notifying(
        s: fuser::Session<KmsFs>,
        kernel: &KernelCache,
        uring: UringAsk,
        rings: Option<Rings>,
    ) -> Self {
        let n = s.notifier();
        let (tx, rx) = std::sync::mpsc::channel::<(u64, u64, u64, Then)>();
        let pages = n.clone();
        let spawned = std::thread::Builder::new()
            .name("kmsfs-inval".into())
            .spawn(move || {
                for (ino, offset, len, then) in rx {
                    let (off, len) = (offset as i64, len.max(1) as i64);
                    if let Err(e) = pages.inval_inode(INodeNo(ino), off, len) {
                        log::debug!("invalidating inode {ino}'s pages: {e}");
                    }
                    contained("page invalidation", then);
                }
            });
        let tx = std::sync::Mutex::new(tx);
        let pages: PagesThen = match spawned {
            Ok(_) => Box::new(move |ino, offset, len, then| {
                let tx = tx.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(std::sync::mpsc::SendError((ino, offset, len, then))) =
                    tx.send((ino, offset, len, then))
                {
                    drop(tx);
                    inval_here(&n, ino, offset, len, then);
                }
            }),
            // No thread: drop the pages on the serving thread.
            Err(e) => {
                log::warn!("no page invalidation thread ({e}): serving threads do it");
                let n = n.clone();
                Box::new(move |ino, offset, len, then| inval_here(&n, ino, offset, len, then))
            }
        };
        let attr = s.notifier();
        kernel.set(Notify {
            attr: Box::new(move |ino| {
                if let Err(e) = attr.inval_inode(INodeNo(ino), -1, 0) {
                    log::debug!("invalidating inode {ino}'s attributes: {e}");
                }
            }),
            pages,
        });
        let rings = rings.filter(|_| uring.asked());
        Session { s, rings }
    }

    /// Serves requests until the mount goes away: through the rings when
    /// the kernel took FUSE over io_uring, and /dev/fuse for the rest.
    pub fn run(self) -> io::Result<()> {
        let Some(rings) = self.rings else {
            log::info!("serving through /dev/fuse");
            return self.s.run();
        };
        let dev = self.s.as_fd().as_raw_fd();
        let (queues, threads) = rings.shape();
        let r = self.s.run_with(move |d| {
            let dispatch: DispatchFn = Arc::new(move |data, reply| d.dispatch(data, reply));
            log::info!(
                "serving through FUSE over io_uring ({queues} queues, {threads} rings), \
                 FORGET and INTERRUPT through /dev/fuse"
            );
            match rings.serve(dev, dispatch) {
                Ok(h) => h,
                Err(e) => {
                    log::warn!(
                        "FUSE over io_uring could not start ({e}): serving through /dev/fuse"
                    );
                    Vec::new()
                }
            }
        });
        log::info!("FUSE over io_uring served {} requests", uring::served());
        r
    }
}

/// The rings of -o io_uring, made before the INIT handshake so that the
/// INIT reply asks for the transport only when it can be served; a failure
/// is logged with its errno and the mount goes on through /dev/fuse.
fn rings(fs: &KmsFs, cfg: &SessionConfig) -> (UringAsk, Option<Rings>) {
    let ask = fs.uring.clone();
    if !cfg.io_uring {
        return (ask, None);
    }
    // The kernel's payload buffer: max(max_write, max_pages * PAGE_SIZE),
    // both MAX_WRITE here (the readahead window is no larger).
    let per_queue = (cfg.threads / uring::possible_cpus().unwrap_or(1)).max(1);
    match Rings::new(per_queue, MAX_WRITE as usize) {
        Ok(r) => {
            ask.set_wanted();
            (ask, Some(r))
        }
        Err(e) => {
            log::warn!(
                "no io_uring for -o io_uring: {e} (errno {}): serving through /dev/fuse",
                e.raw_os_error().unwrap_or(0)
            );
            (ask, None)
        }
    }
}

fn acl(a: Access) -> SessionACL {
    match a {
        Access::Owner => SessionACL::Owner,
        Access::RootAndOwner => SessionACL::RootAndOwner,
        Access::All => SessionACL::All,
    }
}

fn mount_option(f: &MountFlag) -> MountOption {
    match f {
        MountFlag::ReadOnly => MountOption::RO,
        MountFlag::ReadWrite => MountOption::RW,
        MountFlag::DefaultPermissions => MountOption::DefaultPermissions,
        MountFlag::AutoUnmount => MountOption::AutoUnmount,
        MountFlag::Dev => MountOption::Dev,
        MountFlag::NoDev => MountOption::NoDev,
        MountFlag::Suid => MountOption::Suid,
        MountFlag::NoSuid => MountOption::NoSuid,
        MountFlag::Exec => MountOption::Exec,
        MountFlag::NoExec => MountOption::NoExec,
        MountFlag::Atime => MountOption::Atime,
        MountFlag::NoAtime => MountOption::NoAtime,
        MountFlag::Sync => MountOption::Sync,
        MountFlag::Async => MountOption::Async,
        MountFlag::DirSync => MountOption::DirSync,
        MountFlag::FsName(n) => MountOption::FSName(n.clone()),
        MountFlag::Subtype(s) => MountOption::Subtype(s.clone()),
    }
}

fn fuser_config(c: &SessionConfig) -> Config {
    let mut cfg = Config::default();
    cfg.mount_options = c.flags.iter().map(mount_option).collect();
    cfg.acl = acl(c.access);
    cfg.n_threads = Some(c.threads);
    cfg.clone_fd = true;
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
