#!/bin/sh
# Throughput of `kmsfs rewrap` and `kmsfs fsck` over a tree of N files
# (default 10000, SIZE bytes each, default 16384), release build.
# Prints files/s and MiB/s (plaintext) for each command.
set -eu
N=${N:-10000}
SIZE=${SIZE:-16384}
BIN=${BIN:-target/release/kmsfs}
T=$(mktemp -d /tmp/kmsfs-tree-bench-XXXXXX)
K="$BIN --keystore $T/ks"
trap '$K unmount $T/m >/dev/null 2>&1 || true; rm -rf "$T"' EXIT
mkdir -p "$T/b" "$T/m"
$K init >/dev/null
$K mount "$T/b" "$T/m" --log-file "$T/log"
head -c "$SIZE" /dev/urandom > "$T/one"
i=0
while [ $i -lt "$N" ]; do
  d="$T/m/d$((i % 100))"; [ -d "$d" ] || mkdir "$d"
  cp "$T/one" "$d/f$i"; i=$((i + 1))
done
$K unmount "$T/m"
NEW=$($K --output json kms create-key | sed -n 's/.*"KeyId": "\(.*\)".*/\1/p' | head -1)
mib=$(echo "$N * $SIZE / 1048576" | bc -l)
run() {
  s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N)
  t=$(echo "$e - $s" | bc -l)
  printf '%-40s %8.2f s  %8.0f files/s  %8.1f MiB/s\n' "$*" "$t" \
    "$(echo "$N / $t" | bc -l)" "$(echo "$mib / $t" | bc -l)"
}
echo "tree: $N files x $SIZE bytes ($(printf %.0f "$mib") MiB)"
run $K rewrap "$T/b" --to-key-id "$NEW"
run $K rewrap "$T/b"
run $K fsck "$T/b" --quick
run $K fsck "$T/b"
