//! Size and offset arithmetic between plaintext and backing files, both
//! directions (plaintext offset to block and backing offset, backing size or
//! offset to plaintext size or block), and the split of a plaintext range
//! into per-block spans.

use super::{BLOCK_SIZE, HEADER_LEN};

/// How a file's blocks are stored: the construction, and so the bytes each
/// stored block adds to its plaintext. The header's format version names it;
/// a mount knows it for its whole tree from the backing directory's marker
/// (`stat` computes sizes from backing sizes alone, without reading headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// Format version 1: AES-256-GCM under the data key, random 96-bit
    /// nonce; 12-byte nonce and 16-byte tag per block.
    V1,
    /// Format version 2: XAES-256-GCM under the data key, random 192-bit
    /// nonce; 24-byte nonce and 16-byte tag per block.
    V2,
}

impl Layout {
    /// The layout of new files and new trees.
    pub const NEW: Layout = Layout::V2;

    /// The layout of header format version `version`, if there is one.
    pub const fn from_version(version: u16) -> Option<Layout> {
        match version {
            1 => Some(Layout::V1),
            2 => Some(Layout::V2),
            _ => None,
        }
    }

    /// The header format version of this layout.
    pub const fn version(self) -> u16 {
        match self {
            Layout::V1 => 1,
            Layout::V2 => 2,
        }
    }

    /// Length of a stored block's nonce.
    pub const fn nonce_len(self) -> u64 {
        match self {
            Layout::V1 => 12,
            Layout::V2 => 24,
        }
    }

    /// Bytes a stored block adds to its plaintext: nonce and 16-byte tag.
    pub const fn overhead(self) -> u64 {
        self.nonce_len() + 16
    }

    /// Backing bytes of one full block.
    pub const fn cipher_block_size(self) -> u64 {
        BLOCK_SIZE + self.overhead()
    }

    /// Plaintext size of a file whose backing file is `backing_len` bytes
    /// long. A trailing piece too short to hold a block (1 to `overhead`
    /// bytes) is damage: it contributes nothing here, and reading that block
    /// fails authentication.
    pub const fn plain_size_from_backing(self, backing_len: u64) -> u64 {
        let Some(content) = backing_len.checked_sub(HEADER_LEN) else {
            return 0;
        };
        let full = content / self.cipher_block_size();
        let rest = content % self.cipher_block_size();
        full * BLOCK_SIZE + rest.saturating_sub(self.overhead())
    }

    /// The largest plaintext size whose backing file stays within a signed
    /// 64-bit file offset (what the kernel allows).
    pub const fn max_plain_size(self) -> u64 {
        self.plain_size_from_backing(i64::MAX as u64)
    }

    /// Backing size of a file of `plain` plaintext bytes.
    pub const fn backing_size_from_plain(self, plain: u64) -> u64 {
        let full = plain / BLOCK_SIZE;
        let rest = plain % BLOCK_SIZE;
        HEADER_LEN
            + full * self.cipher_block_size()
            + if rest > 0 { rest + self.overhead() } else { 0 }
    }

    /// True when `backing_len` is a size this layout can produce. Any other
    /// size means the file was cut or extended outside kmsfs: reading its
    /// end fails.
    pub const fn is_valid_backing_size(self, backing_len: u64) -> bool {
        backing_len >= HEADER_LEN
            && self.backing_size_from_plain(self.plain_size_from_backing(backing_len))
                == backing_len
    }

    /// The size `stat` reports through the mount for a backing file of
    /// `backing_len` bytes: the plaintext size, except that a damaged tail
    /// with no plaintext before it (a header plus 1 to `overhead` bytes)
    /// shows as 1 byte. The kernel never asks for the content of a 0-byte
    /// file, so that file would read as empty; shown as 1 byte, reading it
    /// reaches its damaged end and fails (EIO), as reading any other damaged
    /// end does and as `unseal` refuses it.
    pub const fn stat_size_from_backing(self, backing_len: u64) -> u64 {
        let plain = self.plain_size_from_backing(backing_len);
        if plain == 0 && backing_len > HEADER_LEN && !self.is_valid_backing_size(backing_len) {
            1
        } else {
            plain
        }
    }

    /// Backing offset where block `index` starts.
    pub const fn block_backing_offset(self, index: u64) -> u64 {
        HEADER_LEN + index * self.cipher_block_size()
    }

    /// Index of the block whose stored bytes contain backing offset `pos`
    /// (the header counts as block 0).
    pub const fn block_at_backing_offset(self, pos: u64) -> u64 {
        pos.saturating_sub(HEADER_LEN) / self.cipher_block_size()
    }

    /// Index of the first block stored at or after backing offset `pos`.
    pub const fn first_block_from_backing(self, pos: u64) -> u64 {
        pos.saturating_sub(HEADER_LEN)
            .div_ceil(self.cipher_block_size())
    }

    /// Backing length of a stored block holding `plain_len` bytes (0 for none).
    pub const fn stored_block_len(self, plain_len: u64) -> u64 {
        if plain_len == 0 {
            0
        } else {
            plain_len + self.overhead()
        }
    }
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

    const V1: Layout = Layout::V1;
    const V2: Layout = Layout::V2;

