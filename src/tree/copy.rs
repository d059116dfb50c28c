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
use crate::envelope::names::{self, BackingName};
use crate::os::beneath::{open_node, symlinkat};
use crate::os::node::readlink_node;

/// Where an entry of the tree copied from goes in the tree copied to.
#[derive(Debug)]
pub(super) struct Dest {
    /// Its path there, relative to that tree's root.
    pub(super) rel: PathBuf,
    /// A long encrypted name: what its side file holds.
    pub(super) long: Option<BackingName>,
}

/// How names and symbolic link targets change between the two trees of a
/// copy: not at all (plain names on both sides), decrypted (an export of a
/// tree with encrypted names) or encrypted (an import into one).
pub(super) trait Names {
    /// Where the entry `rel` of the tree copied from goes.
    fn dest(&self, rel: &Path) -> Result<Dest, FileStatus>;
    /// The target of the symbolic link `rel` (of the tree copied from) as
    /// the destination stores it.
    fn target(&self, rel: &Path, stored: Vec<u8>) -> Result<Vec<u8>, FileStatus>;
    /// `rel` as a report shows it (its plaintext path where known).
    fn shown(&self, rel: &Path) -> PathBuf {
        rel.to_path_buf()
    }
}

/// Plain names on both sides.
pub(super) struct SameNames;

impl Names for SameNames {
    fn dest(&self, rel: &Path) -> Result<Dest, FileStatus> {
        Ok(Dest {
            rel: rel.to_path_buf(),
            long: None,
        })
    }

    fn target(&self, _: &Path, stored: Vec<u8>) -> Result<Vec<u8>, FileStatus> {
        Ok(stored)
    }
}

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
    /// Directories' own keys carried: written on exported directories, or
    /// set by an import (docs/TREE.md, "Keys per directory").
    #[serde(rename = "DirectoryKeys")]
    pub dir_keys: u64,
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
            FileStatus::CorruptHeader { .. }
            | FileStatus::CorruptBlocks { .. }
            | FileStatus::CorruptName { .. } => self.corrupt += 1,
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
    pub(super) fn copy_links_and_list_special(
        &mut self,
        from: &Tree,
        walk: &Walk,
        to: &Tree,
        names: &dyn Names,
    ) {
        for l in &walk.links {
            match copy_link(from, l, to, names) {
                Ok(true) => self.links += 1,
                Ok(false) => self.exists(&names.shown(l)),
                Err(s) => self.skip(&names.shown(l), s),
            }
        }
        for s in &walk.special {
            self.special += 1;
            self.skipped.push(Skipped {
                path: names.shown(s),
                status: FileStatus::Io {
                    message: "a FIFO, socket or device node: not copied".into(),
                },
            });
        }
    }
}

/// Copies the symbolic link `rel` of `from` to where `names` puts it in
/// `to` (its target as `names` stores it there), with its owner and times;
/// Ok(false) when the name exists there.
fn copy_link(from: &Tree, rel: &Path, to: &Tree, names: &dyn Names) -> Result<bool, FileStatus> {
    let node = from.node(rel).map_err(io_status)?;
    let md = node.metadata().map_err(io_status)?;
    if !md.file_type().is_symlink() {
        return Err(io_status(io::Error::other("no longer a symbolic link")));
    }
    let target = names.target(rel, readlink_node(&node).map_err(io_status)?)?;
    let dest = names.dest(rel)?;
    let (dir, name) = to.parent(&dest.rel).map_err(io_status)?;
    if let Some(long) = &dest.long {
        names::ensure_side_file(&dir, long).map_err(io_status)?;
    }
    match symlinkat(Path::new(OsStr::from_bytes(&target)), &dir, name) {
        // A long name's side file stays: it is the existing entry's too.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
        r => r.map_err(io_status)?,
    }
    finish_link(&md, &dir, name).map_err(io_status)
}

/// Gives the link `name` just made in `dir` the owner and times of `md`,
/// while it is still the link made.
fn finish_link(md: &std::fs::Metadata, dir: &std::fs::File, name: &OsStr) -> io::Result<bool> {
    // The link made here, still ours: in a directory another user can
    // write, the name may lead to something of theirs by now, which must
    // not be given this link's owner.
    let made = open_node(dir, name)?;
    let m = made.metadata()?;
    if !m.file_type().is_symlink() || m.uid() != crate::os::ids::effective_uid() {
        return Err(io::Error::other(
            "replaced by someone else while it was copied: left as it is",
        ));
    }
    apply_meta(md, &made)?;
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
