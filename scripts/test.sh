#!/usr/bin/env bash
# The README's test command: set up (idempotent), lint, then run the whole test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow" tests/apt_core
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
source scripts/env.sh
echo "test: ruff check + format check"
ruff check --quiet . && ruff format --check --quiet . || { echo "test: lint failed (run: ruff check --fix . && ruff format .)" >&2; exit 1; }
start=$SECONDS
python -m pytest "$@"
echo "test: pytest took $(( SECONDS - start )) s"
