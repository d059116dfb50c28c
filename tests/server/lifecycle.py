"""The whole key lifecycle against `kmsfs kms serve`, first with boto3, then
with the aws CLI (`--endpoint-url`). Run by tests/server_aws_clients.rs:

    python lifecycle.py ENDPOINT ADMIN_KEY_ID ADMIN_SECRET OTHER_KEY_ID OTHER_SECRET AWS_CLI WORKDIR

ADMIN acts as uid 0, OTHER as another uid (for the key policy refusal).
Exits non-zero (an assertion or an unexpected error) on any deviation; prints
one line per step.
"""

import base64
import json
import os
import subprocess
import sys

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

ENDPOINT, AK, SK, AK2, SK2, AWS_CLI, WORK = sys.argv[1:8]
CFG = Config(retries={"max_attempts": 1, "mode": "standard"})


def client(ak, sk):
    return boto3.client(
        "kms",
        endpoint_url=ENDPOINT,
        region_name="us-east-1",
        aws_access_key_id=ak,
        aws_secret_access_key=sk,
        config=CFG,
    )


kms = client(AK, SK)
other = client(AK2, SK2)


def step(name):
    print("step:", name, flush=True)


def refused(code, fn, *args, **kw):
    try:
        fn(*args, **kw)
    except ClientError as e:
        got = e.response["Error"]["Code"]
        assert got == code, f"expected {code}, got {got}: {e}"
        return e
    raise AssertionError(f"expected {code}, the call succeeded")


step("create, describe, list with pagination")
k1 = kms.create_key(Description="lifecycle one")["KeyMetadata"]
assert k1["KeyState"] == "Enabled" and k1["Enabled"] is True, k1
assert k1["KeySpec"] == "SYMMETRIC_DEFAULT" and k1["KeyUsage"] == "ENCRYPT_DECRYPT"
key = k1["KeyId"]
key2 = kms.create_key(Description="lifecycle two")["KeyMetadata"]["KeyId"]
kms.create_key(Description="lifecycle three")
d = kms.describe_key(KeyId=key)["KeyMetadata"]
assert d["Arn"] == k1["Arn"] and d["Description"] == "lifecycle one", d
first = kms.list_keys(Limit=2)
assert len(first["Keys"]) == 2 and first["Truncated"] is True and first["NextMarker"], first
rest = kms.list_keys(Limit=2, Marker=first["NextMarker"])
assert rest["Truncated"] is False, rest
ids = [k["KeyId"] for k in first["Keys"] + rest["Keys"]]
assert len(ids) == 3 and len(set(ids)) == 3 and key in ids and key2 in ids, ids
paged = [k["KeyId"] for p in kms.get_paginator("list_keys").paginate(PaginationConfig={"PageSize": 1}) for k in p["Keys"]]
assert paged == ids, (paged, ids)
refused("NotFoundException", kms.describe_key, KeyId="00000000-0000-0000-0000-000000000000")

step("alias, encrypt, decrypt")
kms.create_alias(AliasName="alias/lifecycle", TargetKeyId=key)
ctx = {"purpose": "test", "file": "a.txt"}
enc = kms.encrypt(KeyId="alias/lifecycle", Plaintext=b"hello, kms", EncryptionContext=ctx)
assert enc["KeyId"] == k1["Arn"], enc
blob = enc["CiphertextBlob"]
dec = kms.decrypt(CiphertextBlob=blob, EncryptionContext=ctx)
assert dec["Plaintext"] == b"hello, kms" and dec["KeyId"] == k1["Arn"], dec
refused("InvalidCiphertextException", kms.decrypt, CiphertextBlob=blob, EncryptionContext={"purpose": "other"})
refused("IncorrectKeyException", kms.decrypt, CiphertextBlob=blob, EncryptionContext=ctx, KeyId=key2)
tampered = bytearray(blob)
tampered[-1] ^= 1
refused("InvalidCiphertextException", kms.decrypt, CiphertextBlob=bytes(tampered), EncryptionContext=ctx)

