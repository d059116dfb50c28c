//! `kmsfs access-key create|list|delete`: the access keys that sign requests
//! to `kmsfs kms serve`, each acting as a Unix user for key policies. `create`
//! prints the new key as `aws iam create-access-key` does; the secret is shown
//! only then, through a zeroized buffer.

use std::path::Path;

use zeroize::Zeroizing;

use super::{CliError, ErrorClass, GlobalArgs, OutputFormat, keystore};
use crate::kms::{LocalKeyStore, clock};

/// `kmsfs access-key ...`.
#[derive(Debug, clap::Subcommand)]
pub enum AccessKeyCommand {
    /// Create an access key acting as a user (--uid N or --user NAME).
    Create(CreateArgs),
    /// List access keys (never their secrets).
    List,
    /// Delete an access key: requests signed with it are refused from now on.
    Delete(DeleteArgs),
}

/// Arguments of `access-key create`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("who").required(true).args(["uid", "user"])))]
pub struct CreateArgs {
    /// The user id that requests signed with the key act as.
    #[arg(long, value_name = "N")]
    pub uid: Option<u32>,
    /// The user (from /etc/passwd) that requests signed with the key act as.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// The group id [default: the user's primary group, else the uid].
    #[arg(long, value_name = "N")]
    pub gid: Option<u32>,
}

/// Arguments of `access-key delete`.
#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// The access key id (AKIA...).
    #[arg(long, value_name = "ID")]
    pub access_key_id: String,
}

/// (uid, primary gid) of `name`, or of `uid`, from /etc/passwd.
#[allow(clippy::disallowed_methods)] // a system file (/proc, /sys, /etc), not a tree a user can write
fn passwd_lookup(name: Option<&str>, uid: Option<u32>) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        let (n, u, g) = (f.first()?, f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?);
        let hit = match (name, uid) {
            (Some(want), _) => *n == want,
            (None, Some(want)) => u == want,
            (None, None) => false,
        };
        hit.then_some((u, g))
    })
}

/// Runs one access-key subcommand.
pub fn run(g: &GlobalArgs, c: AccessKeyCommand) -> Result<(), CliError> {
    let dir = keystore::keystore_dir(g);
    let ks = keystore::open_key_service(g)?;
    match c {
        AccessKeyCommand::Create(a) => create(&dir, &ks, a),
        AccessKeyCommand::List => list(g, &dir, &ks),
        AccessKeyCommand::Delete(a) => Ok(ks
            .delete_access_key(&a.access_key_id)
            .map_err(|e| CliError::keystore(&dir, e))?),
    }
}

/// `access-key create`: makes the key and prints it, secret included, as
/// `aws iam create-access-key` does.
fn create(dir: &Path, ks: &LocalKeyStore, a: CreateArgs) -> Result<(), CliError> {
    let (uid, gid) = match (&a.user, a.uid) {
        (Some(name), _) => passwd_lookup(Some(name), None).ok_or_else(|| {
            CliError::new(
                ErrorClass::NotFound,
                format!("no user {name:?} in /etc/passwd"),
            )
            .hint("give --uid N instead")
        })?,
        (None, Some(uid)) => passwd_lookup(None, Some(uid)).unwrap_or((uid, uid)),
        (None, None) => {
            return Err(CliError::new(
                ErrorClass::Usage,
                "give --uid N or --user NAME",
            ));
        }
    };
    let gid = a.gid.unwrap_or(gid);
    let k = ks
        .create_access_key(uid, gid)
        .map_err(|e| CliError::keystore(dir, e))?;
    let created = clock::format_rfc3339(clock::now().unwrap_or(0));
    let mut out = Zeroizing::new(String::with_capacity(256));
    // Ids are A-Z2-7, secrets base64: nothing to escape.
    for part in [
        "{\n    \"AccessKey\": {\n        \"UserName\": \"uid:",
        &uid.to_string(),
        "\",\n        \"AccessKeyId\": \"",
        &k.access_key_id,
        "\",\n        \"Status\": \"Active\",\n        \"SecretAccessKey\": \"",
    ] {
        out.push_str(part);
    }
    out.extend(k.secret_access_key.expose().iter().map(|&b| b as char));
    for part in ["\",\n        \"CreateDate\": \"", &created, "\"\n    }\n}"] {
        out.push_str(part);
    }
    println!("{}", *out);
    Ok(())
}

/// `access-key list`: the keys (never their secrets), as JSON or a table.
fn list(g: &GlobalArgs, dir: &Path, ks: &LocalKeyStore) -> Result<(), CliError> {
    let list = ks
        .list_access_keys()
        .map_err(|e| CliError::keystore(dir, e))?;
    if g.output == OutputFormat::Json {
        let v: Vec<serde_json::Value> = list
            .iter()
            .map(|k| {
                serde_json::json!({
                    "AccessKeyId": k.access_key_id,
                    "UserName": format!("uid:{}", k.uid),
                    "Uid": k.uid,
                    "Gid": k.gid,
                    "Status": "Active",
                    "CreateDate": clock::format_rfc3339(k.create_date),
                })
            })
            .collect();
        crate::cli::output::print_report(&serde_json::json!({ "AccessKeyMetadata": v }));
    } else {
        println!(
            "{:<20}  {:>6}  {:>6}  CREATED",
            "ACCESS KEY ID", "UID", "GID"
        );
        for k in list {
            println!(
                "{:<20}  {:>6}  {:>6}  {}",
                k.access_key_id,
                k.uid,
                k.gid,
                clock::format_rfc3339(k.create_date)
            );
        }
    }
    Ok(())
}
