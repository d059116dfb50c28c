//! Mounts of the real `kmsfs` binary, and the guards that always unmount them.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::{command, fuse_available, kmsfs, tempdir};

/// How a test's backing directory keeps its names: the suite's name-sensitive
/// tests run in both modes (`Names::BOTH`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Names {
    /// Encrypted names, kmsfs's default for a new backing directory.
    Encrypted,
    /// `-o plaintextnames`: names in clear, as every tree made before
    /// names were encrypted.
    Plain,
}

impl Names {
    /// Both modes, for the tests that run in each.
    pub const BOTH: [Names; 2] = [Names::Encrypted, Names::Plain];

    /// The `kmsfs mount` arguments that choose it.
    pub fn args(self) -> &'static [&'static str] {
        match self {
            Names::Encrypted => &[],
            Names::Plain => &["-o", "plaintextnames"],
        }
    }

    /// A short word for test names and messages.
    pub fn word(self) -> &'static str {
        match self {
            Names::Encrypted => "encrypted",
            Names::Plain => "plain",
        }
    }
}

/// Runs each test body `fn NAME(names: Names)` in both names modes, as two
/// tests, `NAME::encrypted` and `NAME::plain` (so each mode is filtered,
/// run in parallel and reported on its own): the one way the suite runs a
/// name-sensitive test twice.
///
/// ```ignore
/// common::in_both_names_modes!(rename_over_an_open_file, rewinddir);
/// ```
#[allow(unused_macros)]
macro_rules! in_both_names_modes {
    ($($body:ident),+ $(,)?) => {
        $(
            mod $body {
                #[test]
                fn encrypted() {
                    super::$body($crate::common::Names::Encrypted)
                }

                #[test]
                fn plain() {
                    super::$body($crate::common::Names::Plain)
                }
            }
        )+
    };
}
#[allow(unused_imports)]
pub(crate) use in_both_names_modes;

/// A mounted kmsfs with its own keystore and directories; unmounted on drop.
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
    /// How the backing directory keeps its names.
    pub names: Names,
    /// The daemon's RUST_LOG (warn unless a test reads info lines).
    log_level: &'static str,
}

impl Mount {
    /// Mounts with the zero-setup default key; None (test skipped) without
    /// /dev/fuse. Plain names: most tests reach backing files by their
    /// names (`b`); `with_names` chooses.
    pub fn new(test: &str) -> Option<Self> {
        Self::with_args(test, &[])
    }

    /// Mounts with extra `kmsfs mount` arguments (e.g. `-o ro`, `--key-id K`),
    /// with plain names.
    pub fn with_args(test: &str, extra: &[&str]) -> Option<Self> {
        Self::with_names(test, Names::Plain, extra)
    }

    /// Mounts a new backing directory with names kept as `names` says.
    pub fn with_names(test: &str, names: Names, extra: &[&str]) -> Option<Self> {
        Self::logging(test, names, "warn", extra)
    }

    /// Mounts with plain names and the daemon logging at `level` (RUST_LOG),
    /// for tests that read its info lines.
    pub fn with_log_level(test: &str, level: &'static str, extra: &[&str]) -> Option<Self> {
        Self::logging(test, Names::Plain, level, extra)
    }

