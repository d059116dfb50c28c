//! Key administration on `LocalKeyStore`: create, list, enable/disable,
//! deletion, aliases, rotation, key policies and imported key material. Every
//! change goes through `update` (lock, re-read, write both generations). Every
//! method takes the caller, as the AWS API does, and goes through `admin`
//! (`service/audit.rs`): audited always, durably for a change; the key policy
//! is enforced where `set_boundary` says a boundary exists, and
//! from the command line only recorded (its owner holds the root key).
#![forbid(unsafe_code)]

use serde_json::json;

use super::LocalKeyStore;
use super::audit::{Admin, Checked};
use super::resolve::{resolve, resolve_mut};
use crate::crypto::SecretBytes;
use crate::crypto::hex;
use crate::kms::audit::{Operation, Requester};
use crate::kms::model::{self, KeyRecord, StoreState};
use crate::kms::policy::{self, KeyPolicy};
use crate::kms::{
    Caller, KeyMetadata, KeyOrigin, KeyState, KmsError, Missing, StateProblem, ValidationCode,
};

/// One entry of ListKeys.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyListEntry {
    /// The key id.
    pub key_id: String,
    /// The key ARN.
    pub key_arn: String,
}

/// One entry of ListAliases.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AliasListEntry {
    /// `alias/...`.
    pub alias_name: String,
    /// The alias ARN.
    pub alias_arn: String,
    /// The key it points at.
    pub target_key_id: String,
    /// When the alias was created (epoch seconds; for an alias made before
    /// kmsfs kept the date, its key's creation date).
    pub creation_date: i64,
    /// When it was last pointed at a key (epoch seconds).
    pub last_updated_date: i64,
}

/// Result of ScheduleKeyDeletion.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ScheduledDeletion {
    /// The key ARN (as AWS returns it).
    pub key_id: String,
    /// When the key will be deleted (epoch seconds).
    pub deletion_date: i64,
    /// Always PendingDeletion.
    pub key_state: KeyState,
    /// The waiting period.
    pub pending_window_in_days: u32,
}

/// Result of GetParametersForImport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportParameters {
    /// The key ARN.
    pub key_id: String,
    /// Opaque token to give back to ImportKeyMaterial.
    pub import_token: Vec<u8>,
    /// RSA public key (X.509 SubjectPublicKeyInfo DER) to wrap the material under.
    pub public_key: Vec<u8>,
    /// Until when the token and key are accepted (epoch seconds).
    pub parameters_valid_to: i64,
}

/// First bytes of an import token (then version 1, keystore id, key id, token id).
const IMPORT_TOKEN_MAGIC: [u8; 4] = *b"KMSt";
const IMPORT_TOKEN_LEN: usize = 4 + 1 + 16 + 16 + 16;

/// Result of GetKeyRotationStatus.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyRotationStatus {
    /// The key ARN.
    pub key_id: String,
    /// Whether automatic rotation is on.
    pub key_rotation_enabled: bool,
    /// The automatic rotation period.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation_period_in_days: Option<u32>,
    /// When the next automatic rotation is due (epoch seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_rotation_date: Option<i64>,
}

/// One entry of ListKeyRotations.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyRotation {
    /// The key id.
    pub key_id: String,
    /// When the new material was made (epoch seconds).
    pub rotation_date: i64,
    /// ON_DEMAND or AUTOMATIC.
    pub rotation_type: model::RotationType,
    /// The material version the rotation created (kmsfs extension).
    pub key_material_version: u32,
    /// The same as AWS names it (the trail's `keyMaterialId`).
    pub key_material_id: String,
}

/// Parses a policy document and, unless bypassed, refuses one that would not
/// allow `caller` kms:PutKeyPolicy (it could never change it again).
fn parse_checked(
    caller: &Caller,
    document: &str,
    bypass_lockout_check: bool,
) -> Result<serde_json::Value, KmsError> {
    let (p, value) = KeyPolicy::parse(document).map_err(KmsError::into_malformed_policy)?;
    if !bypass_lockout_check
        && !p.allows(
            caller,
            &Requester::of(caller),
            Operation::PutKeyPolicy,
            None,
        )
    {
        return Err(KmsError::invalid_with(
            ValidationCode::PolicyLockout,
            format!(
                "the new key policy will not allow you (uid {}) to update the key policy in the \
                 future (kms:PutKeyPolicy); add a statement that allows it, or pass \
                 --bypass-policy-lockout-safety-check if that is what you want",
                caller.uid
            ),
        ));
    }
    Ok(value)
}

/// An alias that another change repointed between the authorization and
/// the update.
fn changed_meanwhile(alias_name: &str) -> KmsError {
    KmsError::invalid(format!(
        "{alias_name} was changed by another request while this one was authorized; nothing \
         was done: try again"
    ))
}

/// Refuses an alias where AWS takes only a key id or key ARN (rotation,
/// key policies, tags): NotFoundException, as AWS answers.
fn refuse_alias(key_ref: &str) -> Result<(), KmsError> {
    if model::names_alias(key_ref) {
        return Err(KmsError::not_found(Missing::AliasNotAccepted {
            given: key_ref.to_string(),
        }));
    }
    Ok(())
}

