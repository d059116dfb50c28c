//! The `-o` mount options: parsing them, completing them with the daemon's
//! defaults for the FUSE session, and turning them into mount(2)'s flags and
//! data when the daemon mounts as root.

use std::path::Path;

use super::{MountError, SERVING_THREADS};
use crate::fs::{Access, MountFlag, SessionConfig};
use crate::os;

/// Parsed `-o` options.
#[derive(Debug, Default, PartialEq)]
pub struct Options {
    /// The options, in the order given.
    pub flags: Vec<MountFlag>,
    /// allow_other / allow_root.
    pub access: Access,
    /// Mounted read-only.
    pub read_only: bool,
    /// `nonempty`: mounting over a non-empty directory is allowed.
    pub nonempty: bool,
    /// `sharedstorage`: other daemons or hosts may serve the same backing
    /// directory; no lock, and no cache that assumes kmsfs is the only writer.
    pub shared_storage: bool,
    /// `no_writeback_cache`: every write(2) reaches the daemon at once, and
    /// the backing file's times are the ones shown (as with sharedstorage).
    pub no_writeback_cache: bool,
    /// `io_uring`: serve through FUSE over io_uring when the kernel offers it.
    pub io_uring: bool,
    /// `plaintextnames`: a new backing directory keeps its names in clear
    /// (recorded in its binding file at the first mount; no effect later).
    pub plain_names: bool,
    /// mount(2) flags of standard options that only the kernel honours
    /// (relatime, strictatime, nodiratime, lazytime).
    pub kernel_flags: u64,
    /// Standard options that do not apply to kmsfs or are for mount(8) and
    /// systemd (noauto, _netdev, x-systemd.*, dax, ...), with why: logged.
    pub ignored: Vec<(String, &'static str)>,
    /// `remount`: given by mount(8) to change a running mount.
    pub remount: bool,
    /// `max_user_handles=N`: open handles one user (not root) may hold.
    pub max_user_handles: Option<usize>,
    /// `datakey_pool=N`: data keys generated ahead for new files with a
    /// remote KMS (0: none; not given: `fs::DEFAULT_POOL_SIZE`).
    pub datakey_pool: Option<usize>,
    /// kmsfs's own settings as options, for fstab and mount(8).
    pub settings: Settings,
}

/// `keystore=`, `key_id=`, `passphrase_file=`, `log_file=`: what the command
/// line's flags of the same names set, for a mount from fstab.
#[derive(Debug, Default, PartialEq, Clone)]
pub struct Settings {
    /// `keystore=DIR`.
    pub keystore: Option<String>,
    /// `key_id=K`.
    pub key_id: Option<String>,
    /// `passphrase_file=FILE`.
    pub passphrase_file: Option<String>,
    /// `log_file=FILE`.
    pub log_file: Option<String>,
    /// `kms_endpoint=URL`.
    pub kms_endpoint: Option<String>,
    /// `kms_ca_bundle=FILE`.
    pub kms_ca_bundle: Option<String>,
}

/// The most data keys `-o datakey_pool` may keep ready.
const MAX_POOL: usize = 1024;

/// Options fstab lines carry that kmsfs accepts and ignores, and why.
fn ignored_option(opt: &str) -> Option<&'static str> {
    let for_mount8 = "for mount(8) and systemd";
    let not_here = "does not apply to a kmsfs mount";
    Some(match opt {
        "defaults" | "auto" | "noauto" | "user" | "nouser" | "users" | "owner" | "group"
        | "_netdev" | "nofail" | "loud" | "silent" | "fail" | "bg" | "fg" => for_mount8,
        o if o.starts_with("x-") || o.starts_with("comment=") || o.starts_with("X-") => for_mount8,
        "acl" | "noacl" | "user_xattr" | "nouser_xattr" | "dax" | "inlinecrypt" | "iversion"
        | "noiversion" | "nolazytime" | "mand" | "nomand" | "norelatime" | "nostrictatime"
        | "diratime" | "nosymfollow" | "symfollow" | "discard" | "nodiscard"
        | "errors=remount-ro" | "errors=continue" => not_here,
        o if o.starts_with("dax=")
            || o.starts_with("context=")
            || o.starts_with("fscontext=")
            || o.starts_with("defcontext=")
            || o.starts_with("rootcontext=")
            || o.starts_with("max_read=")
            || o.starts_with("blksize=") =>
        {
            not_here
        }
        _ => return None,
    })
}

