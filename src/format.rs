//! The on-disk file format: the header with its two key slots, the block
//! layout, and the size and offset arithmetic between plaintext and backing
//! files. Pure: no I/O, no keys. docs/FORMAT.md has worked byte counts that the
//! tests below repeat.
#![forbid(unsafe_code)]

use crate::crypto::{SEAL_OVERHEAD, sha256};

/// Plaintext bytes per block.
pub const BLOCK_SIZE: u64 = 4096;
/// Bytes a stored block adds to its plaintext: 12-byte nonce and 16-byte tag.
pub const BLOCK_OVERHEAD: u64 = SEAL_OVERHEAD as u64;
/// Backing bytes of one full block.
pub const CIPHER_BLOCK_SIZE: u64 = BLOCK_SIZE + BLOCK_OVERHEAD;
/// Length of the header at the start of every backing file.
pub const HEADER_LEN: u64 = 1024;
/// The format version this code writes and the only one it reads.
pub const FORMAT_VERSION: u16 = 1;
/// Magic bytes at offset 0.
pub const MAGIC: [u8; 6] = *b"KMSFS\0";
/// Length of the fixed part of the header before the slots.
pub const FIXED_LEN: usize = 32;
/// Length of one key slot.
pub const SLOT_LEN: usize = 496;
/// Longest key id a slot holds.
pub const MAX_KEY_ID_LEN: usize = 95;
/// Longest wrapped data key a slot holds.
pub const MAX_WRAPPED_KEY_LEN: usize = 354;
/// Label at the start of every block's associated data.
pub const BLOCK_AAD_LABEL: &[u8; 14] = b"kmsfs.block.v1";
/// Length of a block's associated data: label, file id, block index.
pub const BLOCK_AAD_LEN: usize = 14 + 16 + 8;

// Offsets inside a slot.
const SLOT_SEQ: usize = 0;
const SLOT_VERSION: usize = 8;
const SLOT_KEY_ID_LEN: usize = 12;
const SLOT_KEY_ID: usize = 13;
const SLOT_WRAPPED_LEN: usize = SLOT_KEY_ID + MAX_KEY_ID_LEN;
const SLOT_WRAPPED: usize = SLOT_WRAPPED_LEN + 2;
const SLOT_CHECKSUM: usize = SLOT_WRAPPED + MAX_WRAPPED_KEY_LEN;

const _: () = assert!(SLOT_CHECKSUM + 32 == SLOT_LEN);
const _: () = assert!(FIXED_LEN + 2 * SLOT_LEN == HEADER_LEN as usize);

/// A file's random 128-bit id.
pub type FileId = [u8; 16];

/// Errors in decoding or encoding a header.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FormatError {
    /// The file is shorter than a header.
    #[error("file is shorter than a kmsfs header ({0} bytes)")]
    Short(u64),
    /// The magic bytes are wrong: not a kmsfs file.
    #[error("not a kmsfs file (bad magic)")]
    BadMagic,
    /// A format version this build does not know.
    #[error("unsupported format version {0} (this build reads version {FORMAT_VERSION})")]
    UnsupportedVersion(u16),
    /// A block size or flag this build does not know.
    #[error("unsupported header parameters: {0}")]
    Unsupported(String),
    /// Neither slot holds a valid wrapped key.
    #[error("no valid key slot in header")]
    NoValidSlot,
    /// A field is too long for its slot.
    #[error("{0}")]
    TooLong(String),
}

/// One key slot: a wrapped data key and the key that wrapped it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// Sequence number; the valid slot with the highest one is current. 0 = empty.
    pub seq: u64,
    /// The CMK that wrapped the data key (informational: the wrapped key names it too).
    pub key_id: String,
    /// Version of that CMK's key material (informational).
    pub key_material_version: u32,
    /// The data key wrapped by the key service (an opaque ciphertext blob).
    pub wrapped_key: Vec<u8>,
}

/// A decoded header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Format version.
    pub version: u16,
    /// The file's id: bound into every block's AAD and the data key's context.
    pub file_id: FileId,
    /// The two slots; at least one is valid in a decoded header.
    pub slots: [Option<Slot>; 2],
}

