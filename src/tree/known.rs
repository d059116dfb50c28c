//! The backing directories a keystore knows of. The mount and `import`
//! record each backing directory they write in the keystore's directory
//! (`backings/`, one small file per backing directory, named by the SHA-256
//! of its path, so concurrent mounts never race on one file), and
//! `schedule-key-deletion` counts, from headers alone, the files the key
//! still protects there.

use std::io::Write;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::envelope::EncryptedFile;

/// The subdirectory of the keystore directory that holds the records.
const KNOWN_DIR: &str = "backings";

fn record_name(backing: &Path) -> String {
    let d = crate::crypto::sha256(&[backing.as_os_str().as_encoded_bytes()]);
    d.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Records that `backing` (an absolute path) holds files of the keystore in
/// `keystore_dir`. Idempotent; the record is private to the keystore's owner.
pub fn remember(keystore_dir: &Path, backing: &Path) -> std::io::Result<()> {
    let dir = keystore_dir.join(KNOWN_DIR);
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    let name = record_name(backing);
    let path = dir.join(&name);
    if std::fs::read(&path).is_ok_and(|b| b == backing.as_os_str().as_encoded_bytes()) {
        return Ok(());
    }
    let tmp = dir.join(format!("{name}.{}.tmp", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    f.write_all(backing.as_os_str().as_encoded_bytes())?;
    drop(f);
    std::fs::rename(&tmp, &path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// The backing directories recorded for the keystore in `keystore_dir`
/// that still exist.
pub fn known(keystore_dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(keystore_dir.join(KNOWN_DIR)) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = rd
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().ends_with(".tmp"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .map(|b| PathBuf::from(std::ffi::OsString::from_vec(b)))
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    out
}

/// How many files under `backing` have their data key wrapped under
/// `key_id`, and their plaintext bytes (headers only: nothing unwrapped).
pub fn protected_by(backing: &Path, key_id: &str) -> (u64, u64) {
    let Ok(w) = super::walk(backing) else {
        return (0, 0);
    };
    let mut n = (0, 0);
    for f in &w.files {
        let Ok(file) = super::open_backing(f, false) else {
            continue;
        };
        let Ok(h) = EncryptedFile::read_header(&file) else {
            continue;
        };
        if h.active().is_some_and(|s| s.key_id == key_id) {
            n.0 += 1;
            n.1 += file
                .metadata()
                .map(|m| crate::format::plain_size_from_backing(m.len()))
                .unwrap_or(0);
        }
    }
    n
}
