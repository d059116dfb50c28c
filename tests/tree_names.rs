//! `kmsfs export` and `kmsfs import` of trees with encrypted names and keys
//! per directory (issues 17 and 20), through the real binary and real
//! mounts: a tree with long names, names of every byte but '/' and NUL,
//! names that differ by case, symbolic links, a hard link, an empty
//! directory and a directory with a key of its own comes out of its
//! encrypted backing directory with its plaintext names, targets and that
//! key, and goes back in (encrypted names, and plain names with
//! --plaintextnames) to read the same through a new mount, with the same
//! directory key (`get-key`, a new file's header). The imported backing
//! directory shows no plaintext name. A user whose key policy refuses the
//! tree's key cannot export its names, and a user whom a directory's key
//! refuses cannot import that directory under another key.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{Mount, Names, Rng, TestUser, contains, files_under};
use serde_json::Value;

const EXIT_REFUSED: i32 = 4;

/// The plaintext words of the tree: none may show in an encrypted backing
/// directory, as a name or a symbolic link target.
const SECRETS: [&[u8]; 6] = [
    b"patients",
    b"payroll-2026",
    b"Readme",
    b"README",
    b"LLLLLLLLLLLL",
    b"DDDDDDDDDDDD",
];

/// A name of every byte but '/' and NUL (254 bytes).
fn odd_name() -> Vec<u8> {
    (1..=255u8).filter(|&b| b != b'/').collect()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// What a tree holds, by path (as bytes): kind, mode, mtime (not of
/// directories: a mount's own work may touch them), a symbolic link's
/// target, a file's content.
type Listing = BTreeMap<Vec<u8>, (char, u32, Option<i64>, Vec<u8>)>;

fn listing(root: &Path) -> Listing {
    let mut out = Listing::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = fs::symlink_metadata(&p).unwrap();
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            let mode = md.mode() & 0o7777;
            let entry = if md.is_dir() {
                todo.push(p.clone());
                ('d', mode, None, Vec::new())
            } else if md.file_type().is_symlink() {
                let t = fs::read_link(&p).unwrap();
                ('l', 0, Some(md.mtime()), t.as_os_str().as_bytes().to_vec())
            } else {
                ('f', mode, Some(md.mtime()), fs::read(&p).unwrap())
            };
            out.insert(rel, entry);
        }
    }
    out
}

fn same_listing(want: &Listing, got: &Listing, what: &str) {
    let names = |l: &Listing| {
        l.keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(want), names(got), "{what}: the names differ");
    for (k, v) in want {
        assert_eq!(
            Some(v),
            got.get(k),
            "{what}: {} differs",
            String::from_utf8_lossy(k)
        );
    }
}

/// Every entry name and symbolic link target under `dir` (kmsfs's own
/// binding file's content too).
fn backing_words(dir: &Path) -> Vec<Vec<u8>> {
    let mut out = vec![fs::read(dir.join(".kmsfs.json")).unwrap()];
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            out.push(e.file_name().as_bytes().to_vec());
            if let Ok(t) = fs::read_link(e.path()) {
                out.push(t.as_os_str().as_bytes().to_vec());
            }
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            }
        }
    }
    out
}

