#!/usr/bin/env bash
# Create or reuse .venv/ and install the project with the pinned constraints.
# Re-installs only when pyproject.toml or constraints.txt changed (stamp in .venv/).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)" >&2
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.assoc-installed"
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  log=.venv/install.log
  echo "setup: installing dependencies into .venv (first time: several minutes; log: $log)" >&2
  if ! { .venv/bin/python -m pip install -q --upgrade "pip>=24" && \
         .venv/bin/python -m pip install -q --no-cache-dir -c constraints.txt -e ".[test]"; } > "$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" | tail -30 >&2
    echo "setup: pip install failed; the whole log is in $log" >&2
    if grep -q "No space left on device" "$log"; then
      echo "setup: the disk is full (the environment needs about 3.5 GB free):" >&2
      df -h . "${TMPDIR:-/tmp}" >&2 || true
    fi
    exit 1
  fi
  echo "$want" > "$stamp"
fi
