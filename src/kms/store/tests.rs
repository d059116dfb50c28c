//! Unit tests of keystore persistence: codec round trips and damage, root
//! keys, modes and owners of written files, symbolic links and FIFOs refused.
use super::codec::*;
use super::dir::*;
use super::root_key::*;
use super::*;
use crate::crypto::{self, SecretBytes};
use crate::kms::KmsError;
use crate::kms::model::KeyRecord;
use std::fs::{self, OpenOptions};
use std::path::Path;

fn cheap() -> Argon2Params {
    Argon2Params {
        m_kib: 64,
        t: 1,
        p: 1,
    }
}

#[test]
fn argon2_parameters_beyond_what_kmsfs_writes_are_refused() {
    let ok = |m_kib, t, p| Argon2Params { m_kib, t, p }.validate().is_ok();
    assert!(ok(64 * 1024, 3, 1), "the default");
    assert!(ok(64, 1, 1), "cheaper, as tests use");
    assert!(ok(64 * 1024, 3, 4));
    for (m, t, p) in [
        (64 * 1024 + 1, 3, 1),
        (64 * 1024, 4, 1),
        (4 << 20, 64, 1),
        (u32::MAX, u32::MAX, 1),
        (64 * 1024, 3, 5),
        (64 * 1024, 0, 1),
        (64 * 1024, 3, 0),
        (31, 1, 4),
    ] {
        let e = Argon2Params { m_kib: m, t, p }.validate().unwrap_err();
        assert!(matches!(e, KmsError::CorruptKeystore { .. }), "{m} {t} {p}");
        assert!(e.to_string().contains("never writes"), "{e}");
    }
    // Never written either.
    let t = tempfile::tempdir().unwrap();
    let dir = KeystoreDir::new(t.path().join("ks"));
    let params = Argon2Params {
        m_kib: 128 * 1024,
        t: 3,
        p: 1,
    };
    let passphrase = SecretBytes::new(b"pw".to_vec());
    let e = create(&dir, CreateMode::Passphrase { passphrase, params }).unwrap_err();
    assert!(matches!(e, KmsError::Validation { .. }), "{e}");
    assert!(!dir.file(CURRENT_FILE).exists());
}

fn sample(dir: &KeystoreDir) -> ([u8; 16], RootKey, Vec<u8>, String) {
    let (id, root, mut state, _) = create(dir, CreateMode::RootKeyFile).unwrap();
    let k = KeyRecord::generate("d", 1).unwrap();
    let kid = k.key_id.clone();
    state.keys.insert(kid.clone(), k);
    let bytes = encode(&id, &root, 2, &state).unwrap();
    (id, root, bytes, kid)
}

#[test]
fn encode_parse_unseal_round_trip() {
    let t = tempfile::tempdir().unwrap();
    let dir = KeystoreDir::new(t.path());
    let (id, root, bytes, kid) = sample(&dir);
    let f = Frame::parse("x", &bytes).unwrap();
    assert_eq!(f.keystore_id, id);
    assert_eq!(f.generation, 2);
    let s = f.unseal("x", &root).unwrap();
    assert!(s.keys.contains_key(&kid));
    // The material is not in the file in clear (hex or raw).
    let m = s.keys[&kid].material(1).unwrap().material.clone();
    assert!(!bytes.windows(32).any(|w| w == m.expose()));
    let hex: String = m.expose().iter().map(|b| format!("{b:02x}")).collect();
    assert!(!String::from_utf8_lossy(&bytes).contains(&hex));
}

#[test]
fn every_flipped_byte_and_truncation_is_detected() {
    let t = tempfile::tempdir().unwrap();
    let dir = KeystoreDir::new(t.path());
    let (_, root, bytes, _) = sample(&dir);
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x40;
        let r = Frame::parse("x", &bad).and_then(|f| f.unseal("x", &root));
        assert!(
            matches!(r, Err(KmsError::CorruptKeystore { .. })),
            "byte {i}"
        );
    }
    for n in 0..bytes.len() {
        assert!(
            matches!(
                Frame::parse("x", &bytes[..n]),
                Err(KmsError::CorruptKeystore { .. })
            ),
            "len {n}"
        );
    }
}

