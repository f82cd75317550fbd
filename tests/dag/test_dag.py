"""The daily DAG: structure, and whole days run with dag.test() on small synthetic data."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path

import pendulum
import pyarrow.parquet as pq
import pytest
import yaml

from assoc_lib.config import AssocConfig
from assoc_lib.data import contract
from assoc_lib.serving import push
from tests.conftest import SYNTH_DAYS, SYNTH_START

EXPECTED = {
    "ingest",
    "validate",
    "preprocess",
    "train",
    "evaluate",
    "gate",
    "export",
    "not_blessed",
    "infra_validate",
    "push",
    "version",
    "insights",
}


def test_dag_imports_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "assoc_daily" in dagbag.dags


def test_tasks_dependencies_and_retries(dagbag):
    dag = dagbag.dags["assoc_daily"]
    assert set(dag.task_ids) == EXPECTED
    down = {t.task_id: set(t.downstream_task_ids) for t in dag.tasks}
    assert down["ingest"] == {"validate"}
    assert down["validate"] == {"preprocess"}
    assert down["preprocess"] >= {"train", "evaluate", "export", "push", "version"}
    assert down["gate"] == {"export", "not_blessed", "insights"}
    assert down["export"] == {"infra_validate", "push"}
    assert down["infra_validate"] == {"push"} and down["push"] == {"version"}
    for task_id in ("ingest", "infra_validate", "push", "version"):
        assert dag.get_task(task_id).retries >= 2
    assert dag.max_active_runs == 1
    assert dag.get_task("push").outlets and dag.get_task("validate").outlets
    # no cycles: a topological order covers every task
    assert len(dag.topological_sort()) == len(EXPECTED)


def _day(offset: int) -> str:
    return (dt.date.fromisoformat(SYNTH_START) + dt.timedelta(days=offset)).isoformat()


@pytest.fixture
def dag_world(world):
    """The synthetic world as a git+DVC checkout. The runs use the DAG's default params, the shipping model
    configuration: the params carry every model parameter with the defaults read when the session's dagbag
    parsed the DAG file, and a run's params win over ASSOC_ environment variables set later (a test that
    set the small model settings here as environment variables was silently running the defaults)."""
    subprocess.run(["git", "init", "-q", str(world)], check=True)
    return world


def run_day(dagbag, world: Path, ds: str, **params):
    dag = dagbag.dags["assoc_daily"]
    conf = {
        "data_dir": str(world / "data"),
        "artifacts_dir": str(world / "artifacts"),
        "serving_root": str(world / "serving"),
        "dvc_repo": str(world),
        # the default configuration but for the search's length (its choice is tested in tests/model): its
        # first two trials are the configured values and the sampler's first, which wins on this data
        "deep_tune_trials": 2,
        **params,
    }
    return dag.test(logical_date=pendulum.parse(ds), run_conf=conf)


def states(dagrun) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dagrun.get_task_instances()}


@pytest.mark.slow
def test_whole_day_pushes_a_version_that_answers_grpc(dagbag, dag_world):
    from assoc_lib.serving import server
    from assoc_lib.serving.client import AssocClient

    ds = _day(SYNTH_DAYS - 1)
    run = run_day(dagbag, dag_world, ds)
    st = states(run)
    assert str(run.state) == "success", st
    assert st["push"] == "success" and st["not_blessed"] == "skipped" and st["version"] == "success"
    assert st["insights"] == "success"
    report = dag_world / "artifacts" / "runs" / f"ds={ds}" / "insights" / "report.html"
    assert report.exists() and (report.parent / "fbt_pairs.csv").exists()
    root = dag_world / "serving"
    assert push.versions(root, "assoc") == [1]
    record = json.loads((dag_world / "artifacts" / "runs" / f"ds={ds}" / "versions.json").read_text())
    assert record["data_version"].endswith(".dir") and record["model_md5"]
    # DVC pointers live with the run's outputs, never in the checkout (no tracked file modified)
    assert not (dag_world / "data.dvc").exists() and not list((dag_world / "serving").rglob("*.dvc"))
    run_pointers = dag_world / "artifacts" / "runs" / f"ds={ds}" / "dvc"
    assert yaml.safe_load((run_pointers / "data.dvc").read_text())["outs"][0]["md5"] == record["data_version"]
    assert yaml.safe_load((run_pointers / "model.dvc").read_text())["outs"][0]["md5"] == record["model_md5"]
    card = json.loads((root / "assoc" / "1" / "model_card.json").read_text())
    assert card["data_version"] == record["data_version"]
    # and the slice of it the model was trained on: the window's partitions, from the raw data itself
    sliced, window = card["training_data"], AssocConfig().preprocess.window_days  # the DAG's default param
    days = [d.isoformat() for d, _ in contract.list_partitions(dag_world / "data" / "raw" / "orders")]
    inside = [d for d in days if d <= ds and (dt.date.fromisoformat(ds) - dt.date.fromisoformat(d)).days < window]
    assert sliced["window_days"] == window and sliced["ds"] == ds and sliced["split_method"] == "time"
    assert sliced["partitions"] == {"first": inside[0], "last": inside[-1], "count": len(inside)} and inside[-1] == ds
    assert sum(sliced["orders"].values()) > 0 and sliced["vocabulary_size"] > 0
    srv, registry, port = server.serve(str(root / "models.config"), port=0, block=False)
    try:
        with AssocClient(f"127.0.0.1:{port}") as client:
            answer = client.complete_basket([[]])
            assert answer.version == 1 and len(answer.item_ids[0]) > 0
    finally:
        registry.stop()
        srv.stop(0)

    # Re-running the same day is idempotent: same version, no second push.
    again = run_day(dagbag, dag_world, ds)
    assert str(again.state) == "success"
    assert push.versions(root, "assoc") == [1]

    # A later day whose candidate is worse than production (forced: a tiny, barely trained model
    # that the gate must pick because require_deep) is not pushed, and the run stays green.
    nxt = _day(SYNTH_DAYS)
    src = contract.list_partitions(dag_world / "data" / "raw" / "orders")[-1][1]
    df = contract.read_partition_raw(src)
    df["ts"] = df["ts"] + __import__("pandas").Timedelta(days=1)
    df["order_id"] = "N" + df["order_id"].astype(str)
    contract.write_partition(contract.conform_orders(df), dag_world / "data" / "raw" / "orders", nxt)
    worse = run_day(
        dagbag, dag_world, nxt, require_deep=True, deep_epochs=1, deep_embedding_dim=2, deep_learning_rate=0.0001
    )
    st = states(worse)
    assert str(worse.state) == "success", st
    assert st["not_blessed"] == "success" and st["export"] == "skipped" and st["push"] == "skipped"
    assert st["insights"] == "success"
    assert push.versions(root, "assoc") == [1]
    blessing = json.loads((dag_world / "artifacts" / "runs" / f"ds={nxt}" / "gate" / "blessing.json").read_text())
    assert not blessing["blessed"] and any("would regress" in r for r in blessing["reasons"])
    # the day before searched with another deep configuration: its search is not reused, this day searched
    summary = dag_world / "artifacts" / "runs" / f"ds={nxt}" / "train" / "train_summary.json"
    trace = json.loads(summary.read_text())["hyperparameter_search"]
    assert trace["searched_on"] == str(nxt) and "reused" not in trace and trace["trials"]


def test_corrupted_partition_fails_at_validate_and_pushes_nothing(dagbag, dag_world):
    ds = _day(SYNTH_DAYS - 1)
    part = contract.partition_dir(dag_world / "data" / "raw" / "orders", ds)
    table = pq.read_table(part / contract.PARTITION_FILE)
    pq.write_table(
        table.set_column(
            table.schema.get_field_index("price"), "price", __import__("pyarrow").array([-1.0] * table.num_rows)
        ),
        part / contract.PARTITION_FILE,
    )
    run = run_day(dagbag, dag_world, ds)
    st = states(run)
    assert str(run.state) == "failed"
    assert st["validate"] == "failed"
    # preprocess never ran on the bad day: its state says so and it wrote nothing
    assert st["preprocess"] == "upstream_failed" and st["push"] == "upstream_failed", st
    assert not (dag_world / "artifacts" / "preprocessed" / f"ds={ds}").exists()
    assert not (dag_world / "artifacts" / "runs" / f"ds={ds}" / "dvc").exists()
    assert not (dag_world / "serving").exists() or push.versions(dag_world / "serving", "assoc") == []
    assert (dag_world / "data" / "quarantine" / "orders" / f"ds={ds}").exists()
