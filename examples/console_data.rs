//! Makes a scratch keystore for measuring `kmsfs console` at scale: KEYS keys
//! written in one keystore generation (through the store's own codec: one
//! CreateKey at a time rewrites the whole keystore each time, hours for
//! 10,000 on a loaded machine), then RECORDS trail records of the shape the
//! mount writes (Decrypt and GenerateDataKey of files, one in 50 refused),
//! appended through the trail's own writer, so they chain, sign and verify.
//!
//!   console_data DIR KEYS RECORDS
//!
//! DIR must not hold a keystore. Prints the time each part took.

use std::path::Path;
use std::time::Instant;

use kmsfs::LocalKeyStore;
use kmsfs::kms::audit::record::{self, Event};
use kmsfs::kms::audit::{CallerSource, Durability, Operation, Requester};
use kmsfs::kms::model::KeyRecord;
use kmsfs::kms::{Caller, CreateMode, KmsError, store};
use serde_json::{Map, json};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, keys, records] = args.as_slice() else {
        eprintln!("usage: console_data DIR KEYS RECORDS");
        std::process::exit(2);
    };
    let (keys, records): (usize, u64) = (keys.parse()?, records.parse()?);
    let dir = Path::new(dir);
    let t0 = Instant::now();
    {
        let kdir = store::KeystoreDir::new(dir);
        let (id, root, mut state, _) = store::create(&kdir, CreateMode::RootKeyFile)?;
        let now = kmsfs::kms::clock::now()?;
        for i in 0..keys {
            let k = KeyRecord::generate(&format!("scale key {i}"), now - (keys - i) as i64)?;
            state.keys.insert(k.key_id.clone(), k);
        }
        let bytes = store::encode(&id, &root, 2, &state)?;
        let _lock = kdir.lock()?;
        kdir.write_generations(None, &bytes)?;
    }
    println!("{keys} keys in {:.1} s", t0.elapsed().as_secs_f64());
    let ks = LocalKeyStore::open_shared(dir, &|| Err(KmsError::internal("no passphrase".into())))?;
    let caller = Caller {
        uid: 0,
        gid: 0,
        pid: std::process::id(),
        access_key: None,
    };
    // A change gives the keystore its trail signing key.
    ks.create_key(&caller, "scale key made through the service")?;
    let ids: Vec<String> = ks
        .list_keys(&caller)?
        .into_iter()
        .map(|k| k.key_id)
        .collect();
    let Some(trail) = ks.audit_trail().cloned() else {
        return Err("the trail is off (KMSFS_AUDIT=off?)".into());
    };
    let requester = Requester {
        pid: Some(4242),
        groups: Some(vec![0]),
        process_name: Some("cat".into()),
        executable: Some("/usr/bin/cat".into()),
        ..Requester::default()
    };
    let reader = Caller {
        uid: 0,
        gid: 0,
        pid: 4242,
        access_key: None,
    };
    let now = kmsfs::kms::clock::now()?;
    let t1 = Instant::now();
    for i in 0..records {
        let key = &ids[(i as usize * 7919) % ids.len().max(1)];
        let refused = i % 50 == 49;
        let mut extra = Map::new();
        extra.insert(
            "path".into(),
            json!(format!("dir{}/file{}.txt", i % 100, i)),
        );
        extra.insert("cacheHit".into(), json!(false));
        let rec = record::build(&Event {
            op: if i % 3 == 0 {
                Operation::GenerateDataKey
            } else {
                Operation::Decrypt
            },
            caller: &reader,
            requester: &requester,
            source: CallerSource::Mount,
            time: now - (records - i) as i64 / 20,
            request: json!({ "encryptionContext": { "kmsfs:file": format!("{i:032x}") } }),
            response: None,
            key_arn: Some(format!(
                "arn:kmsfs:kms:local:{}:key/{key}",
                ks.keystore_id()
            )),
            material_version: Some(1),
            error: refused.then(|| {
                (
                    "AccessDeniedException",
                    "the key policy refuses uid 0".into(),
                )
            }),
            extra,
        });
        trail.append(rec, Durability::Batched)?;
        if (i + 1) % 10_000 == 0 {
            trail.flush()?;
        }
        if (i + 1) % 100_000 == 0 {
            eprintln!("{} records, {:.1} s", i + 1, t1.elapsed().as_secs_f64());
        }
    }
    trail.flush()?;
    println!("{records} records in {:.1} s", t1.elapsed().as_secs_f64());
    Ok(())
}
