//! The command line: clap definitions of the top-level commands and global
//! options, and `main`, where a `CliError` (see `error`) becomes a message, a
//! remedy and an exit code.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::kms::Caller;

pub mod access_key;
pub mod audit;
pub mod console;
mod error;
pub mod fs;
pub mod keystore;
pub mod kms;
mod output;
pub mod remote;
pub mod server;
pub mod system;
pub mod tree;

pub use error::{CliError, ErrorClass, repair_hint};

/// The exit codes, for `--help` and the man page (README lists them too).
pub const EXIT_CODES: &str = "Exit codes:
  0  success
  1  other errors (already mounted, keystore exists, mount point not empty, busy,
     keystore in use)
  2  bad arguments or input
  3  no such key, alias, file, keystore or mount
  4  refused: key disabled or pending deletion, policy, wrong keystore for a backing
     directory, no access to /dev/fuse
  5  corrupt or foreign ciphertext
  6  keystore missing, damaged, wrong or no passphrase
  7  I/O error
  8  some work skipped (files busy during rewrap): run the command again";

/// `kmsfs`: encryption at rest for unmodified programs, with a small local KMS.
#[derive(Debug, Parser)]
#[command(name = "kmsfs", version, about, long_about = None, after_help = EXIT_CODES)]
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
    /// Output format: text, json, table or yaml [default: kmsfs's readable
    /// layouts]. `--output text` given explicitly is the aws CLI's
    /// tab-separated text for the key commands (elsewhere the same as the
    /// default); table and yaml are the aws CLI's for the key commands.
    #[arg(
        long,
        global = true,
        value_parser = output_parser(),
        default_value = "text",
        hide_default_value = true,
        value_name = "FORMAT"
    )]
    pub output: OutputFormat,
    /// A JMESPath expression applied to the result (as the AWS CLI's
    /// `--query`), e.g. `--query CiphertextBlob --output text`.
    #[arg(long, global = true, value_name = "JMESPATH")]
    pub query: Option<String>,
    /// Read the keystore passphrase from this file (else $KMSFS_PASSPHRASE, else a
    /// prompt on a terminal; a keystore made without a passphrase needs none).
    #[arg(long, global = true, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// The passphrase file came from a mount option (fstab, mount(8)):
    /// refused unless only root or this user owns and can read it.
    #[arg(skip)]
    pub passphrase_file_private: bool,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Readable text and tables.
    Text,
    /// JSON with the field names of the AWS KMS API.
    Json,
}

