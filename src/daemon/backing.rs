//! What a backing directory says about itself before it is mounted: the
//! marker that binds it to its keystore, the lock a serving daemon holds in
//! it, whether it can be written, and a bounded survey of its files (empty?
//! plain files? which keys?). And the checks of the mount point and of
//! /dev/fuse, made before anything is created.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::MountError;
use super::options::{Options, parse_options};
use crate::envelope::EncryptedFile;
use crate::format::Layout;
use crate::fs::{BACKING_LOCK, BACKING_MARKER};
use crate::os::{self, dir::EntryKind};
use crate::tree::Tree;

/// Entries the survey looks at, at most (the whole tree, breadth first).
pub const SURVEY_LIMIT: usize = 2000;

/// The marker in a backing root: the keystore and the default key the
/// directory was first mounted with.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackingMarker {
    /// Format of this file.
    #[serde(rename = "Version")]
    pub version: u32,
    /// The keystore's id (`kmsfs init` prints it).
    #[serde(rename = "KeystoreId")]
    pub keystore_id: String,
    /// The CMK new files are encrypted under unless `--key-id` says otherwise.
    #[serde(rename = "DefaultKeyId")]
    pub default_key_id: String,
    /// The block format (header format version) of every file in the tree:
    /// absent in markers written before version 2 existed, which means 1.
    #[serde(
        rename = "BlockFormat",
        default = "block_format_one",
        skip_serializing_if = "is_block_format_one"
    )]
    pub block_format: u16,
    /// Whether names are encrypted, chosen at the first mount (absent:
    /// plain names, as every tree made before names were encrypted).
    #[serde(
        rename = "EncryptedNames",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub encrypted_names: Option<bool>,
    /// Encrypted names: the tree's name key, wrapped by a CMK (base64),
    /// written by the first daemon that serves the tree.
    #[serde(rename = "NameKey", default, skip_serializing_if = "Option::is_none")]
    pub name_key: Option<String>,
    /// Keys per directory: the key that authenticates directories' key
    /// records, wrapped by the default key (base64), written by the first
    /// `kmsfs set-key` (docs/MOUNT.md, "A key per directory").
    #[serde(
        rename = "DirKeyMacKey",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub dir_key_mac: Option<String>,
}

fn block_format_one() -> u16 {
    1
}

fn is_block_format_one(v: &u16) -> bool {
    *v == 1
}

impl BackingMarker {
    /// The marker of a tree that new files are made in now: its files get
    /// the layout of new files.
    pub fn new(keystore_id: String, default_key_id: String) -> Self {
        Self {
            version: 1,
            keystore_id,
            default_key_id,
            block_format: Layout::NEW.version(),
            encrypted_names: None,
            name_key: None,
            dir_key_mac: None,
        }
    }

    /// The wrapped name key (None: plain names); an error if it is not base64.
    pub fn wrapped_name_key(&self) -> Result<Option<Vec<u8>>, MountError> {
        unbase64(self.name_key.as_deref(), "NameKey")
    }

    /// The wrapped MAC key of directory key records (None: no directory
    /// has a key of its own yet); an error if it is not base64.
    pub fn wrapped_dir_key_mac(&self) -> Result<Option<Vec<u8>>, MountError> {
        unbase64(self.dir_key_mac.as_deref(), "DirKeyMacKey")
    }
}

/// A base64 field `what` of the binding file, decoded.
fn unbase64(v: Option<&str>, what: &str) -> Result<Option<Vec<u8>>, MountError> {
    use base64::Engine;
    v.map(|k| {
        base64::engine::general_purpose::STANDARD
            .decode(k)
            .map_err(|e| {
                MountError::State(
                    format!("{BACKING_MARKER}: {what} is not base64: {e}"),
                    "restore the binding file from a backup".into(),
                )
            })
    })
    .transpose()
}

impl BackingMarker {}

