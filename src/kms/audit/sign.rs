//! The signatures of the trail's digest records and of `HEAD`: Ed25519
//! under a key sealed in the keystore (anyone with the public key can check
//! them, as CloudTrail's digest files), and HMAC-SHA256, what trails written
//! before Ed25519 carry (only the keystore can check those). The messages
//! are labelled so that a signature of one kind never passes for another.
#![forbid(unsafe_code)]

use base64::Engine;

use crate::crypto::{
    ED25519_PUBLIC_LEN, Ed25519Signer, SecretBytes, constant_time_eq, ed25519_verify, hex,
    hmac_sha256, sha256,
};

/// `digestAlgorithm` of the HMAC digests (trails written before Ed25519).
pub const HMAC_ALG: &str = "HMAC-SHA256";
/// `digestAlgorithm` of the Ed25519 digests.
pub const ED25519_ALG: &str = "Ed25519";
/// Labels of the HMACs, so that one can never pass for the other.
pub const DIGEST_LABEL: &[u8] = b"kmsfs-audit-digest-v1\0";
/// See `DIGEST_LABEL`.
pub const HEAD_LABEL: &[u8] = b"kmsfs-audit-head-v1\0";
/// Labels of the Ed25519 signatures.
pub const ED25519_DIGEST_LABEL: &[u8] = b"kmsfs-audit-digest-ed25519-v1\0";
/// See `ED25519_DIGEST_LABEL`.
pub const ED25519_HEAD_LABEL: &[u8] = b"kmsfs-audit-head-ed25519-v1\0";
/// Label of a prune's checkpoint signature (Ed25519 only).
pub const ED25519_CHECKPOINT_LABEL: &[u8] = b"kmsfs-audit-checkpoint-ed25519-v1\0";
/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): what
/// `openssl pkey -pubin` reads, followed by the 32 key bytes.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The message of a digest record numbered `sequence` that follows the
/// record whose line hashes to `previous`.
fn digest_message<'a>(
    label: &'a [u8],
    keystore_id: &'a str,
    sequence: &'a [u8; 8],
    previous: &'a [u8],
) -> [&'a [u8]; 5] {
    [label, keystore_id.as_bytes(), b"\0", sequence, previous]
}

/// Where `HEAD` says the trail ends.
#[derive(Debug, Clone, Copy)]
pub struct HeadFields<'a> {
    /// The last trail file.
    pub file: &'a str,
    /// Its size.
    pub size: u64,
    /// The last record's sequence number.
    pub sequence: u64,
    /// The last line's SHA-256.
    pub digest: &'a [u8],
}

fn head_message<'a>(
    label: &'a [u8],
    keystore_id: &'a str,
    h: &HeadFields<'a>,
    numbers: &'a [u8; 16],
) -> [&'a [u8]; 7] {
    [
        label,
        keystore_id.as_bytes(),
        b"\0",
        h.file.as_bytes(),
        b"\0",
        numbers,
        h.digest,
    ]
}

fn head_numbers(h: &HeadFields<'_>) -> [u8; 16] {
    let mut n = [0u8; 16];
    n[..8].copy_from_slice(&h.size.to_be_bytes());
    n[8..].copy_from_slice(&h.sequence.to_be_bytes());
    n
}

/// What a prune's checkpoint stands for: records `from..=through` removed
/// (`records` of them, written from `first_time` to `last_time`), the last
/// of them hashing to `last_digest`, removed at `pruned_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointFields<'a> {
    /// The first record removed.
    pub from: u64,
    /// The last record removed: the next record chains to it.
    pub through: u64,
    /// How many records were removed.
    pub records: u64,
    /// The first removed record's time (epoch seconds).
    pub first_time: i64,
    /// The last removed record's time.
    pub last_time: i64,
    /// When the prune ran.
    pub pruned_at: i64,
    /// The SHA-256 of the last removed record's line.
    pub last_digest: &'a [u8],
}

/// The signed message of a checkpoint.
fn checkpoint_message(keystore_id: &str, c: &CheckpointFields<'_>) -> Vec<u8> {
    let mut m = ED25519_CHECKPOINT_LABEL.to_vec();
    m.extend_from_slice(keystore_id.as_bytes());
    m.push(0);
    for n in [c.from, c.through, c.records] {
        m.extend_from_slice(&n.to_be_bytes());
    }
    for t in [c.first_time, c.last_time, c.pruned_at] {
        m.extend_from_slice(&t.to_be_bytes());
    }
    m.extend_from_slice(c.last_digest);
    m
}

