//! The clap definitions of `kmsfs kms ...`: the subcommands and options of
//! `aws kms` that kmsfs implements, with the same names.

/// The key subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum KmsCommand {
    /// Create a symmetric key (AES-256-GCM); --origin EXTERNAL to import its material.
    CreateKey(CreateKeyArgs),
    /// A wrapping public key and import token for importing key material (valid 24 h).
    GetParametersForImport(GetParametersForImportArgs),
    /// Import 32 bytes of key material wrapped under the import public key.
    ImportKeyMaterial(ImportKeyMaterialArgs),
    /// Delete a key's imported material; it waits for the same material again.
    DeleteImportedKeyMaterial(KeyIdArg),
    /// Show a key's metadata.
    DescribeKey(KeyIdArg),
    /// List the keys of the keystore.
    ListKeys(ListArgs),
    /// Allow cryptographic operations with a disabled key again.
    EnableKey(KeyIdArg),
    /// Refuse every cryptographic operation with a key until it is enabled.
    DisableKey(KeyIdArg),
    /// Delete a key after a waiting period (7 to 30 days, default 30).
    ScheduleKeyDeletion(ScheduleKeyDeletionArgs),
    /// Cancel a scheduled deletion; the key becomes Disabled.
    CancelKeyDeletion(KeyIdArg),
    /// Make new key material current now; old material keeps decrypting old ciphertexts.
    RotateKeyOnDemand(KeyIdArg),
    /// Rotate a key's material automatically every N days (90 to 2560, default 365).
    EnableKeyRotation(EnableKeyRotationArgs),
    /// Stop rotating a key automatically.
    DisableKeyRotation(KeyIdArg),
    /// Show whether and when a key rotates automatically.
    GetKeyRotationStatus(KeyIdArg),
    /// List the rotations a key has had.
    ListKeyRotations(KeyIdArg),
    /// Attach a key policy (who may use the key, by uid/gid) to a key.
    PutKeyPolicy(PutKeyPolicyArgs),
    /// Show a key's policy (the default one when none was put).
    GetKeyPolicy(GetKeyPolicyArgs),
    /// Give a key a friendly name alias/NAME.
    CreateAlias(AliasArgs),
    /// Point an existing alias at another key.
    UpdateAlias(AliasArgs),
    /// Delete an alias (not its key).
    DeleteAlias(DeleteAliasArgs),
    /// List aliases, optionally only those of one key.
    ListAliases(ListAliasesArgs),
    /// Encrypt up to 4096 bytes directly under a key.
    Encrypt(EncryptArgs),
    /// Decrypt a ciphertext blob (its key is named inside it).
    Decrypt(DecryptArgs),
    /// A data key in plaintext and wrapped under a key (envelope encryption).
    GenerateDataKey(DataKeyArgs),
    /// A data key wrapped under a key, without its plaintext.
    GenerateDataKeyWithoutPlaintext(DataKeyArgs),
    /// Decrypt and encrypt again under another key, inside the service.
    ReEncrypt(ReEncryptArgs),
    /// Random bytes from the keystore's generator (base64).
    GenerateRandom(GenerateRandomArgs),
    /// Replace a key's description.
    UpdateKeyDescription(UpdateKeyDescriptionArgs),
    /// Add or replace tags of a key.
    TagResource(TagResourceArgs),
    /// Remove tags of a key.
    UntagResource(UntagResourceArgs),
    /// List a key's tags.
    ListResourceTags(ListResourceTagsArgs),
    /// List the names of a key's policies (always "default").
    ListKeyPolicies(ListResourceTagsArgs),
    /// Give a principal rights on a key (a grant).
    CreateGrant(CreateGrantArgs),
    /// List a key's grants.
    ListGrants(ListGrantsArgs),
    /// List the grants a principal may retire.
    ListRetirableGrants(ListRetirableGrantsArgs),
    /// Retire a grant (by token, or key and grant id).
    RetireGrant(RetireGrantArgs),
    /// Revoke a grant of a key.
    RevokeGrant(RevokeGrantArgs),
}