/// Parses `-o a,b,c` lists; unknown options are refused.
pub fn parse_options(raw: &[String]) -> Result<Options, MountError> {
    let mut o = Options::default();
    for opt in raw
        .iter()
        .flat_map(|s| s.split(','))
        .filter(|s| !s.is_empty())
    {
        if let Some(m) = session_flag(opt) {
            o.flags.push(m);
            continue;
        }
        if let Some(bit) = kernel_only_flag(opt) {
            o.kernel_flags |= bit;
            continue;
        }
        if take_setting(&mut o.settings, opt) {
            continue;
        }
        let m = match opt {
            "allow_other" => {
                o.access = Access::All;
                continue;
            }
            "allow_root" => {
                o.access = Access::RootAndOwner;
                continue;
            }
            "ro" => {
                o.read_only = true;
                MountFlag::ReadOnly
            }
            "nonempty" => {
                o.nonempty = true;
                continue;
            }
            "sharedstorage" => {
                o.shared_storage = true;
                continue;
            }
            "no_writeback_cache" => {
                o.no_writeback_cache = true;
                continue;
            }
            "plaintextnames" => {
                o.plain_names = true;
                continue;
            }
            "io_uring" => {
                o.io_uring = true;
                continue;
            }
            "remount" => {
                o.remount = true;
                continue;
            }
            s if take_number(&mut o, s)? => continue,
            s if let Some(why) = ignored_option(s) => {
                o.ignored.push((s.to_string(), why));
                continue;
            }
            other => return Err(unknown_option(other)),
        };
        o.flags.push(m);
    }
    if o.has(&MountFlag::AutoUnmount) && o.access == Access::Owner {
        return Err(MountError::Usage(
            "auto_unmount needs allow_other or allow_root as well".into(),
        ));
    }
    Ok(o)
}

/// The options kept as they are for the FUSE session (and mount(2)).
fn session_flag(opt: &str) -> Option<MountFlag> {
    Some(match opt {
        "rw" => MountFlag::ReadWrite,
        "default_permissions" => MountFlag::DefaultPermissions,
        "auto_unmount" => MountFlag::AutoUnmount,
        "dev" => MountFlag::Dev,
        "nodev" => MountFlag::NoDev,
        "suid" => MountFlag::Suid,
        "nosuid" => MountFlag::NoSuid,
        "exec" => MountFlag::Exec,
        "noexec" => MountFlag::NoExec,
        "atime" => MountFlag::Atime,
        "noatime" => MountFlag::NoAtime,
        "sync" => MountFlag::Sync,
        "async" => MountFlag::Async,
        "dirsync" => MountFlag::DirSync,
        o if o.starts_with("fsname=") => MountFlag::FsName(o[7..].to_string()),
        o if o.starts_with("subtype=") => MountFlag::Subtype(o[8..].to_string()),
        _ => return None,
    })
}

/// The mount(2) flag of a standard option only the kernel honours.
fn kernel_only_flag(opt: &str) -> Option<u64> {
    Some(match opt {
        "relatime" => libc::MS_RELATIME,
        "strictatime" => libc::MS_STRICTATIME,
        "nodiratime" => libc::MS_NODIRATIME,
        "lazytime" => libc::MS_LAZYTIME,
        _ => return None,
    })
}

/// Takes an option with a number (`max_user_handles=`, `datakey_pool=`);
/// false if `opt` is not one, an error if its number is not allowed.
fn take_number(o: &mut Options, opt: &str) -> Result<bool, MountError> {
    if let Some(n) = opt.strip_prefix("max_user_handles=") {
        o.max_user_handles = Some(n.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
            MountError::Usage(format!(
                "max_user_handles={n}: a number of handles, at least 1"
            ))
        })?);
    } else if let Some(n) = opt.strip_prefix("datakey_pool=") {
        o.datakey_pool = Some(n.parse().ok().filter(|&n| n <= MAX_POOL).ok_or_else(|| {
            MountError::Usage(format!(
                "datakey_pool={n}: a number of data keys from 0 (none) to {MAX_POOL}"
            ))
        })?);
    } else {
        return Ok(false);
    }
    Ok(true)
}

