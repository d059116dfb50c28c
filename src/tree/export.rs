//! export: the plaintext of a backing tree written to a new directory
//! without a mount (recovery, migration off kmsfs), keeping modes, times,
//! owners (as root), symbolic links and holes. A file that cannot be read
//! whole (corrupt header or blocks, key unusable) is reported and not
//! written at all: nothing in the destination is silently truncated.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use super::copy::{CopyReport, Ranges, copy_ranges, io_status};
use super::fsck::status_of;
use super::{FileStatus, Walk, open_backing, relative};
use crate::envelope::{EncryptedFile, EnvelopeError};
use crate::format::BLOCK_SIZE;
use crate::kms::{Caller, KeyService};

/// Writes the plaintext of the tree `walk` found under `backing` into
/// `dest`, which must be an empty directory. `progress` is called after
/// each regular file.
pub fn export_tree(
    backing: &Path,
    walk: &Walk,
    dest: &Path,
    ks: &dyn KeyService,
    caller: &Caller,
    progress: &mut dyn FnMut(),
) -> CopyReport {
    let mut report = CopyReport::default();
    let target = |p: &Path| dest.join(relative(backing, p));
    for d in &walk.dirs {
        match std::fs::create_dir(target(d)) {
            Ok(()) => report.dirs += 1,
            Err(e) => report.skip(backing, d, io_status(e)),
        }
    }
    for f in &walk.files {
        match export_file(f, &target(f), ks, caller) {
            Ok(bytes) => {
                report.files += 1;
                report.bytes += bytes;
            }
            Err(status) => report.skip(backing, f, status),
        }
        progress();
    }
    report.copy_links_and_list_special(backing, walk, dest);
    // Directories last, deepest first: making their entries changed their times.
    for d in walk
        .dirs
        .iter()
        .rev()
        .chain(std::iter::once(&backing.to_path_buf()))
    {
        if let Err(e) = super::copy_meta(d, &target(d)) {
            report.skip(backing, d, io_status(e));
        }
    }
    // One flush (after the times, so they are durable too) for the whole tree.
    if let Err(e) = File::open(dest).and_then(|d| crate::os::space::syncfs(&d)) {
        report.skip(backing, backing, io_status(e));
    }
    report
}

/// Exports one file; on failure nothing is left at `to`.
fn export_file(
    from: &Path,
    to: &Path,
    ks: &dyn KeyService,
    caller: &Caller,
) -> Result<u64, FileStatus> {
    let file = open_backing(from, false).map_err(io_status)?;
    let md = file.metadata().map_err(io_status)?;
    let len = md.len();
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(to)
        .map_err(io_status)?;
    let r = if len == 0 {
        Ok(0)
    } else {
        EncryptedFile::open(file, ks, caller)
            .map_err(status_of)
            .and_then(|ef| copy_plaintext(&ef, &out))
    };
    let r = r.and_then(|n| {
        drop(out);
        super::copy_meta_of(&md, to).map_err(io_status)?;
        Ok(n)
    });
    if r.is_err() {
        let _ = std::fs::remove_file(to);
    }
    r
}

/// An encrypted file read for export: a block that fails authentication
/// fails the copy with the offsets of every bad block in the file.
struct Plaintext<'a>(&'a EncryptedFile);

impl Plaintext<'_> {
    fn finding(&self, e: EnvelopeError) -> FileStatus {
        match e {
            EnvelopeError::CorruptBlock { .. } => match self.0.bad_blocks() {
                Ok(b) if !b.is_empty() => FileStatus::CorruptBlocks {
                    offsets: b.into_iter().map(|b| b * BLOCK_SIZE).collect(),
                },
                _ => status_of(e),
            },
            e => status_of(e),
        }
    }
}

impl Ranges for Plaintext<'_> {
    fn next_data(&self, pos: u64) -> Result<Option<u64>, FileStatus> {
        match self.0.seek_data(pos) {
            Ok(d) => Ok(Some(d)),
            Err(EnvelopeError::Io(e)) if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
            Err(e) => Err(self.finding(e)),
        }
    }

    fn next_hole(&self, pos: u64) -> Result<u64, FileStatus> {
        self.0.seek_hole(pos).map_err(|e| self.finding(e))
    }

    fn read(&self, buf: &mut [u8], pos: u64) -> Result<usize, FileStatus> {
        self.0.read_at(buf, pos).map_err(|e| self.finding(e))
    }
}

/// Copies the plaintext of `ef` into `out`, leaving its holes as holes.
fn copy_plaintext(ef: &EncryptedFile, out: &File) -> Result<u64, FileStatus> {
    let size = ef.checked_plain_size().map_err(status_of)?;
    copy_ranges(size, &Plaintext(ef), &mut |data, at| {
        out.write_all_at(data, at).map_err(io_status)
    })?;
    out.set_len(size).map_err(io_status)?;
    Ok(size)
}
