//! Shared fixture of the mount tests: a temporary keystore, backing directory
//! and mount point; the real `kmsfs mount` binary; a guard whose Drop always
//! unmounts (kmsfs unmount, then fusermount3 -u -z, then umount -l) and kills
//! the daemon, even when the test panics. Tests skip, saying why, only where
//! /dev/fuse is absent (and fail instead under KMSFS_REQUIRE_FUSE=1).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The kmsfs binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_kmsfs");

/// True when mounts can run here; prints why not otherwise.
pub fn fuse_available(test: &str) -> bool {
    if Path::new("/dev/fuse").exists() {
        return true;
    }
    if std::env::var("KMSFS_REQUIRE_FUSE").as_deref() == Ok("1") {
        panic!("{test}: /dev/fuse is absent and KMSFS_REQUIRE_FUSE=1");
    }
    eprintln!("SKIPPED {test}: /dev/fuse is absent, so nothing can be mounted here");
    false
}

/// A mounted kmsfs with its own keystore and directories.
pub struct Mount {
    /// Holds every directory of this test; removed on drop.
    pub tmp: tempfile::TempDir,
    /// The backing directory (ciphertext).
    pub backing: PathBuf,
    /// The mount point (plaintext).
    pub mnt: PathBuf,
    /// The keystore directory.
    pub keystore: PathBuf,
    /// The daemon's log.
    pub log: PathBuf,
    mounted: bool,
    extra: Vec<String>,
}

impl Mount {
    /// Mounts with the zero-setup default key; None (test skipped) without /dev/fuse.
    pub fn new(test: &str) -> Option<Self> {
        Self::with_args(test, &[])
    }

    /// Mounts with extra `kmsfs mount` arguments (e.g. `-o ro`, `--key-id K`).
    pub fn with_args(test: &str, extra: &[&str]) -> Option<Self> {
        if !fuse_available(test) {
            return None;
        }
        let tmp = tempfile::Builder::new()
            .prefix(&format!("kmsfs-{test}-"))
            .tempdir()
            .expect("temp dir");
        let backing = tmp.path().join("backing");
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&backing).expect("mkdir backing");
        std::fs::create_dir(&mnt).expect("mkdir mnt");
        let mut m = Mount {
            keystore: tmp.path().join("keystore"),
            log: tmp.path().join("kmsfs.log"),
            backing,
            mnt,
            tmp,
            mounted: false,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        m.mount();
        Some(m)
    }

    /// A `kmsfs` command on this test's keystore.
    pub fn kmsfs(&self) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--keystore").arg(&self.keystore);
        c.env_remove("KMSFS_PASSPHRASE");
        c
    }

    /// Runs `kmsfs ARGS` and returns its output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.kmsfs().args(args).output().expect("run kmsfs")
    }

    /// Runs `kmsfs ARGS`, panicking with its stderr when it fails; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "kmsfs {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Mounts (again).
    pub fn mount(&mut self) {
        let t0 = Instant::now();
        let o = self
            .kmsfs()
            .arg("mount")
            .arg(&self.backing)
            .arg(&self.mnt)
            .arg("--log-file")
            .arg(&self.log)
            .args(&self.extra)
            .output()
            .expect("run kmsfs mount");
        assert!(
            o.status.success(),
            "kmsfs mount failed: {}{}",
            String::from_utf8_lossy(&o.stderr),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
        self.mounted = true;
        assert!(
            is_mounted(&self.mnt),
            "kmsfs mount returned after {:?} but nothing is mounted",
            t0.elapsed()
        );
    }

    /// Unmounts with `kmsfs unmount` (which waits for the daemon to exit).
    pub fn unmount(&mut self) {
        let o = self.run(&["unmount", self.mnt.to_str().expect("utf-8 path")]);
        assert!(
            o.status.success(),
            "kmsfs unmount failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        self.mounted = false;
        assert!(!is_mounted(&self.mnt));
    }

    /// Unmounts and mounts again (drops every cache).
    pub fn remount(&mut self) {
        self.unmount();
        self.mount();
    }

    /// A path on the mount.
    pub fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// A path in the backing directory.
    pub fn b(&self, rel: &str) -> PathBuf {
        self.backing.join(rel)
    }

    /// The daemon's pid (from the mount's source name).
    pub fn daemon_pid(&self) -> Option<u32> {
        daemon_pid(&self.mnt)
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Replaces the extra `kmsfs mount` arguments used by the next mount.
    pub fn set_args(&mut self, extra: &[&str]) {
        self.extra = extra.iter().map(|s| s.to_string()).collect();
    }

    /// Marks the mount as gone (a test unmounted it some other way).
    pub fn forget_mounted(&mut self) {
        self.mounted = false;
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let pid = daemon_pid(&self.mnt);
        if self.mounted || is_mounted(&self.mnt) {
            let _ = Command::new(BIN).arg("unmount").arg(&self.mnt).output();
            if is_mounted(&self.mnt) {
                let _ = Command::new("fusermount3")
                    .args(["-u", "-z"])
                    .arg(&self.mnt)
                    .output();
            }
            if is_mounted(&self.mnt) {
                let _ = Command::new("umount").arg("-l").arg(&self.mnt).output();
            }
        }
        if let Some(pid) = pid {
            let t0 = Instant::now();
            while process_alive(pid) && t0.elapsed() < Duration::from_secs(3) {
                std::thread::sleep(Duration::from_millis(20));
            }
            if process_alive(pid) {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).output();
            }
        }
    }
}

fn mountinfo_line(mnt: &Path) -> Option<(String, String)> {
    let mnt = std::fs::canonicalize(mnt).unwrap_or_else(|_| mnt.to_path_buf());
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let sep = f.iter().position(|x| *x == "-")?;
        if Path::new(f.get(4)?) == mnt {
            Some((f.get(sep + 1)?.to_string(), f.get(sep + 2)?.to_string()))
        } else {
            None
        }
    })
}

