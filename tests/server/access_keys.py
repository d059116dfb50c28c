"""Access keys as principals, through boto3 against `kmsfs kms serve`. Run by
tests/server_grants.rs:

    python access_keys.py ENDPOINT ADMIN_ID ADMIN_SECRET K1_ID K1_SECRET K2_ID K2_SECRET

ADMIN acts as uid 0; K1 and K2 are two access keys of one user, uid 4242.
A grant or a policy statement naming `access-key:K1` is K1's alone; a Deny
naming K2 wins over an Allow for the user. Exits non-zero on any deviation.
"""

import sys

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

ENDPOINT, AK, SK, K1, S1, K2, S2 = sys.argv[1:8]
CFG = Config(retries={"max_attempts": 1, "mode": "standard"})


def client(ak, sk):
    return boto3.client("kms", endpoint_url=ENDPOINT, region_name="us-east-1",
                        aws_access_key_id=ak, aws_secret_access_key=sk, config=CFG)


kms, one, two = client(AK, SK), client(K1, S1), client(K2, S2)


def step(name):
    print("step:", name, flush=True)


def refused(code, fn, *args, **kw):
    try:
        fn(*args, **kw)
    except ClientError as e:
        got = e.response["Error"]["Code"]
        assert got == code, f"expected {code}, got {got}: {e}"
        return e.response["Error"]["Message"]
    raise AssertionError(f"expected {code}, the call succeeded")


def policy(*statements):
    admin = '{"Effect":"Allow","Principal":{"kmsfs":"uid:0"},"Action":"kms:*"}'
    return '{"Statement":[' + ",".join((admin,) + statements) + "]}"


ctx = {"project": "a"}
key = kms.create_key(Description="access keys")["KeyMetadata"]["KeyId"]
blob = kms.encrypt(KeyId=key, Plaintext=b"secret", EncryptionContext=ctx)["CiphertextBlob"]

step("without a grant, neither access key of the user decrypts")
for c in (one, two):
    refused("AccessDeniedException", c.decrypt, CiphertextBlob=blob, EncryptionContext=ctx)

step("a grant to access key 1 lets key 1 decrypt, not key 2 of the same user")
g = kms.create_grant(KeyId=key, GranteePrincipal="access-key:" + K1, Operations=["Decrypt"])
assert one.decrypt(CiphertextBlob=blob, EncryptionContext=ctx)["Plaintext"] == b"secret"
refused("AccessDeniedException", two.decrypt, CiphertextBlob=blob, EncryptionContext=ctx)
# Key 2's secret under key 1's id: the signature does not verify.
refused("InvalidSignatureException", client(K1, S2).decrypt, CiphertextBlob=blob,
        EncryptionContext=ctx)
listed = kms.list_grants(KeyId=key, GranteePrincipal="access-key:" + K1)["Grants"]
assert [x["GrantId"] for x in listed] == [g["GrantId"]], listed
assert kms.list_grants(KeyId=key, GranteePrincipal="access-key:" + K2)["Grants"] == []
refused("ValidationException", kms.create_grant, KeyId=key,
        GranteePrincipal="access-key:AKIA" + "A" * 16, Operations=["Decrypt"])
refused("ValidationException", kms.create_grant, KeyId=key,
        GranteePrincipal="access-key:" + K1.lower(), Operations=["Decrypt"])

step("the retiring access key retires; the other key of the user cannot")
r = kms.create_grant(KeyId=key, GranteePrincipal="access-key:" + K1, Operations=["Encrypt"],
                     RetiringPrincipal="access-key:" + K2)
refused("AccessDeniedException", one.retire_grant, KeyId=key, GrantId=r["GrantId"])
two.retire_grant(KeyId=key, GrantId=r["GrantId"])
kms.revoke_grant(KeyId=key, GrantId=g["GrantId"])
refused("AccessDeniedException", one.decrypt, CiphertextBlob=blob, EncryptionContext=ctx)

step("a policy Deny naming access key 2 wins over an Allow for the user")
kms.put_key_policy(KeyId=key, PolicyName="default", Policy=policy(
    '{"Effect":"Allow","Principal":{"kmsfs":"uid:4242"},"Action":"kms:Decrypt"}',
    '{"Effect":"Deny","Principal":{"kmsfs":"access-key:%s"},"Action":"kms:Decrypt"}' % K2))
assert one.decrypt(CiphertextBlob=blob, EncryptionContext=ctx)["Plaintext"] == b"secret"
refused("AccessDeniedException", two.decrypt, CiphertextBlob=blob, EncryptionContext=ctx)
# ... and over a grant to the user.
kms.create_grant(KeyId=key, GranteePrincipal="uid:4242", Operations=["Decrypt"])
refused("AccessDeniedException", two.decrypt, CiphertextBlob=blob, EncryptionContext=ctx)

step("a policy Allow naming access key 1 lets key 1 through, not key 2")
kms.put_key_policy(KeyId=key, PolicyName="default", Policy=policy(
    '{"Effect":"Allow","Principal":{"kmsfs":"access-key:%s"},"Action":["kms:Encrypt","kms:DescribeKey"]}' % K1))
assert one.encrypt(KeyId=key, Plaintext=b"mine")["KeyId"].endswith(key)
assert one.describe_key(KeyId=key)["KeyMetadata"]["KeyId"] == key
refused("AccessDeniedException", two.encrypt, KeyId=key, Plaintext=b"mine")
refused("AccessDeniedException", two.describe_key, KeyId=key)
refused("MalformedPolicyDocumentException", kms.put_key_policy, KeyId=key, PolicyName="default",
        Policy=policy('{"Effect":"Allow","Principal":{"kmsfs":"access-key:AKIA"},"Action":"kms:*"}'))

print("access keys: all steps passed", flush=True)
