//! `kmsfs kms ...`: the key commands, named and shaped like `aws kms` (AWS CLI v2):
//! same subcommand and option names, `fileb://PATH` or base64 for binary input,
//! base64 for binary output, AWS API field names with `--output json`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::keystore::open_key_service;
use super::{CliError, ErrorClass, GlobalArgs, OutputFormat, current_caller};
use crate::kms::model::key_arn;
use crate::kms::{DataKeySpec, EncryptionContext, KeyMetadata, KeyService, LocalKeyStore, clock};

/// The encryption algorithm name AWS reports for symmetric keys.
const SYMMETRIC_DEFAULT: &str = "SYMMETRIC_DEFAULT";

/// The key subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum KmsCommand {
    /// Create a symmetric key (AES-256-GCM); --origin EXTERNAL to import its material.
    CreateKey {
        /// Free text describing the key.
        #[arg(long, default_value = "")]
        description: String,
        /// AWS_KMS (fresh material) or EXTERNAL (import your own material later).
        #[arg(long, value_enum, default_value = "AWS_KMS")]
        origin: OriginArg,
    },
    /// A wrapping public key and import token for importing key material (valid 24 h).
    GetParametersForImport {
        /// An EXTERNAL key in state PendingImport.
        #[arg(long)]
        key_id: String,
        /// Only RSAES_OAEP_SHA_256.
        #[arg(long, default_value = "RSAES_OAEP_SHA_256")]
        wrapping_algorithm: String,
        /// RSA_2048, RSA_3072 or RSA_4096.
        #[arg(long, default_value = "RSA_2048")]
        wrapping_key_spec: String,
    },
    /// Import 32 bytes of key material wrapped under the import public key.
    ImportKeyMaterial {
        /// The EXTERNAL key.
        #[arg(long)]
        key_id: String,
        /// fileb://PATH or base64: the material wrapped with RSAES_OAEP_SHA_256.
        #[arg(long)]
        encrypted_key_material: String,
        /// fileb://PATH or base64: the ImportToken of the same parameters.
        #[arg(long)]
        import_token: String,
        /// KEY_MATERIAL_EXPIRES (needs --valid-to) or KEY_MATERIAL_DOES_NOT_EXPIRE
        /// [default: expires exactly when --valid-to is given].
        #[arg(long)]
        expiration_model: Option<String>,
        /// When the material expires (RFC 3339).
        #[arg(long)]
        valid_to: Option<String>,
    },
    /// Delete a key's imported material; it waits for the same material again.
    DeleteImportedKeyMaterial(KeyIdArg),
    /// Show a key's metadata.
    DescribeKey(KeyIdArg),
    /// List the keys of the keystore.
    ListKeys,
    /// Allow cryptographic operations with a disabled key again.
    EnableKey(KeyIdArg),
    /// Refuse every cryptographic operation with a key until it is enabled.
    DisableKey(KeyIdArg),
    /// Delete a key after a waiting period (7 to 30 days, default 30).
    ScheduleKeyDeletion {
        /// Key id, key ARN or alias/NAME.
        #[arg(long)]
        key_id: String,
        /// Days to wait before the key and everything encrypted under it is gone.
        #[arg(long)]
        pending_window_in_days: Option<u32>,
    },
    /// Cancel a scheduled deletion; the key becomes Disabled.
    CancelKeyDeletion(KeyIdArg),
    /// Make new key material current now; old material keeps decrypting old ciphertexts.
    RotateKeyOnDemand(KeyIdArg),
    /// Rotate a key's material automatically every N days (90 to 2560, default 365).
    EnableKeyRotation {
        /// Key id, key ARN or alias/NAME.
        #[arg(long)]
        key_id: String,
        /// Days between automatic rotations.
        #[arg(long)]
        rotation_period_in_days: Option<u32>,
    },
    /// Stop rotating a key automatically.
    DisableKeyRotation(KeyIdArg),
    /// Show whether and when a key rotates automatically.
    GetKeyRotationStatus(KeyIdArg),
    /// List the rotations a key has had.
    ListKeyRotations(KeyIdArg),
    /// Attach a key policy (who may use the key, by uid/gid) to a key.
    PutKeyPolicy {
        /// Key id, key ARN or alias/NAME.
        #[arg(long)]
        key_id: String,
        /// The policy document: JSON text, or file://PATH.
        #[arg(long)]
        policy: String,
        /// Always "default".
        #[arg(long, default_value = "default")]
        policy_name: String,
    },
    /// Show a key's policy (the default one when none was put).
    GetKeyPolicy {
        /// Key id, key ARN or alias/NAME.
        #[arg(long)]
        key_id: String,
        /// Always "default".
        #[arg(long, default_value = "default")]
        policy_name: String,
    },
    /// Give a key a friendly name alias/NAME.
    CreateAlias(AliasArgs),
    /// Point an existing alias at another key.
    UpdateAlias(AliasArgs),
    /// Delete an alias (not its key).
    DeleteAlias {
        /// alias/NAME.
        #[arg(long)]
        alias_name: String,
    },
    /// List aliases, optionally only those of one key.
    ListAliases {
        /// Only aliases of this key.
        #[arg(long)]
        key_id: Option<String>,
    },
    /// Encrypt up to 4096 bytes directly under a key.
    Encrypt {
        /// Key id, key ARN or alias/NAME.
        #[arg(long)]
        key_id: String,
        /// fileb://PATH (raw bytes) or base64.
        #[arg(long)]
        plaintext: String,
        /// k=v,k2=v2 or a JSON object of strings; decrypt must give the same.
        #[arg(long)]
        encryption_context: Option<String>,
    },
    /// Decrypt a ciphertext blob (its key is named inside it).
    Decrypt {
        /// fileb://PATH (raw bytes) or base64.
        #[arg(long)]
        ciphertext_blob: String,
        /// The encryption context the blob was made with.
        #[arg(long)]
        encryption_context: Option<String>,
        /// Refuse unless the blob was made under this key.
        #[arg(long)]
        key_id: Option<String>,
    },
    /// A data key in plaintext and wrapped under a key (envelope encryption).
    GenerateDataKey(DataKeyArgs),
    /// A data key wrapped under a key, without its plaintext.
    GenerateDataKeyWithoutPlaintext(DataKeyArgs),
    /// Decrypt and encrypt again under another key, inside the service.
    ReEncrypt {
        /// fileb://PATH (raw bytes) or base64.
        #[arg(long)]
        ciphertext_blob: String,
        /// The key to encrypt under.
        #[arg(long)]
        destination_key_id: String,
        /// The context the blob was made with.
        #[arg(long)]
        source_encryption_context: Option<String>,
        /// The context to bind the new blob to.
        #[arg(long)]
        destination_encryption_context: Option<String>,
        /// Refuse unless the blob was made under this key.
        #[arg(long)]
        source_key_id: Option<String>,
    },
}

