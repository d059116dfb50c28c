//! The shared fixture keeps the developer's environment out of what it runs:
//! with `KMSFS_*` variables set in the test process (a clock that makes every
//! key operation fail, another keystore, a passphrase), keystores and mounts
//! made through tests/common behave as in a clean environment.

mod common;

use std::process::Command;

use common::{Ks, Mount, clear_kmsfs_env};

/// What a developer's shell may hold, each one enough to change the outcome:
/// not a time (every key operation fails), a keystore elsewhere, a passphrase
/// for a keystore that has none, and a variable added after this fixture.
const LEAKS: [(&str, &str); 4] = [
    ("KMSFS_TEST_NOW", "not-a-time"),
    ("KMSFS_KEYSTORE", "/nonexistent/keystore"),
    ("KMSFS_PASSPHRASE", "from the developer's shell"),
    ("KMSFS_SOMETHING_NEW", "1"),
];

#[test]
fn no_kmsfs_variable_of_the_test_process_reaches_what_the_fixture_runs() {
    // SAFETY: the only test of this binary, so no other thread reads the
    // environment while it changes.
    for (k, v) in LEAKS {
        unsafe { std::env::set_var(k, v) };
    }
    let mut c = Command::new("true");
    clear_kmsfs_env(&mut c);
    let removed: Vec<_> = c
        .get_envs()
        .filter(|(_, v)| v.is_none())
        .map(|(k, _)| k.to_string_lossy().into_owned())
        .collect();
    for (k, _) in LEAKS {
        assert!(removed.iter().any(|r| r == k), "{k} is not cleared");
    }

    let ks = Ks::new();
    let key = ks.create_key();
    let blob = ks.encrypt(&key, b"clean", "");
    assert_eq!(
        common::b64(&common::ok(ks.decrypt(&blob, "", &[]), &["decrypt"])),
        b"clean"
    );

    let Some(mut m) = Mount::new("fixture-env") else {
        return;
    };
    std::fs::write(m.p("f"), b"clean").unwrap();
    m.remount();
    assert_eq!(std::fs::read(m.p("f")).unwrap(), b"clean");
    m.ok(&["kms", "list-keys"]);
}
