#!/usr/bin/env bash
# Counts the calls a remote-KMS mount makes (kmsfs mount --kms-endpoint) for a
# tar -x of many small files, for reopening all of them, and for reopening a
# hot set of 50 files 20 times, with the data-key cache on (--kms-cache-seconds
# 10) and off (0). The KMS is `kmsfs kms serve` on loopback; its own per-
# operation counters (printed when it stops) are the figures. Asserts nothing.
#
#   scripts/kms_calls.sh            # FILES=10000 files of 1 KiB
# Environment: FILES (10000), KMSFS_BIN (target/debug/kmsfs: counts do not
# depend on the build).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/cargo_env.sh
FILES=${FILES:-10000}
kmsfs=${KMSFS_BIN:-$target/debug/kmsfs}
[[ -x $kmsfs ]] || build
if [[ ! -c /dev/fuse || $(id -u) -ne 0 ]]; then
  echo "kms_calls: needs root and /dev/fuse" >&2; exit 1
fi
work=$(mktemp -d /tmp/kmsfs-calls.XXXXXX)
server=""
cleanup() {
  for m in "$work"/mnt-*; do "$kmsfs" unmount "$m" >/dev/null 2>&1 || true; done
  [[ -n $server ]] && kill -TERM "$server" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ks=$work/ks
"$kmsfs" --keystore "$ks" init >/dev/null 2>&1
key=$("$kmsfs" --keystore "$ks" --output json kms create-key | python3 -c 'import json,sys;print(json.load(sys.stdin)["KeyMetadata"]["KeyId"])')
"$kmsfs" --keystore "$ks" access-key create --uid 0 >"$work/ak.json"
export AWS_ACCESS_KEY_ID=$(python3 -c 'import json,sys;print(json.load(open(sys.argv[1]))["AccessKey"]["AccessKeyId"])' "$work/ak.json")
export AWS_SECRET_ACCESS_KEY=$(python3 -c 'import json,sys;print(json.load(open(sys.argv[1]))["AccessKey"]["SecretAccessKey"])' "$work/ak.json")
export AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')

start_server() {
  "$kmsfs" --keystore "$ks" kms serve --listen "127.0.0.1:$port" >"$work/serve.out" 2>"$work/serve.err" &
  server=$!
  for _ in $(seq 100); do grep -q listening "$work/serve.out" 2>/dev/null && return; sleep 0.05; done
  echo "server did not start" >&2; exit 1
}
# Stops the server; its counters for the phase just run go to $counts.
stop_server() {
  kill -TERM "$server"; wait "$server" || true; server=""
  counts=$(sed -n 's/^kmsfs kms serve: stopped; served //p' "$work/serve.err")
}

# The tree: FILES files of 1 KiB in directories of 100.
src=$work/src
mkdir -p "$src"
python3 - "$src" "$FILES" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, "d%03d" % (i // 100))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%05d" % i), "wb") as f:
        f.write(os.urandom(1024))
PY
tar -C "$src" -cf "$work/tree.tar" .

printf '%-6s  %-28s  %s\n' cache phase "KMS calls (server counters)"
for cache in 10 0; do
  b=$work/backing-$cache m=$work/mnt-$cache
  mkdir -p "$b" "$m"
  start_server
  "$kmsfs" mount "$b" "$m" --kms-endpoint "http://127.0.0.1:$port" --key-id "$key" \
    --kms-cache-seconds "$cache" --log-file "$work/mount-$cache.log"
  t0=$(date +%s.%N)
  tar -C "$m" -xf "$work/tree.tar"; sync
  t1=$(date +%s.%N)
  stop_server
  printf '%-6s  %-28s  %s  (%.1f s)\n' "$cache" "tar -x $FILES files" "$counts" "$(echo "$t1 - $t0" | bc)"
  start_server
  t0=$(date +%s.%N)
  find "$m" -type f -print0 | xargs -0 cat >/dev/null
  t1=$(date +%s.%N)
  stop_server
  printf '%-6s  %-28s  %s  (%.1f s)\n' "$cache" "reopen all $FILES" "$counts" "$(echo "$t1 - $t0" | bc)"
  start_server
  hot=$(find "$m" -type f | sed -n 1,50p)
  for _ in $(seq 20); do cat $hot >/dev/null; done
  stop_server
  printf '%-6s  %-28s  %s\n' "$cache" "50 hot files x 20 opens" "$counts"
  "$kmsfs" unmount "$m"
done
