//! `kmsfs audit show` and `kmsfs audit verify`: the keystore's audit trail
//! as a table or JSON lines (filtered, or followed as it grows), and the
//! check of its hash chain and signatures, naming file and line of a break.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::keystore::{keystore_dir, open_key_service};
use super::{CliError, ErrorClass, GlobalArgs, OutputFormat};
use crate::kms::audit::read::{Cursor, Line};
use crate::kms::audit::record::DIGEST_EVENT_TYPE;
use crate::kms::audit::time;
use crate::kms::audit::trail::DIR_NAME;
use crate::kms::clock;

/// The audit subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// The records, as a table or (--output json) JSON lines.
    Show(ShowArgs),
    /// Check the trail's hash chain and signatures; exit 5 on any break.
    Verify,
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
    /// From this time on (RFC 3339, YYYY-MM-DD, or epoch seconds).
    #[arg(long)]
    pub since: Option<String>,
    /// Up to this time.
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
        AuditCommand::Verify => verify(g),
    }
}

fn trail_dir(g: &GlobalArgs) -> PathBuf {
    keystore_dir(g).join(DIR_NAME)
}

fn when(arg: &Option<String>, what: &str) -> Result<Option<i64>, CliError> {
    match arg {
        None => Ok(None),
        Some(s) => time::parse(s).map(Some).ok_or_else(|| {
            CliError::new(ErrorClass::Usage, format!("--{what} {s:?} is not a time"))
                .hint("give RFC 3339 (2026-12-02T10:00:00Z), a date (2026-12-02) or epoch seconds")
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

/// `kmsfs audit verify`.
pub fn verify(g: &GlobalArgs) -> Result<(), CliError> {
    let ks = open_key_service(g)?;
    // Whatever this process queued is in the trail before it is checked.
    ks.flush_audit_trail();
    let r = ks.verify_audit_trail()?;
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
