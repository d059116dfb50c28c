"""docs/PROTOCOL.md's operation table and every served operation's answer,
against botocore's service model. Run by tests/server_model.rs:

    python model.py ENDPOINT ADMIN_KEY_ID ADMIN_SECRET PROTOCOL_MD

1. Every operation of the model has one row of the table, and every row names
   operations of the model, each "served" or "refused".
2. The server agrees with the table: a "served" operation called with an
   empty body is not answered UnsupportedOperationException or
   UnknownOperationException; a "refused" one is answered
   UnsupportedOperationException.
3. Each served operation, called as a client would (boto3's input validation
   on), answers JSON whose keys are members of the model's output shape, at
   every depth, with the shape's required members and types (enums, numbers,
   booleans, base64 blobs, epoch timestamps).
Prints every deviation and exits non-zero if there is one.
"""

import base64
import json
import sys

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.serialization import load_der_public_key

ENDPOINT, AK, SK, DOC = sys.argv[1:5]
MODEL = botocore.session.get_session().get_service_model("kms")
problems = []


def client(validate=True):
    return boto3.client(
        "kms", endpoint_url=ENDPOINT, region_name="us-east-1",
        aws_access_key_id=AK, aws_secret_access_key=SK,
        config=Config(retries={"max_attempts": 1, "mode": "standard"},
                      parameter_validation=validate))


# 1. The table.
rows = {}
in_ops = False
for line in open(DOC, encoding="utf-8"):
    if line.startswith("### Operations"):
        in_ops = True
        continue
    if in_ops and line.startswith("#"):
        break
    if not in_ops or not line.startswith("| ") or line.startswith("| operation"):
        continue
    cells = line.split("|")
    verdict = cells[2].strip().split()[0].rstrip(":;,")
    if verdict not in ("served", "refused"):
        problems.append(f"table: row {cells[1].strip()!r} says {verdict!r}, not served or refused")
    for name in (n.strip() for n in cells[1].split(",")):
        if name in rows:
            problems.append(f"table: {name} has two rows")
        rows[name] = verdict
for name in MODEL.operation_names:
    if name not in rows:
        problems.append(f"table: {name}, an operation of botocore's model, is missing")
for name in rows:
    if name not in MODEL.operation_names:
        problems.append(f"table: {name} is no operation of botocore's model")
served = sorted(n for n, v in rows.items() if v == "served" and n in MODEL.operation_names)
print(f"table: {len(rows)} operations, {len(served)} served; model: {len(MODEL.operation_names)}")

# 2. The server agrees with the table.
raw = client(validate=False)
for name in MODEL.operation_names:
    code = None
    try:
        getattr(raw, botocore.xform_name(name))()
    except ClientError as e:
        code = e.response["Error"]["Code"]
    not_served = code in ("UnsupportedOperationException", "UnknownOperationException")
    if rows.get(name) == "served" and not_served:
        problems.append(f"dispatch: {name} is 'served' in the table, the server answers {code}")
    if rows.get(name) == "refused" and code != "UnsupportedOperationException":
        problems.append(f"dispatch: {name} is 'refused' in the table, the server answers {code}")


# 3. Answers against the output shapes.
def walk(value, shape, path):
    t = shape.type_name
    if t == "structure":
        if not isinstance(value, dict):
            problems.append(f"{path}: {type(value).__name__}, the model has a structure")
            return
        for k, v in value.items():
            if k not in shape.members:
                problems.append(f"{path}.{k}: not a member of {shape.name}")
            elif v is None:
                problems.append(f"{path}.{k}: null (AWS omits what it does not have)")
            else:
                walk(v, shape.members[k], f"{path}.{k}")
        for r in shape.required_members:
            if r not in value:
                problems.append(f"{path}.{r}: required by {shape.name}, missing")
    elif t == "list":
        if not isinstance(value, list):
            problems.append(f"{path}: {type(value).__name__}, the model has a list")
            return
        for i, v in enumerate(value):
            walk(v, shape.member, f"{path}[{i}]")
    elif t == "map":
        if not isinstance(value, dict):
            problems.append(f"{path}: {type(value).__name__}, the model has a map")
            return
        for k, v in value.items():
            walk(v, shape.value, f"{path}.{k}")
    elif t == "string":
        if not isinstance(value, str):
            problems.append(f"{path}: {value!r} is not a string")
        elif shape.enum and value not in shape.enum:
            problems.append(f"{path}: {value!r} is not one of {shape.name}'s values")
    elif t == "blob":
        try:
            base64.b64decode(value, validate=True)
        except Exception:  # noqa: BLE001 - any failure is the finding
            problems.append(f"{path}: not base64")
    elif t == "timestamp":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            problems.append(f"{path}: {value!r} is not epoch seconds")
    elif t == "boolean":
        if not isinstance(value, bool):
            problems.append(f"{path}: {value!r} is not a boolean")
    elif t in ("integer", "long"):
        if not isinstance(value, int) or isinstance(value, bool):
            problems.append(f"{path}: {value!r} is not an integer")


