#!/usr/bin/env bash
# bf16 beside float32 on the same problems and seeds (scripts/paired.py: bf16 - float32 per method and accuracy, the
# bootstrap interval and exact sign test). The float32 runs are results/compare-synthetic (the same command without
# --dtype, made where auto loaded float32).
#   bash results/compare-synthetic-bf16/paired_dtype.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/python scripts/paired.py --before results/compare-synthetic --after results/compare-synthetic-bf16 \
  --labels float32 bfloat16