fn check_policy_name(name: &str) -> Result<(), KmsError> {
    if name == policy::POLICY_NAME {
        Ok(())
    } else {
        Err(KmsError::not_found(Missing::PolicyName {
            name: name.to_string(),
        }))
    }
}

impl LocalKeyStore {
    /// CreateKey: a new Enabled key with fresh material.
    pub fn create_key(&self, caller: &Caller, description: &str) -> Result<KeyMetadata, KmsError> {
        self.admin(
            Admin {
                op: Operation::CreateKey,
                caller,
                key: None,
                also: None,
                grant: None,
                request: json!({ "description": description, "origin": "AWS_KMS" }),
            },
            || {
                self.update(|s, now| {
                    let k = KeyRecord::generate(description, now)?;
                    let meta = k.metadata(&self.arn_prefix());
                    s.keys.insert(k.key_id.clone(), k);
                    Ok(meta)
                })
            },
            |m| (Some(m.key_id.clone()), Some(json!({ "keyMetadata": m }))),
        )
    }

    /// ListKeys, in creation order.
    pub fn list_keys(&self, caller: &Caller) -> Result<Vec<KeyListEntry>, KmsError> {
        self.admin(
            Admin {
                op: Operation::ListKeys,
                caller,
                key: None,
                also: None,
                grant: None,
                request: json!({}),
            },
            || {
                let snap = self.fresh_snapshot()?;
                let mut keys: Vec<&KeyRecord> = snap.state.keys.values().collect();
                keys.sort_by(|a, b| {
                    (a.creation_date, &a.key_id).cmp(&(b.creation_date, &b.key_id))
                });
                Ok(keys
                    .into_iter()
                    .map(|k| KeyListEntry {
                        key_id: k.key_id.clone(),
                        key_arn: self.key_arn(&k.key_id),
                    })
                    .collect())
            },
            |_| (None, None),
        )
    }

    /// The metadata of every key, in creation order (for readable listings).
    pub fn list_key_metadata(&self, caller: &Caller) -> Result<Vec<KeyMetadata>, KmsError> {
        let snap = self.fresh_snapshot()?;
        self.list_keys(caller)?
            .iter()
            .filter_map(|e| snap.state.keys.get(&e.key_id))
            .map(|k| Ok(k.metadata(&self.arn_prefix())))
            .collect()
    }

    /// EnableKey.
    pub fn enable_key(&self, caller: &Caller, key_id: &str) -> Result<(), KmsError> {
        self.admin(
            Admin {
                op: Operation::EnableKey,
                caller,
                key: Some(key_id),
                also: None,
                grant: None,
                request: json!({ "keyId": key_id }),
            },
            || self.update(|s, _| resolve_mut(s, &self.ids(), key_id)?.enable()),
            |_| (None, None),
        )
    }

    /// UpdateKeyDescription.
    pub fn update_key_description(
        &self,
        caller: &Caller,
        key_id: &str,
        description: &str,
    ) -> Result<(), KmsError> {
        self.admin(
            Admin {
                op: Operation::UpdateKeyDescription,
                caller,
                key: Some(key_id),
                also: None,
                grant: None,
                request: json!({ "keyId": key_id, "description": description }),
            },
            || {
                refuse_alias(key_id)?;
                model::validate_description(description)?;
                self.update(|s, _| {
                    resolve_mut(s, &self.ids(), key_id)?.description = description.to_string();
                    Ok(())
                })
            },
            |_| (None, None),
        )
    }

    /// TagResource: adds or replaces tags (at most `MAX_TAGS` per key).
    pub fn tag_resource(
        &self,
        caller: &Caller,
        key_id: &str,
        tags: &[(String, String)],
    ) -> Result<(), KmsError> {
        let request: serde_json::Map<String, serde_json::Value> =
            tags.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        self.admin(
            Admin {
                op: Operation::TagResource,
                caller,
                key: Some(key_id),
                also: None,
                grant: None,
                request: json!({ "keyId": key_id, "tags": request }),
            },
            || {
                refuse_alias(key_id)?;
                for (k, v) in tags {
                    model::validate_tag(k, v)?;
                }
                self.update(|s, _| {
                    let k = resolve_mut(s, &self.ids(), key_id)?;
                    let mut t = k.tags.clone();
                    t.extend(tags.iter().cloned());
                    if t.len() > model::MAX_TAGS {
                        return Err(KmsError::invalid_with(
                            ValidationCode::LimitExceeded,
                            format!("a key has at most {} tags", model::MAX_TAGS),
                        ));
                    }
                    k.tags = t;
                    Ok(())
                })
            },
            |_| (None, None),
        )
    }

