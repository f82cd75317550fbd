"""Every branch of the evaluation gate."""

from __future__ import annotations

import pytest

from assoc_lib import gate
from assoc_lib.config import load_config


def row(name, kind, test, val, n=500):
    return {"name": name, "kind": kind, "ndcg@10": test, "val_ndcg@10": val, "n_eval_baskets": n, "path": f"/{name}"}


@pytest.fixture
def cfg():
    return load_config(overrides={"gate.tolerance": 0.02, "gate.min_eval_baskets": 100})


def test_winner_picked_on_validation_not_test(cfg):
    comp = {"models": [row("ease", "classical", 0.30, 0.20), row("deep", "deep", 0.25, 0.22)]}
    d = gate.decide(comp, cfg)
    assert d["winner"] == "deep" and d["blessed"]
    assert d["verdict"]["deep_over_classical"] == pytest.approx(0.25 / 0.30)
    assert d["verdict"]["deep_beats_classical"] is False
    assert any("no model in production" in r for r in d["reasons"])


def test_regression_against_production_is_not_blessed(cfg):
    comp = {"models": [row("ease", "classical", 0.20, 0.30), row("production v3", "production", 0.25, 0.25)]}
    d = gate.decide(comp, cfg)
    assert not d["blessed"] and any("would regress" in r for r in d["reasons"])


def test_within_tolerance_is_blessed(cfg):
    comp = {"models": [row("ease", "classical", 0.2460, 0.3), row("production v3", "production", 0.25, 0.25)]}
    assert gate.decide(comp, cfg)["blessed"]  # 0.246 >= 0.25 * 0.98 = 0.245


def test_too_few_baskets_is_not_blessed(cfg):
    d = gate.decide({"models": [row("ease", "classical", 0.3, 0.3, n=20)]}, cfg)
    assert not d["blessed"] and any("min_eval_baskets" in r for r in d["reasons"])


def test_require_deep_excludes_classical_winner(cfg):
    cfg.gate.require_deep = True
    comp = {"models": [row("ease", "classical", 0.30, 0.40), row("deep", "deep", 0.25, 0.22)]}
    d = gate.decide(comp, cfg)
    assert d["winner"] == "deep"
    d2 = gate.decide({"models": [row("ease", "classical", 0.3, 0.4)]}, cfg)
    assert not d2["blessed"] and d2["winner"] is None


def test_run_gate_writes_blessing(cfg, tmp_path):
    import json

    d = gate.run_gate({"models": [row("ease", "classical", 0.3, 0.3)]}, cfg, tmp_path)
    assert json.loads((tmp_path / "blessing.json").read_text())["winner"] == d["winner"] == "ease"


def test_reference_model_is_in_the_verdict_but_never_the_winner(cfg):
    dense = {**row("ease_dense", "classical", 0.32, 0.40), "servable": False}
    comp = {"models": [row("ease", "classical", 0.28, 0.30), dense, row("deep", "deep", 0.30, 0.35)]}
    d = gate.decide(comp, cfg)
    assert d["winner"] == "deep"  # the dense reference has the best validation score but cannot be served
    assert d["verdict"]["best_classical"] == "ease_dense"  # ...and it is what the deep model is measured against
    assert d["verdict"]["deep_over_classical"] == pytest.approx(0.30 / 0.32)
    # a deep reference row counts for the verdict, never for serving
    deep_ref = {**row("deep_reference", "deep", 0.33, 0.45), "servable": False}
    d = gate.decide({"models": comp["models"] + [deep_ref]}, cfg)
    assert d["winner"] == "deep" and d["verdict"]["best_deep"] == "deep_reference"
    # the served personal co-occurrence candidate is an ordinary candidate: it can win
    cooc = row("deep+ease+personal_cooc", "deep", 0.31, 0.40)
    d = gate.decide({"models": comp["models"] + [cooc]}, cfg)
    assert d["winner"] == "deep+ease+personal_cooc"


def test_export_refuses_a_reference_model(tmp_path):
    import numpy as np

    from assoc_lib.models.baselines import NeighbourTable
    from assoc_lib.models.servable import ServableModel
    from assoc_lib.serving.export import export_saved_model

    pop = np.array([0.5, 0.3], np.float32)
    model = ServableModel(
        "ease_dense",
        "classical",
        ["a", "b"],
        pop,
        table=NeighbourTable.bias_only(pop),
        dense=np.eye(2, dtype=np.float32),
    )
    with pytest.raises(ValueError, match="not exported"):
        export_saved_model(model, tmp_path / "x", {})
    assert not (tmp_path / "x").exists()