/// `--output`: text, json, table (the AWS CLI's boxes, for the key
/// commands; elsewhere text) or yaml (AWS CLI v2's YAML for the key
/// commands; elsewhere JSON, which YAML readers read too). Table and yaml
/// are not `OutputFormat`s: commands print text or JSON, and `output` draws
/// the boxes or writes the YAML.
fn output_parser() -> impl clap::builder::TypedValueParser<Value = OutputFormat> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["text", "json", "table", "yaml"]).map(|s| {
        match s.as_str() {
            "json" | "yaml" => OutputFormat::Json,
            _ => OutputFormat::Text,
        }
    })
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a keystore (zero-setup root key file, or --with-passphrase).
    Init(keystore::InitArgs),
    /// Seal the keystore under a new passphrase, or switch between the root
    /// key file and a passphrase (atomically; refused while a mount uses it).
    Passwd(keystore::PasswdArgs),
    /// Key management, shaped like `aws kms`.
    Kms {
        /// Send the operation to this AWS KMS protocol endpoint (AWS KMS,
        /// `kmsfs kms serve`, ...) instead of the local keystore; credentials
        /// and region come from the usual AWS environment and profiles.
        #[arg(long, value_name = "URL", global = true)]
        endpoint_url: Option<String>,
        /// The aws CLI's global options (--region, --profile, ...).
        #[command(flatten)]
        aws: kms::AwsCliArgs,
        /// The key operation.
        #[command(subcommand)]
        command: server::KmsTop,
    },
    /// Access keys that sign requests to `kmsfs kms serve` (as `aws iam`).
    AccessKey {
        /// The access-key operation.
        #[command(subcommand)]
        command: access_key::AccessKeyCommand,
    },
    /// Mount BACKING at MOUNTPOINT: plain files above, ciphertext below.
    Mount(fs::MountArgs),
    /// Unmount a kmsfs mount point.
    Unmount(fs::UnmountArgs),
    /// Show every running kmsfs mount (or one): daemon, backing directory,
    /// keystore, key and its state, open files, cache and key-service counts.
    Status(system::StatusArgs),
    /// Make a running mount read-only or read-write (what `mount -o
    /// remount,ro|rw` does through the helper).
    Remount(system::RemountArgs),
    /// Print a shell completion script: `kmsfs completions bash >
    /// /etc/bash_completion.d/kmsfs`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (kmsfs.1), or write it and one page per command
    /// into DIR (`kmsfs man --dir /usr/local/share/man/man1`).
    Man {
        /// Write every page here instead of printing kmsfs.1.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Install the mount(8) helper (`mount.fuse.kmsfs`, a link to this
    /// binary), so that `mount -t fuse.kmsfs` and fstab lines work.
    InstallHelper(system::InstallHelperArgs),
    /// Choose the CMK a backing directory's new files are encrypted under
    /// (its default key); existing files keep theirs (`rewrap` moves them).
    SetDefaultKey(fs::SetDefaultKeyArgs),
    /// Choose the CMK for files created under a directory inside a running
    /// mount (inherited by its subdirectories), or go back to its parent's.
    SetKey(fs::SetKeyArgs),
    /// Show which CMK files created under a directory inside a mount get,
    /// and where that choice comes from.
    GetKey(fs::GetKeyArgs),
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
    /// Write the plaintext of a backing tree to a new directory, without a mount.
    Export(tree::ExportArgs),
    /// Encrypt a plain tree into a backing directory, without a mount.
    Import(tree::ImportArgs),
    /// A web console for this keystore's keys, files and audit trail, on
    /// 127.0.0.1 (or a Unix socket) for its owner and root; prints the URL.
    Console(console::ConsoleArgs),
    /// The keystore's audit trail: who used which key (show, verify).
    Audit {
        /// The audit operation.
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
}

/// The identity of this process, for key policies and the audit trail.
pub fn current_caller() -> Caller {
    crate::daemon::this_process()
}

/// A request from this process's command, for the key service.
pub fn cli_context() -> crate::kms::RequestContext<'static> {
    crate::kms::RequestContext::cli(current_caller())
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    // `kmsfs kms list-aliases | head -1`: end quietly when the reader has
    // gone, as Unix tools do (the mount daemon sets EPIPE back).
    crate::os::process::sigpipe_kills(true);
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .first()
        .is_some_and(|a0| system::is_helper(std::path::Path::new(a0)))
    {
        match system::helper_args(&args[1..]) {
            Ok(Some(a)) => args = a,
            Ok(None) => return 0,
            Err(e) => return report(e),
        }
    }
    let matches = <Cli as clap::CommandFactory>::command().get_matches_from(args);
    // `--output text` given on the command line asks for the AWS CLI's text
    // shape (key commands); left at its default, kmsfs's readable layouts.
    output::set_aws_text(
        matches.value_source("output") == Some(clap::parser::ValueSource::CommandLine),
        global_raw(&matches, "output").as_deref(),
    );
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    // Daemons and servers keep a log; every other command's warnings are
    // messages to the person who ran it.
    let daemon = match &cli.command {
        Command::Mount(_) => Some(true),
        Command::Console(_)
        | Command::Kms {
            command: server::KmsTop::Serve(_),
            ..
        } => Some(false),
        _ => None,
    };
    init_logging(daemon);
    match run(cli) {
        Ok(()) => 0,
        Err(e) => report(e),
    }
}

/// `kmsfs man`.
#[allow(clippy::disallowed_methods)] // a path the user named on the command line, used as given
fn man(dir: Option<&std::path::Path>) -> Result<(), CliError> {
    let cmd = <Cli as clap::CommandFactory>::command();
    match dir {
        Some(d) => {
            clap_mangen::generate_to(cmd.clone(), d)?;
            // kmsfs.1 with its own sections (exit status, environment, files, examples).
            let mut f = std::fs::File::create(d.join("kmsfs.1"))?;
            man_page(cmd, &mut f)?;
            println!("man pages written to {}", d.display());
        }
        None => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            man_page(cmd, &mut out)?;
            out.flush()?;
        }
    }
    Ok(())
}

/// The exit codes, one (code, meaning) each, for the man page's table.
const EXIT_STATUS: [(&str, &str); 9] = [
    ("0", "success"),
    (
        "1",
        "other errors: already mounted, keystore exists (init), mount point not empty, busy, \
         keystore in use, a stale mount",
    ),
    ("2", "bad arguments or input"),
    ("3", "no such key, alias, file, keystore or mount"),
    (
        "4",
        "refused: key disabled or pending deletion, policy, wrong keystore for a backing \
         directory, no access to /dev/fuse",
    ),
    ("5", "corrupt or foreign ciphertext"),
    ("6", "keystore missing, damaged, wrong or no passphrase"),
    ("7", "I/O error"),
    (
        "8",
        "some work skipped (files busy during rewrap): run the command again",
    ),
];

