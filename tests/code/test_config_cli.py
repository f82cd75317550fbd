"""The config object and the command line surface."""

from __future__ import annotations

import subprocess
import sys

import pytest

from assoc_lib.config import load_config


def test_precedence_file_env_overrides(tmp_path, monkeypatch):
    toml = tmp_path / "assoc.toml"
    toml.write_text("[preprocess]\nwindow_days = 30\nmin_count = 4\n")
    monkeypatch.setenv("ASSOC_PREPROCESS__MIN_COUNT", "5")
    cfg = load_config(toml, {"preprocess.window_days": 7})
    assert cfg.preprocess.window_days == 7 and cfg.preprocess.min_count == 5


def test_unknown_key_is_an_error():
    with pytest.raises(ValueError, match="unknown config key 'preprocess.nope'"):
        load_config(overrides={"preprocess.nope": 1})


def test_secret_not_in_dict():
    cfg = load_config(overrides={"privacy.pseudonym_key": "s3cret"})
    assert "s3cret" not in str(cfg.to_dict())


def test_help_lists_stage_commands():
    import re

    out = subprocess.run([sys.executable, "-m", "assoc_lib.cli", "--help"], capture_output=True, text=True).stdout
    commands = set(re.search(r"\{([a-z,]+)\}", out).group(1).split(","))
    assert commands == {
        "data",
        "validate",
        "preprocess",
        "snapshot",
        "restore",
        "rules",
        "train",
        "evaluate",
        "gate",
        "export",
        "push",
        "serve",
        "query",
        "rollback",
    }
