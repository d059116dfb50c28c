//! Unit tests of the encrypted file, and `TestKeys`, the one-key service
//! that fs's unit tests use as well.

use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;
use crate::crypto::{AeadKey, Key256, random_array};
use crate::format::{self, BLOCK_SIZE, Layout};

/// Every test of an encrypted file runs in both layouts.
const LAYOUTS: [Layout; 2] = [Layout::V1, Layout::V2];
use crate::kms::{
    Caller, DataKey, DataKeySpec, Decrypted, Encrypted, KeyMetadata, KeyOrigin, KeyService,
    KeyServiceExt, KeyState, Request, RequestContext, Response,
};

/// A one-key service for unit tests: wraps with AES-GCM, AAD = context.
pub(crate) struct TestKeys {
    key: AeadKey,
    pub(crate) refuse: AtomicBool,
}

impl TestKeys {
    pub(crate) fn new() -> Self {
        Self {
            key: AeadKey::new(&Key256::random().unwrap()),
            refuse: AtomicBool::new(false),
        }
    }
    fn check(&self) -> Result<(), KmsError> {
        if self.refuse.load(Ordering::SeqCst) {
            return Err(KmsError::Disabled {
                key_id: "test".into(),
            });
        }
        Ok(())
    }
}

impl TestKeys {
    fn mint(
        &self,
        key_id: &str,
        spec: DataKeySpec,
        ctx: &EncryptionContext,
    ) -> Result<DataKey, KmsError> {
        self.check()?;
        let p = crate::crypto::SecretBytes::random(spec.byte_len()?).unwrap();
        Ok(DataKey {
            key_id: key_id.into(),
            key_material_version: 1,
            ciphertext_blob: self.key.seal(&ctx.encode(), p.expose()).unwrap(),
            plaintext: p,
        })
    }
    fn unwrap(
        &self,
        blob: &[u8],
        ctx: &EncryptionContext,
        _: Option<&str>,
    ) -> Result<Decrypted, KmsError> {
        self.check()?;
        let plaintext = self
            .key
            .open(&ctx.encode(), blob)
            .map_err(|_| KmsError::invalid_ciphertext("bad blob".into()))?;
        Ok(Decrypted {
            key_id: "test".into(),
            key_material_version: 1,
            plaintext,
        })
    }
    fn wrap(
        &self,
        key_id: &str,
        plaintext: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Encrypted, KmsError> {
        self.check()?;
        Ok(Encrypted {
            key_id: key_id.into(),
            ciphertext_blob: self.key.seal(&ctx.encode(), plaintext).unwrap(),
            source_key_id: None,
        })
    }
    fn rewrap(
        &self,
        blob: &[u8],
        source_ctx: &EncryptionContext,
        destination_key_id: &str,
        destination_ctx: &EncryptionContext,
    ) -> Result<Encrypted, KmsError> {
        let source = self.unwrap(blob, source_ctx, None)?;
        let again = self.wrap(
            destination_key_id,
            source.plaintext.expose(),
            destination_ctx,
        )?;
        Ok(Encrypted {
            source_key_id: Some(source.key_id),
            ..again
        })
    }
    /// Any key id names the one key; disabled while `refuse` is set.
    fn describe(&self, key_id: &str) -> Result<KeyMetadata, KmsError> {
        let enabled = !self.refuse.load(Ordering::SeqCst);
        Ok(KeyMetadata {
            key_id: key_id.into(),
            arn: format!("arn:kmsfs:kms:local:test:key/{key_id}"),
            description: "unit-test key".into(),
            creation_date: 0,
            key_state: if enabled {
                KeyState::Enabled
            } else {
                KeyState::Disabled
            },
            enabled,
            deletion_date: None,
            pending_deletion_window_in_days: None,
            origin: KeyOrigin::Kms,
            key_usage: "ENCRYPT_DECRYPT",
            key_spec: "SYMMETRIC_DEFAULT",
            current_key_material_version: 1,
            expiration_model: None,
            valid_to: None,
        })
    }
}

impl KeyService for TestKeys {
    fn call(&self, _: &RequestContext<'_>, request: Request<'_>) -> Result<Response, KmsError> {
        match request {
            Request::GenerateDataKey {
                key_id,
                spec,
                context,
            } => self.mint(key_id, spec, context).map(Response::DataKey),
            Request::Decrypt {
                blob,
                context,
                key_id,
            } => self.unwrap(blob, context, key_id).map(Response::Decrypted),
            Request::Encrypt {
                key_id,
                plaintext,
                context,
            } => self
                .wrap(key_id, plaintext, context)
                .map(Response::Encrypted),
            Request::ReEncrypt {
                blob,
                source_context,
                destination_key_id,
                destination_context,
            } => self
                .rewrap(
                    blob,
                    source_context,
                    destination_key_id,
                    destination_context,
                )
                .map(Response::Encrypted),
            Request::DescribeKey { key_id } => self.describe(key_id).map(Response::Metadata),
            Request::CachedOpen { .. } => Ok(Response::Recorded),
        }
    }
    fn flush_audit(&self) {}
    fn audits_file_access(&self) -> bool {
        false
    }
    fn generation(&self) -> u64 {
        0
    }
}

const CALLER: RequestContext<'static> = RequestContext::cli(Caller {
    uid: 0,
    gid: 0,
    pid: 0,
    access_key: None,
});

