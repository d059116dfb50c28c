//! Unit tests of `LocalKeyStore`: states, contexts, foreign and modified blobs,
//! reload across instances, fallback, purge, rotation, policies, import, audit.
use super::snapshot::no_passphrase;
use super::*;
use crate::kms::audit::{AuditEvent, Operation};
use crate::kms::blob::{self, BlobHeader};
use crate::kms::model;
use crate::kms::store::CURRENT_FILE;
use crate::kms::store::Frame;
use crate::kms::{
    Caller, DataKeySpec, EncryptionContext, KeyService, KeyServiceExt, KeyState,
    MAX_ENCRYPT_PLAINTEXT, RequestContext, clock,
};

const ME: Caller = Caller {
    uid: 0,
    gid: 0,
    pid: 1,
    access_key: None,
};
const RC: RequestContext<'static> = RequestContext::cli(ME);

fn new_store() -> (tempfile::TempDir, LocalKeyStore, String) {
    let t = tempfile::tempdir().unwrap();
    let ks = LocalKeyStore::create(&t.path().join("ks"), CreateMode::RootKeyFile).unwrap();
    let id = ks.create_key(&ME, "test").unwrap().key_id;
    (t, ks, id)
}

fn reopen(ks: &LocalKeyStore) -> LocalKeyStore {
    LocalKeyStore::open(ks.dir(), &no_passphrase).unwrap()
}

fn ctx() -> EncryptionContext {
    EncryptionContext::with("file", "f1")
}

#[test]
fn data_key_round_trip_and_refusals() {
    let (_t, ks, id) = new_store();
    let dk = ks
        .generate_data_key(&RC, &id, DataKeySpec::Aes256, &ctx())
        .unwrap();
    assert_eq!(dk.plaintext.len(), 32);
    assert_eq!(dk.ciphertext_blob.len(), 32 + blob::BLOB_OVERHEAD);
    let d = ks.decrypt(&RC, &dk.ciphertext_blob, &ctx(), None).unwrap();
    assert_eq!(d.plaintext, dk.plaintext);
    assert_eq!(
        (d.key_id.as_str(), d.key_material_version),
        (id.as_str(), 1)
    );
    // Same key named by ARN: accepted. Another key: IncorrectKey.
    let arn = ks.key_arn(&id);
    assert!(
        ks.decrypt(&RC, &dk.ciphertext_blob, &ctx(), Some(&arn))
            .is_ok()
    );
    let other = ks.create_key(&ME, "").unwrap().key_id;
    let e = ks
        .decrypt(&RC, &dk.ciphertext_blob, &ctx(), Some(&other))
        .unwrap_err();
    assert!(matches!(e, KmsError::IncorrectKey { .. }), "{e}");
    // Other context: refused.
    let e = ks
        .decrypt(&RC, &dk.ciphertext_blob, &EncryptionContext::new(), None)
        .unwrap_err();
    assert!(matches!(e, KmsError::InvalidCiphertext { .. }), "{e}");
    for (spec, n) in [
        (DataKeySpec::Aes128, 16),
        (DataKeySpec::Bytes(1), 1),
        (DataKeySpec::Bytes(1024), 1024),
    ] {
        assert_eq!(
            ks.generate_data_key(&RC, &id, spec, &ctx())
                .unwrap()
                .plaintext
                .len(),
            n
        );
    }
    for bad in [0, 1025] {
        let e = ks
            .generate_data_key(&RC, &id, DataKeySpec::Bytes(bad), &ctx())
            .unwrap_err();
        assert!(matches!(e, KmsError::Validation { .. }));
    }
    let w = ks
        .generate_data_key_without_plaintext(&RC, &id, DataKeySpec::Aes256, &ctx())
        .unwrap();
    assert_eq!(
        ks.decrypt(&RC, &w.ciphertext_blob, &ctx(), None)
            .unwrap()
            .plaintext
            .len(),
        32
    );
}

