//! Regular files' content: opening (each open checked against the data key
//! that will serve it, keys through the cache), reading, writing,
//! truncating, syncing, fallocate and SEEK_DATA/SEEK_HOLE, and copying
//! between files.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::error::FsError;
use super::filesystem::{KmsFs, lock};
use super::node::Checked;
use super::open::OpenFile;
use super::privs::{self, Kill};
use crate::envelope::{EncryptedFile, EnvelopeError, FileKey, FreshKey, file_context};
use crate::format::Header;
use crate::kms::{Caller, FileAccess, KeyServiceExt, RequestContext, Requester};
use crate::os;

/// Largest write the kernel may send (the kernel here caps it at 1 MiB).
pub(super) const MAX_WRITE: u32 = 1 << 20;

/// True when two headers hold the same file id and current wrapped key (so
/// an open authorized against one may be served by a key from the other).
fn same_key(a: &Header, b: &Header) -> bool {
    fn wrapped(h: &Header) -> Option<&[u8]> {
        h.active().map(|s| s.wrapped_key.as_slice())
    }
    a.file_id == b.file_id && wrapped(a) == wrapped(b)
}

/// A refusal of the key service empties the pool of data keys: the key may
/// have been disabled, and no key generated before serves a create.
fn refusal(pool: &super::keypool::DataKeyPool, e: &EnvelopeError) {
    if matches!(e, EnvelopeError::Kms(k) if k.is_access_refusal()) {
        pool.refused();
    }
}

/// Where lseek should look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seek {
    /// SEEK_DATA.
    Data,
    /// SEEK_HOLE.
    Hole,
}

impl KmsFs {
    /// The open state of `ino` (EBADF when no handle is open).
    pub fn open_state(&self, ino: u64) -> Result<Arc<OpenFile>, FsError> {
        self.opens.get(ino).ok_or(FsError::NotOpen)
    }

    /// Who asks (from /proc: the groups always, for the key policy; name and
    /// executable when the key service audits) and the path as seen under
    /// the mount point, for the key service's audit record.
    pub(super) fn requester(&self, caller: &Caller, backing: &Path) -> (Requester, String) {
        let requester = if self.cfg.ks.audits_file_access() {
            Requester::of(caller)
        } else {
            Requester::groups_of(caller)
        };
        let rel = backing.strip_prefix(&self.cfg.backing).unwrap_or(backing);
        // The path matters only to a key service that records it: only
        // then are encrypted names decrypted for it.
        let path = if self.cfg.ks.audits_file_access() {
            self.plain_rel(rel)
        } else {
            rel.to_string_lossy().into_owned()
        };
        (requester, path)
    }

    /// A new encrypted file over `file` under CMK `key_id` (the mount's or
    /// its directory's), for `caller` (the audit record names `backing` as
    /// seen under the mount point).
    pub(super) fn create_encrypted(
        &self,
        file: File,
        caller: &Caller,
        backing: &Path,
        key_id: &str,
    ) -> Result<EncryptedFile, crate::envelope::EnvelopeError> {
        let (requester, path) = self.requester(caller, backing);
        let access = FileAccess {
            path: &path,
            requester: &requester,
        };
        let rc = RequestContext::open(*caller, &access);
        let pool = self.cfg.datakey_pool.as_deref();
        let fresh = match pool.and_then(|p| p.take(key_id)) {
            Some(k) => k,
            None => FreshKey::generate(&*self.cfg.ks, &rc, key_id).inspect_err(|e| {
                if let Some(p) = pool {
                    refusal(p, e);
                }
            })?,
        };
        EncryptedFile::create_with(file, fresh, self.cfg.layout)
    }