/// `--origin` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OriginArg {
    /// The keystore generates the material.
    #[value(name = "AWS_KMS")]
    AwsKms,
    /// The material is imported.
    #[value(name = "EXTERNAL")]
    External,
}

/// `--key-id`.
#[derive(Debug, clap::Args)]
pub struct KeyIdArg {
    /// Key id, key ARN or alias/NAME.
    #[arg(long)]
    pub key_id: String,
}

/// `--alias-name` and `--target-key-id`.
#[derive(Debug, clap::Args)]
pub struct AliasArgs {
    /// alias/NAME: letters, digits, ':', '/', '_', '-'.
    #[arg(long)]
    pub alias_name: String,
    /// Key id or key ARN.
    #[arg(long)]
    pub target_key_id: String,
}

/// Options of generate-data-key(-without-plaintext).
#[derive(Debug, clap::Args)]
pub struct DataKeyArgs {
    /// Key id, key ARN or alias/NAME.
    #[arg(long)]
    pub key_id: String,
    /// AES_256 (32 bytes, the default) or AES_128 (16 bytes).
    #[arg(long, value_enum, conflicts_with = "number_of_bytes")]
    pub key_spec: Option<KeySpecArg>,
    /// Length of the data key, 1 to 1024 bytes.
    #[arg(long)]
    pub number_of_bytes: Option<usize>,
    /// k=v,k2=v2 or a JSON object of strings.
    #[arg(long)]
    pub encryption_context: Option<String>,
}

/// `--key-spec` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum KeySpecArg {
    /// 32 bytes.
    #[value(name = "AES_256")]
    Aes256,
    /// 16 bytes.
    #[value(name = "AES_128")]
    Aes128,
}

