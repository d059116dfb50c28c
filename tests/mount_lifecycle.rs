//! The mount's lifecycle: clear errors for missing directories, existing
//! mounts and bad options; SIGTERM and SIGINT unmount cleanly with data
//! flushed; a dead daemon's stale mount does not block the next mount;
//! unmount of a busy mount says what to do; plain umount works; -o ro.

mod common;

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, Mount, is_mounted, kill, process_alive, wait_until};

#[test]
fn clear_errors_before_mounting() {
    let Some(m) = Mount::new("errors") else {
        return;
    };
    let nowhere = m.tmp.path().join("nowhere");
    let other = m.tmp.path().join("other");
    fs::create_dir(&other).unwrap();
    let bk = m.backing.to_str().unwrap();
    let cases: [(Vec<&str>, i32, &str); 5] = [
        (
            vec!["mount", bk, other.to_str().unwrap()],
            1,
            "is already mounted at",
        ),
        (
            vec!["mount", nowhere.to_str().unwrap(), other.to_str().unwrap()],
            3,
            "backing directory",
        ),
        (
            vec!["mount", bk, nowhere.to_str().unwrap()],
            3,
            "mount point",
        ),
        (
            vec!["mount", bk, m.mnt.to_str().unwrap()],
            1,
            "already a mount point",
        ),
        (
            vec!["mount", bk, other.to_str().unwrap(), "-o", "bogus"],
            2,
            "unknown mount option",
        ),
    ];
    for (args, code, text) in cases {
        let o = m.run(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(text), "{args:?}: {err}");
    }
    assert!(!is_mounted(&other));
    let o = m.run(&["unmount", other.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not mounted"));
    // Other file systems are left alone.
    let o = m.run(&["unmount", "/proc"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a kmsfs mount"));
    assert!(std::path::Path::new("/proc/self").exists());
}

#[test]
fn daemon_runs_in_its_own_session_detached_from_the_caller() {
    let Some(m) = Mount::new("daemon") else {
        return;
    };
    let pid = m.daemon_pid().expect("daemon pid");
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    // Fields after the state: ppid, pgrp, session, tty_nr.
    assert_eq!(f[3], pid.to_string(), "session leader: {stat}");
    assert_eq!(f[4], "0", "no controlling terminal: {stat}");
    for fd in 0..3 {
        let target = fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
        assert!(
            target == std::path::Path::new("/dev/null") || target == m.log,
            "fd {fd} -> {}",
            target.display()
        );
    }
}

#[test]
fn sigterm_unmounts_cleanly_with_data_flushed() {
    let Some(mut m) = Mount::new("sigterm") else {
        return;
    };
    let data = vec![b'z'; 300_000];
    fs::write(m.p("f"), &data).unwrap();
    let pid = m.daemon_pid().expect("daemon pid");
    kill("-TERM", pid);
    wait_until("the daemon to exit", || !process_alive(pid));
    assert!(!is_mounted(&m.mnt));
    m.forget_mounted();
    let out = m.tmp.path().join("out");
    m.ok(&["unseal", m.b("f").to_str().unwrap(), out.to_str().unwrap()]);
    assert!(fs::read(out).unwrap() == data);
}

#[test]
fn foreground_mount_stops_on_sigint() {
    let Some(mut m) = Mount::new("foreground") else {
        return;
    };
    m.unmount();
    let mut child = m
        .kmsfs()
        .args([
            "mount",
            "--foreground",
            m.backing.to_str().unwrap(),
            m.mnt.to_str().unwrap(),
        ])
        .arg("--log-file")
        .arg(&m.log)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the foreground mount", || is_mounted(&m.mnt));
    fs::write(m.p("g"), b"foreground").unwrap();
    kill("-INT", child.id());
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "foreground mount did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
    assert!(!is_mounted(&m.mnt));
    let log = m.log_text();
    assert!(log.contains("signal") && log.contains("unmounted"), "{log}");
    m.mount();
    assert_eq!(fs::read(m.p("g")).unwrap(), b"foreground");
}

#[test]
fn stale_mount_of_a_dead_daemon_does_not_block_the_next_mount() {
    let Some(mut m) = Mount::new("stale") else {
        return;
    };
    fs::write(m.p("f"), b"survives").unwrap();
    let pid = m.daemon_pid().expect("daemon pid");
    kill("-KILL", pid);
    wait_until("the daemon to die", || !process_alive(pid));
    let e = fs::metadata(m.p("f")).unwrap_err();
    assert!(
        matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED)),
        "{e}"
    );
    m.forget_mounted();
    m.mount();
    assert_eq!(fs::read(m.p("f")).unwrap(), b"survives");
}

#[test]
fn busy_unmount_says_what_to_do_and_plain_umount_works() {
    let Some(mut m) = Mount::new("busy") else {
        return;
    };
    fs::write(m.p("f"), b"x").unwrap();
    let held = fs::File::open(m.p("f")).unwrap();
    let o = m.run(&["unmount", m.mnt.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("busy") && err.contains("umount -l"), "{err}");
    drop(held);
    let pid = m.daemon_pid().expect("daemon pid");
    let st = Command::new("umount").arg(&m.mnt).status().unwrap();
    assert!(st.success());
    m.forget_mounted();
    // Mount again at once: the old daemon, still exiting, must not unmount it.
    m.mount();
    wait_until("the old daemon to exit after umount", || {
        !process_alive(pid)
    });
    std::thread::sleep(Duration::from_millis(200));
    assert!(is_mounted(&m.mnt));
    assert_eq!(fs::read(m.p("f")).unwrap(), b"x");
    assert!(
        !m.log_text().contains("Failed to umount"),
        "{}",
        m.log_text()
    );
}

#[test]
fn read_only_mount() {
    let Some(mut m) = Mount::new("ro") else {
        return;
    };
    fs::write(m.p("f"), b"readable").unwrap();
    m.set_args(&["-o", "ro"]);
    m.remount();
    assert_eq!(fs::read(m.p("f")).unwrap(), b"readable");
    let e = fs::write(m.p("g"), b"no").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    let e = fs::OpenOptions::new()
        .write(true)
        .open(m.p("f"))
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
}

#[test]
fn zero_setup_creates_keystore_and_default_key() {
    let Some(m) = Mount::new("zerosetup") else {
        return;
    };
    assert!(m.keystore.is_dir());
    let d: serde_json::Value = serde_json::from_str(&m.ok(&[
        "--output",
        "json",
        "kms",
        "describe-key",
        "--key-id",
        "alias/kmsfs/default",
    ]))
    .unwrap();
    assert_eq!(d["KeyMetadata"]["KeyState"], "Enabled");
    // With an explicit key, a missing keystore is an error (exit 6), not created.
    let empty = m.tmp.path().join("no-keystore");
    let mnt2 = m.tmp.path().join("mnt2");
    fs::create_dir(&mnt2).unwrap();
    // A new backing directory: m.backing is served (and bound to m.keystore).
    let backing2 = m.tmp.path().join("backing2");
    fs::create_dir(&backing2).unwrap();
    let o = common::kmsfs()
        .args([
            "--keystore",
            empty.to_str().unwrap(),
            "mount",
            "--key-id",
            "alias/x",
        ])
        .arg(&backing2)
        .arg(&mnt2)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(6), "{err}");
    assert!(err.contains("kmsfs init"), "{err}");
    assert!(!empty.exists());
    assert!(!is_mounted(&mnt2));
}

#[test]
fn fusermount3_unmounts_too() {
    let Some(fusermount3) = common::require_tool("fusermount", "fusermount3") else {
        return;
    };
    let Some(mut m) = Mount::new("fusermount") else {
        return;
    };
    fs::write(m.p("f"), b"kept").unwrap();
    let pid = m.daemon_pid().expect("daemon pid");
    let st = Command::new(fusermount3)
        .arg("-u")
        .arg(&m.mnt)
        .status()
        .unwrap();
    assert!(st.success());
    m.forget_mounted();
    wait_until("the daemon to exit after fusermount3 -u", || {
        !process_alive(pid)
    });
    assert!(!is_mounted(&m.mnt));
    m.mount();
    assert_eq!(fs::read(m.p("f")).unwrap(), b"kept");
}

#[test]
fn passphrase_prompt_on_a_terminal_happens_before_the_daemon_starts() {
    let Some(python3) = common::require_tool("prompt", "python3") else {
        return;
    };
    let Some(mut m) = Mount::new("prompt") else {
        return;
    };
    m.unmount();
    let ks = m.tmp.path().join("pass-ks");
    // m.backing is bound to m.keystore: a new backing directory for the new keystore.
    m.backing = m.tmp.path().join("pass-backing");
    fs::create_dir(&m.backing).unwrap();
    let pass = m.tmp.path().join("pass");
    fs::write(&pass, "correct horse\n").unwrap();
    let o = common::kmsfs()
        .arg("--keystore")
        .arg(&ks)
        .arg("--passphrase-file")
        .arg(&pass)
        .args(["init", "--with-passphrase"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Answer the prompt on a pseudo-terminal, as a person would.
    let script = format!(
        "import os, pty\n\
         pid, fd = pty.fork()\n\
         if pid == 0:\n    os.execv('{bin}', ['{bin}', '--keystore', '{ks}', 'mount', '{b}', '{m}'])\n\
         buf = b''\n\
         while b'passphrase' not in buf:\n    buf += os.read(fd, 100)\n\
         os.write(fd, b'correct horse\\n')\n\
         try:\n    while os.read(fd, 100): pass\n\
         except OSError: pass\n\
         print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))\n",
        bin = BIN,
        ks = ks.display(),
        b = m.backing.display(),
        m = m.mnt.display()
    );
    let o = common::command(python3)
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "0",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(is_mounted(&m.mnt));
    fs::write(m.p("f"), b"under a passphrase keystore").unwrap();
    assert_eq!(fs::read(m.p("f")).unwrap(), b"under a passphrase keystore");
}
