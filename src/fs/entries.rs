//! Directory entries: creating files (under the mount's key), nodes,
//! directories and symlinks owned by the caller with their exact mode, hard
//! links, renames and removals.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use super::attr::Attr;
use super::error::FsError;
use super::filesystem::KmsFs;
use super::open::OpenFile;
use crate::kms::Caller;
use crate::os;

impl KmsFs {
    /// Creates `name` in `parent` under the mount's key and opens it.
    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        caller: &Caller,
    ) -> Result<(Attr, Arc<OpenFile>), FsError> {
        let (dir, name, rel) = self.in_dir(parent, name)?;
        let backing = self.backing_path(&rel);
        let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL;
        // Made 0600 and root's: the caller's mode (setid bits included)
        // only once the file is the caller's, so there is no moment at which
        // a root-owned file carries them, or others may open it.
        let file = os::beneath::open_beneath(&dir, Path::new(&name), flags, 0o600)?;
        let sealed = self.new_group(&dir, caller).and_then(|(gid, _)| {
            super::file::share_lock(&file, &backing)?;
            self.set_owner(&file, caller, gid)?;
            if mode & 0o7777 != 0o600 {
                file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
            }
            self.create_encrypted(file, caller, &backing)
                .map_err(|e| FsError::envelope(e, &backing))
        });
        let ef = match sealed {
            Ok(ef) => ef,
            Err(e) => {
                // Leave no headerless file behind.
                let _ = os::beneath::unlinkat(&dir, &name, false);
                return Err(e);
            }
        };
        let m = ef.file().metadata()?;
        let attr = self.entry(&rel, &m);
        // A new backing file is a new node: the state is this one.
        let (f, _) = self.opens.attach(attr.ino, || OpenFile::new(ef, backing));
        Ok((attr, f))
    }

    /// `create` for the kernel: charged to the caller's handle budget
    /// (EMFILE past it, before anything is made); the handle number.
    pub fn create_handle(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        caller: &Caller,
    ) -> Result<(Attr, u64), FsError> {
        let charge = self.budget.charge(caller.uid)?;
        let (attr, _) = self.create(parent, name, mode, caller)?;
        Ok((attr, self.files.add(attr.ino, charge)))
    }

    /// mknod: FIFOs, sockets, devices; a regular file made by mknod still
    /// gets a header and data key.
    pub fn mknod(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u32,
        caller: &Caller,
    ) -> Result<Attr, FsError> {
        self.writable()?;
        if mode & libc::S_IFMT == libc::S_IFREG {
            let (attr, _) = self.create(parent, name, mode, caller)?;
            self.release(attr.ino);
            return Ok(attr);
        }
        let (dir, name, rel) = self.in_dir(parent, name)?;
        os::beneath::mknodat(&dir, &name, (mode & libc::S_IFMT) | 0o600, rdev)?;
        self.adopt_new_node(&rel, &dir, &name, caller, Some(mode))
    }

    /// mkdir (the kernel passes only the permission bits).
    pub fn mkdir(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        caller: &Caller,
    ) -> Result<Attr, FsError> {
        self.writable()?;
        let (dir, name, rel) = self.in_dir(parent, name)?;
        os::beneath::mkdirat(&dir, &name, 0o700)?;
        self.adopt_new_node(&rel, &dir, &name, caller, Some(libc::S_IFDIR | mode))
    }

    /// symlink `name` in `parent` pointing at `target`.
    pub fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &Path,
        caller: &Caller,
    ) -> Result<Attr, FsError> {
        self.writable()?;
        let (dir, name, rel) = self.in_dir(parent, name)?;
        os::beneath::symlinkat(target, &dir, &name)?;
        self.adopt_new_node(&rel, &dir, &name, caller, None)
    }

    /// A new hard link `newname` in `newparent` of `ino`.
    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> Result<Attr, FsError> {
        let node = self.open_checked(ino, libc::O_PATH)?;
        let (dir, name, rel) = self.in_dir(newparent, newname)?;
        os::node::link_node(&node.file, &dir, &name)?;
        self.linked(ino, &rel);
        self.getattr(ino)
    }

    /// rename with renameat2 `flags` (RENAME_NOREPLACE, RENAME_EXCHANGE).
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Result<(), FsError> {
        let (fdir, fname, from) = self.in_dir(parent, name)?;
        let (tdir, tname, to) = self.in_dir(newparent, newname)?;
        os::beneath::renameat2(&fdir, &fname, &tdir, &tname, flags)?;
        self.renamed(&from, &to, flags & libc::RENAME_EXCHANGE != 0);
        Ok(())
    }

    /// unlink (`dir` false) and rmdir (`dir` true) of `name` in `parent`.
    pub fn remove(&self, parent: u64, name: &OsStr, dir: bool) -> Result<(), FsError> {
        let (parent_dir, name, rel) = self.in_dir(parent, name)?;
        os::beneath::unlinkat(&parent_dir, &name, dir)?;
        self.forget_path(&rel);
        Ok(())
    }

    /// After making node `name` in `dir` (at `rel`): give it to the caller
    /// (with the directory's group when it is setgid) and register it. Then
    /// `mode` (not for symlinks) is set exactly: nodes are made 0600 (0700),
    /// so no root-owned node carries the caller's mode, setid bits or
    /// others' access before the chown. Nothing here follows a symlink
    /// swapped in meanwhile.
    fn adopt_new_node(
        &self,
        rel: &Path,
        dir: &File,
        name: &OsStr,
        caller: &Caller,
        mode: Option<u32>,
    ) -> Result<Attr, FsError> {
        let (gid, setgid_dir) = self.new_group(dir, caller)?;
        self.set_owner_at(dir, name, caller, gid)?;
        let is_dir = |m: u32| m & libc::S_IFMT == libc::S_IFDIR;
        if let Some(m) = mode {
            os::beneath::fchmodat_nofollow(dir, name, final_mode(m, setgid_dir, is_dir(m)))?;
        }
        let m = os::beneath::open_node(dir, name).and_then(|n| n.metadata())?;
        Ok(self.entry(rel, &m))
    }

    /// The group of a new entry of directory `dir` (an O_PATH descriptor is
    /// fine) and whether `dir` is setgid: then the directory's group, as
    /// ext4 gives it, else the caller's primary group.
    fn new_group(&self, dir: &File, caller: &Caller) -> Result<(u32, bool), FsError> {
        let m = dir.metadata()?;
        if m.mode() & libc::S_ISGID != 0 {
            Ok((m.gid(), true))
        } else {
            Ok((caller.gid, false))
        }
    }

    /// A new file belongs to the caller, with group `gid` (the daemon runs
    /// as root).
    fn set_owner(&self, file: &File, caller: &Caller, gid: u32) -> Result<(), FsError> {
        if !os::ids::is_root() {
            return Ok(());
        }
        Ok(std::os::unix::fs::fchown(
            file,
            Some(caller.uid),
            Some(gid),
        )?)
    }

    /// A new node `name` in directory `dir` belongs to the caller, with group
    /// `gid` (the daemon runs as root); a symlink itself, not its target.
    fn set_owner_at(
        &self,
        dir: &File,
        name: &OsStr,
        caller: &Caller,
        gid: u32,
    ) -> Result<(), FsError> {
        if !os::ids::is_root() {
            return Ok(());
        }
        Ok(os::beneath::fchownat_nofollow(
            dir,
            name,
            Some(caller.uid),
            Some(gid),
        )?)
    }
}

/// The mode a new node gets after its owner: `mode`'s permission bits (the
/// kernel applied the caller's umask already), and setgid for a directory
/// made in a setgid directory (the kernel does not pass that bit to mkdir).
fn final_mode(mode: u32, setgid_dir: bool, is_dir: bool) -> u32 {
    let mode = mode & 0o7777;
    if is_dir && setgid_dir {
        mode | libc::S_ISGID
    } else {
        mode
    }
}
