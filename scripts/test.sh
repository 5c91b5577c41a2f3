#!/usr/bin/env bash
# Set up .venv (see setup.sh) and run the whole test suite.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
exec "${FEATX_VENV:-$root/.venv}/bin/python" -m pytest -q "$@"
