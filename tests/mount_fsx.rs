//! fsx 0.3.2 (the file system exerciser) on the mount with every operation it
//! knows (mmap reads and writes, truncate, fallocate, punch hole, sendfile,
//! copy_file_range, close/open, fsync...), when it is installed
//! (`cargo install fsx@0.3.2`); skipped, saying so, otherwise (a failure
//! under CI).

mod common;

use std::process::Command;

use common::{Mount, Names};

const CONFIG: &str = "flen = 1048576
[weights]
close_open = 5.0
invalidate = 2.0
mapread = 10.0
mapwrite = 10.0
read = 10.0
write = 10.0
truncate = 5.0
fsync = 2.0
fdatasync = 2.0
posix_fallocate = 5.0
punch_hole = 5.0
sendfile = 3.0
posix_fadvise = 2.0
copy_file_range = 5.0
";

common::in_both_names_modes!(fsx_all_operations);

fn fsx_all_operations(names: Names) {
    let Some(fsx) = common::require_tool("fsx", "fsx") else {
        return;
    };
    let Some(m) = Mount::with_names("fsx", names, &[]) else {
        return;
    };
    let config = m.tmp.path().join("fsx.toml");
    std::fs::write(&config, CONFIG).unwrap();
    for seed in ["1", "2"] {
        let o = Command::new(&fsx)
            .args(["-N", "4000", "-S", seed, "-f"])
            .arg(&config)
            .arg("-P")
            .arg(m.tmp.path())
            .arg(m.p(&format!("fsx{seed}")))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "fsx seed {seed} failed:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}
