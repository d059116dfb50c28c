//! The audit trail: who used which key, when, for what. `Operation` names
//! every key operation by its AWS API name (`kms::operation`); `Requester` is who asked (from
//! /proc); `record` builds one CloudTrail-shaped record; `trail` appends
//! records to the hash-chained, signed files beside the keystore; `verify`
//! checks such a trail and `read` reads it back for `kmsfs audit show`.
//! `AuditSink` lets a test or an embedder see every event as well.
#![forbid(unsafe_code)]

use super::Caller;

pub mod checkpoint;
pub mod limit;
pub mod prune;
pub mod read;
pub mod record;
pub mod sign;
pub mod time;
pub mod trail;
pub mod verify;

pub use trail::{Durability, Trail};

/// The operations, named in `kms::operation` (re-exported for the trail's
/// code that names them here).
pub use super::operation::Operation;

/// Which kind of program asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerSource {
    /// The command line, with direct access to the keystore.
    Cli,
    /// The mount daemon, on behalf of a program opening a file.
    Mount,
    /// A protocol server, on behalf of a network client.
    Server,
    /// `kmsfs console`, on behalf of its user in a browser.
    Console,
}

impl CallerSource {
    /// `cli`, `mount`, `server` or `console`.
    pub fn as_str(self) -> &'static str {
        match self {
            CallerSource::Cli => "cli",
            CallerSource::Mount => "mount",
            CallerSource::Server => "server",
            CallerSource::Console => "console",
        }
    }
}

/// What /proc says about the process that asked: its groups (primary and
/// supplementary, for policies), its name and executable (for the trail).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requester {
    /// The process (thread group) id, when /proc had it.
    pub pid: Option<u32>,
    /// Supplementary groups; None when they could not be read for the
    /// caller's uid (a group Deny then applies, a group Allow does not).
    pub groups: Option<Vec<u32>>,
    /// The process name (`comm`).
    pub process_name: Option<String>,
    /// The executable (`/proc/PID/exe`).
    pub executable: Option<String>,
    /// Set when the caller runs in another user namespace than this
    /// process's: the uids that own it and its ancestors below ours,
    /// innermost first. Each counts as the caller for a Deny (a user who
    /// maps himself to a subordinate uid stays himself), and the caller's
    /// supplementary groups are unknown (it may have dropped some there).
    pub ns_owners: Option<Vec<u32>>,
    /// The owners above could not be followed up to this process's
    /// namespace: a Deny naming any user applies (fail closed).
    pub ns_partial: bool,
}

impl Requester {
    /// Reads /proc for `caller.pid`. The groups are believed only when the
    /// status there shows the caller's uid and gid (its filesystem ids, as
    /// FUSE reports them): a pid reused by another process gives none.
    pub fn of(caller: &Caller) -> Self {
        let mut r = Self::of_status(caller);
        if r.pid.is_some() {
            r.executable = crate::os::process::executable(caller.pid);
        }
        r
    }

    fn of_status(caller: &Caller) -> Self {
        if caller.pid == 0 {
            return Self::default();
        }
        let Some(status) = crate::os::process::status(caller.pid) else {
            return Self::default();
        };
        let field = |n: &str| crate::os::process::status_field(&status, n);
        // Uid: real effective saved filesystem.
        let id_matches = |n: &str, want: u32| {
            field(n)
                .and_then(|v| v.split_whitespace().nth(3))
                .and_then(|v| v.parse::<u32>().ok())
                == Some(want)
        };
        let ids_match = id_matches("Uid", caller.uid) && id_matches("Gid", caller.gid);
        let mut groups = if ids_match {
            field("Groups").map(|g| {
                g.split_whitespace()
                    .filter_map(|x| x.parse::<u32>().ok())
                    .collect()
            })
        } else {
            None
        };
        let (mut ns_owners, mut ns_partial) = (None, false);
        if ids_match {
            use crate::os::process::UserNs;
            match crate::os::process::user_ns(caller.pid) {
                Some(UserNs::Same) => {}
                Some(UserNs::Other {
                    owners,
                    reaches_ours,
                }) => {
                    // Groups can be dropped inside (setgroups after
                    // newgidmap): the ones /proc shows prove nothing.
                    groups = None;
                    ns_owners = Some(owners);
                    ns_partial = !reaches_ours;
                }
                // Gone, or its namespace unreadable: assume the worst.
                None => {
                    groups = None;
                    ns_owners = Some(Vec::new());
                    ns_partial = true;
                }
            }
        }
        Self {
            pid: field("Tgid").and_then(|v| v.parse().ok()),
            groups,
            process_name: field("Name").map(str::to_string),
            executable: None,
            ns_owners,
            ns_partial,
        }
    }

    /// Only the groups (what a key policy needs), without the process's
    /// name and executable: for a service that does not audit.
    pub fn groups_of(caller: &Caller) -> Self {
        let mut r = Self::of_status(caller);
        r.process_name = None;
        r
    }

    /// True when a Deny naming user `uid` applies to the caller beyond its
    /// own uid: `uid` owns the caller's user namespace or one above it, or
    /// that chain is not fully known.
    pub fn denied_as(&self, uid: u32) -> bool {
        self.ns_partial || self.ns_owners.as_ref().is_some_and(|o| o.contains(&uid))
    }

    /// True when `gid` is the caller's primary group or one of its
    /// supplementary groups (None: unknown).
    pub fn in_group(&self, caller: &Caller, gid: u32) -> Option<bool> {
        if caller.gid == gid {
            return Some(true);
        }
        self.groups.as_ref().map(|g| g.contains(&gid))
    }
}

/// A file open that needs a data key, as the mount saw it.
#[derive(Debug, Clone, Copy)]
pub struct FileAccess<'a> {
    /// The path the program opened, relative to the mount point.
    pub path: &'a str,
    /// Who, from /proc.
    pub requester: &'a Requester,
}

/// One use (or refused use) of a key, as an `AuditSink` sees it.
/// Carries no secrets.
#[derive(Debug, Clone)]
pub struct AuditEvent<'a> {
    /// Who asked.
    pub caller: &'a Caller,
    /// What.
    pub operation: Operation,
    /// The resolved key id, or what the caller named when it did not resolve.
    pub key_id: &'a str,
    /// Key material version used, when known.
    pub material_version: Option<u32>,
    /// `Ok` or the AWS error code of the refusal.
    pub result: Result<(), &'static str>,
    /// Epoch seconds, from `kms::clock` (0 if the clock override is invalid).
    pub time: i64,
}

/// Receives every key use besides the trail. Implementations must not block
/// for long: they are called on the path of every cryptographic operation.
pub trait AuditSink: Send + Sync {
    /// Records one event.
    fn record(&self, event: &AuditEvent<'_>);
}
