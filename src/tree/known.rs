//! The backing directories a keystore knows of. The mount and `import`
//! record each backing directory they write in the keystore's directory
//! (`backings/`, one small file per backing directory, named by the SHA-256
//! of its path, so concurrent mounts never race on one file), and
//! `schedule-key-deletion` counts, from headers alone, the files the key
//! still protects there. A record also holds the choices the backing
//! directory's binding file made at its first mount (names mode, block
//! format, which wrapped name key): the binding file sits in the backing
//! directory, where whoever can write the tree could change it; the record
//! sits in the keystore's directory, where they cannot, and a mount
//! refuses a binding file that no longer says what the record says.
//! Beside a record, `NAME.dirkeys` lists the keys the mount set on the
//! tree's directories (`DirKeyList`), so that a directory's key record
//! removed from the backing tree is refused, not taken for one never set.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::Tree;
use crate::envelope::EncryptedFile;
use crate::envelope::dirkey::{DirId, Listed};
use crate::os::at::{list_dir, open_strictly_beneath};
use crate::os::beneath::{mkdirat, renameat2, unlinkat};

/// The subdirectory of the keystore directory that holds the records.
const KNOWN_DIR: &str = "backings";

fn record_name(backing: &Path) -> String {
    let d = crate::crypto::sha256(&[backing.as_os_str().as_encoded_bytes()]);
    d.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// The keystore directory's `backings/`, opened through the keystore
/// directory's descriptor without following a link, and refused unless it
/// is a directory that root, this user or the keystore directory's owner
/// owns and no one else can write (the checks `audit/` gets). With
/// `create`, made 0700 when missing; None when missing otherwise.
fn open_known_dir(keystore_dir: &Path, create: bool) -> io::Result<Option<File>> {
    let kdir = Tree::open(keystore_dir)?;
    let kowner = kdir.root().metadata()?.uid();
    if create {
        match mkdirat(kdir.root(), OsStr::new(KNOWN_DIR), 0o700) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
    }
    let d = match kdir.dir(Path::new(KNOWN_DIR)) {
        Err(e) if !create && e.kind() == io::ErrorKind::NotFound => return Ok(None),
        r => r?,
    };
    let m = d.metadata()?;
    let owner_ok = crate::trust::trusted_owner(m.uid()) || m.uid() == kowner;
    if !m.is_dir() || !owner_ok || m.mode() & 0o022 != 0 {
        return Err(io::Error::other(format!(
            "{} is not a directory that only root, this user or the keystore's owner can \
             change (owner uid {}, mode {:o}); refusing to use it",
            keystore_dir.join(KNOWN_DIR).display(),
            m.uid(),
            m.mode() & 0o7777
        )));
    }
    Ok(Some(d))
}

/// Reads the record `name` of `dir`: a regular file, never through a link.
fn read_record(dir: &File, name: &OsStr) -> io::Result<Vec<u8>> {
    let mut f = open_strictly_beneath(dir, Path::new(name), libc::O_RDONLY | libc::O_NONBLOCK, 0)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut b = Vec::new();
    f.read_to_end(&mut b)?;
    Ok(b)
}

/// What a backing directory's binding file chose, as the keystore's record
/// of it remembers: written after the record's path, behind a NUL (which no
/// path holds), as JSON. Records made before it existed hold the path only.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Choices {
    /// Names are encrypted.
    #[serde(rename = "EncryptedNames")]
    pub encrypted_names: bool,
    /// The block format of every file in the tree.
    #[serde(rename = "BlockFormat")]
    pub block_format: u16,
    /// The SHA-256 (hex) of the wrapped name key the binding file holds
    /// (None: plain names, or no name key made yet).
    #[serde(
        rename = "NameKeySha256",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub name_key_sha256: Option<String>,
}

