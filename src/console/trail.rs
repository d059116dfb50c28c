//! The Trail page: the audit trail read from its end, a page at a time,
//! filtered here (key, user, operation, outcome, source, time), and followed
//! from a position as it grows; and the trail's verification, run at start
//! and again on demand. A position is `FILE.OFFSET`: the trail file's number
//! and the byte offset of a line in it. A page never reads more than
//! `SCAN_BUDGET` bytes: a filter that matches little answers with what it
//! found and where to go on, so no request holds the page for long.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use super::{ApiError, State};
use crate::kms::audit::record::DIGEST_EVENT_TYPE;
use crate::kms::audit::trail::{DIR_NAME, list_files};

/// Most records on one page.
pub(super) const MAX_PAGE: usize = 1000;
/// Most trail bytes one request reads.
pub(super) const SCAN_BUDGET: u64 = 64 << 20;
/// How much of a file is read at once, going backwards.
const CHUNK: u64 = 256 << 10;

/// A place in the trail: a file's number and a line's offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Pos {
    file: u32,
    offset: u64,
}

impl Pos {
    fn parse(s: &str) -> Option<Self> {
        let (f, o) = s.split_once('.')?;
        Some(Self {
            file: f.parse().ok()?,
            offset: o.parse().ok()?,
        })
    }

    fn text(self) -> String {
        format!("{}.{}", self.file, self.offset)
    }
}

/// What the page asked for.
#[derive(Debug, Default)]
struct Filter {
    key: Option<String>,
    user: Option<String>,
    event: Option<String>,
    /// `ok` or `refused`.
    outcome: Option<String>,
    source: Option<String>,
    since: Option<i64>,
    until: Option<i64>,
    /// Byte strings a kept line must contain (checked before parsing).
    needles: Vec<Vec<u8>>,
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

/// The key id a record is about (from its resource ARN).
fn record_key(r: &Value) -> Option<&str> {
    r["resources"][0]["ARN"]
        .as_str()
        .and_then(|a| a.rsplit("key/").next())
}

impl Filter {
    fn new(st: &State, q: &dyn Fn(&str) -> Option<String>) -> Result<Self, ApiError> {
        let given = |n: &str| q(n).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let time = |n: &str| -> Result<Option<i64>, ApiError> {
            match given(n) {
                None => Ok(None),
                Some(s) => crate::kms::audit::time::parse(&s).map(Some).ok_or_else(|| {
                    ApiError::new(400, "BadRequest", format!("{n} {s:?} is not a time"))
                }),
            }
        };
        // An alias means the key it names now, as in `audit show`.
        let key = given("key").map(|k| st.ks.resolve_key_id(&k).unwrap_or(k));
        let mut f = Filter {
            key,
            user: given("user"),
            event: given("event"),
            outcome: given("outcome").filter(|o| o == "ok" || o == "refused"),
            source: given("source"),
            since: time("since")?,
            until: time("until")?,
            needles: Vec::new(),
        };
        if let Some(k) = &f.key {
            f.needles.push(k.as_bytes().to_vec());
        }
        if let Some(u) = &f.user {
            f.needles.push(u.as_bytes().to_vec());
        }
        if let Some(e) = &f.event {
            f.needles
                .push(format!("\"eventName\":\"{e}\"").into_bytes());
        }
        if f.outcome.as_deref() == Some("refused") {
            f.needles.push(b"\"errorCode\"".to_vec());
        }
        Ok(f)
    }

    /// Worth parsing: every needle is in the line.
    fn may_keep(&self, line: &[u8]) -> bool {
        self.needles
            .iter()
            .all(|n| memchr::memmem::find(line, n).is_some())
    }

