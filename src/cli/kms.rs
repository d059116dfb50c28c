//! `kmsfs kms ...`: the key commands, named and shaped like `aws kms`.

use super::{CliError, GlobalArgs};

/// The key subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum KmsCommand {
    /// List keys.
    ListKeys,
}

/// Runs one key subcommand.
pub fn run(_g: &GlobalArgs, _c: KmsCommand) -> Result<(), CliError> {
    todo!()
}
