//! The command line: clap definitions of every command, the global options,
//! and the one place where errors become a message with a remedy and an exit code.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::kms::{Caller, KmsError};

pub mod fs;
pub mod keystore;
pub mod kms;

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
}

/// Classes of failure, one exit code each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Anything else.
    General = 1,
    /// Bad arguments or input (clap uses 2 too).
    Usage = 2,
    /// No such key, alias, file or keystore.
    NotFound = 3,
    /// The key refuses: disabled, pending deletion, policy.
    Refused = 4,
    /// Ciphertext or file is corrupt, modified, or from elsewhere.
    Corrupt = 5,
    /// The keystore cannot be opened or is damaged.
    Keystore = 6,
    /// Operating-system I/O failure (disk full, permissions).
    Io = 7,
}

/// An error as the user sees it: what happened and what to do about it.
#[derive(Debug)]
pub struct CliError {
    /// Which exit code.
    pub class: ErrorClass,
    /// What went wrong (no secrets).
    pub message: String,
    /// What the user can do about it.
    pub hint: Option<String>,
}

impl CliError {
    /// A new error without a hint.
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        Self {
            class,
            message: message.into(),
            hint: None,
        }
    }
    /// Adds a remedy.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl From<KmsError> for CliError {
    fn from(e: KmsError) -> Self {
        let class = match &e {
            KmsError::NotFound(_) => ErrorClass::NotFound,
            KmsError::Disabled(_)
            | KmsError::InvalidState(_)
            | KmsError::AccessDenied(_)
            | KmsError::IncorrectKey(_) => ErrorClass::Refused,
            KmsError::InvalidCiphertext(_) => ErrorClass::Corrupt,
            KmsError::Validation(_) | KmsError::AlreadyExists(_) => ErrorClass::Usage,
            KmsError::KeystoreNotFound(_)
            | KmsError::WrongRootKey(_)
            | KmsError::CorruptKeystore(_) => ErrorClass::Keystore,
            KmsError::Io(_) => ErrorClass::Io,
            KmsError::Internal(_) => ErrorClass::General,
        };
        let hint = match &e {
            KmsError::KeystoreNotFound(_) => {
                Some("create one with `kmsfs init` (or pass --keystore DIR)")
            }
            KmsError::WrongRootKey(_) => {
                Some("check --passphrase-file / KMSFS_PASSPHRASE; the keystore was not changed")
            }
            KmsError::CorruptKeystore(_) => Some(
                "the keystore was not changed; restore it from a backup (keystore.prev is the previous generation)",
            ),
            KmsError::Disabled(_) => Some("enable it with `kmsfs kms enable-key --key-id K`"),
            KmsError::InvalidState(_) => Some(
                "a key pending deletion can be restored with `kmsfs kms cancel-key-deletion` and `enable-key`",
            ),
            KmsError::NotFound(_) => Some("list keys with `kmsfs kms list-keys`"),
            _ => None,
        };
        let err = CliError::new(class, format!("{}: {}", e.aws_code(), e));
        match hint {
            Some(h) => err.hint(h),
            None => err,
        }
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        let class = match e.kind() {
            std::io::ErrorKind::NotFound => ErrorClass::NotFound,
            _ => ErrorClass::Io,
        };
        CliError::new(class, e.to_string())
    }
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
    }
}
