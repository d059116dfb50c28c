//! Encrypted names: the per-tree name key (wrapped by a CMK like a data
//! key), each directory's id, and the deterministic, authenticated
//! encryption of names (bound to their directory) and symlink targets, with
//! the long-name scheme for names whose encoding passes 255 bytes.
//! docs/FORMAT.md, "Names", is the specification.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::crypto::{Key256, NONCE_LEN, SivKey, TAG_LEN, random_array, sha256};
use crate::kms::{
    DataKeySpec, EncryptionContext, KeyService, KeyServiceExt, KmsError, RequestContext,
};
use crate::os;

/// The encryption-context pair that says a wrapped key is a tree's name key.
pub const NAMES_CONTEXT_KEY: &str = "kmsfs:purpose";
/// Its value.
pub const NAMES_CONTEXT_VALUE: &str = "names";
/// The file in every directory but the root that holds the directory's id.
pub const DIR_ID_FILE: &str = ".kmsfs.dirid";
/// The start of a long name's entry (followed by the hash of the name).
pub const LONG_PREFIX: &str = ".kmsfs.ln.";
/// The end of a long name's side file (after the entry's name).
pub const LONG_SUFFIX: &str = ".name";
/// The start of the temporary names a new directory is made under.
pub const TEMP_PREFIX: &str = ".kmsfs.tmp.";
/// Longest backing name written (the backing file system's NAME_MAX).
pub const BACKING_NAME_MAX: usize = 255;
/// Longest plaintext name (NAME_MAX).
pub const NAME_MAX: usize = 255;
/// Longest symlink target stored (the backing's limit, 4095, once sealed and
/// encoded).
pub const TARGET_MAX: usize = 3043;
/// Bytes a stored symlink target adds before encoding: nonce and tag.
pub const TARGET_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// Names are padded to a multiple of this before sealing.
pub const PAD: usize = 16;
/// Label at the start of a name's associated data.
pub const NAME_AAD_LABEL: &[u8; 13] = b"kmsfs.name.v1";
/// The associated data of a symlink target of form 1 (bound to the tree
/// only; still read, no longer written).
pub const TARGET_AAD_LABEL: &[u8; 13] = b"kmsfs.link.v1";
/// Label at the start of a form-2 target's associated data (bound to its
/// link: followed by the directory's id and the link's stored name).
pub const LINK_AAD_LABEL: &[u8; 13] = b"kmsfs.link.v2";
/// The start of a stored target of form 2. `~` is not in the base64url
/// alphabet, so no form-1 target starts with it; its four bytes take the
/// place of three nonce bytes, so both forms of a target have one length.
pub const LINK_MARK: &[u8; 4] = b"~v2~";
/// Random bytes of a form-2 target's nonce (the last three are zero).
const LINK_NONCE_RANDOM: usize = 9;

/// The associated data of a name key's check value (never a name's or a
/// target's: their labels differ).
const CHECK_LABEL: &[u8; 14] = b"kmsfs.check.v1";

/// A directory's random 128-bit id (the root's is all zeros).
pub type DirId = [u8; 16];
/// The root directory's id.
pub const ROOT_DIR_ID: DirId = [0; 16];

/// Why a name or target was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// Not an encrypted name of this directory (moved, copied or edited in
    /// the backing directory), or a side file that does not match.
    #[error("{0}")]
    Corrupt(&'static str),
    /// A name or target too long to store.
    #[error("name or target too long")]
    TooLong,
    /// The backing file system failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The key service refused or failed.
    #[error(transparent)]
    Kms(#[from] KmsError),
}

/// The encryption context of a tree's wrapped name key.
pub fn names_context() -> EncryptionContext {
    EncryptionContext::with(NAMES_CONTEXT_KEY, NAMES_CONTEXT_VALUE)
}

/// A tree's name key, unwrapped. Debug is redacted; aws-lc-rs clears the
/// key schedule when it drops.
#[derive(Debug)]
pub struct NameKey {
    siv: SivKey,
}

/// A name as stored in a backing directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingName {
    /// The id of the directory it is a name of.
    pub dir: DirId,
    /// The entry's name in the backing directory.
    pub entry: OsString,
    /// For a long name: the content of its side file (`entry` + ".name"),
    /// the whole encoded name.
    pub long: Option<Vec<u8>>,
}

