//! export: the plaintext of a backing tree written to a new directory
//! without a mount (recovery, migration off kmsfs), keeping modes, times,
//! owners (as root), symbolic links and holes. A file that cannot be read
//! whole (corrupt header or blocks, key unusable) is reported and not
//! written at all: nothing in the destination is silently truncated.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::copy::{CopyReport, Names, Ranges, SameNames, copy_ranges, io_status};
use super::copy_names::Decrypted;
use super::dirkeys::{RecordKey, checked_record, write_asked};
use super::fsck::status_of;
use super::{FileStatus, Tree, Walk, apply_meta};
use crate::envelope::names::NameKey;
use crate::envelope::{EncryptedFile, EnvelopeError};
use crate::format::BLOCK_SIZE;
use crate::kms::{KeyService, RequestContext};
use crate::os::at::{list_dir, open_strictly_beneath};
use crate::os::beneath::{mkdirat, unlinkat};
use crate::os::node::{chmod_node, chown_node};
use crate::os::xattr::removexattr_node;

/// Opens the export destination `dest` (made 0700 if missing; else it
/// must be empty) as a [`Tree`] and makes it this process's own, 0700 and
/// without ACLs, before anything is written into it: whoever made it (a
/// user who can write its parent, say) sees nothing of the export until
/// it is complete. An existing non-empty directory is ENOTEMPTY.
pub fn open_dest(dest: &Path) -> io::Result<Tree> {
    use std::os::unix::fs::DirBuilderExt;
    // The destination a user named on the command line.
    #[allow(clippy::disallowed_methods)]
    match std::fs::DirBuilder::new().mode(0o700).create(dest) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    let tree = Tree::open(dest)?;
    let root = tree.root();
    let md = root.metadata()?;
    if crate::os::ids::is_root() {
        let (uid, gid) = (0, crate::os::ids::effective_gid());
        if (md.uid(), md.gid()) != (uid, gid) {
            chown_node(root, Some(uid), Some(gid))?;
        }
    }
    chmod_node(root, 0o700)?;
    // A default ACL would be inherited by everything made below; an
    // access ACL would let its users in whatever the mode.
    for acl in ["system.posix_acl_default", "system.posix_acl_access"] {
        match removexattr_node(root, OsStr::new(acl)) {
            Err(e)
                if e.raw_os_error() != Some(libc::ENODATA)
                    && e.raw_os_error() != Some(libc::EOPNOTSUPP) =>
            {
                return Err(e);
            }
            _ => {}
        }
    }
    if !list_dir(root)?.is_empty() {
        return Err(io::Error::from_raw_os_error(libc::ENOTEMPTY));
    }
    Ok(tree)
}

/// The keys a tree copy needs beyond files' data keys: the tree's name key
/// (encrypted names) and its directory-key MAC key (directories with a key
/// of their own), unwrapped by the caller through the key service.
#[derive(Debug, Default)]
pub struct TreeKeys {
    /// The name key: names are encrypted (None: plain names).
    pub names: Option<NameKey>,
    /// The MAC key of directories' key records (None: none opened).
    pub records: Option<RecordKey>,
    /// Import: the local keystore's directory, whose list of the tree's
    /// directory keys gets each record the import writes (as `set-key`
    /// through a mount lists it); None for a remote KMS.
    pub dir_key_list: Option<PathBuf>,
}

/// Writes the plaintext of the tree `walk` found in `backing` into `dest`
/// (from [`open_dest`]), names and symbolic link targets opened with the
/// name key of `keys`, each directory's own key (its record checked with
/// the MAC key of `keys`) written as the xattr `user.kmsfs.key-id` of the
/// exported directory. Every directory is made 0700 and keeps that mode
/// until every file, link and directory is written; then the directories
/// get their own owners, modes and times, deepest first, `dest` last.
/// `progress` is called after each regular file.
pub fn export_tree(
    backing: &Tree,
    walk: &Walk,
    dest: &Tree,
    ks: &dyn KeyService,
    rc: &RequestContext<'_>,
    keys: TreeKeys,
    progress: &mut dyn FnMut(),
) -> CopyReport {
    let TreeKeys { names, records, .. } = keys;
    let names: Box<dyn Names> = match names {
        Some(key) => Box::new(Decrypted::new(backing, walk, key)),
        None => Box::new(SameNames),
    };
    let mut report = CopyReport::default();
    let mut made = Vec::new();
    let root = (PathBuf::new(), PathBuf::new());
    for d in &walk.dirs {
        let r = names.dest(d).and_then(|to| {
            dest.parent(&to.rel)
                .and_then(|(dir, name)| mkdirat(&dir, name, 0o700))
                .map_err(io_status)
                .map(|()| to.rel)
        });
        match r {
            Ok(to) => {
                report.dirs += 1;
                made.push((d.clone(), to));
            }
            Err(s) => report.skip(&names.shown(d), s),
        }
    }
    for (from, to) in std::iter::once(&root).chain(&made) {
        let r = match checked_record(backing, from, records.as_ref()) {
            Ok(None) => continue,
            Ok(Some(k)) => dest
                .dir(to)
                .and_then(|d| write_asked(&d, &k))
                .map_err(io_status),
            Err(why) => Err(FileStatus::CorruptName {
                reason: format!("directory key record refused: {why}"),
            }),
        };
        match r {
            Ok(()) => report.dir_keys += 1,
            Err(s) => report.skip(&names.shown(from), s),
        }
    }
    for f in &walk.files {
        match names
            .dest(f)
            .and_then(|to| export_file(backing, f, dest, &to.rel, ks, rc))
        {
            Ok(bytes) => {
                report.files += 1;
                report.bytes += bytes;
            }
            Err(status) => report.skip(&names.shown(f), status),
        }
        progress();
    }
    report.copy_links_and_list_special(backing, walk, dest, &*names);
    // Directories last, deepest first, the destination itself at the very
    // end: until then each is 0700 and this process's, so nothing written
    // is reachable by anyone else before the whole tree is.
    for (from, to) in made.iter().rev().chain(std::iter::once(&root)) {
        let r = backing
            .dir(from)
            .and_then(|f| f.metadata())
            .and_then(|md| apply_meta(&md, &dest.dir(to)?));
        if let Err(e) = r {
            report.skip(&names.shown(from), io_status(e));
        }
    }
    // One flush (after the times, so they are durable too) for the whole tree.
    if let Err(e) = crate::os::space::syncfs(dest.root()) {
        report.skip(Path::new(""), io_status(e));
    }
    report
}

/// Exports the file `rel` of `backing` as `to` in `dest`; on failure
/// nothing is left in `dest`.
fn export_file(
    backing: &Tree,
    rel: &Path,
    dest: &Tree,
    to: &Path,
    ks: &dyn KeyService,
    rc: &RequestContext<'_>,
) -> Result<u64, FileStatus> {
    let file = backing.open_file(rel, false).map_err(io_status)?;
    let md = file.metadata().map_err(io_status)?;
    let len = md.len();
    let (dir, name) = dest.parent(to).map_err(io_status)?;
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
    let out = open_strictly_beneath(&dir, Path::new(name), flags, 0o600).map_err(io_status)?;
    let r = if len == 0 {
        Ok(0)
    } else {
        EncryptedFile::open(file, ks, rc)
            .map_err(status_of)
            .and_then(|ef| copy_plaintext(&ef, &out))
    };
    let r = r.and_then(|n| apply_meta(&md, &out).map_err(io_status).map(|()| n));
    if r.is_err() {
        let _ = unlinkat(&dir, name, false);
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
