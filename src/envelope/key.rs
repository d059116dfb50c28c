//! A file's plaintext data key: seals and opens its blocks, each bound to
//! the file and to its index, in the file's layout (format version 1:
//! AES-256-GCM under the data key; version 2: XAES-256-GCM).

use super::EnvelopeError;
use crate::crypto::{AeadKey, Key256, NONCE_LEN, XNONCE_LEN, XaesKey, random_array};
use crate::format::{self, FileId, Layout};

/// The block construction of one layout, with its key schedule.
enum Blocks {
    /// AES-256-GCM under the data key itself.
    V1(AeadKey),
    /// XAES-256-GCM: AES-256-GCM under keys derived from the data key.
    V2(Box<XaesKey>),
}

/// The plaintext data key of one file, ready to seal and open its blocks.
/// Shareable via `Arc`; aws-lc-rs clears the key schedules when they drop,
/// and the XAES subkey material is zeroized.
pub struct FileKey {
    /// The file this key belongs to.
    pub file_id: FileId,
    /// The CMK that wrapped it.
    pub key_id: String,
    /// The CMK's key material version that wrapped it.
    pub key_material_version: u32,
    blocks: Blocks,
}

impl std::fmt::Debug for FileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileKey")
            .field("file_id", &self.file_id)
            .field("key_id", &self.key_id)
            .field("key_material_version", &self.key_material_version)
            .field("layout", &self.layout())
            .finish_non_exhaustive()
    }
}

fn crypto_error(e: crate::crypto::CryptoError) -> EnvelopeError {
    EnvelopeError::Io(std::io::Error::other(e))
}

impl FileKey {
    pub(super) fn new(
        layout: Layout,
        file_id: FileId,
        key_id: String,
        version: u32,
        dek: &[u8],
    ) -> Result<Self, EnvelopeError> {
        let key =
            Key256::from_slice(dek).map_err(|_| EnvelopeError::BadDataKey { len: dek.len() })?;
        let blocks = match layout {
            Layout::V1 => Blocks::V1(AeadKey::new(&key)),
            Layout::V2 => Blocks::V2(Box::new(XaesKey::new(&key).map_err(crypto_error)?)),
        };
        Ok(Self {
            file_id,
            key_id,
            key_material_version: version,
            blocks,
        })
    }

    /// The layout whose blocks this key seals and opens.
    pub fn layout(&self) -> Layout {
        match self.blocks {
            Blocks::V1(_) => Layout::V1,
            Blocks::V2(_) => Layout::V2,
        }
    }

    /// A sealer for the blocks of one write. In layout 2 it draws one random
    /// first nonce half and derives its key once: every block it seals gets
    /// that half and a random second half of its own; after
    /// [`BLOCKS_PER_DERIVATION`] blocks it draws a new first half (a FUSE
    /// write, at most 1 MiB, derives once when it is block-aligned).
    pub(super) fn sealer(&self) -> Result<Sealer<'_>, EnvelopeError> {
        Ok(Sealer {
            key: self,
            derived: self.derive_fresh()?,
            sealed: 0,
        })
    }

    /// A random first nonce half and its derived key (layout 2; None in 1).
    fn derive_fresh(&self) -> Result<Option<([u8; NONCE_LEN], AeadKey)>, EnvelopeError> {
        match &self.blocks {
            Blocks::V1(_) => Ok(None),
            Blocks::V2(x) => {
                let first: [u8; NONCE_LEN] = random_array().map_err(crypto_error)?;
                let key = x.subkey(&first).map_err(crypto_error)?;
                Ok(Some((first, key)))
            }
        }
    }

    /// An opener for the blocks of one read: in layout 2 it keeps the key
    /// derived for the last first nonce half it met, so the blocks of one
    /// write derive once.
    pub(super) fn opener(&self) -> Opener<'_> {
        Opener {
            key: self,
            derived: None,
        }
    }

    /// Seals block `index` (its plaintext `plain`) and appends the stored
    /// form to `out` (a sealer of its own: for one block).
    pub(super) fn seal_block(
        &self,
        index: u64,
        plain: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), EnvelopeError> {
        self.sealer()?.seal_block(index, plain, out)
    }

    /// Opens stored block `index` in place (an opener of its own: for one block).
    pub(super) fn open_block<'a>(
        &self,
        index: u64,
        is_final: bool,
        stored: &'a mut [u8],
    ) -> Result<&'a [u8], EnvelopeError> {
        self.opener().open_block(index, is_final, stored)
    }
}

#[cfg(test)]
impl FileKey {
    /// Test-only: a key of `layout` over the raw `dek`.
    pub(crate) fn for_test(layout: Layout, file_id: FileId, dek: &[u8]) -> Self {
        match Self::new(layout, file_id, "test".into(), 1, dek) {
            Ok(k) => k,
            Err(e) => panic!("test key: {e}"),
        }
    }

    /// Test-only: seals block `index` of a layout-2 key under the chosen
    /// 24-byte `nonce` (a sealer draws its nonces at random).
    pub(crate) fn seal_block_with_nonce(
        &self,
        index: u64,
        nonce: &[u8; XNONCE_LEN],
        plain: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), EnvelopeError> {
        let Blocks::V2(x) = &self.blocks else {
            return Err(crypto_error(crate::crypto::CryptoError::KeyLength));
        };
        out.extend_from_slice(nonce);
        let aad = format::block_aad(Layout::V2, &self.file_id, index);
        x.seal_append(nonce, &aad, plain, out).map_err(crypto_error)
    }
}