    /// The data key of a header for `caller`, from the cache or the key
    /// service. Either way the key service hears of the open (one audit
    /// record per open that needs the key, naming the path as seen under
    /// the mount point and the requesting process); the requester's
    /// supplementary groups, from /proc, count for the key policy and so
    /// are part of the cache key.
    fn file_key(
        &self,
        header: &Header,
        caller: &Caller,
        backing: &Path,
    ) -> Result<Arc<FileKey>, FsError> {
        let ks = &*self.cfg.ks;
        let generation = ks.generation();
        let wrapped = header
            .active()
            .map(|s| s.wrapped_key.as_slice())
            .unwrap_or(&[]);
        let (requester, path) = self.requester(caller, backing);
        let groups = requester.groups.as_deref();
        let access = FileAccess {
            path: &path,
            requester: &requester,
        };
        let rc = RequestContext::open(*caller, &access);
        if let Some(k) = self
            .keys
            .get(generation, &header.file_id, wrapped, caller, groups)
        {
            let recorded = ks.record_cached_open(
                &rc,
                &k.key_id,
                k.key_material_version,
                &file_context(&header.file_id),
            );
            if let Err(e) = recorded {
                log::warn!("an open served from the key cache was not recorded: {e}");
            }
            super::stats::key_cache(true);
            return Ok(k);
        }
        super::stats::key_cache(false);
        let key = EncryptedFile::unwrap_key(header, ks, &rc)
            .inspect_err(|e| {
                if let Some(p) = self.cfg.datakey_pool.as_deref() {
                    refusal(p, e);
                }
            })
            .map_err(|e| FsError::envelope(e, backing))?;
        let key = Arc::new(key);
        self.keys.insert(
            generation,
            &header.file_id,
            wrapped,
            caller,
            groups,
            key.clone(),
        );
        Ok(key)
    }

    /// Opens `ino` for `caller`: checks that the caller may use the file's key
    /// now (EACCES when the key is disabled, pending deletion, deleted or the
    /// policy refuses), then shares the inode's open state or makes it.
    pub fn open(
        &self,
        ino: u64,
        caller: &Caller,
        truncate: bool,
    ) -> Result<Arc<OpenFile>, FsError> {
        self.open_for(ino, caller, truncate, true)
    }

    /// `open`, saying whether the caller opened the file for writing: only
    /// then is an empty backing file given a header (a read never writes).
    pub fn open_for(
        &self,
        ino: u64,
        caller: &Caller,
        truncate: bool,
        writing: bool,
    ) -> Result<Arc<OpenFile>, FsError> {
        self.open_keeping(ino, caller, truncate, writing)
            .map(|(f, _)| f)
    }

    /// `open_for`, and whether the kernel may keep the pages it caches of
    /// the file: only when the backing file is as it was when its last
    /// handle closed (`OpenTable::unchanged_since_closed`):
    /// a change beside the mount (tampering included) still drops them.
    /// Never on shared storage, where others write the files.
    pub fn open_keeping(
        &self,
        ino: u64,
        caller: &Caller,
        truncate: bool,
        writing: bool,
    ) -> Result<(Arc<OpenFile>, bool), FsError> {
        let (f, keep) = match self.opens.get(ino) {
            Some(existing) => {
                let f = self.reopen(ino, &existing, caller, writing)?;
                // A handle may still be open, or its release not yet
                // processed (close(2) does not wait for it): the same rule.
                let keep = !f.direct_written()
                    && f.metadata()
                        .is_ok_and(|m| self.opens.unchanged_since_closed(ino, &m));
                (f, keep)
            }
            None => self.open_fresh(ino, caller, writing)?,
        };
        if truncate && let Err(e) = f.set_len(0) {
            self.opens.release(ino);
            return Err(e);
        }
        Ok((f, keep && !truncate && self.writeback()))
    }

    /// The check every open makes, for a file someone already has open:
    /// `caller` may use the key that will serve it, the one the open state
    /// holds. That is the wrapped key of the header the state was opened
    /// with, not of the header on disk now: whoever can write the backing
    /// file can put there the header of a file under a key of their own,
    /// which would pass the check while the state serves the holder's data
    /// key.
    fn check_key(&self, existing: &OpenFile, caller: &Caller) -> Result<(), FsError> {
        self.file_key(&existing.header(), caller, existing.backing())?;
        Ok(())
    }

    fn reopen(
        &self,
        ino: u64,
        existing: &OpenFile,
        caller: &Caller,
        writing: bool,
    ) -> Result<Arc<OpenFile>, FsError> {
        self.check_key(existing, caller)?;
        match self.opens.attach_existing(ino) {
            Some(f) => Ok(f),
            // The last handle went meanwhile: open afresh.
            None => self.open_fresh(ino, caller, writing).map(|(f, _)| f),
        }
    }

