//! Changing how the keystore is sealed (`kmsfs passwd`): a new passphrase, or
//! a switch between the root key file and a passphrase. Both generations are
//! sealed again under the new root key, so the old secret opens nothing.
#![forbid(unsafe_code)]

use super::codec::{Frame, encode};
use super::dir::{CURRENT_FILE, KeystoreDir, PREV_FILE, ROOT_KEY_FILE};
use super::root_key::{CreateMode, RootKey, RootMode};
use crate::crypto;
use crate::kms::KmsError;

/// Seals the keystore in `dir` (opened with `old`) under a root key made as
/// `new` says, under the keystore's lock. Crash safety: the generations are
/// replaced as any update replaces them (temporary files, fsync, rename);
/// a new `root.key` is written and synced before the keystore that needs it,
/// and an old one removed only after the keystore no longer does, so every
/// crash leaves a keystore that opens with the old secret or the new one
/// (a `root.key` left by an interrupted switch to a passphrase seals
/// nothing and is replaced by the next switch).
pub fn reseal(dir: &KeystoreDir, old: &RootKey, new: CreateMode) -> Result<(), KmsError> {
    let _lock = dir.lock()?;
    let (bytes, _) = dir.read(CURRENT_FILE)?.ok_or_else(|| {
        KmsError::corrupt(format!(
            "{} is missing; nothing was changed",
            dir.file(CURRENT_FILE).display()
        ))
    })?;
    let frame = Frame::parse(CURRENT_FILE, &bytes)?;
    let state = frame.unseal(CURRENT_FILE, old)?;
    let (id, generation) = (frame.keystore_id, frame.generation);
    // The kept generation, when it opens under the old root: sealed again
    // too. Otherwise the current state takes its place.
    let prev = dir
        .read(PREV_FILE)?
        .and_then(|(b, _)| {
            let f = Frame::parse(PREV_FILE, &b).ok()?;
            if f.keystore_id != id || f.generation > generation {
                return None;
            }
            Some((f.unseal(PREV_FILE, old).ok()?, f.generation))
        })
        .unwrap_or_else(|| (state.clone(), generation));
    let was_key_file = old.mode == RootMode::KeyFile;
    let root = match new {
        CreateMode::RootKeyFile => {
            if was_key_file {
                return Err(KmsError::invalid(
                    "the keystore is sealed by its root key file already".into(),
                ));
            }
            if dir.has_entry(ROOT_KEY_FILE) {
                dir.remove_root_key_file()?;
            }
            dir.create_root_key_file()?;
            RootKey::obtain(dir, RootMode::KeyFile, &|| {
                Err(KmsError::internal("no passphrase in key-file mode".into()))
            })?
        }
        CreateMode::Passphrase { passphrase, params } => {
            params.validate()?;
            let salt =
                crypto::random_array::<16>().map_err(|e| KmsError::internal(e.to_string()))?;
            RootKey::obtain(dir, RootMode::Passphrase { params, salt }, &|| {
                Ok(passphrase.clone())
            })?
        }
    };
    let prev_bytes = encode(&id, &root, prev.1, &prev.0)?;
    let cur_bytes = encode(&id, &root, generation + 1, &state)?;
    dir.remove_stale_temporaries();
    dir.write_generations(Some(&prev_bytes), &cur_bytes)?;
    if was_key_file {
        dir.remove_root_key_file()?;
    }
    Ok(())
}
