#!/usr/bin/env bash
# The test command (README, .ci/run): set up .venv, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export ASSOC_PSEUDONYM_KEY="${ASSOC_PSEUDONYM_KEY:-ci-test-key}"
export TF_CPP_MIN_LOG_LEVEL=2
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
