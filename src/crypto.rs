//! Cryptographic primitives: AES-256-GCM seal/open, the SP 800-108 KDF that
//! gives long-lived keys one-time keys per message, XAES-256-GCM, randomness,
//! SHA-256, HMAC and secret types that zeroize on drop. The only module that
//! imports the AEAD crate.
#![forbid(unsafe_code)]

use std::fmt;

use aws_lc_rs::aead::{
    AES_128_GCM, AES_256_GCM, AES_256_GCM_SIV, Aad, LessSafeKey, Nonce, UnboundKey,
};
use zeroize::{Zeroize, Zeroizing};

/// Length of an AES-256 key in bytes.
pub const KEY_LEN: usize = 32;
/// Length of an AES-GCM nonce in bytes (96 bits).
pub const NONCE_LEN: usize = 12;
/// Length of an AES-GCM authentication tag in bytes.
pub const TAG_LEN: usize = 16;
/// Bytes that sealing adds to a plaintext: nonce in front, tag behind.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// Errors of this layer. Any authentication failure is one opaque variant:
/// callers must not learn why a ciphertext was refused.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CryptoError {
    /// The ciphertext, its tag, its nonce or its associated data was not what was sealed.
    #[error("decryption failed: ciphertext or associated data was modified")]
    Authentication,
    /// The key had the wrong length for the algorithm.
    #[error("invalid key length")]
    KeyLength,
    /// The system random generator failed.
    #[error("random generator failed")]
    Random,
}

/// Fills `buf` with cryptographically secure random bytes.
pub fn random_fill(buf: &mut [u8]) -> Result<(), CryptoError> {
    aws_lc_rs::rand::fill(buf).map_err(|_| CryptoError::Random)
}

/// Returns `N` random bytes.
pub fn random_array<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut out = [0u8; N];
    random_fill(&mut out)?;
    Ok(out)
}

/// SHA-256 of the concatenation of `parts`.
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// HMAC-SHA256 of the concatenation of `parts` under `key` (the audit
/// trail's signed digests).
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    let mut ctx = aws_lc_rs::hmac::Context::with_key(&k);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// Compares two byte strings in constant time (for their common length).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

/// Secret bytes of any length (data keys, key material, passphrases).
/// Zeroized on drop; Debug prints only the length.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Takes ownership of `bytes`; they are zeroized when this value drops.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }
    /// `len` fresh random bytes.
    pub fn random(len: usize) -> Result<Self, CryptoError> {
        let mut v = Zeroizing::new(vec![0u8; len]);
        random_fill(&mut v)?;
        Ok(Self(v))
    }
    /// The secret bytes. Callers must not copy them into unzeroized storage.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// True when there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&[u8]> for SecretBytes {
    fn from(b: &[u8]) -> Self {
        Self::new(b.to_vec())
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(len={})", self.0.len())
    }
}

/// A 256-bit symmetric key. Zeroized on drop; Debug is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Key256([u8; KEY_LEN]);

impl Key256 {
    /// A fresh random key.
    pub fn random() -> Result<Self, CryptoError> {
        Ok(Self(random_array()?))
    }
    /// Copies a key from `bytes`, which must be exactly 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, CryptoError> {
        let arr: [u8; KEY_LEN] = bytes.try_into().map_err(|_| CryptoError::KeyLength)?;
        Ok(Self(arr))
    }
    /// The key bytes.
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl Drop for Key256 {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Key256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key256(len=32)")
    }
}

/// An AES-GCM key ready for sealing and opening (AES-256, or AES-128 for
/// 16-byte keys). aws-lc-rs keeps the expanded key schedule; build it once
/// per key and reuse it.
pub struct AeadKey(LessSafeKey);

impl AeadKey {
    /// Builds an AES-256-GCM key.
    pub fn new(key: &Key256) -> Self {
        // A 32-byte key is always valid for AES-256-GCM; the constructor cannot fail.
        match UnboundKey::new(&AES_256_GCM, key.expose()) {
            Ok(k) => Self(LessSafeKey::new(k)),
            Err(_) => unreachable!("AES-256-GCM rejected a 32-byte key"),
        }
    }

