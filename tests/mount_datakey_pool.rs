//! The pool of data keys generated ahead for a mount over a remote KMS
//! (`-o datakey_pool=N`, here against `kmsfs kms serve` over TLS): each
//! pooled key goes to one file, bound to that file's id, and the pool is
//! refilled; a key disabled on the server stops serving creates from the
//! pool within the bound (its age limit, `--kms-cache-seconds`) and at once
//! after the first refusal the mount meets; the keys live in the daemon's
//! memory only.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::*;

/// Keys the pool keeps ready in these tests.
const POOL: u64 = 4;

struct Remote {
    ks: Ks,
    key: String,
    creds: (String, String),
    server: Server,
    ca: PathBuf,
    tmp: tempfile::TempDir,
}

impl Remote {
    /// A keystore with one key, served over TLS on loopback; None: skipped.
    fn start(test: &str) -> Option<Self> {
        if !fuse_available(test) || !require_root(test, "mounting") {
            return None;
        }
        let ks = Ks::new();
        let key = ks.create_key();
        let creds = access_key(&ks, 0);
        let certs = make_certs(test, &ks.file("certs"), &["127.0.0.1"])?;
        let args = certs.serve_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = Server::start(&ks, "127.0.0.1:0", &args);
        assert!(server.url.starts_with("https://"), "{}", server.url);
        Some(Self {
            ks,
            key,
            creds,
            server,
            ca: certs.ca,
            tmp: tempdir(test),
        })
    }

    /// Mounts a new backing directory `name` with `-o datakey_pool=POOL`,
    /// data keys cached and pooled for at most `cache_seconds`.
    fn mount(&self, name: &str, cache_seconds: u64, pool: u64) -> (PathBuf, PathBuf, PathBuf) {
        let backing = self.tmp.path().join(format!("{name}-backing"));
        let mnt = self.tmp.path().join(format!("{name}-mnt"));
        let log = self.tmp.path().join(format!("{name}.log"));
        for d in [&backing, &mnt] {
            std::fs::create_dir_all(d).unwrap();
        }
        let o = self.mount_at(&backing, &mnt, &log, cache_seconds, pool);
        assert!(
            o.status.success(),
            "kmsfs mount failed: {}{}",
            String::from_utf8_lossy(&o.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        (backing, mnt, log)
    }

    fn mount_at(
        &self,
        backing: &Path,
        mnt: &Path,
        log: &Path,
        cache_seconds: u64,
        pool: u64,
    ) -> Output {
        kmsfs()
            .arg("mount")
            .arg(backing)
            .arg(mnt)
            .args([
                "--kms-endpoint",
                &self.server.endpoint(),
                "--key-id",
                &self.key,
            ])
            .arg("--kms-ca-bundle")
            .arg(&self.ca)
            .args(["--kms-cache-seconds", &cache_seconds.to_string()])
            .arg("--log-file")
            .arg(log)
            // Plain names: the test reads backing files by their names.
            .args(["-o", &format!("plaintextnames,datakey_pool={pool}")])
            .env("AWS_ACCESS_KEY_ID", &self.creds.0)
            .env("AWS_SECRET_ACCESS_KEY", &self.creds.1)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env_remove("AWS_CA_BUNDLE")
            .output()
            .expect("run kmsfs mount")
    }

    fn set_enabled(&self, on: bool) {
        let verb = if on { "enable-key" } else { "disable-key" };
        self.ks.ok(&["kms", verb, "--key-id", &self.key]);
    }
}

/// The mount's status (`kmsfs status --output json`).
fn status(mnt: &Path) -> Value {
    let o = kmsfs()
        .args(["--output", "json", "status"])
        .arg(mnt)
        .output()
        .expect("kmsfs status");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).expect("status JSON");
    v["Mounts"][0].clone()
}

fn pool(mnt: &Path) -> Value {
    status(mnt)["DataKeyPool"].clone()
}

fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"))
}

