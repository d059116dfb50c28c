//! `kmsfs console`: the keystore's web console (`crate::console`), local
//! only; prints the login URL once a browser can connect.

use super::{CliError, ErrorClass, GlobalArgs, keystore};
use crate::console::{ConsoleError, Listen};

/// Arguments of `kmsfs console`.
#[derive(Debug, clap::Args)]
pub struct ConsoleArgs {
    /// A loopback IP:PORT (port 0 picks a free one) or unix:PATH (a socket
    /// only this user and root can connect to). Other addresses are refused:
    /// the console has no TLS yet; reach it from elsewhere with `ssh -L`.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub listen: Listen,
}

impl From<ConsoleError> for CliError {
    fn from(e: ConsoleError) -> Self {
        match e {
            ConsoleError::Usage(m) => CliError::new(ErrorClass::Usage, m),
            ConsoleError::Io(m) => CliError::new(ErrorClass::Io, m),
        }
    }
}

/// `kmsfs console`: runs until SIGTERM or SIGINT (Ctrl-C).
pub fn console(g: &GlobalArgs, a: ConsoleArgs) -> Result<(), CliError> {
    let ks = keystore::open_key_service(g)?;
    crate::console::serve(ks, &a.listen, &mut |r| {
        use std::io::Write;
        // Scripts wait for the first line; people open the second.
        println!("kmsfs console listening on {}", r.address);
        if r.address.starts_with("unix:") {
            println!(
                "open {} through a proxy to that socket (the token is a secret)",
                r.login
            );
        } else {
            println!(
                "open {} (the token in it is a secret: it opens the console)",
                r.login
            );
        }
        let _ = std::io::stdout().flush();
    })?;
    Ok(())
}