#[test]
fn every_modified_blob_is_invalid_ciphertext() {
    let (_t, ks, id) = new_store();
    let dk = ks
        .generate_data_key(&RC, &id, DataKeySpec::Aes256, &ctx())
        .unwrap();
    let blob = dk.ciphertext_blob;
    for i in 0..blob.len() * 8 {
        let mut bad = blob.clone();
        bad[i / 8] ^= 1 << (i % 8);
        match ks.decrypt(&RC, &bad, &ctx(), None) {
            Err(KmsError::InvalidCiphertext { .. }) => {}
            other => panic!("bit {i}: {other:?}"),
        }
    }
    for n in 0..blob.len() {
        assert!(matches!(
            ks.decrypt(&RC, &blob[..n], &ctx(), None),
            Err(KmsError::InvalidCiphertext { .. })
        ));
    }
}

#[test]
fn rotation_keeps_old_blobs_decryptable_and_new_ones_use_the_new_version() {
    let (_t, ks, id) = new_store();
    let old = ks
        .generate_data_key(&RC, &id, DataKeySpec::Aes256, &ctx())
        .unwrap();
    assert_eq!(old.key_material_version, 1);
    let g = ks.generation();
    assert_eq!(ks.rotate_key_on_demand(&ME, &id).unwrap(), (id.clone(), 2));
    assert_ne!(ks.generation(), g);
    let new = ks
        .generate_data_key(&RC, &id, DataKeySpec::Aes256, &ctx())
        .unwrap();
    assert_eq!(new.key_material_version, 2);
    assert_eq!(
        BlobHeader::parse(&new.ciphertext_blob)
            .unwrap()
            .material_version,
        2
    );
    let d_old = ks.decrypt(&RC, &old.ciphertext_blob, &ctx(), None).unwrap();
    assert_eq!(
        (d_old.key_material_version, &d_old.plaintext),
        (1, &old.plaintext)
    );
    let d_new = ks.decrypt(&RC, &new.ciphertext_blob, &ctx(), None).unwrap();
    assert_eq!(d_new.key_material_version, 2);
    // Re-encrypting under the same key moves an old blob to the new version.
    let r = ks
        .re_encrypt(&RC, &old.ciphertext_blob, &ctx(), &id, &ctx())
        .unwrap();
    assert_eq!(
        BlobHeader::parse(&r.ciphertext_blob)
            .unwrap()
            .material_version,
        2
    );
    // A reopened store (another process) agrees.
    let other = reopen(&ks);
    assert!(
        other
            .decrypt(&RC, &old.ciphertext_blob, &ctx(), None)
            .is_ok()
    );
    assert_eq!(
        other
            .describe_key(&RC, &id)
            .unwrap()
            .current_key_material_version,
        2
    );
    let rot = other.list_key_rotations(&ME, &id).unwrap();
    assert_eq!(rot.len(), 1);
    assert_eq!(
        (rot[0].rotation_type, rot[0].key_material_version),
        (model::RotationType::OnDemand, 2)
    );
    ks.disable_key(&ME, &id).unwrap();
    assert!(matches!(
        ks.rotate_key_on_demand(&ME, &id),
        Err(KmsError::Disabled { .. })
    ));
}

#[test]
fn automatic_rotation_happens_on_the_next_use_after_it_is_due() {
    let (_t, ks, id) = new_store();
    assert!(
        !ks.get_key_rotation_status(&ME, &id)
            .unwrap()
            .key_rotation_enabled
    );
    assert!(matches!(
        ks.enable_key_rotation(&ME, &id, Some(89)),
        Err(KmsError::Validation { .. })
    ));
    ks.enable_key_rotation(&ME, &id, None).unwrap();
    let st = ks.get_key_rotation_status(&ME, &id).unwrap();
    assert_eq!(
        (st.key_rotation_enabled, st.rotation_period_in_days),
        (true, Some(365))
    );
    let old = ks.encrypt(&RC, &id, b"x", &ctx()).unwrap().ciphertext_blob;
    // Move the due date into the past, as if the period had elapsed.
    ks.update(|s, _| {
        s.keys.get_mut(&id).unwrap().next_rotation = Some(1);
        Ok(())
    })
    .unwrap();
    let fresh = reopen(&ks); // the next use rotates
    assert_eq!(
        fresh
            .describe_key(&RC, &id)
            .unwrap()
            .current_key_material_version,
        2
    );
    let rot = fresh.list_key_rotations(&ME, &id).unwrap();
    assert_eq!(rot[0].rotation_type, model::RotationType::Automatic);
    assert!(
        fresh
            .get_key_rotation_status(&ME, &id)
            .unwrap()
            .next_rotation_date
            .unwrap()
            > 1
    );
    assert!(fresh.decrypt(&RC, &old, &ctx(), None).is_ok());
    fresh.disable_key_rotation(&ME, &id).unwrap();
    assert!(
        !fresh
            .get_key_rotation_status(&ME, &id)
            .unwrap()
            .key_rotation_enabled
    );
}

