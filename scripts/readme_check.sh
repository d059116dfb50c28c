#!/usr/bin/env bash
# Runs the README's ```sh blocks in order, as a new user pastes them, in one shell with
# `set -e`: any line that fails fails the check. The only changes: lines that build,
# install or run the project's scripts (`cargo build ...`, `cargo install ...`,
# `scripts/...`) are skipped and the binary under test is put on PATH instead
# ($KMSFS_BIN, else cargo's target directory, debug); HOME is a fresh directory, so `~` and every default location
# (keystore, logs) start empty. Needs root and /dev/fuse, as the README says.
# Usage: scripts/readme_check.sh [README]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/cargo_env.sh
readme=$(realpath "${1:-README.md}")

bin=${KMSFS_BIN:-$target/debug/kmsfs}
if [[ ! -x $bin ]]; then
  echo "readme_check: no kmsfs binary at $bin (cargo build, or set KMSFS_BIN)" >&2
  exit 1
fi
bin=$(realpath "$bin")

work=$(mktemp -d /tmp/kmsfs-readme.XXXXXX)
mkdir -p "$work/home" "$work/clone" "$work/bin"
ln -s "$bin" "$work/bin/kmsfs"
cleanup() {
  # Whatever the blocks mounted under the fresh HOME.
  awk -v w="$work/" '$3 == "fuse.kmsfs" && index($2, w) == 1 {print $2}' /proc/mounts |
    while read -r mp; do "$bin" unmount "$mp" 2>/dev/null || umount -l "$mp" || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# The blocks, one script; each line echoed before it runs.
script=$work/readme.sh
{
  echo 'set -eo pipefail'
  echo 'trap '\''echo "readme_check: FAILED (exit $?) at: $BASH_COMMAND" >&2'\'' ERR'
  awk '
    /^```sh[[:space:]]*$/ { inblock = 1; n++; printf "echo \"== README block %d\"\n", n; next }
    /^```/ && inblock { inblock = 0; next }
    inblock {
      if ($0 ~ /^(cargo (build|install)|scripts\/)/) {
        line = $0; gsub(/\047/, "\047\\\047\047", line)
        printf "echo \047(skipped: %s)\047\n", line
        next
      }
      line = $0; gsub(/\047/, "\047\\\047\047", line)
      printf "echo \047$ %s\047\n%s\n", line, $0
    }
  ' "$readme"
} >"$script"

env -i PATH="$work/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
  HOME="$work/home" USER="$(id -un)" LANG=C.UTF-8 TERM=dumb \
  bash -c 'cd "$1" && . "$2"' readme "$work/clone" "$script"
echo "readme_check: every README block ran as pasted"
