#!/usr/bin/env bash
# Batch size 1 on the synthetic base preset (the settings of results/scenario-lr-synthetic but one prompt per update:
# 64 problems, so 64 updates a run, 96 new tokens, lr 5e-4, dtype auto = bfloat16 on this CPU): none, tent and
# zerosiam x seeds 0-2, then the same with --collapse_guard true (none again, for the paired table).
#   bash results/scenario-batch1-synthetic/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
common=(--model llama --synthetic_preset base --synthetic_n 64 --max_new_tokens 96 --per_device_train_batch_size 1
  --seeds 0 1 2 --disable_tqdm true --methods none tent zerosiam)
HF_HUB_OFFLINE=1 .venv/bin/python scripts/compare.py "${common[@]}" --output_dir results/scenario-batch1-synthetic/plain
HF_HUB_OFFLINE=1 .venv/bin/python scripts/compare.py "${common[@]}" --collapse_guard true \
  --output_dir results/scenario-batch1-synthetic/guard
