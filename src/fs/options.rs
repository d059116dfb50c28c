//! The options a mount is made with, in kmsfs's own types: the adapter
//! (`fuse.rs`) turns them into fuser's, the daemon (`crate::daemon`) parses
//! them from `-o` and turns them into mount(2)'s.

/// One mount option, as `-o` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountFlag {
    /// `ro`: mounted read-only.
    ReadOnly,
    /// `rw`: mounted read-write.
    ReadWrite,
    /// `default_permissions`: the kernel checks permissions.
    DefaultPermissions,
    /// `auto_unmount`: fusermount3 unmounts when the daemon dies.
    AutoUnmount,
    /// `dev`: device files work.
    Dev,
    /// `nodev`: device files do not work.
    NoDev,
    /// `suid`: setuid and setgid bits take effect.
    Suid,
    /// `nosuid`: setuid and setgid bits are ignored.
    NoSuid,
    /// `exec`: programs may run from the mount.
    Exec,
    /// `noexec`: programs may not run from the mount.
    NoExec,
    /// `atime`: access times are updated.
    Atime,
    /// `noatime`: access times are left alone.
    NoAtime,
    /// `sync`: writes are synchronous.
    Sync,
    /// `async`: writes are asynchronous.
    Async,
    /// `dirsync`: directory changes are synchronous.
    DirSync,
    /// `fsname=`: the mount's source name.
    FsName(String),
    /// `subtype=`: the `fuse.` type's suffix.
    Subtype(String),
}

/// Who may use the mount besides its owner.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Access {
    /// Only the user who mounted it (FUSE's default).
    #[default]
    Owner,
    /// That user and root (`allow_root`).
    RootAndOwner,
    /// Every user (`allow_other`).
    All,
}

/// How the adapter sets up a FUSE session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// The mount options, complete (the daemon adds its defaults).
    pub flags: Vec<MountFlag>,
    /// Who may use the mount.
    pub access: Access,
    /// Serving threads.
    pub threads: usize,
    /// `-o io_uring`: serve through FUSE over io_uring when the kernel
    /// offers it (else /dev/fuse, logged).
    pub io_uring: bool,
}
