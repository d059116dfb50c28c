//! `kmsfs kms serve --tls-cert F --tls-key F`: boto3, the aws CLI, the kmsfs
//! CLI and a mount talk to it trusting the CA that signed its certificate
//! (`--kms-ca-bundle`, `--ca-bundle`, AWS_CA_BUNDLE) and refuse it trusting
//! another; a private key other users could read is refused, as ssh does;
//! a non-loopback address is served only over TLS.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};

use common::*;

fn aws_env<'a>(c: &'a mut Command, ak: &str, sk: &str) -> &'a mut Command {
    c.env("AWS_ACCESS_KEY_ID", ak)
        .env("AWS_SECRET_ACCESS_KEY", sk)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env_remove("AWS_CA_BUNDLE")
}

/// `kmsfs kms --endpoint-url EP ARGS...` signed with (ak, sk), plus `env`.
fn remote(ep: &str, creds: (&str, &str), args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut c = kmsfs();
    aws_env(&mut c, creds.0, creds.1);
    for (k, v) in env {
        c.env(k, v);
    }
    c.args(["kms", "--endpoint-url", ep])
        .args(args)
        .output()
        .expect("run kmsfs kms")
}

fn tls_server(ks: &Ks, certs: &Certs, listen: &str) -> Server {
    let args = certs.serve_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(ks, listen, &args)
}

