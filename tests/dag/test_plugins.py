"""The Airflow adapters in plugins/: GE operator, DVC hook, TF Serving hook."""

from __future__ import annotations

import subprocess

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from assoc_lib.data import contract


def _params(world):
    return {
        "data_dir": str(world / "data"),
        "artifacts_dir": str(world / "artifacts"),
        "serving_root": str(world / "serving"),
        "dvc_repo": "",
    }


def test_ge_operator_passes_and_fails_with_the_summary(airflow_db, world):
    from airflow.sdk.exceptions import AirflowException

    from assoc_airflow.operators import GreatExpectationsValidateOperator

    day = contract.list_partitions(world / "data" / "raw" / "orders")[-1][0].isoformat()
    op = GreatExpectationsValidateOperator(task_id="validate", ds=day)
    result = op.execute({"params": _params(world)})
    assert result.rows > 0 and result.fingerprint
    part = contract.partition_dir(world / "data" / "raw" / "orders", day)
    table = pq.read_table(part / contract.PARTITION_FILE)
    idx = table.schema.get_field_index("quantity")
    pq.write_table(
        table.set_column(idx, "quantity", pa.array([0] * table.num_rows, pa.int64())), part / contract.PARTITION_FILE
    )
    with pytest.raises(AirflowException, match=r"expect_column_values_to_be_between\(quantity\): observed"):
        op.execute({"params": _params(world)})


def test_dvc_hook_snapshot_and_restore(airflow_db, tmp_path):
    from assoc_airflow.hooks import DvcHook
    from assoc_lib.data.synth import synthesize
    from tests.conftest import TEST_KEY

    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    hook = DvcHook(str(repo), str(tmp_path / "remote"))
    synthesize(repo / "data", "2024-01-01", 2, seed=3, pseudonym_key=TEST_KEY)
    first = hook.snapshot()
    before = (repo / "data" / "raw" / "catalog.parquet").read_bytes()
    synthesize(repo / "data", "2024-01-01", 2, seed=4, pseudonym_key=TEST_KEY)
    assert hook.snapshot()["md5"] != first["md5"]
    hook.restore(first["md5"])
    assert (repo / "data" / "raw" / "catalog.parquet").read_bytes() == before


def test_tf_serving_hook_predicts_and_reports_status(airflow_db, exported, tmp_path):
    from assoc_airflow.hooks import TFServingHook
    from assoc_lib.serving import push, server

    root = tmp_path / "serving"
    push.push(exported["rules"], root, "assoc")
    srv, registry, port = server.serve(str(root / "models.config"), port=0, block=False)
    try:
        hook = TFServingHook(f"127.0.0.1:{port}", "assoc")
        assert hook.model_status() == [{"version": 1, "state": "AVAILABLE", "error": ""}]
        answer = hook.predict([[]])
        assert answer.version == 1 and len(answer.item_ids[0]) == 20
    finally:
        registry.stop()
        srv.stop(0)


def test_every_model_parameter_is_a_dag_param():
    import dataclasses

    from assoc_airflow.config import config_from_params, default_params
    from assoc_lib.config import ModelsConfig

    params = default_params()
    assert {f.name for f in dataclasses.fields(ModelsConfig)} <= set(params)
    cfg = config_from_params({"deep_l2": 0.001, "deep_history_dropout": 0.5, "ease_l2": 50, "window_days": 30})
    assert (cfg.models.deep_l2, cfg.models.deep_history_dropout, cfg.models.ease_l2) == (0.001, 0.5, 50.0)
    assert cfg.preprocess.window_days == 30

    from assoc_lib.train import deep_params

    p = deep_params(cfg)
    assert (p.l2, p.history_dropout) == (0.001, 0.5)