    /// UntagResource: removes tags by key (absent ones are no error).
    pub fn untag_resource(
        &self,
        caller: &Caller,
        key_id: &str,
        tag_keys: &[String],
    ) -> Result<(), KmsError> {
        self.admin(
            Admin {
                op: Operation::UntagResource,
                caller,
                key: Some(key_id),
                also: None,
                grant: None,
                request: json!({ "keyId": key_id, "tagKeys": tag_keys }),
            },
            || {
                refuse_alias(key_id)?;
                self.update(|s, _| {
                    let k = resolve_mut(s, &self.ids(), key_id)?;
                    for t in tag_keys {
                        k.tags.remove(t);
                    }
                    Ok(())
                })
            },
            |_| (None, None),
        )
    }

    /// ListResourceTags: the key's tags, sorted by key.
    pub fn list_resource_tags(
        &self,
        caller: &Caller,
        key_id: &str,
    ) -> Result<Vec<(String, String)>, KmsError> {
        self.admin(
            Admin {
                op: Operation::ListResourceTags,
                caller,
                key: Some(key_id),
                also: None,
                grant: None,
                request: json!({ "keyId": key_id }),
            },
            || {
                refuse_alias(key_id)?;
                let snap = self.fresh_snapshot()?;
                let k = resolve(&snap.state, &self.ids(), key_id)?;
                Ok(k.tags.iter().map(|(a, b)| (a.clone(), b.clone())).collect())
            },
            |_| (None, None),
        )
    }

    /// ListKeyPolicies: the names of the key's policies (only `default`).
    pub fn list_key_policies(
        &self,
        caller: &Caller,
        key_id: &str,
    ) -> Result<Vec<String>, KmsError> {
        self.admin(
            Admin {
                op: Operation::ListKeyPolicies,
                caller,
                key: Some(key_id),
                also: None,
                grant: None,
                request: json!({ "keyId": key_id }),
            },
            || {
                refuse_alias(key_id)?;
                let snap = self.fresh_snapshot()?;
                resolve(&snap.state, &self.ids(), key_id)?;
                Ok(vec![policy::POLICY_NAME.to_string()])
            },
            |_| (None, None),
        )
    }

    /// DisableKey.
    pub fn disable_key(&self, caller: &Caller, key_id: &str) -> Result<(), KmsError> {
        self.admin(
            Admin {
                op: Operation::DisableKey,
                caller,
                key: Some(key_id),
                also: None,
                grant: None,
                request: json!({ "keyId": key_id }),
            },
            || self.update(|s, _| resolve_mut(s, &self.ids(), key_id)?.disable()),
            |_| (None, None),
        )
    }

    /// ScheduleKeyDeletion with a waiting period of 7 to 30 days (default 30).
    pub fn schedule_key_deletion(
        &self,
        caller: &Caller,
        key_id: &str,
        pending_window_in_days: Option<u32>,
    ) -> Result<ScheduledDeletion, KmsError> {
        self.admin(
            Admin {
                op: Operation::ScheduleKeyDeletion,
                caller,
                key: Some(key_id),
                also: None,
                grant: None,
                request: json!({ "keyId": key_id, "pendingWindowInDays": pending_window_in_days }),
            },
            || {
                let days = pending_window_in_days.unwrap_or(model::MAX_PENDING_WINDOW_DAYS);
                self.update(|s, now| {
                    let k = resolve_mut(s, &self.ids(), key_id)?;
                    let deletion_date = k.schedule_deletion(days, now)?;
                    Ok(ScheduledDeletion {
                        key_id: self.key_arn(&k.key_id),
                        deletion_date,
                        key_state: k.state,
                        pending_window_in_days: days,
                    })
                })
            },
            |d| (None, Some(json!({ "keyId": d.key_id, "deletionDate": crate::kms::audit::time::format(d.deletion_date), "keyState": "PendingDeletion", "pendingWindowInDays": d.pending_window_in_days }))),
        )
    }

    /// CreateKey with an origin: AWS_KMS (fresh material, Enabled) or EXTERNAL
    /// (no material, PendingImport until ImportKeyMaterial).
    pub fn create_key_with_origin(
        &self,
        caller: &Caller,
        description: &str,
        origin: KeyOrigin,
    ) -> Result<KeyMetadata, KmsError> {
        if origin == KeyOrigin::Kms {
            return self.create_key(caller, description);
        }
        self.admin(
            Admin {
                op: Operation::CreateKey,
                caller,
                key: None,
                also: None,
                grant: None,
                request: json!({ "description": description, "origin": "EXTERNAL" }),
            },
            || {
                self.update(|s, now| {
                    let k = KeyRecord::new_external(description, now)?;
                    let meta = k.metadata(&self.arn_prefix());
                    s.keys.insert(k.key_id.clone(), k);
                    Ok(meta)
                })
            },
            |m| (Some(m.key_id.clone()), Some(json!({ "keyMetadata": m }))),
        )
    }