/// The HMAC signature of a digest record (trails before Ed25519).
pub fn digest_hmac(key: &[u8], keystore_id: &str, sequence: u64, previous: &[u8]) -> String {
    let seq = sequence.to_be_bytes();
    hex(&hmac_sha256(
        key,
        &digest_message(DIGEST_LABEL, keystore_id, &seq, previous),
    ))
}

/// The HMAC signature of `HEAD` (trails before Ed25519).
pub fn head_hmac(key: &[u8], keystore_id: &str, h: &HeadFields<'_>) -> String {
    let n = head_numbers(h);
    hex(&hmac_sha256(
        key,
        &head_message(HEAD_LABEL, keystore_id, h, &n),
    ))
}

/// A short name of a public key: the first 16 hex digits of its SHA-256.
pub fn fingerprint(public_key: &[u8]) -> String {
    let mut f = hex(&sha256(&[public_key]));
    f.truncate(16);
    f
}

/// The keys a writer signs with, from the sealed keystore: Ed25519 when
/// the keystore has its seed, else the HMAC key (a keystore made before
/// Ed25519, opened without a change yet).
#[derive(Debug, Default)]
pub struct SigningKeys {
    hmac: Option<SecretBytes>,
    ed25519: Option<Ed25519Signer>,
}

/// A signature as it goes into a record: algorithm, signature in hex, and
/// for Ed25519 the key's fingerprint.
#[derive(Debug, Clone)]
pub struct Signed {
    /// `HMAC-SHA256` or `Ed25519`.
    pub algorithm: &'static str,
    /// The signature, hex.
    pub signature: String,
    /// The public key's fingerprint (Ed25519 only).
    pub key_fingerprint: Option<String>,
}

impl SigningKeys {
    /// Keys from the keystore's HMAC key and Ed25519 seed (either may be
    /// missing). A seed of the wrong length is ignored (logged).
    pub fn new(hmac: Option<&SecretBytes>, ed25519_seed: Option<&SecretBytes>) -> Self {
        let ed25519 = ed25519_seed.and_then(|s| match Ed25519Signer::from_seed(s.expose()) {
            Ok(k) => Some(k),
            Err(_) => {
                log::error!("the keystore's audit signing seed is not 32 bytes; it is not used");
                None
            }
        });
        Self {
            hmac: hmac.cloned(),
            ed25519,
        }
    }

    /// True when there is no key at all.
    pub fn is_empty(&self) -> bool {
        self.hmac.is_none() && self.ed25519.is_none()
    }

    /// True when these sign with Ed25519.
    pub fn has_ed25519(&self) -> bool {
        self.ed25519.is_some()
    }

    /// The Ed25519 public key, when there is one.
    pub fn public_key(&self) -> Option<[u8; ED25519_PUBLIC_LEN]> {
        self.ed25519.as_ref().map(Ed25519Signer::public_key)
    }

    /// Signs digest record `sequence` following the line hashing to `previous`.
    pub fn sign_digest(&self, keystore_id: &str, sequence: u64, previous: &[u8]) -> Option<Signed> {
        let seq = sequence.to_be_bytes();
        if let Some(k) = &self.ed25519 {
            let m = digest_message(ED25519_DIGEST_LABEL, keystore_id, &seq, previous);
            return Some(Signed {
                algorithm: ED25519_ALG,
                signature: hex(&k.sign(&m)),
                key_fingerprint: Some(fingerprint(&k.public_key())),
            });
        }
        self.hmac.as_ref().map(|k| Signed {
            algorithm: HMAC_ALG,
            signature: digest_hmac(k.expose(), keystore_id, sequence, previous),
            key_fingerprint: None,
        })
    }

    /// Signs a prune's checkpoint (Ed25519 only: None without that key).
    pub fn sign_checkpoint(&self, keystore_id: &str, c: &CheckpointFields<'_>) -> Option<Signed> {
        let k = self.ed25519.as_ref()?;
        Some(Signed {
            algorithm: ED25519_ALG,
            signature: hex(&k.sign(&[&checkpoint_message(keystore_id, c)])),
            key_fingerprint: Some(fingerprint(&k.public_key())),
        })
    }

    /// Signs `HEAD`.
    pub fn sign_head(&self, keystore_id: &str, h: &HeadFields<'_>) -> Option<Signed> {
        if let Some(k) = &self.ed25519 {
            let n = head_numbers(h);
            return Some(Signed {
                algorithm: ED25519_ALG,
                signature: hex(&k.sign(&head_message(ED25519_HEAD_LABEL, keystore_id, h, &n))),
                key_fingerprint: Some(fingerprint(&k.public_key())),
            });
        }
        self.hmac.as_ref().map(|k| Signed {
            algorithm: HMAC_ALG,
            signature: head_hmac(k.expose(), keystore_id, h),
            key_fingerprint: None,
        })
    }
}

