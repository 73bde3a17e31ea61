#!/usr/bin/env bash
# Issue 29's measurement: the label-free test-time RL methods of 2025-26 beside none, TTRL and the gold-label oracle,
# on the synthetic base preset, 3 seeds x 16 problems, k = 4 samples, the committed comparisons' settings otherwise
# (96 new tokens, batches of 4, lr 5e-4, the dtype --dtype auto picks: bf16 on a CPU with bf16 units). First at each
# method's published sampling temperature (1.0; EMPO 0.9), then every sampling method at 0.6, the temperature the
# field evaluates with: at 1.0 the 135M model's samples are almost never right, the oracle's included. URLVR's other
# rewards and Co-rewarding I are options of one method each, so each gets a comparison of its own beside none (at 0.6).
# Run alone: the seconds are wall time. A finished run is reused, so an interrupted script goes on where it stopped.
set -euo pipefail
cd "$(dirname "$0")/../.."
common=(--model llama --synthetic_preset base --synthetic_n "${N:-16}" --max_new_tokens 96
    --per_device_train_batch_size 4 --seeds 0 1 2 --disable_tqdm true)
methods=(--oracle true --methods none ttrl gold_grpo empo urlvr co_reward self_harmony)
.venv/bin/python scripts/compare.py "${common[@]}" "${methods[@]}" --output_dir results/rl-2026-synthetic/main
.venv/bin/python scripts/compare.py "${common[@]}" "${methods[@]}" --sampling_temperature 0.6 \
    --output_dir results/rl-2026-synthetic/temperature-0.6
for reward in trajectory_entropy probability; do
    .venv/bin/python scripts/compare.py "${common[@]}" --methods none urlvr --intrinsic_reward "$reward" \
        --sampling_temperature 0.6 --output_dir "results/rl-2026-synthetic/temperature-0.6-urlvr-$reward"
done
.venv/bin/python scripts/compare.py "${common[@]}" --methods none co_reward --co_reward_variant I \
    --sampling_temperature 0.6 --output_dir results/rl-2026-synthetic/temperature-0.6-co_reward-I
