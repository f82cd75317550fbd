"""Shared fixtures: a small synthetic world built once per session, copied per test."""

from __future__ import annotations

import importlib.util
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
SYNTH_DAYS = 20

os.environ.setdefault("ASSOC_PSEUDONYM_KEY", TEST_KEY.decode())


def load_benchmark(name: str):
    """``benchmarks/NAME.py`` as a module: the benchmarks are scripts, not a package."""
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_config(root: Path):
    return load_config(
        overrides={
            "paths.data_dir": str(root / "data"),
            "paths.artifacts_dir": str(root / "artifacts"),
            "paths.serving_root": str(root / "serving"),
        }
    )


@pytest.fixture(scope="session")
def synth_world(tmp_path_factory) -> Path:
    """12 validated synthetic days (data/ + artifacts/ with pass records), built once."""
    from assoc_lib.data import contract, validate
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


def small_model_overrides() -> dict:
    """A deep model small enough for CI that still learns the planted structure."""
    return {
        "models.deep_embedding_dim": 64,
        "models.deep_epochs": 60,
        "models.deep_learning_rate": 0.01,
        "models.deep_batch_size": 128,
        "models.deep_patience": 10,
        "models.ease_l2": 10.0,
        # the planted-structure tests check this network: the search runs (its trace is tested) but keeps it;
        # the search's own choices are tested in tests/model/test_tuning.py
        "models.deep_tune_trials": 2,
        "models.deep_tune_min_gain": 100.0,
    }


@pytest.fixture(scope="session")
def trained(synth_world, tmp_path_factory):
    """Preprocessed split + every candidate trained on the session's synthetic world."""
    from assoc_lib.config import apply_overrides
    from assoc_lib.data import preprocess
    from assoc_lib.train import train_candidates

    root = tmp_path_factory.mktemp("trained")
    cfg = apply_overrides(make_config(synth_world), small_model_overrides())
    prep = preprocess.preprocess(cfg, out_dir=root / "prep")
    summary = train_candidates(root / "prep", cfg, root / "train")
    return {
        "cfg": cfg,
        "prep_dir": root / "prep",
        "summary": summary,
        "root": root,
        "candidates": {c["name"]: c for c in summary["candidates"]},
        "prep": prep,
    }


@pytest.fixture(scope="session")
def exported(trained):
    """Every servable candidate exported as a SavedModel (the dense EASE reference is evaluated, not served)."""
    from assoc_lib.models.servable import ServableModel
    from assoc_lib.serving.export import export_saved_model

    out = {}
    for name, cand in trained["candidates"].items():
        model = ServableModel.load(cand["path"])
        if not model.servable:
            continue
        out[name] = export_saved_model(model, trained["root"] / "export" / name, {"data_version": "test"}, k=20)
    return out
