//! import: a plain tree encrypted into a backing directory without a mount
//! (the fast way to adopt kmsfs for existing data), keeping modes, times,
//! owners (as root), symbolic links and holes. Nothing already in the
//! backing directory is replaced.
//!
//! Crash safety: each file is written under a temporary name beside its
//! destination (`.NAME.kmsfs-import`); after every batch one `syncfs` makes
//! the batch durable and only then are the files linked under their names.
//! A crash leaves at most temporary files, which a rerun removes, and files
//! that are complete; a rerun skips what exists.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use std::collections::HashMap;

use super::copy::{CopyReport, Dest, Names, Ranges, SameNames, copy_ranges, io_status};
use super::copy_names::{Encrypted, import_temp};
use super::dirkeys::{RecordKey, asked_key, authorize, checked_record, write_record};
use super::export::TreeKeys;
use super::fsck::status_of;
use super::known::list_dir_key;
use super::{FileStatus, KeyStatus, Tree, Walk, apply_meta};
use crate::envelope::EncryptedFile;
use crate::envelope::names::{self, BackingName};
use crate::format::Layout;
use crate::kms::{KeyService, RequestContext};
use crate::os::at::{linkat, open_strictly_beneath};
use crate::os::beneath::{mkdirat, open_node, renameat2, unlinkat};

/// A durable batch ends after this many files or bytes, whichever comes
/// first. Each batch costs one syncfs, which flushes the whole file system
/// (other writers' data too), so batches are large: a crash costs at most
/// this much work, left behind as temporary files that a rerun replaces.
const BATCH_FILES: usize = 1024;
/// See `BATCH_FILES`.
const BATCH_BYTES: u64 = 256 << 20;
/// The suffix of a file being imported.
const TMP_SUFFIX: &str = ".kmsfs-import";

/// The temporary name a file is written under before it is linked as
/// `name` (plain names): `.NAME.kmsfs-import`, or for a name too long for
/// that, the hash of the name in its place.
fn tmp_name(name: &OsStr) -> OsString {
    use base64::Engine;
    use std::os::unix::ffi::OsStrExt;
    let mut t = OsString::from(".");
    if name.len() + 1 + TMP_SUFFIX.len() <= crate::envelope::names::BACKING_NAME_MAX {
        t.push(name);
    } else {
        let h = crate::crypto::sha256(&[name.as_bytes()]);
        t.push(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(h));
    }
    t.push(TMP_SUFFIX);
    t
}

/// A file written under its temporary name, waiting for its batch's syncfs.
struct Written<'a> {
    /// Its path in the source tree.
    rel: &'a PathBuf,
    /// Its path in the backing tree.
    to: PathBuf,
    /// Its temporary name beside `to`.
    tmp: OsString,
    /// A long encrypted name: its side file, written before the name.
    long: Option<BackingName>,
    /// The inode written (device, inode number): what its name must lead to.
    id: (u64, u64),
    /// Plaintext bytes.
    bytes: u64,
}

/// What the files an import makes are: under which CMK, in which layout
/// (the backing directory's).
#[derive(Debug, Clone, Copy)]
pub struct NewFiles<'a> {
    /// The CMK that wraps their data keys (where no directory has a key of
    /// its own).
    pub key_id: &'a str,
    /// The layout of the backing directory's files.
    pub layout: Layout,
}

/// True when some directory of the plain tree `src` (its root included)
/// names a key of its own (the xattr `user.kmsfs.key-id` export writes):
/// an import then needs the backing tree's directory-key MAC key.
pub fn asks_dir_keys(src: &Tree, walk: &Walk) -> bool {
    std::iter::once(&PathBuf::new())
        .chain(&walk.dirs)
        .any(|d| !matches!(asked_key(src, d), Ok(None)))
}

/// A directory of the source and where it is in the backing tree.
struct Made<'a> {
    rel: &'a Path,
    to: PathBuf,
    /// The inode made (None: the directory was there already).
    new: Option<(u64, u64)>,
}

