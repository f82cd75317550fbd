"""assoc_daily: validate → preprocess → train → evaluate → gate → export → infra-validate → push → version
(+ insights: frequently-bought-together tables, category suggestions and the HTML report).

Wiring only: each task calls one assoc_lib function (through the assoc_airflow
adapters in plugins/); XCom carries the stages' typed records (assoc_lib.records:
paths and small figures), and tasks read their named fields. Airflow must allow
their deserialisation: [core] allowed_deserialization_classes = airflow.* assoc_lib.* Settings come from
the project config (assoc.toml / ASSOC_* env) and can be overridden per run with
params. Environment knobs: ASSOC_SCHEDULE (default @daily), ASSOC_CATCHUP,
ASSOC_START_DATE, ASSOC_TRAIN_POOL and ASSOC_TRAIN_QUEUE (GPU placement of train).
ASSOC_SCHEDULE=none: triggered runs only (scripts/airflow_local.py replay uses it).
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import Asset, Param, dag, get_current_context, task

from assoc_airflow.config import config_from_params, default_params
from assoc_airflow.operators import GreatExpectationsValidateOperator
from assoc_lib.records import (  # small dataclasses (no heavy imports): what the tasks pass through XCom
    EvaluationResult,
    ExportResult,
    GateDecision,
    InfraResult,
    IngestResult,
    InsightsResult,
    PreprocessResult,
    PushResult,
    TrainResult,
    VersionRecord,
)

VALIDATED_ORDERS = Asset(name="assoc_validated_orders", uri="file:///assoc/orders/validated")
SERVED_MODEL = Asset(name="assoc_served_model", uri="file:///assoc/serving/assoc")

RETRIES = {
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
}
SCHEDULE = os.environ.get("ASSOC_SCHEDULE", "@daily")
TRAIN_PLACEMENT = {
    k: v
    for k, v in {"pool": os.environ.get("ASSOC_TRAIN_POOL"), "queue": os.environ.get("ASSOC_TRAIN_QUEUE")}.items()
    if v
}


def _cfg():
    return config_from_params(get_current_context()["params"])


@dag(
    dag_id="assoc_daily",
    schedule=None if SCHEDULE.strip().lower() in ("", "none") else SCHEDULE,
    # Early default so replayed historical days (Complete Journey is 2017) are inside the DAG's range;
    # with catchup off the scheduler still starts from today.
    start_date=pendulum.parse(os.environ.get("ASSOC_START_DATE", "2015-01-01")),
    catchup=os.environ.get("ASSOC_CATCHUP", "false").lower() == "true",
    max_active_runs=1,  # each day compares with the model the previous day put in production
    default_args={"owner": "ml-platform", "retries": 0},
    params={name: Param(value) for name, value in default_params().items()},
    tags=["basket-association"],
    doc_md=__doc__,
)
def assoc_daily():
    @task(**RETRIES)
    def ingest(ds=None) -> IngestResult:
        from assoc_lib import pipeline

        return pipeline.ingest_day(_cfg(), ds)

    validate = GreatExpectationsValidateOperator(task_id="validate", outlets=[VALIDATED_ORDERS])

    @task
    def preprocess(ds=None) -> PreprocessResult:
        from assoc_lib import pipeline

        return pipeline.preprocess_day(_cfg(), ds)

    @task(**TRAIN_PLACEMENT)
    def train(prep: PreprocessResult, ds=None) -> TrainResult:
        from assoc_lib import pipeline

        return pipeline.train_day(_cfg(), ds, prep.prep_dir)

    @task
    def evaluate(prep: PreprocessResult, trained: TrainResult, ds=None) -> EvaluationResult:
        from assoc_lib import pipeline

        return pipeline.evaluate_day(_cfg(), ds, prep.prep_dir, trained.candidates)

    @task.branch
    def gate(evaluation: EvaluationResult, ds=None) -> list[str]:
        from assoc_lib import pipeline

        decision = pipeline.gate_day(_cfg(), ds, evaluation.comparison)
        get_current_context()["ti"].xcom_push(key="decision", value=decision)
        return ["export" if decision.blessed else "not_blessed", "insights"]

    def _decision() -> GateDecision:
        return get_current_context()["ti"].xcom_pull(task_ids="gate", key="decision")

    @task
    def insights(prep: PreprocessResult, trained: TrainResult, ds=None) -> InsightsResult:
        from assoc_lib import pipeline

        return pipeline.insights_day(_cfg(), ds, prep.prep_dir, trained.candidates)

    @task
    def not_blessed(ds=None) -> GateDecision:
        decision = _decision()
        print(f"ds={ds}: no push. Winner {decision.winner} not blessed: " + "; ".join(decision.reasons))
        return decision

    @task
    def export(prep: PreprocessResult, ds=None) -> ExportResult:
        from assoc_lib import pipeline

        decision = _decision()
        return pipeline.export_day(_cfg(), ds, decision.winner_path, decision.blessing, prep.data_version)

    @task(**RETRIES)
    def infra_validate(exported: ExportResult, ds=None) -> InfraResult:
        from assoc_lib import pipeline

        return pipeline.infra_validate_day(_cfg(), ds, exported.export_dir)

    @task(outlets=[SERVED_MODEL], **RETRIES)
    def push(exported: ExportResult, prep: PreprocessResult, ds=None) -> PushResult:
        from assoc_lib import pipeline

        return pipeline.push_day(_cfg(), ds, exported.export_dir, prep.data_version)

    @task(**RETRIES)
    def version(pushed: PushResult, prep: PreprocessResult, ds=None) -> VersionRecord:
        from assoc_lib import pipeline

        return pipeline.version_day(_cfg(), ds, pushed, prep.data_version)

    landed = ingest()
    prep = preprocess()
    landed >> validate >> prep
    trained = train(prep)
    evaluation = evaluate(prep, trained)
    branch = gate(evaluation)
    exported = export(prep)
    branch >> [exported, not_blessed(), insights(prep, trained)]
    checked = infra_validate(exported)
    pushed = push(exported, prep)
    checked >> pushed
    version(pushed, prep)


assoc_daily()
