//! Local user and group names (/etc/passwd, /etc/group) for key policies
//! (`user:NAME`, `group:NAME`) and the audit trail's `userName`. Read again
//! only when either file changes (checked at most once a second, so a user
//! added is seen within a second); NSS sources other than these files (LDAP,
//! systemd-userdb) are not consulted.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

#[derive(Default)]
struct Table {
    stamp: Option<(SystemTime, SystemTime)>,
    checked: Option<Instant>,
    users: HashMap<String, u32>,
    user_names: HashMap<u32, String>,
    groups: HashMap<String, u32>,
    group_names: HashMap<u32, String>,
}

static TABLE: Mutex<Option<Table>> = Mutex::new(None);

const PASSWD: &str = "/etc/passwd";
/// How often the files' times are looked at.
const RECHECK: Duration = Duration::from_secs(1);
const GROUP: &str = "/etc/group";

#[allow(clippy::disallowed_methods)] // a system file (/proc, /sys, /etc), not a tree a user can write
fn mtime(p: &str) -> SystemTime {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// `name:x:id:...` lines: name and third field.
fn parse(text: &str) -> Vec<(String, u32)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let id = f.nth(1)?.parse().ok()?;
            (!name.is_empty()).then(|| (name.to_string(), id))
        })
        .collect()
}

#[allow(clippy::disallowed_methods)] // a system file (/proc, /sys, /etc), not a tree a user can write
fn with<T>(f: impl FnOnce(&Table) -> T) -> T {
    let mut g = TABLE.lock().unwrap_or_else(|p| p.into_inner());
    let fresh = g
        .as_ref()
        .and_then(|t| t.checked)
        .is_some_and(|c| c.elapsed() < RECHECK);
    let stamp = if fresh {
        None
    } else {
        Some((mtime(PASSWD), mtime(GROUP)))
    };
    if let (Some(t), Some(_)) = (g.as_mut(), stamp) {
        t.checked = Some(Instant::now());
    }
    if g.is_none() || (stamp.is_some() && g.as_ref().is_some_and(|t| t.stamp != stamp)) {
        let mut t = Table {
            stamp: Some(stamp.unwrap_or((mtime(PASSWD), mtime(GROUP)))),
            checked: Some(Instant::now()),
            ..Table::default()
        };
        for (n, id) in parse(&std::fs::read_to_string(PASSWD).unwrap_or_default()) {
            t.user_names.entry(id).or_insert_with(|| n.clone());
            t.users.entry(n).or_insert(id);
        }
        for (n, id) in parse(&std::fs::read_to_string(GROUP).unwrap_or_default()) {
            t.group_names.entry(id).or_insert_with(|| n.clone());
            t.groups.entry(n).or_insert(id);
        }
        *g = Some(t);
    }
    match g.as_ref() {
        Some(t) => f(t),
        None => f(&Table::default()),
    }
}

/// The uid of a user name.
pub fn user_id(name: &str) -> Option<u32> {
    with(|t| t.users.get(name).copied())
}

/// The name of a uid.
pub fn user_name(uid: u32) -> Option<String> {
    with(|t| t.user_names.get(&uid).cloned())
}

/// The gid of a group name.
pub fn group_id(name: &str) -> Option<u32> {
    with(|t| t.groups.get(name).copied())
}

/// The name of a gid.
pub fn group_name(gid: u32) -> Option<String> {
    with(|t| t.group_names.get(&gid).cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_known_both_ways() {
        assert_eq!(user_id("root"), Some(0));
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert_eq!(group_id("root"), Some(0));
        assert_eq!(group_name(0).as_deref(), Some("root"));
        assert_eq!(user_id("no-such-user-kmsfs"), None);
        assert_eq!(
            parse("a:x:1:1::/:/bin/sh\n#c:x:2\nbad\nb:x:zz:1\n"),
            vec![("a".to_string(), 1)]
        );
    }
}
