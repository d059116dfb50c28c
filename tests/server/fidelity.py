"""Answers as AWS KMS gives them (botocore's service model is the contract),
through boto3 against `kmsfs kms serve`. Run by tests/server_fidelity.rs:

    python fidelity.py ENDPOINT ADMIN_KEY_ID ADMIN_SECRET OTHER_KEY_ID OTHER_SECRET KEYSTORE_ID

ADMIN acts as uid 0, OTHER as another uid. Exits non-zero on any deviation;
prints one line per step.
"""

import re
import sys

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

ENDPOINT, AK, SK, AK2, SK2, KEYSTORE_ID = sys.argv[1:7]
CFG = Config(retries={"max_attempts": 1, "mode": "standard"})
# Without client-side validation: the server's own answers are tested.
RAW = Config(retries={"max_attempts": 1, "mode": "standard"}, parameter_validation=False)


def client(ak, sk, region="us-east-1", config=CFG):
    return boto3.client(
        "kms",
        endpoint_url=ENDPOINT,
        region_name=region,
        aws_access_key_id=ak,
        aws_secret_access_key=sk,
        config=config,
    )


kms = client(AK, SK)
eu = client(AK, SK, region="eu-west-1")
raw = client(AK, SK, config=RAW)
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


step("KeyMetadata: AWSAccountId, CustomerMasterKeySpec, ARNs in the request's region")
m = kms.create_key(Description="fidelity")["KeyMetadata"]
key = m["KeyId"]
account = m["AWSAccountId"]
assert re.fullmatch(r"[0-9]{12}", account), m
assert m["Arn"] == f"arn:aws:kms:us-east-1:{account}:key/{key}", m
assert m["CustomerMasterKeySpec"] == "SYMMETRIC_DEFAULT" and m["KeySpec"] == "SYMMETRIC_DEFAULT", m
assert m["MultiRegion"] is False and m["KeyManager"] == "CUSTOMER", m
assert eu.describe_key(KeyId=key)["KeyMetadata"]["Arn"] == f"arn:aws:kms:eu-west-1:{account}:key/{key}"
# Both ARN forms, in any region, name the key.
for arn in (
    f"arn:aws:kms:us-east-1:{account}:key/{key}",
    f"arn:aws:kms:eu-west-1:{account}:key/{key}",
    f"arn:kmsfs:kms:local:{KEYSTORE_ID}:key/{key}",
):
    assert kms.describe_key(KeyId=arn)["KeyMetadata"]["KeyId"] == key, arn
refused("NotFoundException", kms.describe_key, KeyId=f"arn:aws:kms:us-east-1:111122223333:key/{key}")
enc = eu.encrypt(KeyId=key, Plaintext=b"x")
assert enc["KeyId"] == f"arn:aws:kms:eu-west-1:{account}:key/{key}", enc
dec = eu.decrypt(CiphertextBlob=enc["CiphertextBlob"])
assert dec["KeyId"] == f"arn:aws:kms:eu-west-1:{account}:key/{key}", dec

step("ListAliases: CreationDate and LastUpdatedDate; alias ARNs")
kms.create_alias(AliasName="alias/fidelity", TargetKeyId=key)
a = [x for x in kms.list_aliases()["Aliases"] if x["AliasName"] == "alias/fidelity"][0]
assert a["AliasArn"] == f"arn:aws:kms:us-east-1:{account}:alias/fidelity", a
assert a["CreationDate"] <= a["LastUpdatedDate"], a
key2 = kms.create_key()["KeyMetadata"]["KeyId"]
kms.update_alias(AliasName="alias/fidelity", TargetKeyId=key2)
b = [x for x in kms.list_aliases()["Aliases"] if x["AliasName"] == "alias/fidelity"][0]
assert b["CreationDate"] == a["CreationDate"] and b["LastUpdatedDate"] >= a["LastUpdatedDate"], b
assert b["TargetKeyId"] == key2, b

step("CreateKey: unknown KeySpec, valid but unserved specs, MultiRegion, Tags kept")
msg = refused("ValidationException", raw.create_key, KeySpec="AES_512")
assert "1 validation error detected: Value 'AES_512' at 'keySpec'" in msg, msg
for spec in ("RSA_2048", "HMAC_256", "ECC_NIST_P256"):
    msg = refused("UnsupportedOperationException", kms.create_key, KeySpec=spec)
    assert spec in msg and "symmetric" in msg, msg
