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
export ASSOC_PSEUDONYM_KEY="${ASSOC_PSEUDONYM_KEY:-ci-test-key}"
export TF_CPP_MIN_LOG_LEVEL=2
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
