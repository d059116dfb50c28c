//! The README's ```sh blocks run as pasted (scripts/readme_check.sh: a fresh
//! HOME, one shell, `set -e`), against the binary under test: a README line
//! that stops working fails here.

mod common;

#[test]
fn readme_blocks_run_as_pasted() {
    if !common::fuse_available("readme_blocks_run_as_pasted")
        || !common::require_root("readme_blocks_run_as_pasted", "the README mounts")
    {
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = common::command(root.join("scripts/readme_check.sh"))
        .env("KMSFS_BIN", common::BIN)
        .output()
        .expect("run scripts/readme_check.sh");
    assert!(
        o.status.success(),
        "scripts/readme_check.sh failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}
