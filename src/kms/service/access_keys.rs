//! Access keys of the protocol server: create, list, delete, and the lookup
//! that signature verification uses. The secrets live in the sealed keystore
//! body; only `create` hands one out (once), and `secret_for` lends it to the
//! verifier without copying it anywhere unzeroized.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Serialize;
use zeroize::Zeroizing;

use super::LocalKeyStore;
use crate::crypto::{SecretBytes, random_array};
use crate::kms::model::{AccessKeyId, AccessKeyRecord, MAX_ACCESS_KEYS, valid_access_key_id};
use crate::kms::{Caller, KmsError, Missing};

/// A new access key: the only time its secret is shown.
#[derive(Debug)]
pub struct NewAccessKey {
    /// `AKIA...`.
    pub access_key_id: String,
    /// The secret access key (40 characters): zeroized on drop.
    pub secret_access_key: SecretBytes,
    /// The uid requests signed with it act as.
    pub uid: u32,
    /// The gid requests signed with it act as.
    pub gid: u32,
}

/// What `list` shows of an access key (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AccessKeyEntry {
    /// `AKIA...`.
    pub access_key_id: String,
    /// The uid requests signed with it act as.
    pub uid: u32,
    /// The gid requests signed with it act as.
    pub gid: u32,
    /// Creation time, seconds since the epoch.
    pub create_date: i64,
}

/// The principal and secret of an access key, for signature verification.
pub struct AccessKeySecret {
    /// The caller that requests signed with the key act as (pid 0, the
    /// access key named: policies and grants may name it).
    pub caller: Caller,
    /// The secret access key, zeroized on drop.
    pub secret: Zeroizing<String>,
}

impl std::fmt::Debug for AccessKeySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKeySecret")
            .field("caller", &self.caller)
            .field("secret", &"<redacted>")
            .finish()
    }
}

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

fn new_access_key_id() -> Result<String, KmsError> {
    let r = random_array::<16>().map_err(|e| KmsError::internal(e.to_string()))?;
    let mut id = String::from("AKIA");
    id.extend(r.iter().map(|b| BASE32[usize::from(b & 31)] as char));
    Ok(id)
}

fn new_secret() -> Result<SecretBytes, KmsError> {
    // 30 random bytes: 40 base64 characters, the length of an AWS secret key.
    let raw = Zeroizing::new(random_array::<30>().map_err(|e| KmsError::internal(e.to_string()))?);
    let text = Zeroizing::new(B64.encode(*raw));
    Ok(SecretBytes::new(text.as_bytes().to_vec()))
}

impl LocalKeyStore {
    /// Creates an access key for the principal `uid`/`gid`.
    pub fn create_access_key(&self, uid: u32, gid: u32) -> Result<NewAccessKey, KmsError> {
        let access_key_id = new_access_key_id()?;
        let secret = new_secret()?;
        let stored = SecretBytes::new(secret.expose().to_vec());
        let id = access_key_id.clone();
        self.update(move |s, now| {
            if s.access_keys.len() >= MAX_ACCESS_KEYS {
                return Err(KmsError::invalid(format!(
                    "the keystore holds {MAX_ACCESS_KEYS} access keys already; delete some \
                     with `kmsfs access-key delete`"
                )));
            }
            s.access_keys.insert(
                id.clone(),
                AccessKeyRecord {
                    access_key_id: id,
                    secret: stored,
                    uid,
                    gid,
                    created: now,
                },
            );
            Ok(())
        })?;
        Ok(NewAccessKey {
            access_key_id,
            secret_access_key: secret,
            uid,
            gid,
        })
    }

    /// Every access key, oldest first (never their secrets).
    pub fn list_access_keys(&self) -> Result<Vec<AccessKeyEntry>, KmsError> {
        let snap = self.fresh_snapshot()?;
        let mut v: Vec<AccessKeyEntry> = snap
            .state
            .access_keys
            .values()
            .map(|r| AccessKeyEntry {
                access_key_id: r.access_key_id.clone(),
                uid: r.uid,
                gid: r.gid,
                create_date: r.created,
            })
            .collect();
        v.sort_by(|a, b| (a.create_date, &a.access_key_id).cmp(&(b.create_date, &b.access_key_id)));
        Ok(v)
    }

