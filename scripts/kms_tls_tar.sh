#!/usr/bin/env bash
# tar -x of the bench's small-file tree (default /usr/include) into a mount
# whose CMK is in the local keystore, in `kmsfs kms serve` over plain HTTP on
# loopback, and in the same server over TLS (certificates made here by
# openssl), the remote mounts without and with the pool of data keys
# generated ahead (`-o datakey_pool`), ROUNDS interleaved rounds; prints each
# time, the medians and the ratio of each remote target to the local one,
# and the connections the TLS server accepted. Without the pool a remote
# mount pays one GenerateDataKey round trip per created file. Asserts nothing.
#
#   scripts/kms_tls_tar.sh
# Environment: TREE (/usr/include), ROUNDS (3), PROFILE (debug; release when
# the machine's load allows), TARGETS ("local plain tls tls+pool"; also
# plain+pool), CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/cargo_env.sh
TREE=${TREE:-/usr/include}
ROUNDS=${ROUNDS:-3}
TARGETS=${TARGETS:-local plain tls tls+pool}
PROFILE=${PROFILE:-debug}
if [[ $PROFILE == release ]]; then build --release --bins; else build --bins; fi
kmsfs=$target/$PROFILE/kmsfs
if [[ ! -c /dev/fuse || $(id -u) -ne 0 ]]; then
  echo "kms_tls_tar: needs root and /dev/fuse" >&2; exit 1
fi
work=$(mktemp -d /tmp/kmsfs-tlstar.XXXXXX)
servers=()
cleanup() {
  for m in "$work"/mnt-*; do "$kmsfs" unmount "$m" >/dev/null 2>&1 || true; done
  for p in "${servers[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
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
unset AWS_CA_BUNDLE

c=$work/certs; mkdir -p "$c"
( cd "$c"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem \
    -days 2 -subj /CN=kmsfs-bench-ca -addext basicConstraints=critical,CA:TRUE \
    -addext keyUsage=critical,keyCertSign,cRLSign
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout srv.key -out srv.csr -subj /CN=kmsfs-kms
  printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n' >ext
  openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 2 -extfile ext
  chmod 600 srv.key ) >/dev/null 2>&1

ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
daemon_of() { "$kmsfs" --output json status "$1" | python3 -c 'import json,sys;print(json.load(sys.stdin)["Mounts"][0]["Pid"])'; }
serve() { # NAME ARGS...: starts a server, sets url_NAME, pid_NAME
  local name=$1; shift
  "$kmsfs" --keystore "$ks" kms serve --listen 127.0.0.1:0 "$@" >"$work/$name.out" 2>"$work/$name.err" &
  servers+=($!)
  printf -v "pid_$name" '%s' "$!"
  for _ in $(seq 200); do grep -q listening "$work/$name.out" 2>/dev/null && break; sleep 0.05; done
  printf -v "url_$name" '%s' "$(sed -n 's/^listening on //p' "$work/$name.out")"
}
serve plain
serve tls --tls-cert "$c/srv.pem" --tls-key "$c/srv.key"

tar -cf "$work/tree.tar" "$TREE" 2>/dev/null || true
nfiles=$(tar -tvf "$work/tree.tar" | grep -c '^-')
echo "== tar -x of $TREE ($nfiles files), $PROFILE build, $ROUNDS rounds, load $(cut -d' ' -f1-3 /proc/loadavg)"
declare -A times
for r in $(seq "$ROUNDS"); do
  for t in $TARGETS; do
    b=$work/backing-$t-$r m=$work/mnt-$t-$r
    mkdir -p "$b" "$m"
    case $t in
      local) "$kmsfs" --keystore "$ks" mount "$b" "$m" --key-id "$key" --log-file "$work/m.log" ;;
      plain) "$kmsfs" mount "$b" "$m" --kms-endpoint "$url_plain" --key-id "$key" --log-file "$work/m.log" -o datakey_pool=0 ;;
      plain+pool) "$kmsfs" mount "$b" "$m" --kms-endpoint "$url_plain" --key-id "$key" --log-file "$work/m.log" ;;
      tls) "$kmsfs" mount "$b" "$m" --kms-endpoint "$url_tls" --kms-ca-bundle "$c/ca.pem" --key-id "$key" --log-file "$work/m.log" -o datakey_pool=0 ;;
      tls+pool) "$kmsfs" mount "$b" "$m" --kms-endpoint "$url_tls" --kms-ca-bundle "$c/ca.pem" --key-id "$key" --log-file "$work/m.log" ;;
    esac
    dpid=$(daemon_of "$m")
    case $t in plain*) spid=$pid_plain ;; tls*) spid=$pid_tls ;; *) spid="" ;; esac
    d0=$(ticks "$dpid"); s0=0; [[ -n $spid ]] && s0=$(ticks "$spid")
    t0=$(date +%s.%N); tar -C "$m" -xf "$work/tree.tar"; sync; t1=$(date +%s.%N)
    d1=$(ticks "$dpid"); s1=0; [[ -n $spid ]] && s1=$(ticks "$spid")
    s=$(echo "$t1 - $t0" | bc)
    times[$t]+="$s "
    hz=$(getconf CLK_TCK)
    printf 'round %d %-10s %6.2f s   cpu: daemon %5.2f s, server %5.2f s\n' "$r" "$t" "$s" \
      "$(echo "($d1 - $d0) / $hz" | bc -l)" "$(echo "($s1 - $s0) / $hz" | bc -l)"
    if [[ $t == *+pool ]]; then "$kmsfs" status "$m" | grep 'data-key pool' || true; fi
    "$kmsfs" unmount "$m"; rm -rf "$b"
  done
done
med() { tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
l=$(med "${times[local]}")
for t in $TARGETS; do
  m=$(med "${times[$t]}")
  printf 'median %-10s %6.2f s  %.2fx local\n' "$t" "$m" "$(echo "$m / $l" | bc -l)"
done
echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
for p in "${servers[@]}"; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
servers=()
for n in plain tls; do echo "server $n: $(grep -h 'stopped' "$work/$n.err" || true)"; done
