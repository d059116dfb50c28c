//! `kmsfs kms serve` driven by real AWS clients from PyPI (boto3 and the aws
//! CLI, pinned in the venv that scripts/pyenv.sh makes): the whole key
//! lifecycle over SigV4, the refusals of unsigned, wrongly signed and stale
//! requests (signed by botocore's own signer), and the Unix socket where the
//! peer's credentials are the caller.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;

fn run_python(venv: &Path, script: &Path, args: &[&str]) -> String {
    let out = Command::new(venv.join("bin/python"))
        .arg(script)
        .args(args)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env(
            "PATH",
            format!("{}:/usr/bin:/bin", venv.join("bin").display()),
        )
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{} failed:\n{stdout}\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn boto3_and_the_aws_cli_drive_the_whole_lifecycle() {
    let test = "boto3_and_the_aws_cli_drive_the_whole_lifecycle";
    let Some(venv) = venv(test) else { return };
    require_tool(test, "openssl");
    let ks = Ks::new();
    let (ak, sk) = access_key(&ks, 0);
    let (ak2, sk2) = access_key(&ks, 4242);
    let listed = ks.ok(&["access-key", "list"]);
    assert!(listed.contains(&ak) && listed.contains(&ak2), "{listed}");
    assert!(!listed.contains(&sk), "list shows a secret");
    let mut server = Server::start(&ks, "127.0.0.1:0", &[]);
    let work = ks.file("work");
    std::fs::create_dir(&work).expect("work dir");
    let out = run_python(
        &venv,
        &script("lifecycle.py"),
        &[
            &server.endpoint(),
            &ak,
            &sk,
            &ak2,
            &sk2,
            &venv.join("bin/aws").to_string_lossy(),
            &work.to_string_lossy(),
        ],
    );
    assert!(out.contains("lifecycle: all steps passed"), "{out}");
    let log = server.stop();
    // The summary counts what the clients did, and no secret reached the log.
    assert!(log.contains("Decrypt="), "{log}");
    assert!(log.contains("AccessDeniedException"), "{log}");
    for secret in [&sk, &sk2] {
        assert!(
            !log.contains(secret.as_str()),
            "a secret access key is in the log"
        );
    }
    // What the clients made is in the keystore, as the CLI sees it.
    let keys = ks.json(&["kms", "list-keys"]);
    assert_eq!(keys["Keys"].as_array().map(Vec::len), Some(5), "{keys}");
}

#[test]
fn unsigned_wrongly_signed_and_stale_requests_are_refused() {
    let test = "unsigned_wrongly_signed_and_stale_requests_are_refused";
    let Some(venv) = venv(test) else { return };
    let ks = Ks::new();
    let (ak, sk) = access_key(&ks, 0);
    let (dead, dead_sk) = access_key(&ks, 0);
    ks.ok(&["access-key", "delete", "--access-key-id", &dead]);
    assert!(!ks.ok(&["access-key", "list"]).contains(&dead));
    let mut server = Server::start(&ks, "127.0.0.1:0", &[]);
    let out = run_python(
        &venv,
        &script("auth_refusals.py"),
        &[&server.endpoint(), &ak, &sk, &dead, &dead_sk],
    );
    assert!(out.contains("auth refusals: all cases passed"), "{out}");
    let log = server.stop();
    assert!(log.contains("auth_refused="), "{log}");
    assert!(!log.contains("auth_refused=0 "), "{log}");
    assert!(!log.contains(&sk), "a secret access key is in the log");
}

#[test]
fn a_non_loopback_address_is_refused() {
    let ks = Ks::new();
    let out = ks.run(&["kms", "serve", "--listen", "0.0.0.0:0"]);
    assert_eq!(out.status.code(), Some(EXIT_USAGE));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a loopback address"), "{err}");
    assert!(err.contains("--tls-cert FILE --tls-key FILE"), "{err}");
}

fn unix_request(
    python: &str,
    sock: &Path,
    op: &str,
    body: &str,
    user: Option<&TestUser>,
) -> (u16, Value) {
    let dir = sock.parent().expect("socket dir");
    let script = script("unix_client.py");
    let out = match user {
        Some(u) => u
            .command(dir, python)
            .arg(&script)
            .arg(sock)
            .arg(op)
            .arg(body)
            .output(),
        None => Command::new(python)
            .arg(&script)
            .arg(sock)
            .arg(op)
            .arg(body)
            .output(),
    }
    .expect("run the unix client");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "unix client failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, body) = text.trim().split_once(' ').expect("STATUS BODY");
    (
        status.parse().expect("status"),
        serde_json::from_str(body).expect("JSON body"),
    )
}

#[test]
fn on_a_unix_socket_the_peer_is_the_caller() {
    let test = "on_a_unix_socket_the_peer_is_the_caller";
    let Some(python) = python3(test) else { return };
    let Some(users) = test_users(test) else {
        return;
    };
    let ks = Ks::new();
    // A directory every user may enter, for a socket every user may connect to.
    let dir = ks.file("sock");
    std::fs::create_dir(&dir).expect("socket dir");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(ks.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = dir.join("kms.sock");
    let listen = format!("unix:{}", sock.display());
    let mut server = Server::start(&ks, &listen, &["--socket-mode", "666"]);
    assert_eq!(server.addr, listen);
    // Root, unsigned: the peer's uid is the caller.
    let (st, v) = unix_request(&python, &sock, "CreateKey", "{}", None);
    assert_eq!(st, 200, "{v}");
    let key = v["KeyMetadata"]["KeyId"]
        .as_str()
        .expect("key id")
        .to_string();
    let enc = format!(r#"{{"KeyId":"{key}","Plaintext":"aGVsbG8="}}"#);
    let a = &users.a;
    // A key without a policy serves only root and the keystore's owner
    // through the server (issue 15.4); a key policy can grant others.
    let (st, v) = unix_request(&python, &sock, "Encrypt", &enc, Some(a));
    assert_eq!(
        (st, v["__type"].as_str()),
        (400, Some("AccessDeniedException")),
        "user a used a key without a policy: {v}"
    );
    let policy = serde_json::json!({
        "Statement": [{"Effect": "Allow", "Principal": {"kmsfs": ["uid:0"]}, "Action": "kms:*"}]
    })
    .to_string();
    let put =
        serde_json::json!({ "KeyId": key, "PolicyName": "default", "Policy": policy }).to_string();
    // Administrative operations are for root and the server's user.
    let (st, v) = unix_request(&python, &sock, "PutKeyPolicy", &put, Some(a));
    assert_eq!(
        (st, v["__type"].as_str()),
        (400, Some("AccessDeniedException")),
        "{v}"
    );
    let (st, v) = unix_request(&python, &sock, "PutKeyPolicy", &put, None);
    assert_eq!(st, 200, "{v}");
    let (st, v) = unix_request(&python, &sock, "Encrypt", &enc, Some(a));
    assert_eq!(
        (st, v["__type"].as_str()),
        (400, Some("AccessDeniedException")),
        "{v}"
    );
    assert!(
        v["message"]
            .as_str()
            .unwrap_or("")
            .contains(&format!("uid {}", a.uid)),
        "{v}"
    );
    let (st, v) = unix_request(&python, &sock, "Encrypt", &enc, None);
    assert_eq!(st, 200, "root is allowed by the policy: {v}");
    server.stop();
    assert!(!sock.exists(), "the socket is removed on exit");
}

#[test]
fn the_default_socket_mode_keeps_other_users_out() {
    let test = "the_default_socket_mode_keeps_other_users_out";
    let Some(python) = python3(test) else { return };
    let Some(users) = test_users(test) else {
        return;
    };
    let ks = Ks::new();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(ks.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = ks.file("kms.sock");
    let _server = Server::start(&ks, &format!("unix:{}", sock.display()), &[]);
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let out = users
        .a
        .command(ks.tmp.path(), &python)
        .arg(script("unix_client.py"))
        .arg(&sock)
        .arg("ListKeys")
        .arg("{}")
        .output()
        .unwrap();
    assert!(!out.status.success(), "user a reached a 0600 socket");
}

#[test]
fn kmsfs_kms_commands_run_against_an_endpoint_url() {
    let ks = Ks::new();
    let key = ks.create_key();
    let (ak, sk) = access_key(&ks, 0);
    let server = Server::start(&ks, "127.0.0.1:0", &[]);
    let ep = server.endpoint();
    // No --keystore: the operations go to the endpoint, signed with the key.
    let run = |args: &[&str]| {
        let o = kmsfs()
            .args(["kms"])
            .args(args)
            .args(["--endpoint-url", &ep, "--output", "json"])
            .env("AWS_ACCESS_KEY_ID", &ak)
            .env("AWS_SECRET_ACCESS_KEY", &sk)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("KMSFS_KEYSTORE", "/nonexistent")
            .output()
            .expect("run kmsfs");
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["describe-key", "--key-id", &key]);
    assert_eq!(code, Some(0), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["KeyMetadata"]["KeyId"], key.as_str());
    let (code, out, err) = run(&["encrypt", "--key-id", &key, "--plaintext", "aGVsbG8="]);
    assert_eq!(code, Some(0), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let blob = v["CiphertextBlob"].as_str().unwrap().to_string();
    let (code, out, err) = run(&["decrypt", "--ciphertext-blob", &blob]);
    assert_eq!(code, Some(0), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["Plaintext"], "aGVsbG8=");
    // The local keystore decrypts what the endpoint encrypted: one keystore.
    let local = ks.decrypt(&blob, "", &[]);
    assert_eq!(b64(&String::from_utf8_lossy(&local.stdout)), b"hello");
    let (code, out, err) = run(&["generate-data-key", "--key-id", &key]);
    assert_eq!(code, Some(0), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(b64(v["Plaintext"].as_str().unwrap()).len(), 32);
    ks.ok(&["kms", "disable-key", "--key-id", &key]);
    let (code, _, err) = run(&["encrypt", "--key-id", &key, "--plaintext", "aGVsbG8="]);
    assert_eq!(code, Some(EXIT_REFUSED), "{err}");
    let (code, _, err) = run(&["list-keys"]);
    assert_eq!(code, Some(EXIT_USAGE), "{err}");
}