/// Encrypts the tree `walk` found in `src` into `backing`, new files as
/// `new` says, names encrypted with the name key of `keys` when it has one.
/// A directory whose xattr `user.kmsfs.key-id` names a key gets a key
/// record made with the MAC key of `keys`, after the key service allowed
/// the caller that key (as `set-key` asks), and the files under it are
/// encrypted under it; when it refuses, that directory's files are not
/// imported (never under another key). `progress` is called after each
/// regular file.
#[allow(clippy::too_many_arguments)]
pub fn import_tree(
    src: &Tree,
    walk: &Walk,
    backing: &Tree,
    ks: &dyn KeyService,
    rc: &RequestContext<'_>,
    new: NewFiles<'_>,
    keys: TreeKeys,
    progress: &mut dyn FnMut(),
) -> CopyReport {
    let NewFiles { key_id, layout } = new;
    let TreeKeys {
        names,
        records,
        dir_key_list,
    } = keys;
    let enc = names.map(Encrypted::new);
    let sink: &dyn Names = match &enc {
        Some(e) => e,
        None => &SameNames,
    };
    let mut report = CopyReport::default();
    let made = make_dirs(backing, walk, enc.as_ref(), &mut report);
    // The key of each directory's new files, parents first.
    let mut dir_keys: HashMap<&Path, Result<String, FileStatus>> = HashMap::new();
    for m in &made {
        let inherited = match m.rel.parent() {
            Some(p) => dir_keys
                .get(p)
                .cloned()
                .unwrap_or_else(|| Err(io_status(io::Error::other("its directory was not made")))),
            None => Ok(key_id.to_string()),
        };
        let k = dir_key(
            src,
            backing,
            m,
            inherited,
            ks,
            rc,
            (records.as_ref(), dir_key_list.as_deref()),
            &mut report,
        );
        dir_keys.insert(m.rel, k);
    }
    let mut batch: Vec<Written> = Vec::new();
    for f in &walk.files {
        let key = dir_keys
            .get(f.parent().unwrap_or(Path::new("")))
            .cloned()
            .unwrap_or_else(|| Err(io_status(io::Error::other("its directory was not made"))));
        let r = key.and_then(|k| {
            let to = sink.dest(f)?;
            import_file(src, f, backing, to, ks, rc, &k, layout, enc.is_some())
        });
        match r {
            Ok(Some(w)) => batch.push(w),
            Ok(None) => report.exists(f),
            Err(s) => report.skip(f, s),
        }
        if batch.len() >= BATCH_FILES || batch.iter().map(|b| b.bytes).sum::<u64>() >= BATCH_BYTES {
            commit(backing, &mut batch, &mut report);
        }
        progress();
    }
    commit(backing, &mut batch, &mut report);
    report.copy_links_and_list_special(src, walk, backing, sink);
    finish_dirs(src, backing, &made, &mut report);
    if let Err(e) = crate::os::space::syncfs(backing.root()) {
        report.skip(Path::new(""), io_status(e));
    }
    report
}

/// Makes the directories of `walk` in `backing` (the root first, as found):
/// each made here is 0700 and this process's until `finish_dirs`.
fn make_dirs<'a>(
    backing: &Tree,
    walk: &'a Walk,
    enc: Option<&Encrypted>,
    report: &mut CopyReport,
) -> Vec<Made<'a>> {
    let mut made = vec![Made {
        rel: Path::new(""),
        to: PathBuf::new(),
        new: None,
    }];
    for d in &walk.dirs {
        match make_dir(backing, d, enc) {
            Ok((to, new)) => {
                if new.is_some() {
                    report.dirs += 1;
                }
                made.push(Made { rel: d, to, new });
            }
            Err(s) => report.skip(d, s),
        }
    }
    made
}

