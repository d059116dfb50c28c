//! The `kmsfs` binary: all of it lives in `kmsfs::cli`.

fn main() {
    std::process::exit(kmsfs::cli::main());
}