/// What a verifier checks signatures with: the keystore's keys (both
/// kinds), or only an Ed25519 public key (a copy of the trail checked
/// without the keystore).
#[derive(Debug, Clone, Default)]
pub struct VerifyKeys {
    /// The HMAC key (from the keystore).
    pub hmac: Option<SecretBytes>,
    /// The Ed25519 public key.
    pub ed25519: Option<[u8; ED25519_PUBLIC_LEN]>,
    /// The keystore id the signatures must name; None: the one each
    /// record names (a verifier without the keystore).
    pub keystore_id: Option<String>,
}

/// The outcome of checking one signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// It verifies.
    Valid,
    /// It does not: the reason, in plain words.
    Invalid(String),
    /// It cannot be checked with the keys at hand: why.
    Unchecked(String),
}

impl VerifyKeys {
    /// Checks a signature of `algorithm` over the message `parts_for(label)`
    /// builds, `label` being the HMAC or the Ed25519 one.
    fn check(
        &self,
        algorithm: &str,
        signature: &str,
        claimed_fingerprint: Option<&str>,
        hmac: impl FnOnce(&[u8]) -> String,
        ed25519_message: impl FnOnce() -> Vec<u8>,
    ) -> Check {
        match algorithm {
            HMAC_ALG => match &self.hmac {
                Some(k) => {
                    if constant_time_eq(hmac(k.expose()).as_bytes(), signature.as_bytes()) {
                        Check::Valid
                    } else {
                        Check::Invalid("its HMAC does not verify".into())
                    }
                }
                None => Check::Unchecked(
                    "it is an HMAC, which only the keystore's key can check".into(),
                ),
            },
            ED25519_ALG => {
                let Some(pk) = &self.ed25519 else {
                    return Check::Unchecked("no Ed25519 public key was given".into());
                };
                let sig = crate::kms::audit::trail::hex_to_bytes(signature).unwrap_or_default();
                if ed25519_verify(pk, &[&ed25519_message()], &sig) {
                    return Check::Valid;
                }
                let ours = fingerprint(pk);
                match claimed_fingerprint {
                    Some(f) if f != ours => Check::Invalid(format!(
                        "it names signing key {f}, not {ours} (the public key checked with)"
                    )),
                    _ => Check::Invalid("its Ed25519 signature does not verify".into()),
                }
            }
            other => Check::Invalid(format!("unknown signature algorithm {other:?}")),
        }
    }

    /// Checks the signature of digest record `sequence` following the line
    /// hashing to `previous`. `record_keystore_id`: the id the record names.
    pub fn check_digest(
        &self,
        algorithm: &str,
        signature: &str,
        claimed_fingerprint: Option<&str>,
        record_keystore_id: Option<&str>,
        sequence: u64,
        previous: &[u8],
    ) -> Check {
        let ks = match self.keystore_id(record_keystore_id) {
            Ok(k) => k,
            Err(c) => return c,
        };
        let seq = sequence.to_be_bytes();
        self.check(
            algorithm,
            signature,
            claimed_fingerprint,
            |k| digest_hmac(k, &ks, sequence, previous),
            || digest_message(ED25519_DIGEST_LABEL, &ks, &seq, previous).concat(),
        )
    }

    /// Checks `HEAD`'s signature.
    pub fn check_head(
        &self,
        algorithm: &str,
        signature: &str,
        claimed_fingerprint: Option<&str>,
        record_keystore_id: Option<&str>,
        h: &HeadFields<'_>,
    ) -> Check {
        let ks = match self.keystore_id(record_keystore_id) {
            Ok(k) => k,
            Err(c) => return c,
        };
        let n = head_numbers(h);
        self.check(
            algorithm,
            signature,
            claimed_fingerprint,
            |k| head_hmac(k, &ks, h),
            || head_message(ED25519_HEAD_LABEL, &ks, h, &n).concat(),
        )
    }

    /// Checks a prune's checkpoint signature (always Ed25519).
    pub fn check_checkpoint(
        &self,
        algorithm: &str,
        signature: &str,
        claimed_fingerprint: Option<&str>,
        record_keystore_id: Option<&str>,
        c: &CheckpointFields<'_>,
    ) -> Check {
        if algorithm != ED25519_ALG {
            return Check::Invalid(format!(
                "checkpoints are signed with Ed25519, not {algorithm:?}"
            ));
        }
        let ks = match self.keystore_id(record_keystore_id) {
            Ok(k) => k,
            Err(c) => return c,
        };
        self.check(
            algorithm,
            signature,
            claimed_fingerprint,
            |_| String::new(),
            || checkpoint_message(&ks, c),
        )
    }

