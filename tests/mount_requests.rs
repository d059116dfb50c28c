//! Performance plumbing: the daemon's own request counters, which
//! scripts/bench.sh reads to say how many FUSE round trips a workload cost
//! (the xattr trusted.kmsfs.requests on the mount's root, `opcode count` per
//! line), and the read-ahead window a root daemon sets after mounting; the
//! kernel's cache of listings, in both names modes.

mod common;

use std::collections::BTreeMap;
use std::fs;

use common::{Mount, Names, require_root, sh};

fn requests(m: &Mount) -> BTreeMap<String, u64> {
    let out = sh(
        &m.mnt,
        "python3 -c 'import os; print(os.getxattr(\".\", \"trusted.kmsfs.requests\").decode(), end=\"\")'",
    );
    out.lines()
        .map(|l| {
            let (k, v) = l.split_once(' ').expect("`opcode count`");
            (k.to_string(), v.parse().expect("a count"))
        })
        .collect()
}

#[test]
fn the_mount_counts_the_requests_it_serves_by_opcode() {
    if !require_root("requests", "trusted.* xattrs are root's") {
        return;
    }
    let Some(m) = Mount::new("requests") else {
        return;
    };
    let before = requests(&m);
    for i in 0..5 {
        fs::write(m.p(&format!("f{i}")), vec![7u8; 3 * 4096]).unwrap();
    }
    let after = requests(&m);
    let grew =
        |op: &str| after.get(op).copied().unwrap_or(0) - before.get(op).copied().unwrap_or(0);
    // Five files made by open(O_CREAT) and written once each; the getxattr
    // that reads the counters counts itself.
    assert_eq!(grew("create"), 5, "{before:?} -> {after:?}");
    assert_eq!(grew("write"), 5, "{before:?} -> {after:?}");
    assert!(grew("getxattr") >= 1);
    // The name is the mount's own: no other node has it, and listing the
    // root does not show it.
    let other = sh(
        &m.mnt,
        "python3 -c 'import os\ntry:\n  os.getxattr(\"f0\", \"trusted.kmsfs.requests\")\nexcept OSError as e:\n  print(e.errno)'",
    );
    assert_eq!(other.trim(), libc::ENODATA.to_string());
    let listed = sh(&m.mnt, "python3 -c 'import os; print(os.listxattr(\".\"))'");
    assert!(!listed.contains("kmsfs"), "{listed}");
}

#[test]
fn a_root_mount_raises_its_read_ahead_window() {
    if !require_root("readahead", "only root may write sysfs") {
        return;
    }
    let Some(m) = Mount::new("readahead") else {
        return;
    };
    // The mount's device, from mountinfo: no request to the daemon.
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mnt = m.mnt.to_str().expect("a plain temp path");
    let dev = info
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() > 4 && f[4] == mnt).then(|| f[2].to_string())
        })
        .next_back()
        .expect("the mount in mountinfo");
    let kb = fs::read_to_string(format!("/sys/class/bdi/{dev}/read_ahead_kb")).unwrap();
    // The kernel's default for a FUSE mount is 128 KiB.
    assert_eq!(kb.trim(), "4096");
}

/// The names in `dir`, sorted (one getdents walk from the start).
fn names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn grew(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, op: &str) -> u64 {
    after.get(op).copied().unwrap_or(0) - before.get(op).copied().unwrap_or(0)
}

common::in_both_names_modes!(
    the_kernel_keeps_listings_and_drops_them_on_every_change_through_the_mount,
    shared_storage_lists_afresh_and_shows_changes_beside_the_mount,
);

