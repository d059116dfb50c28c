//! One audit record in the shape of a CloudTrail KMS event: who
//! (`userIdentity` with uid, names, groups, process and source), what
//! (`eventName`, `requestParameters`, `responseElements`), which key
//! (`resources`: ARN and key material), the outcome (`errorCode`,
//! `errorMessage`) and, for the mount, the file (`additionalEventData`).
//! Never plaintext, data keys or key material: callers pass only ids,
//! encryption contexts, specs and names. The chain fields (`sequence`,
//! `previousDigest`) are added by the trail when the record is written.
#![forbid(unsafe_code)]

use serde_json::{Map, Value, json};

use super::{CallerSource, Operation, Requester};
use crate::kms::Caller;
use crate::kms::accounts;

/// CloudTrail's current event version.
pub const EVENT_VERSION: &str = "1.08";
/// `eventSource` of every record.
pub const EVENT_SOURCE: &str = "kmsfs";
/// `eventType` of the signed digest records the trail adds.
pub const DIGEST_EVENT_TYPE: &str = "kmsfsDigest";
/// `eventType` of the signed checkpoint a prune leaves at the new start of
/// the trail (and at the end of its archive).
pub const CHECKPOINT_EVENT_TYPE: &str = "kmsfsCheckpoint";

/// What happened, as the key service knows it.
#[derive(Debug)]
pub struct Event<'a> {
    /// The operation.
    pub op: Operation,
    /// Who asked (ids from the kernel or the process itself).
    pub caller: &'a Caller,
    /// Who asked (from /proc).
    pub requester: &'a Requester,
    /// Which kind of program.
    pub source: CallerSource,
    /// Epoch seconds.
    pub time: i64,
    /// The parameters as asked (no secrets).
    pub request: Value,
    /// What AWS returns besides secrets, on success.
    pub response: Option<Value>,
    /// The key's ARN and the material version used, once known.
    pub key_arn: Option<String>,
    /// The key material version.
    pub material_version: Option<u32>,
    /// The refusal: AWS error code and message.
    pub error: Option<(&'static str, String)>,
    /// kmsfs's additions: the mount's path and cache hit, the policy decision.
    pub extra: Map<String, Value>,
}

/// `userIdentity`: who asked, as the kernel and /proc say.
pub fn identity(caller: &Caller, requester: &Requester, source: CallerSource) -> Value {
    let groups: Vec<Value> = requester
        .groups
        .as_ref()
        .map(|g| g.iter().map(|x| json!(x)).collect())
        .unwrap_or_default();
    let mut ident = Map::new();
    ident.insert("type".into(), json!("kmsfsLocalUser"));
    ident.insert("uid".into(), json!(caller.uid));
    ident.insert("userName".into(), json!(accounts::user_name(caller.uid)));
    ident.insert("gid".into(), json!(caller.gid));
    ident.insert("groupName".into(), json!(accounts::group_name(caller.gid)));
    ident.insert(
        "groups".into(),
        if requester.groups.is_some() {
            Value::Array(groups)
        } else {
            Value::Null
        },
    );
    ident.insert("pid".into(), json!(requester.pid.unwrap_or(caller.pid)));
    ident.insert("processName".into(), json!(requester.process_name));
    ident.insert("executable".into(), json!(requester.executable));
    ident.insert("source".into(), json!(source.as_str()));
    // The access key whose signature the server verified (CloudTrail's
    // `userIdentity.accessKeyId`).
    if let Some(k) = &caller.access_key {
        ident.insert("accessKeyId".into(), json!(k.as_str()));
    }
    Value::Object(ident)
}

/// The record as JSON (without the chain fields).
pub fn build(e: &Event<'_>) -> Value {
    let ident = identity(e.caller, e.requester, e.source);
    let mut r = Map::new();
    r.insert("eventVersion".into(), json!(EVENT_VERSION));
    r.insert("eventTime".into(), json!(super::time::format(e.time)));
    r.insert("eventSource".into(), json!(EVENT_SOURCE));
    r.insert("eventName".into(), json!(e.op.event_name()));
    r.insert("eventType".into(), json!("AwsApiCall"));
    r.insert(
        "eventCategory".into(),
        json!(if e.op.is_crypto() {
            "Data"
        } else {
            "Management"
        }),
    );
    r.insert("readOnly".into(), json!(!e.op.is_change()));
    r.insert("eventID".into(), json!(uuid::Uuid::new_v4().to_string()));
    r.insert("userIdentity".into(), ident);
    r.insert("requestParameters".into(), e.request.clone());
    r.insert(
        "responseElements".into(),
        e.response.clone().unwrap_or(Value::Null),
    );
    let resources = match &e.key_arn {
        Some(arn) => {
            let mut res = Map::new();
            res.insert("ARN".into(), json!(arn));
            res.insert("type".into(), json!("AWS::KMS::Key"));
            if let Some(v) = e.material_version {
                res.insert("keyMaterialId".into(), json!(v.to_string()));
            }
            json!([Value::Object(res)])
        }
        None => json!([]),
    };
    r.insert("resources".into(), resources);
    if let Some((code, msg)) = &e.error {
        r.insert("errorCode".into(), json!(code));
        r.insert("errorMessage".into(), json!(msg));
    }
    if !e.extra.is_empty() {
        r.insert("additionalEventData".into(), Value::Object(e.extra.clone()));
    }
    Value::Object(r)
}

/// A record's `eventName`.
pub fn event_name(r: &Value) -> &str {
    r.get("eventName").and_then(Value::as_str).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_of_a_refused_decrypt() {
        let caller = Caller {
            uid: 0,
            gid: 0,
            pid: std::process::id(),
            access_key: None,
        };
        let requester = Requester::of(&caller);
        let mut extra = Map::new();
        extra.insert("path".into(), json!("dir/a.txt"));
        let r = build(&Event {
            op: Operation::Decrypt,
            caller: &caller,
            requester: &requester,
            source: CallerSource::Mount,
            time: 0,
            request: json!({"encryptionContext": {"kmsfs:file": "x"}}),
            response: None,
            key_arn: Some("arn:kmsfs:kms:local:ks:key/k".into()),
            material_version: Some(2),
            error: Some(("AccessDeniedException", "no".into())),
            extra,
        });
        assert_eq!(r["eventName"], "Decrypt");
        assert_eq!(r["eventTime"], "1970-01-01T00:00:00Z");
        assert_eq!(r["userIdentity"]["userName"], "root");
        assert_eq!(r["userIdentity"]["source"], "mount");
        assert_eq!(r["userIdentity"]["pid"], json!(std::process::id()));
        assert!(r["userIdentity"]["executable"].is_string());
        assert_eq!(r["resources"][0]["keyMaterialId"], "2");
        assert_eq!(r["errorCode"], "AccessDeniedException");
        assert_eq!(r["additionalEventData"]["path"], "dir/a.txt");
        assert_eq!(r["readOnly"], true);
    }
}
