//! Resolving what a caller names (a key id, a key ARN, an alias or an alias
//! ARN) to the key record it stands for.
#![forbid(unsafe_code)]

use crate::kms::model::{self, ArnIds, KeyRecord, StoreState};
use crate::kms::{KmsError, Missing};

/// Finds a key by id, ARN (either form, `ArnIds`) or alias in `state`.
pub(super) fn resolve<'s>(
    state: &'s StoreState,
    ids: &ArnIds<'_>,
    key_ref: &str,
) -> Result<&'s KeyRecord, KmsError> {
    let mut name = key_ref;
    if key_ref.starts_with("arn:") {
        name = ids.resource(key_ref).ok_or_else(|| {
            KmsError::not_found(Missing::ForeignArn {
                arn: key_ref.to_string(),
                keystore_id: ids.keystore_id.to_string(),
            })
        })?;
        if let Some(id) = name.strip_prefix("key/") {
            name = id;
        } else if !name.starts_with(model::ALIAS_PREFIX) {
            return Err(KmsError::not_found(Missing::ArnNamesNothing {
                arn: key_ref.to_string(),
            }));
        }
    }
    let id = if name.starts_with(model::ALIAS_PREFIX) {
        state
            .aliases
            .get(name)
            .ok_or_else(|| {
                KmsError::not_found(Missing::Alias {
                    name: name.to_string(),
                })
            })?
            .as_str()
    } else {
        let u = uuid::Uuid::parse_str(name).map_err(|_| {
            KmsError::not_found(Missing::InvalidKeyId {
                given: name.to_string(),
            })
        })?;
        return state.keys.get(&u.hyphenated().to_string()).ok_or_else(|| {
            KmsError::not_found(Missing::Key {
                key_id: name.to_string(),
            })
        });
    };
    state.keys.get(id).ok_or_else(|| {
        KmsError::not_found(Missing::AliasTarget {
            key_id: id.to_string(),
            alias: name.to_string(),
        })
    })
}

pub(super) fn resolve_mut<'s>(
    state: &'s mut StoreState,
    ids: &ArnIds<'_>,
    key_ref: &str,
) -> Result<&'s mut KeyRecord, KmsError> {
    let id = resolve(state, ids, key_ref)?.key_id.clone();
    state
        .keys
        .get_mut(&id)
        .ok_or_else(|| KmsError::internal("key vanished".into()))
}
