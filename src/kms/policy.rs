//! Key policies: an AWS-shaped JSON document per key, parsed and validated once,
//! evaluated (`authorize`) on every cryptographic operation for the caller's uid/gid.
//! Explicit Deny wins, then any Allow, else deny. A key without a policy allows
//! every caller (the keystore's file permissions and root key are the boundary).
#![forbid(unsafe_code)]

use serde::Deserialize;
use serde_json::Value;

use super::audit::Operation;
use super::{Caller, KmsError};

/// Longest policy document, in bytes (as AWS KMS).
pub const MAX_POLICY_LEN: usize = 32 * 1024;
/// The only policy name (as AWS KMS).
pub const POLICY_NAME: &str = "default";

/// The document `get-key-policy` shows for a key without a policy.
pub fn default_policy_document() -> Value {
    serde_json::json!({
        "Version": "2012-10-17",
        "Id": "kmsfs-default",
        "Statement": [{
            "Sid": "Anyone who can open the keystore may use the key",
            "Effect": "Allow",
            "Principal": "*",
            "Action": "kms:*",
            "Resource": "*"
        }]
    })
}

/// Who a statement is about.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Principal {
    Anyone,
    Uid(u32),
    Gid(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    Allow,
    Deny,
}

#[derive(Debug, Clone)]
struct Statement {
    effect: Effect,
    principals: Vec<Principal>,
    /// Action patterns: `kms:Decrypt`, `kms:GenerateDataKey*`, `kms:*`, `*`.
    actions: Vec<String>,
}

/// A parsed, validated key policy.
#[derive(Debug, Clone)]
pub struct KeyPolicy {
    statements: Vec<Statement>,
}

// Unknown fields are refused, not ignored: a misspelt "condition" or an
// unsupported "NotAction" would otherwise widen what the policy allows.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct RawPolicy {
    /// Kept for AWS compatibility; not interpreted.
    #[serde(default)]
    #[allow(dead_code)]
    version: Option<Value>,
    /// Kept for AWS compatibility; not interpreted.
    #[serde(default)]
    #[allow(dead_code)]
    id: Option<Value>,
    /// Parsed per statement below, so that an error names the field.
    statement: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct RawStatement {
    /// Kept for AWS compatibility; not interpreted.
    #[serde(default)]
    #[allow(dead_code)]
    sid: Option<Value>,
    effect: String,
    principal: Value,
    action: OneOrMany<String>,
    #[serde(default)]
    resource: Option<OneOrMany<String>>,
    #[serde(default)]
    condition: Option<Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(t) => vec![t],
            OneOrMany::Many(v) => v,
        }
    }
}

/// Every action name a key policy can govern.
fn governed_actions() -> impl Iterator<Item = &'static str> {
    Operation::ALL.into_iter().map(Operation::action)
}

fn invalid(why: impl std::fmt::Display) -> KmsError {
    KmsError::invalid(format!("the key policy is invalid: {why}"))
}

fn parse_principal(s: &str) -> Result<Principal, KmsError> {
    if s == "*" {
        return Ok(Principal::Anyone);
    }
    let num = |v: &str| {
        v.parse::<u32>()
            .map_err(|_| invalid(format!("principal {s:?}: expected uid:N, gid:N or *")))
    };
    if let Some(v) = s.strip_prefix("uid:") {
        Ok(Principal::Uid(num(v)?))
    } else if let Some(v) = s.strip_prefix("gid:") {
        Ok(Principal::Gid(num(v)?))
    } else {
        Err(invalid(format!(
            "principal {s:?}: expected uid:N, gid:N or *"
        )))
    }
}

fn principals(v: &Value) -> Result<Vec<Principal>, KmsError> {
    match v {
        Value::String(s) if s == "*" => Ok(vec![Principal::Anyone]),
        Value::Object(m) => {
            let mut out = Vec::new();
            for (k, v) in m {
                if k != "kmsfs" {
                    return Err(invalid(format!(
                        "principal type {k:?} is not supported; use {{\"kmsfs\": [\"uid:N\", \"gid:N\"]}} or \"*\""
                    )));
                }
                let list: Vec<String> = match v {
                    Value::String(s) => vec![s.clone()],
                    Value::Array(a) => a
                        .iter()
                        .map(|x| {
                            x.as_str()
                                .map(str::to_string)
                                .ok_or_else(|| invalid("principals must be strings"))
                        })
                        .collect::<Result<_, _>>()?,
                    _ => return Err(invalid("principals must be a string or a list of strings")),
                };
                for p in list {
                    out.push(parse_principal(&p)?);
                }
            }
            if out.is_empty() {
                return Err(invalid("a statement names no principal"));
            }
            Ok(out)
        }
        _ => Err(invalid(
            "Principal must be \"*\" or {\"kmsfs\": [\"uid:N\", \"gid:N\", \"*\"]}",
        )),
    }
}