    fn keeps(&self, r: &Value) -> bool {
        if r.get("eventType").and_then(Value::as_str) == Some(DIGEST_EVENT_TYPE) {
            return false;
        }
        let ident = &r["userIdentity"];
        let checks = [
            self.event
                .as_ref()
                .is_none_or(|e| str_at(r, &["eventName"]) == Some(e.as_str())),
            self.outcome
                .as_deref()
                .is_none_or(|o| (o == "refused") == r.get("errorCode").is_some()),
            self.source
                .as_deref()
                .is_none_or(|s| ident["source"].as_str() == Some(s)),
            self.user.as_ref().is_none_or(|u| {
                ident["userName"].as_str() == Some(u.as_str())
                    || ident["uid"].as_u64().is_some_and(|x| x.to_string() == *u)
            }),
            self.key.as_ref().is_none_or(|k| {
                record_key(r) == Some(k.as_str())
                    || ["keyId", "aliasName", "targetKeyId", "destinationKeyId"]
                        .iter()
                        .any(|f| r["requestParameters"][f].as_str() == Some(k.as_str()))
            }),
        ];
        if checks.contains(&false) {
            return false;
        }
        if self.since.is_some() || self.until.is_some() {
            let Some(t) = str_at(r, &["eventTime"]).and_then(crate::kms::clock::parse_rfc3339)
            else {
                return false;
            };
            if self.since.is_some_and(|s| t < s) || self.until.is_some_and(|u| t > u) {
                return false;
            }
        }
        true
    }

