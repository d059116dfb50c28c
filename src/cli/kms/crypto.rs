//! The cryptographic commands: encrypt, decrypt, generate-data-key (with and
//! without plaintext) and re-encrypt. Plaintexts are printed only through
//! zeroized buffers.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use zeroize::Zeroizing;

use super::args::{DataKeyArgs, DecryptArgs, EncryptArgs, KeySpecArg, ReEncryptArgs};
use super::{Session, context, read_blob};
use crate::cli::CliError;
use crate::cli::output::{SYMMETRIC_DEFAULT, print_json, print_json_secret};
use crate::kms::{DataKeySpec, KeyService, wire};

fn data_key_spec(a: &DataKeyArgs) -> DataKeySpec {
    match (a.number_of_bytes, a.key_spec) {
        (Some(n), _) => DataKeySpec::Bytes(n),
        (None, Some(KeySpecArg::Aes128)) => DataKeySpec::Aes128,
        (None, _) => DataKeySpec::Aes256,
    }
}

/// `encrypt`.
pub(super) fn encrypt(s: &Session, a: EncryptArgs) -> Result<(), CliError> {
    let pt = read_blob(&a.plaintext, "plaintext")?;
    let ctx = context(&a.encryption_context)?;
    let e = s.ks.encrypt(&s.caller, &a.key_id, &pt, &ctx)?;
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
    let blob = read_blob(&a.ciphertext_blob, "ciphertext-blob")?;
    let ctx = context(&a.encryption_context)?;
    let d = s.ks.decrypt(&s.caller, &blob, &ctx, a.key_id.as_deref())?;
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
    let ctx = context(&a.encryption_context)?;
    let dk =
        s.ks.generate_data_key(&s.caller, &a.key_id, data_key_spec(&a), &ctx)?;
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
        println!("KeyId\t{}", dk.key_id);
    }
    Ok(())
}

/// `generate-data-key-without-plaintext`.
pub(super) fn generate_data_key_without_plaintext(
    s: &Session,
    a: DataKeyArgs,
) -> Result<(), CliError> {
    let ctx = context(&a.encryption_context)?;
    let e =
        s.ks.generate_data_key_without_plaintext(&s.caller, &a.key_id, data_key_spec(&a), &ctx)?;
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
    let blob = read_blob(&a.ciphertext_blob, "ciphertext-blob")?;
    let sctx = context(&a.source_encryption_context)?;
    let dctx = context(&a.destination_encryption_context)?;
    if let Some(want) = &a.source_key_id {
        // Checks the source key before anything is decrypted.
        s.ks.check_ciphertext_key(&s.caller, &blob, want)?;
    }
    let e =
        s.ks.re_encrypt(&s.caller, &blob, &sctx, &a.destination_key_id, &dctx)?;
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
