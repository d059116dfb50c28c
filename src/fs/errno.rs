//! The one mapping from the layers' errors to errno values at the FUSE boundary.
//! Corruption becomes EIO plus a warning naming the backing file and block;
//! key refusals become EACCES.

use std::io;
use std::path::Path;

use fuser::Errno;

use crate::envelope::EnvelopeError;
use crate::logtext::escaped;

/// errno of an I/O error (EIO when it carries none).
pub fn io_errno(e: &io::Error) -> Errno {
    match e.raw_os_error() {
        Some(code) => Errno::from_i32(code),
        None => match e.kind() {
            io::ErrorKind::NotFound => Errno::ENOENT,
            io::ErrorKind::PermissionDenied => Errno::EACCES,
            io::ErrorKind::AlreadyExists => Errno::EEXIST,
            io::ErrorKind::InvalidInput => Errno::EINVAL,
            io::ErrorKind::UnexpectedEof => Errno::EIO,
            _ => Errno::EIO,
        },
    }
}

/// errno of an encrypted-file error on the backing file `backing` (for the log).
pub fn envelope_errno(e: &EnvelopeError, backing: &Path) -> Errno {
    match e {
        EnvelopeError::Io(e) => io_errno(e),
        EnvelopeError::CorruptHeader(why) => {
            log::warn!(
                "{}: corrupt or foreign header ({why}); returning EIO",
                escaped(backing)
            );
            Errno::EIO
        }
        EnvelopeError::CorruptBlock { block } => {
            log::warn!(
                "{}: block {block} failed authentication (modified, truncated or moved); returning EIO",
                escaped(backing)
            );
            Errno::EIO
        }
        EnvelopeError::Kms(k) if k.is_access_refusal() => {
            log::info!(
                "{}: key service refused the data key ({}); returning EACCES",
                escaped(backing),
                k.aws_code()
            );
            Errno::EACCES
        }
        EnvelopeError::Kms(k) => {
            log::warn!(
                "{}: key service failed ({}: {k}); returning EIO",
                escaped(backing),
                k.aws_code()
            );
            Errno::EIO
        }
        #[allow(unreachable_patterns)]
        _ => {
            log::warn!("{}: {e}; returning EIO", escaped(backing));
            Errno::EIO
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
        let io = EnvelopeError::Io(io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(envelope_errno(&io, p), Errno::ENOSPC);
        let c = EnvelopeError::CorruptBlock { block: 3 };
        assert_eq!(envelope_errno(&c, p), Errno::EIO);
        let d = EnvelopeError::Kms(KmsError::Disabled { key_id: "k".into() });
        assert_eq!(envelope_errno(&d, p), Errno::EACCES);
        let i = EnvelopeError::Kms(KmsError::invalid_ciphertext("x".into()));
        assert_eq!(envelope_errno(&i, p), Errno::EIO);
        assert_eq!(
            io_errno(&io::Error::new(io::ErrorKind::NotFound, "x")),
            Errno::ENOENT
        );
    }
}
