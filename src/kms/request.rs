//! What every call to a key service carries: who asks and from where
//! (`RequestContext`), and what (`Request`, one variant per operation of
//! `KeyService`, each named by a `kms::Operation`). A service or a wrapper
//! implements one function, `KeyService::call`, that takes both: nothing
//! can be dropped on the way (a wrapper that forgets the file and process of
//! a mount's open does not compile), and adding a request is a compile
//! error in every `match` that does not answer it. `KeyServiceExt` gives
//! callers the typed methods (`decrypt`, `generate_data_key`, ...), built
//! on `call` and impossible to override.
#![forbid(unsafe_code)]

use super::audit::{CallerSource, FileAccess};
use super::{
    Caller, DataKey, DataKeySpec, Decrypted, Encrypted, EncryptionContext, KeyMetadata, KmsError,
    Operation,
};

/// From where, and so why, a key service is asked.
#[derive(Debug, Clone, Copy)]
pub enum Origin<'a> {
    /// A program opens or creates a file in the mount: the audit trail
    /// names the file and the process (`Request::CachedOpen` when the mount
    /// served the open from its cache of data keys).
    Open(&'a FileAccess<'a>),
    /// The mount daemon for itself (its status, its checks at mount time).
    Mount,
    /// A command run by the user (`kmsfs kms ...`, tree tools, `inspect`).
    Cli,
    /// The AWS KMS protocol server, for a client it authenticated.
    Server,
    /// `kmsfs console`, for its user in a browser.
    Console,
}

impl Origin<'_> {
    /// The trail's `source` of a call from here.
    pub fn source(&self) -> CallerSource {
        match self {
            Origin::Open(_) | Origin::Mount => CallerSource::Mount,
            Origin::Cli => CallerSource::Cli,
            Origin::Server => CallerSource::Server,
            Origin::Console => CallerSource::Console,
        }
    }
}

/// Who asks and from where: every call to a `KeyService` carries one, and
/// every wrapper passes it on whole.
#[derive(Debug, Clone, Copy)]
pub struct RequestContext<'a> {
    /// The identity that key policies are evaluated for and the trail
    /// records (for the server: the account its access key maps to).
    pub caller: Caller,
    /// From where.
    pub origin: Origin<'a>,
}

impl<'a> RequestContext<'a> {
    /// A call from the command line.
    pub const fn cli(caller: Caller) -> Self {
        Self {
            caller,
            origin: Origin::Cli,
        }
    }

    /// A call from the mount for a program's open of a file.
    pub const fn open(caller: Caller, access: &'a FileAccess<'a>) -> Self {
        Self {
            caller,
            origin: Origin::Open(access),
        }
    }

    /// A call from `origin`.
    pub const fn new(caller: Caller, origin: Origin<'a>) -> Self {
        Self { caller, origin }
    }

    /// The file open in the mount this call is for, if any.
    pub fn access(&self) -> Option<&'a FileAccess<'a>> {
        match self.origin {
            Origin::Open(a) => Some(a),
            _ => None,
        }
    }
}

/// One request to a key service. Carries no secret but `Encrypt`'s
/// plaintext, which is never printed (no `Debug`).
pub enum Request<'a> {
    /// GenerateDataKey: a fresh data key, in plaintext and wrapped under
    /// `key_id` (a key id, ARN or `alias/...`) bound to `context`.
    GenerateDataKey {
        /// The key to wrap under.
        key_id: &'a str,
        /// Its size.
        spec: DataKeySpec,
        /// The encryption context it is bound to.
        context: &'a EncryptionContext,
    },
    /// Decrypt: unwraps a ciphertext blob. The blob names its key and key
    /// material version; when `key_id` is given and differs, it is refused.
    Decrypt {
        /// The ciphertext blob.
        blob: &'a [u8],
        /// The encryption context it was bound to.
        context: &'a EncryptionContext,
        /// The key the caller expects, if it says.
        key_id: Option<&'a str>,
    },
    /// Encrypt: at most `MAX_ENCRYPT_PLAINTEXT` bytes directly under a key.
    Encrypt {
        /// The key.
        key_id: &'a str,
        /// What to encrypt.
        plaintext: &'a [u8],
        /// The encryption context to bind.
        context: &'a EncryptionContext,
    },
    /// ReEncrypt: decrypts and encrypts again under `destination_key_id`
    /// without the plaintext leaving the service.
    ReEncrypt {
        /// The ciphertext blob.
        blob: &'a [u8],
        /// The context it was bound to.
        source_context: &'a EncryptionContext,
        /// The key to encrypt under.
        destination_key_id: &'a str,
        /// The context to bind.
        destination_context: &'a EncryptionContext,
    },
    /// DescribeKey.
    DescribeKey {
        /// The key.
        key_id: &'a str,
    },
    /// A file open the mount served from its cache of data keys: recorded
    /// as a `Decrypt` marked as a cache hit, so that every open that needed
    /// the key is in the trail. No key is used and nothing is refused.
    CachedOpen {
        /// The key the cached data key was wrapped under.
        key_id: &'a str,
        /// Its material version.
        key_material_version: u32,
        /// The file's encryption context.
        context: &'a EncryptionContext,
    },
}