impl BackingName {
    /// The side file's name of a long name.
    pub fn side_file(&self) -> Option<OsString> {
        self.long.as_ref().map(|_| side_file_of(&self.entry))
    }
}

/// The side file of long entry `entry`.
pub fn side_file_of(entry: &OsStr) -> OsString {
    let mut s = entry.to_os_string();
    s.push(LONG_SUFFIX);
    s
}

/// True for the names kmsfs keeps for itself in a directory of an encrypted
/// tree (its id, long names' side files, temporaries): an encrypted name
/// never starts with a dot, so none of these can be a user's entry.
pub fn is_internal(backing: &OsStr) -> bool {
    let b = backing.as_bytes();
    let long_entry = b.starts_with(LONG_PREFIX.as_bytes()) && !b.ends_with(LONG_SUFFIX.as_bytes());
    b.starts_with(b".kmsfs.") && !long_entry
}

fn pad(plain: &[u8]) -> zeroize::Zeroizing<Vec<u8>> {
    let n = PAD - plain.len() % PAD;
    let mut v = zeroize::Zeroizing::new(Vec::with_capacity(plain.len() + n));
    v.extend_from_slice(plain);
    v.extend(std::iter::repeat_n(n as u8, n));
    v
}

fn unpad(mut v: zeroize::Zeroizing<Vec<u8>>) -> Result<Vec<u8>, NameError> {
    let bad = NameError::Corrupt("bad padding");
    let n = usize::from(*v.last().ok_or(NameError::Corrupt("empty"))?);
    if n == 0 || n > PAD || n > v.len() || !v.len().is_multiple_of(PAD) {
        return Err(bad);
    }
    if v[v.len() - n..].iter().any(|&b| usize::from(b) != n) {
        return Err(bad);
    }
    let len = v.len() - n;
    v.truncate(len);
    Ok(v.to_vec())
}

fn name_nonce(dir: &DirId) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n.copy_from_slice(&dir[..NONCE_LEN]);
    n
}

fn name_aad(dir: &DirId) -> [u8; 29] {
    let mut a = [0u8; 29];
    a[..13].copy_from_slice(NAME_AAD_LABEL);
    a[13..].copy_from_slice(dir);
    a
}

/// The entry of a long name whose encoding is `encoded`.
fn long_entry(encoded: &[u8]) -> OsString {
    let mut s = OsString::from(LONG_PREFIX);
    s.push(URL_SAFE_NO_PAD.encode(sha256(&[encoded])));
    s
}

/// True when `name` is a valid plaintext name (what a directory may hold).
fn valid_plain(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= NAME_MAX
        && name != b"."
        && name != b".."
        && !name.iter().any(|&b| b == b'/' || b == 0)
}