fn the_kernel_keeps_listings_and_drops_them_on_every_change_through_the_mount(mode: Names) {
    if !require_root("listing cache", "trusted.* xattrs are root's") {
        return;
    }
    let Some(m) = Mount::with_names("listing-cache", mode, &[]) else {
        return;
    };
    let d = m.p("d");
    fs::create_dir(&d).unwrap();
    let mut want: Vec<String> = (0..40).map(|i| format!("f{i:02}")).collect();
    for n in &want {
        fs::write(d.join(n), b"x").unwrap();
    }
    assert_eq!(names(&d), want);
    // Listed again: from the kernel's cache, no READDIR(PLUS) reaches the daemon.
    let before = requests(&m);
    assert_eq!(names(&d), want);
    let after = requests(&m);
    assert_eq!(
        grew(&before, &after, "readdirplus") + grew(&before, &after, "readdir"),
        0,
        "{before:?} -> {after:?}"
    );
    // Every kind of change made through the mount shows at the next listing.
    fs::write(d.join("new"), b"y").unwrap();
    want.push("new".into());
    want.sort();
    assert_eq!(names(&d), want);
    fs::remove_file(d.join("f07")).unwrap();
    want.retain(|n| n != "f07");
    assert_eq!(names(&d), want);
    fs::rename(d.join("f08"), d.join("renamed")).unwrap();
    want.retain(|n| n != "f08");
    want.push("renamed".into());
    want.sort();
    assert_eq!(names(&d), want);
    fs::rename(d.join("f09"), m.p("moved-out")).unwrap();
    want.retain(|n| n != "f09");
    assert_eq!(names(&d), want);
    fs::create_dir(d.join("sub")).unwrap();
    std::os::unix::fs::symlink("f10", d.join("link")).unwrap();
    fs::hard_link(d.join("f11"), d.join("hard")).unwrap();
    want.extend(["sub".into(), "link".into(), "hard".into()]);
    want.sort();
    assert_eq!(names(&d), want);
    // And the attributes shown are the new ones (link count of a hard link).
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(d.join("f11")).unwrap().nlink(), 2);
    fs::remove_file(d.join("hard")).unwrap();
    assert_eq!(fs::metadata(d.join("f11")).unwrap().nlink(), 1);
}

fn shared_storage_lists_afresh_and_shows_changes_beside_the_mount(mode: Names) {
    if !require_root("shared listing", "trusted.* xattrs are root's") {
        return;
    }
    let Some(m) = Mount::with_names("shared-listing", mode, &["-o", "sharedstorage"]) else {
        return;
    };
    let d = m.p("d");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("a"), b"x").unwrap();
    // A FIFO (no header needed), its backing entry kept aside by a hard
    // link (its name, encrypted or not, is valid in d), then removed.
    let made = std::process::Command::new("mkfifo")
        .arg(d.join("beside"))
        .status()
        .unwrap();
    assert!(made.success());
    let entry = m.backing_of("d/beside");
    let aside = m.tmp.path().join("aside");
    fs::hard_link(&entry, &aside).unwrap();
    fs::remove_file(d.join("beside")).unwrap();
    assert_eq!(names(&d), ["a"]);
    // Another writer of the storage adds that name back.
    fs::hard_link(&aside, &entry).unwrap();
    let before = requests(&m);
    assert_eq!(names(&d), ["a", "beside"]);
    let after = requests(&m);
    assert!(
        grew(&before, &after, "readdirplus") > 0,
        "{before:?} -> {after:?}"
    );
}

#[test]
fn a_file_read_again_is_served_from_the_page_cache_until_it_changes_beside_the_mount() {
    if !require_root("keep cache", "trusted.* xattrs are root's") {
        return;
    }
    let Some(m) = Mount::new("keep-cache") else {
        return;
    };
    let data: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 251) as u8).collect();
    fs::write(m.p("f"), &data).unwrap();
    let reads = |m: &Mount| {
        let before = requests(m);
        assert_eq!(fs::read(m.p("f")).unwrap(), data);
        grew(&before, &requests(m), "read")
    };
    // Written through the mount: the kernel's pages are the content.
    assert_eq!(reads(&m), 0, "read again after the write");
    assert_eq!(reads(&m), 0, "read a third time");
    // A change beside the mount (here only its mode: ctime) drops them.
    fs::set_permissions(
        m.b("f"),
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    assert!(reads(&m) > 0, "read after a change beside the mount");
    assert_eq!(reads(&m), 0);
    // Tampering beside the mount is seen at the next open: EIO, never
    // the old pages.
    let mut raw = fs::read(m.b("f")).unwrap();
    let at = raw.len() / 2;
    raw[at] ^= 1;
    fs::write(m.b("f"), &raw).unwrap();
    let err = fs::read(m.p("f")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
}
