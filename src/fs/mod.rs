//! The FUSE frontend: inodes, handles, locks, encrypted read/write through
//! `envelope`, the data-key cache. The only module that imports fuser.
