//! An encrypted file over a backing file: header slots, the wrapped data key,
//! and block-wise read/write with read-modify-write of partial blocks. This is
//! the SDK-side API (`seal`/`unseal`) and the engine under the mount.
#![forbid(unsafe_code)]

use std::fs::File;
use std::sync::Arc;

use crate::crypto::AeadKey;
use crate::format::{FileId, Header};
use crate::kms::{Caller, KeyService, KmsError};

/// Errors of encrypted-file operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The backing file system failed (ENOSPC, EIO, ...).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The header is not a valid kmsfs header.
    #[error("corrupt or foreign header: {0}")]
    CorruptHeader(String),
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

/// The plaintext data key of one file, ready to seal and open its blocks.
/// Zeroized on drop (aws-lc-rs clears its key schedule); shareable via `Arc`.
#[derive(Debug)]
pub struct FileKey {
    /// The file this key belongs to.
    pub file_id: FileId,
    /// The CMK that wrapped it.
    pub key_id: String,
    aead: AeadKey,
}

/// An open encrypted file: the backing file plus its data key.
/// Methods take `&self` and use positioned I/O; the caller serialises
/// writers against readers and each other (the mount holds a per-inode lock).
#[derive(Debug)]
pub struct EncryptedFile {
    file: File,
    key: Arc<FileKey>,
}

#[allow(unused_variables, missing_docs)]
impl EncryptedFile {
    pub fn create(
        file: File,
        ks: &dyn KeyService,
        caller: &Caller,
        key_id: &str,
    ) -> Result<Self, EnvelopeError> {
        todo!()
    }
    pub fn read_header(file: &File) -> Result<Header, EnvelopeError> {
        todo!()
    }
    pub fn unwrap_key(
        header: &Header,
        ks: &dyn KeyService,
        caller: &Caller,
    ) -> Result<FileKey, EnvelopeError> {
        todo!()
    }
    pub fn open(file: File, ks: &dyn KeyService, caller: &Caller) -> Result<Self, EnvelopeError> {
        todo!()
    }
    pub fn with_key(file: File, key: Arc<FileKey>) -> Self {
        Self { file, key }
    }
    pub fn key(&self) -> &Arc<FileKey> {
        &self.key
    }
    pub fn file(&self) -> &File {
        &self.file
    }
    pub fn plain_size(&self) -> Result<u64, EnvelopeError> {
        todo!()
    }
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize, EnvelopeError> {
        todo!()
    }
    pub fn write_at(&self, data: &[u8], offset: u64) -> Result<(), EnvelopeError> {
        todo!()
    }
    pub fn set_len(&self, size: u64) -> Result<(), EnvelopeError> {
        todo!()
    }
}
