//! Open files: one `EncryptedFile` per inode over one read-write backing fd,
//! shared by every handle of that inode (and by its hard links), behind a
//! read-write lock: reads run in parallel, writes and truncates are exclusive.
//! A write seals the blocks it covers whole before it takes the lock, so the
//! WRITEs of one flush seal in parallel and hold the lock only to merge
//! partial blocks and write.
//! The state, its fd and its data key go when the last handle is released;
//! what the backing file looked like then is remembered, so that the next
//! open can tell the kernel to keep the pages it caches (`unchanged_since`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::error::FsError;
use crate::envelope::{EncryptedFile, FileKey, WholeBlocks};
use crate::format::Header;

/// The open state of one inode.
#[derive(Debug)]
pub struct OpenFile {
    ef: RwLock<EncryptedFile>,
    /// `ef`'s data key, for sealing outside the lock.
    key: Arc<FileKey>,
    /// The backing path at open time, for log messages only.
    backing: PathBuf,
    /// A handle wrote with O_DIRECT, past the kernel's pages: no open is
    /// told to keep them while this state lives, nor after it (release).
    direct_written: AtomicBool,
}

impl OpenFile {
    /// Wraps an opened encrypted file.
    pub fn new(ef: EncryptedFile, backing: PathBuf) -> Self {
        Self {
            key: ef.key().clone(),
            ef: RwLock::new(ef),
            backing,
            direct_written: AtomicBool::new(false),
        }
    }

    /// The backing path (for logs).
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// Records a write through a handle opened with O_DIRECT.
    pub fn mark_direct_write(&self) {
        self.direct_written.store(true, Ordering::Relaxed);
    }

    /// True once a handle wrote with O_DIRECT.
    pub fn direct_written(&self) -> bool {
        self.direct_written.load(Ordering::Relaxed)
    }

    /// The header whose wrapped key gave this state its data key: what every
    /// open served by this state is authorized against (the header on disk
    /// may have been overwritten since).
    pub fn header(&self) -> Header {
        self.read().header().clone()
    }

    /// Shared access (reads, stat, seek).
    pub fn read(&self) -> RwLockReadGuard<'_, EncryptedFile> {
        self.ef.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Exclusive access (writes, truncate, fallocate).
    pub fn write(&self) -> RwLockWriteGuard<'_, EncryptedFile> {
        self.ef.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads up to `size` bytes at `offset` (short only at end of file).
    pub fn read_at(&self, offset: u64, size: usize) -> Result<Vec<u8>, FsError> {
        let ef = self.read();
        let mut buf = vec![0u8; size];
        let mut done = 0;
        while done < size {
            let n = ef
                .read_at(&mut buf[done..], offset + done as u64)
                .map_err(|e| FsError::envelope(e, &self.backing))?;
            if n == 0 {
                break;
            }
            done += n;
        }
        buf.truncate(done);
        Ok(buf)
    }

    /// Writes `data` at `offset`; `keep_times`: the kernel owns the file's
    /// mtime and ctime (writeback cache), so the write leaves the times the
    /// mount shows as they were (`times::keeping`).
    pub fn write_at(&self, data: &[u8], offset: u64, keep_times: bool) -> Result<(), FsError> {
        let whole = WholeBlocks::seal(&self.key, data, offset)
            .map_err(|e| FsError::envelope(e, &self.backing))?;
        let ef = self.write();
        let write = || {
            ef.write_sealed(data, offset, whole)
                .map_err(|e| FsError::envelope(e, &self.backing))
        };
        if keep_times {
            super::times::keeping(ef.file(), write)
        } else {
            write()
        }
    }

    /// Truncates or extends to `size` plaintext bytes.
    pub fn set_len(&self, size: u64) -> Result<(), FsError> {
        self.write()
            .set_len(size)
            .map_err(|e| FsError::envelope(e, &self.backing))
    }

    /// fsync / fdatasync of the backing file.
    pub fn sync(&self, data_only: bool) -> Result<(), FsError> {
        self.read()
            .sync(data_only)
            .map_err(|e| FsError::envelope(e, &self.backing))
    }

    /// fstat of the backing file (works after unlink).
    pub fn metadata(&self) -> Result<std::fs::Metadata, FsError> {
        Ok(self.read().file().metadata()?)
    }
}

