//! The directories of a backing tree that have a key of their own (their
//! key record, docs/MOUNT.md "A key per directory"), as recorded: read
//! without unwrapping the tree's MAC key, for `kmsfs inspect`; the mount
//! checks each record's MAC before it uses one. Export and import carry
//! them: checked with the tree's MAC key on the way out, written as the
//! plain directory's xattr `KEY_ID_XATTR`, and made again on the way in,
//! authorized for the user who imports, as `set-key` authorizes its caller.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use super::Tree;
use crate::crypto::SecretBytes;
use crate::envelope::dirkey::{
    DirId, KEY_ID_XATTR, Listed, MAC_KEY_PURPOSE, PURPOSE_KEY, RECORD_XATTR, SET_KEY_PURPOSE,
    check_record, record_text, recorded_key_id,
};
use crate::kms::{
    DataKeySpec, EncryptionContext, KeyService, KeyServiceExt, KmsError, RequestContext,
};
use crate::os;

/// Longest record read.
const RECORD_MAX: usize = 1024;

/// The key id recorded on directory `rel` of `tree` ("" the root): None
/// when it has no record, `Some(None)` when what it holds is not one.
fn recorded(tree: &Tree, rel: &Path) -> Option<Option<String>> {
    let dir = tree.dir(rel).ok()?;
    let mut buf = vec![0u8; RECORD_MAX];
    let n = os::xattr::getxattr_node(&dir, OsStr::new(RECORD_XATTR), &mut buf).ok()?;
    Some(recorded_key_id(&buf[..n]))
}

/// The directories among the root and `dirs` that hold a key record, with
/// the key id each names (None: a record that cannot be read as one).
pub fn recorded_dir_keys(tree: &Tree, dirs: &[PathBuf]) -> Vec<(PathBuf, Option<String>)> {
    std::iter::once(PathBuf::new())
        .chain(dirs.iter().cloned())
        .filter_map(|d| recorded(tree, &d).map(|k| (d, k)))
        .collect()
}

/// The directories among the root and `dirs` whose record disagrees with
/// `listed`, the keystore's list of the keys set through the mount, and
/// how: a record missing where a key was set, one naming another key, one
/// there after its owner cleared it. The mount refuses creates under each.
/// Listed directories that are not in the tree (removed, or a copy of it)
/// are not reported.
pub fn dir_key_mismatches(
    tree: &Tree,
    dirs: &[PathBuf],
    listed: &BTreeMap<DirId, Listed>,
) -> Vec<(PathBuf, String)> {
    if listed.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for d in std::iter::once(PathBuf::new()).chain(dirs.iter().cloned()) {
        let Ok(m) = tree.dir(&d).and_then(|f| f.metadata()) else {
            continue;
        };
        let Some(l) = listed.get(&DirId::of(&m)) else {
            continue;
        };
        let why = match (l, recorded(tree, &d)) {
            (Listed::Key(k), None) => format!(
                "the keystore lists key {k}, but its record is missing (removed in the backing \
                 directory)"
            ),
            (Listed::Key(k), Some(Some(r))) if r != *k => {
                format!("its record names {r}, but the keystore lists key {k}, set last")
            }
            (Listed::Cleared, Some(_)) => {
                "its owner cleared its key, but a record is there again".into()
            }
            _ => continue,
        };
        out.push((d, why));
    }
    out
}

/// A tree's directory-key MAC key, unwrapped: what checks and makes the
/// key records of its directories (docs/MOUNT.md, "A key per directory").
#[derive(Debug)]
pub struct RecordKey(SecretBytes);

/// The encryption context of a wrapped MAC key.
fn mac_context() -> EncryptionContext {
    EncryptionContext::with(PURPOSE_KEY, MAC_KEY_PURPOSE)
}

impl RecordKey {
    /// Unwraps the MAC key `wrapped` (the binding file's `DirKeyMacKey`),
    /// only under `trusted` (the binding file's default key), as the mount
    /// does: a MAC key wrapped under any other key is refused.
    pub fn unwrap(
        ks: &dyn KeyService,
        rc: &RequestContext<'_>,
        wrapped: &[u8],
        trusted: &str,
    ) -> Result<Self, KmsError> {
        Ok(Self(
            ks.decrypt(rc, wrapped, &mac_context(), Some(trusted))?
                .plaintext,
        ))
    }

