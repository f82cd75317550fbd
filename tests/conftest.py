"""Shared fixtures: a small synthetic world built once per session, copied per test."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from assoc_lib.config import load_config

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"
GROCERIES = SHARED / "data" / "groceries" / "groceries.csv"
TEST_KEY = b"test-pseudonym-key"
SYNTH_START = "2024-03-01"
SYNTH_DAYS = 12

os.environ.setdefault("ASSOC_PSEUDONYM_KEY", TEST_KEY.decode())


def make_config(root: Path):
    return load_config(overrides={
        "paths.data_dir": str(root / "data"),
        "paths.artifacts_dir": str(root / "artifacts"),
        "paths.serving_root": str(root / "serving"),
    })


@pytest.fixture(scope="session")
def synth_world(tmp_path_factory) -> Path:
    """12 validated synthetic days (data/ + artifacts/ with pass records), built once."""
    from assoc_lib import validate
    from assoc_lib.data import contract
    from assoc_lib.data.synth import synthesize

    root = tmp_path_factory.mktemp("world")
    synthesize(root / "data", SYNTH_START, SYNTH_DAYS, seed=42, pseudonym_key=TEST_KEY)
    cfg = make_config(root)
    for _, part in contract.list_partitions(cfg.paths.orders_dir):
        report = validate.validate_partition(part, cfg)
        assert report.success, report.summary()
    return root


@pytest.fixture
def world(synth_world, tmp_path) -> Path:
    """A private copy of the synthetic world for tests that change it."""
    root = tmp_path / "world"
    shutil.copytree(synth_world, root)
    return root


@pytest.fixture
def cfg(world):
    return make_config(world)


@pytest.fixture
def groceries_csv() -> Path:
    if not GROCERIES.exists():
        pytest.skip(f"reference data {GROCERIES} absent (../shared is not beside this checkout)")
    return GROCERIES