#[test]
fn boto3_and_the_aws_cli_use_the_ca_and_refuse_a_server_another_ca_vouches_for() {
    let test = "boto3_and_the_aws_cli_use_the_ca_and_refuse_a_server_another_ca_vouches_for";
    let Some(venv) = venv(test) else { return };
    let ks = Ks::new();
    let Some(certs) = make_certs(test, &ks.file("certs"), &["127.0.0.1"]) else {
        return;
    };
    let (ak, sk) = access_key(&ks, 0);
    let mut server = tls_server(&ks, &certs, "127.0.0.1:0");
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );
    let out = Command::new(venv.join("bin/python"))
        .arg(script("tls.py"))
        .args([&server.endpoint(), &ak, &sk])
        .arg(&certs.ca)
        .arg(&certs.other_ca)
        .arg(venv.join("bin/aws"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_CA_BUNDLE")
        .env(
            "PATH",
            format!("{}:/usr/bin:/bin", venv.join("bin").display()),
        )
        .output()
        .expect("run tls.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("tls: all steps passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = server.stop();
    assert!(log.contains("GenerateDataKey=1"), "{log}");
    assert!(
        log.contains("TLS handshake"),
        "refused handshakes are logged: {log}"
    );
    assert!(!log.contains(&sk), "a secret access key is in the log");
}

#[test]
fn the_kmsfs_cli_trusts_its_ca_bundle_and_names_the_remedy_otherwise() {
    let test = "the_kmsfs_cli_trusts_its_ca_bundle_and_names_the_remedy_otherwise";
    let ks = Ks::new();
    let Some(certs) = make_certs(test, &ks.file("certs"), &["127.0.0.1"]) else {
        return;
    };
    let key = ks.create_key();
    let (ak, sk) = access_key(&ks, 0);
    let server = tls_server(&ks, &certs, "127.0.0.1:0");
    let ep = server.endpoint();
    let ca = certs.ca.display().to_string();
    let creds = (ak.as_str(), sk.as_str());
    // --ca-bundle (the aws CLI's name), --kms-ca-bundle, AWS_CA_BUNDLE.
    for (args, env) in [
        (vec!["--ca-bundle", &ca], vec![]),
        (vec!["--kms-ca-bundle", &ca], vec![]),
        (vec![], vec![("AWS_CA_BUNDLE", certs.ca.as_path())]),
    ] {
        let mut a = args.clone();
        a.extend(["describe-key", "--key-id", &key]);
        let o = remote(&ep, creds, &a, &env);
        assert!(o.status.success(), "{args:?} {env:?}: {}", describe(&o));
        assert!(String::from_utf8_lossy(&o.stdout).contains(&key));
    }
    // Another CA, or the system's roots: the server is refused, and the
    // message says what to give.
    let other = certs.other_ca.display().to_string();
    for args in [vec!["--ca-bundle", other.as_str()], vec![]] {
        let mut a = args.clone();
        a.extend(["describe-key", "--key-id", &key]);
        let o = remote(&ep, creds, &a, &[]);
        assert!(!o.status.success(), "{args:?} talked to the server");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("TLS certificate this client does not trust")
                && err.contains("--kms-ca-bundle"),
            "{args:?}: {err}"
        );
    }
    // A bundle with no certificate in it is refused before any call.
    let o = remote(
        &ep,
        creds,
        &[
            "--ca-bundle",
            &certs.key.display().to_string(),
            "describe-key",
            "--key-id",
            &key,
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("no CERTIFICATE block"),
        "{err}"
    );
    assert!(!err.contains("PRIVATE KEY"), "{err}");
}

#[test]
fn a_mount_uses_a_tls_key_server_with_its_ca_and_refuses_one_it_cannot_trust() {
    let test = "a_mount_uses_a_tls_key_server_with_its_ca_and_refuses_one_it_cannot_trust";
    if !fuse_available(test) || !require_root(test, "mounting") {
        return;
    }
    let ks = Ks::new();
    let Some(certs) = make_certs(test, &ks.file("certs"), &["127.0.0.1"]) else {
        return;
    };
    let key = ks.create_key();
    let (ak, sk) = access_key(&ks, 0);
    let mut server = tls_server(&ks, &certs, "127.0.0.1:0");
    let tmp = tempdir(test);
    let (backing, mnt) = (tmp.path().join("backing"), tmp.path().join("mnt"));
    for d in [&backing, &mnt] {
        std::fs::create_dir(d).unwrap();
    }
    let log = tmp.path().join("mount.log");
    let mount = |extra: &[&str]| {
        let mut c = kmsfs();
        aws_env(&mut c, &ak, &sk);
        c.arg("mount")
            .arg(&backing)
            .arg(&mnt)
            .args(["--key-id", &key, "--log-file"])
            .arg(&log)
            .args(extra)
            .output()
            .expect("run kmsfs mount")
    };
    let _g = MountGuard(mnt.clone());
    // The other CA: refused at mount time, saying what to give.
    let other = format!(
        "kms_endpoint={},kms_ca_bundle={}",
        server.endpoint(),
        certs.other_ca.display()
    );
    let o = mount(&["-o", &other]);
    assert!(!o.status.success(), "mounted trusting another CA");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("does not trust") && err.contains("--kms-ca-bundle"),
        "{err}"
    );
    assert!(!is_mounted(&mnt));
    // Its CA, by flag: files round-trip through the TLS key server.
    let ca = certs.ca.display().to_string();
    let o = mount(&["--kms-endpoint", &server.endpoint(), "--kms-ca-bundle", &ca]);
    assert!(o.status.success(), "{}", describe(&o));
    let plain = b"a data key generated over TLS".to_vec();
    std::fs::File::create(mnt.join("f"))
        .and_then(|mut f| f.write_all(&plain))
        .expect("write through the mount");
    force_unmount(&mnt, true);
    // -o kms_endpoint=,kms_ca_bundle= (fstab): the file reads back.
    let o = mount(&[
        "-o",
        &format!("kms_endpoint={},kms_ca_bundle={ca}", server.endpoint()),
    ]);
    assert!(o.status.success(), "{}", describe(&o));
    assert_eq!(std::fs::read(mnt.join("f")).expect("read back"), plain);
    force_unmount(&mnt, true);
    let stats = server.stop();
    // Through the TLS server: the file's data key (and the tree's name key).
    assert!(
        stats.contains("GenerateDataKey=") && stats.contains("errors=0"),
        "{stats}"
    );
}

#[test]
fn a_key_file_another_user_could_read_is_refused_and_a_client_without_the_ca_is_refused() {
    let test =
        "a_key_file_another_user_could_read_is_refused_and_a_client_without_the_ca_is_refused";
    let Some(users) = test_users(test) else {
        return;
    };
    use std::os::unix::fs::PermissionsExt;
    let ks = Ks::new();
    let Some(certs) = make_certs(test, &ks.file("certs"), &["127.0.0.1"]) else {
        return;
    };
    let key = ks.create_key();
    // Group-readable, in the group of the test users: kmsfs-b could read it.
    let chgrp = command("chgrp").arg(users.group).arg(&certs.key).status();
    assert!(chgrp.map(|s| s.success()).unwrap_or(false), "chgrp");
    for mode in [0o640, 0o604, 0o644] {
        std::fs::set_permissions(&certs.key, std::fs::Permissions::from_mode(mode)).unwrap();
        let mut a = vec!["kms", "serve", "--listen", "127.0.0.1:0"];
        let args = certs.serve_args();
        a.extend(args.iter().map(String::as_str));
        let o = ks.run(&a);
        let err = fails(&o, EXIT_USAGE, "open to group or others");
        assert!(
            err.contains(&format!("mode {mode:03o}")) && err.contains("chmod 600"),
            "{err}"
        );
        assert!(!err.contains("PRIVATE KEY"), "{err}");
    }
    std::fs::set_permissions(&certs.key, std::fs::Permissions::from_mode(0o600)).unwrap();
    // The directories are open to all: only the key's mode keeps kmsfs-b out.
    for d in [ks.tmp.path(), &ks.file("certs")] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let o = users
        .b
        .sh(Path::new("/"), &format!("cat {}", certs.key.display()));
    assert!(!o.status.success(), "kmsfs-b read the server's private key");
    let server = tls_server(&ks, &certs, "127.0.0.1:0");
    // kmsfs-b with a valid access key but not the CA (the system's roots):
    // the connection is refused before any request is sent.
    let (ak, sk) = access_key(&ks, users.b.uid);
    let script = format!(
        "AWS_ACCESS_KEY_ID={ak} AWS_SECRET_ACCESS_KEY={sk} AWS_REGION=us-east-1 \
         AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null \
         AWS_SHARED_CREDENTIALS_FILE=/dev/null {BIN} kms --endpoint-url {} describe-key \
         --key-id {key}",
        server.endpoint()
    );
    let o = users.b.sh(Path::new("/"), &script);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "kmsfs-b talked to the server without its CA"
    );
    assert!(err.contains("does not trust"), "{err}");
}

#[test]
fn a_non_loopback_address_is_served_over_tls_only() {
    let test = "a_non_loopback_address_is_served_over_tls_only";
    let ks = Ks::new();
    let Some(certs) = make_certs(test, &ks.file("certs"), &["127.0.0.1"]) else {
        return;
    };
    let mut server = tls_server(&ks, &certs, "0.0.0.0:0");
    assert!(server.url.starts_with("https://0.0.0.0:"), "{}", server.url);
    server.stop();
    // TLS on a Unix socket means nothing: refused.
    let sock = format!("unix:{}", ks.file("s.sock").display());
    let mut a = vec!["kms", "serve", "--listen", &sock];
    let args = certs.serve_args();
    a.extend(args.iter().map(String::as_str));
    fails(&ks.run(&a), EXIT_USAGE, "--tls-cert is for a TCP address");
    // A certificate without its key is a usage error.
    let cert = certs.cert.display().to_string();
    let o = ks.run(&[
        "kms",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        &cert,
    ]);
    assert_eq!(o.status.code(), Some(EXIT_USAGE), "{}", describe(&o));
}
