//! The `kmsfs` binary: all of it lives in `kmsfs::cli`.
#![forbid(unsafe_code)]

fn main() {
    std::process::exit(kmsfs::cli::main());
}
