//! The key commands: create, describe and list keys, their states (enable,
//! disable, deletion), rotation, key policies, descriptions and tags.

use serde_json::{Value, json};

use super::args::{
    CreateGrantArgs, CreateKeyArgs, EnableKeyRotationArgs, GetKeyPolicyArgs, KeyIdArg, ListArgs,
    ListGrantsArgs, ListResourceTagsArgs, ListRetirableGrantsArgs, OriginArg, PutKeyPolicyArgs,
    RetireGrantArgs, RevokeGrantArgs, ScheduleKeyDeletionArgs, TagResourceArgs, UntagResourceArgs,
    UpdateKeyDescriptionArgs,
};
use super::{Session, page};
use crate::cli::CliError;
use crate::cli::output::{metadata_json, print_json, print_metadata};
use crate::kms::{KeyOrigin, KeyServiceExt, clock};

/// `create-key`.
pub(super) fn create_key(s: &Session, a: CreateKeyArgs) -> Result<(), CliError> {
    let origin = match a.origin {
        OriginArg::AwsKms => KeyOrigin::Kms,
        OriginArg::External => KeyOrigin::External,
    };
    let m = match &a.policy {
        Some(p) => s.ks.create_key_with_policy(
            &s.caller,
            &a.description,
            origin,
            &policy_text(p)?,
            a.bypass_policy_lockout_safety_check,
        )?,
        None => {
            s.ks.create_key_with_origin(&s.caller, &a.description, origin)?
        }
    };
    if s.json {
        print_json(&json!({ "KeyMetadata": metadata_json(&m) }));
    } else {
        print_metadata(&m, &[]);
    }
    Ok(())
}

/// `describe-key`.
pub(super) fn describe_key(s: &Session, a: KeyIdArg) -> Result<(), CliError> {
    let m = s.ks.describe_key(&s.rc, &a.key_id)?;
    if s.json {
        print_json(&json!({ "KeyMetadata": metadata_json(&m) }));
    } else {
        let aliases: Vec<String> =
            s.ks.list_aliases(&s.caller, Some(&m.key_id))
                .map(|v| v.into_iter().map(|a| a.alias_name).collect())
                .unwrap_or_default();
        print_metadata(&m, &aliases);
    }
    Ok(())
}

/// `list-keys`.
pub(super) fn list_keys(s: &Session, a: ListArgs) -> Result<(), CliError> {
    if s.json {
        let (keys, next) = page(&s.ks.list_keys(&s.caller)?, &a)?;
        let mut v = json!({ "Keys": keys, "Truncated": next.is_some() });
        if let Some(m) = next {
            v["NextMarker"] = json!(m);
        }
        print_json(&v);
        return Ok(());
    }
    let (keys, _) = page(&s.ks.list_key_metadata(&s.caller)?, &a)?;
    let aliases = s.ks.list_aliases(&s.caller, None)?;
    println!(
        "{:<36}  {:<15}  {:<20}  {:<24}  DESCRIPTION",
        "KEY ID", "STATE", "CREATED", "ALIASES"
    );
    for m in keys {
        let names: Vec<&str> = aliases
            .iter()
            .filter(|a| a.target_key_id == m.key_id)
            .map(|a| a.alias_name.as_str())
            .collect();
        println!(
            "{:<36}  {:<15}  {:<20}  {:<24}  {}",
            m.key_id,
            m.key_state.as_str(),
            clock::format_rfc3339(m.creation_date),
            names.join(","),
            m.description
        );
    }
    Ok(())
}

/// `enable-key`.
pub(super) fn enable_key(s: &Session, a: KeyIdArg) -> Result<(), CliError> {
    Ok(s.ks.enable_key(&s.caller, &a.key_id)?)
}

/// `disable-key`.
pub(super) fn disable_key(s: &Session, a: KeyIdArg) -> Result<(), CliError> {
    Ok(s.ks.disable_key(&s.caller, &a.key_id)?)
}