    /// Builds an AES-GCM key from 16 or 32 raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let alg = match bytes.len() {
            16 => &AES_128_GCM,
            32 => &AES_256_GCM,
            _ => return Err(CryptoError::KeyLength),
        };
        let k = UnboundKey::new(alg, bytes).map_err(|_| CryptoError::KeyLength)?;
        Ok(Self(LessSafeKey::new(k)))
    }

    /// Seals `plaintext` with a fresh random nonce and appends
    /// `nonce || ciphertext || tag` to `out`.
    pub fn seal_append(
        &self,
        aad: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        let nonce_bytes: [u8; NONCE_LEN] = random_array()?;
        let start = out.len();
        out.reserve(SEAL_OVERHEAD + plaintext.len());
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(plaintext);
        let tag = self
            .0
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(aad),
                &mut out[start + NONCE_LEN..],
            )
            .map_err(|_| CryptoError::Authentication)?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Seals `plaintext` under the caller's `nonce` and appends
    /// `ciphertext || tag` (no nonce) to `out`. The caller guarantees the
    /// nonce is never used twice with this key.
    pub fn seal_append_with_nonce(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        let start = out.len();
        out.reserve(TAG_LEN + plaintext.len());
        out.extend_from_slice(plaintext);
        let tag = self
            .0
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                &mut out[start..],
            )
            .map_err(|_| CryptoError::Authentication)?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Opens `ciphertext || tag` sealed under `nonce` in place and returns the
    /// plaintext slice. On failure the buffer holds garbage.
    pub fn open_in_place_with_nonce<'a>(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        sealed: &'a mut [u8],
    ) -> Result<&'a mut [u8], CryptoError> {
        if sealed.len() < TAG_LEN {
            return Err(CryptoError::Authentication);
        }
        self.0
            .open_in_place(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), sealed)
            .map_err(|_| CryptoError::Authentication)
    }

    /// Seals `plaintext` into a new `nonce || ciphertext || tag` vector.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut out = Vec::with_capacity(SEAL_OVERHEAD + plaintext.len());
        self.seal_append(aad, plaintext, &mut out)?;
        Ok(out)
    }

    /// Opens `sealed` (`nonce || ciphertext || tag`) in place and returns the
    /// plaintext slice inside it. On failure the buffer holds garbage.
    pub fn open_in_place<'a>(
        &self,
        aad: &[u8],
        sealed: &'a mut [u8],
    ) -> Result<&'a mut [u8], CryptoError> {
        if sealed.len() < SEAL_OVERHEAD {
            return Err(CryptoError::Authentication);
        }
        let (nonce, rest) = sealed.split_at_mut(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = (&*nonce)
            .try_into()
            .map_err(|_| CryptoError::Authentication)?;
        self.0
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), rest)
            .map_err(|_| CryptoError::Authentication)
    }

    /// Opens `sealed` into fresh secret bytes.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<SecretBytes, CryptoError> {
        let mut buf = Zeroizing::new(sealed.to_vec());
        let n = self.open_in_place(aad, &mut buf)?.len();
        Ok(SecretBytes::new(buf[NONCE_LEN..NONCE_LEN + n].to_vec()))
    }
}

impl fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AeadKey(redacted)")
    }
}

/// An AES-256-GCM-SIV key (RFC 8452): nonce-misuse resistant, so a fixed
/// nonce makes it a deterministic authenticated cipher that reveals only
/// whether two (nonce, aad, plaintext) triples are equal. Encrypted names
/// use it that way: the same name in the same directory always encrypts the
/// same, so a lookup needs no scan. Debug is redacted.
pub struct SivKey(AeadKey);

impl SivKey {
    /// Builds an AES-256-GCM-SIV key.
    pub fn new(key: &Key256) -> Self {
        match UnboundKey::new(&AES_256_GCM_SIV, key.expose()) {
            Ok(k) => Self(AeadKey(LessSafeKey::new(k))),
            Err(_) => unreachable!("AES-256-GCM-SIV rejected a 32-byte key"),
        }
    }

    /// Seals `plaintext` under `nonce` and appends `ciphertext || tag`.
    pub fn seal_append(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        self.0.seal_append_with_nonce(nonce, aad, plaintext, out)
    }

    /// Opens `ciphertext || tag` sealed under `nonce` into fresh bytes.
    pub fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let mut buf = Zeroizing::new(sealed.to_vec());
        let n = self.0.open_in_place_with_nonce(nonce, aad, &mut buf)?.len();
        buf.truncate(n);
        Ok(buf)
    }
}

impl fmt::Debug for SivKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SivKey(redacted)")
    }
}