#[test]
fn worked_size_of_an_empty_keystore() {
    // docs/KEYSTORE.md: 115 fixed + (227-byte JSON + 16) body + 32 checksum;
    // the JSON is the empty state (24 bytes) with the account id
    // (`,"account_id":"` 15 bytes, 12 digits, `"`) and the audit signing keys
    // (`,"audit_signing_key":"` 22 bytes, 64 hex digits, `"`;
    // `,"audit_ed25519_seed":"` 23 bytes, 64 hex digits, `"`).
    let t = tempfile::tempdir().unwrap();
    let dir = KeystoreDir::new(t.path());
    create(&dir, CreateMode::RootKeyFile).unwrap();
    assert_eq!((FIXED_LEN, FIXED_LEN_V1), (115, 95));
    assert_eq!(StoreState::default().to_sealed_json().unwrap().len(), 24);
    assert_eq!(fs::read(dir.file(CURRENT_FILE)).unwrap().len(), 390);
    assert_eq!(fs::read(dir.file(ROOT_KEY_FILE)).unwrap().len(), 40);
}

/// A version-1 file exactly as kmsfs wrote it before version 2: verifier and
/// body sealed under the root key itself, with random nonces.
fn encode_v1(id: &[u8; 16], root: &RootKey, generation: u64, state: &StoreState) -> Vec<u8> {
    let json = state.to_sealed_json().unwrap();
    let mut out = Vec::new();
    out.extend_from_slice(b"KMSFS-KS\0\x01");
    out.extend_from_slice(id);
    out.push(1);
    out.extend_from_slice(&[0; 12 + 16]);
    out.extend_from_slice(&generation.to_be_bytes());
    assert_eq!(out.len(), 63);
    let vaad = [&b"kmsfs keystore verifier v1\0"[..], &out].concat();
    root.aead.seal_append(&vaad, &[], &mut out).unwrap();
    out.extend_from_slice(&((json.len() + 28) as u32).to_be_bytes());
    let baad = [&b"kmsfs keystore body v1\0"[..], &out].concat();
    root.aead.seal_append(&baad, &json, &mut out).unwrap();
    let sum = crypto::sha256(&[&out]);
    out.extend_from_slice(&sum);
    out
}

#[test]
fn version_1_files_still_open_and_refuse_every_change() {
    let t = tempfile::tempdir().unwrap();
    let dir = KeystoreDir::new(t.path());
    let (id, root, state, _) = create(&dir, CreateMode::RootKeyFile).unwrap();
    let v1 = encode_v1(&id, &root, 7, &state);
    assert_eq!(v1.len(), 95 + 227 + 28 + 32); // 227: the JSON with the account id and both audit keys
    let f = Frame::parse("x", &v1).unwrap();
    assert_eq!((f.version, f.generation, f.keystore_id), (1, 7, id));
    assert_eq!(
        f.unseal("x", &root).unwrap().to_sealed_json().unwrap(),
        state.to_sealed_json().unwrap()
    );
    for i in 0..v1.len() * 8 {
        let mut bad = v1.clone();
        bad[i / 8] ^= 1 << (i % 8);
        assert!(
            Frame::parse("x", &bad)
                .and_then(|f| f.unseal("x", &root))
                .is_err(),
            "bit {i}"
        );
    }
    // The next write of a version-1 keystore is version 2.
    let v2 = encode(&id, &root, 8, &state).unwrap();
    assert_eq!(&v2[8..10], &[0, 2]);
    assert_eq!(Frame::parse("x", &v2).unwrap().version, KEYSTORE_VERSION);
}

/// Every write draws a new salt: its verifier and body keys are its own, so
/// the root key never seals twice, however often the keystore is written.
#[test]
fn every_write_has_its_own_salt_and_keys() {
    let t = tempfile::tempdir().unwrap();
    let (id, root, _, _) = sample(&KeystoreDir::new(t.path()));
    let state = StoreState::default();
    let writes: Vec<Vec<u8>> = (0..32)
        .map(|_| encode(&id, &root, 5, &state).unwrap())
        .collect();
    for (i, a) in writes.iter().enumerate() {
        assert_eq!(
            Frame::parse("x", a)
                .unwrap()
                .unseal("x", &root)
                .unwrap()
                .keys
                .len(),
            0
        );
        for b in &writes[i + 1..] {
            assert_eq!(a[..63], b[..63]);
            assert_ne!(a[63..95], b[63..95], "salt");
            assert_ne!(a[95..111], b[95..111], "verifier");
            assert_ne!(a[115..], b[115..], "body");
        }
    }
}

#[test]
fn garbage_never_panics() {
    let t = tempfile::tempdir().unwrap();
    let (_, root, good, _) = sample(&KeystoreDir::new(t.path()));
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for len in (0..400usize).chain([good.len() - 1, good.len(), good.len() + 1]) {
        let mut buf: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        // Half of them look like a keystore of the right version.
        if len >= 10 && len % 2 == 0 {
            buf[..10].copy_from_slice(&good[..10]);
        }
        let r = Frame::parse("x", &buf).and_then(|f| f.unseal("x", &root));
        assert!(r.is_err(), "len {len}");
    }
}