    /// The row for `line` at `pos`, when the filter keeps it.
    fn row(&self, pos: Pos, line: &[u8]) -> Option<Value> {
        if !self.may_keep(line) {
            return None;
        }
        let r: Value = serde_json::from_slice(line).ok()?;
        self.keeps(&r).then(|| row(&r, pos))
    }
}

/// What the table shows of a record.
fn row(r: &Value, pos: Pos) -> Value {
    let ident = &r["userIdentity"];
    let extra = &r["additionalEventData"];
    json!({
        "Pos": pos.text(),
        "Time": r["eventTime"],
        "Event": r["eventName"],
        "User": ident["userName"],
        "Uid": ident["uid"],
        "Source": ident["source"],
        "Process": ident["processName"],
        "Pid": ident["pid"],
        "Key": record_key(r),
        "Version": r["resources"][0]["keyMaterialId"],
        "Result": r.get("errorCode").cloned().unwrap_or(json!("ok")),
        // A prune's checkpoint says what it stands for.
        "Message": match crate::kms::audit::checkpoint::Checkpoint::parse(r) {
            Some(Ok(c)) => json!(crate::kms::audit::checkpoint::describe(&c)),
            _ => r["errorMessage"].clone(),
        },
        "Path": extra["path"],
        "Cached": extra["cacheHit"].as_bool().unwrap_or(false),
    })
}

#[allow(clippy::disallowed_methods)] // in the keystore directory, which trust.rs checks is writable by its owner and root only
fn open(p: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(p)
}

/// Calls `each(offset, line)` for the complete lines of `p` that end at or
/// before `end`, last first, until it returns false. Returns the bytes read.
fn lines_back(p: &Path, end: u64, each: &mut dyn FnMut(u64, &[u8]) -> bool) -> io::Result<u64> {
    let mut f = open(p)?;
    let end = end.min(f.metadata()?.len());
    let mut pos = end;
    let mut carry: Vec<u8> = Vec::new();
    let mut first = true;
    let mut read = 0;
    while pos > 0 {
        let start = pos.saturating_sub(CHUNK);
        let mut buf = vec![0u8; (pos - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut buf)?;
        read += buf.len() as u64;
        buf.extend_from_slice(&carry);
        if first {
            // A line still being written (or torn) is not a record yet.
            first = false;
            match memchr::memrchr(b'\n', &buf) {
                Some(j) => buf.truncate(j + 1),
                None if start == 0 => return Ok(read),
                None => {
                    carry = buf;
                    pos = start;
                    first = true;
                    continue;
                }
            }
        }
        // `buf` holds [start, start + len): whole lines, but for the first
        // one, which may have begun before `start`.
        let mut e = buf.len();
        while e > 0 {
            let body_end = e - 1;
            match memchr::memrchr(b'\n', &buf[..body_end]) {
                Some(j) => {
                    if !each(start + j as u64 + 1, &buf[j + 1..body_end]) {
                        return Ok(read);
                    }
                    e = j + 1;
                }
                None if start == 0 => {
                    each(0, &buf[..body_end]);
                    return Ok(read);
                }
                None => break,
            }
        }
        buf.truncate(e);
        carry = buf;
        pos = start;
    }
    Ok(read)
}

/// The end of the trail: the last file and the end of its last complete line.
fn head(files: &[(u32, PathBuf)]) -> Pos {
    let Some((n, p)) = files.last() else {
        return Pos { file: 0, offset: 0 };
    };
    let mut offset = 0;
    let _ = lines_back(p, u64::MAX, &mut |o, l| {
        offset = o + l.len() as u64 + 1;
        false
    });
    Pos { file: *n, offset }
}

/// Rows before `before` (newest first), at most `limit`, within the budget.
/// Returns them and where to go on (None: the start was reached).
#[allow(clippy::disallowed_methods)] // in the keystore directory, which trust.rs checks is writable by its owner and root only
fn older(
    files: &[(u32, PathBuf)],
    before: Pos,
    limit: usize,
    f: &Filter,
) -> io::Result<(Vec<Value>, Option<Pos>)> {
    let mut rows = Vec::new();
    let mut scanned = 0;
    for (n, p) in files.iter().rev() {
        if *n > before.file {
            continue;
        }
        let len = std::fs::metadata(p)?.len();
        let end = if *n == before.file {
            before.offset.min(len)
        } else {
            len
        };
        let mut stopped_at = None;
        lines_back(p, end, &mut |o, line| {
            let pos = Pos {
                file: *n,
                offset: o,
            };
            if let Some(r) = f.row(pos, line) {
                rows.push(r);
            }
            if rows.len() >= limit || scanned + (end - o) >= SCAN_BUDGET {
                stopped_at = Some(pos);
                return false;
            }
            true
        })?;
        if let Some(pos) = stopped_at {
            let more = pos.offset > 0 || files.iter().any(|(m, _)| m < n);
            return Ok((rows, more.then_some(pos)));
        }
        scanned += end;
    }
    Ok((rows, None))
}

/// Rows from `after` to the end (oldest first), at most `limit`. Returns
/// them and the position after the last line read.
fn newer(
    files: &[(u32, PathBuf)],
    after: Pos,
    limit: usize,
    f: &Filter,
) -> io::Result<(Vec<Value>, Pos)> {
    let mut rows = Vec::new();
    let mut at = after;
    for (n, p) in files {
        if *n < after.file {
            continue;
        }
        let mut offset = if *n == after.file { after.offset } else { 0 };
        let mut r = BufReader::new(open(p)?);
        r.seek(SeekFrom::Start(offset))?;
        let mut line = Vec::new();
        loop {
            line.clear();
            let got = r.read_until(b'\n', &mut line)?;
            if got == 0 || line.last() != Some(&b'\n') {
                break;
            }
            let pos = Pos { file: *n, offset };
            offset += got as u64;
            at = Pos { file: *n, offset };
            if let Some(row) = f.row(pos, &line[..line.len() - 1]) {
                rows.push(row);
                if rows.len() >= limit {
                    return Ok((rows, at));
                }
            }
        }
        at = Pos { file: *n, offset };
    }
    Ok((rows, at))
}

/// `GET /api/trail?before=|after=&limit=&key=&user=&event=&outcome=&source=&since=&until=`:
/// without `after`, a page going back from `before` (or the end), newest
/// first, with `Older` to go on from and `Head` to follow from; with
/// `after`, what was appended since, oldest first.
pub(super) fn page(st: &State, q: &dyn Fn(&str) -> Option<String>) -> Result<Value, ApiError> {
    let f = Filter::new(st, q)?;
    let limit: usize = q("limit")
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
        .clamp(1, MAX_PAGE);
    let dir = st.ks.dir().join(DIR_NAME);
    let files = match list_files(&dir) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(ApiError::new(500, "TrailUnreadable", e.to_string())),
    };
    let io_err = |e: io::Error| ApiError::new(500, "TrailUnreadable", e.to_string());
    if let Some(after) = q("after").and_then(|s| Pos::parse(&s)) {
        let (rows, head) = newer(&files, after, limit, &f).map_err(io_err)?;
        return Ok(json!({ "Rows": rows, "Head": head.text() }));
    }
    let end = head(&files);
    let before = q("before").and_then(|s| Pos::parse(&s)).unwrap_or(end);
    let (rows, next) = older(&files, before, limit, &f).map_err(io_err)?;
    Ok(json!({
        "Rows": rows,
        "Older": next.map(Pos::text),
        "Head": end.text(),
        "Files": files.len(),
    }))
}

/// The last verification of the trail (Null before the first).
#[derive(Debug, Default)]
pub(super) struct VerifyState {
    last: Mutex<Value>,
    running: Mutex<()>,
}

impl VerifyState {
    /// The last result, or `{"Running": true}` while the first runs.
    pub(super) fn get(&self) -> Value {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// `POST /api/trail/verify`: verifies the trail now (after whatever this
/// process queued is written) and keeps the result.
pub(super) fn run_verify(st: &State) -> Value {
    let _one = st.verify.running.lock().unwrap_or_else(|e| e.into_inner());
    let started = std::time::Instant::now();
    st.ks.flush_audit_trail();
    let v = match st.ks.verify_audit_trail() {
        Ok(r) => json!({
            "Valid": r.ok(),
            "Files": r.files,
            "Records": r.records,
            "DigestsVerified": r.digests_verified,
            "SignedThrough": r.signed_through,
            "StartsAtCheckpoint": r.starts_at.as_ref().map(crate::kms::audit::checkpoint::describe),
            "ProblemCount": r.problems.len(),
            "Problems": r.problems.iter().take(20)
                .map(|p| json!({"File": p.file, "Line": p.line, "Problem": p.what}))
                .collect::<Vec<_>>(),
            "Notes": r.notes,
            "CheckedAt": crate::kms::clock::now().unwrap_or(0),
            "Millis": started.elapsed().as_millis() as u64,
        }),
        Err(e) => json!({ "Valid": false, "Error": e.to_string() }),
    };
    *st.verify.last.lock().unwrap_or_else(|e| e.into_inner()) = v.clone();
    v
}

/// Verifies the trail once in the background at start.
pub(super) fn start_verify(st: &Arc<State>) {
    *st.verify.last.lock().unwrap_or_else(|e| e.into_inner()) = json!({ "Running": true });
    let st = st.clone();
    let _ = std::thread::Builder::new()
        .name("kmsfs-console-verify".into())
        .spawn(move || {
            run_verify(&st);
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(p: &Path, end: u64) -> Vec<(u64, String)> {
        let mut v = Vec::new();
        lines_back(p, end, &mut |o, l| {
            v.push((o, String::from_utf8_lossy(l).into_owned()));
            true
        })
        .unwrap();
        v
    }

    #[test]
    fn lines_back_reads_every_complete_line_last_first() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t");
        // Lines around and across the chunk size, and a torn last line.
        let mut text = String::new();
        let mut want = Vec::new();
        for i in 0..2000usize {
            let line = "x".repeat((i * 977) % 700 + if i == 5 { CHUNK as usize } else { 0 });
            want.push((text.len() as u64, format!("{i}{line}")));
            text.push_str(&format!("{i}{line}\n"));
        }
        let full = text.len() as u64;
        text.push_str("{\"torn");
        std::fs::write(&p, &text).unwrap();
        let got = collect(&p, u64::MAX);
        let mut rev = want.clone();
        rev.reverse();
        assert_eq!(got, rev);
        // From a line's offset: the lines before it.
        let (o, _) = want[1000];
        let got = collect(&p, o);
        assert_eq!(got.len(), 1000);
        assert_eq!(got[0], want[999]);
        assert_eq!(
            head(&[(1, p.clone())]),
            Pos {
                file: 1,
                offset: full
            }
        );
    }

    #[test]
    fn positions() {
        let p = Pos::parse("3.1024").unwrap();
        assert_eq!(
            p,
            Pos {
                file: 3,
                offset: 1024
            }
        );
        assert_eq!(Pos::parse(&p.text()), Some(p));
        assert_eq!(Pos::parse("3"), None);
        assert_eq!(Pos::parse("a.b"), None);
    }
}
