//! The daemon's log file: its directory is one only root and the user can
//! change, and the file is opened without following links.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::MountError;
use crate::os;
use crate::trust::{self, Scope, TrustError};

/// Checks the directory of the daemon's log (`create`: the directory is yet
/// to be made) with the keystore's rule (`crate::trust`), the directory itself
/// included: whoever can change it could put a link where the root daemon
/// opens its log. Returns the resolved directory.
pub fn check_log_dir(dir: &Path, create: bool) -> Result<PathBuf, MountError> {
    trust::trusted_path(dir, create, Scope::WithSelf).map_err(|e| match e {
        TrustError::Untrusted { dir: d, uid, mode } => MountError::Refused(
            format!(
                "refusing the log directory {}: {} can be changed by another user (owner uid \
                 {uid}, mode {mode:o}), who could put a link to another file where the daemon \
                 opens its log",
                dir.display(),
                d.display()
            ),
            "pass --log-file FILE in a directory only root and you can change (e.g. under \
             /var/log), or mount without another user's environment (sudo without -E)"
                .into(),
        ),
        TrustError::Io { what, path, source } => MountError::io(
            format!(
                "log directory {}: cannot {what} {}",
                dir.display(),
                path.display()
            ),
            source,
        ),
    })
}

/// Opens the daemon's log for appending: in a directory that passes
/// `check_log_dir`, never through a symbolic link (O_NOFOLLOW), created 0600,
/// and only a regular file that root or this user owns.
pub fn open_log(path: &Path) -> Result<File, MountError> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(MountError::Usage(format!(
            "log file {} does not name a file",
            path.display()
        )));
    };
    let real = check_log_dir(os::or_dot(dir), false)?.join(name);
    // The log file a user named.
    #[allow(clippy::disallowed_methods)]
    let f = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(&real)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => MountError::Refused(
                format!(
                    "refusing the log file {}: it is a symbolic link, and the daemon never \
                     follows one to its log (someone may be trying to redirect its writes)",
                    path.display()
                ),
                "check who made it and remove it, or pass another --log-file".into(),
            ),
            _ => MountError::io(format!("log file {}", path.display()), e),
        })?;
    let m = f
        .metadata()
        .map_err(|e| MountError::io(format!("log file {}", path.display()), e))?;
    if !m.is_file() || !trust::trusted_owner(m.uid()) {
        return Err(MountError::Refused(
            format!(
                "refusing the log file {}: it is not a regular file owned by root or you \
                 (owner uid {}, mode {:o})",
                path.display(),
                m.uid(),
                m.mode()
            ),
            "check who made it and remove it, or pass another --log-file".into(),
        ));
    }
    if !is_kmsfs_log(&f) {
        return Err(MountError::Refused(
            format!(
                "refusing the log file {}: it exists, is not empty and is not a kmsfs log; \
                 the daemon would append to it and make it 0600",
                path.display()
            ),
            "pass a new file, or a log an earlier kmsfs mount wrote".into(),
        ));
    }
    // The log names files and keys: for the owner alone, even if it was
    // made by hand with a wider mode.
    if m.mode() & 0o077 != 0 {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| MountError::io(format!("log file {}: chmod 0600", path.display()), e))?;
    }
    Ok(f)
}

/// True when the file `f` holds is empty or has, among its first lines, one
/// as the daemon writes them: `TIME kmsfs[PID] LEVEL ...` (cli's logger;
/// other lines, such as a panic's, may come first).
fn is_kmsfs_log(f: &File) -> bool {
    use std::os::unix::fs::FileExt;
    let mut head = [0u8; 4096];
    let n = match f.read_at(&mut head, 0) {
        Ok(n) => n,
        Err(_) => return false,
    };
    if n == 0 {
        return true;
    }
    head[..n].split(|b| *b == b'\n').any(|line| {
        let mut words = line.splitn(3, |b| *b == b' ');
        let (Some(time), Some(who)) = (words.next(), words.next()) else {
            return false;
        };
        !time.is_empty()
            && time
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b":-.+".contains(b))
            && who.starts_with(b"kmsfs[")
            && who.ends_with(b"]")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_empty_file_or_a_kmsfs_log_is_a_kmsfs_log() {
        let t = tempfile::tempfile().unwrap();
        assert!(is_kmsfs_log(&t));
        let write = |b: &[u8]| {
            use std::os::unix::fs::FileExt;
            let f = tempfile::tempfile().unwrap();
            f.write_all_at(b, 0).unwrap();
            is_kmsfs_log(&f)
        };
        assert!(write(
            b"2026-12-07T15:19:15.123Z kmsfs[42] INFO  kmsfs::daemon: mounted\n"
        ));
        assert!(!write(b"root:x:0:0:root:/root:/bin/bash\n"));
        assert!(!write(b"# kmsfs[1] fake\n"));
        assert!(!write(b"\n"));
    }
}
