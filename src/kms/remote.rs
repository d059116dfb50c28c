//! `RemoteKms`: a `KeyService` that is a client of the AWS KMS protocol, built
//! on the official AWS SDK for Rust, so credentials (environment, profiles,
//! instance roles), regions, endpoints, retries with backoff and jitter, and
//! timeouts behave as AWS users expect. It talks to real AWS KMS, to
//! `kmsfs kms serve`, or to any compatible service (`endpoint_url`).
//!
//! The SDK is async; the trait is not. Each call runs on a private tokio
//! runtime with `block_on`, bounded by per-attempt and per-operation timeouts,
//! so a KMS that is down or throttling fails the call (EIO on open, with a log
//! line) instead of hanging the mount. The runtime and client are made again
//! in a forked child (the mount daemon), where the parent's threads are gone.
//!
//! `generation()` advances every `cache_lifetime`, which bounds how long the
//! mount's data-key cache serves a key after the remote KMS disabled it.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_kms::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec as AwsDataKeySpec;

use super::{
    Caller, DataKey, DataKeySpec, Decrypted, Encrypted, EncryptionContext, KeyMetadata, KeyOrigin,
    KeyService, KeyState, KmsError, Missing, Operation, Request, RequestContext, Response,
    StateProblem,
};
use crate::crypto::SecretBytes;

/// How the remote KMS is reached.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    /// The endpoint (`http://127.0.0.1:4599`); None: the SDK's usual endpoint
    /// resolution (real AWS KMS in the configured region).
    pub endpoint_url: Option<String>,
    /// The region; None: the SDK's chain (AWS_REGION, profile, IMDS), else
    /// us-east-1 when an endpoint is given.
    pub region: Option<String>,
    /// The profile of the shared config and credentials files; None: the
    /// SDK's (AWS_PROFILE, else default).
    pub profile: Option<String>,
    /// Attempts per call, the first included (retries back off with jitter).
    pub max_attempts: u32,
    /// Time allowed for one attempt.
    pub attempt_timeout: Duration,
    /// Time allowed for a call, retries included.
    pub operation_timeout: Duration,
    /// How long a data key unwrapped through this service may be served from
    /// the mount's cache; zero turns caching off.
    pub cache_lifetime: Duration,
    /// The CAs an https endpoint's certificate must chain to, instead of the
    /// system's roots (`--kms-ca-bundle`); None: AWS_CA_BUNDLE if set (as
    /// the aws CLI and boto3 read it), else the system's roots.
    pub ca_bundle: Option<CaBundle>,
}

/// A PEM file of CA certificates, read once (the mount daemon, forked and
/// moved to `/`, builds its client again from these bytes).
#[derive(Clone)]
pub struct CaBundle {
    path: std::path::PathBuf,
    pem: Vec<u8>,
}

impl std::fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CaBundle({})", self.path.display())
    }
}

/// Largest CA bundle read (Debian's whole ca-certificates.crt is ~200 KiB).
const MAX_CA_BUNDLE: u64 = 4 * 1024 * 1024;

