//! Encrypted files, the SDK-side API that the mount runs on: `file.rs` (an
//! encrypted file over a backing file: header, data key, block-wise read and
//! write), `key.rs` (a file's data key sealing and opening blocks),
//! `holes.rs` (fallocate and SEEK_DATA/SEEK_HOLE), and `seal.rs` ([`seal`]
//! and [`unseal`], which produce and read exactly the files the mount does),
//! `names.rs` (encrypted names and symlink targets, and the tree's name key).
#![forbid(unsafe_code)]

pub mod dirkey;
mod file;
mod holes;
mod key;
pub mod names;
mod seal;
#[cfg(test)]
pub(crate) mod tests;

use crate::format::{FileId, FormatError};
use crate::kms::{EncryptionContext, KmsError};

pub use self::file::{EncryptedFile, FreshKey, WholeBlocks};
pub use self::key::FileKey;
pub use self::seal::{seal, unseal};

/// The encryption-context key that names the file a data key belongs to.
pub const FILE_ID_CONTEXT_KEY: &str = "kmsfs:file-id";

/// Errors of encrypted-file operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The backing file system failed (ENOSPC, EIO, ...).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The header is not a valid kmsfs header (the format's reason is the
    /// error's source).
    #[error("corrupt or foreign header: {0}")]
    CorruptHeader(#[from] FormatError),
    /// The header does not belong where it is found (another block format
    /// than its tree's, changed since its key was unwrapped).
    #[error("corrupt or foreign header: {0}")]
    Mismatch(String),
    /// The key service unwrapped a data key of the wrong length.
    #[error("corrupt or foreign header: data key has {len} bytes, expected 32")]
    BadDataKey {
        /// Its length.
        len: usize,
    },
    /// A block failed authentication or has an impossible size.
    #[error("block {block} failed authentication (modified, truncated or moved)")]
    CorruptBlock {
        /// Index of the block.
        block: u64,
    },
    /// The key service refused or failed to unwrap or make the data key.
    #[error(transparent)]
    Kms(#[from] KmsError),
}

/// The encryption context that binds a wrapped data key to its file.
pub fn file_context(file_id: &FileId) -> EncryptionContext {
    let hex: String = file_id.iter().map(|b| format!("{b:02x}")).collect();
    EncryptionContext::with(FILE_ID_CONTEXT_KEY, &hex)
}
