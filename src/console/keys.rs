//! The Keys page's actions: each one call (or a few) of the key service as
//! the console's user, the calls the command line makes for the same
//! commands, so the trail records each with the console as its source.
#![forbid(unsafe_code)]

use std::collections::HashMap;

use serde_json::{Value, json};

use super::{ApiError, State};
use crate::kms::{KeyMetadata, KeyOrigin, KeyServiceExt, KeyState, Origin, RequestContext};

/// Most keys on one page of the list.
pub(super) const MAX_PAGE: usize = 500;

fn metadata(m: &KeyMetadata, aliases: &[String]) -> Value {
    let mut v = serde_json::to_value(m).unwrap_or(Value::Null);
    v["Aliases"] = json!(aliases);
    v
}

/// `GET /api/keys?offset=&limit=&q=&state=`: one page of the keys in
/// creation order, filtered here (text in id, alias or description; state),
/// with the number of keys that match.
pub(super) fn list(st: &State, q: &dyn Fn(&str) -> Option<String>) -> Result<Value, ApiError> {
    let offset: usize = q("offset").and_then(|v| v.parse().ok()).unwrap_or(0);
    let limit: usize = q("limit")
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
        .clamp(1, MAX_PAGE);
    let text = q("q").unwrap_or_default().to_lowercase();
    let state = q("state").filter(|s| !s.is_empty());
    let all = st.ks.list_key_metadata(&st.caller)?;
    let mut aliases: HashMap<String, Vec<String>> = HashMap::new();
    for a in st.ks.list_aliases(&st.caller, None)? {
        aliases
            .entry(a.target_key_id)
            .or_default()
            .push(a.alias_name);
    }
    let none = Vec::new();
    let matching: Vec<(&KeyMetadata, &Vec<String>)> = all
        .iter()
        .map(|m| (m, aliases.get(&m.key_id).unwrap_or(&none)))
        .filter(|(m, names)| {
            state.as_deref().is_none_or(|s| m.key_state.as_str() == s)
                && (text.is_empty()
                    || m.key_id.contains(&text)
                    || m.description.to_lowercase().contains(&text)
                    || names.iter().any(|n| n.to_lowercase().contains(&text)))
        })
        .collect();
    let page: Vec<Value> = matching
        .iter()
        .skip(offset)
        .take(limit)
        .map(|(m, names)| metadata(m, names))
        .collect();
    Ok(json!({
        "Total": all.len(),
        "Matching": matching.len(),
        "Offset": offset,
        "Keys": page,
    }))
}

/// `GET /api/key?id=`: everything the detail view shows.
pub(super) fn detail(st: &State, id: &str) -> Result<Value, ApiError> {
    let ks = &st.ks;
    let c = &st.caller;
    let m = ks.describe_key(&RequestContext::new(*c, Origin::Console), id)?;
    let aliases: Vec<String> = ks
        .list_aliases(c, Some(&m.key_id))?
        .into_iter()
        .map(|a| a.alias_name)
        .collect();
    let mut v = metadata(&m, &aliases);
    // A key waiting for imported material has no rotation to show.
    if m.key_state != KeyState::PendingImport {
        if let Ok(r) = ks.get_key_rotation_status(c, &m.key_id) {
            v["Rotation"] = serde_json::to_value(r).unwrap_or(Value::Null);
        }
        if let Ok(list) = ks.list_key_rotations(c, &m.key_id) {
            v["Rotations"] = serde_json::to_value(list).unwrap_or(Value::Null);
        }
    }
    v["Policy"] = match ks.get_key_policy(c, &m.key_id, "default") {
        Ok(p) => json!(serde_json::to_string_pretty(&p).unwrap_or_default()),
        Err(e) => json!({ "error": e.aws_code(), "message": e.to_string() }),
    };
    let tags = ks.list_resource_tags(c, &m.key_id).unwrap_or_default();
    v["Tags"] = tags
        .into_iter()
        .map(|(k, val)| json!({ "TagKey": k, "TagValue": val }))
        .collect();
    v["Now"] = json!(crate::kms::clock::now().unwrap_or(0));
    Ok(v)
}

/// `GET /api/key/impact?id=`: the files the key protects in each backing
/// directory this keystore knows of (headers only), what disabling or
/// deleting it would make unreadable; the count the command line's
/// warning gives.
pub(super) fn impact(st: &State, id: &str) -> Result<Value, ApiError> {
    let key = st
        .ks
        .resolve_key_id(id)
        .ok_or_else(|| ApiError::new(404, "NotFoundException", format!("no key {id}")))?;
    let mut dirs = Vec::new();
    let (mut files, mut bytes) = (0, 0);
    for dir in crate::tree::known_backings(st.ks.dir()) {
        let (f, b) = crate::tree::protected_by(&dir, &key);
        if f > 0 {
            dirs.push(json!({ "Backing": dir.display().to_string(), "Files": f, "Bytes": b }));
            files += f;
            bytes += b;
        }
    }
    Ok(json!({ "KeyId": key, "Files": files, "Bytes": bytes, "Backings": dirs }))
}

/// `POST /api/keys/create {description, policy?}`.
pub(super) fn create(
    st: &State,
    description: &str,
    policy: Option<String>,
) -> Result<Value, ApiError> {
    let m = match policy.filter(|p| !p.trim().is_empty()) {
        Some(p) => {
            st.ks
                .create_key_with_policy(&st.caller, description, KeyOrigin::Kms, &p, false)?
        }
        None => st
            .ks
            .create_key_with_origin(&st.caller, description, KeyOrigin::Kms)?,
    };
    Ok(json!({ "KeyMetadata": metadata(&m, &[]) }))
}

/// `POST /api/key/enable {id}`.
pub(super) fn enable(st: &State, id: &str) -> Result<Value, ApiError> {
    st.ks.enable_key(&st.caller, id)?;
    Ok(json!({}))
}

/// `POST /api/key/disable {id}`.
pub(super) fn disable(st: &State, id: &str) -> Result<Value, ApiError> {
    st.ks.disable_key(&st.caller, id)?;
    Ok(json!({}))
}

/// `POST /api/key/rotate {id}`: new key material now.
pub(super) fn rotate(st: &State, id: &str) -> Result<Value, ApiError> {
    let (key, version) = st.ks.rotate_key_on_demand(&st.caller, id)?;
    Ok(json!({ "KeyId": key, "KeyMaterialVersion": version }))
}

/// `POST /api/key/schedule-deletion {id, days}`.
pub(super) fn schedule_deletion(
    st: &State,
    id: &str,
    days: Option<u32>,
) -> Result<Value, ApiError> {
    let d = st.ks.schedule_key_deletion(&st.caller, id, days)?;
    Ok(serde_json::to_value(d).unwrap_or(Value::Null))
}

/// `POST /api/key/cancel-deletion {id}`: the key is Disabled afterwards.
pub(super) fn cancel_deletion(st: &State, id: &str) -> Result<Value, ApiError> {
    let key = st.ks.cancel_key_deletion(&st.caller, id)?;
    Ok(json!({ "KeyId": key }))
}

/// `POST /api/key/policy {id, policy}`: validated by the key service,
/// with AWS's lockout safety check (never bypassed from the console).
pub(super) fn put_policy(st: &State, id: &str, policy: &str) -> Result<Value, ApiError> {
    if let Err(e) = serde_json::from_str::<Value>(policy) {
        return Err(ApiError::new(
            400,
            "MalformedPolicyDocumentException",
            format!("the policy is not JSON: {e}"),
        ));
    }
    st.ks
        .put_key_policy_checked(&st.caller, id, "default", policy, false)?;
    Ok(json!({}))
}
