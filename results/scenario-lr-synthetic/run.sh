#!/usr/bin/env bash
# The learning-rate scenario on the synthetic base preset (the settings of results/compare-synthetic-bf16: 64
# problems, batches of 4, 96 new tokens, dtype auto = bfloat16 on this CPU): none, tent and zerosiam x seeds 0-2 at
# learning rates 1e-4, 5e-4, 2e-3 and 5e-3. none takes no optimizer step: one run per seed, copied into every cell.
#   bash results/scenario-lr-synthetic/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
HF_HUB_OFFLINE=1 .venv/bin/python scripts/compare.py --model llama --synthetic_preset base --synthetic_n 64 \
  --max_new_tokens 96 --per_device_train_batch_size 4 --seeds 0 1 2 --scenario learning_rate --disable_tqdm true \
  --methods none tent zerosiam --output_dir results/scenario-lr-synthetic/plain