    /// GetParametersForImport: a fresh RSA wrapping key (RSA_2048, RSA_3072 or
    /// RSA_4096, algorithm RSAES_OAEP_SHA_256) and token, valid for 24 hours.
    /// Replaces earlier parameters of the key.
    pub fn get_parameters_for_import(
        &self,
        caller: &Caller,
        key_id: &str,
        wrapping_algorithm: &str,
        wrapping_key_spec: &str,
    ) -> Result<ImportParameters, KmsError> {
        self.admin(
            Admin {
                op: Operation::GetParametersForImport,
                caller,
                key: Some(key_id),
                also: None,
                grant: None,
                request: json!({ "keyId": key_id, "wrappingAlgorithm": wrapping_algorithm, "wrappingKeySpec": wrapping_key_spec }),
            },
            || {
                if wrapping_algorithm != "RSAES_OAEP_SHA_256" {
                    return Err(KmsError::invalid(format!(
                        "WrappingAlgorithm {wrapping_algorithm:?} is not supported; use RSAES_OAEP_SHA_256"
                    )));
                }
                let bits = match wrapping_key_spec {
                    "RSA_2048" => 2048,
                    "RSA_3072" => 3072,
                    "RSA_4096" => 4096,
                    other => {
                        return Err(KmsError::invalid(format!(
                            "WrappingKeySpec {other:?} is not supported; use RSA_2048, RSA_3072 or RSA_4096"
                        )));
                    }
                };
                // Check the key first (no RSA key generation for nothing), then generate
                // outside the keystore lock: it can take a second for RSA_4096.
                {
                    let snap = self.fresh_snapshot()?;
                    let k = resolve(&snap.state, &self.ids(), key_id)?;
                    k.clone().set_import_params(model::ImportParams {
                        token_id: String::new(),
                        wrapping_key: SecretBytes::new(Vec::new()),
                        wrapping_key_spec: String::new(),
                        valid_to: 0,
                    })?;
                }
                let crypto_err = |e: crate::crypto::CryptoError| {
                    KmsError::internal(format!("cannot make the import wrapping key: {e}"))
                };
                let rsa = crate::crypto::RsaUnwrapKey::generate(bits).map_err(crypto_err)?;
                let public_key = rsa.public_key_der().map_err(crypto_err)?;
                let wrapping_key = rsa.to_pkcs8().map_err(crypto_err)?;
                let token_id = crate::crypto::random_array::<16>().map_err(crypto_err)?;
                self.update(|s, now| {
                    let k = resolve_mut(s, &self.ids(), key_id)?;
                    let valid_to = now + model::IMPORT_PARAMETERS_VALIDITY_SECS;
                    k.set_import_params(model::ImportParams {
                        token_id: hex(&token_id),
                        wrapping_key,
                        wrapping_key_spec: wrapping_key_spec.to_string(),
                        valid_to,
                    })?;
                    let key_uuid = uuid::Uuid::parse_str(&k.key_id)
                        .map_err(|_| KmsError::internal("stored key id is not a UUID".into()))?;
                    let mut import_token = Vec::with_capacity(IMPORT_TOKEN_LEN);
                    import_token.extend_from_slice(&IMPORT_TOKEN_MAGIC);
                    import_token.push(1);
                    import_token.extend_from_slice(&self.keystore_id);
                    import_token.extend_from_slice(key_uuid.as_bytes());
                    import_token.extend_from_slice(&token_id);
                    Ok(ImportParameters {
                        key_id: self.key_arn(&k.key_id),
                        import_token,
                        public_key,
                        parameters_valid_to: valid_to,
                    })
                })
            },
            |p| (None, Some(json!({ "keyId": p.key_id, "parametersValidTo": crate::kms::audit::time::format(p.parameters_valid_to) }))),
        )
    }

    /// ImportKeyMaterial: unwraps `encrypted_key_material` (RSAES-OAEP-SHA-256
    /// under the public key of the parameters `import_token` names) and makes
    /// it the key's material, expiring at `valid_to` when given.
    pub fn import_key_material(
        &self,
        caller: &Caller,
        key_id: &str,
        import_token: &[u8],
        encrypted_key_material: &[u8],
        valid_to: Option<i64>,
    ) -> Result<(), KmsError> {
        self.admin(
            Admin {
                op: Operation::ImportKeyMaterial,
                caller,
                key: Some(key_id),
                also: None,
                grant: None,
                request: json!({ "keyId": key_id, "validTo": valid_to.map(crate::kms::audit::time::format), "expirationModel": if valid_to.is_some() { "KEY_MATERIAL_EXPIRES" } else { "KEY_MATERIAL_DOES_NOT_EXPIRE" } }),
            },
            || {
                let bad_token = || {
                    KmsError::invalid_with(
                        ValidationCode::InvalidImportToken,
                        "the import token is malformed or was issued for another key \
                         or keystore; use the token get-parameters-for-import returned for this key"
                            .into(),
                    )
                };
                if import_token.len() != IMPORT_TOKEN_LEN
                    || import_token[..4] != IMPORT_TOKEN_MAGIC
                    || import_token[4] != 1
                    || import_token[5..21] != self.keystore_id
                {
                    return Err(bad_token());
                }
                self.update(|s, now| {
                    let k = resolve_mut(s, &self.ids(), key_id)?;
                    let key_uuid = uuid::Uuid::parse_str(&k.key_id)
                        .map_err(|_| KmsError::internal("stored key id is not a UUID".into()))?;
                    if import_token[21..37] != key_uuid.as_bytes()[..] {
                        return Err(bad_token());
                    }
                    let params = k.import.as_ref().ok_or_else(bad_token)?;
                    let rsa = crate::crypto::RsaUnwrapKey::from_pkcs8(params.wrapping_key.expose())
                        .map_err(|_| KmsError::corrupt("stored import wrapping key is unusable".into()))?;
                    let material = rsa.unwrap(encrypted_key_material).map_err(|_| {
                        KmsError::invalid_ciphertext(
                            "the encrypted key material does not decrypt with this token's wrapping key; \
                             wrap it with RSAES_OAEP_SHA_256 under the PublicKey from the same \
                             get-parameters-for-import"
                                .into(),
                        )
                    })?;
                    k.import_material(&hex(&import_token[37..]), material, valid_to, now)
                })
            },
            |_| (None, None),
        )
    }