/// The test service is a whole one-key service: what it encrypts opens
/// only under the same context, ReEncrypt moves a blob to another
/// context, and `refuse` disables the key for every operation.
#[test]
fn test_keys_serve_every_operation() {
    let ks = TestKeys::new();
    let (a, b) = (
        EncryptionContext::with("file", "a"),
        EncryptionContext::with("file", "b"),
    );
    let blob = ks.encrypt(&CALLER, "k", b"secret", &a).unwrap();
    assert_eq!(blob.key_id, "k");
    let open = |blob: &[u8], ctx| ks.decrypt(&CALLER, blob, ctx, None);
    assert_eq!(
        open(&blob.ciphertext_blob, &a).unwrap().plaintext.expose(),
        b"secret"
    );
    assert!(open(&blob.ciphertext_blob, &b).is_err());
    let moved = ks
        .re_encrypt(&CALLER, &blob.ciphertext_blob, &a, "k2", &b)
        .unwrap();
    assert_eq!(
        (moved.key_id.as_str(), moved.source_key_id.as_deref()),
        ("k2", Some("test"))
    );
    assert_eq!(
        open(&moved.ciphertext_blob, &b).unwrap().plaintext.expose(),
        b"secret"
    );
    assert!(open(&moved.ciphertext_blob, &a).is_err());
    assert_eq!(
        ks.describe_key(&CALLER, "k").unwrap().key_state,
        KeyState::Enabled
    );
    ks.refuse.store(true, Ordering::SeqCst);
    assert_eq!(
        ks.describe_key(&CALLER, "k").unwrap().key_state,
        KeyState::Disabled
    );
    assert!(ks.encrypt(&CALLER, "k", b"x", &a).is_err());
    assert!(
        ks.re_encrypt(&CALLER, &moved.ciphertext_blob, &b, "k", &a)
            .is_err()
    );
}

fn temp_file(dir: &std::path::Path, name: &str) -> File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join(name))
        .unwrap()
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "kmsfs-envelope-{}-{}",
        std::process::id(),
        u64::from_be_bytes(random_array().unwrap())
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A deterministic generator for test data and operations.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn check_model(f: &EncryptedFile, model: &[u8]) {
    assert_eq!(f.plain_size().unwrap(), model.len() as u64);
    let mut buf = vec![0u8; model.len() + 10];
    let n = f.read_at(&mut buf, 0).unwrap();
    assert_eq!(n, model.len());
    assert!(buf[..n] == *model, "content differs from model");
    let backing = f.file().metadata().unwrap().len();
    assert_eq!(
        backing,
        f.layout().backing_size_from_plain(model.len() as u64)
    );
}