    /// A new MAC key under `key_id`: the key and its wrapped form.
    pub fn generate(
        ks: &dyn KeyService,
        rc: &RequestContext<'_>,
        key_id: &str,
    ) -> Result<(Self, Vec<u8>), KmsError> {
        let dk = ks.generate_data_key(rc, key_id, DataKeySpec::Aes256, &mac_context())?;
        Ok((Self(dk.plaintext), dk.ciphertext_blob))
    }
}

/// The key id the record on directory `rel` of `tree` names, if it has one
/// and its MAC holds under `key` (None: no MAC key could be unwrapped);
/// Err says why a record is refused.
pub(super) fn checked_record(
    tree: &Tree,
    rel: &Path,
    key: Option<&RecordKey>,
) -> Result<Option<String>, String> {
    let dir = tree.dir(rel).map_err(|e| e.to_string())?;
    let Some(record) = dir_xattr(&dir, RECORD_XATTR)? else {
        return Ok(None);
    };
    let Some(key) = key else {
        return Err("the tree's directory-key MAC key does not open".into());
    };
    let md = dir.metadata().map_err(|e| e.to_string())?;
    check_record(key.0.expose(), &record, &md)
        .map(Some)
        .map_err(str::to_string)
}

/// The value of the xattr `name` of the backing directory `dir` (at most
/// `RECORD_MAX` bytes): None when it has none, or the file system keeps no
/// user xattrs; Err says why it could not be read.
fn dir_xattr(dir: &File, name: &str) -> Result<Option<Vec<u8>>, String> {
    let mut buf = vec![0u8; RECORD_MAX];
    match os::xattr::getxattr_node(dir, OsStr::new(name), &mut buf) {
        Ok(n) => {
            buf.truncate(n);
            Ok(Some(buf))
        }
        Err(e)
            if e.raw_os_error() == Some(libc::ENODATA)
                || e.raw_os_error() == Some(libc::EOPNOTSUPP) =>
        {
            Ok(None)
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Writes the record naming `key_id` on the backing directory `dir` (a
/// descriptor of it), made the way the mount's `set-key` makes it.
pub(super) fn write_record(dir: &File, key: &RecordKey, key_id: &str) -> io::Result<()> {
    let md = dir.metadata()?;
    let text = record_text(key.0.expose(), key_id, &md);
    os::xattr::setxattr_node(dir, OsStr::new(RECORD_XATTR), text.as_bytes(), 0)
}

/// Asks the key service, as the caller of `rc`, for a data key under
/// `asked` with the context `set-key` uses: the check that the caller may
/// use that key for a directory. The key id it answered.
pub(super) fn authorize(
    ks: &dyn KeyService,
    rc: &RequestContext<'_>,
    asked: &str,
) -> Result<String, KmsError> {
    let context = EncryptionContext::with(PURPOSE_KEY, SET_KEY_PURPOSE);
    Ok(ks
        .generate_data_key(rc, asked, DataKeySpec::Aes256, &context)?
        .key_id)
}

/// The key a plain directory `rel` of `tree` asks for in its xattr
/// `KEY_ID_XATTR` (what export writes): None when it has none; Err when
/// it holds something that is not a key id.
pub(super) fn asked_key(tree: &Tree, rel: &Path) -> Result<Option<String>, String> {
    let dir = tree.dir(rel).map_err(|e| e.to_string())?;
    let Some(asked) = dir_xattr(&dir, KEY_ID_XATTR)? else {
        return Ok(None);
    };
    let k = std::str::from_utf8(&asked)
        .map(|s| s.trim_end_matches('\0').trim())
        .map_err(|_| format!("{KEY_ID_XATTR} is not text"))?;
    if k.is_empty() || k.len() > 512 || k.contains(char::is_whitespace) {
        return Err(format!("{KEY_ID_XATTR} does not hold a key id"));
    }
    Ok(Some(k.to_string()))
}

/// Writes the key id `key_id` as the xattr `KEY_ID_XATTR` of the exported
/// directory `dir`.
pub(super) fn write_asked(dir: &File, key_id: &str) -> io::Result<()> {
    os::xattr::setxattr_node(dir, OsStr::new(KEY_ID_XATTR), key_id.as_bytes(), 0)
}
