//! Whole backing trees without a mount: [`walk`] lists the encrypted files
//! of a backing directory, `rewrap.rs` moves their data keys to another key
//! (or to their key's newest material) by rewriting headers only, and
//! `fsck.rs` checks headers, keys and block tags. docs/TREE.md describes the
//! commands, their crash safety and how they share a tree with a live mount.
#![forbid(unsafe_code)]

mod copy;
mod copy_names;
mod dirkeys;
mod export;
mod fsck;
mod import;
mod known;
mod names;
mod rewrap;

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::format::{BACKING_LOCK, BACKING_MARKER};
use crate::kms::{KeyMetadata, KeyState, KmsError, Missing, StateProblem};
use crate::os::at::{list_dir, open_strictly_beneath, open_without_links};
use crate::os::dir::EntryKind;

pub use self::copy::{CopyReport, Skipped};
pub use self::dirkeys::{RecordKey, dir_key_mismatches, recorded_dir_keys};
pub use self::export::{TreeKeys, export_tree, open_dest};
pub use self::fsck::{FileCheck, FileStatus, FsckReport, KeySummary, fsck_file, fsck_tree};
pub use self::import::{NewFiles, asks_dir_keys, import_tree};
pub use self::known::{
    Choices, DirKeyList, known as known_backings, list_dir_key, listed_dir_keys, protected_by,
    record_choices, record_path, recorded_choices, remember as remember_backing,
};
pub use self::names::{NameFinding, NamesReport, check_names, reseal_old_targets};
pub use self::rewrap::{Problem, RewrapOptions, RewrapOutcome, RewrapReport, Rewrapper};

/// A tree opened once by the path its operator named. Every name below it
/// is resolved beneath this descriptor (`os::at`): never through a symbolic
/// link, never above it, never into another mount, so a user who can write
/// the tree cannot send a tool that root runs anywhere else by swapping a
/// directory for a link while it runs.
#[derive(Debug)]
pub struct Tree {
    root: File,
    path: PathBuf,
}

impl Tree {
    /// Opens the directory `path` names: the one path of a run that is
    /// resolved as given (the operator's choice, links included).
    pub fn open(path: &Path) -> io::Result<Self> {
        // The root a user named on the command line.
        #[allow(clippy::disallowed_methods)]
        let root = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(path)?;
        Ok(Self {
            root,
            path: path.to_path_buf(),
        })
    }

    /// Opens the directory the absolute path `path` names through no
    /// symbolic link at all (a path recorded resolved, which a link
    /// swapped in since must not redirect).
    pub fn open_absolute(path: &Path) -> io::Result<Self> {
        let rel = path
            .strip_prefix("/")
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // "/" itself: no link can be swapped in above it.
        #[allow(clippy::disallowed_methods)]
        let slash = File::open("/")?;
        let root = open_without_links(&slash, rel, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        Ok(Self {
            root,
            path: path.to_path_buf(),
        })
    }

    /// The path the tree was opened by, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when the tree's binding file says its names are encrypted
    /// (`EncryptedNames`, or a `NameKey`): its entries are then encrypted
    /// names, and kmsfs's own files (`.kmsfs.dirid`, long names' side
    /// files) are not part of it. Read through the tree's descriptor; a
    /// binding file that cannot be read or parsed is an error, never taken
    /// for plain names.
    pub fn names_encrypted(&self) -> io::Result<bool> {
        Ok(self.marker()?.is_some_and(|v| {
            v.get("EncryptedNames").and_then(|b| b.as_bool()) == Some(true)
                || v.get("NameKey").is_some_and(|k| !k.is_null())
        }))
    }

    /// The tree's name key as its binding file holds it, wrapped (None:
    /// plain names, or not made yet).
    pub fn wrapped_name_key(&self) -> io::Result<Option<Vec<u8>>> {
        use base64::Engine;
        let Some(v) = self.marker()? else {
            return Ok(None);
        };
        let Some(k) = v.get("NameKey").and_then(|k| k.as_str()) else {
            return Ok(None);
        };
        base64::engine::general_purpose::STANDARD
            .decode(k)
            .map(Some)
            .map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{BACKING_MARKER}: NameKey: {e}"),
                )
            })
    }

    /// The binding file, parsed (None: there is none).
    fn marker(&self) -> io::Result<Option<serde_json::Value>> {
        use std::io::Read;
        let mut f =
            match open_strictly_beneath(&self.root, Path::new(BACKING_MARKER), libc::O_RDONLY, 0) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
        let mut body = Vec::new();
        (&mut f).take(1 << 20).read_to_end(&mut body)?;
        serde_json::from_slice(&body).map(Some).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{BACKING_MARKER}: {e}"))
        })
    }

    /// The root's descriptor.
    pub(crate) fn root(&self) -> &File {
        &self.root
    }

    /// The directory `rel` (empty: the root), opened to be listed or to
    /// have entries made in it, without changing its access time where the
    /// caller may ask for that.
    pub(crate) fn dir(&self, rel: &Path) -> io::Result<File> {
        let flags = libc::O_RDONLY | libc::O_DIRECTORY;
        match open_strictly_beneath(&self.root, rel, flags | libc::O_NOATIME, 0) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                open_strictly_beneath(&self.root, rel, flags, 0)
            }
            r => r,
        }
    }

    /// The directory that holds `rel`, and `rel`'s name in it.
    pub(crate) fn parent<'a>(&self, rel: &'a Path) -> io::Result<(File, &'a OsStr)> {
        let name = rel
            .file_name()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        Ok((self.dir(rel.parent().unwrap_or(Path::new("")))?, name))
    }

    /// An O_PATH descriptor of the entry `rel` itself (a symbolic link is
    /// not followed: its own node), for fstat, readlink, chown, utimens.
    pub(crate) fn node(&self, rel: &Path) -> io::Result<File> {
        open_strictly_beneath(&self.root, rel, libc::O_PATH, 0)
    }

    /// Opens the regular file `rel`: never blocking on a FIFO put in its
    /// place, refused unless regular. Opened to be read, it keeps its
    /// access time where the caller may ask for that (O_NOATIME: its
    /// owner, or root), so that looking at a tree leaves no trace in it.
    pub(crate) fn open_file(&self, rel: &Path, write: bool) -> io::Result<File> {
        let base = libc::O_NONBLOCK | if write { libc::O_RDWR } else { libc::O_RDONLY };
        let f = match open_strictly_beneath(&self.root, rel, base | libc::O_NOATIME, 0) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                open_strictly_beneath(&self.root, rel, base, 0)?
            }
            r => r?,
        };
        if !f.metadata()?.is_file() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok(f)
    }
}

