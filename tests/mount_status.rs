//! `kmsfs status` and `kmsfs remount` through the real binary: the running
//! mount reports its daemon, backing directory, keystore, key and state, open
//! files, data-key cache and key-service counts, errors and log; a remount
//! flips the same daemon read-only and back; fstab's options are accepted
//! on the command line, and kmsfs's settings can come as `-o` options.

mod common;

use serde_json::Value;

use common::{Mount, MountGuard, fuse_available, kmsfs};

fn status(m: &Mount) -> Value {
    let out = m.ok(&["--output", "json", "status", m.mnt.to_str().unwrap()]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let mounts = v["Mounts"].as_array().unwrap();
    assert_eq!(mounts.len(), 1, "{out}");
    mounts[0].clone()
}

#[test]
fn status_reports_the_running_mount() {
    let Some(m) = Mount::new("status") else {
        return;
    };
    std::fs::write(m.p("a"), b"one").unwrap();
    let held = std::fs::File::open(m.p("a")).unwrap();
    let s = status(&m);
    assert_eq!(s["Pid"].as_u64(), m.daemon_pid().map(u64::from));
    // --query applies to status as to every JSON result (scripts take the
    // daemon's pid this way).
    let pid = m.ok(&[
        "--output",
        "json",
        "--query",
        "Mounts[0].Pid",
        "status",
        m.mnt.to_str().unwrap(),
    ]);
    assert_eq!(
        pid.trim().parse::<u64>().ok(),
        s["Pid"].as_u64(),
        "status --query Mounts[0].Pid printed {pid:?}"
    );
    assert_eq!(s["Backing"], m.backing.to_str().unwrap());
    assert_eq!(s["Keystore"], m.keystore.to_str().unwrap());
    assert_eq!(s["LogFile"], m.log.to_str().unwrap());
    assert_eq!(s["KeyState"], "Enabled");
    assert_eq!(s["ReadOnly"], false);
    assert_eq!(s["OpenFiles"], 1);
    let key = s["KeyId"].as_str().unwrap().to_string();
    let d: Value = serde_json::from_str(&m.ok(&[
        "--output",
        "json",
        "kms",
        "describe-key",
        "--key-id",
        "alias/kmsfs/default",
    ]))
    .unwrap();
    assert_eq!(d["KeyMetadata"]["KeyId"], key.as_str());
    let calls = s["KeyServiceCalls"].as_u64().unwrap();
    assert!(calls >= 1, "creating a file asked for a data key: {s}");
    drop(held);

    // Disabling the key shows in the status; a refused open counts.
    m.ok(&["kms", "disable-key", "--key-id", &key]);
    let s = status(&m);
    assert_eq!(s["KeyState"], "Disabled");
    assert_eq!(s["OpenFiles"], 0);
    m.ok(&["kms", "enable-key", "--key-id", &key]);

    // Reading twice: a miss, then the cache.
    let before = status(&m);
    std::fs::read(m.p("a")).unwrap();
    std::fs::read(m.p("a")).unwrap();
    let after = status(&m);
    let hits = |v: &Value| v["KeyCacheHits"].as_u64().unwrap();
    let misses = |v: &Value| v["KeyCacheMisses"].as_u64().unwrap();
    assert!(hits(&after) + misses(&after) > hits(&before) + misses(&before));

    // A corrupt block counts as an error: a file sealed into the backing
    // directory beside the mount, one byte of its first block flipped.
    let plain = m.tmp.path().join("plain");
    std::fs::write(&plain, vec![1u8; 8192]).unwrap();
    m.ok(&["seal", plain.to_str().unwrap(), m.b("c").to_str().unwrap()]);
    let mut bytes = std::fs::read(m.b("c")).unwrap();
    let at = kmsfs::format::Layout::NEW.block_backing_offset(0) as usize + 40;
    bytes[at] ^= 1;
    std::fs::write(m.b("c"), &bytes).unwrap();
    let e = std::fs::read(m.p("c")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    assert!(status(&m)["IoErrors"].as_u64().unwrap() >= 1);
    let text = m.ok(&["status", m.mnt.to_str().unwrap()]);
    for label in [
        "daemon pid:",
        "backing directory:",
        "keystore:",
        "key for new files:",
        "open files:",
        "data-key cache:",
        "key-service calls:",
        "I/O errors (EIO):",
        "log:",
    ] {
        assert!(text.contains(label), "{label} missing: {text}");
    }
    // Not a kmsfs mount: a clear error.
    let o = m.run(&["status", m.tmp.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not a kmsfs mount"));
}

#[test]
fn control_sockets_of_dead_daemons_are_swept() {
    if !common::fuse_available("status_sweep") || common::euid() != Some(0) {
        return;
    }
    // The socket a SIGKILLed daemon left (no pid can be this high).
    use std::os::unix::fs::DirBuilderExt;
    // As the daemon makes it (0700), if no daemon has yet.
    let _ = std::fs::DirBuilder::new().mode(0o700).create("/run/kmsfs");
    let stale = std::path::Path::new("/run/kmsfs/4294967290.sock");
    std::fs::write(stale, b"").unwrap();
    let Some(m) = Mount::new("status_sweep") else {
        return;
    };
    assert!(!stale.exists(), "the stale socket is left");
    let pid = m.daemon_pid().unwrap();
    assert!(std::path::Path::new(&format!("/run/kmsfs/{pid}.sock")).exists());
}

#[test]
fn remount_flips_the_same_daemon() {
    let Some(m) = Mount::with_args("remount", &["-o", "ro"]) else {
        return;
    };
    let pid = m.daemon_pid();
    let e = std::fs::write(m.p("x"), b"no").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    m.ok(&["remount", m.mnt.to_str().unwrap(), "--read-write"]);
    std::fs::write(m.p("x"), b"now writable").unwrap();
    assert_eq!(status(&m)["ReadOnly"], false);
    m.ok(&["remount", m.mnt.to_str().unwrap(), "--read-only"]);
    let e = std::fs::write(m.p("y"), b"no").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    assert_eq!(std::fs::read(m.p("x")).unwrap(), b"now writable");
    assert_eq!(status(&m)["ReadOnly"], true);
    assert_eq!(m.daemon_pid(), pid, "the same daemon serves");

    // `kmsfs mount -o remount` never starts a second daemon.
    let o = m.run(&[
        "mount",
        m.backing.to_str().unwrap(),
        m.mnt.to_str().unwrap(),
        "-o",
        "remount,rw",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("kmsfs remount"));
    assert_eq!(m.daemon_pid(), pid);
}

#[test]
fn fstab_options_and_settings_as_options() {
    if !fuse_available("mount_opts") {
        return;
    }
    let t = common::tempdir("mount_opts");
    let (b, mnt, ks, log) = (
        t.path().join("b"),
        t.path().join("m"),
        t.path().join("ks"),
        t.path().join("log"),
    );
    std::fs::create_dir(&b).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    // A keystore is made by itself only at the default location.
    let init = kmsfs()
        .arg("--keystore")
        .arg(&ks)
        .arg("init")
        .output()
        .unwrap();
    assert!(init.status.success());
    let opts = format!(
        "rw,relatime,nodiratime,noatime,defaults,noauto,_netdev,nofail,x-systemd.automount,\
         noacl,dax,inlinecrypt,nodev,nosuid,noexec,keystore={},log_file={}",
        ks.display(),
        log.display()
    );
    let o = kmsfs()
        .env_remove("RUST_LOG")
        .arg("mount")
        .arg(&b)
        .arg(&mnt)
        .args(["-o", &opts])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let _g = MountGuard(mnt.clone());
    std::fs::write(mnt.join("f"), b"through -o settings").unwrap();
    let v = kmsfs()
        .arg("--keystore")
        .arg(&ks)
        .args(["--output", "json", "status"])
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&v.stdout).contains(&ks.display().to_string()),
        "keystore= was used: {}",
        String::from_utf8_lossy(&v.stdout)
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("mount option dax ignored"), "{text}");
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mi
        .lines()
        .find(|l| l.contains(&format!(" {} ", mnt.display())))
        .unwrap();
    assert!(
        line.contains("noexec") && line.contains("noatime"),
        "{line}"
    );
    // Unknown options are still refused, naming the accepted ones.
    let o = kmsfs()
        .args(["mount", "/nonexistent", "/nonexistent2", "-o", "bogus"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("relatime"));
    // A setting given twice, differently, is refused.
    let o = kmsfs()
        .arg("--keystore")
        .arg(t.path().join("other"))
        .arg("mount")
        .arg(&b)
        .arg(&mnt)
        .args(["-o", &format!("keystore={}", ks.display())])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    kmsfs().arg("unmount").arg(&mnt).status().unwrap();
}
