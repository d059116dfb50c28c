//! Grants on `LocalKeyStore`: CreateGrant, ListGrants, ListRetirableGrants,
//! RetireGrant and RevokeGrant, each an administration through `admin`
//! (authorized by `authz::decide`, audited), and the check of grant tokens.
#![forbid(unsafe_code)]

use serde_json::json;

use super::LocalKeyStore;
use super::audit::Admin;
use super::resolve::resolve;
use crate::crypto::hex;
use crate::kms::audit::Operation;
use crate::kms::model::{self, GrantConstraints, GrantRecord};
use crate::kms::policy;
use crate::kms::{Caller, KmsError, Missing, ValidationCode};

/// What CreateGrant asks.
#[derive(Debug, Clone, Default)]
pub struct GrantRequest {
    /// Key id or key ARN.
    pub key_id: String,
    /// Who the grant allows.
    pub grantee: String,
    /// Who may retire it.
    pub retiring: Option<String>,
    /// AWS operation names.
    pub operations: Vec<String>,
    /// Encryption context constraints.
    pub constraints: Option<GrantConstraints>,
    /// A name.
    pub name: Option<String>,
}

fn dry_run_error() -> KmsError {
    KmsError::invalid_with(
        ValidationCode::DryRun,
        "The request would have succeeded, but the DryRun flag is set.".into(),
    )
}

fn invalid_token() -> KmsError {
    KmsError::invalid_with(
        ValidationCode::InvalidGrantToken,
        "the grant token is not one this keystore issued for a grant that exists".into(),
    )
}

fn no_grant(grant: &str) -> KmsError {
    KmsError::invalid_with(
        ValidationCode::InvalidGrantId,
        format!("grant {grant} does not exist on this key"),
    )
}

/// Refuses a grant principal naming an access key this keystore does not
/// hold (its id is random: a typo would match no one, silently).
fn held_access_keys<'p>(
    s: &model::StoreState,
    principals: impl Iterator<Item = &'p String>,
) -> Result<(), KmsError> {
    for p in principals {
        if let Some(id) = p.strip_prefix("access-key:")
            && !s.access_keys.contains_key(id)
        {
            return Err(KmsError::invalid(format!(
                "the grant principal {p} names no access key of this keystore \
                 (`kmsfs access-key list`)"
            )));
        }
    }
    Ok(())
}

impl LocalKeyStore {
    /// CreateGrant: returns (grant id, grant token). With `dry_run`, stops
    /// after the authorization with DryRunOperation.
    pub fn create_grant(
        &self,
        caller: &Caller,
        r: &GrantRequest,
        dry_run: bool,
    ) -> Result<(String, String), KmsError> {
        self.admin(
            Admin {
                op: Operation::CreateGrant,
                caller,
                key: Some(&r.key_id),
                also: None,
                grant: None,
                request: json!({
                    "keyId": r.key_id, "granteePrincipal": r.grantee,
                    "retiringPrincipal": r.retiring, "operations": r.operations,
                    "constraints": r.constraints, "name": r.name, "dryRun": dry_run,
                }),
            },
            || {
                if model::names_alias(&r.key_id) {
                    return Err(KmsError::not_found(Missing::AliasNotAccepted {
                        given: r.key_id.clone(),
                    }));
                }
                let grantee = policy::parse_grant_principal(&r.grantee)?;
                let retiring = match &r.retiring {
                    Some(p) => Some(policy::parse_grant_principal(p)?),
                    None => None,
                };
                let operations = model::parse_grant_operations(&r.operations)?;
                let constraints = r
                    .constraints
                    .clone()
                    .filter(|c| *c != GrantConstraints::default());
                if dry_run {
                    let snap = self.fresh_snapshot()?;
                    resolve(&snap.state, &self.ids(), &r.key_id)?;
                    return Err(dry_run_error());
                }
                let id = crate::crypto::random_array::<32>()
                    .map_err(|e| KmsError::internal(e.to_string()))?;
                let token = crate::crypto::random_array::<16>()
                    .map_err(|e| KmsError::internal(e.to_string()))?;
                self.update(|s, now| {
                    let key_id = resolve(s, &self.ids(), &r.key_id)?.key_id.clone();
                    held_access_keys(s, std::iter::once(&grantee).chain(retiring.as_ref()))?;
                    // The same name, grantee, operations and constraints:
                    // the grant that exists (AWS's idempotent CreateGrant).
                    if let Some(name) = &r.name
                        && let Some(g) = s.grants.values().find(|g| {
                            g.key_id == key_id
                                && g.name.as_ref() == Some(name)
                                && g.grantee == grantee
                                && g.operations == operations
                                && g.constraints == constraints
                        })
                    {
                        return Ok((g.grant_id.clone(), g.grant_token()));
                    }
                    if s.grants_of(&key_id).len() >= model::MAX_GRANTS_PER_KEY {
                        return Err(KmsError::invalid_with(
                            ValidationCode::LimitExceeded,
                            format!("a key has at most {} grants", model::MAX_GRANTS_PER_KEY),
                        ));
                    }
                    let g = GrantRecord {
                        grant_id: hex(&id),
                        key_id,
                        name: r.name.clone(),
                        creation_date: now,
                        grantee: grantee.clone(),
                        retiring: retiring.clone(),
                        operations: operations.clone(),
                        constraints: constraints.clone(),
                        issuer_uid: caller.uid,
                        token: hex(&token),
                    };
                    let out = (g.grant_id.clone(), g.grant_token());
                    s.grants.insert(g.grant_id.clone(), g);
                    Ok(out)
                })
            },
            |(id, _)| (None, Some(json!({ "grantId": id }))),
        )
    }

