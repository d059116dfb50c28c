//! Extended attributes through the mount: the backing object's own, except
//! kmsfs's reserved names (hidden, and refused to change), POSIX ACLs and
//! the SELinux label (not supported: the kernel would not enforce them).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use super::dirkeys::DIR_KEY_XATTR;
use super::error::FsError;
use super::filesystem::KmsFs;
use crate::kms::Caller;
use crate::os;

/// Extended attribute names the mount reserves for itself: hidden from
/// listings and refused to get, set and remove, so programs above cannot read
/// or clobber internal data.
pub(super) const RESERVED_XATTR_PREFIXES: [&str; 2] = ["user.kmsfs.", "trusted.kmsfs."];

/// The POSIX ACL xattrs. The mount does not support ACLs: the kernel checks
/// only the mode bits (FUSE_POSIX_ACL is not requested), so an ACL passed to
/// the backing file would not be enforced, while ext4 would still rewrite the
/// group bits to its mask. Getting, setting and removing them is EOPNOTSUPP,
/// as on a file system without ACLs (ones the backing file has anyway are
/// neither listed nor returned): a program that meets EOPNOTSUPP knows the
/// mount has no ACLs and stops asking (`ls -l` asks once per device instead
/// of once per file, each a round trip to the daemon).
pub(super) const ACL_XATTRS: [&str; 2] = ["system.posix_acl_access", "system.posix_acl_default"];

/// The SELinux label. The mount does not carry security labels: the kernel
/// labels a FUSE mount as a whole (genfs), so a label passed to the backing
/// file would label nothing, and the backing file's own label is the
/// daemon's business. Like the ACLs, it is EOPNOTSUPP to get, set and
/// remove, and not listed (`ls -l` asks for it once per device, not per file).
pub(super) const LABEL_XATTRS: [&str; 1] = ["security.selinux"];

/// What a getxattr or listxattr answers: the size when asked with size 0,
/// else the bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum XattrValue {
    /// The size the value needs.
    Size(u32),
    /// The value.
    Data(Vec<u8>),
}

/// The answer for a value of `n` bytes in `buf` to a request of `size`.
pub(super) fn answer(n: usize, size: u32, mut buf: Vec<u8>) -> Result<XattrValue, FsError> {
    if size == 0 {
        Ok(XattrValue::Size(n as u32))
    } else if n > size as usize {
        Err(FsError::TooSmall)
    } else {
        buf.truncate(n);
        Ok(XattrValue::Data(buf))
    }
}

/// Debug builds only, for the test suite: a node's backing path, relative to
/// the backing root (its encrypted names with encrypted names), to root;
/// tests reach the backing object of a name this way in both names modes.
#[cfg(debug_assertions)]
pub(super) const BACKING_XATTR: &str = "trusted.kmsfs.backing";

impl KmsFs {
    /// The getxattr answer for `BACKING_XATTR` on `ino` to a caller of
    /// `uid`: ENODATA (as for any name kmsfs reserves) to anyone but root.
    #[cfg(debug_assertions)]
    pub(super) fn backing_xattr(
        &self,
        ino: u64,
        uid: u32,
        size: u32,
    ) -> Result<XattrValue, FsError> {
        if uid != 0 {
            return Err(FsError::NoAttribute);
        }
        let rel = super::filesystem::lock(&self.inodes)
            .node(ino)
            .map(|(p, _)| p.as_os_str().as_bytes().to_vec())
            .ok_or(FsError::NotFound)?;
        answer(rel.len(), size, rel)
    }
}

/// True when `name` is reserved for the mount's own use.
pub(super) fn reserved_xattr(name: &OsStr) -> bool {
    let n = name.as_encoded_bytes();
    RESERVED_XATTR_PREFIXES
        .iter()
        .any(|p| n.starts_with(p.as_bytes()))
}

/// True for a POSIX ACL xattr (`ACL_XATTRS`).
pub(super) fn acl_xattr(name: &OsStr) -> bool {
    ACL_XATTRS
        .iter()
        .any(|a| name.as_encoded_bytes() == a.as_bytes())
}

/// True for a name the mount does not support (`ACL_XATTRS`, `LABEL_XATTRS`).
pub(super) fn unsupported_xattr(name: &OsStr) -> bool {
    acl_xattr(name)
        || LABEL_XATTRS
            .iter()
            .any(|a| name.as_encoded_bytes() == a.as_bytes())
}

/// Removes reserved and unsupported names from a NUL-separated xattr name list.
pub(super) fn filter_xattr_list(list: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(list.len());
    for name in list.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name_os = OsStr::from_bytes(name);
        if !reserved_xattr(name_os) && !unsupported_xattr(name_os) {
            out.extend_from_slice(name);
            out.push(0);
        }
    }
    out
}

/// The prefix of the names only CAP_SYS_ADMIN may see.
const TRUSTED: &[u8] = b"trusted.";

