"""AWS JSON 1.1 requests to `kmsfs kms serve`, signed with SigV4 written out
here with the standard library only (so that any user's python3 runs it, and
a body can carry fields that boto3 would refuse to send). Run by
tests/server_attacks.rs:

    python3 signed.py ENDPOINT KEY_ID SECRET TARGET JSON_BODY
        one request; prints `STATUS BODY`
    python3 signed.py ENDPOINT KEY_ID SECRET TARGET JSON_BODY --repeat SECONDS
        the same request again and again on one keep-alive connection for
        SECONDS; prints `ok N failed M rate R` (failed: any answer but 200,
        or no answer within 10 s)
"""

import datetime
import hashlib
import hmac
import http.client
import sys
import time
import urllib.parse

ENDPOINT, AK, SK, TARGET, BODY = sys.argv[1:6]
URL = urllib.parse.urlparse(ENDPOINT)
HOST = URL.netloc
REGION = "us-east-1"


def sign(key, msg):
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def headers(body):
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    h = {
        "content-type": "application/x-amz-json-1.1",
        "host": HOST,
        "x-amz-date": amz_date,
        "x-amz-target": "TrentService." + TARGET,
    }
    names = sorted(h)
    canonical = "\n".join([
        "POST", "/", "",
        "".join(f"{n}:{h[n]}\n" for n in names),
        ";".join(names),
        hashlib.sha256(body).hexdigest(),
    ])
    scope = f"{day}/{REGION}/kms/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    k = sign(sign(sign(sign(("AWS4" + SK).encode(), day), REGION), "kms"), "aws4_request")
    signature = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    h["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={AK}/{scope}, SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    del h["host"]
    return h


def request(conn, body):
    conn.request("POST", "/", body=body, headers=headers(body))
    r = conn.getresponse()
    return r.status, r.read().decode()


body = BODY.encode()
conn = http.client.HTTPConnection(URL.hostname, URL.port, timeout=10)
if len(sys.argv) > 6 and sys.argv[6] == "--repeat":
    seconds = float(sys.argv[7])
    ok = failed = 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        try:
            status, _ = request(conn, body)
        except Exception as e:  # noqa: BLE001 - any failure counts
            print("failure:", repr(e), file=sys.stderr)
            failed += 1
            conn.close()
            conn = http.client.HTTPConnection(URL.hostname, URL.port, timeout=10)
            continue
        if status == 200:
            ok += 1
        else:
            failed += 1
    elapsed = time.monotonic() - start
    print(f"ok {ok} failed {failed} rate {ok / elapsed:.1f}")
else:
    status, text = request(conn, body)
    print(status, text)
