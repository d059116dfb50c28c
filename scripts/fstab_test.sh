#!/usr/bin/env bash
# Mounts kmsfs the way the system does: mount(8) reads an fstab line (a
# temporary fstab given with `mount -T`, so /etc/fstab is never touched) and
# runs the mount.fuse.kmsfs helper, with the options such lines carry
# (_netdev, nofail, relatime, noacl) and kmsfs's own (keystore=, log_file=).
# `mount -a` twice (the second sees the line mounted: the source is the
# backing directory), remounts read-only and read-write with `mount -o
# remount` (the same daemon, nothing on stderr), unmounts with `umount -c
# BACKING`, mounts again, `umount MNT`, and reads back.
# Needs root and /dev/fuse. KMSFS names the binary (default: target/debug/kmsfs).
# mount(8) runs that binary, whatever helper the system has: the script runs in a
# private mount namespace where /sbin is an overlay whose only change is
# mount.fuse.kmsfs pointing at it (the system's /sbin is not touched).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/cargo_env.sh

kmsfs=$(realpath "${KMSFS:-$target/debug/kmsfs}")
if [[ $(id -u) -ne 0 || ! -c /dev/fuse ]]; then
  echo "fstab_test: needs root and /dev/fuse" >&2
  exit 2
fi
[[ -x $kmsfs ]] || { echo "fstab_test: no binary at $kmsfs" >&2; exit 2; }
if [[ -z ${KMSFS_FSTAB_NS:-} ]]; then
  KMSFS_FSTAB_NS=1 KMSFS=$kmsfs exec unshare --mount --propagation private bash "$0" "$@"
fi

work=$(mktemp -d /tmp/kmsfs-fstab.XXXXXX)
sbin=$(realpath /sbin)
overlay=no
cleanup() {
  if mountpoint -q "$work/mnt" 2>/dev/null; then umount "$work/mnt" || umount -l "$work/mnt" || true; fi
  if [[ $overlay == yes ]]; then umount "$sbin" || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/helper"
ln -s "$kmsfs" "$work/helper/mount.fuse.kmsfs"
mount -t overlay kmsfs-test-helper -o "lowerdir=$work/helper:$sbin" "$sbin"
overlay=yes
[[ $(readlink /sbin/mount.fuse.kmsfs) == "$kmsfs" ]]

mkdir -p "$work/backing" "$work/mnt"
"$kmsfs" --keystore "$work/keystore" init >/dev/null
cat > "$work/fstab" <<EOF
# docs/MOUNT.md's fstab line, with this test's paths (and noacl, which such lines carry)
$work/backing $work/mnt fuse.kmsfs nofail,_netdev,relatime,noacl,keystore=$work/keystore,log_file=$work/kmsfs.log 0 0
EOF
# The kmsfs lines of mountinfo at MNT: "SOURCE FSTYPE".
mounted() { awk -v m="$work/mnt" '$5 == m { for (i = 7; $i != "-"; i++); print $(i + 2), $(i + 1) }' /proc/self/mountinfo; }
daemon() { "$kmsfs" status "$work/mnt" --output json | sed -n 's/^ *"Pid": \([0-9]*\),*$/\1/p'; }
quiet() { # runs "$@"; fails if it printed anything on stderr
  "$@" 2>"$work/stderr" || { echo "fstab_test: '$*' failed: $(cat "$work/stderr")" >&2; exit 1; }
  if [[ -s $work/stderr ]]; then echo "fstab_test: '$*' said on stderr: $(cat "$work/stderr")" >&2; exit 1; fi
}

echo "== mount -a (twice: the second finds it mounted and does nothing)"
quiet mount -a -T "$work/fstab"
mountpoint -q "$work/mnt"
[[ $(mounted) == "$work/backing fuse.kmsfs" ]] || { echo "fstab_test: source and type are '$(mounted)'" >&2; exit 1; }
pid=$(daemon)
[[ -n $pid ]] || { echo "fstab_test: status found no daemon" >&2; exit 1; }
quiet mount -a -T "$work/fstab"
[[ $(mounted | wc -l) -eq 1 ]] || { echo "fstab_test: mount -a mounted twice" >&2; exit 1; }
echo "written through an fstab mount" > "$work/mnt/hello.txt"
# The whole backing tree (its names are encrypted: hello.txt is not there by
# that name): a file was written, and no plaintext is in it.
[[ $(find "$work/backing" -type f ! -name '.kmsfs*' | wc -l) -ge 1 ]] ||
  { echo "fstab_test: nothing written in the backing directory" >&2; exit 1; }
if grep -rq "written through" "$work/backing"; then
  echo "fstab_test: plaintext in the backing directory" >&2
  exit 1
fi

echo "== mount -o remount,ro"
quiet mount -T "$work/fstab" -o remount,ro "$work/mnt"
if echo no > "$work/mnt/refused.txt" 2>/dev/null; then
  echo "fstab_test: a write succeeded on a read-only remount" >&2
  exit 1
fi
[[ $(cat "$work/mnt/hello.txt") == "written through an fstab mount" ]]
[[ $(daemon) == "$pid" && $(mounted | wc -l) -eq 1 ]] || { echo "fstab_test: remount started another daemon" >&2; exit 1; }

echo "== mount -o remount,rw"
quiet mount -T "$work/fstab" -o remount,rw "$work/mnt"
echo "again" > "$work/mnt/second.txt"
[[ $(daemon) == "$pid" ]]
"$kmsfs" status "$work/mnt"

echo "== umount -c BACKING"
# By source: -c, because for an argument that is a directory libmount (2.35 and
# later) asks statfs(2) which filesystem holds it and unmounts that path as a
# mount point, never looking at sources; -c makes it read mountinfo, where the
# source is the backing directory. (The same holds for bind mounts.)
quiet umount -c "$work/backing"
if mountpoint -q "$work/mnt"; then echo "fstab_test: still mounted" >&2; exit 1; fi

echo "== mount -a again, umount MNT"
quiet mount -a -T "$work/fstab"
[[ $(cat "$work/mnt/hello.txt") == "written through an fstab mount" ]]
[[ $(cat "$work/mnt/second.txt") == "again" ]]
quiet umount "$work/mnt"
if mountpoint -q "$work/mnt"; then echo "fstab_test: still mounted" >&2; exit 1; fi

echo "== mount -t fuse.kmsfs BACKING MNT -o keystore=..."
mount -t fuse.kmsfs "$work/backing" "$work/mnt" -o "keystore=$work/keystore,log_file=$work/kmsfs.log,nodev"
[[ $(cat "$work/mnt/second.txt") == "again" ]]
umount "$work/mnt"
grep -q "mount option _netdev ignored" "$work/kmsfs.log" || grep -q "mounted " "$work/kmsfs.log"
echo "fstab mount ok"
