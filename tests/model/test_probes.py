"""benchmarks/probes.py and served_agreement.py: the probes' features by hand, their reference (weight 0) is the
candidate's own evaluation; the served model answers as the evaluated one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

from assoc_lib import evaluate
from assoc_lib.data.preprocess import load_split
from assoc_lib.models.servable import ServableModel
from tests.conftest import load_benchmark


def _bench():
    return load_benchmark("probes")


def test_probe_features_by_hand():
    from assoc_lib.data.history import PastBaskets
    from assoc_lib.models.baselines import NeighbourTable

    bench = _bench()
    # four train baskets on days 0, 10, 40, 45; the last 10 days hold the last two
    f = bench.trend_feature([[0], [0, 1], [1], [2]], np.array([0.0, 10.0, 40.0, 45.0]), 3, days=10.0)
    raw = np.log(np.array([(0 + 1) / (5000 + 1), (5000 + 1) / (5000 + 1), (5000 + 1) / (2500 + 1)]))
    np.testing.assert_allclose(f, (raw - raw.mean()) / raw.std())
    # two rows: the first sees past baskets bought 0 and 30 days before it, the second none
    past = PastBaskets(
        sp.csr_matrix(np.eye(2)), np.array([100.0, 70.0]), np.array([0, 2]), np.array([2, 2]), np.array([100.0, 90.0])
    )
    np.testing.assert_allclose(bench.trips(past, 30.0), [1.0 + np.exp(-1.0), 0.0])
    # the table as a matrix scores a basket as the table does (sum aggregation)
    table = NeighbourTable(
        np.array([[1, 2], [0, -1], [1, 0]], np.int32),
        np.array([[0.5, -0.2], [0.3, 0.0], [0.7, 0.1]], np.float32),
        np.array([0.01, 0.02, 0.03], np.float32),
        "sum",
    )
    X = sp.csr_matrix(np.array([[1, 0, 1], [0, 1, 0]], np.float32))
    np.testing.assert_allclose(X @ bench.table_matrix(table) + table.bias, table.score(X), rtol=1e-6)


def test_probes_on_a_trained_run(trained, tmp_path, capsys):
    """On the session's trained candidates: every probe reports, its weight-0 reference is the candidate's own
    personalised NDCG@10 (the benchmark measures the model the comparison measures), and a work dir without
    candidates is a clear error."""
    bench = _bench()
    out = tmp_path / "probes.json"
    assert bench.main(["--work-dir", str(trained["root"]), "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    results = record["probes"]
    got = {(r["model"], r["probe"]) for r in results}
    assert got == {
        ("deep+ease+personal_cooc", "trend"),
        ("deep+ease+personal_cooc", "history_ease"),
        ("deep+ease+personal_cooc", "trip_rate"),
        ("deep+ease+personal_cooc", "raw_mix"),
        ("ease+personal_cooc", "trend"),
        ("ease+personal_cooc", "history_ease"),
        ("ease+personal_cooc", "trip_rate"),
    }
    baskets, vocab = load_split(trained["prep_dir"])
    cfg = trained["cfg"].models
    for name in ("deep+ease+personal_cooc", "ease+personal_cooc"):
        model = ServableModel.load(trained["candidates"][name]["path"])
        decays = sorted({bench.DECAY, *model.decays})
        holdouts, _ = evaluate.make_holdouts(
            baskets, len(vocab), cfg.eval_seed, cfg.history_max_items, decays=decays, past=True
        )
        own = {s: evaluate.evaluate_scores(model.score, holdouts[s], len(vocab))["ndcg@10"] for s in holdouts}
        for r in (r for r in results if r["model"] == name):
            assert r["val_ndcg@10_model"] == pytest.approx(own["validation"], abs=1e-6), r["probe"]
            assert r["test_ndcg@10_model"] == pytest.approx(own["test"], abs=1e-6), r["probe"]
            assert r["val_ndcg@10_probe"] >= r["val_ndcg@10_model"] - 1e-12  # chosen on validation, 0 included
    assert "trend" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert bench.main(["--work-dir", str(tmp_path / "empty")]) == 2
    assert "work dir" in capsys.readouterr().err


def test_served_agreement_on_a_trained_run(trained, exported, tmp_path, capsys):
    """benchmarks/served_agreement.py: the reranked deep candidate's export answers the session's test baskets
    (per-purchase rows, as a shop sends them) as its numpy scorer does; a bad work dir is a clear error."""
    bench = load_benchmark("served_agreement")
    name = "deep+ease+personal_cooc+rerank"
    out = tmp_path / "a.json"
    argv = ["--work-dir", str(trained["root"]), "--model", name, "--export", str(exported[name]), "--out", str(out)]
    assert bench.main(argv) == 0
    record = json.loads(out.read_text())
    assert record["baskets"] > 50 and record["numpy_ndcg@10"] > 0
    assert record["served_ndcg@10"] == pytest.approx(record["numpy_ndcg@10"], abs=0.005)
    anonymous = record["anonymous"]  # the anonymous stage, served by complete_basket
    assert anonymous["numpy_ndcg@10"] > 0
    assert anonymous["served_ndcg@10"] == pytest.approx(anonymous["numpy_ndcg@10"], abs=0.005)
    assert "served NDCG@10" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert bench.main(["--work-dir", str(tmp_path / "empty")]) == 2
    assert "work dir" in capsys.readouterr().err
