#!/usr/bin/env bash
# Measures kmsfs and prints tables; asserts nothing. Every filesystem figure is quoted
# against a plain directory on the same disk measured in the same run, next to
# gocryptfs (Debian package) for reference.
#
#   scripts/bench.sh            # everything (needs root and /dev/fuse for the mount part)
#   scripts/bench.sh kms        # only the in-process key-service benchmark
#   scripts/bench.sh fs         # only the filesystem rows
#
# Environment: BENCH_ROUNDS (3) interleaved rounds (each starts at the next target), the median is shown; BENCH_MB (256)
# size of the sequential file; BENCH_RAND_SECS (5) seconds per random-I/O row;
# BENCH_RESULTS (results/bench) where the CSV, JSON and SVG chart go; BENCH_TREE (the
# directories the small-file tree is made of, default /usr/include + /usr/lib/python3.*);
# BENCH_V1=1 adds a fourth target, "kmsfs-v1": a kmsfs mount of a backing directory in
# block format 1 (one made before format 2: its marker names no block format), measured
# in the same rounds as the new tree's format 2, for the table of the two formats.
# BENCH_NAMES=1 adds "kmsfs-plainnames": a kmsfs mount made with -o plaintextnames,
# measured in the same rounds as the default (encrypted names), for the names row pair.
# BENCH_URING=1 adds "kmsfs-uring": a kmsfs mount made with -o io_uring (FUSE over
# io_uring), measured in the same rounds as the default (/dev/fuse); the run sets
# /sys/module/fuse/parameters/enable_uring to Y and puts the old value back at the end.
# BENCH_BASE=PATH adds "kmsfs-base": a kmsfs mount served by another kmsfs binary (an
# older build), measured in the same rounds as this build's, for a change's before/after.
# BENCH_ROWS (all) the rows to run, by name: seqwrite seqread randwrite randread untar
# lsR catall rmtree (the random rows use the file seqwrite leaves, lsR, catall and rmtree
# the tree untar leaves); BENCH_TARGETS (all) the targets to measure, by name: plain
# kmsfs kmsfs-nowb gocryptfs and the optional ones above.
#
# Rows (the performance issue's table): fio psync QD1 sequential write bs=1M with
# end_fsync, sequential read with caches dropped, random 4 KiB buffered writes with
# end_fsync, random 4 KiB reads of a cached file; tar -x of the tree then sync, ls -lR
# of it warm (second run), cat of every file cold, rm -rf of it. Beside them: each
# mount's peak RSS (VmHWM) and, for kmsfs, the FUSE requests each workload cost by
# opcode, from the daemon's own counters (xattr trusted.kmsfs.requests on the root).
# kmsfs runs twice in each round: as mounted by default (the writeback cache on) and
# with -o no_writeback_cache (column "kmsfs, no wb"), so a change is measured against
# the other in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/cargo_env.sh
what=${1:-all}
MB=${BENCH_MB:-256}
ROUNDS=${BENCH_ROUNDS:-3}
RSECS=${BENCH_RAND_SECS:-5}
RESULTS=${BENCH_RESULTS:-$PWD/results/bench}

build --release --examples --bins
kmsfs=$target/release/kmsfs

if [[ $what == all || $what == kms ]]; then
  echo "== key service, in process, one thread"
  "$target/release/examples/kms_bench"
fi
[[ $what == all || $what == fs ]] || exit 0

if [[ ! -c /dev/fuse || $(id -u) -ne 0 ]]; then
  echo "bench: the filesystem part needs root and /dev/fuse" >&2; exit 1
