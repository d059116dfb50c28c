//! `FsError`, the filesystem's one error type, and its one mapping to errno
//! at the FUSE boundary. Corruption becomes EIO plus a warning naming the
//! backing file and block; key refusals become EACCES.

use std::io;
use std::path::{Path, PathBuf};

use crate::envelope::EnvelopeError;
use crate::envelope::names::NameError;
use crate::logtext::escaped;

/// Why a filesystem request failed.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// A system call on the backing directory failed: its errno passes on
    /// (EIO when it carries none).
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The encrypted file `backing` failed (corrupt, refused key, I/O).
    #[error("{}: {error}", backing.display())]
    Envelope {
        /// What failed.
        error: EnvelopeError,
        /// The backing file, for the log.
        backing: PathBuf,
    },
    /// An encrypted name or symlink target of `backing` failed (refused
    /// as moved, copied or edited: EIO; too long: ENAMETOOLONG; the name
    /// key refused: EACCES).
    #[error("{}: {error}", backing.display())]
    Name {
        /// What failed.
        error: NameError,
        /// The backing entry (or directory), for the log.
        backing: PathBuf,
    },
    /// The node has no name left, or no such node (ENOENT).
    #[error("no such node")]
    NotFound,
    /// The node's name leads to another object by now (ESTALE).
    #[error("the node's name leads to another object")]
    Stale,
    /// No handle of this kind is open (EBADF).
    #[error("no open handle")]
    NotOpen,
    /// A name or argument the request may not carry (EINVAL).
    #[error("invalid argument")]
    Invalid,
    /// A change on a read-only mount (EROFS).
    #[error("read-only mount")]
    ReadOnly,
    /// A directory where a file is needed (EISDIR).
    #[error("is a directory")]
    IsDirectory,
    /// The mode bits refuse the access (EACCES).
    #[error("permission denied")]
    Denied,
    /// A name the mount reserves for itself (EPERM).
    #[error("reserved name")]
    Reserved,
    /// Something the mount does not do (EOPNOTSUPP).
    #[error("not supported")]
    Unsupported,
    /// No such extended attribute (ENODATA).
    #[error("no such attribute")]
    NoAttribute,
    /// The caller's buffer is too small (ERANGE).
    #[error("buffer too small")]
    TooSmall,
    /// An offset at or past the end of the file (ENXIO).
    #[error("offset beyond the end")]
    PastEnd,
    /// An offset or length too large (EFBIG).
    #[error("offset or length too large")]
    TooBig,
    /// The backing file is locked for writing by another process, a rewrap
    /// or someone who may write it (EAGAIN).
    #[error("busy")]
    Busy,
    /// The caller holds as many handles as the mount allows one user (EMFILE).
    #[error("too many open handles")]
    TooManyOpen,
}

impl FsError {
    /// An encrypted-file error on backing file `backing`.
    pub fn envelope(error: EnvelopeError, backing: &Path) -> Self {
        FsError::Envelope {
            error,
            backing: backing.to_path_buf(),
        }
    }

    /// A name error on backing entry `backing`.
    pub fn name(error: NameError, backing: &Path) -> Self {
        FsError::Name {
            error,
            backing: backing.to_path_buf(),
        }
    }

    /// The errno the kernel gets; logs what the caller cannot see (corruption,
    /// key service failures) on the way.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::Io(e) => io_errno(e),
            FsError::Envelope { error, backing } => envelope_errno(error, backing),
            FsError::Name { error, backing } => name_errno(error, backing),
            FsError::NotFound => libc::ENOENT,
            FsError::Stale => libc::ESTALE,
            FsError::NotOpen => libc::EBADF,
            FsError::Invalid => libc::EINVAL,
            FsError::ReadOnly => libc::EROFS,
            FsError::IsDirectory => libc::EISDIR,
            FsError::Denied => libc::EACCES,
            FsError::Reserved => libc::EPERM,
            FsError::Unsupported => libc::EOPNOTSUPP,
            FsError::NoAttribute => libc::ENODATA,
            FsError::TooSmall => libc::ERANGE,
            FsError::PastEnd => libc::ENXIO,
            FsError::TooBig => libc::EFBIG,
            FsError::Busy => libc::EAGAIN,
            FsError::TooManyOpen => libc::EMFILE,
        }
    }
}

/// errno of an I/O error (EIO when it carries none).
fn io_errno(e: &io::Error) -> i32 {
    match e.raw_os_error() {
        Some(code) => code,
        None => match e.kind() {
            io::ErrorKind::NotFound => libc::ENOENT,
            io::ErrorKind::PermissionDenied => libc::EACCES,
            io::ErrorKind::AlreadyExists => libc::EEXIST,
            io::ErrorKind::InvalidInput => libc::EINVAL,
            _ => libc::EIO,
        },
    }
}

/// errno of a name error on backing entry `backing` (for the log).
fn name_errno(e: &NameError, backing: &Path) -> i32 {
    match e {
        NameError::Io(e) => io_errno(e),
        NameError::TooLong => libc::ENAMETOOLONG,
        NameError::Corrupt(why) => {
            log::warn!(
                "{}: encrypted name refused: {why}; returning EIO",
                escaped(backing)
            );
            libc::EIO
        }
        NameError::Kms(k) if k.is_access_refusal() => {
            log::info!(
                "{}: key service refused the name key ({}); returning EACCES",
                escaped(backing),
                k.aws_code()
            );
            libc::EACCES
        }
        NameError::Kms(k) => {
            log::warn!(
                "{}: key service failed on the name key ({}: {k}); returning EIO",
                escaped(backing),
                k.aws_code()
            );
            libc::EIO
        }
    }
}

/// errno of an encrypted-file error on the backing file `backing` (for the log).
fn envelope_errno(e: &EnvelopeError, backing: &Path) -> i32 {
    match e {
        EnvelopeError::Io(e) => io_errno(e),
        EnvelopeError::CorruptHeader(_)
        | EnvelopeError::Mismatch(_)
        | EnvelopeError::BadDataKey { .. } => {
            log::warn!("{}: {e}; returning EIO", escaped(backing));
            libc::EIO
        }
        EnvelopeError::CorruptBlock { block } => {
            log::warn!(
                "{}: block {block} failed authentication (modified, truncated or moved); returning EIO",
                escaped(backing)
            );
            libc::EIO
        }
        EnvelopeError::Kms(k) if k.is_access_refusal() => {
            log::info!(
                "{}: key service refused the data key ({}); returning EACCES",
                escaped(backing),
                k.aws_code()
            );
            libc::EACCES
        }
        EnvelopeError::Kms(k) => {
            log::warn!(
                "{}: key service failed ({}: {k}); returning EIO",
                escaped(backing),
                k.aws_code()
            );
            libc::EIO
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::KmsError;

    #[test]
    fn mapping() {
        let p = Path::new("/b/x");
        let env = |e| FsError::envelope(e, p).errno();
        let io = || EnvelopeError::Io(io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(env(io()), libc::ENOSPC);
        assert_eq!(env(EnvelopeError::CorruptBlock { block: 3 }), libc::EIO);
        let d = EnvelopeError::Kms(KmsError::Disabled { key_id: "k".into() });
        assert_eq!(env(d), libc::EACCES);
        let i = EnvelopeError::Kms(KmsError::invalid_ciphertext("x".into()));
        assert_eq!(env(i), libc::EIO);
        let nf = FsError::from(io::Error::new(io::ErrorKind::NotFound, "x"));
        assert_eq!(nf.errno(), libc::ENOENT);
    }
}