/// Takes one of kmsfs's own settings (`keystore=` ...); false if `opt` is
/// not one.
fn take_setting(settings: &mut Settings, opt: &str) -> bool {
    match opt {
        s if s.starts_with("keystore=") => settings.keystore = Some(s[9..].to_string()),
        s if s.starts_with("key_id=") => settings.key_id = Some(s[7..].to_string()),
        s if s.starts_with("passphrase_file=") => {
            settings.passphrase_file = Some(s[16..].to_string())
        }
        s if s.starts_with("log_file=") => settings.log_file = Some(s[9..].to_string()),
        s if s.starts_with("kms_endpoint=") => settings.kms_endpoint = Some(s[13..].to_string()),
        s if s.starts_with("kms_ca_bundle=") => settings.kms_ca_bundle = Some(s[14..].to_string()),
        _ => return false,
    }
    true
}

/// The refusal of an option kmsfs does not know, listing those it does.
fn unknown_option(other: &str) -> MountError {
    MountError::Usage(format!(
        "unknown mount option {other:?} (known: allow_other, allow_root, \
         default_permissions, ro, rw, auto_unmount, [no]dev, [no]suid, [no]exec, \
         [no]atime, relatime, strictatime, nodiratime, lazytime, sync, async, \
         dirsync, fsname=, subtype=, nonempty, sharedstorage, no_writeback_cache, io_uring, max_user_handles=, datakey_pool=, \
         keystore=, key_id=, passphrase_file=, log_file=, kms_endpoint=, kms_ca_bundle=; ignored: defaults, [no]auto, [no]user, users, \
         _netdev, nofail, x-*, [no]acl, dax, inlinecrypt, ...)"
    ))
}

impl Options {
    /// True if the option was given.
    pub fn has(&self, f: &MountFlag) -> bool {
        self.flags.contains(f)
    }

    /// The FUSE session's configuration: the options given, plus
    /// default_permissions, the source name and the subtype unless given.
    pub fn session_config(&self, backing: &Path) -> SessionConfig {
        let mut flags = self.flags.clone();
        // The daemon runs as root and opens every backing file itself: the kernel
        // must check permissions against the attributes (gocryptfs does the same).
        if !self.has(&MountFlag::DefaultPermissions) {
            flags.push(MountFlag::DefaultPermissions);
        }
        if !flags.iter().any(|m| matches!(m, MountFlag::FsName(_))) {
            flags.push(MountFlag::FsName(self.source_name(backing)));
        }
        if !flags.iter().any(|m| matches!(m, MountFlag::Subtype(_))) {
            flags.push(MountFlag::Subtype("kmsfs".into()));
        }
        SessionConfig {
            flags,
            access: self.access,
            threads: SERVING_THREADS,
            io_uring: self.io_uring,
        }
    }

    /// The source name of the mount: the backing directory, as fstab lines
    /// and `umount BACKING` name it (mount(8) matches an fstab line's
    /// source and mount point to know it is mounted). The daemon is found by
    /// the mount's device, not by this name (`control::daemon_of`).
    pub fn source_name(&self, backing: &Path) -> String {
        self.flags
            .iter()
            .find_map(|m| match m {
                MountFlag::FsName(n) => Some(n.clone()),
                _ => None,
            })
            .unwrap_or_else(|| backing.display().to_string())
    }