/// The layout of the files of `backing`: the one its marker names; with no
/// marker (a directory never mounted, or whose marker was removed), the one
/// the headers the survey read name, and for a directory with no kmsfs file
/// the layout of new files. Refused: a marker naming a layout this build
/// does not know, and an unmarked directory holding files of both layouts.
pub fn tree_layout(backing: &Path, survey: &Survey) -> Result<Layout, MountError> {
    if let Some(m) = read_marker(backing)? {
        return Layout::from_version(m.block_format).ok_or_else(|| {
            MountError::State(
                format!(
                    "{} names block format {}, which this build does not know",
                    backing.join(BACKING_MARKER).display(),
                    m.block_format
                ),
                "use a newer kmsfs".into(),
            )
        });
    }
    match (
        survey.layouts.contains(&Layout::V1.version()),
        survey.layouts.contains(&Layout::V2.version()),
    ) {
        (true, true) => Err(MountError::State(
            format!(
                "{} has no {BACKING_MARKER} and holds files of block formats 1 and 2",
                backing.display()
            ),
            "move the files of one format out (`kmsfs inspect FILE` shows a file's format), or \
             copy them through `kmsfs export` and `kmsfs import` into a new directory"
                .into(),
        )),
        (true, false) => Ok(Layout::V1),
        _ => Ok(Layout::NEW),
    }
}

/// The backing root's own files (marker, lock), reached through its
/// descriptor: `backing` is opened once, as its user named it, and the name
/// in it is opened through no symbolic link (whoever can write the backing
/// root cannot send root's mount elsewhere by a link in a file's place).
pub(super) fn root_file(
    backing: &Path,
    name: &str,
    flags: i32,
    mode: u32,
) -> std::io::Result<File> {
    let root = Tree::open(backing)?;
    let f = os::at::open_strictly_beneath(root.root(), Path::new(name), flags, mode)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok(f)
}

/// The marker of `backing`, if it has one; an error if it is unreadable.
pub fn read_marker(backing: &Path) -> Result<Option<BackingMarker>, MountError> {
    use std::io::Read;
    let p = backing.join(BACKING_MARKER);
    let read = root_file(
        backing,
        BACKING_MARKER,
        libc::O_RDONLY | libc::O_NONBLOCK,
        0,
    )
    .and_then(|mut f| {
        let mut b = Vec::new();
        f.read_to_end(&mut b).map(|_| b)
    });
    match read {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            MountError::State(
                format!("{} is not a valid kmsfs marker: {e}", p.display()),
                "restore it from a backup, or remove it to bind the directory anew to the \
                 keystore given with --keystore"
                    .into(),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(MountError::io(format!("{}", p.display()), e)),
    }
}

/// The marker's text, written to a new temporary file in the backing root
/// (O_EXCL, through no link: a name planted there makes this fail, never
/// writes elsewhere) and synced; returns the root and the temporary name.
fn marker_tmp(backing: &Path, m: &BackingMarker) -> std::io::Result<(Tree, OsString)> {
    let body = serde_json::to_vec_pretty(m).map_err(std::io::Error::other)?;
    let root = Tree::open(backing)?;
    let tmp = OsString::from(format!("{BACKING_MARKER}.{}.tmp", std::process::id()));
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
    let mut f = os::at::open_strictly_beneath(root.root(), Path::new(&tmp), flags, 0o644)?;
    let r = f
        .write_all(&body)
        .and_then(|()| f.write_all(b"\n"))
        .and_then(|()| f.sync_all());
    if let Err(e) = r {
        let _ = os::beneath::unlinkat(root.root(), &tmp, false);
        return Err(e);
    }
    Ok((root, tmp))
}

/// Writes the marker of `backing` atomically, only if there is none yet.
pub fn write_marker(backing: &Path, m: &BackingMarker) -> Result<(), MountError> {
    let io = |e: std::io::Error| MountError::io(backing.display().to_string(), e);
    let (root, tmp) = marker_tmp(backing, m).map_err(io)?;
    let dir = root.root();
    // A link never replaces: a marker made meanwhile stays.
    let r = match os::at::linkat(dir, &tmp, dir, OsStr::new(BACKING_MARKER)) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
        _ => dir.sync_all(),
    };
    let _ = os::beneath::unlinkat(dir, &tmp, false);
    r.map_err(io)
}

