//! The fuzz targets' checks (tests/fuzz_support) on a few thousand
//! deterministic random and mutated inputs per parser: the seconds-long
//! version of scripts/fuzz.sh that runs in the suite. KMSFS_FUZZ_ITERS sets
//! the inputs per parser (default 3000), KMSFS_FUZZ_SEED the seed (default
//! fixed, so that a failure reproduces); a failure prints the input in hex.

mod common;
mod fuzz_support;

use common::Rng;
use fuzz_support::{FLAG_ALT, FLAG_BASE, FLAG_REPAIR, Fixture};
use serde_json::{Value, json};

fn iterations() -> u64 {
    std::env::var("KMSFS_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

fn seed(target: &str) -> u64 {
    let base = std::env::var("KMSFS_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x6b6d_7366_7a7a);
    target.bytes().fold(base, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Runs `check` on `iterations()` inputs from `gen`; a panic names the input.
fn run(target: &str, mut input: impl FnMut(&mut Rng) -> Vec<u8>, check: impl Fn(&[u8])) {
    let seed = seed(target);
    let mut rng = Rng::new(seed);
    let n = iterations();
    for i in 0..n {
        let data = input(&mut rng);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&data)));
        if r.is_err() {
            let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
            panic!(
                "{target}: input {i} of seed {seed} failed (save it with `xxd -r -p` as a \
                 fuzz/artifacts file to replay): {hex}"
            );
        }
    }
    eprintln!("{target}: {n} inputs, seed {seed}");
}

/// Random bytes, often starting like `prefix` so that magic checks pass.
fn raw(rng: &mut Rng, prefix: &[u8], max: u64) -> Vec<u8> {
    let len = rng.below(max + 1) as usize;
    let mut b = rng.bytes(len);
    if rng.below(2) == 0 {
        let n = (rng.below(prefix.len() as u64 + 1) as usize).min(b.len());
        b[..n].copy_from_slice(&prefix[..n]);
    }
    b
}

/// A flags byte with FLAG_BASE and an edit script of a few operations,
/// positions biased to fall inside an object of `len` bytes.
fn edits(rng: &mut Rng, extra_flags: u8, len: usize) -> Vec<u8> {
    let mut f = FLAG_BASE | extra_flags;
    if rng.below(2) == 0 {
        f |= FLAG_REPAIR;
    }
    let mut out = vec![f];
    for _ in 0..1 + rng.below(6) {
        let pos = rng.below(len as u64 + 8) as u16;
        let kind = match rng.below(10) {
            0 => 2,     // truncate
            1 | 2 => 3, // insert
            3..=5 => 1, // set
            _ => 0,     // xor
        };
        let v = match rng.below(4) {
            0 => 0xff,
            1 => 1 << rng.below(8),
            _ => rng.next() as u8,
        };
        out.extend_from_slice(&[kind, (pos >> 8) as u8, pos as u8, v]);
    }
    out
}

#[test]
fn file_header_and_sealed_files() {
    let fx = Fixture::new();
    let header = fx.header().to_vec();
    let sealed_len = fx.sealed.len();
    run(
        "header",
        |rng| match rng.below(4) {
            0 => {
                let mut b = vec![0u8];
                b.extend(raw(rng, &header, 1100));
                b
            }
            1 | 2 => edits(rng, 0, header.len()),
            _ => edits(rng, FLAG_ALT, sealed_len),
        },
        |d| fuzz_support::header(&fx, d),
    );
}

#[test]
fn ciphertext_blob() {
    let fx = Fixture::new();
    let blob = fx.blob.clone();
    run(
        "blob",
        |rng| match rng.below(5) {
            0 => {
                let mut b = vec![0u8];
                b.extend(raw(rng, &blob, 200));
                b
            }
            // The unchanged blob, with its own context and another.
            1 => vec![FLAG_BASE | (rng.below(2) as u8 * FLAG_ALT)],
            _ => edits(rng, 0, blob.len()),
        },
        |d| fuzz_support::blob(&fx, d),
    );
}

#[test]
fn keystore_file_and_body() {
    let fx = Fixture::new();
    let file = fx.keystore_file.clone();
    let body = fx.body_seed.clone();
    let body_value: Value = serde_json::from_slice(&body).expect("seed body is JSON");
    run(
        "keystore",
        |rng| match rng.below(6) {
            0 => {
                let mut b = vec![0u8];
                b.extend(raw(rng, &file, 400));
                b
            }
            1 | 2 => edits(rng, 0, file.len()),
            3 => {
                // A body with bytes changed: mostly not JSON any more.
                let mut b = vec![FLAG_ALT];
                let e = edits(rng, 0, body.len());
                b.extend(fuzz_support::apply_edits(&body, &e[1..]));
                b
            }
            _ => {
                // A body with one JSON value replaced: parses, often opens.
                let mut v = body_value.clone();
                for _ in 0..1 + rng.below(3) {
                    mutate_json(rng, &mut v, &BODY_VALUES);
                }
                let mut b = vec![FLAG_ALT];
                b.extend(serde_json::to_vec(&v).expect("JSON"));
                b
            }
        },
        |d| fuzz_support::keystore(&fx, d),
    );
}

#[test]
fn key_policy_documents() {
    let seeds = [
        json!({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*"}]}),
        json!({"Statement":[
            {"Sid":"a","Effect":"Allow","Principal":{"kmsfs":["uid:1000","gid:50"]},"Action":["kms:Decrypt","kms:GenerateDataKey*"],"Resource":"*"},
            {"Effect":"Deny","Principal":{"kmsfs":"uid:1001"},"Action":"kms:*"}]}),
        json!({"Id":"x","Statement":{"Effect":"Deny","Principal":{"kmsfs":["*"]},"Action":"kms:ReEncrypt*"}}),
    ];
    let seed_texts: Vec<Vec<u8>> = seeds.iter().map(|v| v.to_string().into_bytes()).collect();
    run(
        "policy",
        |rng| match rng.below(5) {
            0 => {
                // Bytes changed in a valid document.
                let s = &seed_texts[rng.below(3) as usize];
                let e = edits(rng, 0, s.len());
                fuzz_support::apply_edits(s, &e[1..])
            }
            1 => random_policy(rng).to_string().into_bytes(),
            _ => {
                // Values replaced in a valid document: many stay valid, so
                // that evaluation is compared, not only parsing.
                let mut v = seeds[rng.below(3) as usize].clone();
                for _ in 0..1 + rng.below(3) {
                    mutate_json(rng, &mut v, &POLICY_VALUES);
                }
                v.to_string().into_bytes()
            }
        },
        fuzz_support::policy,
    );
}

#[test]
fn encryption_context_forms() {
    const PIECES: [&str; 18] = [
        "a", "b", "file", "=", ",", "{", "}", "\"", ":", " ", "\\", "é", "\u{0}", "[", "]", "1",
        "\\u0000", "\\\"",
    ];
    run(
        "context",
        |rng| {
            let mut s = String::new();
            for part in 0..1 + rng.below(2) {
                if part == 1 {
                    s.push('\0');
                }
                if rng.below(3) == 0 {
                    // A JSON object, sometimes with a repeated or empty key.
                    let mut m = Vec::new();
                    for _ in 0..rng.below(4) {
                        let k = ["a", "b", "", "k\"", "a=b", "ü"][rng.below(6) as usize];
                        let v = ["x", "", "1,2", "=", "\\n"][rng.below(5) as usize];
                        m.push(format!("{}:{}", json!(k), json!(v)));
                    }
                    s.push_str(&format!("{{{}}}", m.join(",")));
                } else {
                    for _ in 0..rng.below(12) {
                        s.push_str(PIECES[rng.below(PIECES.len() as u64) as usize]);
                    }
                }
            }
            s.into_bytes()
        },
        fuzz_support::context,
    );
}

#[test]
fn size_and_offset_arithmetic() {
    let maxes = [
        kmsfs::format::Layout::V1.max_plain_size(),
        kmsfs::format::Layout::V2.max_plain_size(),
    ];
    run(
        "offsets",
        |rng| {
            let mut out = Vec::new();
            for _ in 0..3 {
                let v = match rng.below(6) {
                    0 => rng.next(),
                    1 => rng.below(1 << 20),
                    2 => (rng.below(1000) * 4096 + rng.below(3)).saturating_sub(1),
                    3 => {
                        1024 + rng.below(1000) * [4124, 4136][rng.below(2) as usize] + rng.below(60)
                    }
                    4 => maxes[rng.below(2) as usize] - rng.below(10_000),
                    _ => {
                        let max = maxes[rng.below(2) as usize];
                        [u64::MAX, i64::MAX as u64, max, max + 1, 0][rng.below(5) as usize]
                    }
                };
                out.extend_from_slice(&v.to_be_bytes());
            }
            out
        },
        fuzz_support::offsets,
    );
}

/// Values that a mutation puts into a policy document.
const POLICY_VALUES: [&str; 20] = [
    r#""Allow""#,
    r#""Deny""#,
    r#""*""#,
    r#""kms:*""#,
    r#""kms:Decrypt""#,
    r#""kms:Encrypt""#,
    r#""kms:GenerateDataKey*""#,
    r#""kms:ReEncryptTo""#,
    r#"["kms:Decrypt","kms:ReEncrypt*"]"#,
    r#"{"kmsfs":["uid:5","gid:7"]}"#,
    r#"{"kmsfs":"*"}"#,
    r#"{"kmsfs":["uid:4294967295","uid:+5"]}"#,
    r#"{"kmsfs":"uid:4294967296"}"#,
    r#"{"AWS":"*"}"#,
    r#"{"Effect":"Allow","Principal":{"kmsfs":"gid:0"},"Action":"*"}"#,
    r#"{"Effect":"Deny","Principal":"*","Action":"kms:GenerateDataKeyWithoutPlaintext"}"#,
    "null",
    "1",
    "[]",
    "{}",
];

/// Values that a mutation puts into a keystore body.
const BODY_VALUES: [&str; 16] = [
    "0",
    "-1",
    "4294967295",
    "9223372036854775807",
    "-9223372036854775808",
    r#""Enabled""#,
    r#""Disabled""#,
    r#""PendingDeletion""#,
    r#""PendingImport""#,
    r#""EXTERNAL""#,
    r#""00""#,
    r#""""#,
    "null",
    "[]",
    "{}",
    r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*"}]}"#,
];

/// Replaces a random node of `v` (or deletes an object member, or adds one
/// to an array) with one of `pool`.
fn mutate_json(rng: &mut Rng, v: &mut Value, pool: &[&str]) {
    let pick = |rng: &mut Rng| -> Value {
        serde_json::from_str(pool[rng.below(pool.len() as u64) as usize]).expect("pool is JSON")
    };
    // Walk down a random path; stop at a random depth.
    let stop = rng.below(4) == 0;
    match v {
        Value::Object(m) if !m.is_empty() && !stop => {
            let i = rng.below(m.len() as u64) as usize;
            let key = m.keys().nth(i).cloned().expect("index in range");
            if rng.below(8) == 0 {
                m.remove(&key);
            } else if let Some(child) = m.get_mut(&key) {
                mutate_json(rng, child, pool);
            }
        }
        Value::Array(a) if !a.is_empty() && !stop => {
            if rng.below(8) == 0 {
                a.push(pick(rng));
            } else {
                let i = rng.below(a.len() as u64) as usize;
                mutate_json(rng, &mut a[i], pool);
            }
        }
        _ => *v = pick(rng),
    }
}

/// A random, mostly valid policy: 1 to 4 statements.
fn random_policy(rng: &mut Rng) -> Value {
    let principal = |rng: &mut Rng| -> Value {
        match rng.below(4) {
            0 => json!("*"),
            1 => json!({"kmsfs": "*"}),
            _ => {
                let ids: Vec<String> = (0..1 + rng.below(3))
                    .map(|_| {
                        let kind = if rng.below(2) == 0 { "uid" } else { "gid" };
                        format!(
                            "{kind}:{}",
                            [0u32, 1, 1000, u32::MAX][rng.below(4) as usize]
                        )
                    })
                    .collect();
                json!({ "kmsfs": ids })
            }
        }
    };
    let actions = [
        "*",
        "kms:*",
        "kms:Encrypt",
        "kms:Decrypt",
        "kms:GenerateDataKey",
        "kms:GenerateDataKey*",
        "kms:GenerateDataKeyWithoutPlaintext",
        "kms:ReEncrypt*",
        "kms:ReEncryptFrom",
        "kms:ReEncryptTo",
    ];
    let statements: Vec<Value> = (0..1 + rng.below(4))
        .map(|_| {
            let action: Vec<&str> = (0..1 + rng.below(3))
                .map(|_| actions[rng.below(actions.len() as u64) as usize])
                .collect();
            json!({
                "Effect": if rng.below(3) == 0 { "Deny" } else { "Allow" },
                "Principal": principal(rng),
                "Action": action,
            })
        })
        .collect();
    json!({ "Version": "2012-10-17", "Statement": statements })
}
