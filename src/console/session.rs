//! Who may use the console: the login token printed at start, exchanged for
//! a session cookie (HttpOnly, SameSite=Strict), and each session's CSRF
//! token that every state-changing request carries in a header. Tokens are
//! random, compared in constant time, and never logged.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::crypto::{constant_time_eq, hex, random_array, sha256};

/// The session cookie's name.
pub const COOKIE: &str = "kmsfs_console";
/// The header a state-changing request carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// A session unused this long ends.
pub const IDLE: Duration = Duration::from_secs(12 * 3600);
/// Most sessions at once; a new one pushes out the least recently used.
pub const MAX_SESSIONS: usize = 64;

/// A random secret as 64 hex digits.
fn random_token() -> Result<String, crate::crypto::CryptoError> {
    Ok(hex(&random_array::<32>()?))
}

struct Session {
    csrf: String,
    last_used: Instant,
}

/// The login token and the sessions it opened.
pub struct Sessions {
    token: String,
    /// Keyed by the SHA-256 of the session id: a lookup by hash is not a
    /// byte-by-byte comparison of the secret.
    open: Mutex<HashMap<[u8; 32], Session>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sessions(..)")
    }
}

/// An open session, as a request found it.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// The token the page must send back in `CSRF_HEADER`.
    pub csrf: String,
}

impl Sessions {
    /// A fresh login token and no sessions.
    pub fn new() -> Result<Self, crate::crypto::CryptoError> {
        Ok(Self {
            token: random_token()?,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// The login token, for the URL printed at start.
    pub fn login_token(&self) -> &str {
        &self.token
    }

    /// Opens a session when `token` is the login token: the new session id
    /// (for the cookie).
    pub fn login(&self, token: &str) -> Option<String> {
        if !constant_time_eq(token.as_bytes(), self.token.as_bytes()) {
            return None;
        }
        let id = random_token().ok()?;
        let csrf = random_token().ok()?;
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|_, s| s.last_used.elapsed() < IDLE);
        if open.len() >= MAX_SESSIONS
            && let Some(oldest) = open
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| *k)
        {
            open.remove(&oldest);
        }
        open.insert(
            sha256(&[id.as_bytes()]),
            Session {
                csrf,
                last_used: Instant::now(),
            },
        );
        Some(id)
    }

    /// The session the request's `Cookie` header names, if it is open.
    pub fn find(&self, cookie_header: Option<&str>) -> Option<SessionInfo> {
        let id = cookie_value(cookie_header?, COOKIE)?;
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let key = sha256(&[id.as_bytes()]);
        let s = open.get_mut(&key)?;
        if s.last_used.elapsed() >= IDLE {
            open.remove(&key);
            return None;
        }
        s.last_used = Instant::now();
        Some(SessionInfo {
            csrf: s.csrf.clone(),
        })
    }

    /// Ends the session the cookie names.
    pub fn logout(&self, cookie_header: Option<&str>) {
        if let Some(id) = cookie_header.and_then(|c| cookie_value(c, COOKIE)) {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            open.remove(&sha256(&[id.as_bytes()]));
        }
    }
}

/// True when `sent` (the request's CSRF header) is the session's token.
pub fn csrf_ok(session: &SessionInfo, sent: Option<&str>) -> bool {
    sent.is_some_and(|t| constant_time_eq(t.as_bytes(), session.csrf.as_bytes()))
}

/// The value of cookie `name` in a `Cookie` header.
fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// The `Set-Cookie` value that opens session `id`: not readable by
/// scripts, never sent with a request another site starts.
pub fn set_cookie(id: &str) -> String {
    format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict")
}

/// The `Set-Cookie` value that ends the session in the browser.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_opens_a_session_and_nothing_else_does() {
        let s = Sessions::new().unwrap();
        assert!(s.login("").is_none());
        assert!(s.login(&"0".repeat(64)).is_none());
        let id = s.login(s.login_token()).unwrap();
        let header = format!("other=1; {COOKIE}={id}");
        let info = s.find(Some(&header)).unwrap();
        assert!(csrf_ok(&info, Some(&info.csrf)));
        assert!(!csrf_ok(&info, Some("forged")));
        assert!(!csrf_ok(&info, None));
        assert!(s.find(Some(&format!("{COOKIE}=x{id}"))).is_none());
        assert!(s.find(None).is_none());
        s.logout(Some(&header));
        assert!(s.find(Some(&header)).is_none());
    }

    #[test]
    fn sessions_are_capped() {
        let s = Sessions::new().unwrap();
        let t = s.login_token().to_string();
        let first = s.login(&t).unwrap();
        for _ in 0..MAX_SESSIONS {
            s.login(&t).unwrap();
        }
        assert!(s.find(Some(&format!("{COOKIE}={first}"))).is_none());
    }
}
