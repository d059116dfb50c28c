//! The one shared fixture of the integration tests (`mod common;` in each).
//!
//! - Environment: every command it builds ([`command`], [`kmsfs`], and the
//!   ones of [`Mount`] and [`Ks`]) starts with no `KMSFS_*` variable of the
//!   developer's shell (`KMSFS_TEST_NOW`, `KMSFS_KEYSTORE`, `KMSFS_PASSPHRASE`,
//!   and any added later); a test sets what it needs on top.
//! - Mounts: [`Mount`] mounts the real `kmsfs` binary on its own temporary
//!   keystore, backing directory and mount point; its Drop (like that of
//!   [`MountGuard`], for mounts made otherwise) always unmounts and stops the
//!   daemon, on panic too.
//! - Keystores: [`Ks`], a temporary keystore and the `kmsfs` commands on it.
//! - Skips: a test skips only through [`skip`] (via [`fuse_available`],
//!   [`require_tool`], [`require_root`], [`test_users`]), which says why;
//!   under CI (`CI=true` or `KMSFS_REQUIRE_FUSE=1`, which scripts/test.sh sets
//!   under CI) the same call fails the test instead.
#![allow(dead_code)]

mod console;
mod keystore;
mod kms_server;
mod mount;
mod tls;
mod users;

// Each test uses part of the fixture: what it leaves is no finding.
#[allow(unused_imports)]
pub use console::*;
#[allow(unused_imports)]
pub use keystore::*;
#[allow(unused_imports)]
pub use kms_server::*;
#[allow(unused_imports)]
pub use mount::*;
#[allow(unused_imports)]
pub use tls::*;
#[allow(unused_imports)]
pub use users::*;

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The kmsfs binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_kmsfs");

/// True when nothing may be skipped: under CI (`CI=true`) or with
/// `KMSFS_REQUIRE_FUSE=1` (scripts/test.sh sets it under CI).
pub fn tools_required() -> bool {
    std::env::var("KMSFS_REQUIRE_FUSE").as_deref() == Ok("1")
        || std::env::var("CI").as_deref() == Ok("true")
}

/// Skips `test` because of `why`: prints `SKIPPED test: why` and returns,
/// or, where nothing may be skipped ([`tools_required`]), fails the test.
pub fn skip(test: &str, why: &str) {
    if tools_required() {
        panic!("{test}: {why} (a failure, not a skip, under CI or KMSFS_REQUIRE_FUSE=1)");
    }
    eprintln!("SKIPPED {test}: {why}");
}

/// True when mounts can run here; otherwise skips `test` (see [`skip`]).
pub fn fuse_available(test: &str) -> bool {
    if Path::new("/dev/fuse").exists() {
        return true;
    }
    skip(test, "/dev/fuse is absent, so nothing can be mounted here");
    false
}

/// The executable `tool` on PATH (or in /usr/sbin, /sbin), if any.
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|p| {
            std::fs::metadata(p)
                .is_ok_and(|md| md.is_file() && md.permissions().mode() & 0o111 != 0)
        })
}

/// Where to get a tool the tests run.
fn install_hint(tool: &str) -> &'static str {
    match tool {
        "fsx" => "cargo install fsx@0.3.2",
        "pjdfstest" => "cargo install pjdfstest@0.2.2",
        "fusermount3" => "apt-get install fuse3",
        "runuser" | "setpriv" | "fallocate" => "apt-get install util-linux",
        "useradd" | "groupadd" => "apt-get install passwd",
        "getfattr" => "apt-get install attr",
        "openssl" => "apt-get install openssl",
        "python3" => "apt-get install python3",
        _ => "scripts/test.sh installs it",
    }
}

/// The path of `tool`, or None after skipping `test` (see [`skip`]): under
/// CI a missing tool fails the test.
pub fn require_tool(test: &str, tool: &str) -> Option<PathBuf> {
    let found = which(tool);
    if found.is_none() {
        skip(
            test,
            &format!("{tool} is not installed ({})", install_hint(tool)),
        );
    }
    found
}

/// This process's effective user id (`id -u`).
pub fn euid() -> Option<u32> {
    let o = Command::new("id").arg("-u").output().ok()?;
    if !o.status.success() {
        return None;
    }
    String::from_utf8_lossy(&o.stdout).trim().parse().ok()
}

/// True when running as root; otherwise skips `test` (see [`skip`]), `why`
/// saying what needs root.
pub fn require_root(test: &str, why: &str) -> bool {
    if euid() == Some(0) {
        return true;
    }
    skip(test, &format!("needs root: {why}"));
    false
}

/// Removes every `KMSFS_*` variable this process has from `c`'s environment.
pub fn clear_kmsfs_env(c: &mut Command) -> &mut Command {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("KMSFS_") {
            c.env_remove(name);
        }
    }
    c
}

/// A command for `program` with no `KMSFS_*` variable inherited.
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new(program);
    clear_kmsfs_env(&mut c);
    c
}

/// A `kmsfs` command with no `KMSFS_*` variable inherited, the default
/// keystore location not taken from the developer's `XDG_DATA_HOME`, and the
/// default log level.
pub fn kmsfs() -> Command {
    let mut c = command(BIN);
    c.env_remove("XDG_DATA_HOME");
    c.env("RUST_LOG", "warn");
    c
}

/// A temporary directory named after `test` (removed on drop).
pub fn tempdir(test: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("kmsfs-{test}-"))
        .tempdir()
        .expect("temp dir")
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

/// Runs a shell command (no `KMSFS_*` variable inherited), panicking with
/// its output when it fails.
pub fn sh(dir: &Path, script: &str) -> String {
    let o = command("sh")
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

/// A command's exit status, stdout and stderr, for assertion messages.
pub fn describe(o: &std::process::Output) -> String {
    format!(
        "status {:?}, stdout {:?}, stderr {:?}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