impl NameKey {
    /// The key over 32 bytes of key material.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, NameError> {
        let k = Key256::from_slice(bytes).map_err(|_| NameError::Corrupt("name key length"))?;
        Ok(Self {
            siv: SivKey::new(&k),
        })
    }

    /// A new name key under CMK `key_id`: the key and its wrapped form.
    pub fn generate(
        ks: &dyn KeyService,
        rc: &RequestContext<'_>,
        key_id: &str,
    ) -> Result<(Self, Vec<u8>), NameError> {
        let dk = ks.generate_data_key(rc, key_id, DataKeySpec::Aes256, &names_context())?;
        Ok((Self::from_bytes(dk.plaintext.expose())?, dk.ciphertext_blob))
    }

    /// Unwraps a tree's name key (the key service checks the CMK's state
    /// and policy, and records it).
    pub fn unwrap(
        ks: &dyn KeyService,
        rc: &RequestContext<'_>,
        wrapped: &[u8],
    ) -> Result<Self, NameError> {
        let d = ks.decrypt(rc, wrapped, &names_context(), None)?;
        Self::from_bytes(d.plaintext.expose())
    }

    /// A value that tells this key from another without revealing it (the
    /// tag of nothing under a fixed nonce and label: AES-GCM-SIV is
    /// deterministic): a mount compares a name key wrapped anew with the
    /// one it serves.
    pub fn check_value(&self) -> Result<Vec<u8>, NameError> {
        let mut out = Vec::with_capacity(TAG_LEN);
        self.siv
            .seal_append(&[0; NONCE_LEN], CHECK_LABEL, b"", &mut out)
            .map_err(|_| NameError::Corrupt("seal"))?;
        Ok(out)
    }

    /// The backing name of plaintext `name` in directory `dir`: always the
    /// same for the same directory and name.
    pub fn encrypt_name(&self, dir: &DirId, name: &OsStr) -> Result<BackingName, NameError> {
        let plain = name.as_bytes();
        if plain.len() > NAME_MAX {
            return Err(NameError::TooLong);
        }
        let mut sealed = Vec::with_capacity(plain.len() + PAD + TAG_LEN);
        self.siv
            .seal_append(&name_nonce(dir), &name_aad(dir), &pad(plain), &mut sealed)
            .map_err(|_| NameError::Corrupt("seal"))?;
        let encoded = URL_SAFE_NO_PAD.encode(&sealed).into_bytes();
        if encoded.len() <= BACKING_NAME_MAX {
            return Ok(BackingName {
                dir: *dir,
                entry: OsString::from_vec(encoded),
                long: None,
            });
        }
        Ok(BackingName {
            dir: *dir,
            entry: long_entry(&encoded),
            long: Some(encoded),
        })
    }

    /// The plaintext of the encoded name `encoded` in directory `dir`.
    fn open_encoded(&self, dir: &DirId, encoded: &[u8]) -> Result<OsString, NameError> {
        let sealed = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| NameError::Corrupt("not an encrypted name"))?;
        let plain = self
            .siv
            .open(&name_nonce(dir), &name_aad(dir), &sealed)
            .map_err(|_| {
                NameError::Corrupt(
                    "fails authentication in this directory (moved, copied or edited)",
                )
            })?;
        let plain = unpad(plain)?;
        if !valid_plain(&plain) {
            return Err(NameError::Corrupt("not a valid name"));
        }
        Ok(OsString::from_vec(plain))
    }

    /// The plaintext name of backing entry `entry` of directory `dir`; for a
    /// long name, `side` reads its side file. Anything that does not
    /// authenticate as a name of this very directory is refused.
    pub fn decrypt_entry(
        &self,
        dir: &DirId,
        entry: &OsStr,
        side: impl FnOnce(&OsStr) -> std::io::Result<Vec<u8>>,
    ) -> Result<OsString, NameError> {
        let b = entry.as_bytes();
        if b.starts_with(LONG_PREFIX.as_bytes()) {
            let encoded = side(&side_file_of(entry))?;
            let encoded = encoded.trim_ascii_end();
            if long_entry(encoded) != entry || encoded.len() <= BACKING_NAME_MAX {
                return Err(NameError::Corrupt("long name's side file does not match"));
            }
            return self.open_encoded(dir, encoded);
        }
        if b.len() > BACKING_NAME_MAX {
            return Err(NameError::Corrupt("not an encrypted name"));
        }
        self.open_encoded(dir, b)
    }

    /// The stored form (2) of symlink target `target` for the link at
    /// `at`: `~v2~`, then base64url of a 9-byte random nonce, the sealed
    /// target and its tag (not padded: a symlink's size is its target's
    /// length, which the mount reports from the stored length, the same in
    /// both forms). Sealed with the link's directory id and stored name in
    /// the associated data: valid there only.
    pub fn encrypt_target(&self, at: LinkPlace<'_>, target: &[u8]) -> Result<Vec<u8>, NameError> {
        if target.len() > TARGET_MAX {
            return Err(NameError::TooLong);
        }
        let random: [u8; LINK_NONCE_RANDOM] =
            random_array().map_err(|_| NameError::Corrupt("random"))?;
        let mut sealed = random.to_vec();
        self.siv
            .seal_append(&link_nonce(&random), &link_aad(at), target, &mut sealed)
            .map_err(|_| NameError::Corrupt("seal"))?;
        let mut out = LINK_MARK.to_vec();
        out.extend_from_slice(URL_SAFE_NO_PAD.encode(&sealed).as_bytes());
        Ok(out)
    }

    /// The plaintext of stored symlink target `stored` of the link at `at`,
    /// and its form. A form-2 target opens only at the link it was sealed
    /// for; a form-1 target (tree-bound) anywhere in the tree.
    pub fn decrypt_target(
        &self,
        at: LinkPlace<'_>,
        stored: &[u8],
    ) -> Result<(Vec<u8>, TargetForm), NameError> {
        let not_target = || NameError::Corrupt("not an encrypted symlink target");
        let (form, body) = match stored.strip_prefix(LINK_MARK.as_slice()) {
            Some(rest) => (TargetForm::Link, rest),
            None => (TargetForm::Tree, stored),
        };
        let sealed = URL_SAFE_NO_PAD.decode(body).map_err(|_| not_target())?;
        let plain = match form {
            TargetForm::Link => {
                if sealed.len() < LINK_NONCE_RANDOM + TAG_LEN {
                    return Err(not_target());
                }
                let (random, rest) = sealed.split_at(LINK_NONCE_RANDOM);
                let mut r = [0u8; LINK_NONCE_RANDOM];
                r.copy_from_slice(random);
                self.siv
                    .open(&link_nonce(&r), &link_aad(at), rest)
                    .map_err(|_| {
                        NameError::Corrupt(
                            "symlink target fails authentication at this link (another \
                             link's target, moved, or edited)",
                        )
                    })?
            }
            TargetForm::Tree => {
                if sealed.len() < NONCE_LEN + TAG_LEN {
                    return Err(not_target());
                }
                let (nonce, rest) = sealed.split_at(NONCE_LEN);
                let mut n = [0u8; NONCE_LEN];
                n.copy_from_slice(nonce);
                self.siv
                    .open(&n, TARGET_AAD_LABEL, rest)
                    .map_err(|_| NameError::Corrupt("symlink target fails authentication"))?
            }
        };
        if plain.is_empty() || plain.contains(&0) {
            return Err(NameError::Corrupt("not a valid symlink target"));
        }
        Ok((plain.to_vec(), form))
    }

    /// The stored form 1 of `target` (bound to the tree only), as builds
    /// before form 2 wrote it: for tests of the reading of old trees.
    #[cfg(test)]
    fn encrypt_target_v1(&self, target: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = random_array().unwrap();
        let mut sealed = nonce.to_vec();
        self.siv
            .seal_append(&nonce, TARGET_AAD_LABEL, target, &mut sealed)
            .unwrap();
        URL_SAFE_NO_PAD.encode(&sealed).into_bytes()
    }
}

