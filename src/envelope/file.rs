//! An encrypted file over a backing file: its header and wrapped data key,
//! and block-wise positioned read/write with read-modify-write of partial
//! blocks.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use zeroize::Zeroizing;

use super::key::SealerState;
use super::{EnvelopeError, FileKey, file_context};
use crate::crypto::random_array;
use crate::format::{self, BLOCK_SIZE, FileId, FormatError, HEADER_LEN, Header, Layout, Slot};
use crate::kms::{DataKey, DataKeySpec, KeyService, KeyServiceExt, RequestContext};
use crate::os;

/// A data key made for one new file: a random file id and a data key bound
/// to it by the encryption context (`file_context`), as `EncryptedFile::create`
/// asks for one. Made ahead of the file it goes to by the mount's pool of
/// data keys; either way it goes to one file only (`create_with` takes it).
/// The plaintext key is zeroized on drop; Debug shows none of it.
#[derive(Debug)]
pub struct FreshKey {
    /// The file id the key is bound to, and the new file's.
    pub file_id: FileId,
    /// The data key: plaintext and wrapped.
    pub key: DataKey,
}

impl FreshKey {
    /// A random file id and a data key for it under `key_id`, from `ks`
    /// (GenerateDataKey, AES-256, in the file's encryption context).
    pub fn generate(
        ks: &dyn KeyService,
        rc: &RequestContext<'_>,
        key_id: &str,
    ) -> Result<Self, EnvelopeError> {
        let file_id: FileId =
            random_array().map_err(|e| EnvelopeError::Io(std::io::Error::other(e)))?;
        let key = ks.generate_data_key(rc, key_id, DataKeySpec::Aes256, &file_context(&file_id))?;
        Ok(Self { file_id, key })
    }
}

/// An open encrypted file: the backing file plus its data key, and the
/// header that key was unwrapped from (or created with). Methods take
/// `&self` and use positioned I/O; callers serialise writers against readers
/// and each other (the mount holds a per-inode lock).
#[derive(Debug)]
pub struct EncryptedFile {
    pub(super) file: File,
    header: Header,
    key: Arc<FileKey>,
    /// How the blocks are stored: the header's and the key's layout.
    pub(super) layout: Layout,
}

impl EncryptedFile {
    /// Makes `file` (empty, opened read-write) a new encrypted file of
    /// `layout`: asks the key service for a data key under `key_id` bound to
    /// a fresh file id and writes the header. For the mount, `rc` names the
    /// file and the process the key service's audit record names.
    pub fn create(
        file: File,
        ks: &dyn KeyService,
        rc: &RequestContext<'_>,
        key_id: &str,
        layout: Layout,
    ) -> Result<Self, EnvelopeError> {
        Self::create_with(file, FreshKey::generate(ks, rc, key_id)?, layout)
    }

