//! Benchmark (not a test) of the in-process key service on one thread:
//! GenerateDataKey, Decrypt, Encrypt and generation() against a temporary
//! keystore in root-key-file mode. Prints a table of ops/s.
//!
//! Run: `cargo run --release --example kms_bench [-- SECONDS_PER_OP]`

use std::time::{Duration, Instant};

use kmsfs::kms::{
    Caller, CreateMode, DataKeySpec, EncryptionContext, KeyService, KeyServiceExt, LocalKeyStore,
    RequestContext,
};

fn measure(name: &str, secs: f64, mut op: impl FnMut()) -> (String, u64, f64) {
    // Warm up, then run in batches until the time is up.
    for _ in 0..1000 {
        op();
    }
    let start = Instant::now();
    let budget = Duration::from_secs_f64(secs);
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..1000 {
            op();
        }
        n += 1000;
    }
    let el = start.elapsed().as_secs_f64();
    (name.to_string(), n, n as f64 / el)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let tmp = std::env::temp_dir().join(format!("kmsfs-bench-{}", std::process::id()));
    let ks = LocalKeyStore::create(&tmp, CreateMode::RootKeyFile)?;
    let me = Caller {
        uid: 0,
        gid: 0,
        pid: std::process::id(),
        access_key: None,
    };
    let rc = RequestContext::cli(me);
    let key = ks.create_key(&me, "bench")?.key_id;
    let ctx = EncryptionContext::with("kmsfs:file-id", "00112233445566778899aabbccddeeff");
    let dk = ks.generate_data_key(&rc, &key, DataKeySpec::Aes256, &ctx)?;
    let blob = dk.ciphertext_blob.clone();
    let small = [0x42u8; 64];
    // A second key with a three-statement policy that allows this caller.
    let key2 = ks.create_key(&me, "bench with policy")?.key_id;
    let policy = format!(
        r#"{{"Statement":[
        {{"Effect":"Deny","Principal":{{"kmsfs":"uid:{}"}},"Action":"kms:Encrypt"}},
        {{"Effect":"Allow","Principal":{{"kmsfs":["gid:12345","uid:{}"]}},"Action":"kms:*"}},
        {{"Effect":"Allow","Principal":"*","Action":"kms:GenerateDataKey*"}}]}}"#,
        me.uid.wrapping_add(1),
        me.uid
    );
    ks.put_key_policy(&me, &key2, "default", &policy)?;
    let blob2 = ks
        .generate_data_key(&rc, &key2, DataKeySpec::Aes256, &ctx)?
        .ciphertext_blob;
    let mut failures = 0u64;

    let rows = vec![
        measure("GenerateDataKey (AES_256)", secs, || {
            if ks
                .generate_data_key(&rc, &key, DataKeySpec::Aes256, &ctx)
                .is_err()
            {
                failures += 1;
            }
        }),
        measure("Decrypt (32-byte data key)", secs, || {
            if ks.decrypt(&rc, &blob, &ctx, None).is_err() {
                failures += 1;
            }
        }),
        measure("Encrypt (64 bytes)", secs, || {
            if ks.encrypt(&rc, &key, &small, &ctx).is_err() {
                failures += 1;
            }
        }),
        measure("Decrypt, key with a policy", secs, || {
            if ks.decrypt(&rc, &blob2, &ctx, None).is_err() {
                failures += 1;
            }
        }),
        measure("generation()", secs, || {
            std::hint::black_box(ks.generation());
        }),
    ];
    std::fs::remove_dir_all(&tmp)?;
    println!("kmsfs key service, in process, one thread ({secs} s per row)");
    println!(
        "{:<30} {:>12} {:>14} {:>10}",
        "operation", "ops", "ops/s", "us/op"
    );
    for (name, n, rate) in &rows {
        println!("{name:<30} {n:>12} {rate:>14.0} {:>10.2}", 1e6 / rate);
    }
    if failures > 0 {
        return Err(format!("{failures} operations failed").into());
    }
    Ok(())
}