    /// The worked byte counts of docs/FORMAT.md, both layouts.
    #[test]
    fn documented_sizes() {
        assert_eq!(V1.cipher_block_size(), 4124);
        assert_eq!(V1.backing_size_from_plain(0), 1024);
        assert_eq!(V1.backing_size_from_plain(1), 1053);
        assert_eq!(V1.backing_size_from_plain(4095), 5147);
        assert_eq!(V1.backing_size_from_plain(4096), 5148);
        assert_eq!(V1.backing_size_from_plain(4097), 5177);
        assert_eq!(V1.backing_size_from_plain(1 << 20), 1024 + 256 * 4124);
        assert_eq!(
            V1.backing_size_from_plain((1 << 20) + 1),
            1024 + 256 * 4124 + 29
        );
        assert_eq!(V2.cipher_block_size(), 4136);
        assert_eq!(V2.backing_size_from_plain(0), 1024);
        assert_eq!(V2.backing_size_from_plain(1), 1065);
        assert_eq!(V2.backing_size_from_plain(4095), 5159);
        assert_eq!(V2.backing_size_from_plain(4096), 5160);
        assert_eq!(V2.backing_size_from_plain(4097), 5201);
        assert_eq!(V2.backing_size_from_plain(1 << 20), 1024 + 256 * 4136);
        assert_eq!(
            V2.backing_size_from_plain((1 << 20) + 1),
            1024 + 256 * 4136 + 41
        );
        assert_eq!(Layout::from_version(1), Some(V1));
        assert_eq!(Layout::from_version(2), Some(V2));
        assert_eq!(Layout::from_version(3), None);
        assert_eq!(Layout::NEW, V2);
    }

    #[test]
    fn size_sweep_round_trips_and_is_monotonic() {
        for l in [V1, V2] {
            let mut prev = 0;
            for plain in 0..(BLOCK_SIZE * 5 + 7) {
                let b = l.backing_size_from_plain(plain);
                assert_eq!(l.plain_size_from_backing(b), plain, "{l:?} plain {plain}");
                assert!(l.is_valid_backing_size(b));
                assert!(plain == 0 || b > prev, "not monotonic at {plain}");
                prev = b;
            }
            for plain in [1u64 << 32, (1 << 40) + 12345, u64::MAX / 2] {
                assert_eq!(
                    l.plain_size_from_backing(l.backing_size_from_plain(plain)),
                    plain
                );
            }
            // Sizes no plaintext produces: a tail of 1..=overhead bytes, and short files.
            for tail in 1..=l.overhead() {
                assert!(!l.is_valid_backing_size(HEADER_LEN + l.cipher_block_size() + tail));
            }
            assert!(!l.is_valid_backing_size(0));
            assert!(!l.is_valid_backing_size(HEADER_LEN - 1));
            assert_eq!(l.plain_size_from_backing(10), 0);
            let max = l.max_plain_size();
            assert!(l.backing_size_from_plain(max) <= i64::MAX as u64);
            assert!(l.backing_size_from_plain(max + 4096) > i64::MAX as u64);
            // Backing offsets back to blocks: every byte of a stored block maps
            // to that block, and the next block starts right after it.
            for b in 0..(5 + (1 << 20) / l.cipher_block_size()) {
                let start = l.block_backing_offset(b);
                assert_eq!(l.block_at_backing_offset(start), b, "block {b}");
                assert_eq!(
                    l.block_at_backing_offset(start + l.cipher_block_size() - 1),
                    b
                );
                assert_eq!(l.first_block_from_backing(start), b);
                assert_eq!(l.first_block_from_backing(start + 1), b + 1);
                assert_eq!(l.block_backing_offset(block_of(b * BLOCK_SIZE)), start);
            }
            assert_eq!(l.block_at_backing_offset(HEADER_LEN - 1), 0);
            assert_eq!(l.first_block_from_backing(0), 0);
        }
    }

    #[test]
    fn only_a_damaged_tail_alone_shows_a_byte_more() {
        for l in [V1, V2] {
            for tail in 1..=l.overhead() {
                assert_eq!(
                    l.stat_size_from_backing(HEADER_LEN + tail),
                    1,
                    "tail {tail}"
                );
                let after_a_block = HEADER_LEN + l.cipher_block_size() + tail;
                assert_eq!(
                    l.stat_size_from_backing(after_a_block),
                    BLOCK_SIZE,
                    "tail {tail}"
                );
            }
            for plain in [0, 1, 4095, 4096, 4097, 1 << 20] {
                assert_eq!(
                    l.stat_size_from_backing(l.backing_size_from_plain(plain)),
                    plain
                );
            }
            // Shorter than a header: no header to read (docs/MOUNT.md, limits).
            for len in [0, 10, HEADER_LEN - 1] {
                assert_eq!(l.stat_size_from_backing(len), 0);
            }
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
        assert_eq!(V1.stored_block_len(904), 932);
        assert_eq!(V2.stored_block_len(904), 944);
        assert_eq!(V2.stored_block_len(0), 0);
        assert_eq!(block_count(0), 0);
        assert_eq!(block_count(4096), 1);
        assert_eq!(block_count(4097), 2);
        assert_eq!(V1.block_backing_offset(2), 1024 + 2 * 4124);
        assert_eq!(V2.block_backing_offset(2), 1024 + 2 * 4136);
    }
}
