"""Great Expectations validation operator.

Runs our suites from ``expectations/`` through Great Expectations' own API (via
``assoc_lib.validate``) and fails the task with the readable summary. The
``airflow-provider-great-expectations`` release on PyPI needs structlog<25.5,
which Airflow 3.3 cannot install; replace this thin operator with the provider's
once a compatible release exists.
"""

from __future__ import annotations

from typing import Any, Sequence

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException


class GreatExpectationsValidateOperator(BaseOperator):
    """Validate the ``ds`` partition; on failure quarantine it and fail with the expectations that failed."""

    template_fields: Sequence[str] = ("ds",)
    ui_color = "#ff6f61"

    def __init__(self, *, ds: str = "{{ ds }}", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ds = ds

    def execute(self, context):
        from assoc_airflow.config import config_from_params
        from assoc_lib import pipeline
        from assoc_lib.data import validate

        cfg = config_from_params(context.get("params"))
        try:
            return pipeline.validate_day(cfg, self.ds)
        except validate.ValidationFailed as exc:
            raise AirflowException(f"Great Expectations validation failed for ds={self.ds}:\n{exc}") from exc