impl Choices {
    /// The SHA-256 (hex) of a wrapped name key, as a record keeps it.
    pub fn digest(wrapped: &[u8]) -> String {
        crate::crypto::sha256(&[wrapped])
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// A record's path and choices (None: a record without choices).
fn parse_record(b: &[u8]) -> (&[u8], Option<Choices>) {
    match b.iter().position(|&c| c == 0) {
        Some(i) => (&b[..i], serde_json::from_slice(&b[i + 1..]).ok()),
        None => (b, None),
    }
}

/// Writes the record `name` of `dir` atomically (a new file renamed over).
fn write_record(dir: &File, name: &OsStr, body: &[u8]) -> io::Result<()> {
    let mut tmp = name.to_os_string();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
    let mut f = open_strictly_beneath(dir, Path::new(&tmp), flags, 0o600)?;
    f.write_all(body).and_then(|()| f.sync_all())?;
    drop(f);
    renameat2(dir, &tmp, dir, name, 0).inspect_err(|_| {
        let _ = unlinkat(dir, &tmp, false);
    })
}

/// Records that `backing` (an absolute path) holds files of the keystore in
/// `keystore_dir`. Idempotent (a record's choices are kept); the record is
/// private to the keystore's owner.
pub fn remember(keystore_dir: &Path, backing: &Path) -> io::Result<()> {
    let Some(dir) = open_known_dir(keystore_dir, true)? else {
        return Err(io::Error::from_raw_os_error(libc::ENOENT));
    };
    let name = OsString::from(record_name(backing));
    let want = backing.as_os_str().as_encoded_bytes();
    if read_record(&dir, &name).is_ok_and(|b| parse_record(&b).0 == want) {
        return Ok(());
    }
    write_record(&dir, &name, want)
}

/// The record of `backing` in the keystore directory `keystore_dir` (for
/// messages: it is read and written through the directory's descriptor).
pub fn record_path(keystore_dir: &Path, backing: &Path) -> PathBuf {
    keystore_dir.join(KNOWN_DIR).join(record_name(backing))
}

/// The choices the keystore in `keystore_dir` recorded for `backing` (None:
/// no record, or one made before records held choices).
pub fn recorded_choices(keystore_dir: &Path, backing: &Path) -> io::Result<Option<Choices>> {
    let Some(dir) = open_known_dir(keystore_dir, false)? else {
        return Ok(None);
    };
    let name = OsString::from(record_name(backing));
    let b = match read_record(&dir, &name) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        r => r?,
    };
    let (path, choices) = parse_record(&b);
    if path != backing.as_os_str().as_encoded_bytes() {
        return Ok(None);
    }
    Ok(choices)
}

/// Records `backing` with the choices its binding file made.
pub fn record_choices(keystore_dir: &Path, backing: &Path, c: &Choices) -> io::Result<()> {
    let Some(dir) = open_known_dir(keystore_dir, true)? else {
        return Err(io::Error::from_raw_os_error(libc::ENOENT));
    };
    let mut body = backing.as_os_str().as_encoded_bytes().to_vec();
    body.push(0);
    body.extend(serde_json::to_vec(c).map_err(io::Error::other)?);
    let name = OsString::from(record_name(backing));
    if read_record(&dir, &name).is_ok_and(|b| b == body) {
        return Ok(());
    }
    write_record(&dir, &name, &body)
}

/// The backing directories recorded for the keystore in `keystore_dir`
/// that still exist.
pub fn known(keystore_dir: &Path) -> Vec<PathBuf> {
    let Ok(Some(dir)) = open_known_dir(keystore_dir, false) else {
        return Vec::new();
    };
    let Ok(entries) = list_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .into_iter()
        .filter(|(n, _)| {
            let n = n.to_string_lossy();
            !n.ends_with(".tmp") && !n.ends_with(DIR_KEYS_SUFFIX)
        })
        .filter_map(|(n, _)| read_record(&dir, &n).ok())
        .map(|b| PathBuf::from(OsString::from_vec(parse_record(&b).0.to_vec())))
        .filter(|p| Tree::open_absolute(p).is_ok())
        .collect();
    out.sort();
    out
}

/// How many files under `backing` have their data key wrapped under
/// `key_id`, and their plaintext bytes (headers only: nothing unwrapped).
/// The recorded path is followed through no link (it was recorded
/// resolved): a directory swapped for a link since is not counted.
pub fn protected_by(backing: &Path, key_id: &str) -> (u64, u64) {
    let Ok(tree) = Tree::open_absolute(backing) else {
        return (0, 0);
    };
    let Ok(w) = super::walk(&tree) else {
        return (0, 0);
    };
    let mut n = (0, 0);
    for f in &w.files {
        let Ok(file) = tree.open_file(f, false) else {
            continue;
        };
        let Ok(h) = EncryptedFile::read_header(&file) else {
            continue;
        };
        if h.active().is_some_and(|s| s.key_id == key_id) {
            n.0 += 1;
            n.1 += file
                .metadata()
                .map(|m| h.layout().plain_size_from_backing(m.len()))
                .unwrap_or(0);
        }
    }
    n
}

/// The suffix of the list of a tree's directory keys, beside its record.
const DIR_KEYS_SUFFIX: &str = ".dirkeys";

/// The list as stored: JSON, directories by `DirId` ("INO:BIRTH").
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct DirKeysFile {
    /// The backing directory (for people reading it; the name says which).
    #[serde(rename = "Backing", default)]
    backing: String,
    /// Each listed directory's key id, or null once its owner cleared it.
    #[serde(rename = "Directories", default)]
    dirs: BTreeMap<String, Option<String>>,
}

/// The list as read.
type Listing = BTreeMap<DirId, Listed>;

/// What the list's file was when read: inode, mtime (s, ns), size.
type Stamp = (u64, i64, i64, u64);

/// The list's file `b` (read from `path`) as a listing.
fn parse_listing(b: &[u8], path: &Path) -> io::Result<Listing> {
    let file: DirKeysFile = serde_json::from_slice(b).map_err(|e| {
        io::Error::other(format!(
            "{}: not a list of directory keys: {e}",
            path.display()
        ))
    })?;
    let mut l = Listing::new();
    for (id, key) in file.dirs {
        let Ok(id) = id.parse::<DirId>() else {
            continue;
        };
        l.insert(id, key.map_or(Listed::Cleared, Listed::Key));
    }
    Ok(l)
}

/// What the keystore in `keystore_dir` lists of the directory keys of
/// `backing` (an absolute path), for reports: nothing is created.
pub fn listed_dir_keys(keystore_dir: &Path, backing: &Path) -> io::Result<BTreeMap<DirId, Listed>> {
    let Some(dir) = open_known_dir(keystore_dir, false)? else {
        return Ok(BTreeMap::new());
    };
    let mut name = OsString::from(record_name(backing));
    name.push(DIR_KEYS_SUFFIX);
    let b = match read_record(&dir, &name) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        r => r?,
    };
    parse_listing(&b, &keystore_dir.join(KNOWN_DIR).join(&name))
}

