//! `kmsfs audit show`, `verify` and `public-key`: the keystore's audit trail
//! as a table or JSON lines (filtered, or followed as it grows), the check
//! of its hash chain and signatures (with the keystore, or of a copy with
//! only the public key), naming file and line of a break, and the public key.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::keystore::{keystore_dir, open_key_service};
use super::{CliError, ErrorClass, GlobalArgs, OutputFormat};
use crate::kms::audit::read::{Cursor, Line};
use crate::kms::audit::record::DIGEST_EVENT_TYPE;
use crate::kms::audit::sign::{VerifyKeys, fingerprint, parse_public_key, public_key_pem};
use crate::kms::audit::time;
use crate::kms::audit::trail::DIR_NAME;
use crate::kms::audit::verify::{Expected, Report};
use crate::kms::clock;

/// The audit subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// The records, as a table or (--output json) JSON lines.
    Show(ShowArgs),
    /// Check the trail's hash chain and signatures; exit 5 on any break.
    Verify(VerifyArgs),
    /// Print the Ed25519 public key that checks the trail's signatures (PEM).
    PublicKey,
}

/// Where `audit verify` looks and what it checks with.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// A copy of a trail (its `audit` directory, or the keystore directory
    /// holding one) instead of the keystore's own.
    #[arg(long, value_name = "DIR")]
    pub trail: Option<PathBuf>,
    /// Check with this public key (PEM, from `kmsfs audit public-key`)
    /// instead of the keystore, which is then not opened.
    #[arg(long, value_name = "FILE")]
    pub public_key: Option<PathBuf>,
}

/// Filters of `audit show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// Only records about this key (key id, key ARN, or an alias of this
    /// keystore: the key it points to now).
    #[arg(long)]
    pub key_id: Option<String>,
    /// Only this event (Decrypt, DisableKey, ...).
    #[arg(long)]
    pub event: Option<String>,
    /// Only this user (name or uid).
    #[arg(long)]
    pub user: Option<String>,
    /// From this time on (RFC 3339, YYYY-MM-DD, epoch seconds, or a time
    /// ago: 90s, 30m, 1h, 2d, 1w).
    #[arg(long)]
    pub since: Option<String>,
    /// Up to this time (the same forms).
    #[arg(long)]
    pub until: Option<String>,
    /// Only refusals (records with an errorCode).
    #[arg(long)]
    pub refused: bool,
    /// Keep printing new records as they are written.
    #[arg(long)]
    pub follow: bool,
}

/// Runs one audit subcommand.
pub fn run(g: &GlobalArgs, c: AuditCommand) -> Result<(), CliError> {
    match c {
        AuditCommand::Show(a) => show(g, a),
        AuditCommand::Verify(a) => verify(g, a),
        AuditCommand::PublicKey => public_key(g),
    }
}

fn trail_dir(g: &GlobalArgs) -> PathBuf {
    keystore_dir(g).join(DIR_NAME)
}

fn when(arg: &Option<String>, what: &str) -> Result<Option<i64>, CliError> {
    match arg {
        None => Ok(None),
        Some(s) => time::parse(s).map(Some).ok_or_else(|| {
            CliError::new(ErrorClass::Usage, format!("--{what} {s:?} is not a time")).hint(
                "give RFC 3339 (2026-12-02T10:00:00Z), a date (2026-12-02), epoch seconds, \
                     or a time ago (90s, 30m, 1h, 2d, 1w)",
            )
        }),
    }
}

