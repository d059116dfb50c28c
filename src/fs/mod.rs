//! The FUSE frontend: the filesystem's behaviour as `KmsFs` methods returning
//! `FsError` (nodes, attributes, files, entries, directories, xattrs), open
//! files and the data-key cache over `envelope`, and the fuser adapter
//! (`fuse.rs`, the only file that imports fuser) that mounts it with the
//! options of `options.rs`. The mount daemon's lifecycle is `crate::daemon`.
//! System calls go through `crate::os`; keys only through the `KeyService`
//! trait.
#![forbid(unsafe_code)]

mod attr;
mod budget;
mod dirkeys;
mod dirs;
mod entries;
mod error;
mod file;
mod filesystem;
mod fuse;
mod inodes;
mod keycache;
mod keypool;
mod links;
mod names;
mod node;
mod open;
mod options;
mod privs;
mod stats;
mod times;
mod xattr;

pub use self::budget::{DEFAULT_USER_HANDLES, HandleLimits};
pub use self::dirkeys::{
    DIR_KEY_XATTR, DirKeyList, DirKeysConfig, DirKeysSeen, LoadMacKey, SaveMacKey, lock_seen,
};
pub use self::error::FsError;
pub use self::filesystem::{FsConfig, KmsFs};
pub use self::fuse::Session;
pub use self::keycache::{MAX_AGE as KEY_CACHE_MAX_AGE, MAX_ENTRIES as KEY_CACHE_MAX_ENTRIES};
pub use self::keypool::{DEFAULT_POOL_SIZE, DataKeyPool, PoolConfig, PoolStats};
pub use self::node::{BACKING_LOCK, BACKING_MARKER, is_reserved};
pub use self::options::{Access, MountFlag, SessionConfig};
pub use self::stats::{Counters, counters, requests_served};
