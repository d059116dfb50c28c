//! Aliases: `alias/NAME` pointing at keys, their name rules and reserved
//! prefixes.
#![forbid(unsafe_code)]

use super::*;
use crate::kms::{Existing, KeyState, KmsError, Missing, StateProblem};

impl StoreState {
    /// CreateAlias (`internal` allows the reserved prefixes). New names
    /// take AWS's characters, without the ':' that older releases allowed.
    pub fn create_alias(
        &mut self,
        name: &str,
        key_id: &str,
        internal: bool,
    ) -> Result<(), KmsError> {
        validate_alias_name(name, internal)?;
        if name.contains(':') {
            return Err(alias_pattern_error(name));
        }
        self.check_alias_target(key_id)?;
        if self.aliases.contains_key(name) {
            return Err(KmsError::AlreadyExists {
                what: Existing::Alias {
                    name: name.to_string(),
                },
            });
        }
        self.aliases.insert(name.to_string(), key_id.to_string());
        Ok(())
    }

    /// UpdateAlias: points an existing alias at another key. Of the
    /// reserved names only the default key's alias may move (retiring the
    /// default key: new backing directories and `seal` follow it).
    pub fn update_alias(&mut self, name: &str, key_id: &str) -> Result<(), KmsError> {
        validate_alias_name(name, name == DEFAULT_ALIAS)?;
        self.check_alias_target(key_id)?;
        match self.aliases.get_mut(name) {
            Some(t) => {
                *t = key_id.to_string();
                Ok(())
            }
            None => Err(no_alias(name)),
        }
    }

    /// Records that alias `name` was created (`created`) or pointed at a
    /// key at `now`.
    pub fn touch_alias(&mut self, name: &str, now: i64, created: bool) {
        let d = self
            .alias_dates
            .entry(name.to_string())
            .or_insert(AliasDates {
                created: now,
                updated: now,
            });
        if created {
            d.created = now;
        }
        d.updated = now;
    }

    /// DeleteAlias.
    pub fn delete_alias(&mut self, name: &str) -> Result<(), KmsError> {
        validate_alias_name(name, false)?;
        self.alias_dates.remove(name);
        match self.aliases.remove(name) {
            Some(_) => Ok(()),
            None => Err(no_alias(name)),
        }
    }

    fn check_alias_target(&self, key_id: &str) -> Result<(), KmsError> {
        match self.keys.get(key_id) {
            None => Err(KmsError::not_found(Missing::Key {
                key_id: key_id.to_string(),
            })),
            Some(k) if k.state == KeyState::PendingDeletion => {
                Err(k.invalid_state(StateProblem::AliasToPendingDeletion))
            }
            Some(_) => Ok(()),
        }
    }
}

/// The ValidationException for a new alias name with a ':' (AWS: alias
/// names hold only letters, digits, '/', '_' and '-').
fn alias_pattern_error(name: &str) -> KmsError {
    KmsError::invalid(format!(
        "1 validation error detected: Value '{name}' at 'aliasName' failed to satisfy \
         constraint: Member must satisfy regular expression pattern: ^alias/[a-zA-Z0-9/_-]+$"
    ))
}

/// Checks an alias name: `alias/` then 1+ of `[a-zA-Z0-9:/_-]`, at most 256
/// bytes; the reserved prefixes only when `internal`. (`create_alias`
/// refuses ':' in new names.)
pub fn validate_alias_name(name: &str, internal: bool) -> Result<(), KmsError> {
    let rest = name.strip_prefix(ALIAS_PREFIX).unwrap_or("");
    if rest.is_empty()
        || name.len() > MAX_ALIAS_LEN
        || !rest
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b':' | b'/' | b'_' | b'-'))
    {
        return Err(KmsError::invalid(format!(
            "alias name {name:?} is invalid: it must be alias/ followed by letters, digits, \
             ':', '/', '_' or '-', at most {MAX_ALIAS_LEN} characters in all"
        )));
    }
    if !internal && RESERVED_ALIAS_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return Err(KmsError::invalid(format!(
            "alias name {name:?} is reserved (alias/aws/ and alias/kmsfs/ belong to the service); \
             choose another name"
        )));
    }
    Ok(())
}

fn no_alias(name: &str) -> KmsError {
    KmsError::not_found(Missing::Alias {
        name: name.to_string(),
    })
}
