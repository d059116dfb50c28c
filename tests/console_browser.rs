//! `kmsfs console` in a real browser: Debian's chromium, headless, driven
//! through the DevTools protocol by tests/console/browser.py, against a real
//! console and a real mount. The script signs in with the printed token,
//! creates a key, mounts with it, disables it in the console and sees the
//! refused open appear in the trail, enables it and sees the next open
//! succeed live, has the lockout check refuse a policy, and sees requests
//! without the cookie or with a forged CSRF token refused.
//!
//! `KMSFS_CONSOLE_SCREENSHOTS=DIR` saves the pages' screenshots there (how
//! docs/console-*.png are made).

mod common;

use std::process::Command;

use common::{Console, Ks, MountGuard};

#[test]
fn the_demo_in_a_real_browser() {
    let test = "the_demo_in_a_real_browser";
    if !common::fuse_available(test) || !common::require_root(test, "mounting") {
        return;
    }
    let Some(chromium) = common::require_tool(test, "chromium") else {
        return;
    };
    let Some(python) = common::python3(test) else {
        return;
    };
    let ks = Ks::new();
    let backing = ks.file("backing");
    let mnt = ks.file("mnt");
    std::fs::create_dir(&backing).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    // The script mounts; the guard unmounts whatever happens to it.
    let _guard = MountGuard(mnt.clone());
    let console = Console::start(&ks, "127.0.0.1:0");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console/browser.py");
    let mut c = Command::new(python);
    c.arg(script)
        .arg("--url")
        .arg(console.login_url())
        .arg("--kmsfs")
        .arg(common::BIN)
        .arg("--keystore")
        .arg(&ks.path)
        .arg("--backing")
        .arg(&backing)
        .arg("--mnt")
        .arg(&mnt)
        .arg("--chromium")
        .arg(&chromium)
        .arg("--log")
        .arg(ks.file("chromium.log"));
    common::clear_kmsfs_env(&mut c);
    if let Some(dir) = std::env::var_os("KMSFS_CONSOLE_SCREENSHOTS") {
        c.arg("--screenshots").arg(dir);
    }
    let o = c.output().expect("run tests/console/browser.py");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "the browser script failed:\n{out}\n{}\nconsole log:\n{}",
        String::from_utf8_lossy(&o.stderr),
        std::fs::read_to_string(&console.log).unwrap_or_default()
    );
    assert!(out.contains("browser: done"), "{out}");
}
