//! What one local user can do to another's files through a shared root
//! mount (`-o allow_other`) over a backing directory both can write (issue 6):
//! swap backing entries between the kernel's permission check and the
//! daemon's use of the name, and swap a file's header while another user
//! holds the file open. Two real unprivileged users (`common::test_users`)
//! run the commands through setpriv; the checks are on bytes and modes, never
//! on timings. Each runs in both names modes: with encrypted names the
//! other user swaps encrypted entries of one directory (names are bound to
//! their directory, not to what they name: docs/FORMAT.md, "Names").

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Mount, Names, TestUser, TestUsers};

/// What B keeps in its 0600 files: A must never see it.
const SECRET: &str = "VICTIM-SECRET-OF-B";
/// The start of `SECRET`: a read of B's file through an inode whose cached
/// size is that of A's shorter file shows only this much.
const MARK: &[u8] = b"VICTIM";
/// What A writes into its own files.
const OWN: &str = "A-OWN-DATA";

/// A mount with allow_other whose test directories the users can reach,
/// and a shared directory `shared` (mode 2775, the users' group) in it.
fn setup(test: &str, names: Names) -> Option<(Mount, TestUsers)> {
    let m = Mount::with_names(test, names, &["-o", "allow_other"])?;
    let users = common::test_users(test)?;
    fs::set_permissions(m.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir(m.p("shared")).unwrap();
    std::os::unix::fs::chown(m.p("shared"), Some(0), Some(users.gid)).unwrap();
    fs::set_permissions(m.p("shared"), fs::Permissions::from_mode(0o2775)).unwrap();
    Some((m, users))
}

/// A file `name` of `u` with mode 0600 in the shared directory, made through
/// the mount.
fn private_file(m: &Mount, u: &TestUser, name: &str, content: &str) {
    common::ok_as(
        u,
        &m.p("shared"),
        &format!("printf %s '{content}' > {name} && chmod 600 {name}"),
    );
}

/// As `u`, in the shared directory of the mount: `stat NAME` (the kernel now
/// holds NAME's inode with its attributes), then, once `swap` has run,
/// `action`. Returns the output of the whole script.
fn stat_then(m: &Mount, u: &TestUser, name: &str, swap: impl FnOnce(), action: &str) -> Output {
    let script = format!("stat {name} >/dev/null || exit 97; echo ready; read go; {action}");
    let mut child = u
        .command(&m.p("shared"), "sh")
        .arg("-c")
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    if line.trim() != "ready" {
        let o = child.wait_with_output().unwrap();
        panic!(
            "`stat {name}` as {} failed: {line} {}",
            u.name,
            common::describe(&o)
        );
    }
    swap();
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut out, &mut rest).unwrap();
    let mut o = child.wait_with_output().unwrap();
    o.stdout = rest;
    o
}

/// The backing entries of `shared/NAME` for each of `names`, and of
/// `shared/A.aside` (made through the mount, a directory if `a` is one, so
/// that its entry, encrypted or not, is a valid name of `shared` for `a` to
/// go to).
fn entries(m: &Mount, a: &str, names: &[&str]) -> Vec<std::path::PathBuf> {
    let aside = m.p(&format!("shared/{a}.aside"));
    if m.p(&format!("shared/{a}")).is_dir() {
        fs::create_dir(&aside).unwrap();
    } else {
        fs::write(&aside, b"").unwrap();
    }
    names
        .iter()
        .map(|n| m.backing_of(&format!("shared/{n}")))
        .chain([m.backing_of(&format!("shared/{a}.aside"))])
        .collect()
}

/// In the backing directory (as someone allowed to rename there would):
/// A's file `a` goes aside (to `a.aside`) and B's file `b` takes its name.
fn put_b_in_place_of_a(entries: &[std::path::PathBuf]) {
    let [a, b, aside] = entries else {
        panic!("{entries:?}")
    };
    if aside.is_dir() {
        // Empty but for its id file, with encrypted names.
        fs::remove_dir_all(aside).unwrap();
    }
    fs::rename(a, aside).unwrap();
    fs::rename(b, a).unwrap();
}

/// Plaintext of backing file `rel`, read by root through the mount.
fn plain(m: &Mount, rel: &str) -> String {
    String::from_utf8_lossy(&fs::read(m.p(rel)).unwrap()).into_owned()
}

common::in_both_names_modes!(
    a_name_swapped_after_lookup_gives_nothing_of_the_other_users_file,
    a_directory_swapped_after_lookup_does_not_open_the_other_users_directory,
    a_rename_exchange_race_leaks_nothing,
    a_header_swapped_under_an_open_file_does_not_bypass_a_policy_deny,
);

