#!/usr/bin/env bash
# The stress setting (learning rate 2e-3, four times the default) for every method that trains, beside none: the
# synthetic base preset, seed 0, N problems (16 here, one session's CPU budget), 96 new tokens, batches of 4.
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/python scripts/compare.py --model llama --synthetic_preset base --synthetic_n "${N:-16}" --max_new_tokens 96 \
    --per_device_train_batch_size 4 --seeds 0 --disable_tqdm true --learning_rate 2e-3 \
    --methods none tent come zerosiam em_ft tlm ttrl rent intuitor \
    --output_dir results/methods-stress
