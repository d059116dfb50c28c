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
}
