#!/usr/bin/env bash
# The README's main command at ae05669's settings (32 GSM8K problems, batches of 8, 96 new tokens) with the code of
# ae05669 and with this checkout's, side by side: the two take turns for ROUNDS rounds on the same machine, each a
# fresh process timed end to end (start-up, model load, adaptation, saving). The old code runs from a git worktree
# with this checkout's .venv; both read the same GSM8K file. Writes times.tsv, and each run's run.json and log, here.
#   ZEROSIAM_DATA_DIR=/path/to/data bash results/speed/readme-command/run.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../../.."
HERE=results/speed/readme-command
ROUNDS=${1:-1}
OLD=ae05669
DATA=${ZEROSIAM_DATA_DIR:?set ZEROSIAM_DATA_DIR to a folder holding gsm8k/test.jsonl}/gsm8k/test.jsonl
REPO=$PWD
TMP=$(mktemp -d)
WORKTREE=$TMP/zerosiam-$OLD
git worktree add --detach -q "$WORKTREE" "$OLD"
trap 'git worktree remove --force "$WORKTREE"; rm -rf "$TMP"' EXIT
ARGS=(--model llama --config configs/adapt.yaml --dataset "$DATA" --max_samples 32 --per_device_train_batch_size 8
  --max_new_tokens 96 --disable_tqdm true)
printf 'round\tcode\tseconds\n' > "$HERE/times.tsv"
for round in $(seq 1 "$ROUNDS"); do
  for code in "$OLD" new; do
    out=$TMP/$code-$round
    root=$([ "$code" = new ] && echo "$REPO" || echo "$WORKTREE")
    start=$(date +%s.%N)
    (cd "$root" && PYTHONPATH="$root" "$REPO/.venv/bin/python" scripts/adapt.py "${ARGS[@]}" --output_dir "$out" \
      > "$REPO/$HERE/$code-$round.log" 2>&1)
    seconds=$(echo "$(date +%s.%N) - $start" | bc)
    cp "$out/run.json" "$HERE/$code-$round.run.json"
    printf '%s\t%s\t%.1f\n' "$round" "$code" "$seconds" | tee -a "$HERE/times.tsv"
  done
done
awk -F'\t' 'NR > 1 { t[$2] += $3; n[$2]++ } END { printf "mean end-to-end seconds: %s %.1f, new %.1f; %s / new = %.2fx\n", \
  old, t[old] / n[old], t["new"] / n["new"], old, (t[old] / n[old]) / (t["new"] / n["new"]) }' old="$OLD" "$HERE/times.tsv"
