//! Keystore persistence: the file format (`codec`), the directory with its
//! lock and durable writes (`dir`), the root key (`root_key`) and the trust
//! of the path to it (`path_trust`). Knows the model only as a serializable
//! `StoreState`.
#![forbid(unsafe_code)]

mod codec;
mod dir;
mod path_trust;
mod reseal;
mod root_key;

pub use codec::{
    Frame, KEYSTORE_MAGIC, KEYSTORE_VERSION, KEYSTORE_VERSION_1, ROOT_KEY_MAGIC,
    claimed_generation, encode, unknown_version,
};
pub use dir::{
    CURRENT_FILE, Fingerprint, KeystoreDir, LOCK_FILE, LockGuard, PREV_FILE, ROOT_KEY_FILE,
};
pub use path_trust::trusted_path;
pub use reseal::reseal;
pub use root_key::{Argon2Params, CreateMode, RootKey, RootMode, derive_argon2id};

use crate::crypto;
use crate::kms::model::StoreState;
use crate::kms::{Existing, KmsError};

/// Creates a new keystore in `dir`: refuses if one (current or previous
/// generation) exists there; never overwrites anything.
pub fn create(
    dir: &KeystoreDir,
    mode: CreateMode,
) -> Result<([u8; 16], RootKey, StoreState, Fingerprint), KmsError> {
    dir.create_dir()?;
    let _lock = dir.lock()?;
    if dir.exists() {
        return Err(KmsError::AlreadyExists {
            what: Existing::Keystore {
                path: dir.path().to_path_buf(),
            },
        });
    }
    if dir.has_entry(ROOT_KEY_FILE) {
        return Err(lost(dir, ROOT_KEY_FILE));
    }
    let root = match mode {
        CreateMode::RootKeyFile => {
            dir.create_root_key_file()?;
            RootKey::obtain(dir, RootMode::KeyFile, &|| {
                Err(KmsError::internal("no passphrase in key-file mode".into()))
            })?
        }
        CreateMode::Passphrase { passphrase, params } => {
            let salt =
                crypto::random_array::<16>().map_err(|e| KmsError::internal(e.to_string()))?;
            let mode = RootMode::Passphrase { params, salt };
            params.validate().map_err(|_| {
                let max = Argon2Params::MAX;
                KmsError::invalid(format!(
                    "Argon2id parameters m={} KiB t={} p={} are out of range (at most m={} KiB \
                     t={} p={}, at least 8 KiB per lane): kmsfs would refuse to open the keystore",
                    params.m_kib, params.t, params.p, max.m_kib, max.t, max.p
                ))
            })?;
            RootKey::obtain(dir, mode, &|| Ok(passphrase.clone()))?
        }
    };
    let id = crypto::random_array::<16>().map_err(|e| KmsError::internal(e.to_string()))?;
    // The audit trail's signing key is made with the keystore (older
    // keystores get one on first open).
    let audit_key = crypto::random_array::<32>().map_err(|e| KmsError::internal(e.to_string()))?;
    let seed = crypto::random_array::<32>().map_err(|e| KmsError::internal(e.to_string()))?;
    // The account id of its ARNs: 12 random digits.
    let account = u64::from_le_bytes(
        crypto::random_array::<8>().map_err(|e| KmsError::internal(e.to_string()))?,
    ) % 1_000_000_000_000;
    let state = StoreState {
        account_id: Some(format!("{account:012}")),
        audit_signing_key: Some(crypto::SecretBytes::new(audit_key.to_vec())),
        audit_ed25519_seed: Some(crypto::SecretBytes::new(seed.to_vec())),
        ..StoreState::default()
    };
    let bytes = encode(&id, &root, 1, &state)?;
    dir.remove_stale_temporaries();
    let fp = dir.write_generations(None, &bytes)?;
    Ok((id, root, state, fp))
}

/// The error for a directory that shows a keystore was there (`evidence`)
/// but has neither generation: never answered by creating a new one.
pub fn lost(dir: &KeystoreDir, evidence: &str) -> KmsError {
    let d = dir.path().display();
    KmsError::corrupt(format!(
        "the keystore in {d} is lost or unreadable: {evidence} is there but neither \
         {CURRENT_FILE} nor {PREV_FILE} can be found (deleted? a symbolic link to a volume \
         that is not mounted?); nothing was created or changed. Restore {CURRENT_FILE} from \
         your backup. Only if no keystore was ever created here (an interrupted `kmsfs init`) \
         remove {d}/{evidence} and start again"
    ))
}

#[cfg(test)]
mod tests;
