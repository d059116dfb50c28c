//! The whole store: keys and aliases together, due deletions, rotations and
//! expiries, and the JSON body (written through a zeroizing buffer).
#![forbid(unsafe_code)]

use zeroize::Zeroizing;

use super::*;
use crate::kms::{KeyOrigin, KeyState, KmsError};

impl StoreState {
    /// Deletes for good every key whose deletion date has passed, with its
    /// material and its aliases. Returns the ids deleted.
    pub fn purge_due(&mut self, now: i64) -> Vec<String> {
        let due: Vec<String> = self
            .keys
            .values()
            .filter(|k| k.deletion_due(now))
            .map(|k| k.key_id.clone())
            .collect();
        for id in &due {
            if let Some(k) = self.keys.remove(id) {
                self.deleted
                    .insert(id.clone(), k.deletion_date.unwrap_or(now));
            }
        }
        self.aliases.retain(|_, target| !due.contains(target));
        self.grants.retain(|_, g| !due.contains(&g.key_id));
        due
    }

    /// Removes from this state (an older generation, kept for recovery) every
    /// key material that `newer` no longer holds: material deleted, expired
    /// or purged in between must not come back when the newer generation is
    /// damaged and this one is used instead. A key left without material
    /// becomes PendingImport, as DeleteImportedKeyMaterial leaves it; a key
    /// that `newer` no longer has goes with its aliases. A deleted access key
    /// (a credential of the protocol server) goes too. Returns true when
    /// anything was removed.
    pub fn forget_material_gone_from(&mut self, newer: &StoreState) -> bool {
        let gone: Vec<String> = self
            .keys
            .keys()
            .filter(|id| !newer.keys.contains_key(*id))
            .cloned()
            .collect();
        let mut changed = !gone.is_empty();
        for id in &gone {
            self.keys.remove(id);
            if let Some(when) = newer.deleted.get(id) {
                self.deleted.insert(id.clone(), *when);
            }
        }
        self.aliases.retain(|_, target| !gone.contains(target));
        for k in self.keys.values_mut() {
            let Some(n) = newer.keys.get(&k.key_id) else {
                continue;
            };
            let before = k.materials.len();
            k.materials.retain(|m| {
                n.material(m.version).is_some_and(|nm| {
                    crate::crypto::constant_time_eq(nm.material.expose(), m.material.expose())
                })
            });
            if k.materials.len() == before {
                continue;
            }
            changed = true;
            if k.materials.is_empty() {
                k.drop_material();
            } else if k.material(k.current_version).is_none() {
                k.current_version = k.materials.iter().map(|m| m.version).max().unwrap_or(0);
            }
        }
        let access_keys = self.access_keys.len();
        self.access_keys
            .retain(|id, _| newer.access_keys.contains_key(id));
        // A retired or revoked grant must not come back either.
        let grants = self.grants.len();
        self.grants.retain(|id, _| newer.grants.contains_key(id));
        changed | (self.access_keys.len() != access_keys) | (self.grants.len() != grants)
    }

    /// The earliest deletion date of any key pending deletion.
    pub fn next_deletion(&self) -> Option<i64> {
        self.keys
            .values()
            .filter(|k| k.state == KeyState::PendingDeletion)
            .filter_map(|k| k.deletion_date)
            .min()
    }

    /// The earliest time at which something is due: a deletion or an
    /// automatic rotation of an Enabled key.
    pub fn next_due(&self) -> Option<i64> {
        let rotation = self
            .keys
            .values()
            .filter(|k| k.state == KeyState::Enabled)
            .filter_map(|k| k.next_rotation)
            .min();
        let expiry = self
            .keys
            .values()
            .filter(|k| k.origin == KeyOrigin::External && k.state != KeyState::PendingDeletion)
            .flat_map(|k| k.materials.iter().filter_map(|m| m.expires))
            .min();
        [self.next_deletion(), rotation, expiry]
            .into_iter()
            .flatten()
            .min()
    }

    /// Deletes imported material that reached its ValidTo (the key becomes
    /// PendingImport). Returns the ids.
    pub fn expire_due(&mut self, now: i64) -> Vec<String> {
        let mut done = Vec::new();
        for k in self.keys.values_mut().filter(|k| k.material_expired(now)) {
            k.drop_material();
            done.push(k.key_id.clone());
        }
        done
    }

    /// Rotates every Enabled key whose automatic rotation is due. Returns the ids.
    pub fn rotate_due(&mut self, now: i64) -> Result<Vec<String>, KmsError> {
        let mut done = Vec::new();
        for k in self.keys.values_mut().filter(|k| k.rotation_due(now)) {
            k.rotate(RotationType::Automatic, now)?;
            done.push(k.key_id.clone());
        }
        Ok(done)
    }

    /// Serializes to JSON into a buffer that is zeroized on drop. The size is
    /// measured first so the buffer never reallocates (no stray copies of
    /// key material in freed memory).
    pub fn to_sealed_json(&self) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let mut counter = CountingWriter(0);
        serde_json::to_writer(&mut counter, self)
            .map_err(|e| KmsError::internal(format!("cannot serialize keystore: {e}")))?;
        let mut buf = Zeroizing::new(Vec::with_capacity(counter.0));
        serde_json::to_writer(&mut *buf, self)
            .map_err(|e| KmsError::internal(format!("cannot serialize keystore: {e}")))?;
        Ok(buf)
    }

    /// Parses the JSON body (already authenticated by the AEAD).
    pub fn from_json(bytes: &[u8]) -> Result<Self, KmsError> {
        let state: StoreState = serde_json::from_slice(bytes).map_err(|e| {
            // Where and what kind, not serde's text: it can quote the
            // decrypted body, which holds key material.
            KmsError::corrupt(format!(
                "keystore body does not parse ({:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            ))
        })?;
        for (id, k) in &state.keys {
            if *id != k.key_id
                || k.materials
                    .iter()
                    .any(|m| m.material.len() != crate::crypto::KEY_LEN)
            {
                return Err(KmsError::corrupt(format!(
                    "keystore body is inconsistent for key {id}"
                )));
            }
        }
        Ok(state)
    }
}

struct CountingWriter(usize);

impl std::io::Write for CountingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
