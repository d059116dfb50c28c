//! `kmsfs console` over HTTP, as a browser or an attacker would speak to it:
//! nothing without the session cookie, the cookie only for the printed
//! token, no change without the session's CSRF token or from another
//! origin, no answer at all to another local user (even one holding the
//! token), no listening beyond loopback; and the key actions landing in the
//! keystore and the trail as the console's.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{Console, Ks};
use serde_json::Value;

fn key_state(ks: &Ks, key: &str) -> String {
    ks.json(&["kms", "describe-key", "--key-id", key, "--output", "json"])["KeyMetadata"]
        ["KeyState"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
fn without_the_cookie_nothing_but_the_sign_in_page() {
    let ks = Ks::new();
    let key = ks.create_key();
    let c = Console::start(&ks, "127.0.0.1:0");
    let page = c.request("GET", "/", &[], "");
    assert_eq!(page.status, 401);
    assert!(page.body.contains("login?token="), "{}", page.body);
    for path in ["/api/session", "/api/keys", "/api/trail", "/api/files"] {
        let r = c.request("GET", path, &[], "");
        assert_eq!(r.status, 401, "{path}: {}", r.body);
        assert_eq!(r.json()["error"], "NotSignedIn");
    }
    // A made-up cookie is no session.
    let forged = format!("kmsfs_console={}", "ab".repeat(32));
    let r = c.request("GET", "/api/keys", &[("Cookie", &forged)], "");
    assert_eq!(r.status, 401);
    let r = c.request(
        "POST",
        "/api/key/disable",
        &[("Cookie", &forged), ("X-CSRF-Token", "x")],
        &format!("{{\"id\":\"{key}\"}}"),
    );
    assert_eq!(r.status, 401);
    assert_eq!(key_state(&ks, &key), "Enabled");
    // The page's own files need no session, and every answer carries the
    // policy that keeps scripts to them.
    let js = c.request("GET", "/assets/console.js", &[], "");
    assert_eq!(js.status, 200);
    let csp = js.header("content-security-policy").unwrap_or("");
    assert!(
        csp.contains("default-src 'self'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
}

#[test]
fn the_printed_token_opens_a_session_and_a_wrong_one_does_not() {
    let ks = Ks::new();
    let c = Console::start(&ks, "127.0.0.1:0");
    for wrong in [String::new(), "0".repeat(64), format!("{}0", c.token)] {
        let r = c.request("GET", &format!("/login?token={wrong}"), &[], "");
        assert_eq!(r.status, 403, "token {wrong:?}");
        assert!(r.header("set-cookie").is_none());
    }
    let r = c.request("GET", &format!("/login?token={}", c.token), &[], "");
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/"));
    let set = r.header("set-cookie").expect("cookie").to_string();
    assert!(set.contains("HttpOnly"), "{set}");
    assert!(set.contains("SameSite=Strict"), "{set}");
    let cookie = set.split(';').next().unwrap_or("").to_string();
    let page = c.request("GET", "/", &[("Cookie", &cookie)], "");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("/assets/console.js"));
    // No inline script for the policy to have to allow.
    assert!(!page.body.contains("<script>"), "{}", page.body);
    let s = c.request("GET", "/api/session", &[("Cookie", &cookie)], "");
    assert_eq!(s.json()["uid"], 0);
    // Signing out ends the session.
    let csrf = s.json()["csrf"].as_str().unwrap().to_string();
    let out = c.post(&(cookie.clone(), csrf), "/api/logout", "{}");
    assert_eq!(out.status, 200);
    assert_eq!(
        c.request("GET", "/api/session", &[("Cookie", &cookie)], "")
            .status,
        401
    );
}

#[test]
fn a_change_without_the_sessions_csrf_token_or_from_another_origin_is_refused() {
    let ks = Ks::new();
    let key = ks.create_key();
    let c = Console::start(&ks, "127.0.0.1:0");
    let (cookie, csrf) = c.session();
    let body = format!("{{\"id\":\"{key}\"}}");
    let other = c.session();
    let attempts: Vec<Vec<(&str, &str)>> = vec![
        vec![("Cookie", &cookie)],
        vec![("Cookie", &cookie), ("X-CSRF-Token", "forged")],
        // Another session's token is not this session's.
        vec![("Cookie", &cookie), ("X-CSRF-Token", &other.1)],
        // The right token, from a page of another site.
        vec![
            ("Cookie", &cookie),
            ("X-CSRF-Token", &csrf),
            ("Origin", "http://evil.example"),
        ],
        vec![
            ("Cookie", &cookie),
            ("X-CSRF-Token", &csrf),
            ("Sec-Fetch-Site", "cross-site"),
        ],
    ];
    for h in &attempts {
        let r = c.request("POST", "/api/key/disable", h, &body);
        assert_eq!(r.status, 403, "{h:?}: {}", r.body);
    }
    assert_eq!(key_state(&ks, &key), "Enabled");
    // A GET changes nothing, whatever it asks.
    let r = c.request("GET", "/api/key/disable", &[("Cookie", &cookie)], "");
    assert_eq!(r.status, 404);
    assert_eq!(key_state(&ks, &key), "Enabled");
    // A name this console was not reached by (DNS rebinding) is refused.
    let mut s = std::net::TcpStream::connect(&c.addr).unwrap();
    use std::io::{Read, Write};
    s.write_all(b"GET /api/keys HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 421"), "{raw}");
    // With the token, from the page: done.
    let r = c.post(&(cookie, csrf), "/api/key/disable", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(key_state(&ks, &key), "Disabled");
}

#[test]
fn key_actions_go_through_the_key_service_as_the_console() {
    let ks = Ks::new();
    let c = Console::start(&ks, "127.0.0.1:0");
    let s = c.session();
    let r = c.post(
        &s,
        "/api/keys/create",
        r#"{"description":"made in the console"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let key = r.json()["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(key_state(&ks, &key), "Enabled");
    let list = c.get(&s, "/api/keys?q=made+in").json();
    assert_eq!(list["Matching"], 1);
    assert_eq!(list["Keys"][0]["KeyId"], key.as_str());
    let body = format!("{{\"id\":\"{key}\"}}");
    assert_eq!(c.post(&s, "/api/key/rotate", &body).status, 200);
    let d = c.get(&s, &format!("/api/key?id={key}")).json();
    assert_eq!(d["CurrentKeyMaterialVersion"], 2);
    let r = c.post(
        &s,
        "/api/key/schedule-deletion",
        &format!("{{\"id\":\"{key}\",\"days\":7}}"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(key_state(&ks, &key), "PendingDeletion");
    assert!(
        c.get(&s, &format!("/api/key?id={key}")).json()["DeletionDate"].is_i64(),
        "the detail gives the date the countdown runs to"
    );
    assert_eq!(c.post(&s, "/api/key/cancel-deletion", &body).status, 200);
    assert_eq!(key_state(&ks, &key), "Disabled");
    // A policy that would lock the console's user out is refused, and the
    // key keeps the policy it had.
    let before = c.get(&s, &format!("/api/key?id={key}")).json()["Policy"].clone();
    let lockout = serde_json::json!({
        "id": key,
        "policy": r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"kmsfs":"uid:4242"},"Action":"kms:*","Resource":"*"}]}"#,
    });
    let r = c.post(&s, "/api/key/policy", &lockout.to_string());
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("kms:PutKeyPolicy"),
        "{}",
        r.body
    );
    let bad = serde_json::json!({ "id": key, "policy": "{not json" });
    assert_eq!(c.post(&s, "/api/key/policy", &bad.to_string()).status, 400);
    assert_eq!(
        c.get(&s, &format!("/api/key?id={key}")).json()["Policy"],
        before
    );
    // The trail says who: the console's user, source console.
    let out = ks.ok(&["audit", "show", "--key-id", &key, "--output", "json"]);
    let records: Vec<Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for ev in [
        "CreateKey",
        "RotateKeyOnDemand",
        "ScheduleKeyDeletion",
        "CancelKeyDeletion",
    ] {
        let r = records
            .iter()
            .find(|r| r["eventName"] == ev)
            .unwrap_or_else(|| panic!("no {ev} record in {out}"));
        assert_eq!(r["userIdentity"]["source"], "console", "{r}");
        assert_eq!(r["userIdentity"]["uid"], 0, "{r}");
    }
    let refused = records
        .iter()
        .find(|r| r["eventName"] == "PutKeyPolicy" && r.get("errorCode").is_some())
        .unwrap_or_else(|| panic!("no refused PutKeyPolicy in {out}"));
    assert_eq!(refused["userIdentity"]["source"], "console");
    // And the Trail page finds them, filtered on the server.
    let t = c
        .get(
            &s,
            &format!("/api/trail?key={key}&event=PutKeyPolicy&outcome=refused"),
        )
        .json();
    let rows = t["Rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{t}");
    assert_eq!(rows[0]["Source"], "console");
}

#[test]
fn another_local_user_cannot_use_it_even_with_the_token() {
    let test = "another_local_user_cannot_use_it_even_with_the_token";
    let Some(users) = common::test_users(test) else {
        return;
    };
    let Some(curl) = common::require_tool(test, "curl") else {
        return;
    };
    let curl = curl.display().to_string();
    let ks = Ks::new();
    let key = ks.create_key();
    let c = Console::start(&ks, "127.0.0.1:0");
    let (cookie, csrf) = c.session();
    let b = &users.b;
    // B holds the token, a live session's cookie and its CSRF token (as if
    // it had read them somewhere): the console still does not serve B.
    const REFUSAL: &str = "serves only the keystore's owner and root";
    let o = b.sh(
        Path::new("/"),
        &format!("{curl} -s -w ' %{{http_code}}' '{}'", c.login_url()),
    );
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(out.contains(REFUSAL) && out.ends_with(" 403"), "{out}");
    // The same URL signs root in.
    let o = common::command(&curl)
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &c.login_url(),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "303");
    let o = b.sh(
        Path::new("/"),
        &format!(
            "{curl} -s -w ' %{{http_code}}' -X POST -H 'Cookie: {cookie}' -H 'X-CSRF-Token: {csrf}' \
             -d '{{\"id\":\"{key}\"}}' {}/api/key/disable",
            c.base()
        ),
    );
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(out.contains(REFUSAL) && out.ends_with(" 403"), "{out}");
    assert_eq!(key_state(&ks, &key), "Enabled");
    let o = b.sh(
        Path::new("/"),
        &format!("{curl} -s -H 'Cookie: {cookie}' {}/api/session", c.base()),
    );
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains(&csrf),
        "B read the session"
    );
    drop(c);

    // On a Unix socket (0600): B cannot even connect; root can sign in.
    let dir = common::tempdir("console-unix");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = dir.path().join("console.sock");
    let c = Console::start(&ks, &format!("unix:{}", sock.display()));
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let login = format!("http://localhost/login?token={}", c.token);
    let o = b.sh(
        Path::new("/"),
        &format!(
            "{curl} -s -o /dev/null -w '%{{http_code}}' --unix-socket {} '{login}'",
            sock.display()
        ),
    );
    assert_eq!(o.status.code(), Some(7), "B connected: {o:?}");
    let o = common::command(&curl)
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--unix-socket",
        ])
        .arg(&sock)
        .arg(&login)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "303");
}

#[test]
fn a_non_loopback_address_is_refused() {
    let ks = Ks::new();
    for addr in ["0.0.0.0:0", "[::]:0"] {
        let o = ks.run(&["console", "--listen", addr]);
        common::fails(&o, common::EXIT_USAGE, "TLS");
    }
}
