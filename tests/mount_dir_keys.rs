//! A key per directory (issue 20 item 2): `kmsfs set-key DIR --key-id K`
//! inside a running mount makes files created under DIR, and under
//! subdirectories made later, take their data keys from K. Two real users
//! through a shared `-o allow_other` mount: the one K's policy refuses can
//! neither set K nor create under DIR, a disabled K refuses creates under
//! DIR (the tree's default key is not used instead), a remount keeps the
//! choice, and a record written in the backing directory by another user
//! is refused, not obeyed.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use common::{Mount, TestUser, TestUsers};
use serde_json::Value;

/// A mount with allow_other, and `shared` (mode 2777, the users' group).
fn setup(test: &str) -> Option<(Mount, TestUsers)> {
    let m = Mount::with_args(test, &["-o", "allow_other"])?;
    let users = common::test_users(test)?;
    fs::set_permissions(m.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir(m.p("shared")).unwrap();
    std::os::unix::fs::chown(m.p("shared"), Some(0), Some(users.gid)).unwrap();
    fs::set_permissions(m.p("shared"), fs::Permissions::from_mode(0o2777)).unwrap();
    Some((m, users))
}

/// A new key whose policy allows everyone everything but denies `denied`
/// every kms action.
fn key_denying(m: &Mount, denied: &TestUser) -> String {
    let v: Value = serde_json::from_str(&m.ok(&["--output", "json", "kms", "create-key"])).unwrap();
    let k = v["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    let policy = format!(
        r#"{{"Statement":[{{"Effect":"Allow","Principal":"*","Action":"kms:*"}},
        {{"Effect":"Deny","Principal":{{"kmsfs":"uid:{}"}},"Action":"kms:*"}}]}}"#,
        denied.uid
    );
    m.ok(&["kms", "put-key-policy", "--key-id", &k, "--policy", &policy]);
    k
}

/// `kmsfs ARGS` run as `u` in the shared directory of the mount.
fn kmsfs_as(m: &Mount, u: &TestUser, args: &[&str]) -> Output {
    u.command(&m.p("shared"), common::BIN)
        .args(args)
        .output()
        .expect("run kmsfs as a test user")
}

