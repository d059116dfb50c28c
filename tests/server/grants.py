"""Grants through boto3 against `kmsfs kms serve`. Run by tests/server_grants.rs:

    python grants.py ENDPOINT ADMIN_KEY_ID ADMIN_SECRET OTHER_KEY_ID OTHER_SECRET

ADMIN acts as uid 0, OTHER as uid 4242. Exits non-zero on any deviation.
"""

import sys

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

ENDPOINT, AK, SK, AK2, SK2 = sys.argv[1:6]
CFG = Config(retries={"max_attempts": 1, "mode": "standard"})


def client(ak, sk):
    return boto3.client("kms", endpoint_url=ENDPOINT, region_name="us-east-1",
                        aws_access_key_id=ak, aws_secret_access_key=sk, config=CFG)


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
        return e.response["Error"]["Message"]
    raise AssertionError(f"expected {code}, the call succeeded")


ctx = {"project": "a"}
key = kms.create_key(Description="granted")["KeyMetadata"]["KeyId"]
blob = kms.encrypt(KeyId=key, Plaintext=b"secret", EncryptionContext=ctx)["CiphertextBlob"]

step("without a grant, another user cannot decrypt")
refused("AccessDeniedException", other.decrypt, CiphertextBlob=blob, EncryptionContext=ctx)
refused("AccessDeniedException", other.create_grant, KeyId=key, GranteePrincipal="uid:4242", Operations=["Decrypt"])

step("with a grant, he can; the grant is listed")
g = kms.create_grant(KeyId=key, GranteePrincipal="uid:4242", RetiringPrincipal="uid:4242",
                     Operations=["Decrypt", "Encrypt"], Name="for-4242")
assert len(g["GrantId"]) == 64 and g["GrantToken"].startswith("kmsfs-grant:"), g
again = kms.create_grant(KeyId=key, GranteePrincipal="uid:4242", RetiringPrincipal="uid:4242",
                         Operations=["Decrypt", "Encrypt"], Name="for-4242")
assert again["GrantId"] == g["GrantId"], (again, g)
assert other.decrypt(CiphertextBlob=blob, EncryptionContext=ctx, GrantTokens=[g["GrantToken"]])["Plaintext"] == b"secret"
assert other.encrypt(KeyId=key, Plaintext=b"mine")["KeyId"].endswith(key)
refused("AccessDeniedException", other.generate_data_key, KeyId=key, KeySpec="AES_256")
refused("AccessDeniedException", other.describe_key, KeyId=key)
refused("InvalidGrantTokenException", other.decrypt, CiphertextBlob=blob, EncryptionContext=ctx,
        GrantTokens=["kmsfs-grant:" + "0" * 64 + ":" + "0" * 32])
grants = kms.list_grants(KeyId=key)["Grants"]
assert [x["GrantId"] for x in grants] == [g["GrantId"]], grants
assert grants[0]["GranteePrincipal"] == "uid:4242" and grants[0]["Name"] == "for-4242", grants
assert sorted(grants[0]["Operations"]) == ["Decrypt", "Encrypt"], grants
retirable = kms.list_retirable_grants(RetiringPrincipal="uid:4242")["Grants"]
assert [x["GrantId"] for x in retirable] == [g["GrantId"]], retirable
refused("DryRunOperationException", kms.create_grant, KeyId=key, GranteePrincipal="uid:4243",
        Operations=["Decrypt"], DryRun=True)
assert len(kms.list_grants(KeyId=key)["Grants"]) == 1

step("the retiring principal retires it; then he is refused")
other.retire_grant(GrantToken=g["GrantToken"])
refused("AccessDeniedException", other.decrypt, CiphertextBlob=blob, EncryptionContext=ctx)
assert kms.list_grants(KeyId=key)["Grants"] == []
refused("InvalidGrantTokenException", other.decrypt, CiphertextBlob=blob, EncryptionContext=ctx,
        GrantTokens=[g["GrantToken"]])