/// Issue 6, item 1, deterministic: A stats its own file, the name is given
/// to B's 0600 file in the backing directory, and A's next use of the name
/// (cat, append, chmod, truncate by fd and by path, setxattr) must reach
/// neither B's bytes nor B's file: the daemon notices that the backing file
/// is not the inode the kernel checked, answers ESTALE, and the kernel's
/// fresh lookup finds B's file, which A may not use.
fn a_name_swapped_after_lookup_gives_nothing_of_the_other_users_file(names: Names) {
    let Some((m, users)) = setup("swapname", names) else {
        return;
    };
    let (a, b) = (&users.a, &users.b);
    let Some(python) = common::python3("swapname") else {
        return;
    };
    let py = |code: &str| format!("{python} -c \"import os; {code}\"");
    let cases = [
        ("read", "cat {n}".to_string()),
        ("append", "printf INJECTED >> {n}".into()),
        ("chmod", "chmod 666 {n}".into()),
        ("truncate", "truncate -s 0 {n}".into()),
        ("truncate-path", py("os.truncate('{n}', 0)")),
        ("setxattr", py("os.setxattr('{n}', 'user.injected', b'1')")),
    ];
    for (i, (what, action)) in cases.iter().enumerate() {
        let (fa, fb) = (format!("a{i}"), format!("b{i}"));
        private_file(&m, a, &fa, OWN);
        private_file(&m, b, &fb, SECRET);
        let swap = entries(&m, &fa, &[&fa, &fb]);
        let before = fs::metadata(&swap[1]).unwrap();
        let o = stat_then(
            &m,
            a,
            &fa,
            || put_b_in_place_of_a(&swap),
            &action.replace("{n}", &fa),
        );
        assert!(
            !common::contains(&o.stdout, MARK),
            "{what}: A read B's file: {}",
            common::describe(&o)
        );
        assert!(
            !o.status.success(),
            "{what}: A's `{action}` on B's file succeeded: {}",
            common::describe(&o)
        );
        // B's file (now named like A's) is as B left it.
        let bfile = format!("shared/{fa}");
        let after = fs::metadata(&swap[0]).unwrap();
        assert_eq!(after.ino(), before.ino(), "{what}");
        assert_eq!(after.mode() & 0o7777, 0o600, "{what}: B's file mode");
        assert_eq!(plain(&m, &bfile), SECRET, "{what}: B's content");
        if let Some(getfattr) = common::require_tool("swapname (xattr check)", "getfattr") {
            let x = std::process::Command::new(getfattr)
                .args(["-n", "user.injected"])
                .arg(&swap[0])
                .output()
                .unwrap();
            assert!(!x.status.success(), "{what}: B's file got A's xattr");
        }
        // A's own file, moved aside, is untouched too.
        assert_eq!(plain(&m, &format!("shared/{fa}.aside")), OWN, "{what}");
    }
}

/// Issue 6, item 1, for directories: A lists its own directory, which is
/// then exchanged with B's 0700 directory; A's lookups of names under the
/// directory it listed must not reach into B's directory.
fn a_directory_swapped_after_lookup_does_not_open_the_other_users_directory(names: Names) {
    let Some((m, users)) = setup("swapdir", names) else {
        return;
    };
    let (a, b) = (&users.a, &users.b);
    common::ok_as(a, &m.p("shared"), "mkdir -m 755 da");
    common::ok_as(
        b,
        &m.p("shared"),
        &format!("mkdir -m 700 db && printf %s '{SECRET}' > db/s && chmod 644 db/s"),
    );
    let swap = entries(&m, "da", &["da", "db"]);
    let o = stat_then(
        &m,
        a,
        "da",
        || put_b_in_place_of_a(&swap),
        "cat da/s; ls da",
    );
    assert!(
        !common::contains(&o.stdout, MARK) && !common::contains(&o.stdout, b"s\n"),
        "A reached into B's 0700 directory: {}",
        common::describe(&o)
    );
}

