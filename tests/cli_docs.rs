//! The man page and shell completions come from the clap definitions, so
//! they name every command (status, passwd, remount, ...); `--help` lists
//! the exit codes; the bash script is valid bash.

mod common;

use common::kmsfs;

fn out(args: &[&str]) -> String {
    let o = kmsfs().args(args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn completions_man_and_exit_codes() {
    let bash = out(&["completions", "bash"]);
    for cmd in [
        "status",
        "passwd",
        "remount",
        "install-helper",
        "mount",
        "kms",
    ] {
        assert!(bash.contains(cmd), "{cmd} missing from bash completion");
    }
    let t = common::tempdir("cli_docs");
    let f = t.path().join("kmsfs.bash");
    std::fs::write(&f, &bash).unwrap();
    let st = std::process::Command::new("bash")
        .arg("-n")
        .arg(&f)
        .status()
        .unwrap();
    assert!(st.success(), "bash -n rejects the completion script");
    assert!(out(&["completions", "zsh"]).starts_with("#compdef kmsfs"));
    assert!(out(&["completions", "fish"]).contains("complete -c kmsfs"));
    let o = kmsfs().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));

    let man = out(&["man"]);
    assert!(man.contains(".TH kmsfs 1"), "{man}");
    assert!(man.contains("EXIT STATUS"));
    assert!(man.contains("passwd"));
    let dir = t.path().join("man1");
    std::fs::create_dir(&dir).unwrap();
    out(&["man", "--dir", dir.to_str().unwrap()]);
    for page in [
        "kmsfs.1",
        "kmsfs-mount.1",
        "kmsfs-status.1",
        "kmsfs-passwd.1",
    ] {
        assert!(dir.join(page).exists(), "{page} not written");
    }

    let help = out(&["--help"]);
    assert!(
        help.contains("Exit codes:") && help.contains("6  keystore missing"),
        "{help}"
    );
}

#[test]
fn man_page_has_exit_status_environment_files_and_examples() {
    let man = out(&["man"]);
    for section in [
        ".SH \"EXIT STATUS\"",
        ".SH ENVIRONMENT",
        ".SH FILES",
        ".SH EXAMPLES",
    ] {
        assert!(man.contains(section), "{section} missing");
    }
    let exit = &man[man.find("EXIT STATUS").unwrap()..man.find(".SH ENVIRONMENT").unwrap()];
    for code in 0..=8 {
        assert!(
            exit.contains(&format!(".TP\n\\fB{code}\\fR")),
            "exit {code}: {exit}"
        );
    }
    assert!(man.contains("KMSFS_KEYSTORE"));
}
