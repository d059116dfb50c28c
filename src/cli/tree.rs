//! Whole-tree commands: rewrap and fsck. Thin: they parse, call
//! `crate::tree`, show a progress bar on a terminal and print the result.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};

use super::{CliError, ErrorClass, GlobalArgs, OutputFormat, current_caller, keystore};
use crate::tree::{self, FileStatus, Problem, RewrapOptions, Rewrapper};

/// Arguments of `kmsfs rewrap`.
#[derive(Debug, clap::Args)]
pub struct RewrapArgs {
    /// The backing directory.
    pub backing: PathBuf,
    /// Move every file to this key (key id, ARN or alias/NAME) [default:
    /// each file's own key, current material].
    #[arg(long, value_name = "K")]
    pub to_key_id: Option<String>,
    /// Only files whose data key is wrapped under this key.
    #[arg(long, value_name = "K")]
    pub from_key_id: Option<String>,
}

/// Arguments of `kmsfs fsck`.
#[derive(Debug, clap::Args)]
pub struct FsckArgs {
    /// The backing directory.
    pub backing: PathBuf,
    /// Headers and key states only: no data key is unwrapped, no block read.
    #[arg(long)]
    pub quick: bool,
}

fn progress_bar(total: usize) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = ProgressBar::new(total as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "{bar:40} {pos}/{len} files  {per_sec}  ETA {eta}  {wide_msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    Some(pb)
}

fn walk(backing: &Path) -> Result<tree::Walk, CliError> {
    let w = tree::walk(backing).map_err(|e| {
        CliError::new(
            ErrorClass::NotFound,
            format!("backing directory {}: {e}", backing.display()),
        )
    })?;
    for (dir, e) in &w.errors {
        eprintln!("kmsfs: cannot read {}: {e}", dir.display());
    }
    Ok(w)
}

/// `kmsfs rewrap`.
pub fn rewrap(g: &GlobalArgs, a: RewrapArgs) -> Result<(), CliError> {
    let ks = keystore::open_key_service(g)?;
    let mut rw = Rewrapper::new(
        &*ks,
        current_caller(),
        RewrapOptions {
            to_key: a.to_key_id,
            from_key: a.from_key_id,
        },
    )?;
    let w = walk(&a.backing)?;
    let pb = progress_bar(w.files.len());
    let start = std::time::Instant::now();
    let report = rw.run(&a.backing, &w.files, &mut |_| {
        if let Some(pb) = &pb {
            pb.inc(1);
        }
    })?;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let secs = start.elapsed().as_secs_f64();
    match g.output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        ),
        OutputFormat::Text => {
            for p in &report.problems {
                if let Err(problem) = &p.result {
                    println!("{}: {}", p.path.display(), describe_problem(problem));
                }
            }
            println!(
                "rewrap: {} files, {} rewrapped, {} unchanged, {} busy, {} corrupt, {} refused by their key, {} I/O errors ({:.1} s)",
                report.files,
                report.rewrapped,
                report.unchanged,
                report.busy,
                report.corrupt,
                report.refused,
                report.io,
                secs
            );
        }
    }
    let fail = |class, what: &str| Err(CliError::new(class, what.to_string()));
    if report.corrupt > 0 {
        fail(
            ErrorClass::Corrupt,
            "some files have a corrupt header and were left unchanged",
        )
    } else if report.refused > 0 {
        fail(
            ErrorClass::Refused,
            "some files' keys refused; those files were left unchanged",
        )
    } else if report.io > 0 {
        fail(ErrorClass::Io, "some files could not be rewritten")
    } else if report.busy > 0 {
        Err(CliError::new(
            ErrorClass::Retry,
            format!(
                "{} files were open through a mount and skipped",
                report.busy
            ),
        )
        .hint("run the same command again once they are closed"))
    } else {
        Ok(())
    }
}

fn describe_problem(p: &Problem) -> String {
    match p {
        Problem::Busy => "busy (open through a mount): skipped, run again".into(),
        Problem::CorruptHeader { reason } => format!("corrupt header, unchanged: {reason}"),
        Problem::Key { status, message } => {
            format!("key {}, unchanged: {message}", status.label())
        }
        Problem::Io { message } => format!("I/O error: {message}"),
    }
}

/// `kmsfs fsck`.
pub fn fsck(g: &GlobalArgs, a: FsckArgs) -> Result<(), CliError> {
    let ks = keystore::open_key_service(g)?;
    let w = walk(&a.backing)?;
    let pb = progress_bar(w.files.len());
    let start = std::time::Instant::now();
    let report = tree::fsck_tree(
        &a.backing,
        &w.files,
        &*ks,
        &current_caller(),
        a.quick,
        &mut |_| {
            if let Some(pb) = &pb {
                pb.inc(1);
            }
        },
    );
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let secs = start.elapsed().as_secs_f64();
    match g.output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        ),
        OutputFormat::Text => {
            for f in &report.findings {
                let what = match &f.status {
                    FileStatus::Ok | FileStatus::Empty => continue,
                    FileStatus::CorruptHeader { reason } => format!("corrupt header: {reason}"),
                    FileStatus::CorruptBlocks { offsets } => format!(
                        "corrupt blocks at plaintext offsets {}",
                        offsets
                            .iter()
                            .map(u64::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    FileStatus::KeyUnusable { key } => format!(
                        "unreadable: key {} is {}",
                        f.key_id.as_deref().unwrap_or("?"),
                        key.label()
                    ),
                    FileStatus::Io { message } => format!("I/O error: {message}"),
                };
                println!("{}: {what}", f.path.display());
            }
            for (k, s) in &report.keys {
                println!(
                    "key {k}: {} files, {} bytes, {}",
                    s.files,
                    s.bytes,
                    s.status.label()
                );
            }
            println!(
                "fsck: {} files, {} bytes, {} corrupt, {} unreadable, {} I/O errors ({:.1} s)",
                report.files, report.bytes, report.corrupt, report.unreadable, report.io, secs
            );
        }
    }
    if report.corrupt > 0 || report.io > 0 {
        Err(CliError::new(
            ErrorClass::Corrupt,
            format!("{} damaged files", report.corrupt + report.io),
        ))
    } else if report.unreadable > 0 {
        Err(CliError::new(
            ErrorClass::Refused,
            format!(
                "{} files cannot be read: their key is not usable",
                report.unreadable
            ),
        ))
    } else {
        Ok(())
    }
}
