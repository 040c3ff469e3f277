#!/usr/bin/env bash
# The gradient-tail figures of the README: the digits recipe with AdaLo, watched by GradientTailMonitor,
# without a gradient transform, with SoftClip and with AGC; then the `lightning-opt tails` report.
# About a minute of training per run. Set-up as in scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
rm -rf logs/digits_tails
quiet=(--trainer.enable_progress_bar false --trainer.enable_model_summary false)
.venv/bin/lightning-opt fit --config configs/digits_tails.yaml "${quiet[@]}" --trainer.logger.init_args.version plain
.venv/bin/lightning-opt fit --config configs/digits_tails.yaml --config configs/callbacks/softclip_then_tails.yaml \
    "${quiet[@]}" --trainer.logger.init_args.version softclip
.venv/bin/lightning-opt fit --config configs/digits_tails.yaml --config configs/callbacks/agc_then_tails.yaml \
    "${quiet[@]}" --trainer.logger.init_args.version agc
.venv/bin/lightning-opt tails logs/digits_tails --steps 0 1350 2699 --top 3 --output docs/images/digits_tails.png