    /// Deletes an access key: requests signed with it are refused from now on.
    pub fn delete_access_key(&self, access_key_id: &str) -> Result<(), KmsError> {
        self.update(|s, _| match s.access_keys.remove(access_key_id) {
            Some(_) => Ok(()),
            None => Err(KmsError::not_found(Missing::AccessKey {
                access_key_id: access_key_id.to_string(),
            })),
        })
    }

    /// The principal and secret of `access_key_id`, or None when there is no
    /// such key (the server answers UnrecognizedClientException).
    pub fn access_key_secret(
        &self,
        access_key_id: &str,
    ) -> Result<Option<AccessKeySecret>, KmsError> {
        if !valid_access_key_id(access_key_id) {
            return Ok(None);
        }
        let snap = self.fresh_snapshot()?;
        Ok(snap.state.access_keys.get(access_key_id).map(|r| {
            let mut secret = Zeroizing::new(String::with_capacity(r.secret.len()));
            secret.extend(r.secret.expose().iter().map(|&b| b as char));
            AccessKeySecret {
                caller: Caller {
                    uid: r.uid,
                    gid: r.gid,
                    pid: 0,
                    access_key: AccessKeyId::parse(&r.access_key_id),
                },
                secret,
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::CreateMode;

    #[test]
    fn create_list_lookup_delete_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ks");
        let ks = LocalKeyStore::create(&p, CreateMode::RootKeyFile).unwrap();
        let k = ks.create_access_key(1000, 100).unwrap();
        assert!(valid_access_key_id(&k.access_key_id));
        assert_eq!(k.secret_access_key.len(), 40);
        let list = ks.list_access_keys().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!((list[0].uid, list[0].gid), (1000, 100));
        let s = ks.access_key_secret(&k.access_key_id).unwrap().unwrap();
        assert_eq!(s.secret.as_bytes(), k.secret_access_key.expose());
        assert_eq!((s.caller.uid, s.caller.gid), (1000, 100));
        assert_eq!(
            s.caller.access_key.map(|a| a.to_string()).as_deref(),
            Some(k.access_key_id.as_str())
        );
        assert!(!format!("{s:?}").contains(s.secret.as_str()));
        assert!(
            ks.access_key_secret("AKIAAAAAAAAAAAAAAAAA")
                .unwrap()
                .is_none()
        );
        assert!(ks.access_key_secret("not an id").unwrap().is_none());
        // Sealed in the keystore: another process (a fresh open) sees it; the
        // file on disk does not hold the secret in the clear.
        drop(ks);
        let ks = LocalKeyStore::open(&p, &|| unreachable!()).unwrap();
        assert!(ks.access_key_secret(&k.access_key_id).unwrap().is_some());
        for f in std::fs::read_dir(&p).unwrap() {
            let f = f.unwrap().path();
            if f.is_dir() {
                continue; // audit/: checked by the trail's own tests
            }
            let bytes = std::fs::read(f).unwrap();
            let secret = k.secret_access_key.expose();
            assert!(!bytes.windows(secret.len()).any(|w| w == secret));
        }
        ks.delete_access_key(&k.access_key_id).unwrap();
        assert!(ks.access_key_secret(&k.access_key_id).unwrap().is_none());
        assert!(matches!(
            ks.delete_access_key(&k.access_key_id),
            Err(KmsError::NotFound { .. })
        ));
    }

    #[test]
    fn a_deleted_access_key_does_not_come_back_from_the_kept_generation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ks");
        let ks = LocalKeyStore::create(&p, CreateMode::RootKeyFile).unwrap();
        let gone = ks.create_access_key(1000, 100).unwrap();
        let kept = ks.create_access_key(1001, 100).unwrap();
        ks.delete_access_key(&gone.access_key_id).unwrap();
        drop(ks);
        // Damage the current generation: the next open falls back to the
        // kept one, which must not hold the deleted credential.
        let current = p.join("keystore.kms");
        let mut bytes = std::fs::read(&current).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        std::fs::write(&current, &bytes).unwrap();
        let ks = LocalKeyStore::open(&p, &|| unreachable!()).unwrap();
        assert!(ks.access_key_secret(&gone.access_key_id).unwrap().is_none());
        assert!(ks.access_key_secret(&kept.access_key_id).unwrap().is_some());
    }
}
