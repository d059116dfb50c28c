//! The Files page: per backing directory this keystore knows of, the files
//! and plaintext bytes under each key and key material version, from the
//! tree walk `inspect DIR` uses and each file's header (nothing is
//! unwrapped, nothing recorded); kept until refreshed. And the mounts that
//! serve them, from their control sockets, read on every request.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use serde_json::{Value, json};

use super::State;
use crate::envelope::EncryptedFile;

/// The last survey of the backing directories.
#[derive(Debug, Default)]
pub(super) struct Cache(Mutex<Option<Value>>);

/// Files and bytes under one (key, version).
#[derive(Default)]
struct Tally {
    files: u64,
    bytes: u64,
}

/// The survey of one backing directory.
fn survey(dir: &Path) -> Value {
    let started = std::time::Instant::now();
    // A recorded path (resolved when recorded): followed through no link,
    // and the tree read through its descriptor.
    let walked =
        crate::tree::Tree::open_absolute(dir).and_then(|t| crate::tree::walk(&t).map(|w| (t, w)));
    let (tree, w) = match walked {
        Ok(x) => x,
        Err(e) => return json!({ "Backing": dir.display().to_string(), "Error": e.to_string() }),
    };
    let mut by_key: BTreeMap<(String, u32), Tally> = BTreeMap::new();
    let (mut empty, mut other, mut unreadable) = (0u64, 0u64, 0u64);
    let mut total = Tally::default();
    for p in &w.files {
        let Ok(f) = crate::tree::open_backing(&tree, p) else {
            unreadable += 1;
            continue;
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len == 0 {
            empty += 1;
            continue;
        }
        let slot = EncryptedFile::read_header(&f).ok().and_then(|h| {
            h.active()
                .map(|s| ((s.key_id.clone(), s.key_material_version), h.layout()))
        });
        let Some((k, layout)) = slot else {
            other += 1;
            continue;
        };
        let plain = layout.plain_size_from_backing(len);
        let t = by_key.entry(k).or_default();
        t.files += 1;
        t.bytes += plain;
        total.files += 1;
        total.bytes += plain;
    }
    let keys: Vec<Value> = by_key
        .into_iter()
        .map(|((key, version), t)| {
            json!({ "KeyId": key, "KeyMaterialVersion": version, "Files": t.files, "Bytes": t.bytes })
        })
        .collect();
    json!({
        "Backing": dir.display().to_string(),
        "Files": total.files,
        "Bytes": total.bytes,
        "EmptyFiles": empty,
        "NotKmsfsFiles": other,
        "UnreadableFiles": unreadable,
        "UnreadableDirectories": w.errors.len(),
        "Keys": keys,
        "SurveyMillis": started.elapsed().as_millis() as u64,
    })
}

/// `GET /api/files` (the cached survey, made if there is none) and
/// `POST /api/files/refresh` (a new one). Key states are read fresh.
pub(super) fn report(st: &State, refresh: bool) -> Value {
    let mut cache = st.files.0.lock().unwrap_or_else(|e| e.into_inner());
    if refresh || cache.is_none() {
        let dirs: Vec<Value> = crate::tree::known_backings(st.ks.dir())
            .iter()
            .map(|d| survey(d))
            .collect();
        *cache = Some(json!({
            "Backings": dirs,
            "SurveyedAt": crate::kms::clock::now().unwrap_or(0),
        }));
    }
    let mut v = cache.clone().unwrap_or(Value::Null);
    drop(cache);
    let states: BTreeMap<String, String> = st
        .ks
        .list_key_metadata(&st.caller)
        .map(|all| {
            all.into_iter()
                .map(|m| (m.key_id, m.key_state.as_str().to_string()))
                .collect()
        })
        .unwrap_or_default();
    if let Some(dirs) = v["Backings"].as_array_mut() {
        for d in dirs {
            if let Some(keys) = d["Keys"].as_array_mut() {
                for k in keys {
                    let id = k["KeyId"].as_str().unwrap_or("").to_string();
                    k["KeyState"] = json!(states.get(&id).map_or("Missing", String::as_str));
                }
            }
        }
    }
    v
}

/// `GET /api/mounts`: every kmsfs mount and what its daemon says (open
/// files, cache hits, key-service calls, errors), or why it did not answer.
#[allow(clippy::disallowed_methods)] // a system file (/proc, /sys, /etc), not a tree a user can write
pub(super) fn mounts() -> Value {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let list: Vec<Value> = crate::daemon::parse_mountinfo(&text)
        .into_iter()
        .filter(|m| m.is_kmsfs())
        .map(|m| {
            let pid = m.daemon_pid();
            let answer = match pid {
                Some(pid) => {
                    crate::daemon::control_request(pid, "status").map_err(|e| e.to_string())
                }
                None => Err("no daemon of this user serves it".to_string()),
            };
            answer.unwrap_or_else(|why| {
                json!({
                    "Pid": pid,
                    "MountPoint": m.mountpoint.display().to_string(),
                    "Unavailable": why,
                })
            })
        })
        .collect();
    json!({ "Mounts": list })
}
