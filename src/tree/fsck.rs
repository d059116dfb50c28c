//! fsck: every file's header, the state of the key it names, and (unless
//! quick) its data key and every block tag; a summary per key of the files
//! and plaintext bytes it protects. Reads only: nothing is changed.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use super::{KeyStatus, Tree};
use crate::envelope::{EncryptedFile, EnvelopeError};
use crate::format::{self, BLOCK_SIZE};
use crate::kms::{KeyService, KeyServiceExt, KmsError, RequestContext};

/// What was found in one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "Status")]
pub enum FileStatus {
    /// Header valid, key usable and (unless quick) every block authentic.
    Ok,
    /// An empty backing file: no header yet (the mount gives it one).
    Empty,
    /// Not a valid kmsfs header, or its wrapped key does not open.
    CorruptHeader {
        /// Why.
        #[serde(rename = "Reason")]
        reason: String,
    },
    /// Blocks that fail authentication, by plaintext offset.
    CorruptBlocks {
        /// Plaintext offset of each bad block.
        #[serde(rename = "Offsets")]
        offsets: Vec<u64>,
    },
    /// A name or symbolic link target of a tree with encrypted names that
    /// does not open in its directory (moved, copied or edited in the
    /// backing directory), or a directory whose key record does not hold.
    CorruptName {
        /// Why.
        #[serde(rename = "Reason")]
        reason: String,
    },
    /// The key cannot unwrap the data key.
    KeyUnusable {
        /// Why.
        #[serde(rename = "KeyStatus")]
        key: KeyStatus,
    },
    /// The file could not be read.
    Io {
        /// The OS error.
        #[serde(rename = "Message")]
        message: String,
    },
}

/// One file's finding.
#[derive(Debug, Clone, Serialize)]
pub struct FileCheck {
    /// Path relative to the backing directory.
    #[serde(rename = "Path")]
    pub path: PathBuf,
    /// The key its header names, if the header could be read.
    #[serde(rename = "KeyId", skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Plaintext size from the backing size.
    #[serde(rename = "PlaintextSize")]
    pub plain_size: u64,
    /// What was found.
    #[serde(flatten)]
    pub status: FileStatus,
}

/// Files and plaintext bytes one key protects, and its state.
#[derive(Debug, Clone, Serialize)]
pub struct KeySummary {
    /// Number of files whose data key it wraps.
    #[serde(rename = "Files")]
    pub files: u64,
    /// Their plaintext bytes.
    #[serde(rename = "Bytes")]
    pub bytes: u64,
    /// The key's state for this caller.
    #[serde(rename = "Key")]
    pub status: KeyStatus,
}

/// The whole result.
#[derive(Debug, Default, Clone, Serialize)]
pub struct FsckReport {
    /// Files checked.
    #[serde(rename = "Files")]
    pub files: u64,
    /// Plaintext bytes in them.
    #[serde(rename = "Bytes")]
    pub bytes: u64,
    /// Files with a corrupt header or corrupt blocks.
    #[serde(rename = "Corrupt")]
    pub corrupt: u64,
    /// Files whose key cannot unwrap their data key.
    #[serde(rename = "Unreadable")]
    pub unreadable: u64,
    /// Files that could not be read.
    #[serde(rename = "IoErrors")]
    pub io: u64,
    /// Every file that is not ok.
    #[serde(rename = "Findings")]
    pub findings: Vec<FileCheck>,
    /// Per key id.
    #[serde(rename = "Keys")]
    pub keys: BTreeMap<String, KeySummary>,
}

