//! Reading /proc/self/mountinfo, and the checks made on it before mounting:
//! the mount point is free (a dead mount on it is detached), the backing
//! directory is not served by another daemon.

use std::path::{Path, PathBuf};

use super::MountError;
use crate::logtext::escaped;
use crate::os;

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq)]
pub struct MountInfo {
    /// Mount point.
    pub mountpoint: PathBuf,
    /// File system type ("fuse", "fuse.x", ...).
    pub fstype: String,
    /// The source: for kmsfs mounts the backing directory, as an fstab
    /// line names it (mounts of older versions: "kmsfs:PID:BACKING").
    /// Whoever made the mount chose it: it is never used to find a daemon.
    pub source: String,
    /// The mounted device, `MAJ:MIN` (a FUSE mount's anonymous device).
    pub device: String,
    /// The per-mount options (`rw,nosuid,nodev,relatime`).
    pub options: String,
}

impl MountInfo {
    /// True for mounts made by kmsfs (type fuse.kmsfs, or a kmsfs source name).
    pub fn is_kmsfs(&self) -> bool {
        self.fstype == "fuse.kmsfs" || self.source.starts_with("kmsfs:")
    }

    /// The backing directory a kmsfs mount's source names (as its maker
    /// said: for messages and waiting, never for a decision about keys).
    pub fn backing(&self) -> Option<PathBuf> {
        if let Some(rest) = self.source.strip_prefix("kmsfs:") {
            return Some(PathBuf::from(rest.split_once(':')?.1));
        }
        (self.is_kmsfs() && self.source.starts_with('/')).then(|| PathBuf::from(&self.source))
    }

    /// The pid of the daemon serving this mount: one of this user's own
    /// daemons, found through its control socket by the mount's device and
    /// mount point (`control::daemon_of`), never from the source.
    pub fn daemon_pid(&self) -> Option<u32> {
        if !self.is_kmsfs() {
            return None;
        }
        super::control::daemon_of(self)
    }

    /// True when the mount's daemon is gone: a stale mount, on which every
    /// access fails with ENOTCONN (no daemon of this user answers for it,
    /// and listing it fails so).
    pub fn daemon_gone(&self) -> bool {
        self.is_kmsfs()
            && self.daemon_pid().is_none()
            && probe_mountpoint(&self.mountpoint).is_err_and(|e| is_enotconn(&e))
    }
}

fn unescape(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            Some(MountInfo {
                mountpoint: PathBuf::from(unescape(f.get(4)?)),
                fstype: f.get(sep + 1)?.to_string(),
                source: unescape(f.get(sep + 2)?),
                device: f.get(2)?.to_string(),
                options: f.get(5)?.to_string(),
            })
        })
        .collect()
}

/// The mount at exactly `path`, if any (the last one wins when stacked).
#[allow(clippy::disallowed_methods)] // a system file (/proc, /sys, /etc), not a tree a user can write
pub fn mount_at(path: &Path) -> Option<MountInfo> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_mountinfo(&text)
        .into_iter()
        .rfind(|m| m.mountpoint == path)
}

/// The error of any access to a FUSE mount whose daemon is gone.
pub fn is_enotconn(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED))
}

/// The metadata of a mount point. For up to the attribute TTL after a FUSE
/// daemon died, stat still answers from the kernel's cache; opening the
/// directory always reaches the daemon, and fails with ENOTCONN once it is gone.
#[allow(clippy::disallowed_methods)] // the mount point the user named, used as given
fn probe_mountpoint(mp: &Path) -> std::io::Result<std::fs::Metadata> {
    let m = std::fs::metadata(mp)?;
    if m.is_dir()
        && mount_at(mp).is_some()
        && let Err(e) = std::fs::read_dir(mp)
        && is_enotconn(&e)
    {
        return Err(e);
    }
    Ok(m)
}

/// Checks a mount point before mounting: it must be an existing directory
/// with nothing live mounted on it. A dead FUSE mount (its daemon died: every
/// access fails with ENOTCONN) is detached lazily; if that fails the error
/// says what to run.
pub fn prepare_mountpoint(mp: &Path) -> Result<(), MountError> {
    match probe_mountpoint(mp) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(MountError::NotFound(format!(
                "mount point {} is not a directory",
                mp.display()
            )));
        }
        Err(e) if is_enotconn(&e) => {
            log::warn!(
                "{}: stale mount (its daemon died); detaching it",
                escaped(mp)
            );
            eprintln!(
                "kmsfs: {} held a dead mount (its daemon had exited); detached it",
                mp.display()
            );
            return os::mount::umount2(mp, libc::MNT_DETACH).map_err(|e| {
                MountError::State(
                    format!(
                        "{} holds a dead mount that could not be detached: {e}",
                        mp.display()
                    ),
                    format!(
                        "run `fusermount3 -u -z {0}` (or as root `umount -l {0}`)",
                        mp.display()
                    ),
                )
            });
        }
        Err(e) => {
            return Err(MountError::NotFound(format!(
                "mount point {}: {e}",
                mp.display()
            )));
        }
    }
    if let Some(m) = mount_at(mp) {
        return Err(MountError::State(
            format!(
                "{} is already a mount point ({} from {})",
                mp.display(),
                m.fstype,
                m.source
            ),
            format!("unmount it first: `kmsfs unmount {}`", mp.display()),
        ));
    }
    Ok(())
}

/// Refuses a backing directory that another kmsfs mount serves: two daemons
/// over one directory would each trust their own caches.
#[allow(clippy::disallowed_methods)] // a system file (/proc, /sys, /etc), not a tree a user can write
pub(super) fn check_backing_unused(backing: &Path) -> Result<(), MountError> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Ok(());
    };
    let other = parse_mountinfo(&text)
        .into_iter()
        .find(|m| m.is_kmsfs() && m.backing().as_deref() == Some(backing));
    match other {
        Some(m) => Err(MountError::State(
            format!(
                "{} is already mounted at {}",
                backing.display(),
                m.mountpoint.display()
            ),
            format!(
                "use that mount, or unmount it first: `kmsfs unmount {}`",
                m.mountpoint.display()
            ),
        )),
        None => Ok(()),
    }
}

/// The mount point of the kmsfs mount that serves `backing`, if any.
#[allow(clippy::disallowed_methods)] // a system file (/proc, /sys, /etc), not a tree a user can write
pub fn serving_mount(backing: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_mountinfo(&text)
        .into_iter()
        .rfind(|m| m.is_kmsfs() && m.backing().as_deref() == Some(backing))
        .map(|m| m.mountpoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_parsing() {
        let t = "36 35 98:0 / /mnt/a\\040b rw,noatime master:1 - fuse kmsfs:123:/data/x rw,user_id=0\n\
                 37 35 98:0 / /other rw - ext4 /dev/sda1 rw\n\
                 38 35 0:77 / /mnt/c rw - fuse.kmsfs /data/b\\040c rw,user_id=0\n";
        let m = parse_mountinfo(t);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].mountpoint, PathBuf::from("/mnt/a b"));
        assert_eq!(m[0].fstype, "fuse");
        assert_eq!(m[0].backing(), Some(PathBuf::from("/data/x")));
        assert_eq!(m[1].backing(), None);
        assert_eq!(m[1].daemon_pid(), None);
        // The source is the backing directory, as fstab names it.
        assert!(m[2].is_kmsfs());
        assert_eq!(m[2].backing(), Some(PathBuf::from("/data/b c")));
        assert_eq!(m[2].device, "0:77");
    }
}
