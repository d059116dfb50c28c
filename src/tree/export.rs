//! export: the plaintext of a backing tree written to a new directory
//! without a mount (recovery, migration off kmsfs), keeping modes, times,
//! owners (as root), symbolic links and holes. A file that cannot be read
//! whole (corrupt header or blocks, key unusable) is reported and not
//! written at all: nothing in the destination is silently truncated.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::fsck::status_of;
use super::{FileStatus, Walk, open_backing, relative};
use crate::envelope::{EncryptedFile, EnvelopeError};
use crate::kms::{Caller, KeyService};

/// Plaintext is copied in pieces of this size.
const COPY_CHUNK: usize = 1 << 20;

/// A file or link that was not exported, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    /// Path relative to the backing directory.
    #[serde(rename = "Path")]
    pub path: PathBuf,
    /// Why.
    #[serde(flatten)]
    pub status: FileStatus,
}

/// What an export did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ExportReport {
    /// Regular files written.
    #[serde(rename = "Files")]
    pub files: u64,
    /// Their plaintext bytes.
    #[serde(rename = "Bytes")]
    pub bytes: u64,
    /// Directories made.
    #[serde(rename = "Directories")]
    pub dirs: u64,
    /// Symbolic links made.
    #[serde(rename = "Links")]
    pub links: u64,
    /// Files with a corrupt header or corrupt blocks: not written.
    #[serde(rename = "Corrupt")]
    pub corrupt: u64,
    /// Files whose key cannot unwrap their data key: not written.
    #[serde(rename = "Unreadable")]
    pub unreadable: u64,
    /// Entries that could not be read or written.
    #[serde(rename = "IoErrors")]
    pub io: u64,
    /// FIFOs, sockets and device nodes: not exported.
    #[serde(rename = "Special")]
    pub special: u64,
    /// Every entry not exported, with the reason.
    #[serde(rename = "Skipped")]
    pub skipped: Vec<Skipped>,
}

impl ExportReport {
    fn skip(&mut self, root: &Path, p: &Path, status: FileStatus) {
        match &status {
            FileStatus::CorruptHeader { .. } | FileStatus::CorruptBlocks { .. } => {
                self.corrupt += 1
            }
            FileStatus::KeyUnusable { .. } => self.unreadable += 1,
            FileStatus::Io { .. } | FileStatus::Ok | FileStatus::Empty => self.io += 1,
        }
        self.skipped.push(Skipped {
            path: relative(root, p),
            status,
        });
    }
}

fn io_status(e: io::Error) -> FileStatus {
    FileStatus::Io {
        message: e.to_string(),
    }
}

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
) -> ExportReport {
    let mut report = ExportReport::default();
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
    for l in &walk.links {
        let r = std::fs::read_link(l)
            .and_then(|to| std::os::unix::fs::symlink(to, target(l)))
            .and_then(|()| super::copy_meta(l, &target(l)));
        match r {
            Ok(()) => report.links += 1,
            Err(e) => report.skip(backing, l, io_status(e)),
        }
    }
    for s in &walk.special {
        report.special += 1;
        report.skipped.push(Skipped {
            path: relative(backing, s),
            status: FileStatus::Io {
                message: "a FIFO, socket or device node: not exported".into(),
            },
        });
    }
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
    // One flush (after the times, so they are durable too) for the whole tree rather than one per file.
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
    let len = file.metadata().map_err(io_status)?.len();
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
        super::copy_meta(from, to).map_err(io_status)?;
        Ok(n)
    });
    if r.is_err() {
        let _ = std::fs::remove_file(to);
    }
    r
}

/// Copies the plaintext of `ef` into `out`, leaving its holes as holes.
/// Any block that fails authentication fails the whole copy, with the
/// offsets of every bad block.
fn copy_plaintext(ef: &EncryptedFile, out: &File) -> Result<u64, FileStatus> {
    let size = ef.checked_plain_size().map_err(status_of)?;
    let bad = |e: EnvelopeError| match e {
        EnvelopeError::CorruptBlock { .. } => match ef.bad_blocks() {
            Ok(b) if !b.is_empty() => FileStatus::CorruptBlocks {
                offsets: b
                    .into_iter()
                    .map(|b| b * crate::format::BLOCK_SIZE)
                    .collect(),
            },
            _ => status_of(e),
        },
        e => status_of(e),
    };
    let mut buf = zeroize::Zeroizing::new(vec![0u8; COPY_CHUNK]);
    let mut pos = 0;
    while pos < size {
        let start = match ef.seek_data(pos) {
            Ok(d) => d,
            Err(EnvelopeError::Io(e)) if e.raw_os_error() == Some(libc::ENXIO) => break,
            Err(e) => return Err(bad(e)),
        };
        let end = ef.seek_hole(start).map_err(bad)?;
        let mut at = start;
        while at < end {
            let want = COPY_CHUNK.min((end - at) as usize);
            let n = ef.read_at(&mut buf[..want], at).map_err(bad)?;
            if n == 0 {
                return Err(FileStatus::CorruptBlocks { offsets: vec![at] });
            }
            out.write_all_at(&buf[..n], at).map_err(io_status)?;
            at += n as u64;
        }
        pos = end;
    }
    out.set_len(size).map_err(io_status)?;
    Ok(size)
}
