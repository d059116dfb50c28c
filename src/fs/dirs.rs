//! Open directories. Every opendir handle of one directory inode shares
//! one descriptor of the backing directory, opened when the first handle
//! opens, so that fstat of a handle and its listings still reach that very
//! directory after a rename moved or replaced it (its name then leads
//! elsewhere or nowhere). Listings are read from the directory itself, one
//! getdents64 at a time from the position the kernel asks for (the
//! directory's own positions are the offsets the kernel gets): no handle
//! holds a copy of a directory, so a handle costs a few dozen bytes however
//! large the directory, and a listing from offset 0 sees the directory as
//! it is now. Each handle is charged to its user's budget (budget.rs).

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{File, Metadata};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::attr::{Attr, Kind};
use super::budget::Charge;
use super::error::FsError;
use super::filesystem::{KmsFs, lock};
use super::node::{backing_key, stat_at};
use super::times;
use crate::envelope::names::{self, DirId, NameKey};
use crate::kms::Caller;
use crate::logtext::escaped;
use crate::os;

/// One entry of a directory listing.
#[derive(Debug, Clone)]
pub struct DirEntry {
    /// Name in the directory (`.` and `..` included), decrypted.
    pub name: OsString,
    /// Its name in the backing directory.
    pub backing: OsString,
    /// File type.
    pub kind: Kind,
    /// Backing inode number (reported by plain readdir).
    pub backing_ino: u64,
    /// The offset of the entry after it.
    pub next: u64,
}

impl DirEntry {
    /// True for `.` and `..`.
    pub fn is_dot(&self) -> bool {
        self.name == "." || self.name == ".."
    }
}

/// What a listing of a directory decrypts its names with.
#[derive(Debug)]
pub(super) struct DirNames {
    key: Arc<NameKey>,
    id: DirId,
    path: PathBuf,
}

/// What the first handle of a directory opens: its descriptor, and how to
/// decrypt its names.
pub(super) type Opened = (File, Option<DirNames>);

/// The descriptor every handle of one directory inode shares.
#[derive(Debug)]
pub(super) struct SharedDir {
    ino: u64,
    dir: File,
    /// The tree's name key and this directory's id (encrypted names), and
    /// the directory's backing path for the log.
    names: Option<DirNames>,
    /// One reader at a time: a read is a seek and a getdents64.
    reading: Mutex<()>,
}

impl SharedDir {
    /// The entries from `pos` on, from as many reads as it takes to find
    /// one (a read of only reserved names is passed over); empty at the end.
    fn batch_from(&self, mut pos: u64) -> Result<Vec<DirEntry>, FsError> {
        loop {
            let raw = {
                let _one = lock(&self.reading);
                os::dir::read_dir_at(&self.dir, pos)?
            };
            let Some(last) = raw.last().map(|e| e.next) else {
                return Ok(Vec::new());
            };
            let b = self.entries_of(raw);
            if !b.is_empty() {
                return Ok(b);
            }
            pos = last;
        }
    }

    /// The entries the mount shows of what getdents64 gave: kmsfs's
    /// reserved names in the root are left out, and each has its kind.
    fn entries_of(&self, raw: Vec<os::dir::RawEntry>) -> Vec<DirEntry> {
        let mut out = Vec::with_capacity(raw.len());
        for e in raw {
            if super::node::is_reserved(self.ino, &e.name) {
                continue;
            }
            let name = match &self.names {
                None => e.name.clone(),
                Some(_) if e.name == "." || e.name == ".." => e.name.clone(),
                Some(n) => {
                    if names::is_internal(&e.name) {
                        continue;
                    }
                    match n.key.decrypt_entry(&n.id, &e.name, |side| {
                        names::read_side_file(&self.dir, side)
                    }) {
                        Ok(plain) => plain,
                        Err(err) => {
                            // Hidden, never shown as some other name.
                            log::warn!(
                                "{}: entry hidden from the listing: {err}",
                                escaped(&n.path.join(&e.name))
                            );
                            continue;
                        }
                    }
                }
            };
            let kind = match Kind::from_dtype(e.d_type) {
                Some(k) => k,
                // The file system does not say: ask (gone meanwhile: skip).
                None => match stat_at(&self.dir, &e.name) {
                    Ok(m) => Kind::from_std(m.file_type()),
                    Err(_) => continue,
                },
            };
            out.push(DirEntry {
                name,
                backing: e.name,
                kind,
                backing_ino: e.ino,
                next: e.next,
            });
        }
        out
    }
}

