//! `kmsfs kms ...`: the key commands, named and shaped like `aws kms` (AWS CLI v2):
//! same subcommand and option names, `fileb://PATH` or base64 for binary input,
//! base64 for binary output, AWS API field names with `--output json`. This file
//! dispatches each subcommand to its one function (in `keys`, `aliases`,
//! `import`, `crypto`) and holds the argument readers they share.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use zeroize::Zeroizing;

use super::keystore::open_key_service;
use super::{CliError, ErrorClass, GlobalArgs, OutputFormat, current_caller};
use crate::kms::{Caller, EncryptionContext, LocalKeyStore, RequestContext};

mod aliases;
mod args;
mod crypto;
mod import;
mod keys;

pub use args::*;

/// What every key command works with: the service, who asks, and how to print.
struct Session {
    ks: Arc<LocalKeyStore>,
    caller: Caller,
    /// `caller` from the command line, for the key service's requests.
    rc: RequestContext<'static>,
    json: bool,
}

impl Session {
    /// The ARN of a key of this keystore.
    fn arn(&self, key_id: &str) -> String {
        self.ks.key_arn(key_id)
    }
}

/// Runs one key subcommand.
pub fn run(g: &GlobalArgs, c: KmsCommand) -> Result<(), CliError> {
    let name = command_name(&c);
    let session = open_key_service(g).map(|ks| Session {
        ks,
        caller: current_caller(),
        rc: super::cli_context(),
        // With --query or --output table the result is the JSON one, rendered
        // by `output` (AWS text rules, a table).
        json: g.output != OutputFormat::Text
            || g.query.is_some()
            || super::output::aws_text_requested(),
    });
    session
        .and_then(|s| dispatch(&s, c))
        .map_err(|e| e.with_kms_remedy(name, &super::keystore::keystore_dir(g)))
}

/// One call per subcommand.
fn dispatch(s: &Session, c: KmsCommand) -> Result<(), CliError> {
    use KmsCommand as K;
    match c {
        K::CreateKey(a) => keys::create_key(s, a),
        K::GetParametersForImport(a) => import::get_parameters_for_import(s, a),
        K::ImportKeyMaterial(a) => import::import_key_material(s, a),
        K::DeleteImportedKeyMaterial(a) => import::delete_imported_key_material(s, a),
        K::DescribeKey(a) => keys::describe_key(s, a),
        K::ListKeys(a) => keys::list_keys(s, a),
        K::EnableKey(a) => keys::enable_key(s, a),
        K::DisableKey(a) => keys::disable_key(s, a),
        K::ScheduleKeyDeletion(a) => keys::schedule_key_deletion(s, a),
        K::CancelKeyDeletion(a) => keys::cancel_key_deletion(s, a),
        K::RotateKeyOnDemand(a) => keys::rotate_key_on_demand(s, a),
        K::EnableKeyRotation(a) => keys::enable_key_rotation(s, a),
        K::DisableKeyRotation(a) => keys::disable_key_rotation(s, a),
        K::GetKeyRotationStatus(a) => keys::get_key_rotation_status(s, a),
        K::ListKeyRotations(a) => keys::list_key_rotations(s, a),
        K::PutKeyPolicy(a) => keys::put_key_policy(s, a),
        K::GetKeyPolicy(a) => keys::get_key_policy(s, a),
        K::CreateAlias(a) => aliases::create_alias(s, a),
        K::UpdateAlias(a) => aliases::update_alias(s, a),
        K::DeleteAlias(a) => aliases::delete_alias(s, a),
        K::ListAliases(a) => aliases::list_aliases(s, a),
        K::Encrypt(a) => crypto::encrypt(s, a),
        K::Decrypt(a) => crypto::decrypt(s, a),
        K::GenerateDataKey(a) => crypto::generate_data_key(s, a),
        K::GenerateDataKeyWithoutPlaintext(a) => crypto::generate_data_key_without_plaintext(s, a),
        K::ReEncrypt(a) => crypto::re_encrypt(s, a),
        K::GenerateRandom(a) => crypto::generate_random(s, a),
        K::UpdateKeyDescription(a) => keys::update_key_description(s, a),
        K::TagResource(a) => keys::tag_resource(s, a),
        K::UntagResource(a) => keys::untag_resource(s, a),
        K::ListResourceTags(a) => keys::list_resource_tags(s, a),
        K::ListKeyPolicies(a) => keys::list_key_policies(s, a),
        K::CreateGrant(a) => keys::create_grant(s, a),
        K::ListGrants(a) => keys::list_grants(s, a),
        K::ListRetirableGrants(a) => keys::list_retirable_grants(s, a),
        K::RetireGrant(a) => keys::retire_grant(s, a),
        K::RevokeGrant(a) => keys::revoke_grant(s, a),
    }
}