/// Gives the directories made here their source's owners, modes and times,
/// deepest first (only where the name still leads to the directory made).
fn finish_dirs(src: &Tree, backing: &Tree, made: &[Made<'_>], report: &mut CopyReport) {
    for m in made.iter().rev() {
        let Some(id) = m.new else { continue };
        let r = src.node(m.rel).and_then(|n| n.metadata()).and_then(|md| {
            let dir = backing.dir(&m.to)?;
            if same(&dir.metadata()?, id) {
                apply_meta(&md, &dir)
            } else {
                Err(replaced())
            }
        });
        if let Err(e) = r {
            report.skip(m.rel, io_status(e));
        }
    }
}

/// The key new files of directory `m` get: the key its source directory
/// asks for (authorized for the caller, then recorded on the backing
/// directory, unless that has a record of its own already), the key of a
/// record the backing directory has (checked), or `inherited`. A refusal
/// is reported once, for the directory.
#[allow(clippy::too_many_arguments)]
fn dir_key(
    src: &Tree,
    backing: &Tree,
    m: &Made<'_>,
    inherited: Result<String, FileStatus>,
    ks: &dyn KeyService,
    rc: &RequestContext<'_>,
    (records, list): (Option<&RecordKey>, Option<&Path>),
    report: &mut CopyReport,
) -> Result<String, FileStatus> {
    let refused = |why: String| FileStatus::CorruptName {
        reason: format!("directory key record refused: {why}"),
    };
    let r = match (
        asked_key(src, m.rel),
        checked_record(backing, &m.to, records),
    ) {
        (_, Err(why)) => Err(refused(why)),
        (Err(why), _) => Err(io_status(io::Error::other(why))),
        (Ok(None), Ok(None)) => return inherited,
        (Ok(_), Ok(Some(k))) => Ok(k),
        (Ok(Some(asked)), Ok(None)) => authorize(ks, rc, &asked)
            .map_err(|e| match KeyStatus::of_error(&e) {
                Some(key) => FileStatus::KeyUnusable { key },
                None => io_status(io::Error::other(format!("key {asked}: {e}"))),
            })
            .and_then(|k| {
                let Some(mac) = records else {
                    return Err(io_status(io::Error::other(
                        "the tree's directory-key MAC key does not open",
                    )));
                };
                let dir = backing.dir(&m.to).map_err(io_status)?;
                write_record(&dir, mac, &k).map_err(io_status)?;
                report.dir_keys += 1;
                // Listed as set-key lists it; a mount lists a record it
                // does not know the first time it reads it, so a failure
                // here is a warning.
                if let Some(list) = list {
                    let listed = dir
                        .metadata()
                        .and_then(|md| list_dir_key(list, backing.path(), &md, &k));
                    if let Err(e) = listed {
                        log::warn!(
                            "{}: the key of {} is not listed in {}: {e}",
                            crate::logtext::escaped(backing.path()),
                            crate::logtext::escaped(m.rel),
                            crate::logtext::escaped(list)
                        );
                    }
                }
                Ok(k)
            }),
    };
    if let Err(s) = &r {
        report.skip(m.rel, s.clone());
    }
    r
}

/// The (device, inode) of an fstat.
fn id_of(md: &std::fs::Metadata) -> (u64, u64) {
    (md.dev(), md.ino())
}

fn same(md: &std::fs::Metadata, id: (u64, u64)) -> bool {
    id_of(md) == id
}

fn replaced() -> io::Error {
    io::Error::other("replaced by someone else while it was imported: left as it is")
}

/// Makes directory `rel` of the source in `backing`, 0700, with an id
/// when names are encrypted (made under a temporary name, given its id and
/// a long name's side file, then renamed, never over an existing name, as
/// the mount makes one). Returns its backing path and the inode made
/// (None: it exists already as a directory).
fn make_dir(
    backing: &Tree,
    rel: &Path,
    enc: Option<&Encrypted>,
) -> Result<(PathBuf, Option<(u64, u64)>), FileStatus> {
    let Some(enc) = enc else {
        return make_plain_dir(backing, rel)
            .map(|new| (rel.to_path_buf(), new))
            .map_err(io_status);
    };
    let to = enc.dest(rel)?;
    let (parent, name) = backing.parent(&to.rel).map_err(io_status)?;
    let existing = |enc: &Encrypted| -> Result<(PathBuf, Option<(u64, u64)>), FileStatus> {
        let dir = backing.dir(&to.rel).map_err(io_status)?;
        let id = names::read_dir_id(&dir).map_err(|e| FileStatus::CorruptName {
            reason: format!("name refused: its {}: {e}", names::DIR_ID_FILE),
        })?;
        enc.add_dir(rel, to.rel.clone(), id);
        Ok((to.rel.clone(), None))
    };
    match open_node(&parent, name) {
        Ok(n) if n.metadata().map_err(io_status)?.is_dir() => return existing(enc),
        Ok(_) => return Err(io_status(io::Error::from_raw_os_error(libc::EEXIST))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_status(e)),
    }
    let tmp = names::temp_name();
    mkdirat(&parent, &tmp, 0o700).map_err(io_status)?;
    let made = (|| {
        let d = open_strictly_beneath(
            &parent,
            Path::new(&tmp),
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )?;
        let md = d.metadata()?;
        if !md.is_dir() || md.uid() != crate::os::ids::effective_uid() {
            return Err(replaced());
        }
        let id = names::write_dir_id(&d, None).map_err(|e| io::Error::other(e.to_string()))?;
        if let Some(long) = &to.long {
            names::ensure_side_file(&parent, long)?;
        }
        renameat2(&parent, &tmp, &parent, name, libc::RENAME_NOREPLACE)?;
        Ok((id, id_of(&md)))
    })();
    match made {
        Ok((id, inode)) => {
            enc.add_dir(rel, to.rel.clone(), id);
            Ok((to.rel, Some(inode)))
        }
        Err(e) => {
            if let Ok(d) = open_strictly_beneath(
                &parent,
                Path::new(&tmp),
                libc::O_RDONLY | libc::O_DIRECTORY,
                0,
            ) {
                let _ = unlinkat(&d, OsStr::new(names::DIR_ID_FILE), false);
            }
            let _ = unlinkat(&parent, &tmp, true);
            // Made meanwhile by someone else: used if it is a directory.
            if e.kind() == io::ErrorKind::AlreadyExists {
                return existing(enc);
            }
            Err(io_status(e))
        }
    }
}

/// Makes directory `rel` in `backing` (plain names), 0700 (Ok(None): it
/// exists already as a directory). Returns the inode made.
fn make_plain_dir(backing: &Tree, rel: &Path) -> io::Result<Option<(u64, u64)>> {
    let (parent, name) = backing.parent(rel)?;
    match mkdirat(&parent, name, 0o700) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return match open_node(&parent, name)?.metadata()?.is_dir() {
                true => Ok(None),
                false => Err(e),
            };
        }
        Err(e) => return Err(e),
    }
    let md = open_node(&parent, name)?.metadata()?;
    if !md.is_dir() || md.uid() != crate::os::ids::effective_uid() {
        return Err(replaced());
    }
    Ok(Some(id_of(&md)))
}