/// Options of `create-grant`.
#[derive(Debug, clap::Args)]
pub struct CreateGrantArgs {
    /// Key id or key ARN.
    #[arg(long)]
    pub key_id: String,
    /// Who the grant allows: uid:N, user:NAME, gid:N or group:NAME.
    #[arg(long)]
    pub grantee_principal: String,
    /// Who may retire the grant (same forms).
    #[arg(long)]
    pub retiring_principal: Option<String>,
    /// Operations allowed: Decrypt, Encrypt, GenerateDataKey,
    /// GenerateDataKeyWithoutPlaintext, ReEncryptFrom, ReEncryptTo,
    /// DescribeKey, RetireGrant.
    #[arg(long, num_args = 1.., required = true)]
    pub operations: Vec<String>,
    /// Constraints as JSON: {"EncryptionContextEquals": {...}} or
    /// {"EncryptionContextSubset": {...}}.
    #[arg(long)]
    pub constraints: Option<String>,
    /// A name (the same name and rights give back the same grant).
    #[arg(long)]
    pub name: Option<String>,
    /// Grant tokens (checked: each must name a grant that exists).
    #[arg(long, num_args = 1.., value_name = "TOKEN")]
    pub grant_tokens: Vec<String>,
    /// Authorize only: DryRunOperationException when it would succeed.
    #[arg(long)]
    pub dry_run: bool,
}

/// Options of `list-grants`.
#[derive(Debug, clap::Args)]
pub struct ListGrantsArgs {
    /// Key id or key ARN.
    #[arg(long)]
    pub key_id: String,
    /// Only this grant.
    #[arg(long)]
    pub grant_id: Option<String>,
    /// Only the grants of this grantee.
    #[arg(long)]
    pub grantee_principal: Option<String>,
    /// Pages.
    #[command(flatten)]
    pub page: ListArgs,
}

/// Options of `list-retirable-grants`.
#[derive(Debug, clap::Args)]
pub struct ListRetirableGrantsArgs {
    /// The retiring principal.
    #[arg(long)]
    pub retiring_principal: String,
    /// Pages.
    #[command(flatten)]
    pub page: ListArgs,
}

/// Options of `retire-grant`.
#[derive(Debug, clap::Args)]
pub struct RetireGrantArgs {
    /// The grant token.
    #[arg(long)]
    pub grant_token: Option<String>,
    /// Key id or key ARN (with --grant-id).
    #[arg(long, requires = "grant_id")]
    pub key_id: Option<String>,
    /// The grant id (with --key-id).
    #[arg(long, requires = "key_id")]
    pub grant_id: Option<String>,
    /// Authorize only: DryRunOperationException when it would succeed.
    #[arg(long)]
    pub dry_run: bool,
}

/// Options of `revoke-grant`.
#[derive(Debug, clap::Args)]
pub struct RevokeGrantArgs {
    /// Key id or key ARN.
    #[arg(long)]
    pub key_id: String,
    /// The grant id.
    #[arg(long)]
    pub grant_id: String,
    /// Authorize only: DryRunOperationException when it would succeed.
    #[arg(long)]
    pub dry_run: bool,
}

/// Options of `update-key-description`.
#[derive(Debug, clap::Args)]
pub struct UpdateKeyDescriptionArgs {
    /// Key id, key ARN or alias/NAME.
    #[arg(long)]
    pub key_id: String,
    /// The new description.
    #[arg(long)]
    pub description: String,
}

/// Options of `tag-resource`.
#[derive(Debug, clap::Args)]
pub struct TagResourceArgs {
    /// Key id, key ARN or alias/NAME.
    #[arg(long)]
    pub key_id: String,
    /// `TagKey=K,TagValue=V` (several), or a JSON list of {"TagKey", "TagValue"}.
    #[arg(long, num_args = 1.., required = true)]
    pub tags: Vec<String>,
}

/// Options of `untag-resource`.
#[derive(Debug, clap::Args)]
pub struct UntagResourceArgs {
    /// Key id, key ARN or alias/NAME.
    #[arg(long)]
    pub key_id: String,
    /// The tag keys to remove.
    #[arg(long, num_args = 1.., required = true)]
    pub tag_keys: Vec<String>,
}

/// Options of `list-resource-tags` and `list-key-policies`.
#[derive(Debug, clap::Args)]
pub struct ListResourceTagsArgs {
    /// Key id or key ARN.
    #[arg(long)]
    pub key_id: String,
    /// Pages.
    #[command(flatten)]
    pub page: ListArgs,
}

/// `--encryption-algorithm` values: symmetric keys know one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EncryptionAlgorithmArg {
    /// AES-256-GCM, the only algorithm of symmetric keys.
    #[value(name = "SYMMETRIC_DEFAULT")]
    SymmetricDefault,
}

/// `--limit` and `--marker` of the list commands (pages, as AWS).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ListArgs {
    /// At most this many entries (1 to 1000) [default: all].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: Option<u32>,
    /// The NextMarker of the previous page.
    #[arg(long)]
    pub marker: Option<String>,
}

