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

/// `unseal` refuses exactly what a read through the mount refuses: a file cut
/// to its header plus 12 garbage bytes (a tail too short to be a block) gave
/// an empty plaintext and exit 0 while the mount gave EIO. A refusal leaves
/// no output file and writes nothing to stdout.
#[test]
fn unseal_refuses_the_damaged_tails_the_mount_refuses() {
    let Some(m) = Mount::new("seal_tails") else {
        return;
    };
    let seal = |name: &str, len: usize| -> Vec<u8> {
        let input = m.tmp.path().join(format!("{name}.in"));
        fs::write(&input, vec![0x61u8; len]).unwrap();
        let out = m.tmp.path().join(format!("{name}.sealed"));
        m.ok(&["seal", input.to_str().unwrap(), out.to_str().unwrap()]);
        fs::read(out).unwrap()
    };
    let header = kmsfs::format::HEADER_LEN as usize;
    let block = kmsfs::format::Layout::NEW.cipher_block_size() as usize;
    let garbage = [0x9du8; 12];
    let empty = seal("empty", 0);
    let two = seal("two", 8192);
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "header-and-12",
            [&two[..header], &garbage[..]].concat(),
            false,
        ),
        (
            "block-and-12",
            [&two[..header + block], &garbage[..]].concat(),
            false,
        ),
        ("empty", empty, true),
        ("two-blocks", two.clone(), true),
    ];
    for (name, bytes, good) in cases {
        fs::write(m.b(name), &bytes).unwrap();
        let through_mount = fs::read(m.p(name));
        match &through_mount {
            Ok(_) => assert!(good, "{name}: the mount read a damaged file"),
            Err(e) => assert_eq!((e.raw_os_error(), good), (Some(libc::EIO), false), "{name}"),
        }
        let out = m.tmp.path().join(format!("{name}.out"));
        let o = m.run(&["unseal", m.b(name).to_str().unwrap(), out.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr);
        let to_stdout = m.run(&["unseal", m.b(name).to_str().unwrap(), "-"]);
        if good {
            assert!(o.status.success(), "{name}: {err}");
            assert_eq!(fs::read(&out).unwrap(), through_mount.unwrap(), "{name}");
            assert!(to_stdout.status.success(), "{name}");
        } else {
            assert_eq!(
                o.status.code(),
                Some(5),
                "{name}: unseal accepted it: {err}"
            );
            assert!(err.contains("block"), "{name}: {err}");
            assert!(!out.exists(), "{name}: a partial plaintext was left behind");
            assert_eq!(to_stdout.status.code(), Some(5), "{name}");
            assert!(to_stdout.stdout.is_empty(), "{name}: wrote to stdout");
        }
    }
}

/// `seal` writes block format 2 by default, the format of a new backing
/// directory, and format 1 with `--block-format 1` for a directory made
/// before it. A file of the other format is refused by the mount (EIO: its
/// size would be misread), and `unseal` reads both.
#[test]
fn seal_writes_the_block_format_asked_for() {
    let Some(m) = Mount::new("seal_format") else {
        return;
    };
    let input = m.tmp.path().join("in");
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(&input, &data).unwrap();
    for (flag, version, backing) in [
        (None, 2u16, 1024 + 2 * 4136 + 1808 + 40),
        (Some("2"), 2, 1024 + 2 * 4136 + 1808 + 40),
        (Some("1"), 1, 1024 + 2 * 4124 + 1808 + 28),
    ] {
        let name = format!("f{}", flag.unwrap_or("default"));
        let mut args = vec!["seal", input.to_str().unwrap()];
        let out = m.b(&name);
        args.push(out.to_str().unwrap());
        if let Some(f) = flag {
            args.extend(["--block-format", f]);
        }
        m.ok(&args);
        let bytes = fs::read(&out).unwrap();
        assert_eq!(u16::from_be_bytes([bytes[6], bytes[7]]), version, "{name}");
        assert_eq!(bytes.len(), backing, "{name}");
        let through_mount = fs::read(m.p(&name));
        if version == 2 {
            assert!(through_mount.unwrap() == data, "{name}");
        } else {
            assert_eq!(through_mount.unwrap_err().raw_os_error(), Some(libc::EIO));
        }
        let plain = m.tmp.path().join(format!("{name}.out"));
        m.ok(&["unseal", out.to_str().unwrap(), plain.to_str().unwrap()]);
        assert!(fs::read(plain).unwrap() == data, "{name}");
    }
    let o = m.run(&[
        "seal",
        input.to_str().unwrap(),
        m.tmp.path().join("bad").to_str().unwrap(),
        "--block-format",
        "3",
    ]);
    assert_eq!(o.status.code(), Some(2), "block format 3 is a usage error");
}
