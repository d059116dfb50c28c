//! The cryptographic commands: encrypt, decrypt, generate-data-key (with and
//! without plaintext) and re-encrypt. Plaintexts are printed only through
//! zeroized buffers.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use zeroize::Zeroizing;

use super::args::{
    DataKeyArgs, DecryptArgs, EncryptArgs, GenerateRandomArgs, KeySpecArg, ReEncryptArgs,
};
use super::{Session, base64_file_hint, context, read_blob};
use crate::cli::output::{SYMMETRIC_DEFAULT, print_json, print_json_secret};
use crate::cli::{CliError, ErrorClass};
use crate::kms::{DataKeySpec, KeyServiceExt, wire};

/// The data key's size: `--key-spec` or `--number-of-bytes`, one of them
/// required (as AWS).
fn data_key_spec(a: &DataKeyArgs) -> Result<DataKeySpec, CliError> {
    match (a.number_of_bytes, a.key_spec) {
        (Some(n), _) => Ok(DataKeySpec::Bytes(n)),
        (None, Some(KeySpecArg::Aes128)) => Ok(DataKeySpec::Aes128),
        (None, Some(KeySpecArg::Aes256)) => Ok(DataKeySpec::Aes256),
        (None, None) => Err(CliError::new(
            ErrorClass::Usage,
            "ValidationException: Please specify either number of bytes or key spec.",
        )
        .hint("add --key-spec AES_256 (a 32-byte key) or --number-of-bytes N")),
    }
}

/// The blob of `arg`, and the remedy to add to an error it causes when a
/// `fileb://` file holds base64 text instead of raw bytes.
fn blob_arg(arg: &str, what: &str) -> Result<(Zeroizing<Vec<u8>>, Option<String>), CliError> {
    let b = read_blob(arg, what)?;
    let hint = base64_file_hint(arg, &b);
    Ok((b, hint))
}

fn with_hint(e: impl Into<CliError>, hint: Option<String>) -> CliError {
    let e = e.into();
    match hint {
        Some(h) => e.hint(h),
        None => e,
    }
}

/// `generate-random`.
pub(super) fn generate_random(s: &Session, a: GenerateRandomArgs) -> Result<(), CliError> {
    let bytes =
        s.ks.generate_random(&s.caller, a.number_of_bytes as usize)?;
    let b = Zeroizing::new(B64.encode(bytes.expose()));
    if s.json {
        print_json_secret(&[("Plaintext", &b)]);
    } else {
        println!("{}", *b);
    }
    Ok(())
}

/// `encrypt`.
pub(super) fn encrypt(s: &Session, a: EncryptArgs) -> Result<(), CliError> {
    s.ks.check_grant_tokens(&a.grant_tokens)?;
    let pt = read_blob(&a.plaintext, "plaintext")?;
    let ctx = context(&a.encryption_context)?;
    let e = s.ks.encrypt(&s.rc, &a.key_id, &pt, &ctx)?;
    let blob = B64.encode(&e.ciphertext_blob);
    if s.json {
        print_json(&wire::ciphertext_json(&blob, &s.arn(&e.key_id), true));
    } else {
        println!("{blob}");
    }
    Ok(())
}

/// `decrypt`.
pub(super) fn decrypt(s: &Session, a: DecryptArgs) -> Result<(), CliError> {
    s.ks.check_grant_tokens(&a.grant_tokens)?;
    let (blob, hint) = blob_arg(&a.ciphertext_blob, "ciphertext-blob")?;
    let ctx = context(&a.encryption_context)?;
    let d =
        s.ks.decrypt(&s.rc, &blob, &ctx, a.key_id.as_deref())
            .map_err(|e| with_hint(e, hint))?;
    let pt = Zeroizing::new(B64.encode(d.plaintext.expose()));
    if s.json {
        print_json_secret(&[
            ("KeyId", &s.arn(&d.key_id)),
            ("Plaintext", &pt),
            ("EncryptionAlgorithm", SYMMETRIC_DEFAULT),
        ]);
    } else {
        println!("{}", *pt);
    }
    Ok(())
}

/// `generate-data-key`.
pub(super) fn generate_data_key(s: &Session, a: DataKeyArgs) -> Result<(), CliError> {
    s.ks.check_grant_tokens(&a.grant_tokens)?;
    let ctx = context(&a.encryption_context)?;
    let dk =
        s.ks.generate_data_key(&s.rc, &a.key_id, data_key_spec(&a)?, &ctx)?;
    let pt = Zeroizing::new(B64.encode(dk.plaintext.expose()));
    let blob = B64.encode(&dk.ciphertext_blob);
    if s.json {
        print_json_secret(&[
            ("CiphertextBlob", &blob),
            ("Plaintext", &pt),
            ("KeyId", &s.arn(&dk.key_id)),
        ]);
    } else {
        println!("CiphertextBlob\t{blob}");
        println!("Plaintext\t{}", *pt);
        // The same KeyId as JSON: the ARN.
        println!("KeyId\t{}", s.arn(&dk.key_id));
    }
    Ok(())
}

/// `generate-data-key-without-plaintext`.
pub(super) fn generate_data_key_without_plaintext(
    s: &Session,
    a: DataKeyArgs,
) -> Result<(), CliError> {
    s.ks.check_grant_tokens(&a.grant_tokens)?;
    let ctx = context(&a.encryption_context)?;
    let e =
        s.ks.generate_data_key_without_plaintext(&s.rc, &a.key_id, data_key_spec(&a)?, &ctx)?;
    let blob = B64.encode(&e.ciphertext_blob);
    if s.json {
        print_json(&wire::ciphertext_json(&blob, &s.arn(&e.key_id), false));
    } else {
        println!("{blob}");
    }
    Ok(())
}

/// `re-encrypt`.
pub(super) fn re_encrypt(s: &Session, a: ReEncryptArgs) -> Result<(), CliError> {
    s.ks.check_grant_tokens(&a.grant_tokens)?;
    let (blob, hint) = blob_arg(&a.ciphertext_blob, "ciphertext-blob")?;
    let sctx = context(&a.source_encryption_context)?;
    let dctx = context(&a.destination_encryption_context)?;
    if let Some(want) = &a.source_key_id {
        // Checks the source key before anything is decrypted.
        s.ks.check_ciphertext_key(&s.rc, &blob, want)
            .map_err(|e| with_hint(e, hint.clone()))?;
    }
    let e =
        s.ks.re_encrypt(&s.rc, &blob, &sctx, &a.destination_key_id, &dctx)
            .map_err(|e| with_hint(e, hint))?;
    let out = B64.encode(&e.ciphertext_blob);
    if s.json {
        let source = e.source_key_id.as_deref().map(|k| s.arn(k));
        print_json(&wire::re_encrypted_json(
            &out,
            source.as_deref(),
            &s.arn(&e.key_id),
        ));
    } else {
        println!("{out}");
    }
    Ok(())
}