    /// DeleteImportedKeyMaterial: the key becomes PendingImport; its
    /// ciphertexts decrypt again once the same material is imported.
    pub fn delete_imported_key_material(
        &self,
        caller: &Caller,
        key_id: &str,
    ) -> Result<(), KmsError> {
        self.admin(
            Admin {
                op: Operation::DeleteImportedKeyMaterial,
                caller,
                key: Some(key_id),
                also: None,
                grant: None,
                request: json!({ "keyId": key_id }),
            },
            || self.update(|s, _| resolve_mut(s, &self.ids(), key_id)?.delete_imported_material()),
            |_| (None, None),
        )
    }

    /// RotateKeyOnDemand: new key material becomes current; old versions stay
    /// for decryption. Returns the key id and the new material version.
    pub fn rotate_key_on_demand(
        &self,
        caller: &Caller,
        key_id: &str,
    ) -> Result<(String, u32), KmsError> {
        self.admin(
            Admin {
                op: Operation::RotateKeyOnDemand,
                caller,
                key: Some(key_id),
                also: None,
                grant: None,
                request: json!({ "keyId": key_id }),
            },
            || {
                self.update(|s, now| {
                    let k = resolve_mut(s, &self.ids(), key_id)?;
                    let v = k.rotate(model::RotationType::OnDemand, now)?;
                    Ok((k.key_id.clone(), v))
                })
            },
            |(k, v)| {
                (
                    Some(k.clone()),
                    Some(json!({ "keyId": k, "keyMaterialId": v.to_string() })),
                )
            },
        )
    }

    /// EnableKeyRotation: automatic rotation every 90 to 2560 days (default 365).
    pub fn enable_key_rotation(
        &self,
        caller: &Caller,
        key_id: &str,
        rotation_period_in_days: Option<u32>,
    ) -> Result<(), KmsError> {
        self.admin(
            Admin {
                op: Operation::EnableKeyRotation,
                caller,
                key: Some(key_id),
                also: None,
                grant: None,
                request: json!({ "keyId": key_id, "rotationPeriodInDays": rotation_period_in_days }),
            },
            || {
                refuse_alias(key_id)?;
                let days = rotation_period_in_days.unwrap_or(model::DEFAULT_ROTATION_PERIOD_DAYS);
                self.update(|s, now| {
                    resolve_mut(s, &self.ids(), key_id)?.enable_rotation(days, now)
                })
            },
            |_| (None, None),
        )
    }

    /// DisableKeyRotation.
    pub fn disable_key_rotation(&self, caller: &Caller, key_id: &str) -> Result<(), KmsError> {
        self.admin(
            Admin {
                op: Operation::DisableKeyRotation,
                caller,
                key: Some(key_id),
                also: None,
                grant: None,
                request: json!({ "keyId": key_id }),
            },
            || {
                refuse_alias(key_id)?;
                self.update(|s, _| resolve_mut(s, &self.ids(), key_id)?.disable_rotation())
            },
            |_| (None, None),
        )
    }

    /// GetKeyRotationStatus.
    pub fn get_key_rotation_status(
        &self,
        caller: &Caller,
        key_id: &str,
    ) -> Result<KeyRotationStatus, KmsError> {
        self.admin(
            Admin {
                op: Operation::GetKeyRotationStatus,
                caller,
                key: Some(key_id),
                also: None,
                grant: None,
                request: json!({ "keyId": key_id }),
            },
            || {
                refuse_alias(key_id)?;
                let snap = self.fresh_snapshot()?;
                let k = resolve(&snap.state, &self.ids(), key_id)?;
                Ok(KeyRotationStatus {
                    key_id: self.key_arn(&k.key_id),
                    key_rotation_enabled: k.rotation_period_days.is_some(),
                    rotation_period_in_days: k.rotation_period_days,
                    next_rotation_date: k.next_rotation,
                })
            },
            |_| (None, None),
        )
    }