    /// The keystore id to check against: ours, which a record naming
    /// another must match; without ours, the record's.
    fn keystore_id(&self, named: Option<&str>) -> Result<String, Check> {
        match (&self.keystore_id, named) {
            (Some(ours), Some(n)) if n != ours => Err(Check::Invalid(format!(
                "it names keystore {n}, not this one ({ours})"
            ))),
            (Some(ours), _) => Ok(ours.clone()),
            (None, Some(n)) => Ok(n.to_string()),
            (None, None) => Err(Check::Unchecked(
                "it names no keystore, and none was given".into(),
            )),
        }
    }
}

/// The public key as PEM (SubjectPublicKeyInfo, RFC 8410), as
/// `openssl pkey -pubin` reads it.
pub fn public_key_pem(pk: &[u8; ED25519_PUBLIC_LEN]) -> String {
    let mut der = SPKI_PREFIX.to_vec();
    der.extend_from_slice(pk);
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(der)
    )
}

/// Reads a public key given as PEM (what `public_key_pem` writes) or as 64
/// hex digits.
pub fn parse_public_key(text: &str) -> Option<[u8; ED25519_PUBLIC_LEN]> {
    let t = text.trim();
    let bytes = if let Some(body) = t
        .strip_prefix("-----BEGIN PUBLIC KEY-----")
        .and_then(|b| b.strip_suffix("-----END PUBLIC KEY-----"))
    {
        let b64: String = body.split_whitespace().collect();
        let der = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
        der.strip_prefix(&SPKI_PREFIX[..])?.to_vec()
    } else {
        crate::kms::audit::trail::hex_to_bytes(t)?
    };
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_and_hex() {
        let pk = [5u8; 32];
        let pem = public_key_pem(&pk);
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA"));
        assert_eq!(parse_public_key(&pem), Some(pk));
        assert_eq!(parse_public_key(&hex(&pk)), Some(pk));
        assert_eq!(parse_public_key("not a key"), None);
        assert_eq!(parse_public_key(&hex(&[1u8; 31])), None);
    }

    #[test]
    fn ed25519_and_hmac_signatures_check_only_with_their_keys() {
        let seed = SecretBytes::new(vec![3; 32]);
        let hmac = SecretBytes::new(vec![4; 32]);
        let keys = SigningKeys::new(Some(&hmac), Some(&seed));
        let s = keys.sign_digest("ks", 7, &[1; 32]).unwrap();
        assert_eq!(s.algorithm, ED25519_ALG);
        let public = VerifyKeys {
            hmac: None,
            ed25519: keys.public_key(),
            keystore_id: None,
        };
        let fp = s.key_fingerprint.as_deref();
        let ok = |v: &VerifyKeys, seq| {
            v.check_digest(ED25519_ALG, &s.signature, fp, Some("ks"), seq, &[1; 32])
        };
        assert_eq!(ok(&public, 7), Check::Valid);
        assert!(matches!(ok(&public, 8), Check::Invalid(_)));
        // Another keystore's id, or another key, does not verify.
        assert!(matches!(
            public.check_digest(ED25519_ALG, &s.signature, fp, Some("other"), 7, &[1; 32]),
            Check::Invalid(_)
        ));
        let other = SigningKeys::new(None, Some(&SecretBytes::new(vec![9; 32])));
        let wrong = VerifyKeys {
            ed25519: other.public_key(),
            ..public.clone()
        };
        assert!(matches!(ok(&wrong, 7), Check::Invalid(m) if m.contains("names signing key")));
        // An HMAC digest is unchecked without the keystore, checked with it.
        let old = SigningKeys::new(Some(&hmac), None);
        let h = old.sign_digest("ks", 7, &[1; 32]).unwrap();
        assert_eq!(h.algorithm, HMAC_ALG);
        let check =
            |v: &VerifyKeys| v.check_digest(HMAC_ALG, &h.signature, None, None, 7, &[1; 32]);
        assert!(matches!(check(&public), Check::Unchecked(_)));
        let with_keystore = VerifyKeys {
            hmac: Some(hmac.clone()),
            ed25519: None,
            keystore_id: Some("ks".into()),
        };
        assert_eq!(check(&with_keystore), Check::Valid);
    }
}
