//! A file's plaintext data key: seals and opens its blocks, each bound to
//! the file and to its index.

use super::EnvelopeError;
use crate::crypto::{AeadKey, Key256};
use crate::format::{self, BLOCK_OVERHEAD, FileId};

/// The plaintext data key of one file, ready to seal and open its blocks.
/// Shareable via `Arc`; aws-lc-rs clears the key schedule when it drops.
#[derive(Debug)]
pub struct FileKey {
    /// The file this key belongs to.
    pub file_id: FileId,
    /// The CMK that wrapped it.
    pub key_id: String,
    /// The CMK's key material version that wrapped it.
    pub key_material_version: u32,
    aead: AeadKey,
}

impl FileKey {
    pub(super) fn new(
        file_id: FileId,
        key_id: String,
        version: u32,
        dek: &[u8],
    ) -> Result<Self, EnvelopeError> {
        let key = Key256::from_slice(dek).map_err(|_| {
            EnvelopeError::CorruptHeader(format!("data key has {} bytes, expected 32", dek.len()))
        })?;
        Ok(Self {
            file_id,
            key_id,
            key_material_version: version,
            aead: AeadKey::new(&key),
        })
    }

    /// Seals block `index` (its plaintext `plain`) and appends the stored form to `out`.
    pub(super) fn seal_block(
        &self,
        index: u64,
        plain: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), EnvelopeError> {
        self.aead
            .seal_append(&format::block_aad(&self.file_id, index), plain, out)
            .map_err(|e| EnvelopeError::Io(std::io::Error::other(e)))
    }

    /// Opens stored block `index` in place; returns the plaintext range within
    /// `stored`. A stored block of zeros only is a hole and reads as zeros,
    /// except the final block of a file: kmsfs always seals that one, so zeros
    /// there mean the file was cut or zero-extended outside kmsfs.
    pub(super) fn open_block<'a>(
        &self,
        index: u64,
        is_final: bool,
        stored: &'a mut [u8],
    ) -> Result<&'a [u8], EnvelopeError> {
        let len = stored.len();
        if len as u64 <= BLOCK_OVERHEAD {
            return Err(EnvelopeError::CorruptBlock { block: index });
        }
        if !is_final && stored.iter().all(|&b| b == 0) {
            return Ok(&stored[..len - BLOCK_OVERHEAD as usize]);
        }
        match self
            .aead
            .open_in_place(&format::block_aad(&self.file_id, index), stored)
        {
            Ok(p) => Ok(&*p),
            Err(_) => Err(EnvelopeError::CorruptBlock { block: index }),
        }
    }
}
