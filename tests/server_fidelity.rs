//! `kmsfs kms serve` answers as AWS KMS does, checked through boto3 against
//! botocore's service model (tests/server/fidelity.py): KeyMetadata's
//! fields, ARNs `arn:aws:kms:<region>:<account>:key/<id>` in the request's
//! region (or the one `--region` fixes), CreateKey's refusals, aliases,
//! policies, tags, DryRun and what kmsfs does not serve.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn run_python(venv: &Path, script: &Path, args: &[&str]) -> String {
    let out = Command::new(venv.join("bin/python"))
        .arg(script)
        .args(args)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{} failed:\n{stdout}\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn boto3_gets_the_answers_aws_gives() {
    let test = "boto3_gets_the_answers_aws_gives";
    let Some(venv) = venv(test) else { return };
    let ks = Ks::new();
    let (ak, sk) = access_key(&ks, 0);
    let (ak2, sk2) = access_key(&ks, 4242);
    let ks_id = ks.json(&["audit", "public-key"])["KeystoreId"]
        .as_str()
        .expect("keystore id")
        .to_string();
    let mut server = Server::start(&ks, "127.0.0.1:0", &[]);
    let out = run_python(
        &venv,
        &script("fidelity.py"),
        &[&server.endpoint(), &ak, &sk, &ak2, &sk2, &ks_id],
    );
    assert!(out.contains("fidelity: all steps passed"), "{out}");
    let log = server.stop();
    assert!(log.contains("TagResource="), "{log}");
    // The command line names keys by the same account, in its own region.
    let keys = ks.json(&["kms", "list-keys"]);
    let arn = keys["Keys"][0]["KeyArn"].as_str().expect("arn").to_string();
    let d = ks.json(&["kms", "describe-key", "--key-id", &arn]);
    let account = d["KeyMetadata"]["AWSAccountId"].as_str().expect("account");
    assert!(
        arn.starts_with(&format!("arn:aws:kms:local:{account}:key/")),
        "{arn}"
    );
}

/// `--region` fixes the region of ARNs: a request signed for another
/// region is refused, as AWS refuses a credential scoped elsewhere.
#[test]
fn a_fixed_region_names_arns_and_refuses_other_regions() {
    let test = "a_fixed_region_names_arns_and_refuses_other_regions";
    let Some(venv) = venv(test) else { return };
    let ks = Ks::new();
    let (ak, sk) = access_key(&ks, 0);
    let server = Server::start(&ks, "127.0.0.1:0", &["--region", "eu-central-1"]);
    let probe = ks.file("probe.py");
    std::fs::write(
        &probe,
        r#"
import sys, boto3
from botocore.config import Config
from botocore.exceptions import ClientError
ep, ak, sk = sys.argv[1:4]
def c(region):
    return boto3.client("kms", endpoint_url=ep, region_name=region, aws_access_key_id=ak,
                        aws_secret_access_key=sk, config=Config(retries={"max_attempts": 1}))
m = c("eu-central-1").create_key()["KeyMetadata"]
assert m["Arn"].startswith("arn:aws:kms:eu-central-1:" + m["AWSAccountId"] + ":key/"), m
try:
    c("us-east-1").describe_key(KeyId=m["KeyId"])
    raise AssertionError("a request signed for us-east-1 was served")
except ClientError as e:
    assert e.response["Error"]["Code"] == "InvalidSignatureException", e
print("region: ok")
"#,
    )
    .expect("write probe");
    let out = run_python(&venv, &probe, &[&server.endpoint(), &ak, &sk]);
    assert!(out.contains("region: ok"), "{out}");
}
