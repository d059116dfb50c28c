//! kmsfs: a FUSE filesystem that gives unmodified programs encryption at rest
//! under keys held by a small, local KMS.
//!
//! Layers, from the bottom up (dependencies point down only):
//! `crypto` (AES-256-GCM, secrets), `format` (the on-disk file format, pure),
//! `kms` (the key service and the local keystore), `envelope` (an encrypted
//! file over a backing file: the SDK-side API shared by the mount and
//! `seal`/`unseal`), `fs` (the FUSE frontend), `cli` (the command line).
#![warn(missing_docs)]

pub mod cli;
pub mod crypto;
pub mod envelope;
pub mod format;
pub mod fs;
pub mod kms;
