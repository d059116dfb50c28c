//! Symlinks of a tree with encrypted names: a target is sealed for its link
//! (the directory's id and the link's stored name, docs/FORMAT.md "Symlink
//! targets"), so a rename re-seals it for the new place, and a symlink gets
//! no second name (link(2) is EPERM).
//!
//! A re-sealed link is a new backing symlink, made under a temporary name
//! in the directory it goes to (owner, times and extended attributes
//! copied), then renamed over the destination: no name is ever missing or
//! holds a target that does not open there. Its FUSE node is moved to the
//! new backing object (`InodeTable::rekey`) and keeps its generation, so
//! st_ino stays as ext4 keeps it across a rename.

use std::ffi::{OsStr, OsString};
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::error::FsError;
use super::filesystem::{KmsFs, lock};
use super::inodes::InodeTable;
use super::node::{InDir, backing_key, generation, stat_at};
use crate::envelope::names::{self, LinkPlace};
use crate::os;

/// A re-sealed copy of a symlink under a temporary name.
struct Copy {
    /// Its temporary name, in the directory it is made in.
    tmp: OsString,
    /// Its metadata.
    meta: Metadata,
}

impl KmsFs {
    /// link(2) of `node` (metadata `m`): EPERM for a symlink of a tree with
    /// encrypted names, whose target is sealed for one name and cannot be
    /// valid under two (as a file system that has no hard links says).
    pub(super) fn may_link(&self, m: &Metadata, rel: &Path) -> Result<(), FsError> {
        if self.names.is_some() && m.file_type().is_symlink() {
            log::info!(
                "{}: a symlink of a tree with encrypted names gets no second name (its \
                 target is sealed for this one); returning EPERM",
                crate::logtext::escaped(&self.backing_path(rel))
            );
            return Err(FsError::Io(std::io::Error::from_raw_os_error(libc::EPERM)));
        }
        Ok(())
    }

    /// Renames `f` to `t` (renameat2 `flags`) when the tree's names are
    /// encrypted and a symlink moves: each symlink that changes place is
    /// re-sealed for its new one, and the inode table is updated here.
    /// False (nothing done) when no symlink moves.
    pub(super) fn rename_links(&self, f: &InDir, t: &InDir, flags: u32) -> Result<bool, FsError> {
        if self.names.is_none() || f.rel == t.rel {
            return Ok(false);
        }
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let fm = stat_at(&f.dir, &f.name)?;
        let tm = if exchange {
            Some(stat_at(&t.dir, &t.name)?)
        } else {
            None
        };
        let is_link = |m: &Metadata| m.file_type().is_symlink();
        match (is_link(&fm), tm.as_ref().filter(|m| is_link(m))) {
            (false, None) => Ok(false),
            (true, None) if !exchange => self.move_link(f, &fm, t, flags).map(|()| true),
            (true, Some(tm)) => self.exchange_links(f, &fm, t, tm).map(|()| true),
            (true, None) => self.exchange_link(f, &fm, t).map(|()| true),
            (false, Some(tm)) => self.exchange_link(t, tm, f).map(|()| true),
        }
    }

    /// Plain rename (or RENAME_NOREPLACE) of symlink `f` to `t`: the copy
    /// for `t` is renamed over it, then `f` goes. A crash in between leaves
    /// the link under both names, each valid.
    fn move_link(&self, f: &InDir, fm: &Metadata, t: &InDir, flags: u32) -> Result<(), FsError> {
        let c = self.resealed_copy(f, fm, t)?;
        let mut table = lock(&self.inodes);
        let r = os::beneath::renameat2(
            &t.dir,
            &c.tmp,
            &t.dir,
            &t.name,
            flags & libc::RENAME_NOREPLACE,
        );
        if let Err(e) = r {
            drop(table);
            let _ = os::beneath::unlinkat(&t.dir, &c.tmp, false);
            return Err(e.into());
        }
        table.rename(&f.rel, &t.rel);
        let kept = self.rekey(&mut table, &t.rel, fm, &c.meta);
        drop(table);
        self.keep_generation(kept);
        if let Err(e) = os::beneath::unlinkat(&f.dir, &f.name, false) {
            log::warn!(
                "{}: the symlink's old name could not be removed after its rename ({e})",
                crate::logtext::escaped(&self.backing_path(&f.rel))
            );
        }
        Ok(())
    }

