//! Filesystem commands: mount, unmount, inspect, seal, unseal.

use std::path::PathBuf;

use super::{CliError, GlobalArgs};

/// Arguments of `kmsfs mount`.
#[derive(Debug, clap::Args)]
pub struct MountArgs {
    /// The directory that holds the ciphertext.
    pub backing: PathBuf,
    /// Where the plaintext view appears.
    pub mountpoint: PathBuf,
}
/// Arguments of `kmsfs unmount`.
#[derive(Debug, clap::Args)]
pub struct UnmountArgs {
    /// The mount point.
    pub mountpoint: PathBuf,
}
/// Arguments of `kmsfs inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// A backing file.
    pub file: PathBuf,
}
/// Arguments of `kmsfs seal`.
#[derive(Debug, clap::Args)]
pub struct SealArgs {
    /// Plain input.
    pub input: PathBuf,
    /// Sealed output.
    pub output: PathBuf,
}
/// Arguments of `kmsfs unseal`.
#[derive(Debug, clap::Args)]
pub struct UnsealArgs {
    /// Sealed input.
    pub input: PathBuf,
    /// Plain output.
    pub output: PathBuf,
}

#[allow(missing_docs)]
pub fn mount(_g: &GlobalArgs, _a: MountArgs) -> Result<(), CliError> {
    todo!()
}
#[allow(missing_docs)]
pub fn unmount(_g: &GlobalArgs, _a: UnmountArgs) -> Result<(), CliError> {
    todo!()
}
#[allow(missing_docs)]
pub fn inspect(_g: &GlobalArgs, _a: InspectArgs) -> Result<(), CliError> {
    todo!()
}
#[allow(missing_docs)]
pub fn seal(_g: &GlobalArgs, _a: SealArgs) -> Result<(), CliError> {
    todo!()
}
#[allow(missing_docs)]
pub fn unseal(_g: &GlobalArgs, _a: UnsealArgs) -> Result<(), CliError> {
    todo!()
}