checked = set()


def after_call(http_response, parsed, model, **kw):
    if http_response.status_code != 200:
        return
    body = json.loads(http_response.content or b"{}")
    if model.output_shape is None:
        if body != {}:
            problems.append(f"{model.name}: answers {sorted(body)}, the model has no output")
    else:
        walk(body, model.output_shape, model.name)
    checked.add(model.name)


kms = client()
kms.meta.events.register("after-call.kms", after_call)
k = kms.create_key(Description="model", Tags=[{"TagKey": "a", "TagValue": "b"}])["KeyMetadata"]["KeyId"]
k2 = kms.create_key()["KeyMetadata"]["KeyId"]
kms.describe_key(KeyId=k)
kms.list_keys()
kms.update_key_description(KeyId=k, Description="model 2")
kms.create_alias(AliasName="alias/model", TargetKeyId=k)
kms.update_alias(AliasName="alias/model", TargetKeyId=k2)
kms.list_aliases()
kms.list_aliases(KeyId=k2)
kms.delete_alias(AliasName="alias/model")
kms.enable_key_rotation(KeyId=k)
kms.get_key_rotation_status(KeyId=k)
kms.rotate_key_on_demand(KeyId=k)
kms.list_key_rotations(KeyId=k)
kms.disable_key_rotation(KeyId=k)
kms.get_key_policy(KeyId=k, PolicyName="default")
kms.put_key_policy(KeyId=k, PolicyName="default",
                   Policy='{"Statement":[{"Effect":"Allow","Principal":{"kmsfs":"uid:0"},"Action":"kms:*"}]}')
kms.list_key_policies(KeyId=k)
kms.tag_resource(KeyId=k, Tags=[{"TagKey": "c", "TagValue": "d"}])
kms.list_resource_tags(KeyId=k)
kms.untag_resource(KeyId=k, TagKeys=["a"])
blob = kms.encrypt(KeyId=k, Plaintext=b"x", EncryptionContext={"p": "1"})["CiphertextBlob"]
kms.decrypt(CiphertextBlob=blob, EncryptionContext={"p": "1"})
kms.re_encrypt(CiphertextBlob=blob, SourceEncryptionContext={"p": "1"}, DestinationKeyId=k2)
kms.generate_data_key(KeyId=k, KeySpec="AES_256")
kms.generate_data_key_without_plaintext(KeyId=k, NumberOfBytes=16)
kms.generate_random(NumberOfBytes=8)
g = kms.create_grant(KeyId=k, GranteePrincipal="uid:4242", RetiringPrincipal="uid:0",
                     Operations=["Decrypt"], Constraints={"EncryptionContextSubset": {"p": "1"}}, Name="m")
kms.list_grants(KeyId=k)
kms.list_retirable_grants(RetiringPrincipal="uid:0")
kms.retire_grant(GrantToken=g["GrantToken"])
g2 = kms.create_grant(KeyId=k, GranteePrincipal="uid:4242", Operations=["Encrypt"])
kms.revoke_grant(KeyId=k, GrantId=g2["GrantId"])
kms.disable_key(KeyId=k)
kms.enable_key(KeyId=k)
kms.schedule_key_deletion(KeyId=k2, PendingWindowInDays=7)
kms.cancel_key_deletion(KeyId=k2)
ext = kms.create_key(Origin="EXTERNAL")["KeyMetadata"]["KeyId"]
p = kms.get_parameters_for_import(KeyId=ext, WrappingAlgorithm="RSAES_OAEP_SHA_256",
                                  WrappingKeySpec="RSA_2048")
wrapped = load_der_public_key(p["PublicKey"]).encrypt(
    b"\x07" * 32, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None))
kms.import_key_material(KeyId=ext, ImportToken=p["ImportToken"], EncryptedKeyMaterial=wrapped,
                        ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
kms.delete_imported_key_material(KeyId=ext)
for name in served:
    if name not in checked:
        problems.append(f"{name}: served, but this script did not check an answer of it")

for p in problems:
    print("DEVIATION:", p, flush=True)
if problems:
    sys.exit(1)
print(f"model: all steps passed ({len(checked)} answers checked)", flush=True)
