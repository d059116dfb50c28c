//! Exit codes and messages as documented (README, `kmsfs --help`), through
//! the real binary: unmount of a path that is not mounted is "no such
//! mount" (3); `status` of a mount whose daemon is gone says "stale" and
//! fails (1) with the way out.

mod common;

use common::{Mount, kill, wait_until};

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