/// The keystore's list of the directory keys set in one backing tree:
/// which directory (by `DirId`) has which key, and which had one until its
/// owner cleared it. It sits in the keystore's `backings/`, where those who
/// can write the tree cannot; mounts of the same tree with this keystore
/// share it (each change is made under a lock and read back by the others
/// at their next lookup of a directory's key).
#[derive(Debug)]
pub struct DirKeyList {
    dir: File,
    name: OsString,
    backing: PathBuf,
    path: PathBuf,
    /// The listing last read, and what the file was then.
    cache: Mutex<Option<(Stamp, Arc<Listing>)>>,
    /// Serialises this process's changes (flock sees one description).
    writing: Mutex<()>,
}

impl DirKeyList {
    /// The list of `backing` in the keystore directory `keystore_dir`
    /// (`backings/` made when missing; the list itself at its first change).
    pub fn open(keystore_dir: &Path, backing: &Path) -> io::Result<Self> {
        let Some(dir) = open_known_dir(keystore_dir, true)? else {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        };
        let mut name = OsString::from(record_name(backing));
        name.push(DIR_KEYS_SUFFIX);
        let path = keystore_dir.join(KNOWN_DIR).join(&name);
        Ok(Self {
            dir,
            name,
            path,
            backing: backing.to_path_buf(),
            cache: Mutex::new(None),
            writing: Mutex::new(()),
        })
    }

