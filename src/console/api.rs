//! The console's JSON API: one route per page action, each a call of
//! `keys`, `files` or `trail`. GET reads, POST changes (the caller has
//! already checked the session, and for POST its CSRF token).
#![forbid(unsafe_code)]

use serde_json::{Value, json};

use super::session::SessionInfo;
use super::{ApiError, State, files, keys, query_param, trail};

/// The body of a POST as a JSON object.
fn body_json(body: &[u8]) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Ok(json!({}));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(ApiError::new(
            400,
            "BadRequest",
            "the request body must be a JSON object",
        )),
    }
}

/// Runs the API request `path`.
pub(super) fn route(
    st: &State,
    parts: &http::request::Parts,
    path: &str,
    body: &[u8],
    session: &SessionInfo,
) -> Result<Value, ApiError> {
    let q = |name: &str| query_param(parts, name);
    if parts.method == http::Method::GET {
        return match path {
            "/api/session" => Ok(session_info(st, session)),
            "/api/keys" => keys::list(st, &q),
            "/api/key" => keys::detail(st, &need(q("id"), "id")?),
            "/api/key/impact" => keys::impact(st, &need(q("id"), "id")?),
            "/api/files" => Ok(files::report(st, false)),
            "/api/mounts" => Ok(files::mounts()),
            "/api/trail" => trail::page(st, &q),
            "/api/trail/verify" => Ok(st.verify.get()),
            _ => Err(ApiError::new(404, "NotFound", format!("no GET {path}"))),
        };
    }
    let b = body_json(body)?;
    let s = |name: &str| b.get(name).and_then(Value::as_str).map(str::to_string);
    match path {
        "/api/keys/create" => keys::create(st, &s("description").unwrap_or_default(), s("policy")),
        "/api/key/enable" => keys::enable(st, &need(s("id"), "id")?),
        "/api/key/disable" => keys::disable(st, &need(s("id"), "id")?),
        "/api/key/rotate" => keys::rotate(st, &need(s("id"), "id")?),
        "/api/key/cancel-deletion" => keys::cancel_deletion(st, &need(s("id"), "id")?),
        "/api/key/schedule-deletion" => {
            let days = b
                .get("days")
                .and_then(Value::as_u64)
                .map(|d| d.min(u32::MAX as u64) as u32);
            keys::schedule_deletion(st, &need(s("id"), "id")?, days)
        }
        "/api/key/policy" => {
            keys::put_policy(st, &need(s("id"), "id")?, &need(s("policy"), "policy")?)
        }
        "/api/files/refresh" => Ok(files::report(st, true)),
        "/api/trail/verify" => Ok(trail::run_verify(st)),
        _ => Err(ApiError::new(404, "NotFound", format!("no POST {path}"))),
    }
}

fn need(v: Option<String>, name: &str) -> Result<String, ApiError> {
    v.filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::new(400, "BadRequest", format!("{name} is required")))
}

fn session_info(st: &State, session: &SessionInfo) -> Value {
    let mut operations: Vec<&str> = crate::kms::Operation::ALL
        .iter()
        .map(|o| o.event_name())
        .collect();
    operations.dedup();
    json!({
        "operations": operations,
        "csrf": session.csrf,
        "uid": st.caller.uid,
        "user": crate::kms::accounts::user_name(st.caller.uid),
        "keystore": st.ks.dir().display().to_string(),
        "keystoreId": st.ks.keystore_id(),
        "version": env!("CARGO_PKG_VERSION"),
    })
}
