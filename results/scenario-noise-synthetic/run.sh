#!/usr/bin/env bash
# The irrelevant-numbers noise scenario on the synthetic base preset (the settings of results/scenario-lr-synthetic:
# 64 problems, batches of 4, 96 new tokens, lr 5e-4, dtype auto = bfloat16 on this CPU): none, tent and zerosiam x
# seeds 0-2 at severities 1 and 3 (--scenario_cells: what one session's CPU allowed; 2, 4 and 5 not run), every
# question noised with --noise_seed 0. The clean cell is results/compare-synthetic-bf16 (the same
# problems and settings without noise).
# Two processes with one thread each make the runs (--runs_only, split so that each holds about half the work), then
# one compare with every method and seed writes the comparison from them. Logs beside the folder.
#   bash results/scenario-noise-synthetic/run.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
out=results/scenario-noise-synthetic
common=(--model llama --synthetic_preset base --synthetic_n 64 --max_new_tokens 96
  --per_device_train_batch_size 4 --scenario noise_irrelevant_numbers --scenario_cells severity1 severity3
  --disable_tqdm true --output_dir $out/plain)
export HF_HUB_OFFLINE=1
compare() { .venv/bin/python scripts/compare.py "${common[@]}" "$@"; }
( export OMP_NUM_THREADS=1
  compare --runs_only true --methods none --seeds 0 1 2 && compare --runs_only true --methods zerosiam --seeds 0 1
) > $out/runs-a.log 2>&1 &
a=$!
( export OMP_NUM_THREADS=1
  compare --runs_only true --methods tent --seeds 0 1 2 && compare --runs_only true --methods zerosiam --seeds 2
) > $out/runs-b.log 2>&1 &
b=$!
status=0
wait $a || { status=1; echo "runs (a) failed: see $out/runs-a.log" >&2; }
wait $b || { status=1; echo "runs (b) failed: see $out/runs-b.log" >&2; }
[ $status = 0 ] || exit $status
compare --methods none tent zerosiam --seeds 0 1 2 > $out/report.log 2>&1 || { echo "see $out/report.log" >&2; exit 1; }