/// Where a symlink is: its directory's id and the stored name of its entry
/// (for a long name, the `.kmsfs.ln.` entry, whose hash binds the name).
#[derive(Debug, Clone, Copy)]
pub struct LinkPlace<'a> {
    /// The id of the directory holding the link.
    pub dir: &'a DirId,
    /// The link's entry in that backing directory.
    pub entry: &'a OsStr,
}

impl<'a> LinkPlace<'a> {
    /// The place of the link stored as `name`.
    pub fn of(name: &'a BackingName) -> Self {
        LinkPlace {
            dir: &name.dir,
            entry: &name.entry,
        }
    }
}

/// The form a stored symlink target has (docs/FORMAT.md, "Symlink
/// targets").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetForm {
    /// Form 1: bound to the tree only (builds before form 2 wrote it; a
    /// rename through the mount re-seals it in form 2).
    Tree,
    /// Form 2: bound to its link (directory id and stored name).
    Link,
}

fn link_nonce(random: &[u8; LINK_NONCE_RANDOM]) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[..LINK_NONCE_RANDOM].copy_from_slice(random);
    n
}

/// `"kmsfs.link.v2" || D || entry`: fixed-length fields first, so the
/// encoding is unambiguous.
fn link_aad(at: LinkPlace<'_>) -> Vec<u8> {
    let entry = at.entry.as_bytes();
    let mut a = Vec::with_capacity(LINK_AAD_LABEL.len() + at.dir.len() + entry.len());
    a.extend_from_slice(LINK_AAD_LABEL);
    a.extend_from_slice(at.dir);
    a.extend_from_slice(entry);
    a
}