/// Reads a binary argument: `fileb://PATH` is the file's bytes, `file://PATH`
/// is a file holding base64, anything else is base64 itself (as AWS CLI v2).
fn read_blob(arg: &str, what: &str) -> Result<Zeroizing<Vec<u8>>, CliError> {
    if let Some(p) = arg.strip_prefix("fileb://") {
        return std::fs::read(p)
            .map(Zeroizing::new)
            .map_err(|e| CliError::from(e).hint(format!("check the path given to --{what}")));
    }
    let text = match arg.strip_prefix("file://") {
        Some(p) => Zeroizing::new(
            std::fs::read_to_string(p)
                .map_err(|e| CliError::from(e).hint(format!("check the path given to --{what}")))?,
        ),
        None => Zeroizing::new(arg.to_string()),
    };
    let cleaned: Zeroizing<String> =
        Zeroizing::new(text.chars().filter(|c| !c.is_ascii_whitespace()).collect());
    B64.decode(cleaned.as_bytes())
        .map(Zeroizing::new)
        .map_err(|_| {
            CliError::new(ErrorClass::Usage, format!("--{what} is not valid base64"))
                .hint("give base64, or fileb://PATH to read raw bytes from a file")
        })
}

fn context(arg: &Option<String>) -> Result<EncryptionContext, CliError> {
    match arg {
        Some(s) => Ok(EncryptionContext::parse(s)?),
        None => Ok(EncryptionContext::new()),
    }
}

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

fn print_json(v: &Value) {
    let mut v = v.clone();
    timestamps_as_rfc3339(&mut v);
    // serde_json cannot fail on a Value.
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
}

