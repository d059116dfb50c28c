//! An encrypted file over a backing file: the header and its wrapped data key,
//! and block-wise positioned read/write with read-modify-write of partial
//! blocks. The mount runs on it, and it is the SDK-side API: [`seal`] and
//! [`unseal`] produce and read exactly the files the mount does; holes.rs
//! adds fallocate and SEEK_DATA/SEEK_HOLE.
#![forbid(unsafe_code)]

mod holes;

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use zeroize::Zeroizing;

use crate::crypto::{AeadKey, Key256, random_array};
use crate::format::{
    self, BLOCK_OVERHEAD, BLOCK_SIZE, FileId, FormatError, HEADER_LEN, Header, Slot,
};
use crate::kms::{Caller, DataKeySpec, EncryptionContext, KeyService, KmsError};
use crate::os;

/// The encryption-context key that names the file a data key belongs to.
pub const FILE_ID_CONTEXT_KEY: &str = "kmsfs:file-id";

/// Blocks sealed or opened per system call by `seal` and `unseal`.
const STREAM_BLOCKS: u64 = 256;

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

impl From<FormatError> for EnvelopeError {
    fn from(e: FormatError) -> Self {
        EnvelopeError::CorruptHeader(e.to_string())
    }
}

/// The encryption context that binds a wrapped data key to its file.
pub fn file_context(file_id: &FileId) -> EncryptionContext {
    let hex: String = file_id.iter().map(|b| format!("{b:02x}")).collect();
    EncryptionContext::with(FILE_ID_CONTEXT_KEY, &hex)
}

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
    fn new(
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
    fn seal_block(&self, index: u64, plain: &[u8], out: &mut Vec<u8>) -> Result<(), EnvelopeError> {
        self.aead
            .seal_append(&format::block_aad(&self.file_id, index), plain, out)
            .map_err(|e| EnvelopeError::Io(std::io::Error::other(e)))
    }

    /// Opens stored block `index` in place; returns the plaintext range within
    /// `stored`. A stored block of zeros only is a hole and reads as zeros,
    /// except the final block of a file: kmsfs always seals that one, so zeros
    /// there mean the file was cut or zero-extended outside kmsfs.
    fn open_block<'a>(
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

/// An open encrypted file: the backing file plus its data key, and the
/// header that key was unwrapped from (or created with). Methods take
/// `&self` and use positioned I/O; callers serialise writers against readers
/// and each other (the mount holds a per-inode lock).
#[derive(Debug)]
pub struct EncryptedFile {
    file: File,
    header: Header,
    key: Arc<FileKey>,
}

impl EncryptedFile {
    /// Makes `file` (empty, opened read-write) a new encrypted file: asks the
    /// key service for a data key under `key_id` bound to a fresh file id and
    /// writes the header.
    pub fn create(
        file: File,
        ks: &dyn KeyService,
        caller: &Caller,
        key_id: &str,
    ) -> Result<Self, EnvelopeError> {
        let file_id: FileId =
            random_array().map_err(|e| EnvelopeError::Io(std::io::Error::other(e)))?;
        let dk =
            ks.generate_data_key(caller, key_id, DataKeySpec::Aes256, &file_context(&file_id))?;
        let header = Header::new(
            file_id,
            Slot {
                seq: 1,
                key_id: dk.key_id.clone(),
                key_material_version: dk.key_material_version,
                wrapped_key: dk.ciphertext_blob,
            },
        );
        let bytes = header.encode()?;
        file.write_all_at(&bytes, 0)?;
        let key = FileKey::new(
            file_id,
            dk.key_id,
            dk.key_material_version,
            dk.plaintext.expose(),
        )?;
        Ok(Self {
            file,
            header,
            key: Arc::new(key),
        })
    }

    /// Reads and validates the header of a backing file.
    pub fn read_header(file: &File) -> Result<Header, EnvelopeError> {
        let mut buf = [0u8; HEADER_LEN as usize];
        let mut got = 0;
        while got < buf.len() {
            match file.read_at(&mut buf[got..], got as u64)? {
                0 => break,
                n => got += n,
            }
        }
        Ok(Header::decode(&buf[..got])?)
    }

    /// Unwraps the data key of the header's current slot through the key service.
    pub fn unwrap_key(
        header: &Header,
        ks: &dyn KeyService,
        caller: &Caller,
    ) -> Result<FileKey, EnvelopeError> {
        let slot = header
            .active()
            .ok_or_else(|| EnvelopeError::CorruptHeader("no valid key slot".into()))?;
        let d = ks.decrypt(
            caller,
            &slot.wrapped_key,
            &file_context(&header.file_id),
            None,
        )?;
        FileKey::new(
            header.file_id,
            d.key_id,
            d.key_material_version,
            d.plaintext.expose(),
        )
    }

    /// Opens an existing encrypted file: reads the header and unwraps its key.
    pub fn open(file: File, ks: &dyn KeyService, caller: &Caller) -> Result<Self, EnvelopeError> {
        let header = Self::read_header(&file)?;
        let key = Self::unwrap_key(&header, ks, caller)?;
        Ok(Self::with_key(file, header, Arc::new(key)))
    }

    /// An encrypted file over `file` whose key, unwrapped from `header`, is
    /// already known (a cached key).
    pub fn with_key(file: File, header: Header, key: Arc<FileKey>) -> Self {
        Self { file, header, key }
    }

    /// The header this file's data key came from (as read at open time:
    /// the header on disk may have changed since).
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The file's data key.
    pub fn key(&self) -> &Arc<FileKey> {
        &self.key
    }

    /// The backing file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Plaintext size, from the backing file's size alone.
    pub fn plain_size(&self) -> Result<u64, EnvelopeError> {
        Ok(format::plain_size_from_backing(self.file.metadata()?.len()))
    }

    /// The plaintext size and whether the backing size is one kmsfs can
    /// produce (false: the file was cut or extended outside kmsfs).
    fn sized(&self) -> Result<(u64, bool), EnvelopeError> {
        let len = self.file.metadata()?.len();
        Ok((
            format::plain_size_from_backing(len),
            format::is_valid_backing_size(len),
        ))
    }

    /// The error of a read that reaches the end of a file whose backing size
    /// kmsfs cannot produce (cut or extended outside kmsfs).
    fn damaged_end(size: u64) -> EnvelopeError {
        EnvelopeError::CorruptBlock {
            block: format::block_count(size),
        }
    }

    /// The plaintext size, refusing (as every read reaching the end does) a
    /// backing size that kmsfs cannot produce: for a reader of the whole file.
    pub fn checked_plain_size(&self) -> Result<u64, EnvelopeError> {
        match self.sized()? {
            (size, true) => Ok(size),
            (size, false) => Err(Self::damaged_end(size)),
        }
    }

    /// Fails with EFBIG before anything is written when `end` is past the
    /// largest file the backing file system can hold.
    fn check_limit(end: u64) -> Result<(), EnvelopeError> {
        if end > format::MAX_PLAIN_SIZE {
            return Err(EnvelopeError::Io(std::io::Error::from_raw_os_error(
                libc::EFBIG,
            )));
        }
        Ok(())
    }

    /// Reads the stored blocks `first..first+count` of a file of `size`
    /// plaintext bytes with one system call; returns the bytes read and the
    /// stored length of each block.
    fn read_stored(&self, first: u64, count: u64, size: u64) -> Result<Vec<u8>, EnvelopeError> {
        let start = format::block_backing_offset(first);
        let end = format::block_backing_offset(first + count - 1)
            + format::stored_block_len(format::block_plain_len(first + count - 1, size));
        let mut buf = vec![0u8; (end - start) as usize];
        let mut got = 0;
        while got < buf.len() {
            match self.file.read_at(&mut buf[got..], start + got as u64)? {
                0 => {
                    return Err(EnvelopeError::CorruptBlock {
                        block: first + count - 1,
                    });
                }
                n => got += n,
            }
        }
        Ok(buf)
    }

    /// Reads plaintext at `offset` into `buf`; returns the bytes read (short
    /// only at end of file). Any block that fails authentication fails the read.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize, EnvelopeError> {
        let (size, valid) = self.sized()?;
        if !valid && offset.saturating_add(buf.len() as u64) >= size {
            // A read that reaches the end of a cut or extended file.
            return Err(Self::damaged_end(size));
        }
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let len = (buf.len() as u64).min(size - offset);
        let final_block = format::block_count(size) - 1;
        let spans: Vec<_> = format::split_range(offset, len).collect();
        let (first, count) = (spans[0].block, spans.len() as u64);
        let mut stored = Zeroizing::new(self.read_stored(first, count, size)?);
        let mut pos = 0usize;
        let mut out = 0usize;
        for s in &spans {
            let slen = format::stored_block_len(format::block_plain_len(s.block, size)) as usize;
            let plain = self.key.open_block(
                s.block,
                s.block == final_block,
                &mut stored[pos..pos + slen],
            )?;
            let piece = &plain[s.skip as usize..(s.skip + s.len) as usize];
            buf[out..out + piece.len()].copy_from_slice(piece);
            out += piece.len();
            pos += slen;
        }
        Ok(out)
    }

    /// Decrypts block `index` of a file of `size` bytes (empty past the end).
    fn read_block(&self, index: u64, size: u64) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
        if format::block_plain_len(index, size) == 0 {
            return Ok(Zeroizing::new(Vec::new()));
        }
        let mut stored = Zeroizing::new(self.read_stored(index, 1, size)?);
        let is_final = index + 1 == format::block_count(size);
        let plain = self.key.open_block(index, is_final, &mut stored)?;
        Ok(Zeroizing::new(plain.to_vec()))
    }

    /// Re-encrypts block `index` of a file of `size` bytes with its plaintext
    /// zero-padded or cut to `new_len` bytes.
    fn resize_block(&self, index: u64, size: u64, new_len: u64) -> Result<(), EnvelopeError> {
        let mut plain = self.read_block(index, size)?;
        plain.resize(new_len as usize, 0);
        let mut out = Vec::with_capacity(plain.len() + BLOCK_OVERHEAD as usize);
        self.key.seal_block(index, &plain, &mut out)?;
        self.write_stored(index, &out)
    }

    /// Writes stored blocks starting at block `first`. The backing space is
    /// reserved first, so that a full disk (ENOSPC) or a file-size limit
    /// (EFBIG) fails before any byte changes: a write that stopped half-way
    /// would leave a block that no longer authenticates.
    fn write_stored(&self, first: u64, stored: &[u8]) -> Result<(), EnvelopeError> {
        let start = format::block_backing_offset(first);
        reserve(&self.file, start, stored.len() as u64)?;
        self.file.write_all_at(stored, start)?;
        Ok(())
    }

    /// Writes `data` at plaintext `offset`: partial blocks are read, merged
    /// and re-encrypted; a gap past the old end reads as zeros. All blocks
    /// go to the backing file in one system call.
    pub fn write_at(&self, data: &[u8], offset: u64) -> Result<(), EnvelopeError> {
        if data.is_empty() {
            return Ok(());
        }
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| EnvelopeError::Io(std::io::Error::from_raw_os_error(libc::EFBIG)))?;
        Self::check_limit(end)?;
        let (size, valid) = self.sized()?;
        if !valid && end >= size {
            return Err(EnvelopeError::CorruptBlock {
                block: format::block_count(size),
            });
        }
        let first = format::block_of(offset);
        let new_size = size.max(end);
        let mut out = Vec::with_capacity(data.len() + 2 * BLOCK_SIZE as usize);
        let mut plain = Zeroizing::new(Vec::with_capacity(BLOCK_SIZE as usize));
        let mut consumed = 0usize;
        for s in format::split_range(offset, data.len() as u64) {
            let new_len = format::block_plain_len(s.block, new_size);
            let piece = &data[consumed..consumed + s.len as usize];
            consumed += s.len as usize;
            if s.skip == 0 && s.len == new_len {
                self.key.seal_block(s.block, piece, &mut out)?;
                continue;
            }
            let old = self.read_block(s.block, size)?;
            plain.clear();
            plain.extend_from_slice(&old);
            plain.resize(new_len as usize, 0);
            plain[s.skip as usize..(s.skip + s.len) as usize].copy_from_slice(piece);
            self.key.seal_block(s.block, &plain, &mut out)?;
        }
        let result = self.write_stored(first, &out).and_then(|()| {
            // A partial final block before the written range becomes a
            // full block of zeros; whole blocks in between stay holes.
            // Done after the new blocks are written, so that a write the
            // backing file system refuses (EFBIG, ENOSPC) changes nothing.
            let old_final = format::block_of(size);
            if size % BLOCK_SIZE != 0 && old_final < first {
                self.resize_block(old_final, size, BLOCK_SIZE)?;
            }
            Ok(())
        });
        if result.is_err() && end > size {
            self.roll_back_to(size);
        }
        result
    }

    /// After a failed extension: cut the backing file back to a file of
    /// `size` plaintext bytes (best effort; the caller reports the error).
    fn roll_back_to(&self, size: u64) {
        if let Err(e) = self.file.set_len(format::backing_size_from_plain(size)) {
            log::warn!("could not roll back a failed extension: {e}");
        }
    }

    /// Sets the plaintext size. Shrinking re-encrypts the new final block (and
    /// so repairs a cut or extended file); growing pads the
    /// old final block, leaves holes after it, and seals the new final block,
    /// which is never a hole (see `open_block`).
    pub fn set_len(&self, new_size: u64) -> Result<(), EnvelopeError> {
        Self::check_limit(new_size)?;
        let (size, valid) = self.sized()?;
        if new_size == size && valid {
            return Ok(());
        }
        if new_size <= size {
            if new_size > 0 {
                // Re-seal the new final block: cut to its new length, or, if
                // it was a hole, sealed so that it is not one any more.
                let last = format::block_count(new_size) - 1;
                self.resize_block(last, size, format::block_plain_len(last, new_size))?;
            }
            self.file
                .set_len(format::backing_size_from_plain(new_size))?;
            return Ok(());
        }
        if !valid {
            return Err(EnvelopeError::CorruptBlock {
                block: format::block_count(size),
            });
        }
        let old_final = format::block_of(size);
        let new_final = format::block_count(new_size) - 1;
        if size % BLOCK_SIZE != 0 && old_final == new_final {
            // The partial final block stays final: pad it to the new size.
            return self.resize_block(
                old_final,
                size,
                format::block_plain_len(old_final, new_size),
            );
        }
        // Seal the new final block first (writing it sets the backing size;
        // the blocks before it are holes), then pad the old partial final
        // block to a full one. A refusal (EFBIG, ENOSPC) changes nothing.
        let zeros = Zeroizing::new(vec![
            0u8;
            format::block_plain_len(new_final, new_size) as usize
        ]);
        let mut out = Vec::with_capacity(zeros.len() + BLOCK_OVERHEAD as usize);
        self.key.seal_block(new_final, &zeros, &mut out)?;
        let result = self.write_stored(new_final, &out).and_then(|()| {
            if size % BLOCK_SIZE != 0 {
                self.resize_block(old_final, size, BLOCK_SIZE)?;
            }
            Ok(())
        });
        if result.is_err() {
            self.roll_back_to(size);
        }
        result
    }

    /// Flushes data (and metadata unless `data_only`) to stable storage.
    pub fn sync(&self, data_only: bool) -> Result<(), EnvelopeError> {
        if data_only {
            self.file.sync_data()?;
        } else {
            self.file.sync_all()?;
        }
        Ok(())
    }
}