#[test]
fn unknown_version_is_named() {
    let t = tempfile::tempdir().unwrap();
    let (_, _, mut bytes, _) = sample(&KeystoreDir::new(t.path()));
    bytes[OFF_VERSION + 1] = 9;
    // A flipped version with the old checksum is damage, not a newer format.
    let e = Frame::parse("x", &bytes).unwrap_err().to_string();
    assert!(e.contains("checksum does not match"), "{e}");
    assert!(!unknown_version(&bytes));
    // A newer writer's intact file is named as such.
    let n = bytes.len() - CHECKSUM_LEN;
    let sum = crypto::sha256(&[&bytes[..n]]);
    bytes[n..].copy_from_slice(&sum);
    let e = Frame::parse("x", &bytes).unwrap_err().to_string();
    assert!(e.contains("format version 9"), "{e}");
    assert!(unknown_version(&bytes));
}

#[test]
fn wrong_root_key_is_not_corruption() {
    let t = tempfile::tempdir().unwrap();
    let (_, _, bytes, _) = sample(&KeystoreDir::new(t.path()));
    let t2 = tempfile::tempdir().unwrap();
    let (_, other_root, _, _) = sample(&KeystoreDir::new(t2.path()));
    let f = Frame::parse("x", &bytes).unwrap();
    assert!(matches!(
        f.unseal("x", &other_root),
        Err(KmsError::WrongRootKey { .. })
    ));
}

#[test]
fn passphrase_mode_distinguishes_wrong_passphrase() {
    let t = tempfile::tempdir().unwrap();
    let dir = KeystoreDir::new(t.path());
    let mode = CreateMode::Passphrase {
        passphrase: SecretBytes::from(&b"right"[..]),
        params: cheap(),
    };
    let (_, root, state, _) = create(&dir, mode).unwrap();
    let (bytes, _) = dir.read(CURRENT_FILE).unwrap().unwrap();
    let f = Frame::parse("x", &bytes).unwrap();
    assert_eq!(f.mode, root.mode());
    assert!(!dir.file(ROOT_KEY_FILE).exists());
    let good = RootKey::obtain(&dir, f.mode, &|| Ok(SecretBytes::from(&b"right"[..]))).unwrap();
    assert_eq!(f.unseal("x", &good).unwrap().keys.len(), state.keys.len());
    let bad = RootKey::obtain(&dir, f.mode, &|| Ok(SecretBytes::from(&b"wrong"[..]))).unwrap();
    let e = f.unseal("x", &bad).unwrap_err();
    assert!(matches!(e, KmsError::WrongRootKey { .. }) && e.to_string().contains("passphrase"));
}

#[test]
fn create_refuses_existing_and_sets_modes() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let dir = KeystoreDir::new(t.path().join("ks"));
    create(&dir, CreateMode::RootKeyFile).unwrap();
    let before = fs::read(dir.file(CURRENT_FILE)).unwrap();
    assert!(matches!(
        create(&dir, CreateMode::RootKeyFile),
        Err(KmsError::AlreadyExists { .. })
    ));
    assert_eq!(fs::read(dir.file(CURRENT_FILE)).unwrap(), before);
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.file(ROOT_KEY_FILE)), 0o600);
    assert_eq!(mode(&dir.file(CURRENT_FILE)), 0o600);
    assert_eq!(mode(dir.path()), 0o700);
    // A prev alone also counts as an existing keystore.
    fs::rename(dir.file(CURRENT_FILE), dir.file(PREV_FILE)).unwrap();
    assert!(matches!(
        create(&dir, CreateMode::RootKeyFile),
        Err(KmsError::AlreadyExists { .. })
    ));
}

#[test]
fn missing_or_bad_root_key_file_is_clear() {
    let t = tempfile::tempdir().unwrap();
    let dir = KeystoreDir::new(t.path());
    create(&dir, CreateMode::RootKeyFile).unwrap();
    fs::write(dir.file(ROOT_KEY_FILE), b"short").unwrap();
    let e = RootKey::obtain(&dir, RootMode::KeyFile, &|| unreachable!()).unwrap_err();
    assert!(matches!(e, KmsError::WrongRootKey { .. }));
    fs::remove_file(dir.file(ROOT_KEY_FILE)).unwrap();
    let e = RootKey::obtain(&dir, RootMode::KeyFile, &|| unreachable!()).unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
}

