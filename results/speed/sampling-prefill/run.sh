#!/usr/bin/env bash
# TTRL at k = 8 on 8 synthetic problems (batches of 4 prompts, 96 new tokens, float32) with the code before one
# prefill per sampled group (b4a1d9c) and with this checkout's, taking turns; each run timed end to end. Writes
# times.tsv and each run's run.json here.
#   bash results/speed/sampling-prefill/run.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../../.."
HERE=results/speed/sampling-prefill
ROUNDS=${1:-1}
OLD=b4a1d9c
REPO=$PWD
TMP=$(mktemp -d)
WORKTREE=$TMP/zerosiam-$OLD
git worktree add --detach -q "$WORKTREE" "$OLD"
trap 'git worktree remove --force "$WORKTREE"; rm -rf "$TMP"' EXIT
.venv/bin/python scripts/make_synthetic.py --preset base --n 8 --seed 0 --output "$TMP/problems.jsonl" > /dev/null
ARGS=(--model llama --dataset "$TMP/problems.jsonl" --method ttrl --num_generations 8 --per_device_train_batch_size 4
  --max_new_tokens 96 --dtype float32 --disable_tqdm true)
printf 'round\tcode\tseconds\n' > "$HERE/times.tsv"
for round in $(seq 1 "$ROUNDS"); do
  for code in "$OLD" new; do
    root=$([ "$code" = new ] && echo "$REPO" || echo "$WORKTREE")
    start=$(date +%s.%N)
    (cd "$root" && PYTHONPATH="$root" "$REPO/.venv/bin/python" scripts/adapt.py "${ARGS[@]}" \
      --output_dir "$TMP/$code-$round" > "$REPO/$HERE/$code-$round.log" 2>&1)
    printf '%s\t%s\t%.1f\n' "$round" "$code" "$(echo "$(date +%s.%N) - $start" | bc)" | tee -a "$HERE/times.tsv"
    cp "$TMP/$code-$round/run.json" "$HERE/$code-$round.run.json"
  done
done
