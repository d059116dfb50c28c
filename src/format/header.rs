//! The header codec: the fixed part and the two key slots of the 1 KiB
//! header at the start of every backing file, encoded and decoded with
//! validation, and the choice of the active slot.

use super::{BLOCK_SIZE, FileId, HEADER_LEN, Layout};
use crate::crypto::sha256;

/// The format version of new files (`Layout::NEW`); this code reads 1 and 2.
pub const FORMAT_VERSION: u16 = Layout::NEW.version();
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

/// Errors in decoding or encoding a header.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FormatError {
    /// The file is shorter than a header.
    #[error("file of {0} bytes is shorter than a kmsfs header ({HEADER_LEN} bytes)")]
    Short(u64),
    /// The magic bytes are wrong: not a kmsfs file.
    #[error("not a kmsfs file (bad magic)")]
    BadMagic,
    /// A format version this build does not know.
    #[error("unsupported format version {0} (this build reads versions 1 and 2)")]
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
    /// A header for a new file of `layout` with its wrapped key in slot 0.
    pub fn new(layout: Layout, file_id: FileId, first: Slot) -> Self {
        Self {
            version: layout.version(),
            file_id,
            slots: [Some(first), None],
        }
    }

    /// How this file's blocks are stored (its format version).
    pub fn layout(&self) -> Layout {
        // `decode` accepts only versions that name a layout.
        Layout::from_version(self.version).unwrap_or(Layout::V1)
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
        // 12..16: flags, all zero in versions 1 and 2.
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
        if Layout::from_version(version).is_none() {
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

    #[test]
    fn header_round_trip_and_active_slot() {
        let v1 = Header::new(Layout::V1, [7; 16], slot(1));
        let enc = v1.encode().unwrap();
        assert_eq!(enc[6..8], [0, 1]);
        assert_eq!(Header::decode(&enc).unwrap().layout(), Layout::V1);
        let mut h = Header::new(Layout::V2, [7; 16], slot(1));
        let enc = h.encode().unwrap();
        assert_eq!(&enc[..6], b"KMSFS\0");
        assert_eq!(enc[6..8], [0, 2]);
        let d = Header::decode(&enc).unwrap();
        assert_eq!(d, h);
        assert_eq!(d.layout(), Layout::V2);
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
        let mut h = Header::new(Layout::V2, [7; 16], slot(1));
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
        let h = Header::new(Layout::V2, [7; 16], slot(1));
        let enc = h.encode().unwrap();
        assert_eq!(Header::decode(&enc[..100]), Err(FormatError::Short(100)));
        let mut bad = enc;
        bad[0] = b'X';
        assert_eq!(Header::decode(&bad), Err(FormatError::BadMagic));
        // The version is covered by the slots' checksums: a changed layout
        // is refused before any block is read.
        let mut bad = enc;
        bad[7] = 1;
        assert_eq!(Header::decode(&bad), Err(FormatError::NoValidSlot));
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
}
