//! Whole backing trees without a mount: [`walk`] lists the encrypted files
//! of a backing directory, `rewrap.rs` moves their data keys to another key
//! (or to their key's newest material) by rewriting headers only, and
//! `fsck.rs` checks headers, keys and block tags. docs/TREE.md describes the
//! commands, their crash safety and how they share a tree with a live mount.
#![forbid(unsafe_code)]

mod copy;
mod export;
mod fsck;
mod import;
mod known;
mod rewrap;

use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::format::{BACKING_LOCK, BACKING_MARKER};
use crate::kms::{KeyMetadata, KeyState, KmsError, Missing, StateProblem};

pub use self::copy::{CopyReport, Skipped};
pub use self::export::export_tree;
pub use self::fsck::{FileCheck, FileStatus, FsckReport, KeySummary, fsck_file, fsck_tree};
pub use self::import::import_tree;
pub use self::known::{known as known_backings, protected_by, remember as remember_backing};
pub use self::rewrap::{Problem, RewrapOptions, RewrapOutcome, RewrapReport, Rewrapper};

/// What a walk of a tree found, each list in a stable (sorted) order, and
/// what it could not enter. kmsfs's own files in the root (its marker and
/// lock) are not part of the tree.
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

/// Lists the tree under `root` without following symbolic links or
/// crossing into other file systems (a mount point inside the tree is not
/// part of it).
pub fn walk(root: &Path) -> std::io::Result<Walk> {
    let dev = std::fs::metadata(root)?.dev();
    let mut out = Walk::default();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) => {
                out.errors.push((dir, e.to_string()));
                continue;
            }
        };
        let mut subdirs = Vec::new();
        for entry in rd {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    out.errors.push((dir.clone(), e.to_string()));
                    continue;
                }
            };
            let Ok(md) = entry.path().symlink_metadata() else {
                continue;
            };
            if md.dev() != dev {
                continue;
            }
            let name = entry.file_name();
            if dir == root && (name == BACKING_MARKER || name == BACKING_LOCK) {
                continue;
            }
            let ft = md.file_type();
            if ft.is_dir() {
                subdirs.push(entry.path());
            } else if ft.is_file() {
                out.files.push(entry.path());
            } else if ft.is_symlink() {
                out.links.push(entry.path());
            } else {
                out.special.push(entry.path());
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

/// Opens a backing file found by [`walk`]: never through a symbolic link,
/// never blocking on a FIFO put in its place; refused unless regular. A
/// file opened to be read keeps its access time where the caller may ask
/// for that (O_NOATIME: its owner, or root), so that looking at a tree
/// (fsck, the mount's survey) leaves no trace in it.
pub(crate) fn open_backing(path: &Path, write: bool) -> std::io::Result<File> {
    let open = |extra: i32| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | extra)
            .open(path)
    };
    let f = match open(if write { 0 } else { libc::O_NOATIME }) {
        Err(e) if !write && e.raw_os_error() == Some(libc::EPERM) => open(0)?,
        r => r?,
    };
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok(f)
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

/// Gives `to` the owner (when run as root), mode (not for a symbolic link)
/// and access and modification times of `from`, never following a symbolic
/// link at either end. The owner goes first: chown clears set-id bits.
pub(crate) fn copy_meta(from: &Path, to: &Path) -> std::io::Result<()> {
    copy_meta_of(&from.symlink_metadata()?, to)
}

/// `copy_meta` from metadata already in hand: for a file copied through a
/// descriptor, its fstat, so that what was read and whose owner and mode the
/// copy gets are one object (a name looked up again could have been swapped
/// for another user's file in between).
pub(crate) fn copy_meta_of(md: &std::fs::Metadata, to: &Path) -> std::io::Result<()> {
    use crate::os::node::{Utime, chmod_node, chown_node, utimens_node};
    let node = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(to)?;
    if crate::os::ids::is_root() {
        chown_node(&node, Some(md.uid()), Some(md.gid()))?;
    }
    if !md.file_type().is_symlink() {
        chmod_node(&node, md.mode() & 0o7777)?;
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
        &node,
        Utime::At(at(md.atime(), md.atime_nsec())),
        Utime::At(at(md.mtime(), md.mtime_nsec())),
    )
}

/// The path of `p` relative to `root`, for reports.
pub(crate) fn relative(root: &Path, p: &Path) -> PathBuf {
    p.strip_prefix(root).unwrap_or(p).to_path_buf()
}
