#!/usr/bin/env bash
# Each noise severity against the clean problems, per method (scripts/paired.py: noised - clean, the same problems and
# seeds, bootstrap interval, exact sign test). The clean runs are results/compare-synthetic-bf16 (the same settings,
# made with two threads; these with one).
#   bash results/scenario-noise-synthetic/paired.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=results/scenario-noise-synthetic/plain/runs
for severity in severity1 severity3; do
  printf '%s - clean\n\n' $severity
  .venv/bin/python scripts/paired.py --before results/compare-synthetic-bf16 --after $runs/$severity \
    --labels clean $severity
  echo
done
