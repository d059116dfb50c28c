//! A new user's first mounts, through the real binary: a keystore is made
//! by itself only at the default location (a mistyped `--keystore` is
//! refused, naming `kmsfs init --keystore`), a refused mount leaves nothing
//! in the backing directory, and a mount point that got plain files while
//! nothing was mounted is refused with a hint that says so (not "swap the
//! arguments").

mod common;

use std::path::Path;
use std::process::Output;

use common::{MountGuard, fuse_available, is_mounted, kmsfs, tempdir};

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `kmsfs [keystore] mount BACKING MNT` with HOME (the default keystore's
/// home) at `home`.
fn mount_as_new_user(home: &Path, args: &[&str], backing: &Path, mnt: &Path) -> Output {
    kmsfs()
        .env("HOME", home)
        .env_remove("XDG_STATE_HOME")
        .args(args)
        .arg("mount")
        .arg(backing)
        .arg(mnt)
        .output()
        .expect("run kmsfs mount")
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_mistyped_keystore_is_refused_and_the_default_one_is_made() {
    if !fuse_available("first-keystore") {
        return;
    }
    let t = tempdir("first-keystore");
    let home = t.path().join("home");
    let backing = t.path().join("secret.enc");
    let mnt = t.path().join("secret");
    for d in [&home, &backing, &mnt] {
        std::fs::create_dir(d).unwrap();
    }
    let _g = MountGuard(mnt.clone());
    let typo = t.path().join("keystroe");
    for args in [
        vec!["--keystore", typo.to_str().unwrap()],
        vec!["-o", &format!("keystore={}", typo.display())],
    ] {
        // `-o` goes after the subcommand.
        let o = if args[0] == "-o" {
            kmsfs()
                .env("HOME", &home)
                .arg("mount")
                .arg(&backing)
                .arg(&mnt)
                .args(&args)
                .output()
                .unwrap()
        } else {
            mount_as_new_user(&home, &args, &backing, &mnt)
        };
        assert_eq!(o.status.code(), Some(6), "{}", text(&o));
        assert!(
            text(&o).contains(&format!("kmsfs init --keystore {}", typo.display())),
            "{}",
            text(&o)
        );
        assert!(!typo.exists(), "a keystore was made at the typo");
        assert!(!is_mounted(&mnt));
        // Nothing written: no lock, no marker.
        assert_eq!(entries(&backing), Vec::<String>::new());
    }
    // At the default location, the first mount makes it and says so.
    let o = mount_as_new_user(&home, &[], &backing, &mnt);
    assert!(o.status.success(), "{}", text(&o));
    assert!(is_mounted(&mnt));
    let ks = home.join(".local/share/kmsfs");
    assert!(ks.join("root.key").exists());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("created a keystore in {}", ks.display())),
        "{err}"
    );
    assert!(!err.contains(" WARN "), "a log line, not a message: {err}");
    let o = kmsfs().arg("unmount").arg(&mnt).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn plain_files_in_the_mount_point_get_a_hint_that_says_where_they_are() {
    if !fuse_available("first-plain") {
        return;
    }
    let t = tempdir("first-plain");
    let home = t.path().join("home");
    let backing = t.path().join("secret.enc");
    let mnt = t.path().join("secret");
    for d in [&home, &backing, &mnt] {
        std::fs::create_dir(d).unwrap();
    }
    let _g = MountGuard(mnt.clone());
    // A program wrote into the mount point while nothing was mounted.
    std::fs::write(mnt.join("notes.txt"), b"meant to be encrypted").unwrap();
    let o = mount_as_new_user(&home, &[], &backing, &mnt);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("not empty"), "{out}");
    assert!(out.contains("1 plain file"), "{out}");
    assert!(out.contains("not encrypted"), "{out}");
    assert!(
        out.contains(&mnt.join("notes.txt").display().to_string()),
        "{out}"
    );
    assert!(!out.contains("did you mean"), "{out}");
    assert!(!is_mounted(&mnt));
    assert_eq!(entries(&backing), Vec::<String>::new());
    assert!(!home.join(".local/share/kmsfs").exists());
    // The hint's command, run as given, moves them aside and the mount works.
    let cmd = out.split('`').nth(1).unwrap_or_default();
    assert!(cmd.starts_with("mv "), "{out}");
    let o = common::command("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(o.status.success(), "{cmd}: {}", text(&o));
    assert_eq!(
        std::fs::read(t.path().join("secret.plain/notes.txt")).unwrap(),
        b"meant to be encrypted"
    );
    let o = mount_as_new_user(&home, &[], &backing, &mnt);
    assert!(o.status.success(), "{}", text(&o));
    let o = kmsfs().arg("unmount").arg(&mnt).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn a_user_without_dev_fuse_is_told_the_root_commands_that_work() {
    let Some(users) = common::test_users("first-user") else {
        return;
    };
    if !fuse_available("first-user") {
        return;
    }
    if std::fs::metadata("/dev/fuse").is_ok_and(|m| {
        use std::os::unix::fs::PermissionsExt;
        m.permissions().mode() & 0o006 == 0o006
    }) {
        common::skip("first-user", "/dev/fuse is open to every user here");
        return;
    }
    let t = tempdir("first-user");
    let dir = t.path().join("u");
    let a = &users.a;
    for d in [dir.clone(), dir.join("b"), dir.join("m")] {
        std::fs::create_dir(&d).unwrap();
        std::os::unix::fs::chown(&d, Some(a.uid), Some(a.gid)).unwrap();
    }
    let (b, mnt) = (dir.join("b"), dir.join("m"));
    let o = a
        .command(&dir, common::BIN)
        .env("HOME", &dir)
        .args(["mount", "b", "m"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    let ks = format!("/var/lib/kmsfs/{}", a.name);
    let init = format!("sudo kmsfs --keystore {ks} init");
    let mount = format!(
        "sudo kmsfs --keystore {ks} mount {} {} -o allow_other",
        b.display(),
        mnt.display()
    );
    let hint = text(&o);
    assert!(hint.contains(&init) && hint.contains(&mount), "{hint}");
    assert_eq!(entries(&b), Vec::<String>::new());

    // The hint's commands, as root (sudo is root already), work and let
    // the user in.
    struct Gone(String);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _ks = Gone(ks.clone());
    let _g = MountGuard(mnt.clone());
    let run = |cmd: &str| {
        let args: Vec<&str> = cmd.split(' ').skip(2).collect();
        kmsfs()
            .env_remove("XDG_STATE_HOME")
            .env("HOME", t.path())
            .args(&args)
            .output()
            .unwrap()
    };
    let o = run(&init);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&mount);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("warning"),
        "{}",
        text(&o)
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!(
            "mounted {} on {} (key ",
            b.display(),
            mnt.display()
        )) && out.contains(&format!("keystore {ks})")),
        "{out}"
    );
    let o = a.sh(&dir, "echo mine > m/f && cat m/f");
    assert!(o.status.success(), "{}", text(&o));
    let o = kmsfs().arg("unmount").arg(&mnt).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));

    // Without allow_other: warned, and the warning is true.
    let o = kmsfs()
        .arg("--keystore")
        .arg(&ks)
        .arg("mount")
        .arg(&b)
        .arg(&mnt)
        .arg("--log-file")
        .arg(t.path().join("log"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("belongs to user {}", a.name)) && err.contains("-o allow_other"),
        "{err}"
    );
    let o = a.sh(&dir, "ls m");
    assert!(!o.status.success(), "the user entered the mount");
    let o = kmsfs().arg("unmount").arg(&mnt).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
}