#[test]
fn files_written_by_root_take_the_directory_owner() {
    use std::os::unix::fs::MetadataExt;
    if fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(1) != 0 {
        return; // only root can give files away; nothing to check otherwise
    }
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("ks");
    fs::create_dir(&d).unwrap();
    std::os::unix::fs::chown(&d, Some(65534), Some(65534)).unwrap();
    let dir = KeystoreDir::new(&d);
    create(&dir, CreateMode::RootKeyFile).unwrap();
    let first = fs::read(dir.file(CURRENT_FILE)).unwrap();
    dir.write_generations(Some(&first), &first).unwrap();
    for name in [CURRENT_FILE, PREV_FILE, ROOT_KEY_FILE, LOCK_FILE] {
        let m = fs::metadata(dir.file(name)).unwrap();
        assert_eq!((m.uid(), m.gid()), (65534, 65534), "{name}");
        assert_eq!(m.mode() & 0o777, 0o600, "{name}");
    }
}

#[test]
fn a_failed_write_changes_nothing_and_leaves_no_temporaries() {
    let t = tempfile::tempdir().unwrap();
    let dir = KeystoreDir::new(t.path());
    create(&dir, CreateMode::RootKeyFile).unwrap();
    let first = fs::read(dir.file(CURRENT_FILE)).unwrap();
    dir.write_generations(Some(&first), &first).unwrap();
    let before = (
        fs::read(dir.file(CURRENT_FILE)).unwrap(),
        fs::read(dir.file(PREV_FILE)).unwrap(),
    );
    // The current temporary cannot be created (a directory is in the way).
    fs::create_dir(dir.file(CURRENT_TMP)).unwrap();
    assert!(matches!(
        dir.write_generations(Some(b"new prev"), b"new"),
        Err(KmsError::Io { .. })
    ));
    assert!(
        !dir.file(PREV_TMP).exists(),
        "half-written temporary left behind"
    );
    let after = (
        fs::read(dir.file(CURRENT_FILE)).unwrap(),
        fs::read(dir.file(PREV_FILE)).unwrap(),
    );
    assert_eq!(after, before);
}

#[test]
fn write_generations_keeps_previous_and_changes_fingerprint() {
    let t = tempfile::tempdir().unwrap();
    let dir = KeystoreDir::new(t.path());
    let (_, _, _, fp1) = create(&dir, CreateMode::RootKeyFile).unwrap();
    let first = fs::read(dir.file(CURRENT_FILE)).unwrap();
    let fp2 = dir.write_generations(Some(&first), b"second").unwrap();
    assert_ne!(fp1, fp2);
    assert_eq!(dir.fingerprint(), Some(fp2));
    assert_eq!(fs::read(dir.file(PREV_FILE)).unwrap(), first);
    assert_eq!(fs::read(dir.file(CURRENT_FILE)).unwrap(), b"second");
    assert!(!dir.file(CURRENT_TMP).exists() && !dir.file(PREV_TMP).exists());
}

#[test]
fn symlinked_lock_file_is_refused_and_its_target_untouched() {
    use std::os::unix::fs::symlink;
    let t = tempfile::tempdir().unwrap();
    let dir = KeystoreDir::new(t.path().join("ks"));
    create(&dir, CreateMode::RootKeyFile).unwrap();
    let before = fs::read(dir.file(CURRENT_FILE)).unwrap();
    // Dangling: following it would create the target (and chown it).
    let target = t.path().join("target");
    fs::remove_file(dir.file(LOCK_FILE)).unwrap();
    symlink(&target, dir.file(LOCK_FILE)).unwrap();
    let e = dir.lock().unwrap_err().to_string();
    assert!(e.contains("symbolic link"), "{e}");
    assert!(fs::symlink_metadata(&target).is_err(), "target was created");
    // Pointing at an existing file: still refused, the file unchanged.
    fs::write(&target, b"precious").unwrap();
    let e = dir.lock().unwrap_err().to_string();
    assert!(e.contains("symbolic link"), "{e}");
    assert_eq!(fs::read(&target).unwrap(), b"precious");
    assert_eq!(fs::read(dir.file(CURRENT_FILE)).unwrap(), before);
}

