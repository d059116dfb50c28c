//! `kmsfs audit show`, `verify`, `prune` and `public-key`: the keystore's
//! audit trail as a table or JSON lines (filtered, or followed as it
//! grows), the check of its hash chain and signatures (with the keystore,
//! or of a copy with only the public key; with the archives of earlier
//! prunes), naming file and line of a break, retention (records before a
//! time removed behind a signed checkpoint), and the public key.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::keystore::{keystore_dir, open_key_service};
use super::{CliError, ErrorClass, GlobalArgs, OutputFormat};
use crate::kms::PruneFailure;
use crate::kms::audit::checkpoint::{self, Checkpoint};
use crate::kms::audit::prune::Pruned;
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
    /// Remove the records written before a time, leaving a signed
    /// checkpoint at the new start (root or the keystore's owner only).
    Prune(PruneArgs),
}

/// What `audit prune` removes and where it keeps it.
#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// Remove the records written before this time (RFC 3339, YYYY-MM-DD,
    /// epoch seconds, or a time ago: 30d, 12h, 1w). The last record stays.
    #[arg(long, value_name = "TIME")]
    pub before: String,
    /// First write the removed records to FILE (a new file), which
    /// verifies on its own and, with `audit verify --archive FILE`,
    /// together with the trail.
    #[arg(long, value_name = "FILE")]
    pub archive: Option<PathBuf>,
}

