//! Key policies: an AWS-shaped JSON document per key, parsed and validated once,
//! evaluated (`KeyPolicy::allows`, from `service::authz`, the one
//! decision) on every key operation for the caller: principals
//! `uid:N`, `user:NAME`, `gid:N`, `group:NAME` (the caller's primary and
//! supplementary groups), `access-key:AKIA...` (a request to the protocol
//! server signed with that access key, whose signature verified) and `*`; conditions `StringEquals`/`StringLike` (also
//! `ForAnyValue:`/`ForAllValues:`) on `kms:EncryptionContext:KEY` and
//! `kms:EncryptionContextKeys`. Explicit Deny wins, then any Allow, else deny.
//! A key without a policy allows every caller of the command line and the
//! mount (the keystore's file permissions and root key are the boundary);
//! at a protocol server, only root and the keystore's owner.
#![forbid(unsafe_code)]

use serde::Deserialize;
use serde_json::Value;

use super::audit::{Operation, Requester};
use super::{AccessKeyId, Caller, EncryptionContext, KmsError, accounts};

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

/// What a key policy says of one operation for one caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// An Allow applies and no Deny.
    Allow,
    /// A Deny applies: nothing else can allow it.
    Deny,
    /// Neither: a grant may allow it.
    NoAllow,
}

/// Reads a grant's grantee or retiring principal: `uid:N`, `user:NAME`,
/// `gid:N`, `group:NAME`, `access-key:AKIA...` (as key policies name them;
/// names must exist), or an IAM user ARN `arn:aws:iam::ACCOUNT:user/NAME`,
/// read as `user:NAME`.
/// Returns the canonical form kept in the grant.
pub fn parse_grant_principal(s: &str) -> Result<String, KmsError> {
    let s = match s
        .strip_prefix("arn:aws:iam::")
        .and_then(|r| r.split_once(":user/"))
    {
        Some((_, name)) => format!("user:{name}"),
        None => s.to_string(),
    };
    match parse_principal(&s, true) {
        Ok(Principal::Anyone) | Err(_) => Err(KmsError::invalid(format!(
            "the grant principal {s:?} is not one kmsfs knows: {PRINCIPAL_FORMS} (not *), or \
             arn:aws:iam::ACCOUNT:user/NAME"
        ))),
        Ok(_) => Ok(s),
    }
}

/// True when grant principal `p` (from `parse_grant_principal`) is the
/// caller: its uid, one of its groups (unknown groups do not match), or the
/// access key that signed its request.
pub fn grant_principal_is(p: &str, caller: &Caller, requester: &Requester) -> bool {
    match parse_principal(p, false) {
        Ok(Principal::Uid(u)) => u == caller.uid,
        Ok(Principal::AccessKey(k)) => caller.access_key == Some(k),
        Ok(Principal::User(n)) => accounts::user_id(&n) == Some(caller.uid),
        Ok(Principal::Gid(g)) => requester.in_group(caller, g).unwrap_or(false),
        Ok(Principal::Group(n)) => {
            accounts::group_id(&n).is_some_and(|g| requester.in_group(caller, g).unwrap_or(false))
        }
        Ok(Principal::Anyone) | Err(_) => false,
    }
}

/// Who a statement is about.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Principal {
    Anyone,
    Uid(u32),
    Gid(u32),
    /// A user by name, resolved when evaluated.
    User(String),
    /// A group by name, resolved when evaluated.
    Group(String),
    /// An access key of the protocol server: requests it signed (whatever
    /// else names their uid and groups applies to them too).
    AccessKey(AccessKeyId),
}

/// How a condition compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compare {
    Equals,
    Like,
}

/// For a key with several values (`kms:EncryptionContextKeys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SetOp {
    /// Any of the values matches (also the meaning without a qualifier).
    AnyValue,
    /// Every value matches (true for no values, as AWS).
    AllValues,
}

/// What a condition looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CondKey {
    /// `kms:EncryptionContext:KEY`: the value of one pair.
    ContextValue(String),
    /// `kms:EncryptionContextKeys`: the keys of the context.
    ContextKeys,
}

