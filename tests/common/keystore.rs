//! Temporary keystores and the `kmsfs` commands run on them, for the kms tests.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use super::{kmsfs, tempdir};

/// Exit codes (cli::ErrorClass).
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_NOT_FOUND: i32 = 3;
pub const EXIT_REFUSED: i32 = 4;
pub const EXIT_CORRUPT: i32 = 5;
pub const EXIT_KEYSTORE: i32 = 6;

/// A temporary keystore directory (created by `kmsfs init` unless `empty`).
pub struct Ks {
    pub tmp: tempfile::TempDir,
    pub path: PathBuf,
}

impl Ks {
    /// A keystore in root-key-file mode.
    pub fn new() -> Self {
        let ks = Self::empty();
        ks.ok(&["init"]);
        ks
    }

    /// A directory where no keystore exists yet.
    pub fn empty() -> Self {
        let tmp = tempdir("ks");
        let path = tmp.path().join("ks");
        Self { tmp, path }
    }

    /// A file path inside the temporary directory (outside the keystore).
    pub fn file(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Runs `kmsfs --keystore DIR ARGS...` with extra environment (on top
    /// of one without any `KMSFS_*` variable).
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = kmsfs();
        c.arg("--keystore").arg(&self.path).args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().expect("run kmsfs")
    }

    /// Runs `kmsfs --keystore DIR ARGS...`.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[])
    }

    /// Runs and requires success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        ok(self.run(args), args)
    }

    /// Runs with `--output json` and parses stdout.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--output", "json"];
        a.extend_from_slice(args);
        let out = self.ok(&a);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }

    /// Creates a key and returns its id.
    pub fn create_key(&self) -> String {
        self.json(&["kms", "create-key"])["KeyMetadata"]["KeyId"]
            .as_str()
            .expect("KeyId")
            .to_string()
    }

    /// Encrypts `data` (via fileb://) and returns the base64 blob.
    pub fn encrypt(&self, key: &str, data: &[u8], context: &str) -> String {
        let f = self.file("plain.bin");
        std::fs::write(&f, data).expect("write plaintext");
        let pt = format!("fileb://{}", f.display());
        let mut args = vec!["kms", "encrypt", "--key-id", key, "--plaintext", &pt];
        if !context.is_empty() {
            args.extend_from_slice(&["--encryption-context", context]);
        }
        self.ok(&args).trim().to_string()
    }

    /// Decrypts a base64 blob; returns the raw output.
    pub fn decrypt(&self, blob: &str, context: &str, env: &[(&str, &str)]) -> Output {
        let mut args = vec!["kms", "decrypt", "--ciphertext-blob", blob];
        if !context.is_empty() {
            args.extend_from_slice(&["--encryption-context", context]);
        }
        self.run_env(&args, env)
    }

    pub fn keystore_file(&self) -> PathBuf {
        self.path.join("keystore.kms")
    }

    pub fn prev_file(&self) -> PathBuf {
        self.path.join("keystore.prev")
    }
}

/// Requires success; returns stdout.
pub fn ok(out: Output, args: &[&str]) -> String {
    assert!(
        out.status.success(),
        "kmsfs {args:?} failed ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// Requires failure with `code` and `needle` on stderr; returns stderr.
pub fn fails(out: &Output, code: i32, needle: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert!(err.contains(needle), "{needle:?} not in stderr: {err}");
    assert!(
        out.stdout.is_empty(),
        "stdout on failure: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    err
}

/// Base64 decoding for assertions.
pub fn b64(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .expect("base64")
}

/// Every file of a keystore directory with its bytes (to prove nothing changed).
/// The audit trail (the `audit` directory) is left out: it is the keystore's
/// history and grows with every operation, refused ones included.
pub fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("read_dir")
        .filter(|e| e.as_ref().map_or(true, |e| e.file_name() != "audit"))
        .map(|e| {
            let e = e.expect("entry");
            (
                e.file_name().to_string_lossy().to_string(),
                std::fs::read(e.path()).expect("read"),
            )
        })
        .collect();
    v.sort();
    v
}
