//! The keystore file format: header, root-key verifier, sealed body and
//! SHA-256 trailer (docs/KEYSTORE.md), parsed into a `Frame` and encoded back.
#![forbid(unsafe_code)]

use super::root_key::{Argon2Params, RootKey, RootMode};
use crate::crypto::{self, SALT_LEN, SEAL_OVERHEAD, TAG_LEN};
use crate::kms::model::StoreState;
use crate::kms::{KmsError, RootKeyProblem};

/// First bytes of a keystore file.
pub const KEYSTORE_MAGIC: [u8; 8] = *b"KMSFS-KS";
/// The keystore format version this code writes.
pub const KEYSTORE_VERSION: u16 = 2;
/// The first format version: still read, never written.
pub const KEYSTORE_VERSION_1: u16 = 1;
/// First bytes of the root key file; 32 key bytes follow.
pub const ROOT_KEY_MAGIC: [u8; 8] = *b"KMSFSRK1";

const MODE_KEY_FILE: u8 = 1;
const MODE_PASSPHRASE: u8 = 2;
/// Offsets of the fixed header (see docs/KEYSTORE.md).
pub(super) const OFF_VERSION: usize = 8;
pub(super) const OFF_ID: usize = 10;
const OFF_MODE: usize = 26;
const OFF_PARAMS: usize = 27;
const OFF_SALT: usize = 39;
const OFF_GENERATION: usize = 55;
/// End of the fields both versions share (magic to generation).
const OFF_VERIFIER_V1: usize = 63;
/// Version 2: the random salt of this write's derived keys.
const OFF_SEAL_SALT: usize = 63;
const OFF_VERIFIER_V2: usize = OFF_SEAL_SALT + SALT_LEN; // 95
/// Fixed part of a version-1 file: header, verifier (nonce + tag), body length.
pub(super) const FIXED_LEN_V1: usize = OFF_VERIFIER_V1 + SEAL_OVERHEAD + 4; // 95
/// Fixed part of a version-2 file: header with salt, verifier (tag), body length.
pub(super) const FIXED_LEN: usize = OFF_VERIFIER_V2 + TAG_LEN + 4; // 115
pub(super) const CHECKSUM_LEN: usize = 32;
const VERIFIER_LABEL_V1: &[u8] = b"kmsfs keystore verifier v1\0";
const BODY_LABEL_V1: &[u8] = b"kmsfs keystore body v1\0";
/// KDF labels of a version-2 write's two one-time keys.
const VERIFIER_KDF_LABEL: &[u8] = b"kmsfs keystore verifier v2";
const BODY_KDF_LABEL: &[u8] = b"kmsfs keystore body v2";
/// Largest body accepted (a corrupt length must not make us allocate wildly).
pub(super) const MAX_BODY_LEN: usize = 256 << 20;

/// The parts of a keystore file, after structure and checksum were checked
/// (nothing authenticated yet).
#[derive(Debug)]
pub struct Frame<'a> {
    /// Random id of the keystore.
    pub keystore_id: [u8; 16],
    /// How the root key is obtained.
    pub mode: RootMode,
    /// Write counter.
    pub generation: u64,
    /// Format version: [`KEYSTORE_VERSION`] or [`KEYSTORE_VERSION_1`].
    pub version: u16,
    header: &'a [u8],
    verifier: &'a [u8],
    body: &'a [u8],
}

pub(super) fn corrupt(name: &str, why: &str) -> KmsError {
    KmsError::corrupt(format!("keystore file {name} is damaged: {why}"))
}

