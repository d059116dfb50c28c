//! The operations of the AWS KMS JSON 1.1 protocol (`kms::Operation`,
//! dispatched by an exhaustive match), each parsed once from its request
//! shape (an unknown field is ignored and decides nothing), run on the
//! local keystore for the authenticated caller, which authorizes it,
//! and answered in its AWS result shape (built by `kms::wire`, as the CLI's
//! JSON output is). Bodies that carry a plaintext are built in zeroized
//! buffers.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::error::ApiError;
use crate::kms::service::{DryRunTarget, GrantRequest};
use crate::kms::wire::{self, SYMMETRIC_DEFAULT};
use crate::kms::{
    Caller, DataKeySpec, EncryptionContext, KeyOrigin, KeyServiceExt, KmsError, LocalKeyStore,
    MAX_ENCRYPT_PLAINTEXT, Operation, Origin, RequestContext, ValidationCode,
};

/// A successful answer: plain JSON, or JSON holding a secret (zeroized buffer).
pub(crate) enum Reply {
    /// No secret inside.
    Json(Value),
    /// A serialized body holding a plaintext.
    Secret(Zeroizing<Vec<u8>>),
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body = if body.is_empty() {
        b"{}" as &[u8]
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| {
        // serde's message names the field and position, never the value.
        ApiError::new(
            "SerializationException",
            400,
            format!("the request body is not a valid request of this operation: {e}"),
        )
    })
}

fn blob(b64: &str, field: &str) -> Result<Zeroizing<Vec<u8>>, ApiError> {
    B64.decode(b64.as_bytes()).map(Zeroizing::new).map_err(|_| {
        ApiError::new(
            "SerializationException",
            400,
            format!("{field} is not valid base64"),
        )
    })
}

/// `[(name, value)]` as a JSON object in a zeroized buffer; values are
/// base64, ARNs or fixed names (nothing to escape).
fn secret_json(fields: &[(&str, &str)]) -> Reply {
    let mut out = Zeroizing::new(Vec::with_capacity(
        fields
            .iter()
            .map(|(k, v)| k.len() + v.len() + 8)
            .sum::<usize>()
            + 2,
    ));
    out.push(b'{');
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        for part in ["\"", k, "\":\"", v, "\""] {
            out.extend_from_slice(part.as_bytes());
        }
    }
    out.push(b'}');
    Reply::Secret(out)
}