fn pattern_matches(pattern: &str, action: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => action.starts_with(prefix),
        None => pattern == action,
    }
}

impl KeyPolicy {
    /// Parses and validates a policy document (the text `put-key-policy` takes).
    pub fn parse(text: &str) -> Result<(Self, Value), KmsError> {
        if text.len() > MAX_POLICY_LEN {
            return Err(invalid(format!(
                "it is {} bytes; at most {MAX_POLICY_LEN} are allowed",
                text.len()
            )));
        }
        let value: Value =
            serde_json::from_str(text).map_err(|e| invalid(format!("not JSON: {e}")))?;
        let policy = Self::from_value(&value)?;
        Ok((policy, value))
    }

    /// Builds the evaluable form of a stored (already validated) document.
    pub fn from_value(value: &Value) -> Result<Self, KmsError> {
        let raw: RawPolicy = serde_json::from_value(value.clone()).map_err(invalid)?;
        let raw_statements = match raw.statement {
            Value::Array(a) => a,
            one @ Value::Object(_) => vec![one],
            _ => return Err(invalid("Statement must be an object or a list of objects")),
        };
        let mut statements = Vec::new();
        for (i, st) in raw_statements.into_iter().enumerate() {
            let st: RawStatement = serde_json::from_value(st)
                .map_err(|e| invalid(format!("Statement {}: {e}", i + 1)))?;
            let effect = match st.effect.as_str() {
                "Allow" => Effect::Allow,
                "Deny" => Effect::Deny,
                e => return Err(invalid(format!("Effect {e:?} must be Allow or Deny"))),
            };
            if st.condition.is_some() {
                return Err(invalid("Condition is not supported"));
            }
            if let Some(r) = st.resource
                && r.into_vec().iter().any(|r| r != "*")
            {
                return Err(invalid(
                    "Resource must be \"*\" (the key the policy is attached to)",
                ));
            }
            let actions = st.action.into_vec();
            for a in &actions {
                if !(a == "*" || governed_actions().any(|x| pattern_matches(a, x))) {
                    return Err(invalid(format!(
                        "Action {a:?} names no operation a key policy governs ({})",
                        governed_actions().collect::<Vec<_>>().join(", ")
                    )));
                }
            }
            statements.push(Statement {
                effect,
                principals: principals(&st.principal)?,
                actions,
            });
        }
        if statements.is_empty() {
            return Err(invalid("it has no Statement"));
        }
        Ok(Self { statements })
    }

    /// A policy that allows nothing: stands in for a stored document that this
    /// release no longer accepts, so the key fails closed.
    pub fn deny_all() -> Self {
        Self {
            statements: Vec::new(),
        }
    }

    /// Explicit Deny wins, then any Allow; otherwise denied.
    pub fn allows(&self, caller: &Caller, op: Operation) -> bool {
        let action = op.action();
        let applies = |s: &&Statement| {
            s.actions
                .iter()
                .any(|a| a == "*" || pattern_matches(a, action))
                && s.principals.iter().any(|p| match p {
                    Principal::Anyone => true,
                    Principal::Uid(u) => *u == caller.uid,
                    Principal::Gid(g) => *g == caller.gid,
                })
        };
        let mut matching = self.statements.iter().filter(applies);
        let mut allowed = false;
        for s in matching.by_ref() {
            match s.effect {
                Effect::Deny => return false,
                Effect::Allow => allowed = true,
            }
        }
        allowed
    }
}

