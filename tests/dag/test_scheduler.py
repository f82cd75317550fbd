"""One replay day under the real Airflow scheduler (LocalExecutor, separate services), as run_main.sh --scheduler
runs it: task states asserted from Airflow's database, and every Airflow process gone afterwards."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.conftest import SYNTH_DAYS, SYNTH_START, small_model_overrides
from tests.dag.conftest import ROOT

SCRIPT = ROOT / "scripts" / "airflow_local.py"


def _processes_of(home: Path) -> list[int]:
    """Every live process whose environment names this Airflow home."""
    pids = []
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get("AIRFLOW_HOME") == str(home):
                pids.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return pids


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_replay_day_under_the_scheduler(world, tmp_path):
    import datetime as dt

    subprocess.run(["git", "init", "-q", str(world)], check=True)
    home = tmp_path / "airflow_home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
    env["AIRFLOW_HOME"] = str(home)
    for key, value in small_model_overrides().items():
        section, name = key.split(".")
        env[f"ASSOC_{section.upper()}__{name.upper()}"] = str(value)
    subprocess.run([sys.executable, str(SCRIPT), "init"], env=env, check=True, capture_output=True)
    cfg = (home / "airflow.cfg").read_text()
    assert f"dags_folder = {ROOT / 'dags'}" in cfg and "load_examples = False" in cfg

    ds = (dt.date.fromisoformat(SYNTH_START) + dt.timedelta(days=SYNTH_DAYS - 1)).isoformat()
    conf = {
        "data_dir": str(world / "data"),
        "artifacts_dir": str(world / "artifacts"),
        "serving_root": str(world / "serving"),
        "dvc_repo": str(world),
    }
    out = tmp_path / "replay.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "replay",
            ds,
            "--conf",
            json.dumps(conf),
            "--timeout",
            "720",
            "--artifacts",
            str(world / "artifacts"),
            "--json",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert out.exists(), proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    logs = proc.stdout + proc.stderr[-3000:]
    assert proc.returncode == 0, logs
    [run] = result["runs"]
    assert run["state"] == "success", logs
    tasks = run["tasks"]
    assert {t for t, s in tasks.items() if s == "success"} == {
        "ingest",
        "validate",
        "preprocess",
        "train",
        "evaluate",
        "gate",
        "export",
        "infra_validate",
        "push",
        "version",
        "insights",
    }, tasks
    assert tasks["not_blessed"] == "skipped"
    assert "gate: BLESSED" in proc.stdout
    # the version, its data version and the slice of it the model was trained on (the window ends at the day)
    assert re.search(
        rf"pushed version 1 \(data \w+\.dir; trained on partitions \d{{4}}-\d\d-\d\d\.\.{ds}\)", proc.stdout
    ), proc.stdout[-2000:]
    # task logs were written by the scheduler's workers, with our summary blocks in them
    task_logs = list((home / "logs" / "dag_id=assoc_daily").rglob("task_id=push/*.log"))
    assert task_logs and "push ds=" in task_logs[0].read_text()
    # every process the replay started is gone, and nothing else runs with this Airflow home
    assert len(result["pids"]) >= 3 and result["left_running"] == []
    assert not [p for p in result["pids"] if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert _processes_of(home) == []
