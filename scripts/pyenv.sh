#!/usr/bin/env bash
# The Python clients the protocol tests drive `kmsfs kms serve` with: boto3, the
# aws CLI (v1, the one on PyPI) and moto's KMS server, pinned, in a venv under
# target/ (idempotent: nothing is done when the pinned versions are there).
# Prints the venv's directory. tests/server_aws_clients.rs looks for it there
# (or in $KMSFS_PY_VENV).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${KMSFS_PY_VENV:-$PWD/target/kmsfs-py}
PINS=(awscli==1.46.2 boto3==1.44.8 botocore==1.44.8 "moto[server]==5.2.5")
STAMP="$VENV/.pins"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "${PINS[*]}" && -x "$VENV/bin/aws" ]]; then
  echo "$VENV"
  exit 0
fi
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "error: python3-venv is missing; apt-get install python3-venv (or run as root)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
fi
python3 -m venv "$VENV" >&2
"$VENV/bin/pip" install --quiet --disable-pip-version-check "${PINS[@]}" >&2
echo "${PINS[*]}" >"$STAMP"
echo "$VENV"