    /// ListKeyRotations: every rotation the key has had, oldest first.
    pub fn list_key_rotations(
        &self,
        caller: &Caller,
        key_id: &str,
    ) -> Result<Vec<KeyRotation>, KmsError> {
        self.admin(
            Admin {
                op: Operation::ListKeyRotations,
                caller,
                key: Some(key_id),
                also: None,
                grant: None,
                request: json!({ "keyId": key_id }),
            },
            || {
                let snap = self.fresh_snapshot()?;
                let k = resolve(&snap.state, &self.ids(), key_id)?;
                let mut v: Vec<KeyRotation> = k
                    .materials
                    .iter()
                    .filter_map(|m| {
                        m.rotation.map(|t| KeyRotation {
                            key_id: k.key_id.clone(),
                            rotation_date: m.created,
                            rotation_type: t,
                            key_material_version: m.version,
                            key_material_id: m.version.to_string(),
                        })
                    })
                    .collect();
                v.sort_by_key(|r| r.key_material_version);
                Ok(v)
            },
            |_| (None, None),
        )
    }

    /// PutKeyPolicy with the lockout safety check: a document that would
    /// not let `caller` put a policy again is refused (as AWS).
    pub fn put_key_policy(
        &self,
        caller: &Caller,
        key_id: &str,
        policy_name: &str,
        document: &str,
    ) -> Result<(), KmsError> {
        self.put_key_policy_checked(caller, key_id, policy_name, document, false)
    }

    /// PutKeyPolicy: validates and attaches a policy document (JSON text).
    /// Unless `bypass_lockout_check`, a document that would leave `caller`
    /// without `kms:PutKeyPolicy` on the key is refused (AWS's lockout
    /// safety check). From the command line a policy cannot stop the
    /// keystore's owner (see docs/KEYSTORE.md); at a server it can.
    pub fn put_key_policy_checked(
        &self,
        caller: &Caller,
        key_id: &str,
        policy_name: &str,
        document: &str,
        bypass_lockout_check: bool,
    ) -> Result<(), KmsError> {
        let request = json!({
            "keyId": key_id,
            "policyName": policy_name,
            "policy": serde_json::from_str::<serde_json::Value>(document)
                .unwrap_or_else(|_| json!(document)),
            "bypassPolicyLockoutSafetyCheck": bypass_lockout_check,
        });
        self.admin(
            Admin {
                op: Operation::PutKeyPolicy,
                caller,
                key: Some(key_id),
                also: None,
                grant: None,
                request,
            },
            || {
                refuse_alias(key_id)?;
                check_policy_name(policy_name)?;
                let value = parse_checked(caller, document, bypass_lockout_check)?;
                self.update(|s, _| {
                    let k = resolve_mut(s, &self.ids(), key_id)?;
                    if k.state == KeyState::PendingDeletion {
                        return Err(KmsError::InvalidState {
                            key_id: k.key_id.clone(),
                            state: k.state,
                            problem: StateProblem::PolicyOfPendingDeletion,
                        });
                    }
                    k.policy = Some(value);
                    Ok(())
                })
            },
            |_| (None, None),
        )
    }

    /// CreateKey with a key policy attached from the start (checked like
    /// PutKeyPolicy, lockout safety check included).
    pub fn create_key_with_policy(
        &self,
        caller: &Caller,
        description: &str,
        origin: KeyOrigin,
        document: &str,
        bypass_lockout_check: bool,
    ) -> Result<KeyMetadata, KmsError> {
        let request = json!({
            "description": description,
            "origin": if origin == KeyOrigin::Kms { "AWS_KMS" } else { "EXTERNAL" },
            "policy": serde_json::from_str::<serde_json::Value>(document)
                .unwrap_or_else(|_| json!(document)),
            "bypassPolicyLockoutSafetyCheck": bypass_lockout_check,
        });
        self.admin(
            Admin {
                op: Operation::CreateKey,
                caller,
                key: None,
                also: None,
                grant: None,
                request,
            },
            || {
                let value = parse_checked(caller, document, bypass_lockout_check)?;
                self.update(|s, now| {
                    let mut k = match origin {
                        KeyOrigin::Kms => KeyRecord::generate(description, now)?,
                        KeyOrigin::External => KeyRecord::new_external(description, now)?,
                    };
                    k.policy = Some(value);
                    let meta = k.metadata(&self.arn_prefix());
                    s.keys.insert(k.key_id.clone(), k);
                    Ok(meta)
                })
            },
            |m| (Some(m.key_id.clone()), Some(json!({ "keyMetadata": m }))),
        )
    }