/// Options of `generate-random`.
#[derive(Debug, clap::Args)]
pub struct GenerateRandomArgs {
    /// How many bytes, 1 to 1024.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub number_of_bytes: u32,
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
    /// Grant tokens: each must be one this keystore issued for a grant that
    /// exists (InvalidGrantTokenException otherwise).
    #[arg(long, num_args = 1.., value_name = "TOKEN")]
    pub grant_tokens: Vec<String>,
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

/// Options of `create-key`.
#[derive(Debug, clap::Args)]
pub struct CreateKeyArgs {
    /// Free text describing the key.
    #[arg(long, default_value = "")]
    pub description: String,
    /// AWS_KMS (fresh material) or EXTERNAL (import your own material later).
    #[arg(long, value_enum, default_value = "AWS_KMS")]
    pub origin: OriginArg,
    /// A key policy to attach from the start: JSON text, or file://PATH.
    #[arg(long)]
    pub policy: Option<String>,
    /// Accept a policy that would not let you change it again.
    #[arg(long)]
    pub bypass_policy_lockout_safety_check: bool,
}

/// Options of `get-parameters-for-import`.
#[derive(Debug, clap::Args)]
pub struct GetParametersForImportArgs {
    /// An EXTERNAL key in state PendingImport.
    #[arg(long)]
    pub key_id: String,
    /// Only RSAES_OAEP_SHA_256.
    #[arg(long, default_value = "RSAES_OAEP_SHA_256")]
    pub wrapping_algorithm: String,
    /// RSA_2048, RSA_3072 or RSA_4096.
    #[arg(long, default_value = "RSA_2048")]
    pub wrapping_key_spec: String,
}

/// Options of `import-key-material`.
#[derive(Debug, clap::Args)]
pub struct ImportKeyMaterialArgs {
    /// The EXTERNAL key.
    #[arg(long)]
    pub key_id: String,
    /// fileb://PATH or base64: the material wrapped with RSAES_OAEP_SHA_256.
    #[arg(long)]
    pub encrypted_key_material: String,
    /// fileb://PATH or base64: the ImportToken of the same parameters.
    #[arg(long)]
    pub import_token: String,
    /// KEY_MATERIAL_EXPIRES (needs --valid-to) or KEY_MATERIAL_DOES_NOT_EXPIRE
    /// [default: expires exactly when --valid-to is given].
    #[arg(long)]
    pub expiration_model: Option<String>,
    /// When the material expires (RFC 3339).
    #[arg(long)]
    pub valid_to: Option<String>,
}

/// Options of `schedule-key-deletion`.
#[derive(Debug, clap::Args)]
pub struct ScheduleKeyDeletionArgs {
    /// Key id, key ARN or alias/NAME.
    #[arg(long)]
    pub key_id: String,
    /// Days to wait before the key and everything encrypted under it is gone.
    #[arg(long)]
    pub pending_window_in_days: Option<u32>,
}

/// Options of `enable-key-rotation`.
#[derive(Debug, clap::Args)]
pub struct EnableKeyRotationArgs {
    /// Key id, key ARN or alias/NAME.
    #[arg(long)]
    pub key_id: String,
    /// Days between automatic rotations.
    #[arg(long)]
    pub rotation_period_in_days: Option<u32>,
}

/// Options of `put-key-policy`.
#[derive(Debug, clap::Args)]
pub struct PutKeyPolicyArgs {
    /// Key id, key ARN or alias/NAME.
    #[arg(long)]
    pub key_id: String,
    /// The policy document: JSON text, or file://PATH.
    #[arg(long)]
    pub policy: String,
    /// Always "default".
    #[arg(long, default_value = "default")]
    pub policy_name: String,
    /// Accept a policy that would not let you change it again.
    #[arg(long)]
    pub bypass_policy_lockout_safety_check: bool,
}

/// Options of `get-key-policy`.
#[derive(Debug, clap::Args)]
pub struct GetKeyPolicyArgs {
    /// Key id, key ARN or alias/NAME.
    #[arg(long)]
    pub key_id: String,
    /// Always "default".
    #[arg(long, default_value = "default")]
    pub policy_name: String,
}

/// Options of `delete-alias`.
#[derive(Debug, clap::Args)]
pub struct DeleteAliasArgs {
    /// alias/NAME.
    #[arg(long)]
    pub alias_name: String,
}

/// Options of `list-aliases`.
#[derive(Debug, clap::Args)]
pub struct ListAliasesArgs {
    /// Only aliases of this key.
    #[arg(long)]
    pub key_id: Option<String>,
    /// Pages.
    #[command(flatten)]
    pub page: ListArgs,
}

/// Options of `encrypt`.
#[derive(Debug, clap::Args)]
pub struct EncryptArgs {
    /// Key id, key ARN or alias/NAME.
    #[arg(long)]
    pub key_id: String,
    /// fileb://PATH (raw bytes) or base64.
    #[arg(long)]
    pub plaintext: String,
    /// k=v,k2=v2 or a JSON object of strings; decrypt must give the same.
    #[arg(long)]
    pub encryption_context: Option<String>,
    /// Only SYMMETRIC_DEFAULT (AES-256-GCM).
    #[arg(long, value_enum)]
    pub encryption_algorithm: Option<EncryptionAlgorithmArg>,
    /// Grant tokens: each must be one this keystore issued for a grant that
    /// exists (InvalidGrantTokenException otherwise).
    #[arg(long, num_args = 1.., value_name = "TOKEN")]
    pub grant_tokens: Vec<String>,
}

/// Options of `decrypt`.
#[derive(Debug, clap::Args)]
pub struct DecryptArgs {
    /// fileb://PATH (raw bytes) or base64.
    #[arg(long)]
    pub ciphertext_blob: String,
    /// The encryption context the blob was made with.
    #[arg(long)]
    pub encryption_context: Option<String>,
    /// Refuse unless the blob was made under this key.
    #[arg(long)]
    pub key_id: Option<String>,
    /// Only SYMMETRIC_DEFAULT (AES-256-GCM).
    #[arg(long, value_enum)]
    pub encryption_algorithm: Option<EncryptionAlgorithmArg>,
    /// Grant tokens: each must be one this keystore issued for a grant that
    /// exists (InvalidGrantTokenException otherwise).
    #[arg(long, num_args = 1.., value_name = "TOKEN")]
    pub grant_tokens: Vec<String>,
}

/// Options of `re-encrypt`.
#[derive(Debug, clap::Args)]
pub struct ReEncryptArgs {
    /// fileb://PATH (raw bytes) or base64.
    #[arg(long)]
    pub ciphertext_blob: String,
    /// The key to encrypt under.
    #[arg(long)]
    pub destination_key_id: String,
    /// The context the blob was made with.
    #[arg(long)]
    pub source_encryption_context: Option<String>,
    /// The context to bind the new blob to.
    #[arg(long)]
    pub destination_encryption_context: Option<String>,
    /// Refuse unless the blob was made under this key.
    #[arg(long)]
    pub source_key_id: Option<String>,
    /// Only SYMMETRIC_DEFAULT (AES-256-GCM).
    #[arg(long, value_enum)]
    pub source_encryption_algorithm: Option<EncryptionAlgorithmArg>,
    /// Only SYMMETRIC_DEFAULT (AES-256-GCM).
    #[arg(long, value_enum)]
    pub destination_encryption_algorithm: Option<EncryptionAlgorithmArg>,
    /// Grant tokens: each must be one this keystore issued for a grant that
    /// exists (InvalidGrantTokenException otherwise).
    #[arg(long, num_args = 1.., value_name = "TOKEN")]
    pub grant_tokens: Vec<String>,
}

/// The aws CLI's global options that scripts for `aws kms` carry, accepted
/// after `kmsfs kms` as the aws CLI accepts them.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AwsCliArgs {
    /// The AWS region (with --endpoint-url; the local keystore has none and
    /// ignores it).
    #[arg(long, value_name = "REGION", global = true)]
    pub region: Option<String>,
    /// The AWS profile for credentials and region (with --endpoint-url; the
    /// local keystore ignores it).
    #[arg(long, value_name = "NAME", global = true)]
    pub profile: Option<String>,
    /// How binary arguments given inline or as file:// are read: base64
    /// (the default, as AWS CLI v2) or raw-in-base64-out (the text's own
    /// bytes, as AWS CLI v1). fileb:// is always the file's bytes.
    #[arg(long, value_enum, value_name = "FORMAT", global = true)]
    pub cli_binary_format: Option<BinaryFormat>,
    /// With --endpoint-url https://...: trust only the CAs in this PEM file
    /// for the endpoint's certificate, as the aws CLI's --ca-bundle
    /// [default: AWS_CA_BUNDLE if set, else the system's roots].
    #[arg(
        long,
        value_name = "FILE",
        global = true,
        visible_alias = "kms-ca-bundle"
    )]
    pub ca_bundle: Option<std::path::PathBuf>,
    /// Accepted for aws CLI scripts: kmsfs never pages its output.
    #[arg(long, global = true)]
    pub no_cli_pager: bool,
}

/// `--cli-binary-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BinaryFormat {
    /// Inline and file:// blobs are base64.
    Base64,
    /// Inline and file:// blobs are their own bytes.
    #[value(name = "raw-in-base64-out")]
    RawInBase64Out,
}
