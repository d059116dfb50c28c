//! The ciphertext blob that Encrypt and GenerateDataKey return: a versioned,
//! self-describing header (keystore id, key id, key material version and, from
//! version 2, a random 256-bit salt) followed by the AES-256-GCM ciphertext,
//! whose associated data binds the header and the canonical encryption-context
//! encoding. Version 2 (written) seals under a key derived for this blob alone
//! from the CMK material and the salt; version 1 (read only) sealed under the
//! material itself with a random 96-bit nonce. Layout in docs/KEYSTORE.md.
#![forbid(unsafe_code)]

use super::{EncryptionContext, KmsError};
use crate::crypto::{
    AeadKey, CryptoError, KdfKey, SALT_LEN, SEAL_OVERHEAD, SecretBytes, TAG_LEN, random_array,
};

/// First bytes of every blob.
pub const BLOB_MAGIC: [u8; 4] = *b"KMSb";
/// The blob format version this code writes.
pub const BLOB_VERSION: u8 = 2;
/// The first blob version: still read, never written.
pub const BLOB_VERSION_1: u8 = 1;
/// Version-1 header: magic 4, version 1, keystore id 16, key id 16, material version 4.
pub const BLOB_HEADER_LEN_V1: usize = 4 + 1 + 16 + 16 + 4;
/// Version-2 header: the version-1 fields, then the 32-byte salt.
pub const BLOB_HEADER_LEN: usize = BLOB_HEADER_LEN_V1 + SALT_LEN;
/// Bytes a version-2 blob adds to its plaintext (header, tag): 89.
pub const BLOB_OVERHEAD: usize = BLOB_HEADER_LEN + TAG_LEN;
/// Bytes a version-1 blob adds to its plaintext (header, nonce, tag): 69.
pub const BLOB_OVERHEAD_V1: usize = BLOB_HEADER_LEN_V1 + SEAL_OVERHEAD;
/// Label in front of the AAD, separating blob AAD from every other use.
const AAD_LABEL_V1: &[u8] = b"kmsfs blob v1\0";
/// Label in front of a version-2 blob's AAD.
const AAD_LABEL: &[u8] = b"kmsfs blob v2\0";
/// The KDF label of a version-2 blob's one-time key.
const KDF_LABEL: &[u8] = b"kmsfs blob key v2";

/// The parsed, not yet authenticated, header of a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobHeader {
    /// Blob format version: [`BLOB_VERSION`] or [`BLOB_VERSION_1`].
    pub version: u8,
    /// Random id of the keystore that made the blob.
    pub keystore_id: [u8; 16],
    /// The key (UUID bytes).
    pub key_id: [u8; 16],
    /// The key material version.
    pub material_version: u32,
    /// The random salt of the blob's one-time key (zeros in version 1).
    pub salt: [u8; SALT_LEN],
}

impl BlobHeader {
    /// A new version-2 header with a fresh random salt.
    pub fn new(
        keystore_id: [u8; 16],
        key_id: [u8; 16],
        material_version: u32,
    ) -> Result<Self, KmsError> {
        let salt =
            random_array().map_err(|e| KmsError::internal(format!("encryption failed: {e}")))?;
        Ok(Self {
            version: BLOB_VERSION,
            keystore_id,
            key_id,
            material_version,
            salt,
        })
    }

    /// Length of this header's encoding.
    pub fn encoded_len(&self) -> usize {
        if self.version == BLOB_VERSION_1 {
            BLOB_HEADER_LEN_V1
        } else {
            BLOB_HEADER_LEN
        }
    }

    /// Bytes a blob of this version adds to its plaintext.
    pub fn overhead(&self) -> usize {
        if self.version == BLOB_VERSION_1 {
            BLOB_OVERHEAD_V1
        } else {
            BLOB_OVERHEAD
        }
    }