/// Polls the pool until `f` holds (at most 30 s); its last state.
fn pool_until(mnt: &Path, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        let p = pool(mnt);
        if f(&p) {
            return p;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "never {what}: {p}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn create(mnt: &Path, name: &str, data: &[u8]) -> std::io::Result<()> {
    std::fs::File::create(mnt.join(name))?.write_all(data)
}

/// The file id and wrapped data key of a backing file's header.
fn header(backing_file: &Path) -> ([u8; 16], Vec<u8>) {
    let f = std::fs::File::open(backing_file).expect("backing file");
    let h = kmsfs::EncryptedFile::read_header(&f).expect("a header");
    let slot = h.active().expect("an active slot");
    (h.file_id, slot.wrapped_key.clone())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Every regular file under `dir` (what a search for leaked keys reads).
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => files_under(&p, out),
            Ok(t) if t.is_file() => out.push(p),
            _ => {}
        }
    }
}

#[test]
fn pooled_keys_go_to_one_file_each_and_the_pool_is_refilled() {
    let test = "pooled_keys_go_to_one_file_each_and_the_pool_is_refilled";
    let Some(mut r) = Remote::start(test) else {
        return;
    };
    let (backing, mnt, log) = r.mount("a", 30, POOL);
    let _g = MountGuard(mnt.clone());
    let content = |i: usize| format!("file {i} under a pooled data key").into_bytes();
    // The first create asks the server itself and starts the filler.
    create(&mnt, "f0", &content(0)).expect("create f0");
    let p = pool_until(&mnt, "filled", |p| n(p, "Ready") == POOL);
    assert_eq!(n(&p, "Used"), 0, "{p}");
    assert_eq!(n(&p, "Size"), POOL, "{p}");
    for i in 1..=POOL as usize {
        create(&mnt, &format!("f{i}"), &content(i)).expect("create");
    }
    // Each of those took one key from the pool, and it is full again.
    let p = pool_until(&mnt, "refilled", |p| n(p, "Ready") == POOL);
    assert_eq!(n(&p, "Used"), POOL, "{p}");
    assert!(n(&p, "Generated") >= 2 * POOL, "{p}");
    assert_eq!(n(&p, "Refusals"), 0, "{p}");

    // One key per file: file ids and wrapped keys all differ.
    let heads: Vec<_> = (0..=POOL as usize)
        .map(|i| header(&backing.join(format!("f{i}"))))
        .collect();
    for (i, a) in heads.iter().enumerate() {
        for b in &heads[i + 1..] {
            assert_ne!(a.0, b.0, "two files share a file id");
            assert_ne!(a.1, b.1, "two files share a wrapped data key");
        }
    }
    // Each pooled key was bound to the file id its file carries: the server
    // unwraps it in that file's context only.
    let mut keys = Vec::new();
    for (id, wrapped) in &heads {
        let blob = {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(wrapped)
        };
        let ctx = format!("kmsfs:file-id={}", hex(id));
        let d = r.ks.json(&[
            "kms",
            "decrypt",
            "--ciphertext-blob",
            &blob,
            "--encryption-context",
            &ctx,
        ]);
        keys.push(b64(d["Plaintext"].as_str().expect("Plaintext")));
        let wrong = r.ks.decrypt(&blob, "kmsfs:file-id=00", &[]);
        assert!(
            !wrong.status.success(),
            "unwrapped in another file's context"
        );
    }

    // The content round-trips through a new daemon (keys from Decrypt).
    let o = kmsfs().arg("unmount").arg(&mnt).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = r.mount_at(&backing, &mnt, &log, 0, 0);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for i in 0..=POOL as usize {
        let got = std::fs::read(mnt.join(format!("f{i}"))).expect("read back");
        assert_eq!(got, content(i), "f{i}");
    }
    let pid = n(&status(&mnt), "Pid");

    // The keys were in the daemon's memory only: not in any file of the
    // test (backing files, logs, keystore, certificates), in no encoding;
    // and another user cannot read the daemon's memory.
    let mut files = Vec::new();
    files_under(r.tmp.path(), &mut files);
    files_under(r.ks.tmp.path(), &mut files);
    assert!(
        files.iter().any(|f| f == &log),
        "the mount's log is searched"
    );
    for f in &files {
        let bytes = std::fs::read(f).unwrap_or_default();
        for k in &keys {
            let b64k = {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.encode(k)
            };
            for needle in [k.clone(), hex(k).into_bytes(), b64k.into_bytes()] {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle.as_slice()),
                    "a data key is in {}",
                    f.display()
                );
            }
        }
    }
    if let Some(users) = test_users(test) {
        let o = users.a.sh(
            Path::new("/"),
            &format!("head -c 64 /proc/{pid}/mem; cat /proc/{pid}/environ; ls /proc/{pid}/fd"),
        );
        assert!(!o.status.success(), "another user read the daemon: {o:?}");
        assert!(o.stdout.is_empty(), "another user read the daemon: {o:?}");
    }
    let o = kmsfs().arg("unmount").arg(&mnt).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // One connection per client, kept across its calls (preflight's, and
    // the daemon's, one more when the filler and a create overlap).
    let summary = r.server.stop();
    let count = |name: &str| -> u64 {
        summary
            .rsplit(&format!("{name}="))
            .next()
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {summary}"))
    };
    assert!(count("GenerateDataKey") > 2 * POOL, "{summary}");
    assert!(count("connections") <= 8, "{summary}");
}

