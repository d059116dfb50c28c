#!/usr/bin/env bash
# Installs what the test suite needs (idempotent, Debian, as root) and runs all of it:
# formatting, clippy, unit tests, doc tests and the integration tests that mount.
#
# Mount tests skip, saying why, only where /dev/fuse is absent; tests that need a
# tool or root skip, saying why, without it. Under CI (CI=true) or with
# KMSFS_REQUIRE_FUSE=1 each of these is an error instead, so CI never skips a test.
# KMSFS_LONG_TESTS=1 runs the long sizes of tests that have one (tests/mount_names.rs: a
# directory of 100,000 entries in each names mode, instead of 10,000).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${CI:-}" == "true" ]]; then
  export KMSFS_REQUIRE_FUSE=1
fi
if [[ "${KMSFS_REQUIRE_FUSE:-}" == "1" && ! -c /dev/fuse ]]; then
  echo "error: /dev/fuse is absent; the mount tests cannot run here (CI must not skip them)" >&2
  exit 1
fi

# Programs the tests run on the mount, fusermount3 for unmounting, and nfsd's tools
# for exporting the mount (tests/mount_export.rs; the kernel must have nfsd too). Under CI a
# test that misses one of them (or root) fails instead of skipping
# (tests/common: require_tool, require_root), so all of them are installed here.
missing=()
for pair in fusermount3:fuse3 sqlite3:sqlite3 git:git rsync:rsync tar:tar getfattr:attr \
  python3:python3 openssl:openssl runuser:util-linux setpriv:util-linux fallocate:util-linux \
  curl:curl chromium:chromium exportfs:nfs-kernel-server ip:iproute2 nsenter:util-linux \
  useradd:passwd newuidmap:uidmap; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "error: missing packages ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root" >&2
    exit 1
  fi
  echo "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# pjdfstest (POSIX conformance) and fsx (random-operation data checker) run on the mount;
# cargo builds them once on a new machine.
for tool in pjdfstest@0.2.2 fsx@0.3.2; do
  command -v "${tool%@*}" >/dev/null 2>&1 || cargo install --quiet "$tool"
done

# boto3, the aws CLI and moto's server, pinned, in a venv under target/ (python3-venv
# from Debian if missing): the AWS clients that the protocol tests drive
# `kmsfs kms serve` with, and the KMS that remote mounts are tested against.
KMSFS_PY_VENV=$(scripts/pyenv.sh)
export KMSFS_PY_VENV

# A mount left over from an interrupted earlier run makes nothing here fail, but say so.
if grep -qE ' fuse\.kmsfs ' /proc/mounts 2>/dev/null; then
  echo "note: kmsfs mounts from another run are still mounted:" >&2
  grep -E ' fuse\.kmsfs ' /proc/mounts | awk '{print "  " $2}' >&2
fi

# Background mounts log under $XDG_STATE_HOME/kmsfs: keep the tests' logs out of $HOME.
XDG_STATE_HOME=$(mktemp -d /tmp/kmsfs-test-state.XXXXXX)
export XDG_STATE_HOME
trap 'rm -rf "$XDG_STATE_HOME"' EXIT

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# Two test threads: the machine has two cores, and mount tests spawn daemons of their own.
cargo test --all-targets --locked -- --test-threads=2
cargo test --doc --locked