#[test]
fn random_operations_match_a_model() {
    for l in LAYOUTS {
        random_operations_match_a_model_in(l);
    }
}

fn random_operations_match_a_model_in(l: Layout) {
    let ks = TestKeys::new();
    let dir = tempdir();
    let f = EncryptedFile::create(temp_file(&dir, "a"), &ks, &CALLER, "k", l).unwrap();
    let mut model: Vec<u8> = Vec::new();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for step in 0..3000 {
        match rng.below(10) {
            0 => {
                let len = rng.below(3 * BLOCK_SIZE) as usize;
                f.set_len(len as u64).unwrap();
                model.resize(len, 0);
            }
            1..=6 => {
                let off = rng.below(model.len() as u64 + 2 * BLOCK_SIZE) as usize;
                let len = 1 + rng.below(2 * BLOCK_SIZE + 100) as usize;
                let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                f.write_at(&data, off as u64).unwrap();
                if model.len() < off + len {
                    model.resize(off + len, 0);
                }
                model[off..off + len].copy_from_slice(&data);
            }
            _ => {
                let off = rng.below(model.len() as u64 + 10);
                let len = rng.below(2 * BLOCK_SIZE) as usize;
                let mut buf = vec![0u8; len];
                let n = f.read_at(&mut buf, off).unwrap();
                let lo = (off as usize).min(model.len());
                let hi = (lo + len).min(model.len());
                assert_eq!(&buf[..n], &model[lo..hi], "step {step}");
            }
        }
        if step % 100 == 0 {
            check_model(&f, &model);
        }
    }
    check_model(&f, &model);
    std::fs::remove_dir_all(dir).unwrap();
}

/// The mount seals the whole blocks of concurrent WRITEs on their own
/// threads, before the file's lock, and commits them in whatever order the
/// threads take the lock: the file is then what those writes, applied in
/// commit order, make it (extensions, holes and partial edges included).
#[test]
fn writes_sealed_apart_commit_in_any_order() {
    for l in LAYOUTS {
        writes_sealed_apart_commit_in_any_order_in(l);
    }
}

