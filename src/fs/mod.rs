//! The FUSE frontend: inodes, handles, locks, encrypted read/write through
//! `envelope`, the data-key cache, and the mount's lifecycle. The only module
//! that imports fuser; its system calls go through `crate::os`.
//! It talks to keys only through the `KeyService` trait.
#![forbid(unsafe_code)]

mod core;
mod dirs;
mod errno;
mod inodes;
mod keycache;
pub mod mount;
mod open;
mod ops;
mod privs;
mod sparse;

pub use self::core::{FsConfig, KmsFs};
pub use self::keycache::{MAX_AGE as KEY_CACHE_MAX_AGE, MAX_ENTRIES as KEY_CACHE_MAX_ENTRIES};
pub use self::mount::{MountError, MountRequest, mount, unmount};
