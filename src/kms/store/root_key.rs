//! The root key that seals the keystore: a random key in `root.key`, or
//! Argon2id of a passphrase with bounded cost parameters.
#![forbid(unsafe_code)]

use zeroize::Zeroizing;

use super::dir::KeystoreDir;
use crate::crypto::{self, AeadKey, KdfKey, Key256, SecretBytes};
use crate::kms::KmsError;

/// Argon2id cost parameters, stored in the keystore header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Params {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl Default for Argon2Params {
    /// 64 MiB, 3 passes, 1 lane: a few hundred milliseconds, once per process.
    fn default() -> Self {
        Self {
            m_kib: 64 * 1024,
            t: 3,
            p: 1,
        }
    }
}

impl Argon2Params {
    /// The most work kmsfs accepts: what it writes (`default`). The header
    /// that carries the parameters is authenticated only by the key they
    /// derive, so they are checked before deriving: anyone who can write the
    /// keystore could otherwise make every open run Argon2id for minutes (the
    /// algorithm allows terabytes and 2^32 passes). Lower costs are accepted
    /// (a lowered cost in a changed header only derives a key that fails the
    /// verifier). Lanes split the same memory, so up to 4 add no work.
    pub const MAX: Argon2Params = Argon2Params {
        m_kib: 64 * 1024,
        t: 3,
        p: 4,
    };

    /// Checks the parameters against `MAX` and the algorithm's own minimums
    /// (at least 8 KiB per lane, one pass, one lane).
    pub fn validate(&self) -> Result<(), KmsError> {
        let max = Self::MAX;
        if self.p == 0
            || self.p > max.p
            || self.m_kib < 8 * self.p
            || self.m_kib > max.m_kib
            || self.t == 0
            || self.t > max.t
        {
            return Err(KmsError::corrupt(format!(
                "the keystore header asks for Argon2id parameters m={} KiB t={} p={}, which \
                 kmsfs never writes (at most m={} KiB t={} p={}): the header was changed; \
                 refused before deriving any key, nothing was changed",
                self.m_kib, self.t, self.p, max.m_kib, max.t, max.p
            )));
        }
        Ok(())
    }
}

/// How the root key that seals the keystore is obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootMode {
    /// A random 256-bit key in `root.key` (mode 0600) beside the keystore.
    KeyFile,
    /// Argon2id of a passphrase with the stored salt and parameters.
    Passphrase {
        /// Cost parameters.
        params: Argon2Params,
        /// Random salt.
        salt: [u8; 16],
    },
}

impl RootMode {
    /// "root-key-file" or "passphrase".
    pub fn name(&self) -> &'static str {
        match self {
            RootMode::KeyFile => "root-key-file",
            RootMode::Passphrase { .. } => "passphrase",
        }
    }
}

/// The unsealed root key, and which mode/salt it belongs to.
pub struct RootKey {
    /// The root key as an AES-GCM key: opens version-1 keystore files only.
    pub(super) aead: AeadKey,
    /// The root key as a derivation key: every version-2 write seals under
    /// keys derived from it and a fresh salt.
    pub(super) kdf: KdfKey,
    pub(super) mode: RootMode,
}

impl std::fmt::Debug for RootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RootKey({}, redacted)", self.mode.name())
    }
}

impl RootKey {
    /// The mode this key was obtained by.
    pub fn mode(&self) -> RootMode {
        self.mode
    }

    /// Obtains the root key for `mode`: reads `root.key`, or runs Argon2id over
    /// the passphrase that `passphrase` supplies (only called in that mode).
    pub fn obtain(
        dir: &KeystoreDir,
        mode: RootMode,
        passphrase: &dyn Fn() -> Result<SecretBytes, KmsError>,
    ) -> Result<Self, KmsError> {
        let key = match mode {
            RootMode::KeyFile => dir.read_root_key_file()?,
            RootMode::Passphrase { params, salt } => {
                params.validate()?;
                let pass = passphrase()?;
                derive_argon2id(pass.expose(), &salt, params)?
            }
        };
        Ok(Self {
            aead: AeadKey::new(&key),
            kdf: KdfKey::new(key.expose()),
            mode,
        })
    }
}

/// Argon2id(passphrase, salt) into a 256-bit key.
pub fn derive_argon2id(pass: &[u8], salt: &[u8; 16], p: Argon2Params) -> Result<Key256, KmsError> {
    let params = argon2::Params::new(p.m_kib, p.t, p.p, Some(crypto::KEY_LEN))
        .map_err(|e| KmsError::corrupt(format!("invalid Argon2id parameters: {e}")))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Zeroizing::new([0u8; crypto::KEY_LEN]);
    a.hash_password_into(pass, salt, &mut *out)
        .map_err(|e| KmsError::internal(format!("Argon2id failed: {e}")))?;
    Key256::from_slice(&*out).map_err(|e| KmsError::internal(e.to_string()))
}

/// How `create` seals a new keystore.
pub enum CreateMode {
    /// Zero-setup: a random root key in `root.key`.
    RootKeyFile,
    /// Argon2id of a passphrase.
    Passphrase {
        /// The passphrase.
        passphrase: SecretBytes,
        /// Cost parameters ([`Argon2Params::default`] in production).
        params: Argon2Params,
    },
}

impl std::fmt::Debug for CreateMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CreateMode::RootKeyFile => f.write_str("RootKeyFile"),
            CreateMode::Passphrase { params, .. } => write!(f, "Passphrase({params:?}, redacted)"),
        }
    }
}