/// Makes a batch of written files durable, then links each under its name
/// (never over an existing one) and removes its temporary name.
fn commit(backing: &Tree, batch: &mut Vec<Written>, report: &mut CopyReport) {
    if batch.is_empty() {
        return;
    }
    if let Err(e) = crate::os::space::syncfs(backing.root()) {
        for w in batch.drain(..) {
            if let Ok((dir, _)) = backing.parent(&w.to) {
                let _ = unlinkat(&dir, &w.tmp, false);
            }
            report.skip(w.rel, io_status(io::Error::new(e.kind(), e.to_string())));
        }
        return;
    }
    for w in batch.drain(..) {
        let (dir, name) = match backing.parent(&w.to) {
            Ok(x) => x,
            Err(e) => {
                report.skip(w.rel, io_status(e));
                continue;
            }
        };
        let side = match &w.long {
            Some(long) => names::ensure_side_file(&dir, long),
            None => Ok(()),
        };
        match side.and_then(|()| linkat(&dir, &w.tmp, &dir, name)) {
            Ok(()) => match open_node(&dir, name).and_then(|n| n.metadata()) {
                Ok(md) if same(&md, w.id) => {
                    report.files += 1;
                    report.bytes += w.bytes;
                }
                Ok(_) => report.skip(w.rel, io_status(replaced())),
                Err(e) => report.skip(w.rel, io_status(e)),
            },
            // A long name's side file stays: it is the existing entry's too.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => report.exists(w.rel),
            Err(e) => report.skip(w.rel, io_status(e)),
        }
        let _ = unlinkat(&dir, &w.tmp, false);
    }
}

