#!/usr/bin/env bash
# The test command (README, .ci/run): set up .venv, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# The report test renders HTML in headless Chromium (Debian's package); install it when we can.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing chromium for the report rendering test" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) > /tmp/assoc-chromium-install.log 2>&1 \
    || echo "setup: chromium install failed (see /tmp/assoc-chromium-install.log); that test will skip" >&2
fi
# Lint, format and import contracts first (rules in pyproject.toml): a failure here fails CI.
echo "lint: ruff check, ruff format --check, lint-imports" >&2
.venv/bin/ruff check --quiet .
.venv/bin/ruff format --check --quiet .
.venv/bin/lint-imports --no-cache > /tmp/assoc-lint-imports.log 2>&1 || { cat /tmp/assoc-lint-imports.log; exit 1; }
export ASSOC_PSEUDONYM_KEY="${ASSOC_PSEUDONYM_KEY:-ci-test-key}"
export TF_CPP_MIN_LOG_LEVEL=2
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
