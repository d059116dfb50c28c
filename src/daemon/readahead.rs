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
pub(super) const READ_AHEAD_KB: u32 = 4096;

/// The sysfs file of the read-ahead window of the mount on `mp`.
fn sysfs_file(mp: &Path) -> Option<PathBuf> {
    let dev = super::mountinfo::mount_at(mp)?.device;
    Some(Path::new("/sys/class/bdi").join(dev).join("read_ahead_kb"))
}

/// Raises the read-ahead window of the mount on `mp` to `READ_AHEAD_KB`
/// when the daemon runs as root; logs what it did. Never fails the mount.
#[allow(clippy::disallowed_methods)] // a system file (/proc, /sys, /etc), not a tree a user can write
pub(super) fn raise(mp: &Path) {
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