    /// CreateKey with everything the protocol's request may carry: an
    /// origin, a key policy (checked like PutKeyPolicy unless bypassed)
    /// and tags, made in one change.
    pub fn create_key_full(
        &self,
        caller: &Caller,
        description: &str,
        origin: KeyOrigin,
        policy: Option<(&str, bool)>,
        tags: &[(String, String)],
    ) -> Result<KeyMetadata, KmsError> {
        let tag_map: serde_json::Map<String, serde_json::Value> =
            tags.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        let mut request = json!({
            "description": description,
            "origin": if origin == KeyOrigin::Kms { "AWS_KMS" } else { "EXTERNAL" },
        });
        if let Some((document, bypass)) = policy {
            request["policy"] = serde_json::from_str::<serde_json::Value>(document)
                .unwrap_or_else(|_| json!(document));
            request["bypassPolicyLockoutSafetyCheck"] = json!(bypass);
        }
        if !tags.is_empty() {
            request["tags"] = json!(tag_map);
        }
        self.admin(
            Admin {
                op: Operation::CreateKey,
                caller,
                key: None,
                also: None,
                grant: None,
                request,
            },
            || {
                let value = match policy {
                    Some((document, bypass)) => Some(parse_checked(caller, document, bypass)?),
                    None => None,
                };
                for (k, v) in tags {
                    model::validate_tag(k, v)?;
                }
                let tags: std::collections::BTreeMap<String, String> =
                    tags.iter().cloned().collect();
                if tags.len() > model::MAX_TAGS {
                    return Err(KmsError::invalid_with(
                        ValidationCode::LimitExceeded,
                        format!("a key has at most {} tags", model::MAX_TAGS),
                    ));
                }
                self.update(|s, now| {
                    let mut k = match origin {
                        KeyOrigin::Kms => KeyRecord::generate(description, now)?,
                        KeyOrigin::External => KeyRecord::new_external(description, now)?,
                    };
                    k.policy = value;
                    k.tags = tags;
                    let meta = k.metadata(&self.arn_prefix());
                    s.keys.insert(k.key_id.clone(), k);
                    Ok(meta)
                })
            },
            |m| (Some(m.key_id.clone()), Some(json!({ "keyMetadata": m }))),
        )
    }

    /// The key id that `key` (id, ARN or alias) names, if any. Reads the
    /// state only: no record, no policy check (for reading the audit trail,
    /// whose reader holds the keystore anyway).
    pub fn resolve_key_id(&self, key: &str) -> Option<String> {
        let snap = self.snapshot();
        resolve(&snap.state, &self.ids(), key)
            .ok()
            .map(|k| k.key_id.clone())
    }

    /// GetKeyPolicy: the attached document, or the default one.
    pub fn get_key_policy(
        &self,
        caller: &Caller,
        key_id: &str,
        policy_name: &str,
    ) -> Result<serde_json::Value, KmsError> {
        self.admin(
            Admin {
                op: Operation::GetKeyPolicy,
                caller,
                key: Some(key_id),
                also: None,
                grant: None,
                request: json!({ "keyId": key_id, "policyName": policy_name }),
            },
            || {
                check_policy_name(policy_name)?;
                let snap = self.fresh_snapshot()?;
                let k = resolve(&snap.state, &self.ids(), key_id)?;
                Ok(k.policy
                    .clone()
                    .unwrap_or_else(policy::default_policy_document))
            },
            |_| (None, None),
        )
    }

    /// CancelKeyDeletion: the key becomes Disabled. Returns its ARN.
    pub fn cancel_key_deletion(&self, caller: &Caller, key_id: &str) -> Result<String, KmsError> {
        self.admin(
            Admin {
                op: Operation::CancelKeyDeletion,
                caller,
                key: Some(key_id),
                also: None,
                grant: None,
                request: json!({ "keyId": key_id }),
            },
            || {
                self.update(|s, _| {
                    let k = resolve_mut(s, &self.ids(), key_id)?;
                    k.cancel_deletion()?;
                    Ok(self.key_arn(&k.key_id))
                })
            },
            |_| (None, None),
        )
    }

    /// CreateAlias (user aliases: the reserved prefixes are refused).
    /// Needs kms:CreateAlias on the key it will name.
    pub fn create_alias(
        &self,
        caller: &Caller,
        alias_name: &str,
        target_key_id: &str,
    ) -> Result<(), KmsError> {
        self.admin_keys(
            Admin {
                op: Operation::CreateAlias,
                caller,
                key: Some(target_key_id),
                also: None,
                grant: None,
                request: json!({ "aliasName": alias_name, "targetKeyId": target_key_id }),
            },
            |checked| {
                self.point_alias(alias_name, target_key_id, &checked, |s, id| {
                    s.create_alias(alias_name, id, false)
                })
            },
            |_| (None, None),
        )
    }

    /// UpdateAlias. Needs kms:UpdateAlias on the key the alias names now
    /// and on the key it will name (as AWS).
    pub fn update_alias(
        &self,
        caller: &Caller,
        alias_name: &str,
        target_key_id: &str,
    ) -> Result<(), KmsError> {
        self.admin_keys(
            Admin {
                op: Operation::UpdateAlias,
                caller,
                key: Some(target_key_id),
                also: Some(alias_name),
                grant: None,
                request: json!({ "aliasName": alias_name, "targetKeyId": target_key_id }),
            },
            |checked| {
                self.point_alias(alias_name, target_key_id, &checked, |s, id| {
                    s.update_alias(alias_name, id)
                })
            },
            |_| (None, None),
        )
    }

