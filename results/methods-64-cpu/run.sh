#!/usr/bin/env bash
# Issue 14's full comparison, at the CPU budget's settings (96 new tokens, lr 5e-4, sampling methods at k = 4):
#   base/   every method on the synthetic base preset, 3 seeds x 64 problems, batches of 4;
#   stress/ the methods that train, beside none, at the stress learning rate 2e-3, same problems;
#   paper/  every method on the paper's four benchmarks, 64 problems each, seed 0, batches of 16.
# `run.sh runs` starts one `compare.py --runs_only true` per method and set, JOBS (8) at a time, into each set's
# staging folder (<set>.partial, shared; a 135M model leaves a GPU mostly idle, so each process is bound by its own
# kernel launches); each finished run is reused, an interrupted one resumed, by the next call. `run.sh report` then
# reads every finished run back, writes each set's tables and plots, and publishes the set's folder. Wall times are those of runs that shared one machine: compare their ratios, not their
# values. On one H200, 16 at once ran out of its memory: the sampling methods on the paper's longer prompts took
# 24-39 GB each (64 sequences a batch; float32 attention keeps its T x T weights for the backward).
# N (default 64) and HERE (default results/methods-64, where the H200 run wrote; the records beside this script were
# made with HERE=results/methods-64-cpu) make a smaller copy, e.g. to try the script on a CPU; SETS
# (default "base paper stress") picks the sets `runs` starts and `report` writes, METHODS (default all) the methods
# `runs` starts. The paper set reads $ZEROSIAM_DATA_DIR/<benchmark>/test.jsonl (CollegeMath and Minerva have no hub
# copy).
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
SETS=${SETS:-base paper stress}
METHODS=${METHODS:-${ALL[*]}}
holds() { [[ " $1 " == *" $2 "* ]]; }  # whether the space-separated list $1 holds the word $2

mkdir -p "$HERE/logs"
case "${1:?usage: run.sh runs|report}" in
runs)
    # Convert the embedded model once, before the processes that read it start.
    "$PY" -c "from zerosiam_hf.modeling import materialize_gguf, resolve_model; materialize_gguf(resolve_model('llama'))"
    # At most JOBS processes at once, the slowest (sampling) methods first; the base set, then paper, then stress.
    started=()
    launch() {
        while [ "$(jobs -rp | wc -l)" -ge "${JOBS:-8}" ]; do sleep 2; done
        started+=("$HERE/logs/$LOG.log")
        "$PY" scripts/compare.py "${COMMON[@]}" --runs_only true "$@" >"$HERE/logs/$LOG.log" 2>&1 &
    }
    # One set's methods (the list given) that METHODS names, if SETS names the set.
    launch_set() {
        local set=$1 method
        local -n settings=${set^^}  # BASE, PAPER or STRESS
        shift
        holds "$SETS" "$set" || return 0
        for method in $(printf '%s\n' "$@" | tac); do
            holds "$METHODS" "$method" || continue
            LOG=$set-$method launch "${settings[@]}" --methods "$method"
        done
    }
    launch_set base "${ALL[@]}"
    launch_set paper "${ALL[@]}"
    launch_set stress "${TRAIN[@]}"
    wait
    # Only this call's processes: another call may be running into the same logs folder.
    [ ${#started[@]} -eq 0 ] || echo "processes that did not finish (see their logs):" \
        $(grep -L "runs finished in" "${started[@]}")
    ;;
report)
    # Every run of the SETS is read back (a missing one is run here)
    write_report() {
        holds "$SETS" "$1" || return 0
        local -n settings=${1^^}
        "$PY" scripts/compare.py "${COMMON[@]}" "${settings[@]}" "${@:2}" >"$HERE/logs/report-$1.log" 2>&1
    }
    write_report base --methods "${ALL[@]}"
    write_report stress --methods "${TRAIN[@]}"
    write_report paper --methods "${ALL[@]}"
    ;;
*)
    echo "usage: run.sh runs|report" >&2
    exit 2
    ;;
esac
