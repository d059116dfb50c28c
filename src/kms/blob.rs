//! The ciphertext blob that Encrypt and GenerateDataKey return: a versioned,
//! self-describing header (keystore id, key id, key material version) followed by
//! an AES-256-GCM `nonce || ciphertext || tag`, whose associated data binds the
//! header and the canonical encryption-context encoding. Layout in docs/KEYSTORE.md.
#![forbid(unsafe_code)]

use super::{EncryptionContext, KmsError};
use crate::crypto::{AeadKey, CryptoError, SEAL_OVERHEAD};

/// First bytes of every blob.
pub const BLOB_MAGIC: [u8; 4] = *b"KMSb";
/// The blob format version this code writes and reads.
pub const BLOB_VERSION: u8 = 1;
/// Header length: magic 4, version 1, keystore id 16, key id 16, material version 4.
pub const BLOB_HEADER_LEN: usize = 4 + 1 + 16 + 16 + 4;
/// Bytes a blob adds to its plaintext (header, nonce, tag): 69.
pub const BLOB_OVERHEAD: usize = BLOB_HEADER_LEN + SEAL_OVERHEAD;
/// Label in front of the AAD, separating blob AAD from every other use.
const AAD_LABEL: &[u8] = b"kmsfs blob v1\0";

/// The parsed, not yet authenticated, header of a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobHeader {
    /// Random id of the keystore that made the blob.
    pub keystore_id: [u8; 16],
    /// The key (UUID bytes).
    pub key_id: [u8; 16],
    /// The key material version.
    pub material_version: u32,
}

impl BlobHeader {
    /// The header bytes.
    pub fn encode(&self) -> [u8; BLOB_HEADER_LEN] {
        let mut h = [0u8; BLOB_HEADER_LEN];
        h[0..4].copy_from_slice(&BLOB_MAGIC);
        h[4] = BLOB_VERSION;
        h[5..21].copy_from_slice(&self.keystore_id);
        h[21..37].copy_from_slice(&self.key_id);
        h[37..41].copy_from_slice(&self.material_version.to_be_bytes());
        h
    }

    /// Parses the header of `blob`, refusing anything that is not a version-1
    /// blob. Never panics.
    pub fn parse(blob: &[u8]) -> Result<Self, KmsError> {
        if blob.len() < 4 || blob[0..4] != BLOB_MAGIC {
            return Err(invalid("it is not a kmsfs ciphertext blob (bad magic)"));
        }
        if blob.len() < 5 {
            return Err(invalid("it is truncated"));
        }
        if blob[4] != BLOB_VERSION {
            return Err(invalid(&format!(
                "its format version {} is not supported (this kmsfs reads version {BLOB_VERSION})",
                blob[4]
            )));
        }
        if blob.len() < BLOB_OVERHEAD {
            return Err(invalid("it is truncated"));
        }
        let mut keystore_id = [0u8; 16];
        keystore_id.copy_from_slice(&blob[5..21]);
        let mut key_id = [0u8; 16];
        key_id.copy_from_slice(&blob[21..37]);
        let mut v = [0u8; 4];
        v.copy_from_slice(&blob[37..41]);
        Ok(Self {
            keystore_id,
            key_id,
            material_version: u32::from_be_bytes(v),
        })
    }

    /// The key id as a UUID string.
    pub fn key_id_string(&self) -> String {
        uuid::Uuid::from_bytes(self.key_id).to_string()
    }
}

fn invalid(why: &str) -> KmsError {
    KmsError::invalid_ciphertext(format!("the ciphertext blob cannot be decrypted: {why}"))
}

fn aad(header: &[u8], context: &EncryptionContext) -> Vec<u8> {
    let ctx = context.encode();
    let mut aad = Vec::with_capacity(AAD_LABEL.len() + header.len() + ctx.len());
    aad.extend_from_slice(AAD_LABEL);
    aad.extend_from_slice(header);
    aad.extend_from_slice(&ctx);
    aad
}

/// Seals `plaintext` under `key` into a blob with `header`.
pub fn seal(
    key: &AeadKey,
    header: &BlobHeader,
    plaintext: &[u8],
    context: &EncryptionContext,
) -> Result<Vec<u8>, KmsError> {
    let h = header.encode();
    let mut out = Vec::with_capacity(BLOB_OVERHEAD + plaintext.len());
    out.extend_from_slice(&h);
    key.seal_append(&aad(&h, context), plaintext, &mut out)
        .map_err(|e| KmsError::internal(format!("encryption failed: {e}")))?;
    Ok(out)
}