/// The CMK named by the header of backing file `rel`.
fn key_of(m: &Mount, rel: &str) -> String {
    let o = m.ok(&["--output", "json", "inspect", m.b(rel).to_str().unwrap()]);
    let v: Value = serde_json::from_str(&o).unwrap();
    v["KeyId"].as_str().unwrap().to_string()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Creating `name` as `u` fails with "Permission denied" or "Input/output
/// error" (`why`), and leaves nothing in the backing directory.
fn create_refused(m: &Mount, u: &TestUser, name: &str, why: &str) {
    let o = u.sh(&m.p("shared"), &format!("printf data > {name}"));
    assert!(!o.status.success(), "{} created {name}", u.name);
    assert!(text(&o).contains(why), "{name}: {}", text(&o));
    assert!(
        !m.b(&format!("shared/{name}")).exists(),
        "a refused create left {name} in the backing directory"
    );
}

/// The keys of the scenario: the tree's default and K (B may not use it).
struct Keys {
    default: String,
    k: String,
}

#[test]
fn a_directory_key_is_used_inherited_authorized_kept_and_not_forged() {
    let Some((mut m, users)) = setup("dirkeys") else {
        return;
    };
    let keys = Keys {
        default: m.key_id_of("alias/kmsfs/default"),
        k: key_denying(&m, &users.b),
    };
    common::ok_as(&users.a, &m.p("shared"), "mkdir d && chmod 777 d");
    common::ok_as(&users.b, &m.p("shared"), "mkdir e");
    set_only_by_the_owner_allowed_by_the_key(&m, &users, &keys);
    used_inherited_and_shown(&m, &users, &keys);
    refused_to_users_the_key_refuses_and_when_disabled(&m, &users, &keys);
    // A remount keeps it.
    m.remount();
    common::ok_as(&users.a, &m.p("shared"), "printf again > d/after-remount");
    assert_eq!(key_of(&m, "shared/d/after-remount"), keys.k);
    let kb = records_written_in_the_backing_are_refused(&mut m, &users, &keys);
    cleared_by_the_owner(&m, &users, &keys, &kb);
}

/// B may not use K: refused on its own directory, by K's policy; nor may B
/// choose the key of A's directory, whoever's key it is. A may.
fn set_only_by_the_owner_allowed_by_the_key(m: &Mount, users: &TestUsers, keys: &Keys) {
    let (a, b) = (&users.a, &users.b);
    let o = kmsfs_as(m, b, &["set-key", "e", "--key-id", &keys.k]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(text(&o).contains("kms:GenerateDataKey"), "{}", text(&o));
    let o = kmsfs_as(m, b, &["set-key", "d", "--key-id", &keys.default]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(text(&o).contains("owner"), "{}", text(&o));
    let o = kmsfs_as(m, a, &["set-key", "d", "--key-id", &keys.k]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("set on this directory"), "{}", text(&o));
}

/// Files under d and under subdirectories made later use K; outside, the
/// default key; `get-key` and `kmsfs status` say so.
fn used_inherited_and_shown(m: &Mount, users: &TestUsers, keys: &Keys) {
    let a = &users.a;
    common::ok_as(
        a,
        &m.p("shared"),
        "printf one > d/f1 && mkdir d/sub && printf two > d/sub/f2 && printf out > outside",
    );
    assert_eq!(key_of(m, "shared/d/f1"), keys.k);
    assert_eq!(key_of(m, "shared/d/sub/f2"), keys.k);
    assert_eq!(key_of(m, "shared/outside"), keys.default);
    let o = kmsfs_as(m, a, &["get-key", "d/sub"]);
    assert!(
        text(&o).contains("inherited from /shared/d"),
        "{}",
        text(&o)
    );
    assert_eq!(fs::read(m.p("shared/d/sub/f2")).unwrap(), b"two");
    let s = m.ok(&["status", m.mnt.to_str().unwrap()]);
    let line = format!("directory key:      /shared/d under {}", keys.k);
    assert!(s.contains(&line), "{s}");
    // `kmsfs inspect BACKING`: the directory's key and the files per key.
    let o = m.ok(&["--output", "json", "inspect", m.backing.to_str().unwrap()]);
    let v: Value = serde_json::from_str(&o).unwrap();
    assert_eq!(v["DirectoryKeys"][0]["Directory"], "/shared/d", "{v}");
    assert_eq!(v["DirectoryKeys"][0]["KeyId"], keys.k.as_str(), "{v}");
    let t = m.ok(&["inspect", m.backing.to_str().unwrap()]);
    assert!(t.contains(&format!("key {}: 2 files", keys.k)), "{t}");
}

/// B, whom K's policy refuses, cannot create under d (d is 0777): EACCES,
/// not a file under the tree's default key. K disabled: creates under d
/// refuse, elsewhere they do not.
fn refused_to_users_the_key_refuses_and_when_disabled(m: &Mount, users: &TestUsers, keys: &Keys) {
    let (a, b) = (&users.a, &users.b);
    create_refused(m, b, "d/by-b", "Permission denied");
    common::ok_as(b, &m.p("shared"), "printf ok > e/by-b");
    assert_eq!(key_of(m, "shared/e/by-b"), keys.default);
    m.ok(&["kms", "disable-key", "--key-id", &keys.k]);
    create_refused(m, a, "d/while-disabled", "Permission denied");
    common::ok_as(a, &m.p("shared"), "printf ok > elsewhere");
    m.ok(&["kms", "enable-key", "--key-id", &keys.k]);
}

/// Runs python `code` as `u`, which must succeed.
fn python_as(u: &TestUser, dir: &Path, code: &str) -> String {
    let python = common::python3("dirkeys").unwrap_or_else(|| "python3".into());
    let o = u
        .command(dir, &python)
        .arg("-c")
        .arg(code)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}: {}", u.name, text(&o));
    text(&o)
}

/// B, who can write d's backing directory, gives it the record of its own
/// directory e (a key KB that B set there, legitimately), then one with
/// the key id edited: each refused (EIO), not obeyed, after a remount too.
/// Returns KB.
fn records_written_in_the_backing_are_refused(
    m: &mut Mount,
    users: &TestUsers,
    keys: &Keys,
) -> String {
    let (a, b) = (&users.a, &users.b);
    let kb = key_denying(m, a);
    let o = kmsfs_as(m, b, &["set-key", "e", "--key-id", &kb]);
    assert!(o.status.success(), "{}", text(&o));
    let (backing_e, backing_d) = (m.b("shared/e"), m.b("shared/d"));
    python_as(
        b,
        Path::new("/"),
        &format!(
            "import os; v = os.getxattr('{}', 'user.kmsfs.dirkey'); \
             os.setxattr('{}', 'user.kmsfs.dirkey', v)",
            backing_e.display(),
            backing_d.display()
        ),
    );
    m.remount();
    create_refused(m, a, "d/after-tamper", "Input/output error");
    assert!(m.log_text().contains("directory key record refused"));
    let o = kmsfs_as(m, a, &["get-key", "d"]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    python_as(
        b,
        Path::new("/"),
        &format!(
            "import os; p = '{}'; v = os.getxattr(p, 'user.kmsfs.dirkey')\
             .replace(b'{kb}', b'{}'); os.setxattr(p, 'user.kmsfs.dirkey', v)",
            backing_d.display(),
            keys.default
        ),
    );
    m.remount();
    create_refused(m, a, "d/after-edit", "Input/output error");
    kb
}

/// A, d's owner, clears it: d's files get the parent's key again. The
/// record is never reachable through the mount as an xattr.
fn cleared_by_the_owner(m: &Mount, users: &TestUsers, keys: &Keys, kb: &str) {
    let a = &users.a;
    let o = kmsfs_as(m, a, &["set-key", "d", "--inherit"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("the mount's default key"), "{}", text(&o));
    common::ok_as(a, &m.p("shared"), "printf back > d/cleared");
    assert_eq!(key_of(m, "shared/d/cleared"), keys.default);
    let out = python_as(
        a,
        &m.p("shared"),
        "import os; print(os.listxattr('e'), os.getxattr('e', 'user.kmsfs.key-id'))",
    );
    assert!(!out.contains("dirkey"), "{out}");
    assert!(out.contains(kb), "{out}");
}

/// The entries of the keystore's list of this tree's directory keys
/// (`backings/*.dirkeys`), by "INO:BIRTH".
fn listed(m: &Mount) -> serde_json::Map<String, Value> {
    let dir = m.keystore.join("backings");
    for e in fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.to_string_lossy().ends_with(".dirkeys") {
            let v: Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
            return v["Directories"].as_object().cloned().unwrap_or_default();
        }
    }
    serde_json::Map::new()
}

/// "INO:BIRTH" of backing directory `rel`, as the list names it.
fn dir_id(m: &Mount, rel: &str) -> String {
    use std::os::unix::fs::MetadataExt;
    let md = fs::metadata(m.b(rel)).unwrap();
    let born = md
        .created()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}:{born}", md.ino())
}

/// B, who can write d's backing directory, runs python `code` on it with
/// `p` its path and `n` the record's xattr name.
fn tamper(m: &Mount, b: &TestUser, rel: &str, code: &str) -> String {
    python_as(
        b,
        Path::new("/"),
        &format!(
            "import os; p = '{}'; n = 'user.kmsfs.dirkey'; {code}",
            m.b(rel).display()
        ),
    )
}

/// Issue 20: the keystore lists the keys set on directories, so another
/// user who can write the backing tree cannot make new files fall back to
/// the tree's default key by removing a directory's record (nor by putting
/// back one its owner replaced or cleared): A's next create under it is
/// refused with EIO and a log line naming the directory, A's existing
/// files still open, and A's `set-key` (or `--inherit`) answers it. A
/// rename keeps the listing; an rmdir drops it.
#[test]
fn a_removed_directory_key_record_is_refused() {
    let Some((mut m, users)) = setup("dirkeys-removed") else {
        return;
    };
    let (a, b) = (&users.a, &users.b);
    let default = m.key_id_of("alias/kmsfs/default");
    let v: Value = serde_json::from_str(&m.ok(&["--output", "json", "kms", "create-key"])).unwrap();
    let k = v["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    let k2 = key_denying(&m, b);
    common::ok_as(a, &m.p("shared"), "mkdir d d/sub && chmod 777 d d/sub");
    let o = kmsfs_as(&m, a, &["set-key", "d", "--key-id", &k]);
    assert!(o.status.success(), "{}", text(&o));
    common::ok_as(a, &m.p("shared"), "printf kept > d/f1");
    assert_eq!(key_of(&m, "shared/d/f1"), k);
    assert_eq!(listed(&m)[&dir_id(&m, "shared/d")], k.as_str());

    // B removes the record: refused (also under d/sub, which inherits it),
    // never the default key; d/f1 still opens.
    tamper(&m, b, "shared/d", "os.removexattr(p, n)");
    // `inspect` shows it without a mount's help.
    let backing = m.backing.to_str().unwrap().to_string();
    let v: Value = serde_json::from_str(&m.ok(&["--output", "json", "inspect", &backing])).unwrap();
    let problem = v["DirectoryKeyProblems"][0]["Problem"]
        .as_str()
        .unwrap_or_default();
    assert!(
        problem.contains(&format!("lists key {k}, but its record is missing")),
        "{v}"
    );
    m.remount();
    create_refused(&m, a, "d/after-removal", "Input/output error");
    create_refused(&m, a, "d/sub/after-removal", "Input/output error");
    let log = m.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("directory key record refused: the record is missing"))
        .unwrap_or_else(|| panic!("no refusal in the log: {log}"));
    assert!(line.contains("/shared/d:") && line.contains(&k), "{line}");
    assert_eq!(common::ok_as(a, &m.p("shared"), "cat d/f1"), "kept");
    let o = kmsfs_as(&m, a, &["get-key", "d"]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));

    // A sets it again (to K2 now). B saves that record and puts it back
    // after A cleared the key: refused.
    let o = kmsfs_as(&m, a, &["set-key", "d", "--key-id", &k2]);
    assert!(o.status.success(), "{}", text(&o));
    common::ok_as(a, &m.p("shared"), "printf new > d/f2");
    assert_eq!(key_of(&m, "shared/d/f2"), k2);
    let now = tamper(&m, b, "shared/d", "print(os.getxattr(p, n).decode())");
    assert!(now.starts_with(&format!("kmsfs-dirkey-v1 {k2} ")), "{now}");
    let saved = now.trim().to_string();
    let o = kmsfs_as(&m, a, &["set-key", "d", "--inherit"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(listed(&m)[&dir_id(&m, "shared/d")], Value::Null);
    tamper(&m, b, "shared/d", &format!("os.setxattr(p, n, b'{saved}')"));
    m.remount();
    create_refused(&m, a, "d/after-put-back", "Input/output error");
    assert!(
        m.log_text()
            .contains("its owner cleared this directory's key"),
        "{}",
        m.log_text()
    );
    // A's --inherit answers it: the default key again.
    let o = kmsfs_as(&m, a, &["set-key", "d", "--inherit"]);
    assert!(o.status.success(), "{}", text(&o));
    common::ok_as(a, &m.p("shared"), "printf back > d/f3");
    assert_eq!(key_of(&m, "shared/d/f3"), default);

    let v: Value = serde_json::from_str(&m.ok(&["--output", "json", "inspect", &backing])).unwrap();
    assert_eq!(v["DirectoryKeyProblems"], serde_json::json!([]), "{v}");
    // A rename keeps the listing (the record moves with the directory);
    // an rmdir through the mount drops it.
    let o = kmsfs_as(&m, a, &["set-key", "d/sub", "--key-id", &k]);
    assert!(o.status.success(), "{}", text(&o));
    common::ok_as(a, &m.p("shared"), "mv d/sub moved");
    let id = dir_id(&m, "shared/moved");
    assert_eq!(listed(&m)[&id], k.as_str());
    tamper(&m, b, "shared/moved", "os.removexattr(p, n)");
    m.remount();
    create_refused(&m, a, "moved/after-rename", "Input/output error");
    let o = kmsfs_as(&m, a, &["set-key", "moved", "--key-id", &k]);
    assert!(o.status.success(), "{}", text(&o));
    common::ok_as(a, &m.p("shared"), "rmdir moved");
    assert!(!listed(&m).contains_key(&id), "{:?}", listed(&m));
}

/// Two daemons serve one tree (`-o sharedstorage`): a key one sets on a
/// directory is used by the other from its next create on, even for a
/// directory whose key it had looked up before; and the other refuses
/// creates under a directory whose record was removed in the backing tree,
/// as the keystore's list, which they share, says.
#[test]
fn shared_storage_mounts_share_the_list_of_directory_keys() {
    let Some(m) = Mount::with_args("dirkeys-shared", &["-o", "sharedstorage"]) else {
        return;
    };
    let other = m.tmp.path().join("mnt2");
    fs::create_dir(&other).unwrap();
    let _g = common::MountGuard(other.clone());
    let o = common::kmsfs()
        .arg("--keystore")
        .arg(&m.keystore)
        .arg("mount")
        .arg(&m.backing)
        .arg(&other)
        .arg("--log-file")
        .arg(m.tmp.path().join("log2"))
        .args(["-o", "sharedstorage"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let default = m.key_id_of("alias/kmsfs/default");
    let v: Value = serde_json::from_str(&m.ok(&["--output", "json", "kms", "create-key"])).unwrap();
    let k = v["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    fs::create_dir_all(m.p("d")).unwrap();
    fs::create_dir_all(m.p("e")).unwrap();
    fs::write(other.join("d/before"), b"1").unwrap();
    assert_eq!(key_of(&m, "d/before"), default);
    for dir in ["d", "e"] {
        let p = m.p(dir);
        m.ok(&["set-key", p.to_str().unwrap(), "--key-id", &k]);
    }
    fs::write(other.join("d/after"), b"2").unwrap();
    assert_eq!(
        key_of(&m, "d/after"),
        k,
        "the other mount kept its cached key"
    );
    let e = m.b("e");
    let o = common::command("setfattr")
        .args(["-x", "user.kmsfs.dirkey"])
        .arg(&e)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let err = fs::write(other.join("e/after-removal"), b"3").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
}
