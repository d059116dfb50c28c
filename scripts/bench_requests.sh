#!/usr/bin/env bash
# Counts the FUSE requests kmsfs serves for the bench's metadata workloads, by opcode,
# from the daemon's own counters (xattr trusted.kmsfs.requests on the mount's root).
# Deterministic (unlike timings), so it is the figure to compare before/after a change
# on a busy machine. Needs root and /dev/fuse.
#
#   scripts/bench_requests.sh [KMSFS_BINARY]     # default target/debug/kmsfs
#
# Workloads: tar -x of the bench's small-file tree (/usr/include + /usr/lib/python3.*)
# then sync; ls -lR of it three times (the second, warm, and the third are reported); stat of every file
# (find -ls), warm; cat of every file, twice (the second is reported); rm -rf of it;
# fio randwrite 4 KiB buffered, 20,000 writes, end_fsync (needs fio).
# KMSFS_OPTS: -o options for the mount (e.g. sharedstorage).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/cargo_env.sh
kmsfs=${1:-$target/debug/kmsfs}
[[ -x $kmsfs ]] || build --bin kmsfs
if [[ ! -c /dev/fuse || $(id -u) -ne 0 ]]; then
  echo "bench_requests: needs root and /dev/fuse" >&2; exit 1
fi
work=$(mktemp -d /var/tmp/kmsfs-reqs.XXXXXX)
cleanup() { umount "$work/m" 2>/dev/null || umount -l "$work/m" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$work"/{b,m}
export KMSFS_KEYSTORE=$work/keystore XDG_STATE_HOME=$work/state
"$kmsfs" mount "$work/b" "$work/m" ${KMSFS_OPTS:+-o "$KMSFS_OPTS"} 2>/dev/null
m=$work/m
read -r -a tree <<<"${BENCH_TREE:-/usr/include $(ls -d /usr/lib/python3.[0-9]* 2>/dev/null | head -1)}"
tar -cf "$work/tree.tar" "${tree[@]}" 2>/dev/null || true
nfiles=$(tar -tvf "$work/tree.tar" | grep -c '^-' || true)
echo "tree: ${tree[*]}: $nfiles files"

snap() { python3 -c 'import os,sys; print(os.getxattr(sys.argv[1], "trusted.kmsfs.requests").decode(), end="")' "$m"; }
row() {
  local name=$1; shift
  local b a
  b=$(snap); "$@" >/dev/null 2>&1; a=$(snap)
  python3 - "$name" "$b" "$a" <<'PY'
import sys
row, b, a = sys.argv[1:4]
parse = lambda t: {k: int(v) for k, v in (l.split() for l in t.splitlines() if l)}
b, a = parse(b), parse(a)
d = {k: a[k] - b.get(k, 0) for k in a if a[k] - b.get(k, 0) > 0}
d["getxattr"] = d.get("getxattr", 0) - 1  # the snapshot's own read
d = {k: v for k, v in d.items() if v > 0}
print(f"{row:10} {sum(d.values()):7}  " + " ".join(f"{k}={v}" for k, v in sorted(d.items(), key=lambda x: -x[1])))
PY
}
row untar sh -c "tar -C '$m' -xf '$work/tree.tar' && sync"
ls -lR "$m/usr" >/dev/null
row lsR-warm ls -lR "$m/usr"
row lsR-third ls -lR "$m/usr"
row stat-warm find "$m/usr" -ls
catall() { find "$m/usr" -type f -print0 | xargs -0 cat > /dev/null; }
catall
row cat-again catall
row rmtree rm -rf "$m/usr"
command -v fio >/dev/null || { echo "randwrite: fio is not installed"; exit 0; }
row randwrite fio --name=rw --filename="$m/big" --ioengine=psync --rw=randwrite --bs=4k \
  --size=64M --number_ios=20000 --end_fsync=1 --randrepeat=1
