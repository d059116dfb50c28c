//! Size and offset arithmetic between plaintext and backing files, both
//! directions (plaintext offset to block and backing offset, backing size or
//! offset to plaintext size or block), and the split of a plaintext range
//! into per-block spans.

use super::{BLOCK_OVERHEAD, BLOCK_SIZE, CIPHER_BLOCK_SIZE, HEADER_LEN};

/// Plaintext size of a file whose backing file is `backing_len` bytes long.
/// A trailing piece too short to hold a block (1 to 28 bytes) is damage: it
/// contributes nothing here, and reading that block fails authentication.
pub const fn plain_size_from_backing(backing_len: u64) -> u64 {
    let Some(content) = backing_len.checked_sub(HEADER_LEN) else {
        return 0;
    };
    let full = content / CIPHER_BLOCK_SIZE;
    let rest = content % CIPHER_BLOCK_SIZE;
    full * BLOCK_SIZE + rest.saturating_sub(BLOCK_OVERHEAD)
}

/// The largest plaintext size whose backing file stays within a signed
/// 64-bit file offset (what the kernel allows).
pub const MAX_PLAIN_SIZE: u64 = plain_size_from_backing(i64::MAX as u64);

/// Backing size of a file of `plain` plaintext bytes.
pub fn backing_size_from_plain(plain: u64) -> u64 {
    let full = plain / BLOCK_SIZE;
    let rest = plain % BLOCK_SIZE;
    HEADER_LEN + full * CIPHER_BLOCK_SIZE + if rest > 0 { rest + BLOCK_OVERHEAD } else { 0 }
}

/// True when `backing_len` is a size this format can produce. Any other size
/// means the file was cut or extended outside kmsfs: reading its end fails.
pub fn is_valid_backing_size(backing_len: u64) -> bool {
    backing_len >= HEADER_LEN
        && backing_size_from_plain(plain_size_from_backing(backing_len)) == backing_len
}

/// The size `stat` reports through the mount for a backing file of
/// `backing_len` bytes: the
/// plaintext size, except that a damaged tail with no plaintext before it (a
/// header plus 1 to 28 bytes) shows as 1 byte. The kernel never asks for the
/// content of a 0-byte file, so that file would read as empty; shown as 1
/// byte, reading it reaches its damaged end and fails (EIO), as reading any
/// other damaged end does and as `unseal` refuses it.
pub fn stat_size_from_backing(backing_len: u64) -> u64 {
    let plain = plain_size_from_backing(backing_len);
    if plain == 0 && backing_len > HEADER_LEN && !is_valid_backing_size(backing_len) {
        1
    } else {
        plain
    }
}

/// Backing offset where block `index` starts.
pub fn block_backing_offset(index: u64) -> u64 {
    HEADER_LEN + index * CIPHER_BLOCK_SIZE
}

/// Index of the block whose stored bytes contain backing offset `pos` (the
/// header counts as block 0).
pub fn block_at_backing_offset(pos: u64) -> u64 {
    pos.saturating_sub(HEADER_LEN) / CIPHER_BLOCK_SIZE
}

/// Index of the first block stored at or after backing offset `pos`.
pub fn first_block_from_backing(pos: u64) -> u64 {
    pos.saturating_sub(HEADER_LEN).div_ceil(CIPHER_BLOCK_SIZE)
}

/// Index of the block that holds plaintext offset `offset`.
pub fn block_of(offset: u64) -> u64 {
    offset / BLOCK_SIZE
}

/// Plaintext length of block `index` in a file of `plain_size` bytes (0 past the end).
pub fn block_plain_len(index: u64, plain_size: u64) -> u64 {
    plain_size
        .saturating_sub(index * BLOCK_SIZE)
        .min(BLOCK_SIZE)
}

/// Backing length of a stored block holding `plain_len` bytes (0 for none).
pub fn stored_block_len(plain_len: u64) -> u64 {
    if plain_len == 0 {
        0
    } else {
        plain_len + BLOCK_OVERHEAD
    }
}

/// Number of blocks in a file of `plain_size` bytes.
pub fn block_count(plain_size: u64) -> u64 {
    plain_size.div_ceil(BLOCK_SIZE)
}

/// The part of one block that a plaintext range covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSpan {
    /// Block index.
    pub block: u64,
    /// Offset of the range inside the block.
    pub skip: u64,
    /// Bytes of the range inside the block.
    pub len: u64,
}

impl BlockSpan {
    /// True when the span covers the whole block.
    pub fn is_full(&self) -> bool {
        self.skip == 0 && self.len == BLOCK_SIZE
    }
}

