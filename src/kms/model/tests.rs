//! Unit tests of the key model: state transitions, deletion and rotation
//! windows, imported material, aliases, serialization.
use super::*;
use crate::kms::{KeyOrigin, KeyState, KmsError};

const NOW: i64 = 1_800_000_000;

fn key() -> KeyRecord {
    KeyRecord::generate("test", NOW).unwrap()
}

#[test]
fn new_key_is_enabled_with_version_1() {
    let k = key();
    assert_eq!(k.state, KeyState::Enabled);
    assert_eq!(k.current_version, 1);
    assert_eq!(k.material(1).unwrap().material.len(), 32);
    assert!(uuid::Uuid::parse_str(&k.key_id).is_ok());
    assert!(k.check_usable(Usage::Encrypt).is_ok());
    assert!(k.metadata("ks").enabled);
}

#[test]
fn disable_refuses_and_enable_restores() {
    let mut k = key();
    k.disable().unwrap();
    assert_eq!(k.state, KeyState::Disabled);
    assert!(matches!(
        k.check_usable(Usage::Encrypt),
        Err(KmsError::Disabled { .. })
    ));
    assert!(matches!(
        k.check_usable(Usage::Decrypt),
        Err(KmsError::Disabled { .. })
    ));
    assert!(!k.metadata("ks").enabled);
    k.disable().unwrap(); // idempotent, as in AWS
    k.enable().unwrap();
    assert!(k.check_usable(Usage::Decrypt).is_ok());
    k.enable().unwrap();
}

#[test]
fn deletion_window_bounds() {
    for bad in [0, 6, 31, 365] {
        let mut k = key();
        assert!(
            matches!(
                k.schedule_deletion(bad, NOW),
                Err(KmsError::Validation { .. })
            ),
            "{bad}"
        );
        assert_eq!(k.state, KeyState::Enabled);
    }
    for good in [7, 30] {
        let mut k = key();
        let d = k.schedule_deletion(good, NOW).unwrap();
        assert_eq!(d, NOW + i64::from(good) * 86_400);
        assert_eq!(k.state, KeyState::PendingDeletion);
        assert_eq!(k.metadata("ks").deletion_date, Some(d));
        assert_eq!(k.metadata("ks").pending_deletion_window_in_days, Some(good));
    }
}

#[test]
fn pending_deletion_refuses_everything_but_cancel() {
    let mut k = key();
    k.schedule_deletion(7, NOW).unwrap();
    assert!(matches!(
        k.check_usable(Usage::Encrypt),
        Err(KmsError::InvalidState { .. })
    ));
    assert!(matches!(
        k.check_usable(Usage::Decrypt),
        Err(KmsError::InvalidState { .. })
    ));
    assert!(matches!(k.enable(), Err(KmsError::InvalidState { .. })));
    assert!(matches!(k.disable(), Err(KmsError::InvalidState { .. })));
    assert!(matches!(
        k.schedule_deletion(7, NOW),
        Err(KmsError::InvalidState { .. })
    ));
    k.cancel_deletion().unwrap();
    assert_eq!(k.state, KeyState::Disabled);
    assert_eq!(k.deletion_date, None);
    assert!(matches!(
        k.cancel_deletion(),
        Err(KmsError::InvalidState { .. })
    ));
    // A disabled key can be scheduled too.
    k.schedule_deletion(30, NOW).unwrap();
}

#[test]
fn pending_import_refuses_crypto() {
    let mut k = key();
    k.state = KeyState::PendingImport;
    k.current_version = 0;
    k.materials.clear();
    assert!(matches!(
        k.check_usable(Usage::Encrypt),
        Err(KmsError::InvalidState { .. })
    ));
    assert!(matches!(k.enable(), Err(KmsError::InvalidState { .. })));
    k.schedule_deletion(7, NOW).unwrap();
    k.cancel_deletion().unwrap();
    assert_eq!(k.state, KeyState::PendingImport);
}

