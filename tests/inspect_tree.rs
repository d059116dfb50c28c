//! `kmsfs inspect DIR`: a backing tree summarized from its headers (files,
//! bytes, keys used and their states, files that are not kmsfs files), like
//! `gocryptfs -info`; without a keystore the states are said to be unknown.

mod common;

use common::{Ks, kmsfs};
use serde_json::Value;

#[test]
fn inspect_summarizes_a_backing_tree() {
    let ks = Ks::new();
    let k1 = ks.create_key();
    let k2 = ks.create_key();
    let tree = ks.file("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    let plain = ks.file("plain");
    std::fs::write(&plain, vec![3u8; 10_000]).unwrap();
    for (name, key) in [("a", &k1), ("sub/b", &k1), ("c", &k2)] {
        let out = tree.join(name);
        ks.ok(&[
            "seal",
            plain.to_str().unwrap(),
            out.to_str().unwrap(),
            "--key-id",
            key,
        ]);
    }
    std::fs::write(tree.join("notes.txt"), b"not encrypted").unwrap();
    ks.ok(&["kms", "disable-key", "--key-id", &k2]);

    let v: Value =
        serde_json::from_str(&ks.ok(&["--output", "json", "inspect", tree.to_str().unwrap()]))
            .unwrap();
    assert_eq!(v["Files"], 4);
    assert_eq!(v["Keys"][&k1]["Files"], 2);
    assert_eq!(v["Keys"][&k1]["Bytes"], 20_000);
    assert_eq!(v["Keys"][&k1]["State"]["Status"], "Usable");
    assert_eq!(v["Keys"][&k2]["Files"], 1);
    assert_eq!(v["Keys"][&k2]["State"]["Status"], "Disabled");
    assert_eq!(v["NotKmsfsFiles"][0], "notes.txt");

    let text = ks.ok(&["inspect", tree.to_str().unwrap()]);
    assert!(
        text.contains(&format!("key {k2}: 1 file, 10000 bytes, disabled")),
        "{text}"
    );
    assert!(
        text.contains("not kmsfs files:    1 (e.g. notes.txt)"),
        "{text}"
    );

    // No keystore: the headers are still summarized, the states unknown.
    let o = kmsfs()
        .arg("--keystore")
        .arg(ks.file("none"))
        .args(["inspect", tree.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("state unknown (no keystore)"), "{text}");
    assert!(text.contains("files:              4"), "{text}");
    // A single file still shows its header.
    let one = ks.ok(&["inspect", tree.join("a").to_str().unwrap()]);
    assert!(
        one.contains(&format!("key id:               {k1}")),
        "{one}"
    );
}
