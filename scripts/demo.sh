#!/usr/bin/env bash
# The main job, end to end, on a throwaway keystore in the zero-setup default mode:
# mount (which creates the keystore and alias/kmsfs/default), write through the mount,
# show the plaintext above and the ciphertext below, disable the key and show the
# refusal, enable it again, unmount. Needs root and /dev/fuse (as any FUSE mount here).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/cargo_env.sh

if [[ ! -c /dev/fuse ]]; then
  echo "demo: /dev/fuse is absent; kmsfs needs FUSE to mount" >&2
  exit 1
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "demo: /dev/fuse is root-only on this machine; run the demo as root" >&2
  exit 1
fi

kmsfs=$target/release/kmsfs
# Build only when a source is newer than the binary.
if [[ -x $kmsfs && -z $(find src Cargo.toml Cargo.lock -newer "$kmsfs" -print -quit) ]]; then
  echo "== kmsfs (release) is current: not building"
else
  build --release
fi

work=$(mktemp -d /tmp/kmsfs-demo.XXXXXX)
export KMSFS_KEYSTORE=$work/keystore XDG_STATE_HOME=$work/state   # the mount's log goes there
backing=$work/backing
mnt=$work/mnt
mkdir -p "$backing" "$mnt"
cleanup() {
  if mountpoint -q "$mnt" 2>/dev/null; then "$kmsfs" unmount "$mnt" || umount -l "$mnt" || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

step "mount: no keystore yet, so kmsfs creates one (root key file, mode 0600) and alias/kmsfs/default"
run "$kmsfs" mount "$backing" "$mnt"
run ls -l "$KMSFS_KEYSTORE"
run "$kmsfs" kms list-aliases

step "write through the mount, read it back"
printf 'Quarterly numbers: revenue up, secrets kept.\n' > "$mnt/report.txt"
mkdir "$mnt/notes"; seq 1 2000 > "$mnt/notes/numbers.txt"
run cat "$mnt/report.txt"
run ls -l "$mnt" "$mnt/notes"

step "the backing directory holds only ciphertext: encrypted names, then each file's header and 4 KiB blocks (nonce, ciphertext, tag)"
run ls -lA "$backing"
if find "$backing" | grep -qE 'report|notes|numbers'; then
  echo "demo: FAILED: a readable name in the backing directory" >&2; exit 1
fi
echo "(no name in $backing says report, notes or numbers)"
report=$(find "$backing" -maxdepth 1 -type f ! -name '.kmsfs.*')
run od -A d -t x1 -N 96 "$report"
if grep -q "revenue" "$report"; then
  echo "demo: FAILED: plaintext found in the backing file" >&2; exit 1
fi
echo "(grep finds no 'revenue' in $report)"
run "$kmsfs" inspect "$report"

step "disable the CMK: opening the file is refused (EACCES), like a detached EBS key"
run "$kmsfs" kms disable-key --key-id alias/kmsfs/default
if cat "$mnt/report.txt" 2>"$work/err"; then
  echo "demo: FAILED: read succeeded with the key disabled" >&2; exit 1
fi
printf '$ cat %s\n%s\n' "$mnt/report.txt" "$(cat "$work/err")"

step "enable it again: the file opens"
run "$kmsfs" kms enable-key --key-id alias/kmsfs/default
run cat "$mnt/report.txt"

step "unmount: the plaintext view is gone, the ciphertext stays"
run "$kmsfs" unmount "$mnt"
run ls -A "$mnt"
run "$kmsfs" unseal "$report" "$work/report.unsealed"
run cat "$work/report.unsealed"

step "who used the key: the audit trail (hash-chained, signed), the refused open included"
run "$kmsfs" audit show --key-id alias/kmsfs/default --event Decrypt
run "$kmsfs" audit verify
echo
echo "demo: done (everything was in $work, now removed)"