/// A listing from one offset on: the entries of one read of the
/// directory, and further reads as the reply takes more. A read that fails
/// after the first ends the listing there (the kernel asks again from the
/// last offset it took).
#[derive(Debug)]
pub struct Listing {
    dir: Arc<SharedDir>,
    batch: std::vec::IntoIter<DirEntry>,
    next: u64,
    end: bool,
}

impl Iterator for Listing {
    type Item = DirEntry;

    fn next(&mut self) -> Option<DirEntry> {
        loop {
            if let Some(e) = self.batch.next() {
                self.next = e.next;
                return Some(e);
            }
            if self.end {
                return None;
            }
            match self.dir.batch_from(self.next) {
                Ok(b) if !b.is_empty() => self.batch = b.into_iter(),
                _ => self.end = true,
            }
        }
    }
}

/// One opendir handle.
#[derive(Debug)]
pub(super) struct DirHandle {
    dir: Arc<SharedDir>,
    /// Given back when the handle closes.
    _charge: Charge,
}

#[derive(Debug, Default)]
struct Tables {
    handles: HashMap<u64, DirHandle>,
    /// The shared descriptor of each directory inode with a handle open.
    by_ino: HashMap<u64, Weak<SharedDir>>,
}

/// Every open directory handle.
#[derive(Debug)]
pub(super) struct DirTable {
    tables: Mutex<Tables>,
    next: AtomicU64,
}

impl Default for DirTable {
    fn default() -> Self {
        Self {
            tables: Mutex::new(Tables::default()),
            next: AtomicU64::new(1),
        }
    }
}

impl DirTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        lock(&self.tables)
    }

    /// The shared descriptor of directory inode `ino` if a handle has one.
    fn shared(&self, ino: u64) -> Option<Arc<SharedDir>> {
        self.lock().by_ino.get(&ino).and_then(Weak::upgrade)
    }

    /// A new handle on directory inode `ino`: its shared descriptor if a
    /// handle has one, else `open()`'s, which becomes the shared one.
    pub(super) fn open(
        &self,
        ino: u64,
        charge: Charge,
        open: impl FnOnce() -> Result<Opened, FsError>,
    ) -> Result<u64, FsError> {
        let dir = match self.shared(ino) {
            Some(d) => d,
            None => {
                // Opened outside the table's lock; two first opens racing
                // both make one, and the later one is shared from then on.
                let (dir, names) = open()?;
                let d = Arc::new(SharedDir {
                    ino,
                    dir,
                    names,
                    reading: Mutex::new(()),
                });
                let mut t = self.lock();
                match t.by_ino.get(&ino).and_then(Weak::upgrade) {
                    Some(other) => other,
                    None => {
                        t.by_ino.insert(ino, Arc::downgrade(&d));
                        d
                    }
                }
            }
        };
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().handles.insert(
            fh,
            DirHandle {
                dir,
                _charge: charge,
            },
        );
        Ok(fh)
    }

    /// The shared directory of handle `fh` (EBADF when unknown).
    fn get(&self, fh: u64) -> Result<Arc<SharedDir>, FsError> {
        self.lock()
            .handles
            .get(&fh)
            .map(|h| h.dir.clone())
            .ok_or(FsError::NotOpen)
    }

    /// fstat of an open handle of directory `ino`, if there is one.
    pub(super) fn metadata(&self, ino: u64) -> Option<Result<Metadata, FsError>> {
        let d = self.shared(ino)?;
        Some(d.dir.metadata().map_err(FsError::from))
    }

    /// Closes handle `fh` (the shared descriptor goes with the last).
    pub(super) fn release(&self, fh: u64) {
        let mut t = self.lock();
        if let Some(h) = t.handles.remove(&fh) {
            let ino = h.dir.ino;
            drop(h);
            if t.by_ino.get(&ino).is_some_and(|w| w.strong_count() == 0) {
                t.by_ino.remove(&ino);
            }
        }
    }

    /// Closes every handle (unmount).
    pub(super) fn clear(&self) {
        let mut t = self.lock();
        t.handles.clear();
        t.by_ino.clear();
    }
}

