#!/usr/bin/env bash
# Set up .venv (see setup.sh) and run the whole test suite.
# The browser tests (featx serve's page, report.html) need Chromium, a system package: installed here
# when this machine can (apt-get as root, as CI does), otherwise they skip and this says so first.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: installing Chromium for the browser tests (apt-get install chromium)"
        (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 \
            || echo "test.sh: could not install Chromium"
    fi
    if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
        echo "test.sh: NOTE: no Chromium on this machine, so the browser tests will SKIP (featx serve's page,"
        echo "test.sh: report.html). To run them: sudo apt-get install chromium (Debian/Ubuntu; another"
        echo "test.sh: system's package named chromium or chromium-browser works too), then run this again."
    fi
fi
exec "${FEATX_VENV:-$root/.venv}/bin/python" -m pytest -q "$@"
