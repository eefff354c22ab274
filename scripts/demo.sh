#!/usr/bin/env bash
# The README's main-job command: set up (idempotent), then run the simulated arm with the shipped
# default policy following language instructions. Extra arguments go to apt_bringup.demo
# (e.g. --checkpoint DIR, --out DIR, --only paraphrase).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
source scripts/env.sh
exec python -m apt_bringup.demo "$@"