#[test]
fn symlinked_temporaries_are_refused_and_their_targets_untouched() {
    use std::os::unix::fs::symlink;
    let t = tempfile::tempdir().unwrap();
    let dir = KeystoreDir::new(t.path().join("ks"));
    create(&dir, CreateMode::RootKeyFile).unwrap();
    let before = fs::read(dir.file(CURRENT_FILE)).unwrap();
    for tmp in [PREV_TMP, CURRENT_TMP] {
        for existing in [false, true] {
            let target = t.path().join(format!("target-{tmp}-{existing}"));
            if existing {
                fs::write(&target, b"precious").unwrap();
            }
            symlink(&target, dir.file(tmp)).unwrap();
            let _lock = dir.lock().unwrap();
            let e = dir
                .write_generations(Some(&before), &before)
                .unwrap_err()
                .to_string();
            assert!(e.contains("symbolic link"), "{e}");
            if existing {
                assert_eq!(fs::read(&target).unwrap(), b"precious");
            } else {
                assert!(fs::symlink_metadata(&target).is_err(), "target was created");
            }
            assert_eq!(fs::read(dir.file(CURRENT_FILE)).unwrap(), before);
            fs::remove_file(dir.file(tmp)).unwrap();
        }
    }
    // A stale regular temporary (a crashed writer's) is simply replaced.
    fs::write(dir.file(PREV_TMP), b"stale").unwrap();
    dir.write_generations(Some(&before), &before).unwrap();
}

#[test]
fn keystore_files_are_never_read_through_symlinks_or_fifos() {
    use std::os::unix::fs::symlink;
    let t = tempfile::tempdir().unwrap();
    let dir = KeystoreDir::new(t.path().join("ks"));
    create(&dir, CreateMode::RootKeyFile).unwrap();
    let real = t.path().join("elsewhere");
    fs::rename(dir.file(CURRENT_FILE), &real).unwrap();
    symlink(&real, dir.file(CURRENT_FILE)).unwrap();
    let e = dir.read(CURRENT_FILE).unwrap_err().to_string();
    assert!(e.contains("symbolic link"), "{e}");
    fs::remove_file(dir.file(CURRENT_FILE)).unwrap();
    let st = std::process::Command::new("mkfifo")
        .arg(dir.file(CURRENT_FILE))
        .status()
        .unwrap();
    assert!(st.success());
    // Must not block; must not be taken for a keystore.
    let e = dir.read(CURRENT_FILE).unwrap_err().to_string();
    assert!(e.contains("not a regular file"), "{e}");
}

#[test]
fn a_dangling_or_unreadable_generation_counts_as_existing() {
    use std::os::unix::fs::symlink;
    let t = tempfile::tempdir().unwrap();
    let dir = KeystoreDir::new(t.path().join("ks"));
    create(&dir, CreateMode::RootKeyFile).unwrap();
    let rk = fs::read(dir.file(ROOT_KEY_FILE)).unwrap();
    // keystore.kms points at a volume that is not mounted.
    fs::remove_file(dir.file(CURRENT_FILE)).unwrap();
    symlink("/nonexistent/volume/keystore.kms", dir.file(CURRENT_FILE)).unwrap();
    assert!(dir.exists());
    assert!(matches!(
        create(&dir, CreateMode::RootKeyFile),
        Err(KmsError::AlreadyExists { .. })
    ));
    // Gone altogether while root.key is still there: lost, never recreated.
    fs::remove_file(dir.file(CURRENT_FILE)).unwrap();
    assert!(!dir.exists());
    assert_eq!(dir.lost_evidence(), Some(ROOT_KEY_FILE));
    let e = create(&dir, CreateMode::RootKeyFile).unwrap_err();
    assert!(matches!(e, KmsError::CorruptKeystore { .. }), "{e:?}");
    assert!(e.to_string().contains("lost or unreadable"), "{e}");
    assert_eq!(fs::read(dir.file(ROOT_KEY_FILE)).unwrap(), rk);
    assert!(!dir.has_entry(CURRENT_FILE));
}

#[test]
fn oversized_files_are_refused_before_allocating() {
    let t = tempfile::tempdir().unwrap();
    let dir = KeystoreDir::new(t.path());
    create(&dir, CreateMode::RootKeyFile).unwrap();
    // Sparse: costs no disk, would cost 64 GiB of memory if read whole.
    let f = OpenOptions::new()
        .write(true)
        .open(dir.file(CURRENT_FILE))
        .unwrap();
    f.set_len(64 << 30).unwrap();
    let e = dir.read(CURRENT_FILE).unwrap_err();
    assert!(matches!(e, KmsError::CorruptKeystore { .. }), "{e:?}");
    assert!(e.to_string().contains("larger than any keystore"), "{e}");
    let f = OpenOptions::new()
        .write(true)
        .open(dir.file(ROOT_KEY_FILE))
        .unwrap();
    f.set_len(64 << 30).unwrap();
    let e = RootKey::obtain(&dir, RootMode::KeyFile, &|| unreachable!()).unwrap_err();
    assert!(matches!(e, KmsError::WrongRootKey { .. }), "{e:?}");
}
