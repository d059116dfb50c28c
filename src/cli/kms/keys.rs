//! The key commands: create, describe and list keys, their states (enable,
//! disable, deletion), rotation and key policies.

use serde_json::{Value, json};

use super::Session;
use super::args::{
    CreateKeyArgs, EnableKeyRotationArgs, GetKeyPolicyArgs, KeyIdArg, OriginArg, PutKeyPolicyArgs,
    ScheduleKeyDeletionArgs,
};
use crate::cli::CliError;
use crate::cli::output::{metadata_json, print_json, print_metadata};
use crate::kms::{KeyOrigin, KeyService, clock};

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
    let m = s.ks.describe_key(&s.caller, &a.key_id)?;
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
pub(super) fn list_keys(s: &Session) -> Result<(), CliError> {
    if s.json {
        print_json(&json!({ "Keys": s.ks.list_keys(&s.caller)?, "Truncated": false }));
        return Ok(());
    }
    let keys = s.ks.list_key_metadata(&s.caller)?;
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
    Ok(())
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