fn limit_and_start(limit: Option<i64>, marker: Option<&str>) -> Result<(usize, usize), ApiError> {
    let limit = match limit {
        None => 100,
        Some(n) if (1..=1000).contains(&n) => n as usize,
        Some(n) => {
            return Err(ApiError::validation(format!(
                "Limit must be between 1 and 1000, got {n}"
            )));
        }
    };
    let start = match marker {
        None => 0,
        Some(m) => m.parse::<usize>().map_err(|_| {
            ApiError::new(
                "InvalidMarkerException",
                400,
                "the Marker is not one this server made",
            )
        })?,
    };
    Ok((limit, start))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct KeyIdReq {
    key_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateKeyReq {
    #[serde(default)]
    description: String,
    origin: Option<String>,
    key_spec: Option<String>,
    customer_master_key_spec: Option<String>,
    key_usage: Option<String>,
    policy: Option<String>,
    #[serde(default)]
    bypass_policy_lockout_safety_check: bool,
    #[serde(default)]
    tags: Vec<TagReq>,
    multi_region: Option<bool>,
    custom_key_store_id: Option<String>,
    xks_key_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateGrantReq {
    key_id: String,
    grantee_principal: String,
    retiring_principal: Option<String>,
    #[serde(default)]
    operations: Vec<String>,
    constraints: Option<crate::kms::model::GrantConstraints>,
    #[serde(default)]
    grant_tokens: Vec<String>,
    name: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListGrantsReq {
    limit: Option<i64>,
    marker: Option<String>,
    key_id: Option<String>,
    grant_id: Option<String>,
    grantee_principal: Option<String>,
    retiring_principal: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RetireGrantReq {
    grant_token: Option<String>,
    key_id: Option<String>,
    grant_id: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TagReq {
    tag_key: String,
    tag_value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TagResourceReq {
    key_id: String,
    tags: Vec<TagReq>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UntagResourceReq {
    key_id: String,
    tag_keys: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DescriptionReq {
    key_id: String,
    description: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PageReq {
    limit: Option<i64>,
    marker: Option<String>,
    key_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AliasReq {
    alias_name: String,
    target_key_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ScheduleReq {
    key_id: String,
    pending_window_in_days: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RotationReq {
    key_id: String,
    rotation_period_in_days: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EncryptReq {
    key_id: String,
    plaintext: Zeroizing<String>,
    encryption_context: Option<EncryptionContext>,
    encryption_algorithm: Option<String>,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    grant_tokens: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DecryptReq {
    ciphertext_blob: String,
    encryption_context: Option<EncryptionContext>,
    key_id: Option<String>,
    encryption_algorithm: Option<String>,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    grant_tokens: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ReEncryptReq {
    ciphertext_blob: String,
    source_encryption_context: Option<EncryptionContext>,
    source_key_id: Option<String>,
    destination_key_id: String,
    destination_encryption_context: Option<EncryptionContext>,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    grant_tokens: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DataKeyReq {
    key_id: String,
    key_spec: Option<String>,
    number_of_bytes: Option<usize>,
    encryption_context: Option<EncryptionContext>,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    grant_tokens: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RandomReq {
    number_of_bytes: Option<usize>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GetPolicyReq {
    key_id: String,
    policy_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PutPolicyReq {
    key_id: String,
    policy_name: Option<String>,
    policy: String,
    #[serde(default)]
    bypass_policy_lockout_safety_check: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ImportParamsReq {
    key_id: String,
    wrapping_algorithm: String,
    wrapping_key_spec: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ImportReq {
    key_id: String,
    import_token: String,
    encrypted_key_material: Zeroizing<String>,
    expiration_model: Option<String>,
    valid_to: Option<f64>,
}

fn check_algorithm(a: &Option<String>) -> Result<(), ApiError> {
    match a.as_deref() {
        None | Some(SYMMETRIC_DEFAULT) => Ok(()),
        Some(other) => Err(ApiError::validation(format!(
            "EncryptionAlgorithm {other:?} is not supported; kmsfs keys use SYMMETRIC_DEFAULT"
        ))),
    }
}

fn data_key_spec(r: &DataKeyReq) -> Result<DataKeySpec, ApiError> {
    match (r.number_of_bytes, r.key_spec.as_deref()) {
        (Some(_), Some(_)) => Err(ApiError::validation(
            "give KeySpec or NumberOfBytes, not both",
        )),
        (Some(n), None) => Ok(DataKeySpec::Bytes(n)),
        (None, Some("AES_256")) => Ok(DataKeySpec::Aes256),
        (None, Some("AES_128")) => Ok(DataKeySpec::Aes128),
        (None, Some(other)) => Err(ApiError::validation(format!(
            "KeySpec {other:?} is not AES_256 or AES_128"
        ))),
        (None, None) => Err(ApiError::validation("KeySpec or NumberOfBytes is required")),
    }
}

fn ctx(c: Option<EncryptionContext>) -> EncryptionContext {
    c.unwrap_or_default()
}

/// The empty JSON object answered by operations that return nothing.
fn empty() -> Result<Reply, ApiError> {
    Ok(Reply::Json(json!({})))
}

/// Runs operation `op` with request `body` for `caller`. The body is parsed
/// once, into the request shape of `op`; the key service authorizes the
/// parsed request (this server decides nothing).
pub(crate) fn dispatch(
    ks: &LocalKeyStore,
    caller: &Caller,
    op: Operation,
    body: &[u8],
) -> Result<Reply, ApiError> {
    use Operation as O;
    let r = match op {
        O::CreateKey => create_key(ks, caller, body),
        O::DescribeKey => describe_key(ks, caller, body),
        O::ListKeys => list_keys(ks, caller, body),
        O::ListAliases => list_aliases(ks, caller, body),
        O::ListKeyRotations => list_key_rotations(ks, caller, body),
        O::CreateAlias | O::UpdateAlias => create_or_update_alias(ks, caller, op, body),
        O::DeleteAlias => delete_alias(ks, caller, body),
        O::EnableKey => enable_key(ks, caller, body),
        O::DisableKey => disable_key(ks, caller, body),
        O::ScheduleKeyDeletion => schedule_key_deletion(ks, caller, body),
        O::CancelKeyDeletion => cancel_key_deletion(ks, caller, body),
        O::EnableKeyRotation => enable_key_rotation(ks, caller, body),
        O::DisableKeyRotation => disable_key_rotation(ks, caller, body),
        O::GetKeyRotationStatus => get_key_rotation_status(ks, caller, body),
        O::RotateKeyOnDemand => rotate_key_on_demand(ks, caller, body),
        O::Encrypt => encrypt(ks, caller, body),
        O::Decrypt => decrypt(ks, caller, body),
        O::ReEncryptFrom => re_encrypt(ks, caller, body),
        O::GenerateDataKey => generate_data_key(ks, caller, body),
        O::GenerateDataKeyWithoutPlaintext => generate_data_key_without_plaintext(ks, caller, body),
        O::GenerateRandom => generate_random(ks, caller, body),
        O::GetKeyPolicy => get_key_policy(ks, caller, body),
        O::PutKeyPolicy => put_key_policy(ks, caller, body),
        O::GetParametersForImport => get_parameters_for_import(ks, caller, body),
        O::ImportKeyMaterial => import_key_material(ks, caller, body),
        O::DeleteImportedKeyMaterial => delete_imported_key_material(ks, caller, body),
        O::UpdateKeyDescription => update_key_description(ks, caller, body),
        O::TagResource => tag_resource(ks, caller, body),
        O::UntagResource => untag_resource(ks, caller, body),
        O::ListResourceTags => list_resource_tags(ks, caller, body),
        O::ListKeyPolicies => list_key_policies(ks, caller, body),
        O::CreateGrant => create_grant(ks, caller, body),
        O::ListGrants | O::ListRetirableGrants => list_grants(ks, caller, op, body),
        O::RetireGrant => retire_grant(ks, caller, body),
        O::RevokeGrant => revoke_grant(ks, caller, body),
        // Not callable: `Operation::from_target` never gives these.
        O::ReEncryptTo | O::DeleteKey | O::RotateKey | O::DeleteExpiredKeyMaterial => {
            Err(unknown_operation(op.as_str()))
        }
    };
    r.map_err(|e| e.with_arns(&ks.arn_prefix()))
}

/// The AWS KMS operations kmsfs does not serve, with what kmsfs lacks for
/// them (docs/PROTOCOL.md has the whole table).
pub(crate) const NOT_SERVED: &[(&str, &str)] = &[
    ("ConnectCustomKeyStore", "custom key stores"),
    ("CreateCustomKeyStore", "custom key stores"),
    ("DeleteCustomKeyStore", "custom key stores"),
    ("DescribeCustomKeyStores", "custom key stores"),
    ("DisconnectCustomKeyStore", "custom key stores"),
    ("UpdateCustomKeyStore", "custom key stores"),
    ("Decapsulate", "asymmetric (ML-KEM) keys"),
    ("Encapsulate", "asymmetric (ML-KEM) keys"),
    ("DeriveSharedSecret", "asymmetric key agreement keys"),
    ("GenerateDataKeyPair", "asymmetric data key pairs"),
    (
        "GenerateDataKeyPairWithoutPlaintext",
        "asymmetric data key pairs",
    ),
    ("GenerateMac", "HMAC keys"),
    ("VerifyMac", "HMAC keys"),
    ("GetPublicKey", "asymmetric keys"),
    ("Sign", "asymmetric signing keys"),
    ("Verify", "asymmetric signing keys"),
    ("ReplicateKey", "multi-Region keys"),
    ("UpdatePrimaryRegion", "multi-Region keys"),
    (
        "GetKeyLastUsage",
        "last-use tracking (the audit trail records every use: kmsfs audit show)",
    ),
];

/// The answer to an operation this server does not serve: an AWS KMS
/// operation kmsfs lacks is UnsupportedOperationException saying what is
/// missing; any other name UnknownOperationException.
pub(crate) fn unknown_operation(name: &str) -> ApiError {
    match NOT_SERVED.iter().find(|(op, _)| *op == name) {
        Some((op, missing)) => ApiError::new(
            "UnsupportedOperationException",
            400,
            format!("{op} is not supported: kmsfs has no {missing}"),
        ),
        None => ApiError::new(
            "UnknownOperationException",
            400,
            format!("operation {name} is not an AWS KMS operation kmsfs knows"),
        ),
    }
}

/// The values of an enum of the AWS API that kmsfs serves (`served`) and
/// the others it knows (`known`): another value is a ValidationException
/// in AWS's shape, a known one kmsfs does not serve an
/// UnsupportedOperationException naming what is missing.
fn check_enum(
    field: &str,
    value: Option<&str>,
    served: &[&str],
    known: &[&str],
    missing: &str,
) -> Result<(), ApiError> {
    let Some(v) = value else { return Ok(()) };
    if served.contains(&v) {
        Ok(())
    } else if known.contains(&v) {
        Err(ApiError::new(
            "UnsupportedOperationException",
            400,
            format!("{field} {v} is not supported: kmsfs {missing}"),
        ))
    } else {
        let all: Vec<&str> = served.iter().chain(known).copied().collect();
        Err(ApiError::validation(format!(
            "1 validation error detected: Value '{v}' at '{}' failed to satisfy constraint: \
             Member must satisfy enum value set: [{}]",
            lower_first(field),
            all.join(", ")
        )))
    }
}

/// `KeySpec` → `keySpec`, as AWS names members in validation messages.
fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Key specs AWS knows besides SYMMETRIC_DEFAULT.
const OTHER_KEY_SPECS: [&str; 19] = [
    "RSA_2048",
    "RSA_3072",
    "RSA_4096",
    "ECC_NIST_P256",
    "ECC_NIST_P384",
    "ECC_NIST_P521",
    "ECC_SECG_P256K1",
    "HMAC_224",
    "HMAC_256",
    "HMAC_384",
    "HMAC_512",
    "SM2",
    "ML_DSA_44",
    "ML_DSA_65",
    "ML_DSA_87",
    "ECC_NIST_EDWARDS25519",
    "ML_KEM_512",
    "ML_KEM_768",
    "ML_KEM_1024",
];

/// CreateKey: checks the requested spec, usage, origin, region and key
/// store, then makes the key with its policy and tags in one change.
fn create_key(ks: &LocalKeyStore, caller: &Caller, body: &[u8]) -> Result<Reply, ApiError> {
    let r: CreateKeyReq = parse(body)?;
    let symmetric = ["SYMMETRIC_DEFAULT"];
    let asymmetric = "keys are symmetric (SYMMETRIC_DEFAULT) only: no asymmetric, HMAC or \
                      post-quantum keys";
    check_enum(
        "KeySpec",
        r.key_spec.as_deref(),
        &symmetric,
        &OTHER_KEY_SPECS,
        asymmetric,
    )?;
    check_enum(
        "CustomerMasterKeySpec",
        r.customer_master_key_spec.as_deref(),
        &symmetric,
        &OTHER_KEY_SPECS[..12],
        asymmetric,
    )?;
    check_enum(
        "KeyUsage",
        r.key_usage.as_deref(),
        &["ENCRYPT_DECRYPT"],
        &[
            "SIGN_VERIFY",
            "GENERATE_VERIFY_MAC",
            "KEY_AGREEMENT",
            "ENCAPSULATE_DECAPSULATE",
        ],
        "keys only encrypt and decrypt (ENCRYPT_DECRYPT)",
    )?;
    check_enum(
        "Origin",
        r.origin.as_deref(),
        &["AWS_KMS", "EXTERNAL"],
        &["AWS_CLOUDHSM", "EXTERNAL_KEY_STORE"],
        "has no custom key stores (CloudHSM or external); use AWS_KMS or EXTERNAL",
    )?;
    if r.multi_region == Some(true) {
        return Err(ApiError::new(
            "UnsupportedOperationException",
            400,
            "MultiRegion is not supported: kmsfs keys live in one keystore and are never \
             replicated to other regions; create the key without MultiRegion",
        ));
    }
    if r.custom_key_store_id.is_some() || r.xks_key_id.is_some() {
        return Err(ApiError::new(
            "UnsupportedOperationException",
            400,
            "CustomKeyStoreId and XksKeyId are not supported: kmsfs has no custom key stores",
        ));
    }
    let origin = match r.origin.as_deref() {
        Some("EXTERNAL") => KeyOrigin::External,
        _ => KeyOrigin::Kms,
    };
    if let Some(p) = &r.policy {
        // Refuse a bad policy before a key exists.
        crate::kms::policy::KeyPolicy::parse(p).map_err(KmsError::into_malformed_policy)?;
    }
    let tags: Vec<(String, String)> = r
        .tags
        .into_iter()
        .map(|t| (t.tag_key, t.tag_value))
        .collect();
    let m = ks.create_key_full(
        caller,
        &r.description,
        origin,
        r.policy
            .as_deref()
            .map(|p| (p, r.bypass_policy_lockout_safety_check)),
        &tags,
    )?;
    Ok(Reply::Json(
        json!({ "KeyMetadata": wire::metadata_json_aws(&m) }),
    ))
}

/// A request the server makes for `caller` to the key service.
fn served(caller: &Caller) -> RequestContext<'static> {
    RequestContext::new(*caller, Origin::Server)
}

/// CreateGrant: a grant on a key; answers its id and token.
fn create_grant(ks: &LocalKeyStore, caller: &Caller, body: &[u8]) -> Result<Reply, ApiError> {
    let r: CreateGrantReq = parse(body)?;
    ks.check_grant_tokens(&r.grant_tokens)?;
    let req = GrantRequest {
        key_id: r.key_id,
        grantee: r.grantee_principal,
        retiring: r.retiring_principal,
        operations: r.operations,
        constraints: r.constraints,
        name: r.name,
    };
    let (id, token) = ks.create_grant(caller, &req, r.dry_run)?;
    Ok(Reply::Json(json!({ "GrantId": id, "GrantToken": token })))
}

/// ListGrants (a key's) or ListRetirableGrants (a retiring principal's), `op`.
fn list_grants(
    ks: &LocalKeyStore,
    caller: &Caller,
    op: Operation,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let r: ListGrantsReq = parse(body)?;
    let (limit, start) = limit_and_start(r.limit.or(Some(50)), r.marker.as_deref())?;
    let grants = if op == Operation::ListGrants {
        let key = r
            .key_id
            .ok_or_else(|| ApiError::validation("KeyId is required"))?;
        ks.list_grants(
            caller,
            &key,
            r.grant_id.as_deref(),
            r.grantee_principal.as_deref(),
        )?
    } else {
        let p = r
            .retiring_principal
            .ok_or_else(|| ApiError::validation("RetiringPrincipal is required"))?;
        ks.list_retirable_grants(caller, &p)?
    };
    let account = ks.account_id();
    let list: Vec<Value> = grants
        .iter()
        .map(|g| wire::grant_json(g, &ks.key_arn(&g.key_id), account))
        .collect();
    Ok(Reply::Json(wire::page("Grants", &list, start, limit)))
}

/// RetireGrant: by grant token, or key and grant id.
fn retire_grant(ks: &LocalKeyStore, caller: &Caller, body: &[u8]) -> Result<Reply, ApiError> {
    let r: RetireGrantReq = parse(body)?;
    ks.retire_grant(
        caller,
        r.grant_token.as_deref(),
        r.key_id.as_deref(),
        r.grant_id.as_deref(),
        r.dry_run,
    )?;
    empty()
}

/// RevokeGrant: a key's grant, by id.
fn revoke_grant(ks: &LocalKeyStore, caller: &Caller, body: &[u8]) -> Result<Reply, ApiError> {
    let r: RetireGrantReq = parse(body)?;
    let key = r
        .key_id
        .ok_or_else(|| ApiError::validation("KeyId is required"))?;
    let id = r
        .grant_id
        .ok_or_else(|| ApiError::validation("GrantId is required"))?;
    ks.revoke_grant(caller, &key, &id, r.dry_run)?;
    empty()
}

/// UpdateKeyDescription: replaces a key's description.
fn update_key_description(
    ks: &LocalKeyStore,
    caller: &Caller,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let r: DescriptionReq = parse(body)?;
    ks.update_key_description(caller, &r.key_id, &r.description)?;
    empty()
}

/// TagResource: adds or replaces a key's tags.
fn tag_resource(ks: &LocalKeyStore, caller: &Caller, body: &[u8]) -> Result<Reply, ApiError> {
    let r: TagResourceReq = parse(body)?;
    let tags: Vec<(String, String)> = r
        .tags
        .into_iter()
        .map(|t| (t.tag_key, t.tag_value))
        .collect();
    ks.tag_resource(caller, &r.key_id, &tags)?;
    empty()
}

/// UntagResource: removes tags of a key.
fn untag_resource(ks: &LocalKeyStore, caller: &Caller, body: &[u8]) -> Result<Reply, ApiError> {
    let r: UntagResourceReq = parse(body)?;
    ks.untag_resource(caller, &r.key_id, &r.tag_keys)?;
    empty()
}

/// ListResourceTags: one page of a key's tags.
fn list_resource_tags(ks: &LocalKeyStore, caller: &Caller, body: &[u8]) -> Result<Reply, ApiError> {
    let r: PageReq = parse(body)?;
    let (limit, start) = limit_and_start(r.limit.or(Some(50)), r.marker.as_deref())?;
    let key = r
        .key_id
        .ok_or_else(|| ApiError::validation("KeyId is required"))?;
    let tags: Vec<Value> = ks
        .list_resource_tags(caller, &key)?
        .into_iter()
        .map(|(k, v)| json!({ "TagKey": k, "TagValue": v }))
        .collect();
    Ok(Reply::Json(wire::page("Tags", &tags, start, limit)))
}

/// ListKeyPolicies: the names of a key's policies.
fn list_key_policies(ks: &LocalKeyStore, caller: &Caller, body: &[u8]) -> Result<Reply, ApiError> {
    let r: PageReq = parse(body)?;
    let (limit, start) = limit_and_start(r.limit, r.marker.as_deref())?;
    let key = r
        .key_id
        .ok_or_else(|| ApiError::validation("KeyId is required"))?;
    let names = ks.list_key_policies(caller, &key)?;
    Ok(Reply::Json(wire::page("PolicyNames", &names, start, limit)))
}

/// DescribeKey: the key's metadata.
fn describe_key(ks: &LocalKeyStore, caller: &Caller, body: &[u8]) -> Result<Reply, ApiError> {
    let r: KeyIdReq = parse(body)?;
    let m = ks.describe_key(&served(caller), &r.key_id)?;
    Ok(Reply::Json(
        json!({ "KeyMetadata": wire::metadata_json_aws(&m) }),
    ))
}

/// ListKeys: one page of the keys.
fn list_keys(ks: &LocalKeyStore, caller: &Caller, body: &[u8]) -> Result<Reply, ApiError> {
    let r: PageReq = parse(body)?;
    let (limit, start) = limit_and_start(r.limit, r.marker.as_deref())?;
    Ok(Reply::Json(wire::page(
        "Keys",
        &ks.list_keys(caller)?,
        start,
        limit,
    )))
}

/// ListAliases: one page of the aliases, of one key if KeyId is given.
fn list_aliases(ks: &LocalKeyStore, caller: &Caller, body: &[u8]) -> Result<Reply, ApiError> {
    let r: PageReq = parse(body)?;
    let (limit, start) = limit_and_start(r.limit, r.marker.as_deref())?;
    let list = ks.list_aliases(caller, r.key_id.as_deref())?;
    Ok(Reply::Json(wire::page("Aliases", &list, start, limit)))
}

/// ListKeyRotations: one page of a key's rotations.
fn list_key_rotations(ks: &LocalKeyStore, caller: &Caller, body: &[u8]) -> Result<Reply, ApiError> {
    let r: PageReq = parse(body)?;
    let (limit, start) = limit_and_start(r.limit, r.marker.as_deref())?;
    let key = r
        .key_id
        .ok_or_else(|| ApiError::validation("KeyId is required"))?;
    // As botocore's RotationsListEntry: KeyMaterialId, not kmsfs's version.
    let list: Vec<Value> = ks
        .list_key_rotations(caller, &key)?
        .iter()
        .map(|r| {
            json!({
                "KeyId": r.key_id, "KeyMaterialId": r.key_material_id,
                "RotationDate": r.rotation_date, "RotationType": r.rotation_type,
            })
        })
        .collect();
    Ok(Reply::Json(wire::page("Rotations", &list, start, limit)))
}

/// CreateAlias or UpdateAlias (`op`): points an alias at TargetKeyId.
fn create_or_update_alias(
    ks: &LocalKeyStore,
    caller: &Caller,
    op: Operation,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let r: AliasReq = parse(body)?;
    let target = r
        .target_key_id
        .ok_or_else(|| ApiError::validation("TargetKeyId is required"))?;
    if op == Operation::CreateAlias {
        ks.create_alias(caller, &r.alias_name, &target)?;
    } else {
        ks.update_alias(caller, &r.alias_name, &target)?;
    }
    empty()
}

/// DeleteAlias: removes an alias.
fn delete_alias(ks: &LocalKeyStore, caller: &Caller, body: &[u8]) -> Result<Reply, ApiError> {
    let r: AliasReq = parse(body)?;
    ks.delete_alias(caller, &r.alias_name)?;
    empty()
}

/// EnableKey: enables a key.
fn enable_key(ks: &LocalKeyStore, caller: &Caller, body: &[u8]) -> Result<Reply, ApiError> {
    let r: KeyIdReq = parse(body)?;
    ks.enable_key(caller, &r.key_id)?;
    empty()
}

/// DisableKey: disables a key.
fn disable_key(ks: &LocalKeyStore, caller: &Caller, body: &[u8]) -> Result<Reply, ApiError> {
    let r: KeyIdReq = parse(body)?;
    ks.disable_key(caller, &r.key_id)?;
    empty()
}

/// ScheduleKeyDeletion: schedules a key's deletion after its pending window.
fn schedule_key_deletion(
    ks: &LocalKeyStore,
    caller: &Caller,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let r: ScheduleReq = parse(body)?;
    let d = ks.schedule_key_deletion(caller, &r.key_id, r.pending_window_in_days)?;
    Ok(Reply::Json(serde_json::to_value(&d).unwrap_or(Value::Null)))
}

/// CancelKeyDeletion: cancels a scheduled deletion.
fn cancel_key_deletion(
    ks: &LocalKeyStore,
    caller: &Caller,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let r: KeyIdReq = parse(body)?;
    Ok(Reply::Json(
        json!({ "KeyId": ks.cancel_key_deletion(caller, &r.key_id)? }),
    ))
}

/// EnableKeyRotation: turns on automatic rotation, with an optional period.
fn enable_key_rotation(
    ks: &LocalKeyStore,
    caller: &Caller,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let r: RotationReq = parse(body)?;
    ks.enable_key_rotation(caller, &r.key_id, r.rotation_period_in_days)?;
    empty()
}

/// DisableKeyRotation: turns off automatic rotation.
fn disable_key_rotation(
    ks: &LocalKeyStore,
    caller: &Caller,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let r: KeyIdReq = parse(body)?;
    ks.disable_key_rotation(caller, &r.key_id)?;
    empty()
}

/// GetKeyRotationStatus: whether and how often a key rotates.
fn get_key_rotation_status(
    ks: &LocalKeyStore,
    caller: &Caller,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let r: KeyIdReq = parse(body)?;
    let st = ks.get_key_rotation_status(caller, &r.key_id)?;
    Ok(Reply::Json(
        serde_json::to_value(&st).unwrap_or(Value::Null),
    ))
}

/// RotateKeyOnDemand: rotates a key now.
fn rotate_key_on_demand(
    ks: &LocalKeyStore,
    caller: &Caller,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let r: KeyIdReq = parse(body)?;
    let (key, _) = ks.rotate_key_on_demand(caller, &r.key_id)?;
    Ok(Reply::Json(json!({ "KeyId": key })))
}

/// Encrypt: encrypts a small plaintext (at most `MAX_ENCRYPT_PLAINTEXT`) under a key.
fn encrypt(ks: &LocalKeyStore, caller: &Caller, body: &[u8]) -> Result<Reply, ApiError> {
    let arn = |k: &str| ks.key_arn(k);
    let r: EncryptReq = parse(body)?;
    check_algorithm(&r.encryption_algorithm)?;
    let pt = blob(&r.plaintext, "Plaintext")?;
    ks.check_grant_tokens(&r.grant_tokens)?;
    let c = ctx(r.encryption_context);
    if r.dry_run {
        return Err(ks
            .dry_run(
                &served(caller),
                Operation::Encrypt,
                DryRunTarget::Key(&r.key_id),
                &c,
            )
            .into());
    }
    if pt.is_empty() || pt.len() > MAX_ENCRYPT_PLAINTEXT {
        let constraint = if pt.is_empty() {
            "greater than or equal to 1".to_string()
        } else {
            format!("less than or equal to {MAX_ENCRYPT_PLAINTEXT}")
        };
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value at 'plaintext' failed to satisfy constraint: \
             Member must have length {constraint}"
        )));
    }
    let e = ks.encrypt(&served(caller), &r.key_id, &pt, &c)?;
    Ok(Reply::Json(wire::ciphertext_json(
        &B64.encode(&e.ciphertext_blob),
        &arn(&e.key_id),
        true,
    )))
}

/// Decrypt: the plaintext of a ciphertext blob, answered in a zeroized body.
fn decrypt(ks: &LocalKeyStore, caller: &Caller, body: &[u8]) -> Result<Reply, ApiError> {
    let arn = |k: &str| ks.key_arn(k);
    let r: DecryptReq = parse(body)?;
    check_algorithm(&r.encryption_algorithm)?;
    let b = blob(&r.ciphertext_blob, "CiphertextBlob")?;
    ks.check_grant_tokens(&r.grant_tokens)?;
    let c = ctx(r.encryption_context);
    if r.dry_run {
        return Err(ks
            .dry_run(
                &served(caller),
                Operation::Decrypt,
                DryRunTarget::Blob(&b),
                &c,
            )
            .into());
    }
    let d = ks.decrypt(&served(caller), &b, &c, r.key_id.as_deref())?;
    let pt = Zeroizing::new(B64.encode(d.plaintext.expose()));
    Ok(secret_json(&[
        ("KeyId", &arn(&d.key_id)),
        ("Plaintext", &pt),
        ("EncryptionAlgorithm", SYMMETRIC_DEFAULT),
    ]))
}

/// ReEncrypt: decrypts a ciphertext blob and encrypts it again under another key.
fn re_encrypt(ks: &LocalKeyStore, caller: &Caller, body: &[u8]) -> Result<Reply, ApiError> {
    let arn = |k: &str| ks.key_arn(k);
    let r: ReEncryptReq = parse(body)?;
    let b = blob(&r.ciphertext_blob, "CiphertextBlob")?;
    ks.check_grant_tokens(&r.grant_tokens)?;
    if let Some(want) = &r.source_key_id {
        ks.check_ciphertext_key(&served(caller), &b, want)?;
    }
    if r.dry_run {
        let src_ctx = ctx(r.source_encryption_context);
        let dst_ctx = ctx(r.destination_encryption_context);
        let from = ks.dry_run(
            &served(caller),
            Operation::ReEncryptFrom,
            DryRunTarget::Blob(&b),
            &src_ctx,
        );
        if !is_dry_run(&from) {
            return Err(from.into());
        }
        return Err(ks
            .dry_run(
                &served(caller),
                Operation::ReEncryptTo,
                DryRunTarget::Key(&r.destination_key_id),
                &dst_ctx,
            )
            .into());
    }
    let e = ks.re_encrypt(
        &served(caller),
        &b,
        &ctx(r.source_encryption_context),
        &r.destination_key_id,
        &ctx(r.destination_encryption_context),
    )?;
    let src = e.source_key_id.as_deref().map(arn);
    Ok(Reply::Json(wire::re_encrypted_json(
        &B64.encode(&e.ciphertext_blob),
        src.as_deref(),
        &arn(&e.key_id),
    )))
}

/// GenerateDataKey: a new data key, plaintext and wrapped, in a zeroized body.
fn generate_data_key(ks: &LocalKeyStore, caller: &Caller, body: &[u8]) -> Result<Reply, ApiError> {
    let arn = |k: &str| ks.key_arn(k);
    let r: DataKeyReq = parse(body)?;
    let spec = data_key_spec(&r)?;
    ks.check_grant_tokens(&r.grant_tokens)?;
    if r.dry_run {
        return Err(dry_run_data_key(ks, caller, Operation::GenerateDataKey, r));
    }
    let dk = ks.generate_data_key(&served(caller), &r.key_id, spec, &ctx(r.encryption_context))?;
    let pt = Zeroizing::new(B64.encode(dk.plaintext.expose()));
    Ok(secret_json(&[
        ("CiphertextBlob", &B64.encode(&dk.ciphertext_blob)),
        ("Plaintext", &pt),
        ("KeyId", &arn(&dk.key_id)),
    ]))
}

/// GenerateDataKeyWithoutPlaintext: a new data key, wrapped only.
fn generate_data_key_without_plaintext(
    ks: &LocalKeyStore,
    caller: &Caller,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let arn = |k: &str| ks.key_arn(k);
    let r: DataKeyReq = parse(body)?;
    let spec = data_key_spec(&r)?;
    ks.check_grant_tokens(&r.grant_tokens)?;
    if r.dry_run {
        return Err(dry_run_data_key(
            ks,
            caller,
            Operation::GenerateDataKeyWithoutPlaintext,
            r,
        ));
    }
    let e = ks.generate_data_key_without_plaintext(
        &served(caller),
        &r.key_id,
        spec,
        &ctx(r.encryption_context),
    )?;
    Ok(Reply::Json(wire::ciphertext_json(
        &B64.encode(&e.ciphertext_blob),
        &arn(&e.key_id),
        false,
    )))
}

/// DryRun of GenerateDataKey or GenerateDataKeyWithoutPlaintext (`op`).
fn dry_run_data_key(ks: &LocalKeyStore, caller: &Caller, op: Operation, r: DataKeyReq) -> ApiError {
    let c = ctx(r.encryption_context);
    ks.dry_run(&served(caller), op, DryRunTarget::Key(&r.key_id), &c)
        .into()
}

/// True for the answer of a DryRun that would have succeeded.
fn is_dry_run(e: &KmsError) -> bool {
    matches!(
        e,
        KmsError::Validation {
            code: Some(ValidationCode::DryRun),
            ..
        }
    )
}

/// GenerateRandom: NumberOfBytes random bytes, in a zeroized body.
/// Audited by the key service.
fn generate_random(ks: &LocalKeyStore, caller: &Caller, body: &[u8]) -> Result<Reply, ApiError> {
    let r: RandomReq = parse(body)?;
    let n = r
        .number_of_bytes
        .ok_or_else(|| ApiError::validation("NumberOfBytes is required"))?;
    let n = DataKeySpec::Bytes(n).byte_len()?;
    let bytes = ks.generate_random(caller, n)?;
    let pt = Zeroizing::new(B64.encode(bytes.expose()));
    Ok(secret_json(&[("Plaintext", &pt)]))
}

/// GetKeyPolicy: a key's policy document, pretty-printed.
fn get_key_policy(ks: &LocalKeyStore, caller: &Caller, body: &[u8]) -> Result<Reply, ApiError> {
    let r: GetPolicyReq = parse(body)?;
    let name = r
        .policy_name
        .as_deref()
        .unwrap_or(crate::kms::policy::POLICY_NAME);
    let doc = ks.get_key_policy(caller, &r.key_id, name)?;
    let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    Ok(Reply::Json(json!({ "Policy": text, "PolicyName": name })))
}

/// PutKeyPolicy: replaces a key's policy document.
fn put_key_policy(ks: &LocalKeyStore, caller: &Caller, body: &[u8]) -> Result<Reply, ApiError> {
    let r: PutPolicyReq = parse(body)?;
    let name = r
        .policy_name
        .as_deref()
        .unwrap_or(crate::kms::policy::POLICY_NAME);
    ks.put_key_policy_checked(
        caller,
        &r.key_id,
        name,
        &r.policy,
        r.bypass_policy_lockout_safety_check,
    )?;
    empty()
}

/// GetParametersForImport: a wrapping public key and import token for an EXTERNAL key.
fn get_parameters_for_import(
    ks: &LocalKeyStore,
    caller: &Caller,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let arn = |k: &str| ks.key_arn(k);
    let r: ImportParamsReq = parse(body)?;
    let p = ks.get_parameters_for_import(
        caller,
        &r.key_id,
        &r.wrapping_algorithm,
        &r.wrapping_key_spec,
    )?;
    Ok(Reply::Json(json!({
        "KeyId": arn(&p.key_id),
        "ImportToken": B64.encode(&p.import_token),
        "PublicKey": B64.encode(&p.public_key),
        "ParametersValidTo": p.parameters_valid_to,
    })))
}

/// ImportKeyMaterial: checks the expiration model, then imports wrapped key material.
fn import_key_material(
    ks: &LocalKeyStore,
    caller: &Caller,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let r: ImportReq = parse(body)?;
    let valid_to = match (r.expiration_model.as_deref(), r.valid_to) {
        (Some("KEY_MATERIAL_DOES_NOT_EXPIRE"), Some(_)) => {
            return Err(ApiError::validation(
                "ValidTo contradicts ExpirationModel KEY_MATERIAL_DOES_NOT_EXPIRE",
            ));
        }
        (Some("KEY_MATERIAL_EXPIRES"), None) => {
            return Err(ApiError::validation(
                "ExpirationModel KEY_MATERIAL_EXPIRES needs ValidTo",
            ));
        }
        (Some(m), _) if m != "KEY_MATERIAL_EXPIRES" && m != "KEY_MATERIAL_DOES_NOT_EXPIRE" => {
            return Err(ApiError::validation(format!(
                "unknown ExpirationModel {m:?}"
            )));
        }
        (_, v) => v.map(|t| t as i64),
    };
    let token = blob(&r.import_token, "ImportToken")?;
    let material = blob(&r.encrypted_key_material, "EncryptedKeyMaterial")?;
    ks.import_key_material(caller, &r.key_id, &token, &material, valid_to)?;
    empty()
}

/// DeleteImportedKeyMaterial: removes an EXTERNAL key's imported material.
fn delete_imported_key_material(
    ks: &LocalKeyStore,
    caller: &Caller,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let r: KeyIdReq = parse(body)?;
    ks.delete_imported_key_material(caller, &r.key_id)?;
    empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_bodies_are_json() {
        let Reply::Secret(b) = secret_json(&[("Plaintext", "AAEC"), ("KeyId", "arn:x")]) else {
            panic!("not secret");
        };
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v, json!({ "Plaintext": "AAEC", "KeyId": "arn:x" }));
    }

    #[test]
    fn limits_and_markers() {
        assert_eq!(limit_and_start(None, None).unwrap(), (100, 0));
        assert_eq!(limit_and_start(Some(5), Some("10")).unwrap(), (5, 10));
        assert_eq!(
            limit_and_start(Some(0), None).unwrap_err().kind,
            "ValidationException"
        );
        assert_eq!(
            limit_and_start(None, Some("x")).unwrap_err().kind,
            "InvalidMarkerException"
        );
    }

    /// Every operation the protocol serves reaches the key service: none
    /// answers UnknownOperationException (an empty request fails its own
    /// validation instead).
    #[test]
    fn every_served_operation_is_dispatched() {
        let t = tempfile::tempdir().unwrap();
        let ks = LocalKeyStore::create(&t.path().join("ks"), crate::kms::CreateMode::RootKeyFile)
            .unwrap();
        let root = Caller {
            uid: 0,
            gid: 0,
            pid: 0,
            access_key: None,
        };
        for (op, name) in Operation::served() {
            if let Err(e) = dispatch(&ks, &root, op, b"{}") {
                assert_ne!(e.kind, "UnknownOperationException", "{name}");
            }
        }
    }
}