/// Opens a blob whose header was parsed with [`BlobHeader::parse`] and whose
/// key was found. Any mismatch of content, header or context is one opaque
/// InvalidCiphertext.
pub fn open(
    key: &AeadKey,
    blob: &[u8],
    context: &EncryptionContext,
) -> Result<crate::crypto::SecretBytes, KmsError> {
    if blob.len() < BLOB_OVERHEAD {
        return Err(invalid("it is truncated"));
    }
    let (h, sealed) = blob.split_at(BLOB_HEADER_LEN);
    key.open(&aad(h, context), sealed).map_err(|e| match e {
        CryptoError::Authentication => invalid(
            "it was modified, or the encryption context differs from the one it was made with",
        ),
        other => KmsError::internal(format!("decryption failed: {other}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Key256;

    fn setup() -> (AeadKey, BlobHeader, Vec<u8>, EncryptionContext) {
        let key = AeadKey::new(&Key256::random().unwrap());
        let header = BlobHeader {
            keystore_id: [1; 16],
            key_id: *uuid::Uuid::new_v4().as_bytes(),
            material_version: 1,
        };
        let ctx = EncryptionContext::with("file", "abc");
        let blob = seal(&key, &header, b"secret data key bytes", &ctx).unwrap();
        (key, header, blob, ctx)
    }

    #[test]
    fn round_trip_and_sizes() {
        let (key, header, blob, ctx) = setup();
        assert_eq!(blob.len(), BLOB_OVERHEAD + 21);
        assert_eq!(BLOB_OVERHEAD, 69);
        assert_eq!(BlobHeader::parse(&blob).unwrap(), header);
        assert_eq!(
            open(&key, &blob, &ctx).unwrap().expose(),
            b"secret data key bytes"
        );
    }

    #[test]
    fn other_context_is_refused() {
        let (key, _, blob, _) = setup();
        for other in [
            EncryptionContext::new(),
            EncryptionContext::with("file", "abd"),
            EncryptionContext::parse("file=abc,x=y").unwrap(),
        ] {
            assert!(matches!(
                open(&key, &blob, &other),
                Err(KmsError::InvalidCiphertext { .. })
            ));
        }
    }

    #[test]
    fn every_bit_flip_and_truncation_is_refused_without_panic() {
        let (key, _, blob, ctx) = setup();
        for i in 0..blob.len() * 8 {
            let mut bad = blob.clone();
            bad[i / 8] ^= 1 << (i % 8);
            // The header may still parse (e.g. a flipped key id bit); opening must fail.
            let r = BlobHeader::parse(&bad).and_then(|_| open(&key, &bad, &ctx));
            assert!(
                matches!(r, Err(KmsError::InvalidCiphertext { .. })),
                "bit {i}"
            );
        }
        for n in 0..blob.len() {
            let r = BlobHeader::parse(&blob[..n]).and_then(|_| open(&key, &blob[..n], &ctx));
            assert!(
                matches!(r, Err(KmsError::InvalidCiphertext { .. })),
                "len {n}"
            );
        }
        let mut longer = blob.clone();
        longer.push(0);
        assert!(open(&key, &longer, &ctx).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        let key = AeadKey::new(&Key256::random().unwrap());
        let ctx = EncryptionContext::new();
        let mut seed = 0x1234_5678_9abc_def0u64;
        for len in 0..300usize {
            let mut buf = vec![0u8; len];
            for b in buf.iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = seed as u8;
            }
            if len >= 5 && len % 3 == 0 {
                buf[..4].copy_from_slice(&BLOB_MAGIC);
                buf[4] = BLOB_VERSION;
            }
            let r = BlobHeader::parse(&buf).and_then(|_| open(&key, &buf, &ctx));
            assert!(r.is_err());
        }
    }

    #[test]
    fn unknown_version_is_named() {
        let (_, _, mut blob, _) = setup();
        blob[4] = 2;
        let e = BlobHeader::parse(&blob).unwrap_err();
        assert!(e.to_string().contains("version 2"), "{e}");
    }
}