/// True when something is mounted exactly at `mnt`.
pub fn is_mounted(mnt: &Path) -> bool {
    mountinfo_line(mnt).is_some()
}

/// The kmsfs daemon serving `mnt`.
pub fn daemon_pid(mnt: &Path) -> Option<u32> {
    let (_, source) = mountinfo_line(mnt)?;
    source
        .strip_prefix("kmsfs:")?
        .split(':')
        .next()?
        .parse()
        .ok()
}

/// True while `pid` runs (zombies count as gone).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => match s.rfind(')') {
            Some(i) => !matches!(s[i + 1..].trim_start().chars().next(), Some('Z' | 'X')),
            None => true,
        },
        Err(_) => false,
    }
}

/// A small deterministic PRNG (xorshift64*), so tests need no rand crate.
pub struct Rng(u64);

impl Rng {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    /// Next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// `len` pseudo-random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Runs a shell command, panicking with its output when it fails.
pub fn sh(dir: &Path, script: &str) -> String {
    let o = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("run sh");
    assert!(
        o.status.success(),
        "`{script}` failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// True when `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let ft = e.file_type().expect("file type");
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

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

/// True when a missing tool must fail the test rather than skip it.
pub fn tools_required() -> bool {
    std::env::var("KMSFS_REQUIRE_FUSE").as_deref() == Ok("1")
        || std::env::var("CI").as_deref() == Ok("true")
}

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
/// saying why) without them, a panic instead under CI.
pub fn test_users(test: &str) -> Option<TestUsers> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let skip = |why: &str| {
        if tools_required() {
            panic!("{test}: {why}");
        }
        eprintln!("SKIPPED {test}: {why}");
        None
    };
    if id_of(&["-u"]) != Some(0) {
        return skip("creating test users needs root");
    }
    for tool in ["useradd", "groupadd", "setpriv"] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            return skip(&format!("{tool} is not installed"));
        }
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
    /// in `dir`, with a neutral environment.
    pub fn command(&self, dir: &Path, prog: &str) -> Command {
        let mut c = Command::new("setpriv");
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
/// run as test users; None (test skipped, saying why) without one, a panic
/// instead under CI.
pub fn python3(test: &str) -> Option<String> {
    let found = ["/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    match found {
        Some(p) => Some(p.to_string()),
        None if tools_required() => panic!("{test}: no system python3"),
        None => {
            eprintln!("SKIPPED {test}: no system python3");
            None
        }
    }
}