    /// The header bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(BLOB_HEADER_LEN);
        h.extend_from_slice(&BLOB_MAGIC);
        h.push(self.version);
        h.extend_from_slice(&self.keystore_id);
        h.extend_from_slice(&self.key_id);
        h.extend_from_slice(&self.material_version.to_be_bytes());
        if self.version != BLOB_VERSION_1 {
            h.extend_from_slice(&self.salt);
        }
        h
    }

    /// Parses the header of `blob`, refusing anything that is not a version-1
    /// or version-2 blob at least as long as its header and tag. Never panics.
    pub fn parse(blob: &[u8]) -> Result<Self, KmsError> {
        if blob.len() < 4 || blob[0..4] != BLOB_MAGIC {
            return Err(invalid("it is not a kmsfs ciphertext blob (bad magic)"));
        }
        if blob.len() < 5 {
            return Err(invalid("it is truncated"));
        }
        let version = blob[4];
        let overhead = match version {
            BLOB_VERSION_1 => BLOB_OVERHEAD_V1,
            BLOB_VERSION => BLOB_OVERHEAD,
            v => {
                return Err(invalid(&format!(
                    "its format version {v} is not supported (this kmsfs reads versions \
                     {BLOB_VERSION_1} and {BLOB_VERSION})"
                )));
            }
        };
        if blob.len() < overhead {
            return Err(invalid("it is truncated"));
        }
        let mut keystore_id = [0u8; 16];
        keystore_id.copy_from_slice(&blob[5..21]);
        let mut key_id = [0u8; 16];
        key_id.copy_from_slice(&blob[21..37]);
        let mut v = [0u8; 4];
        v.copy_from_slice(&blob[37..41]);
        let mut salt = [0u8; SALT_LEN];
        if version == BLOB_VERSION {
            salt.copy_from_slice(&blob[BLOB_HEADER_LEN_V1..BLOB_HEADER_LEN]);
        }
        Ok(Self {
            version,
            keystore_id,
            key_id,
            material_version: u32::from_be_bytes(v),
            salt,
        })
    }

    /// The key id as a UUID string.
    pub fn key_id_string(&self) -> String {
        uuid::Uuid::from_bytes(self.key_id).to_string()
    }
}

/// What one version of a CMK's material is used through: a derivation key for
/// the blobs it makes and reads (version 2), and the material as an AES-GCM
/// key for the version-1 blobs it still reads. Built once per keystore
/// snapshot.
#[derive(Debug)]
pub struct MaterialKeys {
    kdf: KdfKey,
    v1: AeadKey,
}

impl MaterialKeys {
    /// The keys of `material` (16 or 32 bytes).
    pub fn new(material: &[u8]) -> Result<Self, CryptoError> {
        Ok(Self {
            v1: AeadKey::from_bytes(material)?,
            kdf: KdfKey::new(material),
        })
    }
}

fn invalid(why: &str) -> KmsError {
    KmsError::invalid_ciphertext(format!("the ciphertext blob cannot be decrypted: {why}"))
}

fn aad(label: &[u8], header: &[u8], context: &EncryptionContext) -> Vec<u8> {
    let ctx = context.encode();
    let mut aad = Vec::with_capacity(label.len() + header.len() + ctx.len());
    aad.extend_from_slice(label);
    aad.extend_from_slice(header);
    aad.extend_from_slice(&ctx);
    aad
}

/// Seals `plaintext` into a version-2 blob with `header` (from
/// [`BlobHeader::new`]: its salt is fresh), under a key derived from `keys`
/// for this blob alone.
pub fn seal(
    keys: &MaterialKeys,
    header: &BlobHeader,
    plaintext: &[u8],
    context: &EncryptionContext,
) -> Result<Vec<u8>, KmsError> {
    if header.version != BLOB_VERSION {
        return Err(KmsError::internal(format!(
            "blobs are written in version {BLOB_VERSION} only"
        )));
    }
    let h = header.encode();
    let mut out = Vec::with_capacity(BLOB_OVERHEAD + plaintext.len());
    out.extend_from_slice(&h);
    keys.kdf
        .derive(KDF_LABEL, &[&h])
        .seal_append(&aad(AAD_LABEL, &h, context), plaintext, &mut out)
        .map_err(|e| KmsError::internal(format!("encryption failed: {e}")))?;
    Ok(out)
}

