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
        TrustError::Io { what, path, source } => MountError::Io(format!(
            "log directory {}: cannot {what} {}: {source}",
            dir.display(),
            path.display()
        )),
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
    let f = std::fs::OpenOptions::new()
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
            _ => MountError::Io(format!("log file {}: {e}", path.display())),
        })?;
    let m = f
        .metadata()
        .map_err(|e| MountError::Io(format!("log file {}: {e}", path.display())))?;
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
    // The log names files and keys: for the owner alone, even if it was
    // made by hand with a wider mode.
    if m.mode() & 0o077 != 0 {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| MountError::Io(format!("log file {}: chmod 0600: {e}", path.display())))?;
    }
    Ok(f)
}
