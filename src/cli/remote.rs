//! A remote KMS from the command line: `kmsfs kms ... --endpoint-url URL`
//! (encrypt, decrypt, generate-data-key, describe-key through
//! `kms::remote::RemoteKms`). Output has the shapes of the local commands.
//! `kmsfs mount --kms-endpoint URL` is bound by `crate::daemon::bind`.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::json;
use zeroize::Zeroizing;

use super::kms::{AwsCliArgs, KeySpecArg, KmsCommand, context, read_blob};
use super::output::{metadata_json, print_json, print_json_secret, print_metadata};
use super::{CliError, ErrorClass, GlobalArgs, OutputFormat};
use crate::kms::remote::{CaBundle, RemoteKms, RemoteOptions};
use crate::kms::wire::{SYMMETRIC_DEFAULT, ciphertext_json};
use crate::kms::{DataKeySpec, KeyServiceExt};

fn connect(url: &str, cache: Duration, aws: &AwsCliArgs) -> Result<RemoteKms, CliError> {
    RemoteKms::connect(RemoteOptions {
        endpoint_url: Some(url.to_string()),
        region: aws.region.clone(),
        profile: aws.profile.clone(),
        cache_lifetime: cache,
        ca_bundle: aws
            .ca_bundle
            .as_deref()
            .map(|p| CaBundle::load(p, "--ca-bundle"))
            .transpose()?,
        ..RemoteOptions::default()
    })
    .map_err(|e| {
        CliError::from(e).hint(
            "set AWS_REGION and credentials (AWS_ACCESS_KEY_ID / \
                                AWS_SECRET_ACCESS_KEY or a profile), as for the aws CLI",
        )
    })
}

/// `kmsfs kms SUBCOMMAND --endpoint-url URL`.
pub fn run(g: &GlobalArgs, url: &str, aws: &AwsCliArgs, c: KmsCommand) -> Result<(), CliError> {
    let ks = connect(url, Duration::ZERO, aws)?;
    let caller = super::cli_context();
    let json = g.output == OutputFormat::Json;
    match c {
        KmsCommand::DescribeKey(a) => {
            let m = ks.describe_key(&caller, &a.key_id)?;
            if json {
                print_json(&json!({ "KeyMetadata": metadata_json(&m) }));
            } else {
                print_metadata(&m, &[]);
            }
        }
        KmsCommand::Encrypt(a) => {
            let pt = read_blob(&a.plaintext, "plaintext")?;
            let e = ks.encrypt(&caller, &a.key_id, &pt, &context(&a.encryption_context)?)?;
            let blob = B64.encode(&e.ciphertext_blob);
            if json {
                print_json(&ciphertext_json(&blob, &e.key_id, true));
            } else {
                println!("{blob}");
            }
        }
        KmsCommand::Decrypt(a) => {
            let blob = read_blob(&a.ciphertext_blob, "ciphertext-blob")?;
            let d = ks.decrypt(
                &caller,
                &blob,
                &context(&a.encryption_context)?,
                a.key_id.as_deref(),
            )?;
            let pt = Zeroizing::new(B64.encode(d.plaintext.expose()));
            if json {
                print_json_secret(&[
                    ("KeyId", &d.key_id),
                    ("Plaintext", &pt),
                    ("EncryptionAlgorithm", SYMMETRIC_DEFAULT),
                ]);
            } else {
                println!("{}", *pt);
            }
        }
        KmsCommand::GenerateDataKey(a) => {
            let spec = match (a.number_of_bytes, a.key_spec) {
                (Some(n), _) => DataKeySpec::Bytes(n),
                (None, Some(KeySpecArg::Aes128)) => DataKeySpec::Aes128,
                (None, _) => DataKeySpec::Aes256,
            };
            let dk =
                ks.generate_data_key(&caller, &a.key_id, spec, &context(&a.encryption_context)?)?;
            let pt = Zeroizing::new(B64.encode(dk.plaintext.expose()));
            let blob = B64.encode(&dk.ciphertext_blob);
            if json {
                print_json_secret(&[
                    ("CiphertextBlob", &blob),
                    ("Plaintext", &pt),
                    ("KeyId", &dk.key_id),
                ]);
            } else {
                println!("CiphertextBlob\t{blob}");
                println!("Plaintext\t{}", *pt);
                println!("KeyId\t{}", dk.key_id);
            }
        }
        _ => {
            return Err(CliError::new(
                ErrorClass::Usage,
                "with --endpoint-url kmsfs runs encrypt, decrypt, generate-data-key and \
                 describe-key",
            )
            .hint("use the aws CLI with --endpoint-url for the other operations"));
        }
    }
    Ok(())
}
