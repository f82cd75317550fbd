"""Versioned atomic push, pruning, idempotency, rollback, and a push killed mid-copy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from assoc_lib.serving import push


def fake_export(path: Path, n_files: int = 3) -> Path:
    (path / "variables").mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(b"pb")
    for i in range(n_files):
        (path / "variables" / f"part{i}").write_bytes(os.urandom(1024))
    (path / "model_card.json").write_text("{}")
    return path


def test_versions_increase_labels_and_config(tmp_path):
    export = fake_export(tmp_path / "export")
    root = tmp_path / "serving"
    assert push.push(export, root, "assoc")["version"] == 1
    assert push.push(export, root, "assoc")["version"] == 2
    text = (root / "models.config").read_text()
    assert 'name: "assoc"' in text and "versions: 2" in text and 'key: "stable"' in text and "value: 2" in text
    parsed = __import__("assoc_lib.serving.server", fromlist=["x"]).parse_model_config(text)
    assert parsed.model_config_list.config[0].version_labels["stable"] == 2


def test_keep_last_k_never_drops_labelled(tmp_path):
    export = fake_export(tmp_path / "export")
    root = tmp_path / "serving"
    for _ in range(3):
        push.push(export, root, "assoc", keep=2)
    push.rollback(root, "assoc", 2)
    for _ in range(2):
        push.push(export, root, "assoc", keep=2, label="canary")
    assert push.versions(root, "assoc") == [2, 4, 5]  # 2 is stable, 4-5 the newest
    assert push.read_state(root, "assoc")["labels"] == {"stable": 2, "canary": 5}


def test_idempotent_push_for_same_key(tmp_path):
    export = fake_export(tmp_path / "export")
    root = tmp_path / "serving"
    first = push.push(export, root, "assoc", idempotency_key="ds=2024-01-02;data=x")
    again = push.push(export, root, "assoc", idempotency_key="ds=2024-01-02;data=x")
    assert first["pushed"] and not again["pushed"] and again["version"] == first["version"] == 1
    assert push.versions(root, "assoc") == [1]
    card = json.loads((root / "assoc" / "1" / "model_card.json").read_text())
    assert card["version"] == 1 and card["idempotency_key"] == "ds=2024-01-02;data=x"


def test_rollback_errors_clearly(tmp_path):
    root = tmp_path / "serving"
    push.push(fake_export(tmp_path / "export"), root, "assoc")
    with pytest.raises(push.PushError, match="version 7 of assoc is not under"):
        push.rollback(root, "assoc", 7)
    with pytest.raises(push.PushError, match="not a SavedModel"):
        push.push(tmp_path, root, "assoc")


SLOW_PUSH = """
import shutil, sys, time, pathlib
from assoc_lib.serving import push
real_copy = shutil.copy2
def slow_copy(src, dst, *a, **k):
    pathlib.Path(sys.argv[3]).touch()   # tell the parent the copy has started
    time.sleep(0.2)
    return real_copy(src, dst, *a, **k)
real_copytree = shutil.copytree
shutil.copytree = lambda src, dst, **kw: real_copytree(src, dst, **{**kw, "copy_function": slow_copy})
push.push(sys.argv[1], sys.argv[2], "assoc")
"""


def test_push_killed_mid_copy_leaves_served_version_untouched(tmp_path):
    root = tmp_path / "serving"
    small = fake_export(tmp_path / "small")
    push.push(small, root, "assoc")
    config_before = (root / "models.config").read_text()
    big = fake_export(tmp_path / "big", n_files=50)
    started = tmp_path / "started"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_PUSH, str(big), str(root), str(started)])
    deadline = time.time() + 60
    while not started.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # a few files in
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert push.versions(root, "assoc") == [1]
    assert (root / "models.config").read_text() == config_before
    assert push.production(root, "assoc")["version"] == 1
    # the next push works and takes version 2
    assert push.push(small, root, "assoc")["version"] == 2


def test_rerun_of_a_day_gets_its_label_back(tmp_path):
    """A day re-run after later pushes ends where its first run ended: its version, labelled stable."""
    export = fake_export(tmp_path / "export")
    root = tmp_path / "serving"
    push.push(export, root, "assoc", idempotency_key="ds=2024-01-02;data=x")
    push.push(export, root, "assoc", idempotency_key="ds=2024-01-03;data=y")
    assert push.read_state(root, "assoc")["labels"] == {"stable": 2}
    again = push.push(export, root, "assoc", idempotency_key="ds=2024-01-02;data=x")
    assert not again["pushed"] and again["version"] == 1 and again["labels"] == {"stable": 1}
    assert push.read_state(root, "assoc")["labels"] == {"stable": 1} and push.versions(root, "assoc") == [1, 2]
    config = (root / "models.config").read_text()  # what the server follows
    assert "versions: 1" in config and 'key: "stable"' in config and "value: 1" in config and "value: 2" not in config
