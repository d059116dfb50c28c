#!/usr/bin/env bash
# A real database on kmsfs: PostgreSQL (Debian's, installed if missing) with its
# data directory on a kmsfs mount (release build, -o allow_other, since the
# server runs as the postgres user). initdb with page checksums, a marker row,
# `pgbench -i -s SCALE`, `pgbench -T SECONDS`, clean shutdown, unmount and mount
# again (every read now decrypts from the backing files), restart, pg_amcheck
# on every database, pgbench's balance invariants, and a search of the backing
# directory for the marker and for known text of the data directory, which
# must not be there in plaintext. Always stops the server and unmounts.
#
# Environment: PG_SECONDS (60), PG_SCALE (10), PG_CLIENTS (1), PG_PORT (54329),
# PG_BASELINE=1 to run the same on a plain directory first, for comparison.
# Run as root. Prints the figures and a one-line verdict; exits 1 on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/cargo_env.sh

seconds=${PG_SECONDS:-60}
scale=${PG_SCALE:-10}
clients=${PG_CLIENTS:-1}
port=${PG_PORT:-54329}

if [[ $(id -u) -ne 0 ]]; then
  echo "error: run as root (it mounts, and starts PostgreSQL as the postgres user)" >&2
  exit 1
fi
if ! compgen -G '/usr/lib/postgresql/*/bin/pg_amcheck' >/dev/null; then
  echo "installing PostgreSQL"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends postgresql postgresql-contrib >/dev/null
fi
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
for tool in fusermount3 runuser; do
  command -v "$tool" >/dev/null || { echo "error: $tool is missing" >&2; exit 1; }
done

echo "building kmsfs (release)"
build --release --locked
kmsfs=$target/release/kmsfs

work=$(mktemp -d /tmp/kmsfs-postgres.XXXXXX)
chmod 755 "$work"
backing=$work/backing
mnt=$work/mnt
sock=$work/sock
logs=$work/logs
mkdir -p "$backing" "$mnt" "$sock" "$logs" "$work/plain"
# The mount root takes the backing directory's mode: postgres must pass through.
chmod 755 "$backing" "$mnt" "$work/plain"
chown postgres: "$sock" "$logs"
ks() { "$kmsfs" --keystore "$work/keystore" "$@"; }
as_pg() { (cd "$work" && runuser -u postgres -- "$@"); }
pg_running() { [[ -n ${pgdata:-} && -f $pgdata/postmaster.pid ]]; }
mounted() { grep -q " $mnt fuse" /proc/mounts; }

