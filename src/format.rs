//! The on-disk file format: header and its two slots, block layout, and the
//! size and offset arithmetic between plaintext and backing files. Pure: no I/O.
#![forbid(unsafe_code)]

/// A file's random 128-bit id.
pub type FileId = [u8; 16];

/// A parsed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The file id.
    pub file_id: FileId,
}
