//! The key model as it is persisted inside the sealed keystore body: keys, their
//! key materials (one per version, for rotation), aliases and import tokens,
//! with the pure state transitions in `key` (the state machine), `import`
//! (imported material), `aliases` and `state` (the whole store: purge, due
//! dates, serialization). No I/O, no clock: callers pass `now`.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::crypto::SecretBytes;
use crate::kms::{KeyOrigin, KeyState, KmsError, ValidationCode};

mod access_keys;
mod aliases;
mod grants;
mod import;
mod key;
mod state;

pub use access_keys::{
    ACCESS_KEY_ID_LEN, AccessKeyId, AccessKeyRecord, MAX_ACCESS_KEYS, valid_access_key_id,
};
pub use aliases::validate_alias_name;
pub use grants::{
    GRANT_OPERATIONS, GrantConstraints, GrantRecord, MAX_GRANTS_PER_KEY, parse_grant_operations,
    parse_grant_token,
};

/// Shortest deletion waiting period, in days (as AWS KMS).
pub const MIN_PENDING_WINDOW_DAYS: u32 = 7;
/// Longest deletion waiting period, in days; also the default.
pub const MAX_PENDING_WINDOW_DAYS: u32 = 30;
/// Longest alias name, in bytes.
pub const MAX_ALIAS_LEN: usize = 256;
/// Every alias name starts with this.
pub const ALIAS_PREFIX: &str = "alias/";
/// Alias prefixes that users may not create: AWS's own and kmsfs's own.
pub const RESERVED_ALIAS_PREFIXES: [&str; 2] = ["alias/aws/", "alias/kmsfs/"];
/// The alias of the key that `open_or_create_default` makes (like `aws/ebs`).
pub const DEFAULT_ALIAS: &str = "alias/kmsfs/default";
/// Shortest automatic rotation period, in days (as AWS KMS).
pub const MIN_ROTATION_PERIOD_DAYS: u32 = 90;
/// Longest automatic rotation period, in days (as AWS KMS).
pub const MAX_ROTATION_PERIOD_DAYS: u32 = 2560;
/// Default automatic rotation period, in days.
pub const DEFAULT_ROTATION_PERIOD_DAYS: u32 = 365;
/// How long import parameters (wrapping key and token) stay valid: 24 hours.
pub const IMPORT_PARAMETERS_VALIDITY_SECS: i64 = 24 * 3600;
/// Longest key description, in bytes (AWS: 8192 characters).
pub const MAX_DESCRIPTION_LEN: usize = 8192;

/// One version of a key's material. Rotation (later) appends versions; blobs name
/// the version they were made with, so old versions stay to decrypt old blobs.
#[derive(Clone, Serialize, Deserialize)]
pub struct KeyMaterial {
    /// 1 for the material a key was created with, then 2, 3, ...
    pub version: u32,
    /// The 32 secret bytes (hex inside the sealed body; zeroized on drop).
    #[serde(with = "secret_hex")]
    pub material: SecretBytes,
    /// When this material was generated or imported (epoch seconds).
    pub created: i64,
    /// For imported material: when it expires (epoch seconds; ValidTo).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<i64>,
    /// How this version came to be: None for the first, else a rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationType>,
}

/// The wrapping key and token handed out by GetParametersForImport.
#[derive(Clone, Serialize, Deserialize)]
pub struct ImportParams {
    /// Random id that the import token carries (hex).
    pub token_id: String,
    /// The RSA private key, PKCS#8 DER (hex inside the sealed body).
    #[serde(with = "secret_hex")]
    pub wrapping_key: SecretBytes,
    /// RSA_2048, RSA_3072 or RSA_4096.
    pub wrapping_key_spec: String,
    /// When these parameters stop being accepted (epoch seconds).
    pub valid_to: i64,
}

impl std::fmt::Debug for ImportParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportParams")
            .field("token_id", &self.token_id)
            .field("wrapping_key", &"<redacted>")
            .field("wrapping_key_spec", &self.wrapping_key_spec)
            .field("valid_to", &self.valid_to)
            .finish()
    }
}

/// Why a key material version was added (ListKeyRotations' RotationType).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RotationType {
    /// RotateKeyOnDemand.
    #[serde(rename = "ON_DEMAND")]
    OnDemand,
    /// The automatic rotation period elapsed.
    #[serde(rename = "AUTOMATIC")]
    Automatic,
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyMaterial")
            .field("version", &self.version)
            .field("material", &"<redacted>")
            .field("created", &self.created)
            .field("expires", &self.expires)
            .finish()
    }
}

