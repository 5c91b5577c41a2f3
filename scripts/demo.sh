#!/usr/bin/env bash
# Set up .venv (see setup.sh) and run featx's main job on the embedded default data.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
exec "${FEATX_VENV:-$root/.venv}/bin/featx" demo "$@"
