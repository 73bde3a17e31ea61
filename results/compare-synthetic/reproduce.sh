#!/usr/bin/env bash
# Reruns tent and zerosiam seed 0 of this comparison with the recorded commands, in float32 (the dtype they were made
# in: --dtype auto loads bfloat16 on CPUs with bf16 matrix units since 69a1a53) and the static backend, and counts
# the completions equal to the committed ones, text for text. Both runs share the cores, one thread each.
#   bash results/compare-synthetic/reproduce.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=results/compare-synthetic
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
for method in tent zerosiam; do
  OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python scripts/adapt.py --model llama \
    --dataset "$HERE/synthetic-base-seed0.jsonl" --method "$method" --seed 0 --output_dir "$TMP/$method" \
    --disable_tqdm true --max_new_tokens 96 --per_device_train_batch_size 4 --dtype float32 \
    > "$TMP/$method.log" 2>&1 &
done
wait
for method in tent zerosiam; do
  .venv/bin/python - "$HERE/runs/$method-seed0/predictions.jsonl" "$TMP/$method/predictions.jsonl" "$method" <<'PY'
import json, sys
committed, rerun = ([json.loads(line) for line in open(path)] for path in sys.argv[1:3])
same = sum(a["completion"] == b["completion"] for a, b in zip(committed, rerun))
print(f"{sys.argv[3]} seed 0: {same} of {len(committed)} completions equal to the committed run's ({len(rerun)} rerun)")
PY
done
