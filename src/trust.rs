//! Paths that only root and this process's user can change: the rule the
//! keystore and the mount daemon's log share. A root process that writes
//! below a directory another user can change could be sent anywhere by that
//! user (a swapped directory, a symbolic or hard link put in place).
#![forbid(unsafe_code)]

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Why a path is not trusted.
#[derive(Debug)]
pub enum TrustError {
    /// A directory on the path can be changed by another user.
    Untrusted {
        /// That directory.
        dir: PathBuf,
        /// Its owner.
        uid: u32,
        /// Its permission bits.
        mode: u32,
    },
    /// A path could not be resolved or examined.
    Io {
        /// What was being done ("resolve", "stat").
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The effective uid of this process.
pub fn effective_uid() -> Option<u32> {
    Some(crate::os::ids::effective_uid())
}

/// True for the owners this process trusts: root and its own effective user.
pub fn trusted_owner(uid: u32) -> bool {
    uid == 0 || Some(uid) == effective_uid()
}

/// Which directories of a path are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every directory above the path (the keystore directory guards its own
    /// entries with O_NOFOLLOW opens and a lock).
    Ancestors,
    /// The directory itself as well: whoever can change it can put a link
    /// where a file will be opened (a log directory).
    WithSelf,
}

/// Resolves `dir` once and checks that nobody but root and this process's
/// user can change the path to it: every directory checked (see `Scope`) must
/// belong to one of them and be writable by no one else, except a sticky
/// directory (such as /tmp) whose entry on the path belongs to one of them (or
/// does not exist yet). With `create`, the missing tail of `dir` is checked as
/// the place it will be created in. Returns the resolved path, which callers
/// then use throughout.
#[allow(clippy::disallowed_methods)] // the path checker itself: one component at a time, links checked
pub fn trusted_path(dir: &Path, create: bool, scope: Scope) -> Result<PathBuf, TrustError> {
    let io = |what, path: &Path, source| TrustError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    let mut existing = dir.to_path_buf();
    let mut missing = Vec::new();
    while create
        && matches!(fs::symlink_metadata(&existing), Err(ref e) if e.kind() == ErrorKind::NotFound)
    {
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                missing.push(name.to_os_string());
                existing = crate::os::or_dot(parent).to_path_buf();
            }
            _ => break,
        }
    }
    check_links(&existing)?;
    let real = fs::canonicalize(&existing).map_err(|e| io("resolve", &existing, e))?;
    // Checked: the ancestors of `real`, and `real` itself when new
    // directories are to be made in it or the scope asks for it.
    let skip_self = missing.is_empty() && scope == Scope::Ancestors;
    let mut child_owner: Option<u32> = None;
    if skip_self {
        let m = fs::symlink_metadata(&real).map_err(|e| io("stat", &real, e))?;
        child_owner = Some(m.uid());
    }
    for d in real.ancestors().skip(usize::from(skip_self)) {
        let m = fs::symlink_metadata(d).map_err(|e| io("stat", d, e))?;
        let others_write = m.mode() & 0o022 != 0;
        let sticky = m.mode() & 0o1000 != 0;
        let ok = trusted_owner(m.uid())
            && (!others_write || (sticky && child_owner.is_none_or(trusted_owner)));
        if !ok {
            return Err(TrustError::Untrusted {
                dir: d.to_path_buf(),
                uid: m.uid(),
                mode: m.mode() & 0o7777,
            });
        }
        child_owner = Some(m.uid());
    }
    let mut out = real;
    for name in missing.into_iter().rev() {
        out.push(name);
    }
    Ok(out)
}

