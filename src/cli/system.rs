//! Fitting into the system: `kmsfs status` (what each running mount is
//! doing, from its control socket), `kmsfs remount`, the mount(8) helper
//! (`mount.fuse.kmsfs`, this binary under that name) and `install-helper`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::{CliError, ErrorClass, GlobalArgs, OutputFormat};
use crate::daemon::{self, MountInfo};

/// The name mount(8) runs for `-t fuse.kmsfs` (and fstab lines of that type).
pub const HELPER_NAME: &str = "mount.fuse.kmsfs";

/// Arguments of `kmsfs status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Only this mount point [default: every kmsfs mount].
    pub mountpoint: Option<PathBuf>,
}

/// Arguments of `kmsfs remount`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["read_only", "read_write"])))]
pub struct RemountArgs {
    /// The mount point of a running kmsfs mount.
    pub mountpoint: PathBuf,
    /// Refuse writes from now on.
    #[arg(long)]
    pub read_only: bool,
    /// Accept writes again.
    #[arg(long)]
    pub read_write: bool,
}

/// Arguments of `kmsfs install-helper`.
#[derive(Debug, clap::Args)]
pub struct InstallHelperArgs {
    /// Where mount(8) looks for helpers.
    #[arg(long, value_name = "DIR", default_value = "/sbin")]
    pub dir: PathBuf,
    /// Replace a helper that points at another binary, and link a binary
    /// that is a cargo build output (which `cargo clean` removes).
    #[arg(long)]
    pub force: bool,
}

#[allow(clippy::disallowed_methods)] // a system file (/proc, /sys, /etc), not a tree a user can write
fn kmsfs_mounts() -> Vec<MountInfo> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    daemon::parse_mountinfo(&text)
        .into_iter()
        .filter(|m| m.is_kmsfs())
        .collect()
}

/// What is known of one mount: its daemon's answer, or mountinfo's fields
/// and why the daemon did not answer.
fn mount_status(m: &MountInfo) -> Value {
    let pid = m.daemon_pid();
    let answer = match pid {
        Some(pid) => daemon::control_request(pid, "status").map_err(|e| e.to_string()),
        None => Err(
            "no daemon of this user serves it (another user's mount, or its \
                     daemon made no control socket)"
                .to_string(),
        ),
    };
    match answer {
        Ok(v) => v,
        Err(why) => {
            // A daemon that is gone leaves a stale mount: every access fails.
            let stale = m.daemon_gone();
            json!({
                "Pid": pid,
                "MountPoint": m.mountpoint.display().to_string(),
                "Backing": m.backing().map(|b| b.display().to_string()),
                "ReadOnly": m.options.split(',').any(|o| o == "ro"),
                "Stale": stale,
                "Unavailable": if stale {
                    "stale: its daemon is gone, every access fails with \"Transport endpoint \
                     is not connected\""
                        .to_string()
                } else {
                    why
                },
            })
        }
    }
}

/// `kmsfs status`.
#[allow(clippy::disallowed_methods)] // the mount point the user named, used as given
pub fn status(g: &GlobalArgs, a: StatusArgs) -> Result<(), CliError> {
    let mut mounts = kmsfs_mounts();
    if let Some(mp) = &a.mountpoint {
        let p = std::fs::canonicalize(mp).unwrap_or_else(|_| mp.clone());
        mounts.retain(|m| m.mountpoint == p);
        if mounts.is_empty() {
            return Err(CliError::new(
                ErrorClass::NotFound,
                format!("{} is not a kmsfs mount", mp.display()),
            )
            .hint("`kmsfs status` without a mount point lists every kmsfs mount"));
        }
    }
    let all: Vec<Value> = mounts.iter().map(mount_status).collect();
    match g.output {
        OutputFormat::Json => {
            crate::cli::output::print_report(&json!({ "Mounts": all }));
        }
        OutputFormat::Text => {
            if all.is_empty() {
                println!("no kmsfs mounts");
            }
            for (i, v) in all.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                print_status(v);
            }
        }
    }
    let stale: Vec<&str> = all
        .iter()
        .filter(|v| v["Stale"] == true)
        .filter_map(|v| v["MountPoint"].as_str())
        .collect();
    if let Some(first) = stale.first() {
        return Err(CliError::new(
            ErrorClass::General,
            format!(
                "stale mount{}: {} (the daemon is gone)",
                if stale.len() == 1 { "" } else { "s" },
                stale.join(", ")
            ),
        )
        .hint(format!(
            "mount again (`kmsfs mount` detaches a stale mount first), or detach it with \
             `umount -l {first}`"
        )));
    }
    Ok(())
}

