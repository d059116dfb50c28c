//! The commands that import key material into EXTERNAL keys:
//! get-parameters-for-import, import-key-material, delete-imported-key-material.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::json;

use super::args::{GetParametersForImportArgs, ImportKeyMaterialArgs, KeyIdArg};
use super::{Session, read_blob};
use crate::cli::output::print_json;
use crate::cli::{CliError, ErrorClass};
use crate::kms::clock;

/// `get-parameters-for-import`.
pub(super) fn get_parameters_for_import(
    s: &Session,
    a: GetParametersForImportArgs,
) -> Result<(), CliError> {
    let p = s.ks.get_parameters_for_import(
        &s.caller,
        &a.key_id,
        &a.wrapping_algorithm,
        &a.wrapping_key_spec,
    )?;
    let (token, public) = (B64.encode(&p.import_token), B64.encode(&p.public_key));
    if s.json {
        print_json(&json!({
            "KeyId": p.key_id,
            "ImportToken": token,
            "PublicKey": public,
            "ParametersValidTo": p.parameters_valid_to,
        }));
    } else {
        println!("KeyId\t{}", p.key_id);
        println!("ImportToken\t{token}");
        println!("PublicKey\t{public}");
        println!(
            "ParametersValidTo\t{}",
            clock::format_rfc3339(p.parameters_valid_to)
        );
    }
    Ok(())
}

/// `import-key-material`.
pub(super) fn import_key_material(s: &Session, a: ImportKeyMaterialArgs) -> Result<(), CliError> {
    let valid_to = valid_to(a.expiration_model.as_deref(), a.valid_to.as_deref())?;
    let material = read_blob(&a.encrypted_key_material, "encrypted-key-material")?;
    let token = read_blob(&a.import_token, "import-token")?;
    s.ks.import_key_material(&s.caller, &a.key_id, &token, &material, valid_to)?;
    Ok(())
}

/// When imported material expires, from --expiration-model and --valid-to.
fn valid_to(model: Option<&str>, valid_to: Option<&str>) -> Result<Option<i64>, CliError> {
    const EXPIRES: &str = "KEY_MATERIAL_EXPIRES";
    const DOES_NOT_EXPIRE: &str = "KEY_MATERIAL_DOES_NOT_EXPIRE";
    match (model, valid_to) {
        (Some(DOES_NOT_EXPIRE), Some(_)) => Err(CliError::new(
            ErrorClass::Usage,
            "--valid-to contradicts --expiration-model KEY_MATERIAL_DOES_NOT_EXPIRE",
        )
        .hint("give one or the other")),
        (Some(EXPIRES), None) => Err(CliError::new(
            ErrorClass::Usage,
            "--expiration-model KEY_MATERIAL_EXPIRES needs --valid-to",
        )
        .hint("add --valid-to 2030-01-01T00:00:00Z (RFC 3339)")),
        (Some(m), _) if m != EXPIRES && m != DOES_NOT_EXPIRE => Err(CliError::new(
            ErrorClass::Usage,
            format!("unknown --expiration-model {m:?}"),
        )
        .hint("use KEY_MATERIAL_EXPIRES or KEY_MATERIAL_DOES_NOT_EXPIRE")),
        (_, Some(t)) => clock::parse_rfc3339(t).map(Some).ok_or_else(|| {
            CliError::new(
                ErrorClass::Usage,
                format!("--valid-to {t:?} is not RFC 3339"),
            )
            .hint("write it like 2030-01-01T00:00:00Z")
        }),
        (_, None) => Ok(None),
    }
}

/// `delete-imported-key-material`.
pub(super) fn delete_imported_key_material(s: &Session, a: KeyIdArg) -> Result<(), CliError> {
    Ok(s.ks.delete_imported_key_material(&s.caller, &a.key_id)?)
}
