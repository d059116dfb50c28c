#!/bin/sh
# Throughput of the whole-tree commands over a tree of N files (default
# 10000, SIZE bytes each, default 16384), release build: import, rewrap to a
# new key, rewrap again (nothing to do), fsck --quick, fsck, export; and
# `cp -a` of the same plain tree in the same run as the yardstick for import
# and export. Prints seconds, files/s and MiB/s (plaintext) for each.
set -eu
cd "$(dirname "$0")/.."
. scripts/cargo_env.sh
N=${N:-10000}
SIZE=${SIZE:-16384}
BIN=${BIN:-$target/release/kmsfs}
[ -x "$BIN" ] || build --release
T=$(mktemp -d /var/tmp/kmsfs-tree-bench-XXXXXX)
K="$BIN --keystore $T/ks"
trap 'rm -rf "$T"' EXIT
mkdir -p "$T/src"
head -c "$SIZE" /dev/urandom > "$T/one"
i=0
while [ $i -lt "$N" ]; do
  d="$T/src/d$((i % 100))"; [ -d "$d" ] || mkdir "$d"
  cp "$T/one" "$d/f$i"; i=$((i + 1))
done
$K init >/dev/null
sync
run() {
  s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N)
  awk -v s="$s" -v e="$e" -v n="$N" -v b="$SIZE" -v what="$*" 'BEGIN {
    t = e - s; printf "%-34s %7.2f s %8.0f files/s %8.1f MiB/s\n", what, t, n / t, n * b / 1048576 / t }' |
    sed "s|$T/||g; s|$BIN|kmsfs|"
}
echo "tree: $N files x $SIZE bytes; $(nproc) CPUs; load $(cut -d' ' -f1-3 /proc/loadavg)"
run cp -a "$T/src" "$T/plain-copy"
run $K import "$T/src" "$T/b"
NEW=$($K --output json kms create-key | sed -n 's/.*"KeyId": "\(.*\)".*/\1/p' | head -1)
run $K rewrap "$T/b" --to-key-id "$NEW"
run $K rewrap "$T/b"
run $K fsck "$T/b" --quick
run $K fsck "$T/b"
run $K export "$T/b" "$T/out"
diff -r "$T/src" "$T/out" >/dev/null && echo "export matches the source tree"
