//! Load on `kmsfs kms serve` (or any AWS KMS protocol endpoint): N concurrent
//! clients, each an `aws-sdk-kms` client with its own connections, signing
//! every request; for Decrypt and for GenerateDataKey, requests/s and p50/p99
//! latency over a bounded time, and the number of failed requests. Used by
//! scripts/kms_load.sh, which starts the server on loopback.
//!
//!   kms_load ENDPOINT KEY_ID [CLIENTS=16] [SECONDS=10]
//!
//! Credentials and region from the environment (AWS_ACCESS_KEY_ID, ...); an
//! https endpoint's CA from AWS_CA_BUNDLE (read here: the Rust SDK does not).
//! Exits 1 when any request failed.

use std::time::{Duration, Instant};

use aws_sdk_kms::Client;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;

#[derive(Clone, Copy)]
enum Op {
    Decrypt,
    GenerateDataKey,
}

async fn client(endpoint: &str) -> Client {
    let mut l = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        // No retries: a failed request is counted, not hidden.
        .retry_config(aws_config::retry::RetryConfig::disabled());
    if let Some(p) = std::env::var_os("AWS_CA_BUNDLE") {
        use aws_smithy_http_client::tls;
        let pem = std::fs::read(&p).expect("read AWS_CA_BUNDLE");
        let ctx = tls::TlsContext::builder()
            .with_trust_store(tls::TrustStore::empty().with_pem_certificate(pem))
            .build()
            .expect("TLS context");
        l = l.http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(tls::Provider::Rustls(
                    tls::rustls_provider::CryptoMode::AwsLc,
                ))
                .tls_context(ctx)
                .build_https(),
        );
    }
    Client::new(&l.load().await)
}

async fn phase(
    clients: &[Client],
    op: Op,
    key: &str,
    blob: &[u8],
    secs: u64,
) -> (Vec<Duration>, usize, Duration) {
    let until = Instant::now() + Duration::from_secs(secs);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for c in clients {
        let (c, key, blob) = (c.clone(), key.to_string(), blob.to_vec());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut failed) = (Vec::new(), 0usize);
            while Instant::now() < until {
                let s = Instant::now();
                let ok = match op {
                    Op::Decrypt => c
                        .decrypt()
                        .ciphertext_blob(Blob::new(blob.clone()))
                        .send()
                        .await
                        .is_ok(),
                    Op::GenerateDataKey => c
                        .generate_data_key()
                        .key_id(&key)
                        .key_spec(DataKeySpec::Aes256)
                        .send()
                        .await
                        .is_ok(),
                };
                if ok {
                    lat.push(s.elapsed());
                } else {
                    failed += 1;
                }
            }
            (lat, failed)
        }));
    }
    let (mut all, mut failed) = (Vec::new(), 0);
    for t in tasks {
        if let Ok((l, f)) = t.await {
            all.extend(l);
            failed += f;
        } else {
            failed += 1;
        }
    }
    (all, failed, t0.elapsed())
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: kms_load ENDPOINT KEY_ID [CLIENTS=16] [SECONDS=10]");
        std::process::exit(2);
    }
    let (endpoint, key) = (&args[1], &args[2]);
    let n: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(16);
    let secs: u64 = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(10);
    let mut clients = Vec::new();
    for _ in 0..n {
        clients.push(client(endpoint).await);
    }
    let blob = match clients[0]
        .generate_data_key()
        .key_id(key)
        .key_spec(DataKeySpec::Aes256)
        .send()
        .await
    {
        Ok(o) => o.ciphertext_blob.map(Blob::into_inner).unwrap_or_default(),
        Err(e) => {
            eprintln!(
                "kms_load: GenerateDataKey failed: {}",
                aws_sdk_kms::error::DisplayErrorContext(&e)
            );
            std::process::exit(1);
        }
    };
    let mut any_failed = false;
    println!(
        "{:<16} {:>7} {:>9} {:>10} {:>9} {:>9} {:>7}",
        "operation", "clients", "requests", "req/s", "p50 ms", "p99 ms", "failed"
    );
    for (name, op) in [
        ("Decrypt", Op::Decrypt),
        ("GenerateDataKey", Op::GenerateDataKey),
    ] {
        let (mut lat, failed, took) = phase(&clients, op, key, &blob, secs).await;
        lat.sort();
        any_failed |= failed > 0;
        println!(
            "{:<16} {:>7} {:>9} {:>10.0} {:>9.2} {:>9.2} {:>7}",
            name,
            n,
            lat.len(),
            lat.len() as f64 / took.as_secs_f64(),
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            failed
        );
    }
    if any_failed {
        std::process::exit(1);
    }
}