/// Where `audit verify` looks and what it checks with.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// A copy of a trail (its `audit` directory, or the keystore directory
    /// holding one) instead of the keystore's own; or an archive file that
    /// `audit prune --archive` wrote, checked on its own.
    #[arg(long, value_name = "DIR")]
    pub trail: Option<PathBuf>,
    /// An archive `audit prune --archive` wrote, checked before the trail
    /// as one chain with it (repeat for several, oldest first).
    #[arg(long, value_name = "FILE")]
    pub archive: Vec<PathBuf>,
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
        AuditCommand::Prune(a) => prune(g, a),
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
    if let Some(Ok(c)) = Checkpoint::parse(r) {
        path = checkpoint::describe(&c);
    }
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
#[allow(clippy::disallowed_methods)] // paths the user named, only read
pub fn verify(g: &GlobalArgs, a: VerifyArgs) -> Result<(), CliError> {
    let mut e = match &a.public_key {
        Some(pk) => Expected {
            keys: VerifyKeys {
                hmac: None,
                ed25519: Some(read_public_key(pk)?),
                keystore_id: None,
            },
            floor: None,
        },
        None => {
            let ks = open_key_service(g)?;
            // Whatever this process queued is in the trail before it is checked.
            ks.flush_audit_trail();
            ks.audit_expected()
        }
    };
    let mut archives = a.archive.clone();
    let dir = match a.trail.as_deref() {
        // An archive on its own: no trail, no position of the keystore.
        Some(t) if t.is_file() => {
            archives.push(t.to_path_buf());
            e.floor = None;
            None
        }
        Some(t) => {
            let d = given_trail(t);
            check_trail_dir(&d)?;
            Some(d)
        }
        // The keystore's own trail missing is a finding of verify's.
        None => Some(trail_dir(g)),
    };
    for f in &archives {
        if !f.is_file() {
            return Err(CliError::new(
                ErrorClass::NotFound,
                format!("there is no archive {}", f.display()),
            ));
        }
    }
    let r = crate::kms::audit::verify::verify_with_archives(&archives, dir.as_deref(), &e)?;
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
                "CheckpointsVerified": r.checkpoints_verified,
                "StartsAtCheckpoint": r.starts_at.as_ref().map(|c| serde_json::json!({
                    "PrunedFrom": c.from,
                    "PrunedThrough": c.through,
                    "PrunedRecords": c.records,
                    "FirstEventTime": time::format(c.first_time),
                    "LastEventTime": time::format(c.last_time),
                    "PrunedAt": time::format(c.pruned_at),
                })),
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

/// Only root or the keystore directory's owner may prune its trail.
#[allow(clippy::disallowed_methods)] // the keystore directory the user named, only stat'ed
fn may_administer(dir: &std::path::Path) -> Result<(), CliError> {
    use std::os::unix::fs::MetadataExt;
    let uid = crate::os::ids::effective_uid();
    let owner = match std::fs::metadata(dir) {
        Ok(m) => m.uid(),
        // Not there, or not visible to this user: opening it says which.
        Err(_) => return Ok(()),
    };
    if uid == 0 || uid == owner {
        return Ok(());
    }
    Err(CliError::new(
        ErrorClass::Refused,
        format!(
            "only root or the keystore's owner ({}) may prune its audit trail; you are {}",
            crate::kms::accounts::user_name(owner).unwrap_or_else(|| format!("uid {owner}")),
            crate::kms::accounts::user_name(uid).unwrap_or_else(|| format!("uid {uid}")),
        ),
    )
    .hint(format!(
        "ask the owner of {} (or root) to run `kmsfs audit prune`",
        dir.display()
    )))
}

/// `kmsfs audit prune`.
#[allow(clippy::disallowed_methods)] // a path the user named on the command line, only stat'ed
pub fn prune(g: &GlobalArgs, a: PruneArgs) -> Result<(), CliError> {
    let dir = keystore_dir(g);
    may_administer(&dir)?;
    let before = when(&Some(a.before.clone()), "before")?.unwrap_or(0);
    if let Some(f) = &a.archive
        && std::fs::symlink_metadata(f).is_ok()
    {
        return Err(CliError::new(
            ErrorClass::Usage,
            format!(
                "{} already exists; an archive is never overwritten",
                f.display()
            ),
        )
        .hint("name a new file"));
    }
    let ks = open_key_service(g)?;
    let (uid, gid) = crate::os::ids::ids();
    let caller = crate::kms::Caller {
        uid,
        gid,
        pid: std::process::id(),
        access_key: None,
    };
    let pruned = match ks.prune_audit_trail(&caller, before, a.archive.as_deref()) {
        Ok(p) => p,
        Err(PruneFailure::Corrupt(r)) => {
            for p in r.problems.iter().take(20) {
                eprintln!("{}", crate::logtext::one_line(&p.to_string()));
            }
            return Err(CliError::new(
                ErrorClass::Corrupt,
                format!(
                    "the audit trail does not verify ({} problem(s), the first at {}): \
                     nothing was pruned",
                    r.problems.len(),
                    r.problems
                        .first()
                        .map(|p| p.to_string())
                        .unwrap_or_default()
                ),
            )
            .hint("a checkpoint never vouches for a broken chain: see `kmsfs audit verify`"));
        }
        Err(PruneFailure::Kms(e)) => return Err(CliError::keystore(&dir, e)),
    };
    print_pruned(g, &a, before, pruned.as_ref());
    Ok(())
}

fn print_pruned(g: &GlobalArgs, a: &PruneArgs, before: i64, p: Option<&Pruned>) {
    let archive = a.archive.as_ref().map(|f| f.display().to_string());
    if g.output == OutputFormat::Json {
        let v = match p {
            Some(p) => serde_json::json!({
                "Pruned": true,
                "Before": time::format(before),
                "PrunedFrom": p.from,
                "PrunedThrough": p.through,
                "PrunedRecords": p.records,
                "FirstEventTime": time::format(p.first_time),
                "LastEventTime": time::format(p.last_time),
                "BytesBefore": p.bytes_before,
                "BytesAfter": p.bytes_after,
                "Archive": archive,
            }),
            None => serde_json::json!({"Pruned": false, "Before": time::format(before)}),
        };
        println!("{v}");
        return;
    }
    let Some(p) = p else {
        println!(
            "no record was written before {}: nothing was pruned",
            time::format(before)
        );
        return;
    };
    println!(
        "pruned records {}-{} ({} record(s) written from {} to {}); the trail's files went \
         from {} to {} bytes and start at a signed checkpoint",
        p.from,
        p.through,
        p.records,
        time::format(p.first_time),
        time::format(p.last_time),
        p.bytes_before,
        p.bytes_after
    );
    if let Some(f) = archive {
        println!("the removed records are in {f} (kmsfs audit verify --archive {f})");
    }
}