/// The kebab-case subcommand name (`ScheduleKeyDeletion` → `schedule-key-deletion`).
/// Static per variant: never formats the arguments (which may hold a plaintext).
fn command_name(c: &KmsCommand) -> &'static str {
    match c {
        KmsCommand::CreateKey(_) => "create-key",
        KmsCommand::GetParametersForImport(_) => "get-parameters-for-import",
        KmsCommand::ImportKeyMaterial(_) => "import-key-material",
        KmsCommand::DeleteImportedKeyMaterial(_) => "delete-imported-key-material",
        KmsCommand::DescribeKey(_) => "describe-key",
        KmsCommand::ListKeys(_) => "list-keys",
        KmsCommand::EnableKey(_) => "enable-key",
        KmsCommand::DisableKey(_) => "disable-key",
        KmsCommand::ScheduleKeyDeletion(_) => "schedule-key-deletion",
        KmsCommand::CancelKeyDeletion(_) => "cancel-key-deletion",
        KmsCommand::RotateKeyOnDemand(_) => "rotate-key-on-demand",
        KmsCommand::EnableKeyRotation(_) => "enable-key-rotation",
        KmsCommand::DisableKeyRotation(_) => "disable-key-rotation",
        KmsCommand::GetKeyRotationStatus(_) => "get-key-rotation-status",
        KmsCommand::ListKeyRotations(_) => "list-key-rotations",
        KmsCommand::PutKeyPolicy(_) => "put-key-policy",
        KmsCommand::GetKeyPolicy(_) => "get-key-policy",
        KmsCommand::CreateAlias(_) => "create-alias",
        KmsCommand::UpdateAlias(_) => "update-alias",
        KmsCommand::DeleteAlias(_) => "delete-alias",
        KmsCommand::ListAliases(_) => "list-aliases",
        KmsCommand::Encrypt(_) => "encrypt",
        KmsCommand::Decrypt(_) => "decrypt",
        KmsCommand::GenerateDataKey(_) => "generate-data-key",
        KmsCommand::GenerateDataKeyWithoutPlaintext(_) => "generate-data-key-without-plaintext",
        KmsCommand::ReEncrypt(_) => "re-encrypt",
        KmsCommand::GenerateRandom(_) => "generate-random",
        KmsCommand::UpdateKeyDescription(_) => "update-key-description",
        KmsCommand::TagResource(_) => "tag-resource",
        KmsCommand::UntagResource(_) => "untag-resource",
        KmsCommand::ListResourceTags(_) => "list-resource-tags",
        KmsCommand::ListKeyPolicies(_) => "list-key-policies",
        KmsCommand::CreateGrant(_) => "create-grant",
        KmsCommand::ListGrants(_) => "list-grants",
        KmsCommand::ListRetirableGrants(_) => "list-retirable-grants",
        KmsCommand::RetireGrant(_) => "retire-grant",
        KmsCommand::RevokeGrant(_) => "revoke-grant",
    }
}

