//! Access keys for the AWS protocol server (`kmsfs kms serve`): an access key id
//! and its secret, kept inside the sealed keystore body like key material, each
//! mapped to the Unix principal (uid, gid) that key policies see as the caller.

use serde::{Deserialize, Serialize};

use crate::crypto::SecretBytes;

/// Length of an access key id (`AKIA` and 16 characters, as AWS).
pub const ACCESS_KEY_ID_LEN: usize = 20;
/// Most access keys a keystore holds.
pub const MAX_ACCESS_KEYS: usize = 1000;

/// One access key.
#[derive(Clone, Serialize, Deserialize)]
pub struct AccessKeyRecord {
    /// `AKIA...` (20 characters, A-Z and 2-7).
    pub access_key_id: String,
    /// The secret access key (40 ASCII characters; hex inside the sealed body,
    /// zeroized on drop).
    #[serde(with = "super::secret_hex")]
    pub secret: SecretBytes,
    /// The user id that requests signed with this key act as.
    pub uid: u32,
    /// The group id that requests signed with this key act as.
    pub gid: u32,
    /// When it was created (epoch seconds).
    pub created: i64,
}

impl std::fmt::Debug for AccessKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKeyRecord")
            .field("access_key_id", &self.access_key_id)
            .field("secret", &"<redacted>")
            .field("uid", &self.uid)
            .field("gid", &self.gid)
            .field("created", &self.created)
            .finish()
    }
}

/// True for a well-formed access key id (what `create` makes).
pub fn valid_access_key_id(id: &str) -> bool {
    id.len() == ACCESS_KEY_ID_LEN
        && id.starts_with("AKIA")
        && id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
}

/// A well-formed access key id, by value (`Caller` is `Copy`): who signed a
/// request at the protocol server, once its signature verified. Not a
/// secret: AWS's trail records access key ids too.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccessKeyId([u8; ACCESS_KEY_ID_LEN]);

impl AccessKeyId {
    /// The id in `s`, when it is well formed (`valid_access_key_id`).
    pub fn parse(s: &str) -> Option<Self> {
        if !valid_access_key_id(s) {
            return None;
        }
        let mut b = [0u8; ACCESS_KEY_ID_LEN];
        b.copy_from_slice(s.as_bytes());
        Some(Self(b))
    }

    /// `AKIA...`.
    pub fn as_str(&self) -> &str {
        // Only `parse` makes one, from ASCII checked there.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl std::fmt::Debug for AccessKeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for AccessKeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_key_ids_by_value() {
        let id = AccessKeyId::parse("AKIAABCDEFGHIJ234567").unwrap();
        assert_eq!(id.as_str(), "AKIAABCDEFGHIJ234567");
        assert_eq!(
            format!("{id} {id:?}"),
            "AKIAABCDEFGHIJ234567 AKIAABCDEFGHIJ234567"
        );
        assert!(AccessKeyId::parse("AKIAABCDEFGHIJ23456").is_none());
        assert!(AccessKeyId::parse("uid:0").is_none());
    }

    #[test]
    fn access_key_id_shape() {
        assert!(valid_access_key_id("AKIAABCDEFGHIJ234567"));
        assert!(!valid_access_key_id("AKIAABCDEFGHIJ23456"));
        assert!(!valid_access_key_id("AKIAabcdefghij234567"));
        assert!(!valid_access_key_id("ASIAABCDEFGHIJ234567"));
        assert!(!valid_access_key_id("AKIAABCDEFGHIJ234/67"));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let r = AccessKeyRecord {
            access_key_id: "AKIAABCDEFGHIJ234567".into(),
            secret: SecretBytes::new(b"very-secret-value".to_vec()),
            uid: 1,
            gid: 2,
            created: 3,
        };
        assert!(!format!("{r:?}").contains("very-secret"));
    }
}