#[derive(Debug)]
struct Entry {
    file: Arc<OpenFile>,
    handles: u64,
}

/// What a backing file looked like when the daemon last served it: any
/// change to it since (content, size, mode, owner, a rename over it)
/// changes its ctime, which nobody can set back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    dev: u64,
    ino: u64,
    len: u64,
    ctime: (i64, i64),
    mtime: (i64, i64),
}

impl Seen {
    fn of(m: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Seen {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            ctime: (m.ctime(), m.ctime_nsec()),
            mtime: (m.mtime(), m.mtime_nsec()),
        }
    }
}

/// How many closed files `OpenTable` remembers (then it starts over).
const SEEN_MAX: usize = 16_384;

/// All open inodes.
#[derive(Debug, Default)]
pub(super) struct OpenTable {
    map: Mutex<HashMap<u64, Entry>>,
    /// Closed inodes: their backing file when the last handle went.
    seen: Mutex<HashMap<u64, Seen>>,
}

impl OpenTable {
    /// An empty table.
    pub(super) fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The open state of `ino`, if any handle is open.
    pub(super) fn get(&self, ino: u64) -> Option<Arc<OpenFile>> {
        self.lock().get(&ino).map(|e| e.file.clone())
    }

    /// Adds a handle to `ino`: to its existing state if there is one (the
    /// `fresh` state is then dropped), else `fresh` becomes the state. True
    /// with it when `fresh` became the state.
    pub(super) fn attach(
        &self,
        ino: u64,
        fresh: impl FnOnce() -> OpenFile,
    ) -> (Arc<OpenFile>, bool) {
        let mut m = self.lock();
        let mut made = false;
        let e = m.entry(ino).or_insert_with(|| {
            made = true;
            Entry {
                file: Arc::new(fresh()),
                handles: 0,
            }
        });
        e.handles += 1;
        super::stats::handle(true);
        (e.file.clone(), made)
    }

    /// Adds a handle to an inode that is already open; None if it is not.
    pub(super) fn attach_existing(&self, ino: u64) -> Option<Arc<OpenFile>> {
        let mut m = self.lock();
        let e = m.get_mut(&ino)?;
        e.handles += 1;
        super::stats::handle(true);
        Some(e.file.clone())
    }

    /// Releases one handle; the state goes with the last one, and what its
    /// backing file looks like then is remembered.
    pub(super) fn release(&self, ino: u64) {
        let mut m = self.lock();
        if let Some(e) = m.get_mut(&ino) {
            if e.handles > 0 {
                super::stats::handle(false);
            }
            e.handles = e.handles.saturating_sub(1);
            if e.handles == 0
                && let Some(gone) = m.remove(&ino)
            {
                // Under the table's lock: an open of `ino` now waits, so it
                // compares with this record, not with an older one.
                let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
                if seen.len() >= SEEN_MAX {
                    seen.clear();
                }
                // After a direct write the kernel's pages are not known to
                // follow the file: the next open drops them.
                match gone.file.metadata() {
                    Ok(meta) if !gone.file.direct_written() => seen.insert(ino, Seen::of(&meta)),
                    _ => seen.remove(&ino),
                };
            }
        }
    }

    /// True when the backing file of `ino`, `meta` now, is as it was when
    /// its last handle was released: then nothing changed it since but
    /// through the kernel that caches its pages (whose cache follows every
    /// change the mount makes), and those pages are still its content. A
    /// handle open meanwhile changes nothing to that: its writes through
    /// the mount change the backing file's ctime (so the pages are dropped,
    /// which is only slower), and its reads change nothing. A file seen for
    /// the first time, or changed in any way beside the mount, is not.
    pub(super) fn unchanged_since_closed(&self, ino: u64, meta: &std::fs::Metadata) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.get(&ino) == Some(&Seen::of(meta))
    }

    /// Forgets what was seen of `ino` (the kernel dropped the inode, and
    /// its pages with it).
    pub(super) fn forget_seen(&self, ino: u64) {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ino);
    }

    /// Syncs and drops every state (unmount).
    pub(super) fn close_all(&self) {
        let all: Vec<Entry> = self.lock().drain().map(|(_, e)| e).collect();
        super::stats::no_handles();
        for e in all {
            if let Err(err) = e.file.sync(true) {
                log::warn!("{}: final sync failed: {err:?}", e.file.backing().display());
            }
        }
    }
}
