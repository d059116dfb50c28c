"""boto3 and the aws CLI against `kmsfs kms serve --tls-cert/--tls-key`, run by
tests/server_tls.rs:

    python tls.py HTTPS_ENDPOINT ACCESS_KEY SECRET CA OTHER_CA AWS_CLI

Trusting CA (verify=, then AWS_CA_BUNDLE as both clients read it), a key is
made and a data key round-trips; trusting OTHER_CA only (a CA that did not
sign the server's certificate), both clients refuse the server; plain HTTP
to the TLS port gets no answer. Prints `tls: all steps passed`.
"""

import base64
import os
import subprocess
import sys

import boto3
import botocore.config
import botocore.exceptions

EP, AK, SK, CA, OTHER, AWS = sys.argv[1:7]
assert EP.startswith("https://"), EP
CONF = botocore.config.Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=10)


def client(verify=None):
    return boto3.client(
        "kms",
        endpoint_url=EP,
        region_name="us-east-1",
        aws_access_key_id=AK,
        aws_secret_access_key=SK,
        verify=verify,
        config=CONF,
    )


# Trusting the CA that signed the server's certificate.
kms = client(verify=CA)
key = kms.create_key(Description="over tls")["KeyMetadata"]["KeyId"]
dk = kms.generate_data_key(KeyId=key, KeySpec="AES_256")
back = kms.decrypt(CiphertextBlob=dk["CiphertextBlob"])
assert back["Plaintext"] == dk["Plaintext"], "the data key did not round-trip"
print("boto3 verify=CA: ok")

# AWS_CA_BUNDLE, read by botocore when verify is not given.
os.environ["AWS_CA_BUNDLE"] = CA
assert client().describe_key(KeyId=key)["KeyMetadata"]["Enabled"]
print("boto3 AWS_CA_BUNDLE: ok")

# A CA that did not sign the server's certificate: refused by the client.
os.environ["AWS_CA_BUNDLE"] = OTHER
try:
    client().describe_key(KeyId=key)
    raise SystemExit("boto3 talked to a server its CA bundle does not vouch for")
except botocore.exceptions.SSLError as e:
    assert "CERTIFICATE_VERIFY_FAILED" in str(e), e
print("boto3 other CA: refused")
try:
    client(verify=OTHER).describe_key(KeyId=key)
    raise SystemExit("boto3 verify=OTHER talked to the server")
except botocore.exceptions.SSLError:
    pass

env = dict(os.environ, AWS_ACCESS_KEY_ID=AK, AWS_SECRET_ACCESS_KEY=SK,
           AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE="/dev/null",
           AWS_SHARED_CREDENTIALS_FILE="/dev/null", AWS_MAX_ATTEMPTS="1")
cli = [AWS, "kms", "--endpoint-url", EP, "--output", "json"]
env["AWS_CA_BUNDLE"] = CA
blob = base64.b64encode(b"secret over tls").decode()
r = subprocess.run(cli + ["encrypt", "--key-id", key, "--plaintext", blob],
                   env=env, capture_output=True, text=True)
assert r.returncode == 0, r.stderr
print("aws CLI AWS_CA_BUNDLE: ok")
env["AWS_CA_BUNDLE"] = OTHER
r = subprocess.run(cli + ["describe-key", "--key-id", key], env=env,
                   capture_output=True, text=True)
assert r.returncode != 0, r.stdout
assert "SSL validation failed" in r.stderr or "CERTIFICATE_VERIFY_FAILED" in r.stderr, r.stderr
print("aws CLI other CA: refused")

# Plain HTTP to the TLS port: no answer a client could take for one.
os.environ.pop("AWS_CA_BUNDLE")
plain = boto3.client("kms", endpoint_url="http://" + EP[len("https://"):],
                     region_name="us-east-1", aws_access_key_id=AK,
                     aws_secret_access_key=SK, config=CONF)
try:
    plain.describe_key(KeyId=key)
    raise SystemExit("the TLS port answered plain HTTP")
except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError) as e:
    print("plain HTTP: refused:", type(e).__name__)

print("tls: all steps passed")
