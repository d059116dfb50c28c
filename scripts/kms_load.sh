#!/usr/bin/env bash
# Load on `kmsfs kms serve`, loopback only and bounded in time: 16 concurrent
# clients (aws-sdk-kms, each signing every request with SigV4) run Decrypt,
# then GenerateDataKey, for LOAD_SECS seconds each; prints requests/s, p50 and
# p99 latency and the failed requests (any failure: exit 1). Then the same
# again while a mount of the same keystore (local, not through the server)
# extracts a tree of small files, to see that the server holds its rate.
#
#   scripts/kms_load.sh
# Environment: LOAD_SECS (10), LOAD_CLIENTS (16), PROFILE (release; debug to
# skip the release build), TLS (1: the server on TLS, certificates made here
# by openssl, the clients given the CA by AWS_CA_BUNDLE), CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/cargo_env.sh
SECS=${LOAD_SECS:-10}
CLIENTS=${LOAD_CLIENTS:-16}
PROFILE=${PROFILE:-release}
if [[ $PROFILE == release ]]; then
  build --release --bins --example kms_load
else
  build --bins --example kms_load
fi
kmsfs=$target/$PROFILE/kmsfs
load=$target/$PROFILE/examples/kms_load
work=$(mktemp -d /tmp/kmsfs-load.XXXXXX)
server=""
cleanup() {
  "$kmsfs" unmount "$work/mnt" >/dev/null 2>&1 || true
  [[ -n $server ]] && kill -TERM "$server" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ks=$work/ks
"$kmsfs" --keystore "$ks" init >/dev/null 2>&1
key=$("$kmsfs" --keystore "$ks" --output json kms create-key | python3 -c 'import json,sys;print(json.load(sys.stdin)["KeyMetadata"]["KeyId"])')
"$kmsfs" --keystore "$ks" access-key create --uid 0 >"$work/ak.json"
export AWS_ACCESS_KEY_ID=$(python3 -c 'import json,sys;print(json.load(open(sys.argv[1]))["AccessKey"]["AccessKeyId"])' "$work/ak.json")
export AWS_SECRET_ACCESS_KEY=$(python3 -c 'import json,sys;print(json.load(open(sys.argv[1]))["AccessKey"]["SecretAccessKey"])' "$work/ak.json")
export AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
tls=()
unset AWS_CA_BUNDLE
if [[ ${TLS:-0} == 1 ]]; then
  ( cd "$work"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem \
      -days 2 -subj /CN=kmsfs-load-ca -addext basicConstraints=critical,CA:TRUE \
      -addext keyUsage=critical,keyCertSign,cRLSign
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout srv.key -out srv.csr -subj /CN=kmsfs-kms
    printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n' >ext
    openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 2 -extfile ext
    chmod 600 srv.key ) >/dev/null 2>&1
  tls=(--tls-cert "$work/srv.pem" --tls-key "$work/srv.key")
  export AWS_CA_BUNDLE=$work/ca.pem
fi
"$kmsfs" --keystore "$ks" kms serve --listen 127.0.0.1:0 "${tls[@]}" >"$work/serve.out" 2>"$work/serve.err" &
server=$!
for _ in $(seq 100); do grep -q listening "$work/serve.out" 2>/dev/null && break; sleep 0.05; done
url=$(sed -n 's/^listening on //p' "$work/serve.out")
case $url in http://127.*|https://127.*|http://\[::1\]*|https://\[::1\]*) ;; *) echo "kms_load: refusing a non-loopback address $url" >&2; exit 1;; esac

echo "== $CLIENTS signed clients on $url, ${SECS} s per operation, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg) (shared machine: figures are noisy)"
"$load" "$url" "$key" "$CLIENTS" "$SECS"

if [[ -c /dev/fuse && $(id -u) -eq 0 ]]; then
  echo "== the same while a mount of this keystore extracts small files"
  mkdir -p "$work/backing" "$work/mnt" "$work/src"
  for i in $(seq 2000); do head -c 1024 /dev/urandom >"$work/src/f$i"; done
  tar -C "$work/src" -cf "$work/tree.tar" .
  "$kmsfs" --keystore "$ks" mount "$work/backing" "$work/mnt" --key-id "$key" --log-file "$work/mount.log"
  ( end=$((SECONDS + 2 * SECS + 5)); n=0
    while ((SECONDS < end)); do
      n=$((n + 1)); mkdir -p "$work/mnt/r$n"; tar -C "$work/mnt/r$n" -xf "$work/tree.tar"; rm -rf "$work/mnt/r$n"
    done; echo "mount: $n extracts of 2000 files meanwhile" ) &
  bg=$!
  "$load" "$url" "$key" "$CLIENTS" "$SECS"
  wait "$bg"
fi
kill -TERM "$server"; wait "$server" || true; server=""
sed -n 's/^kmsfs kms serve: stopped; //p' "$work/serve.err"
