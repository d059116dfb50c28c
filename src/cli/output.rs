//! Printing results: JSON with the AWS API field names (timestamps as RFC 3339,
//! secrets through zeroized buffers) and the text layouts of key metadata.

use serde_json::Value;
use zeroize::Zeroizing;

use crate::kms::{KeyMetadata, clock};

pub(crate) use crate::kms::wire::{SYMMETRIC_DEFAULT, metadata_json};

/// Response fields that AWS CLI v2 prints as ISO 8601 timestamps.
const TIMESTAMP_FIELDS: [&str; 7] = [
    "CreationDate",
    "DeletionDate",
    "ValidTo",
    "ParametersValidTo",
    "RotationDate",
    "NextRotationDate",
    "OnDemandRotationStartDate",
];

/// Turns epoch-second timestamps (the service's representation) into RFC 3339
/// strings wherever a timestamp field appears, as AWS CLI v2 prints them.
fn timestamps_as_rfc3339(v: &mut Value) {
    match v {
        Value::Object(o) => {
            for (k, x) in o.iter_mut() {
                match x.as_i64() {
                    Some(t) if TIMESTAMP_FIELDS.contains(&k.as_str()) => {
                        *x = Value::String(clock::format_rfc3339(t));
                    }
                    _ => timestamps_as_rfc3339(x),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(timestamps_as_rfc3339),
        _ => {}
    }
}

pub(crate) fn print_json(v: &Value) {
    let mut v = v.clone();
    timestamps_as_rfc3339(&mut v);
    // serde_json cannot fail on a Value.
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
}

/// Prints a JSON object whose values may be secret (base64 plaintext), through
/// a zeroized buffer.
pub(crate) fn print_json_secret(fields: &[(&str, &str)]) {
    let mut out = Zeroizing::new(String::with_capacity(
        fields
            .iter()
            .map(|(k, v)| k.len() + v.len() + 16)
            .sum::<usize>()
            + 4,
    ));
    out.push_str("{\n");
    for (i, (k, v)) in fields.iter().enumerate() {
        // Keys and values are base64, ARNs or fixed names: nothing to escape.
        for part in ["  \"", k, "\": \"", v, "\""] {
            out.push_str(part);
        }
        out.push_str(if i + 1 < fields.len() { ",\n" } else { "\n" });
    }
    out.push('}');
    println!("{}", *out);
}

pub(crate) fn print_metadata(m: &KeyMetadata, aliases: &[String]) {
    println!("KeyId:              {}", m.key_id);
    println!("Arn:                {}", m.arn);
    println!("KeyState:           {}", m.key_state.as_str());
    println!("Description:        {}", m.description);
    println!(
        "CreationDate:       {}",
        clock::format_rfc3339(m.creation_date)
    );
    if let Some(d) = m.deletion_date {
        println!("DeletionDate:       {}", clock::format_rfc3339(d));
    }
    println!(
        "Origin:             {}",
        serde_json::to_value(m.origin)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    );
    if let Some(t) = m.valid_to {
        println!("ValidTo:            {}", clock::format_rfc3339(t));
    }
    println!("KeyMaterialVersion: {}", m.current_key_material_version);
    if !aliases.is_empty() {
        println!("Aliases:            {}", aliases.join(", "));
    }
}
