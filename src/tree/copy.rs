//! What export and import share: the report of a tree copy, the copy of
//! symbolic links and of special files (listed, not copied), and the copy
//! of a file's data ranges that leaves holes as holes.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{FileStatus, Tree, Walk, apply_meta};
use crate::os::beneath::{open_node, symlinkat};
use crate::os::node::readlink_node;

/// Plaintext is copied in pieces of this size.
pub(super) const COPY_CHUNK: usize = 1 << 20;

/// An entry that was not copied, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    /// Path relative to the tree copied from.
    #[serde(rename = "Path")]
    pub path: PathBuf,
    /// Why.
    #[serde(flatten)]
    pub status: FileStatus,
}

/// What an export or an import did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct CopyReport {
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
    /// Files whose key refused (to unwrap, or to make a data key): not written.
    #[serde(rename = "Unreadable")]
    pub unreadable: u64,
    /// Entries left alone because the name exists at the destination.
    #[serde(rename = "Existing")]
    pub existing: u64,
    /// Entries that could not be read or written.
    #[serde(rename = "IoErrors")]
    pub io: u64,
    /// FIFOs, sockets and device nodes: not copied.
    #[serde(rename = "Special")]
    pub special: u64,
    /// Every entry not copied, with the reason.
    #[serde(rename = "Skipped")]
    pub skipped: Vec<Skipped>,
}

impl CopyReport {
    /// Counts and lists an entry (by its path in the tree copied from)
    /// that was not copied.
    pub(super) fn skip(&mut self, p: &Path, status: FileStatus) {
        match &status {
            FileStatus::CorruptHeader { .. } | FileStatus::CorruptBlocks { .. } => {
                self.corrupt += 1
            }
            FileStatus::KeyUnusable { .. } => self.unreadable += 1,
            FileStatus::Io { .. } | FileStatus::Ok | FileStatus::Empty => self.io += 1,
        }
        self.skipped.push(Skipped {
            path: p.to_path_buf(),
            status,
        });
    }

    /// Counts and lists an entry left alone because its name exists.
    pub(super) fn exists(&mut self, p: &Path) {
        self.existing += 1;
        self.skipped.push(Skipped {
            path: p.to_path_buf(),
            status: FileStatus::Io {
                message: "exists at the destination: left as it is".into(),
            },
        });
    }

    /// Copies the symbolic links of `walk` (of tree `from`) to the same
    /// places under `to`, never over an existing name; lists the special
    /// files, which are not copied.
    pub(super) fn copy_links_and_list_special(&mut self, from: &Tree, walk: &Walk, to: &Tree) {
        for l in &walk.links {
            match copy_link(from, l, to) {
                Ok(true) => self.links += 1,
                Ok(false) => self.exists(l),
                Err(e) => self.skip(l, io_status(e)),
            }
        }
        for s in &walk.special {
            self.special += 1;
            self.skipped.push(Skipped {
                path: s.clone(),
                status: FileStatus::Io {
                    message: "a FIFO, socket or device node: not copied".into(),
                },
            });
        }
    }
}

/// Copies the symbolic link `rel` of `from` to `rel` in `to`, with its
/// owner and times; Ok(false) when the name exists there.
fn copy_link(from: &Tree, rel: &Path, to: &Tree) -> io::Result<bool> {
    let node = from.node(rel)?;
    let md = node.metadata()?;
    if !md.file_type().is_symlink() {
        return Err(io::Error::other("no longer a symbolic link"));
    }
    let target = readlink_node(&node)?;
    let (dir, name) = to.parent(rel)?;
    match symlinkat(Path::new(OsStr::from_bytes(&target)), &dir, name) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
        r => r?,
    }
    // The link made here, still ours: in a directory another user can
    // write, the name may lead to something of theirs by now, which must
    // not be given this link's owner.
    let made = open_node(&dir, name)?;
    let m = made.metadata()?;
    if !m.file_type().is_symlink() || m.uid() != crate::os::ids::effective_uid() {
        return Err(io::Error::other(
            "replaced by someone else while it was copied: left as it is",
        ));
    }
    apply_meta(&md, &made)?;
    Ok(true)
}

/// An I/O error as a finding.
pub(super) fn io_status(e: io::Error) -> FileStatus {
    FileStatus::Io {
        message: e.to_string(),
    }
}

/// Where the data of a file is, and how to move it: the source's data
/// ranges, and a read and a write at an offset.
pub(super) trait Ranges {
    /// The start of the data at or after `pos`; None past the last data.
    fn next_data(&self, pos: u64) -> Result<Option<u64>, FileStatus>;
    /// The start of the hole at or after `pos` (the end of the file at most).
    fn next_hole(&self, pos: u64) -> Result<u64, FileStatus>;
    /// Reads at `pos` into `buf`; 0 at the end.
    fn read(&self, buf: &mut [u8], pos: u64) -> Result<usize, FileStatus>;
}

/// Writes a piece of a file at an offset.
pub(super) type WriteAt<'a> = dyn FnMut(&[u8], u64) -> Result<(), FileStatus> + 'a;

/// Copies the data ranges of a file of `size` bytes from `src` with
/// `write`, in pieces of at most `COPY_CHUNK`: holes are not written, so
/// they stay holes. Returns `size`.
pub(super) fn copy_ranges(
    size: u64,
    src: &dyn Ranges,
    write: &mut WriteAt<'_>,
) -> Result<u64, FileStatus> {
    let mut buf = zeroize::Zeroizing::new(vec![0u8; COPY_CHUNK]);
    let mut pos = 0;
    while pos < size {
        let Some(start) = src.next_data(pos)? else {
            break;
        };
        let end = src.next_hole(start)?.min(size);
        let mut at = start;
        while at < end {
            let want = COPY_CHUNK.min((end - at) as usize);
            let n = src.read(&mut buf[..want], at)?;
            if n == 0 {
                return Err(FileStatus::Io {
                    message: format!("the file ended at {at} of {size} bytes while copied"),
                });
            }
            write(&buf[..n], at)?;
            at += n as u64;
        }
        pos = end.max(pos + 1);
    }
    Ok(size)
}