/// `schedule-key-deletion`.
pub(super) fn schedule_key_deletion(
    s: &Session,
    a: ScheduleKeyDeletionArgs,
) -> Result<(), CliError> {
    let d =
        s.ks.schedule_key_deletion(&s.caller, &a.key_id, a.pending_window_in_days)?;
    if s.json {
        print_json(&serde_json::to_value(&d).unwrap_or(Value::Null));
    } else {
        println!(
            "key {} is pending deletion: it will be deleted for good on {} ({} days); \
             undo with cancel-key-deletion before then",
            d.key_id,
            clock::format_rfc3339(d.deletion_date),
            d.pending_window_in_days
        );
    }
    warn_protected_files(s, &d.key_id, d.deletion_date);
    Ok(())
}

/// Warns (stderr) about the files a key scheduled for deletion still
/// protects in the backing directories this keystore knows of.
fn warn_protected_files(s: &Session, key: &str, date: i64) {
    // The answer names the key by ARN (as AWS does); headers by key id.
    let key = key.rsplit(['/', ':']).next().unwrap_or(key);
    for dir in crate::tree::known_backings(s.ks.dir()) {
        let (files, bytes) = crate::tree::protected_by(&dir, key);
        if files > 0 {
            eprintln!(
                "kmsfs: warning: key {key} still protects {files} files ({bytes} bytes) in {}: \
                 they become unreadable for good on {} unless the deletion is cancelled\n  \
                 hint: `kmsfs rewrap {} --from-key-id {key} --to-key-id NEW` moves them first",
                dir.display(),
                clock::format_rfc3339(date),
                dir.display()
            );
        }
    }
}

/// `cancel-key-deletion`.
pub(super) fn cancel_key_deletion(s: &Session, a: KeyIdArg) -> Result<(), CliError> {
    let key = s.ks.cancel_key_deletion(&s.caller, &a.key_id)?;
    if s.json {
        // AWS returns the key ARN here, and so does the key service.
        print_json(&json!({ "KeyId": key }));
    } else {
        println!(
            "deletion of {key} cancelled; the key is Disabled (use enable-key to use it again)"
        );
    }
    Ok(())
}

/// `rotate-key-on-demand`.
pub(super) fn rotate_key_on_demand(s: &Session, a: KeyIdArg) -> Result<(), CliError> {
    let (key, version) = s.ks.rotate_key_on_demand(&s.caller, &a.key_id)?;
    if s.json {
        // AWS returns the key id here (not the ARN).
        print_json(&json!({ "KeyId": key }));
    } else {
        println!("key {key} rotated: key material version {version} is now current");
    }
    Ok(())
}

/// `enable-key-rotation`.
pub(super) fn enable_key_rotation(s: &Session, a: EnableKeyRotationArgs) -> Result<(), CliError> {
    Ok(s.ks.enable_key_rotation(&s.caller, &a.key_id, a.rotation_period_in_days)?)
}

/// `disable-key-rotation`.
pub(super) fn disable_key_rotation(s: &Session, a: KeyIdArg) -> Result<(), CliError> {
    Ok(s.ks.disable_key_rotation(&s.caller, &a.key_id)?)
}

/// `get-key-rotation-status`.
pub(super) fn get_key_rotation_status(s: &Session, a: KeyIdArg) -> Result<(), CliError> {
    let st = s.ks.get_key_rotation_status(&s.caller, &a.key_id)?;
    if s.json {
        print_json(&serde_json::to_value(&st).unwrap_or(Value::Null));
        return Ok(());
    }
    println!("KeyRotationEnabled:   {}", st.key_rotation_enabled);
    if let Some(d) = st.rotation_period_in_days {
        println!("RotationPeriodInDays: {d}");
    }
    if let Some(t) = st.next_rotation_date {
        println!("NextRotationDate:     {}", clock::format_rfc3339(t));
    }
    Ok(())
}

/// `list-key-rotations`.
pub(super) fn list_key_rotations(s: &Session, a: KeyIdArg) -> Result<(), CliError> {
    let list = s.ks.list_key_rotations(&s.caller, &a.key_id)?;
    if s.json {
        print_json(&json!({ "Rotations": list, "Truncated": false }));
        return Ok(());
    }
    println!("{:<8}  {:<20}  TYPE", "VERSION", "ROTATED");
    for r in list {
        let t = serde_json::to_value(r.rotation_type).unwrap_or(Value::Null);
        println!(
            "{:<8}  {:<20}  {}",
            r.key_material_version,
            clock::format_rfc3339(r.rotation_date),
            t.as_str().unwrap_or("")
        );
    }
    Ok(())
}