#[test]
fn key_policy_is_enforced_for_the_caller() {
    let (_t, ks, id) = new_store();
    let alice = Caller {
        uid: 1000,
        gid: 100,
        pid: 2,
        access_key: None,
    };
    let mallory = Caller {
        uid: 666,
        gid: 100,
        pid: 3,
        access_key: None,
    };
    let blob = ks
        .encrypt(&RequestContext::cli(mallory), &id, b"x", &ctx())
        .unwrap()
        .ciphertext_blob;
    let doc = r#"{"Statement":[
        {"Effect":"Allow","Principal":{"kmsfs":"gid:100"},"Action":"kms:*"},
        {"Effect":"Deny","Principal":{"kmsfs":"uid:666"},"Action":"kms:Decrypt"}]}"#;
    // It would lock ME out of changing it again: refused unless bypassed.
    let e = ks.put_key_policy(&ME, &id, "default", doc).unwrap_err();
    assert!(
        matches!(
            e,
            KmsError::Validation {
                code: Some(crate::kms::ValidationCode::PolicyLockout),
                ..
            }
        ),
        "{e}"
    );
    ks.put_key_policy_checked(&ME, &id, "default", doc, true)
        .unwrap();
    assert!(
        ks.decrypt(&RequestContext::cli(alice), &blob, &ctx(), None)
            .is_ok()
    );
    let e = ks
        .decrypt(&RequestContext::cli(mallory), &blob, &ctx(), None)
        .unwrap_err();
    assert!(
        matches!(e, KmsError::AccessDenied { .. }) && e.is_access_refusal(),
        "{e}"
    );
    assert!(
        ks.encrypt(&RequestContext::cli(mallory), &id, b"x", &ctx())
            .is_ok()
    );
    assert!(matches!(
        ks.encrypt(&RC, &id, b"x", &ctx()),
        Err(KmsError::AccessDenied { .. })
    ));
    // Another process sees the policy too; the stored document round-trips.
    let other = reopen(&ks);
    assert!(matches!(
        other.decrypt(&RequestContext::cli(mallory), &blob, &ctx(), None),
        Err(KmsError::AccessDenied { .. })
    ));
    let stored = other.get_key_policy(&ME, &id, "default").unwrap();
    assert_eq!(stored["Statement"][1]["Effect"], "Deny");
    assert!(matches!(
        ks.put_key_policy(&ME, &id, "default", "{}"),
        Err(KmsError::Validation { .. })
    ));
    assert!(matches!(
        ks.get_key_policy(&ME, &id, "other"),
        Err(KmsError::NotFound { .. })
    ));
    // Putting the default document back allows everyone again.
    let default = crate::kms::policy::default_policy_document().to_string();
    ks.put_key_policy(&ME, &id, "default", &default).unwrap();
    assert!(
        ks.decrypt(&RequestContext::cli(mallory), &blob, &ctx(), None)
            .is_ok()
    );
}

