//! Directory entries: creating files (under the mount's key), nodes,
//! directories and symlinks owned by the caller with their exact mode, hard
//! links, renames and removals.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use super::attr::Attr;
use super::error::FsError;
use super::filesystem::KmsFs;
use super::node::{InDir, stat_at};
use super::open::OpenFile;
use crate::envelope::names::{self, BackingName};
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
        let InDir {
            dir,
            name,
            rel,
            enc,
        } = self.in_dir(parent, name)?;
        let backing = self.backing_path(&rel);
        // The directory's key, decided before anything is made: a record
        // refused or a key the caller may not use leaves nothing behind.
        let key = self.dir_key(rel.parent().unwrap_or(Path::new("")))?;
        add_side(&dir, &enc)?;
        let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL;
        // Made 0600 and root's: the caller's mode (setid bits included)
        // only once the file is the caller's, so there is no moment at which
        // a root-owned file carries them, or others may open it.
        let file = os::beneath::open_beneath(&dir, Path::new(&name), flags, 0o600)
            .inspect_err(|_| drop_side(&dir, &enc))?;
        let sealed = self.new_group(&dir, caller).and_then(|(gid, _)| {
            super::file::share_lock(&file, &backing)?;
            self.set_owner(&file, caller, gid)?;
            if mode & 0o7777 != 0o600 {
                file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
            }
            self.create_encrypted(file, caller, &backing, &key.key_id)
                .map_err(|e| FsError::envelope(e, &backing))
        });
        let ef = match sealed {
            Ok(ef) => ef,
            Err(e) => {
                // Leave no headerless file behind.
                let _ = os::beneath::unlinkat(&dir, &name, false);
                drop_side(&dir, &enc);
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
        let InDir {
            dir,
            name,
            rel,
            enc,
        } = self.in_dir(parent, name)?;
        add_side(&dir, &enc)?;
        os::beneath::mknodat(&dir, &name, (mode & libc::S_IFMT) | 0o600, rdev)
            .inspect_err(|_| drop_side(&dir, &enc))?;
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
        let InDir {
            dir,
            name,
            rel,
            enc,
        } = self.in_dir(parent, name)?;
        match &enc {
            None => os::beneath::mkdirat(&dir, &name, 0o700)?,
            Some(e) => self.mkdir_with_id(&dir, e, &rel)?,
        }
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
        let InDir {
            dir,
            name,
            rel,
            enc,
        } = self.in_dir(parent, name)?;
        let stored = self.stored_target(enc.as_ref(), target.as_os_str().as_encoded_bytes())?;
        add_side(&dir, &enc)?;
        let stored = Path::new(std::ffi::OsStr::from_bytes(&stored));
        os::beneath::symlinkat(stored, &dir, &name).inspect_err(|_| drop_side(&dir, &enc))?;
        self.adopt_new_node(&rel, &dir, &name, caller, None)
    }

    /// A new hard link `newname` in `newparent` of `ino`.
    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> Result<Attr, FsError> {
        let node = self.open_checked(ino, libc::O_PATH)?;
        self.may_link(&node.meta, &node.rel)?;
        let InDir {
            dir,
            name,
            rel,
            enc,
        } = self.in_dir(newparent, newname)?;
        add_side(&dir, &enc)?;
        os::node::link_node(&node.file, &dir, &name).inspect_err(|_| drop_side(&dir, &enc))?;
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
        let f = self.in_dir(parent, name)?;
        let t = self.in_dir(newparent, newname)?;
        // A long name's side file belongs to the name, not to what it
        // names: the new name gets one first, the old one loses its own
        // once it is gone (an exchange keeps both names).
        add_side(&t.dir, &t.enc)?;
        // A symlink of a tree with encrypted names is re-sealed for its
        // new place (`fs::links`, which updates the inode table itself).
        let relinked = self
            .rename_links(&f, &t, flags)
            .inspect_err(|_| drop_side(&t.dir, &t.enc))?;
        if !relinked {
            self.rename_over(&f, &t, flags)
                .inspect_err(|_| drop_side(&t.dir, &t.enc))?;
        }
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if !exchange && f.rel != t.rel {
            drop_side(&f.dir, &f.enc);
        }
        if !relinked {
            self.renamed(&f.rel, &t.rel, exchange);
        }
        self.dir_keys_moved();
        Ok(())
    }

    /// unlink (`dir` false) and rmdir (`dir` true) of `name` in `parent`.
    pub fn remove(&self, parent: u64, name: &OsStr, dir: bool) -> Result<(), FsError> {
        let e = self.in_dir(parent, name)?;
        // The directory's id, to drop it from the list of directory keys.
        let gone = (dir && self.dir_keys_listed())
            .then(|| stat_at(&e.dir, &e.name).ok())
            .flatten()
            .map(|m| crate::envelope::dirkey::DirId::of(&m));
        if dir && e.enc.is_some() {
            self.rmdir_with_id(&e)?;
        } else {
            os::beneath::unlinkat(&e.dir, &e.name, dir)?;
        }
        drop_side(&e.dir, &e.enc);
        self.forget_path(&e.rel);
        if dir {
            self.dir_keys_moved();
        }
        if let Some(id) = gone {
            self.dir_key_unlisted(id);
        }
        Ok(())
    }

    /// mkdir in a tree with encrypted names: the directory is made under
    /// a temporary name, given its id, then renamed to its name (never
    /// replacing one), so it never shows without its id.
    fn mkdir_with_id(&self, dir: &File, enc: &BackingName, rel: &Path) -> Result<(), FsError> {
        let tmp = names::temp_name();
        os::beneath::mkdirat(dir, &tmp, 0o700)?;
        let made = (|| {
            let d = os::beneath::open_beneath(
                dir,
                Path::new(&tmp),
                libc::O_RDONLY | libc::O_DIRECTORY,
                0,
            )?;
            let id = names::write_dir_id(&d, None)
                .map_err(|e| FsError::name(e, &self.backing_path(rel)))?;
            add_side(dir, &Some(enc.clone()))?;
            os::beneath::renameat2(dir, &tmp, dir, &enc.entry, libc::RENAME_NOREPLACE)?;
            self.remember_dir_id(&d.metadata()?, id);
            Ok::<_, FsError>(())
        })();
        if made.is_err() {
            if let Ok(d) = os::beneath::open_beneath(
                dir,
                Path::new(&tmp),
                libc::O_RDONLY | libc::O_DIRECTORY,
                0,
            ) {
                let _ = os::beneath::unlinkat(&d, std::ffi::OsStr::new(names::DIR_ID_FILE), false);
            }
            let _ = os::beneath::unlinkat(dir, &tmp, true);
            drop_side(dir, &Some(enc.clone()));
        }
        made
    }

    /// rmdir in a tree with encrypted names: ENOTEMPTY unless the directory
    /// holds only kmsfs's own files (its id, stray side files and
    /// temporaries), which go first; if the rmdir then fails, the id is
    /// put back.
    fn rmdir_with_id(&self, e: &InDir) -> Result<(), FsError> {
        let (d, id) = empty_for_removal(e)?;
        if let Err(err) = os::beneath::unlinkat(&e.dir, &e.name, true) {
            restore_id(&d, id);
            return Err(err.into());
        }
        Ok(())
    }

    /// renameat2 where the target may be an empty directory of a tree with
    /// encrypted names: its own files go first (else the backing rename
    /// would be ENOTEMPTY where ext4 replaces it), and its id comes back if
    /// the rename fails.
    fn rename_over(&self, f: &InDir, t: &InDir, flags: u32) -> Result<(), FsError> {
        let replacing_dir = t.enc.is_some()
            && flags & (libc::RENAME_EXCHANGE | libc::RENAME_NOREPLACE) == 0
            && stat_at(&t.dir, &t.name).is_ok_and(|m| m.is_dir())
            && stat_at(&f.dir, &f.name).is_ok_and(|m| m.is_dir());
        if !replacing_dir {
            return Ok(os::beneath::renameat2(
                &f.dir, &f.name, &t.dir, &t.name, flags,
            )?);
        }
        let (d, id) = empty_for_removal(t)?;
        if let Err(err) = os::beneath::renameat2(&f.dir, &f.name, &t.dir, &t.name, flags) {
            restore_id(&d, id);
            return Err(err.into());
        }
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

/// Directory `e` of a tree with encrypted names, emptied of kmsfs's own
/// files (and of the temporary directory a crashed mkdir left, with its
/// own files) so that it can be removed or replaced: ENOTEMPTY (nothing
/// removed) when it holds any entry, ENOTDIR when it is no directory; its
/// id is put back when a removal fails. Returns it (opened) and the id it
/// had.
fn empty_for_removal(e: &InDir) -> Result<(File, Option<names::DirId>), FsError> {
    let d = os::beneath::open_beneath(
        &e.dir,
        Path::new(&e.name),
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
    )
    .map_err(|err| match err.raw_os_error() {
        Some(libc::ELOOP) => FsError::Io(std::io::Error::from_raw_os_error(libc::ENOTDIR)),
        _ => FsError::Io(err),
    })?;
    let entries = os::at::list_dir(&d)?;
    // kmsfs's own files only, and in a directory of its own (the temporary
    // directory of a mkdir a crash interrupted), its own files only.
    let mut inner = Vec::new();
    for (n, kind) in &entries {
        if !names::is_internal(n) {
            return Err(not_empty());
        }
        if *kind == os::dir::EntryKind::Dir {
            inner.push(own_files_of(&d, n)?);
        }
    }
    let id = names::read_dir_id(&d).ok();
    let removed = (|| {
        for (sub, files) in &inner {
            for f in files {
                os::beneath::unlinkat(sub, f, false)?;
            }
        }
        for (n, kind) in &entries {
            os::beneath::unlinkat(&d, n, *kind == os::dir::EntryKind::Dir)?;
        }
        Ok::<_, std::io::Error>(())
    })();
    if let Err(err) = removed {
        restore_id(&d, id);
        return Err(err.into());
    }
    Ok((d, id))
}

fn not_empty() -> FsError {
    FsError::Io(std::io::Error::from_raw_os_error(libc::ENOTEMPTY))
}

/// kmsfs's own directory `name` in `dir` and its files: all of them its
/// own and none a directory, else ENOTEMPTY.
fn own_files_of(dir: &File, name: &OsStr) -> Result<(File, Vec<std::ffi::OsString>), FsError> {
    let sub =
        os::beneath::open_beneath(dir, Path::new(name), libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    let mut files = Vec::new();
    for (n, kind) in os::at::list_dir(&sub)? {
        if !names::is_internal(&n) || kind == os::dir::EntryKind::Dir {
            return Err(not_empty());
        }
        files.push(n);
    }
    Ok((sub, files))
}

/// Puts a directory's id back after its removal failed.
fn restore_id(d: &File, id: Option<names::DirId>) {
    if let Some(id) = id {
        let _ = names::write_dir_id(d, Some(id));
    }
}

/// Writes the side file of a long name before its entry is made.
fn add_side(dir: &File, enc: &Option<BackingName>) -> Result<(), FsError> {
    if let Some(e) = enc {
        names::ensure_side_file(dir, e)?;
    }
    Ok(())
}

/// Removes the side file of a long name once no entry has that name.
fn drop_side(dir: &File, enc: &Option<BackingName>) {
    if let Some(e) = enc
        && e.long.is_some()
        && stat_at(dir, &e.entry).is_err()
    {
        names::remove_side_file(dir, e);
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
