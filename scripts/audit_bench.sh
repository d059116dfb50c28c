#!/usr/bin/env bash
# Measures what the audit trail costs the mount; asserts nothing. A tree of about
# 10,000 small files (/usr/include and /usr/lib/python3.*) is unpacked with tar -x
# (then sync) and every file is read back with cat (caches dropped first), on a plain
# directory, on kmsfs with the audit trail on (the default) and on kmsfs with it off
# (KMSFS_AUDIT=off at mount time), in interleaved rounds; the median of each row is
# printed in seconds and as a ratio to the plain directory of the same run. The
# figures are only as quiet as the machine: on a shared one, run more rounds.
#
#   scripts/audit_bench.sh          # needs root and /dev/fuse
#
# Environment: BENCH_ROUNDS (3); BENCH_TREE (the directories the tree is made of).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/cargo_env.sh
ROUNDS=${BENCH_ROUNDS:-3}
if [[ ! -c /dev/fuse || $(id -u) -ne 0 ]]; then
  echo "audit_bench: needs root and /dev/fuse" >&2; exit 1
fi
build --release --bins
kmsfs=$target/release/kmsfs

work=$(mktemp -d /var/tmp/kmsfs-audit-bench.XXXXXX)
mounted=()
cleanup() {
  for m in "${mounted[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

read -r -a tree <<<"${BENCH_TREE:-/usr/include $(ls -d /usr/lib/python3.[0-9]* 2>/dev/null | head -1)}"
tar -cf "$work/tree.tar" "${tree[@]}" 2>/dev/null || true
nfiles=$(tar -tvf "$work/tree.tar" | grep -c '^-')
echo "== tree: ${tree[*]}: $nfiles files; $ROUNDS rounds, medians"

export KMSFS_KEYSTORE=$work/keystore XDG_STATE_HOME=$work/state
"$kmsfs" init >/dev/null 2>&1
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
declare -A results

run_one() { # target round
  local t=$1 d=$work/$1 start mid end
  rm -rf "$d" "$work/b-$t"; mkdir -p "$d" "$work/b-$t"
  case $t in
    audit) "$kmsfs" mount "$work/b-$t" "$d" 2>/dev/null; mounted+=("$d") ;;
    noaudit) KMSFS_AUDIT=off "$kmsfs" mount "$work/b-$t" "$d" 2>/dev/null; mounted+=("$d") ;;
  esac
  drop
  start=$(now)
  tar -C "$d" -xf "$work/tree.tar" && sync
  mid=$(now)
  drop
  local m0; m0=$(now)
  find "$d" -type f -print0 | xargs -0 cat > /dev/null
  end=$(now)
  results[$t,tar]+="$(echo "$mid - $start" | bc) "
  results[$t,cat]+="$(echo "$end - $m0" | bc) "
  if [[ $t != plain ]]; then "$kmsfs" unmount "$d" >/dev/null; fi
  rm -rf "$d" "$work/b-$t"
}

records() { cat "$KMSFS_KEYSTORE"/audit/trail-*.jsonl 2>/dev/null | wc -l || true; }
before=$(records)
for r in $(seq "$ROUNDS"); do
  for t in plain audit noaudit; do run_one "$t"; done
done
after=$(records)
"$kmsfs" audit verify >/dev/null && verified=yes || verified=NO

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
printf '%-10s %12s %10s %12s %10s\n' target "tar -x (s)" "x plain" "cat all (s)" "x plain"
for t in plain audit noaudit; do
  tt=$(echo "${results[$t,tar]}" | median); ct=$(echo "${results[$t,cat]}" | median)
  pt=$(echo "${results[plain,tar]}" | median); pc=$(echo "${results[plain,cat]}" | median)
  printf '%-10s %12.2f %10.1f %12.2f %10.1f\n' "$t" "$tt" "$(echo "$tt / $pt" | bc -l)" "$ct" "$(echo "$ct / $pc" | bc -l)"
done
echo "audit records written: $((after - before)) (about $(( (after - before) / ROUNDS )) a round); audit verify: $verified"
echo "(shared machine: figures are noisy; compare rows of one run, not across runs)"
