//! Client-side envelope encryption: [`seal`] a stream into a new encrypted
//! file, [`unseal`] one back into a stream, without a mount.

use std::fs::File;
use std::io::{Read, Write};

use zeroize::Zeroizing;

use super::{EncryptedFile, EnvelopeError};
use crate::format::{BLOCK_SIZE, Layout};
use crate::kms::{KeyService, RequestContext};

/// Blocks sealed or opened per system call by `seal` and `unseal`.
const STREAM_BLOCKS: u64 = 256;

/// Encrypts everything `input` yields into `output` (an empty file opened
/// read-write) under `key_id`, in exactly the format the mount uses, with
/// blocks of `layout`; returns the plaintext bytes written. The result can
/// be copied into a backing directory of that layout and read through a
/// mount of the same keystore.
pub fn seal(
    input: &mut dyn Read,
    output: File,
    ks: &dyn KeyService,
    rc: &RequestContext<'_>,
    key_id: &str,
    layout: Layout,
) -> Result<u64, EnvelopeError> {
    let enc = EncryptedFile::create(output, ks, rc, key_id, layout)?;
    let mut buf = Zeroizing::new(vec![0u8; (STREAM_BLOCKS * BLOCK_SIZE) as usize]);
    let mut total = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match input.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        if filled == 0 {
            break;
        }
        enc.write_at(&buf[..filled], total)?;
        total += filled as u64;
        if filled < buf.len() {
            break;
        }
    }
    enc.sync(false)?;
    Ok(total)
}

/// Decrypts the encrypted file `input` (sealed, or a backing file of a
/// mount) into `output`; returns the plaintext bytes written. Refuses what a
/// read through the mount refuses: a backing size kmsfs cannot produce (a cut
/// or extended tail) before writing anything, and otherwise fails on the
/// first block that does not authenticate; what was written before stays.
pub fn unseal(
    input: File,
    output: &mut dyn Write,
    ks: &dyn KeyService,
    rc: &RequestContext<'_>,
) -> Result<u64, EnvelopeError> {
    let enc = EncryptedFile::open(input, ks, rc)?;
    let size = enc.checked_plain_size()?;
    let mut buf = Zeroizing::new(vec![0u8; (STREAM_BLOCKS * BLOCK_SIZE) as usize]);
    let mut pos = 0u64;
    while pos < size {
        let n = enc.read_at(&mut buf, pos)?;
        if n == 0 {
            break;
        }
        output.write_all(&buf[..n])?;
        pos += n as u64;
    }
    Ok(pos)
}