#[test]
fn rotation_adds_versions_and_keeps_old_ones() {
    let mut k = key();
    let m1 = k.material(1).unwrap().material.clone();
    assert_eq!(k.rotate(RotationType::OnDemand, NOW).unwrap(), 2);
    assert_eq!(k.current_version, 2);
    assert_eq!(k.material(1).unwrap().material, m1);
    assert_ne!(k.material(2).unwrap().material, m1);
    assert_eq!(
        k.material(2).unwrap().rotation,
        Some(RotationType::OnDemand)
    );
    assert_eq!(k.next_rotation, None);
    k.disable().unwrap();
    assert!(matches!(
        k.rotate(RotationType::OnDemand, NOW),
        Err(KmsError::Disabled { .. })
    ));
    assert!(matches!(
        k.enable_rotation(365, NOW),
        Err(KmsError::Disabled { .. })
    ));
    k.enable().unwrap();
    k.schedule_deletion(7, NOW).unwrap();
    assert!(matches!(
        k.rotate(RotationType::OnDemand, NOW),
        Err(KmsError::InvalidState { .. })
    ));
    assert_eq!(k.materials.len(), 2);
}

#[test]
fn automatic_rotation_period_bounds_and_due_dates() {
    let mut k = key();
    for bad in [0, 89, 2561] {
        assert!(
            matches!(
                k.enable_rotation(bad, NOW),
                Err(KmsError::Validation { .. })
            ),
            "{bad}"
        );
    }
    k.enable_rotation(90, NOW).unwrap();
    let due = NOW + 90 * 86_400;
    assert_eq!(k.next_rotation, Some(due));
    assert!(!k.rotation_due(due - 1) && k.rotation_due(due));
    let mut s = StoreState::default();
    let id = k.key_id.clone();
    s.keys.insert(id.clone(), k);
    assert_eq!(s.next_due(), Some(due));
    assert!(s.rotate_due(due - 1).unwrap().is_empty());
    s.keys.get_mut(&id).unwrap().disable().unwrap();
    assert!(
        s.rotate_due(due).unwrap().is_empty(),
        "a disabled key rotated"
    );
    assert_eq!(s.next_due(), None);
    s.keys.get_mut(&id).unwrap().enable().unwrap();
    assert_eq!(s.rotate_due(due + 5).unwrap(), vec![id.clone()]);
    let k = &s.keys[&id];
    assert_eq!(
        (k.current_version, k.next_rotation),
        (2, Some(due + 5 + 90 * 86_400))
    );
    assert_eq!(
        k.material(2).unwrap().rotation,
        Some(RotationType::Automatic)
    );
    let mut k = k.clone();
    k.disable_rotation().unwrap();
    assert_eq!((k.rotation_period_days, k.next_rotation), (None, None));
}

fn params(token: &str, valid_to: i64) -> ImportParams {
    ImportParams {
        token_id: token.into(),
        wrapping_key: SecretBytes::from(&b"der"[..]),
        wrapping_key_spec: "RSA_2048".into(),
        valid_to,
    }
}