impl Header {
    /// A header for a new file with its wrapped key in slot 0.
    pub fn new(file_id: FileId, first: Slot) -> Self {
        Self {
            version: FORMAT_VERSION,
            file_id,
            slots: [Some(first), None],
        }
    }

    /// Index of the current slot: the valid one with the highest sequence number.
    pub fn active_index(&self) -> Option<usize> {
        match (&self.slots[0], &self.slots[1]) {
            (Some(a), Some(b)) => Some(if b.seq > a.seq { 1 } else { 0 }),
            (Some(_), None) => Some(0),
            (None, Some(_)) => Some(1),
            (None, None) => None,
        }
    }

    /// The current slot.
    pub fn active(&self) -> Option<&Slot> {
        self.active_index().and_then(|i| self.slots[i].as_ref())
    }

    /// The fixed part of the header (magic, version, block size, flags, file id).
    pub fn encode_fixed(&self) -> [u8; FIXED_LEN] {
        let mut b = [0u8; FIXED_LEN];
        b[0..6].copy_from_slice(&MAGIC);
        b[6..8].copy_from_slice(&self.version.to_be_bytes());
        b[8..12].copy_from_slice(&(BLOCK_SIZE as u32).to_be_bytes());
        // 12..16: flags, all zero in version 1.
        b[16..32].copy_from_slice(&self.file_id);
        b
    }

    /// Byte range of slot `i` within the header.
    pub fn slot_range(i: usize) -> std::ops::Range<usize> {
        let start = FIXED_LEN + i * SLOT_LEN;
        start..start + SLOT_LEN
    }

    /// Encodes slot `i` (zeros for an empty slot). The checksum covers the
    /// fixed part too, so a slot moved from another file does not verify.
    pub fn encode_slot(&self, i: usize) -> Result<[u8; SLOT_LEN], FormatError> {
        let mut b = [0u8; SLOT_LEN];
        let Some(s) = &self.slots[i] else {
            return Ok(b);
        };
        if s.key_id.len() > MAX_KEY_ID_LEN {
            return Err(FormatError::TooLong(format!(
                "key id of {} bytes does not fit in a header slot (max {MAX_KEY_ID_LEN})",
                s.key_id.len()
            )));
        }
        if s.wrapped_key.is_empty() || s.wrapped_key.len() > MAX_WRAPPED_KEY_LEN {
            return Err(FormatError::TooLong(format!(
                "wrapped data key of {} bytes does not fit in a header slot (1..={MAX_WRAPPED_KEY_LEN})",
                s.wrapped_key.len()
            )));
        }
        if s.seq == 0 {
            return Err(FormatError::TooLong("slot sequence 0 is reserved".into()));
        }
        b[SLOT_SEQ..SLOT_SEQ + 8].copy_from_slice(&s.seq.to_be_bytes());
        b[SLOT_VERSION..SLOT_VERSION + 4].copy_from_slice(&s.key_material_version.to_be_bytes());
        b[SLOT_KEY_ID_LEN] = s.key_id.len() as u8;
        b[SLOT_KEY_ID..SLOT_KEY_ID + s.key_id.len()].copy_from_slice(s.key_id.as_bytes());
        b[SLOT_WRAPPED_LEN..SLOT_WRAPPED_LEN + 2]
            .copy_from_slice(&(s.wrapped_key.len() as u16).to_be_bytes());
        b[SLOT_WRAPPED..SLOT_WRAPPED + s.wrapped_key.len()].copy_from_slice(&s.wrapped_key);
        let sum = sha256(&[&self.encode_fixed(), &b[..SLOT_CHECKSUM]]);
        b[SLOT_CHECKSUM..].copy_from_slice(&sum);
        Ok(b)
    }

    /// Encodes the whole header.
    pub fn encode(&self) -> Result<[u8; HEADER_LEN as usize], FormatError> {
        let mut b = [0u8; HEADER_LEN as usize];
        b[..FIXED_LEN].copy_from_slice(&self.encode_fixed());
        for i in 0..2 {
            b[Self::slot_range(i)].copy_from_slice(&self.encode_slot(i)?);
        }
        Ok(b)
    }

