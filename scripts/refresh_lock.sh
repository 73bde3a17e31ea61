#!/usr/bin/env bash
# Try the newest releases setup.cfg allows before users meet them, and lock them when they pass: a fresh
# .venv-latest from `scripts/setup.sh --latest`, ruff and the fast tests in it, then requirements-lock.txt rewritten
# from what it installed (torch left out: setup.sh pins it). Then review `git diff requirements-lock.txt`, run
# `bash .ci/run` (a clean install of the new lock and both test lanes) and commit.
# `--check` tries the newest releases and leaves the lock as it is.
set -euo pipefail
CHECK=0
for arg in "$@"; do
    case "$arg" in
        --check) CHECK=1 ;;
        *) echo "scripts/refresh_lock.sh: unknown option $arg (known: --check)" >&2; exit 2 ;;
    esac
done
cd "$(dirname "$0")/.."
VENV=.venv-latest
rm -rf "$VENV"
VENV=$VENV bash scripts/setup.sh --latest
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/python" -m pytest -q -m "not slow" tests
[ "$CHECK" = 1 ] && exit 0
# A temporary file first: a freeze that fails leaves the lock as it was.
{
    echo "# The exact versions CI tested (Linux x86_64, CPython 3.11), every transitive package included: scripts/setup.sh"
    echo "# installs them as pip constraints. torch is pinned by setup.sh itself. Written by scripts/refresh_lock.sh on"
    echo "# $(date -u +%Y-%m-%d) from the newest releases setup.cfg allowed, after ruff and the fast tests passed on them."
    "$VENV/bin/python" -m pip freeze --all --exclude-editable | grep -v '^torch=='
} > requirements-lock.txt.new
mv requirements-lock.txt.new requirements-lock.txt
git diff --stat -- requirements-lock.txt
