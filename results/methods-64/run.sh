#!/usr/bin/env bash
# Issue 14's full comparison, at the CPU budget's settings (96 new tokens, lr 5e-4, sampling methods at k = 4):
#   base/   every method on the synthetic base preset, 3 seeds x 64 problems, batches of 4;
#   stress/ the methods that train, beside none, at the stress learning rate 2e-3, same problems;
#   paper/  every method on the paper's four benchmarks, 64 problems each, seed 0, batches of 16.
# `run.sh runs` starts one `compare.py --runs_only true` per method and set, JOBS (8) at a time, into the shared folders
# (a 135M model leaves a GPU mostly idle, so each process is bound by its own kernel launches); each finished run is
# reused, an interrupted one resumed, by the next call. `run.sh report` then reads every finished run back and writes
# each set's tables and plots. Wall times are those of runs that shared one machine: compare their ratios, not their
# values. On one H200, 16 at once ran out of its memory: the sampling methods on the paper's longer prompts took
# 24-39 GB each (64 sequences a batch; float32 attention keeps its T x T weights for the backward).
# N (default 64) and HERE (default results/methods-64) make a smaller copy, e.g. to try the script on a CPU; SETS
# (default "base paper stress") picks the sets `runs` starts and `report` writes, METHODS (default all) the methods
# `runs` starts.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
HERE=${HERE:-results/methods-64}
N=${N:-64}
ALL=(none tent come zerosiam em_ft tlm slot em_inf ttrl rent intuitor)
TRAIN=(none tent come zerosiam em_ft tlm ttrl rent intuitor)
COMMON=(--model llama --max_new_tokens 96 --disable_tqdm true)
SYNTHETIC=(--synthetic_preset base --synthetic_n "$N" --seeds 0 1 2 --per_device_train_batch_size 4)
BASE=("${SYNTHETIC[@]}" --output_dir "$HERE/base")
STRESS=("${SYNTHETIC[@]}" --learning_rate 2e-3 --output_dir "$HERE/stress")
PAPER=(--datasets math500 college_math aime24 minerva_math --max_samples "$N" --per_device_train_batch_size 16
    --seeds 0 --output_dir "$HERE/paper")

mkdir -p "$HERE/logs"
case "${1:?usage: run.sh runs|report}" in
runs)
    # Convert the embedded model once, before the processes that read it start.
    "$PY" -c "from zerosiam_hf.modeling import materialize_gguf, resolve_model; materialize_gguf(resolve_model('llama'))"
    # At most JOBS processes at once, the slowest (sampling) methods first; the base set, then paper, then stress.
    launch() {
        while [ "$(jobs -rp | wc -l)" -ge "${JOBS:-8}" ]; do sleep 2; done
        "$PY" scripts/compare.py "${COMMON[@]}" --runs_only true "$@" >"$HERE/logs/$LOG.log" 2>&1 &
    }
    wanted() { [[ " ${SETS:-base paper stress} " == *" $1 "* && " ${METHODS:-${ALL[*]}} " == *" $2 "* ]]; }
    for method in $(printf '%s\n' "${ALL[@]}" | tac); do
        wanted base "$method" && LOG=base-$method launch "${BASE[@]}" --methods "$method"
    done
    for method in $(printf '%s\n' "${ALL[@]}" | tac); do
        wanted paper "$method" && LOG=paper-$method launch "${PAPER[@]}" --methods "$method"
    done
    for method in $(printf '%s\n' "${TRAIN[@]}" | tac); do
        wanted stress "$method" && LOG=stress-$method launch "${STRESS[@]}" --methods "$method"
    done
    wait
    echo "processes that did not finish (see their logs):" $(grep -L "runs finished in" "$HERE"/logs/*.log)
    ;;
report)
    # Every run of the SETS is read back (a missing one is run here)
    report() { [[ " ${SETS:-base paper stress} " == *" $1 "* ]] || return 0; shift
        "$PY" scripts/compare.py "${COMMON[@]}" "$@" >"$HERE/logs/report-$LOG.log" 2>&1; }
    LOG=base report base "${BASE[@]}" --methods "${ALL[@]}"
    LOG=stress report stress "${STRESS[@]}" --methods "${TRAIN[@]}"
    LOG=paper report paper "${PAPER[@]}" --methods "${ALL[@]}"
    ;;
*)
    echo "usage: run.sh runs|report" >&2
    exit 2
    ;;
esac