    /// Decodes and validates a header. A slot whose checksum fails (a torn
    /// write, a flipped bit) counts as empty; at least one must be valid.
    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        if b.len() < HEADER_LEN as usize {
            return Err(FormatError::Short(b.len() as u64));
        }
        if b[0..6] != MAGIC {
            return Err(FormatError::BadMagic);
        }
        let version = u16::from_be_bytes([b[6], b[7]]);
        if version != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        let block = u32::from_be_bytes([b[8], b[9], b[10], b[11]]);
        if u64::from(block) != BLOCK_SIZE {
            return Err(FormatError::Unsupported(format!("block size {block}")));
        }
        let flags = u32::from_be_bytes([b[12], b[13], b[14], b[15]]);
        if flags != 0 {
            return Err(FormatError::Unsupported(format!("flags {flags:#x}")));
        }
        let mut file_id = [0u8; 16];
        file_id.copy_from_slice(&b[16..32]);
        let fixed = &b[..FIXED_LEN];
        let slots = [
            decode_slot(fixed, &b[Self::slot_range(0)]),
            decode_slot(fixed, &b[Self::slot_range(1)]),
        ];
        if slots.iter().all(Option::is_none) {
            return Err(FormatError::NoValidSlot);
        }
        Ok(Self {
            version,
            file_id,
            slots,
        })
    }

    /// The slot a rewrap should write next (the inactive one) and the slot
    /// value it should hold: sequence one above the current. Fails only for a
    /// (hostile) current sequence number that cannot grow.
    pub fn next_slot(
        &self,
        key_id: String,
        key_material_version: u32,
        wrapped_key: Vec<u8>,
    ) -> Result<(usize, Slot), FormatError> {
        let (idx, seq) = match (self.active_index(), self.active()) {
            (Some(i), Some(s)) => (
                1 - i,
                s.seq.checked_add(1).ok_or_else(|| {
                    FormatError::Unsupported("slot sequence number is exhausted".into())
                })?,
            ),
            _ => (0, 1),
        };
        Ok((
            idx,
            Slot {
                seq,
                key_id,
                key_material_version,
                wrapped_key,
            },
        ))
    }
}

fn decode_slot(fixed: &[u8], s: &[u8]) -> Option<Slot> {
    let sum = sha256(&[fixed, &s[..SLOT_CHECKSUM]]);
    if !crate::crypto::constant_time_eq(&sum, &s[SLOT_CHECKSUM..]) {
        return None;
    }
    let seq = u64::from_be_bytes(s[SLOT_SEQ..SLOT_SEQ + 8].try_into().ok()?);
    let key_material_version =
        u32::from_be_bytes(s[SLOT_VERSION..SLOT_VERSION + 4].try_into().ok()?);
    let key_id_len = usize::from(s[SLOT_KEY_ID_LEN]);
    let wrapped_len = usize::from(u16::from_be_bytes([
        s[SLOT_WRAPPED_LEN],
        s[SLOT_WRAPPED_LEN + 1],
    ]));
    if seq == 0
        || key_id_len > MAX_KEY_ID_LEN
        || wrapped_len == 0
        || wrapped_len > MAX_WRAPPED_KEY_LEN
    {
        return None;
    }
    let key_id = String::from_utf8(s[SLOT_KEY_ID..SLOT_KEY_ID + key_id_len].to_vec()).ok()?;
    Some(Slot {
        seq,
        key_id,
        key_material_version,
        wrapped_key: s[SLOT_WRAPPED..SLOT_WRAPPED + wrapped_len].to_vec(),
    })
}

/// The associated data of block `index` of file `file_id`: binds each block
/// to its file and position, so moved or swapped blocks fail authentication.
pub fn block_aad(file_id: &FileId, index: u64) -> [u8; BLOCK_AAD_LEN] {
    let mut a = [0u8; BLOCK_AAD_LEN];
    a[..14].copy_from_slice(BLOCK_AAD_LABEL);
    a[14..30].copy_from_slice(file_id);
    a[30..].copy_from_slice(&index.to_be_bytes());
    a
}

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