cleanup() {
  set +e
  if pg_running; then as_pg "$pgbin/pg_ctl" -D "$pgdata" -m immediate -w stop >/dev/null 2>&1; fi
  if mounted; then
    ks unmount "$mnt" >/dev/null 2>&1 || fusermount3 -u -z "$mnt" 2>/dev/null || umount -l "$mnt"
  fi
  if [[ ${keep:-0} == 1 ]]; then
    echo "logs kept in $work (kmsfs.log, logs/)"
    rm -rf "$backing" "$work/plain" "$work/keystore"
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
keep=1

mount_kmsfs() {
  [[ -e $work/keystore ]] || ks init >/dev/null
  ks mount "$backing" "$mnt" -o allow_other --log-file "$work/kmsfs.log"
}
start_pg() {
  as_pg "$pgbin/pg_ctl" -D "$pgdata" -l "$logs/postgres.log" -w -t 120 \
    -o "-p $port -k $sock -c listen_addresses=''" start >/dev/null
}
stop_pg() { as_pg "$pgbin/pg_ctl" -D "$pgdata" -m fast -w -t 300 stop >/dev/null; }
psql_q() { as_pg "$pgbin/psql" -h "$sock" -p "$port" -X -q -t -A -v ON_ERROR_STOP=1 "$@"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

marker="kmsfs-plaintext-marker-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
conf_text="PostgreSQL configuration file"

# One full run in directory $1 (on the mount or plain); sets the figures.
bench() {
  local dir=$1 remount=$2
  pgdata=$dir/pgdata
  mkdir "$pgdata"
  chown postgres: "$pgdata"
  chmod 700 "$pgdata"
  local t
  t=$(now)
  as_pg "$pgbin/initdb" -D "$pgdata" --data-checksums --auth=trust -E UTF8 --locale=C \
    >"$logs/initdb.log" 2>&1 || { cat "$logs/initdb.log"; return 1; }
  initdb_s=$(elapsed "$t")
  start_pg
  as_pg "$pgbin/createdb" -h "$sock" -p "$port" bench
  psql_q -d bench -c "CREATE TABLE marker (t text); INSERT INTO marker SELECT '$marker ' || i FROM generate_series(1, 1000) i;"
  t=$(now)
  as_pg "$pgbin/pgbench" -h "$sock" -p "$port" -i -s "$scale" -q bench >"$logs/pgbench-init.log" 2>&1 \
    || { cat "$logs/pgbench-init.log"; return 1; }
  init_s=$(elapsed "$t")
  as_pg "$pgbin/pgbench" -h "$sock" -p "$port" -T "$seconds" -c "$clients" -j "$clients" bench \
    >"$logs/pgbench.log" 2>&1 || { cat "$logs/pgbench.log"; return 1; }
  tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p' "$logs/pgbench.log")
  tps=$(printf '%.1f' "$tps")
  latency=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' "$logs/pgbench.log")
  txns=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$logs/pgbench.log")
  failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$logs/pgbench.log")
  t=$(now)
  stop_pg
  stop_s=$(elapsed "$t")
  if [[ $remount == 1 ]]; then
    ks unmount "$mnt"
    mount_kmsfs
  fi
  t=$(now)
  start_pg
  restart_s=$(elapsed "$t")
  t=$(now)
  as_pg "$pgbin/pg_amcheck" -h "$sock" -p "$port" --all --install-missing --heapallindexed \
    --parent-check >"$logs/amcheck.log" 2>&1 && amcheck=ok || amcheck="FAILED: $(head -5 "$logs/amcheck.log")"
  amcheck_s=$(elapsed "$t")
  # pgbench's invariants: every transaction adds the same delta to one
  # account, teller and branch and logs it in history.
  local sums
  sums=$(psql_q -d bench -c "SELECT (SELECT count(*) FROM pgbench_accounts),
      (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(tbalance) FROM pgbench_tellers),
      (SELECT sum(bbalance) FROM pgbench_branches), (SELECT coalesce(sum(delta), 0) FROM pgbench_history),
      (SELECT count(*) FROM pgbench_history), (SELECT count(*) FROM marker WHERE t LIKE '$marker %')")
  IFS='|' read -r accounts sa st sb sh history markers <<<"$sums"
  if [[ $accounts == $((scale * 100000)) && $sa == "$st" && $st == "$sb" && $sb == "$sh" && $markers == 1000 ]]; then
    invariants=ok
  else
    invariants="FAILED ($sums)"
  fi
  stop_pg
  datadir_mb=$(du -sm "$pgdata" | cut -f1)
}

if [[ ${PG_BASELINE:-0} == 1 ]]; then
  echo "baseline: the same on a plain directory ($(df --output=fstype "$work" | tail -1))"
  bench "$work/plain" 0
  base_tps=$tps
  base_init=$init_s
  echo "  plain: init ${init_s}s, $tps tps, latency ${latency} ms, amcheck $amcheck, invariants $invariants"
  rm -rf "$work/plain/pgdata"
fi

mount_kmsfs
bench "$mnt" 1
# Still mounted (and PostgreSQL stopped): the marker is visible above...
above=$({ grep -rlF --binary-files=text "$marker" "$pgdata" || true; } | wc -l)
# ...and nowhere below.
below=$({ grep -rlF --binary-files=text -e "$marker" -e "$conf_text" "$backing" || true; } | wc -l)
backing_files=$(find "$backing" -type f | wc -l)
backing_mb=$(du -sm "$backing" | cut -f1)
corrupt=$(grep -c -iE 'authenticat|corrupt' "$work/kmsfs.log" || true)

echo
echo "PostgreSQL on kmsfs, $(date -u +%Y-%m-%d), $("$pgbin/postgres" --version), $(nproc) cores"
echo "  initdb (page checksums): ${initdb_s} s"
echo "  pgbench -i -s $scale: ${init_s} s${base_init:+ (plain directory: ${base_init} s)}"
echo "  pgbench -T $seconds -c $clients: $tps tps, latency ${latency} ms, $txns transactions, ${failed:-0} failed${base_tps:+ (plain directory: $base_tps tps)}"
echo "  clean shutdown ${stop_s} s; unmount, mount, restart ${restart_s} s"
echo "  pg_amcheck --all --heapallindexed --parent-check: $amcheck (${amcheck_s} s)"
echo "  pgbench invariants (accounts = $accounts, balances equal, $history history rows): $invariants"
echo "  data directory ${datadir_mb} MB in $backing_files backing files (${backing_mb} MB)"
echo "  marker rows: in $above data files above the mount, in $below backing files below it (with the postgresql.conf text)"
echo "  kmsfs log: $corrupt lines about authentication or corruption"
if [[ $amcheck == ok && $invariants == ok && $above -gt 0 && $below -eq 0 && $corrupt -eq 0 && ${failed:-0} -eq 0 ]]; then
  keep=0
  echo "VERDICT: PASS: $tps tps; the data survived shutdown, remount and restart intact, and none of it is in plaintext below"
else
  echo "VERDICT: FAIL (see above; logs kept)"
  exit 1
fi
