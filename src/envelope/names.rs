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
/// The associated data of a symlink target.
pub const TARGET_AAD_LABEL: &[u8; 13] = b"kmsfs.link.v1";

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
                entry: OsString::from_vec(encoded),
                long: None,
            });
        }
        Ok(BackingName {
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

    /// The stored form of symlink target `target`: random nonce, sealed
    /// target and tag, base64url (not padded: a symlink's size is its
    /// target's length, which the mount reports from the stored length).
    pub fn encrypt_target(&self, target: &[u8]) -> Result<Vec<u8>, NameError> {
        if target.len() > TARGET_MAX {
            return Err(NameError::TooLong);
        }
        let nonce: [u8; NONCE_LEN] = random_array().map_err(|_| NameError::Corrupt("random"))?;
        let mut sealed = nonce.to_vec();
        self.siv
            .seal_append(&nonce, TARGET_AAD_LABEL, target, &mut sealed)
            .map_err(|_| NameError::Corrupt("seal"))?;
        Ok(URL_SAFE_NO_PAD.encode(&sealed).into_bytes())
    }

    /// The plaintext of a stored symlink target.
    pub fn decrypt_target(&self, stored: &[u8]) -> Result<Vec<u8>, NameError> {
        let sealed = URL_SAFE_NO_PAD
            .decode(stored)
            .map_err(|_| NameError::Corrupt("not an encrypted symlink target"))?;
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(NameError::Corrupt("not an encrypted symlink target"));
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let mut n = [0u8; NONCE_LEN];
        n.copy_from_slice(nonce);
        let plain = self
            .siv
            .open(&n, TARGET_AAD_LABEL, rest)
            .map_err(|_| NameError::Corrupt("symlink target fails authentication"))?;
        if plain.is_empty() || plain.contains(&0) {
            return Err(NameError::Corrupt("not a valid symlink target"));
        }
        Ok(plain.to_vec())
    }
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
        let t = k.encrypt_target(b"../patients/alice").unwrap();
        assert_eq!(k.decrypt_target(&t).unwrap(), b"../patients/alice");
        for n in 1..=TARGET_MAX {
            let s = k.encrypt_target(&vec![b'a'; n]).unwrap();
            assert_eq!(target_len(s.len() as u64), n as u64);
        }
        let mut e = t.clone();
        e[20] = if e[20] == b'A' { b'B' } else { b'A' };
        assert!(k.decrypt_target(&e).is_err());
        assert!(k.encrypt_target(&vec![b'a'; TARGET_MAX]).unwrap().len() <= 4095);
        assert!(k.encrypt_target(&vec![b'a'; TARGET_MAX + 1]).is_err());
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