fn names(list: &[u8]) -> impl Iterator<Item = &[u8]> {
    list.split(|b| *b == 0).filter(|n| !n.is_empty())
}

/// True when a NUL-separated name list has a `trusted.*` name.
fn contains_trusted(list: &[u8]) -> bool {
    names(list).any(|n| n.starts_with(TRUSTED))
}

/// A NUL-separated name list without its `trusted.*` names.
fn without_trusted(list: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(list.len());
    for n in names(list).filter(|n| !n.starts_with(TRUSTED)) {
        out.extend_from_slice(n);
        out.push(0);
    }
    out
}

impl KmsFs {
    /// getxattr of `ino`'s backing object (a symlink itself).
    pub fn getxattr(&self, ino: u64, name: &OsStr, size: u32) -> Result<XattrValue, FsError> {
        if name == DIR_KEY_XATTR {
            return self.get_dir_key(ino, size);
        }
        if reserved_xattr(name) {
            return Err(FsError::NoAttribute);
        }
        if unsupported_xattr(name) {
            return Err(FsError::Unsupported);
        }
        let node = self.open_checked(ino, libc::O_PATH)?.file;
        let mut buf = vec![0u8; size as usize];
        let n = os::xattr::getxattr_node(&node, name, &mut buf)?;
        answer(n, size, buf)
    }

    /// listxattr of `ino`'s backing object, without reserved and
    /// unsupported names, and without `trusted.*` names unless `caller`
    /// holds CAP_SYS_ADMIN (as ext4 lists them; the daemon, root, sees them
    /// all).
    pub fn listxattr(&self, ino: u64, caller: &Caller, size: u32) -> Result<XattrValue, FsError> {
        let node = self.open_checked(ino, libc::O_PATH)?.file;
        let n = os::xattr::listxattr_node(&node, &mut [])?;
        let mut buf = vec![0u8; n];
        let n = os::xattr::listxattr_node(&node, &mut buf)?;
        buf.truncate(n);
        let mut list = filter_xattr_list(&buf);
        if contains_trusted(&list) && !super::privs::has_sys_admin(caller) {
            list = without_trusted(&list);
        }
        answer(list.len(), size, list)
    }

    /// setxattr (`flags`: XATTR_CREATE, XATTR_REPLACE) for `caller`.
    pub fn setxattr(
        &self,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        caller: &Caller,
    ) -> Result<(), FsError> {
        if name == DIR_KEY_XATTR {
            return self.set_dir_key(ino, value, caller);
        }
        self.change_xattr(ino, name, |node| {
            os::xattr::setxattr_node(node, name, value, flags)
        })
    }

    /// removexattr for `caller`.
    pub fn removexattr(&self, ino: u64, name: &OsStr, caller: &Caller) -> Result<(), FsError> {
        if name == DIR_KEY_XATTR {
            return self.clear_dir_key(ino, caller);
        }
        self.change_xattr(ino, name, |node| os::xattr::removexattr_node(node, name))
    }

    /// setxattr and removexattr: kmsfs's own names are refused (EPERM), POSIX
    /// ACLs and security labels too (EOPNOTSUPP: the kernel would not enforce
    /// them), then `change`
    /// runs on the entry checked to be `ino` (a symlink itself).
    fn change_xattr(
        &self,
        ino: u64,
        name: &OsStr,
        change: impl FnOnce(&std::fs::File) -> std::io::Result<()>,
    ) -> Result<(), FsError> {
        if reserved_xattr(name) {
            return Err(FsError::Reserved);
        }
        if unsupported_xattr(name) {
            return Err(FsError::Unsupported);
        }
        self.writable()?;
        Ok(change(&self.open_checked(ino, libc::O_PATH)?.file)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xattr_filter() {
        assert!(reserved_xattr(OsStr::new("user.kmsfs.x")));
        assert!(!reserved_xattr(OsStr::new("user.other")));
        let l = b"user.a\0user.kmsfs.hdr\0security.selinux\0security.x\0";
        assert_eq!(filter_xattr_list(l), b"user.a\0security.x\0".to_vec());
        assert!(unsupported_xattr(OsStr::new("security.selinux")));
        assert!(unsupported_xattr(OsStr::new("system.posix_acl_default")));
        assert!(!unsupported_xattr(OsStr::new("security.capability")));
        assert!(acl_xattr(OsStr::new("system.posix_acl_access")));
        assert!(acl_xattr(OsStr::new("system.posix_acl_default")));
        assert!(!acl_xattr(OsStr::new("system.posix_acl_accessx")));
        let l = b"system.posix_acl_access\0user.a\0system.posix_acl_default\0";
        assert_eq!(filter_xattr_list(l), b"user.a\0".to_vec());
        let l = b"user.a\0trusted.x\0security.b\0trusted.y\0";
        assert!(contains_trusted(l));
        assert_eq!(without_trusted(l), b"user.a\0security.b\0".to_vec());
        assert!(!contains_trusted(b"user.trusted.x\0"));
    }
}