/// Replaces the marker of `backing` atomically (a new default key): the new
/// text goes to a temporary file, is synced, and is renamed over the old one.
pub fn replace_marker(backing: &Path, m: &BackingMarker) -> Result<(), MountError> {
    let io = |e: std::io::Error| MountError::io(backing.display().to_string(), e);
    let (root, tmp) = marker_tmp(backing, m).map_err(io)?;
    let dir = root.root();
    let r = os::beneath::renameat2(dir, &tmp, dir, OsStr::new(BACKING_MARKER), 0)
        .and_then(|()| dir.sync_all());
    if r.is_err() {
        let _ = os::beneath::unlinkat(dir, &tmp, false);
    }
    r.map_err(io)
}

/// What a bounded look at a backing directory found.
#[derive(Debug, Default)]
pub struct Survey {
    /// Entries seen, the reserved names apart.
    pub entries: usize,
    /// The survey stopped at `SURVEY_LIMIT` entries.
    pub truncated: bool,
    /// Regular files that are not kmsfs files (relative paths; all counted,
    /// the first few kept).
    pub plain: Vec<PathBuf>,
    /// How many regular files are not kmsfs files.
    pub plain_count: usize,
    /// Key ids named by the headers of the kmsfs files seen.
    pub key_ids: BTreeSet<String>,
    /// Format versions named by the headers of the kmsfs files seen.
    pub layouts: BTreeSet<u16>,
}

/// Looks at up to `SURVEY_LIMIT` entries of `dir`'s tree (symlinks are not
/// followed): which regular files are kmsfs files and under which keys.
pub fn survey(dir: &Path) -> Survey {
    let mut s = Survey::default();
    let Ok(tree) = crate::tree::Tree::open(dir) else {
        return s;
    };
    // kmsfs's own files of a tree with encrypted names are not entries.
    let encrypted = tree.names_encrypted().unwrap_or(false);
    let mut queue = std::collections::VecDeque::from([PathBuf::new()]);
    while let Some(rel) = queue.pop_front() {
        // Read without O_NOATIME's absence leaving a trace: a mount must not
        // change the access times of what it is about to serve. Through
        // the tree's descriptor: never through a link a user swapped in.
        let Ok(entries) = tree.dir(&rel).and_then(|d| os::at::list_dir(&d)) else {
            continue;
        };
        for (name, kind) in entries {
            if rel.as_os_str().is_empty() && (name == BACKING_MARKER || name == BACKING_LOCK) {
                continue;
            }
            if encrypted && crate::envelope::names::is_internal(&name) {
                continue;
            }
            if s.entries >= SURVEY_LIMIT {
                s.truncated = true;
                return s;
            }
            s.entries += 1;
            let r = rel.join(&name);
            if kind == EntryKind::Dir {
                queue.push_back(r);
            } else if kind == EntryKind::File {
                match crate::tree::open_backing(&tree, &r)
                    .ok()
                    .and_then(|f| EncryptedFile::read_header(&f).ok())
                {
                    Some(h) => {
                        s.layouts.insert(h.version);
                        if let Some(slot) = h.active() {
                            s.key_ids.insert(slot.key_id.clone());
                        }
                    }
                    None => {
                        s.plain_count += 1;
                        if s.plain.len() < 3 {
                            s.plain.push(r);
                        }
                    }
                }
            }
        }
    }
    s
}

