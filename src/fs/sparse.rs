//! Sparse files: fallocate (allocate, KEEP_SIZE, PUNCH_HOLE) and
//! SEEK_DATA/SEEK_HOLE, mapped onto ranges of whole blocks in the backing
//! file. A backing range of zeros (a hole) reads as a block of zeros, so
//! punching whole blocks punches the backing file; partial blocks at the edges
//! and the file's final block (never a hole) are written as zeros through the
//! encrypted file.

use super::error::FsError;
use super::open::OpenFile;
use crate::format::{self, BLOCK_SIZE, CIPHER_BLOCK_SIZE, HEADER_LEN};
use crate::os;

const KEEP_SIZE: i32 = libc::FALLOC_FL_KEEP_SIZE;
const PUNCH_HOLE: i32 = libc::FALLOC_FL_PUNCH_HOLE;

/// fallocate(2) on an open file.
pub fn fallocate(f: &OpenFile, offset: u64, len: u64, mode: i32) -> Result<(), FsError> {
    if mode & !(KEEP_SIZE | PUNCH_HOLE) != 0 {
        return Err(FsError::Unsupported);
    }
    let end = offset.checked_add(len).ok_or(FsError::TooBig)?;
    if mode & PUNCH_HOLE != 0 {
        if mode & KEEP_SIZE == 0 {
            return Err(FsError::Unsupported);
        }
        return punch_hole(f, offset, end);
    }
    allocate(f, offset, end, mode & KEEP_SIZE != 0)
}

fn allocate(f: &OpenFile, offset: u64, end: u64, keep_size: bool) -> Result<(), FsError> {
    let ef = f.write();
    let start = format::block_backing_offset(format::block_of(offset));
    let stop = format::backing_size_from_plain(end);
    // Reserve the space in the backing file; the size stays as it is there.
    match os::space::fallocate(ef.file(), KEEP_SIZE, start, stop.saturating_sub(start)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
        Err(e) => return Err(e.into()),
    }
    let size = ef
        .plain_size()
        .map_err(|e| FsError::envelope(e, f.backing()))?;
    if !keep_size && end > size {
        ef.set_len(end)
            .map_err(|e| FsError::envelope(e, f.backing()))?;
    }
    Ok(())
}

fn punch_hole(f: &OpenFile, offset: u64, end: u64) -> Result<(), FsError> {
    let ef = f.write();
    let size = ef
        .plain_size()
        .map_err(|e| FsError::envelope(e, f.backing()))?;
    let end = end.min(size);
    if offset >= end {
        return Ok(());
    }
    let first_full = offset.div_ceil(BLOCK_SIZE);
    // The final block is never punched: a hole there would read as a file cut
    // or zero-extended outside kmsfs (EIO). It is rewritten as sealed zeros.
    let last_full = (end / BLOCK_SIZE).min(format::block_count(size) - 1);
    let zero = |from: u64, to: u64| -> Result<(), FsError> {
        if from < to {
            let zeros = vec![0u8; (to - from) as usize];
            ef.write_at(&zeros, from)
                .map_err(|e| FsError::envelope(e, f.backing()))?;
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
    os::space::fallocate(ef.file(), PUNCH_HOLE | KEEP_SIZE, start, blen).map_err(FsError::from)?;
    zero(last_full * BLOCK_SIZE, end)
}

/// The block whose stored bytes contain backing offset `pos` (pos >= header).
fn block_at(pos: u64) -> u64 {
    pos.saturating_sub(HEADER_LEN) / CIPHER_BLOCK_SIZE
}

/// lseek SEEK_DATA: the first offset >= `offset` in a block holding data.
pub fn seek_data(f: &OpenFile, offset: u64) -> Result<u64, FsError> {
    let ef = f.read();
    let size = ef
        .plain_size()
        .map_err(|e| FsError::envelope(e, f.backing()))?;
    if offset >= size {
        return Err(FsError::PastEnd);
    }
    let from = format::block_backing_offset(format::block_of(offset));
    let d = os::space::lseek(ef.file(), from, libc::SEEK_DATA).map_err(FsError::from)?;
    let pos = offset.max(block_at(d) * BLOCK_SIZE);
    if pos >= size {
        Err(FsError::PastEnd)
    } else {
        Ok(pos)
    }
}

/// lseek SEEK_HOLE: the first offset >= `offset` that starts a run of blocks
/// stored entirely as a hole, or the end of the file. Conservative: a block
/// only partly in a backing hole counts as data.
pub fn seek_hole(f: &OpenFile, offset: u64) -> Result<u64, FsError> {
    let ef = f.read();
    let size = ef
        .plain_size()
        .map_err(|e| FsError::envelope(e, f.backing()))?;
    if offset >= size {
        return Err(FsError::PastEnd);
    }
    let backing_len = ef.file().metadata().map_err(FsError::from)?.len();
    let mut b = format::block_of(offset);
    loop {
        if b * BLOCK_SIZE >= size {
            return Ok(size);
        }
        let start = format::block_backing_offset(b);
        let stop = format::block_backing_offset(b + 1).min(backing_len);
        let d = match os::space::lseek(ef.file(), start, libc::SEEK_DATA) {
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                return Ok(offset.max(b * BLOCK_SIZE));
            }
            Err(e) => return Err(e.into()),
            Ok(d) => d,
        };
        if d >= stop {
            return Ok(offset.max(b * BLOCK_SIZE));
        }
        let h = os::space::lseek(ef.file(), d, libc::SEEK_HOLE).map_err(FsError::from)?;
        if h >= backing_len {
            return Ok(size);
        }
        b = (b + 1).max((h - HEADER_LEN.min(h)).div_ceil(CIPHER_BLOCK_SIZE));
    }
}
