"""The stage commands of docs/design.md §8 chained by hand, ending in a gRPC query."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import small_model_overrides


def assoc(*args, cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "assoc_lib.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    if check:
        assert proc.returncode == 0, f"assoc {' '.join(args)} failed:\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_cli_stages_end_to_end(tmp_path):
    env = {
        **os.environ,
        "ASSOC_PSEUDONYM_KEY": "e2e-key",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "ASSOC_PATHS__DVC_REPO": "",
        "ASSOC_PATHS__SERVING_ROOT": str(tmp_path / "serving"),
    }
    for key, value in small_model_overrides().items():
        section, name = key.split(".")
        env[f"ASSOC_{section.upper()}__{name.upper()}"] = str(value)
    env["ASSOC_MODELS__DEEP_EPOCHS"] = "5"
    ds = "2024-02-14"
    assoc("data", "synth", "--out", "data", "--start", "2024-01-01", "--days", "45", cwd=tmp_path, env=env)
    validated = json.loads(assoc("validate", "--all", cwd=tmp_path, env=env).stdout)
    assert validated["passed"] == 45 and validated["failed"] == []
    prep = json.loads(assoc("preprocess", "--ds", ds, cwd=tmp_path, env=env).stdout)
    trained = json.loads(assoc("train", "--ds", ds, "--prep-dir", prep["out_dir"], cwd=tmp_path, env=env).stdout)
    evaluated = json.loads(
        assoc(
            "evaluate",
            "--ds",
            ds,
            "--prep-dir",
            prep["out_dir"],
            "--train-dir",
            trained["train_dir"],
            cwd=tmp_path,
            env=env,
        ).stdout
    )
    decision = json.loads(
        assoc("gate", "--ds", ds, "--comparison", evaluated["comparison"], cwd=tmp_path, env=env).stdout
    )
    assert decision["blessed"] and decision["winner"]
    exported = json.loads(
        assoc(
            "export", "--ds", ds, "--blessing", decision["blessing"], "--data-version", "e2e", cwd=tmp_path, env=env
        ).stdout
    )
    pushed = json.loads(assoc("push", "--ds", ds, "--export-dir", exported["export_dir"], cwd=tmp_path, env=env).stdout)
    assert pushed["version"] == 1
    ready = tmp_path / "ready"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "assoc_lib.cli",
            "serve",
            "--port",
            "0",
            "--rest_api_port",
            "0",
            "--ready-file",
            str(ready),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while not ready.exists() and time.time() < deadline and server.poll() is None:
            time.sleep(0.2)
        assert ready.exists()
        truth = json.loads((tmp_path / "data" / "ground_truth.json").read_text())
        anchor = truth["planted_pairs"][0][0]
        out = assoc(
            "query",
            "--server",
            ready.read_text().strip(),
            "--items",
            anchor,
            "--k",
            "10",
            "--explain",
            cwd=tmp_path,
            env=env,
        ).stdout
        assert out.startswith("model assoc version 1 (complete_basket)")
        assert out.count("Product ") >= 10
        rolled = assoc("rollback", "--to", "7", cwd=tmp_path, env=env, check=False)
        assert rolled.returncode == 2 and "version 7 of assoc is not under" in rolled.stderr
    finally:
        server.terminate()
        server.wait(timeout=30)
