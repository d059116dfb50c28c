//! import: a plain tree encrypted into a backing directory without a mount
//! (the fast way to adopt kmsfs for existing data), keeping modes, times,
//! owners (as root), symbolic links and holes. Nothing already in the
//! backing directory is replaced.
//!
//! Crash safety: each file is written under a temporary name beside its
//! destination (`.NAME.kmsfs-import`); after every batch one `syncfs` makes
//! the batch durable and only then are the files linked under their names.
//! A crash leaves at most temporary files, which a rerun removes, and files
//! that are complete; a rerun skips what exists.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::copy::{CopyReport, Ranges, copy_ranges, io_status};
use super::fsck::status_of;
use super::{FileStatus, Tree, Walk, apply_meta};
use crate::envelope::EncryptedFile;
use crate::format::Layout;
use crate::kms::{KeyService, RequestContext};
use crate::os::at::{linkat, open_strictly_beneath};
use crate::os::beneath::{mkdirat, open_node, unlinkat};

/// A durable batch ends after this many files or bytes, whichever comes
/// first. Each batch costs one syncfs, which flushes the whole file system
/// (other writers' data too), so batches are large: a crash costs at most
/// this much work, left behind as temporary files that a rerun replaces.
const BATCH_FILES: usize = 1024;
/// See `BATCH_FILES`.
const BATCH_BYTES: u64 = 256 << 20;
/// The suffix of a file being imported.
const TMP_SUFFIX: &str = ".kmsfs-import";

/// The temporary name a file is written under before it is linked as `name`.
fn tmp_name(name: &OsStr) -> OsString {
    let mut t = OsString::from(".");
    t.push(name);
    t.push(TMP_SUFFIX);
    t
}

/// A file written under its temporary name, waiting for its batch's syncfs.
struct Written<'a> {
    /// Its path in both trees.
    rel: &'a PathBuf,
    /// The inode written (device, inode number): what its name must lead to.
    id: (u64, u64),
    /// Plaintext bytes.
    bytes: u64,
}

/// What the files an import makes are: under which CMK, in which layout
/// (the backing directory's).
#[derive(Debug, Clone, Copy)]
pub struct NewFiles<'a> {
    /// The CMK that wraps their data keys.
    pub key_id: &'a str,
    /// The layout of the backing directory's files.
    pub layout: Layout,
}

/// Encrypts the tree `walk` found in `src` into `backing`, new files as
/// `new` says. `progress` is called after each regular file.
pub fn import_tree(
    src: &Tree,
    walk: &Walk,
    backing: &Tree,
    ks: &dyn KeyService,
    rc: &RequestContext<'_>,
    new: NewFiles<'_>,
    progress: &mut dyn FnMut(),
) -> CopyReport {
    let NewFiles { key_id, layout } = new;
    let mut report = CopyReport::default();
    // Directories made here, with the inode made: each is 0700 and this
    // process's until the end, when it gets its source's owner, mode and
    // times (only if its name still leads to the directory made).
    let mut made_dirs = Vec::new();
    for d in &walk.dirs {
        match make_dir(backing, d) {
            Ok(Some(id)) => {
                report.dirs += 1;
                made_dirs.push((d, id));
            }
            Ok(None) => {}
            Err(e) => report.skip(d, io_status(e)),
        }
    }
    let mut batch: Vec<Written> = Vec::new();
    for f in &walk.files {
        match import_file(src, f, backing, ks, rc, key_id, layout) {
            Ok(Some(w)) => batch.push(w),
            Ok(None) => report.exists(f),
            Err(s) => report.skip(f, s),
        }
        if batch.len() >= BATCH_FILES || batch.iter().map(|b| b.bytes).sum::<u64>() >= BATCH_BYTES {
            commit(backing, &mut batch, &mut report);
        }
        progress();
    }
    commit(backing, &mut batch, &mut report);
    report.copy_links_and_list_special(src, walk, backing);
    // Directories made here get their owners, modes and times last,
    // deepest first.
    for (d, id) in made_dirs.iter().rev() {
        let r = src.node(d).and_then(|n| n.metadata()).and_then(|md| {
            let dir = backing.dir(d)?;
            if same(&dir.metadata()?, *id) {
                apply_meta(&md, &dir)
            } else {
                Err(replaced())
            }
        });
        if let Err(e) = r {
            report.skip(d, io_status(e));
        }
    }
    if let Err(e) = crate::os::space::syncfs(backing.root()) {
        report.skip(Path::new(""), io_status(e));
    }
    report
}

/// The (device, inode) of an fstat.
fn id_of(md: &std::fs::Metadata) -> (u64, u64) {
    (md.dev(), md.ino())
}

fn same(md: &std::fs::Metadata, id: (u64, u64)) -> bool {
    id_of(md) == id
}

fn replaced() -> io::Error {
    io::Error::other("replaced by someone else while it was imported: left as it is")
}