    /// RENAME_EXCHANGE of two symlinks: each re-sealed for the other's
    /// place, and each copy exchanged with the name it goes to, so that
    /// both names always hold a link that opens there (the old links end
    /// under the temporary names, then go).
    fn exchange_links(
        &self,
        f: &InDir,
        fm: &Metadata,
        t: &InDir,
        tm: &Metadata,
    ) -> Result<(), FsError> {
        let to_t = self.resealed_copy(f, fm, t)?;
        let to_f = match self.resealed_copy(t, tm, f) {
            Ok(c) => c,
            Err(e) => {
                let _ = os::beneath::unlinkat(&t.dir, &to_t.tmp, false);
                return Err(e);
            }
        };
        let drop_copies = || {
            let _ = os::beneath::unlinkat(&t.dir, &to_t.tmp, false);
            let _ = os::beneath::unlinkat(&f.dir, &to_f.tmp, false);
        };
        let mut table = lock(&self.inodes);
        let swap = |dir: &std::fs::File, tmp: &OsStr, name: &OsStr| {
            os::beneath::renameat2(dir, tmp, dir, name, libc::RENAME_EXCHANGE)
        };
        if let Err(e) = swap(&t.dir, &to_t.tmp, &t.name) {
            drop(table);
            drop_copies();
            return Err(e.into());
        }
        if let Err(e) = swap(&f.dir, &to_f.tmp, &f.name) {
            // Put t's own link back.
            let _ = swap(&t.dir, &to_t.tmp, &t.name);
            drop(table);
            drop_copies();
            return Err(e.into());
        }
        table.exchange(&f.rel, &t.rel);
        let a = self.rekey(&mut table, &t.rel, fm, &to_t.meta);
        let b = self.rekey(&mut table, &f.rel, tm, &to_f.meta);
        drop(table);
        self.keep_generation(a);
        self.keep_generation(b);
        // The old links, now under the temporary names.
        drop_copies();
        Ok(())
    }

    /// RENAME_EXCHANGE of symlink `l` with `o`, which is no symlink: the
    /// two are exchanged, then the link's copy re-sealed for `o`'s place is
    /// renamed over it (the inode table's lock held throughout, so the
    /// mount never reads the link in between: a read racing it is ESTALE,
    /// which the kernel retries).
    fn exchange_link(&self, l: &InDir, lm: &Metadata, o: &InDir) -> Result<(), FsError> {
        let c = self.resealed_copy(l, lm, o)?;
        let mut table = lock(&self.inodes);
        let exchanged =
            os::beneath::renameat2(&l.dir, &l.name, &o.dir, &o.name, libc::RENAME_EXCHANGE);
        if let Err(e) = exchanged {
            drop(table);
            let _ = os::beneath::unlinkat(&o.dir, &c.tmp, false);
            return Err(e.into());
        }
        if let Err(e) = os::beneath::renameat2(&o.dir, &c.tmp, &o.dir, &o.name, 0) {
            let _ = os::beneath::renameat2(&l.dir, &l.name, &o.dir, &o.name, libc::RENAME_EXCHANGE);
            drop(table);
            let _ = os::beneath::unlinkat(&o.dir, &c.tmp, false);
            return Err(e.into());
        }
        table.exchange(&l.rel, &o.rel);
        let kept = self.rekey(&mut table, &o.rel, lm, &c.meta);
        drop(table);
        self.keep_generation(kept);
        Ok(())
    }

    /// A copy of symlink `from` (its metadata `m`) whose target is sealed
    /// for the place of `to`, made under a temporary name in `to`'s
    /// directory, with `from`'s owner, times and extended attributes. A
    /// target that does not open at `from` is EIO (logged): nothing moves.
    fn resealed_copy(&self, from: &InDir, m: &Metadata, to: &InDir) -> Result<Copy, FsError> {
        let (Some(key), Some(fe), Some(te)) = (self.name_key()?, &from.enc, &to.enc) else {
            return Err(FsError::Invalid);
        };
        let node = os::beneath::open_node(&from.dir, &from.name)?;
        let nm = node.metadata()?;
        if (nm.dev(), nm.ino()) != (m.dev(), m.ino()) {
            return Err(FsError::Stale);
        }
        let stored = os::node::readlink_node(&node)?;
        let (target, _) = key
            .decrypt_target(LinkPlace::of(fe), &stored)
            .map_err(|e| FsError::name(e, &self.backing_path(&from.rel)))?;
        let sealed = key
            .encrypt_target(LinkPlace::of(te), &target)
            .map_err(|e| FsError::name(e, &self.backing_path(&to.rel)))?;
        let tmp = names::temp_name();
        os::beneath::symlinkat(Path::new(OsStr::from_bytes(&sealed)), &to.dir, &tmp)?;
        let made = (|| {
            if os::ids::is_root() {
                os::beneath::fchownat_nofollow(&to.dir, &tmp, Some(m.uid()), Some(m.gid()))?;
            }
            let new = os::beneath::open_node(&to.dir, &tmp)?;
            os::xattr::copy_xattrs(&node, &new)?;
            os::node::utimens_node(
                &new,
                os::node::Utime::At(m.accessed()?),
                os::node::Utime::At(m.modified()?),
            )?;
            new.metadata()
        })();
        match made {
            Ok(meta) => Ok(Copy { tmp, meta }),
            Err(e) => {
                let _ = os::beneath::unlinkat(&to.dir, &tmp, false);
                Err(e.into())
            }
        }
    }

    /// Moves the node named `rel` (once backing object `old`) to backing
    /// object `new`; its number and its generation to keep.
    fn rekey(
        &self,
        table: &mut InodeTable,
        rel: &Path,
        old: &Metadata,
        new: &Metadata,
    ) -> Option<(u64, u64)> {
        let ino = table.at(rel)?;
        let kept = self.link_generation(ino).unwrap_or_else(|| generation(old));
        table.rekey(ino, backing_key(new));
        Some((ino, kept))
    }
}