    fn open_fresh(
        &self,
        ino: u64,
        caller: &Caller,
        writing: bool,
    ) -> Result<(Arc<OpenFile>, bool), FsError> {
        let acc = if self.read_only() {
            libc::O_RDONLY
        } else {
            libc::O_RDWR
        };
        // O_NOATIME needs the file's owner or CAP_FOWNER: the root daemon.
        let noatime = if self.cfg.noatime && os::ids::is_root() {
            libc::O_NOATIME
        } else {
            0
        };
        let Checked { file, meta: m, rel } = self.open_checked(ino, acc | noatime)?;
        let abs = self.backing_path(&rel);
        share_lock(&file, &abs)?;
        if m.is_dir() {
            return Err(FsError::IsDirectory);
        }
        let keep = m.len() > 0 && self.opens.unchanged_since_closed(ino, &m);
        let ef = if m.len() == 0 && !self.read_only() && writing {
            // An empty backing file holds nothing yet (a crash between create
            // and header, or a file made beside the mount): an open for
            // writing gives it a header, once, even if several opens race
            // here. An open for reading leaves it as it is (and fails: it is
            // not a kmsfs file yet).
            let _one_at_a_time = lock(&self.init_lock);
            if file.metadata()?.len() == 0 {
                let key = self.dir_key(rel.parent().unwrap_or(Path::new("")))?;
                self.create_encrypted(file, caller, &abs, &key.key_id)
                    .map_err(|e| FsError::envelope(e, &abs))?
            } else {
                self.with_data_key(file, caller, &abs)?
            }
        } else {
            self.with_data_key(file, caller, &abs)?
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
        Ok((f, keep))
    }

    /// An existing encrypted file with its data key for `caller`.
    fn with_data_key(
        &self,
        file: File,
        caller: &Caller,
        abs: &Path,
    ) -> Result<EncryptedFile, FsError> {
        let header = EncryptedFile::read_header(&file).map_err(|e| FsError::envelope(e, abs))?;
        if header.layout() != self.cfg.layout {
            // Its size through the mount is computed with the tree's layout,
            // and would be wrong: a file copied in from a tree of the other
            // layout (or a header changed in the backing directory).
            let e = crate::envelope::EnvelopeError::Mismatch(format!(
                "block format {} in a tree of block format {}",
                header.version,
                self.cfg.layout.version()
            ));
            return Err(FsError::envelope(e, abs));
        }
        let key = self.file_key(&header, caller, abs)?;
        EncryptedFile::with_key(file, header, key).map_err(|e| FsError::envelope(e, abs))
    }

    /// Releases one handle of `ino`.
    pub fn release(&self, ino: u64) {
        self.opens.release(ino);
    }

    /// `open_keeping` for the kernel: the open is charged to the caller's
    /// handle budget (EMFILE past it); returns the handle number for the
    /// kernel and whether it may keep cached pages.
    pub fn open_handle(
        &self,
        ino: u64,
        caller: &Caller,
        truncate: bool,
        writing: bool,
    ) -> Result<(u64, bool), FsError> {
        let charge = self.budget.charge(caller.uid)?;
        let (_, keep) = self.open_keeping(ino, caller, truncate, writing)?;
        Ok((self.files.add(ino, charge), keep))
    }

    /// Releases handle `fh` (of inode `ino`) and its charge.
    pub fn release_handle(&self, ino: u64, fh: u64) {
        let ino = self.files.remove(fh).unwrap_or(ino);
        self.opens.release(ino);
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
    ) -> Result<(), FsError> {
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

    /// Reads up to `size` bytes of open file `ino` at `offset`.
    pub fn read(&self, ino: u64, offset: u64, size: usize) -> Result<Vec<u8>, FsError> {
        self.open_state(ino)?.read_at(offset, size)
    }

    /// Writes `data` to open file `ino` at `offset`; `kill`: the kernel says
    /// the caller lacks CAP_FSETID, so setid bits go first; `direct`: the
    /// writer's file is open with O_DIRECT, past the kernel's pages (the
    /// adapter has them dropped before it replies): the open state
    /// remembers it, so that no open is told to keep the cache until its
    /// last handle is closed.
    pub fn write(
        &self,
        ino: u64,
        caller: &Caller,
        data: &[u8],
        offset: u64,
        kill: bool,
        direct: bool,
    ) -> Result<(), FsError> {
        let f = self.open_state(ino)?;
        if kill && privs::drop_for(f.read().file(), caller, Kill::Asked)? {
            // The kernel caches the mode for the TTL and learns of this
            // change only from us (an exec must not see the setid bits).
            self.kernel.attr_changed(ino);
        }
        if direct {
            f.mark_direct_write();
        }
        f.write_at(data, offset, self.writeback())
    }

    /// fsync (or with `data_only` fdatasync) of open file `ino`.
    pub fn fsync(&self, ino: u64, data_only: bool) -> Result<(), FsError> {
        self.open_state(ino)?.sync(data_only)
    }

    /// fallocate(2) of open file `ino` by `caller` (who may lose setid bits).
    pub fn fallocate(
        &self,
        ino: u64,
        caller: &Caller,
        offset: u64,
        len: u64,
        mode: i32,
    ) -> Result<(), FsError> {
        let f = self.open_state(ino)?;
        if privs::drop_for(f.read().file(), caller, Kill::IfUnprivileged)? {
            self.kernel.attr_changed(ino);
        }
        f.write()
            .fallocate(offset, len, mode)
            .map_err(|e| FsError::envelope(e, f.backing()))
    }

    /// lseek SEEK_DATA or SEEK_HOLE in open file `ino` from `offset`.
    pub fn seek(&self, ino: u64, offset: u64, whence: Seek) -> Result<u64, FsError> {
        let f = self.open_state(ino)?;
        let ef = f.read();
        let r = match whence {
            Seek::Data => ef.seek_data(offset),
            Seek::Hole => ef.seek_hole(offset),
        };
        r.map_err(|e| FsError::envelope(e, f.backing()))
    }

    /// copy_file_range: decrypts and encrypts again (the two files have
    /// different keys), at most MAX_WRITE bytes; the caller loops for the
    /// rest. Returns the bytes copied. Like a write, it takes setuid and
    /// setgid from the destination when `caller` lacks CAP_FSETID (the
    /// kernel sends no kill flag with it, and may hold a mode cached from
    /// before the bits were set beside the mount).
    pub fn copy_range(
        &self,
        ino_in: u64,
        offset_in: u64,
        ino_out: u64,
        offset_out: u64,
        len: u64,
        caller: &Caller,
    ) -> Result<u32, FsError> {
        let src = self.open_state(ino_in)?;
        let dst = self.open_state(ino_out)?;
        if privs::drop_for(dst.read().file(), caller, Kill::IfUnprivileged)? {
            self.kernel.attr_changed(ino_out);
        }
        let data = src.read_at(offset_in, len.min(u64::from(MAX_WRITE)) as usize)?;
        dst.write_at(&data, offset_out, self.writeback())?;
        Ok(data.len() as u32)
    }
}

/// How long an open waits for a backing file's rewrap lock at most.
const LOCK_WAIT: Duration = Duration::from_millis(200);

/// How many serving threads may wait for a rewrap lock at once: the others
/// get EAGAIN at once, so that no user can tie up every thread this way.
const LOCK_WAITERS: usize = 1;

static WAITING: AtomicUsize = AtomicUsize::new(0);

/// Takes a read lock (an OFD lock, `os::beneath::try_ofd_lock`) on a backing
/// file the mount holds open, for as long as it holds it: `kmsfs rewrap`
/// takes the write lock without waiting and skips a locked file as busy
/// (docs/TREE.md). Taken before the header is read, so a rewrap in progress
/// (a few milliseconds) finishes first and this open reads the new header.
///
/// Never a wait on something another user controls: only a descriptor open
/// for writing can hold a conflicting lock (rewrap, or someone who may write
/// the backing file and so could spoil it anyway; a flock, which any reader
/// can take, does not conflict). Even then one serving thread at most waits,
/// for `LOCK_WAIT` at most; the open then fails with EAGAIN. A file system
/// without these locks goes on without.
pub(super) fn share_lock(file: &File, abs: &Path) -> Result<(), FsError> {
    let attempt = || match os::beneath::try_ofd_lock(file, false) {
        Ok(taken) => taken,
        Err(e) => {
            log::debug!("{}: no read lock: {e}", crate::logtext::escaped(abs));
            true
        }
    };
    if attempt() {
        return Ok(());
    }
    let busy = || {
        log::info!(
            "{}: locked for writing by another process; the open gets EAGAIN",
            crate::logtext::escaped(abs)
        );
        FsError::Busy
    };
    if WAITING.fetch_add(1, Ordering::SeqCst) >= LOCK_WAITERS {
        WAITING.fetch_sub(1, Ordering::SeqCst);
        return Err(busy());
    }
    let start = Instant::now();
    let mut taken = false;
    while !taken && start.elapsed() < LOCK_WAIT {
        std::thread::sleep(Duration::from_millis(2));
        taken = attempt();
    }
    WAITING.fetch_sub(1, Ordering::SeqCst);
    if taken { Ok(()) } else { Err(busy()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::tests::TestKeys;
    use crate::format;
    use crate::fs::filesystem::FsConfig;
    use crate::kms::{KeyService, KmsError, Request, Response};
    use std::ffi::OsStr;
    use std::os::unix::fs::FileExt;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::time::Duration;

    /// TestKeys that count Decrypt calls, whose generation tests can bump,
    /// and that can deny one uid the Decrypt of one wrapped key (a policy).
    struct Counting {
        inner: TestKeys,
        decrypts: AtomicUsize,
        generation: AtomicU64,
        deny: Mutex<Option<(u32, Vec<u8>)>>,
    }

    impl KeyService for Counting {
        fn call(
            &self,
            rc: &RequestContext<'_>,
            request: Request<'_>,
        ) -> Result<Response, KmsError> {
            if let Request::Decrypt { blob, .. } = &request {
                self.decrypts.fetch_add(1, Ordering::SeqCst);
                let c = &rc.caller;
                if lock(&self.deny).as_ref() == Some(&(c.uid, blob.to_vec())) {
                    return Err(KmsError::AccessDenied {
                        key_id: "(test)".into(),
                        action: crate::kms::Operation::Decrypt,
                        principal: (c.uid, c.gid),
                    });
                }
            }
            self.inner.call(rc, request)
        }
        fn flush_audit(&self) {}
        fn audits_file_access(&self) -> bool {
            false
        }
        fn generation(&self) -> u64 {
            self.generation.load(Ordering::SeqCst)
        }
    }

    const ROOT: Caller = Caller {
        uid: 0,
        gid: 0,
        pid: 1,
        access_key: None,
    };
    const ALICE: Caller = Caller {
        uid: 1000,
        gid: 1000,
        pid: 2,
        access_key: None,
    };

    fn fs() -> (tempfile::TempDir, Arc<Counting>, KmsFs) {
        fs_with(false)
    }

    /// `fs()` with the kernel's writeback cache on or off.
    fn fs_with(writeback: bool) -> (tempfile::TempDir, Arc<Counting>, KmsFs) {
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
            layout: format::Layout::NEW,
            read_only: false,
            noatime: false,
            ttl: Duration::from_secs(1),
            writeback,
            handles: crate::fs::HandleLimits::unlimited(),
            names: None,
            dir_keys: Default::default(),
            datakey_pool: None,
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
        f.write_at(b"hello", 0, false).unwrap();
        let ino = attr.ino;
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
        assert_eq!(
            fs.open(ino, &ROOT, false).err().map(|e| e.errno()),
            Some(libc::EACCES)
        );
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
        f.write_at(&[7u8; 5000], 0, false).unwrap();
        let ino = attr.ino;
        fs.release(ino);
        assert_eq!(fs.getattr(ino).unwrap().size, 5000);
        let backing = std::fs::metadata(dir.path().join("g")).unwrap().len();
        assert_eq!(backing, format::Layout::NEW.backing_size_from_plain(5000));
        fs.truncate(ino, 10, &ROOT, false).unwrap();
        assert_eq!(fs.getattr(ino).unwrap().size, 10);
        assert!(fs.open_state(ino).is_err(), "truncate left the file open");
        assert_eq!(fs.getattr(ino).unwrap().perm, 0o600);
    }

    const ROOT_INO_FOR_TESTS: u64 = super::super::inodes::ROOT_INO;

    #[test]
    fn pages_are_kept_only_for_a_file_unchanged_since_its_last_close() {
        // Pages are kept only under the writeback cache (`open_keeping`).
        let (dir, ks, fs) = fs_with(true);
        let (attr, f) = fs
            .create(ROOT_INO_FOR_TESTS, OsStr::new("k"), 0o644, &ROOT)
            .unwrap();
        f.write_at(b"kept", 0, false).unwrap();
        let ino = attr.ino;
        let keep = |who: &Caller| {
            let (_, keep) = fs.open_keeping(ino, who, false, false).unwrap();
            keep
        };
        fs.release(ino);
        // Closed and untouched since: keep.
        assert!(keep(&ROOT));
        // A second handle while one is open (or its release is still on its
        // way from the kernel): the same rule, and nothing changed: keep.
        assert!(keep(&ROOT));
        // A write through an open handle changes the backing file: drop
        // (only slower: the kernel's pages followed the write).
        fs.open_state(ino)
            .unwrap()
            .write_at(b" more", 4, false)
            .unwrap();
        assert!(!keep(&ROOT));
        for _ in 0..3 {
            fs.release(ino);
        }
        assert!(keep(&ROOT));
        fs.release(ino);
        // Changed beside the mount (a mode change is enough: ctime): drop.
        std::fs::set_permissions(
            dir.path().join("k"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        assert!(!keep(&ROOT));
        fs.release(ino);
        assert!(keep(&ROOT));
        fs.release(ino);
        // O_TRUNC never keeps; a refused key is refused, kept pages or not.
        assert!(!fs.open_keeping(ino, &ROOT, true, true).unwrap().1);
        fs.release(ino);
        ks.inner.refuse.store(true, Ordering::SeqCst);
        ks.generation.fetch_add(1, Ordering::SeqCst);
        assert_eq!(
            fs.open_keeping(ino, &ROOT, false, false)
                .err()
                .map(|e| e.errno()),
            Some(libc::EACCES)
        );
    }

    #[test]
    fn truncate_by_path_checks_the_key_while_another_handle_is_open() {
        let (_dir, ks, fs) = fs();
        let (attr, f) = fs
            .create(ROOT_INO_FOR_TESTS, OsStr::new("h"), 0o666, &ROOT)
            .unwrap();
        f.write_at(b"kept", 0, false).unwrap();
        let ino = attr.ino;
        ks.inner.refuse.store(true, Ordering::SeqCst);
        ks.generation.fetch_add(1, Ordering::SeqCst);
        // By path: refused like an open, whoever holds the file open.
        for (who, size) in [(&ALICE, 1 << 20), (&ROOT, 0)] {
            assert_eq!(
                fs.truncate(ino, size, who, false).err().map(|e| e.errno()),
                Some(libc::EACCES)
            );
        }
        assert_eq!(fs.getattr(ino).unwrap().size, 4);
        // The holder's own handle (ftruncate) keeps working, as its writes do.
        fs.truncate(ino, 2, &ROOT, true).unwrap();
        assert_eq!(fs.open_state(ino).unwrap().read_at(0, 10).unwrap(), b"ke");
    }

    /// Makes `name` in the root with `content`, looked up once; its inode.
    fn new_file(fs: &KmsFs, name: &str, content: &[u8]) -> u64 {
        let (attr, f) = fs
            .create(ROOT_INO_FOR_TESTS, OsStr::new(name), 0o666, &ROOT)
            .unwrap();
        f.write_at(content, 0, false).unwrap();
        fs.release(attr.ino);
        attr.ino
    }

    /// Issue 6, item 1: a node whose name now leads to another backing file
    /// (renamed or replaced beside the mount) is ESTALE for everything that
    /// would act on that other file, and the other file is left alone.
    #[test]
    fn a_node_whose_name_leads_to_another_file_is_stale() {
        let (dir, _ks, fs) = fs();
        let a = new_file(&fs, "a", b"A's data");
        let b = new_file(&fs, "b", b"B's data, longer");
        std::fs::create_dir(dir.path().join("da")).unwrap();
        std::fs::create_dir(dir.path().join("db")).unwrap();
        std::fs::write(dir.path().join("db/in-b"), b"").unwrap();
        let da = fs.lookup(ROOT_INO_FOR_TESTS, OsStr::new("da")).unwrap().ino;
        // "a" now names B's file, "da" B's directory.
        for (x, y) in [("a", "b"), ("da", "db")] {
            let p = |n: &str| dir.path().join(n);
            std::fs::rename(p(x), p(&format!("{x}.aside"))).unwrap();
            std::fs::rename(p(y), p(x)).unwrap();
        }
        // And "c" a symlink.
        let c = new_file(&fs, "c", b"");
        std::fs::remove_file(dir.path().join("c")).unwrap();
        std::os::unix::fs::symlink("a", dir.path().join("c")).unwrap();
        let b_len = std::fs::metadata(dir.path().join("a")).unwrap().len();
        let stale = Some(libc::ESTALE);
        assert_eq!(fs.getattr(a).err().map(|e| e.errno()), stale);
        assert_eq!(fs.open(a, &ROOT, false).err().map(|e| e.errno()), stale);
        assert_eq!(fs.getattr(c).err().map(|e| e.errno()), stale);
        assert_eq!(fs.open(c, &ROOT, false).err().map(|e| e.errno()), stale);
        assert_eq!(
            fs.truncate(a, 0, &ROOT, false).err().map(|e| e.errno()),
            stale
        );
        assert_eq!(
            fs.lookup(da, OsStr::new("in-b")).err().map(|e| e.errno()),
            stale
        );
        assert_eq!(fs.opendir(da, &ROOT).err().map(|e| e.errno()), stale);
        assert_eq!(
            fs.create(da, OsStr::new("new"), 0o600, &ROOT)
                .err()
                .map(|e| e.errno()),
            stale
        );
        assert!(!dir.path().join("da/new").exists());
        assert!(!dir.path().join("da.aside/new").exists());
        assert_eq!(
            std::fs::metadata(dir.path().join("a")).unwrap().len(),
            b_len
        );
        // A fresh lookup finds what is there now: B's file, as another node.
        let again = fs.lookup(ROOT_INO_FOR_TESTS, OsStr::new("a")).unwrap();
        assert_eq!(again.ino, b);
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
        let held = new_file(&fs, "held", b"root's plaintext");
        let _alices = new_file(&fs, "alices", b"alice may read this");
        let header = |name: &str| {
            let f = File::open(dir.path().join(name)).unwrap();
            EncryptedFile::read_header(&f).unwrap()
        };
        let wrapped = header("held").active().unwrap().wrapped_key.clone();
        *lock(&ks.deny) = Some((ALICE.uid, wrapped));
        assert_eq!(
            fs.open(held, &ALICE, false).err().map(|e| e.errno()),
            Some(libc::EACCES)
        );
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
        assert_eq!(
            fs.open(held, &ALICE, false).err().map(|e| e.errno()),
            Some(libc::EACCES)
        );
        assert_eq!(
            fs.truncate(held, 0, &ALICE, false).err().map(|e| e.errno()),
            Some(libc::EACCES)
        );
        // The holder keeps reading; a caller allowed the held key may open.
        assert_eq!(state.read_at(0, 100).unwrap(), b"root's plaintext");
        fs.open(held, &ROOT, false).unwrap();
        fs.release(held);
        fs.release(held);
        // Opened afresh, the swapped header's key does not open the blocks.
        let f = fs.open(held, &ALICE, false).unwrap();
        assert_eq!(f.read_at(0, 100).err().map(|e| e.errno()), Some(libc::EIO));
    }
}