/// What `check_before_mount` found and holds.
#[derive(Debug)]
pub struct Prepared {
    /// The parsed `-o` options.
    pub options: Options,
    /// The lock on the backing directory (shared with `-o sharedstorage`;
    /// None on a read-only backing directory that has no lock file).
    pub lock: Option<File>,
    /// The backing directory cannot be written: the mount will be read-only.
    pub backing_read_only: bool,
    /// The lock file was made by this check (device, inode): a mount refused
    /// later removes it with [`Prepared::undo`], so that it leaves nothing.
    pub new_lock: Option<(u64, u64)>,
}

impl Prepared {
    /// Removes what the checks created (the lock file, when this process
    /// made it and it is still the same file), after a refusal.
    pub fn undo(backing: &Path, new_lock: Option<(u64, u64)>) {
        use std::os::unix::fs::MetadataExt;
        let Some((dev, ino)) = new_lock else {
            return;
        };
        let Ok(root) = Tree::open(backing) else {
            return;
        };
        let name = OsStr::new(BACKING_LOCK);
        if let Ok(md) = os::beneath::open_node(root.root(), name).and_then(|n| n.metadata())
            && (md.dev(), md.ino()) == (dev, ino)
        {
            let _ = os::beneath::unlinkat(root.root(), name, false);
        }
    }
}

/// The device FUSE mounts go through (a debug build lets tests name another).
fn dev_fuse() -> PathBuf {
    #[cfg(debug_assertions)]
    if let Some(p) = std::env::var_os("KMSFS_TEST_DEV_FUSE") {
        return PathBuf::from(p);
    }
    PathBuf::from("/dev/fuse")
}

fn check_dev_fuse() -> Result<(), MountError> {
    let dev = dev_fuse();
    // The system's FUSE device (or a test's stand-in), not a user's tree.
    #[allow(clippy::disallowed_methods)]
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&dev)
    {
        Ok(_) => Ok(()),
        Err(e) => {
            let message = format!("cannot open {}: {e}; nothing was mounted", dev.display());
            if e.kind() == std::io::ErrorKind::NotFound {
                return Err(MountError::Refused(
                    message,
                    "load the fuse module (`modprobe fuse`), or in a container pass the device \
                     (`--device /dev/fuse`)"
                        .into(),
                ));
            }
            Err(MountError::NoDevFuse(message))
        }
    }
}

/// True when `dir`'s top level holds kmsfs's marker or a kmsfs file (looks
/// at up to 32 entries).
fn holds_kmsfs_files(dir: &Path) -> bool {
    let Ok(tree) = Tree::open(dir) else {
        return false;
    };
    let Ok(entries) = os::at::list_dir(tree.root()) else {
        return false;
    };
    entries.iter().any(|(name, _)| name == BACKING_MARKER)
        || entries.iter().take(32).any(|(name, kind)| {
            *kind == EntryKind::File
                && tree
                    .open_file(Path::new(name), false)
                    .ok()
                    .and_then(|f| EncryptedFile::read_header(&f).ok())
                    .is_some()
        })
}