step("generate data key, without plaintext, random, re-encrypt")
dk = kms.generate_data_key(KeyId=key, KeySpec="AES_256", EncryptionContext=ctx)
assert len(dk["Plaintext"]) == 32
assert kms.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=ctx)["Plaintext"] == dk["Plaintext"]
assert len(kms.generate_data_key(KeyId=key, NumberOfBytes=64)["Plaintext"]) == 64
wp = kms.generate_data_key_without_plaintext(KeyId=key, KeySpec="AES_128")
assert "Plaintext" not in wp and len(kms.decrypt(CiphertextBlob=wp["CiphertextBlob"])["Plaintext"]) == 16
r = kms.generate_random(NumberOfBytes=48)["Plaintext"]
assert len(r) == 48 and r != kms.generate_random(NumberOfBytes=48)["Plaintext"]
re = kms.re_encrypt(
    CiphertextBlob=blob, SourceEncryptionContext=ctx, DestinationKeyId=key2, DestinationEncryptionContext=ctx
)
assert re["SourceKeyId"] == k1["Arn"] and re["KeyId"].endswith(key2), re
assert kms.decrypt(CiphertextBlob=re["CiphertextBlob"], EncryptionContext=ctx)["Plaintext"] == b"hello, kms"

step("aliases: update, list, delete")
kms.update_alias(AliasName="alias/lifecycle", TargetKeyId=key2)
al = kms.list_aliases(KeyId=key2)["Aliases"]
assert [a["AliasName"] for a in al] == ["alias/lifecycle"], al
assert kms.encrypt(KeyId="alias/lifecycle", Plaintext=b"x")["KeyId"].endswith(key2)
refused("AlreadyExistsException", kms.create_alias, AliasName="alias/lifecycle", TargetKeyId=key)
kms.delete_alias(AliasName="alias/lifecycle")
refused("NotFoundException", kms.encrypt, KeyId="alias/lifecycle", Plaintext=b"x")

step("disable refuses, enable again")
kms.disable_key(KeyId=key)
assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Disabled"
refused("DisabledException", kms.encrypt, KeyId=key, Plaintext=b"x")
refused("DisabledException", kms.decrypt, CiphertextBlob=blob, EncryptionContext=ctx)
refused("DisabledException", kms.generate_data_key, KeyId=key, KeySpec="AES_256")
kms.enable_key(KeyId=key)
assert kms.decrypt(CiphertextBlob=blob, EncryptionContext=ctx)["Plaintext"] == b"hello, kms"

step("rotation")
kms.enable_key_rotation(KeyId=key, RotationPeriodInDays=90)
st = kms.get_key_rotation_status(KeyId=key)
assert st["KeyRotationEnabled"] is True and st["RotationPeriodInDays"] == 90, st
kms.rotate_key_on_demand(KeyId=key)
rot = kms.list_key_rotations(KeyId=key)["Rotations"]
assert len(rot) == 1 and rot[0]["RotationType"] == "ON_DEMAND", rot
assert kms.decrypt(CiphertextBlob=blob, EncryptionContext=ctx)["Plaintext"] == b"hello, kms"
new_blob = kms.encrypt(KeyId=key, Plaintext=b"after rotation")["CiphertextBlob"]
assert kms.decrypt(CiphertextBlob=new_blob)["Plaintext"] == b"after rotation"
kms.disable_key_rotation(KeyId=key)
assert kms.get_key_rotation_status(KeyId=key)["KeyRotationEnabled"] is False

step("schedule and cancel deletion")
sd = kms.schedule_key_deletion(KeyId=key2, PendingWindowInDays=7)
assert sd["KeyState"] == "PendingDeletion" and sd["PendingWindowInDays"] == 7, sd
refused("KMSInvalidStateException", kms.encrypt, KeyId=key2, Plaintext=b"x")
refused("ValidationException", kms.schedule_key_deletion, KeyId=key, PendingWindowInDays=3)
kms.cancel_key_deletion(KeyId=key2)
assert kms.describe_key(KeyId=key2)["KeyMetadata"]["KeyState"] == "Disabled"
kms.enable_key(KeyId=key2)

