//! `kmsfs kms serve`: the keystore served over the AWS KMS protocol
//! (`crate::server`), and the wrapper that puts `serve` beside the key
//! subcommands of `kmsfs kms`.

use super::kms::KmsCommand;
use super::{CliError, ErrorClass, GlobalArgs, keystore};
use std::path::PathBuf;

use crate::server::{Listen, ServeOptions, ServerError, TlsFiles};

/// `kmsfs kms ...`: the key subcommands, and `serve`.
#[derive(Debug, clap::Subcommand)]
pub enum KmsTop {
    /// Serve the keystore over the AWS KMS protocol (JSON 1.1) to boto3, the
    /// aws CLI and the AWS SDKs (`--endpoint-url`); see docs/PROTOCOL.md.
    Serve(ServeArgs),
    /// A key subcommand.
    #[command(flatten)]
    Key(KmsCommand),
}

/// Arguments of `kmsfs kms serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// unix:PATH (callers are the socket peer's uid/gid, no signature) or
    /// IP:PORT (callers sign with an access key, see `kmsfs access-key
    /// create`; loopback unless --tls-cert). Port 0 picks a free port; the
    /// URL is printed.
    #[arg(long, value_name = "ADDR")]
    pub listen: Listen,
    /// Serve TCP over TLS with this PEM certificate chain (leaf first);
    /// required for an address that is not loopback. Clients trust its CA
    /// with --kms-ca-bundle or AWS_CA_BUNDLE.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's PEM private key; refused unless only its owner (this
    /// user or root) can read it (chmod 600).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Permissions of the Unix socket, octal.
    #[arg(long, value_name = "MODE", default_value = "600", value_parser = parse_mode)]
    pub socket_mode: u32,
    /// Worker threads.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub threads: usize,
    /// The region of the ARNs this server answers with
    /// (`arn:aws:kms:REGION:ACCOUNT:key/ID`); requests signed for another
    /// region are then refused. Without it, each request's signing region
    /// is used ("local" over the Unix socket).
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal mode such as 600"))
}

impl From<ServerError> for CliError {
    fn from(e: ServerError) -> Self {
        match e {
            ServerError::Usage(m) => CliError::new(ErrorClass::Usage, m),
            ServerError::Io(m) => CliError::new(ErrorClass::Io, m),
        }
    }
}

/// `kmsfs kms serve`: runs until SIGTERM or SIGINT.
pub fn serve(g: &GlobalArgs, a: ServeArgs) -> Result<(), CliError> {
    let ks = keystore::open_key_service(g)?;
    let opts = ServeOptions {
        listen: a.listen,
        tls: a
            .tls_cert
            .zip(a.tls_key)
            .map(|(cert, key)| TlsFiles { cert, key }),
        socket_mode: a.socket_mode,
        threads: a.threads,
        region: a.region,
    };
    crate::server::serve(ks, &opts, &mut |addr| {
        use std::io::Write;
        // One line on stdout once clients can connect (scripts wait for it).
        println!("listening on {addr}");
        let _ = std::io::stdout().flush();
    })?;
    Ok(())
}
