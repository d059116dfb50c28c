#!/usr/bin/env bash
# Mounts kmsfs the way the system does: mount(8) reads an fstab line (a
# temporary fstab given with `mount -T`, so /etc/fstab is never touched) and
# runs the mount.fuse.kmsfs helper, with the options such lines carry
# (noauto, _netdev, nofail, x-systemd.*, relatime, noacl) and kmsfs's own
# (keystore=, log_file=). Then writes, remounts read-only and read-write with
# `mount -o remount`, unmounts with umount(8), mounts again and reads back.
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
# a kmsfs line as it would stand in /etc/fstab
$work/backing $work/mnt fuse.kmsfs noauto,nofail,_netdev,x-systemd.automount,x-systemd.idle-timeout=60,relatime,noacl,keystore=$work/keystore,log_file=$work/kmsfs.log 0 0
EOF

echo "== mount -T fstab $work/mnt"
mount -T "$work/fstab" "$work/mnt"
mountpoint -q "$work/mnt"
grep -F " $work/mnt " /proc/self/mountinfo | grep -q ' - fuse.kmsfs '
echo "written through an fstab mount" > "$work/mnt/hello.txt"
if grep -q "written through" "$work/backing/hello.txt"; then
  echo "fstab_test: plaintext in the backing directory" >&2
  exit 1
fi

echo "== mount -o remount,ro"
mount -T "$work/fstab" -o remount,ro "$work/mnt"
if echo no > "$work/mnt/refused.txt" 2>/dev/null; then
  echo "fstab_test: a write succeeded on a read-only remount" >&2
  exit 1
fi
[[ $(cat "$work/mnt/hello.txt") == "written through an fstab mount" ]]
pids=$(grep -F " $work/mnt " /proc/self/mountinfo | grep -o 'kmsfs:[0-9]*' | cut -d: -f2)
[[ $(echo "$pids" | wc -l) -eq 1 ]] || { echo "fstab_test: remount started another daemon" >&2; exit 1; }

echo "== mount -o remount,rw"
mount -T "$work/fstab" -o remount,rw "$work/mnt"
echo "again" > "$work/mnt/second.txt"
"$kmsfs" status "$work/mnt"

echo "== umount, mount again"
umount "$work/mnt"
mountpoint -q "$work/mnt" && { echo "fstab_test: still mounted" >&2; exit 1; }
mount -T "$work/fstab" "$work/mnt"
[[ $(cat "$work/mnt/hello.txt") == "written through an fstab mount" ]]
[[ $(cat "$work/mnt/second.txt") == "again" ]]
umount "$work/mnt"

echo "== mount -t fuse.kmsfs BACKING MNT -o keystore=..."
mount -t fuse.kmsfs "$work/backing" "$work/mnt" -o "keystore=$work/keystore,log_file=$work/kmsfs.log,nodev"
[[ $(cat "$work/mnt/second.txt") == "again" ]]
umount "$work/mnt"
grep -q "mount option _netdev ignored" "$work/kmsfs.log" || grep -q "mounted " "$work/kmsfs.log"
echo "fstab mount ok"