impl CaBundle {
    /// Reads and checks `path` (`what` names where it was given, for errors):
    /// it must hold at least one PEM certificate.
    #[allow(clippy::disallowed_methods)] // a file the user named, read as given
    pub fn load(path: &std::path::Path, what: &str) -> Result<Self, KmsError> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        use std::io::Read;
        let shown = path.display();
        let mut pem = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_CA_BUNDLE + 1).read_to_end(&mut pem))
            .map_err(|e| KmsError::invalid(format!("{what} {shown}: {e}")))?;
        if pem.len() as u64 > MAX_CA_BUNDLE {
            return Err(KmsError::invalid(format!(
                "{what} {shown} is larger than {MAX_CA_BUNDLE} bytes"
            )));
        }
        let n = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| KmsError::invalid(format!("{what} {shown}: not PEM certificates: {e}")))?
            .len();
        if n == 0 {
            return Err(KmsError::invalid(format!(
                "{what} {shown}: no CERTIFICATE block (PEM) in it"
            )));
        }
        Ok(Self {
            path: path.to_path_buf(),
            pem,
        })
    }

    /// AWS_CA_BUNDLE's file, if the variable is set and not empty.
    pub fn from_env() -> Result<Option<Self>, KmsError> {
        match std::env::var_os("AWS_CA_BUNDLE") {
            Some(p) if !p.is_empty() => {
                Self::load(std::path::Path::new(&p), "AWS_CA_BUNDLE").map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Where it was read from.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// An https client trusting only these CAs (rustls on aws-lc-rs, as the
    /// SDK's default client).
    fn http_client(
        &self,
    ) -> Result<aws_smithy_runtime_api::client::http::SharedHttpClient, KmsError> {
        use aws_smithy_http_client::tls;
        let ctx = tls::TlsContext::builder()
            .with_trust_store(tls::TrustStore::empty().with_pem_certificate(self.pem.clone()))
            .build()
            .map_err(|e| KmsError::invalid(format!("{}: {e}", self.path.display())))?;
        Ok(aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::AwsLc,
            ))
            .tls_context(ctx)
            .build_https())
    }
}

impl Default for RemoteOptions {
    fn default() -> Self {
        Self {
            endpoint_url: None,
            region: None,
            profile: None,
            max_attempts: 3,
            attempt_timeout: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(12),
            cache_lifetime: DEFAULT_CACHE_LIFETIME,
            ca_bundle: None,
        }
    }
}

/// The default data-key cache lifetime with a remote KMS: the longest a
/// mount keeps serving a file's key after the KMS disabled its CMK.
pub const DEFAULT_CACHE_LIFETIME: Duration = Duration::from_secs(10);

struct Inner {
    pid: u32,
    rt: tokio::runtime::Runtime,
    client: aws_sdk_kms::Client,
}

/// Calls made to the remote KMS, by operation.
#[derive(Debug, Default)]
pub struct RemoteCalls {
    /// GenerateDataKey calls.
    pub generate_data_key: AtomicU64,
    /// Decrypt calls.
    pub decrypt: AtomicU64,
    /// Encrypt calls.
    pub encrypt: AtomicU64,
    /// ReEncrypt calls.
    pub re_encrypt: AtomicU64,
    /// DescribeKey calls.
    pub describe_key: AtomicU64,
}

/// A key service that is a client of a remote AWS KMS (or compatible).
pub struct RemoteKms {
    opts: RemoteOptions,
    inner: Mutex<Option<Arc<Inner>>>,
    base: Instant,
    uncached: AtomicU64,
    calls: RemoteCalls,
}

impl std::fmt::Debug for RemoteKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteKms")
            .field("endpoint_url", &self.opts.endpoint_url)
            .field("region", &self.opts.region)
            .finish_non_exhaustive()
    }
}

impl RemoteKms {
    /// A client with these options; the SDK configuration (credentials,
    /// region) is loaded now, so that a misconfiguration is reported here.
    pub fn connect(mut opts: RemoteOptions) -> Result<Self, KmsError> {
        if opts.ca_bundle.is_none() {
            opts.ca_bundle = CaBundle::from_env()?;
        }
        let s = Self {
            opts,
            inner: Mutex::new(None),
            base: Instant::now(),
            uncached: AtomicU64::new(0),
            calls: RemoteCalls::default(),
        };
        s.inner()?;
        Ok(s)
    }

    /// Where this client sends its calls (for messages).
    pub fn endpoint(&self) -> &str {
        self.opts
            .endpoint_url
            .as_deref()
            .unwrap_or("AWS KMS (SDK default endpoint)")
    }

    /// The calls made so far.
    pub fn calls(&self) -> &RemoteCalls {
        &self.calls
    }

