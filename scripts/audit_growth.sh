#!/bin/sh
# Measures how much one user adds to the audit trail by opening one file in a
# loop; asserts nothing. kmsfs-b (the test users; any user with a group works:
# GROWTH_USER, GROWTH_GROUP) opens one file N times through an `-o allow_other`
# mount, each open by the shell itself (`: < f`, no process per open); the trail's
# bytes are taken before the loop and after unmount (which writes what the
# limits still hold), and printed per open and per second of the loop.
#
#   scripts/audit_growth.sh BIN [N]     # needs root and /dev/fuse; N = 5000
#
# BIN is the kmsfs binary to measure (target/debug/kmsfs, target/release/kmsfs,
# or an older build to compare with).
set -eu
BIN=$1; N=${2:-5000}
USER_=${GROWTH_USER:-kmsfs-b}; GROUP_=${GROWTH_GROUP:-kmsfs-g}
D=$(mktemp -d /tmp/kmsfs-growth-XXXXXX); chmod 755 "$D"; mkdir "$D/b" "$D/m"
export RUST_LOG=warn
"$BIN" --keystore "$D/ks" init >/dev/null
"$BIN" --keystore "$D/ks" mount "$D/b" "$D/m" -o allow_other --log-file "$D/log"
trap '"$BIN" --keystore "$D/ks" unmount "$D/m" 2>/dev/null; rm -rf "$D"' EXIT
mkdir "$D/m/s"; chmod 2777 "$D/m/s"
U="setpriv --reuid=$USER_ --regid=$GROUP_ --init-groups --"
$U sh -c "cd $D/m/s && printf x > f"
sleep 2
size() { cat "$D"/ks/audit/trail-*.jsonl | wc -c; }
s0=$(size)
t0=$(date +%s.%N)
$U sh -c "cd $D/m/s && i=0; while [ \$i -lt $N ]; do : < f; i=\$((i+1)); done"
t1=$(date +%s.%N)
"$BIN" --keystore "$D/ks" unmount "$D/m"
s1=$(size)
echo "$BIN: $N opens in $(echo "$t1 - $t0" | bc) s; trail +$((s1 - s0)) bytes;" \
  "$(echo "scale=1; ($s1 - $s0) / $N" | bc) bytes/open;" \
  "$(echo "scale=4; ($s1 - $s0) / ($t1 - $t0) / 1000000" | bc) MB/s"
