//! The on-disk file format, pure (no I/O, no keys): the layout constants,
//! the file id and each block's associated data here; the header codec in
//! `header.rs`; the size and offset arithmetic between plaintext and backing
//! files, both directions, in `offsets.rs`. docs/FORMAT.md has worked byte
//! counts that the tests repeat.
#![forbid(unsafe_code)]

mod header;
mod offsets;

pub use self::header::*;
pub use self::offsets::*;

/// Plaintext bytes per block.
pub const BLOCK_SIZE: u64 = 4096;
/// Length of the header at the start of every backing file.
pub const HEADER_LEN: u64 = 1024;
/// The marker binding a backing directory to its keystore, in the backing root.
pub const BACKING_MARKER: &str = ".kmsfs.json";
/// The lock file a daemon holds (flock) while it serves a backing directory.
pub const BACKING_LOCK: &str = ".kmsfs.lock";
/// Label at the start of every block's associated data, format version 1.
pub const BLOCK_AAD_LABEL: &[u8; 14] = b"kmsfs.block.v1";
/// Label at the start of every block's associated data, format version 2.
pub const BLOCK_AAD_LABEL_V2: &[u8; 14] = b"kmsfs.block.v2";
/// Length of a block's associated data: label, file id, block index.
pub const BLOCK_AAD_LEN: usize = 14 + 16 + 8;

/// A file's random 128-bit id.
pub type FileId = [u8; 16];

/// The associated data of block `index` of file `file_id` in `layout`: binds
/// each block to its file and position, so moved or swapped blocks fail
/// authentication, and to its layout.
pub fn block_aad(layout: Layout, file_id: &FileId, index: u64) -> [u8; BLOCK_AAD_LEN] {
    let mut a = [0u8; BLOCK_AAD_LEN];
    a[..14].copy_from_slice(match layout {
        Layout::V1 => BLOCK_AAD_LABEL,
        Layout::V2 => BLOCK_AAD_LABEL_V2,
    });
    a[14..30].copy_from_slice(file_id);
    a[30..].copy_from_slice(&index.to_be_bytes());
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_aad_binds_file_and_index() {
        for l in [Layout::V1, Layout::V2] {
            assert_ne!(block_aad(l, &[1; 16], 0), block_aad(l, &[1; 16], 1));
            assert_ne!(block_aad(l, &[1; 16], 0), block_aad(l, &[2; 16], 0));
        }
        assert_ne!(
            block_aad(Layout::V1, &[1; 16], 0),
            block_aad(Layout::V2, &[1; 16], 0)
        );
    }
}
