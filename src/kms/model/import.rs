//! Imported key material (origin EXTERNAL): import parameters and tokens,
//! importing, deleting and expiring the material, and its digest.
#![forbid(unsafe_code)]

use super::*;
use crate::kms::{KeyOrigin, KeyState, KmsError, ValidationCode};

impl KeyRecord {
    fn require_external(&self, op: &str) -> Result<(), KmsError> {
        if self.origin != KeyOrigin::External {
            return Err(KmsError::invalid_with(
                ValidationCode::UnsupportedOperation,
                format!(
                    "{op} needs a key created with --origin EXTERNAL; key {} \
                 has origin AWS_KMS",
                    self.key_id
                ),
            ));
        }
        Ok(())
    }

    /// GetParametersForImport: records a wrapping key and token (valid 24 h).
    pub fn set_import_params(&mut self, params: ImportParams) -> Result<(), KmsError> {
        self.require_external("GetParametersForImport")?;
        if self.state != KeyState::PendingImport {
            return Err(self.wrong_state("GetParametersForImport", self.state));
        }
        self.import = Some(params);
        Ok(())
    }

    /// ImportKeyMaterial: installs unwrapped material as version 1 and makes
    /// the key Enabled. `token_id` must be the one the parameters carry, they
    /// must not have expired, and a re-import must bring the same material.
    pub fn import_material(
        &mut self,
        token_id: &str,
        material: SecretBytes,
        expires: Option<i64>,
        now: i64,
    ) -> Result<(), KmsError> {
        self.require_external("ImportKeyMaterial")?;
        if self.state != KeyState::PendingImport {
            return Err(self.wrong_state("ImportKeyMaterial", self.state));
        }
        let params = self.import.as_ref().ok_or_else(|| {
            KmsError::invalid_with(
                ValidationCode::InvalidImportToken,
                format!(
                    "key {} has no import parameters; run \
                 get-parameters-for-import first",
                    self.key_id
                ),
            )
        })?;
        if params.token_id != token_id {
            return Err(KmsError::invalid_with(
                ValidationCode::InvalidImportToken,
                "the import token is not the latest one issued for this key; \
                 use the token from the last get-parameters-for-import"
                    .into(),
            ));
        }
        if params.valid_to < now {
            return Err(KmsError::invalid_with(
                ValidationCode::ExpiredImportToken,
                "the import parameters have expired; run \
                 get-parameters-for-import again"
                    .into(),
            ));
        }
        if material.len() != crate::crypto::KEY_LEN {
            return Err(KmsError::invalid_with(
                ValidationCode::IncorrectKeyMaterial,
                format!(
                    "imported key material must be 32 bytes, got {}",
                    material.len()
                ),
            ));
        }
        if let Some(t) = expires
            && t <= now
        {
            return Err(KmsError::invalid("ValidTo must be in the future".into()));
        }
        let digest = material_digest(&self.key_id, &material);
        if let Some(d) = &self.imported_material_digest
            && !crate::crypto::constant_time_eq(d.as_bytes(), digest.as_bytes())
        {
            return Err(KmsError::invalid_with(
                ValidationCode::IncorrectKeyMaterial,
                format!(
                    "key {} had other key material before; a key can only \
                 ever hold the material first imported into it",
                    self.key_id
                ),
            ));
        }
        self.materials = vec![KeyMaterial {
            version: 1,
            material,
            created: now,
            expires,
            rotation: None,
        }];
        self.current_version = 1;
        self.state = KeyState::Enabled;
        self.import = None;
        self.imported_material_digest = Some(digest);
        Ok(())
    }

    /// DeleteImportedKeyMaterial: the material goes, the key waits for a
    /// re-import of the same material (PendingImport).
    pub fn delete_imported_material(&mut self) -> Result<(), KmsError> {
        self.require_external("DeleteImportedKeyMaterial")?;
        if self.state == KeyState::PendingDeletion {
            return Err(self.wrong_state("DeleteImportedKeyMaterial", self.state));
        }
        self.drop_material();
        Ok(())
    }

    pub(super) fn drop_material(&mut self) {
        self.materials.clear();
        self.current_version = 0;
        self.state = KeyState::PendingImport;
    }

    /// True when imported material has reached its ValidTo.
    pub fn material_expired(&self, now: i64) -> bool {
        self.origin == KeyOrigin::External
            && self.state != KeyState::PendingDeletion
            && self
                .materials
                .iter()
                .any(|m| m.expires.is_some_and(|t| t <= now))
    }
}

/// Identifies imported material without revealing it: SHA-256 over a label,
/// the key id and the material (hex).
fn material_digest(key_id: &str, material: &SecretBytes) -> String {
    crate::crypto::hex(&crate::crypto::sha256(&[
        b"kmsfs imported material v1\0",
        key_id.as_bytes(),
        material.expose(),
    ]))
}