impl Request<'_> {
    /// The operation (policy action, trail event) this request is.
    pub fn operation(&self) -> Operation {
        match self {
            Request::GenerateDataKey { .. } => Operation::GenerateDataKey,
            Request::Decrypt { .. } | Request::CachedOpen { .. } => Operation::Decrypt,
            Request::Encrypt { .. } => Operation::Encrypt,
            Request::ReEncrypt { .. } => Operation::ReEncryptFrom,
            Request::DescribeKey { .. } => Operation::DescribeKey,
        }
    }
}

/// The answer to a `Request`, variant for variant.
#[derive(Debug)]
pub enum Response {
    /// To GenerateDataKey.
    DataKey(DataKey),
    /// To Decrypt.
    Decrypted(Decrypted),
    /// To Encrypt and ReEncrypt.
    Encrypted(Encrypted),
    /// To DescribeKey.
    Metadata(KeyMetadata),
    /// To CachedOpen.
    Recorded,
}

/// The operations of a key management service that callers above this
/// layer use. The local keystore implements it, so does the AWS KMS client
/// (`remote`); wrappers (the mount's counter) implement `call` by passing
/// the context and request on. No method has a default.
pub trait KeyService: Send + Sync {
    /// Runs `request` for `ctx`.
    fn call(&self, ctx: &RequestContext<'_>, request: Request<'_>) -> Result<Response, KmsError>;

    /// Writes out audit records still queued (at unmount).
    fn flush_audit(&self);

    /// True when this service records file opens (the mount then reads the
    /// requester's name and executable from /proc for each open).
    fn audits_file_access(&self) -> bool;

    /// A number that changes whenever the key service's state may have changed
    /// (another process updated the keystore, a key was disabled, ...). Cheap:
    /// callers use it to invalidate caches of data keys on every open.
    fn generation(&self) -> u64;
}

fn mismatch(op: Operation) -> KmsError {
    KmsError::internal(format!("the key service answered {} wrongly", op.as_str()))
}

/// The typed requests, for callers. Implemented for every `KeyService` and
/// for nothing else: a wrapper cannot override one of them and miss the
/// others.
pub trait KeyServiceExt: KeyService {
    /// `Request::GenerateDataKey`.
    fn generate_data_key(
        &self,
        ctx: &RequestContext<'_>,
        key_id: &str,
        spec: DataKeySpec,
        context: &EncryptionContext,
    ) -> Result<DataKey, KmsError> {
        let req = Request::GenerateDataKey {
            key_id,
            spec,
            context,
        };
        match self.call(ctx, req)? {
            Response::DataKey(d) => Ok(d),
            _ => Err(mismatch(Operation::GenerateDataKey)),
        }
    }

    /// `Request::Decrypt`.
    fn decrypt(
        &self,
        ctx: &RequestContext<'_>,
        blob: &[u8],
        context: &EncryptionContext,
        key_id: Option<&str>,
    ) -> Result<Decrypted, KmsError> {
        let req = Request::Decrypt {
            blob,
            context,
            key_id,
        };
        match self.call(ctx, req)? {
            Response::Decrypted(d) => Ok(d),
            _ => Err(mismatch(Operation::Decrypt)),
        }
    }

    /// `Request::Encrypt`.
    fn encrypt(
        &self,
        ctx: &RequestContext<'_>,
        key_id: &str,
        plaintext: &[u8],
        context: &EncryptionContext,
    ) -> Result<Encrypted, KmsError> {
        let req = Request::Encrypt {
            key_id,
            plaintext,
            context,
        };
        match self.call(ctx, req)? {
            Response::Encrypted(e) => Ok(e),
            _ => Err(mismatch(Operation::Encrypt)),
        }
    }

    /// `Request::ReEncrypt`.
    fn re_encrypt(
        &self,
        ctx: &RequestContext<'_>,
        blob: &[u8],
        source_context: &EncryptionContext,
        destination_key_id: &str,
        destination_context: &EncryptionContext,
    ) -> Result<Encrypted, KmsError> {
        let req = Request::ReEncrypt {
            blob,
            source_context,
            destination_key_id,
            destination_context,
        };
        match self.call(ctx, req)? {
            Response::Encrypted(e) => Ok(e),
            _ => Err(mismatch(Operation::ReEncryptFrom)),
        }
    }

    /// `Request::DescribeKey`.
    fn describe_key(
        &self,
        ctx: &RequestContext<'_>,
        key_id: &str,
    ) -> Result<KeyMetadata, KmsError> {
        match self.call(ctx, Request::DescribeKey { key_id })? {
            Response::Metadata(m) => Ok(m),
            _ => Err(mismatch(Operation::DescribeKey)),
        }
    }

    /// `Request::CachedOpen`.
    fn record_cached_open(
        &self,
        ctx: &RequestContext<'_>,
        key_id: &str,
        key_material_version: u32,
        context: &EncryptionContext,
    ) -> Result<(), KmsError> {
        let req = Request::CachedOpen {
            key_id,
            key_material_version,
            context,
        };
        match self.call(ctx, req)? {
            Response::Recorded => Ok(()),
            _ => Err(mismatch(Operation::Decrypt)),
        }
    }
}

impl<T: KeyService + ?Sized> KeyServiceExt for T {}