/// Length of the random salt from which a one-time key is derived (256 bits).
pub const SALT_LEN: usize = 32;

/// A long-lived key (a CMK's material, the keystore's root key) that never
/// encrypts anything itself: every message gets its own key, derived with the
/// NIST SP 800-108 key derivation function in counter mode with HMAC-SHA256 as
/// the PRF (as AWS KMS derives a key per request from its HSM backing key).
/// The HMAC key schedule is built once; Debug is redacted.
pub struct KdfKey(aws_lc_rs::hmac::Key);

impl KdfKey {
    /// A derivation key over `material` (any length; kmsfs uses 32 bytes).
    pub fn new(material: &[u8]) -> Self {
        Self(aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            material,
        ))
    }

    /// The 256-bit key `HMAC-SHA256(K, [1]_32 || label || 0x00 || context ||
    /// [256]_32)`: one PRF block of SP 800-108 counter mode (r = 32, L = 256).
    /// `label` names the use; `context` carries a fresh random salt, so no two
    /// messages share a derived key.
    pub fn derive(&self, label: &[u8], context: &[&[u8]]) -> OneTimeKey {
        let mut ctx = aws_lc_rs::hmac::Context::with_key(&self.0);
        ctx.update(&1u32.to_be_bytes());
        ctx.update(label);
        ctx.update(&[0]);
        for c in context {
            ctx.update(c);
        }
        ctx.update(&256u32.to_be_bytes());
        let tag = ctx.sign();
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        k.copy_from_slice(tag.as_ref());
        OneTimeKey(AeadKey::new(&Key256(*k)))
    }
}

impl fmt::Debug for KdfKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KdfKey(redacted)")
    }
}

/// An AES-256-GCM key derived for exactly one message. Sealing consumes it, and
/// because the key never meets a second message its nonce is the constant
/// zero nonce, which is not stored: `ciphertext || tag`.
pub struct OneTimeKey(AeadKey);

impl OneTimeKey {
    /// Seals `plaintext` and appends `ciphertext || tag` to `out`.
    pub fn seal_append(
        self,
        aad: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        self.0
            .seal_append_with_nonce(&[0; NONCE_LEN], aad, plaintext, out)
    }

    /// Opens `ciphertext || tag` into fresh secret bytes.
    pub fn open(self, aad: &[u8], sealed: &[u8]) -> Result<SecretBytes, CryptoError> {
        let mut buf = Zeroizing::new(sealed.to_vec());
        let n = self
            .0
            .open_in_place_with_nonce(&[0; NONCE_LEN], aad, &mut buf)?
            .len();
        Ok(SecretBytes::new(buf[..n].to_vec()))
    }

    /// Test-only: true when two derived keys are the same key (compared by
    /// what they seal, never by exposing them).
    #[cfg(test)]
    pub(crate) fn same_as(&self, other: &OneTimeKey) -> bool {
        let mut a = Vec::new();
        let mut b = Vec::new();
        let ok = self
            .0
            .seal_append_with_nonce(&[0; NONCE_LEN], b"", &[0; 32], &mut a)
            .and_then(|()| {
                other
                    .0
                    .seal_append_with_nonce(&[0; NONCE_LEN], b"", &[0; 32], &mut b)
            });
        ok.is_ok() && a == b
    }
}

impl fmt::Debug for OneTimeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OneTimeKey(redacted)")
    }
}

/// Length of an XAES-256-GCM nonce (192 bits).
pub const XNONCE_LEN: usize = 24;

/// XAES-256-GCM (C2SP): AES-256-GCM under a key derived from the first 96 bits
/// of a 192-bit nonce by the NIST SP 800-108 counter-mode KDF with AES-256-CMAC
/// as the PRF, the other 96 bits being the GCM nonce. With random nonces a key
/// may seal about 2^80 messages before a repeated (derived key, nonce) pair
/// has a 2^-32 chance, instead of 2^32. Every message with the same first half
/// uses the same derived key, so a caller sealing many messages at once may
/// derive once ([`XaesKey::subkey`]) and give each message a fresh second half.
/// Debug is redacted.
pub struct XaesKey {
    ecb: aws_lc_rs::cipher::EncryptingKey,
    k1: Zeroizing<[u8; 16]>,
}