/// `put-key-policy`.
pub(super) fn put_key_policy(s: &Session, a: PutKeyPolicyArgs) -> Result<(), CliError> {
    let text = policy_text(&a.policy)?;
    Ok(s.ks.put_key_policy_checked(
        &s.caller,
        &a.key_id,
        &a.policy_name,
        &text,
        a.bypass_policy_lockout_safety_check,
    )?)
}

/// A `--policy` argument: the text, or the file `file://PATH` names.
#[allow(clippy::disallowed_methods)] // a path the user named on the command line, used as given
fn policy_text(arg: &str) -> Result<String, CliError> {
    match arg.strip_prefix("file://") {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| CliError::from(e).hint("check the path given to --policy file://PATH")),
        None => Ok(arg.to_string()),
    }
}

/// `get-key-policy`.
pub(super) fn get_key_policy(s: &Session, a: GetKeyPolicyArgs) -> Result<(), CliError> {
    let doc = s.ks.get_key_policy(&s.caller, &a.key_id, &a.policy_name)?;
    let pretty = serde_json::to_string_pretty(&doc).unwrap_or_default();
    if s.json {
        print_json(&json!({ "Policy": pretty, "PolicyName": a.policy_name }));
    } else {
        println!("{pretty}");
    }
    Ok(())
}

/// `update-key-description`.
pub(super) fn update_key_description(
    s: &Session,
    a: UpdateKeyDescriptionArgs,
) -> Result<(), CliError> {
    Ok(s.ks.update_key_description(&s.caller, &a.key_id, &a.description)?)
}

/// The `--tags` of `tag-resource`: the AWS CLI's shorthand
/// (`TagKey=K,TagValue=V`, one per argument) or a JSON list of objects.
fn parse_tags(args: &[String]) -> Result<Vec<(String, String)>, CliError> {
    let usage = |why: String| {
        CliError::new(crate::cli::ErrorClass::Usage, why)
            .hint("--tags TagKey=team,TagValue=db TagKey=env,TagValue=prod")
    };
    let mut out = Vec::new();
    for a in args {
        if a.trim_start().starts_with('[') {
            let v: Vec<Value> = serde_json::from_str(a)
                .map_err(|e| usage(format!("--tags is not a JSON list: {e}")))?;
            for t in v {
                let k = t["TagKey"].as_str();
                let val = t["TagValue"].as_str().unwrap_or("");
                match k {
                    Some(k) => out.push((k.to_string(), val.to_string())),
                    None => return Err(usage(format!("a tag without TagKey: {t}"))),
                }
            }
            continue;
        }
        let (mut k, mut v) = (None, String::new());
        for part in a.split(',') {
            match part.split_once('=') {
                Some(("TagKey", x)) => k = Some(x.to_string()),
                Some(("TagValue", x)) => v = x.to_string(),
                _ => return Err(usage(format!("cannot read the tag {a:?}"))),
            }
        }
        match k {
            Some(k) => out.push((k, v)),
            None => return Err(usage(format!("the tag {a:?} has no TagKey"))),
        }
    }
    Ok(out)
}

/// `tag-resource`.
pub(super) fn tag_resource(s: &Session, a: TagResourceArgs) -> Result<(), CliError> {
    let tags = parse_tags(&a.tags)?;
    Ok(s.ks.tag_resource(&s.caller, &a.key_id, &tags)?)
}

/// `untag-resource`.
pub(super) fn untag_resource(s: &Session, a: UntagResourceArgs) -> Result<(), CliError> {
    Ok(s.ks.untag_resource(&s.caller, &a.key_id, &a.tag_keys)?)
}

