//! `kmsfs init` and opening the keystore for a command (directory choice,
//! passphrase sources, zero-setup default).

use super::{CliError, GlobalArgs};

/// Arguments of `kmsfs init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {}

/// `kmsfs init`.
pub fn init(_g: &GlobalArgs, _a: InitArgs) -> Result<(), CliError> {
    todo!()
}