impl XaesKey {
    /// The XAES-256-GCM key `key`.
    pub fn new(key: &Key256) -> Result<Self, CryptoError> {
        use aws_lc_rs::cipher::{AES_256, EncryptingKey, UnboundCipherKey};
        let unbound =
            UnboundCipherKey::new(&AES_256, key.expose()).map_err(|_| CryptoError::KeyLength)?;
        let ecb = EncryptingKey::ecb(unbound).map_err(|_| CryptoError::KeyLength)?;
        // L = AES-256_K(0^128); K1 = L << 1, xor 0x87 into the last byte when
        // the top bit of L was set (the CMAC subkey of SP 800-38B).
        let mut l = Zeroizing::new([0u8; 16]);
        ecb.encrypt(&mut l[..])
            .map_err(|_| CryptoError::KeyLength)?;
        let mut k1 = Zeroizing::new([0u8; 16]);
        for i in 0..16 {
            k1[i] = (l[i] << 1) | l.get(i + 1).map_or(0, |b| b >> 7);
        }
        if l[0] & 0x80 != 0 {
            k1[15] ^= 0x87;
        }
        Ok(Self { ecb, k1 })
    }

    /// The AES-256-GCM key of every nonce whose first 12 bytes are `first`:
    /// `AES-256_K(M1 ^ K1) || AES-256_K(M2 ^ K1)` with
    /// `M1 = 00 01 'X' 00 || first`, `M2 = 00 02 'X' 00 || first`.
    pub fn subkey(&self, first: &[u8; NONCE_LEN]) -> Result<AeadKey, CryptoError> {
        let mut m = Zeroizing::new([0u8; 32]);
        m[..4].copy_from_slice(&[0, 1, b'X', 0]);
        m[4..16].copy_from_slice(first);
        m[16..20].copy_from_slice(&[0, 2, b'X', 0]);
        m[20..].copy_from_slice(first);
        for i in 0..32 {
            m[i] ^= self.k1[i % 16];
        }
        self.ecb
            .encrypt(&mut m[..])
            .map_err(|_| CryptoError::KeyLength)?;
        let key = Key256::from_slice(&m[..])?;
        Ok(AeadKey::new(&key))
    }

    /// Seals `plaintext` under the 24-byte `nonce` and appends
    /// `ciphertext || tag` to `out` (the nonce is the caller's to store).
    pub fn seal_append(
        &self,
        nonce: &[u8; XNONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        let (first, second) = split_xnonce(nonce);
        self.subkey(&first)?
            .seal_append_with_nonce(&second, aad, plaintext, out)
    }

    /// Opens `ciphertext || tag` sealed under `nonce` in place and returns the
    /// plaintext slice. On failure the buffer holds garbage.
    pub fn open_in_place<'a>(
        &self,
        nonce: &[u8; XNONCE_LEN],
        aad: &[u8],
        sealed: &'a mut [u8],
    ) -> Result<&'a mut [u8], CryptoError> {
        let (first, second) = split_xnonce(nonce);
        self.subkey(&first)?
            .open_in_place_with_nonce(&second, aad, sealed)
    }
}

/// The two 96-bit halves of an XAES-256-GCM nonce.
fn split_xnonce(nonce: &[u8; XNONCE_LEN]) -> ([u8; NONCE_LEN], [u8; NONCE_LEN]) {
    let mut first = [0u8; NONCE_LEN];
    let mut second = [0u8; NONCE_LEN];
    first.copy_from_slice(&nonce[..NONCE_LEN]);
    second.copy_from_slice(&nonce[NONCE_LEN..]);
    (first, second)
}

impl fmt::Debug for XaesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("XaesKey(redacted)")
    }
}

/// An RSA key pair that unwraps imported key material sent under its public
/// key with RSAES-OAEP-SHA-256 (MGF1-SHA-256), as AWS KMS's
/// `RSAES_OAEP_SHA_256` wrapping algorithm. Debug is redacted.
pub struct RsaUnwrapKey(aws_lc_rs::rsa::PrivateDecryptingKey);

impl RsaUnwrapKey {
    /// A fresh key pair of 2048, 3072 or 4096 bits.
    pub fn generate(bits: usize) -> Result<Self, CryptoError> {
        use aws_lc_rs::rsa::KeySize;
        let size = match bits {
            2048 => KeySize::Rsa2048,
            3072 => KeySize::Rsa3072,
            4096 => KeySize::Rsa4096,
            _ => return Err(CryptoError::KeyLength),
        };
        aws_lc_rs::rsa::PrivateDecryptingKey::generate(size)
            .map(Self)
            .map_err(|_| CryptoError::Random)
    }