/// The ENVIRONMENT section of kmsfs.1.
const MAN_ENVIRONMENT: &[(&str, &str)] = &[
    (
        "KMSFS_KEYSTORE",
        "the keystore directory when --keystore is not given",
    ),
    (
        "XDG_DATA_HOME",
        "the keystore is $XDG_DATA_HOME/kmsfs when neither --keystore nor \
         KMSFS_KEYSTORE is given",
    ),
    (
        "KMSFS_PASSPHRASE",
        "the keystore passphrase when --passphrase-file is not given",
    ),
    ("KMSFS_NEW_PASSPHRASE", "the new passphrase of kmsfs passwd"),
    (
        "XDG_STATE_HOME",
        "a background mount logs to $XDG_STATE_HOME/kmsfs/mount-MOUNTPOINT.log",
    ),
    ("RUST_LOG", "the log level (default: warn; info for mounts)"),
    (
        "AWS_*",
        "credentials and region for --endpoint-url and --kms-endpoint, as for the aws CLI",
    ),
];

/// The FILES section of kmsfs.1.
const MAN_FILES: &[(&str, &str)] = &[
    (
        "~/.local/share/kmsfs/",
        "the default keystore: keystore.kms, keystore.prev, root.key, audit/, backings/",
    ),
    (
        "BACKING/.kmsfs.json",
        "the keystore and default key a backing directory is bound to",
    ),
    (
        "BACKING/.kmsfs.lock",
        "held by the daemon serving the backing directory",
    ),
    (
        "~/.local/state/kmsfs/mount-*.log",
        "the log of a background mount",
    ),
    (
        "/sbin/mount.fuse.kmsfs",
        "the mount(8) helper (kmsfs install-helper)",
    ),
];

/// The EXAMPLES section of kmsfs.1.
const MAN_EXAMPLES: &[(&str, &str)] = &[
    (
        "kmsfs mount ~/secret.enc ~/secret",
        "mount, creating the default keystore and key on first use",
    ),
    (
        "kmsfs kms create-key --query KeyMetadata.KeyId --output text",
        "a new key; prints its id",
    ),
    (
        "kmsfs rewrap ~/secret.enc --to-key-id NEW",
        "move every file (headers only) and new files to key NEW",
    ),
    ("kmsfs status", "every running mount, its key and counters"),
    (
        "kmsfs audit prune --before 90d --archive trail-old.jsonl",
        "remove the audit records older than 90 days, keeping them in an archive \
         (kmsfs audit verify --archive trail-old.jsonl checks both as one chain)",
    ),
    ("kmsfs unmount ~/secret", "unmount and wait for the daemon"),
];

/// kmsfs.1: clap's sections, then EXIT STATUS, ENVIRONMENT, FILES and
/// EXAMPLES.
fn man_page(cmd: clap::Command, w: &mut dyn std::io::Write) -> std::io::Result<()> {
    use clap_mangen::roff::{Roff, bold, roman};
    let m = clap_mangen::Man::new(cmd);
    m.render_title(w)?;
    m.render_name_section(w)?;
    m.render_synopsis_section(w)?;
    m.render_description_section(w)?;
    m.render_options_section(w)?;
    m.render_subcommands_section(w)?;
    let mut r = Roff::new();
    let table = |r: &mut Roff, rows: &[(&str, &str)]| {
        for (k, v) in rows {
            r.control("TP", []);
            r.text([bold(*k)]);
            r.text([roman(*v)]);
        }
    };
    r.control("SH", ["EXIT STATUS"]);
    table(&mut r, &EXIT_STATUS);
    r.control("SH", ["ENVIRONMENT"]);
    table(&mut r, MAN_ENVIRONMENT);
    r.control("SH", ["FILES"]);
    table(&mut r, MAN_FILES);
    r.control("SH", ["EXAMPLES"]);
    table(&mut r, MAN_EXAMPLES);
    r.to_writer(w)?;
    m.render_version_section(w)
}

/// The raw value of a global option, wherever on the command line it was
/// given (before or after the subcommand).
fn global_raw(m: &clap::ArgMatches, id: &str) -> Option<String> {
    let mut found = m
        .get_raw(id)
        .and_then(|mut v| v.next_back())
        .map(|v| v.to_string_lossy().into_owned());
    let mut cur = m;
    while let Some((_, sub)) = cur.subcommand() {
        if sub.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
            && let Some(v) = sub.get_raw(id).and_then(|mut v| v.next_back())
        {
            found = Some(v.to_string_lossy().into_owned());
        }
        cur = sub;
    }
    found
}