/// A customer master key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyRecord {
    /// UUID, lowercase, hyphenated.
    pub key_id: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Epoch seconds.
    pub creation_date: i64,
    /// Current state.
    pub state: KeyState,
    /// Set while PendingDeletion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_date: Option<i64>,
    /// Set while PendingDeletion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_window_days: Option<u32>,
    /// AWS_KMS or EXTERNAL.
    pub origin: KeyOrigin,
    /// Version of material that new ciphertexts use (0 = none yet, PendingImport).
    pub current_version: u32,
    /// All material versions still held.
    pub materials: Vec<KeyMaterial>,
    /// Key policy document (reserved for the policy feature; None = default policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<serde_json::Value>,
    /// Pending import parameters (EXTERNAL keys between GetParametersForImport
    /// and ImportKeyMaterial).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import: Option<ImportParams>,
    /// For EXTERNAL keys once material was imported: a digest identifying that
    /// material, so that a re-import must bring the same material (as AWS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported_material_digest: Option<String>,
    /// Automatic rotation period in days; None when automatic rotation is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_period_days: Option<u32>,
    /// When automatic rotation is next due (epoch seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation: Option<i64>,
    /// Tags (TagResource), key to value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

/// Most tags a key may carry (as AWS).
pub const MAX_TAGS: usize = 50;

/// Checks a tag as AWS does: key 1 to 128 characters, value up to 256, and
/// the `aws:` prefix reserved.
pub fn validate_tag(key: &str, value: &str) -> Result<(), KmsError> {
    let k = key.chars().count();
    if k == 0 || k > 128 {
        return Err(KmsError::invalid_with(
            ValidationCode::Tag,
            format!("TagKey {key:?} must be 1 to 128 characters"),
        ));
    }
    if value.chars().count() > 256 {
        return Err(KmsError::invalid_with(
            ValidationCode::Tag,
            format!("the TagValue of {key:?} is longer than 256 characters"),
        ));
    }
    if key.to_ascii_lowercase().starts_with("aws:") {
        return Err(KmsError::invalid_with(
            ValidationCode::Tag,
            format!("TagKey {key:?}: the aws: prefix is reserved"),
        ));
    }
    Ok(())
}

/// Everything the sealed keystore body holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoreState {
    /// Keys by key id.
    pub keys: BTreeMap<String, KeyRecord>,
    /// Alias name (`alias/...`) to key id.
    pub aliases: BTreeMap<String, String>,
    /// When each alias was created and last pointed at a key (epoch
    /// seconds), by alias name; an alias made before dates were kept has none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub alias_dates: BTreeMap<String, AliasDates>,
    /// The 12-digit account id in this keystore's ARNs (set with a new
    /// keystore, or with an older one's next change, to `derived_account_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// Tombstones: key id → when it was deleted. No material, only so that a
    /// blob under a deleted key is told apart from a blob with a forged key id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub deleted: BTreeMap<String, i64>,
    /// Grants, by grant id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub grants: BTreeMap<String, GrantRecord>,
    /// Access keys of the protocol server, by access key id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub access_keys: BTreeMap<String, AccessKeyRecord>,
    /// The key that signs the audit trail's digests (HMAC-SHA256), made on
    /// first use: whoever can write the trail but not read the keystore
    /// cannot re-sign a rewritten chain.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_secret_hex"
    )]
    pub audit_signing_key: Option<SecretBytes>,
    /// The seed of the Ed25519 key that signs the trail's digests and
    /// `HEAD` (replacing the HMAC for everything written since it was
    /// made): its public key checks a copy of the trail without the
    /// keystore. Made with a new keystore, or with an older one's next change.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_secret_hex"
    )]
    pub audit_ed25519_seed: Option<SecretBytes>,
    /// The trail's last signed position when the keystore last changed:
    /// `kmsfs audit verify` fails when the trail does not reach it, and no
    /// trail is started afresh while it is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_position: Option<AuditPosition>,
}

/// ListAliases' CreationDate and LastUpdatedDate of an alias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasDates {
    /// When the alias was created (epoch seconds).
    pub created: i64,
    /// When it was last pointed at a key (epoch seconds).
    pub updated: i64,
}

/// A position in the audit trail: a record's sequence number and the
/// SHA-256 of its line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditPosition {
    /// The record's `sequence`.
    pub sequence: u64,
    /// The SHA-256 of its line, in hex.
    pub digest: String,
}

