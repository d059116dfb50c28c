//! Unprivileged local users for tests of what one user can do to another
//! through a shared mount, and the tools such tests run as them.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use super::{command, require_root, require_tool};

/// An unprivileged local user made by `test_users`.
#[derive(Debug, Clone)]
pub struct TestUser {
    /// Login name.
    pub name: &'static str,
    /// User id.
    pub uid: u32,
    /// Primary group id (the shared group of `TestUsers`).
    pub gid: u32,
}

/// Two unprivileged users, A and B, sharing one group: for tests that try
/// what one local user can do to another through a shared mount.
#[derive(Debug, Clone)]
pub struct TestUsers {
    /// User A (`kmsfs-a`).
    pub a: TestUser,
    /// User B (`kmsfs-b`).
    pub b: TestUser,
    /// The shared group (`kmsfs-g`).
    pub group: &'static str,
    /// Its id.
    pub gid: u32,
}

/// Name of the group `test_users` puts both users in.
pub const TEST_GROUP: &str = "kmsfs-g";

fn id_of(args: &[&str]) -> Option<u32> {
    let o = Command::new("id").args(args).output().ok()?;
    if !o.status.success() {
        return None;
    }
    String::from_utf8_lossy(&o.stdout).trim().parse().ok()
}

/// Creates (once, idempotently, also across test processes running at the
/// same time) the users `kmsfs-a` and `kmsfs-b` in group `kmsfs-g`: no home,
/// no login shell. Needs root, useradd and setpriv; None (test skipped,
/// saying why) without them, a failure instead under CI (see `skip`).
pub fn test_users(test: &str) -> Option<TestUsers> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !require_root(test, "creating test users") {
        return None;
    }
    for tool in ["useradd", "groupadd", "setpriv"] {
        require_tool(test, tool)?;
    }
    // useradd locks /etc/passwd: another test process doing the same at the
    // same moment makes it fail; try again, then see whether the user exists.
    let made = |cmd: &[&str], exists: &dyn Fn() -> bool| {
        for _ in 0..50 {
            if exists() {
                return true;
            }
            let _ = Command::new(cmd[0]).args(&cmd[1..]).output();
            if exists() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    };
    let group_exists = || {
        Command::new("getent")
            .args(["group", TEST_GROUP])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if !made(&["groupadd", "-f", TEST_GROUP], &group_exists) {
        panic!("{test}: could not create group {TEST_GROUP}");
    }
    let user = |name: &'static str| {
        let exists = || id_of(&["-u", name]).is_some();
        let cmd = [
            "useradd",
            "-M",
            "-N",
            "-g",
            TEST_GROUP,
            "-d",
            "/nonexistent",
            "-s",
            "/usr/sbin/nologin",
            name,
        ];
        if !made(&cmd, &exists) {
            panic!("{test}: could not create user {name}");
        }
        TestUser {
            name,
            uid: id_of(&["-u", name]).expect("uid of a test user"),
            gid: id_of(&["-g", name]).expect("gid of a test user"),
        }
    };
    let (a, b) = (user("kmsfs-a"), user("kmsfs-b"));
    assert_eq!(a.gid, b.gid, "test users must share their primary group");
    Some(TestUsers {
        gid: a.gid,
        a,
        b,
        group: TEST_GROUP,
    })
}

impl TestUser {
    /// `prog` to be run as this user (real and effective ids, its groups),
    /// in `dir`, with a neutral environment (no `KMSFS_*` variable).
    pub fn command(&self, dir: &Path, prog: &str) -> Command {
        let mut c = command("setpriv");
        c.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--init-groups")
            .arg("--")
            .arg(prog)
            .current_dir(dir)
            .env("HOME", "/")
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin");
        c
    }

    /// Runs `script` with `sh -c` as this user in `dir`; returns its output
    /// (whether it failed is the caller's question).
    pub fn sh(&self, dir: &Path, script: &str) -> Output {
        self.command(dir, "sh")
            .arg("-c")
            .arg(script)
            .output()
            .expect("run sh as a test user")
    }
}

/// A python3 every user may run (not one under root's home), for scripts
/// run as test users; None (test skipped, saying why) without one, a
/// failure instead under CI (see `skip`).
pub fn python3(test: &str) -> Option<String> {
    let found = ["/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    if found.is_none() {
        super::skip(test, "no system python3 (apt-get install python3)");
    }
    found.map(str::to_string)
}

/// Runs `script` as `u` in `dir`, which must succeed; its stdout.
pub fn ok_as(u: &TestUser, dir: &Path, script: &str) -> String {
    let o = u.sh(dir, script);
    assert!(
        o.status.success(),
        "{} ran `{script}`: {}",
        u.name,
        super::describe(&o)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}
