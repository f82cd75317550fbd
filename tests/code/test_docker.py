"""The production compose file is valid (docker compose config) where a docker CLI with compose exists."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_compose_has_the_services_and_tf_serving_flags():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert {
        "postgres",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "tf-serving",
    } <= set(services)
    flags = " ".join(services["tf-serving"]["command"])
    for flag in ("--model_config_file=", "--model_config_file_poll_wait_seconds=", "--enable_model_warmup=true"):
        assert flag in flags
    assert services["tf-serving"]["image"] == "tensorflow/serving:2.21.0"
    assert {"8500:8500", "8501:8501"} <= set(services["tf-serving"]["ports"])


def test_docker_compose_config_validates(monkeypatch):
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI on this machine")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"docker CLI has no compose plugin: {probe.stderr.strip()[:200]}")
    monkeypatch.setenv("ASSOC_PSEUDONYM_KEY", "compose-config-check")
    proc = subprocess.run(
        [docker, "compose", "-f", str(ROOT / "docker" / "compose.yaml"), "config", "--quiet"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
