#!/usr/bin/env bash
# Create .venv and install UIR Forge with everything it needs (idempotent, offline-safe
# once the packages are cached). Usage: bash scripts/setup.sh [--dev]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
extras="all"
[ "${1:-}" = "--dev" ] && extras="all,dev"
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[$extras]"
