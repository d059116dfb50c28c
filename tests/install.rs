//! A real install: scripts/install.sh puts the binary, its man pages and
//! completions where the system looks; `install-helper` points the mount(8)
//! helper at an installed binary, refuses a cargo build output (which `cargo
//! clean` removes) and leaves another binary's helper alone without --force.

mod common;

use std::path::{Path, PathBuf};

use common::{BIN, describe, kmsfs, tempdir};

/// `BIN` at `dir/bin/kmsfs`, outside any cargo target directory, as an
/// install puts it (a hard link: the same file, no copy of 200 MB).
fn installed_at(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let exe = bin.join("kmsfs");
    if std::fs::hard_link(BIN, &exe).is_err() {
        std::fs::copy(BIN, &exe).unwrap();
    }
    exe
}

fn helper(exe: &Path, sbin: &Path, force: bool) -> std::process::Output {
    let mut c = common::command(exe);
    c.arg("install-helper").arg("--dir").arg(sbin);
    if force {
        c.arg("--force");
    }
    c.output().unwrap()
}

#[test]
fn the_install_script_puts_everything_in_standard_places() {
    let t = tempdir("install");
    let prefix = t.path().join("usr");
    let o = common::command("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install.sh"))
        .args(["--binary", BIN, "--no-helper", "--prefix"])
        .arg(&prefix)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", describe(&o));
    let exe = prefix.join("bin/kmsfs");
    let v = common::command(&exe).arg("--version").output().unwrap();
    assert!(
        v.status.success() && v.stdout.starts_with(b"kmsfs "),
        "{}",
        describe(&v)
    );
    let man = std::fs::read_to_string(prefix.join("share/man/man1/kmsfs.1")).unwrap();
    assert!(
        man.contains("EXIT STATUS") && man.contains("FILES"),
        "{man}"
    );
    assert!(prefix.join("share/man/man1/kmsfs-mount.1").is_file());
    let bash = prefix.join("share/bash-completion/completions/kmsfs");
    let st = common::command("bash")
        .arg("-n")
        .arg(&bash)
        .status()
        .unwrap();
    assert!(st.success(), "bash -n rejects {}", bash.display());
    let zsh = std::fs::read_to_string(prefix.join("share/zsh/site-functions/_kmsfs")).unwrap();
    assert!(zsh.starts_with("#compdef kmsfs"), "{zsh}");
    let fish =
        std::fs::read_to_string(prefix.join("share/fish/vendor_completions.d/kmsfs.fish")).unwrap();
    assert!(fish.contains("complete -c kmsfs"), "{fish}");
    // Nothing else was touched: no helper without root's intent.
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!out.contains("mount.fuse.kmsfs ->"), "{out}");
}

#[test]
fn the_helper_points_at_an_installed_binary_and_keeps_anothers() {
    let t = tempdir("install_helper");
    let sbin = t.path().join("sbin");
    std::fs::create_dir(&sbin).unwrap();
    let link = sbin.join("mount.fuse.kmsfs");

    // The build output is refused: `cargo clean` would break boot mounts.
    let o = kmsfs()
        .args(["install-helper", "--dir"])
        .arg(&sbin)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cargo build output") && err.contains("scripts/install.sh"),
        "{err}"
    );
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "a helper was made"
    );

    let a = installed_at(&t.path().join("a"));
    let b = installed_at(&t.path().join("b"));
    let o = helper(&a, &sbin, false);
    assert!(o.status.success(), "{}", describe(&o));
    assert_eq!(std::fs::read_link(&link).unwrap(), a);
    let o = helper(&a, &sbin, false);
    assert!(o.status.success(), "{}", describe(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("already there"));

    // Another binary's helper is not silently repointed.
    let o = helper(&b, &sbin, false);
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("points at another kmsfs binary") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read_link(&link).unwrap(), a);
    let o = helper(&b, &sbin, true);
    assert!(o.status.success(), "{}", describe(&o));
    assert_eq!(std::fs::read_link(&link).unwrap(), b);

    // A helper whose binary is gone is replaced without --force.
    std::fs::remove_file(&b).unwrap();
    let o = helper(&a, &sbin, false);
    assert!(o.status.success(), "{}", describe(&o));
    assert_eq!(std::fs::read_link(&link).unwrap(), a);

    // A file that is not a link is kept unless --force.
    std::fs::remove_file(&link).unwrap();
    std::fs::write(&link, b"#!/bin/sh\n").unwrap();
    let o = helper(&a, &sbin, false);
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    assert_eq!(std::fs::read(&link).unwrap(), b"#!/bin/sh\n");
    let o = helper(&a, &sbin, true);
    assert!(o.status.success(), "{}", describe(&o));
    assert_eq!(std::fs::read_link(&link).unwrap(), a);
    // No temporary names left beside it.
    let names: Vec<_> = std::fs::read_dir(&sbin)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

/// The scripts find the binary where cargo put it: CARGO_TARGET_DIR is
/// honoured, and no script names ./target itself.
#[test]
fn the_scripts_honour_cargo_target_dir() {
    let root = env!("CARGO_MANIFEST_DIR");
    let o = common::command("bash")
        .args(["-c", ". scripts/cargo_env.sh && echo \"$target\""])
        .current_dir(root)
        .env("CARGO_TARGET_DIR", "/elsewhere/kmsfs-target")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", describe(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "/elsewhere/kmsfs-target"
    );
    for e in std::fs::read_dir(Path::new(root).join("scripts"))
        .unwrap()
        .flatten()
    {
        let p = e.path();
        // pyenv.sh keeps the test venv in the checkout's target/: not a
        // cargo output, found there by the tests too.
        if p.extension().is_none_or(|x| x != "sh") || p.ends_with("pyenv.sh") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        for bad in ["$PWD/target/", "./target/", "=target/"] {
            assert!(!text.contains(bad), "{} names {bad}", p.display());
        }
        let own_build = text.lines().any(|l| {
            let l = l.trim_start();
            !l.starts_with('#')
                && (l.starts_with("cargo build")
                    || l.contains("&& cargo build")
                    || l.contains("|| cargo build"))
        });
        assert!(
            !own_build || p.ends_with("cargo_env.sh"),
            "{} builds without scripts/cargo_env.sh's build (which shows progress)",
            p.display()
        );
    }
}