/// What a walk of a tree found, each list in a stable (sorted) order, and
/// what it could not enter, as paths relative to the tree's root. kmsfs's
/// own files in the root (its marker and lock) are not part of the tree.
#[derive(Debug, Default)]
pub struct Walk {
    /// Every regular file.
    pub files: Vec<PathBuf>,
    /// Every directory below the root, each listed before its subdirectories.
    pub dirs: Vec<PathBuf>,
    /// Every symbolic link.
    pub links: Vec<PathBuf>,
    /// FIFOs, sockets and device nodes.
    pub special: Vec<PathBuf>,
    /// Directories that could not be read, with the error (no secrets).
    pub errors: Vec<(PathBuf, String)>,
}

/// Lists `tree` through descriptors, without following symbolic links or
/// crossing into other file systems (a mount point inside the tree is not
/// part of it).
pub fn walk(tree: &Tree) -> io::Result<Walk> {
    let dev = tree.root.metadata()?.dev();
    let encrypted = tree.names_encrypted()?;
    let mut out = Walk::default();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let listed = tree.dir(&rel).and_then(|d| Ok((list_dir(&d)?, d)));
        let (entries, dir) = match listed {
            Ok(x) => x,
            Err(e) => {
                out.errors.push((rel, e.to_string()));
                continue;
            }
        };
        let mut subdirs = Vec::new();
        for (name, kind) in entries {
            if rel.as_os_str().is_empty() && (name == BACKING_MARKER || name == BACKING_LOCK) {
                continue;
            }
            if encrypted && crate::envelope::names::is_internal(&name) {
                continue;
            }
            let path = rel.join(&name);
            // Directories (for the device) and entries of a type the
            // directory does not say are looked at; a mount point inside
            // the tree refuses (EXDEV) and is not part of it.
            let kind = match kind {
                EntryKind::Dir | EntryKind::Other => {
                    match open_strictly_beneath(&dir, Path::new(&name), libc::O_PATH, 0)
                        .and_then(|n| n.metadata())
                    {
                        Ok(md) if md.dev() != dev => continue,
                        Ok(md) if md.is_dir() => EntryKind::Dir,
                        Ok(md) if md.is_file() => EntryKind::File,
                        Ok(md) if md.file_type().is_symlink() => EntryKind::Symlink,
                        Ok(_) => EntryKind::Other,
                        Err(_) => continue,
                    }
                }
                k => k,
            };
            match kind {
                EntryKind::Dir => subdirs.push(path),
                EntryKind::File => out.files.push(path),
                EntryKind::Symlink => out.links.push(path),
                EntryKind::Other => out.special.push(path),
            }
        }
        subdirs.sort();
        out.dirs.extend(subdirs.iter().cloned());
        stack.extend(subdirs.into_iter().rev());
    }
    out.files.sort();
    out.links.sort();
    out.special.sort();
    Ok(out)
}