impl<'a> Frame<'a> {
    /// Checks magic, version, lengths and the SHA-256 trailer. An unknown version
    /// is its own clear error; everything else is corruption.
    pub fn parse(name: &str, b: &'a [u8]) -> Result<Self, KmsError> {
        if b.len() < OFF_ID {
            return Err(corrupt(
                name,
                &format!("it is truncated ({} bytes)", b.len()),
            ));
        }
        if b[..8] != KEYSTORE_MAGIC {
            return Err(corrupt(
                name,
                "it does not start with the kmsfs keystore magic",
            ));
        }
        let version = u16::from_be_bytes([b[OFF_VERSION], b[OFF_VERSION + 1]]);
        if version != KEYSTORE_VERSION && version != KEYSTORE_VERSION_1 {
            // The trailer is checked first: a flipped bit in the version field is
            // damage (and may fall back), only an intact file is a newer format.
            if !trailer_ok(b) {
                return Err(corrupt(
                    name,
                    "its checksum does not match (bytes were changed)",
                ));
            }
            return Err(KmsError::corrupt(format!(
                "keystore file {name} has format version {version}, but this kmsfs reads only \
                 versions {KEYSTORE_VERSION_1} and {KEYSTORE_VERSION}; use the kmsfs release \
                 that wrote it"
            )));
        }
        let (off_verifier, fixed) = if version == KEYSTORE_VERSION_1 {
            (OFF_VERIFIER_V1, FIXED_LEN_V1)
        } else {
            (OFF_VERIFIER_V2, FIXED_LEN)
        };
        if b.len() < fixed + CHECKSUM_LEN {
            return Err(corrupt(
                name,
                &format!("it is truncated ({} bytes)", b.len()),
            ));
        }
        let body_len = u32::from_be_bytes(arr4(&b[fixed - 4..fixed])) as usize;
        if body_len > MAX_BODY_LEN || b.len() != fixed + body_len + CHECKSUM_LEN {
            return Err(corrupt(
                name,
                &format!(
                    "its length ({} bytes) does not match its header (truncated?)",
                    b.len()
                ),
            ));
        }
        let (content, sum) = b.split_at(fixed + body_len);
        if !crypto::constant_time_eq(&crypto::sha256(&[content]), sum) {
            return Err(corrupt(
                name,
                "its checksum does not match (bytes were changed)",
            ));
        }
        let mut keystore_id = [0u8; 16];
        keystore_id.copy_from_slice(&b[OFF_ID..OFF_ID + 16]);
        let params = Argon2Params {
            m_kib: u32::from_be_bytes(arr4(&b[OFF_PARAMS..])),
            t: u32::from_be_bytes(arr4(&b[OFF_PARAMS + 4..])),
            p: u32::from_be_bytes(arr4(&b[OFF_PARAMS + 8..])),
        };
        let mut salt = [0u8; 16];
        salt.copy_from_slice(&b[OFF_SALT..OFF_SALT + 16]);
        let mode = match b[OFF_MODE] {
            MODE_KEY_FILE => RootMode::KeyFile,
            MODE_PASSPHRASE => RootMode::Passphrase { params, salt },
            m => return Err(corrupt(name, &format!("unknown root key mode {m}"))),
        };
        let mut g = [0u8; 8];
        g.copy_from_slice(&b[OFF_GENERATION..OFF_GENERATION + 8]);
        Ok(Self {
            keystore_id,
            mode,
            generation: u64::from_be_bytes(g),
            version,
            header: &b[..off_verifier],
            verifier: &b[off_verifier..fixed - 4],
            body: &b[fixed..fixed + body_len],
        })
    }

    /// Checks the verifier (wrong root key → `WrongRootKey`), then opens and
    /// parses the body (failure → `CorruptKeystore`).
    pub fn unseal(&self, name: &str, root: &RootKey) -> Result<StoreState, KmsError> {
        if root.mode != self.mode {
            return Err(KmsError::WrongRootKey {
                problem: RootKeyProblem::SealedWithAnother {
                    file: name.to_string(),
                },
            });
        }
        let wrong_root = || {
            let problem = match self.mode {
                RootMode::Passphrase { .. } => RootKeyProblem::WrongPassphrase,
                RootMode::KeyFile => RootKeyProblem::KeyFileMismatch,
            };
            KmsError::WrongRootKey { problem }
        };
        let mut header_and_len = Vec::with_capacity(FIXED_LEN);
        header_and_len.extend_from_slice(self.header);
        header_and_len.extend_from_slice(self.verifier);
        header_and_len.extend_from_slice(&(self.body.len() as u32).to_be_bytes());
        let json = if self.version == KEYSTORE_VERSION_1 {
            let vaad = [VERIFIER_LABEL_V1, self.header].concat();
            if root.aead.open(&vaad, self.verifier).is_err() {
                return Err(wrong_root());
            }
            let baad = [BODY_LABEL_V1, &header_and_len].concat();
            root.aead.open(&baad, self.body)
        } else {
            let verifier_key = root.kdf.derive(VERIFIER_KDF_LABEL, &[self.header]);
            if verifier_key.open(self.header, self.verifier).is_err() {
                return Err(wrong_root());
            }
            let body_key = root.kdf.derive(BODY_KDF_LABEL, &[self.header]);
            body_key.open(&header_and_len, self.body)
        }
        .map_err(|_| corrupt(name, "its sealed body does not authenticate"))?;
        StoreState::from_json(json.expose()).map_err(|e| corrupt(name, &e.to_string()))
    }
}