/// Makes directory `rel` in `backing`, 0700 (Ok(None): it exists already
/// as a directory). Returns the inode made.
fn make_dir(backing: &Tree, rel: &Path) -> io::Result<Option<(u64, u64)>> {
    let (parent, name) = backing.parent(rel)?;
    match mkdirat(&parent, name, 0o700) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return match open_node(&parent, name)?.metadata()?.is_dir() {
                true => Ok(None),
                false => Err(e),
            };
        }
        Err(e) => return Err(e),
    }
    let md = open_node(&parent, name)?.metadata()?;
    if !md.is_dir() || md.uid() != crate::os::ids::effective_uid() {
        return Err(replaced());
    }
    Ok(Some(id_of(&md)))
}

/// Makes a batch of written files durable, then links each under its name
/// (never over an existing one) and removes its temporary name.
fn commit(backing: &Tree, batch: &mut Vec<Written>, report: &mut CopyReport) {
    if batch.is_empty() {
        return;
    }
    if let Err(e) = crate::os::space::syncfs(backing.root()) {
        for w in batch.drain(..) {
            if let Ok((dir, name)) = backing.parent(w.rel) {
                let _ = unlinkat(&dir, &tmp_name(name), false);
            }
            report.skip(w.rel, io_status(io::Error::new(e.kind(), e.to_string())));
        }
        return;
    }
    for w in batch.drain(..) {
        let (dir, name) = match backing.parent(w.rel) {
            Ok(x) => x,
            Err(e) => {
                report.skip(w.rel, io_status(e));
                continue;
            }
        };
        let tmp = tmp_name(name);
        match linkat(&dir, &tmp, &dir, name) {
            Ok(()) => match open_node(&dir, name).and_then(|n| n.metadata()) {
                Ok(md) if same(&md, w.id) => {
                    report.files += 1;
                    report.bytes += w.bytes;
                }
                Ok(_) => report.skip(w.rel, io_status(replaced())),
                Err(e) => report.skip(w.rel, io_status(e)),
            },
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => report.exists(w.rel),
            Err(e) => report.skip(w.rel, io_status(e)),
        }
        let _ = unlinkat(&dir, &tmp, false);
    }
}

/// Encrypts `rel` of `src` into a new backing file under its temporary
/// name beside `rel` in `backing` (a leftover of an interrupted run is
/// replaced); Ok(None) when `rel` exists in `backing`. On failure nothing
/// is left under the temporary name.
fn import_file<'a>(
    src: &Tree,
    rel: &'a PathBuf,
    backing: &Tree,
    ks: &dyn KeyService,
    rc: &RequestContext<'_>,
    key_id: &str,
    layout: Layout,
) -> Result<Option<Written<'a>>, FileStatus> {
    let (dir, name) = backing.parent(rel).map_err(io_status)?;
    match open_node(&dir, name) {
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_status(e)),
    }
    let input = src.open_file(rel, false).map_err(io_status)?;
    let md = input.metadata().map_err(io_status)?;
    let tmp = tmp_name(name);
    match unlinkat(&dir, &tmp, false) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_status(e)),
        _ => {}
    }
    let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL;
    let out = open_strictly_beneath(&dir, Path::new(&tmp), flags, 0o600).map_err(io_status)?;
    let id = out.metadata().map(|m| id_of(&m)).map_err(io_status)?;
    let r = EncryptedFile::create(out, ks, rc, key_id, layout)
        .map_err(status_of)
        .and_then(|ef| {
            let n = copy_in(&input, md.len(), &ef)?;
            apply_meta(&md, ef.file()).map_err(io_status)?;
            Ok(n)
        });
    match r {
        Ok(bytes) => Ok(Some(Written { rel, id, bytes })),
        Err(s) => {
            let _ = unlinkat(&dir, &tmp, false);
            Err(s)
        }
    }
}

/// A plain file read for import.
struct Plain<'a>(&'a File);

impl Ranges for Plain<'_> {
    fn next_data(&self, pos: u64) -> Result<Option<u64>, FileStatus> {
        match crate::os::space::lseek(self.0, pos, libc::SEEK_DATA) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
            Err(e) => Err(io_status(e)),
        }
    }

    fn next_hole(&self, pos: u64) -> Result<u64, FileStatus> {
        crate::os::space::lseek(self.0, pos, libc::SEEK_HOLE).map_err(io_status)
    }

    fn read(&self, buf: &mut [u8], pos: u64) -> Result<usize, FileStatus> {
        self.0.read_at(buf, pos).map_err(io_status)
    }
}

/// Encrypts the data ranges of `input` (`size` bytes) into `ef`; holes stay holes.
fn copy_in(input: &File, size: u64, ef: &EncryptedFile) -> Result<u64, FileStatus> {
    copy_ranges(size, &Plain(input), &mut |data, at| {
        ef.write_at(data, at).map_err(status_of)
    })?;
    ef.set_len(size).map_err(status_of)?;
    Ok(size)
}
