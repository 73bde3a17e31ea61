#!/usr/bin/env bash
# Paired tables between folders (scripts/paired.py: the same problems and seeds, bootstrap interval, exact sign test):
# the collapse guard at batch size 1 (guard - plain), and batch size 1 against the batches of 4 of
# results/compare-synthetic-bf16 (the same settings otherwise; made with two threads, these with one).
#   bash results/scenario-batch1-synthetic/paired.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
out=results/scenario-batch1-synthetic
printf 'The collapse guard at batch size 1 (guard - plain)\n\n'
.venv/bin/python scripts/paired.py --before $out/plain --after $out/guard --labels plain guard
printf '\nBatch size 1 against 4 (1 - 4)\n\n'
.venv/bin/python scripts/paired.py --before results/compare-synthetic-bf16 --after $out/plain --labels "batch 4" "batch 1"