/// The size the mount shows for a backing file of `backing_len` bytes: the
/// plaintext size, except that a damaged tail with no plaintext before it (a
/// header plus 1 to 28 bytes) shows as 1 byte. The kernel never asks for the
/// content of a 0-byte file, so that file would read as empty; shown as 1
/// byte, reading it reaches its damaged end and fails (EIO), as reading any
/// other damaged end does and as `unseal` refuses it.
pub fn shown_size(backing_len: u64) -> u64 {
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

    fn slot(seq: u64) -> Slot {
        Slot {
            seq,
            key_id: "0b1c0e5e-0000-4000-8000-000000000001".into(),
            key_material_version: 3,
            wrapped_key: vec![0xAB; 97],
        }
    }

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
            assert_eq!(shown_size(HEADER_LEN + tail), 1, "tail {tail}");
            let after_a_block = HEADER_LEN + CIPHER_BLOCK_SIZE + tail;
            assert_eq!(shown_size(after_a_block), BLOCK_SIZE, "tail {tail}");
        }
        for plain in [0, 1, 4095, 4096, 4097, 1 << 20] {
            assert_eq!(shown_size(backing_size_from_plain(plain)), plain);
        }
        // Shorter than a header: no header to read (docs/MOUNT.md, limits).
        for len in [0, 10, HEADER_LEN - 1] {
            assert_eq!(shown_size(len), 0);
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

    #[test]
    fn header_round_trip_and_active_slot() {
        let mut h = Header::new([7; 16], slot(1));
        let enc = h.encode().unwrap();
        assert_eq!(&enc[..6], b"KMSFS\0");
        let d = Header::decode(&enc).unwrap();
        assert_eq!(d, h);
        assert_eq!(d.active_index(), Some(0));
        let (i, s) = h.next_slot("k2".into(), 1, vec![1; 10]).unwrap();
        assert_eq!((i, s.seq), (1, 2));
        h.slots[i] = Some(s);
        let d = Header::decode(&h.encode().unwrap()).unwrap();
        assert_eq!(d.active().map(|s| s.key_id.as_str()), Some("k2"));
        let (i, s) = d.next_slot("k3".into(), 1, vec![1; 10]).unwrap();
        assert_eq!((i, s.seq), (0, 3));
        let mut worn = d.clone();
        worn.slots[1] = Some(Slot {
            seq: u64::MAX,
            ..slot(1)
        });
        assert!(worn.next_slot("k4".into(), 1, vec![1; 10]).is_err());
        assert_eq!((i, s.seq), (0, 3));
    }

    #[test]
    fn torn_slot_falls_back_to_the_other() {
        let mut h = Header::new([7; 16], slot(1));
        h.slots[1] = Some(slot(2));
        let mut enc = h.encode().unwrap();
        enc[Header::slot_range(1).start + 20] ^= 1;
        let d = Header::decode(&enc).unwrap();
        assert_eq!(d.active_index(), Some(0));
        enc[Header::slot_range(0).start + 3] ^= 1;
        assert_eq!(Header::decode(&enc), Err(FormatError::NoValidSlot));
    }

    #[test]
    fn bad_headers_are_refused() {
        let h = Header::new([7; 16], slot(1));
        let enc = h.encode().unwrap();
        assert_eq!(Header::decode(&enc[..100]), Err(FormatError::Short(100)));
        let mut bad = enc;
        bad[0] = b'X';
        assert_eq!(Header::decode(&bad), Err(FormatError::BadMagic));
        let mut bad = enc;
        bad[7] = 9;
        assert_eq!(
            Header::decode(&bad),
            Err(FormatError::UnsupportedVersion(9))
        );
        let mut bad = enc;
        bad[13] = 1;
        assert!(matches!(
            Header::decode(&bad),
            Err(FormatError::Unsupported(_))
        ));
        // A changed file id invalidates both slots' checksums.
        let mut bad = enc;
        bad[20] ^= 1;
        assert_eq!(Header::decode(&bad), Err(FormatError::NoValidSlot));
        let mut long = h.clone();
        long.slots[0] = Some(Slot {
            wrapped_key: vec![0; 355],
            ..slot(1)
        });
        assert!(long.encode().is_err());
    }

    #[test]
    fn block_aad_binds_file_and_index() {
        assert_ne!(block_aad(&[1; 16], 0), block_aad(&[1; 16], 1));
        assert_ne!(block_aad(&[1; 16], 0), block_aad(&[2; 16], 0));
    }
}
