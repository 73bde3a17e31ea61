#!/usr/bin/env bash
# How many new tokens the README's main command can give its 32 answers within the wall time it took when the answer
# length was chosen (2 min 19 s end to end, issue 25): the README's command as it stands, with --max_new_tokens N for
# each N given, one after the other, each a fresh process timed from start-up to exit. Writes times.tsv (seconds,
# online accuracy, answers cut at the cap) and each run's run.json and log here.
#   ZEROSIAM_DATA_DIR=/path/to/data bash results/speed/answer-room/run.sh 192 256 320
set -euo pipefail
cd "$(dirname "$0")/../../.."
HERE=results/speed/answer-room
: "${ZEROSIAM_DATA_DIR:?set ZEROSIAM_DATA_DIR to a folder holding gsm8k/test.jsonl}"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
printf 'max_new_tokens\tseconds\tflexible %%\tstrict %%\tcut\n' > "$HERE/times.tsv"
for tokens in "$@"; do
  start=$(date +%s.%N)
  .venv/bin/accelerate launch --num_cpu_threads_per_process "$(nproc)" --config_file configs/accelerate/one_process.yaml \
    scripts/adapt.py --model llama --config configs/adapt.yaml --max_new_tokens "$tokens" --output_dir "$TMP/$tokens" \
    --disable_tqdm true > "$HERE/tokens-$tokens.log" 2>&1
  seconds=$(echo "$(date +%s.%N) - $start" | bc)
  cp "$TMP/$tokens/run.json" "$HERE/tokens-$tokens.run.json"
  .venv/bin/python - "$HERE/tokens-$tokens.run.json" "$HERE/tokens-$tokens.log" "$tokens" "$seconds" \
    >> "$HERE/times.tsv" <<'PY'
import json, re, sys
record, log, tokens, seconds = json.load(open(sys.argv[1])), open(sys.argv[2]).read(), sys.argv[3], float(sys.argv[4])
online = record["results"]["online"]
cut = re.search(r"(\d+) of \d+ answers were cut", log)  # the summary leaves the line out when none was cut
print(f"{tokens}\t{seconds:.1f}\t{online['accuracy_flexible']:.2f}\t{online['accuracy_strict']:.2f}\t{cut[1] if cut else 0}")
PY
  tail -1 "$HERE/times.tsv"
done
