//! The FUSE frontend: the filesystem's behaviour as `KmsFs` methods returning
//! `FsError` (nodes, attributes, files, entries, directories, xattrs), open
//! files and the data-key cache over `envelope`, the fuser adapter
//! (`fuse.rs`, the only file that imports fuser), and the mount daemon's
//! lifecycle (`mount.rs`). System calls go through `crate::os`; keys only
//! through the `KeyService` trait.
#![forbid(unsafe_code)]

mod attr;
mod dirs;
mod entries;
mod error;
mod file;
mod filesystem;
mod fuse;
mod inodes;
mod keycache;
pub mod mount;
mod node;
mod open;
mod privs;
mod readahead;
mod stats;
mod xattr;

pub use self::error::FsError;
pub use self::filesystem::{FsConfig, KmsFs};
pub use self::keycache::{MAX_AGE as KEY_CACHE_MAX_AGE, MAX_ENTRIES as KEY_CACHE_MAX_ENTRIES};
pub use self::mount::{MountError, MountRequest, mount, unmount};