#[test]
fn imported_material_round_trip_expiry_and_reimport() {
    let (_t, ks, own) = new_store();
    let meta = ks
        .create_key_with_origin(&ME, "ext", crate::kms::KeyOrigin::External)
        .unwrap();
    let id = meta.key_id;
    assert_eq!(meta.key_state, KeyState::PendingImport);
    assert!(matches!(
        ks.encrypt(&RC, &id, b"x", &ctx()),
        Err(KmsError::InvalidState { .. })
    ));
    assert!(
        ks.get_parameters_for_import(&ME, &own, "RSAES_OAEP_SHA_256", "RSA_2048")
            .is_err()
    );
    assert!(
        ks.get_parameters_for_import(&ME, &id, "RSAES_PKCS1_V1_5", "RSA_2048")
            .is_err()
    );
    let p = ks
        .get_parameters_for_import(&ME, &id, "RSAES_OAEP_SHA_256", "RSA_2048")
        .unwrap();
    let material = [0x33u8; 32];
    let wrapped = crate::crypto::rsa_oaep_sha256_wrap(&p.public_key, &material).unwrap();
    // A token of another key, or garbage, or material wrapped elsewhere: refused.
    let mut other_key = p.import_token.clone();
    other_key[30] ^= 1;
    assert!(matches!(
        ks.import_key_material(&ME, &id, &other_key, &wrapped, None),
        Err(KmsError::Validation { .. })
    ));
    assert!(
        ks.import_key_material(&ME, &id, b"junk", &wrapped, None)
            .is_err()
    );
    let stranger = crate::crypto::RsaUnwrapKey::generate(2048).unwrap();
    let bad = crate::crypto::rsa_oaep_sha256_wrap(&stranger.public_key_der().unwrap(), &material)
        .unwrap();
    assert!(matches!(
        ks.import_key_material(&ME, &id, &p.import_token, &bad, None),
        Err(KmsError::InvalidCiphertext { .. })
    ));
    let now = clock::now().unwrap();
    ks.import_key_material(&ME, &id, &p.import_token, &wrapped, Some(now + 3600))
        .unwrap();
    let blob = ks.encrypt(&RC, &id, b"x", &ctx()).unwrap().ciphertext_blob;
    // Material expires: as if ValidTo had passed.
    ks.update(|s, _| {
        s.keys.get_mut(&id).unwrap().materials[0].expires = Some(1);
        Ok(())
    })
    .unwrap();
    let fresh = reopen(&ks);
    assert_eq!(
        fresh.describe_key(&RC, &id).unwrap().key_state,
        KeyState::PendingImport
    );
    assert!(matches!(
        fresh.decrypt(&RC, &blob, &ctx(), None),
        Err(KmsError::InvalidState { .. })
    ));
    // The old token is spent; new parameters, same material: old blobs work again.
    assert!(
        fresh
            .import_key_material(&ME, &id, &p.import_token, &wrapped, None)
            .is_err()
    );
    let p2 = fresh
        .get_parameters_for_import(&ME, &id, "RSAES_OAEP_SHA_256", "RSA_2048")
        .unwrap();
    let w2 = crate::crypto::rsa_oaep_sha256_wrap(&p2.public_key, &material).unwrap();
    fresh
        .import_key_material(&ME, &id, &p2.import_token, &w2, None)
        .unwrap();
    assert_eq!(
        fresh
            .decrypt(&RC, &blob, &ctx(), None)
            .unwrap()
            .plaintext
            .expose(),
        b"x"
    );
    fresh.delete_imported_key_material(&ME, &id).unwrap();
    assert!(matches!(
        fresh.decrypt(&RC, &blob, &ctx(), None),
        Err(KmsError::InvalidState { .. })
    ));
}

#[test]
fn encrypt_size_limit() {
    let (_t, ks, id) = new_store();
    let e = ks
        .encrypt(&RC, &id, &[7u8; MAX_ENCRYPT_PLAINTEXT], &ctx())
        .unwrap();
    let d = ks.decrypt(&RC, &e.ciphertext_blob, &ctx(), None).unwrap();
    assert_eq!(d.plaintext.expose(), &[7u8; MAX_ENCRYPT_PLAINTEXT][..]);
    let err = ks
        .encrypt(&RC, &id, &[7u8; MAX_ENCRYPT_PLAINTEXT + 1], &ctx())
        .unwrap_err();
    assert!(
        matches!(err, KmsError::Validation { .. }) && err.to_string().contains("generate-data-key")
    );
}