impl KmsFs {
    /// Opens directory `ino` for readdir, charged to `caller`'s handle
    /// budget (EMFILE past it); returns its handle.
    pub fn opendir(&self, ino: u64, caller: &Caller) -> Result<u64, FsError> {
        let charge = self.budget.charge(caller.uid)?;
        // Checked beneath the root through no symlink to be `ino` (and
        // listed through the descriptor of what was checked): the handle is
        // of exactly that directory.
        let node = self.open_checked(ino, libc::O_PATH | libc::O_DIRECTORY)?;
        // The name key is checked at every opendir: a disabled CMK refuses
        // the next listing, as it refuses the next lookup.
        let names = match self.name_key()? {
            Some(key) => Some(DirNames {
                key,
                id: self.dir_id(&node)?,
                path: self.backing_path(&node.rel),
            }),
            None => None,
        };
        self.dirs.open(ino, charge, || {
            Ok((
                os::beneath::reopen(&node.file, libc::O_RDONLY | libc::O_DIRECTORY)?,
                names,
            ))
        })
    }

    /// The listing of directory handle `fh` from `offset` (0: the start, as
    /// the directory is now; else an offset an entry gave as its `next`).
    pub fn dir_entries(&self, fh: u64, offset: u64) -> Result<Listing, FsError> {
        let dir = self.dirs.get(fh)?;
        let first = dir.batch_from(offset)?;
        Ok(Listing {
            end: first.is_empty(),
            batch: first.into_iter(),
            next: offset,
            dir,
        })
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
        name: &std::ffi::OsStr,
        add: impl FnOnce(&Attr) -> bool,
    ) -> Result<bool, FsError> {
        let rel = dir_rel.join(name);
        let node = os::beneath::open_node(dir, name)?;
        let m = node.metadata()?;
        let mut t = lock(&self.inodes);
        let ino = t.resolve(&rel, backing_key(&m), m.is_dir());
        let attr = times::shown(self.attr(ino, &m), &node, &m);
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
    use crate::fs::budget::{Budget, HandleLimits};

    fn names(l: &mut dyn Iterator<Item = DirEntry>) -> Vec<String> {
        let mut v: Vec<String> = l
            .filter(|e| !e.is_dot())
            .map(|e| e.name.into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    fn listing(t: &DirTable, fh: u64, offset: u64) -> Listing {
        let dir = t.get(fh).unwrap();
        let first = dir.batch_from(offset).unwrap();
        Listing {
            end: first.is_empty(),
            batch: first.into_iter(),
            next: offset,
            dir,
        }
    }

    #[test]
    fn handles_share_one_descriptor_and_a_listing_sees_the_directory_now() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("d");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("a"), b"").unwrap();
        let budget = Budget::new(HandleLimits::unlimited());
        let t = DirTable::default();
        let mut opened = 0;
        let mut open = |t: &DirTable| {
            t.open(7, budget.charge(1000).unwrap(), || {
                opened += 1;
                Ok((File::open(&d)?, None))
            })
            .unwrap()
        };
        let fh = open(&t);
        let other = open(&t);
        assert_eq!(opened, 1, "the second handle shares the first's descriptor");
        assert_eq!(budget.held(1000), 2);
        assert_eq!(names(&mut listing(&t, fh, 0)), ["a"]);
        std::fs::write(d.join("b"), b"").unwrap();
        assert_eq!(names(&mut listing(&t, other, 0)), ["a", "b"]);
        // From the offset one entry gave: the entries after it.
        let all: Vec<DirEntry> = listing(&t, fh, 0).collect();
        let rest: Vec<DirEntry> = listing(&t, fh, all[0].next).collect();
        assert_eq!(rest.len(), all.len() - 1);
        assert_eq!(rest[0].name, all[1].name);
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
        assert_eq!(names(&mut listing(&t, fh, 0)), ["a", "b"]);
        assert!(t.metadata(8).is_none());
        t.release(other);
        assert!(t.metadata(7).is_some());
        t.release(fh);
        assert!(t.metadata(7).is_none());
        assert_eq!(budget.held(1000), 0);
        assert_eq!(t.get(fh).err().map(|e| e.errno()), Some(libc::EBADF));
    }
}
