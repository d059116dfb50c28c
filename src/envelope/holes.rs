//! Sparse encrypted files: fallocate (allocate, KEEP_SIZE, PUNCH_HOLE) and
//! SEEK_DATA/SEEK_HOLE, mapped onto ranges of whole blocks in the backing
//! file. A backing range of zeros (a hole) reads as a block of zeros, so
//! punching whole blocks punches the backing file; partial blocks at the edges
//! and the file's final block (never a hole) are written as zeros through the
//! encrypted file.

use std::io;

use super::{EncryptedFile, EnvelopeError};
use crate::format::{self, BLOCK_SIZE, CIPHER_BLOCK_SIZE};
use crate::os;

const KEEP_SIZE: i32 = libc::FALLOC_FL_KEEP_SIZE;
const PUNCH_HOLE: i32 = libc::FALLOC_FL_PUNCH_HOLE;

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
        let start = format::block_backing_offset(format::block_of(offset));
        let stop = format::backing_size_from_plain(end);
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
        let start = format::block_backing_offset(first_full);
        let blen = (last_full - first_full) * CIPHER_BLOCK_SIZE;
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
        let from = format::block_backing_offset(format::block_of(offset));
        let d = os::space::lseek(&self.file, from, libc::SEEK_DATA)?;
        let pos = offset.max(format::block_at_backing_offset(d) * BLOCK_SIZE);
        if pos >= size {
            Err(errno(libc::ENXIO))
        } else {
            Ok(pos)
        }
    }

    /// lseek SEEK_HOLE: the first offset >= `offset` that starts a run of
    /// blocks stored entirely as a hole, or the end of the file. Conservative:
    /// a block only partly in a backing hole counts as data.
    pub fn seek_hole(&self, offset: u64) -> Result<u64, EnvelopeError> {
        let size = self.plain_size()?;
        if offset >= size {
            return Err(errno(libc::ENXIO));
        }
        let backing_len = self.file.metadata()?.len();
        let mut b = format::block_of(offset);
        loop {
            if b * BLOCK_SIZE >= size {
                return Ok(size);
            }
            let start = format::block_backing_offset(b);
            let stop = format::block_backing_offset(b + 1).min(backing_len);
            let d = match os::space::lseek(&self.file, start, libc::SEEK_DATA) {
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                    return Ok(offset.max(b * BLOCK_SIZE));
                }
                r => r?,
            };
            if d >= stop {
                return Ok(offset.max(b * BLOCK_SIZE));
            }
            let h = os::space::lseek(&self.file, d, libc::SEEK_HOLE)?;
            if h >= backing_len {
                return Ok(size);
            }
            b = (b + 1).max(format::first_block_from_backing(h));
        }
    }
}
