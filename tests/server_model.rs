//! docs/PROTOCOL.md's table of every AWS KMS operation, checked against
//! botocore's service model in the test venv and against the running server
//! (tests/server/model.py): every operation of the model has its row; an
//! operation the table calls served is dispatched, one it calls refused is
//! answered UnsupportedOperationException; and each served operation's
//! answer has only members of the model's output shape, at every depth,
//! with its required members and types.

mod common;

use std::process::Command;

use common::*;

#[test]
fn the_operation_table_and_every_answer_match_botocores_model() {
    let test = "the_operation_table_and_every_answer_match_botocores_model";
    let Some(venv) = venv(test) else { return };
    let ks = Ks::new();
    let (ak, sk) = access_key(&ks, 0);
    let doc = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/PROTOCOL.md");
    let mut server = Server::start(&ks, "127.0.0.1:0", &[]);
    let out = Command::new(venv.join("bin/python"))
        .arg(script("model.py"))
        .args([&server.endpoint(), &ak, &sk, doc.to_str().expect("path")])
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("run python");
    server.stop();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("model: all steps passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
