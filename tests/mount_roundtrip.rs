//! Round trips of edge sizes written in random chunk sizes, across a remount;
//! the backing files never contain the plaintext, and inspect names the key.

mod common;

use std::io::{Read, Write};

use common::{Mount, Rng, contains, files_under};

const MARKER: &[u8] = b"KMSFS-PLAINTEXT-MARKER-";
const SIZES: [usize; 7] = [0, 1, 4095, 4096, 4097, 3 * 4096 + 17, (1 << 20) + 1];

fn content(size: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut v = Vec::with_capacity(size);
    while v.len() < size {
        if rng.below(4) == 0 {
            v.extend_from_slice(MARKER);
        } else {
            v.extend_from_slice(&rng.bytes(13));
        }
    }
    v.truncate(size);
    v
}

#[test]
fn sizes_round_trip_in_random_chunks() {
    let Some(mut m) = Mount::new("roundtrip") else {
        return;
    };
    let mut rng = Rng::new(7);
    for (i, &size) in SIZES.iter().enumerate() {
        let data = content(size, i as u64 + 1);
        let mut f = std::fs::File::create(m.p(&format!("f{size}"))).unwrap();
        let mut pos = 0;
        while pos < size {
            let n = (1 + rng.below(9000) as usize).min(size - pos);
            f.write_all(&data[pos..pos + n]).unwrap();
            pos += n;
        }
        drop(f);
        assert_eq!(
            std::fs::metadata(m.p(&format!("f{size}"))).unwrap().len(),
            size as u64
        );
        // Read back in random chunk sizes too.
        let mut f = std::fs::File::open(m.p(&format!("f{size}"))).unwrap();
        let mut back = Vec::new();
        loop {
            let mut buf = vec![0u8; 1 + rng.below(70_000) as usize];
            let n = f.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            back.extend_from_slice(&buf[..n]);
        }
        assert!(back == data, "size {size}: content differs before remount");
    }
    m.remount();
    for (i, &size) in SIZES.iter().enumerate() {
        let back = std::fs::read(m.p(&format!("f{size}"))).unwrap();
        assert!(
            back == content(size, i as u64 + 1),
            "size {size}: differs after remount"
        );
        assert_eq!(
            std::fs::metadata(m.p(&format!("f{size}"))).unwrap().len(),
            size as u64
        );
    }
    for f in files_under(&m.backing) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(!contains(&bytes, MARKER), "{} holds plaintext", f.display());
    }
}

#[test]
fn inspect_names_the_mounts_key_and_a_given_key() {
    let Some(mut m) = Mount::new("inspect") else {
        return;
    };
    std::fs::write(m.p("a"), b"under the default key").unwrap();
    let j: serde_json::Value =
        serde_json::from_str(&m.ok(&["--output", "json", "inspect", m.b("a").to_str().unwrap()]))
            .unwrap();
    let default_key = m.ok(&[
        "--output",
        "json",
        "kms",
        "describe-key",
        "--key-id",
        "alias/kmsfs/default",
    ]);
    let default_key: serde_json::Value = serde_json::from_str(&default_key).unwrap();
    let default_id = default_key["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(j["KeyId"], default_id.as_str());
    assert_eq!(j["PlaintextSize"], 21);
    assert_eq!(
        j["FormatVersion"], 2,
        "a new tree's files are block format 2"
    );
    assert_eq!(j["KeyMaterialVersion"], 1);
    // A second CMK: new files use it, old files keep theirs.
    let created: serde_json::Value =
        serde_json::from_str(&m.ok(&["--output", "json", "kms", "create-key"])).unwrap();
    let other = created["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string();
    m.set_args(&["--key-id", &other]);
    m.remount();
    std::fs::write(m.p("b"), b"under the other key").unwrap();
    assert_eq!(std::fs::read(m.p("a")).unwrap(), b"under the default key");
    assert_eq!(std::fs::read(m.p("b")).unwrap(), b"under the other key");
    let text = m.ok(&["inspect", m.b("b").to_str().unwrap()]);
    assert!(text.contains(&other), "{text}");
    assert!(!text.contains(&default_id), "{text}");
}