fi
need=()
command -v gocryptfs >/dev/null || need+=(gocryptfs)
command -v fio >/dev/null || need+=(fio)
if ((${#need[@]})); then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The machine's load when the run starts and ends goes into the results: timings
# taken beside other work are noisy (the request counts are not).
load0=$(cut -d' ' -f1-3 /proc/loadavg)
work=$(mktemp -d /var/tmp/kmsfs-bench.XXXXXX)
mounts=()
uring_param=/sys/module/fuse/parameters/enable_uring
uring_old=
cleanup() {
  for m in "${mounts[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  [[ -z $uring_old ]] || echo "$uring_old" > "$uring_param"
  rm -rf "$work"
}
trap cleanup EXIT

# Four targets: plain, kmsfs, kmsfs without the writeback cache, gocryptfs.
mkdir -p "$work"/{plain,kb,km,nb,kn,gb,gm}
export KMSFS_KEYSTORE=$work/keystore XDG_STATE_HOME=$work/state
"$kmsfs" mount "$work/kb" "$work/km" 2>/dev/null; mounts+=("$work/km")
"$kmsfs" mount "$work/nb" "$work/kn" -o no_writeback_cache 2>/dev/null; mounts+=("$work/kn")
printf 'bench-passphrase\n' > "$work/pass"
gocryptfs -q -init -passfile "$work/pass" -scryptn 10 "$work/gb" >/dev/null
gocryptfs -q -nosyslog -passfile "$work/pass" "$work/gb" "$work/gm"; mounts+=("$work/gm")
targets=(plain km kn gm)
names=(plain kmsfs kmsfs-nowb gocryptfs)
# The daemon serving mount point $1, as `kmsfs status` names it (for its peak RSS).
daemon() { "$kmsfs" status "$1" --output json --query 'Mounts[0].Pid' 2>/dev/null || true; }
gpid=$(pgrep -n -f "gocryptfs .*$work/gb" || true)
pids=("" "$(daemon "$work/km")" "$(daemon "$work/kn")" "$gpid")
if [[ ${BENCH_V1:-0} == 1 ]]; then
  # A tree as a build before block format 2 left it: mounted once, its marker's
  # BlockFormat taken out, mounted again (new files in it are then format 1).
  mkdir -p "$work"/{k1b,k1m}
  "$kmsfs" mount "$work/k1b" "$work/k1m" 2>/dev/null
  "$kmsfs" unmount "$work/k1m"
  python3 -c 'import json,sys; p=sys.argv[1]; m=json.load(open(p)); m.pop("BlockFormat"); json.dump(m, open(p, "w"))' "$work/k1b/.kmsfs.json"
  # An older build kept no record of the tree's choices in the keystore, either (else
  # the mount refuses the changed binding file, as it must).
  grep -l -F -- "$work/k1b" "$work/keystore/backings/"* 2>/dev/null | xargs -r rm -f
  "$kmsfs" mount "$work/k1b" "$work/k1m" 2>/dev/null; mounts+=("$work/k1m")
  targets+=(k1m); names+=(kmsfs-v1); pids+=("$(daemon "$work/k1m")")
fi

if [[ ${BENCH_NAMES:-0} == 1 ]]; then
  mkdir -p "$work"/{pnb,pnm}
  "$kmsfs" mount "$work/pnb" "$work/pnm" -o plaintextnames 2>/dev/null; mounts+=("$work/pnm")
  targets+=(pnm); names+=(kmsfs-plainnames); pids+=("$(daemon "$work/pnm")")
fi

if [[ ${BENCH_URING:-0} == 1 ]]; then
  if [[ ! -w $uring_param ]]; then
    echo "bench: BENCH_URING=1 needs a kernel with FUSE over io_uring ($uring_param)" >&2; exit 1
  fi
  uring_old=$(cat "$uring_param"); echo Y > "$uring_param"
  mkdir -p "$work"/{ub,um}
  "$kmsfs" mount "$work/ub" "$work/um" -o io_uring --log-file "$work/uring.log" 2>/dev/null; mounts+=("$work/um")
  targets+=(um); names+=(kmsfs-uring); pids+=("$(daemon "$work/um")")
fi

if [[ -n ${BENCH_BASE:-} ]]; then
  mkdir -p "$work"/{bb,bm}
  "$BENCH_BASE" mount "$work/bb" "$work/bm" 2>/dev/null; mounts+=("$work/bm")
  targets+=(bm); names+=(kmsfs-base); pids+=("$(daemon "$work/bm")")
fi

# Only the targets and rows asked for.
if [[ -n ${BENCH_TARGETS:-} ]]; then
  keep_t=(); keep_n=(); keep_p=()
  for i in "${!targets[@]}"; do
    if [[ " $BENCH_TARGETS " == *" ${names[$i]} "* ]]; then
      keep_t+=("${targets[$i]}"); keep_n+=("${names[$i]}"); keep_p+=("${pids[$i]}")
    fi
  done
  targets=("${keep_t[@]}"); names=("${keep_n[@]}"); pids=("${keep_p[@]}")
fi
ROWS=" ${BENCH_ROWS:-seqwrite seqread randwrite randread untar lsR catall rmtree} "
row() { [[ $ROWS == *" $1 "* ]]; }

# The small-file tree: files every Debian machine has.
read -r -a tree <<<"${BENCH_TREE:-/usr/include $(ls -d /usr/lib/python3.[0-9]* 2>/dev/null | head -1)}"
tar -cf "$work/tree.tar" "${tree[@]}" 2>/dev/null || true
nfiles=$(tar -tvf "$work/tree.tar" | grep -c '^-')
ndirs=$(tar -tvf "$work/tree.tar" | grep -c '^d')
tsize=$(tar -tvf "$work/tree.tar" | awk '/^-/ { s += $3 } END { printf "%.0f", s / 1048576 }')
echo "== small-file tree: ${tree[*]}: $nfiles files, $ndirs directories, $tsize MiB"

drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
now() { date +%s%N; }
# counts DIR: kmsfs's request counters (empty elsewhere).
counts() { [[ $1 == "$work/km" || $1 == "$work/kn" || $1 == "$work/k1m" || $1 == "$work/pnm" || $1 == "$work/um" || $1 == "$work/bm" ]] && python3 -c 'import os,sys; print(os.getxattr(sys.argv[1], "trusted.kmsfs.requests").decode(), end="")' "$1" || true; }
fio_json() { fio --output-format=json --ioengine=psync --iodepth=1 --fallocate=none "$@"; }
iops() { python3 -c 'import json,sys; j=json.load(open(sys.argv[1]))["jobs"][0]; print(j[sys.argv[2]]["total_ios"])' "$@"; }

csv=$work/raw.csv
echo "round,target,row,value,unit" > "$csv"
reqs=$work/requests.txt; : > "$reqs"
# One measurement: ROW UNIT TARGET-DIR NAME then a function that prints the value.
measure() {
  local row=$1 unit=$2 d=$3 n=$4; shift 4
  local before after v
  before=$(counts "$d")
  v=$("$@")
  after=$(counts "$d")
  echo "$r,$n,$row,$v,$unit" >> "$csv"
  if [[ $n == kmsfs* && $r == 1 ]]; then
    python3 - "$row${n#kmsfs}" "$before" "$after" >> "$reqs" <<'PY'
import sys
row, b, a = sys.argv[1:4]
parse = lambda t: {k: int(v) for k, v in (l.split() for l in t.splitlines() if l)}
b, a = parse(b), parse(a)
d = {k: a[k] - b.get(k, 0) for k in a if a[k] - b.get(k, 0) > 0}
print(row + "\t" + str(sum(d.values())) + "\t" + " ".join(f"{k}={v}" for k, v in sorted(d.items(), key=lambda x: -x[1])))
PY
  fi
}
# Each prints its figure. Throughputs: MiB/s or IOPS over the wall time of the command
# (fio start, the I/O and the end_fsync); times: seconds.
seqwrite() { local s e; s=$(now); fio_json --name=w --filename="$d/big" --rw=write --bs=1M --size="${MB}M" --end_fsync=1 >/dev/null; e=$(now); awk -v m="$MB" -v s="$s" -v e="$e" 'BEGIN { printf "%.0f", m / ((e - s) / 1e9) }'; }
seqread() { local s e; s=$(now); fio_json --name=r --filename="$d/big" --rw=read --bs=1M --size="${MB}M" >/dev/null; e=$(now); awk -v m="$MB" -v s="$s" -v e="$e" 'BEGIN { printf "%.0f", m / ((e - s) / 1e9) }'; }
randwrite() { local s e n; s=$(now); fio_json --name=rw --filename="$d/big" --invalidate=0 --rw=randwrite --bs=4k --size="${MB}M" --time_based --runtime="$RSECS" --end_fsync=1 > "$work/fio.json"; e=$(now); n=$(iops "$work/fio.json" write); awk -v n="$n" -v s="$s" -v e="$e" 'BEGIN { printf "%.0f", n / ((e - s) / 1e9) }'; }
randread() { local s e n; cat "$d/big" > /dev/null; s=$(now); fio_json --name=rr --filename="$d/big" --invalidate=0 --rw=randread --bs=4k --size="${MB}M" --time_based --runtime="$RSECS" > "$work/fio.json"; e=$(now); n=$(iops "$work/fio.json" read); awk -v n="$n" -v s="$s" -v e="$e" 'BEGIN { printf "%.0f", n / ((e - s) / 1e9) }'; }
timed() { local s e; s=$(now); "$@" >/dev/null 2>&1; e=$(now); awk -v s="$s" -v e="$e" 'BEGIN { printf "%.3f", (e - s) / 1e9 }'; }
untar() { timed sh -c "tar -C '$d' -xf '$work/tree.tar' && sync"; }
lsR() { ls -lR "$d/usr" > /dev/null; timed ls -lR "$d/usr"; }
catall() { drop; timed sh -c "find '$d/usr' -type f -print0 | xargs -0 cat > /dev/null"; }
rmtree() { timed rm -rf "$d/usr"; }

for ((r = 1; r <= ROUNDS; r++)); do
  echo "round $r/$ROUNDS ($(uptime | sed 's/.*load/load/'))"
  # Each round starts at another target, so none is always measured right
  # after the same neighbour (page cache, writeback of the one before).
  for k in "${!targets[@]}"; do
    i=$(((k + r - 1) % ${#targets[@]}))
    d=$work/${targets[$i]}; n=${names[$i]}
    if row seqwrite; then drop; measure seqwrite MiB/s "$d" "$n" seqwrite; fi
    if row seqread; then drop; measure seqread MiB/s "$d" "$n" seqread; fi
    if row randwrite; then measure randwrite IOPS "$d" "$n" randwrite; fi
    if row randread; then measure randread IOPS "$d" "$n" randread; fi
    rm -f "$d/big"
    if row untar; then drop; measure untar s "$d" "$n" untar; fi
    if row lsR; then measure lsR s "$d" "$n" lsR; fi
    if row catall; then measure catall s "$d" "$n" catall; fi
    if row rmtree; then measure rmtree s "$d" "$n" rmtree; fi
    rm -rf "$d/usr"
  done
done
for ((i = 0; i < ${#targets[@]}; i++)); do
  if [[ ${names[$i]} == plain ]]; then continue; fi
  hwm=$(awk '/VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/${pids[$i]}/status" 2>/dev/null || echo NA)
  echo "0,${names[$i]},peakrss,$hwm,MiB" >> "$csv"
done

if [[ ${BENCH_URING:-0} == 1 ]]; then
  # What served the kmsfs-uring mount (its daemon says at unmount how many requests
  # its rings took).
  umount "$work/um" && sleep 1
  echo "== kmsfs-uring: $(grep -o 'serving through FUSE over io_uring.*\|kernel does not offer.*\|refused.*' "$work/uring.log" | head -2 | tr '\n' ' ')"
  echo "== kmsfs-uring: $(grep -o 'FUSE over io_uring served.*' "$work/uring.log" | tail -1)"
fi

mkdir -p "$RESULTS"
stamp=$(date +%Y%m%d-%H%M%S)
cp "$csv" "$RESULTS/raw-$stamp.csv"
python3 scripts/bench/report.py "$csv" "$reqs" "$RESULTS" "$stamp" \
  "rounds=$ROUNDS mb=$MB rand_secs=$RSECS tree=$nfiles files/$ndirs dirs/$tsize MiB kernel=$(uname -r) cpus=$(nproc) load(start)=$load0 load(end)=$(cut -d' ' -f1-3 /proc/loadavg)"