/// fallocate(KEEP_SIZE) of `len` bytes at `offset`: allocates without
/// changing the file size. A file system without fallocate skips it.
fn reserve(file: &File, offset: u64, len: u64) -> Result<(), EnvelopeError> {
    match os::space::fallocate(file, libc::FALLOC_FL_KEEP_SIZE, offset, len) {
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
        r => Ok(r?),
    }
}

/// Encrypts everything `input` yields into `output` (an empty file opened
/// read-write) under `key_id`, in exactly the format the mount uses; returns
/// the plaintext bytes written. The result can be copied into a backing
/// directory and read through a mount of the same keystore.
pub fn seal(
    input: &mut dyn Read,
    output: File,
    ks: &dyn KeyService,
    caller: &Caller,
    key_id: &str,
) -> Result<u64, EnvelopeError> {
    let enc = EncryptedFile::create(output, ks, caller, key_id)?;
    let mut buf = Zeroizing::new(vec![0u8; (STREAM_BLOCKS * BLOCK_SIZE) as usize]);
    let mut total = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match input.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        if filled == 0 {
            break;
        }
        enc.write_at(&buf[..filled], total)?;
        total += filled as u64;
        if filled < buf.len() {
            break;
        }
    }
    enc.sync(false)?;
    Ok(total)
}