/// Opens a blob (version 1 or 2) whose header was parsed with
/// [`BlobHeader::parse`] and whose key was found. Any mismatch of content,
/// header or context is one opaque InvalidCiphertext.
pub fn open(
    keys: &MaterialKeys,
    blob: &[u8],
    context: &EncryptionContext,
) -> Result<SecretBytes, KmsError> {
    let header = BlobHeader::parse(blob)?;
    let (h, sealed) = blob.split_at(header.encoded_len());
    let opened = if header.version == BLOB_VERSION_1 {
        keys.v1.open(&aad(AAD_LABEL_V1, h, context), sealed)
    } else {
        keys.kdf
            .derive(KDF_LABEL, &[h])
            .open(&aad(AAD_LABEL, h, context), sealed)
    };
    opened.map_err(|e| match e {
        CryptoError::Authentication => invalid(
            "it was modified, or the encryption context differs from the one it was made with",
        ),
        other => KmsError::internal(format!("decryption failed: {other}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MATERIAL: [u8; 32] = [0x5a; 32];

    fn setup() -> (MaterialKeys, BlobHeader, Vec<u8>, EncryptionContext) {
        let keys = MaterialKeys::new(&MATERIAL).unwrap();
        let header = BlobHeader::new([1; 16], *uuid::Uuid::new_v4().as_bytes(), 1).unwrap();
        let ctx = EncryptionContext::with("file", "abc");
        let blob = seal(&keys, &header, b"secret data key bytes", &ctx).unwrap();
        (keys, header, blob, ctx)
    }

    /// A version-1 blob exactly as kmsfs wrote it before version 2: the
    /// material as the AES-256-GCM key, a random nonce, the v1 label.
    fn v1_blob(plaintext: &[u8], ctx: &EncryptionContext) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"KMSb\x01");
        out.extend_from_slice(&[1; 16]);
        out.extend_from_slice(&[2; 16]);
        out.extend_from_slice(&3u32.to_be_bytes());
        let h = out.clone();
        AeadKey::from_bytes(&MATERIAL)
            .unwrap()
            .seal_append(&aad(b"kmsfs blob v1\0", &h, ctx), plaintext, &mut out)
            .unwrap();
        out
    }

    #[test]
    fn round_trip_and_sizes() {
        let (keys, header, blob, ctx) = setup();
        assert_eq!(blob.len(), BLOB_OVERHEAD + 21);
        assert_eq!((BLOB_HEADER_LEN, BLOB_OVERHEAD), (73, 89));
        assert_eq!(BlobHeader::parse(&blob).unwrap(), header);
        assert_eq!(&blob[..5], b"KMSb\x02");
        assert_eq!(&blob[41..73], &header.salt);
        assert_eq!(
            open(&keys, &blob, &ctx).unwrap().expose(),
            b"secret data key bytes"
        );
    }

    #[test]
    fn version_1_blobs_still_open() {
        let ctx = EncryptionContext::with("file", "abc");
        let old = v1_blob(b"old data key", &ctx);
        assert_eq!(old.len(), BLOB_OVERHEAD_V1 + 12);
        let h = BlobHeader::parse(&old).unwrap();
        assert_eq!((h.version, h.material_version, h.salt), (1, 3, [0; 32]));
        assert_eq!(h.encode()[..], old[..BLOB_HEADER_LEN_V1]);
        let keys = MaterialKeys::new(&MATERIAL).unwrap();
        assert_eq!(open(&keys, &old, &ctx).unwrap().expose(), b"old data key");
        assert!(open(&keys, &old, &EncryptionContext::new()).is_err());
        // A version-1 blob relabelled as version 2 (or the reverse) opens as neither.
        let mut relabelled = old.clone();
        relabelled[4] = 2;
        relabelled.extend_from_slice(&[0; 20]);
        assert!(open(&keys, &relabelled, &ctx).is_err());
        let (keys, _, mut blob, ctx) = setup();
        blob[4] = 1;
        assert!(open(&keys, &blob, &ctx).is_err());
    }

    /// Two blobs of the same plaintext, under the same key, context and
    /// material version, differ in salt and so in their derived key: no
    /// (key, nonce) pair ever serves twice, however many blobs a key makes.
    #[test]
    fn no_two_blobs_share_a_derived_key() {
        let keys = MaterialKeys::new(&MATERIAL).unwrap();
        let ctx = EncryptionContext::with("file", "abc");
        let blobs: Vec<Vec<u8>> = (0..64)
            .map(|_| {
                let h = BlobHeader::new([1; 16], [2; 16], 1).unwrap();
                seal(&keys, &h, b"same plaintext", &ctx).unwrap()
            })
            .collect();
        let derived: Vec<_> = blobs
            .iter()
            .map(|b| keys.kdf.derive(KDF_LABEL, &[&b[..BLOB_HEADER_LEN]]))
            .collect();
        for i in 0..blobs.len() {
            assert!(derived[i].same_as(&keys.kdf.derive(KDF_LABEL, &[&blobs[i][..73]])));
            for j in i + 1..blobs.len() {
                assert_ne!(blobs[i][41..73], blobs[j][41..73], "salts {i} and {j}");
                assert_ne!(blobs[i][73..], blobs[j][73..], "ciphertexts {i} and {j}");
                assert!(!derived[i].same_as(&derived[j]), "derived keys {i} and {j}");
            }
            assert_eq!(
                open(&keys, &blobs[i], &ctx).unwrap().expose(),
                b"same plaintext"
            );
        }
    }

    #[test]
    fn other_context_is_refused() {
        let (keys, _, blob, _) = setup();
        for other in [
            EncryptionContext::new(),
            EncryptionContext::with("file", "abd"),
            EncryptionContext::parse("file=abc,x=y").unwrap(),
        ] {
            assert!(matches!(
                open(&keys, &blob, &other),
                Err(KmsError::InvalidCiphertext { .. })
            ));
        }
    }

    #[test]
    fn every_bit_flip_and_truncation_is_refused_without_panic() {
        let ctx = EncryptionContext::with("file", "abc");
        let (keys, _, v2, _) = setup();
        for blob in [v2, v1_blob(b"secret data key bytes", &ctx)] {
            for i in 0..blob.len() * 8 {
                let mut bad = blob.clone();
                bad[i / 8] ^= 1 << (i % 8);
                // The header may still parse (e.g. a flipped key id bit); opening must fail.
                let r = BlobHeader::parse(&bad).and_then(|_| open(&keys, &bad, &ctx));
                assert!(
                    matches!(r, Err(KmsError::InvalidCiphertext { .. })),
                    "bit {i}"
                );
            }
            for n in 0..blob.len() {
                let r = BlobHeader::parse(&blob[..n]).and_then(|_| open(&keys, &blob[..n], &ctx));
                assert!(
                    matches!(r, Err(KmsError::InvalidCiphertext { .. })),
                    "len {n}"
                );
            }
            let mut longer = blob.clone();
            longer.push(0);
            assert!(open(&keys, &longer, &ctx).is_err());
        }
    }

    #[test]
    fn garbage_never_panics() {
        let keys = MaterialKeys::new(&MATERIAL).unwrap();
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
                buf[4] = [BLOB_VERSION, BLOB_VERSION_1][len % 2];
            }
            let r = BlobHeader::parse(&buf).and_then(|_| open(&keys, &buf, &ctx));
            assert!(r.is_err());
        }
    }

    #[test]
    fn unknown_version_is_named() {
        let (_, _, mut blob, _) = setup();
        blob[4] = 3;
        let e = BlobHeader::parse(&blob).unwrap_err();
        assert!(e.to_string().contains("version 3"), "{e}");
    }
}
