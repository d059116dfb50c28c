#!/usr/bin/env bash
# Measures kmsfs and prints tables; asserts nothing. Every filesystem figure is quoted
# against a plain directory on the same disk measured in the same run, next to
# gocryptfs 2.3 (Debian) for reference.
#
#   scripts/bench.sh            # everything (needs root and /dev/fuse for the mount part)
#   scripts/bench.sh kms        # only the in-process key-service benchmark
#   BENCH_MB=512 scripts/bench.sh fs
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
MB=${BENCH_MB:-256}

cargo build --release --quiet --examples --bins
kmsfs=$PWD/target/release/kmsfs

if [[ $what == all || $what == kms ]]; then
  echo "== key service, in process, one thread"
  ./target/release/examples/kms_bench
fi
[[ $what == all || $what == fs ]] || exit 0

if [[ ! -c /dev/fuse || $(id -u) -ne 0 ]]; then
  echo "bench: the filesystem part needs root and /dev/fuse" >&2; exit 1
fi
need=()
command -v gocryptfs >/dev/null || need+=(gocryptfs)
command -v fio >/dev/null || need+=(fio)
command -v sqlite3 >/dev/null || need+=(sqlite3)
if ((${#need[@]})); then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

work=$(mktemp -d /var/tmp/kmsfs-bench.XXXXXX)
mounts=()
cleanup() {
  for m in "${mounts[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# Three targets: plain, kmsfs, gocryptfs.
mkdir -p "$work"/{plain,kb,km,gb,gm,src}
export KMSFS_KEYSTORE=$work/keystore XDG_STATE_HOME=$work/state
"$kmsfs" mount "$work/kb" "$work/km" 2>/dev/null; mounts+=("$work/km")
printf 'bench-passphrase\n' > "$work/pass"
gocryptfs -q -init -passfile "$work/pass" -scryptn 10 "$work/gb" >/dev/null
gocryptfs -q -nosyslog -passfile "$work/pass" "$work/gb" "$work/gm"; mounts+=("$work/gm")
targets=(plain km gm)
names=(plain kmsfs gocryptfs)

# A source tree for the small-file test: 3000 files of 0-16 KiB in 60 directories.
python3 - "$work/src" <<'PY'
import os, random, sys
random.seed(7)
root = sys.argv[1]
for d in range(60):
    p = os.path.join(root, f"dir{d:02}")
    os.makedirs(p)
    for f in range(50):
        with open(os.path.join(p, f"file{f:02}.txt"), "wb") as fh:
            fh.write(os.urandom(random.randint(0, 16384)))
PY
tar -C "$work" -cf "$work/tree.tar" src

drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
secs() { local s e; s=$(date +%s%N); "$@" >/dev/null 2>&1; e=$(date +%s%N); awk -v a="$s" -v b="$e" 'BEGIN { printf "%.3f", (b - a) / 1e9 }'; }

# Each measurement RUNS times (default 5), the targets interleaved within each round so
# that drift on the host hits all three alike; the tables show the median.
RUNS=${BENCH_RUNS:-5}
declare -A T
record() { T[$1,$2]="${T[$1,$2]:-} $3"; }
for ((r = 1; r <= RUNS; r++)); do
  for i in 0 1 2; do
    d=$work/${targets[$i]}; n=${names[$i]}
    drop; record "$n" write "$(secs dd if=/dev/zero of="$d/big" bs=1M count="$MB" conv=fsync)"
    drop; record "$n" read "$(secs dd if="$d/big" of=/dev/null bs=1M)"
    drop; record "$n" rand "$(secs fio --name=r --filename="$d/big" --rw=randrw --bs=4k --size="${MB}M" \
          --io_size=64M --ioengine=psync --direct=0 --fsync=0 --end_fsync=1)"
    rm -f "$d/big"
    drop; record "$n" untar "$(secs sh -c "tar -C '$d' -xf '$work/tree.tar' && sync")"
    drop; record "$n" readtree "$(secs sh -c "cat '$d'/src/*/* > /dev/null")"
    record "$n" rmtree "$(secs rm -rf "$d/src")"
    record "$n" sqlite "$(secs sh -c "sqlite3 '$d/db' 'PRAGMA journal_mode=WAL; CREATE TABLE t(a INTEGER, b TEXT);
        BEGIN; WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<200000)
        INSERT INTO t SELECT x, hex(randomblob(32)) FROM c; COMMIT; SELECT count(*) FROM t;'")"
    rm -f "$d"/db*
  done
done
median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

printf '\n== filesystem, %s MiB files, median of %s runs, seconds (ratio to plain; lower is better)\n' "$MB" "$RUNS"
printf '%-34s %16s %16s %16s\n' test plain kmsfs gocryptfs
row() {
  local key=$1 label=$2 p t
  p=$(median "${T[plain,$1]}")
  printf '%-34s %16s' "$label" "$p"
  for n in kmsfs gocryptfs; do
    t=$(median "${T[$n,$key]}")
    printf ' %16s' "$(awk -v t="$t" -v p="$p" 'BEGIN { printf "%.3f (%.1fx)", t, t / p }')"
  done
  echo
}
row write "sequential write ${MB} MiB + fsync"
row read "sequential read ${MB} MiB (cold)"
row rand "fio 4k randrw 64 MiB"
row untar "tar -x 3000 files + sync"
row readtree "cat 3000 files (cold)"
row rmtree "rm -rf 3000 files"
row sqlite "sqlite3 200k inserts (WAL)"