#[test]
fn a_disabled_key_stops_pooled_creates_within_the_bound() {
    let test = "a_disabled_key_stops_pooled_creates_within_the_bound";
    let Some(r) = Remote::start(test) else {
        return;
    };
    // Keys are pooled (and cached) for at most AGE seconds.
    const AGE: u64 = 5;
    let (_backing, mnt, log) = r.mount("b", AGE, POOL);
    let _g = MountGuard(mnt.clone());

    // An idle mount: the pool is full when the key is disabled, and nothing
    // tells the mount. After AGE seconds no pooled key serves a create.
    create(&mnt, "first", b"x").expect("create");
    let before = pool_until(&mnt, "filled", |p| n(p, "Ready") == POOL);
    r.set_enabled(false);
    std::thread::sleep(Duration::from_secs(AGE + 1));
    let e = match create(&mnt, "late", b"x") {
        Ok(()) => panic!(
            "created under a key disabled {} s ago: pool {}, log: {}",
            AGE + 1,
            pool(&mnt),
            std::fs::read_to_string(&log).unwrap_or_default()
        ),
        Err(e) => e,
    };
    assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
    let p = pool(&mnt);
    assert_eq!(n(&p, "Used"), n(&before, "Used"), "{p}");
    assert!(n(&p, "Discarded") >= POOL, "{p}");

    // A busy mount: the first refusal it meets (here the filler's) empties
    // the pool; at most the keys made before the disable serve creates.
    r.set_enabled(true);
    create(&mnt, "again", b"x").expect("create after enabling");
    pool_until(&mnt, "filled again", |p| n(p, "Ready") == POOL);
    r.set_enabled(false);
    let mut served = 0;
    let mut refused = 0;
    for i in 0..(POOL + 8) {
        match create(&mnt, &format!("after{i}"), b"x") {
            Ok(()) if refused == 0 => served += 1,
            Ok(()) => panic!("after{i} was created after a create was refused"),
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
                refused += 1;
            }
        }
    }
    // The pool's keys, and one the filler may have had in flight.
    assert!(served <= POOL + 1, "{served} creates after the disable");
    assert!(refused >= 7, "{refused} refused");
    let p = pool(&mnt);
    assert!(n(&p, "Refusals") >= 1, "{p}");
    assert_eq!(n(&p, "Ready"), 0, "{p}");
}

#[test]
fn the_pool_is_for_remote_kms_mounts_only() {
    let test = "the_pool_is_for_remote_kms_mounts_only";
    if !require_root(test, "mounting") {
        return;
    }
    let ks = Ks::new();
    let tmp = tempdir(test);
    let (b, m) = (tmp.path().join("b"), tmp.path().join("m"));
    std::fs::create_dir(&b).unwrap();
    std::fs::create_dir(&m).unwrap();
    let o = kmsfs()
        .arg("--keystore")
        .arg(&ks.path)
        .arg("mount")
        .arg(&b)
        .arg(&m)
        .args(["-o", "datakey_pool=8"])
        .output()
        .unwrap();
    assert!(!o.status.success(), "a local mount took a data-key pool");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("datakey_pool"), "{err}");
    assert_eq!(
        std::fs::read_dir(&b).unwrap().count(),
        0,
        "left something in {}",
        b.display()
    );
}