#[test]
fn every_state_refuses_with_its_own_error() {
    let (_t, ks, id) = new_store();
    let blob = ks.encrypt(&RC, &id, b"x", &ctx()).unwrap().ciphertext_blob;
    ks.disable_key(&ME, &id).unwrap();
    assert!(matches!(
        ks.encrypt(&RC, &id, b"x", &ctx()),
        Err(KmsError::Disabled { .. })
    ));
    assert!(matches!(
        ks.decrypt(&RC, &blob, &ctx(), None),
        Err(KmsError::Disabled { .. })
    ));
    assert!(matches!(
        ks.generate_data_key(&RC, &id, DataKeySpec::Aes256, &ctx()),
        Err(KmsError::Disabled { .. })
    ));
    assert!(matches!(
        ks.re_encrypt(&RC, &blob, &ctx(), &id, &ctx()),
        Err(KmsError::Disabled { .. })
    ));
    assert_eq!(
        ks.describe_key(&RC, &id).unwrap().key_state,
        KeyState::Disabled
    );
    ks.enable_key(&ME, &id).unwrap();
    assert!(ks.decrypt(&RC, &blob, &ctx(), None).is_ok());
    let s = ks.schedule_key_deletion(&ME, &id, Some(7)).unwrap();
    assert_eq!(s.key_state, KeyState::PendingDeletion);
    assert!(matches!(
        ks.decrypt(&RC, &blob, &ctx(), None),
        Err(KmsError::InvalidState { .. })
    ));
    assert!(matches!(
        ks.encrypt(&RC, &id, b"x", &ctx()),
        Err(KmsError::InvalidState { .. })
    ));
    assert!(matches!(
        ks.enable_key(&ME, &id),
        Err(KmsError::InvalidState { .. })
    ));
    ks.cancel_key_deletion(&ME, &id).unwrap();
    assert_eq!(
        ks.describe_key(&RC, &id).unwrap().key_state,
        KeyState::Disabled
    );
    for bad in [6, 31] {
        assert!(matches!(
            ks.schedule_key_deletion(&ME, &id, Some(bad)),
            Err(KmsError::Validation { .. })
        ));
    }
    assert_eq!(
        ks.schedule_key_deletion(&ME, &id, None)
            .unwrap()
            .pending_window_in_days,
        30
    );
    let missing = uuid::Uuid::new_v4().to_string();
    assert!(matches!(
        ks.disable_key(&ME, &missing),
        Err(KmsError::NotFound { .. })
    ));
    assert!(matches!(
        ks.encrypt(&RC, "not-a-key", b"x", &ctx()),
        Err(KmsError::NotFound { .. })
    ));
}

