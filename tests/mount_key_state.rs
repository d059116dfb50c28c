//! EBS semantics: when another process disables a file's key (or schedules
//! its deletion), new opens fail with EACCES within a second, handles already
//! open keep working, stat and readdir keep working; enabling restores access.

mod common;

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use common::Mount;

const KEY: &str = "alias/kmsfs/default";

/// Waits (up to 1 s) until opening `name` fails with EACCES; returns how long it took.
fn wait_for_eacces(m: &Mount, name: &str) -> Duration {
    let t0 = Instant::now();
    loop {
        match File::open(m.p(name)) {
            Err(e) if e.raw_os_error() == Some(libc::EACCES) => return t0.elapsed(),
            Err(e) => panic!("open {name}: expected EACCES, got {e}"),
            Ok(_) if t0.elapsed() > Duration::from_secs(1) => {
                panic!("open {name} still succeeds 1 s after the key was disabled")
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[test]
fn disabled_key_refuses_new_opens_but_not_open_handles() {
    let Some(m) = Mount::new("disable") else {
        return;
    };
    fs::write(m.p("open-me"), b"kept open").unwrap();
    fs::write(m.p("cold"), b"never opened again").unwrap();
    let held = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.p("open-me"))
        .unwrap();
    m.ok(&["kms", "disable-key", "--key-id", KEY]);
    let took = wait_for_eacces(&m, "open-me");
    eprintln!("EACCES {took:?} after disable-key returned");
    assert_eq!(
        File::open(m.p("cold")).unwrap_err().raw_os_error(),
        Some(libc::EACCES)
    );
    // New files cannot get a data key either, and leave nothing behind.
    let e = File::create(m.p("new")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
    assert!(!m.b("new").exists());
    // The open handle keeps working, for reads and writes.
    let mut buf = [0u8; 9];
    held.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"kept open");
    held.write_all_at(b"KEPT", 0).unwrap();
    // stat and readdir keep working.
    assert_eq!(fs::metadata(m.p("cold")).unwrap().len(), 18);
    assert_eq!(fs::read_dir(&m.mnt).unwrap().count(), 2);
    // Enabling restores access.
    m.ok(&["kms", "enable-key", "--key-id", KEY]);
    let t0 = Instant::now();
    while File::open(m.p("cold")).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "still refused after enable-key"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(held);
    assert_eq!(fs::read(m.p("open-me")).unwrap(), b"KEPT open");
    assert_eq!(fs::read(m.p("cold")).unwrap(), b"never opened again");
}

#[test]
fn pending_deletion_refuses_and_cancel_plus_enable_restores() {
    let Some(m) = Mount::new("pending") else {
        return;
    };
    fs::write(m.p("f"), b"data").unwrap();
    // Read it so its data key is in the cache: the change must still win.
    assert_eq!(fs::read(m.p("f")).unwrap(), b"data");
    m.ok(&[
        "kms",
        "schedule-key-deletion",
        "--key-id",
        KEY,
        "--pending-window-in-days",
        "7",
    ]);
    wait_for_eacces(&m, "f");
    assert_eq!(fs::metadata(m.p("f")).unwrap().len(), 4);
    m.ok(&["kms", "cancel-key-deletion", "--key-id", KEY]);
    wait_for_eacces(&m, "f");
    m.ok(&["kms", "enable-key", "--key-id", KEY]);
    assert_eq!(fs::read(m.p("f")).unwrap(), b"data");
}

#[test]
fn files_under_another_key_are_unaffected() {
    let Some(mut m) = Mount::new("twokeys") else {
        return;
    };
    fs::write(m.p("default"), b"d").unwrap();
    let created: serde_json::Value =
        serde_json::from_str(&m.ok(&["--output", "json", "kms", "create-key"])).unwrap();
    let other = created["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string();
    m.set_args(&["--key-id", &other]);
    m.remount();
    fs::write(m.p("other"), b"o").unwrap();
    m.ok(&["kms", "disable-key", "--key-id", KEY]);
    wait_for_eacces(&m, "default");
    assert_eq!(fs::read(m.p("other")).unwrap(), b"o");
    // Mounting with a disabled key for new files is refused up front.
    m.unmount();
    m.ok(&["kms", "disable-key", "--key-id", &other]);
    let o = m
        .kmsfs()
        .args([
            "mount",
            m.backing.to_str().unwrap(),
            m.mnt.to_str().unwrap(),
            "--key-id",
            &other,
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("Disabled"), "{err}");
    assert!(!common::is_mounted(&m.mnt));
}

#[test]
fn rotation_keeps_old_files_readable_and_new_files_use_the_new_material() {
    let Some(m) = Mount::new("rotate") else {
        return;
    };
    fs::write(m.p("old"), b"before rotation").unwrap();
    m.ok(&["kms", "rotate-key-on-demand", "--key-id", KEY]);
    fs::write(m.p("new"), b"after rotation").unwrap();
    let version = |name: &str| {
        let j: serde_json::Value = serde_json::from_str(&m.ok(&[
            "--output",
            "json",
            "inspect",
            m.b(name).to_str().unwrap(),
        ]))
        .unwrap();
        j["KeyMaterialVersion"].as_u64().unwrap()
    };
    assert_eq!(version("old"), 1);
    assert_eq!(version("new"), 2);
    assert_eq!(fs::read(m.p("old")).unwrap(), b"before rotation");
    assert_eq!(fs::read(m.p("new")).unwrap(), b"after rotation");
}

#[test]
fn unusable_default_key_is_refused_up_front_by_mount_and_seal() {
    let Some(mut m) = Mount::new("defaultoff") else {
        return;
    };
    m.unmount();
    m.ok(&["kms", "disable-key", "--key-id", KEY]);
    // Without --key-id the default key is checked just like an explicit one:
    // exit 4 and a clear message, not a mount whose every create fails.
    let o = m
        .kmsfs()
        .arg("mount")
        .arg(&m.backing)
        .arg(&m.mnt)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert!(err.contains("Disabled"), "{err}");
    assert!(!common::is_mounted(&m.mnt));
    let input = m.tmp.path().join("in");
    fs::write(&input, b"secret").unwrap();
    let out = m.tmp.path().join("sealed");
    let o = m.run(&["seal", input.to_str().unwrap(), out.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert!(err.contains("Disabled"), "{err}");
    assert!(!out.exists());
    // Enabled again, both work.
    m.ok(&["kms", "enable-key", "--key-id", KEY]);
    m.ok(&["seal", input.to_str().unwrap(), out.to_str().unwrap()]);
    m.mount();
    fs::write(m.p("f"), b"ok").unwrap();
}

/// M3: a truncate by path is a use of the file's key by its caller, checked
/// like an open even while someone else holds the file open (their open says
/// nothing about this caller); ftruncate on the holder's own handle works.
#[test]
fn truncate_by_path_checks_the_callers_key_even_while_the_file_is_open() {
    if common::require_tool("truncpath", "runuser").is_none() {
        return;
    }
    let Some(mut m) = Mount::new("truncpath") else {
        return;
    };
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(m.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    m.set_args(&["-o", "allow_other"]);
    m.remount();
    fs::write(m.p("f"), b"content").unwrap();
    fs::set_permissions(m.p("f"), fs::Permissions::from_mode(0o666)).unwrap();
    // uid 1 (daemon) may not use the key.
    let policy = r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*"},
        {"Effect":"Deny","Principal":{"kmsfs":"uid:1"},"Action":"kms:*"}]}"#;
    let key_id = m.key_id_of(KEY);
    m.ok(&[
        "kms",
        "put-key-policy",
        "--key-id",
        &key_id,
        "--policy",
        policy,
    ]);
    let held = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.p("f"))
        .unwrap();
    let as_daemon = |cmd: &str| {
        std::process::Command::new("runuser")
            .args(["-u", "daemon", "--", "sh", "-c", cmd])
            .current_dir(&m.mnt)
            .output()
            .unwrap()
    };
    // truncate(2) by path, as `truncate` the command does not: it opens first.
    let by_path = |size: u64| format!("python3 -c \"import os; os.truncate('f', {size})\"");
    let backing_len = fs::metadata(m.b("f")).unwrap().len();
    // The denied user's open is refused; so is its truncate by path, down or up.
    assert!(!as_daemon("cat f").status.success());
    for size in [3, 100_000] {
        let o = as_daemon(&by_path(size));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "truncate to {size} as uid 1 succeeded");
        assert!(err.contains("Permission denied"), "{err}");
    }
    assert_eq!(fs::metadata(m.p("f")).unwrap().len(), 7);
    assert_eq!(fs::metadata(m.b("f")).unwrap().len(), backing_len);
    // Root (allowed) truncates by path while its handle stays open.
    common::sh(&m.mnt, &by_path(4));
    let mut buf = [0u8; 4];
    held.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"cont");
    // A disabled key: truncate by path is refused even for root, while the
    // open handle's own ftruncate keeps working (EBS semantics).
    m.ok(&["kms", "disable-key", "--key-id", KEY]);
    wait_for_eacces(&m, "f");
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg(by_path(1))
        .current_dir(&m.mnt)
        .output()
        .unwrap();
    assert!(
        !o.status.success(),
        "truncate by path with the key disabled"
    );
    assert_eq!(fs::metadata(m.p("f")).unwrap().len(), 4);
    held.set_len(2).unwrap();
    held.read_exact_at(&mut buf[..2], 0).unwrap();
    assert_eq!(&buf[..2], b"co");
    assert_eq!(fs::metadata(m.p("f")).unwrap().len(), 2);
}