/// Opens a backing file found by a survey of the mount's: `open_file` of
/// `rel` in the backing directory `backing` opened as a [`Tree`].
pub(crate) fn open_backing(backing: &Tree, rel: &Path) -> io::Result<File> {
    backing.open_file(rel, false)
}

/// Why a key cannot unwrap a file's data key (or can).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "Status")]
pub enum KeyStatus {
    /// Enabled and usable by this caller.
    Usable,
    /// Disabled: `enable-key` brings the files back.
    Disabled,
    /// Scheduled for deletion on `DeletionDate` (seconds since the epoch).
    PendingDeletion {
        /// When the key goes for good.
        #[serde(rename = "DeletionDate")]
        deletion_date: Option<i64>,
    },
    /// Imported material expired or was deleted: import it again.
    MaterialExpired,
    /// Deleted: the files under it are crypto-shredded.
    Deleted,
    /// No such key in this keystore (another keystore's file?).
    Missing,
    /// The key's policy refuses this caller.
    Denied,
}

impl KeyStatus {
    /// The state of a key from its metadata (before anything is unwrapped).
    pub fn of_metadata(m: &KeyMetadata) -> Self {
        match m.key_state {
            KeyState::Enabled => KeyStatus::Usable,
            KeyState::Disabled => KeyStatus::Disabled,
            KeyState::PendingDeletion => KeyStatus::PendingDeletion {
                deletion_date: m.deletion_date,
            },
            KeyState::PendingImport => KeyStatus::MaterialExpired,
        }
    }

    /// The key problem a key service error stands for; None for errors that
    /// say nothing about the key (I/O, a damaged keystore, a bad ciphertext).
    pub fn of_error(e: &KmsError) -> Option<Self> {
        Some(match e {
            KmsError::Disabled { .. } => KeyStatus::Disabled,
            KmsError::InvalidState { problem, .. } => match problem {
                StateProblem::PendingDeletion { deletion_date } => KeyStatus::PendingDeletion {
                    deletion_date: *deletion_date,
                },
                p if p.awaits_import() => KeyStatus::MaterialExpired,
                _ => return None,
            },
            KmsError::NotFound {
                what: Missing::Deleted { .. } | Missing::BlobKeyDeleted { .. },
            } => KeyStatus::Deleted,
            KmsError::NotFound { .. } => KeyStatus::Missing,
            KmsError::AccessDenied { .. } => KeyStatus::Denied,
            _ => return None,
        })
    }

    /// A short name for text output.
    pub fn label(&self) -> String {
        match self {
            KeyStatus::Usable => "usable".into(),
            KeyStatus::Disabled => "disabled".into(),
            KeyStatus::PendingDeletion { deletion_date } => format!(
                "pending deletion on {}",
                deletion_date
                    .map(crate::kms::clock::format_rfc3339)
                    .unwrap_or_else(|| "an unknown date".into())
            ),
            KeyStatus::MaterialExpired => "key material expired".into(),
            KeyStatus::Deleted => "deleted (files crypto-shredded)".into(),
            KeyStatus::Missing => "missing from this keystore".into(),
            KeyStatus::Denied => "denied to this user by the key policy".into(),
        }
    }
}

/// Gives the object `node` holds (a descriptor of it; an O_PATH one will
/// do, a symbolic link's own included) the owner (when run as root), mode
/// (not for a symbolic link) and access and modification times of `md`: the
/// fstat of the object the copy was made from, so that what was read and
/// whose owner and mode the copy gets are one object. The owner goes first:
/// chown clears set-id bits.
pub(crate) fn apply_meta(md: &std::fs::Metadata, node: &File) -> io::Result<()> {
    use crate::os::node::{Utime, chmod_node, chown_node, utimens_node};
    if crate::os::ids::is_root() {
        chown_node(node, Some(md.uid()), Some(md.gid()))?;
    }
    if !md.file_type().is_symlink() {
        chmod_node(node, md.mode() & 0o7777)?;
    }
    let at = |s: i64, ns: i64| {
        let whole = std::time::Duration::from_secs(s.unsigned_abs());
        let base = if s >= 0 {
            std::time::UNIX_EPOCH + whole
        } else {
            std::time::UNIX_EPOCH - whole
        };
        base + std::time::Duration::from_nanos(ns.clamp(0, 999_999_999) as u64)
    };
    utimens_node(
        node,
        Utime::At(at(md.atime(), md.atime_nsec())),
        Utime::At(at(md.mtime(), md.mtime_nsec())),
    )
}
