//! Paths a root command takes from a user's environment, keystore or mount
//! options (issue 15, items 8, 9 and 11), through the real binary: kmsfs-b's
//! link as his log directory, his keystore's `backings` as a link, a
//! passphrase file others can read or someone else owns, a log file that is
//! not a kmsfs log. Each is refused and nothing outside changes.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{MountGuard, TestUsers, fuse_available, kmsfs};

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// A temporary directory others can enter, a root-only directory in it,
/// a backing directory and a mount point.
struct Scene {
    tmp: tempfile::TempDir,
    root_only: PathBuf,
    backing: PathBuf,
    mnt: PathBuf,
}

fn scene(test: &str) -> Scene {
    let tmp = common::tempdir(test);
    chmod(tmp.path(), 0o755);
    let p = |n: &str| tmp.path().join(n);
    let (root_only, backing, mnt) = (p("root-only"), p("backing"), p("mnt"));
    for d in [&root_only, &backing, &mnt] {
        fs::create_dir(d).unwrap();
    }
    chmod(&root_only, 0o700);
    Scene {
        tmp,
        root_only,
        backing,
        mnt,
    }
}

impl Scene {
    fn p(&self, n: &str) -> PathBuf {
        self.tmp.path().join(n)
    }

    fn entries(&self, d: &Path) -> Vec<String> {
        let mut v: Vec<_> = fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// `kmsfs --keystore KS mount [-o OPTS] BACKING MNT` as root.
    fn mount(&self, ks: &Path, opts: Option<&str>, env: &[(&str, &OsStr)]) -> Output {
        let mut c = kmsfs();
        c.arg("--keystore").arg(ks).arg("mount");
        if let Some(o) = opts {
            c.arg("-o").arg(o);
        }
        c.arg(&self.backing).arg(&self.mnt);
        // A HOME given decides the log directory only without XDG_STATE_HOME
        // (which scripts/test.sh sets for the whole suite).
        if env.iter().any(|(k, _)| *k == "HOME") {
            c.env_remove("XDG_STATE_HOME");
        }
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    }

    /// A keystore (root key file) at `ks`.
    fn init(&self, ks: &Path) {
        let o = kmsfs()
            .arg("--keystore")
            .arg(ks)
            .arg("init")
            .output()
            .unwrap();
        assert!(o.status.success(), "init: {}", common::describe(&o));
    }

    fn unmount(&self) {
        let o = kmsfs().arg("unmount").arg(&self.mnt).output().unwrap();
        assert!(o.status.success(), "unmount: {}", common::describe(&o));
    }
}

fn users(test: &str) -> Option<TestUsers> {
    common::test_users(test)
}

#[test]
fn a_log_directory_through_another_users_link_is_refused() {
    if !fuse_available("log_dir_link") {
        return;
    }
    let Some(u) = users("log_dir_link") else {
        return;
    };
    let s = scene("log_dir_link");
    let home = s.p("bhome");
    fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(u.b.uid), Some(u.b.gid)).unwrap();
    // kmsfs-b's ~/.local/state/kmsfs leads into a root-only directory.
    let o = u.b.sh(
        &home,
        &format!(
            "mkdir -p .local/state && ln -s {} .local/state/kmsfs",
            s.root_only.display()
        ),
    );
    assert!(o.status.success(), "{}", common::describe(&o));
    let ks = s.p("ks");
    s.init(&ks);
    // A root mount run with kmsfs-b's environment (sudo -E).
    let o = s.mount(&ks, None, &[("HOME", home.as_os_str())]);
    let _guard = MountGuard(s.mnt.clone());
    assert!(
        !o.status.success(),
        "mounted, logging through kmsfs-b's link: {}",
        common::describe(&o)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("refusing the log directory"),
        "{}",
        common::describe(&o)
    );
    assert!(
        s.entries(&s.root_only).is_empty(),
        "{:?}",
        s.entries(&s.root_only)
    );
}

