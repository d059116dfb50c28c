//! A full backing disk (ENOSPC) fails a write before any byte of the file
//! changes: what the file held before still reads, and no block is torn.
//! Runs on a small tmpfs, so it needs root (CI has it); elsewhere it skips
//! and says why, and under CI it fails instead.

mod common;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use kmsfs::envelope::{EncryptedFile, EnvelopeError};
use kmsfs::format::Layout;
use kmsfs::kms::{Caller, CreateMode, LocalKeyStore, RequestContext};

const CALLER: Caller = Caller {
    uid: 0,
    gid: 0,
    pid: 1,
    access_key: None,
};

/// A tmpfs of `size` mounted on a fresh directory; unmounted on drop.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn new(size: &str) -> Option<Self> {
        if !common::require_root("full_disk", "mounting a tmpfs") {
            return None;
        }
        let dir = common::tempdir("full_disk");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            common::skip("full_disk", "cannot mount a tmpfs here");
            return None;
        }
        Some(Self { dir })
    }
    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    /// Fills the file system, then frees `leave` bytes of the filler.
    fn fill_leaving(&self, leave: u64) {
        let mut f = File::create(self.p("filler")).unwrap();
        let chunk = vec![0x55u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let len = f.metadata().unwrap().len();
        f.set_len(len.saturating_sub(leave)).unwrap();
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap()
}

fn is_enospc(e: &EnvelopeError) -> bool {
    matches!(e, EnvelopeError::Io(io) if io.raw_os_error() == Some(libc::ENOSPC))
}

#[test]
fn enospc_leaves_the_old_content_readable() {
    let Some(fs) = SmallFs::new("512k") else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let ks = LocalKeyStore::create(&keys.path().join("ks"), CreateMode::RootKeyFile).unwrap();
    let key = ks.create_key(&CALLER, "full disk").unwrap().key_id;

    // A file whose final block is partial: an extending write rewrites it.
    let rc = RequestContext::cli(CALLER);
    let f = EncryptedFile::create(rw(&fs.p("a")), &ks, &rc, &key, Layout::NEW).unwrap();
    f.write_at(&[b'A'; 100], 0).unwrap();
    // A sparse file: a write into its holes needs new space.
    let g = EncryptedFile::create(rw(&fs.p("g")), &ks, &rc, &key, Layout::NEW).unwrap();
    g.write_at(b"start", 0).unwrap();
    g.set_len(300 * 1024).unwrap();
    f.sync(false).unwrap();
    g.sync(false).unwrap();
    let a_before = std::fs::read(fs.p("a")).unwrap();
    let g_before = std::fs::read(fs.p("g")).unwrap();

    fs.fill_leaving(6 * 1024);
    let e = f.write_at(&vec![b'B'; 1 << 20], 50).unwrap_err();
    assert!(is_enospc(&e), "extending write: {e}");
    let e = g.write_at(&vec![b'C'; 200 * 1024], 8192).unwrap_err();
    assert!(is_enospc(&e), "write into holes: {e}");
    let e = f.set_len(400 * 1024).unwrap_err();
    assert!(is_enospc(&e), "growing truncate: {e}");

    assert!(std::fs::read(fs.p("a")).unwrap() == a_before, "a changed");
    assert!(std::fs::read(fs.p("g")).unwrap() == g_before, "g changed");
    let mut buf = vec![0u8; 300 * 1024];
    assert_eq!(f.read_at(&mut buf, 0).unwrap(), 100);
    assert!(buf[..100].iter().all(|&b| b == b'A'));
    assert_eq!(g.read_at(&mut buf, 0).unwrap(), 300 * 1024);
    assert_eq!(&buf[..5], b"start");
    assert!(buf[5..].iter().all(|&b| b == 0));
}
