#!/usr/bin/env bash
# Set up (if needed) and build the demo dataset end to end, offline: the embedded photos ->
# ingest, sidecar captions, synthesis -> WebDataset shards in data/shards/demo; then the
# Perceive-IR quality labels -> data/shards/demo-quality (+ reports/quality/demo); verify both.
# Then the training demo: the ten-type dataset data/shards/demo-daclip, the DA-CLIP controller
# and the NAFNet + DA-CLIP restorer (models/train), evaluated on its val split (reports/train).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH" PREFECT_SERVER_ANALYTICS_ENABLED=false DVC_NO_ANALYTICS=1
export PREFECT_HOME="${PREFECT_HOME:-$PWD/.prefect}"
uir build demo "$@"
uir verify data/shards/demo
uir verify data/shards/demo-quality
uir inspect data/shards/demo-quality
uir build demo-daclip --train
uir verify data/shards/demo-daclip
