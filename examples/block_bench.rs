//! Micro-benchmark (not a test) of the per-block crypto path: today's block
//! construction (a random 96-bit nonce and AES-256-GCM under the data key)
//! against XAES-256-GCM (docs/FORMAT.md, "Block format version 2"), per
//! 4 KiB block, for one block per WRITE and for 256 blocks per WRITE. Prints
//! the median of 7 rounds in ns per block.
//!
//! Run: `cargo run --release --example block_bench`

use std::hint::black_box;
use std::time::Instant;

use kmsfs::crypto::{AeadKey, Key256, NONCE_LEN, XaesKey, random_fill};

const BLOCK: usize = 4096;

fn median(name: &str, iters: u32, blocks: u32, mut op: impl FnMut()) {
    for _ in 0..iters / 10 + 1 {
        op();
    }
    let mut v: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                op();
            }
            t.elapsed().as_nanos() as f64 / f64::from(iters * blocks)
        })
        .collect();
    v.sort_by(f64::total_cmp);
    println!("| {name} | {:.0} |", v[3]);
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let key = Key256::random()?;
    let gcm = AeadKey::new(&key);
    let xaes = XaesKey::new(&key)?;
    let aad = [7u8; 38];
    let plain = vec![0x5au8; BLOCK];
    let mut out = Vec::with_capacity(256 * (BLOCK + 40));
    println!("| per 4 KiB block | ns |\n|---|---:|");
    median("v1 seal, 1 block per WRITE", 20_000, 1, || {
        out.clear();
        gcm.seal_append(&aad, &plain, &mut out).ok();
        black_box(&out);
    });
    median("v2 seal, 1 block per WRITE", 20_000, 1, || {
        let mut n = [0u8; 24];
        random_fill(&mut n).ok();
        out.clear();
        out.extend_from_slice(&n);
        let mut first = [0u8; NONCE_LEN];
        first.copy_from_slice(&n[..NONCE_LEN]);
        let mut second = [0u8; NONCE_LEN];
        second.copy_from_slice(&n[NONCE_LEN..]);
        if let Ok(k) = xaes.subkey(&first) {
            k.seal_append_with_nonce(&second, &aad, &plain, &mut out)
                .ok();
        }
        black_box(&out);
    });
    median("v1 seal, 256 blocks per WRITE", 100, 256, || {
        out.clear();
        for _ in 0..256 {
            gcm.seal_append(&aad, &plain, &mut out).ok();
        }
        black_box(&out);
    });
    let mut nonces = vec![0u8; NONCE_LEN * 257];
    median("v2 seal, 256 blocks per WRITE", 100, 256, || {
        random_fill(&mut nonces).ok();
        out.clear();
        let mut first = [0u8; NONCE_LEN];
        first.copy_from_slice(&nonces[..NONCE_LEN]);
        if let Ok(k) = xaes.subkey(&first) {
            for c in nonces[NONCE_LEN..].chunks_exact(NONCE_LEN) {
                let mut second = [0u8; NONCE_LEN];
                second.copy_from_slice(c);
                out.extend_from_slice(&first);
                out.extend_from_slice(&second);
                k.seal_append_with_nonce(&second, &aad, &plain, &mut out)
                    .ok();
            }
        }
        black_box(&out);
    });
    let sealed_v1 = gcm.seal(&aad, &plain)?;
    let first = [1u8; NONCE_LEN];
    let second = [2u8; NONCE_LEN];
    let mut sealed_v2 = Vec::new();
    xaes.subkey(&first)?
        .seal_append_with_nonce(&second, &aad, &plain, &mut sealed_v2)?;
    let mut buf = sealed_v1.clone();
    median("v1 open", 20_000, 1, || {
        buf.copy_from_slice(&sealed_v1);
        black_box(gcm.open_in_place(&aad, &mut buf).is_ok());
    });
    let mut buf2 = sealed_v2.clone();
    median("v2 open, key derived per block", 20_000, 1, || {
        buf2.copy_from_slice(&sealed_v2);
        if let Ok(k) = xaes.subkey(&first) {
            black_box(k.open_in_place_with_nonce(&second, &aad, &mut buf2).is_ok());
        }
    });
    let cached = xaes.subkey(&first)?;
    median(
        "v2 open, derived key cached (blocks of one WRITE)",
        20_000,
        1,
        || {
            buf2.copy_from_slice(&sealed_v2);
            black_box(
                cached
                    .open_in_place_with_nonce(&second, &aad, &mut buf2)
                    .is_ok(),
            );
        },
    );
    Ok(())
}
