#!/usr/bin/env bash
# Builds kmsfs (release) and installs it where the system looks:
#   PREFIX/bin/kmsfs                                   the binary
#   PREFIX/share/man/man1/kmsfs*.1                     its man pages
#   PREFIX/share/bash-completion/completions/kmsfs     bash completion
#   PREFIX/share/zsh/site-functions/_kmsfs             zsh completion
#   PREFIX/share/fish/vendor_completions.d/kmsfs.fish  fish completion
# and, as root, the mount(8) helper /sbin/mount.fuse.kmsfs pointing at
# PREFIX/bin/kmsfs (so `cargo clean` cannot break fstab mounts; a helper that
# points at another binary is left alone unless --force).
# Usage: scripts/install.sh [--prefix DIR (/usr/local)] [--no-helper] [--force]
#                           [--binary PATH (install this build instead of building)]
# DESTDIR stages the files for a package (then no helper is installed).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/cargo_env.sh

prefix=/usr/local
helper=yes
force=()
from=
while [[ $# -gt 0 ]]; do
  case $1 in
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    --prefix=*) prefix=${1#--prefix=}; shift ;;
    --no-helper) helper=no; shift ;;
    --force) force=(--force); shift ;;
    --binary) from=${2:?--binary needs a path}; shift 2 ;;
    *) echo "install: unknown argument $1 (--prefix DIR, --no-helper, --force, --binary PATH)" >&2
       exit 2 ;;
  esac
done
dest=${DESTDIR:-}

if [[ -z $from ]]; then
  build --release --locked --bin kmsfs
  from=$target/release/kmsfs
fi
bin=$dest$prefix/bin/kmsfs
install -d "$dest$prefix/bin" "$dest$prefix/share/man/man1" \
  "$dest$prefix/share/bash-completion/completions" "$dest$prefix/share/zsh/site-functions" \
  "$dest$prefix/share/fish/vendor_completions.d"
# A new file renamed over the old one: a running mount keeps its binary.
install -m 0755 "$from" "$bin.new"
mv -f "$bin.new" "$bin"
echo "installed $bin"
"$bin" man --dir "$dest$prefix/share/man/man1" >/dev/null
echo "installed the man pages in $dest$prefix/share/man/man1 (man kmsfs)"
"$bin" completions bash >"$dest$prefix/share/bash-completion/completions/kmsfs"
"$bin" completions zsh >"$dest$prefix/share/zsh/site-functions/_kmsfs"
"$bin" completions fish >"$dest$prefix/share/fish/vendor_completions.d/kmsfs.fish"
echo "installed the bash, zsh and fish completions under $dest$prefix/share"

if [[ $helper == yes && -z $dest ]]; then
  if [[ $(id -u) -eq 0 ]]; then
    "$bin" install-helper "${force[@]}"
  else
    echo "not root: the mount(8) helper is not installed (sudo $bin install-helper)"
  fi
fi
