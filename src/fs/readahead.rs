//! The mount's read-ahead window. A FUSE mount's backing device info starts
//! with the kernel's default window of 128 KiB, and the INIT reply can only
//! lower it (`max_readahead`), so a cold sequential read reaches the daemon
//! as 128 KiB READs, each a round trip. A root daemon raises the window
//! after mounting through sysfs (`/sys/class/bdi/0:N/read_ahead_kb`, N the
//! mount's anonymous device); without root it stays at 128 KiB, which costs
//! cold sequential reads about half their speed and changes nothing else.

use std::fs;
use std::path::{Path, PathBuf};

use crate::os;

/// The window kmsfs asks for: with 1 MiB requests (max_pages 256) the
/// kernel keeps several requests in flight, so that decryption overlaps the
/// backing disk's reads.
pub const READ_AHEAD_KB: u32 = 4096;

/// `p` as /proc/self/mountinfo writes it: space, tab, newline and backslash
/// as `\ooo`.
fn escape(p: &Path) -> String {
    let mut out = String::new();
    for c in p.to_string_lossy().chars() {
        match c {
            ' ' | '\t' | '\n' | '\\' => out.push_str(&format!("\\{:03o}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// The `MAJ:MIN` of the topmost mount on `mp` in a mountinfo text.
fn device_of(mountinfo: &str, mp: &Path) -> Option<String> {
    let mp = escape(mp);
    mountinfo
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() > 4 && f[4] == mp).then(|| f[2].to_string())
        })
        .next_back()
}

/// The sysfs file of the read-ahead window of the mount on `mp`.
fn sysfs_file(mp: &Path) -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let dev = device_of(&info, mp)?;
    Some(Path::new("/sys/class/bdi").join(dev).join("read_ahead_kb"))
}

/// Raises the read-ahead window of the mount on `mp` to `READ_AHEAD_KB`
/// when the daemon runs as root; logs what it did. Never fails the mount.
pub fn raise(mp: &Path) {
    if !os::ids::is_root() {
        log::info!("not root: the read-ahead window stays at the kernel's default");
        return;
    }
    let Some(file) = sysfs_file(mp) else {
        log::info!("mount not found in mountinfo: read-ahead left as it is");
        return;
    };
    match fs::write(&file, format!("{READ_AHEAD_KB}\n")) {
        Ok(()) => log::info!("read-ahead window {READ_AHEAD_KB} KiB ({})", file.display()),
        Err(e) => log::info!("read-ahead left as it is: {}: {e}", file.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_topmost_mount_on_the_path_gives_the_device() {
        let info = "22 1 0:21 / /proc rw - proc proc rw\n\
                    90 30 0:77 / /mnt/a\\040b rw - fuse.kmsfs kmsfs:1:/x rw\n\
                    91 90 0:78 / /mnt/a\\040b rw - fuse.kmsfs kmsfs:2:/y rw\n\
                    92 30 0:79 / /mnt/a rw - fuse.kmsfs kmsfs:3:/z rw\n";
        assert_eq!(
            device_of(info, Path::new("/mnt/a b")).as_deref(),
            Some("0:78")
        );
        assert_eq!(
            device_of(info, Path::new("/mnt/a")).as_deref(),
            Some("0:79")
        );
        assert_eq!(device_of(info, Path::new("/mnt")), None);
    }
}