/// The length of the target a stored symlink target of `stored` bytes
/// holds (what st_size of the link says through the mount).
pub fn target_len(stored: u64) -> u64 {
    (stored * 3 / 4).saturating_sub(TARGET_OVERHEAD as u64)
}

/// The id of directory `dir` (a descriptor of it, O_PATH is enough), from
/// its `.kmsfs.dirid` file: exactly 16 bytes.
pub fn read_dir_id(dir: &File) -> Result<DirId, NameError> {
    let mut f = os::beneath::open_beneath(dir, Path::new(DIR_ID_FILE), libc::O_RDONLY, 0)?;
    let mut buf = Vec::with_capacity(17);
    (&mut f).take(17).read_to_end(&mut buf)?;
    buf.try_into()
        .map_err(|_| NameError::Corrupt("directory id file is not 16 bytes"))
}

/// Writes directory `dir`'s id (a new random one unless `id` is given)
/// into its `.kmsfs.dirid` (made, never replaced), synced. For a new
/// directory made by this process and not yet under its final name.
pub fn write_dir_id(dir: &File, id: Option<DirId>) -> Result<DirId, NameError> {
    let id: DirId = match id {
        Some(id) => id,
        None => random_array().map_err(|_| NameError::Corrupt("random"))?,
    };
    let mut f = os::beneath::open_beneath(
        dir,
        Path::new(DIR_ID_FILE),
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
        0o444,
    )?;
    f.write_all(&id)?;
    f.sync_all()?;
    Ok(id)
}