/// Serde helper: an optional secret as a hex string.
mod opt_secret_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::crypto::SecretBytes;

    pub(super) fn serialize<S: Serializer>(
        s: &Option<SecretBytes>,
        ser: S,
    ) -> Result<S::Ok, S::Error> {
        match s {
            Some(s) => super::secret_hex::serialize(s, ser),
            None => ser.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SecretBytes>, D::Error> {
        #[derive(Deserialize)]
        struct W(#[serde(with = "super::secret_hex")] SecretBytes);
        Ok(Option::<W>::deserialize(d)?.map(|w| w.0))
    }
}

/// What an operation needs the key's state to allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// Encrypt, GenerateDataKey*, ReEncrypt (destination).
    Encrypt,
    /// Decrypt, ReEncrypt (source).
    Decrypt,
}

/// What names a keystore's keys in ARNs: its id (the old form,
/// `arn:kmsfs:kms:local:<keystore id>:`, still accepted on input) and its
/// 12-digit account id (`arn:aws:kms:<region>:<account>:`, in any region).
#[derive(Debug, Clone, Copy)]
pub struct ArnIds<'a> {
    /// The keystore id, 32 hex digits.
    pub keystore_id: &'a str,
    /// The account id, 12 digits.
    pub account: &'a str,
}

impl<'a> ArnIds<'a> {
    /// The resource part (`key/<id>` or `alias/<name>`) of an ARN of this
    /// keystore in either form; None for an ARN of another keystore or account.
    pub fn resource<'s>(&self, arn: &'s str) -> Option<&'s str> {
        if let Some(rest) = arn.strip_prefix("arn:aws:kms:") {
            let (region, rest) = rest.split_once(':')?;
            let rest = rest.strip_prefix(self.account)?.strip_prefix(':')?;
            return (!region.is_empty() && !region.contains('/')).then_some(rest);
        }
        arn.strip_prefix("arn:kmsfs:kms:local:")?
            .strip_prefix(self.keystore_id)?
            .strip_prefix(':')
    }
}

/// The account id of a keystore made before keystores had one: 12 digits
/// derived from its id, so every process names its keys alike before the
/// keystore's next change persists it.
pub fn derived_account_id(keystore_id_hex: &str) -> String {
    let d = crate::crypto::sha256(&[b"kmsfs account id\0", keystore_id_hex.as_bytes()]);
    let mut n = 0u64;
    for b in &d[..8] {
        n = n << 8 | u64::from(*b);
    }
    format!("{:012}", n % 1_000_000_000_000)
}

/// True for a 12-digit account id.
pub fn valid_account_id(a: &str) -> bool {
    a.len() == 12 && a.bytes().all(|c| c.is_ascii_digit())
}

/// `arn:aws:kms:<region>:<account>:`, what every ARN of a keystore starts with.
pub fn arn_prefix(region: &str, account: &str) -> String {
    format!("arn:aws:kms:{region}:{account}:")
}

/// `<prefix>key/<key id>` (`prefix` from `arn_prefix`).
pub fn key_arn(prefix: &str, key_id: &str) -> String {
    format!("{prefix}key/{key_id}")
}

/// `<prefix>alias/<name>` (`prefix` from `arn_prefix`; `alias` has `alias/`).
pub fn alias_arn(prefix: &str, alias: &str) -> String {
    format!("{prefix}{alias}")
}

/// True when `key_ref` names an alias (`alias/...` or an alias ARN), which
/// the operations that take a key id or key ARN only refuse.
pub fn names_alias(key_ref: &str) -> bool {
    key_ref.starts_with(ALIAS_PREFIX)
        || (key_ref.starts_with("arn:") && key_ref.contains(":alias/"))
}

pub(crate) fn validate_description(d: &str) -> Result<(), KmsError> {
    if d.len() > MAX_DESCRIPTION_LEN {
        return Err(KmsError::invalid(format!(
            "description is {} bytes; at most {MAX_DESCRIPTION_LEN} are allowed",
            d.len()
        )));
    }
    Ok(())
}

/// Serde helper: secret bytes as a hex string, decoded straight into a
/// zeroizing buffer of the right size.
mod secret_hex {
    use serde::{Deserializer, Serializer, de};
    use zeroize::Zeroizing;

    use crate::crypto::SecretBytes;

    const HEX: &[u8; 16] = b"0123456789abcdef";

    pub(super) fn serialize<S: Serializer>(s: &SecretBytes, ser: S) -> Result<S::Ok, S::Error> {
        let mut out = Zeroizing::new(String::with_capacity(s.len() * 2));
        for b in s.expose() {
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
        ser.serialize_str(&out)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SecretBytes, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = SecretBytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a hex string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SecretBytes, E> {
                let b = v.as_bytes();
                if !b.len().is_multiple_of(2) {
                    return Err(E::custom("odd-length hex"));
                }
                let mut out = Zeroizing::new(Vec::with_capacity(b.len() / 2));
                for pair in b.chunks_exact(2) {
                    let hi = nibble(pair[0]).ok_or_else(|| E::custom("bad hex"))?;
                    let lo = nibble(pair[1]).ok_or_else(|| E::custom("bad hex"))?;
                    out.push(hi << 4 | lo);
                }
                Ok(SecretBytes::new(std::mem::take(&mut *out)))
            }
        }
        d.deserialize_str(V)
    }

    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
