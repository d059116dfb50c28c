//! Exit codes and messages as documented (README, `kmsfs --help`), through
//! the real binary: unmount of a path that is not mounted is "no such
//! mount" (3); `status` of a mount whose daemon is gone says "stale" and
//! fails (1) with the way out; no passphrase and no terminal is a keystore
//! that cannot be opened (6) with the remedy; `init` over a keystore is
//! "already there" (1); a missing file is named; `inspect` of a path inside
//! a mount names the mount and the backing file; `export` of a served tree
//! names the mount; a warning is a message, not a log line; `--help` says
//! what `--output` prints by default.

mod common;

use common::{EXIT_KEYSTORE, Ks, Mount, describe, fails, kill, wait_until};

#[test]
fn unmount_of_an_unmounted_path_is_not_found() {
    let t = common::tempdir("exit-unmount");
    let o = common::kmsfs()
        .arg("unmount")
        .arg(t.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("is not mounted"), "{err}");
    assert!(!err.contains(" WARN "), "{err}");
}

#[test]
fn status_of_a_dead_daemon_says_stale_and_fails() {
    let Some(mut m) = Mount::new("exit-stale") else {
        return;
    };
    let pid = m.daemon_pid().expect("daemon pid");
    kill("-KILL", pid);
    wait_until("the daemon is gone", || !common::process_alive(pid));
    let o = m.run(&["status", m.mnt.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert!(out.contains("stale"), "{out}");
    assert!(err.contains("stale mount"), "{err}");
    assert!(
        err.contains(&format!("umount -l {}", m.mnt.display())),
        "{err}"
    );
    // Mounting again detaches it, and status is clean again.
    m.forget_mounted();
    m.mount();
    let o = m.run(&["status", m.mnt.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn no_passphrase_and_no_terminal_is_a_keystore_error_with_its_remedy() {
    let ks = Ks::empty();
    let o = ks.run_env(
        &["init", "--with-passphrase"],
        &[("KMSFS_PASSPHRASE", "correct horse")],
    );
    assert!(o.status.success(), "{}", describe(&o));
    // Output piped, stdin not a terminal: the test's own situation.
    let o = ks.run(&["kms", "list-keys"]);
    let err = fails(&o, EXIT_KEYSTORE, "no terminal");
    assert!(
        err.contains("--passphrase-file") && err.contains("KMSFS_PASSPHRASE"),
        "{err}"
    );
    assert!(
        !err.contains("--help") && !err.contains("list-keys"),
        "{err}"
    );
}

#[test]
fn init_over_a_keystore_is_already_there() {
    let ks = Ks::new();
    let o = ks.run(&["init"]);
    let err = fails(&o, 1, "exists already");
    assert!(err.contains(&ks.path.display().to_string()), "{err}");
}

#[test]
fn a_missing_file_is_named() {
    let ks = Ks::new();
    let missing = ks.file("no-such-file");
    for cmd in ["inspect", "unseal", "seal"] {
        let mut args = vec![cmd, missing.to_str().unwrap()];
        let out = ks.file("out");
        if cmd != "inspect" {
            args.push(out.to_str().unwrap());
        }
        let err = fails(&ks.run(&args), 3, "No such file");
        assert!(err.contains(missing.to_str().unwrap()), "{cmd}: {err}");
    }
    // A blob or policy read from a file, and the directories the tree
    // commands start from: named, and no advice to create what must hold data.
    let m = missing.to_str().unwrap();
    let (fileb, file) = (format!("fileb://{m}"), format!("file://{m}"));
    let out = ks.file("out");
    let out = out.to_str().unwrap();
    for args in [
        vec![
            "kms",
            "encrypt",
            "--key-id",
            "alias/x",
            "--plaintext",
            &fileb,
        ],
        vec!["kms", "decrypt", "--ciphertext-blob", &file],
        vec!["export", m, out],
        vec!["import", m, out],
        vec!["set-default-key", m, "--key-id", "alias/x"],
    ] {
        let err = fails(&ks.run(&args), 3, "No such file");
        assert!(err.contains(m), "{args:?}: {err}");
        assert!(!err.contains("mkdir"), "{args:?}: {err}");
    }
}

#[test]
fn inspect_inside_a_mount_names_the_mount_and_the_backing_file() {
    let Some(m) = Mount::new("exit-inspect-mount") else {
        return;
    };
    std::fs::write(m.p("note.txt"), b"plain").unwrap();
    for path in [m.p("note.txt"), m.mnt.clone()] {
        let o = m.run(&["inspect", path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains("inside the kmsfs mount"), "{err}");
        assert!(!err.contains("corrupt"), "{err}");
        if path != m.mnt {
            let backing_file = m.b("note.txt");
            assert!(
                err.contains(&format!("kmsfs inspect {}", backing_file.display())),
                "{err}"
            );
            // The hint's command works.
            let out = m.ok(&["inspect", backing_file.to_str().unwrap()]);
            assert!(out.contains("key"), "{out}");
        }
    }
}

#[test]
fn export_of_a_served_tree_names_the_mount() {
    let Some(m) = Mount::new("exit-export-served") else {
        return;
    };
    std::fs::write(m.p("a.txt"), b"plain").unwrap();
    let dest = m.tmp.path().join("export");
    let o = m.run(&[
        "export",
        m.backing.to_str().unwrap(),
        dest.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("is mounted at {}", m.mnt.display())),
        "{err}"
    );
    assert!(
        err.contains(&format!("kmsfs unmount {}", m.mnt.display())),
        "{err}"
    );
    assert!(!err.contains("sharedstorage"), "{err}");
    assert!(!dest.exists(), "export wrote while refused");
}

#[test]
fn a_warning_is_a_message_not_a_log_line() {
    let ks = Ks::new();
    ks.create_key();
    // A damaged current generation: the command goes on from the previous
    // one and warns.
    let f = ks.keystore_file();
    let mut b = std::fs::read(&f).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x5a;
    std::fs::write(&f, b).unwrap();
    let o = ks.run(&["kms", "list-keys"]);
    assert!(o.status.success(), "{}", describe(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.starts_with("kmsfs: warning: "), "{err}");
    for log_mark in [" WARN ", "kmsfs::", "kmsfs["] {
        assert!(!err.contains(log_mark), "a log line: {err}");
    }
}

#[test]
fn help_says_what_output_prints_by_default() {
    let o = common::kmsfs().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(
        help.contains("[default: kmsfs's readable layouts]"),
        "{help}"
    );
    assert!(!help.contains("[default: text]"), "{help}");
    assert!(help.contains("yaml"), "{help}");
}