/// Issue 6, item 1, the race: B exchanges its 0600 file with A's file in the
/// shared directory (renameat2 RENAME_EXCHANGE in the backing directory) as
/// fast as it can, while A opens and reads its file through the mount in a
/// loop. Not one of A's reads may return B's bytes.
fn a_rename_exchange_race_leaks_nothing(names: Names) {
    let Some((m, users)) = setup("swaprace", names) else {
        return;
    };
    let Some(python) = common::python3("swaprace") else {
        return;
    };
    let (a, b) = (&users.a, &users.b);
    private_file(&m, a, "mine", OWN);
    private_file(&m, b, "theirs", SECRET);
    let secs = 2.5;
    let (mine, theirs) = (m.backing_of("shared/mine"), m.backing_of("shared/theirs"));
    let swapper = format!(
        r#"
import ctypes, time
libc = ctypes.CDLL(None, use_errno=True)
end = time.monotonic() + {secs}
n = 0
while time.monotonic() < end:
    if libc.renameat2(-100, b"{}", -100, b"{}", 2) == 0:
        n += 1
print(n)
"#,
        mine.display(),
        theirs.display()
    );
    let reader = format!(
        r#"
import time
end = time.monotonic() + {secs}
leaks = own = errors = 0
while time.monotonic() < end:
    try:
        with open("mine", "rb") as f:
            d = f.read()
    except OSError:
        errors += 1
        continue
    if b"VICTIM" in d:
        leaks += 1
    else:
        own += 1
print(leaks, own, errors)
"#
    );
    let spawn = |u: &TestUser, dir: &Path, code: &str| -> Child {
        u.command(dir, &python)
            .arg("-c")
            .arg(code)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let t0 = Instant::now();
    let swaps = spawn(b, &m.backing_of("shared"), &swapper);
    let reads = spawn(a, &m.p("shared"), &reader);
    let (swaps, reads) = (
        swaps.wait_with_output().unwrap(),
        reads.wait_with_output().unwrap(),
    );
    assert!(
        swaps.status.success(),
        "swapper: {}",
        common::describe(&swaps)
    );
    assert!(
        reads.status.success(),
        "reader: {}",
        common::describe(&reads)
    );
    let counts: Vec<u64> = String::from_utf8_lossy(&reads.stdout)
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    let swapped = String::from_utf8_lossy(&swaps.stdout).trim().to_string();
    eprintln!(
        "{swapped} exchanges; A's reads: {} of B's file, {} of its own, {} refused, in {:?}",
        counts[0],
        counts[1],
        counts[2],
        t0.elapsed()
    );
    assert!(swapped.parse::<u64>().unwrap() > 0, "no exchange happened");
    assert!(counts[1] + counts[2] > 0, "A's reader never ran");
    assert_eq!(counts[0], 0, "A read B's 0600 file through the mount");
}

/// Issue 6, item 2: A holds its file (under key KA, whose policy denies B
/// kms:Decrypt) open; B, who can write the backing file (0666), copies the
/// header of a file under its own key KB over it and opens the file through
/// the mount. The open (and a truncate by path) must be refused: what would
/// serve B is A's open state, with KA's data key, which B may not use.
fn a_header_swapped_under_an_open_file_does_not_bypass_a_policy_deny(names: Names) {
    let Some((m, users)) = setup("hdrswap", names) else {
        return;
    };
    let Some(python) = common::python3("hdrswap") else {
        return;
    };
    let (a, b) = (&users.a, &users.b);
    // KA is the mount's key (files made through the mount use it); B may
    // not decrypt under it. KB is B's own key, with no policy.
    let policy = format!(
        r#"{{"Statement":[{{"Effect":"Allow","Principal":"*","Action":"kms:*"}},
        {{"Effect":"Deny","Principal":{{"kmsfs":"uid:{}"}},"Action":"kms:Decrypt"}}]}}"#,
        b.uid
    );
    let default_key = m.key_id_of("alias/kmsfs/default");
    m.ok(&[
        "kms",
        "put-key-policy",
        "--key-id",
        &default_key,
        "--policy",
        &policy,
    ]);
    let kb: serde_json::Value =
        serde_json::from_str(&m.ok(&["--output", "json", "kms", "create-key"])).unwrap();
    let kb = kb["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    // A file under KB, B's to read: its header is what B copies.
    let plain_b = m.tmp.path().join("b-plain");
    let sealed_b = m.tmp.path().join("b-sealed");
    fs::write(&plain_b, b"B's own data").unwrap();
    m.ok(&[
        "seal",
        plain_b.to_str().unwrap(),
        sealed_b.to_str().unwrap(),
        "--key-id",
        &kb,
    ]);
    std::os::unix::fs::chown(&sealed_b, Some(b.uid), Some(b.gid)).unwrap();
    // A's file, writable by everyone in the backing directory.
    common::ok_as(
        a,
        &m.p("shared"),
        &format!("printf %s '{SECRET}' > held && chmod 666 held"),
    );
    // B is refused as long as the header is A's.
    let o = b.sh(&m.p("shared"), "cat held");
    assert!(
        !o.status.success(),
        "B opened A's file: {}",
        common::describe(&o)
    );
    // A holds the file open.
    let mut holder = a
        .command(&m.p("shared"), "sh")
        .arg("-c")
        .arg("exec sleep 60 < held")
        .spawn()
        .unwrap();
    let fd0 = format!("/proc/{}/fd/0", holder.id());
    let t0 = Instant::now();
    while fs::read_link(&fd0)
        .map(|p| !p.ends_with("shared/held"))
        .unwrap_or(true)
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "A's holder never opened the file"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // B swaps the header in the backing file, then opens through the mount,
    // reads, and truncates by path.
    let backing = m.backing_of("shared/held");
    let len_before = fs::metadata(&backing).unwrap().len();
    common::ok_as(
        b,
        &m.backing_of("shared"),
        &format!(
            "dd if={} of={} bs=1024 count=1 conv=notrunc status=none",
            sealed_b.display(),
            backing.display()
        ),
    );
    let read = b.sh(&m.p("shared"), "cat held");
    let trunc = b.sh(
        &m.p("shared"),
        &format!("{python} -c \"import os; os.truncate('held', 0)\""),
    );
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(
        !common::contains(&read.stdout, MARK),
        "B read A's plaintext through A's open state: {}",
        common::describe(&read)
    );
    assert!(
        String::from_utf8_lossy(&read.stderr).contains("Permission denied"),
        "B's open of A's file: {}",
        common::describe(&read)
    );
    assert!(
        String::from_utf8_lossy(&trunc.stderr).contains("Permission denied"),
        "B's truncate by path of A's file: {}",
        common::describe(&trunc)
    );
    assert_eq!(fs::metadata(&backing).unwrap().len(), len_before);
}