/// Blocks sealed under one derived key (one first nonce half) at most:
/// 1 MiB of plaintext. docs/FORMAT.md's use bound of a layout-2 data key
/// counts on it.
pub(crate) const BLOCKS_PER_DERIVATION: u64 = 256;

/// Seals the blocks of one write (see [`FileKey::sealer`]).
pub(super) struct Sealer<'k> {
    key: &'k FileKey,
    derived: Option<([u8; NONCE_LEN], AeadKey)>,
    /// Blocks sealed under `derived`.
    sealed: u64,
}

impl Sealer<'_> {
    /// Seals block `index` (its plaintext `plain`) and appends the stored
    /// form, `nonce || ciphertext || tag`, to `out`.
    pub(super) fn seal_block(
        &mut self,
        index: u64,
        plain: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), EnvelopeError> {
        let layout = self.key.layout();
        let aad = format::block_aad(layout, &self.key.file_id, index);
        if self.sealed == BLOCKS_PER_DERIVATION {
            self.derived = self.key.derive_fresh()?;
            self.sealed = 0;
        }
        self.sealed += 1;
        match (&self.key.blocks, &self.derived) {
            (Blocks::V1(k), _) => k.seal_append(&aad, plain, out).map_err(crypto_error),
            (Blocks::V2(_), Some((first, k))) => {
                let second: [u8; NONCE_LEN] = random_array().map_err(crypto_error)?;
                out.reserve(layout.overhead() as usize + plain.len());
                out.extend_from_slice(first);
                out.extend_from_slice(&second);
                k.seal_append_with_nonce(&second, &aad, plain, out)
                    .map_err(crypto_error)
            }
            (Blocks::V2(_), None) => Err(crypto_error(crate::crypto::CryptoError::KeyLength)),
        }
    }
}

impl<'k> Sealer<'k> {
    /// The sealer's state without its key: the blocks of one write sealed
    /// in two goes (the mount seals a write's whole blocks before it takes
    /// the file's lock, and its partial edge blocks under it) keep one
    /// first nonce half and one derivation.
    pub(super) fn pause(self) -> SealerState {
        SealerState {
            file_id: self.key.file_id,
            derived: self.derived,
            sealed: self.sealed,
        }
    }
}

/// A paused [`Sealer`] (see [`Sealer::pause`], [`FileKey::resume`]).
pub(super) struct SealerState {
    file_id: FileId,
    derived: Option<([u8; NONCE_LEN], AeadKey)>,
    sealed: u64,
}

impl std::fmt::Debug for SealerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealerState")
            .field("sealed", &self.sealed)
            .finish_non_exhaustive()
    }
}

impl FileKey {
    /// Goes on sealing with a paused sealer of this key (a fresh sealer if
    /// it was another key's).
    pub(super) fn resume(&self, state: SealerState) -> Result<Sealer<'_>, EnvelopeError> {
        if state.file_id != self.file_id {
            return self.sealer();
        }
        Ok(Sealer {
            key: self,
            derived: state.derived,
            sealed: state.sealed,
        })
    }
}

/// Opens the blocks of one read (see [`FileKey::opener`]).
pub(super) struct Opener<'k> {
    key: &'k FileKey,
    derived: Option<([u8; NONCE_LEN], AeadKey)>,
}

impl Opener<'_> {
    /// Opens stored block `index` in place; returns the plaintext range within
    /// `stored`. A stored block of zeros only is a hole and reads as zeros,
    /// except the final block of a file: kmsfs always seals that one, so zeros
    /// there mean the file was cut or zero-extended outside kmsfs.
    pub(super) fn open_block<'a>(
        &mut self,
        index: u64,
        is_final: bool,
        stored: &'a mut [u8],
    ) -> Result<&'a [u8], EnvelopeError> {
        let layout = self.key.layout();
        let overhead = layout.overhead() as usize;
        let len = stored.len();
        let corrupt = EnvelopeError::CorruptBlock { block: index };
        if len <= overhead {
            return Err(corrupt);
        }
        if !is_final && stored.iter().all(|&b| b == 0) {
            return Ok(&stored[..len - overhead]);
        }
        let aad = format::block_aad(layout, &self.key.file_id, index);
        let opened = match &self.key.blocks {
            Blocks::V1(k) => k.open_in_place(&aad, stored).map(|p| &*p),
            Blocks::V2(x) => {
                let (nonce, sealed) = stored.split_at_mut(XNONCE_LEN);
                let mut first = [0u8; NONCE_LEN];
                let mut second = [0u8; NONCE_LEN];
                first.copy_from_slice(&nonce[..NONCE_LEN]);
                second.copy_from_slice(&nonce[NONCE_LEN..]);
                let k = match &self.derived {
                    Some((f, k)) if *f == first => k,
                    _ => {
                        let k = x.subkey(&first).map_err(crypto_error)?;
                        &self.derived.insert((first, k)).1
                    }
                };
                k.open_in_place_with_nonce(&second, &aad, sealed)
                    .map(|p| &*p)
            }
        };
        opened.map_err(|_| corrupt)
    }
}
