#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the main job: train the digits recipe with AdaLo and the LossFeeder
# callback, write TensorBoard logs, print the final validation accuracy and where the logs are.
# Extra arguments go to `lightning-opt fit` (e.g. --optimizer AdamAtan2 --trainer.max_epochs 5).
# Into a file or pipe (bash scripts/train.sh > out) it prints one line per epoch instead of a progress bar.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/lightning-opt fit --config configs/digits.yaml "$@"
