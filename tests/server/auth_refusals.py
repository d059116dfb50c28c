"""Requests that `kmsfs kms serve` must refuse, signed (or not) by botocore's
own SigV4 signer. Run by tests/server_aws_clients.rs:

    python auth_refusals.py ENDPOINT KEY_ID SECRET DELETED_KEY_ID DELETED_SECRET

Prints one line per case; exits non-zero on any deviation.
"""

import datetime
import json
import sys
import urllib.error
import urllib.request
from unittest import mock

import botocore.auth
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

ENDPOINT, AK, SK, DEAD_AK, DEAD_SK = sys.argv[1:6]


def send(target, body, creds=None, at=None, tamper=None, region="us-east-1", service="kms", drop=None, retarget=None):
    data = json.dumps(body).encode()
    req = AWSRequest(
        method="POST",
        url=ENDPOINT + "/",
        data=data,
        headers={"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "TrentService." + target},
    )
    if creds:
        signer = SigV4Auth(creds, service, region)
        if at is None:
            signer.add_auth(req)
        else:
            with mock.patch.object(botocore.auth, "get_current_datetime", return_value=at):
                signer.add_auth(req)
    p = req.prepare()
    headers = dict(p.headers)
    if drop:
        headers.pop(drop, None)
    if retarget:
        headers["X-Amz-Target"] = "TrentService." + retarget
    if tamper:
        data = tamper(data)
    r = urllib.request.Request(p.url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(r, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def expect(name, got, status, kind, needle=""):
    code, body = got
    assert code == status and body.get("__type") == kind, f"{name}: {code} {body}"
    assert needle in body.get("message", ""), f"{name}: {body}"
    print(f"refused as expected: {name}: {kind}", flush=True)


good = Credentials(AK, SK)
code, body = send("ListKeys", {}, creds=good)
assert code == 200 and "Keys" in body, (code, body)
print("signed request accepted", flush=True)

expect("unsigned", send("ListKeys", {}), 400, "MissingAuthenticationTokenException")
expect("wrong secret", send("ListKeys", {}, creds=Credentials(AK, SK[:-1] + ("A" if SK[-1] != "A" else "B"))),
       400, "InvalidSignatureException", "does not match")
expect("unknown access key", send("ListKeys", {}, creds=Credentials("AKIAAAAAAAAAAAAAAAAA", SK)),
       400, "UnrecognizedClientException")
expect("deleted access key", send("ListKeys", {}, creds=Credentials(DEAD_AK, DEAD_SK)),
       400, "UnrecognizedClientException")
expect("body changed after signing", send("ListKeys", {"Limit": 5}, creds=good,
                                          tamper=lambda d: d.replace(b"5", b"7")),
       400, "InvalidSignatureException")
expect("operation changed after signing", send("ListKeys", {}, creds=good, retarget="CreateKey"),
       400, "InvalidSignatureException")
now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
expect("signed 10 minutes ago", send("ListKeys", {}, creds=good, at=now - datetime.timedelta(minutes=10)),
       400, "InvalidSignatureException", "Signature expired")
expect("signed 10 minutes ahead", send("ListKeys", {}, creds=good, at=now + datetime.timedelta(minutes=10)),
       400, "InvalidSignatureException", "Signature expired")
code, body = send("ListKeys", {}, creds=good, at=now - datetime.timedelta(minutes=4))
assert code == 200, ("4 minutes of skew is allowed", code, body)
print("signed 4 minutes ago accepted", flush=True)
expect("scoped to another service", send("ListKeys", {}, creds=good, service="s3"),
       400, "InvalidSignatureException", "service")
expect("unknown operation", send("FlyToTheMoon", {}, creds=good), 400, "UnknownOperationException")
print("auth refusals: all cases passed")