struct Filter {
    key: Option<String>,
    event: Option<String>,
    user: Option<String>,
    since: Option<i64>,
    until: Option<i64>,
    refused: bool,
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

impl Filter {
    fn keeps(&self, r: &Value) -> bool {
        if r.get("eventType").and_then(Value::as_str) == Some(DIGEST_EVENT_TYPE) {
            return false;
        }
        if let Some(e) = &self.event
            && !str_at(r, &["eventName"]).is_some_and(|n| n.eq_ignore_ascii_case(e))
        {
            return false;
        }
        if self.refused && r.get("errorCode").is_none() {
            return false;
        }
        if let Some(u) = &self.user {
            let ident = &r["userIdentity"];
            let by_uid = ident["uid"].as_u64().map(|x| x.to_string()).as_deref() == Some(u);
            let by_name = ident["userName"].as_str() == Some(u.as_str());
            if !(by_uid || by_name) {
                return false;
            }
        }
        if self.since.is_some() || self.until.is_some() {
            let Some(t) = str_at(r, &["eventTime"]).and_then(clock::parse_rfc3339) else {
                return false;
            };
            if self.since.is_some_and(|s| t < s) || self.until.is_some_and(|u| t > u) {
                return false;
            }
        }
        if let Some(k) = &self.key {
            let id = k.rsplit("key/").next().unwrap_or(k);
            let arn_match = r["resources"].as_array().is_some_and(|a| {
                a.iter().any(|x| {
                    x["ARN"]
                        .as_str()
                        .is_some_and(|arn| arn == k || arn.ends_with(&format!("key/{id}")))
                })
            });
            let named = ["keyId", "aliasName", "targetKeyId", "destinationKeyId"]
                .iter()
                .any(|f| r["requestParameters"][f].as_str() == Some(k.as_str()));
            if !(arn_match || named) {
                return false;
            }
        }
        true
    }
}

/// One line of the table.
fn text_row(r: &Value) -> String {
    let ident = &r["userIdentity"];
    let user = match (ident["userName"].as_str(), ident["uid"].as_u64()) {
        (Some(n), Some(u)) => format!("{n}({u})"),
        (None, Some(u)) => u.to_string(),
        _ => "-".into(),
    };
    let process = match (ident["processName"].as_str(), ident["pid"].as_u64()) {
        (Some(n), Some(p)) => format!("{n}[{p}]"),
        (None, Some(p)) => format!("[{p}]"),
        _ => "-".into(),
    };
    let key = r["resources"][0]["ARN"]
        .as_str()
        .and_then(|a| a.rsplit("key/").next())
        .unwrap_or("-");
    let extra = &r["additionalEventData"];
    let mut path = extra["path"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_default();
    if extra["cacheHit"].as_bool() == Some(true) {
        path.push_str(" (cached)");
    }
    if let Some(n) = extra["aggregated"]["repeats"].as_u64() {
        path.push_str(&format!(" (x{n} more)"));
    }
    let result = match r["errorCode"].as_str() {
        Some(c) => c.to_string(),
        None => "ok".into(),
    };
    crate::logtext::one_line(&format!(
        "{:<20}  {:<22}  {:<16}  {:<6}  {:<24}  {:<36}  {:<24}  {}",
        str_at(r, &["eventTime"]).unwrap_or("-"),
        str_at(r, &["eventName"]).unwrap_or("-"),
        user,
        ident["source"].as_str().unwrap_or("-"),
        process,
        key,
        result,
        path
    ))
    .to_string()
}

fn print(r: &Value, json: bool) {
    if json {
        println!("{r}");
    } else {
        println!("{}", text_row(r));
    }
}

/// `kmsfs audit show`.
#[allow(clippy::disallowed_methods)] // a trail directory the user named, only read
pub fn show(g: &GlobalArgs, a: ShowArgs) -> Result<(), CliError> {
    // An alias means the key it names now (records name the key by id);
    // one the keystore does not know matches the records that named it.
    let key = a.key_id.map(|k| {
        open_key_service(g)
            .ok()
            .and_then(|ks| ks.resolve_key_id(&k))
            .unwrap_or(k)
    });
    let f = Filter {
        key,
        event: a.event,
        user: a.user,
        since: when(&a.since, "since")?,
        until: when(&a.until, "until")?,
        refused: a.refused,
    };
    let json = g.output == OutputFormat::Json;
    let dir = trail_dir(g);
    if !dir.exists() && !a.follow {
        return Err(CliError::new(
            ErrorClass::NotFound,
            format!("there is no audit trail in {}", dir.display()),
        )
        .hint("it is made with the first key operation on this keystore"));
    }
    if !json {
        println!(
            "{:<20}  {:<22}  {:<16}  {:<6}  {:<24}  {:<36}  {:<24}  PATH",
            "TIME", "EVENT", "USER", "SOURCE", "PROCESS", "KEY", "RESULT"
        );
    }
    let mut cursor = Cursor::start(&dir);
    loop {
        let lines: Vec<Line> = cursor.next_lines()?;
        for l in lines {
            match l.record() {
                Some(r) if f.keeps(&r) => print(&r, json),
                Some(_) => {}
                None => log::warn!(
                    "{}:{}: not a record (run `kmsfs audit verify`)",
                    l.file,
                    l.line
                ),
            }
        }
        if !a.follow {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The trail directory `--trail` names: an `audit` directory, or a
/// keystore directory holding one.
#[allow(clippy::disallowed_methods)] // a trail directory the user named, only read
fn given_trail(d: &std::path::Path) -> PathBuf {
    let inner = d.join(DIR_NAME);
    if inner.is_dir() && !d.join(crate::kms::audit::trail::HEAD_FILE).exists() {
        inner
    } else {
        d.to_path_buf()
    }
}

/// Reads `--public-key FILE`.
#[allow(clippy::disallowed_methods)] // a path the user named on the command line, used as given
fn read_public_key(p: &std::path::Path) -> Result<[u8; 32], CliError> {
    let text = std::fs::read_to_string(p).map_err(|e| {
        CliError::new(
            ErrorClass::NotFound,
            format!("cannot read the public key {}: {e}", p.display()),
        )
    })?;
    parse_public_key(&text).ok_or_else(|| {
        CliError::new(
            ErrorClass::Usage,
            format!("{} is not an Ed25519 public key", p.display()),
        )
        .hint("give the PEM that `kmsfs audit public-key` prints (or its 64 hex digits)")
    })
}

/// `kmsfs audit verify`.
pub fn verify(g: &GlobalArgs, a: VerifyArgs) -> Result<(), CliError> {
    let r = match &a.public_key {
        Some(pk) => {
            let dir = a
                .trail
                .as_deref()
                .map(given_trail)
                .unwrap_or_else(|| trail_dir(g));
            let e = Expected {
                keys: VerifyKeys {
                    hmac: None,
                    ed25519: Some(read_public_key(pk)?),
                    keystore_id: None,
                },
                floor: None,
            };
            check_trail_dir(&dir)?;
            crate::kms::audit::verify::verify(&dir, &e)?
        }
        None => {
            let ks = open_key_service(g)?;
            // Whatever this process queued is in the trail before it is checked.
            ks.flush_audit_trail();
            match &a.trail {
                Some(d) => {
                    let dir = given_trail(d);
                    check_trail_dir(&dir)?;
                    ks.verify_audit_trail_in(&dir)?
                }
                None => ks.verify_audit_trail()?,
            }
        }
    };
    report(g, &r)
}

/// A `--trail` that is not there is an error, not an empty trail.
#[allow(clippy::disallowed_methods)] // a trail directory the user named, only read
fn check_trail_dir(dir: &std::path::Path) -> Result<(), CliError> {
    if dir.is_dir() {
        return Ok(());
    }
    Err(CliError::new(
        ErrorClass::NotFound,
        format!("there is no audit trail in {}", dir.display()),
    ))
}

/// `kmsfs audit public-key`: a keystore made before Ed25519 gets its key
/// now (one keystore change, recorded).
pub fn public_key(g: &GlobalArgs) -> Result<(), CliError> {
    let ks = open_key_service(g)?;
    let pk = match ks.audit_public_key() {
        Some(pk) => pk,
        None => ks
            .ensure_audit_public_key()
            .map_err(|e| CliError::keystore(&keystore_dir(g), e))?,
    };
    let pem = public_key_pem(&pk);
    if g.output == OutputFormat::Json {
        println!(
            "{}",
            serde_json::json!({
                "PublicKey": pem,
                "Fingerprint": fingerprint(&pk),
                "KeystoreId": ks.keystore_id(),
            })
        );
    } else {
        print!("{pem}");
    }
    Ok(())
}

/// Prints what verify found; an error (exit 5) on any break.
fn report(g: &GlobalArgs, r: &Report) -> Result<(), CliError> {
    let json = g.output == OutputFormat::Json;
    if json {
        let problems: Vec<Value> = r
            .problems
            .iter()
            .map(|p| serde_json::json!({"file": p.file, "line": p.line, "problem": p.what}))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "Valid": r.ok(),
                "Files": r.files,
                "Records": r.records,
                "DigestsVerified": r.digests_verified,
                "DigestsUnchecked": r.digests_unchecked,
                "SignedThrough": r.signed_through,
                "Problems": problems,
                "Notes": r.notes,
            })
        );
    } else {
        for p in &r.problems {
            println!("{}", crate::logtext::one_line(&p.to_string()));
        }
        for n in &r.notes {
            println!("note: {n}");
        }
        println!(
            "{} record(s) in {} file(s); {} signed digest(s) verified; signed through record {}",
            r.records, r.files, r.digests_verified, r.signed_through
        );
    }
    if r.ok() {
        if !json {
            println!("the audit trail verifies");
        }
        Ok(())
    } else {
        Err(CliError::new(
            ErrorClass::Corrupt,
            format!(
                "the audit trail does not verify: {} problem(s), the first at {}",
                r.problems.len(),
                r.problems[0]
            ),
        )
        .hint(
            "the lines named were changed, deleted, inserted, moved or cut after they were written",
        ))
    }
}
