//! Sparse encrypted files: fallocate (allocate, KEEP_SIZE, PUNCH_HOLE) and
//! SEEK_DATA/SEEK_HOLE, mapped onto ranges of whole blocks in the backing
//! file. A backing range of zeros (a hole) reads as a block of zeros, so
//! punching whole blocks punches the backing file; partial blocks at the edges
//! and the file's final block (never a hole) are written as zeros through the
//! encrypted file.

use std::io;

use super::{EncryptedFile, EnvelopeError};
use crate::format::{self, BLOCK_SIZE};
use crate::os;

const KEEP_SIZE: i32 = libc::FALLOC_FL_KEEP_SIZE;
const PUNCH_HOLE: i32 = libc::FALLOC_FL_PUNCH_HOLE;
const SEEK_DATA: i32 = libc::SEEK_DATA;

/// Blocks that SEEK_DATA and SEEK_HOLE read per system call (about 1 MiB).
const SCAN_BLOCKS: u64 = 256;

fn errno(code: i32) -> EnvelopeError {
    EnvelopeError::Io(io::Error::from_raw_os_error(code))
}

impl EncryptedFile {
    /// fallocate(2) of `len` plaintext bytes at `offset`; `mode` is 0,
    /// KEEP_SIZE, or PUNCH_HOLE|KEEP_SIZE (else EOPNOTSUPP).
    pub fn fallocate(&self, offset: u64, len: u64, mode: i32) -> Result<(), EnvelopeError> {
        if mode & !(KEEP_SIZE | PUNCH_HOLE) != 0 {
            return Err(errno(libc::EOPNOTSUPP));
        }
        let end = offset.checked_add(len).ok_or_else(|| errno(libc::EFBIG))?;
        if mode & PUNCH_HOLE != 0 {
            if mode & KEEP_SIZE == 0 {
                return Err(errno(libc::EOPNOTSUPP));
            }
            return self.punch_hole(offset, end);
        }
        self.allocate(offset, end, mode & KEEP_SIZE != 0)
    }

    fn allocate(&self, offset: u64, end: u64, keep_size: bool) -> Result<(), EnvelopeError> {
        let start = self.layout.block_backing_offset(format::block_of(offset));
        let stop = self.layout.backing_size_from_plain(end);
        // Reserve the space in the backing file; the size stays as it is there.
        match os::space::fallocate(&self.file, KEEP_SIZE, start, stop.saturating_sub(start)) {
            Err(e) if e.raw_os_error() != Some(libc::EOPNOTSUPP) => return Err(e.into()),
            _ => {}
        }
        let size = self.plain_size()?;
        if !keep_size && end > size {
            self.set_len(end)?;
        }
        Ok(())
    }

    fn punch_hole(&self, offset: u64, end: u64) -> Result<(), EnvelopeError> {
        let size = self.plain_size()?;
        let end = end.min(size);
        if offset >= end {
            return Ok(());
        }
        let first_full = offset.div_ceil(BLOCK_SIZE);
        // The final block is never punched: a hole there would read as a file cut
        // or zero-extended outside kmsfs (EIO). It is rewritten as sealed zeros.
        let last_full = (end / BLOCK_SIZE).min(format::block_count(size) - 1);
        let zero = |from: u64, to: u64| -> Result<(), EnvelopeError> {
            if from < to {
                self.write_at(&vec![0u8; (to - from) as usize], from)?;
            }
            Ok(())
        };
        if first_full >= last_full {
            // No whole block inside the range.
            return zero(offset, end);
        }
        zero(offset, first_full * BLOCK_SIZE)?;
        let start = self.layout.block_backing_offset(first_full);
        let blen = (last_full - first_full) * self.layout.cipher_block_size();
        os::space::fallocate(&self.file, PUNCH_HOLE | KEEP_SIZE, start, blen)?;
        zero(last_full * BLOCK_SIZE, end)
    }

    /// lseek SEEK_DATA: the first offset >= `offset` in a block holding data
    /// (ENXIO at or past the end).
    pub fn seek_data(&self, offset: u64) -> Result<u64, EnvelopeError> {
        let size = self.plain_size()?;
        if offset >= size {
            return Err(errno(libc::ENXIO));
        }
        let count = format::block_count(size);
        let mut b = format::block_of(offset);
        while b < count {
            // What the backing file holds as a hole stores no block: skip it.
            let at = self.layout.block_backing_offset(b);
            let d = match os::space::lseek(&self.file, at, SEEK_DATA) {
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break,
                r => r?,
            };
            b = b.max(self.layout.block_at_backing_offset(d));
            if b >= count {
                break;
            }
            let n = SCAN_BLOCKS.min(count - b);
            if let Some(i) = self.first_stored_as(b, n, size, false)? {
                return Ok(offset.max(i * BLOCK_SIZE));
            }
            b += n;
        }
        Err(errno(libc::ENXIO))
    }

    /// lseek SEEK_HOLE: the first offset >= `offset` in a block stored as a
    /// hole, or the end of the file.
    pub fn seek_hole(&self, offset: u64) -> Result<u64, EnvelopeError> {
        let size = self.plain_size()?;
        if offset >= size {
            return Err(errno(libc::ENXIO));
        }
        let count = format::block_count(size);
        let mut b = format::block_of(offset);
        while b < count {
            let n = SCAN_BLOCKS.min(count - b);
            if let Some(i) = self.first_stored_as(b, n, size, true)? {
                return Ok(offset.max(i * BLOCK_SIZE));
            }
            b += n;
        }
        Ok(size)
    }

    /// The first of blocks `first..first+count` (of a file of `size` bytes)
    /// that is stored as a hole (`hole`) or as data (`!hole`).
    ///
    /// A hole is a block whose stored bytes are all zeros (see `open_block`),
    /// and that is read here rather than asked of the backing file system:
    /// its holes are in 4 KiB pages, which do not line up with stored blocks
    /// (4124 or 4136 bytes), so the pages at either end of a run of holes, shared with
    /// the data blocks beside it, are allocated, and a single hole between two
    /// data blocks often has no page of its own. Answering from the backing
    /// file's holes alone put data one block early and holes one block late.
    fn first_stored_as(
        &self,
        first: u64,
        count: u64,
        size: u64,
        hole: bool,
    ) -> Result<Option<u64>, EnvelopeError> {
        let stored = self.read_stored(first, count, size)?;
        let last = format::block_count(size) - 1;
        let mut at = 0usize;
        for b in first..first + count {
            let len = self
                .layout
                .stored_block_len(format::block_plain_len(b, size)) as usize;
            let bytes = stored.get(at..at + len).unwrap_or_default();
            at += len;
            // The final block is never stored as a hole (all zeros there is
            // damage), but one that reads as zeros is one to SEEK_DATA: a
            // file grown by truncate ends in a sealed block of zeros, where
            // ext4 has a hole.
            let is_hole = if b == last {
                self.read_block(b, size)?.iter().all(|&x| x == 0)
            } else {
                bytes.iter().all(|&x| x == 0)
            };
            if is_hole == hole {
                return Ok(Some(b));
            }
        }
        Ok(None)
    }
}