/// Encrypts `rel` of `src` into a new backing file under its temporary
/// name beside `to` in `backing` (a leftover of an interrupted run is
/// replaced), its data key under `key_id`; Ok(None) when `to` exists in
/// `backing`. On failure nothing is left under the temporary name.
#[allow(clippy::too_many_arguments)]
fn import_file<'a>(
    src: &Tree,
    rel: &'a PathBuf,
    backing: &Tree,
    to: Dest,
    ks: &dyn KeyService,
    rc: &RequestContext<'_>,
    key_id: &str,
    layout: Layout,
    encrypted_names: bool,
) -> Result<Option<Written<'a>>, FileStatus> {
    let (dir, name) = backing.parent(&to.rel).map_err(io_status)?;
    match open_node(&dir, name) {
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_status(e)),
    }
    let input = src.open_file(rel, false).map_err(io_status)?;
    let md = input.metadata().map_err(io_status)?;
    let tmp = if encrypted_names {
        import_temp(name)
    } else {
        tmp_name(name)
    };
    match unlinkat(&dir, &tmp, false) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_status(e)),
        _ => {}
    }
    let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL;
    let out = open_strictly_beneath(&dir, Path::new(&tmp), flags, 0o600).map_err(io_status)?;
    let id = out.metadata().map(|m| id_of(&m)).map_err(io_status)?;
    let r = EncryptedFile::create(out, ks, rc, key_id, layout)
        .map_err(status_of)
        .and_then(|ef| {
            let n = copy_in(&input, md.len(), &ef)?;
            apply_meta(&md, ef.file()).map_err(io_status)?;
            Ok(n)
        });
    match r {
        Ok(bytes) => Ok(Some(Written {
            rel,
            to: to.rel,
            tmp,
            long: to.long,
            id,
            bytes,
        })),
        Err(s) => {
            let _ = unlinkat(&dir, &tmp, false);
            Err(s)
        }
    }
}

/// A plain file read for import.
struct Plain<'a>(&'a File);

impl Ranges for Plain<'_> {
    fn next_data(&self, pos: u64) -> Result<Option<u64>, FileStatus> {
        match crate::os::space::lseek(self.0, pos, libc::SEEK_DATA) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
            Err(e) => Err(io_status(e)),
        }
    }

    fn next_hole(&self, pos: u64) -> Result<u64, FileStatus> {
        crate::os::space::lseek(self.0, pos, libc::SEEK_HOLE).map_err(io_status)
    }

    fn read(&self, buf: &mut [u8], pos: u64) -> Result<usize, FileStatus> {
        self.0.read_at(buf, pos).map_err(io_status)
    }
}

/// Encrypts the data ranges of `input` (`size` bytes) into `ef`; holes stay holes.
fn copy_in(input: &File, size: u64, ef: &EncryptedFile) -> Result<u64, FileStatus> {
    copy_ranges(size, &Plain(input), &mut |data, at| {
        ef.write_at(data, at).map_err(status_of)
    })?;
    ef.set_len(size).map_err(status_of)?;
    Ok(size)
}