    /// Loads a private key from PKCS#8 DER.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, CryptoError> {
        aws_lc_rs::rsa::PrivateDecryptingKey::from_pkcs8(der)
            .map(Self)
            .map_err(|_| CryptoError::KeyLength)
    }

    /// The private key as PKCS#8 DER (secret).
    pub fn to_pkcs8(&self) -> Result<SecretBytes, CryptoError> {
        use aws_lc_rs::encoding::AsDer;
        let der: aws_lc_rs::encoding::Pkcs8V1Der<'static> =
            self.0.as_der().map_err(|_| CryptoError::KeyLength)?;
        Ok(SecretBytes::from(der.as_ref()))
    }

    /// The public key as X.509 SubjectPublicKeyInfo DER (what `openssl pkeyutl
    /// -pubin -keyform DER` takes).
    pub fn public_key_der(&self) -> Result<Vec<u8>, CryptoError> {
        use aws_lc_rs::encoding::AsDer;
        let der: aws_lc_rs::encoding::PublicKeyX509Der<'static> = self
            .0
            .public_key()
            .as_der()
            .map_err(|_| CryptoError::KeyLength)?;
        Ok(der.as_ref().to_vec())
    }

    /// Unwraps an RSAES-OAEP-SHA-256 ciphertext. Any failure is `Authentication`.
    pub fn unwrap(&self, ciphertext: &[u8]) -> Result<SecretBytes, CryptoError> {
        use aws_lc_rs::rsa::{OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey};
        let key =
            OaepPrivateDecryptingKey::new(self.0.clone()).map_err(|_| CryptoError::KeyLength)?;
        let mut out = Zeroizing::new(vec![0u8; key.min_output_size()]);
        let n = key
            .decrypt(&OAEP_SHA256_MGF1SHA256, ciphertext, &mut out, None)
            .map_err(|_| CryptoError::Authentication)?
            .len();
        Ok(SecretBytes::from(&out[..n]))
    }
}

impl fmt::Debug for RsaUnwrapKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RsaUnwrapKey(redacted)")
    }
}

/// Wraps `plaintext` under an RSA public key (X.509 DER) with
/// RSAES-OAEP-SHA-256: what a client does before importing key material.
pub fn rsa_oaep_sha256_wrap(public_der: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    use aws_lc_rs::rsa::{OAEP_SHA256_MGF1SHA256, OaepPublicEncryptingKey, PublicEncryptingKey};
    let public = PublicEncryptingKey::from_der(public_der).map_err(|_| CryptoError::KeyLength)?;
    let key = OaepPublicEncryptingKey::new(public).map_err(|_| CryptoError::KeyLength)?;
    let mut out = vec![0u8; key.ciphertext_size()];
    let n = key
        .encrypt(&OAEP_SHA256_MGF1SHA256, plaintext, &mut out, None)
        .map_err(|_| CryptoError::KeyLength)?
        .len();
    out.truncate(n);
    Ok(out)
}

/// Length of an Ed25519 private key's seed, of its public key, and of a
/// signature (the audit trail's signed digests).
pub const ED25519_SEED_LEN: usize = 32;
/// See `ED25519_SEED_LEN`.
pub const ED25519_PUBLIC_LEN: usize = 32;
/// See `ED25519_SEED_LEN`.
pub const ED25519_SIGNATURE_LEN: usize = 64;

/// An Ed25519 signing key, made from a 32-byte seed (the secret that is
/// stored). Debug prints nothing of it.
pub struct Ed25519Signer(aws_lc_rs::signature::Ed25519KeyPair);

impl Ed25519Signer {
    /// The key whose seed is `seed` (32 bytes).
    pub fn from_seed(seed: &[u8]) -> Result<Self, CryptoError> {
        aws_lc_rs::signature::Ed25519KeyPair::from_seed_unchecked(seed)
            .map(Self)
            .map_err(|_| CryptoError::KeyLength)
    }

    /// The 32-byte public key.
    pub fn public_key(&self) -> [u8; ED25519_PUBLIC_LEN] {
        use aws_lc_rs::signature::KeyPair;
        let mut out = [0u8; ED25519_PUBLIC_LEN];
        out.copy_from_slice(self.0.public_key().as_ref());
        out
    }