/// `--cli-binary-format raw-in-base64-out` was given: inline and file://
/// blobs are their own bytes.
static RAW_BLOBS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Sets how `read_blob` reads inline and file:// blobs (once per command).
pub(crate) fn set_binary_format(f: Option<BinaryFormat>) {
    RAW_BLOBS.store(
        f == Some(BinaryFormat::RawInBase64Out),
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// Reads a binary argument: `fileb://PATH` is the file's bytes, `file://PATH`
/// is a file holding base64, anything else is base64 itself (as AWS CLI v2);
/// with `--cli-binary-format raw-in-base64-out` the text of the last two is
/// taken as it is (as AWS CLI v1).
#[allow(clippy::disallowed_methods)] // a path the user named on the command line, used as given
pub(super) fn read_blob(arg: &str, what: &str) -> Result<Zeroizing<Vec<u8>>, CliError> {
    // The error names the file, as every other missing file's does.
    let unread = |p: &str, e: std::io::Error| {
        let mut err = CliError::from(e);
        err.message = format!("{p}: {}", err.message);
        err.hint(format!("check the path given to --{what}"))
    };
    if let Some(p) = arg.strip_prefix("fileb://") {
        return std::fs::read(p)
            .map(Zeroizing::new)
            .map_err(|e| unread(p, e));
    }
    let text = match arg.strip_prefix("file://") {
        Some(p) => Zeroizing::new(std::fs::read_to_string(p).map_err(|e| unread(p, e))?),
        None => Zeroizing::new(arg.to_string()),
    };
    if RAW_BLOBS.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(Zeroizing::new(text.as_bytes().to_vec()));
    }
    let cleaned: Zeroizing<String> =
        Zeroizing::new(text.chars().filter(|c| !c.is_ascii_whitespace()).collect());
    B64.decode(cleaned.as_bytes())
        .map(Zeroizing::new)
        .map_err(|_| {
            CliError::new(ErrorClass::Usage, format!("--{what} is not valid base64"))
                .hint("give base64, or fileb://PATH to read raw bytes from a file")
        })
}

/// A `fileb://` file that holds base64 text (what `--output text` prints)
/// rather than the raw bytes: the remedy for the error it then causes.
pub(super) fn base64_file_hint(arg: &str, bytes: &[u8]) -> Option<String> {
    let p = arg.strip_prefix("fileb://")?;
    let text: Vec<u8> = bytes
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let looks = text.len() >= 8
        && text
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
        && B64.decode(&text).is_ok();
    looks.then(|| {
        format!(
            "{p} holds base64 text, not the raw blob: decode it (`base64 -d {p} > blob.bin`, \
             then fileb://blob.bin), or pass it as file://{p}"
        )
    })
}

/// One page of `items` after `marker` (an index this command printed as
/// NextMarker), at most `limit` long; the next page's marker, if any.
pub(super) fn page<T: Clone>(
    items: &[T],
    a: &ListArgs,
) -> Result<(Vec<T>, Option<String>), CliError> {
    let start = match &a.marker {
        None => 0,
        Some(m) => m
            .parse::<usize>()
            .ok()
            .filter(|i| *i <= items.len())
            .ok_or_else(|| {
                CliError::new(ErrorClass::Usage, format!("InvalidMarkerException: {m:?}"))
                    .hint("pass the NextMarker the previous page printed")
            })?,
    };
    let end = match a.limit {
        Some(l) => (start + l as usize).min(items.len()),
        None => items.len(),
    };
    let next = (end < items.len()).then(|| end.to_string());
    Ok((items[start..end].to_vec(), next))
}

pub(super) fn context(arg: &Option<String>) -> Result<EncryptionContext, CliError> {
    match arg {
        Some(s) => Ok(EncryptionContext::parse(s)?),
        None => Ok(EncryptionContext::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_names_are_the_aws_ones() {
        let c = KmsCommand::ScheduleKeyDeletion(ScheduleKeyDeletionArgs {
            key_id: "k".into(),
            pending_window_in_days: None,
        });
        assert_eq!(command_name(&c), "schedule-key-deletion");
        assert_eq!(
            command_name(&KmsCommand::ListKeys(ListArgs::default())),
            "list-keys"
        );
        let c = KmsCommand::GenerateDataKeyWithoutPlaintext(DataKeyArgs {
            key_id: "k".into(),
            key_spec: None,
            number_of_bytes: None,
            encryption_context: None,
            grant_tokens: vec![],
        });
        assert_eq!(command_name(&c), "generate-data-key-without-plaintext");
    }

    #[test]
    fn every_static_command_name_is_a_real_subcommand() {
        use clap::CommandFactory;
        #[derive(clap::Parser)]
        struct P {
            #[command(subcommand)]
            c: KmsCommand,
        }
        let real: Vec<String> = P::command()
            .get_subcommands()
            .map(|c| c.get_name().to_string())
            .collect();
        let src = include_str!("mod.rs");
        let body = &src[src.find("fn command_name").unwrap()..];
        let body = &body[..body.find("\n}\n").unwrap()];
        let named: Vec<&str> = body
            .lines()
            .filter_map(|l| l.split("=> \"").nth(1))
            .map(|r| r.trim_end_matches("\","))
            .collect();
        assert_eq!(named.len(), real.len(), "{named:?} vs {real:?}");
        for n in named {
            assert!(real.iter().any(|r| r == n), "{n} is no subcommand");
        }
    }

    /// The one list of operations (`kms::Operation`) reaches the command
    /// line: every operation the protocol serves is a `kmsfs kms`
    /// subcommand, by its AWS CLI name.
    #[test]
    fn every_served_operation_is_a_subcommand() {
        use clap::CommandFactory;
        #[derive(clap::Parser)]
        struct P {
            #[command(subcommand)]
            c: KmsCommand,
        }
        let cmd = P::command();
        for (_, name) in crate::kms::Operation::served() {
            let mut kebab = String::new();
            for (i, ch) in name.chars().enumerate() {
                if ch.is_ascii_uppercase() && i > 0 {
                    kebab.push('-');
                }
                kebab.push(ch.to_ascii_lowercase());
            }
            assert!(
                cmd.find_subcommand(&kebab).is_some(),
                "{name} has no `kmsfs kms {kebab}`"
            );
        }
    }
}