/// `list-resource-tags`.
pub(super) fn list_resource_tags(s: &Session, a: ListResourceTagsArgs) -> Result<(), CliError> {
    let all = s.ks.list_resource_tags(&s.caller, &a.key_id)?;
    let (tags, next) = page(&all, &a.page)?;
    if s.json {
        let list: Vec<Value> = tags
            .iter()
            .map(|(k, v)| json!({ "TagKey": k, "TagValue": v }))
            .collect();
        let mut v = json!({ "Tags": list, "Truncated": next.is_some() });
        if let Some(m) = next {
            v["NextMarker"] = json!(m);
        }
        print_json(&v);
    } else {
        for (k, v) in tags {
            println!("{k}\t{v}");
        }
    }
    Ok(())
}

/// `list-key-policies`.
pub(super) fn list_key_policies(s: &Session, a: ListResourceTagsArgs) -> Result<(), CliError> {
    let all = s.ks.list_key_policies(&s.caller, &a.key_id)?;
    let (names, next) = page(&all, &a.page)?;
    if s.json {
        let mut v = json!({ "PolicyNames": names, "Truncated": next.is_some() });
        if let Some(m) = next {
            v["NextMarker"] = json!(m);
        }
        print_json(&v);
    } else {
        for n in names {
            println!("{n}");
        }
    }
    Ok(())
}

/// `create-grant`.
pub(super) fn create_grant(s: &Session, a: CreateGrantArgs) -> Result<(), CliError> {
    let constraints = match &a.constraints {
        Some(c) => Some(serde_json::from_str(c).map_err(|e| {
            CliError::new(
                crate::cli::ErrorClass::Usage,
                format!("--constraints is not a GrantConstraints JSON object: {e}"),
            )
        })?),
        None => None,
    };
    let r = crate::kms::service::GrantRequest {
        key_id: a.key_id,
        grantee: a.grantee_principal,
        retiring: a.retiring_principal,
        operations: a.operations,
        constraints,
        name: a.name,
    };
    s.ks.check_grant_tokens(&a.grant_tokens)?;
    let (id, token) = s.ks.create_grant(&s.caller, &r, a.dry_run)?;
    if s.json {
        print_json(&json!({ "GrantId": id, "GrantToken": token }));
    } else {
        println!("{id}\t{token}");
    }
    Ok(())
}

fn print_grants(s: &Session, grants: &[crate::kms::model::GrantRecord], next: Option<String>) {
    if s.json {
        let account = s.ks.account_id();
        let list: Vec<Value> = grants
            .iter()
            .map(|g| crate::kms::wire::grant_json(g, &s.arn(&g.key_id), account))
            .collect();
        let mut v = json!({ "Grants": list, "Truncated": next.is_some() });
        if let Some(m) = next {
            v["NextMarker"] = json!(m);
        }
        print_json(&v);
    } else {
        for g in grants {
            println!("{}\t{}\t{}", g.grant_id, g.grantee, g.operations.join(","));
        }
    }
}

/// `list-grants`.
pub(super) fn list_grants(s: &Session, a: ListGrantsArgs) -> Result<(), CliError> {
    let all = s.ks.list_grants(
        &s.caller,
        &a.key_id,
        a.grant_id.as_deref(),
        a.grantee_principal.as_deref(),
    )?;
    let (grants, next) = page(&all, &a.page)?;
    print_grants(s, &grants, next);
    Ok(())
}

/// `list-retirable-grants`.
pub(super) fn list_retirable_grants(
    s: &Session,
    a: ListRetirableGrantsArgs,
) -> Result<(), CliError> {
    let all =
        s.ks.list_retirable_grants(&s.caller, &a.retiring_principal)?;
    let (grants, next) = page(&all, &a.page)?;
    print_grants(s, &grants, next);
    Ok(())
}

/// `retire-grant`.
pub(super) fn retire_grant(s: &Session, a: RetireGrantArgs) -> Result<(), CliError> {
    Ok(s.ks.retire_grant(
        &s.caller,
        a.grant_token.as_deref(),
        a.key_id.as_deref(),
        a.grant_id.as_deref(),
        a.dry_run,
    )?)
}

/// `revoke-grant`.
pub(super) fn revoke_grant(s: &Session, a: RevokeGrantArgs) -> Result<(), CliError> {
    Ok(s.ks.revoke_grant(&s.caller, &a.key_id, &a.grant_id, a.dry_run)?)
}
