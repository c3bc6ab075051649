#!/usr/bin/env bash
# Set up (if needed) and run the main job on the embedded demo photos, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/uir demo --out demo_out "$@"
