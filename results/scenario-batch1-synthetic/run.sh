#!/usr/bin/env bash
# Batch size 1 on the synthetic base preset (the settings of results/scenario-lr-synthetic but one prompt per update:
# 64 problems, so 64 updates a run, 96 new tokens, lr 5e-4, dtype auto = bfloat16 on this CPU): none, tent and
# zerosiam x seeds 0-2, plain and with --collapse_guard true (none in both, for each paired table).
# Two processes with one thread each make the runs (--runs_only): on the 2-core CPU that is faster than one after the
# other with two threads (decoding one prompt at a time gains little from a second thread), and the records are one
# thread's bits. Then one compare per folder writes its comparison from them. Logs beside the folders; the script
# fails if any step does. Finished runs with the same settings are reused, so a second call only reports.
#   bash results/scenario-batch1-synthetic/run.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
common=(--model llama --synthetic_preset base --synthetic_n 64 --max_new_tokens 96 --per_device_train_batch_size 1
  --seeds 0 1 2 --disable_tqdm true)
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
out=results/scenario-batch1-synthetic
compare() { .venv/bin/python scripts/compare.py "${common[@]}" "$@"; }
plain=(--output_dir $out/plain)
guard=(--collapse_guard true --output_dir $out/guard)
( compare "${plain[@]}" --runs_only true --methods none tent zerosiam &&
  compare "${guard[@]}" --runs_only true --methods zerosiam ) > $out/runs-a.log 2>&1 &
a=$!
compare "${guard[@]}" --runs_only true --methods none tent > $out/runs-b.log 2>&1 &
b=$!
status=0
wait $a || { status=1; echo "runs (a) failed: see $out/runs-a.log" >&2; }
wait $b || { status=1; echo "runs (b) failed: see $out/runs-b.log" >&2; }
[ $status = 0 ] || exit $status
compare "${plain[@]}" --methods none tent zerosiam > $out/plain.log 2>&1 || { echo "see $out/plain.log" >&2; exit 1; }
compare "${guard[@]}" --methods none tent zerosiam > $out/guard.log 2>&1 || { echo "see $out/guard.log" >&2; exit 1; }
