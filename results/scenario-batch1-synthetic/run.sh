#!/usr/bin/env bash
# Batch size 1 on the synthetic base preset (the settings of results/scenario-lr-synthetic but one prompt per update:
# 64 problems, so 64 updates a run, 96 new tokens, lr 5e-4, dtype auto = bfloat16 on this CPU): none, tent and
# zerosiam x seeds 0-2, plain and with --collapse_guard true (none in both, for each paired table).
# The two comparisons run side by side with one thread each: on the 2-core CPU that is faster than one after the other
# with two threads (decoding one prompt at a time gains little from a second thread), and its records are one
# thread's bits. Each comparison's log is beside its folder; the script fails if either does.
#   bash results/scenario-batch1-synthetic/run.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
common=(--model llama --synthetic_preset base --synthetic_n 64 --max_new_tokens 96 --per_device_train_batch_size 1
  --seeds 0 1 2 --disable_tqdm true --methods none tent zerosiam)
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
out=results/scenario-batch1-synthetic
.venv/bin/python scripts/compare.py "${common[@]}" --output_dir $out/plain > $out/plain.log 2>&1 &
plain=$!
.venv/bin/python scripts/compare.py "${common[@]}" --collapse_guard true --output_dir $out/guard > $out/guard.log 2>&1 &
guard=$!
status=0
wait $plain || { status=1; echo "the plain comparison failed: see $out/plain.log" >&2; }
wait $guard || { status=1; echo "the guarded comparison failed: see $out/guard.log" >&2; }
exit $status