    /// ListGrants: the grants of a key, optionally one grant or one grantee.
    pub fn list_grants(
        &self,
        caller: &Caller,
        key_id: &str,
        grant_id: Option<&str>,
        grantee: Option<&str>,
    ) -> Result<Vec<GrantRecord>, KmsError> {
        self.admin(
            Admin {
                op: Operation::ListGrants,
                caller,
                key: Some(key_id),
                also: None,
                grant: None,
                request: json!({ "keyId": key_id, "grantId": grant_id, "granteePrincipal": grantee }),
            },
            || {
                let snap = self.fresh_snapshot()?;
                let k = resolve(&snap.state, &self.ids(), key_id)?;
                Ok(snap
                    .state
                    .grants_of(&k.key_id)
                    .into_iter()
                    .filter(|g| grant_id.is_none_or(|id| g.grant_id == id))
                    .filter(|g| grantee.is_none_or(|p| g.grantee == p))
                    .cloned()
                    .collect())
            },
            |_| (None, None),
        )
    }

    /// ListRetirableGrants: the grants whose retiring principal is `retiring`.
    pub fn list_retirable_grants(
        &self,
        caller: &Caller,
        retiring: &str,
    ) -> Result<Vec<GrantRecord>, KmsError> {
        self.admin(
            Admin {
                op: Operation::ListRetirableGrants,
                caller,
                key: None,
                also: None,
                grant: None,
                request: json!({ "retiringPrincipal": retiring }),
            },
            || {
                let want = policy::parse_grant_principal(retiring)?;
                let snap = self.fresh_snapshot()?;
                let mut v: Vec<GrantRecord> = snap
                    .state
                    .grants
                    .values()
                    .filter(|g| g.retiring.as_deref() == Some(want.as_str()))
                    .cloned()
                    .collect();
                v.sort_by(|a, b| {
                    (a.creation_date, &a.grant_id).cmp(&(b.creation_date, &b.grant_id))
                });
                Ok(v)
            },
            |_| (None, None),
        )
    }

    /// The grant a RetireGrant names: by token, or by key and grant id.
    fn named_grant(
        &self,
        token: Option<&str>,
        key_id: Option<&str>,
        grant_id: Option<&str>,
    ) -> Result<(String, String), KmsError> {
        let snap = self.fresh_snapshot()?;
        let g = match (token, key_id, grant_id) {
            (Some(t), _, _) => {
                let (id, secret) = model::parse_grant_token(t)?;
                // A token of a grant that is gone is not valid any more.
                let g = snap.state.grants.get(id).ok_or_else(invalid_token)?;
                if !crate::crypto::constant_time_eq(g.token.as_bytes(), secret.as_bytes()) {
                    return Err(invalid_token());
                }
                g
            }
            (None, Some(k), Some(id)) => {
                let key = resolve(&snap.state, &self.ids(), k)?;
                snap.state
                    .grants
                    .get(id)
                    .filter(|g| g.key_id == key.key_id)
                    .ok_or_else(|| no_grant(id))?
            }
            _ => {
                return Err(KmsError::invalid(
                    "give GrantToken, or KeyId and GrantId".into(),
                ));
            }
        };
        Ok((g.key_id.clone(), g.grant_id.clone()))
    }

    /// RetireGrant (by its retiring principal, a grantee whose grant allows
    /// RetireGrant, or as a key policy or the boundary allows).
    pub fn retire_grant(
        &self,
        caller: &Caller,
        token: Option<&str>,
        key_id: Option<&str>,
        grant_id: Option<&str>,
        dry_run: bool,
    ) -> Result<(), KmsError> {
        let (key, id) = self.named_grant(token, key_id, grant_id)?;
        self.remove_grant(caller, Operation::RetireGrant, &key, &id, dry_run)
    }

    /// RevokeGrant (as a key policy or the boundary allows).
    pub fn revoke_grant(
        &self,
        caller: &Caller,
        key_id: &str,
        grant_id: &str,
        dry_run: bool,
    ) -> Result<(), KmsError> {
        if model::names_alias(key_id) {
            return Err(KmsError::not_found(Missing::AliasNotAccepted {
                given: key_id.to_string(),
            }));
        }
        let (key, id) = self.named_grant(None, Some(key_id), Some(grant_id))?;
        self.remove_grant(caller, Operation::RevokeGrant, &key, &id, dry_run)
    }

    fn remove_grant(
        &self,
        caller: &Caller,
        op: Operation,
        key_id: &str,
        grant_id: &str,
        dry_run: bool,
    ) -> Result<(), KmsError> {
        self.admin(
            Admin {
                op,
                caller,
                key: Some(key_id),
                also: None,
                grant: Some(grant_id),
                request: json!({ "keyId": key_id, "grantId": grant_id, "dryRun": dry_run }),
            },
            || {
                if dry_run {
                    return Err(dry_run_error());
                }
                self.update(|s, _| match s.grants.remove(grant_id) {
                    Some(_) => Ok(()),
                    None => Err(no_grant(grant_id)),
                })
            },
            |_| (None, None),
        )
    }

    /// Checks the grant tokens a request carries: each must be one this
    /// keystore issued for a grant that exists (InvalidGrantTokenException
    /// otherwise). Grants take effect at once here, so a valid token adds
    /// nothing to the decision.
    pub fn check_grant_tokens(&self, tokens: &[String]) -> Result<(), KmsError> {
        if tokens.is_empty() {
            return Ok(());
        }
        let snap = self.fresh_snapshot()?;
        for t in tokens {
            let (id, secret) = model::parse_grant_token(t)?;
            let ok = snap.state.grants.get(id).is_some_and(|g| {
                crate::crypto::constant_time_eq(g.token.as_bytes(), secret.as_bytes())
            });
            if !ok {
                return Err(invalid_token());
            }
        }
        Ok(())
    }
}
