//! Unmodified programs on the mount: sqlite3, git, tar, cp -a, rsync -a, and
//! shared writable mmap (through python3). git, tar, cp and rsync, which
//! make, rename and link many names, run in both names modes.

mod common;

use std::path::Path;

use common::{Mount, Names, sh};

fn need(test: &str, prog: &str) -> bool {
    common::require_tool(test, prog).is_some()
}

#[test]
fn sqlite3_transaction_and_integrity() {
    if !need("sqlite3", "sqlite3") {
        return;
    }
    let Some(mut m) = Mount::new("sqlite") else {
        return;
    };
    let sql = "PRAGMA journal_mode=WAL;\n\
               CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, b BLOB);\n\
               BEGIN;\n\
               WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 10000)\n\
               INSERT INTO t(v, b) SELECT 'row ' || x, randomblob(100) FROM c;\n\
               COMMIT;\n\
               CREATE INDEX iv ON t(v);\n\
               DELETE FROM t WHERE id % 3 = 0;\n\
               VACUUM;\n";
    sh(&m.mnt, &format!("sqlite3 db.sqlite \"{sql}\""));
    let check = |m: &Mount| {
        let out = sh(
            &m.mnt,
            "sqlite3 db.sqlite 'PRAGMA integrity_check; SELECT count(*) FROM t;'",
        );
        assert_eq!(
            out.split_whitespace().collect::<Vec<_>>(),
            ["ok", "6667"],
            "{out}"
        );
    };
    check(&m);
    m.remount();
    check(&m);
}

common::in_both_names_modes!(git_init_commit_fsck, tar_cp_rsync_preserve_trees);

fn git_init_commit_fsck(names: Names) {
    if !need("git", "git") {
        return;
    }
    let Some(mut m) = Mount::with_names("git", names, &[]) else {
        return;
    };
    sh(
        &m.mnt,
        "set -e; git init -q repo; cd repo; git config user.email t@example.com; git config user.name t; \
         for i in 1 2 3 4 5; do seq 1 $((i * 1000)) > f$i; mkdir -p d$i; echo $i > d$i/x; git add -A; git commit -qm c$i; done; \
         git mv f1 moved; git commit -qm mv; git gc -q; git fsck --full --strict",
    );
    m.remount();
    let log = sh(
        &m.p("repo"),
        "git fsck --full --strict && git log --oneline | wc -l && git status --porcelain",
    );
    assert_eq!(log.trim(), "6", "{log}");
}

fn make_tree(dir: &Path) {
    sh(
        dir,
        "set -e; mkdir -p src/a/b/c src/empty; for i in $(seq 1 200); do head -c $((i * 37)) /dev/urandom > src/a/f$i; done; \
         head -c 3000000 /dev/urandom > src/big; echo hi > src/a/b/c/deep; ln -s a/b/c/deep src/link; ln src/big src/hard; \
         chmod 751 src/a/b; touch -d '2010-01-01' src/a/f1; mkfifo src/fifo",
    );
}

fn tar_cp_rsync_preserve_trees(names: Names) {
    let Some(m) = Mount::with_names("trees", names, &[]) else {
        return;
    };
    let src = m.tmp.path().join("plain");
    std::fs::create_dir(&src).unwrap();
    make_tree(&src);
    sh(&src, "tar -cf ../tree.tar src");
    sh(
        &m.mnt,
        &format!(
            "mkdir t && cd t && tar -xf {}/tree.tar",
            m.tmp.path().display()
        ),
    );
    sh(
        &m.mnt,
        &format!(
            "diff -r --no-dereference -x fifo {}/src t/src",
            src.display()
        ),
    );
    sh(&m.mnt, "test -p t/src/fifo");
    sh(
        &m.mnt,
        "cp -a t/src cpa && test -p cpa/fifo && diff -r --no-dereference -x fifo t/src cpa",
    );
    let st = |p: &str| sh(&m.mnt, &format!("stat -c '%a %Y %h %F' {p}"));
    assert_eq!(st("cpa/a/b"), st("t/src/a/b"));
    assert_eq!(st("cpa/a/f1"), st("t/src/a/f1"));
    assert_eq!(st("cpa/hard").split(' ').nth(2), Some("2"));
    if need("rsync", "rsync") {
        sh(
            &m.mnt,
            "rsync -aH t/src/ rs/ && diff -r --no-dereference -x fifo t/src rs",
        );
        sh(
            &m.mnt,
            &format!(
                "rsync -aH rs/ {}/back/ && diff -r --no-dereference -x fifo {}/src {}/back",
                m.tmp.path().display(),
                src.display(),
                m.tmp.path().display()
            ),
        );
    }
}

#[test]
fn shared_writable_mmap() {
    if !need("mmap", "python3") {
        return;
    }
    let Some(mut m) = Mount::new("mmap") else {
        return;
    };
    std::fs::write(m.p("map"), vec![b'.'; 3 * 4096 + 100]).unwrap();
    let py = "import mmap, os\n\
              fd = os.open('map', os.O_RDWR)\n\
              mm = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)\n\
              mm[10:15] = b'HELLO'\n\
              mm[4096 * 3 + 90:4096 * 3 + 100] = b'0123456789'\n\
              mm.flush()\n\
              other = open('map', 'rb').read()\n\
              assert other[10:15] == b'HELLO', other[:20]\n\
              mm.close(); os.close(fd)\n";
    sh(&m.mnt, &format!("python3 -c \"{py}\""));
    m.remount();
    let got = std::fs::read(m.p("map")).unwrap();
    assert_eq!(got.len(), 3 * 4096 + 100);
    assert_eq!(&got[10..15], b"HELLO");
    assert_eq!(&got[3 * 4096 + 90..], b"0123456789");
    assert!(got[15..3 * 4096 + 90].iter().all(|&b| b == b'.'));
}

#[test]
fn append_and_o_trunc() {
    let Some(mut m) = Mount::new("append") else {
        return;
    };
    sh(
        &m.mnt,
        "echo one > log; echo two >> log; echo three >> log; printf x > t; echo replaced > t",
    );
    assert_eq!(
        std::fs::read_to_string(m.p("log")).unwrap(),
        "one\ntwo\nthree\n"
    );
    assert_eq!(std::fs::read_to_string(m.p("t")).unwrap(), "replaced\n");
    // Two appenders interleave whole lines.
    sh(
        &m.mnt,
        "for i in $(seq 1 200); do echo a$i >> two; done & for i in $(seq 1 200); do echo b$i >> two; done; wait",
    );
    m.remount();
    let two = std::fs::read_to_string(m.p("two")).unwrap();
    assert_eq!(two.lines().count(), 400);
    assert_eq!(std::fs::read_to_string(m.p("t")).unwrap(), "replaced\n");
}