/// Refuses a symbolic link on the way to `path` that another user made or
/// can replace (one in a directory that is not root's or this user's, or
/// that others can write, unless sticky): resolving the path and checking
/// where it leads would otherwise miss that the link itself is someone
/// else's choice (a user's `~/.local/state/kmsfs` leading into a root-only
/// directory).
#[allow(clippy::disallowed_methods)] // the path checker itself: one component at a time, links checked
fn check_links(path: &Path) -> Result<(), TrustError> {
    use std::path::Component;
    let io = |what, path: &Path, source| TrustError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    let abs = std::path::absolute(path).map_err(|e| io("resolve", path, e))?;
    let mut cur = PathBuf::from("/");
    let mut links = 0;
    let mut todo: Vec<std::ffi::OsString> = abs
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    while let Some(n) = todo.pop() {
        if n == ".." {
            cur.pop();
            continue;
        }
        cur.push(&n);
        let m = match fs::symlink_metadata(&cur) {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io("stat", &cur, e)),
        };
        if !m.file_type().is_symlink() {
            continue;
        }
        let parent = cur.parent().unwrap_or(Path::new("/")).to_path_buf();
        let pm = fs::symlink_metadata(&parent).map_err(|e| io("stat", &parent, e))?;
        let others_write = pm.mode() & 0o022 != 0;
        let sticky = pm.mode() & 0o1000 != 0;
        let parent_ok = trusted_owner(pm.uid()) && (!others_write || sticky);
        if !trusted_owner(m.uid()) || !parent_ok {
            let (dir, uid, mode) = if trusted_owner(m.uid()) {
                (parent, pm.uid(), pm.mode() & 0o7777)
            } else {
                (cur.clone(), m.uid(), m.mode() & 0o7777)
            };
            return Err(TrustError::Untrusted { dir, uid, mode });
        }
        links += 1;
        if links > 40 {
            return Err(io(
                "resolve",
                &cur,
                std::io::Error::from_raw_os_error(libc::ELOOP),
            ));
        }
        // Go on from where the link leads, its own components checked too.
        let target = fs::read_link(&cur).map_err(|e| io("read", &cur, e))?;
        cur.pop();
        if target.is_absolute() {
            cur = PathBuf::from("/");
        }
        todo.extend(target.components().rev().filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        }));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // fixtures are made by path
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(p: &Path, mode: u32) {
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_link_on_the_way_must_be_trusted_where_it_is() {
        let t = tempfile::tempdir().unwrap();
        let open = t.path().join("open");
        let target = t.path().join("target");
        fs::create_dir(&open).unwrap();
        fs::create_dir(&target).unwrap();
        chmod(t.path(), 0o755);
        std::os::unix::fs::symlink(&target, open.join("l")).unwrap();
        // A link this user owns in a directory only it can write: fine.
        chmod(&open, 0o755);
        assert!(trusted_path(&open.join("l"), false, Scope::WithSelf).is_ok());
        assert!(trusted_path(&open.join("l/new"), true, Scope::WithSelf).is_ok());
        // The same link where anyone could have put it: refused, though
        // where it leads is trusted.
        chmod(&open, 0o777);
        match trusted_path(&open.join("l/new"), true, Scope::WithSelf) {
            Err(TrustError::Untrusted { dir, .. }) => assert_eq!(dir, open),
            other => panic!("{other:?}"),
        }
        chmod(&open, 0o755);
    }

    #[test]
    fn the_directory_itself_counts_only_with_self_scope() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("d");
        fs::create_dir(&d).unwrap();
        chmod(&d, 0o777);
        // Its entries can be changed by anyone: fine for the ancestors rule,
        // refused when the directory itself must be trusted.
        assert!(trusted_path(&d, false, Scope::Ancestors).is_ok());
        match trusted_path(&d, false, Scope::WithSelf) {
            Err(TrustError::Untrusted { dir, mode, .. }) => {
                assert_eq!(dir, fs::canonicalize(&d).unwrap());
                assert_eq!(mode, 0o777);
            }
            other => panic!("{other:?}"),
        }
        // Below it, nothing is trusted either way.
        let below = d.join("x");
        fs::create_dir(&below).unwrap();
        assert!(matches!(
            trusted_path(&below, false, Scope::Ancestors),
            Err(TrustError::Untrusted { .. })
        ));
        // A sticky directory (like /tmp) may hold a trusted entry.
        chmod(&d, 0o1777);
        assert!(trusted_path(&below, false, Scope::Ancestors).is_ok());
        assert!(trusted_path(&d, false, Scope::WithSelf).is_ok());
        chmod(&d, 0o700);
        assert!(trusted_path(&d, false, Scope::WithSelf).is_ok());
        // To be made: checked where it would be made.
        let new = d.join("a/b");
        assert_eq!(
            trusted_path(&new, true, Scope::WithSelf).unwrap(),
            fs::canonicalize(&d).unwrap().join("a/b")
        );
        chmod(&d, 0o777);
        assert!(trusted_path(&new, true, Scope::Ancestors).is_err());
    }
}
