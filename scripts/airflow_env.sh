# Source me: the project's Airflow home inside the checkout. Its airflow.cfg (written by
# `python scripts/airflow_local.py init`, which the main job runs) holds every other setting,
# so in any shell `export AIRFLOW_HOME=$PWD/airflow_home` is all the stock `airflow` CLI needs.
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$_root/airflow_home}"
unset _root