step("key policy and a refusal under it")
assert "Statement" in json.loads(kms.get_key_policy(KeyId=key, PolicyName="default")["Policy"])
# A key without a policy serves only root and the keystore's owner here.
refused("AccessDeniedException", other.decrypt, CiphertextBlob=blob, EncryptionContext=ctx)
policy = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"kmsfs": ["uid:0"]}, "Action": "kms:*", "Resource": "*"}],
}
kms.put_key_policy(KeyId=key, PolicyName="default", Policy=json.dumps(policy))
got = json.loads(kms.get_key_policy(KeyId=key, PolicyName="default")["Policy"])
assert got["Statement"][0]["Principal"] == {"kmsfs": ["uid:0"]}, got
refused("AccessDeniedException", other.decrypt, CiphertextBlob=blob, EncryptionContext=ctx)
refused("AccessDeniedException", other.generate_data_key, KeyId=key, KeySpec="AES_256")
assert kms.decrypt(CiphertextBlob=blob, EncryptionContext=ctx)["Plaintext"] == b"hello, kms"
refused("MalformedPolicyDocumentException", kms.put_key_policy, KeyId=key, PolicyName="default", Policy="{not json")
# Administration, like any use of a key without a policy, is for root and
# the keystore's owner, not for uid 4242.
refused("AccessDeniedException", other.disable_key, KeyId=key2)
refused("AccessDeniedException", other.put_key_policy, KeyId=key2, PolicyName="default", Policy=json.dumps(policy))
refused("AccessDeniedException", other.create_key)
refused("AccessDeniedException", other.describe_key, KeyId=key2)
# A key policy governs administration through the server: the policy of
# `key` names only uid 0, so uid 4242 may not disable it; a policy on key2
# that allows uid 4242 to disable and enable (and nothing else) lets it.
refused("AccessDeniedException", other.disable_key, KeyId=key)
admin_policy = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Principal": {"kmsfs": ["uid:0"]}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Allow", "Principal": {"kmsfs": ["uid:4242"]},
         "Action": ["kms:DisableKey", "kms:EnableKey", "kms:DescribeKey"], "Resource": "*"},
    ],
}
kms.put_key_policy(KeyId=key2, PolicyName="default", Policy=json.dumps(admin_policy))
other.disable_key(KeyId=key2)
assert kms.describe_key(KeyId=key2)["KeyMetadata"]["KeyState"] == "Disabled"
other.enable_key(KeyId=key2)
refused("AccessDeniedException", other.schedule_key_deletion, KeyId=key2, PendingWindowInDays=7)
assert kms.describe_key(KeyId=key2)["KeyMetadata"]["KeyState"] == "Enabled"

step("import key material wrapped with openssl")
ext = kms.create_key(Origin="EXTERNAL", Description="imported")["KeyMetadata"]
assert ext["KeyState"] == "PendingImport" and ext["Origin"] == "EXTERNAL", ext
refused("KMSInvalidStateException", kms.encrypt, KeyId=ext["KeyId"], Plaintext=b"x")
p = kms.get_parameters_for_import(
    KeyId=ext["KeyId"], WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048"
)
pub = os.path.join(WORK, "wrapping.der")
material = os.path.join(WORK, "material.bin")
wrapped = os.path.join(WORK, "wrapped.bin")
with open(pub, "wb") as f:
    f.write(p["PublicKey"])
with open(material, "wb") as f:
    f.write(os.urandom(32))
subprocess.run(
    ["openssl", "pkeyutl", "-encrypt", "-pubin", "-keyform", "DER", "-inkey", pub, "-in", material, "-out", wrapped,
     "-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256", "-pkeyopt", "rsa_mgf1_md:sha256"],
    check=True,
)
with open(wrapped, "rb") as f:
    enc_material = f.read()