    /// The 64-byte signature of the concatenation of `parts`.
    pub fn sign(&self, parts: &[&[u8]]) -> [u8; ED25519_SIGNATURE_LEN] {
        let msg = parts.concat();
        let mut out = [0u8; ED25519_SIGNATURE_LEN];
        out.copy_from_slice(self.0.sign(&msg).as_ref());
        out
    }
}

impl fmt::Debug for Ed25519Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ed25519Signer(redacted)")
    }
}

/// True when `signature` is the Ed25519 signature under `public_key` (32
/// bytes) of the concatenation of `parts`.
pub fn ed25519_verify(public_key: &[u8], parts: &[&[u8]], signature: &[u8]) -> bool {
    use aws_lc_rs::signature::{ED25519, UnparsedPublicKey};
    let msg = parts.concat();
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(&msg, signature)
        .is_ok()
}

/// Lower-case hexadecimal of `bytes` (ids, never secrets).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip() {
        let key = AeadKey::new(&Key256::random().unwrap());
        let sealed = key.seal(b"aad", b"hello world").unwrap();
        assert_eq!(sealed.len(), 11 + SEAL_OVERHEAD);
        assert_ne!(&sealed[NONCE_LEN..NONCE_LEN + 11], b"hello world");
        assert_eq!(key.open(b"aad", &sealed).unwrap().expose(), b"hello world");
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let key = AeadKey::new(&Key256::random().unwrap());
        let sealed = key.seal(b"aad", b"0123456789").unwrap();
        for i in 0..sealed.len() * 8 {
            let mut bad = sealed.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert_eq!(key.open(b"aad", &bad), Err(CryptoError::Authentication));
        }
    }

    #[test]
    fn wrong_aad_or_key_is_refused() {
        let key = AeadKey::new(&Key256::random().unwrap());
        let other = AeadKey::new(&Key256::random().unwrap());
        let sealed = key.seal(b"aad", b"x").unwrap();
        assert!(key.open(b"aae", &sealed).is_err());
        assert!(other.open(b"aad", &sealed).is_err());
        assert!(key.open(b"aad", &sealed[..SEAL_OVERHEAD - 1]).is_err());
    }

    #[test]
    fn nonces_differ() {
        let key = AeadKey::new(&Key256::random().unwrap());
        let a = key.seal(b"", b"same").unwrap();
        let b = key.seal(b"", b"same").unwrap();
        assert_ne!(a[..NONCE_LEN], b[..NONCE_LEN]);
    }

    #[test]
    fn aes128_keys_work_and_odd_lengths_do_not() {
        let k = AeadKey::from_bytes(&[7u8; 16]).unwrap();
        let s = k.seal(b"", b"abc").unwrap();
        assert_eq!(k.open(b"", &s).unwrap().expose(), b"abc");
        assert_eq!(
            AeadKey::from_bytes(&[0u8; 24]).err(),
            Some(CryptoError::KeyLength)
        );
    }

    #[test]
    fn ed25519_sign_verify() {
        let seed = random_array::<ED25519_SEED_LEN>().unwrap();
        let k = Ed25519Signer::from_seed(&seed).unwrap();
        let pk = k.public_key();
        let sig = k.sign(&[b"ab", b"c"]);
        assert!(ed25519_verify(&pk, &[b"abc"], &sig));
        assert!(!ed25519_verify(&pk, &[b"abd"], &sig));
        let mut bad = sig;
        bad[3] ^= 1;
        assert!(!ed25519_verify(&pk, &[b"abc"], &bad));
        // The same seed, the same key.
        assert_eq!(Ed25519Signer::from_seed(&seed).unwrap().public_key(), pk);
        assert!(Ed25519Signer::from_seed(&seed[..31]).is_err());
        assert!(format!("{k:?}").contains("redacted"));
    }

    #[test]
    fn rsa_oaep_wrap_unwrap_round_trip() {
        let k = RsaUnwrapKey::generate(2048).unwrap();
        let public = k.public_key_der().unwrap();
        let wrapped = rsa_oaep_sha256_wrap(&public, &[9u8; 32]).unwrap();
        assert_eq!(wrapped.len(), 256);
        let again = RsaUnwrapKey::from_pkcs8(k.to_pkcs8().unwrap().expose()).unwrap();
        assert_eq!(again.unwrap(&wrapped).unwrap().expose(), &[9u8; 32]);
        let mut bad = wrapped.clone();
        bad[100] ^= 1;
        assert_eq!(again.unwrap(&bad).err(), Some(CryptoError::Authentication));
        assert!(again.unwrap(&wrapped[..10]).is_err());
        let other = RsaUnwrapKey::generate(2048).unwrap();
        assert!(other.unwrap(&wrapped).is_err());
        assert!(RsaUnwrapKey::generate(1024).is_err());
        assert_eq!(format!("{k:?}"), "RsaUnwrapKey(redacted)");
    }

    /// SP 800-108 counter mode, one block, against a value computed outside
    /// kmsfs (Python's hmac): HMAC-SHA256(00..1f, 00000001 || "kmsfs test" ||
    /// 00 || 11 x 32 || 00000100).
    #[test]
    fn kdf_matches_a_known_answer() {
        let expected = [
            0x9f, 0x3f, 0x00, 0xef, 0x64, 0x91, 0x67, 0x3b, 0x78, 0xa4, 0xfe, 0x17, 0x2c, 0xd0,
            0x42, 0x17, 0x9f, 0x20, 0x98, 0x81, 0x2e, 0xda, 0x50, 0xea, 0x66, 0xb5, 0xda, 0x18,
            0xbc, 0xed, 0x26, 0xf2,
        ];
        let material: Vec<u8> = (0u8..32).collect();
        let derived = KdfKey::new(&material).derive(b"kmsfs test", &[&[0x11; 16], &[0x11; 16]]);
        let mut a = Vec::new();
        derived.seal_append(b"aad", b"message", &mut a).unwrap();
        let mut b = Vec::new();
        AeadKey::new(&Key256::from_slice(&expected).unwrap())
            .seal_append_with_nonce(&[0; NONCE_LEN], b"aad", b"message", &mut b)
            .unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn derived_keys_differ_by_label_context_and_material() {
        let k = KdfKey::new(&[1; 32]);
        let base = k.derive(b"a", &[&[0; 32]]);
        assert!(base.same_as(&k.derive(b"a", &[&[0; 32]])));
        assert!(!base.same_as(&k.derive(b"b", &[&[0; 32]])));
        assert!(!base.same_as(&k.derive(b"a", &[&[1; 32]])));
        assert!(!base.same_as(&KdfKey::new(&[2; 32]).derive(b"a", &[&[0; 32]])));
    }

    #[test]
    fn one_time_key_round_trip_and_refusals() {
        let k = KdfKey::new(&[3; 32]);
        let mut sealed = Vec::new();
        k.derive(b"l", &[b"salt"])
            .seal_append(b"aad", b"hello", &mut sealed)
            .unwrap();
        assert_eq!(sealed.len(), 5 + TAG_LEN);
        let open = |aad: &[u8], s: &[u8]| k.derive(b"l", &[b"salt"]).open(aad, s);
        assert_eq!(open(b"aad", &sealed).unwrap().expose(), b"hello");
        assert!(open(b"aae", &sealed).is_err());
        assert!(open(b"aad", &sealed[..TAG_LEN - 1]).is_err());
        assert!(k.derive(b"l", &[b"salu"]).open(b"aad", &sealed).is_err());
        for i in 0..sealed.len() * 8 {
            let mut bad = sealed.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert_eq!(open(b"aad", &bad), Err(CryptoError::Authentication));
        }
        assert_eq!(format!("{k:?}"), "KdfKey(redacted)");
    }

    /// The two test vectors of the C2SP XAES-256-GCM specification.
    #[test]
    fn xaes_matches_the_c2sp_vectors() {
        let cases: [(u8, &[u8], &str); 2] = [
            (
                0x01,
                b"",
                "ce546ef63c9cc60765923609b33a9a1974e96e52daf2fcf7075e2271",
            ),
            (
                0x03,
                b"c2sp.org/XAES-256-GCM",
                "986ec1832593df5443a179437fd083bf3fdb41abd740a21f71eb769d",
            ),
        ];
        let nonce: [u8; XNONCE_LEN] = *b"ABCDEFGHIJKLMNOPQRSTUVWX";
        for (k, aad, expected) in cases {
            let key = XaesKey::new(&Key256::from_slice(&[k; 32]).unwrap()).unwrap();
            let mut out = Vec::new();
            key.seal_append(&nonce, aad, b"XAES-256-GCM", &mut out)
                .unwrap();
            assert_eq!(hex(&out), expected);
            let plain = key.open_in_place(&nonce, aad, &mut out).unwrap();
            assert_eq!(plain, b"XAES-256-GCM");
        }
    }

    /// A property test of XAES-256-GCM as a block construction: across nonce
    /// edge cases (zeros, ones, nonces that differ in one bit of either half)
    /// and block positions (0, 2^32 boundaries, the largest index), sealing
    /// round-trips, and opening under any other nonce, position or key fails.
    #[test]
    fn xaes_block_construction_across_nonce_and_position_edge_cases() {
        let key = XaesKey::new(&Key256::from_slice(&[0x42; 32]).unwrap()).unwrap();
        let other = XaesKey::new(&Key256::from_slice(&[0x43; 32]).unwrap()).unwrap();
        let mut seed = 0x0123_4567_89ab_cdefu64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut nonces: Vec<[u8; XNONCE_LEN]> = vec![[0; 24], [0xff; 24]];
        for bit in [0, 7, 95, 96, 103, 191] {
            let mut n = [0u8; 24];
            n[bit / 8] ^= 1 << (bit % 8);
            nonces.push(n);
        }
        for _ in 0..8 {
            let mut n = [0u8; 24];
            for c in n.chunks_mut(8) {
                c.copy_from_slice(&next().to_be_bytes()[..c.len()]);
            }
            nonces.push(n);
        }
        let positions = [0u64, 1, (1 << 32) - 1, 1 << 32, u64::MAX / 4096, u64::MAX];
        let aad = |p: u64| [&b"block"[..], &p.to_be_bytes()].concat();
        for (i, n) in nonces.iter().enumerate() {
            for &p in &positions {
                let len = [1usize, 15, 16, 4095, 4096][(next() % 5) as usize];
                let plain: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                let mut sealed = Vec::new();
                key.seal_append(n, &aad(p), &plain, &mut sealed).unwrap();
                assert_eq!(sealed.len(), len + TAG_LEN);
                let mut buf = sealed.clone();
                assert_eq!(key.open_in_place(n, &aad(p), &mut buf).unwrap(), &plain[..]);
                // Derived once for the first half, as a batch of blocks does.
                let mut first = [0u8; NONCE_LEN];
                first.copy_from_slice(&n[..12]);
                let mut second = [0u8; NONCE_LEN];
                second.copy_from_slice(&n[12..]);
                let mut batch = Vec::new();
                key.subkey(&first)
                    .unwrap()
                    .seal_append_with_nonce(&second, &aad(p), &plain, &mut batch)
                    .unwrap();
                assert_eq!(batch, sealed, "subkey and one-shot agree");
                for (j, m) in nonces.iter().enumerate() {
                    if i != j {
                        let mut buf = sealed.clone();
                        assert!(key.open_in_place(m, &aad(p), &mut buf).is_err());
                    }
                }
                for &q in &positions {
                    if q != p {
                        let mut buf = sealed.clone();
                        assert!(key.open_in_place(n, &aad(q), &mut buf).is_err());
                    }
                }
                let mut buf = sealed.clone();
                assert!(other.open_in_place(n, &aad(p), &mut buf).is_err());
            }
        }
        // Nonces that share a first half share a derived key; any other
        // first half gives another key.
        let a = key.subkey(&[1; 12]).unwrap();
        let mut x = Vec::new();
        let mut y = Vec::new();
        a.seal_append_with_nonce(&[0; 12], b"", &[0; 32], &mut x)
            .unwrap();
        key.subkey(&[1; 12])
            .unwrap()
            .seal_append_with_nonce(&[0; 12], b"", &[0; 32], &mut y)
            .unwrap();
        assert_eq!(x, y);
        let mut z = Vec::new();
        key.subkey(&[2; 12])
            .unwrap()
            .seal_append_with_nonce(&[0; 12], b"", &[0; 32], &mut z)
            .unwrap();
        assert_ne!(x, z);
        assert_eq!(format!("{key:?}"), "XaesKey(redacted)");
    }

    #[test]
    fn debug_is_redacted() {
        let s = SecretBytes::new(vec![0x41; 8]);
        assert_eq!(format!("{s:?}"), "SecretBytes(len=8)");
        let k = Key256::from_slice(&[0x41; 32]).unwrap();
        assert!(!format!("{k:?}").contains("65"));
    }
}