fn check_mountpoint_empty(mp: &Path, backing: &Path, o: &Options) -> Result<(), MountError> {
    let swapped = format!(
        "the arguments are `kmsfs mount BACKING MOUNTPOINT`: did you mean `kmsfs mount {} {}`?",
        mp.display(),
        backing.display()
    );
    if holds_kmsfs_files(mp) {
        return Err(MountError::State(
            format!(
                "mount point {} holds kmsfs files: it looks like a backing directory",
                mp.display()
            ),
            swapped,
        ));
    }
    let nonempty = Tree::open(mp)
        .and_then(|t| os::at::list_dir(t.root()))
        .is_ok_and(|e| !e.is_empty());
    if nonempty && !o.nonempty {
        // Files in a mount point that are not kmsfs files were most likely
        // written while nothing was mounted: plaintext on the disk below.
        let s = survey(mp);
        let hint = if s.plain_count > 0 && s.key_ids.is_empty() {
            let examples: Vec<String> = s
                .plain
                .iter()
                .map(|p| mp.join(p).display().to_string())
                .collect();
            format!(
                "{} holds {}{} plain file{} (e.g. {}), probably written while nothing was \
                 mounted there: they are not encrypted, they sit on the disk beneath the mount \
                 point. Move them out (e.g. `mv {mp} {mp}.plain && mkdir {mp}`), mount, \
                 copy them in through the mount, then delete the plain copies; or pass -o \
                 nonempty to hide them while mounted",
                mp.display(),
                if s.truncated { "at least " } else { "" },
                s.plain_count,
                if s.plain_count == 1 { "" } else { "s" },
                examples.join(", "),
                mp = mp.display()
            )
        } else {
            format!(
                "mount on an empty directory, or pass -o nonempty to hide its content while \
                 mounted; {swapped}"
            )
        };
        return Err(MountError::State(
            format!(
                "mount point {} is not empty: the mount would hide what is there",
                mp.display()
            ),
            hint,
        ));
    }
    Ok(())
}

/// Takes the lock of `backing` (creating the lock file): refused when
/// another daemon holds it. A backing directory that cannot be written is
/// reported as read-only (its lock is taken if the file exists).
pub fn lock_backing(backing: &Path, shared: bool) -> Result<(Option<File>, bool), MountError> {
    let p = backing.join(BACKING_LOCK);
    let open = |flags| root_file(backing, BACKING_LOCK, flags | libc::O_NONBLOCK, 0o600);
    let (file, read_only) = match open(libc::O_RDWR | libc::O_CREAT) {
        Ok(f) => (Some(f), false),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EROFS | libc::EACCES | libc::EPERM)
            ) =>
        {
            (open(libc::O_RDONLY).ok(), true)
        }
        Err(e) => return Err(MountError::io(format!("{}", p.display()), e)),
    };
    if let Some(f) = &file {
        let try_lock = || {
            if shared {
                f.try_lock_shared()
            } else {
                f.try_lock()
            }
        };
        let mut r = try_lock();
        // A daemon whose mount is gone (a plain `umount` just now) may still
        // be exiting: its lock goes with it, so wait a little for it.
        let t0 = std::time::Instant::now();
        while matches!(r, Err(std::fs::TryLockError::WouldBlock))
            && t0.elapsed() < std::time::Duration::from_secs(3)
            && super::mountinfo::check_backing_unused(backing).is_ok()
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
            r = try_lock();
        }
        match r {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(MountError::State(
                    format!(
                        "{} is already served by another kmsfs daemon{} (it holds {})",
                        backing.display(),
                        if shared {
                            " that does not share it (mounted without -o sharedstorage)"
                        } else {
                            ""
                        },
                        p.display()
                    ),
                    "use that mount (`grep kmsfs /proc/self/mountinfo` lists them) or unmount it \
                     first; if several hosts or daemons share this storage on purpose, pass \
                     -o sharedstorage to every mount"
                        .into(),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(MountError::io(format!("locking {}", p.display()), e));
            }
        }
    }
    Ok((file, read_only))
}

