//! The contract the mount relies on: a long-running process holding a
//! `LocalKeyStore` sees another process's `disable-key` within one second
//! (generation() changes and the next operation refuses), without reopening.

mod common;

use std::time::{Duration, Instant};

use common::*;
use kmsfs::crypto::SecretBytes;
use kmsfs::kms::{
    Caller, DataKeySpec, EncryptionContext, KeyService, KeyServiceExt, KmsError, LocalKeyStore,
    RequestContext,
};

const ME: Caller = Caller {
    uid: 0,
    gid: 0,
    pid: 0,
    access_key: None,
};

fn no_passphrase() -> Result<SecretBytes, KmsError> {
    Err(KmsError::internal("not needed".into()))
}

/// Polls until `f` holds, for at most one second; returns how long it took.
fn within_a_second(mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(1) {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

#[test]
fn another_process_disabling_a_key_is_seen_within_a_second() {
    let ks = Ks::new();
    let key = ks.create_key();
    let svc = LocalKeyStore::open(&ks.path, &no_passphrase).unwrap();
    let ctx = EncryptionContext::with("file", "1");
    let dk = svc
        .generate_data_key(&RequestContext::cli(ME), &key, DataKeySpec::Aes256, &ctx)
        .unwrap();
    let g0 = svc.generation();

    ks.ok(&["kms", "disable-key", "--key-id", &key]);
    let seen = within_a_second(|| svc.generation() != g0);
    assert!(seen.is_some(), "generation() did not change within 1 s");
    match svc.decrypt(&RequestContext::cli(ME), &dk.ciphertext_blob, &ctx, None) {
        Err(KmsError::Disabled { .. }) => {}
        other => panic!("decrypt after disable-key elsewhere: {other:?}"),
    }

    let g1 = svc.generation();
    ks.ok(&["kms", "enable-key", "--key-id", &key]);
    assert!(within_a_second(|| svc.generation() != g1).is_some());
    let d = svc
        .decrypt(&RequestContext::cli(ME), &dk.ciphertext_blob, &ctx, None)
        .unwrap();
    assert_eq!(d.plaintext, dk.plaintext);
}

#[test]
fn keys_created_elsewhere_become_usable_and_generation_is_stable_otherwise() {
    let ks = Ks::new();
    let svc = LocalKeyStore::open(&ks.path, &no_passphrase).unwrap();
    let g0 = svc.generation();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(svc.generation(), g0, "generation moved without any change");
    let key = ks.create_key();
    assert!(
        within_a_second(|| svc
            .encrypt(
                &RequestContext::cli(ME),
                &key,
                b"x",
                &EncryptionContext::new()
            )
            .is_ok())
        .is_some()
    );
    assert_ne!(svc.generation(), g0);
}