#[test]
fn external_key_import_lifecycle() {
    let mut k = KeyRecord::new_external("ext", NOW).unwrap();
    assert_eq!(
        (k.state, k.current_version, k.origin),
        (KeyState::PendingImport, 0, KeyOrigin::External)
    );
    assert!(matches!(
        k.check_usable(Usage::Encrypt),
        Err(KmsError::InvalidState { .. })
    ));
    let m = || SecretBytes::new(vec![5u8; 32]);
    // No parameters yet.
    assert!(k.import_material("t", m(), None, NOW).is_err());
    k.set_import_params(params("t1", NOW + 100)).unwrap();
    for (tok, mat, exp, now) in [
        ("t0", m(), None, NOW),                           // wrong token
        ("t1", m(), None, NOW + 101),                     // expired parameters
        ("t1", SecretBytes::new(vec![5; 16]), None, NOW), // wrong length
        ("t1", m(), Some(NOW), NOW),                      // ValidTo not in the future
    ] {
        assert!(matches!(
            k.import_material(tok, mat, exp, now),
            Err(KmsError::Validation { .. })
        ));
        assert_eq!(k.state, KeyState::PendingImport);
    }
    k.import_material("t1", m(), Some(NOW + 50), NOW).unwrap();
    assert_eq!((k.state, k.current_version), (KeyState::Enabled, 1));
    assert!(k.import.is_none());
    assert!(matches!(
        k.rotate(RotationType::OnDemand, NOW),
        Err(KmsError::Validation { .. })
    ));
    assert!(!k.material_expired(NOW + 49) && k.material_expired(NOW + 50));
    let mut s = StoreState::default();
    let id = k.key_id.clone();
    s.keys.insert(id.clone(), k);
    assert_eq!(s.next_due(), Some(NOW + 50));
    assert_eq!(s.expire_due(NOW + 50), vec![id.clone()]);
    let k = s.keys.get_mut(&id).unwrap();
    assert_eq!((k.state, k.materials.len()), (KeyState::PendingImport, 0));
    // Re-import: only the same material.
    k.set_import_params(params("t2", NOW + 200)).unwrap();
    let other = SecretBytes::new(vec![6u8; 32]);
    assert!(matches!(
        k.import_material("t2", other, None, NOW + 60),
        Err(KmsError::Validation { .. })
    ));
    k.import_material("t2", m(), None, NOW + 60).unwrap();
    k.delete_imported_material().unwrap();
    assert_eq!(k.state, KeyState::PendingImport);
    // AWS_KMS keys refuse all of it.
    let mut own = key();
    assert!(own.set_import_params(params("x", NOW)).is_err());
    assert!(own.delete_imported_material().is_err());
    let dbg = format!("{:?}", params("t", 0));
    assert!(dbg.contains("redacted") && !dbg.contains("100, 101"));
}

#[test]
fn an_older_generation_forgets_material_the_newer_one_dropped() {
    let mut old = StoreState::default();
    let (mut a, b, mut c) = (key(), key(), key());
    a.rotate(RotationType::OnDemand, NOW).unwrap();
    let (ai, bi, ci) = (a.key_id.clone(), b.key_id.clone(), c.key_id.clone());
    c.state = KeyState::Disabled;
    for k in [a, b, c] {
        old.keys.insert(k.key_id.clone(), k);
    }
    old.aliases.insert("alias/b".into(), bi.clone());
    let mut new = old.clone();
    // Nothing dropped: nothing forgotten (disabling is not shredding).
    assert!(!old.clone().forget_material_gone_from(&new));
    // a loses version 1, b goes for good, c loses all its material.
    new.keys
        .get_mut(&ai)
        .unwrap()
        .materials
        .retain(|m| m.version == 2);
    new.keys.remove(&bi);
    new.deleted.insert(bi.clone(), NOW);
    new.keys.get_mut(&ci).unwrap().drop_material();
    assert!(old.forget_material_gone_from(&new));
    let a = &old.keys[&ai];
    assert_eq!(
        a.materials.iter().map(|m| m.version).collect::<Vec<_>>(),
        [2]
    );
    assert_eq!(a.current_version, 2);
    assert!(!old.keys.contains_key(&bi) && old.aliases.is_empty());
    assert_eq!(old.deleted.get(&bi), Some(&NOW));
    let c = &old.keys[&ci];
    assert!(c.materials.is_empty());
    assert_eq!((c.state, c.current_version), (KeyState::PendingImport, 0));
}

#[test]
fn purge_removes_due_keys_and_their_aliases_only() {
    let mut s = StoreState::default();
    let mut a = key();
    let b = key();
    let mut c = key();
    a.schedule_deletion(7, NOW).unwrap();
    c.schedule_deletion(30, NOW).unwrap();
    let (ai, bi, ci) = (a.key_id.clone(), b.key_id.clone(), c.key_id.clone());
    for k in [a, b, c] {
        s.keys.insert(k.key_id.clone(), k);
    }
    s.create_alias("alias/b", &bi, false).unwrap();
    s.aliases.insert("alias/a".into(), ai.clone());
    assert_eq!(s.next_deletion(), Some(NOW + 7 * 86_400));
    assert!(s.purge_due(NOW + 7 * 86_400 - 1).is_empty());
    assert_eq!(s.purge_due(NOW + 7 * 86_400), vec![ai.clone()]);
    assert!(!s.keys.contains_key(&ai));
    assert_eq!(s.deleted.get(&ai), Some(&(NOW + 7 * 86_400)));
    assert!(s.keys.contains_key(&bi) && s.keys.contains_key(&ci));
    assert_eq!(s.aliases.len(), 1);
    assert_eq!(s.aliases.get("alias/b"), Some(&bi));
}