/// Everything checked before a keystore or anything else is created: the
/// options, /dev/fuse, the mount point (free, empty unless `-o nonempty`,
/// not a backing directory), the backing directory (not served by another
/// daemon unless `-o sharedstorage`; writable, else the mount is read-only).
pub fn check_before_mount(
    backing: &Path,
    mountpoint: &Path,
    raw_options: &[String],
) -> Result<Prepared, MountError> {
    let options = parse_options(raw_options)?;
    check_dev_fuse()?;
    super::prepare_mountpoint(mountpoint)?;
    check_mountpoint_empty(mountpoint, backing, &options)?;
    if !options.shared_storage {
        super::mountinfo::check_backing_unused(backing)?;
    }
    // Shared storage: a shared lock, which keeps out only the daemons that
    // think they are alone (other hosts do not see it at all).
    let existed = Tree::open(backing)
        .and_then(|t| os::beneath::open_node(t.root(), OsStr::new(BACKING_LOCK)))
        .is_ok();
    let (lock, backing_read_only) = lock_backing(backing, options.shared_storage)?;
    let new_lock = match &lock {
        Some(f) if !existed => {
            use std::os::unix::fs::MetadataExt;
            f.metadata().ok().map(|m| (m.dev(), m.ino()))
        }
        _ => None,
    };
    Ok(Prepared {
        options,
        lock,
        backing_read_only,
        new_lock,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_round_trip_never_replaces() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(read_marker(t.path()).unwrap(), None);
        let m = BackingMarker::new("ks-1".into(), "k-1".into());
        write_marker(t.path(), &m).unwrap();
        let text = std::fs::read_to_string(t.path().join(BACKING_MARKER)).unwrap();
        assert!(text.contains("\"BlockFormat\": 2"), "{text}");
        assert_eq!(
            tree_layout(t.path(), &Survey::default()).unwrap(),
            Layout::V2
        );
        let other = BackingMarker {
            keystore_id: "ks-2".into(),
            ..m.clone()
        };
        write_marker(t.path(), &other).unwrap();
        assert_eq!(read_marker(t.path()).unwrap(), Some(m.clone()));
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 1);
        let newer = BackingMarker {
            default_key_id: "k-2".into(),
            ..m.clone()
        };
        replace_marker(t.path(), &newer).unwrap();
        assert_eq!(read_marker(t.path()).unwrap(), Some(newer));
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_marker_from_before_block_format_2_means_format_1() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(
            t.path().join(BACKING_MARKER),
            br#"{"Version": 1, "KeystoreId": "ks-1", "DefaultKeyId": "k-1"}"#,
        )
        .unwrap();
        let m = read_marker(t.path()).unwrap().unwrap();
        assert_eq!(m.block_format, 1);
        // Even if the survey saw only files of format 2: the marker decides.
        let mut s = Survey::default();
        s.layouts.insert(2);
        assert_eq!(tree_layout(t.path(), &s).unwrap(), Layout::V1);
        // Written back (a new default key), it stays format 1 and unchanged.
        replace_marker(t.path(), &m).unwrap();
        let text = std::fs::read_to_string(t.path().join(BACKING_MARKER)).unwrap();
        assert!(!text.contains("BlockFormat"), "{text}");
        std::fs::write(
            t.path().join(BACKING_MARKER),
            br#"{"Version": 1, "KeystoreId": "ks-1", "DefaultKeyId": "k-1", "BlockFormat": 7}"#,
        )
        .unwrap();
        assert!(tree_layout(t.path(), &s).is_err());
    }

    #[test]
    fn an_unmarked_tree_takes_the_layout_of_its_files() {
        let t = tempfile::tempdir().unwrap();
        let mut s = Survey::default();
        assert_eq!(tree_layout(t.path(), &s).unwrap(), Layout::NEW);
        s.layouts.insert(1);
        assert_eq!(tree_layout(t.path(), &s).unwrap(), Layout::V1);
        s.layouts.insert(2);
        assert!(tree_layout(t.path(), &s).is_err());
        s.layouts.remove(&1);
        assert_eq!(tree_layout(t.path(), &s).unwrap(), Layout::V2);
    }

    #[test]
    fn survey_counts_plain_files_and_skips_reserved_names() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join(BACKING_LOCK), b"").unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        std::fs::write(t.path().join("d/plain"), b"hello").unwrap();
        std::fs::write(t.path().join("empty"), b"").unwrap();
        let s = survey(t.path());
        assert_eq!((s.entries, s.plain_count), (3, 2));
        assert!(s.key_ids.is_empty());
        assert!(!s.truncated);
    }
}