/// Prints a JSON object whose values may be secret (base64 plaintext), through
/// a zeroized buffer.
fn print_json_secret(fields: &[(&str, &str)]) {
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

fn metadata_json(m: &KeyMetadata) -> Value {
    let mut v = serde_json::to_value(m).unwrap_or(Value::Null);
    if let Value::Object(o) = &mut v {
        o.insert("KeyManager".into(), json!("CUSTOMER"));
        o.insert("EncryptionAlgorithms".into(), json!([SYMMETRIC_DEFAULT]));
        o.insert("MultiRegion".into(), json!(false));
    }
    v
}

fn print_metadata(m: &KeyMetadata, aliases: &[String]) {
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

fn aliases_of(ks: &LocalKeyStore, key_id: &str) -> Vec<String> {
    ks.list_aliases(&current_caller(), Some(key_id))
        .map(|v| v.into_iter().map(|a| a.alias_name).collect())
        .unwrap_or_default()
}

fn data_key_spec(a: &DataKeyArgs) -> DataKeySpec {
    match (a.number_of_bytes, a.key_spec) {
        (Some(n), _) => DataKeySpec::Bytes(n),
        (None, Some(KeySpecArg::Aes128)) => DataKeySpec::Aes128,
        (None, _) => DataKeySpec::Aes256,
    }
}

/// Runs one key subcommand.
pub fn run(g: &GlobalArgs, c: KmsCommand) -> Result<(), CliError> {
    let name = command_name(&c);
    run_command(g, c).map_err(|e| e.with_kms_remedy(name, &super::keystore::keystore_dir(g)))
}

/// The kebab-case subcommand name (`ScheduleKeyDeletion` → `schedule-key-deletion`).
/// Static per variant: never formats the arguments (which may hold a plaintext).
fn command_name(c: &KmsCommand) -> &'static str {
    match c {
        KmsCommand::CreateKey { .. } => "create-key",
        KmsCommand::GetParametersForImport { .. } => "get-parameters-for-import",
        KmsCommand::ImportKeyMaterial { .. } => "import-key-material",
        KmsCommand::DeleteImportedKeyMaterial(_) => "delete-imported-key-material",
        KmsCommand::DescribeKey(_) => "describe-key",
        KmsCommand::ListKeys => "list-keys",
        KmsCommand::EnableKey(_) => "enable-key",
        KmsCommand::DisableKey(_) => "disable-key",
        KmsCommand::ScheduleKeyDeletion { .. } => "schedule-key-deletion",
        KmsCommand::CancelKeyDeletion(_) => "cancel-key-deletion",
        KmsCommand::RotateKeyOnDemand(_) => "rotate-key-on-demand",
        KmsCommand::EnableKeyRotation { .. } => "enable-key-rotation",
        KmsCommand::DisableKeyRotation(_) => "disable-key-rotation",
        KmsCommand::GetKeyRotationStatus(_) => "get-key-rotation-status",
        KmsCommand::ListKeyRotations(_) => "list-key-rotations",
        KmsCommand::PutKeyPolicy { .. } => "put-key-policy",
        KmsCommand::GetKeyPolicy { .. } => "get-key-policy",
        KmsCommand::CreateAlias(_) => "create-alias",
        KmsCommand::UpdateAlias(_) => "update-alias",
        KmsCommand::DeleteAlias { .. } => "delete-alias",
        KmsCommand::ListAliases { .. } => "list-aliases",
        KmsCommand::Encrypt { .. } => "encrypt",
        KmsCommand::Decrypt { .. } => "decrypt",
        KmsCommand::GenerateDataKey(_) => "generate-data-key",
        KmsCommand::GenerateDataKeyWithoutPlaintext(_) => "generate-data-key-without-plaintext",
        KmsCommand::ReEncrypt { .. } => "re-encrypt",
    }
}

fn run_command(g: &GlobalArgs, c: KmsCommand) -> Result<(), CliError> {
    let ks = open_key_service(g)?;
    let caller = current_caller();
    let json_out = g.output == OutputFormat::Json;
    let arn = |id: &str| key_arn(ks.keystore_id(), id);
    match c {
        KmsCommand::CreateKey {
            description,
            origin,
        } => {
            let origin = match origin {
                OriginArg::AwsKms => crate::kms::KeyOrigin::Kms,
                OriginArg::External => crate::kms::KeyOrigin::External,
            };
            let m = ks.create_key_with_origin(&caller, &description, origin)?;
            if json_out {
                print_json(&json!({ "KeyMetadata": metadata_json(&m) }));
            } else {
                print_metadata(&m, &[]);
            }
        }
        KmsCommand::GetParametersForImport {
            key_id,
            wrapping_algorithm,
            wrapping_key_spec,
        } => {
            let p = ks.get_parameters_for_import(
                &caller,
                &key_id,
                &wrapping_algorithm,
                &wrapping_key_spec,
            )?;
            let (token, public) = (B64.encode(&p.import_token), B64.encode(&p.public_key));
            if json_out {
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
        }
        KmsCommand::ImportKeyMaterial {
            key_id,
            encrypted_key_material,
            import_token,
            expiration_model,
            valid_to,
        } => {
            let valid_to = match (expiration_model.as_deref(), valid_to) {
                (Some("KEY_MATERIAL_DOES_NOT_EXPIRE"), Some(_)) => {
                    return Err(CliError::new(
                        ErrorClass::Usage,
                        "--valid-to contradicts --expiration-model KEY_MATERIAL_DOES_NOT_EXPIRE",
                    )
                    .hint("give one or the other"));
                }
                (Some("KEY_MATERIAL_EXPIRES"), None) => {
                    return Err(CliError::new(
                        ErrorClass::Usage,
                        "--expiration-model KEY_MATERIAL_EXPIRES needs --valid-to",
                    )
                    .hint("add --valid-to 2030-01-01T00:00:00Z (RFC 3339)"));
                }
                (Some(m), _)
                    if m != "KEY_MATERIAL_EXPIRES" && m != "KEY_MATERIAL_DOES_NOT_EXPIRE" =>
                {
                    return Err(CliError::new(
                        ErrorClass::Usage,
                        format!("unknown --expiration-model {m:?}"),
                    )
                    .hint("use KEY_MATERIAL_EXPIRES or KEY_MATERIAL_DOES_NOT_EXPIRE"));
                }
                (_, Some(t)) => Some(clock::parse_rfc3339(&t).ok_or_else(|| {
                    CliError::new(
                        ErrorClass::Usage,
                        format!("--valid-to {t:?} is not RFC 3339"),
                    )
                    .hint("write it like 2030-01-01T00:00:00Z")
                })?),
                (_, None) => None,
            };
            let material = read_blob(&encrypted_key_material, "encrypted-key-material")?;
            let token = read_blob(&import_token, "import-token")?;
            ks.import_key_material(&caller, &key_id, &token, &material, valid_to)?;
        }
        KmsCommand::DeleteImportedKeyMaterial(a) => {
            ks.delete_imported_key_material(&caller, &a.key_id)?
        }
        KmsCommand::DescribeKey(a) => {
            let m = ks.describe_key(&caller, &a.key_id)?;
            if json_out {
                print_json(&json!({ "KeyMetadata": metadata_json(&m) }));
            } else {
                print_metadata(&m, &aliases_of(&ks, &m.key_id));
            }
        }
        KmsCommand::ListKeys => {
            if json_out {
                print_json(&json!({ "Keys": ks.list_keys(&caller)?, "Truncated": false }));
            } else {
                let keys = ks.list_key_metadata(&caller)?;
                let aliases = ks.list_aliases(&caller, None)?;
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
            }
        }
        KmsCommand::EnableKey(a) => ks.enable_key(&caller, &a.key_id)?,
        KmsCommand::DisableKey(a) => ks.disable_key(&caller, &a.key_id)?,
        KmsCommand::ScheduleKeyDeletion {
            key_id,
            pending_window_in_days,
        } => {
            let s = ks.schedule_key_deletion(&caller, &key_id, pending_window_in_days)?;
            if json_out {
                print_json(&serde_json::to_value(&s).unwrap_or(Value::Null));
            } else {
                println!(
                    "key {} is pending deletion: it will be deleted for good on {} ({} days); \
                     undo with cancel-key-deletion before then",
                    s.key_id,
                    clock::format_rfc3339(s.deletion_date),
                    s.pending_window_in_days
                );
            }
        }
        KmsCommand::CancelKeyDeletion(a) => {
            let key = ks.cancel_key_deletion(&caller, &a.key_id)?;
            if json_out {
                // AWS returns the key ARN here.
                print_json(&json!({ "KeyId": arn(&key) }));
            } else {
                println!(
                    "deletion of {key} cancelled; the key is Disabled (use enable-key to use it again)"
                );
            }
        }
        KmsCommand::RotateKeyOnDemand(a) => {
            let (key, version) = ks.rotate_key_on_demand(&caller, &a.key_id)?;
            if json_out {
                // AWS returns the key id here (not the ARN).
                print_json(&json!({ "KeyId": key }));
            } else {
                println!("key {key} rotated: key material version {version} is now current");
            }
        }
        KmsCommand::EnableKeyRotation {
            key_id,
            rotation_period_in_days,
        } => ks.enable_key_rotation(&caller, &key_id, rotation_period_in_days)?,
        KmsCommand::DisableKeyRotation(a) => ks.disable_key_rotation(&caller, &a.key_id)?,
        KmsCommand::GetKeyRotationStatus(a) => {
            let st = ks.get_key_rotation_status(&caller, &a.key_id)?;
            if json_out {
                print_json(&serde_json::to_value(&st).unwrap_or(Value::Null));
            } else {
                println!("KeyRotationEnabled:   {}", st.key_rotation_enabled);
                if let Some(d) = st.rotation_period_in_days {
                    println!("RotationPeriodInDays: {d}");
                }
                if let Some(t) = st.next_rotation_date {
                    println!("NextRotationDate:     {}", clock::format_rfc3339(t));
                }
            }
        }
        KmsCommand::ListKeyRotations(a) => {
            let list = ks.list_key_rotations(&caller, &a.key_id)?;
            if json_out {
                print_json(&json!({ "Rotations": list, "Truncated": false }));
            } else {
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
            }
        }
        KmsCommand::PutKeyPolicy {
            key_id,
            policy,
            policy_name,
        } => {
            let text = match policy.strip_prefix("file://") {
                Some(p) => std::fs::read_to_string(p).map_err(|e| {
                    CliError::from(e).hint("check the path given to --policy file://PATH")
                })?,
                None => policy,
            };
            ks.put_key_policy(&caller, &key_id, &policy_name, &text)?;
        }
        KmsCommand::GetKeyPolicy {
            key_id,
            policy_name,
        } => {
            let doc = ks.get_key_policy(&caller, &key_id, &policy_name)?;
            let pretty = serde_json::to_string_pretty(&doc).unwrap_or_default();
            if json_out {
                print_json(&json!({ "Policy": pretty, "PolicyName": policy_name }));
            } else {
                println!("{pretty}");
            }
        }
        KmsCommand::CreateAlias(a) => ks.create_alias(&caller, &a.alias_name, &a.target_key_id)?,
        KmsCommand::UpdateAlias(a) => ks.update_alias(&caller, &a.alias_name, &a.target_key_id)?,
        KmsCommand::DeleteAlias { alias_name } => ks.delete_alias(&caller, &alias_name)?,
        KmsCommand::ListAliases { key_id } => {
            let list = ks.list_aliases(&caller, key_id.as_deref())?;
            if json_out {
                print_json(&json!({ "Aliases": list, "Truncated": false }));
            } else {
                println!("{:<40}  TARGET KEY ID", "ALIAS NAME");
                for a in list {
                    println!("{:<40}  {}", a.alias_name, a.target_key_id);
                }
            }
        }
        KmsCommand::Encrypt {
            key_id,
            plaintext,
            encryption_context,
        } => {
            let pt = read_blob(&plaintext, "plaintext")?;
            let ctx = context(&encryption_context)?;
            let e = ks.encrypt(&caller, &key_id, &pt, &ctx)?;
            let blob = B64.encode(&e.ciphertext_blob);
            if json_out {
                print_json(&json!({
                    "CiphertextBlob": blob,
                    "KeyId": arn(&e.key_id),
                    "EncryptionAlgorithm": SYMMETRIC_DEFAULT,
                }));
            } else {
                println!("{blob}");
            }
        }
        KmsCommand::Decrypt {
            ciphertext_blob,
            encryption_context,
            key_id,
        } => {
            let blob = read_blob(&ciphertext_blob, "ciphertext-blob")?;
            let ctx = context(&encryption_context)?;
            let d = ks.decrypt(&caller, &blob, &ctx, key_id.as_deref())?;
            let pt = Zeroizing::new(B64.encode(d.plaintext.expose()));
            if json_out {
                print_json_secret(&[
                    ("KeyId", &arn(&d.key_id)),
                    ("Plaintext", &pt),
                    ("EncryptionAlgorithm", SYMMETRIC_DEFAULT),
                ]);
            } else {
                println!("{}", *pt);
            }
        }
        KmsCommand::GenerateDataKey(a) => {
            let ctx = context(&a.encryption_context)?;
            let dk = ks.generate_data_key(&caller, &a.key_id, data_key_spec(&a), &ctx)?;
            let pt = Zeroizing::new(B64.encode(dk.plaintext.expose()));
            let blob = B64.encode(&dk.ciphertext_blob);
            if json_out {
                print_json_secret(&[
                    ("CiphertextBlob", &blob),
                    ("Plaintext", &pt),
                    ("KeyId", &arn(&dk.key_id)),
                ]);
            } else {
                println!("CiphertextBlob\t{blob}");
                println!("Plaintext\t{}", *pt);
                println!("KeyId\t{}", dk.key_id);
            }
        }
        KmsCommand::GenerateDataKeyWithoutPlaintext(a) => {
            let ctx = context(&a.encryption_context)?;
            let e = ks.generate_data_key_without_plaintext(
                &caller,
                &a.key_id,
                data_key_spec(&a),
                &ctx,
            )?;
            let blob = B64.encode(&e.ciphertext_blob);
            if json_out {
                print_json(&json!({ "CiphertextBlob": blob, "KeyId": arn(&e.key_id) }));
            } else {
                println!("{blob}");
            }
        }
        KmsCommand::ReEncrypt {
            ciphertext_blob,
            destination_key_id,
            source_encryption_context,
            destination_encryption_context,
            source_key_id,
        } => {
            let blob = read_blob(&ciphertext_blob, "ciphertext-blob")?;
            let sctx = context(&source_encryption_context)?;
            let dctx = context(&destination_encryption_context)?;
            if let Some(want) = &source_key_id {
                // Checks the source key before anything is decrypted.
                ks.check_ciphertext_key(&caller, &blob, want)?;
            }
            let e = ks.re_encrypt(&caller, &blob, &sctx, &destination_key_id, &dctx)?;
            let out = B64.encode(&e.ciphertext_blob);
            if json_out {
                print_json(&json!({
                    "CiphertextBlob": out,
                    "SourceKeyId": e.source_key_id.as_deref().map(arn),
                    "KeyId": arn(&e.key_id),
                    "SourceEncryptionAlgorithm": SYMMETRIC_DEFAULT,
                    "DestinationEncryptionAlgorithm": SYMMETRIC_DEFAULT,
                }));
            } else {
                println!("{out}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_names_are_the_aws_ones() {
        let c = KmsCommand::ScheduleKeyDeletion {
            key_id: "k".into(),
            pending_window_in_days: None,
        };
        assert_eq!(command_name(&c), "schedule-key-deletion");
        assert_eq!(command_name(&KmsCommand::ListKeys), "list-keys");
        let c = KmsCommand::GenerateDataKeyWithoutPlaintext(DataKeyArgs {
            key_id: "k".into(),
            key_spec: None,
            number_of_bytes: None,
            encryption_context: None,
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
        let src = include_str!("kms.rs");
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
}