refused("InvalidImportTokenException", kms.import_key_material, KeyId=ext["KeyId"], ImportToken=b"garbage" * 8,
        EncryptedKeyMaterial=enc_material, ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
kms.import_key_material(
    KeyId=ext["KeyId"], ImportToken=p["ImportToken"], EncryptedKeyMaterial=enc_material,
    ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE",
)
assert kms.describe_key(KeyId=ext["KeyId"])["KeyMetadata"]["KeyState"] == "Enabled"
ib = kms.encrypt(KeyId=ext["KeyId"], Plaintext=b"imported")["CiphertextBlob"]
assert kms.decrypt(CiphertextBlob=ib)["Plaintext"] == b"imported"
kms.delete_imported_key_material(KeyId=ext["KeyId"])
assert kms.describe_key(KeyId=ext["KeyId"])["KeyMetadata"]["KeyState"] == "PendingImport"
refused("KMSInvalidStateException", kms.decrypt, CiphertextBlob=ib)

# --- the aws CLI ---------------------------------------------------------
env = dict(os.environ, AWS_ACCESS_KEY_ID=AK, AWS_SECRET_ACCESS_KEY=SK, AWS_DEFAULT_REGION="us-east-1",
           AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null")


def aws(*args, ok=True):
    r = subprocess.run([AWS_CLI, "kms", *args, "--endpoint-url", ENDPOINT, "--output", "json"],
                       env=env, capture_output=True, text=True)
    if ok:
        assert r.returncode == 0, f"aws kms {args}: {r.stderr}"
        return json.loads(r.stdout) if r.stdout.strip() else {}
    assert r.returncode != 0, f"aws kms {args} succeeded"
    return r.stderr


step("aws CLI: create, alias, encrypt, decrypt")
ck = aws("create-key", "--description", "from the aws cli")["KeyMetadata"]["KeyId"]
aws("create-alias", "--alias-name", "alias/cli", "--target-key-id", ck)
assert any(a["AliasName"] == "alias/cli" for a in aws("list-aliases")["Aliases"])
pt = os.path.join(WORK, "pt.txt")
with open(pt, "wb") as f:
    f.write(b"from the aws cli")
e = aws("encrypt", "--key-id", "alias/cli", "--plaintext", "fileb://" + pt, "--encryption-context", "k=v")
ct = os.path.join(WORK, "ct.bin")
with open(ct, "wb") as f:
    f.write(base64.b64decode(e["CiphertextBlob"]))
d = aws("decrypt", "--ciphertext-blob", "fileb://" + ct, "--encryption-context", "k=v")
assert base64.b64decode(d["Plaintext"]) == b"from the aws cli", d

step("aws CLI: data key, disable and the refusal, enable")
g = aws("generate-data-key", "--key-id", ck, "--key-spec", "AES_256")
assert len(base64.b64decode(g["Plaintext"])) == 32
aws("disable-key", "--key-id", ck)
err = aws("encrypt", "--key-id", ck, "--plaintext", "fileb://" + pt, ok=False)
assert "DisabledException" in err, err
aws("enable-key", "--key-id", ck)

step("aws CLI: rotation, deletion, policy")
aws("enable-key-rotation", "--key-id", ck)
assert aws("get-key-rotation-status", "--key-id", ck)["KeyRotationEnabled"] is True
aws("rotate-key-on-demand", "--key-id", ck)
s = aws("schedule-key-deletion", "--key-id", ck, "--pending-window-in-days", "7")
assert s["KeyState"] == "PendingDeletion", s
err = aws("decrypt", "--ciphertext-blob", "fileb://" + ct, "--encryption-context", "k=v", ok=False)
assert "KMSInvalidStateException" in err, err
aws("cancel-key-deletion", "--key-id", ck)
aws("enable-key", "--key-id", ck)
assert "Policy" in aws("get-key-policy", "--key-id", ck, "--policy-name", "default")
err = aws("describe-key", "--key-id", "alias/none", ok=False)
assert "NotFoundException" in err, err

print("lifecycle: all steps passed")
