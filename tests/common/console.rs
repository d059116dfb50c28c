//! A running `kmsfs console` and a plain HTTP/1.1 client for it (one
//! request per connection, nothing hidden: the tests see every header).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::{Ks, kmsfs};

/// A running `kmsfs console`; stopped with SIGTERM on drop.
pub struct Console {
    pub child: Child,
    /// `127.0.0.1:PORT`, or `unix:PATH`.
    pub addr: String,
    /// The login token it printed.
    pub token: String,
    pub log: PathBuf,
}

impl Console {
    /// Starts `kmsfs --keystore KS console --listen LISTEN`.
    pub fn start(ks: &Ks, listen: &str) -> Self {
        let log = ks.file("console.log");
        let mut child = kmsfs()
            .arg("--keystore")
            .arg(&ks.path)
            .args(["console", "--listen", listen])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start kmsfs console");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let (mut first, mut second) = (String::new(), String::new());
        out.read_line(&mut first).expect("first line");
        out.read_line(&mut second).expect("second line");
        let addr = first
            .trim()
            .strip_prefix("kmsfs console listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "no address from the console: {first:?}; log: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .trim_start_matches("http://")
            .to_string();
        let token = second
            .split("token=")
            .nth(1)
            .and_then(|t| t.split_whitespace().next())
            .unwrap_or_else(|| panic!("no token in {second:?}"))
            .to_string();
        Console {
            child,
            addr,
            token,
            log,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The login URL it printed.
    pub fn login_url(&self) -> String {
        format!("{}/login?token={}", self.base(), self.token)
    }

    /// One request; `headers` are added after Host.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Response {
        let mut s = TcpStream::connect(&self.addr).expect("connect to the console");
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes()).expect("send");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).expect("read the answer");
        Response::parse(&raw)
    }

    /// Logs in with the token: the session cookie (`name=value`).
    pub fn login(&self) -> String {
        let r = self.request("GET", &format!("/login?token={}", self.token), &[], "");
        assert_eq!(r.status, 303, "login: {}", r.body);
        let set = r.header("set-cookie").expect("a cookie");
        set.split(';').next().unwrap_or("").to_string()
    }

    /// A signed-in session: (cookie, CSRF token).
    pub fn session(&self) -> (String, String) {
        let cookie = self.login();
        let r = self.request("GET", "/api/session", &[("Cookie", &cookie)], "");
        assert_eq!(r.status, 200, "{}", r.body);
        let csrf = r.json()["csrf"].as_str().expect("csrf").to_string();
        (cookie, csrf)
    }

    /// A POST from the page: cookie and CSRF header.
    pub fn post(&self, session: &(String, String), path: &str, body: &str) -> Response {
        self.request(
            "POST",
            path,
            &[
                ("Cookie", &session.0),
                ("X-CSRF-Token", &session.1),
                ("Content-Type", "application/json"),
            ],
            body,
        )
    }

    /// A GET from the page.
    pub fn get(&self, session: &(String, String), path: &str) -> Response {
        self.request("GET", path, &[("Cookie", &session.0)], "")
    }

    /// Stops the console; returns its log.
    pub fn stop(&mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop();
        }
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    fn parse(raw: &[u8]) -> Self {
        let text = String::from_utf8_lossy(raw);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Response {
            status,
            headers,
            body: body.to_string(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}