fn print_status(v: &Value) {
    let s = |k: &str| match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(Value::Bool(b)) => if *b { "yes" } else { "no" }.into(),
        Some(other) => other.to_string(),
    };
    println!("{}", s("MountPoint"));
    println!("  daemon pid:         {}", s("Pid"));
    println!("  backing directory:  {}", s("Backing"));
    if v.get("Unavailable").is_some() {
        println!("  read-only:          {}", s("ReadOnly"));
        println!("  (no details: {})", s("Unavailable"));
        return;
    }
    println!("  keystore:           {}", s("Keystore"));
    println!("  key for new files:  {} ({})", s("KeyId"), s("KeyState"));
    if let Some(dirs) = v["DirectoryKeys"].as_array() {
        for d in dirs {
            println!(
                "  directory key:      {} under {}",
                d["Directory"].as_str().unwrap_or("-"),
                d["KeyId"].as_str().unwrap_or("-")
            );
        }
    }
    println!("  read-only:          {}", s("ReadOnly"));
    println!("  mounted at:         {}", s("MountedAt"));
    println!("  open files:         {}", s("OpenFiles"));
    println!("  requests served:    {}", s("Requests"));
    println!(
        "  data-key cache:     {} hits, {} misses",
        s("KeyCacheHits"),
        s("KeyCacheMisses")
    );
    println!(
        "  key-service calls:  {} ({} refused or failed)",
        s("KeyServiceCalls"),
        s("KeyServiceErrors")
    );
    println!("  I/O errors (EIO):   {}", s("IoErrors"));
    let p = &v["DataKeyPool"];
    if !p.is_null() {
        let n = |k: &str| p[k].as_u64().unwrap_or(0);
        println!(
            "  data-key pool:      {} of {} ready; {} generated, {} used, {} discarded, {} refusals",
            n("Ready"),
            n("Size"),
            n("Generated"),
            n("Used"),
            n("Discarded"),
            n("Refusals")
        );
    }
    println!("  log:                {}", s("LogFile"));
    print_trail_status(&v["AuditTrail"]);
}

/// The audit trail's line of `kmsfs status`: size against its cap, what
/// was folded or suppressed, and a loud word when it is over the cap.
fn print_trail_status(t: &Value) {
    if t.is_null() {
        println!("  audit trail:        off");
        return;
    }
    let n = |k: &str| t[k].as_u64().unwrap_or(0);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "  audit trail:        {:.1} MiB of a {:.0} MiB cap{}; {} repeat(s) aggregated, {} record(s) \
         suppressed by the per-user rate",
        mib(n("Bytes")),
        mib(n("MaxBytes")),
        if t["OverCap"].as_bool() == Some(true) {
            " (OVER ITS CAP: only summaries are written for users)"
        } else {
            ""
        },
        n("RepeatsAggregated"),
        n("RecordsSuppressed"),
    );
    if t["Failing"].as_bool() == Some(true) {
        println!("  audit trail:        NOT BEING WRITTEN (see the log)");
    }
}

/// `kmsfs remount`.
pub fn remount(_g: &GlobalArgs, a: RemountArgs) -> Result<(), CliError> {
    daemon::remount(&a.mountpoint, a.read_only && !a.read_write)?;
    Ok(())
}

/// `kmsfs install-helper`: `DIR/mount.fuse.kmsfs`, a link to this binary.
#[allow(clippy::disallowed_methods)] // the helper directory root named (/sbin by default), root's own
pub fn install_helper(_g: &GlobalArgs, a: InstallHelperArgs) -> Result<(), CliError> {
    let exe = std::env::current_exe()?;
    let link = a.dir.join(HELPER_NAME);
    if !a.force
        && let Some(dir) = cargo_target_dir(&exe)
    {
        return Err(CliError::new(
            ErrorClass::General,
            format!(
                "{} is a cargo build output (in {}): `cargo clean` would break every fstab \
                 mount through the helper",
                exe.display(),
                dir.display()
            ),
        )
        .hint(
            "install kmsfs first (scripts/install.sh, or `cargo install --path .`) and run the \
             installed `kmsfs install-helper`; --force links this build anyway",
        ));
    }
    match std::fs::symlink_metadata(&link) {
        Ok(m) if m.file_type().is_symlink() => {
            let to = std::fs::read_link(&link)?;
            if to == exe {
                println!("{} -> {} (already there)", link.display(), exe.display());
                return Ok(());
            }
            // A link whose binary is gone (a cleaned build) helps no one.
            if !a.force && a.dir.join(&to).exists() {
                return Err(CliError::new(
                    ErrorClass::General,
                    format!(
                        "{} points at another kmsfs binary, {}",
                        link.display(),
                        to.display()
                    ),
                )
                .hint(format!(
                    "fstab mounts run that binary; `kmsfs install-helper --force` points the \
                     helper at {} instead",
                    exe.display()
                )));
            }
        }
        Ok(_) if !a.force => {
            return Err(CliError::new(
                ErrorClass::General,
                format!("{} exists and is not a link to kmsfs", link.display()),
            )
            .hint("remove it first if it is an old helper, or give --force"));
        }
        Ok(_) | Err(_) => {}
    }
    // Made beside, then renamed over: mount(8) never finds no helper.
    let tmp = a.dir.join(format!(".{HELPER_NAME}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&exe, &tmp)
        .and_then(|()| std::fs::rename(&tmp, &link))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            CliError::new(ErrorClass::Io, format!("{}: {e}", link.display()))
        })?;
    println!("{} -> {}", link.display(), exe.display());
    Ok(())
}

