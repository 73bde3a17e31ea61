#!/usr/bin/env bash
# Each stream order against the i.i.d. stream, per method, on the same problems and seeds (scripts/paired.py: order -
# iid, bootstrap interval, exact sign test): what the order itself costs a method, none included (its answers move
# only with the batches an order makes).
#   bash results/scenario-stream-synthetic/paired.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=results/scenario-stream-synthetic/plain/runs
for order in blocked interleaved by_answer; do
  printf '%s - iid\n\n' $order
  .venv/bin/python scripts/paired.py --before $runs/iid --after $runs/$order --labels iid $order
  echo
done