fn getfattr(p: &Path, name: &str) -> Option<String> {
    let o = common::command("getfattr")
        .args(["--only-values", "--absolute-names", "-n", name])
        .arg(p)
        .output()
        .expect("run getfattr");
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

fn new_key(m: &Mount) -> String {
    let v: Value = serde_json::from_str(&m.ok(&["--output", "json", "kms", "create-key"])).unwrap();
    v["KeyMetadata"]["KeyId"].as_str().unwrap().to_string()
}

/// Builds the scenario's tree through the mount; `patients` gets key `k`.
fn build(m: &Mount, k: &str) {
    let mut rng = Rng::new(17);
    fs::create_dir(m.p("patients")).unwrap();
    let o = m.run(&["set-key", m.p("patients").to_str().unwrap(), "--key-id", k]);
    assert!(o.status.success(), "set-key: {}", text(&o));
    fs::write(m.p("patients/payroll-2026.xlsx"), rng.bytes(70_000)).unwrap();
    fs::hard_link(m.p("patients/payroll-2026.xlsx"), m.p("patients/hard")).unwrap();
    fs::create_dir(m.p("patients/sub")).unwrap();
    fs::write(m.p("patients/sub/notes"), b"inherited").unwrap();
    fs::create_dir_all(m.p("deep/a/b")).unwrap();
    fs::create_dir(m.p("empty")).unwrap();
    fs::write(m.p(&"L".repeat(255)), b"a name of NAME_MAX bytes").unwrap();
    fs::create_dir(m.p(&"D".repeat(200))).unwrap();
    fs::write(m.p(&format!("{}/f", "D".repeat(200))), b"under a long name").unwrap();
    let odd = odd_name();
    fs::write(m.mnt.join(OsStr::from_bytes(&odd)), b"odd bytes").unwrap();
    fs::write(m.p("Readme"), b"lower").unwrap();
    fs::write(m.p("README"), b"upper").unwrap();
    std::os::unix::fs::symlink("patients/payroll-2026.xlsx", m.p("link")).unwrap();
    std::os::unix::fs::symlink(OsStr::from_bytes(&odd), m.p("deep/a/b/odd-link")).unwrap();
    std::os::unix::fs::symlink("L".repeat(255), m.p(&"S".repeat(255))).unwrap();
    common::sh(
        &m.mnt,
        "chmod 750 patients && chmod 600 Readme && touch -d 2021-02-03 README && \
         touch -h -d 2020-01-02 link",
    );
}

#[test]
fn export_and_import_carry_encrypted_names_links_and_directory_keys() {
    let Some(mut m) = Mount::with_names("tree-names", Names::Encrypted, &[]) else {
        return;
    };
    let k = new_key(&m);
    build(&m, &k);
    let mirror = m.tmp.path().join("mirror");
    common::sh(
        m.tmp.path(),
        &format!("cp -a {} {}", m.mnt.display(), mirror.display()),
    );
    let want = listing(&mirror);
    m.unmount();
    // The backing directory as the mount left it shows no plaintext name.
    for w in backing_words(&m.backing) {
        for s in SECRETS {
            assert!(!contains(&w, s), "{:?}", String::from_utf8_lossy(&w));
        }
    }

    let out = m.tmp.path().join("out");
    let b = m.backing.to_str().unwrap().to_string();
    let o = m.run(&["--output", "json", "export", &b, out.to_str().unwrap()]);
    assert!(o.status.success(), "export: {}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["DirectoryKeys"], 1, "{v}");
    assert_eq!(v["Corrupt"], 0, "{v}");
    same_listing(&want, &listing(&out), "export");
    // The directory's own key, on the exported directory; none elsewhere.
    assert_eq!(
        getfattr(&out.join("patients"), "user.kmsfs.key-id").as_deref(),
        Some(k.as_str())
    );
    assert_eq!(
        getfattr(&out.join("patients/sub"), "user.kmsfs.key-id"),
        None
    );
    assert_eq!(getfattr(&out, "user.kmsfs.key-id"), None);
    // Hard links come out as copies (export writes each name's file).
    assert_eq!(
        fs::read(out.join("patients/hard")).unwrap(),
        fs::read(out.join("patients/payroll-2026.xlsx")).unwrap()
    );

    for names in Names::BOTH {
        let backing = m.tmp.path().join(format!("imported-{}", names.word()));
        let bs = backing.to_str().unwrap().to_string();
        let mut args = vec!["import", out.to_str().unwrap(), bs.as_str()];
        if names == Names::Plain {
            args.push("--plaintextnames");
        }
        let o = m.run(&args);
        assert!(o.status.success(), "import {args:?}: {}", text(&o));
        let words = backing_words(&backing);
        let shown = words.iter().any(|w| SECRETS.iter().any(|s| contains(w, s)));
        match names {
            Names::Encrypted => assert!(!shown, "a plaintext name in {}", backing.display()),
            Names::Plain => assert!(shown, "plain names missing from {}", backing.display()),
        }
        // fsck opens every name and checks every file.
        let f = m.ok(&["fsck", &bs]);
        assert!(f.contains(", 0 corrupt, 0 unreadable"), "{f}");
        if names == Names::Encrypted {
            assert!(f.contains("0 refused"), "{f}");
        }

        m.backing = backing.clone();
        m.names = names;
        m.mount();
        same_listing(&want, &listing(&m.mnt), names.word());
        let gk = m.ok(&["get-key", m.p("patients").to_str().unwrap()]);
        assert!(
            gk.contains(&k) && gk.contains("set on this directory"),
            "{gk}"
        );
        let gk = m.ok(&["get-key", m.p("patients/sub").to_str().unwrap()]);
        assert!(gk.contains(&k) && gk.contains("inherited"), "{gk}");
        let gk = m.ok(&["get-key", m.p("deep").to_str().unwrap()]);
        assert!(!gk.contains(&k), "{gk}");
        // A new file under the directory gets its key.
        let before = files_under(&backing);
        fs::write(m.p("patients/sub/new"), b"made after the import").unwrap();
        m.unmount();
        let made: Vec<PathBuf> = files_under(&backing)
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect();
        assert_eq!(made.len(), 1, "{made:?}");
        let i = m.ok(&["--output", "json", "inspect", made[0].to_str().unwrap()]);
        let iv: Value = serde_json::from_str(&i).unwrap();
        assert_eq!(iv["KeyId"], k.as_str(), "{iv}");
    }
}

/// The keystore of `m` readable and writable by the test users' group (a
/// keystore shared by a team), its `backings/` record directory only
/// readable, and the paths to it and to the backing directory open.
fn share_keystore(m: &Mount, group: u32) {
    fs::set_permissions(m.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    common::sh(
        m.tmp.path(),
        &format!(
            "chgrp -R {group} {ks} && chmod -R g+rwX {ks} && chmod 750 {ks}/backings",
            ks = m.keystore.display()
        ),
    );
}

/// `kmsfs ARGS` as `u`, with the scenario's keystore.
fn kmsfs_as(m: &Mount, u: &TestUser, args: &[&str]) -> Output {
    u.command(m.tmp.path(), common::BIN)
        .arg("--keystore")
        .arg(&m.keystore)
        .args(args)
        .output()
        .expect("run kmsfs as a test user")
}

fn allow_all_but(m: &Mount, key: &str, denied: Option<u32>) {
    let deny = denied
        .map(|uid| {
            format!(r#",{{"Effect":"Deny","Principal":{{"kmsfs":"uid:{uid}"}},"Action":"kms:*"}}"#)
        })
        .unwrap_or_default();
    let policy =
        format!(r#"{{"Statement":[{{"Effect":"Allow","Principal":"*","Action":"kms:*"}}{deny}]}}"#);
    m.ok(&[
        "kms",
        "put-key-policy",
        "--key-id",
        key,
        "--policy",
        &policy,
    ]);
}

#[test]
fn a_user_the_keys_refuse_exports_no_name_and_imports_no_directory_under_another_key() {
    let Some(mut m) = Mount::with_names("tree-names-users", Names::Encrypted, &[]) else {
        return;
    };
    let Some(users) = common::test_users("tree-names-users") else {
        return;
    };
    let b_uid = users.b.uid;
    // The tree's key and the directory's key refuse B; K3 refuses no one.
    let tree_key = m.key_id_of("alias/kmsfs/default");
    let k = new_key(&m);
    let k3 = new_key(&m);
    allow_all_but(&m, &tree_key, Some(b_uid));
    allow_all_but(&m, &k, Some(b_uid));
    allow_all_but(&m, &k3, None);
    build(&m, &k);
    m.unmount();
    share_keystore(&m, users.gid);
    let bs = m.backing.to_str().unwrap().to_string();

    // B can read the backing directory and the keystore, but the tree's
    // key refuses B: no name comes out, and no destination is made.
    let home = m.tmp.path().join("b-home");
    fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(b_uid), Some(users.gid)).unwrap();
    let dest = home.join("names");
    let o = kmsfs_as(&m, &users.b, &["export", &bs, dest.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(EXIT_REFUSED), "{}", text(&o));
    assert!(text(&o).contains("names do not open"), "{}", text(&o));
    assert!(text(&o).contains("kms:Decrypt"), "{}", text(&o));
    assert!(!dest.exists(), "a refused export made {}", dest.display());
    for s in SECRETS {
        assert!(!contains(text(&o).as_bytes(), s), "{}", text(&o));
    }

    // Root exports; B imports that plain tree under K3: the directory whose
    // key refuses B is refused, its files are not imported under K3.
    let out = m.tmp.path().join("out");
    m.ok(&["export", &bs, out.to_str().unwrap()]);
    common::sh(m.tmp.path(), &format!("chmod -R o+rX {}", out.display()));
    let mine = home.join("backing");
    let o = kmsfs_as(
        &m,
        &users.b,
        &[
            "import",
            out.to_str().unwrap(),
            mine.to_str().unwrap(),
            "--key-id",
            &k3,
        ],
    );
    assert_eq!(o.status.code(), Some(EXIT_REFUSED), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.lines()
            .any(|l| l.starts_with("patients: ") && l.contains("denied")),
        "{t}"
    );
    assert!(t.contains("patients/sub/notes: "), "{t}");
    // What B's tree holds, as root sees it: patients is there, empty of
    // files and without a key of its own; the rest is under K3.
    let back = m.tmp.path().join("back");
    m.ok(&["export", mine.to_str().unwrap(), back.to_str().unwrap()]);
    assert_eq!(getfattr(&back.join("patients"), "user.kmsfs.key-id"), None);
    assert!(files_under(&back.join("patients")).is_empty());
    assert_eq!(fs::read(back.join("Readme")).unwrap(), b"lower");
    let f = m.ok(&["--output", "json", "fsck", mine.to_str().unwrap()]);
    let fv: Value = serde_json::from_str(&f).unwrap();
    let keys: Vec<&String> = fv["Keys"].as_object().unwrap().keys().collect();
    assert_eq!(keys, vec![&k3], "{fv}");
    m.backing = PathBuf::from(&bs);
}
