//! A directory's key record (docs/MOUNT.md, "A key per directory"): the
//! text kept in a backing directory's xattr `RECORD_XATTR`, naming the CMK
//! for files created under it, and its HMAC under the tree's directory-key
//! MAC key, bound to the directory's inode number and birth time. The mount
//! writes and checks them (fs/dirkeys.rs); the tree tools read them.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;

use crate::crypto::{constant_time_eq, hex, hmac_sha256};

/// The backing directory's xattr that holds the record (reserved: never
/// seen or changed through the mount).
pub const RECORD_XATTR: &str = "user.kmsfs.dirkey";
/// The xattr of a plain directory that names its key outside kmsfs: what
/// `kmsfs export` writes on an exported directory and `kmsfs import`
/// reads (the same name a program reads and sets through a mount).
pub const KEY_ID_XATTR: &str = "user.kmsfs.key-id";
/// The first word of a record.
const RECORD_VERSION: &str = "kmsfs-dirkey-v1";
/// The label at the start of a record's MAC input.
const MAC_LABEL: &[u8] = b"kmsfs.dirkey.v1";
/// The encryption-context pair of the wrapped MAC key and of the check made
/// when a user sets a key (`kmsfs:purpose`).
pub const PURPOSE_KEY: &str = "kmsfs:purpose";
/// Its value for the tree's MAC key.
pub const MAC_KEY_PURPOSE: &str = "dirkeys";
/// Its value for the GenerateDataKey that authorizes a user's set-key.
pub const SET_KEY_PURPOSE: &str = "dirkey";

/// A backing directory as its record is bound to it: inode number and
/// birth time (nanoseconds since the epoch; 0 where the filesystem keeps
/// none). A rename keeps it; a copy of the tree gets new ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DirId {
    /// The directory's inode number.
    pub ino: u64,
    /// Its birth time in nanoseconds.
    pub born: u64,
}

impl DirId {
    /// The id of the directory `m` describes.
    pub fn of(m: &Metadata) -> Self {
        let born = m
            .created()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as u64);
        Self { ino: m.ino(), born }
    }
}

impl std::fmt::Display for DirId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.ino, self.born)
    }
}

impl std::str::FromStr for DirId {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let (i, b) = s.split_once(':').ok_or(())?;
        Ok(Self {
            ino: i.parse().map_err(|_| ())?,
            born: b.parse().map_err(|_| ())?,
        })
    }
}

/// What the keystore's list of a tree's directory keys says of one
/// directory (docs/MOUNT.md, "A key per directory"): the mount lists every
/// key it sets, so a record removed from the backing directory, or put back
/// after its owner cleared it, is told from one never set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listed {
    /// The directory's record names this key.
    Key(String),
    /// Its owner cleared its key: it has no record.
    Cleared,
}

/// The MAC of a record naming `key_id` on the directory `m`.
fn record_mac(mac_key: &[u8], key_id: &str, m: &Metadata) -> String {
    let id = DirId::of(m);
    let len = (key_id.len() as u32).to_be_bytes();
    hex(&hmac_sha256(
        mac_key,
        &[
            MAC_LABEL,
            &len,
            key_id.as_bytes(),
            &id.ino.to_be_bytes(),
            &id.born.to_be_bytes(),
        ],
    ))
}

/// A record's text: version, key id, MAC.
pub fn record_text(mac_key: &[u8], key_id: &str, m: &Metadata) -> String {
    format!(
        "{RECORD_VERSION} {key_id} {}",
        record_mac(mac_key, key_id, m)
    )
}

/// The key id of record `text` on directory `m`, if its MAC holds.
pub fn check_record(mac_key: &[u8], text: &[u8], m: &Metadata) -> Result<String, &'static str> {
    let text = std::str::from_utf8(text).map_err(|_| "not text")?;
    let mut parts = text.split(' ');
    let (Some(RECORD_VERSION), Some(key_id), Some(mac), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a directory key record of this version");
    };
    let want = record_mac(mac_key, key_id, m);
    if key_id.is_empty() || !constant_time_eq(want.as_bytes(), mac.as_bytes()) {
        return Err("its MAC does not hold (written outside the mount, or copied)");
    }
    Ok(key_id.to_string())
}

/// The key id record `text` names, unchecked (for tools that do not unwrap
/// the MAC key: `kmsfs inspect`); None when it is not a record.
pub fn recorded_key_id(text: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(text).ok()?;
    let mut parts = text.split(' ');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(RECORD_VERSION), Some(k), Some(_), None) if !k.is_empty() => Some(k.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let m = std::fs::metadata(dir.path()).unwrap();
        let m2 = std::fs::metadata(other.path()).unwrap();
        let k = [7u8; 32];
        let t = record_text(&k, "key-1", &m);
        assert_eq!(check_record(&k, t.as_bytes(), &m).unwrap(), "key-1");
        // Another directory, another MAC key, another key id: refused.
        assert!(check_record(&k, t.as_bytes(), &m2).is_err());
        assert!(check_record(&[8u8; 32], t.as_bytes(), &m).is_err());
        let forged = t.replace("key-1", "key-2");
        assert!(check_record(&k, forged.as_bytes(), &m).is_err());
        assert!(check_record(&k, b"kmsfs-dirkey-v1 key-1", &m).is_err());
        assert!(check_record(&k, b"", &m).is_err());
        assert_eq!(recorded_key_id(t.as_bytes()).as_deref(), Some("key-1"));
        assert_eq!(recorded_key_id(b"key-1"), None);
    }
}