#[test]
fn alias_rules() {
    let mut s = StoreState::default();
    let k = key();
    let id = k.key_id.clone();
    s.keys.insert(id.clone(), k);
    for bad in [
        "",
        "alias/",
        "foo",
        "alias/sp ace",
        "alias/é",
        "alias/aws/x",
        "alias/kmsfs/x",
    ] {
        assert!(
            matches!(
                s.create_alias(bad, &id, false),
                Err(KmsError::Validation { .. })
            ),
            "{bad}"
        );
    }
    let long = format!("alias/{}", "a".repeat(MAX_ALIAS_LEN - 6));
    s.create_alias(&long, &id, false).unwrap();
    let too_long = format!("alias/{}", "a".repeat(MAX_ALIAS_LEN - 5));
    assert!(s.create_alias(&too_long, &id, false).is_err());
    s.create_alias("alias/ok/b_c-D9", &id, false).unwrap();
    assert!(matches!(
        s.create_alias("alias/ok/b_c-D9", &id, false),
        Err(KmsError::AlreadyExists { .. })
    ));
    // ':' is refused in new names (AWS's characters), kept in old ones.
    assert!(matches!(
        s.create_alias("alias/ok:a", &id, false),
        Err(KmsError::Validation { .. })
    ));
    s.aliases.insert("alias/old:name".into(), id.clone());
    s.delete_alias("alias/old:name").unwrap();
    s.create_alias(DEFAULT_ALIAS, &id, true).unwrap();
    assert!(matches!(
        s.create_alias("alias/x", "nope", false),
        Err(KmsError::NotFound { .. })
    ));
    assert!(matches!(
        s.update_alias("alias/none", &id),
        Err(KmsError::NotFound { .. })
    ));
    assert!(matches!(
        s.delete_alias("alias/none"),
        Err(KmsError::NotFound { .. })
    ));
    s.delete_alias("alias/ok/b_c-D9").unwrap();
    let mut k2 = key();
    k2.schedule_deletion(7, NOW).unwrap();
    let id2 = k2.key_id.clone();
    s.keys.insert(id2.clone(), k2);
    assert!(matches!(
        s.create_alias("alias/y", &id2, false),
        Err(KmsError::InvalidState { .. })
    ));
}

#[test]
fn json_round_trip_keeps_material_and_hides_it_from_debug() {
    let mut s = StoreState::default();
    let k = key();
    let id = k.key_id.clone();
    let m = k.material(1).unwrap().material.clone();
    s.keys.insert(id.clone(), k);
    let json = s.to_sealed_json().unwrap();
    assert_eq!(json.len(), json.capacity());
    let back = StoreState::from_json(&json).unwrap();
    assert_eq!(back.keys[&id].material(1).unwrap().material, m);
    let dbg = format!("{back:?}");
    let hex: String = m.expose().iter().map(|b| format!("{b:02x}")).collect();
    assert!(!dbg.contains(&hex));
    assert!(dbg.contains("redacted"));
}

#[test]
fn inconsistent_body_is_corrupt() {
    let mut s = StoreState::default();
    let k = key();
    s.keys.insert("other".into(), k);
    let json = s.to_sealed_json().unwrap();
    assert!(matches!(
        StoreState::from_json(&json),
        Err(KmsError::CorruptKeystore { .. })
    ));
    assert!(matches!(
        StoreState::from_json(b"{"),
        Err(KmsError::CorruptKeystore { .. })
    ));
}
