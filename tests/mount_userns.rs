//! A key policy's Deny holds for callers inside user namespaces (issue 23,
//! item 4): with Debian's uidmap (newuidmap/newgidmap and the users'
//! subordinate ranges), a user who maps himself to a subordinate uid is
//! still the user a Deny names, and one who drops a group there is still
//! denied by a Deny on that group (groups are unknown in a namespace: a
//! group Deny applies).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Output;

use common::{Mount, TestUser};

/// The first subordinate id of `user` in `file` (/etc/subuid or /etc/subgid).
fn subordinate(file: &str, user: &str) -> Option<u32> {
    let text = fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == user).then(|| f.next()?.parse().ok())?
    })
}

/// `cat FILE` as `u` from inside a new user namespace where uid and gid 0
/// are `u`'s first subordinate ids (set up by newuidmap/newgidmap through
/// unshare), with every supplementary group dropped.
fn cat_in_userns(u: &TestUser, m: &Mount, file: &str) -> Option<Output> {
    let uid = subordinate("/etc/subuid", u.name)?;
    let gid = subordinate("/etc/subgid", u.name)?;
    Some(u.sh(
        &m.mnt,
        &format!("unshare -U --map-users={uid},0,1 --map-groups={gid},0,1 -S 0 -G 0 cat {file}"),
    ))
}

fn policy(m: &Mount, deny: &str) {
    let p = format!(
        r#"{{"Statement":[{{"Effect":"Allow","Principal":"*","Action":"kms:*"}},
        {{"Effect":"Deny","Principal":{{"kmsfs":"{deny}"}},"Action":"kms:Decrypt"}}]}}"#
    );
    let default_key = m.key_id_of("alias/kmsfs/default");
    m.ok(&[
        "kms",
        "put-key-policy",
        "--key-id",
        &default_key,
        "--policy",
        &p,
    ]);
}

#[test]
fn a_deny_is_not_shed_in_a_user_namespace() {
    let test = "userns";
    if common::require_tool(test, "newuidmap").is_none() {
        return;
    }
    let Some(m) = Mount::with_args(test, &["-o", "allow_other"]) else {
        return;
    };
    let Some(users) = common::test_users(test) else {
        return;
    };
    let (a, b) = (&users.a, &users.b);
    if subordinate("/etc/subuid", b.name).is_none() || subordinate("/etc/subgid", a.name).is_none()
    {
        common::skip(
            test,
            "the test users have no subordinate ids in /etc/subuid, /etc/subgid",
        );
        return;
    }
    fs::set_permissions(m.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(m.p("f"), b"SECRET-UNDER-THE-KEY").unwrap();
    fs::set_permissions(m.p("f"), fs::Permissions::from_mode(0o644)).unwrap();

    // A Deny on user B: B is refused, as himself and as a subordinate uid.
    policy(&m, &format!("uid:{}", b.uid));
    let o = b.sh(&m.mnt, "cat f");
    assert!(!o.status.success(), "B read f: {}", common::describe(&o));
    let o = cat_in_userns(b, &m, "f").unwrap();
    assert!(
        !o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("SECRET"),
        "B read f from a user namespace: {}",
        common::describe(&o)
    );
    // A, whom nothing denies, reads it the same way (the namespace itself
    // is not what refuses B).
    let o = cat_in_userns(a, &m, "f").unwrap();
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("SECRET"),
        "A could not read f from a user namespace: {}",
        common::describe(&o)
    );

    // A Deny on the users' group: A is refused as herself, and inside a
    // namespace where she dropped the group (another gid, no supplementary
    // groups) too.
    policy(&m, &format!("group:{}", users.group));
    let o = a.sh(&m.mnt, "cat f");
    assert!(!o.status.success(), "A read f: {}", common::describe(&o));
    let o = cat_in_userns(a, &m, "f").unwrap();
    assert!(
        !o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("SECRET"),
        "A read f from a user namespace without the group: {}",
        common::describe(&o)
    );
    // Root, outside any namespace, still reads it.
    assert_eq!(fs::read(m.p("f")).unwrap(), b"SECRET-UNDER-THE-KEY");
}