    /// mount(2) flags and fuse mount data for the options (as root).
    pub fn kernel_mount_args(&self, fd: i32, rootmode: u32) -> (u64, String, String) {
        let mut flags = 0u64;
        if !self.has(&MountFlag::Suid) {
            flags |= libc::MS_NOSUID;
        }
        if !self.has(&MountFlag::Dev) {
            flags |= libc::MS_NODEV;
        }
        for (opt, f) in [
            (MountFlag::ReadOnly, libc::MS_RDONLY),
            (MountFlag::NoSuid, libc::MS_NOSUID),
            (MountFlag::NoDev, libc::MS_NODEV),
            (MountFlag::NoExec, libc::MS_NOEXEC),
            (MountFlag::NoAtime, libc::MS_NOATIME),
            (MountFlag::Sync, libc::MS_SYNCHRONOUS),
            (MountFlag::DirSync, libc::MS_DIRSYNC),
        ] {
            if self.has(&opt) {
                flags |= f;
            }
        }
        flags |= self.kernel_flags;
        let (uid, gid) = os::ids::ids();
        // The daemon opens every backing file as root: the kernel checks permissions.
        let mut data = format!(
            "fd={fd},rootmode={rootmode:o},user_id={uid},group_id={gid},default_permissions"
        );
        if self.access != Access::Owner {
            data.push_str(",allow_other");
        }
        let subtype = self
            .flags
            .iter()
            .find_map(|m| match m {
                MountFlag::Subtype(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_else(|| "kmsfs".into());
        (flags, data, format!("fuse.{subtype}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_refuse() {
        let o = parse_options(&["ro,allow_other".into(), "default_permissions".into()]).unwrap();
        assert!(o.read_only);
        assert_eq!(o.access, Access::All);
        assert_eq!(
            o.flags,
            vec![MountFlag::ReadOnly, MountFlag::DefaultPermissions]
        );
        assert!(parse_options(&["bogus".into()]).is_err());
        assert!(parse_options(&["auto_unmount".into()]).is_err());
        let pool = |s: &str| parse_options(&[s.into()]).map(|o| o.datakey_pool);
        assert_eq!(pool("rw").unwrap(), None);
        assert_eq!(pool("datakey_pool=0").unwrap(), Some(0));
        assert_eq!(pool("datakey_pool=1024").unwrap(), Some(1024));
        assert!(pool("datakey_pool=1025").is_err());
        assert!(pool("datakey_pool=-1").is_err());
        assert!(parse_options(&["max_user_handles=0".into()]).is_err());
    }

    #[test]
    fn fstab_options_are_accepted() {
        let o = parse_options(&[
            "rw,relatime,noauto,_netdev,x-systemd.automount,nofail,defaults,noacl,dax,\
             inlinecrypt,keystore=/etc/kmsfs,key_id=alias/x,passphrase_file=/root/p,\
             log_file=/var/log/k.log,kms_endpoint=https://10.0.0.1:4599,\
             kms_ca_bundle=/etc/kmsfs/ca.pem"
                .into(),
        ])
        .unwrap();
        assert_eq!(o.flags, vec![MountFlag::ReadWrite]);
        assert_eq!(o.kernel_flags, libc::MS_RELATIME);
        assert_eq!(o.settings.keystore.as_deref(), Some("/etc/kmsfs"));
        assert_eq!(o.settings.key_id.as_deref(), Some("alias/x"));
        assert_eq!(o.settings.passphrase_file.as_deref(), Some("/root/p"));
        assert_eq!(o.settings.log_file.as_deref(), Some("/var/log/k.log"));
        assert_eq!(
            o.settings.kms_endpoint.as_deref(),
            Some("https://10.0.0.1:4599")
        );
        assert_eq!(
            o.settings.kms_ca_bundle.as_deref(),
            Some("/etc/kmsfs/ca.pem")
        );
        let ignored: Vec<&str> = o.ignored.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(
            ignored,
            [
                "noauto",
                "_netdev",
                "x-systemd.automount",
                "nofail",
                "defaults",
                "noacl",
                "dax",
                "inlinecrypt"
            ]
        );
        assert!(!o.remount);
        assert!(parse_options(&["ro,remount".into()]).unwrap().remount);
        let (flags, _, _) = parse_options(&["strictatime,nodiratime".into()])
            .unwrap()
            .kernel_mount_args(3, 0o40000);
        assert_eq!(
            flags,
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_STRICTATIME | libc::MS_NODIRATIME
        );
    }

    #[test]
    fn kernel_mount_arguments() {
        let o = parse_options(&["ro,allow_other,noexec".into()]).unwrap();
        let (flags, data, ty) = o.kernel_mount_args(7, 0o40000);
        let want = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        assert_eq!(flags, want);
        assert!(data.starts_with("fd=7,rootmode=40000,"), "{data}");
        assert!(data.ends_with(",default_permissions,allow_other"), "{data}");
        assert_eq!(ty, "fuse.kmsfs");
        let o = parse_options(&["suid,dev,subtype=x".into()]).unwrap();
        let (flags, data, ty) = o.kernel_mount_args(3, 0o40000);
        assert_eq!(flags, 0);
        assert!(!data.contains("allow_other"));
        assert_eq!(ty, "fuse.x");
    }
}