/// Prints an error and its remedy; returns its exit code.
fn report(e: CliError) -> i32 {
    eprintln!("kmsfs: {}", e.message);
    if let Some(h) = &e.hint {
        eprintln!("  hint: {h}");
    }
    e.class as i32
}

/// The log: `RUST_LOG` if set, else warnings and errors. For a daemon or a
/// server (`daemon` is Some, true for a mount, whose daemon's log is this
/// stream and keeps its events at info) each line carries the time (UTC),
/// the pid, the level and the module; for any other command a warning is a
/// message (`kmsfs: warning: ...`) like its errors. Always one line whatever
/// the message holds, no colours.
fn init_logging(daemon: Option<bool>) {
    let default = if daemon == Some(true) { "info" } else { "warn" };
    let mut b =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default));
    b.write_style(env_logger::WriteStyle::Never);
    if daemon.is_some() {
        b.format(|buf, r| {
            use std::io::Write;
            // One record, one line: whatever reached the message (a file
            // name, a panic message) cannot start a forged line.
            let msg = r.args().to_string();
            writeln!(
                buf,
                "{} kmsfs[{}] {:<5} {}: {}",
                buf.timestamp_millis(),
                std::process::id(),
                r.level(),
                r.target(),
                crate::logtext::one_line(&msg)
            )
        });
    } else {
        b.format(|buf, r| {
            use std::io::Write;
            let text = r.args().to_string();
            let msg = crate::logtext::one_line(&text);
            match r.level() {
                log::Level::Error => writeln!(buf, "kmsfs: error: {msg}"),
                log::Level::Warn => writeln!(buf, "kmsfs: warning: {msg}"),
                _ => writeln!(buf, "kmsfs: {msg}"),
            }
        });
    }
    b.init();
}

/// Says once, on stderr, which aws CLI options have no meaning for the
/// local keystore (a script keeps working; its reader knows why they did
/// nothing).
fn note_ignored(aws: &kms::AwsCliArgs) {
    let ignored: Vec<&str> = [
        ("--region", aws.region.is_some()),
        ("--profile", aws.profile.is_some()),
    ]
    .iter()
    .filter(|(_, given)| *given)
    .map(|(name, _)| *name)
    .collect();
    if !ignored.is_empty() {
        eprintln!(
            "kmsfs: {} ignored: the local keystore has no region or profile (they apply with \
             --endpoint-url)",
            ignored.join(" and ")
        );
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    let g = &cli.globals;
    output::set_render(g.output, g.query.clone())?;
    match cli.command {
        Command::Init(a) => keystore::init(g, a),
        Command::Passwd(a) => keystore::passwd(g, a),
        Command::Kms {
            command,
            endpoint_url,
            aws,
        } => {
            kms::set_binary_format(aws.cli_binary_format);
            if endpoint_url.is_none() {
                note_ignored(&aws);
            }
            match (command, endpoint_url) {
                (server::KmsTop::Serve(a), _) => server::serve(g, a),
                (server::KmsTop::Key(c), Some(url)) => remote::run(g, &url, &aws, c),
                (server::KmsTop::Key(c), None) => kms::run(g, c),
            }
        }
        Command::AccessKey { command } => access_key::run(g, command),
        Command::Mount(a) => fs::mount(g, a),
        Command::Unmount(a) => fs::unmount(g, a),
        Command::Status(a) => system::status(g, a),
        Command::Remount(a) => system::remount(g, a),
        Command::InstallHelper(a) => system::install_helper(g, a),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "kmsfs", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { dir } => man(dir.as_deref()),
        Command::SetDefaultKey(a) => fs::set_default_key(g, a),
        Command::SetKey(a) => fs::set_key(g, a),
        Command::GetKey(a) => fs::get_key(g, a),
        Command::Inspect(a) => fs::inspect(g, a),
        Command::Seal(a) => fs::seal(g, a),
        Command::Unseal(a) => fs::unseal(g, a),
        Command::Rewrap(a) => tree::rewrap(g, a),
        Command::Fsck(a) => tree::fsck(g, a),
        Command::Export(a) => tree::export(g, a),
        Command::Import(a) => tree::import(g, a),
        Command::Audit { command } => audit::run(g, command),
        Command::Console(a) => console::console(g, a),
    }
}
