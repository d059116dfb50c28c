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

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::copy::{CopyReport, Ranges, copy_ranges, io_status};
use super::fsck::status_of;
use super::{FileStatus, Walk, relative};
use crate::envelope::EncryptedFile;
use crate::kms::{Caller, KeyService};

/// A durable batch ends after this many files or bytes, whichever comes
/// first. Each batch costs one syncfs, which flushes the whole file system
/// (other writers' data too), so batches are large: a crash costs at most
/// this much work, left behind as temporary files that a rerun replaces.
const BATCH_FILES: usize = 1024;
/// See `BATCH_FILES`.
const BATCH_BYTES: u64 = 256 << 20;
/// The suffix of a file being imported.
const TMP_SUFFIX: &str = ".kmsfs-import";

/// The temporary name a file is written under before it is linked as `to`.
fn tmp_name(to: &Path) -> PathBuf {
    let mut name = OsString::from(".");
    name.push(to.file_name().unwrap_or_default());
    name.push(TMP_SUFFIX);
    to.with_file_name(name)
}

/// Encrypts the tree `walk` found under `src` into `backing`, new files
/// under `key_id`. `progress` is called after each regular file.
pub fn import_tree(
    src: &Path,
    walk: &Walk,
    backing: &Path,
    ks: &dyn KeyService,
    caller: &Caller,
    key_id: &str,
    progress: &mut dyn FnMut(),
) -> CopyReport {
    let mut report = CopyReport::default();
    let target = |p: &Path| backing.join(relative(src, p));
    let mut made_dirs = Vec::new();
    for d in &walk.dirs {
        let t = target(d);
        match std::fs::create_dir(&t) {
            Ok(()) => {
                report.dirs += 1;
                made_dirs.push(d);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && t.is_dir() => {}
            Err(e) => report.skip(src, d, io_status(e)),
        }
    }
    let mut batch: Vec<(&PathBuf, PathBuf, u64)> = Vec::new();
    for f in &walk.files {
        let to = target(f);
        if to.symlink_metadata().is_ok() {
            report.exists(src, f);
        } else {
            match import_file(f, &tmp_name(&to), ks, caller, key_id) {
                Ok(n) => batch.push((f, to, n)),
                Err(s) => report.skip(src, f, s),
            }
        }
        if batch.len() >= BATCH_FILES || batch.iter().map(|b| b.2).sum::<u64>() >= BATCH_BYTES {
            commit(src, backing, &mut batch, &mut report);
        }
        progress();
    }
    commit(src, backing, &mut batch, &mut report);
    report.copy_links_and_list_special(src, walk, backing);
    // Directories made here get their times last, deepest first.
    for d in made_dirs.iter().rev() {
        if let Err(e) = super::copy_meta(d, &target(d)) {
            report.skip(src, d, io_status(e));
        }
    }
    if let Err(e) = File::open(backing).and_then(|d| crate::os::space::syncfs(&d)) {
        report.skip(src, src, io_status(e));
    }
    report
}

/// Makes a batch of written files durable, then links each under its name
/// (never over an existing one) and removes its temporary name.
fn commit(
    src: &Path,
    backing: &Path,
    batch: &mut Vec<(&PathBuf, PathBuf, u64)>,
    report: &mut CopyReport,
) {
    if batch.is_empty() {
        return;
    }
    if let Err(e) = File::open(backing).and_then(|d| crate::os::space::syncfs(&d)) {
        for (f, to, _) in batch.drain(..) {
            let _ = std::fs::remove_file(tmp_name(&to));
            report.skip(src, f, io_status(io::Error::new(e.kind(), e.to_string())));
        }
        return;
    }
    for (f, to, n) in batch.drain(..) {
        let tmp = tmp_name(&to);
        match std::fs::hard_link(&tmp, &to) {
            Ok(()) => {
                report.files += 1;
                report.bytes += n;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => report.exists(src, f),
            Err(e) => report.skip(src, f, io_status(e)),
        }
        let _ = std::fs::remove_file(&tmp);
    }
}

/// Encrypts `from` into a new backing file at `tmp` (a leftover of an
/// interrupted run is replaced). On failure nothing is left at `tmp`.
fn import_file(
    from: &Path,
    tmp: &Path,
    ks: &dyn KeyService,
    caller: &Caller,
    key_id: &str,
) -> Result<u64, FileStatus> {
    let input = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(from)
        .map_err(io_status)?;
    let md = input.metadata().map_err(io_status)?;
    if !md.is_file() {
        return Err(io_status(io::Error::from_raw_os_error(libc::EINVAL)));
    }
    match std::fs::remove_file(tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_status(e)),
        _ => {}
    }
    let out = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(tmp)
        .map_err(io_status)?;
    let r = EncryptedFile::create(out, ks, caller, key_id)
        .map_err(status_of)
        .and_then(|ef| copy_in(&input, md.len(), &ef))
        .and_then(|n| super::copy_meta_of(&md, tmp).map_err(io_status).map(|()| n));
    if r.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    r
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