step("a malformed or unknown grant token is InvalidGrantTokenException, as in AWS")
for bad in ("not-a-token", "kmsfs-grant:xyz", "kmsfs-grant:" + "0" * 64 + ":" + "0" * 32):
    refused("InvalidGrantTokenException", kms.decrypt, CiphertextBlob=blob, EncryptionContext=ctx,
            GrantTokens=[bad])
    refused("InvalidGrantTokenException", kms.retire_grant, GrantToken=bad)
    refused("InvalidGrantTokenException", kms.generate_data_key, KeyId=key, KeySpec="AES_256",
            GrantTokens=[bad])
# The token of a grant that is gone.
refused("InvalidGrantTokenException", kms.retire_grant, GrantToken=g["GrantToken"])

step("a revoked grant refuses")
r = kms.create_grant(KeyId=key, GranteePrincipal="uid:4242", Operations=["Decrypt"])
assert other.decrypt(CiphertextBlob=blob, EncryptionContext=ctx)["Plaintext"] == b"secret"
refused("AccessDeniedException", other.revoke_grant, KeyId=key, GrantId=r["GrantId"])
refused("AccessDeniedException", other.retire_grant, KeyId=key, GrantId=r["GrantId"])
kms.revoke_grant(KeyId=key, GrantId=r["GrantId"])
refused("AccessDeniedException", other.decrypt, CiphertextBlob=blob, EncryptionContext=ctx)
refused("InvalidGrantIdException", kms.revoke_grant, KeyId=key, GrantId=r["GrantId"])

step("constraints: the context must match")
c = kms.create_grant(KeyId=key, GranteePrincipal="uid:4242", Operations=["Decrypt"],
                     Constraints={"EncryptionContextEquals": {"project": "a"}})
assert other.decrypt(CiphertextBlob=blob, EncryptionContext=ctx)["Plaintext"] == b"secret"
blob_b = kms.encrypt(KeyId=key, Plaintext=b"other", EncryptionContext={"project": "b"})["CiphertextBlob"]
refused("AccessDeniedException", other.decrypt, CiphertextBlob=blob_b, EncryptionContext={"project": "b"})
kms.revoke_grant(KeyId=key, GrantId=c["GrantId"])
kms.create_grant(KeyId=key, GranteePrincipal="uid:4242", Operations=["Decrypt"],
                 Constraints={"EncryptionContextSubset": {"project": "b"}})
blob_bx = kms.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext={"project": "b", "n": "1"})["CiphertextBlob"]
assert other.decrypt(CiphertextBlob=blob_bx, EncryptionContext={"project": "b", "n": "1"})["Plaintext"] == b"x"
refused("AccessDeniedException", other.decrypt, CiphertextBlob=blob, EncryptionContext=ctx)

step("an explicit Deny in the key policy wins over a grant")
kms.create_grant(KeyId=key, GranteePrincipal="uid:4242", Operations=["Decrypt"])
assert other.decrypt(CiphertextBlob=blob, EncryptionContext=ctx)["Plaintext"] == b"secret"
policy = ('{"Statement":[{"Effect":"Allow","Principal":{"kmsfs":"uid:0"},"Action":"kms:*"},'
          '{"Effect":"Deny","Principal":{"kmsfs":"uid:4242"},"Action":"kms:Decrypt"}]}')
kms.put_key_policy(KeyId=key, PolicyName="default", Policy=policy)
refused("AccessDeniedException", other.decrypt, CiphertextBlob=blob, EncryptionContext=ctx)
# A policy that says nothing of him: the grant allows again.
kms.put_key_policy(KeyId=key, PolicyName="default",
                   Policy='{"Statement":[{"Effect":"Allow","Principal":{"kmsfs":"uid:0"},"Action":"kms:*"}]}')
assert other.decrypt(CiphertextBlob=blob, EncryptionContext=ctx)["Plaintext"] == b"secret"

step("grant operations and principals AWS's way")
refused("ValidationException", kms.create_grant, KeyId=key, GranteePrincipal="uid:4242", Operations=["Sign"])
refused("ValidationException", kms.create_grant, KeyId=key, GranteePrincipal="*", Operations=["Decrypt"])
refused("NotFoundException", kms.create_grant, KeyId="alias/none", GranteePrincipal="uid:4242", Operations=["Decrypt"])

print("grants: all steps passed", flush=True)
