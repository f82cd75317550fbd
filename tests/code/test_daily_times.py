"""benchmarks/daily_times.py: the main job's train + evaluate time per day, read from `airflow dags test` logs
(the line format Airflow 3 writes, copied from a real run), checked against seconds computed by hand."""

from __future__ import annotations

import json

from tests.conftest import load_benchmark

SEARCHED = """\
2026-12-02T13:33:19.088616Z [info     ] [DAG TEST] end task task_id=preprocess map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1563
2026-12-02T13:33:19.114874Z [info     ] [DAG TEST] starting task_id=train map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1501
2026-12-02T13:35:38.042215Z [info     ] tuning: 4 trials in 98s on 8558 baskets (validation 822); chose trial 0 [assoc_lib.tuning] loc=tuning.py:218
2026-12-02T13:35:53.616070Z [info     ] deep stage: 114s (search 98s, final training 15s) [assoc_lib.train] loc=train.py:381
2026-12-02T13:37:27.114874Z [info     ] [DAG TEST] end task task_id=train map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1563
2026-12-02T13:37:27.200000Z [info     ] [DAG TEST] starting task_id=evaluate map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1501
2026-12-02T13:38:32.614874Z [info     ] [DAG TEST] end task task_id=evaluate map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1563
"""  # noqa: E501 (log lines as Airflow writes them)


def _bench():
    return load_benchmark("daily_times")


def test_train_and_evaluate_seconds_per_day(tmp_path, capsys):
    bench = _bench()
    (tmp_path / "dag-test-2017-10-26.log").write_text(SEARCHED)
    reused = SEARCHED.replace(
        "tuning: 4 trials in 98s on 8558 baskets (validation 822); chose trial 0",
        "tuning: no search; reusing the search of 2017-10-26 (1 days before; ...)",
    ).replace("search 98s", "search 0s")
    (tmp_path / "dag-test-2017-10-27.log").write_text(reused)
    (tmp_path / "dag-test-2017-10-28.log").write_text(SEARCHED.split("[DAG TEST] starting task_id=evaluate")[0])
    out = tmp_path / "times.json"
    logs = sorted(str(p) for p in tmp_path.glob("dag-test-*.log"))
    assert bench.main([*logs, "--out", str(out)]) == 0
    days = json.loads(out.read_text())["days"]
    first = days["2017-10-26"]
    assert first["tasks"] == {"train": 248.0, "evaluate": 65.4}  # 13:33:19.11 -> 13:37:27.11; 13:37:27.2 -> 13:38:32.61
    assert first["train_evaluate_seconds"] == 313.5 and first["ratio_to_target"] == round(313.5 / 300, 3)
    assert first["deep_stage"] == {"seconds": 114, "search_seconds": 98, "final_seconds": 15}
    assert first["search"] == "searched" and days["2017-10-27"]["search"] == "reused"
    assert days["2017-10-27"]["deep_stage"]["search_seconds"] == 0
    cut = days["2017-10-28"]  # the log ends before evaluate: no figure is made up
    assert "train_evaluate_seconds" not in cut and cut["tasks"] == {"train": 248.0}
    assert "no train + evaluate in 2017-10-28" in capsys.readouterr().err