    /// Checks a user alias name, then applies `f` with the key id that
    /// `target_key_id` resolves to, in one update, provided the target and
    /// the alias's current key are still the ones authorized (`checked`):
    /// otherwise another change came in between, and nothing is done.
    fn point_alias(
        &self,
        alias_name: &str,
        target_key_id: &str,
        checked: &Checked,
        f: impl FnOnce(&mut StoreState, &str) -> Result<(), KmsError>,
    ) -> Result<(), KmsError> {
        // The default alias may be moved (the model refuses to create it).
        model::validate_alias_name(alias_name, alias_name == model::DEFAULT_ALIAS)?;
        if model::names_alias(target_key_id) {
            return Err(KmsError::invalid(format!(
                "TargetKeyId {target_key_id} is an alias: an alias points at a key, named by \
                 its key id or key ARN"
            )));
        }
        self.update(|s, now| {
            let created = !s.aliases.contains_key(alias_name);
            let id = resolve(s, &self.ids(), target_key_id)?.key_id.clone();
            let target_moved = checked.key.as_deref() != Some(id.as_str());
            let alias_moved =
                checked.also.is_some() && s.aliases.get(alias_name) != checked.also.as_ref();
            if target_moved || alias_moved {
                return Err(changed_meanwhile(alias_name));
            }
            f(s, &id)?;
            s.touch_alias(alias_name, now, created);
            Ok(())
        })
    }

    /// DeleteAlias. Needs kms:DeleteAlias on the key the alias names.
    pub fn delete_alias(&self, caller: &Caller, alias_name: &str) -> Result<(), KmsError> {
        self.admin_keys(
            Admin {
                op: Operation::DeleteAlias,
                caller,
                key: Some(alias_name),
                also: None,
                grant: None,
                request: json!({ "aliasName": alias_name }),
            },
            |checked| {
                model::validate_alias_name(alias_name, false)?;
                self.update(|s, _| {
                    if checked.key.is_some() && s.aliases.get(alias_name) != checked.key.as_ref() {
                        return Err(changed_meanwhile(alias_name));
                    }
                    s.delete_alias(alias_name)
                })
            },
            |_| (None, None),
        )
    }

    /// ListAliases, optionally only those of one key.
    pub fn list_aliases(
        &self,
        caller: &Caller,
        key_id: Option<&str>,
    ) -> Result<Vec<AliasListEntry>, KmsError> {
        self.admin(
            Admin {
                op: Operation::ListAliases,
                caller,
                key: None,
                also: None,
                grant: None,
                request: json!({ "keyId": key_id }),
            },
            || {
                let snap = self.fresh_snapshot()?;
                let only = match key_id {
                    Some(k) => Some(resolve(&snap.state, &self.ids(), k)?.key_id.clone()),
                    None => None,
                };
                Ok(snap
                    .state
                    .aliases
                    .iter()
                    .filter(|(_, t)| only.as_ref().is_none_or(|o| o == *t))
                    .map(|(name, t)| {
                        let dates =
                            snap.state
                                .alias_dates
                                .get(name)
                                .copied()
                                .unwrap_or_else(|| {
                                    let made =
                                        snap.state.keys.get(t).map_or(0, |k| k.creation_date);
                                    model::AliasDates {
                                        created: made,
                                        updated: made,
                                    }
                                });
                        AliasListEntry {
                            alias_name: name.clone(),
                            alias_arn: self.alias_arn(name),
                            target_key_id: t.clone(),
                            creation_date: dates.created,
                            last_updated_date: dates.updated,
                        }
                    })
                    .collect())
            },
            |_| (None, None),
        )
    }

    /// The key aliased `alias/kmsfs/default`, created (with its alias) if absent,
    /// as AWS creates `aws/ebs` on first use. Returns its key id.
    pub fn ensure_default_key(&self, caller: &Caller) -> Result<String, KmsError> {
        let snap = self.fresh_snapshot()?;
        if let Some(id) = snap.state.aliases.get(model::DEFAULT_ALIAS) {
            return Ok(id.clone());
        }
        const DESCRIPTION: &str = "Default key for kmsfs mounts (created automatically)";
        self.admin(
            Admin {
                op: Operation::CreateKey,
                caller,
                key: None,
                also: None,
                grant: None,
                request: json!({ "description": DESCRIPTION, "alias": model::DEFAULT_ALIAS }),
            },
            || {
                self.update(|s, now| {
                    if let Some(id) = s.aliases.get(model::DEFAULT_ALIAS) {
                        return Ok(id.clone()); // another process made it meanwhile
                    }
                    let k = KeyRecord::generate(DESCRIPTION, now)?;
                    let id = k.key_id.clone();
                    s.keys.insert(id.clone(), k);
                    s.create_alias(model::DEFAULT_ALIAS, &id, true)?;
                    s.touch_alias(model::DEFAULT_ALIAS, now, true);
                    Ok(id)
                })
            },
            |id| (Some(id.clone()), None),
        )
    }
}