fn writes_sealed_apart_commit_in_any_order_in(l: Layout) {
    let ks = TestKeys::new();
    let dir = tempdir();
    let f = EncryptedFile::create(temp_file(&dir, "w"), &ks, &CALLER, "k", l).unwrap();
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let mut model: Vec<u8> = Vec::new();
    for round in 0..40 {
        // Up to 1 MiB apart and up to 70 blocks long, block-aligned or not.
        let writes: Vec<(u64, Vec<u8>)> = (0..4)
            .map(|_| {
                let aligned = rng.below(2) == 0;
                let mut off = rng.below(256) * BLOCK_SIZE;
                let mut len = (1 + rng.below(70)) * BLOCK_SIZE;
                if !aligned {
                    off += rng.below(BLOCK_SIZE);
                    len = 1 + rng.below(len);
                }
                (off, (0..len).map(|_| rng.next() as u8).collect())
            })
            .collect();
        let key = f.key().clone();
        let sealed: Vec<WholeBlocks> = std::thread::scope(|s| {
            let handles: Vec<_> = writes
                .iter()
                .map(|(off, data)| {
                    let key = &key;
                    s.spawn(move || WholeBlocks::seal(key, data, *off).unwrap())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // Committed last first: later offsets usually extend first.
        for ((off, data), whole) in writes.iter().zip(sealed).rev() {
            f.write_sealed(data, *off, whole).unwrap();
            let (off, len) = (*off as usize, data.len());
            if model.len() < off + len {
                model.resize(off + len, 0);
            }
            model[off..off + len].copy_from_slice(data);
        }
        check_model(&f, &model);
        if round % 10 == 9 {
            let cut = rng.below(model.len() as u64 + 1) as usize;
            f.set_len(cut as u64).unwrap();
            model.truncate(cut);
        }
    }
    // Blocks sealed for one write are refused for another: nothing changes.
    let data = vec![7u8; 3 * BLOCK_SIZE as usize];
    let whole = WholeBlocks::seal(f.key(), &data, 0).unwrap();
    let refused = f.write_sealed(&data, BLOCK_SIZE, whole);
    assert!(
        matches!(refused, Err(EnvelopeError::Mismatch(_))),
        "{refused:?}"
    );
    check_model(&f, &model);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn sizes_round_trip_through_seal_and_unseal() {
    for l in LAYOUTS {
        sizes_round_trip_through_seal_and_unseal_in(l);
    }
}

fn sizes_round_trip_through_seal_and_unseal_in(l: Layout) {
    let ks = TestKeys::new();
    let dir = tempdir();
    for size in [0usize, 1, 4095, 4096, 4097, (1 << 20) + 1] {
        let data: Vec<u8> = (0..size).map(|i| (i * 7 + 3) as u8).collect();
        let n = seal(&mut &data[..], temp_file(&dir, "s"), &ks, &CALLER, "k", l).unwrap();
        assert_eq!(n as usize, size);
        let backing = std::fs::read(dir.join("s")).unwrap();
        assert_eq!(backing.len() as u64, l.backing_size_from_plain(size as u64));
        let mut out = Vec::new();
        let f = File::open(dir.join("s")).unwrap();
        assert_eq!(unseal(f, &mut out, &ks, &CALLER).unwrap() as usize, size);
        assert!(out == data, "size {size}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn ciphertext_is_not_plaintext_and_tampering_is_detected() {
    for l in LAYOUTS {
        ciphertext_is_not_plaintext_and_tampering_is_detected_in(l);
    }
}

fn ciphertext_is_not_plaintext_and_tampering_is_detected_in(l: Layout) {
    let ks = TestKeys::new();
    let dir = tempdir();
    let marker = b"MARKER-0123456789-PLAINTEXT".repeat(400);
    seal(&mut &marker[..], temp_file(&dir, "s"), &ks, &CALLER, "k", l).unwrap();
    let path = dir.join("s");
    let clean = std::fs::read(&path).unwrap();
    assert!(!clean.windows(16).any(|w| w == &marker[..16]));

    // A flipped byte in block 1 fails block 1 only.
    let mut bad = clean.clone();
    bad[l.block_backing_offset(1) as usize + 100] ^= 0x01;
    std::fs::write(&path, &bad).unwrap();
    let f = EncryptedFile::open(File::open(&path).unwrap(), &ks, &CALLER).unwrap();
    let mut buf = vec![0u8; 4096];
    assert_eq!(f.read_at(&mut buf, 0).unwrap(), 4096);
    assert!(matches!(
        f.read_at(&mut buf, 4096),
        Err(EnvelopeError::CorruptBlock { block: 1 })
    ));

    // Swapped blocks 0 and 1.
    let mut swapped = clean.clone();
    let (a, b) = (
        l.block_backing_offset(0) as usize,
        l.block_backing_offset(1) as usize,
    );
    let n = l.cipher_block_size() as usize;
    let blk0 = clean[a..a + n].to_vec();
    swapped[a..a + n].copy_from_slice(&clean[b..b + n]);
    swapped[b..b + n].copy_from_slice(&blk0);
    std::fs::write(&path, &swapped).unwrap();
    let f = EncryptedFile::open(File::open(&path).unwrap(), &ks, &CALLER).unwrap();
    assert!(matches!(
        f.read_at(&mut buf, 0),
        Err(EnvelopeError::CorruptBlock { block: 0 })
    ));

    // A truncated last block.
    std::fs::write(&path, &clean[..clean.len() - 1]).unwrap();
    let f = EncryptedFile::open(File::open(&path).unwrap(), &ks, &CALLER).unwrap();
    let last = format::block_of(f.plain_size().unwrap());
    assert!(matches!(
        f.read_at(&mut buf, last * BLOCK_SIZE),
        Err(EnvelopeError::CorruptBlock { .. })
    ));

    // A header whose file id changed no longer verifies.
    let mut hdr = clean.clone();
    hdr[20] ^= 1;
    std::fs::write(&path, &hdr).unwrap();
    assert!(matches!(
        EncryptedFile::open(File::open(&path).unwrap(), &ks, &CALLER),
        Err(EnvelopeError::CorruptHeader(_))
    ));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn blocks_from_another_file_are_refused() {
    for l in LAYOUTS {
        blocks_from_another_file_are_refused_in(l);
    }
}

fn blocks_from_another_file_are_refused_in(l: Layout) {
    let ks = TestKeys::new();
    let dir = tempdir();
    let data = vec![5u8; 8192];
    seal(&mut &data[..], temp_file(&dir, "a"), &ks, &CALLER, "k", l).unwrap();
    seal(&mut &data[..], temp_file(&dir, "b"), &ks, &CALLER, "k", l).unwrap();
    let a = std::fs::read(dir.join("a")).unwrap();
    let mut b = std::fs::read(dir.join("b")).unwrap();
    let off = l.block_backing_offset(0) as usize;
    b[off..off + l.cipher_block_size() as usize]
        .copy_from_slice(&a[off..off + l.cipher_block_size() as usize]);
    std::fs::write(dir.join("b"), &b).unwrap();
    let f = EncryptedFile::open(File::open(dir.join("b")).unwrap(), &ks, &CALLER).unwrap();
    let mut buf = vec![0u8; 4096];
    assert!(matches!(
        f.read_at(&mut buf, 0),
        Err(EnvelopeError::CorruptBlock { block: 0 })
    ));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn refusal_of_the_key_service_passes_through() {
    for l in LAYOUTS {
        refusal_of_the_key_service_passes_through_in(l);
    }
}

fn refusal_of_the_key_service_passes_through_in(l: Layout) {
    let ks = TestKeys::new();
    let dir = tempdir();
    seal(&mut &b"x"[..], temp_file(&dir, "a"), &ks, &CALLER, "k", l).unwrap();
    ks.refuse.store(true, Ordering::SeqCst);
    let e = EncryptedFile::open(File::open(dir.join("a")).unwrap(), &ks, &CALLER).unwrap_err();
    assert!(matches!(e, EnvelopeError::Kms(ref k) if k.is_access_refusal()));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn cut_or_zero_extended_files_fail_at_their_end() {
    for l in LAYOUTS {
        cut_or_zero_extended_files_fail_at_their_end_in(l);
    }
}

fn cut_or_zero_extended_files_fail_at_their_end_in(l: Layout) {
    let ks = TestKeys::new();
    let dir = tempdir();
    let data: Vec<u8> = (0..8192u32).map(|i| i as u8).collect();
    seal(
        &mut &data[..4100],
        temp_file(&dir, "cut"),
        &ks,
        &CALLER,
        "k",
        l,
    )
    .unwrap();
    seal(&mut &data[..], temp_file(&dir, "ext"), &ks, &CALLER, "k", l).unwrap();
    let open = |name: &str| {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join(name))
            .unwrap();
        EncryptedFile::open(f, &ks, &CALLER).unwrap()
    };
    // Cut 1 to 28 bytes into the final block: what is left cannot be a block.
    for cut in [1u64, 5, 27] {
        let f = open("cut");
        let len = f.file().metadata().unwrap().len();
        f.file().set_len(len - cut).unwrap();
        let mut buf = vec![0u8; 8192];
        assert_eq!(
            f.read_at(&mut buf[..100], 0).unwrap(),
            100,
            "the start still reads"
        );
        assert!(matches!(
            f.read_at(&mut buf, 0),
            Err(EnvelopeError::CorruptBlock { block: 1 })
        ));
        let mut out = Vec::new();
        assert!(unseal(File::open(dir.join("cut")).unwrap(), &mut out, &ks, &CALLER).is_err());
        f.file().set_len(len).unwrap();
    }
    // Zeros appended: a partial or a whole zero block at the end.
    for extra in [500u64, l.cipher_block_size()] {
        let f = open("ext");
        let len = f.file().metadata().unwrap().len();
        f.file().set_len(len + extra).unwrap();
        let mut buf = vec![0u8; 3 * 4096];
        assert!(matches!(
            f.read_at(&mut buf, 0),
            Err(EnvelopeError::CorruptBlock { block: 2 })
        ));
        assert!(
            f.write_at(b"x", 8192 + 10).is_err(),
            "writes past a damaged end are refused"
        );
        f.file().set_len(len).unwrap();
        assert_eq!(f.read_at(&mut buf, 0).unwrap(), 8192);
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_hole_that_becomes_the_final_block_is_sealed() {
    for l in LAYOUTS {
        a_hole_that_becomes_the_final_block_is_sealed_in(l);
    }
}

fn a_hole_that_becomes_the_final_block_is_sealed_in(l: Layout) {
    let ks = TestKeys::new();
    let dir = tempdir();
    let f = EncryptedFile::create(temp_file(&dir, "h"), &ks, &CALLER, "k", l).unwrap();
    f.write_at(b"head", 0).unwrap();
    f.write_at(b"tail", 10 * BLOCK_SIZE).unwrap();
    // Blocks 1..=9 are holes; cut the file inside and at the end of them.
    for size in [8 * BLOCK_SIZE, 5 * BLOCK_SIZE + 7, 2 * BLOCK_SIZE] {
        f.set_len(size).unwrap();
        let mut buf = vec![9u8; size as usize];
        assert_eq!(f.read_at(&mut buf, 0).unwrap(), size as usize);
        assert_eq!(&buf[..4], b"head");
        assert!(buf[4..].iter().all(|&b| b == 0));
    }
    // Growing seals the new final block too, whole or partial.
    for size in [20 * BLOCK_SIZE, 30 * BLOCK_SIZE + 1] {
        f.set_len(size).unwrap();
        let mut buf = vec![9u8; 4096];
        let last = format::block_count(size) - 1;
        let n = f.read_at(&mut buf, last * BLOCK_SIZE).unwrap();
        assert_eq!(n as u64, format::block_plain_len(last, size));
        assert!(buf[..n].iter().all(|&b| b == 0));
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn writes_past_the_size_limit_change_nothing() {
    for l in LAYOUTS {
        writes_past_the_size_limit_change_nothing_in(l);
    }
}

fn writes_past_the_size_limit_change_nothing_in(l: Layout) {
    let ks = TestKeys::new();
    let dir = tempdir();
    let f = EncryptedFile::create(temp_file(&dir, "big"), &ks, &CALLER, "k", l).unwrap();
    f.write_at(b"0123456789", 0).unwrap();
    let before = std::fs::read(dir.join("big")).unwrap();
    // Past what kmsfs allows: refused before anything is written.
    for off in [u64::MAX - 3, l.max_plain_size()] {
        let e = f.write_at(b"x", off).unwrap_err();
        assert!(
            matches!(e, EnvelopeError::Io(ref io) if io.raw_os_error() == Some(libc::EFBIG)),
            "{e}"
        );
    }
    assert!(f.set_len(l.max_plain_size() + 1).is_err());
    assert!(
        std::fs::read(dir.join("big")).unwrap() == before,
        "file changed"
    );
    // Past what the backing file system allows (ext4: 16 TiB): whatever
    // it refuses must leave the file as it was.
    for off in [1u64 << 50, 1u64 << 62] {
        if f.write_at(b"x", off).is_err() {
            assert!(
                std::fs::read(dir.join("big")).unwrap() == before,
                "changed at {off}"
            );
        } else {
            f.set_len(10).unwrap();
        }
        if f.set_len(off).is_err() {
            assert!(
                std::fs::read(dir.join("big")).unwrap() == before,
                "changed at {off}"
            );
        } else {
            f.set_len(10).unwrap();
        }
    }
    let mut buf = [0u8; 16];
    assert_eq!(f.read_at(&mut buf, 0).unwrap(), 10);
    assert_eq!(&buf[..10], b"0123456789");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn holes_read_as_zeros_and_stay_sparse() {
    for l in LAYOUTS {
        holes_read_as_zeros_and_stay_sparse_in(l);
    }
}

fn holes_read_as_zeros_and_stay_sparse_in(l: Layout) {
    let ks = TestKeys::new();
    let dir = tempdir();
    let f = EncryptedFile::create(temp_file(&dir, "h"), &ks, &CALLER, "k", l).unwrap();
    f.write_at(b"abc", 0).unwrap();
    f.set_len(100 * BLOCK_SIZE + 5).unwrap();
    f.write_at(b"end", 100 * BLOCK_SIZE + 5).unwrap();
    let mut buf = vec![1u8; 8192];
    assert_eq!(f.read_at(&mut buf, 0).unwrap(), 8192);
    assert_eq!(&buf[..3], b"abc");
    assert!(buf[3..].iter().all(|&b| b == 0));
    let mut tail = [0u8; 8];
    assert_eq!(f.read_at(&mut tail, 100 * BLOCK_SIZE).unwrap(), 8);
    assert_eq!(&tail, b"\0\0\0\0\0end");
    use std::os::unix::fs::MetadataExt;
    let blocks = f.file().metadata().unwrap().blocks();
    assert!(
        blocks * 512 < 40 * 4096,
        "holes were written out: {blocks} sectors"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// Block format 2 through the real envelope: writes at offsets around block
/// edges, checked against a model, and the nonces each write stores: the
/// blocks of one write share their first nonce half (one derivation per
/// write) and have distinct second halves; two writes never share a first
/// half; a changed byte of either half, and a block moved to another index,
/// fail authentication.
#[test]
fn block_format_2_nonces_and_offsets_across_edges() {
    let ks = TestKeys::new();
    let dir = tempdir();
    let l = Layout::V2;
    let f = EncryptedFile::create(temp_file(&dir, "x"), &ks, &CALLER, "k", l).unwrap();
    let mut model: Vec<u8> = Vec::new();
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let edges = |rng: &mut Rng| -> u64 {
        let k = rng.below(6);
        let d = [0i64, -1, 1, -16, 24, 40][rng.below(6) as usize];
        (k as i64 * BLOCK_SIZE as i64 + d).max(0) as u64
    };
    let mut firsts = std::collections::HashSet::new();
    for step in 0..400 {
        let off = edges(&mut rng);
        let len =
            [1u64, 23, 24, 40, 4095, 4096, 4097, 8191, 8192, 3 * 4096 + 1][rng.below(10) as usize];
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        f.write_at(&data, off).unwrap();
        let end = (off + len) as usize;
        if model.len() < end {
            model.resize(end, 0);
        }
        model[off as usize..end].copy_from_slice(&data);
        // The stored nonces of the blocks this write sealed.
        let raw = std::fs::read(dir.join("x")).unwrap();
        let size = model.len() as u64;
        let mut first = None;
        let mut seconds = std::collections::HashSet::new();
        for s in format::split_range(off, len) {
            let at = l.block_backing_offset(s.block) as usize;
            let nonce = &raw[at..at + 24];
            let f1 = nonce[..12].to_vec();
            assert_eq!(*first.get_or_insert(f1.clone()), f1, "step {step}");
            assert!(seconds.insert(nonce[12..].to_vec()), "step {step}");
            assert!(
                l.stored_block_len(format::block_plain_len(s.block, size)) > 40,
                "step {step}"
            );
        }
        assert!(firsts.insert(first.unwrap()), "a first half came twice");
        if step % 20 == 0 {
            check_model(&f, &model);
        }
    }
    check_model(&f, &model);

    // Any changed byte of a stored nonce, and a block put at another index,
    // fails that block only.
    let clean = std::fs::read(dir.join("x")).unwrap();
    let path = dir.join("x");
    let bad_read = |bytes: &[u8], block: u64| {
        std::fs::write(&path, bytes).unwrap();
        let f = EncryptedFile::open(File::open(&path).unwrap(), &ks, &CALLER).unwrap();
        let mut buf = vec![0u8; 4096];
        assert!(
            matches!(
                f.read_at(&mut buf, block * BLOCK_SIZE),
                Err(EnvelopeError::CorruptBlock { block: b }) if b == block
            ),
            "block {block}"
        );
        if block > 0 {
            assert_eq!(f.read_at(&mut buf, 0).unwrap(), 4096);
        }
    };
    for i in [0usize, 11, 12, 23] {
        let mut bad = clean.clone();
        bad[l.block_backing_offset(1) as usize + i] ^= 0x80;
        bad_read(&bad, 1);
    }
    let n = l.cipher_block_size() as usize;
    let (a, b) = (
        l.block_backing_offset(1) as usize,
        l.block_backing_offset(2) as usize,
    );
    let mut moved = clean.clone();
    moved.copy_within(a..a + n, b);
    bad_read(&moved, 2);

    // A write of more blocks than one derived key seals draws a new first
    // half after each BLOCKS_PER_DERIVATION blocks.
    let per = super::key::BLOCKS_PER_DERIVATION;
    let big = EncryptedFile::create(temp_file(&dir, "big"), &ks, &CALLER, "k", l).unwrap();
    let data = vec![0x3cu8; ((2 * per + 7) * BLOCK_SIZE) as usize];
    big.write_at(&data, 0).unwrap();
    let raw = std::fs::read(dir.join("big")).unwrap();
    let first_half = |b: u64| {
        let at = l.block_backing_offset(b) as usize;
        raw[at..at + 12].to_vec()
    };
    for b in 0..2 * per + 7 {
        assert_eq!(first_half(b), first_half(b / per * per), "block {b}");
    }
    assert_ne!(first_half(0), first_half(per));
    assert_ne!(first_half(per), first_half(2 * per));
    let mut back = vec![0u8; data.len()];
    assert_eq!(big.read_at(&mut back, 0).unwrap(), data.len());
    assert!(back == data);
    std::fs::remove_dir_all(dir).unwrap();
}

/// The layout-2 block construction at nonce and index edges: all-zero and
/// all-one nonce halves and block indexes 0, 2^32 - 1, 2^32 and 2^64 - 1
/// round-trip, and a block opens only at its own index, in its own file,
/// under its own nonce. The opener's cached derived key is dropped when the
/// first half changes between blocks.
#[test]
fn block_format_2_edges_of_nonces_and_indexes() {
    let dek = [0x5au8; 32];
    let key = FileKey::for_test(Layout::V2, [3; 16], &dek);
    let other_file = FileKey::for_test(Layout::V2, [4; 16], &dek);
    let v1 = FileKey::for_test(Layout::V1, [3; 16], &dek);
    let halves = [[0u8; 12], [0xff; 12], {
        let mut h = [0u8; 12];
        h[11] = 1;
        h
    }];
    let plain: Vec<u8> = (0..4096u32).map(|i| (i * 31) as u8).collect();
    for index in [0u64, 1, u32::MAX as u64, 1 << 32, u64::MAX] {
        let mut opener = key.opener();
        for f1 in &halves {
            for f2 in &halves {
                let mut nonce = [0u8; 24];
                nonce[..12].copy_from_slice(f1);
                nonce[12..].copy_from_slice(f2);
                for len in [1usize, 4095, 4096] {
                    let mut stored = Vec::new();
                    key.seal_block_with_nonce(index, &nonce, &plain[..len], &mut stored)
                        .unwrap();
                    assert_eq!(stored.len(), len + 40);
                    let mut s = stored.clone();
                    assert_eq!(
                        opener.open_block(index, true, &mut s).unwrap(),
                        &plain[..len]
                    );
                    let mut s = stored.clone();
                    assert!(key.open_block(index ^ 1, true, &mut s).is_err());
                    let mut s = stored.clone();
                    assert!(other_file.open_block(index, true, &mut s).is_err());
                    let mut s = stored.clone();
                    assert!(v1.open_block(index, true, &mut s[16..]).is_err());
                    let mut s = stored.clone();
                    s[0] ^= 1;
                    assert!(opener.open_block(index, true, &mut s).is_err());
                }
            }
        }
    }
}
