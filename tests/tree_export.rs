//! `kmsfs export` and `kmsfs import` through the real binary: a tree
//! written through a mount comes out byte for byte with modes, times,
//! symbolic links and holes; a corrupt or unreadable file is reported and
//! not written; a served backing directory is refused; an imported tree
//! reads back through a mount, stored encrypted, and existing names are
//! never replaced.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::{Mount, Rng, contains};
use serde_json::Value;

const EXIT_REFUSED: i32 = 4;
const EXIT_CORRUPT: i32 = 5;

fn json(o: &std::process::Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {o:?}"))
}

fn same_tree(a: &Path, b: &Path) {
    let o = std::process::Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(a)
        .arg(b)
        .output()
        .expect("diff");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
}

fn flip(p: &Path, at: u64) {
    let mut b = std::fs::read(p).unwrap();
    b[at as usize] ^= 0x10;
    std::fs::write(p, b).unwrap();
}

#[test]
fn export_writes_the_plaintext_tree_and_refuses_to_truncate() {
    let Some(mut m) = Mount::new("export_tree") else {
        return;
    };
    let mut rng = Rng::new(7);
    std::fs::create_dir_all(m.p("d/e")).unwrap();
    let data = rng.bytes(300_000);
    std::fs::write(m.p("d/e/data"), &data).unwrap();
    std::fs::write(m.p("small"), b"hello").unwrap();
    std::fs::write(m.p("empty"), b"").unwrap();
    // A sparse file: 64 MiB of hole then a few bytes.
    let f = std::fs::File::create(m.p("sparse")).unwrap();
    f.set_len(64 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"end", 64 << 20).unwrap();
    drop(f);
    std::os::unix::fs::symlink("d/e/data", m.p("link")).unwrap();
    common::sh(
        &m.mnt,
        "chmod 640 small && chmod 750 d && touch -h -d 2021-02-03 link && touch -d 2020-01-02 small d/e",
    );
    // While mounted, export is refused: the mount owns the tree.
    let dest = m.tmp.path().join("out");
    let o = m.run(&[
        "export",
        m.backing.to_str().unwrap(),
        dest.to_str().unwrap(),
    ]);
    assert_ne!(o.status.code(), Some(0), "export of a served tree: {o:?}");
    let mirror = m.tmp.path().join("mirror");
    common::sh(
        m.tmp.path(),
        &format!("cp -a {} {}", m.mnt.display(), mirror.display()),
    );
    m.unmount();

    let o = m.run(&[
        "--output",
        "json",
        "export",
        m.backing.to_str().unwrap(),
        dest.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{o:?}");
    let v = json(&o);
    assert_eq!(v["Files"], 4, "{v}");
    assert_eq!(v["Links"], 1, "{v}");
    same_tree(&mirror, &dest);
    for rel in ["small", "d", "d/e", "link", "sparse"] {
        let (a, b) = (
            mirror.join(rel).symlink_metadata().unwrap(),
            dest.join(rel).symlink_metadata().unwrap(),
        );
        assert_eq!(a.mode(), b.mode(), "{rel}");
        assert_eq!(a.mtime(), b.mtime(), "{rel}");
    }
    // The hole stays a hole: far less than 64 MiB is allocated.
    let blocks = dest.join("sparse").metadata().unwrap().blocks();
    assert!(
        blocks * 512 < 1 << 20,
        "sparse export allocates {blocks} blocks"
    );
    assert!(!contains(&std::fs::read(m.b("small")).unwrap(), b"hello"));

    // A flipped bit in one block: that file is reported with its offset and
    // not written; everything else is.
    flip(&m.b("d/e/data"), 1024 + 4124 + 50);
    let dest2 = m.tmp.path().join("out2");
    let o = m.run(&[
        "--output",
        "json",
        "export",
        m.backing.to_str().unwrap(),
        dest2.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(EXIT_CORRUPT), "{o:?}");
    let v = json(&o);
    assert_eq!(v["Skipped"][0]["Path"], "d/e/data", "{v}");
    assert_eq!(v["Skipped"][0]["Status"], "CorruptBlocks", "{v}");
    assert_eq!(v["Skipped"][0]["Offsets"], serde_json::json!([4096]), "{v}");
    assert!(
        !dest2.join("d/e/data").exists(),
        "a corrupt file was written"
    );
    assert_eq!(std::fs::read(dest2.join("small")).unwrap(), b"hello");
    // A non-empty destination is refused before anything is read.
    let o = m.run(&[
        "export",
        m.backing.to_str().unwrap(),
        dest2.to_str().unwrap(),
    ]);
    assert_ne!(o.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not empty"),
        "{o:?}"
    );

    // A disabled key: refused, nothing of its files written.
    let key = m.ok(&[
        "--output",
        "json",
        "inspect",
        m.b("small").to_str().unwrap(),
    ]);
    let key: Value = serde_json::from_str(&key).unwrap();
    m.ok(&[
        "kms",
        "disable-key",
        "--key-id",
        key["KeyId"].as_str().unwrap(),
    ]);
    let dest3 = m.tmp.path().join("out3");
    let o = m.run(&[
        "export",
        m.backing.to_str().unwrap(),
        dest3.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(EXIT_REFUSED), "{o:?}");
    assert!(!dest3.join("small").exists());
}

#[test]
fn import_encrypts_a_plain_tree_that_the_mount_then_reads() {
    let Some(mut m) = Mount::new("import_tree") else {
        return;
    };
    m.unmount();
    let src = m.tmp.path().join("plain");
    let mut rng = Rng::new(11);
    std::fs::create_dir_all(src.join("x/y")).unwrap();
    let secret = b"the plaintext that must not reach the disk".repeat(200);
    std::fs::write(src.join("x/y/secret"), &secret).unwrap();
    std::fs::write(src.join("random"), rng.bytes(70_001)).unwrap();
    std::fs::write(src.join("zero"), b"").unwrap();
    let f = std::fs::File::create(src.join("holes")).unwrap();
    f.set_len(20 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"mid", 7 << 20).unwrap();
    drop(f);
    std::os::unix::fs::symlink("x/y/secret", src.join("ln")).unwrap();
    common::sh(&src, "chmod 600 random && touch -d 2019-05-06 x/y/secret");
    // A file already in the backing directory is never replaced.
    std::fs::write(m.b("random"), b"").unwrap();
    let before = std::fs::read(m.b("random")).unwrap();
    // A leftover of an interrupted import is replaced by the real file.
    std::fs::create_dir_all(m.b("x/y")).unwrap();
    std::fs::write(m.b("x/y/.secret.kmsfs-import"), b"torn").unwrap();

    let o = m.run(&[
        "--output",
        "json",
        "import",
        src.to_str().unwrap(),
        m.backing.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{o:?}");
    let v = json(&o);
    assert_eq!(v["Files"], 3, "{v}");
    assert_eq!(v["Existing"], 1, "{v}");
    // Every data key import made is in the audit trail (batched, written
    // out before the command returned).
    let trail = m.ok(&[
        "--output",
        "json",
        "audit",
        "show",
        "--event",
        "GenerateDataKey",
    ]);
    assert_eq!(trail.lines().count(), 3, "{trail}");
    assert_eq!(std::fs::read(m.b("random")).unwrap(), before);
    assert!(!contains(
        &std::fs::read(m.b("x/y/secret")).unwrap(),
        b"plaintext"
    ));
    assert!(m.b("holes").metadata().unwrap().blocks() * 512 < 1 << 20);
    assert_eq!(
        std::fs::read_link(m.b("ln")).unwrap(),
        Path::new("x/y/secret")
    );
    let leftovers: Vec<_> = common::files_under(&m.backing)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".kmsfs-import"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    m.mount();
    assert_eq!(std::fs::read(m.p("x/y/secret")).unwrap(), secret);
    let holes = std::fs::read(m.p("holes")).unwrap();
    assert_eq!(holes.len(), 20 << 20);
    assert_eq!(&holes[7 << 20..(7 << 20) + 3], b"mid");
    assert!(holes[..7 << 20].iter().all(|b| *b == 0));
    assert_eq!(std::fs::read(m.p("zero")).unwrap(), b"");
    let md = m.p("x/y/secret").metadata().unwrap();
    assert_eq!(
        md.mtime(),
        src.join("x/y/secret").metadata().unwrap().mtime()
    );
    // Importing into a served backing directory is refused.
    let o = m.run(&["import", src.to_str().unwrap(), m.backing.to_str().unwrap()]);
    assert_ne!(o.status.code(), Some(0), "{o:?}");
}