/// Reads the side file `side` of a long name in directory `dir` (at most
/// a few hundred bytes).
pub fn read_side_file(dir: &File, side: &OsStr) -> std::io::Result<Vec<u8>> {
    let f = os::beneath::open_beneath(dir, Path::new(side), libc::O_RDONLY, 0)?;
    let mut buf = Vec::new();
    f.take(4096).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Writes the side file of long name `name` into directory `dir` unless it
/// is there already with that content (it depends only on the name).
pub fn ensure_side_file(dir: &File, name: &BackingName) -> std::io::Result<()> {
    let (Some(side), Some(body)) = (name.side_file(), name.long.as_ref()) else {
        return Ok(());
    };
    if read_side_file(dir, &side).is_ok_and(|b| b.trim_ascii_end() == body.as_slice()) {
        return Ok(());
    }
    let tmp = temp_name();
    let mut f = os::beneath::open_beneath(
        dir,
        Path::new(&tmp),
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
        0o444,
    )?;
    let r = f
        .write_all(body)
        .and_then(|()| f.sync_all())
        .and_then(|()| os::beneath::renameat2(dir, &tmp, dir, &side, 0));
    if r.is_err() {
        let _ = os::beneath::unlinkat(dir, &tmp, false);
    }
    r
}

/// Removes the side file of long name `name` from `dir`, if it has one.
pub fn remove_side_file(dir: &File, name: &BackingName) {
    if let Some(side) = name.side_file() {
        let _ = os::beneath::unlinkat(dir, &side, false);
    }
}

/// A fresh temporary name.
pub fn temp_name() -> OsString {
    let r: [u8; 12] = random_array().unwrap_or([0; 12]);
    let mut s = OsString::from(TEMP_PREFIX);
    s.push(URL_SAFE_NO_PAD.encode(r));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> NameKey {
        NameKey::from_bytes(&[7; 32]).unwrap()
    }

    #[test]
    fn names_are_deterministic_bound_to_their_directory_and_round_trip() {
        let k = key();
        let (a, b) = ([1u8; 16], [2u8; 16]);
        let n = OsStr::new("payroll-2026.xlsx");
        let e = k.encrypt_name(&a, n).unwrap();
        assert_eq!(e, k.encrypt_name(&a, n).unwrap());
        assert_ne!(e, k.encrypt_name(&b, n).unwrap());
        assert!(!e.entry.as_bytes().windows(7).any(|w| w == b"payroll"));
        let side = |_: &OsStr| -> std::io::Result<Vec<u8>> { unreachable!() };
        assert_eq!(k.decrypt_entry(&a, &e.entry, side).unwrap(), n);
        // Moved to another directory: refused, never another name.
        assert!(k.decrypt_entry(&b, &e.entry, |_| unreachable!()).is_err());
        // Edited: refused.
        let mut edited = e.entry.as_bytes().to_vec();
        edited[3] = if edited[3] == b'A' { b'B' } else { b'A' };
        assert!(
            k.decrypt_entry(&a, OsStr::from_bytes(&edited), |_| unreachable!())
                .is_err()
        );
        // Another tree's key: refused.
        let other = NameKey::from_bytes(&[8; 32]).unwrap();
        assert!(
            other
                .decrypt_entry(&a, &e.entry, |_| unreachable!())
                .is_err()
        );
    }

    #[test]
    fn lengths_pad_to_sixteen_and_long_names_go_to_side_files() {
        let k = key();
        let d = [3u8; 16];
        let mut short_max = 0;
        for len in 1..=NAME_MAX {
            let name = OsString::from_vec(vec![b'x'; len]);
            let e = k.encrypt_name(&d, &name).unwrap();
            assert!(e.entry.len() <= BACKING_NAME_MAX);
            // Same padded length: same backing length.
            let padded = (len / PAD + 1) * PAD;
            match &e.long {
                None => {
                    short_max = len;
                    assert_eq!(e.entry.len(), ((padded + TAG_LEN) * 4).div_ceil(3));
                }
                Some(body) => {
                    assert_eq!(e.entry.len(), LONG_PREFIX.len() + 43);
                    let got = k
                        .decrypt_entry(&d, &e.entry, |s| {
                            assert_eq!(s, side_file_of(&e.entry));
                            Ok(body.clone())
                        })
                        .unwrap();
                    assert_eq!(got, name);
                    // A side file of another long name does not pass.
                    let other = k
                        .encrypt_name(&d, &OsString::from_vec(vec![b'y'; len]))
                        .unwrap();
                    assert!(
                        k.decrypt_entry(&d, &e.entry, |_| Ok(other.long.clone().unwrap()))
                            .is_err()
                    );
                }
            }
        }
        assert_eq!(
            short_max, 159,
            "docs/FORMAT.md: names up to 159 bytes are short"
        );
        assert!(matches!(
            k.encrypt_name(&d, &OsString::from_vec(vec![b'x'; 256])),
            Err(NameError::TooLong)
        ));
    }

    #[test]
    fn every_byte_but_slash_and_nul_round_trips() {
        let k = key();
        let d = [4u8; 16];
        let bytes: Vec<u8> = (1..=255u8).filter(|&b| b != b'/').collect();
        for chunk in bytes.chunks(50) {
            let n = OsStr::from_bytes(chunk);
            let e = k.encrypt_name(&d, n).unwrap();
            let got = k
                .decrypt_entry(&d, &e.entry, |_| Ok(e.long.clone().unwrap_or_default()))
                .unwrap();
            assert_eq!(got, n);
            assert!(!is_internal(&e.entry));
        }
    }

    #[test]
    fn check_values_tell_keys_apart() {
        let a = key().check_value().unwrap();
        assert_eq!(a, key().check_value().unwrap());
        let other = NameKey::from_bytes(&[9u8; 32]).unwrap();
        assert_ne!(a, other.check_value().unwrap());
    }

    #[test]
    fn targets_round_trip_and_edits_are_refused() {
        let k = key();
        let (d, e) = ([5u8; 16], OsStr::new("link-entry"));
        let at = LinkPlace { dir: &d, entry: e };
        let t = k.encrypt_target(at, b"../patients/alice").unwrap();
        assert!(t.starts_with(LINK_MARK));
        assert_eq!(
            k.decrypt_target(at, &t).unwrap(),
            (b"../patients/alice".to_vec(), TargetForm::Link)
        );
        for n in 1..=TARGET_MAX {
            let s = k.encrypt_target(at, &vec![b'a'; n]).unwrap();
            assert_eq!(target_len(s.len() as u64), n as u64);
            // Both forms of a target have one length.
            assert_eq!(s.len(), k.encrypt_target_v1(&vec![b'a'; n]).len());
        }
        // docs/FORMAT.md's worked count: a 9-byte target stores 50 bytes.
        let nine = k.encrypt_target(at, b"123456789").unwrap();
        assert_eq!((nine.len(), target_len(50)), (50, 9));
        let mut edited = t.clone();
        edited[20] = if edited[20] == b'A' { b'B' } else { b'A' };
        assert!(k.decrypt_target(at, &edited).is_err());
        assert!(k.encrypt_target(at, &vec![b'a'; TARGET_MAX]).unwrap().len() <= 4095);
        assert!(k.encrypt_target(at, &vec![b'a'; TARGET_MAX + 1]).is_err());
    }

    #[test]
    fn a_target_opens_only_at_its_link_and_old_ones_anywhere() {
        let k = key();
        let (d1, d2) = ([1u8; 16], [2u8; 16]);
        let (a, b) = (OsStr::new("aaaa"), OsStr::new("bbbb"));
        let t = k
            .encrypt_target(LinkPlace { dir: &d1, entry: a }, b"x")
            .unwrap();
        // Another name in the same directory, the same name in another
        // directory: refused.
        for (dir, entry) in [(&d1, b), (&d2, a)] {
            let e = k.decrypt_target(LinkPlace { dir, entry }, &t).unwrap_err();
            assert!(e.to_string().contains("at this link"), "{e}");
        }
        // The marker stripped (made to look like form 1): refused.
        assert!(
            k.decrypt_target(LinkPlace { dir: &d1, entry: a }, &t[LINK_MARK.len()..])
                .is_err()
        );
        // Form 1 opens wherever it is, and says so.
        let old = k.encrypt_target_v1(b"../notes");
        assert!(!old.starts_with(b"~"));
        for (dir, entry) in [(&d1, a), (&d2, b)] {
            assert_eq!(
                k.decrypt_target(LinkPlace { dir, entry }, &old).unwrap(),
                (b"../notes".to_vec(), TargetForm::Tree)
            );
        }
    }

    #[test]
    fn internal_names_are_recognised() {
        assert!(is_internal(OsStr::new(DIR_ID_FILE)));
        assert!(is_internal(OsStr::new(".kmsfs.ln.abc.name")));
        assert!(is_internal(OsStr::new(".kmsfs.tmp.abc")));
        assert!(!is_internal(OsStr::new(".kmsfs.ln.abc")));
        assert!(!is_internal(OsStr::new("abc")));
    }
}
