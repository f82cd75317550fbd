#!/usr/bin/env bash
# The main job on the embedded defaults: data -> validate -> preprocess -> DVC snapshot.
# Usage: scripts/run_main.sh [--data synth|completejourney] [--days N]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=synth
DAYS=21
while [ $# -gt 0 ]; do
  case "$1" in
    --data) DATA="$2"; shift 2 ;;
    --days) DAYS="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
bash scripts/setup_env.sh
export PATH="$PWD/.venv/bin:$PATH" TF_CPP_MIN_LOG_LEVEL=2
case "$DATA" in
  synth) assoc data synth --out data --start 2024-01-01 --days "$DAYS" --seed 42 > /dev/null ;;
  completejourney) assoc data import completejourney --out data --start 2017-01-01 --days "$DAYS" > /dev/null ;;
  *) echo "--data must be synth or completejourney" >&2; exit 2 ;;
esac
assoc validate --catalog data/raw/catalog.parquet > /dev/null
mkdir -p artifacts
assoc validate --all > artifacts/validate_all.json || { cat artifacts/validate_all.json; exit 1; }
assoc preprocess | .venv/bin/python -c 'import json,sys; s=json.load(sys.stdin); print("preprocessed", s["ds"], "orders", s["orders_out"], "vocabulary", s["vocabulary_size"], "->", s["out_dir"])'
assoc snapshot --repo . | .venv/bin/python -c 'import json,sys; s=json.load(sys.stdin); print("data version (dvc md5)", s["md5"], s["nfiles"], "files")'
