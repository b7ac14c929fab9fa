#!/usr/bin/env bash
# Thin wrapper for the pod: the preset reads TRAIN_* env vars itself.
set -euo pipefail
cd "${REPO_DIR:-$(dirname "$0")/..}"
exec "${PYTHON:-python3}" -m appliance.training.preset "$@"
