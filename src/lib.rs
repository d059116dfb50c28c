//! kmsfs: a FUSE filesystem that gives unmodified programs encryption at rest
//! under keys held by a small, local KMS.
//!
//! Layers, from the bottom up (dependencies point down only; docs/ARCHITECTURE.md
//! has the table of what each may import, and tests/layers.rs checks it):
//! `os` (every `unsafe` and raw system call), `crypto` (AES-256-GCM,
//! secrets), `format` (the on-disk file format, pure), `trust`, `logtext`
//! and `listen` (the path-ownership rule, names in logs, where servers
//! listen), `kms` (the key service, the local keystore and its audit trail),
//! `envelope` (an encrypted file over a backing file: the SDK-side API shared
//! by the mount and `seal`/`unseal`), `fs` (the filesystem and its FUSE
//! adapter), `tree` (whole backing trees without a mount), `daemon` (what
//! may be mounted where, and the mount daemon's lifecycle), `server` (the
//! AWS KMS protocol), `console` (the web console), `cli` (the command line).
//!
//! # Client-side envelope encryption (the SDK side)
//!
//! [`envelope::seal`] writes a file in exactly the format the mount uses, so it
//! can be copied into a backing directory and read through a mount of the same
//! keystore; [`envelope::unseal`] reads a sealed file or a backing file without
//! a mount. Both talk to any [`kms::KeyService`]; here the local keystore:
//!
//! ```
//! use kmsfs::envelope::{seal, unseal};
//! use kmsfs::format::Layout;
//! use kmsfs::kms::{Caller, CreateMode, LocalKeyStore, RequestContext};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let caller = Caller::local(1000, 1000, std::process::id());
//! let keystore = LocalKeyStore::create(&dir.path().join("keystore"), CreateMode::RootKeyFile)?;
//! let key = keystore.create_key(&caller, "reports")?;
//!
//! let sealed_path = dir.path().join("report.txt");
//! let sealed = std::fs::File::options().read(true).write(true).create_new(true).open(&sealed_path)?;
//! let plaintext = b"revenue up, secrets kept";
//! let rc = RequestContext::cli(caller);
//! seal(&mut &plaintext[..], sealed, &keystore, &rc, &key.key_id, Layout::NEW)?;
//! assert!(!std::fs::read(&sealed_path)?.windows(7).any(|w| w == b"revenue"));
//!
//! let mut out = Vec::new();
//! unseal(std::fs::File::open(&sealed_path)?, &mut out, &keystore, &rc)?;
//! assert_eq!(out, plaintext);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs, unreachable_pub)]
// Unsafe code lives in `os` alone; everywhere else it is an error.
#![deny(unsafe_code)]
// Path-based std::fs calls (clippy.toml): only in src/os and at the marked
// places that open a root a user named. Unit tests make fixtures by path.
#![cfg_attr(not(test), warn(clippy::disallowed_methods))]
// No function of the library over 80 lines of code (clippy.toml's
// too-many-lines-threshold; tests excepted): a long body is split into
// named steps.
#![cfg_attr(not(test), warn(clippy::too_many_lines))]

pub mod cli;
pub mod console;
pub mod crypto;
pub mod daemon;
pub mod envelope;
pub mod format;
pub mod fs;
pub mod kms;
pub mod listen;
pub mod logtext;
#[allow(unsafe_code)]
mod os;
pub mod server;
pub mod tree;
pub mod trust;

// The library API in one flat list: what a program embedding kmsfs needs,
// whichever layer it lives in. The layer modules stay public for the
// documentation of their parts and for the fuzz targets and tests.
pub use crate::daemon::{KeySource, MountError, MountRequest, mount, unmount};
pub use crate::envelope::{EncryptedFile, EnvelopeError, FileKey, seal, unseal};
pub use crate::fs::{FsConfig, FsError, KmsFs};
pub use crate::kms::{
    Caller, CreateMode, EncryptionContext, KeyMetadata, KeyService, KeyState, KmsError,
    LocalKeyStore,
};