#[derive(Debug, Clone)]
struct Condition {
    compare: Compare,
    set: SetOp,
    key: CondKey,
    values: Vec<String>,
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
    /// All must hold.
    conditions: Vec<Condition>,
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
    Operation::ALL
        .into_iter()
        .filter(|o| o.is_governed())
        .map(Operation::action)
}

fn invalid(why: impl std::fmt::Display) -> KmsError {
    KmsError::invalid(format!("the key policy is invalid: {why}"))
}

const PRINCIPAL_FORMS: &str =
    "expected uid:N, user:NAME, gid:N, group:NAME, access-key:AKIA... or *";

fn parse_principal(s: &str, check_names: bool) -> Result<Principal, KmsError> {
    if s == "*" {
        return Ok(Principal::Anyone);
    }
    let num = |v: &str| {
        v.parse::<u32>()
            .map_err(|_| invalid(format!("principal {s:?}: {PRINCIPAL_FORMS}")))
    };
    let name = |v: &str, known: Option<u32>, what: &str| {
        if v.is_empty() {
            Err(invalid(format!("principal {s:?}: {PRINCIPAL_FORMS}")))
        } else if check_names && known.is_none() {
            Err(invalid(format!(
                "principal {s:?}: there is no {what} {v:?} on this system"
            )))
        } else {
            Ok(v.to_string())
        }
    };
    if let Some(v) = s.strip_prefix("uid:") {
        Ok(Principal::Uid(num(v)?))
    } else if let Some(v) = s.strip_prefix("gid:") {
        Ok(Principal::Gid(num(v)?))
    } else if let Some(v) = s.strip_prefix("user:") {
        Ok(Principal::User(name(v, accounts::user_id(v), "user")?))
    } else if let Some(v) = s.strip_prefix("group:") {
        Ok(Principal::Group(name(v, accounts::group_id(v), "group")?))
    } else if let Some(v) = s.strip_prefix("access-key:") {
        AccessKeyId::parse(v)
            .map(Principal::AccessKey)
            .ok_or_else(|| {
                invalid(format!(
                    "principal {s:?}: an access key id is AKIA and 16 characters A-Z, 2-7"
                ))
            })
    } else {
        Err(invalid(format!("principal {s:?}: {PRINCIPAL_FORMS}")))
    }
}

fn strings(v: &Value, what: &str) -> Result<Vec<String>, KmsError> {
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(a) if !a.is_empty() => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| invalid(format!("{what} must be strings")))
            })
            .collect(),
        _ => Err(invalid(format!(
            "{what} must be a string or a non-empty list of strings"
        ))),
    }
}

/// Parses a `Condition` block; anything unknown is refused (ignoring it
/// would widen what an Allow grants or narrow what a Deny denies).
fn conditions(v: &Value) -> Result<Vec<Condition>, KmsError> {
    let Value::Object(ops) = v else {
        return Err(invalid("Condition must be an object"));
    };
    if ops.is_empty() {
        return Err(invalid("Condition is empty"));
    }
    let mut out = Vec::new();
    for (op, block) in ops {
        let (set, base) = match op.split_once(':') {
            Some(("ForAnyValue", b)) => (Some(SetOp::AnyValue), b),
            Some(("ForAllValues", b)) => (Some(SetOp::AllValues), b),
            Some(_) => {
                return Err(invalid(format!(
                    "condition operator {op:?} is not supported"
                )));
            }
            None => (None, op.as_str()),
        };
        let compare = match base {
            "StringEquals" => Compare::Equals,
            "StringLike" => Compare::Like,
            _ => {
                return Err(invalid(format!(
                    "condition operator {op:?} is not supported (StringEquals, StringLike, \
                     with ForAnyValue: or ForAllValues: for kms:EncryptionContextKeys)"
                )));
            }
        };
        let Value::Object(keys) = block else {
            return Err(invalid(format!("condition {op:?} must map keys to values")));
        };
        if keys.is_empty() {
            return Err(invalid(format!("condition {op:?} is empty")));
        }
        for (k, vals) in keys {
            let lower = k.to_ascii_lowercase();
            let key = if lower == "kms:encryptioncontextkeys" {
                CondKey::ContextKeys
            } else if lower.starts_with("kms:encryptioncontext:") && k.len() > 22 {
                CondKey::ContextValue(k[22..].to_string())
            } else {
                return Err(invalid(format!(
                    "condition key {k:?} is not supported (kms:EncryptionContext:KEY, \
                     kms:EncryptionContextKeys)"
                )));
            };
            if set.is_some() && key != CondKey::ContextKeys {
                return Err(invalid(format!(
                    "{op:?} applies to keys with several values (kms:EncryptionContextKeys), \
                     not {k:?}"
                )));
            }
            out.push(Condition {
                compare,
                set: set.unwrap_or(SetOp::AnyValue),
                key,
                values: strings(vals, &format!("the values of condition {op:?} {k:?}"))?,
            });
        }
    }
    Ok(out)
}