refused("ValidationException", raw.create_key, KeyUsage="ENCRYPT_ONLY")
refused("UnsupportedOperationException", kms.create_key, KeyUsage="SIGN_VERIFY")
msg = refused("UnsupportedOperationException", kms.create_key, MultiRegion=True)
assert "MultiRegion" in msg, msg
refused("UnsupportedOperationException", kms.create_key, Origin="AWS_CLOUDHSM")
refused("UnsupportedOperationException", kms.create_key, CustomKeyStoreId="cks-1234567890abcdef0")
before = len(kms.list_keys(Limit=1000)["Keys"])
tagged = kms.create_key(Tags=[{"TagKey": "team", "TagValue": "db"}, {"TagKey": "env", "TagValue": ""}])
tk = tagged["KeyMetadata"]["KeyId"]
tags = kms.list_resource_tags(KeyId=tk)["Tags"]
assert tags == [{"TagKey": "env", "TagValue": ""}, {"TagKey": "team", "TagValue": "db"}], tags
refused("TagException", kms.create_key, Tags=[{"TagKey": "aws:reserved", "TagValue": "x"}])
assert len(kms.list_keys(Limit=1000)["Keys"]) == before + 1, "a refused CreateKey made a key"

step("rotation and PutKeyPolicy take a key id or key ARN, not an alias")
for fn, kw in (
    (kms.enable_key_rotation, {}),
    (kms.disable_key_rotation, {}),
    (kms.get_key_rotation_status, {}),
    (kms.put_key_policy, {"PolicyName": "default", "Policy": '{"Statement":[]}'}),
):
    refused("NotFoundException", fn, KeyId="alias/fidelity", **kw)
    refused("NotFoundException", fn, KeyId=f"arn:aws:kms:us-east-1:{account}:alias/fidelity", **kw)
kms.enable_key_rotation(KeyId=f"arn:aws:kms:us-east-1:{account}:key/{key}")
assert kms.get_key_rotation_status(KeyId=key)["KeyRotationEnabled"] is True

step("CreateAlias: an alias as target, names outside AWS's characters")
refused("ValidationException", kms.create_alias, AliasName="alias/second", TargetKeyId="alias/fidelity")
refused("ValidationException", kms.update_alias, AliasName="alias/fidelity", TargetKeyId="alias/fidelity")
refused("ValidationException", kms.create_alias, AliasName="alias/a:b", TargetKeyId=key)
refused("ValidationException", raw.create_alias, AliasName="alias/a b", TargetKeyId=key)

step("policies: not JSON, lockout: MalformedPolicyDocumentException")
refused("MalformedPolicyDocumentException", kms.put_key_policy, KeyId=key, PolicyName="default", Policy="{not json")
refused("MalformedPolicyDocumentException", kms.create_key, Policy="{not json")
lockout = '{"Statement":[{"Effect":"Allow","Principal":{"kmsfs":"uid:4242"},"Action":"kms:Decrypt"}]}'
refused("MalformedPolicyDocumentException", kms.put_key_policy, KeyId=key, PolicyName="default", Policy=lockout)
kms.put_key_policy(KeyId=key, PolicyName="default", Policy=lockout, BypassPolicyLockoutSafetyCheck=True)
# The bypassed lockout holds: even the owner may no longer read its policies.
refused("AccessDeniedException", kms.list_key_policies, KeyId=key)

step("validation messages in AWS's words")
msg = refused("ValidationException", kms.encrypt, KeyId=key2, Plaintext=b"x" * 4097)
assert msg == (
    "1 validation error detected: Value at 'plaintext' failed to satisfy constraint: "
    "Member must have length less than or equal to 4096"
), msg
msg = refused("AlreadyExistsException", kms.create_alias, AliasName="alias/fidelity", TargetKeyId=key2)
assert msg == f"An alias with the name arn:aws:kms:us-east-1:{account}:alias/fidelity already exists", msg
msg = refused("NotFoundException", kms.describe_key, KeyId="alias/nope")
assert msg == f"Alias arn:aws:kms:us-east-1:{account}:alias/nope is not found.", msg
msg = refused("NotFoundException", eu.delete_alias, AliasName="alias/nope")
assert msg == f"Alias arn:aws:kms:eu-west-1:{account}:alias/nope is not found.", msg