/// Decrypts the encrypted file `input` (sealed, or a backing file of a
/// mount) into `output`; returns the plaintext bytes written. Refuses what a
/// read through the mount refuses: a backing size kmsfs cannot produce (a cut
/// or extended tail) before writing anything, and otherwise fails on the
/// first block that does not authenticate; what was written before stays.
pub fn unseal(
    input: File,
    output: &mut dyn Write,
    ks: &dyn KeyService,
    caller: &Caller,
) -> Result<u64, EnvelopeError> {
    let enc = EncryptedFile::open(input, ks, caller)?;
    let size = enc.checked_plain_size()?;
    let mut buf = Zeroizing::new(vec![0u8; (STREAM_BLOCKS * BLOCK_SIZE) as usize]);
    let mut pos = 0u64;
    while pos < size {
        let n = enc.read_at(&mut buf, pos)?;
        if n == 0 {
            break;
        }
        output.write_all(&buf[..n])?;
        pos += n as u64;
    }
    Ok(pos)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::kms::{DataKey, Decrypted, Encrypted, KeyMetadata, KeyOrigin, KeyState};
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A one-key service for unit tests: wraps with AES-GCM, AAD = context.
    pub(crate) struct TestKeys {
        key: AeadKey,
        pub(crate) refuse: AtomicBool,
    }

    impl TestKeys {
        pub(crate) fn new() -> Self {
            Self {
                key: AeadKey::new(&Key256::random().unwrap()),
                refuse: AtomicBool::new(false),
            }
        }
        fn check(&self) -> Result<(), KmsError> {
            if self.refuse.load(Ordering::SeqCst) {
                return Err(KmsError::Disabled {
                    key_id: "test".into(),
                });
            }
            Ok(())
        }
    }

    impl KeyService for TestKeys {
        fn generate_data_key(
            &self,
            _: &Caller,
            key_id: &str,
            spec: DataKeySpec,
            ctx: &EncryptionContext,
        ) -> Result<DataKey, KmsError> {
            self.check()?;
            let p = crate::crypto::SecretBytes::random(spec.byte_len()?).unwrap();
            Ok(DataKey {
                key_id: key_id.into(),
                key_material_version: 1,
                ciphertext_blob: self.key.seal(&ctx.encode(), p.expose()).unwrap(),
                plaintext: p,
            })
        }
        fn decrypt(
            &self,
            _: &Caller,
            blob: &[u8],
            ctx: &EncryptionContext,
            _: Option<&str>,
        ) -> Result<Decrypted, KmsError> {
            self.check()?;
            let plaintext = self
                .key
                .open(&ctx.encode(), blob)
                .map_err(|_| KmsError::invalid_ciphertext("bad blob".into()))?;
            Ok(Decrypted {
                key_id: "test".into(),
                key_material_version: 1,
                plaintext,
            })
        }
        fn encrypt(
            &self,
            _: &Caller,
            key_id: &str,
            plaintext: &[u8],
            ctx: &EncryptionContext,
        ) -> Result<Encrypted, KmsError> {
            self.check()?;
            Ok(Encrypted {
                key_id: key_id.into(),
                ciphertext_blob: self.key.seal(&ctx.encode(), plaintext).unwrap(),
                source_key_id: None,
            })
        }
        fn re_encrypt(
            &self,
            caller: &Caller,
            blob: &[u8],
            source_ctx: &EncryptionContext,
            destination_key_id: &str,
            destination_ctx: &EncryptionContext,
        ) -> Result<Encrypted, KmsError> {
            let source = self.decrypt(caller, blob, source_ctx, None)?;
            let again = self.encrypt(
                caller,
                destination_key_id,
                source.plaintext.expose(),
                destination_ctx,
            )?;
            Ok(Encrypted {
                source_key_id: Some(source.key_id),
                ..again
            })
        }
        /// Any key id names the one key; disabled while `refuse` is set.
        fn describe_key(&self, _: &Caller, key_id: &str) -> Result<KeyMetadata, KmsError> {
            let enabled = !self.refuse.load(Ordering::SeqCst);
            Ok(KeyMetadata {
                key_id: key_id.into(),
                arn: format!("arn:kmsfs:kms:local:test:key/{key_id}"),
                description: "unit-test key".into(),
                creation_date: 0,
                key_state: if enabled {
                    KeyState::Enabled
                } else {
                    KeyState::Disabled
                },
                enabled,
                deletion_date: None,
                pending_deletion_window_in_days: None,
                origin: KeyOrigin::Kms,
                key_usage: "ENCRYPT_DECRYPT",
                key_spec: "SYMMETRIC_DEFAULT",
                current_key_material_version: 1,
                expiration_model: None,
                valid_to: None,
            })
        }
        fn generation(&self) -> u64 {
            0
        }
    }

    const CALLER: Caller = Caller {
        uid: 0,
        gid: 0,
        pid: 0,
    };

    /// The test service is a whole one-key service: what it encrypts opens
    /// only under the same context, ReEncrypt moves a blob to another
    /// context, and `refuse` disables the key for every operation.
    #[test]
    fn test_keys_serve_every_operation() {
        let ks = TestKeys::new();
        let (a, b) = (
            EncryptionContext::with("file", "a"),
            EncryptionContext::with("file", "b"),
        );
        let blob = ks.encrypt(&CALLER, "k", b"secret", &a).unwrap();
        assert_eq!(blob.key_id, "k");
        let open = |blob: &[u8], ctx| ks.decrypt(&CALLER, blob, ctx, None);
        assert_eq!(
            open(&blob.ciphertext_blob, &a).unwrap().plaintext.expose(),
            b"secret"
        );
        assert!(open(&blob.ciphertext_blob, &b).is_err());
        let moved = ks
            .re_encrypt(&CALLER, &blob.ciphertext_blob, &a, "k2", &b)
            .unwrap();
        assert_eq!(
            (moved.key_id.as_str(), moved.source_key_id.as_deref()),
            ("k2", Some("test"))
        );
        assert_eq!(
            open(&moved.ciphertext_blob, &b).unwrap().plaintext.expose(),
            b"secret"
        );
        assert!(open(&moved.ciphertext_blob, &a).is_err());
        assert_eq!(
            ks.describe_key(&CALLER, "k").unwrap().key_state,
            KeyState::Enabled
        );
        ks.refuse.store(true, Ordering::SeqCst);
        assert_eq!(
            ks.describe_key(&CALLER, "k").unwrap().key_state,
            KeyState::Disabled
        );
        assert!(ks.encrypt(&CALLER, "k", b"x", &a).is_err());
        assert!(
            ks.re_encrypt(&CALLER, &moved.ciphertext_blob, &b, "k", &a)
                .is_err()
        );
    }

    fn temp_file(dir: &std::path::Path, name: &str) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join(name))
            .unwrap()
    }

    fn tempdir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "kmsfs-envelope-{}-{}",
            std::process::id(),
            u64::from_be_bytes(random_array().unwrap())
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A deterministic generator for test data and operations.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn check_model(f: &EncryptedFile, model: &[u8]) {
        assert_eq!(f.plain_size().unwrap(), model.len() as u64);
        let mut buf = vec![0u8; model.len() + 10];
        let n = f.read_at(&mut buf, 0).unwrap();
        assert_eq!(n, model.len());
        assert!(buf[..n] == *model, "content differs from model");
        let backing = f.file().metadata().unwrap().len();
        assert_eq!(backing, format::backing_size_from_plain(model.len() as u64));
    }

    #[test]
    fn random_operations_match_a_model() {
        let ks = TestKeys::new();
        let dir = tempdir();
        let f = EncryptedFile::create(temp_file(&dir, "a"), &ks, &CALLER, "k").unwrap();
        let mut model: Vec<u8> = Vec::new();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for step in 0..3000 {
            match rng.below(10) {
                0 => {
                    let len = rng.below(3 * BLOCK_SIZE) as usize;
                    f.set_len(len as u64).unwrap();
                    model.resize(len, 0);
                }
                1..=6 => {
                    let off = rng.below(model.len() as u64 + 2 * BLOCK_SIZE) as usize;
                    let len = 1 + rng.below(2 * BLOCK_SIZE + 100) as usize;
                    let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                    f.write_at(&data, off as u64).unwrap();
                    if model.len() < off + len {
                        model.resize(off + len, 0);
                    }
                    model[off..off + len].copy_from_slice(&data);
                }
                _ => {
                    let off = rng.below(model.len() as u64 + 10);
                    let len = rng.below(2 * BLOCK_SIZE) as usize;
                    let mut buf = vec![0u8; len];
                    let n = f.read_at(&mut buf, off).unwrap();
                    let lo = (off as usize).min(model.len());
                    let hi = (lo + len).min(model.len());
                    assert_eq!(&buf[..n], &model[lo..hi], "step {step}");
                }
            }
            if step % 100 == 0 {
                check_model(&f, &model);
            }
        }
        check_model(&f, &model);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn sizes_round_trip_through_seal_and_unseal() {
        let ks = TestKeys::new();
        let dir = tempdir();
        for size in [0usize, 1, 4095, 4096, 4097, (1 << 20) + 1] {
            let data: Vec<u8> = (0..size).map(|i| (i * 7 + 3) as u8).collect();
            let n = seal(&mut &data[..], temp_file(&dir, "s"), &ks, &CALLER, "k").unwrap();
            assert_eq!(n as usize, size);
            let backing = std::fs::read(dir.join("s")).unwrap();
            assert_eq!(
                backing.len() as u64,
                format::backing_size_from_plain(size as u64)
            );
            let mut out = Vec::new();
            let f = File::open(dir.join("s")).unwrap();
            assert_eq!(unseal(f, &mut out, &ks, &CALLER).unwrap() as usize, size);
            assert!(out == data, "size {size}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn ciphertext_is_not_plaintext_and_tampering_is_detected() {
        let ks = TestKeys::new();
        let dir = tempdir();
        let marker = b"MARKER-0123456789-PLAINTEXT".repeat(400);
        seal(&mut &marker[..], temp_file(&dir, "s"), &ks, &CALLER, "k").unwrap();
        let path = dir.join("s");
        let clean = std::fs::read(&path).unwrap();
        assert!(!clean.windows(16).any(|w| w == &marker[..16]));

        // A flipped byte in block 1 fails block 1 only.
        let mut bad = clean.clone();
        bad[format::block_backing_offset(1) as usize + 100] ^= 0x01;
        std::fs::write(&path, &bad).unwrap();
        let f = EncryptedFile::open(File::open(&path).unwrap(), &ks, &CALLER).unwrap();
        let mut buf = vec![0u8; 4096];
        assert_eq!(f.read_at(&mut buf, 0).unwrap(), 4096);
        assert!(matches!(
            f.read_at(&mut buf, 4096),
            Err(EnvelopeError::CorruptBlock { block: 1 })
        ));

        // Swapped blocks 0 and 1.
        let mut swapped = clean.clone();
        let (a, b) = (
            format::block_backing_offset(0) as usize,
            format::block_backing_offset(1) as usize,
        );
        let n = format::CIPHER_BLOCK_SIZE as usize;
        let blk0 = clean[a..a + n].to_vec();
        swapped[a..a + n].copy_from_slice(&clean[b..b + n]);
        swapped[b..b + n].copy_from_slice(&blk0);
        std::fs::write(&path, &swapped).unwrap();
        let f = EncryptedFile::open(File::open(&path).unwrap(), &ks, &CALLER).unwrap();
        assert!(matches!(
            f.read_at(&mut buf, 0),
            Err(EnvelopeError::CorruptBlock { block: 0 })
        ));

        // A truncated last block.
        std::fs::write(&path, &clean[..clean.len() - 1]).unwrap();
        let f = EncryptedFile::open(File::open(&path).unwrap(), &ks, &CALLER).unwrap();
        let last = format::block_of(f.plain_size().unwrap());
        assert!(matches!(
            f.read_at(&mut buf, last * BLOCK_SIZE),
            Err(EnvelopeError::CorruptBlock { .. })
        ));

        // A header whose file id changed no longer verifies.
        let mut hdr = clean.clone();
        hdr[20] ^= 1;
        std::fs::write(&path, &hdr).unwrap();
        assert!(matches!(
            EncryptedFile::open(File::open(&path).unwrap(), &ks, &CALLER),
            Err(EnvelopeError::CorruptHeader(_))
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn blocks_from_another_file_are_refused() {
        let ks = TestKeys::new();
        let dir = tempdir();
        let data = vec![5u8; 8192];
        seal(&mut &data[..], temp_file(&dir, "a"), &ks, &CALLER, "k").unwrap();
        seal(&mut &data[..], temp_file(&dir, "b"), &ks, &CALLER, "k").unwrap();
        let a = std::fs::read(dir.join("a")).unwrap();
        let mut b = std::fs::read(dir.join("b")).unwrap();
        let off = format::block_backing_offset(0) as usize;
        b[off..off + 4124].copy_from_slice(&a[off..off + 4124]);
        std::fs::write(dir.join("b"), &b).unwrap();
        let f = EncryptedFile::open(File::open(dir.join("b")).unwrap(), &ks, &CALLER).unwrap();
        let mut buf = vec![0u8; 4096];
        assert!(matches!(
            f.read_at(&mut buf, 0),
            Err(EnvelopeError::CorruptBlock { block: 0 })
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn refusal_of_the_key_service_passes_through() {
        let ks = TestKeys::new();
        let dir = tempdir();
        seal(&mut &b"x"[..], temp_file(&dir, "a"), &ks, &CALLER, "k").unwrap();
        ks.refuse.store(true, Ordering::SeqCst);
        let e = EncryptedFile::open(File::open(dir.join("a")).unwrap(), &ks, &CALLER).unwrap_err();
        assert!(matches!(e, EnvelopeError::Kms(ref k) if k.is_access_refusal()));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn cut_or_zero_extended_files_fail_at_their_end() {
        let ks = TestKeys::new();
        let dir = tempdir();
        let data: Vec<u8> = (0..8192u32).map(|i| i as u8).collect();
        seal(
            &mut &data[..4100],
            temp_file(&dir, "cut"),
            &ks,
            &CALLER,
            "k",
        )
        .unwrap();
        seal(&mut &data[..], temp_file(&dir, "ext"), &ks, &CALLER, "k").unwrap();
        let open = |name: &str| {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(dir.join(name))
                .unwrap();
            EncryptedFile::open(f, &ks, &CALLER).unwrap()
        };
        // Cut 1 to 28 bytes into the final block: what is left cannot be a block.
        for cut in [1u64, 5, 27] {
            let f = open("cut");
            let len = f.file().metadata().unwrap().len();
            f.file().set_len(len - cut).unwrap();
            let mut buf = vec![0u8; 8192];
            assert_eq!(
                f.read_at(&mut buf[..100], 0).unwrap(),
                100,
                "the start still reads"
            );
            assert!(matches!(
                f.read_at(&mut buf, 0),
                Err(EnvelopeError::CorruptBlock { block: 1 })
            ));
            let mut out = Vec::new();
            assert!(unseal(File::open(dir.join("cut")).unwrap(), &mut out, &ks, &CALLER).is_err());
            f.file().set_len(len).unwrap();
        }
        // Zeros appended: a partial or a whole zero block at the end.
        for extra in [500u64, format::CIPHER_BLOCK_SIZE] {
            let f = open("ext");
            let len = f.file().metadata().unwrap().len();
            f.file().set_len(len + extra).unwrap();
            let mut buf = vec![0u8; 3 * 4096];
            assert!(matches!(
                f.read_at(&mut buf, 0),
                Err(EnvelopeError::CorruptBlock { block: 2 })
            ));
            assert!(
                f.write_at(b"x", 8192 + 10).is_err(),
                "writes past a damaged end are refused"
            );
            f.file().set_len(len).unwrap();
            assert_eq!(f.read_at(&mut buf, 0).unwrap(), 8192);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_hole_that_becomes_the_final_block_is_sealed() {
        let ks = TestKeys::new();
        let dir = tempdir();
        let f = EncryptedFile::create(temp_file(&dir, "h"), &ks, &CALLER, "k").unwrap();
        f.write_at(b"head", 0).unwrap();
        f.write_at(b"tail", 10 * BLOCK_SIZE).unwrap();
        // Blocks 1..=9 are holes; cut the file inside and at the end of them.
        for size in [8 * BLOCK_SIZE, 5 * BLOCK_SIZE + 7, 2 * BLOCK_SIZE] {
            f.set_len(size).unwrap();
            let mut buf = vec![9u8; size as usize];
            assert_eq!(f.read_at(&mut buf, 0).unwrap(), size as usize);
            assert_eq!(&buf[..4], b"head");
            assert!(buf[4..].iter().all(|&b| b == 0));
        }
        // Growing seals the new final block too, whole or partial.
        for size in [20 * BLOCK_SIZE, 30 * BLOCK_SIZE + 1] {
            f.set_len(size).unwrap();
            let mut buf = vec![9u8; 4096];
            let last = format::block_count(size) - 1;
            let n = f.read_at(&mut buf, last * BLOCK_SIZE).unwrap();
            assert_eq!(n as u64, format::block_plain_len(last, size));
            assert!(buf[..n].iter().all(|&b| b == 0));
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn writes_past_the_size_limit_change_nothing() {
        let ks = TestKeys::new();
        let dir = tempdir();
        let f = EncryptedFile::create(temp_file(&dir, "big"), &ks, &CALLER, "k").unwrap();
        f.write_at(b"0123456789", 0).unwrap();
        let before = std::fs::read(dir.join("big")).unwrap();
        // Past what kmsfs allows: refused before anything is written.
        for off in [u64::MAX - 3, format::MAX_PLAIN_SIZE] {
            let e = f.write_at(b"x", off).unwrap_err();
            assert!(
                matches!(e, EnvelopeError::Io(ref io) if io.raw_os_error() == Some(libc::EFBIG)),
                "{e}"
            );
        }
        assert!(f.set_len(format::MAX_PLAIN_SIZE + 1).is_err());
        assert!(
            std::fs::read(dir.join("big")).unwrap() == before,
            "file changed"
        );
        // Past what the backing file system allows (ext4: 16 TiB): whatever
        // it refuses must leave the file as it was.
        for off in [1u64 << 50, 1u64 << 62] {
            if f.write_at(b"x", off).is_err() {
                assert!(
                    std::fs::read(dir.join("big")).unwrap() == before,
                    "changed at {off}"
                );
            } else {
                f.set_len(10).unwrap();
            }
            if f.set_len(off).is_err() {
                assert!(
                    std::fs::read(dir.join("big")).unwrap() == before,
                    "changed at {off}"
                );
            } else {
                f.set_len(10).unwrap();
            }
        }
        let mut buf = [0u8; 16];
        assert_eq!(f.read_at(&mut buf, 0).unwrap(), 10);
        assert_eq!(&buf[..10], b"0123456789");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn holes_read_as_zeros_and_stay_sparse() {
        let ks = TestKeys::new();
        let dir = tempdir();
        let f = EncryptedFile::create(temp_file(&dir, "h"), &ks, &CALLER, "k").unwrap();
        f.write_at(b"abc", 0).unwrap();
        f.set_len(100 * BLOCK_SIZE + 5).unwrap();
        f.write_at(b"end", 100 * BLOCK_SIZE + 5).unwrap();
        let mut buf = vec![1u8; 8192];
        assert_eq!(f.read_at(&mut buf, 0).unwrap(), 8192);
        assert_eq!(&buf[..3], b"abc");
        assert!(buf[3..].iter().all(|&b| b == 0));
        let mut tail = [0u8; 8];
        assert_eq!(f.read_at(&mut tail, 100 * BLOCK_SIZE).unwrap(), 8);
        assert_eq!(&tail, b"\0\0\0\0\0end");
        use std::os::unix::fs::MetadataExt;
        let blocks = f.file().metadata().unwrap().blocks();
        assert!(
            blocks * 512 < 40 * 4096,
            "holes were written out: {blocks} sectors"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
