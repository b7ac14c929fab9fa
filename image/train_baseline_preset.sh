#!/usr/bin/env bash
# The one-command training preset (python -m appliance.training.preset), also at the
# predecessor's path /opt/runpod_cloud_training/train_baseline_preset.sh in the image. It reads
# the TRAIN_* and HF_* variables itself. Run from REPO_DIR when that holds a checkout, so that
# the checkout's code is the one that trains; otherwise the image's package runs.
set -euo pipefail
repo="${REPO_DIR:-/workspace/chess-bot}"
if [[ -f "$repo/appliance/__init__.py" ]]; then
  cd "$repo"
fi
exec "${APPLIANCE_PYTHON:-python3}" -m appliance.training.preset "$@"