step("ListKeyPolicies, UpdateKeyDescription, TagResource, UntagResource, ListResourceTags")
lp = kms.list_key_policies(KeyId=key2)
assert lp["PolicyNames"] == ["default"] and lp["Truncated"] is False, lp
kms.update_key_description(KeyId=key2, Description="renamed")
assert kms.describe_key(KeyId=key2)["KeyMetadata"]["Description"] == "renamed"
kms.tag_resource(KeyId=key2, Tags=[{"TagKey": "a", "TagValue": "1"}, {"TagKey": "b", "TagValue": "2"}])
kms.tag_resource(KeyId=key2, Tags=[{"TagKey": "a", "TagValue": "3"}])
kms.untag_resource(KeyId=key2, TagKeys=["b", "absent"])
assert kms.list_resource_tags(KeyId=key2)["Tags"] == [{"TagKey": "a", "TagValue": "3"}]
refused("NotFoundException", kms.tag_resource, KeyId="alias/fidelity", Tags=[{"TagKey": "a", "TagValue": "1"}])
many = [{"TagKey": f"t{i}", "TagValue": "v"} for i in range(50)]
refused("LimitExceededException", kms.tag_resource, KeyId=key2, Tags=many)
# Another user holds no right on a key without a policy (at a server).
refused("AccessDeniedException", other.tag_resource, KeyId=key2, Tags=[{"TagKey": "x", "TagValue": "y"}])
refused("AccessDeniedException", other.update_key_description, KeyId=key2, Description="mine")
refused("AccessDeniedException", other.list_resource_tags, KeyId=key2)
assert kms.describe_key(KeyId=key2)["KeyMetadata"]["Description"] == "renamed"

step("DryRun: DryRunOperationException when the call would succeed, the refusal otherwise")
blob = kms.encrypt(KeyId=key2, Plaintext=b"dry", EncryptionContext={"a": "b"})["CiphertextBlob"]
refused("DryRunOperationException", kms.encrypt, KeyId=key2, Plaintext=b"x", DryRun=True)
refused("DryRunOperationException", kms.decrypt, CiphertextBlob=blob, EncryptionContext={"a": "b"}, DryRun=True)
refused("DryRunOperationException", kms.generate_data_key, KeyId=key2, KeySpec="AES_256", DryRun=True)
refused("DryRunOperationException", kms.generate_data_key_without_plaintext, KeyId=key2, KeySpec="AES_256", DryRun=True)
refused(
    "DryRunOperationException",
    kms.re_encrypt,
    CiphertextBlob=blob,
    SourceEncryptionContext={"a": "b"},
    DestinationKeyId=tk,
    DryRun=True,
)
refused("AccessDeniedException", other.encrypt, KeyId=key2, Plaintext=b"x", DryRun=True)
refused("AccessDeniedException", other.decrypt, CiphertextBlob=blob, EncryptionContext={"a": "b"}, DryRun=True)
kms.disable_key(KeyId=key2)
refused("DisabledException", kms.encrypt, KeyId=key2, Plaintext=b"x", DryRun=True)
kms.enable_key(KeyId=key2)

step("what kmsfs lacks: UnsupportedOperationException naming it")
for fn, kw, what in (
    (raw.sign, {"KeyId": key, "Message": b"m", "SigningAlgorithm": "RSASSA_PSS_SHA_256"}, "asymmetric"),
    (raw.generate_mac, {"KeyId": key, "Message": b"m", "MacAlgorithm": "HMAC_SHA_256"}, "HMAC"),
    (raw.replicate_key, {"KeyId": key, "ReplicaRegion": "eu-west-1"}, "multi-Region"),
    (raw.create_custom_key_store, {"CustomKeyStoreName": "x"}, "custom key stores"),
    (raw.get_public_key, {"KeyId": key}, "asymmetric"),
):
    msg = refused("UnsupportedOperationException", fn, **kw)
    assert what in msg, msg

print("fidelity: all steps passed", flush=True)
