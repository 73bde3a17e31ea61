#!/usr/bin/env bash
# Every method on the synthetic base preset, seed 0, the committed comparison's settings (96 new tokens, batches of 4,
# lr 5e-4), sampling methods at k=4: accuracy, collapse diagnostics and what each method spent. N problems (16 here:
# the CPU budget of one session; 64 is the committed 3-seed comparison's size). Run alone: the seconds are wall time.
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/python scripts/compare.py --model llama --synthetic_preset base --synthetic_n "${N:-16}" --max_new_tokens 96 \
    --per_device_train_batch_size 4 --seeds 0 --disable_tqdm true \
    --methods none tent come zerosiam em_ft tlm slot em_inf ttrl rent intuitor \
    --output_dir results/methods-synthetic