/// `*` any run of characters, `?` any one (StringLike).
fn glob(pattern: &str, s: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), s.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(sp) = star {
            pi = sp + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

impl Condition {
    fn holds(&self, ctx: Option<&EncryptionContext>) -> bool {
        let matches = |s: &str| {
            self.values.iter().any(|v| match self.compare {
                Compare::Equals => v == s,
                Compare::Like => glob(v, s),
            })
        };
        match &self.key {
            CondKey::ContextValue(k) => ctx.and_then(|c| c.0.get(k)).is_some_and(|v| matches(v)),
            CondKey::ContextKeys => {
                let keys: Vec<&String> = ctx.map(|c| c.0.keys().collect()).unwrap_or_default();
                match self.set {
                    SetOp::AnyValue => keys.iter().any(|k| matches(k)),
                    SetOp::AllValues => keys.iter().all(|k| matches(k)),
                }
            }
        }
    }
}

fn principals(v: &Value, check_names: bool) -> Result<Vec<Principal>, KmsError> {
    match v {
        Value::String(s) if s == "*" => Ok(vec![Principal::Anyone]),
        Value::Object(m) => {
            let mut out = Vec::new();
            for (k, v) in m {
                if k != "kmsfs" {
                    return Err(invalid(format!(
                        "principal type {k:?} is not supported; use {{\"kmsfs\": [\"uid:N\", \"user:NAME\", \"gid:N\", \"group:NAME\", \"access-key:AKIA...\"]}} or \"*\""
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
                    out.push(parse_principal(&p, check_names)?);
                }
            }
            if out.is_empty() {
                return Err(invalid("a statement names no principal"));
            }
            Ok(out)
        }
        _ => Err(invalid(
            "Principal must be \"*\" or {\"kmsfs\": [\"uid:N\", \"user:NAME\", \"gid:N\", \"group:NAME\", \"access-key:AKIA...\", \"*\"]}",
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
        let policy = Self::build(&value, true)?;
        Ok((policy, value))
    }

    /// Builds the evaluable form of a stored (already validated) document.
    /// User and group names are not checked against the system here: a
    /// name removed since the policy was put matches no one.
    pub fn from_value(value: &Value) -> Result<Self, KmsError> {
        Self::build(value, false)
    }

    fn build(value: &Value, check_names: bool) -> Result<Self, KmsError> {
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
            let conditions = match &st.condition {
                Some(c) => conditions(c)?,
                None => Vec::new(),
            };
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
                principals: principals(&st.principal, check_names)?,
                actions,
                conditions,
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

    /// Explicit Deny wins, then any Allow; otherwise denied. `requester`
    /// gives the supplementary groups: when they are unknown (also for a
    /// caller in another user namespace), a statement naming a group the
    /// caller's primary group is not applies if it is a Deny and not if it
    /// is an Allow (fail closed either way). A Deny naming a user also
    /// applies to a caller in a user namespace that user owns.
    pub fn allows(
        &self,
        caller: &Caller,
        requester: &Requester,
        op: Operation,
        ctx: Option<&EncryptionContext>,
    ) -> bool {
        self.verdict(caller, requester, op, ctx) == Verdict::Allow
    }

    /// What the policy says of `op` for the caller (as `allows`): an
    /// explicit Deny, an Allow, or neither (then a grant may allow it).
    pub fn verdict(
        &self,
        caller: &Caller,
        requester: &Requester,
        op: Operation,
        ctx: Option<&EncryptionContext>,
    ) -> Verdict {
        let action = op.action();
        let names = |s: &Statement, deny: bool| {
            s.principals.iter().any(|p| match p {
                Principal::Anyone => true,
                // For a Deny, a caller in a user namespace is also whoever
                // owns it (and the namespaces above it).
                Principal::Uid(u) => *u == caller.uid || (deny && requester.denied_as(*u)),
                Principal::User(n) => accounts::user_id(n)
                    .is_some_and(|u| u == caller.uid || (deny && requester.denied_as(u))),
                Principal::Gid(g) => requester.in_group(caller, *g).unwrap_or(deny),
                Principal::Group(n) => accounts::group_id(n)
                    .is_some_and(|g| requester.in_group(caller, g).unwrap_or(deny)),
                // Set only from a verified signature (server::auth).
                Principal::AccessKey(k) => caller.access_key == Some(*k),
            })
        };
        let applies = |s: &Statement| {
            s.actions
                .iter()
                .any(|a| a == "*" || pattern_matches(a, action))
                && names(s, s.effect == Effect::Deny)
                && s.conditions.iter().all(|c| c.holds(ctx))
        };
        let mut verdict = Verdict::NoAllow;
        for s in self.statements.iter().filter(|s| applies(s)) {
            match s.effect {
                Effect::Deny => return Verdict::Deny,
                Effect::Allow => verdict = Verdict::Allow,
            }
        }
        verdict
    }

    /// True when any statement names a group (then the caller's
    /// supplementary groups are needed to evaluate it).
    pub fn names_groups(&self) -> bool {
        self.statements.iter().any(|s| {
            s.principals
                .iter()
                .any(|p| matches!(p, Principal::Gid(_) | Principal::Group(_)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(uid: u32, gid: u32) -> Caller {
        Caller {
            uid,
            gid,
            pid: 0,
            access_key: None,
        }
    }

    fn groups(g: &[u32]) -> Requester {
        Requester {
            groups: Some(g.to_vec()),
            ..Requester::default()
        }
    }

    fn unknown_groups() -> Requester {
        Requester::default()
    }

    fn policy(statements: &str) -> KeyPolicy {
        KeyPolicy::parse(&format!(
            r#"{{"Version":"2012-10-17","Statement":{statements}}}"#
        ))
        .unwrap()
        .0
    }

    fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
        EncryptionContext(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn every_governed_operation_is_a_known_action() {
        for op in Operation::ALL.into_iter().filter(|o| o.is_governed()) {
            // A statement naming exactly this action parses, and grants it alone.
            let p = policy(&format!(
                r#"[{{"Effect":"Allow","Principal":"*","Action":"{}"}}]"#,
                op.action()
            ));
            for other in Operation::ALL {
                assert_eq!(
                    p.allows(&caller(1, 1), &groups(&[]), other, None),
                    other == op,
                    "{op:?} {other:?}"
                );
            }
            assert_eq!(op.action(), format!("kms:{}", op.as_str()));
        }
    }

    #[test]
    fn access_key_principals_name_the_key_that_signed() {
        let k1 = AccessKeyId::parse("AKIAAAAAAAAAAAAAAAA2").unwrap();
        let k2 = AccessKeyId::parse("AKIAAAAAAAAAAAAAAAA3").unwrap();
        let with = |k: Option<AccessKeyId>| Caller {
            access_key: k,
            ..caller(1000, 1000)
        };
        let p = policy(
            r#"[{"Effect":"Allow","Principal":{"kmsfs":"uid:1000"},"Action":"kms:Decrypt"},
                {"Effect":"Deny","Principal":{"kmsfs":"access-key:AKIAAAAAAAAAAAAAAAA3"},"Action":"kms:*"},
                {"Effect":"Allow","Principal":{"kmsfs":"access-key:AKIAAAAAAAAAAAAAAAA2"},"Action":"kms:Encrypt"}]"#,
        );
        let v = |k, op| p.verdict(&with(k), &groups(&[]), op, None);
        // The user's Allow holds for its access keys, save the denied one.
        assert_eq!(v(None, Operation::Decrypt), Verdict::Allow);
        assert_eq!(v(Some(k1), Operation::Decrypt), Verdict::Allow);
        assert_eq!(v(Some(k2), Operation::Decrypt), Verdict::Deny);
        // The key's Allow is the key's alone.
        assert_eq!(v(Some(k1), Operation::Encrypt), Verdict::Allow);
        assert_eq!(v(Some(k2), Operation::Encrypt), Verdict::Deny);
        assert_eq!(v(None, Operation::Encrypt), Verdict::NoAllow);
        // Grants name them the same way.
        let g = parse_grant_principal("access-key:AKIAAAAAAAAAAAAAAAA2").unwrap();
        assert!(grant_principal_is(&g, &with(Some(k1)), &groups(&[])));
        assert!(!grant_principal_is(&g, &with(Some(k2)), &groups(&[])));
        assert!(!grant_principal_is(&g, &with(None), &groups(&[])));
        for bad in [
            "access-key:",
            "access-key:AKIA",
            "access-key:akiaaaaaaaaaaaaaaaa2",
        ] {
            assert!(parse_grant_principal(bad).is_err(), "{bad}");
            assert!(
                KeyPolicy::parse(&format!(
                    r#"{{"Statement":[{{"Effect":"Allow","Principal":{{"kmsfs":"{bad}"}},"Action":"kms:*"}}]}}"#
                ))
                .is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn default_document_allows_everyone() {
        let p = KeyPolicy::from_value(&default_policy_document()).unwrap();
        assert!(p.allows(
            &caller(1234, 99),
            &unknown_groups(),
            Operation::Decrypt,
            None
        ));
        assert!(p.allows(&caller(0, 0), &groups(&[]), Operation::DisableKey, None));
    }

    /// One row: a policy, a caller (uid, primary gid, supplementary groups
    /// or None when unknown), an operation, a context, the decision.
    struct Row {
        why: &'static str,
        statements: &'static str,
        uid: u32,
        gid: u32,
        groups: Option<&'static [u32]>,
        op: Operation,
        ctx: &'static [(&'static str, &'static str)],
        allowed: bool,
    }

    const ALLOW_1000_OR_GID_50: &str = r#"[{"Effect":"Allow","Principal":{"kmsfs":["uid:1000","gid:50"]},"Action":["kms:Decrypt","kms:GenerateDataKey*"]}]"#;
    const ALLOW_ALL_DENY_GID_60: &str = r#"[{"Effect":"Allow","Principal":"*","Action":"kms:*"},
        {"Effect":"Deny","Principal":{"kmsfs":"gid:60"},"Action":"kms:Decrypt"}]"#;
    const ALLOW_ROOT_GROUP_BY_NAME: &str = r#"[{"Effect":"Allow","Principal":{"kmsfs":["group:root","user:root"]},"Action":"kms:Decrypt"}]"#;
    const CONTEXT_EQUALS: &str = r#"[{"Effect":"Allow","Principal":"*","Action":"kms:Decrypt",
        "Condition":{"StringEquals":{"kms:EncryptionContext:dept":["it","ops"]}}}]"#;
    const CONTEXT_LIKE_DENY: &str = r#"[{"Effect":"Allow","Principal":"*","Action":"kms:*"},
        {"Effect":"Deny","Principal":"*","Action":"kms:Decrypt",
         "Condition":{"StringLike":{"kms:EncryptionContext:path":"secret/*"}}}]"#;
    const CONTEXT_KEYS_ALL: &str = r#"[{"Effect":"Allow","Principal":"*","Action":"kms:Encrypt",
        "Condition":{"ForAllValues:StringEquals":{"kms:EncryptionContextKeys":["a","b"]}}}]"#;
    const CONTEXT_KEYS_ANY: &str = r#"[{"Effect":"Allow","Principal":"*","Action":"kms:Encrypt",
        "Condition":{"ForAnyValue:StringLike":{"kms:EncryptionContextKeys":"kmsfs:*"}}}]"#;

    #[test]
    fn evaluation_table() {
        use Operation::*;
        let rows = [
            Row {
                why: "uid allowed",
                statements: ALLOW_1000_OR_GID_50,
                uid: 1000,
                gid: 1,
                groups: Some(&[]),
                op: Decrypt,
                ctx: &[],
                allowed: true,
            },
            Row {
                why: "primary gid allowed",
                statements: ALLOW_1000_OR_GID_50,
                uid: 7,
                gid: 50,
                groups: Some(&[]),
                op: GenerateDataKeyWithoutPlaintext,
                ctx: &[],
                allowed: true,
            },
            Row {
                why: "supplementary gid allowed",
                statements: ALLOW_1000_OR_GID_50,
                uid: 7,
                gid: 8,
                groups: Some(&[9, 50]),
                op: Decrypt,
                ctx: &[],
                allowed: true,
            },
            Row {
                why: "groups unknown: a group Allow does not apply",
                statements: ALLOW_1000_OR_GID_50,
                uid: 7,
                gid: 8,
                groups: None,
                op: Decrypt,
                ctx: &[],
                allowed: false,
            },
            Row {
                why: "action not granted",
                statements: ALLOW_1000_OR_GID_50,
                uid: 1000,
                gid: 1,
                groups: Some(&[]),
                op: Encrypt,
                ctx: &[],
                allowed: false,
            },
            Row {
                why: "no statement matches; root is not exempt",
                statements: ALLOW_1000_OR_GID_50,
                uid: 0,
                gid: 0,
                groups: Some(&[]),
                op: Decrypt,
                ctx: &[],
                allowed: false,
            },
            Row {
                why: "wildcard action kms:* and principal *",
                statements: ALLOW_ALL_DENY_GID_60,
                uid: 5,
                gid: 5,
                groups: Some(&[]),
                op: ScheduleKeyDeletion,
                ctx: &[],
                allowed: true,
            },
            Row {
                why: "Deny by primary gid beats Allow",
                statements: ALLOW_ALL_DENY_GID_60,
                uid: 5,
                gid: 60,
                groups: Some(&[]),
                op: Decrypt,
                ctx: &[],
                allowed: false,
            },
            Row {
                why: "Deny by supplementary gid beats Allow (primary switched)",
                statements: ALLOW_ALL_DENY_GID_60,
                uid: 5,
                gid: 5,
                groups: Some(&[60]),
                op: Decrypt,
                ctx: &[],
                allowed: false,
            },
            Row {
                why: "groups unknown: a group Deny applies",
                statements: ALLOW_ALL_DENY_GID_60,
                uid: 5,
                gid: 5,
                groups: None,
                op: Decrypt,
                ctx: &[],
                allowed: false,
            },
            Row {
                why: "Deny is for Decrypt only",
                statements: ALLOW_ALL_DENY_GID_60,
                uid: 5,
                gid: 60,
                groups: Some(&[]),
                op: Encrypt,
                ctx: &[],
                allowed: true,
            },
            Row {
                why: "user:NAME",
                statements: ALLOW_ROOT_GROUP_BY_NAME,
                uid: 0,
                gid: 99,
                groups: Some(&[]),
                op: Decrypt,
                ctx: &[],
                allowed: true,
            },
            Row {
                why: "group:NAME by supplementary group",
                statements: ALLOW_ROOT_GROUP_BY_NAME,
                uid: 5,
                gid: 99,
                groups: Some(&[0]),
                op: Decrypt,
                ctx: &[],
                allowed: true,
            },
            Row {
                why: "neither user nor group by name",
                statements: ALLOW_ROOT_GROUP_BY_NAME,
                uid: 5,
                gid: 99,
                groups: Some(&[98]),
                op: Decrypt,
                ctx: &[],
                allowed: false,
            },
            Row {
                why: "context value equals one of the values",
                statements: CONTEXT_EQUALS,
                uid: 5,
                gid: 5,
                groups: Some(&[]),
                op: Decrypt,
                ctx: &[("dept", "ops")],
                allowed: true,
            },
            Row {
                why: "context value differs",
                statements: CONTEXT_EQUALS,
                uid: 5,
                gid: 5,
                groups: Some(&[]),
                op: Decrypt,
                ctx: &[("dept", "hr")],
                allowed: false,
            },
            Row {
                why: "context key missing",
                statements: CONTEXT_EQUALS,
                uid: 5,
                gid: 5,
                groups: Some(&[]),
                op: Decrypt,
                ctx: &[("other", "it")],
                allowed: false,
            },
            Row {
                why: "StringLike Deny matches",
                statements: CONTEXT_LIKE_DENY,
                uid: 5,
                gid: 5,
                groups: Some(&[]),
                op: Decrypt,
                ctx: &[("path", "secret/a/b")],
                allowed: false,
            },
            Row {
                why: "StringLike Deny does not match",
                statements: CONTEXT_LIKE_DENY,
                uid: 5,
                gid: 5,
                groups: Some(&[]),
                op: Decrypt,
                ctx: &[("path", "public/secret/")],
                allowed: true,
            },
            Row {
                why: "ForAllValues: every key listed",
                statements: CONTEXT_KEYS_ALL,
                uid: 5,
                gid: 5,
                groups: Some(&[]),
                op: Encrypt,
                ctx: &[("a", "1"), ("b", "2")],
                allowed: true,
            },
            Row {
                why: "ForAllValues: a key not listed",
                statements: CONTEXT_KEYS_ALL,
                uid: 5,
                gid: 5,
                groups: Some(&[]),
                op: Encrypt,
                ctx: &[("a", "1"), ("c", "2")],
                allowed: false,
            },
            Row {
                why: "ForAnyValue:StringLike: one key matches",
                statements: CONTEXT_KEYS_ANY,
                uid: 5,
                gid: 5,
                groups: Some(&[]),
                op: Encrypt,
                ctx: &[("x", "1"), ("kmsfs:file", "2")],
                allowed: true,
            },
            Row {
                why: "ForAnyValue: no context at all",
                statements: CONTEXT_KEYS_ANY,
                uid: 5,
                gid: 5,
                groups: Some(&[]),
                op: Encrypt,
                ctx: &[],
                allowed: false,
            },
        ];
        for r in rows {
            let p = policy(r.statements);
            let req = match r.groups {
                Some(g) => groups(g),
                None => unknown_groups(),
            };
            let c = ctx(r.ctx);
            assert_eq!(
                p.allows(&caller(r.uid, r.gid), &req, r.op, Some(&c)),
                r.allowed,
                "{}",
                r.why
            );
        }
    }

    #[test]
    fn glob_matching() {
        for (p, s, m) in [
            ("*", "", true),
            ("a*c", "abbbc", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*.txt", "x/y.txt", true),
            ("a*b*c", "a-b-x", false),
            ("abc", "abcd", false),
        ] {
            assert_eq!(glob(p, s), m, "{p} {s}");
        }
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
            r#"{"Statement":[{"Effect":"Allow","Principal":{"kmsfs":"user:no-such-user-kmsfs"},"Action":"kms:*"}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Principal":{"kmsfs":"group:no-such-group-kmsfs"},"Action":"kms:*"}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Principal":{"kmsfs":"user:"},"Action":"kms:*"}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Principal":{"kmsfs":[]},"Action":"kms:*"}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"arn:other"}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Condition":{}}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Condition":{"StringNotEquals":{"kms:EncryptionContext:a":"b"}}}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Condition":{"StringEquals":{"kms:CallerAccount":"1"}}}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Condition":{"StringEquals":{"kms:EncryptionContext:":"1"}}}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Condition":{"StringEquals":{"kms:EncryptionContext:a":[]}}}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Condition":{"ForAnyValue:StringEquals":{"kms:EncryptionContext:a":"b"}}}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Condition":{"Bool:StringEquals":{"kms:EncryptionContextKeys":"b"}}}]}"#,
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
        // A stored document naming a user removed since still loads (matching no one).
        let stored = serde_json::json!({"Statement":[{"Effect":"Allow","Principal":{"kmsfs":"user:gone-kmsfs"},"Action":"kms:*"}]});
        let p = KeyPolicy::from_value(&stored).unwrap();
        assert!(!p.allows(&caller(0, 0), &groups(&[]), Operation::Decrypt, None));
    }
}