#[test]
fn a_keystore_owners_backings_link_is_not_written_through() {
    let Some(u) = users("backings_link") else {
        return;
    };
    let s = scene("backings_link");
    let ks = s.p("ks");
    let o = kmsfs()
        .arg("--keystore")
        .arg(&ks)
        .arg("init")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::describe(&o));
    // The keystore is kmsfs-b's; he makes its backings/ a link.
    common::sh(
        s.tmp.path(),
        &format!("chown -R {} {}", u.b.uid, ks.display()),
    );
    let o = u.b.sh(
        &ks,
        &format!(
            "rm -rf backings && ln -s {} backings",
            s.root_only.display()
        ),
    );
    assert!(o.status.success(), "{}", common::describe(&o));
    let src = s.p("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"plain").unwrap();
    let o = kmsfs()
        .arg("--keystore")
        .arg(&ks)
        .arg("import")
        .arg(&src)
        .arg(&s.backing)
        .output()
        .unwrap();
    // The import itself goes on; the record is not written through the link.
    assert!(o.status.success(), "{}", common::describe(&o));
    assert!(
        s.entries(&s.root_only).is_empty(),
        "{:?}",
        s.entries(&s.root_only)
    );
    assert!(
        ks.join("backings")
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_symlink()
    );
    // A real backings/ of the owner's works as before.
    fs::remove_file(ks.join("backings")).unwrap();
    let o = kmsfs()
        .arg("--keystore")
        .arg(&ks)
        .arg("import")
        .arg(&src)
        .arg(s.p("backing2"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::describe(&o));
    assert_eq!(s.entries(&ks.join("backings")).len(), 1);
}

#[test]
fn a_passphrase_file_option_others_can_read_or_own_is_refused() {
    if !fuse_available("passphrase_option") {
        return;
    }
    let Some(u) = users("passphrase_option") else {
        return;
    };
    let s = scene("passphrase_option");
    let ks = s.p("ks");
    let private = s.p("pass");
    fs::write(&private, b"a passphrase long enough\n").unwrap();
    chmod(&private, 0o600);
    let o = kmsfs()
        .arg("--keystore")
        .arg(&ks)
        .args(["--passphrase-file"])
        .arg(&private)
        .args(["init", "--with-passphrase"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::describe(&o));
    let readable = s.p("pass-644");
    fs::copy(&private, &readable).unwrap();
    chmod(&readable, 0o644);
    let bobs = s.p("pass-b");
    fs::copy(&private, &bobs).unwrap();
    chmod(&bobs, 0o600);
    std::os::unix::fs::chown(&bobs, Some(u.b.uid), Some(u.b.gid)).unwrap();
    let _guard = MountGuard(s.mnt.clone());
    for bad in [&readable, &bobs] {
        let opt = format!("passphrase_file={}", bad.display());
        let o = s.mount(&ks, Some(&opt), &[]);
        assert!(
            !o.status.success(),
            "mounted with {}: {}",
            bad.display(),
            common::describe(&o)
        );
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("refusing the passphrase file"),
            "{}",
            common::describe(&o)
        );
    }
    // Root's own 0600 file is taken.
    let opt = format!("passphrase_file={}", private.display());
    let o = s.mount(&ks, Some(&opt), &[]);
    assert!(o.status.success(), "{}", common::describe(&o));
    s.unmount();
}

#[test]
fn a_log_file_option_naming_another_file_is_refused() {
    if !fuse_available("log_file_option") {
        return;
    }
    let s = scene("log_file_option");
    let ks = s.p("ks");
    s.init(&ks);
    let other = s.p("notes");
    let kept = b"root's notes: not a log\n";
    fs::write(&other, kept).unwrap();
    chmod(&other, 0o644);
    let _guard = MountGuard(s.mnt.clone());
    let o = s.mount(&ks, Some(&format!("log_file={}", other.display())), &[]);
    assert!(
        !o.status.success(),
        "mounted, logging into another file: {}",
        common::describe(&o)
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not a kmsfs log"),
        "{}",
        common::describe(&o)
    );
    assert_eq!(fs::read(&other).unwrap(), kept);
    assert_eq!(other.metadata().unwrap().mode() & 0o7777, 0o644);
    // A new log, then the same log again: a kmsfs log is appended to.
    let log = s.p("k.log");
    for _ in 0..2 {
        let opt = format!("log_file={}", log.display());
        let o = s.mount(&ks, Some(&opt), &[("RUST_LOG", OsStr::new("info"))]);
        assert!(o.status.success(), "{}", common::describe(&o));
        s.unmount();
    }
    let t = fs::read_to_string(&log).unwrap();
    assert!(t.lines().count() >= 2, "{t}");
}

#[test]
fn links_in_place_of_the_backing_roots_own_files_are_not_followed() {
    if !fuse_available("backing_root_links") {
        return;
    }
    let Some(u) = users("backing_root_links") else {
        return;
    };
    let s = scene("backing_root_links");
    fs::write(s.root_only.join("secret"), b"ROOT-ONLY-SECRET").unwrap();
    chmod(&s.root_only.join("secret"), 0o600);
    // The backing directory is kmsfs-b's: his links stand where the mount
    // keeps its lock and its marker, leading into a root-only directory.
    std::os::unix::fs::chown(&s.backing, Some(u.b.uid), Some(u.b.gid)).unwrap();
    let o = u.b.sh(
        &s.backing,
        &format!(
            "ln -s {0}/planted .kmsfs.lock && ln -s {0}/secret .kmsfs.json",
            s.root_only.display()
        ),
    );
    assert!(o.status.success(), "{}", common::describe(&o));
    let ks = s.p("ks");
    s.init(&ks);
    let o = s.mount(&ks, None, &[]);
    let _guard = MountGuard(s.mnt.clone());
    assert!(
        !o.status.success(),
        "mounted through kmsfs-b's links: {}",
        common::describe(&o)
    );
    // Nothing made in the root-only directory, the file there untouched
    // and not shown.
    assert_eq!(s.entries(&s.root_only), ["secret"]);
    assert_eq!(
        fs::read(s.root_only.join("secret")).unwrap(),
        b"ROOT-ONLY-SECRET"
    );
    assert!(!common::describe(&o).contains("ROOT-ONLY"));
    // Without the lock's link, the marker's link is refused too.
    fs::remove_file(s.backing.join(".kmsfs.lock")).unwrap();
    let o = s.mount(&ks, None, &[]);
    assert!(
        !o.status.success(),
        "mounted with kmsfs-b's marker link: {}",
        common::describe(&o)
    );
    assert_eq!(
        fs::read(s.root_only.join("secret")).unwrap(),
        b"ROOT-ONLY-SECRET"
    );
}