#[test]
fn blob_from_another_keystore_is_refused() {
    let (_t, a, ida) = new_store();
    let (_t2, b, _) = new_store();
    let blob = a.encrypt(&RC, &ida, b"x", &ctx()).unwrap().ciphertext_blob;
    let e = b.decrypt(&RC, &blob, &ctx(), None).unwrap_err();
    assert!(matches!(e, KmsError::InvalidCiphertext { .. }), "{e}");
    // Even with the keystore id forged, the wrong key cannot open it.
    let mut forged = blob.clone();
    let bid: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&b.keystore_id()[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    forged[5..21].copy_from_slice(&bid);
    assert!(b.decrypt(&RC, &forged, &ctx(), None).is_err());
}

#[test]
fn re_encrypt_moves_to_the_destination_key_and_context() {
    let (_t, ks, a) = new_store();
    let b = ks.create_key(&ME, "dest").unwrap().key_id;
    let blob = ks
        .encrypt(&RC, &a, b"secret", &ctx())
        .unwrap()
        .ciphertext_blob;
    let dctx = EncryptionContext::with("file", "f2");
    let r = ks.re_encrypt(&RC, &blob, &ctx(), &b, &dctx).unwrap();
    assert_eq!(r.source_key_id.as_deref(), Some(a.as_str()));
    assert_eq!(r.key_id, b);
    let d = ks.decrypt(&RC, &r.ciphertext_blob, &dctx, None).unwrap();
    assert_eq!(
        (d.key_id.as_str(), d.plaintext.expose()),
        (b.as_str(), &b"secret"[..])
    );
    assert!(ks.decrypt(&RC, &r.ciphertext_blob, &ctx(), None).is_err());
    assert!(matches!(
        ks.re_encrypt(&RC, &blob, &dctx, &b, &dctx),
        Err(KmsError::InvalidCiphertext { .. })
    ));
}

#[test]
fn aliases_and_key_references() {
    let (_t, ks, id) = new_store();
    ks.create_alias(&ME, "alias/app", &id).unwrap();
    assert!(matches!(
        ks.create_alias(&ME, "alias/kmsfs/x", &id),
        Err(KmsError::Validation { .. })
    ));
    assert!(matches!(
        ks.create_alias(&ME, "alias/aws/ebs", &id),
        Err(KmsError::Validation { .. })
    ));
    let alias_arn = ks.alias_arn("alias/app");
    for r in ["alias/app", alias_arn.as_str(), &id.to_uppercase()] {
        assert_eq!(ks.describe_key(&RC, r).unwrap().key_id, id, "{r}");
    }
    // Both ARN forms name the key: AWS's, in any region, and the old one.
    let acct = ks.account_id().to_string();
    assert!(crate::kms::model::valid_account_id(&acct), "{acct}");
    for r in [
        format!("arn:aws:kms:local:{acct}:key/{id}"),
        format!("arn:aws:kms:eu-west-1:{acct}:key/{id}"),
        format!("arn:aws:kms:eu-west-1:{acct}:alias/app"),
        format!("arn:kmsfs:kms:local:{}:key/{id}", ks.keystore_id()),
    ] {
        assert_eq!(ks.describe_key(&RC, &r).unwrap().key_id, id, "{r}");
    }
    for foreign in [
        format!("arn:kmsfs:kms:local:{}:key/{id}", "0".repeat(32)),
        format!("arn:aws:kms:local:000000000000:key/{id}"),
        format!("arn:aws:kms::{acct}:key/{id}"),
    ] {
        assert!(
            matches!(
                ks.describe_key(&RC, &foreign),
                Err(KmsError::NotFound { .. })
            ),
            "{foreign}"
        );
    }
    let other = ks.create_key(&ME, "").unwrap().key_id;
    ks.update_alias(&ME, "alias/app", &other).unwrap();
    assert_eq!(ks.describe_key(&RC, "alias/app").unwrap().key_id, other);
    assert_eq!(ks.list_aliases(&ME, Some(&id)).unwrap().len(), 0);
    ks.delete_alias(&ME, "alias/app").unwrap();
    assert!(matches!(
        ks.describe_key(&RC, "alias/app"),
        Err(KmsError::NotFound { .. })
    ));
    let d1 = ks.ensure_default_key(&ME).unwrap();
    assert_eq!(ks.ensure_default_key(&ME).unwrap(), d1);
    assert_eq!(reopen(&ks).ensure_default_key(&ME).unwrap(), d1);
    assert_eq!(
        ks.describe_key(&RC, model::DEFAULT_ALIAS).unwrap().key_id,
        d1
    );
}

#[test]
fn another_instance_sees_changes_and_generation_moves() {
    let (_t, a, id) = new_store();
    let b = reopen(&a);
    let blob = b.encrypt(&RC, &id, b"x", &ctx()).unwrap().ciphertext_blob;
    let g0 = b.generation();
    a.disable_key(&ME, &id).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(FRESHNESS_INTERVAL_MS + 5));
    assert_ne!(b.generation(), g0);
    assert!(matches!(
        b.decrypt(&RC, &blob, &ctx(), None),
        Err(KmsError::Disabled { .. })
    ));
    a.enable_key(&ME, &id).unwrap();
    b.refresh().unwrap();
    assert!(b.decrypt(&RC, &blob, &ctx(), None).is_ok());
    // A key created elsewhere is usable here after a refresh.
    let k2 = a.create_key(&ME, "").unwrap().key_id;
    b.refresh().unwrap();
    assert!(b.encrypt(&RC, &k2, b"y", &ctx()).is_ok());
}

#[test]
fn concurrent_writers_lose_nothing() {
    let (_t, a, _) = new_store();
    let stores: Vec<LocalKeyStore> = (0..4).map(|_| reopen(&a)).collect();
    std::thread::scope(|s| {
        for st in &stores {
            s.spawn(move || {
                for _ in 0..5 {
                    st.create_key(&ME, "c").unwrap();
                }
            });
        }
    });
    a.refresh().unwrap();
    assert_eq!(a.list_keys(&ME).unwrap().len(), 21);
    // init wrote generation 1, then 21 creations.
    assert_eq!(a.file_generation(), 22);
}