/// The cargo target directory `exe` was built into, if it is a build output
/// (target/debug/kmsfs, target/TRIPLE/release/kmsfs): cargo always writes
/// .rustc_info.json at the target directory's top, and .fingerprint/ beside
/// what it builds. (CACHEDIR.TAG is not enough: cargo writes it only when it
/// creates the directory itself, and a fresh clone's scripts may make
/// target/ first.)
#[allow(clippy::disallowed_methods)] // beside the running executable, only looked at
fn cargo_target_dir(exe: &Path) -> Option<PathBuf> {
    let built_here = exe
        .parent()
        .is_some_and(|d| d.join(".fingerprint").is_dir());
    exe.ancestors()
        .skip(1)
        .take(3)
        .find(|d| {
            d.join(".rustc_info.json").is_file() || (built_here && d.join("CACHEDIR.TAG").is_file())
        })
        .map(Path::to_path_buf)
}

/// True when this binary runs as the mount(8) helper.
pub fn is_helper(argv0: &Path) -> bool {
    argv0
        .file_name()
        .is_some_and(|n| n == HELPER_NAME || n == "mount.kmsfs")
}

/// The helper's command line, as mount(8) gives it (`SOURCE TARGET [-sfnv]
/// [-N NS] [-o OPTIONS] [-t TYPE]`), turned into `kmsfs` arguments: a mount,
/// or a remount when the options say `remount`. None for `-f` (fake).
pub fn helper_args(args: &[OsString]) -> Result<Option<Vec<OsString>>, CliError> {
    let usage = || {
        CliError::new(
            ErrorClass::Usage,
            format!("usage: {HELPER_NAME} BACKING MOUNTPOINT [-o OPTIONS]"),
        )
    };
    let mut pos = Vec::new();
    let mut opts: Vec<String> = Vec::new();
    let mut fake = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("-o") => opts.push(it.next().ok_or_else(usage)?.to_string_lossy().into()),
            Some("-t") | Some("-N") => {
                it.next().ok_or_else(usage)?;
            }
            Some("-f") => fake = true,
            Some("-s") | Some("-n") | Some("-v") => {}
            Some(s) if s.starts_with("-o") && s.len() > 2 => opts.push(s[2..].to_string()),
            _ => pos.push(a.clone()),
        }
    }
    let [source, target] = <[OsString; 2]>::try_from(pos).map_err(|_| usage())?;
    if fake {
        return Ok(None);
    }
    let all: Vec<&str> = opts.iter().flat_map(|o| o.split(',')).collect();
    if all.contains(&"remount") {
        // mount(8) passes the mount's whole option list: the last ro/rw wins.
        let ro = all.iter().rev().find(|o| **o == "ro" || **o == "rw") == Some(&"ro");
        let mode = if ro { "--read-only" } else { "--read-write" };
        return Ok(Some(vec![
            "kmsfs".into(),
            "remount".into(),
            target,
            mode.into(),
        ]));
    }
    let mut v: Vec<OsString> = vec!["kmsfs".into(), "mount".into(), source, target];
    if !opts.is_empty() {
        v.push("-o".into());
        v.push(opts.join(",").into());
    }
    Ok(Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn helper_arguments() {
        let a = helper_args(&s(&[
            "/b",
            "/m",
            "-o",
            "rw,keystore=/k",
            "-t",
            "fuse.kmsfs",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            a,
            s(&["kmsfs", "mount", "/b", "/m", "-o", "rw,keystore=/k"])
        );
        let a = helper_args(&s(&[
            "kmsfs:1:/b",
            "/m",
            "-o",
            "rw,nosuid,relatime,ro,remount",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(a, s(&["kmsfs", "remount", "/m", "--read-only"]));
        let a = helper_args(&s(&["x", "/m", "-o", "ro,remount,rw"]))
            .unwrap()
            .unwrap();
        assert_eq!(a, s(&["kmsfs", "remount", "/m", "--read-write"]));
        assert!(helper_args(&s(&["/b", "/m", "-f"])).unwrap().is_none());
        assert!(helper_args(&s(&["/b"])).is_err());
        assert!(is_helper(Path::new("/sbin/mount.fuse.kmsfs")));
        assert!(!is_helper(Path::new("/usr/bin/kmsfs")));
    }
}
