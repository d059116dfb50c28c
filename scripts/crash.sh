#!/usr/bin/env bash
# kill -9 of the mount daemon during heavy writes, CRASH_ROUNDS rounds (default
# 50), on a release build. Each round mounts on the mount point that the last
# round's killed daemon left dead (no fusermount, no umount: `kmsfs mount` must
# recover it by itself), checks that every file fsync'd before any earlier kill
# reads back exactly, starts three writers (files of a few bytes to 6 MB, about
# half fsync'd and recorded once fsync returned) and kills the daemon with
# SIGKILL after a random delay of up to CRASH_MAX_DELAY_MS (default 3000) ms.
# At the end the keystore must open and every recorded file read back exactly.
# The rounds are tests/mount_crash.rs (3 short rounds in the suite); this runs
# them longer and prints the figures. CRASH_SEED varies the run. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

export KMSFS_CRASH_ROUNDS=${CRASH_ROUNDS:-50}
export KMSFS_CRASH_MAX_DELAY_MS=${CRASH_MAX_DELAY_MS:-3000}
export KMSFS_CRASH_SEED=${CRASH_SEED:-$RANDOM$RANDOM}
export KMSFS_REQUIRE_FUSE=1

echo "building (release)"
cargo test --release --locked --test mount_crash --no-run --quiet
echo "$KMSFS_CRASH_ROUNDS rounds, kill after up to ${KMSFS_CRASH_MAX_DELAY_MS} ms, seed $KMSFS_CRASH_SEED"
log=$(mktemp /tmp/kmsfs-crash.XXXXXX.log)
if cargo test --release --locked --quiet --test mount_crash -- --nocapture >"$log" 2>&1; then
  echo "$(date -u +%Y-%m-%d): $(grep '^crash:' "$log")"
  echo "VERDICT: PASS"
  rm -f "$log"
else
  tail -40 "$log"
  echo "VERDICT: FAIL (full output in $log; rerun with CRASH_SEED=$KMSFS_CRASH_SEED)"
  exit 1
fi