#[test]
fn corrupt_current_falls_back_read_only() {
    let (_t, ks, id) = new_store();
    let blob = ks.encrypt(&RC, &id, b"x", &ctx()).unwrap().ciphertext_blob;
    ks.create_alias(&ME, "alias/later", &id).unwrap(); // current = prev + alias
    let cur = ks.dir().join(CURRENT_FILE);
    let mut bytes = std::fs::read(&cur).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&cur, &bytes).unwrap();
    let fb = reopen(&ks);
    let why = fb.fallback_reason().unwrap();
    assert!(why.contains("checksum"), "{why}");
    assert!(why.contains("KEY STATES MAY BE OUT OF DATE"), "{why}");
    assert!(why.contains("may show here as enabled"), "{why}");
    assert!(fb.decrypt(&RC, &blob, &ctx(), None).is_ok());
    assert!(fb.describe_key(&RC, "alias/later").is_err()); // prev generation's view
    let e = fb.create_key(&ME, "").unwrap_err();
    assert!(matches!(e, KmsError::CorruptKeystore { .. }), "{e}");
    assert_eq!(
        std::fs::read(&cur).unwrap(),
        bytes,
        "a damaged keystore was overwritten"
    );
}

#[test]
fn due_deletion_purges_both_generations_and_aliases() {
    let (_t, ks, id) = new_store();
    let keep = ks.create_key(&ME, "keep").unwrap().key_id;
    ks.create_alias(&ME, "alias/doomed", &id).unwrap();
    let blob = ks.encrypt(&RC, &id, b"x", &ctx()).unwrap().ciphertext_blob;
    ks.schedule_key_deletion(&ME, &id, Some(7)).unwrap();
    // Move the deletion date into the past (as if the window had elapsed).
    ks.update(|s, _| {
        s.keys.get_mut(&id).unwrap().deletion_date = Some(1);
        Ok(())
    })
    .unwrap();
    let fresh = reopen(&ks); // opening purges
    assert!(matches!(
        fresh.describe_key(&RC, &id),
        Err(KmsError::NotFound { .. })
    ));
    assert!(matches!(
        fresh.decrypt(&RC, &blob, &ctx(), None),
        Err(KmsError::NotFound { .. })
    ));
    assert!(fresh.list_aliases(&ME, None).unwrap().is_empty());
    assert!(fresh.describe_key(&RC, &keep).is_ok());
    for name in [CURRENT_FILE, store::PREV_FILE] {
        let bytes = std::fs::read(ks.dir().join(name)).unwrap();
        let state = Frame::parse(name, &bytes)
            .unwrap()
            .unseal(name, &ks.root)
            .unwrap();
        assert!(!state.keys.contains_key(&id), "{name} still holds the key");
        assert!(state.keys.contains_key(&keep));
    }
}

#[test]
fn audit_sink_sees_every_use_and_refusal() {
    type Seen = (Operation, String, Result<(), &'static str>);
    struct Sink(Mutex<Vec<Seen>>);
    impl AuditSink for Sink {
        fn record(&self, e: &AuditEvent<'_>) {
            self.0
                .lock()
                .unwrap()
                .push((e.operation, e.key_id.to_string(), e.result));
        }
    }
    let (_t, ks, id) = new_store();
    let sink = Arc::new(Sink(Mutex::new(Vec::new())));
    ks.set_audit_sink(sink.clone()).unwrap();
    let blob = ks.encrypt(&RC, &id, b"x", &ctx()).unwrap().ciphertext_blob;
    ks.disable_key(&ME, &id).unwrap();
    let _ = ks.decrypt(&RC, &blob, &ctx(), None);
    let _ = ks.encrypt(&RC, "alias/none", b"x", &ctx());
    let ev = sink.0.lock().unwrap().clone();
    assert_eq!(
        ev,
        vec![
            (Operation::Encrypt, id.clone(), Ok(())),
            (Operation::DisableKey, id.clone(), Ok(())),
            (Operation::Decrypt, id.clone(), Err("DisabledException")),
            (
                Operation::Encrypt,
                "alias/none".to_string(),
                Err("NotFoundException")
            ),
        ]
    );
}

#[test]
fn debug_shows_no_secrets() {
    let (_t, ks, id) = new_store();
    let dk = ks
        .generate_data_key(&RC, &id, DataKeySpec::Aes256, &ctx())
        .unwrap();
    let s = format!("{ks:?} {dk:?}");
    assert!(s.contains("redacted") && s.contains("SecretBytes(len=32)"));
    let hex: String = dk
        .plaintext
        .expose()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(!s.contains(&hex));
}

fn damage_current(ks: &LocalKeyStore) {
    let cur = ks.dir().join(CURRENT_FILE);
    let mut bytes = std::fs::read(&cur).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&cur, &bytes).unwrap();
}

