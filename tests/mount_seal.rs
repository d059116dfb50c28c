//! Client-side seal/unseal in exactly the mount's format: a sealed file copied
//! into the backing directory reads through the mount, a backing file unseals
//! without a mount, and tampered input unseals to nothing.

mod common;

use std::fs;

use common::{Mount, Rng};

#[test]
fn sealed_file_reads_through_the_mount_and_backing_files_unseal() {
    let Some(m) = Mount::new("seal") else { return };
    let plain = Rng::new(3).bytes(200_000 + 123);
    let input = m.tmp.path().join("in");
    fs::write(&input, &plain).unwrap();
    let sealed = m.tmp.path().join("sealed");
    m.ok(&["seal", input.to_str().unwrap(), sealed.to_str().unwrap()]);
    assert_ne!(fs::read(&sealed).unwrap(), plain);
    fs::copy(&sealed, m.b("copied")).unwrap();
    assert_eq!(
        fs::metadata(m.p("copied")).unwrap().len(),
        plain.len() as u64
    );
    assert!(fs::read(m.p("copied")).unwrap() == plain);
    // A file written through the mount unseals with the keystore alone.
    fs::write(m.p("written"), &plain[..77_777]).unwrap();
    let out = m.tmp.path().join("out");
    m.ok(&[
        "unseal",
        m.b("written").to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert!(fs::read(&out).unwrap() == plain[..77_777]);
    // Plaintext output is the owner's alone, whatever the umask.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&out), 0o600, "unseal output");
    assert_eq!(mode(&sealed), 0o600, "seal output");
    // To stdout as well.
    let o = m.run(&["unseal", m.b("copied").to_str().unwrap(), "-"]);
    assert!(o.status.success());
    assert!(o.stdout == plain);
    // An existing output is never overwritten.
    let o = m.run(&[
        "unseal",
        m.b("copied").to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(fs::read(&out).unwrap() == plain[..77_777]);
}

#[test]
fn seal_under_another_key_and_tamper() {
    let Some(m) = Mount::new("sealkey") else {
        return;
    };
    let created: serde_json::Value =
        serde_json::from_str(&m.ok(&["--output", "json", "kms", "create-key"])).unwrap();
    let other = created["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string();
    let input = m.tmp.path().join("in");
    fs::write(&input, b"a small secret").unwrap();
    let sealed = m.tmp.path().join("sealed");
    m.ok(&[
        "seal",
        input.to_str().unwrap(),
        sealed.to_str().unwrap(),
        "--key-id",
        &other,
    ]);
    assert!(
        m.ok(&["inspect", sealed.to_str().unwrap()])
            .contains(&other)
    );
    // The mount (default key) still reads files under any key of its keystore.
    fs::copy(&sealed, m.b("s")).unwrap();
    assert_eq!(fs::read(m.p("s")).unwrap(), b"a small secret");
    let mut bytes = fs::read(&sealed).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x80;
    let bad = m.tmp.path().join("bad");
    fs::write(&bad, bytes).unwrap();
    let out = m.tmp.path().join("out");
    let o = m.run(&["unseal", bad.to_str().unwrap(), out.to_str().unwrap()]);
    assert_eq!(
        o.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!out.exists(), "a partial plaintext was left behind");
}