    fn logging(test: &str, names: Names, log_level: &'static str, extra: &[&str]) -> Option<Self> {
        if !fuse_available(test) {
            return None;
        }
        let tmp = tempdir(test);
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
            names,
            log_level,
        };
        m.mount();
        Some(m)
    }

    /// The key id behind an alias (PutKeyPolicy and the rotation operations
    /// take a key id or ARN only, as in AWS).
    pub fn key_id_of(&self, alias: &str) -> String {
        let out = self.ok(&["--output", "json", "kms", "describe-key", "--key-id", alias]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("describe-key JSON");
        v["KeyMetadata"]["KeyId"]
            .as_str()
            .expect("KeyMetadata.KeyId")
            .to_string()
    }

    /// A `kmsfs` command on this test's keystore (no other `KMSFS_*`
    /// variable inherited). The keystore is the default one too
    /// (`KMSFS_KEYSTORE`), so that the first mount may create it.
    pub fn kmsfs(&self) -> Command {
        let mut c = kmsfs();
        c.env("KMSFS_KEYSTORE", &self.keystore);
        c.arg("--keystore").arg(&self.keystore);
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
            .args(self.names.args())
            .args(&self.extra)
            .env("RUST_LOG", self.log_level)
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

    /// A path in the backing directory, as it is spelled (kmsfs's own files,
    /// or any path of a tree with plain names).
    pub fn b(&self, rel: &str) -> PathBuf {
        self.backing.join(rel)
    }

    /// The backing path of mount path `rel` (which exists) in either names
    /// mode: the daemon's answer to root's getxattr of
    /// `trusted.kmsfs.backing` (debug builds only), the node's path
    /// relative to the backing root, its names encrypted with encrypted
    /// names. Asked of the entry itself, not what a symlink points to.
    pub fn backing_of(&self, rel: &str) -> PathBuf {
        let p = self.p(rel);
        let c = CString::new(p.as_os_str().as_bytes()).expect("no NUL in a path");
        let name = c"trusted.kmsfs.backing";
        let mut buf = vec![0u8; 8192];
        // SAFETY: `c` and `name` are NUL-terminated; `buf` is writable for its length.
        let n = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        let n = usize::try_from(n).unwrap_or_else(|_| {
            panic!(
                "getxattr trusted.kmsfs.backing of {}: {}",
                p.display(),
                std::io::Error::last_os_error()
            )
        });
        buf.truncate(n);
        let out = self.backing.join(OsStr::from_bytes(&buf));
        if self.names == Names::Plain {
            assert_eq!(out, self.backing.join(rel), "plain names are themselves");
        }
        out
    }

    /// The daemon's pid (asked of `kmsfs status`).
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
        force_unmount(&self.mnt, self.mounted);
    }
}

/// Unmounts whatever is mounted at its path when dropped (on panic too), for
/// mounts a test makes without [`Mount`] (say, with an environment of its own).
pub struct MountGuard(pub PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        force_unmount(&self.0, false);
    }
}

/// Unmounts `mnt` by every means there is (kmsfs unmount, then fusermount3
/// -u -z, then umount -l) and waits up to 3 s for its daemon to exit before
/// killing it. `mounted`: unmount even when mountinfo no longer shows it.
pub fn force_unmount(mnt: &Path, mounted: bool) {
    let pid = daemon_pid(mnt);
    if mounted || is_mounted(mnt) {
        let _ = kmsfs().arg("unmount").arg(mnt).output();
        if is_mounted(mnt) {
            let _ = command("fusermount3").args(["-u", "-z"]).arg(mnt).output();
        }
        if is_mounted(mnt) {
            let _ = command("umount").arg("-l").arg(mnt).output();
        }
    }
    if let Some(pid) = pid {
        let t0 = Instant::now();
        while process_alive(pid) && t0.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if process_alive(pid) {
            let _ = command("kill").arg("-9").arg(pid.to_string()).output();
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

/// The kmsfs daemon serving `mnt`, as `kmsfs status` finds it (by the
/// mount's device, through the daemon's control socket); None when no
/// daemon of this user answers for it.
pub fn daemon_pid(mnt: &Path) -> Option<u32> {
    mountinfo_line(mnt)?;
    let o = kmsfs()
        .args(["status", "--output", "json"])
        .arg(mnt)
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
    v["Mounts"][0]["Pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
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

/// Polls `f` every 20 ms until it holds; fails the test after 20 s.
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends signal `sig` ("-TERM", "-INT", ...) to `pid` with kill(1).
pub fn kill(sig: &str, pid: u32) {
    let st = Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(st.success(), "kill {sig} {pid} failed");
}