    fn build(&self) -> Result<Inner, KmsError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kmsfs-remote-kms")
            .enable_all()
            .build()
            .map_err(|e| KmsError::io_from("starting the KMS client runtime".into(), e))?;
        let o = &self.opts;
        let http = o
            .ca_bundle
            .as_ref()
            .map(CaBundle::http_client)
            .transpose()?;
        let conf = rt.block_on(async {
            let mut l = aws_config::defaults(BehaviorVersion::latest())
                .retry_config(RetryConfig::standard().with_max_attempts(o.max_attempts.max(1)))
                .timeout_config(
                    TimeoutConfig::builder()
                        .connect_timeout(o.attempt_timeout)
                        .operation_attempt_timeout(o.attempt_timeout)
                        .operation_timeout(o.operation_timeout)
                        .build(),
                );
            if let Some(p) = &o.profile {
                l = l.profile_name(p);
            }
            l = match (&o.region, &o.endpoint_url) {
                (Some(r), _) => l.region(aws_config::Region::new(r.clone())),
                (None, Some(_)) => l.region(
                    RegionProviderChain::default_provider()
                        .or_else(aws_config::Region::from_static("us-east-1")),
                ),
                (None, None) => l,
            };
            if let Some(u) = &o.endpoint_url {
                l = l.endpoint_url(u.clone());
            }
            if let Some(h) = http {
                l = l.http_client(h);
            }
            l.load().await
        });
        if conf.region().is_none() {
            return Err(KmsError::invalid(
                "no AWS region is configured: set AWS_REGION (or a profile's region)".into(),
            ));
        }
        let client = aws_sdk_kms::Client::new(&conf);
        Ok(Inner {
            pid: std::process::id(),
            rt,
            client,
        })
    }

    /// Stops the runtime and its threads (joined, within two seconds) and
    /// drops the client; the next call makes them again. The mount calls it
    /// before it forks its daemon, which must be single-threaded then.
    pub fn release(&self) {
        let taken = self.inner.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(i) = taken
            && let Ok(inner) = Arc::try_unwrap(i)
        {
            drop(inner.client);
            inner.rt.shutdown_timeout(Duration::from_secs(2));
        }
    }

    /// The runtime and client of this process (made again after a fork).
    fn inner(&self) -> Result<Arc<Inner>, KmsError> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = &*g {
            if i.pid == std::process::id() {
                return Ok(i.clone());
            }
            // A forked child: the parent's runtime threads do not exist here;
            // dropping it would wait for them.
            if let Some(old) = g.take() {
                std::mem::forget(old);
            }
        }
        let i = Arc::new(self.build()?);
        *g = Some(i.clone());
        Ok(i)
    }

    fn context(c: &EncryptionContext) -> Option<HashMap<String, String>> {
        (!c.0.is_empty()).then(|| c.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    fn error<E, R>(
        &self,
        op: Operation,
        key_id: &str,
        caller: &Caller,
        e: SdkError<E, R>,
    ) -> KmsError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug,
    {
        let code = e.code().map(str::to_string);
        let message = e.message().unwrap_or("").to_string();
        let key_id = key_id.to_string();
        match code.as_deref() {
            Some("NotFoundException") => KmsError::not_found(Missing::Key { key_id }),
            Some("DisabledException") => KmsError::Disabled { key_id },
            Some("KMSInvalidStateException") => KmsError::InvalidState {
                key_id,
                state: KeyState::Disabled,
                problem: StateProblem::NotAllowed {
                    operation: op.as_str(),
                },
            },
            Some("AccessDeniedException") => KmsError::AccessDenied {
                key_id,
                action: op,
                principal: (caller.uid, caller.gid),
            },
            Some("InvalidCiphertextException") => KmsError::invalid_ciphertext(format!(
                "the remote KMS refused the ciphertext: {message}"
            )),
            Some("IncorrectKeyException") => KmsError::IncorrectKey {
                made_under: "(another key)".into(),
                given: key_id,
            },
            Some("ValidationException") => KmsError::invalid(message),
            Some(other) => KmsError::io(format!(
                "the KMS at {} answered {} with {other}: {message}",
                self.endpoint(),
                op.as_str()
            )),
            None if untrusted_certificate(&DisplayErrorContext(&e).to_string()) => {
                KmsError::io(format!(
                    "the KMS at {} presented a TLS certificate this client does not trust \
                     ({}): {}; give the CA that signed it with --kms-ca-bundle FILE (or \
                     AWS_CA_BUNDLE)",
                    self.endpoint(),
                    match &self.opts.ca_bundle {
                        Some(b) => format!("CAs: {}", b.path().display()),
                        None => "CAs: the system's roots".into(),
                    },
                    DisplayErrorContext(&e)
                ))
            }
            None => KmsError::io(format!(
                "the KMS at {} could not be reached for {} (after at most {} attempts within {:?}): {}",
                self.endpoint(),
                op.as_str(),
                self.opts.max_attempts,
                self.opts.operation_timeout,
                DisplayErrorContext(&e)
            )),
        }
    }
}

/// Whether an SDK error's text says the server's certificate was refused.
fn untrusted_certificate(text: &str) -> bool {
    [
        "invalid peer certificate",
        "UnknownIssuer",
        "NotValidForName",
        "certificate verify",
    ]
    .iter()
    .any(|w| text.contains(w))
}

/// The key id (UUID) in an ARN, or the id itself.
fn key_id_of(arn_or_id: &str) -> String {
    match arn_or_id.rsplit_once(":key/") {
        Some((_, id)) => id.to_string(),
        None => arn_or_id.to_string(),
    }
}

fn state(s: Option<&aws_sdk_kms::types::KeyState>) -> KeyState {
    use aws_sdk_kms::types::KeyState as K;
    match s {
        Some(K::Enabled) => KeyState::Enabled,
        Some(K::PendingDeletion) => KeyState::PendingDeletion,
        Some(K::PendingImport) => KeyState::PendingImport,
        // Creating, Unavailable, Updating, ...: not usable now.
        _ => KeyState::Disabled,
    }
}

impl RemoteKms {
    fn generate(
        &self,
        caller: &Caller,
        key_id: &str,
        spec: DataKeySpec,
        context: &EncryptionContext,
    ) -> Result<DataKey, KmsError> {
        let inner = self.inner()?;
        let mut req = inner
            .client
            .generate_data_key()
            .key_id(key_id)
            .set_encryption_context(Self::context(context));
        req = match spec {
            DataKeySpec::Aes256 => req.key_spec(AwsDataKeySpec::Aes256),
            DataKeySpec::Aes128 => req.key_spec(AwsDataKeySpec::Aes128),
            DataKeySpec::Bytes(_) => req.number_of_bytes(spec.byte_len()? as i32),
        };
        self.calls.generate_data_key.fetch_add(1, Ordering::Relaxed);
        let out = inner
            .rt
            .block_on(req.send())
            .map_err(|e| self.error(Operation::GenerateDataKey, key_id, caller, e))?;
        let plaintext = out
            .plaintext
            .map(|b| SecretBytes::new(b.into_inner()))
            .ok_or_else(|| KmsError::io("the remote KMS returned no Plaintext".into()))?;
        if plaintext.len() != spec.byte_len()? {
            return Err(KmsError::io(
                "the remote KMS returned a data key of the wrong length".into(),
            ));
        }
        Ok(DataKey {
            key_id: key_id_of(out.key_id.as_deref().unwrap_or(key_id)),
            key_material_version: 1,
            plaintext,
            ciphertext_blob: out
                .ciphertext_blob
                .map(Blob::into_inner)
                .ok_or_else(|| KmsError::io("the remote KMS returned no CiphertextBlob".into()))?,
        })
    }

    fn unwrap(
        &self,
        caller: &Caller,
        ciphertext_blob: &[u8],
        context: &EncryptionContext,
        key_id: Option<&str>,
    ) -> Result<Decrypted, KmsError> {
        let inner = self.inner()?;
        let req = inner
            .client
            .decrypt()
            .ciphertext_blob(Blob::new(ciphertext_blob))
            .set_encryption_context(Self::context(context))
            .set_key_id(key_id.map(str::to_string));
        self.calls.decrypt.fetch_add(1, Ordering::Relaxed);
        let out = inner
            .rt
            .block_on(req.send())
            .map_err(|e| self.error(Operation::Decrypt, key_id.unwrap_or("?"), caller, e))?;
        Ok(Decrypted {
            key_id: key_id_of(out.key_id.as_deref().unwrap_or("")),
            key_material_version: 1,
            plaintext: out
                .plaintext
                .map(|b| SecretBytes::new(b.into_inner()))
                .ok_or_else(|| KmsError::io("the remote KMS returned no Plaintext".into()))?,
        })
    }

    fn wrap(
        &self,
        caller: &Caller,
        key_id: &str,
        plaintext: &[u8],
        context: &EncryptionContext,
    ) -> Result<Encrypted, KmsError> {
        let inner = self.inner()?;
        let req = inner
            .client
            .encrypt()
            .key_id(key_id)
            .plaintext(Blob::new(plaintext))
            .set_encryption_context(Self::context(context));
        self.calls.encrypt.fetch_add(1, Ordering::Relaxed);
        let out = inner
            .rt
            .block_on(req.send())
            .map_err(|e| self.error(Operation::Encrypt, key_id, caller, e))?;
        Ok(Encrypted {
            key_id: key_id_of(out.key_id.as_deref().unwrap_or(key_id)),
            ciphertext_blob: out
                .ciphertext_blob
                .map(Blob::into_inner)
                .ok_or_else(|| KmsError::io("the remote KMS returned no CiphertextBlob".into()))?,
            source_key_id: None,
        })
    }

    fn rewrap(
        &self,
        caller: &Caller,
        ciphertext_blob: &[u8],
        source_context: &EncryptionContext,
        destination_key_id: &str,
        destination_context: &EncryptionContext,
    ) -> Result<Encrypted, KmsError> {
        let inner = self.inner()?;
        let req = inner
            .client
            .re_encrypt()
            .ciphertext_blob(Blob::new(ciphertext_blob))
            .set_source_encryption_context(Self::context(source_context))
            .destination_key_id(destination_key_id)
            .set_destination_encryption_context(Self::context(destination_context));
        self.calls.re_encrypt.fetch_add(1, Ordering::Relaxed);
        let out = inner
            .rt
            .block_on(req.send())
            .map_err(|e| self.error(Operation::ReEncryptTo, destination_key_id, caller, e))?;
        Ok(Encrypted {
            key_id: key_id_of(out.key_id.as_deref().unwrap_or(destination_key_id)),
            ciphertext_blob: out
                .ciphertext_blob
                .map(Blob::into_inner)
                .ok_or_else(|| KmsError::io("the remote KMS returned no CiphertextBlob".into()))?,
            source_key_id: out.source_key_id.as_deref().map(key_id_of),
        })
    }

    fn describe(&self, caller: &Caller, key_id: &str) -> Result<KeyMetadata, KmsError> {
        let inner = self.inner()?;
        let req = inner.client.describe_key().key_id(key_id);
        self.calls.describe_key.fetch_add(1, Ordering::Relaxed);
        let out = inner
            .rt
            .block_on(req.send())
            .map_err(|e| self.error(Operation::Decrypt, key_id, caller, e))?;
        let m = out
            .key_metadata
            .ok_or_else(|| KmsError::io("the remote KMS returned no KeyMetadata".into()))?;
        let st = state(m.key_state.as_ref());
        Ok(KeyMetadata {
            key_id: m.key_id.clone(),
            arn: m.arn.clone().unwrap_or_default(),
            description: m.description.clone().unwrap_or_default(),
            creation_date: m.creation_date.map(|d| d.secs()).unwrap_or(0),
            key_state: st,
            enabled: st == KeyState::Enabled,
            deletion_date: m.deletion_date.map(|d| d.secs()),
            pending_deletion_window_in_days: m
                .pending_deletion_window_in_days
                .and_then(|d| u32::try_from(d).ok()),
            origin: match m.origin {
                Some(aws_sdk_kms::types::OriginType::External) => KeyOrigin::External,
                _ => KeyOrigin::Kms,
            },
            key_usage: "ENCRYPT_DECRYPT",
            key_spec: "SYMMETRIC_DEFAULT",
            current_key_material_version: 1,
            expiration_model: None,
            valid_to: m.valid_to.map(|d| d.secs()),
        })
    }
}

impl KeyService for RemoteKms {
    fn call(&self, ctx: &RequestContext<'_>, request: Request<'_>) -> Result<Response, KmsError> {
        let caller = &ctx.caller;
        match request {
            Request::GenerateDataKey {
                key_id,
                spec,
                context,
            } => self
                .generate(caller, key_id, spec, context)
                .map(Response::DataKey),
            Request::Decrypt {
                blob,
                context,
                key_id,
            } => self
                .unwrap(caller, blob, context, key_id)
                .map(Response::Decrypted),
            Request::Encrypt {
                key_id,
                plaintext,
                context,
            } => self
                .wrap(caller, key_id, plaintext, context)
                .map(Response::Encrypted),
            Request::ReEncrypt {
                blob,
                source_context,
                destination_key_id,
                destination_context,
            } => self
                .rewrap(
                    caller,
                    blob,
                    source_context,
                    destination_key_id,
                    destination_context,
                )
                .map(Response::Encrypted),
            Request::DescribeKey { key_id } => {
                self.describe(caller, key_id).map(Response::Metadata)
            }
            // The remote KMS keeps its own trail (CloudTrail); an open served
            // from the mount's cache never reaches it.
            Request::CachedOpen { .. } => Ok(Response::Recorded),
        }
    }

    fn flush_audit(&self) {}

    fn audits_file_access(&self) -> bool {
        false
    }

    fn generation(&self) -> u64 {
        let ms = self.opts.cache_lifetime.as_millis();
        if ms == 0 {
            // Caching off: every open asks the KMS.
            return self.uncached.fetch_add(1, Ordering::Relaxed);
        }
        (self.base.elapsed().as_millis() / ms) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::KeyServiceExt;

    #[test]
    fn key_ids_from_arns() {
        assert_eq!(
            key_id_of("arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab"),
            "1234abcd-12ab"
        );
        assert_eq!(key_id_of("1234abcd-12ab"), "1234abcd-12ab");
    }

    #[test]
    fn an_unreachable_kms_fails_within_the_bounds() {
        // Port 9 on loopback: nothing listens (connection refused at once).
        let k = RemoteKms::connect(RemoteOptions {
            endpoint_url: Some("http://127.0.0.1:9".into()),
            region: Some("us-east-1".into()),
            profile: None,
            max_attempts: 2,
            attempt_timeout: Duration::from_secs(2),
            operation_timeout: Duration::from_secs(5),
            cache_lifetime: Duration::ZERO,
            ca_bundle: None,
        })
        .unwrap();
        let caller = Caller {
            uid: 1,
            gid: 1,
            pid: 1,
            access_key: None,
        };
        let e = k
            .decrypt(
                &RequestContext::cli(caller),
                b"blob",
                &EncryptionContext::new(),
                None,
            )
            .unwrap_err();
        assert!(matches!(e, KmsError::Io { .. }), "{e:?}");
        assert!(!e.is_access_refusal());
        // Caching off: every call is a new generation.
        assert_ne!(k.generation(), k.generation());
    }
}
