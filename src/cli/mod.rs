//! The command line: clap definitions of the top-level commands and global
//! options, and `main`, where a `CliError` (see `error`) becomes a message, a
//! remedy and an exit code.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::kms::Caller;

pub mod audit;
mod error;
pub mod fs;
pub mod keystore;
pub mod kms;
mod output;
pub mod tree;

pub use error::{CliError, ErrorClass, repair_hint};

/// `kmsfs`: encryption at rest for unmodified programs, with a small local KMS.
#[derive(Debug, Parser)]
#[command(name = "kmsfs", version, about, long_about = None)]
pub struct Cli {
    /// Global options, accepted before or after the subcommand.
    #[command(flatten)]
    pub globals: GlobalArgs,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct GlobalArgs {
    /// Keystore directory [default: $KMSFS_KEYSTORE, else $XDG_DATA_HOME/kmsfs, else ~/.local/share/kmsfs]
    #[arg(long, global = true, value_name = "DIR")]
    pub keystore: Option<PathBuf>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// Read the keystore passphrase from this file (else $KMSFS_PASSPHRASE, else a
    /// prompt on a terminal; a keystore made without a passphrase needs none).
    #[arg(long, global = true, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Readable text and tables.
    Text,
    /// JSON with the field names of the AWS KMS API.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a keystore (zero-setup root key file, or --with-passphrase).
    Init(keystore::InitArgs),
    /// Key management, shaped like `aws kms`.
    Kms {
        /// The key operation.
        #[command(subcommand)]
        command: kms::KmsCommand,
    },
    /// Mount BACKING at MOUNTPOINT: plain files above, ciphertext below.
    Mount(fs::MountArgs),
    /// Unmount a kmsfs mount point.
    Unmount(fs::UnmountArgs),
    /// Show a backing file's header without decrypting its content.
    Inspect(fs::InspectArgs),
    /// Encrypt one file client-side, in the format the mount uses.
    Seal(fs::SealArgs),
    /// Decrypt one backing or sealed file client-side.
    Unseal(fs::UnsealArgs),
    /// Wrap every file's data key again, under another key (--to-key-id) or
    /// its own key's newest material; only headers change.
    Rewrap(tree::RewrapArgs),
    /// Check every header, key and (unless --quick) block tag of a backing tree.
    Fsck(tree::FsckArgs),
    /// The keystore's audit trail: who used which key (show, verify).
    Audit {
        /// The audit operation.
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
}

/// The identity of this process, for key policies and the audit trail.
pub fn current_caller() -> Caller {
    let (uid, gid) = crate::os::ids::ids();
    Caller {
        uid,
        gid,
        pid: std::process::id(),
    }
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    // `kmsfs kms list-aliases | head -1`: end quietly when the reader has
    // gone, as Unix tools do (the mount daemon sets EPIPE back).
    crate::os::process::sigpipe_kills(true);
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format(|buf, r| {
            use std::io::Write;
            // One record, one line: whatever reached the message (a file
            // name, a panic message) cannot start a forged line.
            let style = buf.default_level_style(r.level());
            let msg = r.args().to_string();
            writeln!(
                buf,
                "[{style}{:<5}{style:#} {}] {}",
                r.level(),
                r.target(),
                crate::logtext::one_line(&msg)
            )
        })
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("kmsfs: {}", e.message);
            if let Some(h) = &e.hint {
                eprintln!("  hint: {h}");
            }
            e.class as i32
        }
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    let g = &cli.globals;
    match cli.command {
        Command::Init(a) => keystore::init(g, a),
        Command::Kms { command } => kms::run(g, command),
        Command::Mount(a) => fs::mount(g, a),
        Command::Unmount(a) => fs::unmount(g, a),
        Command::Inspect(a) => fs::inspect(g, a),
        Command::Seal(a) => fs::seal(g, a),
        Command::Unseal(a) => fs::unseal(g, a),
        Command::Rewrap(a) => tree::rewrap(g, a),
        Command::Fsck(a) => tree::fsck(g, a),
        Command::Audit { command } => audit::run(g, command),
    }
}