/// Decides whether `caller` may perform `op` with the key `key_id`, whose
/// policy is `policy`. A key without a policy allows every caller (the
/// keystore's file permissions and root key are the boundary); with one,
/// explicit Deny wins, then Allow, else the call is denied.
pub(crate) fn authorize(
    caller: &Caller,
    key_id: &str,
    policy: Option<&KeyPolicy>,
    op: Operation,
) -> Result<(), KmsError> {
    match policy {
        Some(p) if !p.allows(caller, op) => Err(KmsError::AccessDenied {
            key_id: key_id.to_string(),
            action: op,
            principal: (caller.uid, caller.gid),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(uid: u32, gid: u32) -> Caller {
        Caller { uid, gid, pid: 1 }
    }

    fn policy(statements: &str) -> KeyPolicy {
        KeyPolicy::parse(&format!(
            r#"{{"Version":"2012-10-17","Statement":{statements}}}"#
        ))
        .unwrap()
        .0
    }

    #[test]
    fn every_operation_is_a_known_action() {
        for op in Operation::ALL {
            // A statement naming exactly this action parses, and grants it alone.
            let p = policy(&format!(
                r#"[{{"Effect":"Allow","Principal":"*","Action":"{}"}}]"#,
                op.action()
            ));
            for other in Operation::ALL {
                assert_eq!(
                    p.allows(&caller(1, 1), other),
                    other == op,
                    "{op:?} {other:?}"
                );
            }
            assert_eq!(op.action(), format!("kms:{}", op.as_str()));
        }
    }

    #[test]
    fn default_document_allows_everyone() {
        let p = KeyPolicy::from_value(&default_policy_document()).unwrap();
        assert!(p.allows(&caller(1234, 99), Operation::Decrypt));
        assert!(p.allows(&caller(0, 0), Operation::ReEncryptTo));
    }

    #[test]
    fn allow_by_uid_or_gid_and_default_deny() {
        let p = policy(
            r#"[{"Effect":"Allow","Principal":{"kmsfs":["uid:1000","gid:50"]},"Action":["kms:Decrypt","kms:GenerateDataKey*"]}]"#,
        );
        assert!(p.allows(&caller(1000, 1), Operation::Decrypt));
        assert!(p.allows(&caller(7, 50), Operation::GenerateDataKeyWithoutPlaintext));
        assert!(
            !p.allows(&caller(1000, 1), Operation::Encrypt),
            "action not granted"
        );
        assert!(
            !p.allows(&caller(0, 0), Operation::Decrypt),
            "root is not exempt"
        );
    }

    #[test]
    fn explicit_deny_wins_over_allow() {
        let p = policy(
            r#"[{"Effect":"Allow","Principal":"*","Action":"kms:*"},
                {"Effect":"Deny","Principal":{"kmsfs":"uid:666"},"Action":"kms:Decrypt"}]"#,
        );
        assert!(p.allows(&caller(1, 1), Operation::Decrypt));
        assert!(!p.allows(&caller(666, 1), Operation::Decrypt));
        assert!(p.allows(&caller(666, 1), Operation::Encrypt));
    }

    #[test]
    fn bad_documents_are_refused() {
        for bad in [
            "not json",
            r#"{"Statement":[]}"#,
            r#"{"Statement":[{"Effect":"Maybe","Principal":"*","Action":"kms:*"}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:CreateKey"}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:x"},"Action":"kms:*"}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Principal":{"kmsfs":"uid:x"},"Action":"kms:*"}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Principal":{"kmsfs":[]},"Action":"kms:*"}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"arn:other"}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Condition":{}}]}"#,
        ] {
            assert!(
                matches!(KeyPolicy::parse(bad), Err(KmsError::Validation { .. })),
                "{bad}"
            );
        }
        // Unknown fields are refused, and the error names them.
        for (bad, field) in [
            (
                r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","condition":{"x":1}}]}"#,
                "condition",
            ),
            (
                r#"{"Statement":[{"Effect":"Allow","Principal":"*","NotAction":"kms:Decrypt","Action":"kms:*"}]}"#,
                "NotAction",
            ),
            (
                r#"{"Statement":{"Effect":"Allow","NotPrincipal":"*","Principal":"*","Action":"kms:*"}}"#,
                "NotPrincipal",
            ),
            (
                r#"{"statement":[],"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*"}]}"#,
                "statement",
            ),
        ] {
            let e = KeyPolicy::parse(bad).unwrap_err();
            assert!(matches!(e, KmsError::Validation { .. }), "{bad}");
            assert!(e.to_string().contains(&format!("`{field}`")), "{e}");
        }
        // Sid, Version and Id are accepted (and not interpreted).
        KeyPolicy::parse(
            r#"{"Version":"2012-10-17","Id":"x","Statement":[{"Sid":"s","Effect":"Allow","Principal":"*","Action":"kms:*"}]}"#,
        )
        .unwrap();
        let huge = format!(r#"{{"Statement":[],"x":"{}"}}"#, "a".repeat(MAX_POLICY_LEN));
        assert!(KeyPolicy::parse(&huge).is_err());
    }
}