/// True when `b` starts like a keystore file but of another format version
/// (a newer kmsfs wrote it): reported as such, never treated as damage.
pub fn unknown_version(b: &[u8]) -> bool {
    b.len() >= OFF_ID
        && b[..8] == KEYSTORE_MAGIC
        && !matches!(
            u16::from_be_bytes([b[OFF_VERSION], b[OFF_VERSION + 1]]),
            KEYSTORE_VERSION | KEYSTORE_VERSION_1
        )
        && trailer_ok(b)
}

/// True when the file ends with the SHA-256 of everything before it: the one
/// part of the layout every format version keeps (docs/KEYSTORE.md).
fn trailer_ok(b: &[u8]) -> bool {
    b.len() >= OFF_ID + CHECKSUM_LEN && {
        let (content, sum) = b.split_at(b.len() - CHECKSUM_LEN);
        crypto::constant_time_eq(&crypto::sha256(&[content]), sum)
    }
}

/// The generation number a file's header claims, when it has the layout of
/// this version (not authenticated: used only to say how stale a fallback is).
pub fn claimed_generation(b: &[u8]) -> Option<u64> {
    (b.len() >= OFF_VERIFIER_V1 && b[..8] == KEYSTORE_MAGIC).then(|| {
        let mut g = [0u8; 8];
        g.copy_from_slice(&b[OFF_GENERATION..OFF_GENERATION + 8]);
        u64::from_be_bytes(g)
    })
}

fn arr4(b: &[u8]) -> [u8; 4] {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    a
}

/// Encodes and seals `state` as a keystore file.
pub fn encode(
    keystore_id: &[u8; 16],
    root: &RootKey,
    generation: u64,
    state: &StoreState,
) -> Result<Vec<u8>, KmsError> {
    let json = state.to_sealed_json()?;
    let body_len = json.len() + TAG_LEN;
    if body_len > MAX_BODY_LEN {
        return Err(KmsError::internal("keystore body too large".into()));
    }
    let mut out = Vec::with_capacity(FIXED_LEN + body_len + CHECKSUM_LEN);
    out.extend_from_slice(&KEYSTORE_MAGIC);
    out.extend_from_slice(&KEYSTORE_VERSION.to_be_bytes());
    out.extend_from_slice(keystore_id);
    let (mode, params, salt) = match root.mode {
        RootMode::KeyFile => (
            MODE_KEY_FILE,
            Argon2Params {
                m_kib: 0,
                t: 0,
                p: 0,
            },
            [0u8; 16],
        ),
        RootMode::Passphrase { params, salt } => (MODE_PASSPHRASE, params, salt),
    };
    out.push(mode);
    for v in [params.m_kib, params.t, params.p] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(&salt);
    out.extend_from_slice(&generation.to_be_bytes());
    let seal_err =
        |e: crypto::CryptoError| KmsError::internal(format!("sealing the keystore failed: {e}"));
    let salt: [u8; SALT_LEN] = crypto::random_array().map_err(seal_err)?;
    out.extend_from_slice(&salt);
    debug_assert_eq!(out.len(), OFF_VERIFIER_V2);
    let header = out.clone();
    // Two one-time keys from the root key and this write's salt: the root key
    // itself never encrypts, however many times the keystore is written.
    root.kdf
        .derive(VERIFIER_KDF_LABEL, &[&header])
        .seal_append(&header, &[], &mut out)
        .map_err(seal_err)?;
    out.extend_from_slice(&(body_len as u32).to_be_bytes());
    let baad = out.clone();
    root.kdf
        .derive(BODY_KDF_LABEL, &[&header])
        .seal_append(&baad, &json, &mut out)
        .map_err(seal_err)?;
    let sum = crypto::sha256(&[&out]);
    out.extend_from_slice(&sum);
    Ok(out)
}