/// Checks the backing file `path` of `tree`. `states` caches DescribeKey
/// answers per key.
pub fn fsck_file(
    tree: &Tree,
    path: &Path,
    ks: &dyn KeyService,
    rc: &RequestContext<'_>,
    quick: bool,
    states: &mut HashMap<String, KeyStatus>,
) -> (Option<String>, u64, FileStatus) {
    let io = |e: std::io::Error| FileStatus::Io {
        message: e.to_string(),
    };
    let file = match tree.open_file(path, false) {
        Ok(f) => f,
        Err(e) => return (None, 0, io(e)),
    };
    let len = match file.metadata() {
        Ok(m) => m.len(),
        Err(e) => return (None, 0, io(e)),
    };
    if len == 0 {
        return (None, 0, FileStatus::Empty);
    }
    // Before the header is read: its size if it were of the layout of new files.
    let plain = format::Layout::NEW.plain_size_from_backing(len);
    let header = match EncryptedFile::read_header(&file) {
        Ok(h) => h,
        Err(EnvelopeError::Io(e)) => return (None, plain, io(e)),
        Err(e) => {
            return (
                None,
                plain,
                FileStatus::CorruptHeader {
                    reason: e.to_string(),
                },
            );
        }
    };
    let plain = header.layout().plain_size_from_backing(len);
    let Some(slot) = header.active() else {
        let reason = "no valid key slot".to_string();
        return (None, plain, FileStatus::CorruptHeader { reason });
    };
    let key_id = slot.key_id.clone();
    let state = states
        .entry(key_id.clone())
        .or_insert_with(|| match ks.describe_key(rc, &key_id) {
            Ok(m) => KeyStatus::of_metadata(&m),
            Err(e) => KeyStatus::of_error(&e).unwrap_or(KeyStatus::Missing),
        })
        .clone();
    if state != KeyStatus::Usable {
        return (Some(key_id), plain, FileStatus::KeyUnusable { key: state });
    }
    if quick {
        return (Some(key_id), plain, FileStatus::Ok);
    }
    let key = match EncryptedFile::unwrap_key(&header, ks, rc) {
        Ok(k) => k,
        Err(e) => return (Some(key_id), plain, status_of(e)),
    };
    let ef = match EncryptedFile::with_key(file, header, Arc::new(key)) {
        Ok(ef) => ef,
        Err(e) => return (Some(key_id), plain, status_of(e)),
    };
    match ef.bad_blocks() {
        Ok(bad) if bad.is_empty() => (Some(key_id), plain, FileStatus::Ok),
        Ok(bad) => (
            Some(key_id),
            plain,
            FileStatus::CorruptBlocks {
                offsets: bad.into_iter().map(|b| b * BLOCK_SIZE).collect(),
            },
        ),
        Err(EnvelopeError::Io(e)) => (Some(key_id), plain, io(e)),
        Err(e) => (
            Some(key_id),
            plain,
            FileStatus::Io {
                message: e.to_string(),
            },
        ),
    }
}

/// What an error reading a file's header, unwrapping its key or reading
/// its blocks says about the file.
pub(super) fn status_of(e: EnvelopeError) -> FileStatus {
    match e {
        EnvelopeError::Io(e) => FileStatus::Io {
            message: e.to_string(),
        },
        EnvelopeError::Kms(k) => match KeyStatus::of_error(&k) {
            Some(s) => FileStatus::KeyUnusable { key: s },
            None => match k {
                KmsError::InvalidCiphertext { reason } => FileStatus::CorruptHeader {
                    reason: format!("the wrapped data key does not open: {reason}"),
                },
                other => FileStatus::Io {
                    message: other.to_string(),
                },
            },
        },
        EnvelopeError::CorruptBlock { block } => FileStatus::CorruptBlocks {
            offsets: vec![block * BLOCK_SIZE],
        },
        e @ (EnvelopeError::CorruptHeader(_)
        | EnvelopeError::Mismatch(_)
        | EnvelopeError::BadDataKey { .. }) => FileStatus::CorruptHeader {
            reason: e.to_string(),
        },
    }
}

/// Checks `files` (from [`super::walk`] of `tree`), calling `progress`
/// after each.
pub fn fsck_tree(
    tree: &Tree,
    files: &[PathBuf],
    ks: &dyn KeyService,
    rc: &RequestContext<'_>,
    quick: bool,
    progress: &mut dyn FnMut(&FileCheck),
) -> FsckReport {
    let mut states = HashMap::new();
    let mut report = FsckReport::default();
    for p in files {
        let (key_id, plain_size, status) = fsck_file(tree, p, ks, rc, quick, &mut states);
        let check = FileCheck {
            path: p.clone(),
            key_id,
            plain_size,
            status,
        };
        report.files += 1;
        report.bytes += plain_size;
        if let Some(k) = &check.key_id {
            let e = report.keys.entry(k.clone()).or_insert_with(|| KeySummary {
                files: 0,
                bytes: 0,
                status: states.get(k).cloned().unwrap_or(KeyStatus::Missing),
            });
            e.files += 1;
            e.bytes += plain_size;
        }
        match &check.status {
            FileStatus::Ok | FileStatus::Empty => {}
            FileStatus::CorruptHeader { .. }
            | FileStatus::CorruptBlocks { .. }
            | FileStatus::CorruptName { .. } => report.corrupt += 1,
            FileStatus::KeyUnusable { .. } => report.unreadable += 1,
            FileStatus::Io { .. } => report.io += 1,
        }
        progress(&check);
        if !matches!(check.status, FileStatus::Ok | FileStatus::Empty) {
            report.findings.push(check);
        }
    }
    report
}