/// Splits the plaintext range `[offset, offset + len)` into per-block spans.
pub fn split_range(offset: u64, len: u64) -> impl Iterator<Item = BlockSpan> {
    let end = offset.saturating_add(len);
    let first = block_of(offset);
    let last = if len == 0 {
        first
    } else {
        block_of(end - 1) + 1
    };
    (first..last).map(move |block| {
        let start = block * BLOCK_SIZE;
        let s = offset.max(start);
        let e = end.min(start + BLOCK_SIZE);
        BlockSpan {
            block,
            skip: s - start,
            len: e - s,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked byte counts of docs/FORMAT.md.
    #[test]
    fn documented_sizes() {
        assert_eq!(CIPHER_BLOCK_SIZE, 4124);
        assert_eq!(backing_size_from_plain(0), 1024);
        assert_eq!(backing_size_from_plain(1), 1053);
        assert_eq!(backing_size_from_plain(4095), 5147);
        assert_eq!(backing_size_from_plain(4096), 5148);
        assert_eq!(backing_size_from_plain(4097), 5177);
        assert_eq!(backing_size_from_plain(1 << 20), 1024 + 256 * 4124);
        assert_eq!(
            backing_size_from_plain((1 << 20) + 1),
            1024 + 256 * 4124 + 29
        );
    }

    #[test]
    fn size_sweep_round_trips_and_is_monotonic() {
        let mut prev = 0;
        for plain in 0..(BLOCK_SIZE * 5 + 7) {
            let b = backing_size_from_plain(plain);
            assert_eq!(plain_size_from_backing(b), plain, "plain {plain}");
            assert!(is_valid_backing_size(b));
            assert!(plain == 0 || b > prev, "not monotonic at {plain}");
            prev = b;
        }
        for plain in [1u64 << 32, (1 << 40) + 12345, u64::MAX / 2] {
            assert_eq!(
                plain_size_from_backing(backing_size_from_plain(plain)),
                plain
            );
        }
        // Sizes no plaintext produces: a tail of 1..=28 bytes, and short files.
        for tail in 1..=BLOCK_OVERHEAD {
            assert!(!is_valid_backing_size(
                HEADER_LEN + CIPHER_BLOCK_SIZE + tail
            ));
        }
        assert!(!is_valid_backing_size(0));
        assert!(!is_valid_backing_size(HEADER_LEN - 1));
        assert_eq!(plain_size_from_backing(10), 0);
        assert!(backing_size_from_plain(MAX_PLAIN_SIZE) <= i64::MAX as u64);
        assert!(backing_size_from_plain(MAX_PLAIN_SIZE + 4096) > i64::MAX as u64);
        // Backing offsets back to blocks: every byte of a stored block maps
        // to that block, and the next block starts right after it.
        for b in 0..(5 + (1 << 20) / CIPHER_BLOCK_SIZE) {
            let start = block_backing_offset(b);
            assert_eq!(block_at_backing_offset(start), b, "block {b}");
            assert_eq!(block_at_backing_offset(start + CIPHER_BLOCK_SIZE - 1), b);
            assert_eq!(first_block_from_backing(start), b);
            assert_eq!(first_block_from_backing(start + 1), b + 1);
            assert_eq!(block_backing_offset(block_of(b * BLOCK_SIZE)), start);
        }
        assert_eq!(block_at_backing_offset(HEADER_LEN - 1), 0);
        assert_eq!(first_block_from_backing(0), 0);
    }

    #[test]
    fn only_a_damaged_tail_alone_shows_a_byte_more() {
        for tail in 1..=BLOCK_OVERHEAD {
            assert_eq!(stat_size_from_backing(HEADER_LEN + tail), 1, "tail {tail}");
            let after_a_block = HEADER_LEN + CIPHER_BLOCK_SIZE + tail;
            assert_eq!(
                stat_size_from_backing(after_a_block),
                BLOCK_SIZE,
                "tail {tail}"
            );
        }
        for plain in [0, 1, 4095, 4096, 4097, 1 << 20] {
            assert_eq!(
                stat_size_from_backing(backing_size_from_plain(plain)),
                plain
            );
        }
        // Shorter than a header: no header to read (docs/MOUNT.md, limits).
        for len in [0, 10, HEADER_LEN - 1] {
            assert_eq!(stat_size_from_backing(len), 0);
        }
    }

    #[test]
    fn split_range_covers_exactly_the_range() {
        for offset in [0u64, 1, 4095, 4096, 4097, 8191, 10_000] {
            for len in [0u64, 1, 2, 4095, 4096, 4097, 8192, 12_289] {
                let spans: Vec<_> = split_range(offset, len).collect();
                let total: u64 = spans.iter().map(|s| s.len).sum();
                assert_eq!(total, len);
                let mut pos = offset;
                for s in &spans {
                    assert_eq!(s.block * BLOCK_SIZE + s.skip, pos);
                    assert!(s.skip + s.len <= BLOCK_SIZE);
                    pos += s.len;
                }
                if len > 0 {
                    assert!(spans.iter().all(|s| s.len > 0));
                }
            }
        }
        // A read that ends exactly at the end of a full block does not touch the next one.
        let spans: Vec<_> = split_range(0, 4096).collect();
        assert_eq!(
            spans,
            vec![BlockSpan {
                block: 0,
                skip: 0,
                len: 4096
            }]
        );
        assert!(spans[0].is_full());
    }

    #[test]
    fn block_lengths() {
        assert_eq!(block_plain_len(0, 5000), 4096);
        assert_eq!(block_plain_len(1, 5000), 904);
        assert_eq!(block_plain_len(2, 5000), 0);
        assert_eq!(stored_block_len(904), 932);
        assert_eq!(block_count(0), 0);
        assert_eq!(block_count(4096), 1);
        assert_eq!(block_count(4097), 2);
        assert_eq!(block_backing_offset(2), 1024 + 2 * 4124);
    }
}