    /// Makes `file` (empty, opened read-write) a new encrypted file of
    /// `layout` with `fresh`, a data key made for it (its file id becomes
    /// the file's): writes the header. `fresh` is used up.
    pub fn create_with(file: File, fresh: FreshKey, layout: Layout) -> Result<Self, EnvelopeError> {
        let FreshKey { file_id, key: dk } = fresh;
        let header = Header::new(
            layout,
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
            layout,
            file_id,
            dk.key_id,
            dk.key_material_version,
            dk.plaintext.expose(),
        )?;
        Ok(Self {
            file,
            header,
            key: Arc::new(key),
            layout,
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

    /// Unwraps the data key of the header's current slot through the key
    /// service. For a file open in the mount, `rc` names the file and the
    /// process the audit record names.
    pub fn unwrap_key(
        header: &Header,
        ks: &dyn KeyService,
        rc: &RequestContext<'_>,
    ) -> Result<FileKey, EnvelopeError> {
        let slot = header
            .active()
            .ok_or(EnvelopeError::CorruptHeader(FormatError::NoValidSlot))?;
        let context = file_context(&header.file_id);
        let d = ks.decrypt(rc, &slot.wrapped_key, &context, None)?;
        FileKey::new(
            header.layout(),
            header.file_id,
            d.key_id,
            d.key_material_version,
            d.plaintext.expose(),
        )
    }

    /// Opens an existing encrypted file: reads the header and unwraps its key.
    pub fn open(
        file: File,
        ks: &dyn KeyService,
        rc: &RequestContext<'_>,
    ) -> Result<Self, EnvelopeError> {
        let header = Self::read_header(&file)?;
        let key = Self::unwrap_key(&header, ks, rc)?;
        Self::with_key(file, header, Arc::new(key))
    }

    /// An encrypted file over `file` whose key, unwrapped from `header`, is
    /// already known (a cached key). Refused when the key was made for
    /// another layout than the header names (a header whose version was
    /// changed after its key was cached).
    pub fn with_key(file: File, header: Header, key: Arc<FileKey>) -> Result<Self, EnvelopeError> {
        let layout = header.layout();
        if key.layout() != layout || key.file_id != header.file_id {
            return Err(EnvelopeError::Mismatch(
                "the header changed since its data key was unwrapped".into(),
            ));
        }
        Ok(Self {
            file,
            header,
            key,
            layout,
        })
    }

    /// How this file's blocks are stored.
    pub fn layout(&self) -> Layout {
        self.layout
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
        Ok(self
            .layout
            .plain_size_from_backing(self.file.metadata()?.len()))
    }

    /// The plaintext size and whether the backing size is one kmsfs can
    /// produce (false: the file was cut or extended outside kmsfs).
    fn sized(&self) -> Result<(u64, bool), EnvelopeError> {
        let len = self.file.metadata()?.len();
        Ok((
            self.layout.plain_size_from_backing(len),
            self.layout.is_valid_backing_size(len),
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
    fn check_limit(&self, end: u64) -> Result<(), EnvelopeError> {
        if end > self.layout.max_plain_size() {
            return Err(EnvelopeError::Io(std::io::Error::from_raw_os_error(
                libc::EFBIG,
            )));
        }
        Ok(())
    }

    /// Reads the stored blocks `first..first+count` of a file of `size`
    /// plaintext bytes with one system call; returns the bytes read and the
    /// stored length of each block.
    pub(super) fn read_stored(
        &self,
        first: u64,
        count: u64,
        size: u64,
    ) -> Result<Vec<u8>, EnvelopeError> {
        let l = self.layout;
        let start = l.block_backing_offset(first);
        let end = l.block_backing_offset(first + count - 1)
            + l.stored_block_len(format::block_plain_len(first + count - 1, size));
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
        let mut opener = self.key.opener();
        for s in &spans {
            let slen = self
                .layout
                .stored_block_len(format::block_plain_len(s.block, size))
                as usize;
            let plain = opener.open_block(
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
    pub(super) fn read_block(
        &self,
        index: u64,
        size: u64,
    ) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
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
        let mut out = Vec::with_capacity(plain.len() + self.layout.overhead() as usize);
        self.key.seal_block(index, &plain, &mut out)?;
        self.write_stored(index, &out)
    }

    /// Block `index`, the final block of a file of `size` bytes, stops being
    /// final: a partial one is padded to a full block, and one that reads as
    /// zeros becomes a hole (stored as zeros), for the final block is sealed
    /// even when it is a hole, and a file grown by truncate or a write past
    /// its end has no data there (SEEK_DATA says so, as ext4 does).
    fn pad_to_full(&self, index: u64, size: u64) -> Result<(), EnvelopeError> {
        if self.read_block(index, size)?.iter().all(|&b| b == 0) {
            return self.write_stored(index, &vec![0u8; self.layout.cipher_block_size() as usize]);
        }
        if !size.is_multiple_of(BLOCK_SIZE) {
            self.resize_block(index, size, BLOCK_SIZE)?;
        }
        Ok(())
    }

    /// Writes stored blocks starting at block `first`. The backing space is
    /// reserved first, so that a full disk (ENOSPC) or a file-size limit
    /// (EFBIG) fails before any byte changes: a write that stopped half-way
    /// would leave a block that no longer authenticates.
    fn write_stored(&self, first: u64, stored: &[u8]) -> Result<(), EnvelopeError> {
        let start = self.layout.block_backing_offset(first);
        reserve(&self.file, start, stored.len() as u64)?;
        self.file.write_all_at(stored, start)?;
        Ok(())
    }

    /// Writes `data` at plaintext `offset`: partial blocks are read, merged
    /// and re-encrypted; a gap past the old end reads as zeros. All blocks
    /// go to the backing file in one system call.
    pub fn write_at(&self, data: &[u8], offset: u64) -> Result<(), EnvelopeError> {
        let whole = WholeBlocks::seal(&self.key, data, offset)?;
        self.write_sealed(data, offset, whole)
    }

    /// `write_at` with the blocks that `data` covers whole already sealed
    /// (`WholeBlocks::seal`, which needs no lock: the mount seals them
    /// before it takes the file's exclusive lock, so that the WRITEs of one
    /// flush seal on several threads). The partial blocks at either end
    /// are read, merged and sealed here, under the caller's lock.
    pub fn write_sealed(
        &self,
        data: &[u8],
        offset: u64,
        whole: WholeBlocks,
    ) -> Result<(), EnvelopeError> {
        if data.is_empty() {
            return Ok(());
        }
        if whole.file_id != self.key.file_id || whole.offset != offset || whole.len != data.len() {
            return Err(EnvelopeError::Mismatch(
                "blocks sealed for another write".into(),
            ));
        }
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| EnvelopeError::Io(std::io::Error::from_raw_os_error(libc::EFBIG)))?;
        self.check_limit(end)?;
        let (size, valid) = self.sized()?;
        if !valid && end >= size {
            return Err(EnvelopeError::CorruptBlock {
                block: format::block_count(size),
            });
        }
        let first = format::block_of(offset);
        let new_size = size.max(end);
        let cbs = self.layout.cipher_block_size() as usize;
        let head_slot = whole.head_slot;
        let mut out = whole.out;
        // The sealer of the whole blocks goes on: one first nonce half, and
        // in layout 2 one key derivation, for the whole write.
        let mut sealer = self.key.resume(whole.sealer)?;
        let mut head = Vec::new();
        let mut plain = Zeroizing::new(Vec::with_capacity(BLOCK_SIZE as usize));
        let mut consumed = 0usize;
        for (i, s) in format::split_range(offset, data.len() as u64).enumerate() {
            let new_len = format::block_plain_len(s.block, new_size);
            let piece = &data[consumed..consumed + s.len as usize];
            consumed += s.len as usize;
            if s.is_full() && whole.blocks > 0 {
                // Sealed already, in `out`.
                continue;
            }
            // Before the whole blocks (into its slot) or after them.
            let dest = if i == 0 && head_slot {
                &mut head
            } else {
                &mut out
            };
            if s.skip == 0 && s.len == new_len {
                sealer.seal_block(s.block, piece, dest)?;
                continue;
            }
            let old = self.read_block(s.block, size)?;
            plain.clear();
            plain.extend_from_slice(&old);
            plain.resize(new_len as usize, 0);
            plain[s.skip as usize..(s.skip + s.len) as usize].copy_from_slice(piece);
            sealer.seal_block(s.block, &plain, dest)?;
        }
        if head_slot {
            // A partial first block before whole ones is never final: it
            // fills its slot exactly.
            match out.get_mut(..cbs) {
                Some(slot) if head.len() == cbs => slot.copy_from_slice(&head),
                _ => {
                    return Err(EnvelopeError::Mismatch(
                        "a partial first block of another size".into(),
                    ));
                }
            }
        }
        let result = self.write_stored(first, &out).and_then(|()| {
            // The final block before the written range stops being final
            // (padded, or a hole if it reads as zeros); whole blocks in
            // between stay holes. Done after the new blocks are written, so
            // that a write the backing file system refuses (EFBIG, ENOSPC)
            // changes nothing.
            if size > 0 && format::block_count(size) - 1 < first {
                self.pad_to_full(format::block_count(size) - 1, size)?;
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
        if let Err(e) = self.file.set_len(self.layout.backing_size_from_plain(size)) {
            log::warn!("could not roll back a failed extension: {e}");
        }
    }

    /// Sets the plaintext size. Shrinking re-encrypts the new final block (and
    /// so repairs a cut or extended file); growing pads the
    /// old final block, leaves holes after it, and seals the new final block,
    /// which is never a hole (see `open_block`).
    pub fn set_len(&self, new_size: u64) -> Result<(), EnvelopeError> {
        self.check_limit(new_size)?;
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
                .set_len(self.layout.backing_size_from_plain(new_size))?;
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
        let mut out = Vec::with_capacity(zeros.len() + self.layout.overhead() as usize);
        self.key.seal_block(new_final, &zeros, &mut out)?;
        let result = self.write_stored(new_final, &out).and_then(|()| {
            if size > 0 {
                self.pad_to_full(format::block_count(size) - 1, size)?;
            }
            Ok(())
        });
        if result.is_err() {
            self.roll_back_to(size);
        }
        result
    }

    /// Checks the tag of every block without keeping any plaintext; returns
    /// the indexes of the blocks that fail, in order. A backing size kmsfs
    /// cannot produce (a cut or extended tail) counts as a bad block at the
    /// damaged end. For `fsck`: reads whole runs of blocks per system call.
    pub fn bad_blocks(&self) -> Result<Vec<u64>, EnvelopeError> {
        const RUN: u64 = 256;
        let (size, valid) = self.sized()?;
        let count = format::block_count(size);
        let mut bad = Vec::new();
        let mut first = 0;
        while first < count {
            let n = (count - first).min(RUN);
            let mut stored = match self.read_stored(first, n, size) {
                Ok(b) => Zeroizing::new(b),
                // Cut while being read: the rest is missing.
                Err(EnvelopeError::CorruptBlock { .. }) => {
                    bad.extend(first..count);
                    return Ok(bad);
                }
                Err(e) => return Err(e),
            };
            let mut pos = 0usize;
            let mut opener = self.key.opener();
            for b in first..first + n {
                let slen = self
                    .layout
                    .stored_block_len(format::block_plain_len(b, size))
                    as usize;
                if opener
                    .open_block(b, b + 1 == count, &mut stored[pos..pos + slen])
                    .is_err()
                {
                    bad.push(b);
                }
                pos += slen;
            }
            first += n;
        }
        if !valid {
            bad.push(count);
        }
        Ok(bad)
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

/// The blocks a write covers whole, sealed without the file: the stored
/// form of a whole block depends only on the data key, the block's index
/// and its 4 KiB of plaintext (a whole block is never a partial final
/// block, whatever the file's size), so it needs neither the file's size
/// nor its content, and no lock. `EncryptedFile::write_sealed` completes the
/// write under the lock.
#[derive(Debug)]
pub struct WholeBlocks {
    file_id: FileId,
    offset: u64,
    len: usize,
    /// Whole blocks sealed.
    blocks: u64,
    /// `out` starts with a slot of one stored block for a partial first
    /// block (sealed under the lock, from the file's old content).
    head_slot: bool,
    /// The stored blocks, from the first block of the write.
    out: Vec<u8>,
    /// The sealer that sealed them, for the partial blocks.
    sealer: SealerState,
}

impl WholeBlocks {
    /// Seals the blocks of `data` at plaintext `offset` that it covers whole.
    /// Fails with EFBIG, as the write would, when the write ends past the
    /// largest file the backing file system can hold.
    pub fn seal(key: &FileKey, data: &[u8], offset: u64) -> Result<Self, EnvelopeError> {
        let layout = key.layout();
        let efbig = || EnvelopeError::Io(std::io::Error::from_raw_os_error(libc::EFBIG));
        let end = offset.checked_add(data.len() as u64).ok_or_else(efbig)?;
        if end > layout.max_plain_size() {
            return Err(efbig());
        }
        let cbs = layout.cipher_block_size() as usize;
        let spans = || format::split_range(offset, data.len() as u64);
        let any_whole = spans().any(|s| s.is_full());
        let mut out = Vec::with_capacity(if any_whole { data.len() + 2 * cbs } else { 0 });
        let (mut blocks, mut head_slot) = (0, false);
        let mut sealer = key.sealer()?;
        let mut consumed = 0usize;
        // Nothing to seal here when no block is whole: all goes under the lock.
        for (i, s) in spans().enumerate() {
            if !any_whole {
                break;
            }
            let piece = &data[consumed..consumed + s.len as usize];
            consumed += s.len as usize;
            if s.is_full() {
                sealer.seal_block(s.block, piece, &mut out)?;
                blocks += 1;
            } else if i == 0 {
                out.resize(cbs, 0);
                head_slot = true;
            }
        }
        Ok(WholeBlocks {
            file_id: key.file_id,
            offset,
            len: data.len(),
            blocks,
            head_slot,
            out,
            sealer: sealer.pause(),
        })
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