#[test]
fn a_running_service_never_falls_back_to_an_older_generation() {
    // Damaging keystore.kms must not bring back a key disabled earlier.
    let (_t, ks, id) = new_store();
    ks.disable_key(&ME, &id).unwrap();
    assert!(matches!(
        ks.encrypt(&RC, &id, b"x", &ctx()),
        Err(KmsError::Disabled { .. })
    ));
    let good = std::fs::read(ks.dir().join(CURRENT_FILE)).unwrap();
    damage_current(&ks); // keystore.prev has the key enabled
    ks.refresh().unwrap();
    assert!(ks.fallback_reason().is_none());
    assert!(
        matches!(
            ks.encrypt(&RC, &id, b"x", &ctx()),
            Err(KmsError::Disabled { .. })
        ),
        "a disabled key came back after the keystore file was damaged"
    );
    assert!(
        ks.create_key(&ME, "").is_err(),
        "wrote over a damaged keystore"
    );
    // Restored from a backup: reloaded and writable again.
    std::thread::sleep(std::time::Duration::from_millis(5));
    std::fs::write(ks.dir().join(CURRENT_FILE), &good).unwrap();
    ks.refresh().unwrap();
    ks.create_key(&ME, "").unwrap();
    assert!(matches!(
        ks.encrypt(&RC, &id, b"x", &ctx()),
        Err(KmsError::Disabled { .. })
    ));
}

#[test]
fn a_damaged_change_never_read_fails_closed() {
    let (_t, a, id) = new_store();
    let b = reopen(&a);
    b.disable_key(&ME, &id).unwrap(); // a has not read this generation yet
    damage_current(&a);
    assert!(a.refresh().is_err());
    for k in [id.as_str(), "alias/none"] {
        let e = a.encrypt(&RC, k, b"x", &ctx()).unwrap_err();
        assert!(matches!(e, KmsError::CorruptKeystore { .. }), "{e:?}");
    }
    let e = a.encrypt(&RC, &id, b"x", &ctx()).unwrap_err().to_string();
    assert!(e.contains("never read"), "{e}");
}

#[test]
fn a_stored_policy_no_longer_accepted_fails_closed_for_its_key_only() {
    let (_t, ks, id) = new_store();
    let other = ks.create_key(&ME, "other").unwrap().key_id;
    // As an older release could have stored it: NotAction was ignored then.
    let (bytes, _) = ks.dir.read(CURRENT_FILE).unwrap().unwrap();
    let frame = Frame::parse(CURRENT_FILE, &bytes).unwrap();
    let mut state = frame.unseal(CURRENT_FILE, &ks.root).unwrap();
    state.keys.get_mut(&id).unwrap().policy = Some(serde_json::json!({
        "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:*",
                       "NotAction": "kms:Decrypt"}]
    }));
    let new = store::encode(&ks.keystore_id, &ks.root, frame.generation + 1, &state).unwrap();
    ks.dir.write_generations(Some(&bytes), &new).unwrap();
    let re = reopen(&ks);
    let e = re.encrypt(&RC, &id, b"x", &ctx()).unwrap_err();
    assert!(matches!(e, KmsError::AccessDenied { .. }), "{e:?}");
    re.encrypt(&RC, &other, b"x", &ctx()).unwrap();
}

#[test]
fn a_running_service_refuses_a_rollback_to_an_older_generation() {
    // An older valid copy put back as keystore.kms (cp keystore.prev
    // keystore.kms) would re-enable a key disabled since: fail closed.
    let (_t, ks, id) = new_store();
    let old = std::fs::read(ks.dir().join(CURRENT_FILE)).unwrap();
    ks.disable_key(&ME, &id).unwrap();
    ks.refresh().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    std::fs::write(ks.dir().join(CURRENT_FILE), &old).unwrap();
    assert!(ks.refresh().is_err());
    let e = ks.encrypt(&RC, &id, b"x", &ctx()).unwrap_err();
    assert!(matches!(e, KmsError::CorruptKeystore { .. }), "{e:?}");
    assert!(e.to_string().contains("went back from generation"), "{e}");
    // A fresh process accepts what is on disk (nothing else to compare with).
    let fresh = reopen(&ks);
    fresh.encrypt(&RC, &id, b"x", &ctx()).unwrap();
}