    /// The listing now: read again when the file changed since.
    fn listing(&self) -> io::Result<Arc<Listing>> {
        let mut f = match open_strictly_beneath(
            &self.dir,
            Path::new(&self.name),
            libc::O_RDONLY | libc::O_NONBLOCK,
            0,
        ) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Arc::default()),
            r => r?,
        };
        let m = f.metadata()?;
        if !m.is_file() {
            return Err(io::Error::other(format!(
                "{} is not a regular file",
                self.path().display()
            )));
        }
        let stamp: Stamp = (m.ino(), m.mtime(), m.mtime_nsec(), m.len());
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((s, l)) = &*cache
            && *s == stamp
        {
            return Ok(l.clone());
        }
        let mut b = Vec::new();
        f.read_to_end(&mut b)?;
        let l = Arc::new(parse_listing(&b, self.path())?);
        *cache = Some((stamp, l.clone()));
        Ok(l)
    }

    /// A number that changes whenever the list does (0: no list yet), from
    /// its file's inode, time and size: what another mount of the tree
    /// checks before it trusts what it cached.
    pub fn version(&self) -> io::Result<u64> {
        use std::hash::{Hash, Hasher};
        let f = match open_strictly_beneath(
            &self.dir,
            Path::new(&self.name),
            libc::O_RDONLY | libc::O_NONBLOCK,
            0,
        ) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            r => r?,
        };
        let m = f.metadata()?;
        let stamp: Stamp = (m.ino(), m.mtime(), m.mtime_nsec(), m.len());
        let mut h = std::collections::hash_map::DefaultHasher::new();
        stamp.hash(&mut h);
        Ok(h.finish() | 1)
    }

    /// The list's file (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the list says of directory `id` (None: nothing).
    pub fn get(&self, id: DirId) -> io::Result<Option<Listed>> {
        Ok(self.listing()?.get(&id).cloned())
    }

    /// Lists directory `id` as `to` (None: drops it, e.g. at its rmdir),
    /// durably, under the list's lock; returns what it said before.
    pub fn set(&self, id: DirId, to: Option<Listed>) -> io::Result<Option<Listed>> {
        let _me = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        self.dir.lock()?;
        let r = (|| {
            let mut l = (*self.listing()?).clone();
            let before = match &to {
                Some(t) => l.insert(id, t.clone()),
                None => l.remove(&id),
            };
            if before == to {
                return Ok(before);
            }
            let file = DirKeysFile {
                backing: self.backing.to_string_lossy().into_owned(),
                dirs: l
                    .iter()
                    .map(|(id, k)| {
                        let k = match k {
                            Listed::Key(k) => Some(k.clone()),
                            Listed::Cleared => None,
                        };
                        (id.to_string(), k)
                    })
                    .collect(),
            };
            let body = serde_json::to_vec_pretty(&file).map_err(io::Error::other)?;
            write_record(&self.dir, &self.name, &body)?;
            self.dir.sync_all()?;
            Ok(before)
        })();
        let _ = self.dir.unlock();
        r
    }
}

/// Lists the key `key_id` of the directory `dir` (its metadata, after its
/// record was written) of the tree `backing` in the keystore directory
/// `keystore_dir`, as `kmsfs set-key` through a mount does: for tools that
/// write directory key records without a mount (import).
pub fn list_dir_key(
    keystore_dir: &Path,
    backing: &Path,
    dir: &std::fs::Metadata,
    key_id: &str,
) -> io::Result<()> {
    DirKeyList::open(keystore_dir, backing)?
        .set(DirId::of(dir), Some(Listed::Key(key_id.to_string())))
        .map(drop)
}
