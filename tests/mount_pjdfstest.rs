//! POSIX conformance with pjdfstest 0.2.2 (the Rust rewrite) on the mount,
//! when it is installed (`cargo install pjdfstest@0.2.2`); skipped, saying so,
//! otherwise (a failure under CI). On ext4 here it gives 385 passed, 13
//! skipped; the mount must pass every test it runs.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::{Mount, Names};

const CONFIG: &str = r#"[features]
posix_fallocate = {}
utimensat = {}
utime_now = {}
rename_ctime = {}

[settings]
naptime = 0.02

[dummy_auth]
entries = [
  ["nobody", "nogroup"],
  ["daemon", "daemon"],
]
"#;

common::in_both_names_modes!(pjdfstest_passes);

fn pjdfstest_passes(names: Names) {
    let Some(pjdfstest) = common::require_tool("pjdfstest", "pjdfstest") else {
        return;
    };
    let Some(mut m) = Mount::with_names("pjd", names, &[]) else {
        return;
    };
    std::fs::set_permissions(m.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    m.set_args(&["-o", "allow_other"]);
    m.remount();
    std::fs::set_permissions(&m.mnt, std::fs::Permissions::from_mode(0o777)).unwrap();
    let config = m.tmp.path().join("pjdfstest.toml");
    std::fs::write(&config, CONFIG).unwrap();
    // The second file system (for EXDEV) must be another one: /dev/shm.
    let second = tempfile::Builder::new()
        .prefix("kmsfs-pjd-")
        .tempdir_in("/dev/shm")
        .unwrap_or_else(|_| tempfile::tempdir().unwrap());
    let o = Command::new(pjdfstest)
        .arg("-c")
        .arg(&config)
        .arg("-p")
        .arg(&m.mnt)
        .arg("-s")
        .arg(second.path())
        .current_dir(&m.mnt)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let summary = out
        .lines()
        .find(|l| l.starts_with("Summary"))
        .unwrap_or("no summary");
    eprintln!("pjdfstest ({} names): {summary}", names.word());
    let failed: Vec<&str> = out.lines().filter(|l| l.contains("FAILED")).collect();
    assert!(
        o.status.success() && failed.is_empty(),
        "pjdfstest failures ({summary}):\n{}\n{}",
        failed.join("\n"),
        String::from_utf8_lossy(&o.stderr)
    );
}
