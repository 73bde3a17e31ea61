#!/usr/bin/env bash
# The adapt half of run.sh again, on the current code and the locked stack (requirements-lock.txt): ZeroSiam with a
# float32 and a 4-bit base on the same 32 GSM8K problems, one after the other, each under /usr/bin/time -v; records
# in recheck-<variant>/. Then, per variant, how many of the 32 online answers equal the committed run's
# (adapt-<variant>/predictions.jsonl) and the two adapt_seconds. Run from the repository root, on a quiet machine.
set -euo pipefail
OUT=results/qlora-gsm8k-32
PYTHON=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
: "${ZEROSIAM_DATA_DIR:?must name a folder holding gsm8k/test.jsonl: this study runs offline}"

for variant in fp32 4bit; do
  flags=(); [ "$variant" = 4bit ] && flags=(--load_in_4bit true)
  /usr/bin/time -v -o "$OUT/recheck-$variant.time" "$PYTHON" scripts/adapt.py --config configs/adapt.yaml \
    "${flags[@]}" --output_dir "outputs/qlora-recheck-$variant" --overwrite true
  mkdir -p "$OUT/recheck-$variant"
  cp "outputs/qlora-recheck-$variant/run.json" "outputs/qlora-recheck-$variant/predictions.jsonl" "$OUT/recheck-$variant/"
done

"$PYTHON" - "$OUT" <<'PY'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
for variant in ("fp32", "4bit"):
    runs = {name: out / f"{name}-{variant}" for name in ("adapt", "recheck")}
    answers = {name: [json.loads(line)["completion"] for line in open(run / "predictions.jsonl")] for name, run in runs.items()}
    seconds = {name: json.load(open(run / "run.json"))["timings"]["adapt_seconds"] for name, run in runs.items()}
    same = sum(a == b for a, b in zip(answers["adapt"], answers["recheck"]))
    print(f"{variant}: {same} of {len(answers['adapt'])} answers equal the committed run's; adapt_seconds "
          f"{seconds['adapt']:.0f} then, {seconds['recheck']:.0f} now")
PY
