//! Open directories: each opendir handle keeps the backing directory's
//! descriptor, so that fstat of the handle and its listings still reach that
//! very directory after a rename moved it or replaced it (its name then
//! leads elsewhere or nowhere), and the snapshot its readdir serves from,
//! taken afresh whenever a listing starts at offset 0 (the first readdir,
//! rewinddir, seekdir to the start), so names made since opendir show;
//! and the filesystem's directory operations over them.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::attr::{Attr, Kind, attr_of};
use super::error::FsError;
use super::filesystem::{KmsFs, lock};
use super::node::{backing_key, stat_at};
use crate::os;

/// One entry of a directory snapshot.
#[derive(Debug, Clone)]
pub struct DirEntry {
    /// Name in the directory.
    pub name: OsString,
    /// File type.
    pub kind: Kind,
    /// Backing inode number (reported by plain readdir).
    pub backing_ino: u64,
}

/// One opendir handle.
#[derive(Debug)]
pub(super) struct DirHandle {
    ino: u64,
    dir: File,
    /// The listing under way; None until the first readdir.
    entries: Mutex<Option<Arc<Vec<DirEntry>>>>,
}

impl DirHandle {
    /// The entries a readdir at `offset` serves from: listed afresh at 0,
    /// else the snapshot of the listing under way. A handle's first readdir
    /// may come at an offset other than 0: the kernel caches listings
    /// (FOPEN_CACHE_DIR) and hands a reader over to the daemon where its
    /// cache ends, at the offset that another handle's listing gave; the
    /// handle then lists the directory, in the same order as that listing
    /// when the directory has not changed since.
    pub(super) fn entries(&self, offset: u64) -> Result<Arc<Vec<DirEntry>>, FsError> {
        let mut snapshot = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match &*snapshot {
            Some(s) if offset != 0 => Ok(s.clone()),
            _ => {
                let mut all = list(&self.dir)?;
                all.retain(|e| !super::node::is_reserved(self.ino, &e.name));
                let all = Arc::new(all);
                *snapshot = Some(all.clone());
                Ok(all)
            }
        }
    }
}

/// Lists directory `dir` (through /proc, so exactly that directory, wherever
/// its name went).
fn list(dir: &File) -> Result<Vec<DirEntry>, FsError> {
    let mut entries = Vec::new();
    for e in std::fs::read_dir(os::proc_fd_path(dir))? {
        let e = e?;
        let Ok(ft) = e.file_type() else { continue };
        let name: OsString = e.file_name();
        entries.push(DirEntry {
            name,
            kind: Kind::from_std(ft),
            backing_ino: std::os::unix::fs::DirEntryExt::ino(&e),
        });
    }
    Ok(entries)
}

/// Every open directory handle.
#[derive(Debug)]
pub(super) struct DirTable {
    map: Mutex<HashMap<u64, Arc<DirHandle>>>,
    next: AtomicU64,
}

impl Default for DirTable {
    fn default() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        }
    }
}

impl DirTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<DirHandle>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new handle on directory `dir`, FUSE inode `ino`.
    pub(super) fn open(&self, ino: u64, dir: File) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        let h = DirHandle {
            ino,
            dir,
            entries: Mutex::new(None),
        };
        self.lock().insert(fh, Arc::new(h));
        fh
    }

    /// Handle `fh` (EBADF when unknown).
    pub(super) fn get(&self, fh: u64) -> Result<Arc<DirHandle>, FsError> {
        self.lock().get(&fh).cloned().ok_or(FsError::NotOpen)
    }

    /// fstat of some open handle of directory `ino`, if there is one.
    pub(super) fn metadata(&self, ino: u64) -> Option<Result<Metadata, FsError>> {
        let h = self.lock().values().find(|h| h.ino == ino).cloned()?;
        Some(h.dir.metadata().map_err(FsError::from))
    }

    /// Closes handle `fh`.
    pub(super) fn release(&self, fh: u64) {
        self.lock().remove(&fh);
    }

    /// Closes every handle (unmount).
    pub(super) fn clear(&self) {
        self.lock().clear();
    }
}

impl KmsFs {
    /// Opens directory `ino` for readdir; returns its handle.
    pub fn opendir(&self, ino: u64) -> Result<u64, FsError> {
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
    pub fn dir_entries(&self, fh: u64, offset: u64) -> Result<Arc<Vec<DirEntry>>, FsError> {
        self.dirs.get(fh)?.entries(offset)
    }

    /// Closes a directory handle.
    pub fn releasedir(&self, fh: u64) {
        self.dirs.release(fh);
    }

    /// fsync of directory `ino`.
    pub fn fsyncdir(&self, ino: u64) -> Result<(), FsError> {
        let d = self.open_checked(ino, libc::O_RDONLY | libc::O_DIRECTORY)?;
        Ok(d.file.sync_all()?)
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
        add: impl FnOnce(&Attr) -> bool,
    ) -> Result<bool, FsError> {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_from_offset_zero_sees_new_names_and_the_handle_outlives_the_name() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("d");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("a"), b"").unwrap();
        let t = DirTable::default();
        let fh = t.open(7, File::open(&d).unwrap());
        let h = t.get(fh).unwrap();
        assert_eq!(h.entries(0).unwrap().len(), 1);
        std::fs::write(d.join("b"), b"").unwrap();
        // A listing under way keeps its snapshot; one from the start does not.
        assert_eq!(h.entries(1).unwrap().len(), 1);
        assert_eq!(h.entries(0).unwrap().len(), 2);
        // Renamed away and replaced: the handle still reaches its directory.
        std::fs::rename(&d, tmp.path().join("moved")).unwrap();
        std::fs::create_dir(&d).unwrap();
        let m = t.metadata(7).unwrap().unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&m),
            std::os::unix::fs::MetadataExt::ino(
                &std::fs::metadata(tmp.path().join("moved")).unwrap()
            )
        );
        assert_eq!(h.entries(0).unwrap().len(), 2);
        assert!(t.metadata(8).is_none());
        // A handle whose first readdir comes past the start (the kernel's
        // cached listing ended there) lists the directory.
        let fresh = t.open(7, File::open(tmp.path().join("moved")).unwrap());
        assert_eq!(t.get(fresh).unwrap().entries(1).unwrap().len(), 2);
        t.release(fresh);
        t.release(fh);
        assert!(t.metadata(7).is_none());
        assert_eq!(t.get(fh).err().map(|e| e.errno()), Some(libc::EBADF));
    }
}
